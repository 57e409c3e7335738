"""The model card written into a registered version's description (Markdown, shown by the MLflow UI):
what the model was trained on, how well it did on test with intervals, how it decides, how far its
probabilities can be read as such, what it is for and what it is not.

Built from what the training run logged (data counts, test metrics and their bootstrap intervals),
the resolved config and the checkpoint's pneumo.json (threshold, calibration).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from pneumo.config import ExperimentConfig
from pneumo.data.folder import CLASS_NAMES, SPLITS
from pneumo.data.synthetic import SYNTHETIC_MARKER, is_synthetic_set
from pneumo.evaluation.metrics import SCORES
from pneumo.tracking import dataset_digest

META_NAME = "pneumo.json"  # pneumo.models.checkpoints.META_FILE, read here without importing torch

INTENDED_USE = (
    "Research and engineering on chest X-ray classification (frontal films, NORMAL vs PNEUMONIA): "
    "comparing models, testing pipelines, studying errors and explanations. **Not for diagnostic use**: "
    "not a medical device, never to guide the care of a patient."
)
LIMITATIONS = (
    "Two classes only: it cannot name other findings, and a film with another disease is still scored.",
    "Performance holds for data like its test split; other hospitals, scanners, ages, views and "
    "populations change it. Measure first: `pneumo eval MODEL DATA`.",
    "The probability is calibrated on validation films of the same source; elsewhere it can drift.",
    "Maps (`POST /explain`, Grad-CAM x input gradient) show where evidence for pneumonia was found; they "
    "are not a segmentation and can miss or misplace findings.",
)


def checkpoint_meta(model_folder: str | Path) -> Optional[dict[str, Any]]:
    """pneumo.json of the checkpoint inside an MLflow model folder (None if it has none)."""
    found = next(Path(model_folder).rglob(META_NAME), None)
    return json.loads(found.read_text()) if found else None


def _data_section(cfg: ExperimentConfig, run_metrics: dict[str, float], fingerprint: str) -> list[str]:
    lines = ["## Data", f"- source: `{cfg.data.path}` (format {cfg.data.format}); fingerprint `{fingerprint}`"]
    lines.append(f"- MLflow dataset digest `{dataset_digest(fingerprint)}` (the training run's Datasets column)")
    for split in SPLITS:
        counts = {name: int(run_metrics.get(f"data.{split}.{name}", 0)) for name in CLASS_NAMES}
        if sum(counts.values()):
            lines.append(
                f"- {split}: {sum(counts.values())} films ("
                + ", ".join(f"{n} {name}" for name, n in counts.items())
                + ")"
            )
    if cfg.data.format in ("auto", "folder") and is_synthetic_set(cfg.data.path):
        lines.append(
            f"- **Trained on synthetic films** (pneumo.data.synthetic, see {SYNTHETIC_MARKER} in the set): "
            "not real patients; its figures say nothing about real chest X-rays."
        )
    return lines


def _metrics_section(run_metrics: dict[str, float]) -> list[str]:
    rows = [
        (
            score,
            run_metrics[f"test_{score}"],
            run_metrics.get(f"test_{score}_ci_low"),
            run_metrics.get(f"test_{score}_ci_high"),
        )
        for score in SCORES
        if f"test_{score}" in run_metrics
    ]
    if not rows:
        return ["## Test metrics", "- not measured"]
    n = sum(int(run_metrics.get(f"test_{cell}", 0)) for cell in ("tp", "fp", "tn", "fn"))
    lines = [
        "## Test metrics",
        f"{n} test films; 95% percentile bootstrap intervals over test films.",
        "",
        "| metric | value | 95% interval |",
        "| --- | --- | --- |",
    ]
    lines += [
        f"| {score} | {value:.3f} | "
        + (f"{low:.3f} - {high:.3f}" if low is not None and high is not None else "n/a")
        + " |"
        for score, value, low, high in rows
    ]
    return lines


def _decision_section(
    cfg: ExperimentConfig, meta: Optional[dict[str, Any]], run_metrics: dict[str, float]
) -> list[str]:
    if meta is None:
        return []
    policy = cfg.eval.threshold_policy
    target = {
        "sensitivity": f" (sensitivity >= {cfg.eval.target_sensitivity} on val)",
        "specificity": f" (specificity >= {cfg.eval.target_specificity} on val)",
        "fixed": "",
    }.get(policy, " (max sensitivity + specificity on val)")
    lines = [
        "## Decision threshold",
        f"- PNEUMONIA when calibrated P(pneumonia) >= **{meta['decision_threshold']:.4f}**: `{policy}` policy"
        f"{target}; Serve and the pyfunc model apply it.",
        "## Calibration",
        f"- `{cfg.eval.calibration}` fitted on val: P = sigmoid(logit / {meta['temperature']:.4f} "
        f"{meta['logit_bias']:+.4f})",
    ]
    if "test_ece" in run_metrics:
        before = run_metrics.get("test_ece_uncalibrated")
        lines.append(
            f"- test expected calibration error {run_metrics['test_ece']:.3f}"
            + (f" (uncalibrated {before:.3f})" if before is not None else "")
            + f", {cfg.eval.calibration_bins} bins"
        )
    return lines


def model_card(
    cfg: ExperimentConfig, run_metrics: dict[str, float], meta: Optional[dict[str, Any]], fingerprint: str
) -> str:
    """The Markdown card; `run_metrics` are the training run's logged metrics, `meta` its pneumo.json."""
    model = (meta or {}).get("model", {})
    architecture = f"**{model.get('name', cfg.model.name)}**"
    if model.get("global_pool"):
        architecture += f" ({model['global_pool']}-pooled head)"
    size = (meta or {}).get("preprocessing", {}).get("image_size")
    lines = [
        architecture + (f" at {size} px" if size else "") + f", experiment `{cfg.name}`. **Not for diagnostic use.**",
        "",
    ]
    lines += _data_section(cfg, run_metrics, fingerprint)
    lines += _metrics_section(run_metrics)
    lines += _decision_section(cfg, meta, run_metrics)
    lines += ["## Intended use", INTENDED_USE, "## Limitations", *(f"- {item}" for item in LIMITATIONS)]
    return "\n".join(lines) + "\n"
