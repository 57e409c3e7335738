"""Run by test_cluster.py in its own process: a two-node Ray cluster on this machine
(ray.cluster_utils.Cluster), one smoke experiment with workers spread over both nodes, and the
facts the test checks written as JSON to the file it names (stdout also carries Ray's own log
lines, which can come after any line this script prints)."""

import json
import os
import sys
import threading
from pathlib import Path

import ray
from mlflow.tracking import MlflowClient
from ray.cluster_utils import Cluster
from ray.util.state import list_actors

from pneumo.cli.ray_start import free_local_port
from pneumo.cluster import check_shared_paths
from pneumo.config import ConfigError, load_config, with_updates
from pneumo.experiment import run_experiment


def watch_worker_nodes(found: set, stop: threading.Event) -> None:
    while not stop.is_set():
        for actor in list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")]):
            found.add(actor.node_id)
        stop.wait(0.5)


def main(yaml: str, result_path: str) -> None:
    dashboard_port = free_local_port()
    # as `pneumo run` does for its own Ray: Ray Train's cleaner actor must find this cluster's API server
    os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{dashboard_port}"
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 1,
            "include_dashboard": True,
            "dashboard_port": dashboard_port,
            "node_ip_address": "127.0.0.1",
        },
    )
    cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
    ray.init(address=cluster.address)
    cluster.wait_for_nodes()
    cfg = load_config([yaml], ["scaling.placement_strategy=SPREAD"])
    found, stop = set(), threading.Event()
    watcher = threading.Thread(target=watch_worker_nodes, args=(found, stop), daemon=True)
    watcher.start()
    outcome = run_experiment(cfg)
    stop.set()
    client = MlflowClient(cfg.mlflow.tracking_uri)
    try:  # what run_experiment checks first, for a data folder no node has
        check_shared_paths(with_updates(cfg, {"data.path": str(Path(yaml).parent / "missing-chest_xray")}))
        invisible = ""
    except ConfigError as error:
        invisible = str(error)
    Path(result_path).write_text(
        json.dumps(
            {
                "nodes": len([n for n in ray.nodes() if n["Alive"]]),
                "worker_nodes": sorted(found),
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
