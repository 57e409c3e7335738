"""The fast decode (DCT-domain JPEG scaling, box reduction, DICOM grey-level table) against the
full-size reference decode of bench/reference_decode.py, on generated full-size films: the pixels
that reach the model may differ by no more than switching the resize from bilinear to bicubic does."""

import io

import numpy as np
import pytest
from PIL import Image

from bench.films import dicom_bytes, full_size_film
from bench.reference_decode import reference_decode, reference_dicom
from pneumo.data.dicom import decode_dicom
from pneumo.data.synthetic import plan_dataset, render_chest_xray
from pneumo.data.transforms import Preprocessing, decode_image

GRAY = Preprocessing(in_chans=1, image_size=224, mean=(0.5,), std=(0.25,))
RGB = Preprocessing(in_chans=3, image_size=224, mean=(0.5,) * 3, std=(0.25,) * 3)
MAX_PIXELS = 10_000_000
SIDE_PX = (1024, 1400)  # full size, at the small end: every test under a second


@pytest.fixture(scope="module")
def rendered() -> np.ndarray:
    """One synthetic chest film (rendered small; full_size_film brings it to 1,024-2,048 px with noise)."""
    return render_chest_xray(plan_dataset(200, seed=3)[0], seed=3, image_size=256)


def encoded(pixels: np.ndarray, fmt: str, mode: str = "L", **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def assert_within_resize_error(data: bytes, preprocessing: Preprocessing) -> None:
    """Mean and largest difference to the full-size decode at most those of a change of resize filter."""
    reference = reference_decode(data, preprocessing).astype(int)
    other_filter = reference_decode(data, preprocessing, resample=Image.BICUBIC).astype(int)
    fast = decode_image(data, preprocessing, MAX_PIXELS).astype(int)
    assert fast.shape == reference.shape
    filter_mean, filter_max = np.abs(other_filter - reference).mean(), np.abs(other_filter - reference).max()
    assert 0 < filter_mean < 2  # the yardstick itself is small, and not zero
    # measured on the benchmark's films: ~0.5x the filter change on average, 1.04x at worst; largest <= it
    assert np.abs(fast - reference).mean() <= 1.25 * filter_mean
    assert np.abs(fast - reference).max() <= 2 * filter_max


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("quality", [75, 95])
def test_full_size_jpeg_matches_the_full_size_decode(rendered, seed, quality):
    film = full_size_film(rendered, np.random.default_rng(seed), side_px=SIDE_PX)
    assert min(film.shape) >= 1024
    assert_within_resize_error(encoded(film, "JPEG", quality=quality), GRAY)


def test_colour_jpeg_of_a_film_matches_in_grey_and_rgb(rendered):
    data = encoded(full_size_film(rendered, np.random.default_rng(4), side_px=SIDE_PX), "JPEG", "RGB", quality=90)
    assert_within_resize_error(data, GRAY)
    assert_within_resize_error(data, RGB)


@pytest.mark.parametrize("bits", [8, 16])
def test_full_size_png_matches_the_full_size_decode(rendered, bits):
    film = full_size_film(rendered, np.random.default_rng(5), bits, SIDE_PX)
    assert_within_resize_error(encoded(film, "PNG", "L" if bits == 8 else "I;16", compress_level=1), GRAY)


@pytest.mark.parametrize(
    "photometric, bits, elements",
    [
        ("MONOCHROME2", 12, {}),
        ("MONOCHROME1", 16, {"RescaleSlope": 2, "RescaleIntercept": -1024}),
        ("MONOCHROME2", 12, {"WindowCenter": 1800, "WindowWidth": 2500}),
    ],
)
def test_full_size_dicom_grey_levels_are_exact_and_resize_within_error(rendered, photometric, bits, elements):
    data = dicom_bytes(full_size_film(rendered, np.random.default_rng(6), bits, SIDE_PX), bits, photometric, **elements)
    assert np.array_equal(np.asarray(decode_dicom(data)), np.asarray(reference_dicom(data)))
    assert_within_resize_error(data, GRAY)


def test_signed_dicom_grey_levels_are_exact(rendered):
    """Signed (PixelRepresentation 1) films index the grey-level table by their bit pattern."""
    pixels = full_size_film(rendered, np.random.default_rng(7), 12, SIDE_PX).astype(np.int16) - 2048
    data = dicom_bytes(pixels.view(np.uint16), 12, PixelRepresentation=1)
    assert np.array_equal(np.asarray(decode_dicom(data)), np.asarray(reference_dicom(data)))
