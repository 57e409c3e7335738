"""The Kaggle "Chest X-Ray Images (Pneumonia)" layout: root/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg.

Listing reads no pixels: it maps each image file to a record with its label (from the folder name),
split and patient id (from the file name). Files that are not images (.DS_Store, Thumbs.db, notes)
are ignored and counted; a class folder with an unknown name is an error, since guessing its label
would silently change results.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pneumo.data.patients import patient_id_from_filename

SPLITS = ("train", "val", "test")
CLASS_NAMES = ("NORMAL", "PNEUMONIA")  # label 0, label 1
IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png", ".bmp", ".tif", ".tiff", ".dcm", ".dicom"}  # any case


class DatasetLayoutError(ValueError):
    """The folder does not have the expected layout; the message names the path."""


@dataclass(frozen=True)
class ImageRecord:
    path: str  # absolute path or URI of the image file
    label: int  # 0 NORMAL, 1 PNEUMONIA
    patient_id: str
    split: str  # train | val | test


@dataclass
class FolderListing:
    records: list[ImageRecord]
    ignored_files: list[str] = field(default_factory=list)  # non-image files found and skipped


def _label_for(class_dir: Path) -> int:
    for label, name in enumerate(CLASS_NAMES):
        if class_dir.name.upper() == name:
            return label
    raise DatasetLayoutError(
        f"unknown label folder {class_dir}: expected only {' and '.join(CLASS_NAMES)} inside {class_dir.parent}"
    )


def _list_split(split_dir: Path, split: str, listing: FolderListing) -> None:
    for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        label = _label_for(class_dir)
        for file in sorted(class_dir.iterdir()):
            if file.is_file() and file.suffix.lower() in IMAGE_SUFFIXES and not file.name.startswith("._"):
                listing.records.append(
                    ImageRecord(str(file.resolve()), label, patient_id_from_filename(file.name), split)
                )
            elif file.is_file():
                listing.ignored_files.append(str(file))


def list_kaggle_folder(root: str | Path) -> FolderListing:
    """Every image under root/{train,val,test}/{NORMAL,PNEUMONIA}; `val` may be absent."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetLayoutError(f"dataset folder not found: {root}")
    listing = FolderListing(records=[])
    for split in SPLITS:
        split_dir = root / split
        if split_dir.is_dir():
            _list_split(split_dir, split, listing)
        elif split != "val":
            raise DatasetLayoutError(f"{root} has no {split}/ folder (expected {'/, '.join(SPLITS)}/)")
    for split in ("train", "test"):
        if {r.label for r in listing.records if r.split == split} != {0, 1}:
            raise DatasetLayoutError(f"{root / split} must hold images of both NORMAL and PNEUMONIA")
    return listing


def is_empty_dir(path: str | Path) -> bool:
    """True for a missing folder or one with nothing in it."""
    path = Path(path)
    return not path.exists() or (path.is_dir() and not any(path.iterdir()))
