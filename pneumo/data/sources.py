"""Every dataset format behind one listing: records (location, label, patient, split) plus what was
refused, and one reader that turns a record's location into a decoded image.

    folder    Kaggle chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg|png|dcm
    npz       MedMNIST pneumoniamnist.npz
    manifest  CSV or Parquet with path,label[,patient_id][,split]
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pneumo.config import DataConfig
from pneumo.data.folder import ImageRecord, list_kaggle_folder
from pneumo.data.manifest import MANIFEST_SUFFIXES, list_manifest, read_bytes
from pneumo.data.medmnist import is_npz_location, list_npz, read_npz_image
from pneumo.data.split import resplit_by_patient, split_by_patient
from pneumo.data.transforms import Preprocessing, decode_image, prepare_array


def resolve_format(cfg: DataConfig) -> str:
    """data.format, or for `auto` the format the path names: .npz, .csv/.parquet, else a folder."""
    if cfg.format != "auto":
        return cfg.format
    suffix = Path(cfg.path).suffix.lower()
    if suffix == ".npz":
        return "npz"
    return "manifest" if suffix in MANIFEST_SUFFIXES else "folder"


@dataclass
class SourceListing:
    records: list[ImageRecord]
    refused: dict[str, str] = field(default_factory=dict)  # location/row -> why (bad label, bad split)
    ignored_files: int = 0  # non-image files in a folder layout
    split_assigned: bool = False  # True: pneumo made the split (a manifest without `split`)


def list_source(cfg: DataConfig) -> SourceListing:
    """The records of every split, after the optional patient re-split (folder) or split assignment (manifest)."""
    data_format = resolve_format(cfg)
    if data_format == "npz":
        records, refused = list_npz(cfg.path)
        return SourceListing(records, refused)
    if data_format == "manifest":
        manifest = list_manifest(cfg.path)
        if manifest.has_split:
            return SourceListing(manifest.records, manifest.bad_rows)
        assigned = split_by_patient(manifest.records, tuple(cfg.split_fractions), cfg.split_seed)
        return SourceListing(assigned, manifest.bad_rows, split_assigned=True)
    listing = list_kaggle_folder(cfg.path)
    records = listing.records
    if cfg.resplit_val:
        records = resplit_by_patient(records, cfg.val_fraction, cfg.split_seed)
    return SourceListing(records, ignored_files=len(listing.ignored_files))


def read_stored(location: str) -> tuple[bytes | np.ndarray, str]:
    """What a record's location holds (file bytes, or the pixels of a .npz entry) and its SHA-1.

    Raises OSError when it cannot be read.
    """
    if is_npz_location(location):
        pixels = read_npz_image(location)
        return pixels, hashlib.sha1(pixels.tobytes()).hexdigest()
    data = read_bytes(location)
    return data, hashlib.sha1(data).hexdigest()


def decode_stored(stored: bytes | np.ndarray, preprocessing: Preprocessing, max_pixels: int) -> np.ndarray:
    """`read_stored` output -> uint8 (C, H, W) image; raises ImageDecodeError when it is not a usable image."""
    if isinstance(stored, np.ndarray):
        return prepare_array(stored, preprocessing)
    return decode_image(stored, preprocessing, max_pixels)


def load_image(location: str, preprocessing: Preprocessing, max_pixels: int) -> tuple[np.ndarray, str]:
    """(uint8 (C, H, W) image, SHA-1 of the stored bytes) for a record's location.

    Raises OSError when the file cannot be read and ImageDecodeError when it is not a usable image.
    """
    stored, digest = read_stored(location)
    return decode_stored(stored, preprocessing, max_pixels), digest
