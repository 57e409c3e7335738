"""What `pneumo predict` scores: DATA -> one row per input file, (path, true_label).

    folder     every file at any depth (JPEG, PNG, DICOM with or without a suffix, and whatever else is
               there: a file that is not a film still gets its row, `unreadable`); hidden files are skipped.
               A film under a folder named NORMAL or PNEUMONIA (any case, any depth) carries that label.
    manifest   CSV or Parquet with a `path` column (relative to the manifest, absolute, or a URI) and an
               optional `label` column (0/1 or NORMAL/PNEUMONIA).
    npz        MedMNIST `.npz`: every image of every split, with its label.

Local paths and object stores (s3://, gs://, anything pyarrow.fs opens) alike. Listing reads no file
contents; paths that do not exist are listed as given and become `missing` rows when read.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Optional

import pandas as pd
import pyarrow as pa
from pyarrow import fs

from pneumo.data.folder import CLASS_NAMES, DatasetLayoutError
from pneumo.data.manifest import LABELS, MANIFEST_SUFFIXES, _resolve, read_bytes
from pneumo.data.medmnist import list_npz
from pneumo.paths import is_uri

logger = logging.getLogger(__name__)
LISTING_SCHEMA = pa.schema([("path", pa.string()), ("true_label", pa.string())])


@dataclass
class Listing:
    table: pa.Table  # LISTING_SCHEMA: one row per input file, sorted by path, no duplicates
    source_format: str  # folder | manifest | npz
    source: str = ""  # DATA as given
    notes: list[str] = field(default_factory=list)  # what was skipped and why, one line each

    @property
    def labelled(self) -> int:
        return len(self.table) - self.table["true_label"].null_count


def source_format(location: str) -> str:
    """folder, manifest (.csv/.parquet/.pq) or npz, from the location's suffix."""
    suffix = PurePosixPath(location).suffix.lower()
    if suffix == ".npz":
        return "npz"
    return "manifest" if suffix in MANIFEST_SUFFIXES else "folder"


def list_inputs(location: str) -> Listing:
    """Every input file of DATA; raises DatasetLayoutError naming DATA when there is nothing to list."""
    kind = source_format(location)
    listing = {"npz": _list_npz, "manifest": _list_manifest, "folder": _list_folder}[kind](location)
    listing.source = location
    if len(listing.table) == 0:
        raise DatasetLayoutError(
            f"{location}: no files to score" + (f" ({'; '.join(listing.notes)})" if listing.notes else "")
        )
    return listing


def _table(paths: list[str], labels: list[Optional[str]], kind: str, notes: list[str]) -> Listing:
    table = pa.table({"path": paths, "true_label": labels}, schema=LISTING_SCHEMA)
    unique = table.group_by("path", use_threads=False).aggregate([("true_label", "first")])
    unique = unique.rename_columns(["path", "true_label"]).sort_by("path")
    if len(unique) < len(table):
        notes.append(f"{len(table) - len(unique)} repeated path(s) listed once")
    return Listing(unique.cast(LISTING_SCHEMA), kind, notes=notes)


def folder_label(relative: PurePosixPath) -> Optional[str]:
    """NORMAL or PNEUMONIA when a folder between the root and the file is named so (the nearest wins)."""
    for part in reversed(relative.parts[:-1]):
        if part.upper() in CLASS_NAMES:
            return part.upper()
    return None


def _filesystem(location: str) -> tuple[fs.FileSystem, str]:
    if is_uri(location):
        return fs.FileSystem.from_uri(location)
    return fs.LocalFileSystem(), str(Path(location).expanduser().resolve())


def _list_folder(location: str) -> Listing:
    filesystem, root = _filesystem(location)
    if filesystem.get_file_info(root).type != fs.FileType.Directory:
        raise DatasetLayoutError(f"{location}: no such folder, manifest (.csv, .parquet) or .npz file")
    infos = filesystem.get_file_info(fs.FileSelector(root, recursive=True))
    paths, labels, hidden = [], [], 0
    prefix = location.split("://", 1)[0] + "://" if is_uri(location) else ""
    for info in infos:
        if info.type != fs.FileType.File:
            continue
        relative = PurePosixPath(info.path).relative_to(PurePosixPath(root))
        if any(part.startswith(".") for part in relative.parts):  # .DS_Store, ._film.jpeg, .git/
            hidden += 1
            continue
        paths.append(prefix + info.path)
        labels.append(folder_label(relative))
    return _table(paths, labels, "folder", [f"{hidden} hidden file(s) skipped"] if hidden else [])


def _read_manifest(location: str) -> pd.DataFrame:
    try:
        data = io.BytesIO(read_bytes(location))
    except FileNotFoundError:
        raise DatasetLayoutError(f"manifest not found: {location}") from None
    try:
        table = (
            pd.read_csv(data, dtype=str, keep_default_na=False)
            if location.lower().endswith(".csv")
            else pd.read_parquet(data)
        )
    except (ValueError, pa.ArrowException, pd.errors.ParserError) as error:
        raise DatasetLayoutError(f"manifest {location} cannot be read ({error})") from None
    table.columns = [str(c).strip().lower() for c in table.columns]
    if "path" not in table.columns:
        raise DatasetLayoutError(
            f"manifest {location} has no path column (columns: {', '.join(table.columns) or 'none'})"
        )
    return table


def _list_manifest(location: str) -> Listing:
    table = _read_manifest(location)
    paths, labels, empty, unknown = [], [], 0, 0
    has_labels = "label" in table.columns
    for row in table.astype(str).to_dict("records"):
        if not row["path"].strip():
            empty += 1
            continue
        paths.append(_resolve(row["path"].strip(), location))
        code = LABELS.get(row["label"].strip().lower()) if has_labels else None
        unknown += has_labels and code is None and row["label"].strip() != ""
        labels.append(None if code is None else CLASS_NAMES[code])
    notes = [f"{empty} row(s) without a path skipped"] if empty else []
    if unknown:
        notes.append(f"{unknown} label(s) not 0/1 or NORMAL/PNEUMONIA read as unknown")
    return _table(paths, labels, "manifest", notes)


def _list_npz(location: str) -> Listing:
    records, bad = list_npz(location)
    notes = [f"{len(bad)} image(s) with a label outside 0/1 scored without one"] if bad else []
    paths = [r.path for r in records] + list(bad)
    labels = [CLASS_NAMES[r.label] for r in records] + [None] * len(bad)
    return _table(paths, labels, "npz", notes)
