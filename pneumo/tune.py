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
starting duplicates.
"""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import dataclass
from typing import Any

from mlflow.tracking import MlflowClient
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from pneumo.config import ConfigError, ExperimentConfig, from_dict, to_dict, with_updates
from pneumo.data.dataset import PreparedData
from pneumo.data.transforms import Preprocessing
from pneumo.tracking import (
    TAG_SEARCH_PARAMS,
    TAG_STOPPED_EARLY,
    TAG_TRAIN_FOLDER,
    TAG_TRIAL_ID,
    find_trial_run,
    finish_run,
    log_metrics,
    open_run,
    start_run,
)
from pneumo.train import EpochLogger, build_trainer, storage_path

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
            raise ConfigError(f"tune.search_space.{key}: expected one of {{{', '.join(DISTRIBUTIONS)}}}: "
                              f"[values], got {spec!r}")
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


def _trial_run_id(client: MlflowClient, cfg: ExperimentConfig, parent_run_id: str, trial_id: str,
                  trial_name: str, params: dict) -> str:
    """The trial's MLflow child run: found again by trial id on a restart, else created."""
    found = find_trial_run(client, cfg, parent_run_id, trial_id)
    if found is not None:
        client.update_run(found.info.run_id, "RUNNING")
        return found.info.run_id
    return start_run(client, cfg, "trial", trial_name, parent_run_id,
                     tags={TAG_TRIAL_ID: trial_id, TAG_SEARCH_PARAMS: str(params)})


def run_trial(params: dict[str, Any], base_config: dict, data: PreparedData, preprocessing: Preprocessing,
              tracking_uri: str, parent_run_id: str, train_storage: str) -> None:
    """One Tune trial: a TorchTrainer whose epochs report to Tune and to the trial's MLflow run."""
    cfg = with_updates(from_dict(base_config), params, source="tune.search_space")
    context = tune.get_context()
    client = MlflowClient(tracking_uri)
    run_id = _trial_run_id(client, cfg, parent_run_id, context.get_trial_id(), context.get_trial_name(), params)
    client.set_tag(run_id, TAG_TRAIN_FOLDER, f"{train_storage}/{context.get_trial_id()}")
    trainer = build_trainer(cfg, data, preprocessing, run_name=context.get_trial_id(),
                            # MLflow first: once Tune sees an epoch, ASHA may stop the trial at once
                            callbacks=[EpochLogger(tracking_uri, run_id, cfg.train.epochs, f"[{context.get_trial_name()}] "),
                                       TuneReportCallback()],
                            storage=train_storage)
    trainer.fit()
    # Reached only when Tune lets the function return (FIFO, or a trial that ends on its own): ASHA stops
    # a trial at a report, its last epoch included, and never returns here; _close_trial_runs then
    # finishes the run after the search. Nothing that must happen may live below this line.
    finish_run(client, run_id)


@dataclass
class SearchOutcome:
    best_checkpoint: str
    best_params: dict[str, Any]
    best_metric: float
    results_path: str  # the Tune experiment folder
    n_trials: int
    n_stopped_early: int


def _build_tuner(cfg: ExperimentConfig, trainable, search_name: str) -> tune.Tuner:
    epochs = cfg.train.epochs
    scheduler = (ASHAScheduler(max_t=epochs, grace_period=min(cfg.tune.grace_period, epochs),
                               reduction_factor=cfg.tune.reduction_factor)
                 if cfg.tune.scheduler == "asha" else FIFOScheduler())
    search_alg = None
    if cfg.tune.searcher == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        search_alg = OptunaSearch(seed=cfg.train.seed)
    return tune.Tuner(
        trainable,
        param_space=build_search_space(cfg.tune.search_space),
        tune_config=tune.TuneConfig(metric=cfg.tune.metric, mode=cfg.tune.mode, scheduler=scheduler,
                                    search_alg=search_alg, num_samples=cfg.tune.num_samples,
                                    max_concurrent_trials=cfg.tune.max_concurrent_trials,
                                    time_budget_s=cfg.tune.time_budget_s),
        run_config=tune.RunConfig(name=search_name, storage_path=storage_path(cfg)),
    )


def _best_trial(results, cfg: ExperimentConfig) -> tuple[str, dict, float]:
    """(checkpoint path, params, metric) of the best epoch of any trial (checkpoints kept by tune.metric)."""
    best = results.get_best_result(metric=cfg.tune.metric, mode=cfg.tune.mode, scope="all")
    frame = best.metrics_dataframe.dropna(subset=["checkpoint_path"])
    row = frame.loc[frame[cfg.tune.metric].idxmax() if cfg.tune.mode == "max" else frame[cfg.tune.metric].idxmin()]
    params = {k: v for k, v in best.config.items()}
    return str(row["checkpoint_path"]), params, float(row[cfg.tune.metric])


def _close_trial_runs(client: MlflowClient, results, parent_run_id: str, cfg: ExperimentConfig) -> int:
    """Mark each trial's MLflow run finished, tagging those ASHA stopped early; returns that count."""
    stopped = 0
    for result in results:
        trial_id = (result.metrics or {}).get("trial_id", "")
        epochs_run = int(result.metrics.get("training_iteration", 0)) if result.metrics else 0
        early = result.error is None and epochs_run < cfg.train.epochs
        stopped += early
        run = find_trial_run(client, cfg, parent_run_id, trial_id)
        if run is not None:
            client.set_tag(run.info.run_id, TAG_STOPPED_EARLY, str(early).lower())
            if run.info.status == "RUNNING":
                finish_run(client, run.info.run_id, failed=result.error is not None)
    return stopped


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


def search(cfg: ExperimentConfig, data: PreparedData, preprocessing: Preprocessing, client: MlflowClient,
           resume: bool = False) -> tuple[str, SearchOutcome]:
    """Run (or resume) the search; returns the parent run id and where the best checkpoint is."""
    check_search_space(cfg)
    parent_run_id, search_name = open_run(client, cfg, "search", resume)
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base_config=to_dict(cfg), data=data, preprocessing=preprocessing,
                             tracking_uri=client.tracking_uri, parent_run_id=parent_run_id,
                             train_storage=f"{storage_path(cfg)}/{search_name}/trials"),
        {"cpu": TRIAL_CPUS})
    experiment_path = f"{storage_path(cfg)}/{search_name}"
    if resume and tune.Tuner.can_restore(experiment_path):
        tuner = tune.Tuner.restore(experiment_path, trainable=trainable, resume_unfinished=True,
                                   restart_errored=True)
    else:
        tuner = _build_tuner(cfg, trainable, search_name)
    try:
        results = _fit_or_raise_if_interrupted(tuner)
    except BaseException:
        finish_run(client, parent_run_id, failed=True)
        raise
    n_stopped = _close_trial_runs(client, results, parent_run_id, cfg)
    checkpoint, params, metric = _best_trial(results, cfg)
    log_metrics(client, parent_run_id, {f"best_{cfg.tune.metric}": metric, "n_trials": len(results),
                                        "n_trials_stopped_early": n_stopped})
    client.log_dict(parent_run_id, {k: v for k, v in params.items()}, "best_params.json")
    return parent_run_id, SearchOutcome(checkpoint, params, metric, experiment_path, len(results), n_stopped)
