"""Hyperparameter search with Ray Tune over Ray Train (V2), every trial a nested MLflow run.

Ray 2.60 cannot pass a TorchTrainer to the Tuner. Each trial is a function trainable that builds its
own TorchTrainer with a TuneReportCallback, so every epoch's val metrics reach Tune and ASHA can stop
weak trials early. The search space uses the config's dotted keys:

    tune:
      num_samples: 4
      search_space:
        train.lr: {loguniform: [1.0e-4, 3.0e-3]}
        model.name: {choice: [resnet10t, resnet18]}

A trial's TorchTrainer run and its MLflow child run are both keyed by the Tune trial id, so a trial
that restarts (after a failure or `--resume`) continues its checkpoints and its MLflow run instead of
starting duplicates. `SearchWatcher`, a Tune callback in the driver, follows the search live: the
progress table, the parent run's trial counts and best-so-far series, and each trial's run closed the
moment its trial ends, with how it ended.
"""

from __future__ import annotations

import logging
import re
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from mlflow.tracking import MlflowClient
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.basic_variant import BasicVariantGenerator

from pneumo.config import ConfigError, ExperimentConfig, best_of, from_dict, improves, to_dict, with_updates
from pneumo.data.dataset import PreparedData
from pneumo.data.transforms import Preprocessing
from pneumo.tracking import (
    TAG_SEARCH_PARAMS,
    TAG_TRAIN_FOLDER,
    TAG_TRIAL_ID,
    count_stopped_early,
    end_trial_run,
    find_trial_run,
    finish_run,
    log_metrics,
    log_search_progress,
    next_step,
    open_run,
    start_run,
)
from pneumo.training.callbacks import EpochLogger
from pneumo.training.events import COMPLETED, FAILED, RUNNING, STOPPED_EARLY, LoggedEvents, RunEvents
from pneumo.training.train import build_trainer, storage_path

logger = logging.getLogger(__name__)

TRIAL_CPUS = 0.1  # the trial's driver only waits on its TorchTrainer; 0 is rejected by Tune
DISTRIBUTIONS = {
    "loguniform": lambda args: tune.loguniform(*args),
    "uniform": lambda args: tune.uniform(*args),
    "randint": lambda args: tune.randint(*args),
    "choice": lambda args: tune.choice(list(args)),
    "grid": lambda args: tune.grid_search(list(args)),
}


def build_search_space(space: dict[str, Any]) -> dict[str, Any]:
    """{"train.lr": {"loguniform": [1e-4, 1e-2]}} -> {"train.lr": tune.loguniform(1e-4, 1e-2)}."""
    built = {}
    for key, spec in space.items():
        if not (isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in DISTRIBUTIONS):
            raise ConfigError(
                f"tune.search_space.{key}: expected one of {{{', '.join(DISTRIBUTIONS)}}}: [values], got {spec!r}"
            )
        kind, args = next(iter(spec.items()))
        built[key] = DISTRIBUTIONS[kind](args)
    return built


def check_search_space(cfg: ExperimentConfig) -> None:
    """Fail before anything starts if a search key is not a config key."""
    for key in cfg.tune.search_space:
        with_updates(cfg, {key: _example_value(cfg, key)}, source=f"tune.search_space.{key}")


def _example_value(cfg: ExperimentConfig, key: str) -> Any:
    value: Any = to_dict(cfg)
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            raise ConfigError(f"tune.search_space: {key!r} is not a config key")
        value = value[part]
    return value


def trial_run_id(
    client: MlflowClient,
    cfg: ExperimentConfig,
    parent_run_id: str,
    trial_id: str,
    trial_name: str,
    params: dict,
    reopen: bool = False,
) -> str:
    """The trial's MLflow child run: found again by trial id (set RUNNING again if `reopen`, as a trial
    that restarts does), else created."""
    found = find_trial_run(client, cfg, parent_run_id, trial_id)
    if found is not None:
        if reopen:
            client.update_run(found.info.run_id, "RUNNING")
        return found.info.run_id
    return start_run(
        client, cfg, "trial", trial_name, parent_run_id, tags={TAG_TRIAL_ID: trial_id, TAG_SEARCH_PARAMS: str(params)}
    )


