"""The ways users run pneumo at scale, on real Ray clusters started here on loopback:
`ray job submit` to a token-authenticated head, a two-node cluster, and a worker killed mid-run."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import pytest
from conftest import QUICKSTART, REPO, pneumo_run, stop_ray_under, submit_job, write_smoke_yaml
from mlflow.tracking import MlflowClient

from pneumo.cli.ray_start import free_local_port
from pneumo.config import load_config

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def test_job_upload_leaves_out_what_does_not_belong(tmp_path):
    from ray._private.runtime_env.packaging import create_package

    package = tmp_path / "package.zip"
    create_package(str(REPO), package, include_gitignore=True)
    names = zipfile.ZipFile(package).namelist()
    assert "pneumo/cli/__init__.py" in names and "experiments/quickstart.yaml" in names and "serve_app.py" in names
    for excluded in (".git/", ".venv/", "data/", "results/", "mlartifacts/", "mlflow.db"):
        assert not any(name.startswith(excluded) for name in names), excluded
    assert package.stat().st_size < 2_000_000, "far under Ray's 100 MiB working_dir limit"


def own_ray_env(prefix: str) -> dict[str, str]:
    """Environment for a Ray of a test's own, beside the session's: loopback only, without the session
    Ray's addresses (they would win over --address and reach that Ray instead), and with its own temp
    dir, so its address file (ray_current_cluster) cannot outlive it in /tmp/ray, where any later
    ray.init() on the machine would try to join the stopped Ray (short path: socket names)."""
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    for inherited in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        env.pop(inherited, None)
    env["RAY_TMPDIR"] = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    return env


HEAD_ATTEMPTS = 3  # Ray 2.60's raylet gives up on a head whose dashboard agent starts too slowly (see start_head)


def start_head(env: dict[str, str], client_env: dict[str, str]) -> tuple[subprocess.Popen, str] | None:
    """`ray start --head --block` on loopback; (process, dashboard address) once its node is registered,
    None if the head died first.

    The raylet waits only ~15 s for its dashboard agent to write the agent's port files, and aborts
    ("Timed out waiting for file …/metrics_agent_port_…" or "…dashboard_agent_listen_port_…") when the
    agent's imports take longer, as on this 2-core machine inside the full suite; `--block` then stops the
    head. Giving the ports explicitly does not skip the wait. The node registers only after the wait, so a
    registered node is a head that stays up."""
    dashboard_port = free_local_port()
    head = subprocess.Popen(
        [
            BIN / "ray",
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={free_local_port()}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard_port}",
            "--num-cpus=2",
            "--disable-usage-stats",
            # 0: ports the agent binds itself. The session's Ray holds the defaults, and a port probed
            # free here can be taken before the agent binds it; the agent then stays up without its
            # HTTP server, and every submission fails ("No available agent to submit job")
            "--dashboard-agent-listen-port=0",
            "--metrics-export-port=0",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    address = f"http://127.0.0.1:{dashboard_port}"
    deadline = time.monotonic() + 120
    while head.poll() is None:
        nodes = subprocess.run(
            [BIN / "ray", "list", "nodes", "--address", address], env=client_env, capture_output=True, text=True
        )
        if nodes.returncode == 0 and "ALIVE" in nodes.stdout:
            return head, address
        assert time.monotonic() < deadline, "Ray head did not come up in 2 minutes"
        time.sleep(2)
    return None


@pytest.fixture
def ray_head(tmp_path):
    """A `ray start --head` on 127.0.0.1 of the test's own (token authentication on, as Ray 2.60 clusters
    default to), started again if its raylet gave up on a slow dashboard agent, and stopped by signalling
    only this head's process."""
    for _ in range(HEAD_ATTEMPTS):
        env = {**own_ray_env("rayhead"), "PATH": f"{BIN}:{os.environ['PATH']}"}
        client_env = {**env, "RAY_AUTH_MODE": "token"}
        started = start_head(env, client_env)
        if started:
            break
        shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)
    assert started, f"Ray head did not stay up in {HEAD_ATTEMPTS} attempts"
    head, address = started
    yield address, client_env
    head.send_signal(signal.SIGTERM)
    try:
        head.wait(timeout=5)
    except subprocess.TimeoutExpired:  # after a job its raylet can take 30 s to let go of the workers
        stop_ray_under(env["RAY_TMPDIR"], timeout_s=5)
        head.kill()
        head.wait(timeout=10)
    shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)


