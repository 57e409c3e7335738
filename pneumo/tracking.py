"""MLflow runs: experiments, runs (and nested trial runs), config/params, metrics and tags. The model
registry is pneumo/registry/.

Everything goes through an explicit tracking URI (never the process-global default), so drivers, the
Ray Train controller and Tune trials all write to the store the config names.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from mlflow.entities import Metric, Param, RunStatus
from mlflow.tracking import MlflowClient

from pneumo.config import ConfigError, ExperimentConfig, MlflowConfig, flatten, to_dict, to_yaml
from pneumo.data.split import split_csv
from pneumo.paths import durable_tracking_uri

if TYPE_CHECKING:
    from pneumo.data.dataset import PreparedData

TAG_EXPERIMENT = "pneumo.experiment"  # experiment (YAML) name
TAG_KIND = "pneumo.kind"  # train | search | trial
TAG_RAY_RUN = "pneumo.ray_run_name"  # Ray Train run / Tune experiment folder, for --resume
TAG_TRIAL_ID = "pneumo.trial_id"
TAG_BEST_CHECKPOINT = "pneumo.best_checkpoint"  # the evaluated checkpoint of a train or search run
TAG_TRAIN_FOLDER = "pneumo.train_folder"  # a trial's Ray Train folder, which holds its checkpoints
TAG_SEARCH_PARAMS = "pneumo.search_params"  # a trial's sampled search values
TAG_STOPPED_EARLY = "pneumo.stopped_early"  # true when ASHA stopped the trial before train.epochs
TAG_TRIAL_STATE = "pneumo.trial_state"  # how a trial ended: completed | stopped by ASHA at epoch N | failed: reason
TAG_SEARCH_PROGRESS = "pneumo.search_progress"  # on a search run while it runs: "2 running, 1 completed, …"
TAG_LAST_WORKER_FAILURE = "pneumo.last_worker_failure"
TAG_MODEL_URI = "pneumo.registry.uri"  # the model an `eval` run scored
TAG_DATA_FINGERPRINT = "data_fingerprint"  # on runs and model versions: digest of the files and labels
TAG_CONFIG = "config"  # on model versions: the resolved YAML
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"  # read by the MLflow UI to choose the experiment's view
MODEL_TRAINING_KIND = "custom_model_development"  # its model-training view (runs, metrics, models)
MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value
MAX_TAG_CHARS = 5000


def resolve_tracking_uri(cfg: MlflowConfig) -> str:
    """mlflow.tracking_uri, else $MLFLOW_TRACKING_URI, else mlflow.db in the working directory (or in
    PNEUMO_HOME when that directory is temporary, e.g. a Ray job's package: see paths.py)."""
    return durable_tracking_uri(cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"))


def _artifact_root(tracking_uri: str) -> Optional[str]:
    """Local stores keep artifacts beside the database, as an absolute path every process can find."""
    if tracking_uri.startswith("sqlite:///"):
        return (Path(tracking_uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
    return None  # file stores and tracking servers choose their own


def ensure_experiment(client: MlflowClient, name: str) -> str:
    """The experiment's id, created if missing; tagged to open in MLflow's model-training view (the UI
    shows experiments without the tag in its GenAI view), unless someone set another kind."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        root = _artifact_root(client.tracking_uri)
        return client.create_experiment(
            name, artifact_location=f"{root}/{name}" if root else None, tags={TAG_EXPERIMENT_KIND: MODEL_TRAINING_KIND}
        )
    if TAG_EXPERIMENT_KIND not in experiment.tags:
        client.set_experiment_tag(experiment.experiment_id, TAG_EXPERIMENT_KIND, MODEL_TRAINING_KIND)
    return experiment.experiment_id


def start_run(
    client: MlflowClient,
    cfg: ExperimentConfig,
    kind: str,
    run_name: str,
    parent_run_id: Optional[str] = None,
    tags: Optional[dict[str, str]] = None,
    params: Optional[dict[str, Any]] = None,
) -> str:
    """Create a run (nested under `parent_run_id` if given); returns its id.

    It carries the whole resolved config, or only `params` when given (an `eval` run logs the data and
    eval settings it used, not a training config it did not)."""
    experiment_id = ensure_experiment(client, cfg.mlflow.experiment_name)
    all_tags = {TAG_EXPERIMENT: cfg.name, TAG_KIND: kind, **(tags or {})}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run_id = client.create_run(experiment_id, run_name=run_name, tags=all_tags).info.run_id
    if params is None:
        log_config(client, run_id, cfg)
    else:
        log_params(client, run_id, params)
    return run_id


def log_params(client: MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    """Values as strings cut to MLflow's limit, in batches of 100 (its batch limit)."""
    batch = [Param(key, str(value)[:MAX_PARAM_CHARS]) for key, value in params.items()]
    for start in range(0, len(batch), 100):
        client.log_batch(run_id, params=batch[start : start + 100])


def log_config(client: MlflowClient, run_id: str, cfg: ExperimentConfig) -> None:
    """Flattened params plus the resolved YAML as an artifact (habit 7: the run can be re-run)."""
    log_params(client, run_id, flatten(to_dict(cfg)))
    client.log_text(run_id, to_yaml(cfg), "config.yaml")


def log_metrics(client: MlflowClient, run_id: str, metrics: dict[str, Any], step: int = 0, prefix: str = "") -> None:
    """Numeric values only; NaN/inf are skipped (MLflow rejects them on some backends)."""
    now = int(1000 * time.time())
    batch = [
        Metric(f"{prefix}{k}", float(v), now, step)
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    ]
    if batch:
        client.log_batch(run_id, metrics=batch)


def log_epoch_metrics(tracking_uri: str, run_id: str, metrics: dict[str, Any]) -> None:
    """Per-epoch metrics at step = epoch (called from the Ray Train controller)."""
    log_metrics(
        MlflowClient(tracking_uri),
        run_id,
        {k: v for k, v in metrics.items() if k != "epoch"},
        step=int(metrics["epoch"]),
    )


def record_worker_failure(tracking_uri: str, run_id: str, count: int, summary: str) -> None:
    """Metric `worker_failures` (step = count) and the latest failure as a tag (from the Train controller)."""
    client = MlflowClient(tracking_uri)
    log_metrics(client, run_id, {"worker_failures": count}, step=count)
    client.set_tag(run_id, TAG_LAST_WORKER_FAILURE, summary[:MAX_TAG_CHARS])


def finish_run(client: MlflowClient, run_id: str, failed: bool = False) -> None:
    client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED if failed else RunStatus.FINISHED))


def end_trial_run(client: MlflowClient, run_id: str, state: str, failed: bool, stopped_early: bool) -> None:
    """Close a trial's run the moment its trial ends, saying how it ended (`state`, shown in the UI)."""
    client.set_tag(run_id, TAG_TRIAL_STATE, state[:MAX_TAG_CHARS])
    client.set_tag(run_id, TAG_STOPPED_EARLY, str(stopped_early).lower())
    finish_run(client, run_id, failed=failed)


def count_stopped_early(client: MlflowClient, cfg: ExperimentConfig, parent_run_id: str) -> int:
    """Trial runs under the search run `parent_run_id` tagged as stopped before train.epochs."""
    experiment = client.get_experiment_by_name(cfg.mlflow.experiment_name)
    stopped = f"tags.`mlflow.parentRunId` = '{parent_run_id}' and tags.`{TAG_STOPPED_EARLY}` = 'true'"
    return len(client.search_runs([experiment.experiment_id], filter_string=stopped, max_results=1000))


def log_search_progress(client: MlflowClient, run_id: str, counts: dict[str, int], step: int) -> None:
    """Live trial counts on the search run: metrics `trials_<state>` at `step` and one readable tag."""
    log_metrics(client, run_id, {f"trials_{state.replace(' ', '_')}": n for state, n in counts.items()}, step=step)
    client.set_tag(run_id, TAG_SEARCH_PROGRESS, ", ".join(f"{n} {state}" for state, n in counts.items() if n))


def next_step(client: MlflowClient, run_id: str, key: str) -> int:
    """One past the largest step logged for `key` (0 if none): a resumed series continues, never overlaps."""
    return max((m.step for m in client.get_metric_history(run_id, key)), default=-1) + 1


def start_system_metrics(tracking_uri: str, run_id: str, interval_s: float, node_id: Optional[str] = None):
    """MLflow's own sampler of CPU, memory, disk, network and (NVIDIA, with nvidia-ml-py) GPU use, logged as
    `system/…` metrics to `run_id` through `tracking_uri` (no process-global MLflow state). It stops by
    itself once the run is no longer RUNNING; call `.finish()` to stop it at once and flush."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(
        run_id, sampling_interval=interval_s, resume_logging=True, node_id=node_id, tracking_uri=tracking_uri
    )
    monitor.start()
    return monitor


def find_unfinished_run(client: MlflowClient, cfg: ExperimentConfig, kind: str):
    """The newest run of this experiment and kind that did not finish: what --resume continues."""
    experiment = client.get_experiment_by_name(cfg.mlflow.experiment_name)
    if experiment is None:
        return None
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`{TAG_EXPERIMENT}` = '{cfg.name}' and tags.`{TAG_KIND}` = '{kind}' "
        f"and attributes.status != 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


def open_run(client: MlflowClient, cfg: ExperimentConfig, kind: str, resume: bool) -> tuple[str, str]:
    """(MLflow run id, Ray run name) of a `train` or `search`: new, or the newest unfinished one to resume.

    The Ray run name is stored on the MLflow run, so --resume finds Ray's checkpoints/experiment again.
    """
    if resume:
        previous = find_unfinished_run(client, cfg, kind)
        if previous is None:
            raise ConfigError(f"--resume: no unfinished {kind} run of experiment {cfg.name!r} in MLflow")
        client.update_run(previous.info.run_id, "RUNNING")
        return previous.info.run_id, previous.data.tags[TAG_RAY_RUN]
    ray_run_name = f"{cfg.name}-{kind}-{time.strftime('%Y%m%d-%H%M%S')}"
    return start_run(client, cfg, kind, ray_run_name, tags={TAG_RAY_RUN: ray_run_name}), ray_run_name


def client_for(cfg: ExperimentConfig) -> MlflowClient:
    return MlflowClient(resolve_tracking_uri(cfg.mlflow))


def find_trial_run(client: MlflowClient, cfg: ExperimentConfig, parent_run_id: str, trial_id: str):
    """The MLflow child run of Tune trial `trial_id` under the search run `parent_run_id`, or None."""
    experiment = client.get_experiment_by_name(cfg.mlflow.experiment_name)
    found = client.search_runs(
        [experiment.experiment_id],
        filter_string=(f"tags.`{TAG_TRIAL_ID}` = '{trial_id}' and tags.`mlflow.parentRunId` = '{parent_run_id}'"),
        max_results=1,
    )
    return found[0] if found else None


def log_data_summary(client: MlflowClient, run_id: str, data: PreparedData) -> None:
    """Fingerprint, per-split counts, refused files and the assigned split of the data a run used."""
    client.set_tag(run_id, TAG_DATA_FINGERPRINT, data.fingerprint)
    counts = {f"data.{split}.{name}": n for split, per in data.counts.items() for name, n in per.items()}
    log_metrics(
        client,
        run_id,
        {
            **counts,
            "data.n_images": data.n_images,
            "data.skipped_files": len(data.skipped_files),
            "data.ignored_files": data.ignored_files,
        },
    )
    if data.skipped_files:
        client.log_dict(run_id, data.skipped_files, "data/skipped_files.json")
    if data.assigned_split:  # a valid manifest: point data.path at it to train on the same split again
        client.log_text(run_id, split_csv(data.assigned_split), "data/split.csv")


def training_run_for(client: MlflowClient, run_id: str) -> str:
    """The run whose epochs produced the evaluated checkpoint of `run_id`: the run itself, or for a
    search the trial child run whose Ray Train folder holds that checkpoint."""
    run = client.get_run(run_id)
    checkpoint_dir = run.data.tags.get(TAG_BEST_CHECKPOINT)
    if run.data.tags.get(TAG_KIND) != "search" or not checkpoint_dir:
        return run_id
    trial_folder = checkpoint_dir.rstrip("/").rpartition("/")[0]  # strings: storage may be s3://…
    children = client.search_runs([run.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{run_id}'")
    for child in children:
        if child.data.tags.get(TAG_TRAIN_FOLDER, "").rstrip("/") == trial_folder:
            return child.info.run_id
    return run_id


TRAINING_CURVES = ("train_loss", "val_loss", "val_auroc", "lr")  # per-epoch metrics a report draws


def metric_history(
    client: MlflowClient, run_id: str, keys: tuple[str, ...] = TRAINING_CURVES
) -> dict[str, list[tuple[int, float]]]:
    """key -> [(step, value)] for the keys the run has."""
    history = {key: [(m.step, m.value) for m in client.get_metric_history(run_id, key)] for key in keys}
    return {key: points for key, points in history.items() if points}