def run_trial(
    params: dict[str, Any],
    base_config: dict,
    data: PreparedData,
    preprocessing: Preprocessing,
    tracking_uri: str,
    parent_run_id: str,
    train_storage: str,
) -> None:
    """One Tune trial: a TorchTrainer whose epochs report to Tune and to the trial's MLflow run."""
    cfg = with_updates(from_dict(base_config), params, source="tune.search_space")
    context = tune.get_context()
    client = MlflowClient(tracking_uri)
    run_id = trial_run_id(
        client, cfg, parent_run_id, context.get_trial_id(), context.get_trial_name(), params, reopen=True
    )
    client.set_tag(run_id, TAG_TRAIN_FOLDER, f"{train_storage}/{context.get_trial_id()}")
    trainer = build_trainer(
        cfg,
        data,
        preprocessing,
        run_name=context.get_trial_id(),
        # MLflow first: once Tune sees an epoch, ASHA may stop the trial at once
        callbacks=[
            EpochLogger(tracking_uri, run_id, cfg.train.epochs, f"[{context.get_trial_name()}] "),
            TuneReportCallback(),
        ],
        storage=train_storage,
        mlflow_run=(tracking_uri, run_id),
    )
    trainer.fit()
    # ASHA stops a trial at a report and never returns here: SearchWatcher closes the run in the driver.


class SearchWatcher(tune.Callback):
    """Runs in the search's driver as Tune's trials change: updates the progress table, logs the parent
    run's trial counts (`trials_started`, `trials_running`, …, tag pneumo.search_progress) and its
    best-so-far tune.metric (`best_<metric>`, one step per epoch reported), and ends each trial's MLflow
    run when the trial ends: completed, stopped by ASHA at epoch N, or failed with the reason."""

    def __init__(self, cfg: ExperimentConfig, tracking_uri: str, parent_run_id: str, progress: RunEvents):
        self.cfg, self.tracking_uri, self.parent_run_id, self.progress = cfg, tracking_uri, parent_run_id, progress
        self.client = MlflowClient(tracking_uri)
        self.best_key = f"best_{cfg.tune.metric}"
        previous = self.client.get_run(parent_run_id).data.metrics  # a resumed search continues its series
        self.best = previous.get(self.best_key)
        self.best_step = next_step(self.client, parent_run_id, self.best_key)
        self.counts_step = next_step(self.client, parent_run_id, "trials_started")
        self.counts = {"started": 0, RUNNING: 0, COMPLETED: 0, STOPPED_EARLY: 0, FAILED: 0}
        self.running: set[str] = set()  # trial ids started and not ended (a trial can fail before it starts)

    def __getstate__(self) -> dict:
        """Tune pickles its run config (callbacks included) into the experiment folder; the client and the
        terminal stay here, and a resumed search is given a fresh watcher."""
        return {"cfg": to_dict(self.cfg), "parent_run_id": self.parent_run_id}

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        self.progress.trial_started(trial.trial_id, trial.config)
        self.running.add(trial.trial_id)
        self._count(trial, started=1)

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        self.progress.epoch_reported(trial.trial_id, result)
        value = result.get(self.cfg.tune.metric)
        if isinstance(value, (int, float)) and (self.best is None or improves(value, self.best, self.cfg.tune.mode)):
            self.best = float(value)
        if self.best is not None:
            self.log_best(self.best)

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        run_id = self._trial_run(trial)
        # the larger of Tune's count and the epochs in the trial's MLflow run: a search resumed after its driver
        # was killed restores the results Tune last saved (every 10 s), so a finished trial looked stopped early
        # by Tune's count alone; and the last epoch's metrics may reach MLflow after Tune hears of the end
        epochs_run = max(
            int((trial.last_result or {}).get("training_iteration", 0)),
            next_step(self.client, run_id, self.cfg.tune.metric),
        )
        early = epochs_run < self.cfg.train.epochs
        how = f"stopped by {self.cfg.tune.scheduler.upper()} at epoch {epochs_run}" if early else COMPLETED
        self.progress.trial_ended(trial.trial_id, STOPPED_EARLY if early else COMPLETED, how if early else "")
        end_trial_run(self.client, run_id, how, failed=False, stopped_early=early)
        self._count(trial, **{"stopped_early" if early else "completed": 1})

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        reason = _trial_error(trial)
        self.progress.trial_ended(trial.trial_id, FAILED, reason)
        end_trial_run(self.client, self._trial_run(trial), f"failed: {reason}", failed=True, stopped_early=False)
        self._count(trial, failed=1)

    def log_best(self, value: float) -> None:
        log_metrics(self.client, self.parent_run_id, {self.best_key: value}, step=self.best_step)
        self.best_step += 1

    def _trial_run(self, trial) -> str:
        """The trial's MLflow run id; created here for a trial that failed before it opened its run."""
        return trial_run_id(self.client, self.cfg, self.parent_run_id, trial.trial_id, str(trial), trial.config)

    def _count(self, trial, **changes: int) -> None:
        if "started" not in changes:
            self.running.discard(trial.trial_id)
        for key, change in changes.items():
            self.counts[key.replace("_", " ")] += change
        self.counts[RUNNING] = len(self.running)
        log_search_progress(self.client, self.parent_run_id, self.counts, self.counts_step)
        self.counts_step += 1


