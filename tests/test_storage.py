"""A full disk under scaling.storage_path is named in config terms, whatever Ray wraps it in (no Ray here)."""

import errno

from pneumo.cli import user_error_kind
from pneumo.training.storage import StorageFullError, storage_full_error


class WorkerGroupError(Exception):
    """Shaped like Ray Train's: the workers' own exceptions by rank."""

    def __init__(self, message: str, worker_failures: dict[int, Exception]):
        super().__init__(message)
        self.worker_failures = worker_failures


def test_a_worker_disk_full_error_names_the_storage_key(tmp_path):
    worker = OSError(errno.ENOSPC, "Error writing bytes to file")
    full = storage_full_error(WorkerGroupError("Training failed", {0: worker}), str(tmp_path))
    assert isinstance(full, StorageFullError) and user_error_kind(full) == "storage error"
    assert str(full).startswith(f"scaling.storage_path={tmp_path}: No space left on device (")
    assert "--resume" in str(full)


def test_other_failures_are_left_alone(tmp_path):
    denied = WorkerGroupError("Training failed", {0: OSError(errno.EACCES, "Permission denied")})
    assert storage_full_error(denied, str(tmp_path)) is None
    assert storage_full_error(RuntimeError("boom"), str(tmp_path)) is None
