"""The straightforward decode pneumo's own is measured against: the data benchmark's baseline and the
pixel reference of tests/data/test_decode_accuracy.py: every film decoded at full size (JPEG without DCT scaling, DICOM
through float64 arrays of the whole film), then resized to the model's side."""

from __future__ import annotations

import io

import numpy as np
import pydicom
from PIL import Image, ImageOps
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from pneumo.data.dicom import _display_range, is_dicom
from pneumo.data.transforms import _RESAMPLE, Preprocessing


def reference_dicom(data: bytes) -> Image.Image:
    """The film as mode L: modality LUT, VOI LUT/window (else min/max) and MONOCHROME1 on every pixel."""
    dataset = pydicom.dcmread(io.BytesIO(data))
    values = apply_modality_lut(dataset.pixel_array, dataset)
    low, high = _display_range(dataset, values)
    shown = np.asarray(apply_voi_lut(values, dataset), dtype=np.float64)
    scaled = np.clip((shown - low) / (high - low), 0.0, 1.0) if high > low else np.zeros_like(shown)
    if dataset.get("PhotometricInterpretation") == "MONOCHROME1":
        scaled = 1.0 - scaled
    return Image.fromarray((scaled * 255.0).round().astype(np.uint8), mode="L")


def _to_8bit(image: Image.Image) -> Image.Image:
    pixels = np.asarray(image, dtype=np.float64)
    low, high = float(pixels.min()), float(pixels.max())
    scaled = (pixels - low) / (high - low) * 255.0 if high > low else np.zeros_like(pixels)
    return Image.fromarray(scaled.round().astype(np.uint8), mode="L")


def reference_decode(data: bytes, preprocessing: Preprocessing, resample: int | None = None) -> np.ndarray:
    """Bytes -> uint8 (C, H, W) at the model's size, decoded at full size; `resample` (a PIL filter)
    overrides the preprocessing's, to measure what a change of filter alone does to the pixels."""
    with reference_dicom(data) if is_dicom(data) else Image.open(io.BytesIO(data)) as image:
        image.load()
        image = ImageOps.exif_transpose(image)
        if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            image = _to_8bit(image)
        image = image.convert("L" if preprocessing.in_chans == 1 else "RGB")
    size = (preprocessing.image_size, preprocessing.image_size)
    filter_ = _RESAMPLE[preprocessing.interpolation] if resample is None else resample
    resized = np.asarray(image.resize(size, filter_), dtype=np.uint8)
    return resized[None] if resized.ndim == 2 else resized.transpose(2, 0, 1)
