"""A cache of decoded, resized images across runs and Tune trials (data.cache_dir).

Decoding and resizing JPEGs dominates data cost on small models; a cached dataset is read back from
uncompressed NumPy shards (.npz, one per block of the decoded dataset) instead. Shards, not Parquet: on this
project's bench, Ray Data read 2,000 decoded 224 px films back at ~5,000 images/s from shards and
at ~850 from Parquet, where decoding the JPEGs gave ~1,200. The key covers everything that changes
the decoded rows: each record's location, label, split and patient, each file's size and
modification time, the model's preprocessing and the pixel limit. A changed file or setting gives
a new key, so a stale entry is never read; entries are written to a temporary folder and renamed,
so a half-written one never is.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Optional

import numpy as np
import ray.data

from pneumo.data.folder import ImageRecord
from pneumo.data.medmnist import LOCATION_SEPARATOR, is_npz_location
from pneumo.data.transforms import Preprocessing
from pneumo.paths import durable_path, is_uri

logger = logging.getLogger(__name__)

CACHE_VERSION = 3  # bump when the decoded row layout, the storage or the decoded pixels change (3: JPEG DCT scaling)
COMPLETE_MARKER = "shards.json"  # written last: the shard files in row order


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
    digest = hashlib.sha256(
        json.dumps(
            {"version": CACHE_VERSION, "preprocessing": preprocessing.to_dict(), "max_pixels": max_pixels},
            sort_keys=True,
        ).encode()
    )
    for r in records:  # in their order: the cached rows keep it
        digest.update(f"{r.path}\t{r.label}\t{r.split}\t{r.patient_id}\t{stats[_file_of(r.path)]}\n".encode())
    return digest.hexdigest()


def _save_shard(batch: dict[str, np.ndarray], directory: str) -> dict[str, list[str]]:
    """Ray Data UDF: one batch of decoded rows -> one .npz shard; returns its path."""
    path = Path(directory) / f"{uuid.uuid4().hex}.npz"
    np.savez(
        path,
        **{
            column: np.asarray(values) if np.asarray(values).dtype != object else np.asarray(values).astype(str)
            for column, values in batch.items()
        },
    )
    return {"shard": [str(path)]}


def _load_shards(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Ray Data UDF: shard paths -> their rows."""
    parts = []
    for path in batch["shard"]:
        with np.load(path) as shard:
            parts.append({column: shard[column] for column in shard.files})
    return {column: np.concatenate([part[column] for part in parts]) for column in parts[0]}


def read_cached(cache_dir: str, key: str) -> Optional[ray.data.Dataset]:
    """The decoded dataset stored under `key` (rows in their original order), or None."""
    entry = Path(durable_path(cache_dir)) / key
    if not (entry / COMPLETE_MARKER).is_file():
        return None
    shards = [str(entry / name) for name in json.loads((entry / COMPLETE_MARKER).read_text())]
    return ray.data.from_items([{"shard": shard} for shard in shards], override_num_blocks=len(shards)).map_batches(
        _load_shards, batch_size=1, num_cpus=0.5
    )


def write_cached(decoded: ray.data.Dataset, cache_dir: str, key: str) -> bool:
    """Store a decoded dataset under `key` (atomically: written aside, then renamed); False when it
    cannot be stored (a full disk): the run goes on with the images it decoded, and no part of the
    entry is left behind."""
    entry = Path(durable_path(cache_dir)) / key  # absolute: Ray Data's tasks run in other processes
    staging = entry.parent / f".{key}.{uuid.uuid4().hex}"
    try:
        staging.mkdir(parents=True)
        # one shard per block: read back, the dataset has the same blocks, so a cache hit trains on exactly
        # the batches and worker shards a fresh decode gives (same seed, same results)
        written = decoded.map_batches(
            _save_shard, fn_kwargs={"directory": str(staging)}, batch_size=None, num_cpus=0.5
        ).take_all()
        (staging / COMPLETE_MARKER).write_text(json.dumps([Path(row["shard"]).name for row in written]))
    except Exception as error:  # OSError here, or Ray's wrapping of the OSError a shard-writing task raised
        shutil.rmtree(staging, ignore_errors=True)
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]  # Ray's wrapping is long
        reason = next((line for line in reversed(lines) if "[Errno" in line), lines[0] if lines else repr(error))
        logger.warning(
            "data.cache_dir=%s: cannot store the decoded images (%s); this run goes on without "
            "caching them and left no partial entry",
            cache_dir,
            reason,
        )
        return False
    try:
        staging.rename(entry)
    except OSError:  # another run stored the same entry first; theirs is as good
        shutil.rmtree(staging, ignore_errors=True)
    return True
