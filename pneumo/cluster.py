"""Checks that a run can work on the cluster it is on, before anything starts.

On one node every local path works. With more than one node, each training worker and Ray Data
task may run elsewhere, so scaling.storage_path must be shared storage (a bucket or a filesystem
every node mounts), a local data.path must be visible on every node, and a sqlite MLflow store
must be too (a tracking server is the usual answer). Each path is probed on every
alive node by a zero-CPU task pinned there; the error names the nodes that cannot see it.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from pneumo.config import ConfigError, ExperimentConfig
from pneumo.paths import is_uri
from pneumo.tracking import resolve_tracking_uri

SHARED_STORAGE_HINT = "use shared storage (s3://…, gs://…, or a filesystem every node mounts)"


@ray.remote(num_cpus=0)
def _exists(path: str) -> bool:
    return os.path.exists(path)


def alive_nodes() -> list[dict]:
    return [node for node in ray.nodes() if node["Alive"]]


def nodes_missing(path: str) -> list[str]:
    """Addresses of the alive nodes on which `path` does not exist."""
    nodes = alive_nodes()
    probes = [
        _exists.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote(path)
        for node in nodes
    ]
    return [node["NodeManagerAddress"] for node, seen in zip(nodes, ray.get(probes)) if not seen]


def check_shared_paths(cfg: ExperimentConfig) -> None:
    """On a multi-node cluster: storage_path and a local data.path must be visible from every node."""
    if len(alive_nodes()) < 2:
        return
    storage = cfg.scaling.storage_path
    if not is_uri(storage):
        folder = Path(storage).resolve()
        folder.mkdir(parents=True, exist_ok=True)
        marker = folder / f".pneumo-shared-{uuid.uuid4().hex}"  # a new file: only shared storage shows it
        marker.touch()
        try:
            missing = nodes_missing(str(marker))
        finally:
            marker.unlink(missing_ok=True)
        if missing:
            raise ConfigError(
                f"scaling.storage_path={storage} is node-local disk: nodes {', '.join(missing)} "
                f"cannot see it, and checkpoints must be readable from any node; {SHARED_STORAGE_HINT}"
            )
    data = cfg.data.path
    if not is_uri(data):
        missing = nodes_missing(str(Path(data).resolve()))
        if missing:
            raise ConfigError(f"data.path={data} is not visible on nodes {', '.join(missing)}; {SHARED_STORAGE_HINT}")
    tracking = resolve_tracking_uri(cfg.mlflow)
    if tracking.startswith("sqlite:///"):  # the Train controller and Tune trials log from any node
        missing = nodes_missing(tracking.removeprefix("sqlite:///"))
        if missing:
            raise ConfigError(
                f"mlflow.tracking_uri={tracking} is a file nodes {', '.join(missing)} cannot reach; "
                "run `mlflow server` on the head and set mlflow.tracking_uri=http://<head-ip>:5000"
            )
