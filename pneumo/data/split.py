"""Patient-grouped, label-stratified re-split of train+val.

Kaggle's val split holds 16 images, too few to pick checkpoints or thresholds. We pool train and val
and move whole patients into val, the same share of NORMAL and of PNEUMONIA patients, so no patient
has images on both sides and the class balance of val matches train. Test is never touched.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from dataclasses import replace

from pneumo.data.folder import ImageRecord


def _patient_labels(records: list[ImageRecord]) -> dict[str, int]:
    """A patient's label is the majority label of their images (ties go to PNEUMONIA)."""
    votes: dict[str, Counter] = defaultdict(Counter)
    for record in records:
        votes[record.patient_id][record.label] += 1
    return {pid: int(count[1] >= count[0]) for pid, count in votes.items()}


def resplit_by_patient(records: list[ImageRecord], val_fraction: float, seed: int) -> list[ImageRecord]:
    """Records with train/val reassigned by patient; test records are returned unchanged."""
    pool = [r for r in records if r.split in ("train", "val")]
    patient_label = _patient_labels(pool)
    val_patients: set[str] = set()
    rng = random.Random(seed)
    for label in (0, 1):
        patients = sorted(pid for pid, lab in patient_label.items() if lab == label)
        rng.shuffle(patients)
        n_val = max(1, round(len(patients) * val_fraction)) if len(patients) > 1 else 0
        val_patients.update(patients[:n_val])
    moved = [replace(r, split="val" if r.patient_id in val_patients else "train") for r in pool]
    return moved + [r for r in records if r.split == "test"]


def patients_in_several_splits(records: list[ImageRecord]) -> dict[str, set[str]]:
    """Patient id -> splits, for patients whose images sit in more than one split (leakage)."""
    splits: dict[str, set[str]] = defaultdict(set)
    for record in records:
        splits[record.patient_id].add(record.split)
    return {pid: s for pid, s in splits.items() if len(s) > 1}
