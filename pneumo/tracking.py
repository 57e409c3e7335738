"""MLflow runs: experiments, runs (and nested trial runs), config/params, metrics and tags. The model
registry is pneumo/registry/.

Everything goes through an explicit tracking URI (never the process-global default), so drivers, the
Ray Train controller and Tune trials all write to the store the config names.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import logging
import math
import os
import re
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Optional
from urllib.parse import quote, urlsplit, urlunsplit

from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunStatus
from mlflow.exceptions import RestException
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT
from mlflow.utils.time import get_current_time_millis
from mlflow.utils.validation import MAX_METRICS_PER_BATCH

from pneumo.config import ConfigError, ExperimentConfig, MlflowConfig, flatten, to_dict, to_yaml
from pneumo.data.split import split_csv
from pneumo.paths import durable_tracking_uri, is_uri

if TYPE_CHECKING:
    from pneumo.data.dataset import PreparedData

_logger = logging.getLogger(__name__)

TAG_EXPERIMENT = "pneumo.experiment"  # experiment (YAML) name
TAG_KIND = "pneumo.kind"  # train | search | trial
TAG_RAY_RUN = "pneumo.ray_run_name"  # Ray Train run / Tune experiment folder, for --resume
TAG_TRIAL_ID = "pneumo.trial_id"  # on a trial run: its Tune trial id, to find the run again on --resume
TAG_BEST_CHECKPOINT = "pneumo.best_checkpoint"  # the evaluated checkpoint of a train or search run
TAG_TRAIN_FOLDER = "pneumo.train_folder"  # a trial's Ray Train folder, which holds its checkpoints
TAG_SEARCH_PARAMS = "pneumo.search_params"  # a trial's sampled search values
TAG_STOPPED_EARLY = "pneumo.stopped_early"  # true when ASHA stopped the trial before train.epochs
TAG_TRIAL_STATE = "pneumo.trial_state"  # how a trial ended: completed | stopped by ASHA at epoch N | failed: reason
TAG_SEARCH_PROGRESS = "pneumo.search_progress"  # on a search run while it runs: "2 running, 1 completed, …"
TAG_LAST_WORKER_FAILURE = "pneumo.last_worker_failure"  # the latest Ray Train worker failure, in one line
TAG_MODEL_URI = (
    "pneumo.models.uri"  # the model an `eval`, `monitor` or `predict` run scored (name kept for existing stores)
)
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


class SystemMetricsSampler(SystemMetricsMonitor):
    """MLflow's system-metrics monitor (its collectors, GPU detection and resumed steps) sampling on time
    whatever the tracking server does. MLflow's loop samples, asks the server for the run's status, and
    writes, all in one thread, and ends for good when one request fails: on a busy server (one with logins
    hashes every request's password) a trial logged one sample of twenty, or none. Here one thread samples
    every interval and another writes what has been sampled; a write the server misses is tried again
    with the next. pneumo ends the sampler itself (`finish()` when the training loop ends), so no status
    check is needed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._unwritten: list[Metric] = []
        self._unwritten_lock = threading.Lock()

    def monitor(self) -> None:
        writer = threading.Thread(target=self._write_until_finished, daemon=True, name="SystemMetricsWriter")
        writer.start()
        prefix = self._metrics_prefix + (f"{self.node_id}/" if self.node_id else "")
        while not self._shutdown_event.wait(self.sampling_interval):
            self.collect_metrics()
            sampled_at, metrics = get_current_time_millis(), self.aggregate_metrics()
            for collector in self.monitors:
                collector.clear_metrics()
            with self._unwritten_lock:
                self._unwritten += [Metric(prefix + k, v, sampled_at, self._logging_step) for k, v in metrics.items()]
            self._logging_step += 1
        writer.join()

    def _write_until_finished(self) -> None:
        while not self._shutdown_event.wait(self.sampling_interval):
            self._write()

    def _write(self) -> None:
        """Every sample not yet written, in batches; what the server does not take waits for the next write."""
        with self._unwritten_lock:
            batch, self._unwritten = self._unwritten, []
        try:
            while batch:
                self.mlflow_logger.client.log_batch(self._run_id, metrics=batch[:MAX_METRICS_PER_BATCH])
                batch = batch[MAX_METRICS_PER_BATCH:]
        except Exception as error:  # any failed write: its samples go with the next one
            with self._unwritten_lock:
                self._unwritten[:0] = batch
            _logger.warning("system metrics kept for the next write; the tracking server: %s", error)

    def finish(self) -> None:
        """Stops sampling and writes what is left."""
        self._shutdown_event.set()
        if self._process is not None:
            self._process.join()
            self._process = None
        self._write()


def start_system_metrics(
    tracking_uri: str, run_id: str, interval_s: float, node_id: Optional[str] = None
) -> SystemMetricsSampler:
    """CPU, memory, disk, network and (NVIDIA, with nvidia-ml-py) GPU use, sampled every `interval_s` and
    logged as `system/…` metrics to `run_id` through `tracking_uri` (no process-global MLflow state) until
    `.finish()`, which writes what is left."""
    sampler = SystemMetricsSampler(
        run_id, sampling_interval=interval_s, resume_logging=True, node_id=node_id, tracking_uri=tracking_uri
    )
    sampler.start()
    return sampler


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


def log_data_summary(
    client: MlflowClient, run_id: str, data: PreparedData, source: Optional[str] = None, context: str = "training"
) -> None:
    """Fingerprint, per-split counts, refused files and the assigned split of the data a run used; with
    `source` (data.path) also the run's MLflow dataset input (log_dataset_input), used for `context`."""
    client.set_tag(run_id, TAG_DATA_FINGERPRINT, data.fingerprint)
    if source is not None:
        log_dataset_input(client, run_id, data, source, context)
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


DATASET_DIGEST_CHARS = 12  # the fingerprint's first characters as MLflow's dataset digest (its limit is 36)


def dataset_digest(fingerprint: str) -> str:
    """The digest the MLflow UI shows beside a run's dataset: the start of pneumo's data fingerprint, as
    in the run's log line."""
    return fingerprint[:DATASET_DIGEST_CHARS]


def dataset_entity(data: PreparedData, source: str) -> Dataset:
    """`data` as an MLflow dataset: named after its folder (or file), its source URI, the fingerprint's
    digest, and a profile with the full fingerprint and the per-split class counts."""
    with warnings.catch_warnings():  # a local path matches two equivalent local sources; MLflow warns
        warnings.simplefilter("ignore", UserWarning)
        resolved = resolve_dataset_source(source if is_uri(source) else Path(source).resolve().as_uri())
    profile = {"fingerprint": data.fingerprint, "n_images": data.n_images, "counts": data.counts}
    profile["skipped_files"] = len(data.skipped_files)
    return Dataset(
        name=PurePosixPath(source.rstrip("/")).name or source,
        digest=dataset_digest(data.fingerprint),
        source_type=resolved._get_source_type(),
        source=resolved.to_json(),
        profile=json.dumps(profile),
    )


def log_dataset_input(client: MlflowClient, run_id: str, data: PreparedData, source: str, context: str) -> None:
    """The run's dataset input (the UI's "Datasets" column): which files, by digest, a run trained on
    (context `training`) or scored (`evaluation`, `monitoring`)."""
    tag = InputTag(MLFLOW_DATASET_CONTEXT, context)
    client.log_inputs(run_id, datasets=[DatasetInput(dataset_entity(data, source), tags=[tag])])


TAG_ACCESS_CHECK = "pneumo.access_checked_by"  # written by check_tracking_access: who last proved write access
QUICK_REQUESTS = {  # MLflow's client retries a request for ~4 min (7 tries, backoff 2); a check answers in seconds
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
}
USERNAME_VAR, PASSWORD_VAR = "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"


def redacted_uri(uri: str) -> str:
    """`uri` with any password in it replaced by ***, for messages and printed commands."""
    parts = urlsplit(uri)
    if not parts.password:
        return uri
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)))


