"""Patient ids from Kaggle "Chest X-Ray Images (Pneumonia)" file names.

NORMAL films are named ``IM-0115-0001.jpeg`` or ``NORMAL2-IM-1427-0001.jpeg`` (patient, then image
number); PNEUMONIA films ``person12_bacteria_47.jpeg`` (patient, organism, running image counter).
Any other name is its own patient, so unknown files can never leak a patient across splits.
"""

from __future__ import annotations

import re
from pathlib import PurePath

_PATIENT_PATTERNS = (
    re.compile(r"(?P<patient>(?:NORMAL2-)?IM-\d+)-\d+", re.IGNORECASE),
    re.compile(r"(?P<patient>person\d+)_(?:bacteria|virus)_\d+", re.IGNORECASE),
)


def patient_id_from_filename(filename: str) -> str:
    """Patient id of an image file name or path; the file stem when the name follows no Kaggle pattern."""
    stem = PurePath(filename).stem
    for pattern in _PATIENT_PATTERNS:
        match = pattern.fullmatch(stem)
        if match:
            return match["patient"]
    return stem
