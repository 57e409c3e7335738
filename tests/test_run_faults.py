"""Faults of a training run and of a search, each with real processes and bounded in time: the disk under
scaling.storage_path filling up while a checkpoint is written, and two trials at once on the default
sqlite MLflow store. (A search's driver SIGKILLed mid-search, then resumed: tests/test_tune_run.py.)"""

import subprocess

import pytest
from conftest import pneumo_run, write_smoke_yaml
from mlflow.tracking import MlflowClient
from test_tune_run import child_runs

from pneumo.config import load_config

pytestmark = pytest.mark.slow
QUICK = ["eval.bootstrap_samples=0", "eval.report=false", "mlflow.register=false", "export.onnx=false"]
CHECKPOINT_MB = 4.4  # one test_resnet checkpoint at 48 px: weights, pneumo.json and the optimizer state


@pytest.fixture
def storage_for_one_checkpoint(tmp_path):
    """A tmpfs with room for one checkpoint and a half: the second epoch's checkpoint fills it mid-write."""
    mount_point = tmp_path / "storage"
    mount_point.mkdir()
    size = f"size={int(CHECKPOINT_MB * 1.5 * 1024)}k"
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", size, "tmpfs", str(mount_point)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield mount_point
    subprocess.run(["umount", "--lazy", str(mount_point)], check=True)


def test_a_full_disk_under_checkpoints_names_storage_path_and_resume_skips_the_partial_one(
    ray_session, synthetic_root, tmp_path, storage_for_one_checkpoint
):
    from pneumo.cli import user_error_kind
    from pneumo.experiment import run_experiment
    from pneumo.models.checkpoints import load_checkpoint
    from pneumo.training.storage import StorageFullError

    storage = storage_for_one_checkpoint
    yaml = write_smoke_yaml(tmp_path, synthetic_root, "full-disk")
    cfg = load_config([yaml], [*QUICK, f"scaling.storage_path={storage}"])
    with pytest.raises(StorageFullError) as failed:
        run_experiment(cfg)
    message = str(failed.value)
    assert user_error_kind(failed.value) is not None, "the CLI words it on one line, no traceback"
    assert f"scaling.storage_path={storage}" in message and "No space left on device" in message, message
    client = MlflowClient(cfg.mlflow.tracking_uri)
    run = client.search_runs([client.get_experiment_by_name(cfg.mlflow.experiment_name).experiment_id])[0]
    assert run.info.status == "FAILED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_auroc")] == [0], "epoch 1 never logged"

    subprocess.run(["mount", "-o", "remount,size=64m", str(storage)], check=True)  # the user frees space
    outcome = run_experiment(cfg, resume=True)

    assert outcome.mlflow_run_id == run.info.run_id
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_auroc")) == [0, 1], (
        "resumed from the complete epoch 0 checkpoint: epoch 1 trained once, epoch 0 not again"
    )
    best = client.get_run(run.info.run_id).data.tags["pneumo.best_checkpoint"]
    assert load_checkpoint(best).meta.epoch in (0, 1), "the best checkpoint is whole (its weights' checksum holds)"


SEARCH = """\
tune:
  num_samples: 1
  scheduler: fifo
  max_concurrent_trials: %d
  search_space:
    train.lr: {grid: %s}
"""


@pytest.mark.extended  # make test-extended: a 2-trial search
def test_two_trials_at_once_on_sqlite_lose_nothing(ray_session, synthetic_root, tmp_path):
    """Two trials' Train controllers, their workers' system-metrics samplers (every second) and the
    search driver all write to one sqlite file at once."""
    yaml = write_smoke_yaml(tmp_path, synthetic_root, "concurrent", SEARCH % (2, "[1.0e-2, 3.0e-3]"))
    overrides = [*QUICK, "train.epochs=2", "scaling.num_workers=1", "mlflow.system_metrics_interval_s=1"]
    driver = pneumo_run([str(yaml), *overrides, "--verbose"], ray_session)
    output, _ = driver.communicate(timeout=600)
    assert driver.returncode == 0, output[-3000:]
    assert "database is locked" not in output, "a write to the sqlite store was refused"

    cfg = load_config([yaml], overrides)
    client = MlflowClient(cfg.mlflow.tracking_uri)
    experiment = client.get_experiment_by_name(cfg.mlflow.experiment_name)
    (parent,) = client.search_runs([experiment.experiment_id], "tags.`pneumo.kind` = 'search'")
    children = child_runs(client, parent.info.run_id)
    ended = [(c.info.status, c.data.tags.get("pneumo.trial_state")) for c in children]
    assert ended == [("FINISHED", "completed")] * 2, ended
    first, second = sorted(children, key=lambda c: c.info.start_time)
    assert second.info.start_time < first.info.end_time, "the two trials ran at the same time"
    for child in children:
        for key in ("train_loss", "val_loss", "val_auroc", "lr"):
            assert [m.step for m in client.get_metric_history(child.info.run_id, key)] == [0, 1], key
        assert len(client.get_metric_history(child.info.run_id, "system/cpu_utilization_percentage")) >= 2
    assert parent.data.tags["pneumo.search_progress"] == "2 started, 2 completed"
    assert parent.data.metrics["n_trials"] == 2 and "test_auroc" in parent.data.metrics