EXCEPTION_LINE = re.compile(r"^[\w.]*(Error|Exception|Interrupt)\w*: \S")  # "ray.exceptions.OutOfMemoryError: 3 …"


def _trial_error(trial) -> str:
    """The last `SomeError: message` line of the trial's error file (else its last line), or why there is none."""
    path = trial.error_file
    try:
        lines = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()] if path else []
    except OSError:
        lines = []
    if not lines:
        return "the trial's process died (no error file)"
    return next((line for line in reversed(lines) if EXCEPTION_LINE.match(line)), lines[-1])[:300]


@dataclass
class SearchOutcome:
    best_checkpoint: str
    best_params: dict[str, Any]
    best_metric: float
    results_path: str  # the Tune experiment folder
    n_trials: int
    n_stopped_early: int


def build_searcher(cfg: ExperimentConfig):
    """The search algorithm, seeded by train.seed: the same experiment draws the same trials.

    Tune's default random searcher is unseeded: each run of one YAML drew other learning rates and
    so registered another champion. Both searchers also bound the trials at once
    (tune.max_concurrent_trials) here, so Tune's own setting of it stays unset."""
    if cfg.tune.searcher == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        return ConcurrencyLimiter(OptunaSearch(seed=cfg.train.seed), max_concurrent=cfg.tune.max_concurrent_trials)
    return BasicVariantGenerator(max_concurrent=cfg.tune.max_concurrent_trials, random_state=cfg.train.seed)


def _build_tuner(cfg: ExperimentConfig, trainable, search_name: str, watcher: SearchWatcher) -> tune.Tuner:
    epochs = cfg.train.epochs
    scheduler = (
        ASHAScheduler(
            max_t=epochs, grace_period=min(cfg.tune.grace_period, epochs), reduction_factor=cfg.tune.reduction_factor
        )
        if cfg.tune.scheduler == "asha"
        else FIFOScheduler()
    )
    return tune.Tuner(
        trainable,
        param_space=build_search_space(cfg.tune.search_space),
        tune_config=tune.TuneConfig(
            metric=cfg.tune.metric,
            mode=cfg.tune.mode,
            scheduler=scheduler,
            search_alg=build_searcher(cfg),
            num_samples=cfg.tune.num_samples,
            time_budget_s=cfg.tune.time_budget_s,
        ),
        # Tune's status tables and trial boxes go to the run's log (progress.watch_run); the table is ours
        run_config=tune.RunConfig(name=search_name, storage_path=storage_path(cfg), callbacks=[watcher]),
    )


