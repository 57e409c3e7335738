"""Where relative paths land: never in a folder that is deleted under the run.

A `ray job submit --working-dir .` entrypoint runs inside Ray's unpacked copy of the upload
(`…/runtime_resources/working_dir_files/_ray_pkg_<hash>/`), which Ray deletes with the job: a relative
`mlflow.db`, `results/` or `data/cache` written there is lost without a word. When the working
directory is such a temporary folder, relative storage paths resolve under PNEUMO_HOME instead
(default ~/.pneumo on the node that runs the driver); elsewhere they resolve against the working
directory as always. Absolute paths and URIs (s3://, http://) are never moved.

    durable_path("results")          # /home/me/project/results, or ~/.pneumo/results inside a Ray job
    durable_tracking_uri(None)       # sqlite:////…/mlflow.db by the same rule
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path
from typing import Optional

from pneumo.config import ConfigError, ExperimentConfig

HOME_ENV = "PNEUMO_HOME"  # durable root for relative paths when the working directory is temporary
DEFAULT_HOME = "~/.pneumo"
DEFAULT_DB = "mlflow.db"  # the sqlite store when neither mlflow.tracking_uri nor $MLFLOW_TRACKING_URI is set
SQLITE = "sqlite:///"
SET_THESE = (
    "mlflow.tracking_uri=<sqlite:////abs/path/mlflow.db or http://mlflow-host:5000> and "
    "scaling.storage_path=<absolute path or s3://bucket/prefix>"
)

# Path parts that mark a folder some runtime deletes on its own: Ray's unpacked runtime-env packages
# (working_dir, py_modules) and its per-session folders.
RAY_PACKAGE_PARTS = ("runtime_resources",)
RAY_SESSION_PREFIX = "session_"


def is_uri(location: str) -> bool:
    """s3://, gs://, http://, file://…: a location pneumo never rewrites or resolves."""
    return "://" in location


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _ray_temp_roots() -> list[Path]:
    """Ray's temp folders: $RAY_TMPDIR/ray (tests, custom setups) and the default /tmp/ray."""
    roots = [Path(tempfile.gettempdir()) / "ray"]
    if os.environ.get("RAY_TMPDIR"):
        roots.insert(0, Path(os.environ["RAY_TMPDIR"]) / "ray")
    return [root.resolve() for root in roots]


def temporary_reason(folder: Optional[Path] = None) -> Optional[str]:
    """Why `folder` (default: the working directory) will vanish, or None when it is durable."""
    folder = (folder or Path.cwd()).resolve()
    parts = folder.parts
    if any(part in RAY_PACKAGE_PARTS for part in parts) or any(p.startswith("_ray_pkg_") for p in parts):
        return f"{folder} is Ray's unpacked job package (deleted with the job)"
    for root in _ray_temp_roots():
        if _inside(folder, root) and any(p.startswith(RAY_SESSION_PREFIX) for p in folder.relative_to(root).parts):
            return f"{folder} is inside a Ray session folder (deleted when Ray stops)"
    if _inside(folder, Path("/dev/shm")):
        return f"{folder} is in shared memory (deleted at reboot)"
    return None


def pneumo_home() -> Path:
    """$PNEUMO_HOME (default ~/.pneumo), created; refuses a home that is itself temporary or unwritable."""
    home = Path(os.path.expanduser(os.environ.get(HOME_ENV) or DEFAULT_HOME)).resolve()
    reason = temporary_reason(home)
    if reason:
        raise ConfigError(f"{HOME_ENV}={home}: {reason}; point {HOME_ENV} at a lasting folder or set {SET_THESE}")
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(
            f"{HOME_ENV}={home} cannot be created ({error.strerror}); the working directory "
            f"{temporary_reason()}: point {HOME_ENV} at a writable folder or set {SET_THESE}"
        ) from None
    if not os.access(home, os.W_OK):
        raise ConfigError(
            f"{HOME_ENV}={home} is not writable; point {HOME_ENV} at a writable folder or set {SET_THESE}"
        )
    return home


def relative_root() -> Path:
    """What relative storage paths are relative to: the working directory, or PNEUMO_HOME when it is temporary."""
    return pneumo_home() if temporary_reason() else Path.cwd()


def durable_path(location: str) -> str:
    """A storage location as an absolute path that outlives the run (URIs and absolute paths as given)."""
    if is_uri(location):
        return location
    path = Path(location).expanduser()
    return str(path if path.is_absolute() else (relative_root() / path).resolve())


def durable_tracking_uri(uri: Optional[str]) -> str:
    """A tracking URI whose sqlite file is absolute and durable; None means the default sqlite store."""
    if not uri:
        return f"{SQLITE}{durable_path(DEFAULT_DB)}"
    if uri.startswith(SQLITE):
        return f"{SQLITE}{durable_path(uri.removeprefix(SQLITE))}"
    return uri


def durable_data_path(location: str, synthesize: bool) -> str:
    """data.path: read where it is when it exists (a job may ship its data), else — when it is to be
    generated — placed like any other storage path."""
    if is_uri(location) or Path(location).is_absolute() or Path(location).exists() or not synthesize:
        return location if is_uri(location) else str(Path(location).resolve())
    return durable_path(location)


def anchor_paths(cfg: ExperimentConfig) -> ExperimentConfig:
    """A copy of `cfg` whose storage paths are absolute and durable, so every Ray process (whatever its
    working directory) writes to the same lasting place."""
    data = dataclasses.replace(
        cfg.data,
        path=durable_data_path(cfg.data.path, cfg.data.synthesize_if_missing),
        cache_dir=durable_path(cfg.data.cache_dir) if cfg.data.cache_dir else None,
    )
    scaling = dataclasses.replace(cfg.scaling, storage_path=durable_path(cfg.scaling.storage_path))
    tracking_uri = cfg.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    mlflow_cfg = dataclasses.replace(cfg.mlflow, tracking_uri=durable_tracking_uri(tracking_uri))
    return dataclasses.replace(cfg, data=data, scaling=scaling, mlflow=mlflow_cfg)


def describe_storage(cfg: ExperimentConfig) -> str:
    """Lines that say where a run writes (printed before it starts), with why, when relocated."""
    reason = temporary_reason()
    lines = [f"working directory {reason}: relative paths go under {HOME_ENV}={pneumo_home()}"] if reason else []
    lines += [
        f"mlflow store: {cfg.mlflow.tracking_uri}",
        f"results:      {cfg.scaling.storage_path}",
        f"data:         {cfg.data.path}",
    ]
    if cfg.data.cache_dir:
        lines.append(f"data cache:   {cfg.data.cache_dir}")
    return "\n".join(lines)
