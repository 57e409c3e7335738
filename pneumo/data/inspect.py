"""`pneumo data inspect PATH`: the checks a careful user runs before training.

Counts per split and class, patients per split, image sizes and modes, unreadable files, and
leakage between splits: the same bytes, or the same patient, in more than one split. The on-disk
splits are inspected as they are (no re-split).
"""

from __future__ import annotations

import io
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import numpy as np
import pydicom
from PIL import Image

from pneumo.config import DataConfig
from pneumo.data.dicom import is_dicom
from pneumo.data.folder import CLASS_NAMES, SPLITS, ImageRecord
from pneumo.data.sources import decode_stored, list_source, read_stored
from pneumo.data.split import patients_in_several_splits
from pneumo.data.transforms import ImageDecodeError, Preprocessing

DECODE_PROBE = Preprocessing(in_chans=1, image_size=8, mean=(0.5,), std=(0.5,))  # tiny: the decode is the check


@dataclass
class FileFacts:
    sha1: str = ""
    size: str = ""  # "WxH"
    mode: str = ""  # PIL mode, or DICOM's photometric interpretation
    error: str = ""


@dataclass
class Inspection:
    counts: dict[str, dict[str, int]]  # split -> class -> images
    patients: dict[str, int]  # split -> distinct patients
    sizes: Counter  # "WxH" -> images
    modes: Counter  # mode -> images
    unreadable: dict[str, str] = field(default_factory=dict)  # location -> why
    refused: dict[str, str] = field(default_factory=dict)  # manifest rows / npz entries with a bad label or split
    duplicate_bytes_across_splits: list[list[str]] = field(default_factory=list)  # groups of "split: location"
    patients_across_splits: dict[str, list[str]] = field(default_factory=dict)  # patient -> splits
    ignored_files: int = 0

    @property
    def leaks(self) -> bool:
        return bool(self.duplicate_bytes_across_splits or self.patients_across_splits)


def _size_and_mode(stored: bytes | np.ndarray) -> tuple[str, str]:
    """ "WxH" and mode of an image that decodes, read from its header."""
    if isinstance(stored, np.ndarray):
        return f"{stored.shape[1]}x{stored.shape[0]}", "L" if stored.ndim == 2 else "RGB"
    if is_dicom(stored):
        header = pydicom.dcmread(io.BytesIO(stored), stop_before_pixels=True)
        return f"{header.Columns}x{header.Rows}", "DICOM"
    with Image.open(io.BytesIO(stored)) as image:
        return f"{image.width}x{image.height}", image.mode


def _facts(location: str, max_pixels: int) -> FileFacts:
    """Hash, size and mode of one image, decoded as training decodes it, so what training would skip
    (empty, truncated, over the pixel limit, unusable DICOM) is unreadable here too."""
    try:
        stored, digest = read_stored(location)
    except OSError as error:
        return FileFacts(error=f"cannot read file ({error.strerror or error})")
    try:
        decode_stored(stored, DECODE_PROBE, max_pixels)
    except ImageDecodeError as error:
        return FileFacts(digest, error=str(error))
    return FileFacts(digest, *_size_and_mode(stored))


def inspect_dataset(cfg: DataConfig, threads: int = 4) -> Inspection:
    listing = list_source(replace(cfg, resplit_val=False))
    records: list[ImageRecord] = listing.records
    with ThreadPoolExecutor(threads) as pool:  # decoding releases the GIL
        facts = list(pool.map(lambda r: _facts(r.path, cfg.max_image_pixels), records))
    counts = {s: {name: 0 for name in CLASS_NAMES} for s in SPLITS}
    patients: dict[str, set] = defaultdict(set)
    by_hash: dict[str, list[ImageRecord]] = defaultdict(list)
    inspection = Inspection(
        counts, {}, Counter(), Counter(), refused=listing.refused, ignored_files=listing.ignored_files
    )
    for record, fact in zip(records, facts):
        counts[record.split][CLASS_NAMES[record.label]] += 1
        patients[record.split].add(record.patient_id)
        if fact.sha1:
            by_hash[fact.sha1].append(record)
        if fact.error:
            inspection.unreadable[record.path] = fact.error
        else:
            inspection.sizes[fact.size] += 1
            inspection.modes[fact.mode] += 1
    inspection.patients = {s: len(patients[s]) for s in SPLITS}
    inspection.duplicate_bytes_across_splits = [
        [f"{r.split}: {r.path}" for r in group] for group in by_hash.values() if len({r.split for r in group}) > 1
    ]
    inspection.patients_across_splits = {
        pid: sorted(splits) for pid, splits in patients_in_several_splits(records).items()
    }
    return inspection


def format_inspection(inspection: Inspection, limit: int = 10) -> str:
    """The printed report; lists are cut at `limit` entries."""
    lines = [f"{'split':<6} " + "  ".join(f"{name:>9}" for name in CLASS_NAMES) + "   patients"]
    for split in SPLITS:
        per_class = inspection.counts[split]
        lines.append(
            f"{split:<6} "
            + "  ".join(f"{per_class[name]:>9}" for name in CLASS_NAMES)
            + f"   {inspection.patients[split]:>8}"
        )
    lines.append("sizes: " + ", ".join(f"{size} ({n})" for size, n in inspection.sizes.most_common(limit)))
    lines.append("modes: " + ", ".join(f"{mode} ({n})" for mode, n in inspection.modes.most_common()))
    if inspection.ignored_files:
        lines.append(f"ignored non-image files: {inspection.ignored_files}")
    for title, entries in (("unreadable images", inspection.unreadable), ("refused rows", inspection.refused)):
        if entries:
            lines.append(f"{title}: {len(entries)}")
            lines += [f"  {where}: {why}" for where, why in list(entries.items())[:limit]]
    groups = inspection.duplicate_bytes_across_splits
    lines.append(f"identical files in more than one split: {len(groups)}")
    lines += ["  " + " == ".join(group) for group in groups[:limit]]
    shared = inspection.patients_across_splits
    lines.append(f"patients in more than one split: {len(shared)}")
    lines += [f"  {pid}: {', '.join(splits)}" for pid, splits in list(shared.items())[:limit]]
    lines.append(
        "LEAKAGE between splits: fix it before trusting test metrics"
        if inspection.leaks
        else "no leakage between splits"
    )
    return "\n".join(lines)