def test_ray_job_submit_runs_an_experiment_and_keeps_its_results_in_pneumo_home(ray_head, tmp_path, synthetic_root):
    """`ray job submit --working-dir . -- pneumo run …` to a token-authenticated head, with no tracking
    URI, storage or cache given: the job's working directory is Ray's unpacked package, so everything
    lands in PNEUMO_HOME and outlives the job."""
    address, env = ray_head
    unauthenticated = subprocess.run(
        [BIN / "ray", "job", "list", "--address", address],
        env={**env, "RAY_AUTH_MODE": "disabled"},
        capture_output=True,
        text=True,
    )
    assert unauthenticated.returncode != 0, "the head refuses clients without the token"
    home = tmp_path / "pneumo-home"
    overrides = [
        "name=job-home",
        f"data.path={synthetic_root}",
        "data.image_size=48",
        "model.name=test_resnet",
        "train.epochs=1",
        "train.batch_size=16",
        "tune.num_samples=0",
        "eval.bootstrap_samples=0",
        "eval.report=false",
    ]
    submit = [
        BIN / "ray",
        "job",
        "submit",
        "--address",
        address,
        "--working-dir",
        ".",
        "--submission-id",
        "pneumo-job-test",
        "--runtime-env-json",
        f'{{"env_vars": {{"PNEUMO_HOME": "{home}"}}}}',
        "--",
        "pneumo",
        "run",
        "experiments/quickstart.yaml",
        *overrides,
    ]
    submitted = submit_job(submit, env)
    log = submitted.stdout + submitted.stderr
    assert submitted.returncode == 0, log[-3000:]
    status = subprocess.run(
        [BIN / "ray", "job", "status", "--address", address, "pneumo-job-test"], env=env, capture_output=True, text=True
    )
    assert "job 'pneumo-job-test' succeeded" in status.stdout.lower(), status.stdout
    assert "is Ray's unpacked job package" in log and f"PNEUMO_HOME={home}" in log, "the user is told where"
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("pneumo").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED" and "test_auroc" in runs[0].data.metrics
    assert runs[0].data.tags["pneumo.experiment"] == "job-home"
    assert (home / "mlartifacts").is_dir() and any((home / "results").glob("job-home-train-*/best_model"))
    assert any((home / "data" / "cache").iterdir())
    assert str(client.get_model_version_by_alias("pneumo-pneumonia", "champion").version) == "1"


@pytest.mark.extended  # make test-extended: a second Ray cluster of two nodes
def test_two_node_cluster_trains_and_predicts_on_both_nodes(tmp_path, synthetic_root):
    yaml = write_smoke_yaml(tmp_path, synthetic_root, "two-node")
    env = own_ray_env("ray2n")
    finished = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("two_node_run.py")), str(yaml), str(tmp_path / "result.json")],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["nodes"] == 2
    assert len(set(result["worker_nodes"])) == 2, "one training worker on each node"
    assert len(set(result["scorer_nodes"])) == 2, "pneumo predict's scoring actors on both nodes"
    # one row per file of the data folder (its films, and the drawn-opacity masks the gate refuses)
    assert sum(result["predicted"].values()) == result["files"] and result["predicted"]["scored"] >= 200
    assert result["epochs_logged"] == [0, 1] and result["status"] == "FINISHED"
    assert "missing-chest_xray is not visible on nodes 127.0.0.1, 127.0.0.1" in result["invisible_data_error"]


@pytest.mark.extended  # make test-extended: a 12-epoch run
def test_killed_training_worker_restarts_from_checkpoint(ray_session, tmp_path, synthetic_root):
    from ray.util.state import list_actors

    yaml = write_smoke_yaml(tmp_path, synthetic_root, "worker-kill")
    overrides = ["train.epochs=12", "scaling.max_failures=2"]  # ~1 s epochs: the kill lands mid-run
    cfg = load_config([yaml], overrides)
    driver = pneumo_run([str(yaml), *overrides], ray_session)
    client = MlflowClient(cfg.mlflow.tracking_uri)
    deadline = time.monotonic() + 300
    run_id = None
    while run_id is None:
        assert time.monotonic() < deadline and driver.poll() is None, "the first epoch never reached MLflow"
        experiment = client.get_experiment_by_name(cfg.mlflow.experiment_name)
        for run in client.search_runs([experiment.experiment_id]) if experiment else []:
            if len(client.get_metric_history(run.info.run_id, "val_auroc")) >= 1:
                run_id = run.info.run_id
        time.sleep(0.5)
    workers = list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")], detail=True)
    assert workers, "no live training worker to kill"
    os.kill(workers[0].pid, signal.SIGKILL)
    output, _ = driver.communicate(timeout=600)
    assert driver.returncode == 0, output[-3000:]

    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    steps = sorted(m.step for m in client.get_metric_history(run_id, "val_auroc"))
    assert steps == list(range(12)), "restarted from the checkpoint: no epoch duplicated, none missing"
    assert run.data.metrics["worker_failures"] == 1 and "pneumo.last_worker_failure" in run.data.tags


def test_paths_missing_on_nodes_are_named(ray_session):
    from pneumo.cluster import check_shared_paths, nodes_missing

    assert nodes_missing("/no/such/folder") == ["127.0.0.1"]
    check_shared_paths(load_config([QUICKSTART], ["data.path=/no/such/folder"]))  # one node: no constraint
