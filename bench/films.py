"""Full-size films for the data benchmark: the synthetic generator's chest X-rays at the sizes and
encodings of real sets, JPEGs of 1,024-2,048 px a side at quality 75-95 (the Kaggle set's range) and
16-bit DICOMs.

Rendering a film at 2,048 px takes ~14 s here, so films are rendered at `RENDER_PX` and brought to
full size with the detector's quantum noise drawn at full size (noise is what makes full-size JPEGs
and DICOMs costly to decode; an upsampled film without it would decode faster than a real one).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

from pneumo.data.folder import CLASS_NAMES
from pneumo.data.synthetic import plan_dataset, render_chest_xray

RENDER_PX = 384  # side the generator renders at, px
SIDE_PX = (1024, 2048)  # range of each side of a full-size film, px (films are not square)
JPEG_QUALITY = (75, 95)  # range of JPEG quality
NOISE = (0.008, 0.03)  # detector noise, fraction of full scale (as synthetic.expose_film draws it)


def full_size_film(
    base: np.ndarray, rng: np.random.Generator, bits: int = 8, side_px: tuple[int, int] = SIDE_PX
) -> np.ndarray:
    """A rendered film -> (H, W), each side drawn from `side_px`, with noise, as uint8 or uint16 of `bits` bits."""
    width, height = (int(side) for side in rng.integers(side_px[0], side_px[1] + 1, size=2))
    film = np.asarray(Image.fromarray(base).resize((width, height), Image.BICUBIC), dtype=np.float32) / 255.0
    film += rng.uniform(*NOISE) * rng.standard_normal(film.shape, dtype=np.float32)
    top = 2**bits - 1
    return (np.clip(film, 0, 1) * top + 0.5).astype(np.uint8 if bits == 8 else np.uint16)


def dicom_bytes(pixels: np.ndarray, bits: int = 12, photometric: str = "MONOCHROME2", **elements) -> bytes:
    """A DICOM Part 10 file (digital X-ray, explicit little endian) holding uint16 `pixels` of `bits` bits:
    (rows, columns), or (frames, rows, columns) for a multi-frame file; `elements` set or override any
    element (Modality="CT", RescaleSlope=2, ...)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID, dataset.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    dataset.Modality = "DX"
    dataset.Rows, dataset.Columns = pixels.shape[-2:]
    if pixels.ndim == 3:
        dataset.NumberOfFrames = pixels.shape[0]
    dataset.SamplesPerPixel, dataset.PhotometricInterpretation = 1, photometric
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 16, bits, bits - 1, 0
    for key, value in elements.items():
        setattr(dataset, key, value)
    dataset.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _encoded(base: np.ndarray, kind: str, rng: np.random.Generator) -> tuple[bytes, str]:
    """One full-size file of `kind` (jpeg | dicom) and its suffix. DICOMs alternate 12 and 16 bits,
    with and without a window, MONOCHROME2 and MONOCHROME1 (stored inverted)."""
    if kind == "jpeg":
        buffer = io.BytesIO()
        Image.fromarray(full_size_film(base, rng)).save(
            buffer, format="JPEG", quality=int(rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1))
        )
        return buffer.getvalue(), ".jpeg"
    bits = int(rng.choice([12, 16]))
    pixels = full_size_film(base, rng, bits)
    window = {"WindowCenter": 2 ** (bits - 1), "WindowWidth": 2**bits * 0.8} if rng.random() < 0.5 else {}
    if rng.random() < 0.5:
        return dicom_bytes(2**bits - 1 - pixels, bits, "MONOCHROME1", **window), ".dcm"
    return dicom_bytes(pixels, bits, **window), ".dcm"


def write_full_size_films(root: Path, n_images: int, kind: str, n_rendered: int = 24, seed: int = 0) -> Path:
    """A Kaggle-layout folder ({train,val,test}/{NORMAL,PNEUMONIA}, 80/10/10, classes alternating) of
    `n_images` full-size files of `kind` (jpeg | dicom), cycling through `n_rendered` rendered films;
    each file has its own size and noise. For decoding benchmarks: folder labels are not the films'."""
    bases = [render_chest_xray(image, seed, RENDER_PX) for image in plan_dataset(200, seed)[:n_rendered]]
    rng = np.random.default_rng(seed)
    splits = ["train"] * 8 + ["val", "test"]
    for index in range(n_images):
        data, suffix = _encoded(bases[index % len(bases)], kind, rng)
        folder = root / splits[index // 2 % len(splits)] / CLASS_NAMES[index % 2]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"film{index:05d}{suffix}").write_bytes(data)
    return root
