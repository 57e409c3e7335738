"""A cache of decoded, resized images across runs and Tune trials (data.cache_dir).

Decoding and resizing JPEGs dominates data cost on small models; a cached dataset is read back as
Parquet (uint8 tensor column) instead. The key covers everything that changes the decoded rows: each
record's location, label, split and patient, each file's size and modification time, the model's
preprocessing and the pixel limit. A changed file or setting gives a new key, so a stale entry is
never read; entries are written to a temporary folder and renamed, so a half-written one never is.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Optional

import ray.data

from pneumo.data.folder import ImageRecord
from pneumo.data.manifest import is_uri
from pneumo.data.medmnist import LOCATION_SEPARATOR, is_npz_location
from pneumo.data.transforms import Preprocessing

CACHE_VERSION = 1  # bump when the decoded row layout changes
COMPLETE_MARKER = "_COMPLETE"


def _file_of(location: str) -> str:
    return location.rpartition(LOCATION_SEPARATOR)[0] if is_npz_location(location) else location


def _stats(locations: set[str]) -> dict[str, tuple[int, int]]:
    """location -> (size, mtime ns); (-1, -1) for files that cannot be seen (decoding reports those)."""
    stats = {}
    local = [loc for loc in locations if not is_uri(loc)]
    for location in local:
        try:
            info = os.stat(location)
            stats[location] = (info.st_size, info.st_mtime_ns)
        except OSError:
            stats[location] = (-1, -1)
    remote = sorted(locations - set(local))
    if remote:
        from pyarrow import fs

        for location in remote:
            filesystem, inner = fs.FileSystem.from_uri(location)
            info = filesystem.get_file_info(inner)
            mtime = info.mtime_ns if info.mtime_ns is not None else -1
            stats[location] = (info.size if info.size is not None else -1, mtime)
    return stats


def cache_key(records: list[ImageRecord], preprocessing: Preprocessing, max_pixels: int) -> str:
    """SHA-256 over the records, their files' size and mtime, and the decoding settings."""
    stats = _stats({_file_of(r.path) for r in records})
    digest = hashlib.sha256(json.dumps({"version": CACHE_VERSION, "preprocessing": preprocessing.to_dict(),
                                        "max_pixels": max_pixels}, sort_keys=True).encode())
    for r in sorted(records, key=lambda r: r.path):
        digest.update(f"{r.path}\t{r.label}\t{r.split}\t{r.patient_id}\t{stats[_file_of(r.path)]}\n".encode())
    return digest.hexdigest()


def read_cached(cache_dir: str, key: str) -> Optional[ray.data.Dataset]:
    """The decoded dataset stored under `key`, or None."""
    entry = Path(cache_dir).resolve() / key
    if not (entry / COMPLETE_MARKER).is_file():
        return None
    return ray.data.read_parquet(str(entry), file_extensions=["parquet"])


def write_cached(decoded: ray.data.Dataset, cache_dir: str, key: str) -> None:
    """Store a decoded dataset under `key` (atomically: written aside, then renamed)."""
    entry = Path(cache_dir).resolve() / key  # absolute: Ray Data's write tasks run in other processes
    staging = entry.parent / f".{key}.{uuid.uuid4().hex}"
    decoded.write_parquet(str(staging))
    (staging / COMPLETE_MARKER).write_text(key)
    try:
        staging.rename(entry)
    except OSError:  # another run stored the same entry first; theirs is as good
        shutil.rmtree(staging, ignore_errors=True)
