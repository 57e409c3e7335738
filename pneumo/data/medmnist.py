"""MedMNIST PneumoniaMNIST `.npz` files (https://medmnist.com, Zenodo record 10519652).

The published file holds `train_images`, `train_labels`, `val_images`, `val_labels`, `test_images`,
`test_labels`: images uint8 of shape (N, S, S) for S in 28/64/128/224, labels (N, 1) with 0 normal,
1 pneumonia. Each image becomes a record whose location is ``<file>.npz#<split>/<index>``; Ray Data
tasks read the pixels from the file themselves, so the driver never holds the arrays.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from pneumo.data.folder import SPLITS, DatasetLayoutError, ImageRecord

LOCATION_SEPARATOR = "#"


def npz_location(path: str, split: str, index: int) -> str:
    return f"{path}{LOCATION_SEPARATOR}{split}/{index}"


def is_npz_location(location: str) -> bool:
    path, separator, _ = location.rpartition(LOCATION_SEPARATOR)
    return bool(separator) and path.lower().endswith(".npz")


@functools.lru_cache(maxsize=4)
def _split_images(path: str, split: str) -> np.ndarray:
    """One split's image array, loaded once per process."""
    with np.load(path) as arrays:
        return arrays[f"{split}_images"]


def read_npz_image(location: str) -> np.ndarray:
    """The (S, S) or (S, S, 3) pixels at ``file.npz#split/index``."""
    path, _, key = location.rpartition(LOCATION_SEPARATOR)
    split, index = key.split("/")
    return _split_images(path, split)[int(index)]


def list_npz(path: str | Path) -> tuple[list[ImageRecord], dict[str, str]]:
    """Records of every image, and bad entries (location -> why) such as a label outside {0, 1}."""
    path = Path(path).resolve()
    if not path.is_file():
        raise DatasetLayoutError(f"MedMNIST file not found: {path}")
    records, bad = [], {}
    with np.load(path) as arrays:
        for split in SPLITS:
            if f"{split}_images" not in arrays or f"{split}_labels" not in arrays:
                if split == "val":
                    continue
                raise DatasetLayoutError(
                    f"{path} has no {split}_images/{split}_labels arrays (found: {', '.join(sorted(arrays.files))})"
                )
            images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"].reshape(-1)
            if len(images) != len(labels) or images.ndim not in (3, 4):
                raise DatasetLayoutError(
                    f"{path}: {split}_images {images.shape} and {split}_labels "
                    f"{arrays[f'{split}_labels'].shape} do not describe one label per image"
                )
            for index, label in enumerate(labels.tolist()):
                location = npz_location(str(path), split, index)
                if label not in (0, 1):
                    bad[location] = f"label {label!r} is not 0 (normal) or 1 (pneumonia)"
                    continue
                # MedMNIST publishes no patient ids; its splits come from the source dataset's own
                records.append(ImageRecord(location, int(label), f"{split}/{index}", split))
    return records, bad
