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


def split_by_patient(records: list[ImageRecord], fractions: tuple[float, float, float], seed: int) -> list[ImageRecord]:
    """Records assigned to train/val/test by patient, stratified by each patient's label: for a manifest
    without a `split` column. Each held-out split gets at least one patient of each class that has three
    or more; the same records, fractions and seed always give the same split."""
    patient_label = _patient_labels(records)
    rng = random.Random(seed)
    assigned: dict[str, str] = {}
    for label in (0, 1):
        patients = sorted(pid for pid, lab in patient_label.items() if lab == label)
        rng.shuffle(patients)
        n_test, n_val = (_held_out(len(patients), fraction) for fraction in (fractions[2], fractions[1]))
        for i, pid in enumerate(patients):
            assigned[pid] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return [replace(r, split=assigned[r.patient_id]) for r in records]


def _held_out(n_patients: int, fraction: float) -> int:
    if fraction <= 0 or n_patients < 3:
        return 0
    return max(1, round(n_patients * fraction))


def split_csv(rows: list[dict]) -> str:
    """The split pneumo assigned, as a manifest (path,label,patient_id,split) that reproduces it."""
    import pandas as pd

    return pd.DataFrame(rows, columns=["path", "label", "patient_id", "split"]).to_csv(index=False)
