"""DICOM films written with pydicom (bench/films.py): rescale, windowing, MONOCHROME1 inversion, bad files."""

import numpy as np
import pytest

from bench.films import dicom_bytes
from pneumo.data.dicom import DicomError, decode_dicom, is_dicom
from pneumo.data.transforms import ImageDecodeError, Preprocessing, decode_image

GRAY = Preprocessing(in_chans=1, image_size=16, mean=(0.5,), std=(0.25,))
RAMP = np.tile(np.linspace(0, 4000, 64), (32, 1)).astype(np.uint16)  # dark left, bright right, 12 bits


def test_is_dicom_needs_the_magic_after_the_preamble():
    assert is_dicom(dicom_bytes(RAMP))
    assert not is_dicom(b"DICM" + bytes(200)) and not is_dicom(b"")


def test_monochrome2_without_window_is_stretched_by_min_max():
    film = np.asarray(decode_dicom(dicom_bytes(RAMP)))
    assert film.dtype == np.uint8 and film.shape == (32, 64)
    assert film[:, 0].max() == 0 and film[:, -1].min() == 255
    assert np.all(np.diff(film[0].astype(int)) >= 0)  # the ramp keeps its direction


def test_monochrome1_with_rescale_is_inverted():
    """Rescale slope/intercept change units but not the picture; MONOCHROME1 stores bright air."""
    film = np.asarray(decode_dicom(dicom_bytes(RAMP, 12, "MONOCHROME1", RescaleSlope=2, RescaleIntercept=-1024)))
    assert film[:, 0].min() == 255 and film[:, -1].max() == 0


def test_window_sets_contrast_and_applies_after_rescale():
    """Window 1000..2000 in rescaled units: raw 500..1000 with slope 2; outside saturates."""
    raw = np.tile(np.array([0, 400, 750, 1100, 4000], dtype=np.uint16), (4, 1))
    data = dicom_bytes(raw, RescaleSlope=2, RescaleIntercept=0, WindowCenter=1500, WindowWidth=1000)
    film = np.asarray(decode_dicom(data))[0]
    assert film[0] == 0 and film[1] == 0  # below the window
    assert abs(int(film[2]) - 128) <= 2  # the window centre is mid-grey
    assert film[3] == 255 and film[4] == 255  # above the window


def test_multi_frame_is_rejected_with_a_clear_error():
    with pytest.raises(DicomError, match="multi-frame DICOM \\(2 frames\\)"):
        decode_dicom(dicom_bytes(np.stack([RAMP, RAMP])))


def test_decode_image_reads_dicom_and_keeps_the_pixel_limit():
    out = decode_image(dicom_bytes(RAMP), GRAY)
    assert out.shape == (1, 16, 16) and out[0, :, 0].mean() < 40 and out[0, :, -1].mean() > 200
    with pytest.raises(ImageDecodeError, match="exceeds the limit of 1000"):
        decode_image(dicom_bytes(RAMP), GRAY, max_pixels=1000)


def test_broken_dicom_becomes_image_decode_error():
    data = dicom_bytes(RAMP)
    with pytest.raises(ImageDecodeError, match="DICOM"):
        decode_image(data[: len(data) // 2], GRAY)
