"""`pneumo monitor MODEL DATA`: the /monitoring report for a whole dataset (a new hospital's folder, a
manifest), as report.html plus an MLflow run of kind `monitor`, so a site can be checked against a
model before (or while) it serves there.
"""

from __future__ import annotations

import html
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
from mlflow.tracking import MlflowClient

from pneumo.config import ConfigError, ExperimentConfig
from pneumo.data.folder import SPLITS
from pneumo.monitoring.drift import WindowData, drift_report
from pneumo.monitoring.features import Observations, observe_dataset
from pneumo.monitoring.profile import NO_PROFILE, profile_of

MAX_TESTED = 2000  # films drawn at random for the drift tests (their cost grows with the square)
MOST_UNUSUAL_SHOWN = 20  # films listed by out-of-distribution score


@dataclass
class MonitorOutcome:
    report: dict[str, Any]  # drift_report's answer plus the dataset's name and the most unusual films
    html_path: str
    mlflow_run_id: str


def _observe_splits(loaded, data, splits: list[str], batch_size: int) -> tuple[Observations, list[str]]:
    parts, paths = [], []
    for split in splits:
        dataset = data.datasets[split]
        if dataset.count():
            parts.append(observe_dataset(loaded, dataset, batch_size))
            paths += [str(row["path"]) for row in dataset.select_columns(["path"]).take_all()]
    if not parts:
        raise ConfigError(f"data.path: no usable images in split(s) {', '.join(splits)}")
    return Observations.concat(parts), paths


def monitor_dataset(
    model_uri: str, cfg: ExperimentConfig, split: str = "all", out_dir: Optional[str | Path] = None
) -> MonitorOutcome:
    """Compare the films of `split` (or every split) of cfg.data with the model's reference profile."""
    from pneumo.data.dataset import prepare_data
    from pneumo.models.uri import fetch_model
    from pneumo.tracking import (
        TAG_DATA_FINGERPRINT,
        TAG_MODEL_URI,
        finish_run,
        log_metrics,
        resolve_tracking_uri,
        start_run,
    )

    tracking_uri = resolve_tracking_uri(cfg.mlflow)
    model = fetch_model(model_uri, tracking_uri)
    profile = profile_of(model.loaded)
    if profile is None:
        raise ConfigError(f"model {model.uri}: {NO_PROFILE}")
    data = prepare_data(cfg.data, model.loaded.meta.preprocessing_spec, cfg.serve.max_image_pixels)
    seen, paths = _observe_splits(model.loaded, data, list(SPLITS) if split == "all" else [split], cfg.eval.batch_size)
    scores = profile.ood_scores(seen)
    tested = np.random.default_rng(0).permutation(len(seen))[:MAX_TESTED]
    window = WindowData(
        profile.project(seen.features[tested])[0],
        seen.intensities[tested],
        seen.probabilities[tested],
        scores[tested] > profile.gate.cutoff,
        np.zeros(len(tested)),
    )
    report = drift_report(profile, window, len(tested), min(50, len(tested)))
    report["ood"] = {
        "rate": float(np.mean(scores > profile.gate.cutoff)),
        "count": int(np.sum(scores > profile.gate.cutoff)),
        "cutoff": profile.gate.cutoff,
        "films": len(seen),
    }
    report["most_unusual"] = [
        {"path": paths[i], "ood_score": float(scores[i])} for i in np.argsort(-scores)[:MOST_UNUSUAL_SHOWN]
    ]
    report.update(model_uri=model.uri, data=cfg.data.path, split=split, tested_films=len(tested))
    client = MlflowClient(tracking_uri)
    run_id = start_run(
        client,
        cfg,
        "monitor",
        f"monitor-{model.name}-{model.version}",
        tags={TAG_MODEL_URI: model.uri, TAG_DATA_FINGERPRINT: data.fingerprint},
        params={"model_uri": model.uri, "data.path": cfg.data.path, "split": split},
    )
    log_metrics(client, run_id, _metrics(report))
    folder = Path(
        out_dir
        or Path("reports")
        / f"monitor-{re.sub(r'[^A-Za-z0-9_.-]+', '_', model.name)}-{model.version}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "monitoring.json").write_text(json.dumps(report, indent=2))
    (folder / "report.html").write_text(render_html(report))
    client.log_artifacts(run_id, str(folder), "monitoring")
    finish_run(client, run_id)
    return MonitorOutcome(report, str(folder / "report.html"), run_id)


def _metrics(report: dict[str, Any]) -> dict[str, float]:
    metrics = {"drift": float(bool(report.get("drift"))), "ood_rate": report["ood"]["rate"]}
    for family in ("features", "predictions", "intensities"):
        if family in report:
            metrics[f"drift_{family}_p_value"] = report[family]["p_value"]
    return metrics


def format_summary(report: dict[str, Any]) -> str:
    """The terminal summary of `pneumo monitor`."""
    lines = [
        f"drift: {'YES' if report['drift'] else 'no'} (family-wise alpha {report.get('alpha')}, "
        f"{report['tested_films']} films tested)"
    ]
    for family in ("features", "predictions", "intensities"):
        if family in report:
            entry = report[family]
            lines.append(
                f"  {family:<12} p = {entry['p_value']:.4g}  {'DRIFT' if entry['drift'] else 'ok':<5}  {entry['test']}"
            )
    ood = report["ood"]
    lines.append(
        f"out of distribution: {ood['count']} of {ood['films']} films ({ood['rate']:.1%}), cut-off {ood['cutoff']:.3g}"
    )
    return "\n".join(lines)


def render_html(report: dict[str, Any]) -> str:
    """A self-contained page: verdict, the three test families, intensity statistics, the most unusual films."""

    def row(*cells: Any) -> str:
        return "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>"

    families = "".join(
        row(f, report[f]["test"], f"{report[f]['p_value']:.4g}", "DRIFT" if report[f]["drift"] else "ok")
        for f in ("features", "predictions", "intensities")
        if f in report
    )
    statistics = "".join(
        row(name, f"{s['mean']:.4f}", f"{s['reference_mean']:.4f}", f"{s['p_value']:.3g}")
        for name, s in report.get("intensities", {}).get("statistics", {}).items()
    )
    unusual = "".join(row(f["path"], f"{f['ood_score']:.3g}") for f in report["most_unusual"])
    verdict = "Drift detected" if report["drift"] else "No drift detected"
    ood = report["ood"]
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>pneumo monitor: {html.escape(str(report["data"]))}</title>
<style>body{{font-family:sans-serif;max-width:960px;margin:2em auto}}td,th{{border:1px solid #ccc;padding:4px 8px}}
table{{border-collapse:collapse;margin:1em 0}}</style></head><body>
<h1>{verdict}</h1>
<p>Model <code>{html.escape(report["model_uri"])}</code>, data <code>{html.escape(str(report["data"]))}</code>
(split {html.escape(report["split"])}), {report["tested_films"]} films tested against the model's reference profile
(family-wise false-alarm rate {report.get("alpha")}).</p>
<p>Out of distribution: {ood["count"]} of {ood["films"]} films ({ood["rate"]:.1%}) beyond the cut-off {ood["cutoff"]:.3g}
(about 1% of validation films are).</p>
<h2>Tests</h2><table><tr><th>family</th><th>test</th><th>p-value</th><th></th></tr>{families}</table>
<h2>Intensity statistics</h2><table><tr><th>statistic</th><th>mean here</th><th>reference mean</th><th>KS p-value</th></tr>
{statistics}</table>
<h2>Most unusual films</h2><table><tr><th>file</th><th>OOD score</th></tr>{unusual}</table>
</body></html>
"""
