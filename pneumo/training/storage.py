"""A full disk under scaling.storage_path, said in the user's terms.

Ray Train copies each checkpoint from the worker into scaling.storage_path. When that disk fills up the
copy fails half way, the worker raises `OSError: [Errno 28]`, and Ray Train ends the run with a
`WorkerGroupError` whose message is the worker's traceback. Ray registers a checkpoint only once it is
copied whole, so the half-written folder is never the run's best checkpoint nor the one `--resume`
restores from; the user needs to hear which setting points at the full disk and that resuming is safe.

Imports no Ray: it reads the exceptions Ray Train raises by their attributes.
"""

from __future__ import annotations

import errno
import shutil
from typing import Optional

from pneumo.paths import is_uri


class StorageFullError(Exception):
    """scaling.storage_path ran out of space while a checkpoint was written."""


def storage_full_error(error: BaseException, storage_path: str) -> Optional[StorageFullError]:
    """The StorageFullError to raise instead of `error` when a disk-full error caused it, else None."""
    if not _caused_by_full_disk(error):
        return None
    where = "" if is_uri(storage_path) else f" ({shutil.disk_usage(storage_path).free / 2**20:.1f} MiB free)"
    return StorageFullError(
        f"scaling.storage_path={storage_path}: No space left on device{where} while writing a checkpoint; "
        "free space there or point scaling.storage_path at a larger disk, then `pneumo run … --resume` "
        "continues from the last complete checkpoint (a half-written one is never used)",
    )


def _caused_by_full_disk(error: BaseException) -> bool:
    """ENOSPC in the error, its causes, or the exceptions of the workers it reports (Ray Train's
    WorkerGroupError.worker_failures, ControllerError.controller_failure)."""
    pending, seen = [error], set()
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno == errno.ENOSPC:
            return True
        pending += [current.__cause__, current.__context__, getattr(current, "controller_failure", None)]
        pending += list((getattr(current, "worker_failures", None) or {}).values())
    return False
