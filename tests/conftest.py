"""Shared fixtures: one local Ray for the session, one synthetic dataset, small real configs.

`smoke_yaml` writes a real experiment file that extends experiments/quickstart.yaml and shrinks it
(tiny timm test model, 48 px, 2 epochs), the way users write experiment diffs.

Session fixtures for tests that need a trained model (each starts Ray; mark such tests slow):
- `smoke_run` -> SmokeRun: `pneumo run` on the smoke config (pneumo's own training, evaluation and
  registration); its best model is the champion `smoke_run.champion_uri` of its sqlite registry.
- `serve_app` -> ServeApp: the real Serve app over HTTP serving that model as `models:/serve-test@champion`
  of its own registry, with the tight serve limits in SERVE_LIMITS. The app starts before the model is
  registered, so `before_registration` holds the honest 503 answers of /readyz and /predict.
"""

import contextlib
import io
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pneumo.cli.ray_start import QUIET_DEFAULTS

TEST_ENVIRONMENT = {  # the CLI's defaults, plus what a test process needs on a machine with no hub and no tty
    **QUIET_DEFAULTS,
    "HF_HUB_OFFLINE": "1",
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
}
for key, value in TEST_ENVIRONMENT.items():
    os.environ.setdefault(key, value)

import pytest  # noqa: E402
import requests  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "experiments" / "quickstart.yaml"


def pytest_collection_modifyitems(items):
    """A test that starts Ray (through any fixture) must be marked slow, so `-m "not slow"` stays fast."""
    unmarked = [
        item.nodeid for item in items if "ray_session" in item.fixturenames and item.get_closest_marker("slow") is None
    ]
    if unmarked:
        raise pytest.UsageError(
            "these tests start Ray but are not marked @pytest.mark.slow:\n  " + "\n  ".join(unmarked)
        )


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray on loopback, started the way `pneumo run` starts it."""
    import ray

    from pneumo.cli.ray_start import init_ray

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


@pytest.fixture(scope="session")
def empty_mlflow_db(tmp_path_factory) -> Path:
    """A migrated, empty MLflow sqlite store, made once: creating one costs MLflow 2-20 s, copying it 0.3 s."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow_template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()  # runs MLflow's table migrations
    return path


@pytest.fixture
def mlflow_uri(tmp_path, empty_mlflow_db) -> str:
    """A fresh sqlite tracking/registry URI in this test's tmp_path."""
    shutil.copyfile(empty_mlflow_db, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def write_smoke_yaml(
    directory: Path, data_path: Path, name: str = "smoke", tune_section: str = "tune: {num_samples: 0}\n"
) -> Path:
    """An experiment diff over quickstart.yaml: tiny model and data, storage under `directory`;
    no search unless `tune_section` asks for one."""
    path = directory / f"{name}.yaml"
    path.write_text(f"""\
base: {QUICKSTART}
name: {name}
data:
  path: {data_path}
  image_size: 48
  cache_dir: {directory / "cache"}
model:
  name: test_resnet
train:
  epochs: 2
  batch_size: 16
  lr: 1.0e-2
scaling:
  storage_path: {directory / "results"}
mlflow:
  tracking_uri: sqlite:///{directory / "mlflow.db"}
{tune_section}""")
    return path


def pneumo_run(args: list[str], ray_session, quiet: bool = False) -> subprocess.Popen:
    """`pneumo run ARGS` in its own process and process group (a test may kill it and its children),
    joining the session's Ray; stdout and stderr come back together as text, or go nowhere if `quiet`
    (for a test that never reads them: a full pipe would stall the run)."""
    output = subprocess.DEVNULL if quiet else subprocess.PIPE
    return subprocess.Popen(
        [sys.executable, "-m", "pneumo.cli", "run", *args],
        env={**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address},
        stdout=output,
        stderr=subprocess.DEVNULL if quiet else subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def stop_ray_under(tmpdir: str, timeout_s: float = 20) -> None:
    """Stop the Ray processes whose command line names `tmpdir` (a Ray of our own), and only those."""

    def ours() -> list[int]:
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != os.getpid():
                try:
                    if tmpdir.encode() in (entry / "cmdline").read_bytes():
                        pids.append(int(entry.name))
                except OSError:
                    continue
        return pids

    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5)):
        for pid in ours():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while ours() and time.monotonic() < deadline:
            time.sleep(0.5)


T = TypeVar("T")
AGENT_NOT_UP = "No available agent to submit job"  # the head's job agent is not registered yet


def until_agent_up(attempt: Callable[[], T], output_of: Callable[[T], str], timeout_s: float = 60) -> T:
    """`attempt()` (a job submission), tried again for up to `timeout_s` while a new head's job agent is
    still starting (its address reaches the head a few seconds after `ray start` returns)."""
    deadline = time.monotonic() + timeout_s
    while True:
        outcome = attempt()
        if AGENT_NOT_UP not in output_of(outcome) or time.monotonic() > deadline:
            return outcome
        time.sleep(2)


def submit_job(argv: list, env: dict[str, str], timeout_s: float = 600) -> subprocess.CompletedProcess:
    """`ray job submit …` from the repository, once the head's job agent takes it."""
    return until_agent_up(
        lambda: subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s),
        lambda submitted: submitted.stdout + submitted.stderr,
    )


