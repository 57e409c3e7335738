"""DICOM films to 8-bit grayscale, the way a viewer would display them.

Scanners store raw detector values: the modality LUT (rescale slope/intercept) turns them into
meaningful units, the VOI LUT or window chosen by the technologist sets the displayed contrast, and
MONOCHROME1 films are stored inverted (bright air). Skipping any step feeds the model an image unlike
the JPEGs it was trained on.
"""

from __future__ import annotations

import io
from typing import Optional

import numpy as np
import pydicom
from PIL import Image
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.pixels.processing import apply_windowing

DICM_OFFSET = 128  # DICOM Part 10 files: a 128-byte preamble, then the magic bytes
DICM_MAGIC = b"DICM"


class DicomError(ValueError):
    """A DICOM file this service cannot turn into one grayscale film."""


def is_dicom(data: bytes) -> bool:
    """True for DICOM Part 10 files (b"DICM" after the 128-byte preamble)."""
    return data[DICM_OFFSET : DICM_OFFSET + len(DICM_MAGIC)] == DICM_MAGIC


def _display_range(dataset: pydicom.Dataset, values: np.ndarray) -> tuple[float, float]:
    """The values that become black and white: the VOI's output range, else the film's own extremes."""
    if dataset.get("VOILUTSequence"):
        return 0.0, float(2 ** int(dataset.VOILUTSequence[0].LUTDescriptor[2]) - 1)
    if dataset.get("WindowCenter") is not None and dataset.get("WindowWidth") is not None:
        low, high = apply_windowing(np.array([-np.inf, np.inf]), dataset)  # the window's ends
        return float(low), float(high)
    return float(values.min()), float(values.max())


def _read(data: bytes, max_pixels: Optional[int]) -> tuple[pydicom.Dataset, np.ndarray]:
    try:
        dataset = pydicom.dcmread(io.BytesIO(data))
        rows, columns = int(dataset.Rows), int(dataset.Columns)
    except Exception as error:  # pydicom raises many types for malformed files
        raise DicomError(f"unreadable DICOM header ({error})") from None
    frames = int(dataset.get("NumberOfFrames") or 1)
    if frames > 1:
        raise DicomError(f"multi-frame DICOM ({frames} frames) is not supported: send one frame per file")
    if int(dataset.get("SamplesPerPixel") or 1) != 1:
        raise DicomError(
            f"colour DICOM ({dataset.get('PhotometricInterpretation')}) is not supported: "
            "send a MONOCHROME1/MONOCHROME2 film"
        )
    if max_pixels is not None and rows * columns > max_pixels:
        raise DicomError(f"{columns}x{rows} pixels exceeds the limit of {max_pixels}")
    try:
        return dataset, dataset.pixel_array
    except Exception as error:  # missing decoder plugins, truncated pixel data, …
        raise DicomError(f"DICOM pixel data cannot be decoded ({error})") from None


def _grey_levels(dataset: pydicom.Dataset, values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Modality values -> uint8 grey levels: VOI LUT/window, [low, high] stretched to 0..255, MONOCHROME1 inverted."""
    shown = np.asarray(apply_voi_lut(values, dataset), dtype=np.float64)
    scaled = np.clip((shown - low) / (high - low), 0.0, 1.0) if high > low else np.zeros_like(shown)
    if dataset.get("PhotometricInterpretation") == "MONOCHROME1":
        scaled = 1.0 - scaled
    return (scaled * 255.0).round().astype(np.uint8)


def _film_values(dataset: pydicom.Dataset, pixels: np.ndarray, table: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """The modality values the film holds, enough for their min and max: the extremes of the stored
    values under a linear rescale, every distinct stored value under a modality LUT (rare)."""
    if dataset.get("ModalityLUTSequence"):
        return table[np.unique(codes)]
    return table[np.array([pixels.min(), pixels.max()], dtype=pixels.dtype).view(codes.dtype)]


def decode_dicom(data: bytes, max_pixels: Optional[int] = None) -> Image.Image:
    """DICOM bytes -> mode "L" image: rescale, VOI LUT/window (else min/max), MONOCHROME1 inverted.

    Integer films (8/16 bit, nearly all) go through a table with one grey level per possible stored
    value, then one lookup per pixel: the same grey levels as computing every pixel in float64, ~7x
    faster on a 2,048 px film. Raises DicomError for multi-frame or colour files, films over
    `max_pixels`, and unreadable data.
    """
    dataset, pixels = _read(data, max_pixels)
    try:
        if pixels.dtype.kind in "iu" and pixels.itemsize <= 2:
            codes = pixels.view(f"u{pixels.itemsize}")  # signed films index the table by their bit pattern
            stored = np.arange(2 ** (8 * pixels.itemsize), dtype=codes.dtype).view(pixels.dtype)
            table = apply_modality_lut(stored, dataset)  # stays integer without rescale, as the VOI LUT expects
            low, high = _display_range(dataset, _film_values(dataset, pixels, table, codes))
            grey = _grey_levels(dataset, table, low, high)[codes]
        else:
            values = apply_modality_lut(pixels, dataset)
            grey = _grey_levels(dataset, values, *_display_range(dataset, values))
    except Exception as error:  # e.g. a window width below 1, an unsupported LUT depth
        raise DicomError(f"DICOM rescale/window values are invalid ({error})") from None
    return Image.fromarray(grey, mode="L")
