"""Ray Data CPU tasks: a batch of listed paths -> their SHA-256 and decoded films, one row per path.

Reading and decoding are those of training and serving (`pneumo.data.sources.read_stored`, which
reads local files, object-store URIs and `.npz` entries, then `decode_stored`: the decode in
pneumo/data/transforms.py, DICOM through pneumo/data/dicom.py). Every failure is caught per file and
becomes the row's status and error: Ray Data would otherwise fail the whole block, or the job.
"""

from __future__ import annotations

import hashlib

import numpy as np

from pneumo.data.sources import decode_stored, read_stored
from pneumo.data.transforms import ImageDecodeError, Preprocessing

DECODED = ""  # status of a row whose film decoded: the scorer gives it its final status
MISSING, UNREADABLE = "missing", "unreadable"


def read_one(location: str, preprocessing: Preprocessing, max_pixels: int) -> tuple[np.ndarray, str, str, str]:
    """(film uint8 (C, H, W), SHA-256 of the stored bytes, status, error) of one path; never raises."""
    side = preprocessing.image_size
    blank = np.zeros((preprocessing.in_chans, side, side), np.uint8)
    try:
        stored, _ = read_stored(location)
    except FileNotFoundError:
        return blank, "", MISSING, "file not found"
    except IsADirectoryError:
        return blank, "", UNREADABLE, "a folder, not a file"
    except Exception as error:  # permissions, a network error, a malformed .npz location
        return blank, "", UNREADABLE, f"cannot read file ({getattr(error, 'strerror', None) or error})"
    digest = hashlib.sha256(stored.tobytes() if isinstance(stored, np.ndarray) else stored).hexdigest()
    try:
        return decode_stored(stored, preprocessing, max_pixels), digest, DECODED, ""
    except ImageDecodeError as error:
        return blank, digest, UNREADABLE, str(error)
    except Exception as error:  # a decoder bug must cost one row, not the job
        return blank, digest, UNREADABLE, f"cannot decode ({type(error).__name__}: {error})"


def read_batch(batch: dict[str, np.ndarray], preprocessing: Preprocessing, max_pixels: int) -> dict[str, np.ndarray]:
    """Ray Data UDF: {path, true_label} -> adds image, sha256, status and error."""
    films, digests, statuses, errors = zip(*(read_one(str(p), preprocessing, max_pixels) for p in batch["path"]))
    return {
        **batch,
        "image": np.stack(films),
        "sha256": np.array(digests, dtype=object),
        "status": np.array(statuses, dtype=object),
        "error": np.array(errors, dtype=object),
    }