@pytest.fixture
def smoke_yaml(tmp_path, synthetic_root) -> Path:
    return write_smoke_yaml(tmp_path, synthetic_root)


@dataclass
class SmokeRun:
    yaml: Path  # the smoke experiment file it ran
    cfg: Any  # its resolved ExperimentConfig
    outcome: Any  # pneumo.experiment.ExperimentOutcome: run id, best_model folder, test metrics, model version

    @property
    def champion_uri(self) -> str:
        return f"models:/{self.cfg.mlflow.registered_model_name}@champion"


@pytest.fixture(scope="session")
def smoke_run(ray_session, synthetic_root, tmp_path_factory) -> SmokeRun:
    """One finished smoke `pneumo run` (2 workers, 2 epochs), registered as the champion."""
    from pneumo.config import load_config
    from pneumo.experiment import run_experiment

    yaml = write_smoke_yaml(tmp_path_factory.mktemp("smoke_run"), synthetic_root)
    cfg = load_config([yaml])
    return SmokeRun(yaml, cfg, run_experiment(cfg))


SERVED_MODEL_NAME = "serve-test"
SERVE_LIMITS = {  # tight enough that tests can trip each one
    "max_batch_size": 8,
    "batch_wait_timeout_s": 0.02,
    "max_ongoing_requests": 8,
    "max_queued_requests": 8,
    "max_body_bytes": 300_000,
    "max_image_pixels": 1_000_000,
    "max_images_per_request": 4,
    "cpus_per_replica": 0.1,  # a reservation only: leaves the 2 logical CPUs to training and Ray Data
    "ood_policy": "flag",  # tests send a CT and odd modes on purpose; the reject policy has its own app
    "runtime": "torch",  # answers compared with PyTorch offline to 1e-5 (other runtimes: tests/test_runtimes.py)
}


@dataclass
class ServeApp:
    url: str  # http://127.0.0.1:PORT of the app (route prefix /)
    yaml: Path  # the experiment file it was built from (smoke config + SERVE_LIMITS + its own registry)
    checkpoint: Path  # the served model's pneumo checkpoint folder (smoke_run's best model)
    metrics: dict[str, float]  # the metrics it was registered with (test_auroc, ...)
    model_version: Any  # the registered mlflow ModelVersion (version "1", alias champion)
    before_registration: dict[str, requests.Response]  # "readyz" and "predict" while the registry was empty


def wait_for_state(url: str, *states: str, timeout_s: float = 60) -> requests.Response:
    """/readyz once the loader reaches one of `states` (loading -> waiting | ready | failed)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        response = requests.get(f"{url}/readyz", timeout=10)
        if response.json()["state"] in states:
            return response
        time.sleep(0.2)
    raise AssertionError(f"/readyz never reached {states} in {timeout_s} s: {response.json()}")


def register_champion(yaml: Path, checkpoint: Path, metrics: dict[str, float]):
    """What `pneumo run` does at its end: log the checkpoint in a run, register it, alias it champion."""
    from pneumo.config import load_config
    from pneumo.registry.register import register_checkpoint
    from pneumo.tracking import client_for, finish_run, start_run

    cfg = load_config([yaml])
    client = client_for(cfg)
    run_id = start_run(client, cfg, "train", cfg.name)
    version = register_checkpoint(client, cfg, run_id, checkpoint, metrics, fingerprint="test")
    finish_run(client, run_id)
    return version


def png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def serve_app(smoke_run, tmp_path_factory) -> ServeApp:
    """Serve starts on `models:/serve-test@champion` of an empty registry (so /readyz is honestly 503),
    then smoke_run's best model is registered there and the app must turn ready."""
    from PIL import Image
    from ray import serve

    from pneumo.cli.ray_start import free_local_port
    from pneumo.config import load_config
    from pneumo.serve.builder import ServeArgs, build_app
    from pneumo.tracking import client_for, ensure_experiment

    root = tmp_path_factory.mktemp("serve_app")
    yaml = root / "serve.yaml"
    limits = "".join(f"  {key}: {value}\n" for key, value in SERVE_LIMITS.items())
    yaml.write_text(f"""\
base: {smoke_run.yaml}
name: serve-test
mlflow: {{tracking_uri: "sqlite:///{root / "mlflow.db"}", registered_model_name: {SERVED_MODEL_NAME}}}
serve:
{limits}""")
    cfg = load_config([yaml])
    ensure_experiment(client_for(cfg), cfg.mlflow.experiment_name)  # a registry without the model yet
    port = free_local_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(ServeArgs(config=[str(yaml)])), name="pneumo", route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    before = {
        "readyz": wait_for_state(url, "waiting"),
        "predict": requests.post(
            f"{url}/predict",
            data=png_bytes(Image.new("L", (64, 64))),
            headers={"Content-Type": "image/png"},
            timeout=30,
        ),
    }
    checkpoint = Path(smoke_run.outcome.model_dir)
    metrics = {f"test_{key}": value for key, value in smoke_run.outcome.test_metrics.items()}
    version = register_champion(yaml, checkpoint, metrics)
    loaded = wait_for_state(url, "ready", "failed")
    assert loaded.status_code == 200, loaded.json()
    yield ServeApp(url, yaml, checkpoint, metrics, version, before)
    serve.shutdown()
