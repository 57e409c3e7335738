"""`pneumo monitor MODEL DATA`: the /monitoring report for a whole dataset (a new hospital's folder, a
manifest), as report.html plus an MLflow run of kind `monitor`, so a site can be checked against a
model before (or while) it serves there.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from pneumo.config import ConfigError, ExperimentConfig
from pneumo.data.dataset import PreparedData
from pneumo.data.folder import SPLITS
from pneumo.jobs.scoring import start_job
from pneumo.models.checkpoints import LoadedModel
from pneumo.monitoring.drift import FAMILIES, WindowData, drift_report
from pneumo.monitoring.features import Observations, observe_dataset
from pneumo.monitoring.profile import NO_PROFILE, profile_of
from pneumo.monitoring.report import MOST_UNUSUAL_SHOWN, ReportPictures, render_html
from pneumo.tracking import log_metrics

MAX_TESTED = 2000  # films drawn at random for the drift tests (their cost grows with the square)


@dataclass
class MonitorOutcome:
    report: dict[str, Any]  # drift_report's answer plus the dataset's name and the most unusual films
    html_path: str
    mlflow_run_id: str


def _observe_splits(
    loaded: LoadedModel, data: PreparedData, splits: list[str], batch_size: int
) -> tuple[Observations, list[str]]:
    parts, paths = [], []
    for split in splits:
        dataset = data.datasets[split]
        if dataset.count():
            parts.append(observe_dataset(loaded, dataset, batch_size))
            paths += [str(row["path"]) for row in dataset.select_columns(["path"]).take_all()]
    if not parts:
        raise ConfigError(f"data.path: no usable images in split(s) {', '.join(splits)}")
    return Observations.concat(parts), paths


def _films(data: PreparedData, splits: list[str], paths: list[str]) -> dict[str, np.ndarray]:
    """The decoded films of `paths` (model-sized uint8), for the report's thumbnails."""
    wanted, found = set(paths), {}
    for split in splits:
        for batch in data.datasets[split].iter_batches(batch_size=256, batch_format="numpy"):
            for path, image in zip(batch["path"], batch["image"]):
                if str(path) in wanted:
                    found[str(path)] = np.asarray(image)
    return found


def monitor_dataset(
    model_uri: str, cfg: ExperimentConfig, split: str = "all", out_dir: Optional[str | Path] = None
) -> MonitorOutcome:
    """Compare the films of `split` (or every split) of cfg.data with the model's reference profile."""
    job = start_job(model_uri, cfg)
    model, data = job.model, job.data
    profile = profile_of(model.loaded)
    if profile is None:
        raise ConfigError(f"model {model.uri}: {NO_PROFILE}")
    splits = list(SPLITS) if split == "all" else [split]
    seen, paths = _observe_splits(model.loaded, data, splits, cfg.eval.batch_size)
    scores = profile.ood_scores(seen)
    refused = profile.gate.refuses(scores)
    tested = np.random.default_rng(0).permutation(len(seen))[:MAX_TESTED]
    projected = profile.project(seen.features)[0]
    window = WindowData(
        projected[tested], seen.intensities[tested], seen.probabilities[tested], refused[tested], np.zeros(len(tested))
    )
    report = drift_report(profile, window, len(tested), min(cfg.serve.drift_min_inputs, len(tested)))
    report["ood"] = {
        "rate": float(np.mean(refused)),
        "count": int(np.sum(refused)),
        "cutoff": profile.gate.cutoff,
        "films": len(seen),
    }
    unusual = np.argsort(-scores)[:MOST_UNUSUAL_SHOWN]
    report["most_unusual"] = [{"path": paths[i], "ood_score": float(scores[i])} for i in unusual]
    report.update(model_uri=model.uri, data=cfg.data.path, split=split, tested_films=len(tested))
    run_id = job.open_run(
        "monitor",
        f"monitor-{model.name}-{model.version}",
        {"model_uri": model.uri, "data.path": cfg.data.path, "split": split},
    )
    log_metrics(job.client, run_id, _metrics(report))
    folder = job.report_folder("monitor", split, out_dir)
    pictures = ReportPictures(
        reference=profile,
        here=seen,
        here_projected=projected,
        here_refused=refused,
        films=_films(data, splits, [paths[i] for i in unusual]),
    )
    (folder / "monitoring.json").write_text(json.dumps(report, indent=2))
    (folder / "report.html").write_text(render_html(report, pictures))
    job.close_run(run_id, folder, "monitoring")
    return MonitorOutcome(report, str(folder / "report.html"), run_id)


def _metrics(report: dict[str, Any]) -> dict[str, float]:
    metrics = {"drift": float(bool(report.get("drift"))), "ood_rate": report["ood"]["rate"]}
    for family in FAMILIES:
        if family in report:
            metrics[f"drift_{family}_p_value"] = report[family]["p_value"]
    return metrics
