"""Shared fixtures: one local Ray for the session, one synthetic dataset, small real configs.

`smoke_yaml` writes a real experiment file that extends experiments/quickstart.yaml and shrinks it
(tiny timm test model, 48 px, 2 epochs), the way users write experiment diffs.
"""

import os
from pathlib import Path

for key, value in {"RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
                   "HF_HUB_OFFLINE": "1", "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
                   "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}.items():
    os.environ.setdefault(key, value)

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "experiments" / "quickstart.yaml"


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray on loopback, started the way `pneumo run` starts it."""
    import ray

    from pneumo.cli import init_ray

    init_ray()
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """A small synthetic Kaggle-layout set shared by the data and training tests."""
    from pneumo.data.synthetic import generate_chest_xrays

    root = tmp_path_factory.mktemp("synthetic") / "chest_xray"
    generate_chest_xrays(root, n_images=400, image_size=64, seed=1)
    return root


def write_smoke_yaml(directory: Path, data_path: Path, name: str = "smoke",
                     tune_section: str = "tune: {num_samples: 0}\n") -> Path:
    """An experiment diff over quickstart.yaml: tiny model and data, storage under `directory`;
    no search unless `tune_section` asks for one."""
    path = directory / f"{name}.yaml"
    path.write_text(f"""\
base: {QUICKSTART}
name: {name}
data:
  path: {data_path}
  image_size: 48
  cache_dir: {directory / 'cache'}
model:
  name: test_resnet
train:
  epochs: 2
  batch_size: 16
  lr: 1.0e-2
scaling:
  storage_path: {directory / 'results'}
mlflow:
  tracking_uri: sqlite:///{directory / 'mlflow.db'}
{tune_section}""")
    return path


@pytest.fixture
def smoke_yaml(tmp_path, synthetic_root) -> Path:
    return write_smoke_yaml(tmp_path, synthetic_root)
