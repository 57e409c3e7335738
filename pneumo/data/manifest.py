"""CSV or Parquet manifests: one row per image.

    path,label,patient_id,split
    images/p001_a.dcm,PNEUMONIA,p001,train
    s3://bucket/cxr/p002.jpeg,0,p002,test

`path` is relative to the manifest, absolute, or an object-store URI (s3://, gs://, anything
pyarrow.fs opens); `label` is 0/1 or NORMAL/PNEUMONIA (any case). `patient_id` defaults to the
Kaggle-style id from the file name; without a `split` column the framework assigns one
(data.split_fractions, data.split_seed) and records it with the run.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pandas as pd

from pneumo.data.folder import CLASS_NAMES, SPLITS, DatasetLayoutError, ImageRecord
from pneumo.data.patients import patient_id_from_filename
from pneumo.paths import is_uri

MANIFEST_SUFFIXES = (".csv", ".parquet", ".pq")
REQUIRED_COLUMNS = ("path", "label")
LABELS = {"0": 0, "1": 1, "0.0": 0, "1.0": 1, **{name.lower(): i for i, name in enumerate(CLASS_NAMES)}}


def read_bytes(location: str) -> bytes:
    """A local file's or an object-store URI's bytes (pyarrow.fs: s3://, gs://, hdfs://, file://)."""
    if is_uri(location):
        from pyarrow import fs

        filesystem, inner = fs.FileSystem.from_uri(location)
        with filesystem.open_input_stream(inner) as stream:
            return stream.read()
    with open(location, "rb") as file:
        return file.read()


def _read_table(manifest: str) -> pd.DataFrame:
    try:
        data = io.BytesIO(read_bytes(manifest))
    except FileNotFoundError:
        raise DatasetLayoutError(f"manifest not found: {manifest}") from None
    if manifest.lower().endswith(".csv"):
        table = pd.read_csv(data, dtype=str, keep_default_na=False)
    else:
        table = pd.read_parquet(data)
    table.columns = [str(c).strip().lower() for c in table.columns]
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise DatasetLayoutError(
            f"manifest {manifest} has no {' or '.join(missing)} column "
            f"(columns: {', '.join(table.columns)}); it needs path and label"
        )
    return table.astype(str)


def _resolve(location: str, manifest: str) -> str:
    if is_uri(location) or Path(location).is_absolute():
        return location
    if is_uri(manifest):
        return str(PurePosixPath(manifest).parent / location).replace(":/", "://", 1)
    return str((Path(manifest).resolve().parent / location).resolve())


@dataclass
class ManifestListing:
    records: list[ImageRecord]
    bad_rows: dict[str, str] = field(default_factory=dict)  # "manifest.csv row 7" -> why it was refused
    has_split: bool = True  # False: the caller assigns splits


def list_manifest(manifest: str | Path) -> ManifestListing:
    """Records of every usable row; a row with an unknown label or split is refused with its row number."""
    manifest = str(manifest)
    table = _read_table(manifest)
    has_split = "split" in table.columns
    listing = ManifestListing(records=[], has_split=has_split)
    first_row = 2 if manifest.lower().endswith(".csv") else 0  # CSV: line numbers as an editor shows them
    for number, row in enumerate(table.to_dict("records"), start=first_row):
        where = f"{manifest} row {number}"
        label = LABELS.get(row["label"].strip().lower())
        split = row["split"].strip().lower() if has_split else ""
        if not row["path"].strip():
            listing.bad_rows[where] = "empty path"
        elif label is None:
            listing.bad_rows[where] = f"label {row['label']!r} is not 0/1 or {'/'.join(CLASS_NAMES)} ({row['path']})"
        elif has_split and split not in SPLITS:
            listing.bad_rows[where] = f"split {row['split']!r} is not one of {', '.join(SPLITS)} ({row['path']})"
        else:
            location = _resolve(row["path"].strip(), manifest)
            patient = row.get("patient_id", "").strip() or patient_id_from_filename(location)
            listing.records.append(ImageRecord(location, label, patient, split))
    return listing