@contextlib.contextmanager
def _quick_requests() -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in QUICK_REQUESTS}
    os.environ.update(QUICK_REQUESTS)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _uri_source(cfg: MlflowConfig) -> str:
    return "mlflow.tracking_uri" if cfg.tracking_uri else "MLFLOW_TRACKING_URI"


def _access_error(error: Exception, uri: str, source: str, what: str) -> str:
    """One line saying what is wrong with the tracking server or database at `uri` and what to fix."""
    user = os.environ.get(USERNAME_VAR)
    code = getattr(error, "error_code", "")
    shown = redacted_uri(uri)
    if code == "UNAUTHENTICATED" and not user:
        return f"MLflow at {shown} asks for a login: set {USERNAME_VAR} and {PASSWORD_VAR}"
    if code == "UNAUTHENTICATED":
        return f"MLflow at {shown} refused the login of {user!r}: check {PASSWORD_VAR} (and {USERNAME_VAR})"
    if code == "PERMISSION_DENIED":
        return f"MLflow user {user!r} may not write to {what} at {shown}: ask its owner or an MLflow admin for EDIT"
    detail = (str(error).splitlines() or [type(error).__name__])[0][:300]
    if not uri.startswith(("http://", "https://")):
        return f"the MLflow database {shown} refuses: {detail} (fix {source}; its password goes in PGPASSWORD)"
    failing = re.search(r"too many (\d+) error responses", detail)
    if failing:  # the server answers, with a 5xx every time: its own store fails
        return f"MLflow at {shown} answers HTTP {failing[1]} to every request: its database may refuse it (see the server's log)"
    if "Max retries exceeded" in detail or "Connection" in detail:
        return f"MLflow tracking server {shown} does not answer: start it, or fix {source}"
    return f"MLflow at {shown}: {detail[:300]} (fix {source})"


