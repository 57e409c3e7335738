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
