"""cluster.yaml passes Ray's own cluster-launcher schema validation and opens no port to the internet."""

from pathlib import Path

import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"


def test_cluster_yaml_passes_ray_schema_validation():
    config = yaml.safe_load(CLUSTER_YAML.read_text())
    validate_config(prepare_config(config))
    assert config["available_node_types"]["gpu_worker"]["min_workers"] == 0, "GPU workers scale from zero"


def test_dashboard_stays_on_loopback():
    head_start = " ".join(yaml.safe_load(CLUSTER_YAML.read_text())["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start


def test_nodes_run_ray_in_pneumos_image():
    """The launcher's docker: section runs the Containerfile's images (the head CPU, the GPU workers
    CUDA: the same tags as deploy/k8s's overlays) and no node installs anything itself."""
    config = yaml.safe_load(CLUSTER_YAML.read_text())
    docker = config["docker"]
    assert docker["head_image"].endswith("/pneumo:cpu") and docker["worker_image"].endswith("/pneumo:cuda")
    repository = docker["head_image"].rsplit(":", 1)[0]
    assert docker["worker_image"].startswith(f"{repository}:")
    assert config["setup_commands"] == [] and config["worker_setup_commands"] == []
    assert "file_mounts" not in config, "the image holds the code: nothing is copied to the nodes"
    containerfile = (CLUSTER_YAML.parent / "Containerfile").read_text()
    assert "ARG FLAVOR=cpu" in containerfile and "FROM base AS torch-cuda" in containerfile