def _best_trial(results, cfg: ExperimentConfig) -> tuple[str, dict, float]:
    """(checkpoint path, params, metric) of the best epoch of any trial (checkpoints kept by tune.metric)."""
    best = results.get_best_result(metric=cfg.tune.metric, mode=cfg.tune.mode, scope="all")
    frame = best.metrics_dataframe.dropna(subset=["checkpoint_path"])
    row = best_of((row for _, row in frame.iterrows()), cfg.tune.mode, lambda row: row[cfg.tune.metric])
    params = {k: v for k, v in best.config.items()}
    return str(row["checkpoint_path"]), params, float(row[cfg.tune.metric])


def _fit_or_raise_if_interrupted(tuner: tune.Tuner):
    """tuner.fit(), raising KeyboardInterrupt when Ctrl-C (SIGINT) stopped the search.

    On Ctrl-C Tune saves the experiment state and returns normally, with the interrupted trials shown
    as terminated; registering that as the search's result would be wrong. Tune swaps in its own
    SIGINT handler for the run and puts the previous one back only when the signal arrives, so the
    handler in place after fit() tells whether the search was interrupted.
    """
    if threading.current_thread() is not threading.main_thread():
        return tuner.fit()  # Tune installs no handler off the main thread either

    def on_interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        results = tuner.fit()
        interrupted = signal.getsignal(signal.SIGINT) is on_interrupt
    finally:
        signal.signal(signal.SIGINT, previous)
    if interrupted:
        raise KeyboardInterrupt("search interrupted; continue it with `pneumo run ... --resume`")
    return results


def search(
    cfg: ExperimentConfig,
    data: PreparedData,
    preprocessing: Preprocessing,
    client: MlflowClient,
    resume: bool = False,
    progress: Optional[RunEvents] = None,
) -> tuple[str, SearchOutcome]:
    """Run (or resume) the search; returns the parent run id and where the best checkpoint is."""
    check_search_space(cfg)
    parent_run_id, search_name = open_run(client, cfg, "search", resume)
    progress = progress or LoggedEvents()
    watcher = SearchWatcher(cfg, client.tracking_uri, parent_run_id, progress)
    trainable = tune.with_resources(
        tune.with_parameters(
            run_trial,
            base_config=to_dict(cfg),
            data=data,
            preprocessing=preprocessing,
            tracking_uri=client.tracking_uri,
            parent_run_id=parent_run_id,
            train_storage=f"{storage_path(cfg)}/{search_name}/trials",
        ),
        {"cpu": TRIAL_CPUS},
    )
    experiment_path = f"{storage_path(cfg)}/{search_name}"
    if resume and tune.Tuner.can_restore(experiment_path):
        tuner = tune.Tuner.restore(experiment_path, trainable=trainable, resume_unfinished=True, restart_errored=True)
        # the restored run config holds the pickled watcher of the interrupted search: watch with this one
        tuner._local_tuner.get_run_config().callbacks = [watcher]
    else:
        tuner = _build_tuner(cfg, trainable, search_name, watcher)
    try:
        results = _fit_or_raise_if_interrupted(tuner)
    except BaseException:
        finish_run(client, parent_run_id, failed=True)
        raise
    n_stopped = count_stopped_early(client, cfg, parent_run_id)  # as SearchWatcher tagged them, resumed ones too
    checkpoint, params, metric = _best_trial(results, cfg)
    watcher.log_best(metric)  # the series ends on the best epoch of any trial, resumed ones included
    log_metrics(client, parent_run_id, {"n_trials": len(results), "n_trials_stopped_early": n_stopped})
    client.log_dict(parent_run_id, {k: v for k, v in params.items()}, "best_params.json")
    return parent_run_id, SearchOutcome(checkpoint, params, metric, experiment_path, len(results), n_stopped)
