"""Draw every picture of an evaluation and write report.html beside them."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np

from pneumo.config import ExperimentConfig, to_yaml
from pneumo.data.dataset import PreparedData
from pneumo.evaluation.evaluate import Evaluation, confident_mistakes
from pneumo.evaluation.localization import Localization
from pneumo.evaluation.prediction import images_at
from pneumo.evaluation.report import plots
from pneumo.evaluation.report.baselines import resolve_baseline_dataset
from pneumo.evaluation.report.explanations import explanation_section, films_to_explain
from pneumo.evaluation.report.html import ReportContent, render_report
from pneumo.models.calibration import describe_calibration
from pneumo.models.checkpoints import LoadedModel

REPORT_FILE = "report.html"


def write_report(
    content: ReportContent,
    history: dict[str, list[tuple[int, float]]],
    mistakes: list[tuple[np.ndarray, int, float]],
    out_dir: str | Path,
) -> Path:
    """PNG pictures and report.html into out_dir; returns the report's path.

    history: MLflow metric history of the training run (key -> [(epoch, value)]), empty for a model
    evaluated on its own; mistakes: (image, true label, probability) of the most confident errors.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    evaluation, metrics = content.evaluation, content.evaluation.metrics
    labels, probabilities = evaluation.test.labels, evaluation.test_probabilities
    figures = {}
    if len(np.unique(labels)) == 2:
        figures["ROC curve, operating point marked"] = plots.plot_roc(labels, probabilities, metrics, out / "roc.png")
        figures["Precision-recall curve"] = plots.plot_precision_recall(labels, probabilities, metrics, out / "pr.png")
    figures["Confusion matrix"] = plots.plot_confusion(metrics, out / "confusion.png")
    figures["Reliability diagram"] = plots.plot_reliability(
        evaluation.reliability, evaluation.calibration, out / "reliability.png"
    )
    if history:
        figures["Training curves"] = plots.plot_training_curves(history, out / "training_curves.png")
    images, truths, scores = zip(*mistakes) if mistakes else ((), (), ())
    figures["Most confident mistakes, missed pneumonia first"] = plots.plot_mistakes(
        list(images), list(truths), list(scores), evaluation.threshold, out / "mistakes.png"
    )
    report = out / REPORT_FILE
    report.write_text(render_report(content, figures), encoding="utf-8")
    return report


def data_summary(data: PreparedData) -> dict[str, Any]:
    """What the report's data section lists."""
    return {
        "counts": data.counts,
        "fingerprint": data.fingerprint,
        "skipped files": len(data.skipped_files),
        "ignored non-image files": data.ignored_files,
    }


def write_evaluation_report(
    evaluation: Evaluation,
    cfg: ExperimentConfig,
    data: PreparedData,
    split: str,
    model: dict[str, str],
    history: dict[str, list[tuple[int, float]]],
    out_dir: str | Path,
    title: str = "",
    threshold_policy: Optional[str] = None,
    explain: Optional[LoadedModel] = None,
    localization: Optional[Localization] = None,
) -> Path:
    """The report of `evaluation` (scored on `split` of `data`), with its most confident mistakes.

    title defaults to the experiment name; threshold_policy (default eval.threshold_policy) is the row
    the operating-point table highlights, "" for a threshold that came stored with the model; `explain`:
    the model whose Grad-CAM maps the report shows, with `localization` scores on a synthetic set."""
    labels, probabilities = evaluation.test.labels, evaluation.test_probabilities
    indices = confident_mistakes(labels, probabilities, evaluation.threshold, cfg.eval.mistakes_shown)
    paths = [evaluation.test.paths[i] for i in indices]
    images = images_at(data.datasets[split], paths + (films_to_explain(evaluation) if explain else []))
    mistakes = [
        (images[path], int(labels[i]), float(probabilities[i])) for i, path in zip(indices, paths) if path in images
    ]
    content = ReportContent(
        title=title or cfg.name,
        evaluation=evaluation,
        config_yaml=to_yaml(cfg),
        data_summary=data_summary(data),
        model=model,
        baseline_dataset=resolve_baseline_dataset(cfg.eval.baselines, cfg.data),
        threshold_policy=cfg.eval.threshold_policy if threshold_policy is None else threshold_policy,
    )
    if explain is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        content.explanations = explanation_section(explain, evaluation, images, localization, Path(out_dir))
    return write_report(content, history, mistakes, out_dir)


def training_model_rows(
    cfg: ExperimentConfig, run_id: str, model_dir: Path, evaluation: Evaluation, version: Optional[Any]
) -> dict[str, str]:
    """The report's "Model" rows for the model a `pneumo run` trained, evaluated and registered."""
    registered = (
        f"models:/{version.name}/{version.version} (aliases: {', '.join(version.aliases) or 'none'})"
        if version is not None
        else "not registered (mlflow.register: false)"
    )
    return {
        "architecture": cfg.model.name,
        "registered model": registered,
        "MLflow run": run_id,
        "checkpoint": str(model_dir),
        "decision threshold": f"{evaluation.threshold:.4f} ({cfg.eval.threshold_policy} policy on val)",
        "calibration": describe_calibration(evaluation.calibration, cfg.eval.calibration),
    }
