"""The system-metrics sampler against a real `mlflow server` frozen for a while (SIGSTOP: as a server too busy
to answer), the client's writes timing out meanwhile. Sampling goes on through it, and the samples taken
meanwhile reach the server once it answers, each step once. (MLflow's own loop takes no sample while a
request waits, and ends at the first that fails.)"""

import os
import signal
import time

from mlflow.tracking import MlflowClient
from mlflow_ui import start_mlflow_server, stop

from pneumo.cli.ray_start import free_local_port
from pneumo.tracking import start_system_metrics

INTERVAL_S = 0.2
FROZEN_S = 3.0
KEY = "system/cpu_utilization_percentage"


def sample_times(store: MlflowClient, run_id: str) -> list[float]:
    return [m.timestamp / 1000 for m in store.get_metric_history(run_id, KEY)]


def wait_for(condition, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(INTERVAL_S)


def test_sampling_goes_on_while_the_tracking_server_does_not_answer_and_loses_no_sample(tmp_path, monkeypatch):
    port, backend = free_local_port(), f"sqlite:///{tmp_path / 'server.db'}"
    server = start_mlflow_server(backend, port, tmp_path / "artifacts")
    store = MlflowClient(backend)  # the server's own store, read directly
    uri = f"http://127.0.0.1:{port}"
    run_id = MlflowClient(uri).create_run(MlflowClient(uri).create_experiment("sampler")).info.run_id
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # a write to the frozen server fails in 1 s
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")
    sampler = start_system_metrics(uri, run_id, INTERVAL_S)
    try:
        wait_for(lambda: len(sample_times(store, run_id)) >= 2)
        os.killpg(server.pid, signal.SIGSTOP)
        frozen_at = time.time()
        time.sleep(FROZEN_S)
        os.killpg(server.pid, signal.SIGCONT)
        back_at = time.time()
        wait_for(lambda: any(t > back_at for t in sample_times(store, run_id)))
    finally:
        sampler.finish()
        stop(server)

    history = store.get_metric_history(run_id, KEY)
    assert sorted(m.step for m in history) == list(range(len(history))), "every step once, none missing"
    during = [t for t in sample_times(store, run_id) if frozen_at + INTERVAL_S < t < back_at - INTERVAL_S]
    assert len(during) >= 2, "the samples taken while the server did not answer were written once it did"