def _connect_once(database_uri: str) -> None:
    import sqlalchemy

    engine = sqlalchemy.create_engine(database_uri)
    try:
        with engine.connect():
            pass
    finally:
        engine.dispose()


def check_tracking_access(cfg: ExperimentConfig) -> None:
    """Before any training: can this login, through this tracking URI, write runs to the experiment (and
    versions of the registered model, when registering)? Anything else is a ConfigError naming the
    variable or key to fix, at once rather than an hour later. It sets the tag TAG_ACCESS_CHECK: a write
    that needs the same EDIT permission as creating runs (it creates the experiment if missing)."""
    uri = resolve_tracking_uri(cfg.mlflow)
    source = _uri_source(cfg.mlflow)
    if urlsplit(uri).password:
        raise ConfigError(
            f"{source} carries a password ({redacted_uri(uri)}), which would be logged with every run: take it out "
            f"and set {PASSWORD_VAR} (a tracking server) or PGPASSWORD (a PostgreSQL database)"
        )
    if uri.startswith(("sqlite:", "file:")) or "://" not in uri:
        return  # a local store: its first write says what is wrong, at once
    user = os.environ.get(USERNAME_VAR) or getpass.getuser()
    what = f"experiment {cfg.mlflow.experiment_name!r} (mlflow.experiment_name)"
    with _quick_requests():
        try:
            if not uri.startswith(("http://", "https://")):
                _connect_once(uri)  # MLflow's own store retries a refused connection for ~100 s
            client = MlflowClient(uri)
            client.set_experiment_tag(ensure_experiment(client, cfg.mlflow.experiment_name), TAG_ACCESS_CHECK, user)
            if cfg.mlflow.register:
                name = cfg.mlflow.registered_model_name
                what = f"registered model {name!r} (mlflow.registered_model_name; or set mlflow.register=false)"
                if not client.search_registered_models(f"name = '{name}'", max_results=1):
                    try:
                        client.create_registered_model(name)
                    except RestException as error:  # made meanwhile, or by a retried request: fine
                        if error.error_code != "RESOURCE_ALREADY_EXISTS":
                            raise
                client.set_registered_model_tag(name, TAG_ACCESS_CHECK, user)
        except Exception as error:  # MlflowException from a server; SQLAlchemy's and the driver's from a database
            raise ConfigError(_access_error(error, uri, source, what)) from None


MLFLOW_UI_ADDRESS = "http://127.0.0.1:5000"  # where `mlflow ui` serves a local store by default
TRAINING_VIEW = "workflowType=machine_learning"  # the UI's model-training view; without it a fresh browser gets GenAI


def ui_address(tracking_uri: str) -> str:
    """The MLflow UI for `tracking_uri`: the tracking server itself (without credentials), else what
    `mlflow ui --backend-store-uri URI` serves on."""
    if not tracking_uri.startswith(("http://", "https://")):
        return MLFLOW_UI_ADDRESS
    parts = urlsplit(tracking_uri)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2])).rstrip("/")


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """A run's page in the UI's model-training view (for a search's trials as well, see search_url)."""
    return f"{ui_address(tracking_uri)}/#/experiments/{experiment_id}/runs/{run_id}?{TRAINING_VIEW}"


def model_version_url(tracking_uri: str, name: str, version: str | int) -> str:
    """A registered version's page (its card is the description) in the UI's model-training view."""
    return f"{ui_address(tracking_uri)}/#/models/{quote(name)}/versions/{version}?{TRAINING_VIEW}"


def search_url(tracking_uri: str, experiment_id: str, parent_run_id: str) -> str:
    """A search in the UI's runs table: its parent run with the trials grouped under it (filtered to them)."""
    trials = quote(f"tags.`mlflow.parentRunId` = '{parent_run_id}'")
    return f"{ui_address(tracking_uri)}/#/experiments/{experiment_id}/runs?{TRAINING_VIEW}&searchFilter={trials}"


def run_lines(client: MlflowClient, tracking_uri: str, run_id: str) -> str:
    """What a command prints about its MLflow run (read through `client`): the run's id, the link that opens
    it in `tracking_uri`'s UI in the model-training view (a search's table of trials, else the run) and,
    for a local store, the `mlflow ui` command that serves the link."""
    run = client.get_run(run_id)
    page = search_url if run.data.tags.get(TAG_KIND) == "search" else run_url
    lines = [f"mlflow run:   {run_id}", f"  open:       {page(tracking_uri, run.info.experiment_id, run_id)}"]
    if not tracking_uri.startswith(("http://", "https://")):
        lines.append(f"  ui:         mlflow ui --backend-store-uri {redacted_uri(tracking_uri)}")
    return "\n".join(lines)
