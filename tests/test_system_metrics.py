"""The system-metrics sampler against a real `mlflow server` that stops answering for a while: killed and
started again, or frozen (SIGSTOP: requests wait, as on a server too busy to answer). Sampling goes on
through it, and the samples taken meanwhile reach the server once it answers, each step once. (MLflow's
own loop ends at the first request that fails, and takes no sample while one waits.)"""

import os
import signal
import time

import pytest
from mlflow.tracking import MlflowClient
from mlflow_ui import start_mlflow_server, stop

from pneumo.cli.ray_start import free_local_port
from pneumo.tracking import start_system_metrics

INTERVAL_S = 0.2
OUTAGE_S = 2.0
KEY = "system/cpu_utilization_percentage"


def sample_times(store: MlflowClient, run_id: str) -> list[float]:
    return [m.timestamp / 1000 for m in store.get_metric_history(run_id, KEY)]


def wait_for(condition, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(INTERVAL_S)


@pytest.mark.parametrize("outage", ["killed", "frozen"])
def test_sampling_goes_on_while_the_tracking_server_does_not_answer_and_loses_no_sample(tmp_path, monkeypatch, outage):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # a write to the killed server fails at once
    port, backend = free_local_port(), f"sqlite:///{tmp_path / 'server.db'}"
    server = start_mlflow_server(backend, port, tmp_path / "artifacts")
    store = MlflowClient(backend)  # the server's own store, readable while it does not answer
    uri = f"http://127.0.0.1:{port}"
    run_id = MlflowClient(uri).create_run(MlflowClient(uri).create_experiment("sampler")).info.run_id
    sampler = start_system_metrics(uri, run_id, INTERVAL_S)
    try:
        wait_for(lambda: len(sample_times(store, run_id)) >= 2)
        down_at = time.time()
        if outage == "killed":
            stop(server)
            time.sleep(OUTAGE_S)
            server = start_mlflow_server(backend, port, tmp_path / "artifacts")
        else:
            os.killpg(server.pid, signal.SIGSTOP)
            time.sleep(OUTAGE_S)
            os.killpg(server.pid, signal.SIGCONT)
        up_at = time.time()
        wait_for(lambda: any(t > up_at for t in sample_times(store, run_id)))
    finally:
        sampler.finish()
        stop(server)

    history = store.get_metric_history(run_id, KEY)
    assert sorted(m.step for m in history) == list(range(len(history))), "every step once, none missing"
    during = [t for t in sample_times(store, run_id) if down_at + INTERVAL_S < t < up_at - INTERVAL_S]
    assert len(during) >= 2, "the samples taken while the server did not answer were written once it did"
