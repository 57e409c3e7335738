"""Run by test_cluster.py in its own process: a two-node Ray cluster on this machine
(ray.cluster_utils.Cluster), one smoke experiment with workers spread over both nodes, then `pneumo
predict`'s pipeline scoring the data folder with an actor pool of two, and the facts the test checks
written as JSON to the file it names (stdout also carries Ray's own log
lines, which can come after any line this script prints)."""

import json
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import ray
from mlflow.tracking import MlflowClient
from ray.cluster_utils import Cluster
from ray.util.state import list_actors

from pneumo.cli.ray_start import free_local_port
from pneumo.cluster import check_shared_paths
from pneumo.config import ConfigError, load_config, with_updates
from pneumo.experiment import run_experiment
from pneumo.inference.predict import PredictSettings, predict_archive

T = TypeVar("T")


def watch_actor_nodes(class_prefix: str, found: set, stop: threading.Event) -> None:
    """Adds to `found` the node of every live actor whose class name starts with `class_prefix`, until `stop`."""
    while not stop.is_set():
        for actor in list_actors(filters=[("state", "=", "ALIVE")]):
            if actor.class_name.startswith(class_prefix):
                found.add(actor.node_id)
        stop.wait(0.5)


def nodes_of(class_prefix: str, work: Callable[[], T]) -> tuple[T, list[str]]:
    """What `work()` returns, and the nodes its actors of `class_prefix…` ran on meanwhile."""
    found, stop = set(), threading.Event()
    watcher = threading.Thread(target=watch_actor_nodes, args=(class_prefix, found, stop), daemon=True)
    watcher.start()
    try:
        return work(), sorted(found)
    finally:
        stop.set()
        watcher.join()


def main(yaml: str, result_path: str) -> None:
    dashboard_port = free_local_port()
    # as `pneumo run` does for its own Ray: Ray Train's cleaner actor must find this cluster's API server
    os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{dashboard_port}"
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 2,  # logical: each node holds a training worker, then a scoring actor and read tasks
            "include_dashboard": True,
            "dashboard_port": dashboard_port,
            "node_ip_address": "127.0.0.1",
        },
    )
    cluster.add_node(num_cpus=2, node_ip_address="127.0.0.1")
    ray.init(address=cluster.address)
    cluster.wait_for_nodes()
    cfg = load_config([yaml], ["scaling.placement_strategy=SPREAD"])
    outcome, worker_nodes = nodes_of("RayTrainWorker", lambda: run_experiment(cfg))
    client = MlflowClient(cfg.mlflow.tracking_uri)
    # Ray Data spreads the pool's actors over the nodes (its default scheduling strategy, SPREAD)
    settings = PredictSettings(runtime="torch", batch_size=8, actors=2, read_cpus=0.25)
    out = Path(result_path).with_name("scores")
    predicted, scorer_nodes = nodes_of(  # Ray Data names the pool's actor class MapWorker(<operator>)
        "MapWorker(", lambda: predict_archive(outcome.model_dir, cfg.data.path, str(out), cfg, settings)
    )
    try:  # what run_experiment checks first, for a data folder no node has
        check_shared_paths(with_updates(cfg, {"data.path": str(Path(yaml).parent / "missing-chest_xray")}))
        invisible = ""
    except ConfigError as error:
        invisible = str(error)
    Path(result_path).write_text(
        json.dumps(
            {
                "nodes": len([n for n in ray.nodes() if n["Alive"]]),
                "worker_nodes": worker_nodes,
                "scorer_nodes": scorer_nodes,
                "predicted": predicted.summary["counts"]["status"],
                "files": sum(1 for path in Path(cfg.data.path).rglob("*") if path.is_file()),
                "epochs_logged": sorted(m.step for m in client.get_metric_history(outcome.mlflow_run_id, "val_auroc")),
                "status": client.get_run(outcome.mlflow_run_id).info.status,
                "invisible_data_error": invisible,
            }
        )
    )
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
