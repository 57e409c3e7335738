"""report.html: one self-contained page per evaluation (pictures inlined as base64, no scripts, no
server), for the people who decide whether a model is good enough."""

from __future__ import annotations

import base64
import html
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pneumo.evaluation.evaluate import Evaluation
from pneumo.evaluation.metrics import SCORES
from pneumo.evaluation.report.baselines import DATASET_TITLES, published_results

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#222}
h1{margin-bottom:.2rem} h2{border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
table{border-collapse:collapse;margin:.5rem 0} td,th{border:1px solid #ddd;padding:.25rem .6rem;text-align:right}
th{background:#f5f5f5} td:first-child,th:first-child{text-align:left}
.figures{display:flex;flex-wrap:wrap;gap:1rem} figure{margin:0} figcaption{font-size:.85rem;color:#555}
img{max-width:100%;border:1px solid #eee} pre{background:#f7f7f7;padding:.8rem;overflow:auto;font-size:.8rem}
.note{color:#555;font-size:.9rem} .chosen{background:#fff7d6}
"""


@dataclass
class ReportContent:
    title: str  # experiment or model name
    evaluation: Evaluation
    config_yaml: str  # the resolved experiment config
    data_summary: dict[str, Any]  # counts (split -> class -> n), fingerprint, skipped/ignored files
    model: dict[str, str]  # identity rows: registered name, version, aliases, MLflow run, checkpoint
    baseline_dataset: str  # kaggle | pneumoniamnist | none
    threshold_policy: str  # the policy that chose evaluation.threshold; "" when it came with the model
    explanations: str = ""  # the Grad-CAM section (report/explanations.py); "" without a model to explain


def _table(header: list[str], rows: list[list[Any]], row_classes: list[str] | None = None) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        css = f' class="{row_classes[i]}"' if row_classes and row_classes[i] else ""
        body.append(f"<tr{css}>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _number(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _metrics_section(evaluation: Evaluation) -> str:
    metrics, intervals = evaluation.metrics, evaluation.intervals
    rows = [
        [
            key,
            f"{metrics[key]:.3f}",
            f"{intervals[key][0]:.3f} - {intervals[key][1]:.3f}" if key in intervals else "n/a",
        ]
        for key in SCORES
    ]
    rows.append(
        [
            "expected calibration error",
            f"{metrics['ece']:.3f}",
            f"before recalibration: {metrics['ece_uncalibrated']:.3f}",
        ]
    )
    n = metrics["tp"] + metrics["fp"] + metrics["tn"] + metrics["fn"]
    return (
        f"<h2>Test metrics</h2><p class='note'>{n} test images, threshold {metrics['threshold']:.3f} on "
        f"P(pneumonia), calibration T={evaluation.calibration.temperature:.3f}, "
        f"bias={evaluation.calibration.bias:+.3f}; intervals: percentile bootstrap over test "
        f"images.</p>"
        + _table(["metric", "value", "95% interval" if intervals else "interval"], rows)
        + _table(
            ["", "predicted NORMAL", "predicted PNEUMONIA"],
            [["true NORMAL", metrics["tn"], metrics["fp"]], ["true PNEUMONIA", metrics["fn"], metrics["tp"]]],
        )
    )


def _operating_points_section(evaluation: Evaluation, chosen_policy: str) -> str:
    if not evaluation.operating_points:
        return ""
    rows = [
        [
            p.description,
            f"{p.threshold:.3f}",
            _number(p.val["sensitivity"]),
            _number(p.val["specificity"]),
            _number(p.test["sensitivity"]),
            _number(p.test["specificity"]),
            _number(p.test["precision"]),
        ]
        for p in evaluation.operating_points
    ]
    classes = ["chosen" if p.policy == chosen_policy else "" for p in evaluation.operating_points]
    stored = (
        "The highlighted row is the threshold stored with the model and used by Serve."
        if chosen_policy
        else f"The model's stored threshold ({evaluation.threshold:.3f}) is the one the metrics above use."
    )
    return (
        "<h2>Operating points</h2><p class='note'>Each policy picks its threshold on validation; test shows "
        f"what it delivers on unseen images. {stored}</p>"
        + _table(
            [
                "policy",
                "threshold",
                "val sensitivity",
                "val specificity",
                "test sensitivity",
                "test specificity",
                "test precision",
            ],
            rows,
            classes,
        )
    )


def _baselines_section(evaluation: Evaluation, dataset: str) -> str:
    published = published_results(dataset)
    if not published:
        return (
            "<h2>Published baselines</h2><p class='note'>No published figures apply to this dataset "
            "(synthetic or unknown data); set eval.baselines to compare with a known one.</p>"
        )
    keys = ("auroc", "accuracy", "sensitivity", "specificity")
    rows = [["this run", *(f"{evaluation.metrics[k]:.3f}" for k in keys), "-"]]
    rows += [[p.method, *(_number(p.metrics.get(k, "-")) for k in keys), p.source] for p in published]
    return (
        f"<h2>Published baselines: {html.escape(DATASET_TITLES[dataset])}</h2><p class='note'>Figures as "
        "printed by their authors on the same test split; other recipes and image sizes.</p>"
        + _table(["method", *keys, "source"], rows)
    )


def _data_section(summary: dict[str, Any]) -> str:
    counts = summary["counts"]
    classes = sorted({name for per_class in counts.values() for name in per_class})
    rows = [
        [split, *(per_class.get(name, 0) for name in classes), sum(per_class.values())]
        for split, per_class in counts.items()
    ]
    extra = "".join(f"<li>{html.escape(k)}: {html.escape(str(v))}</li>" for k, v in summary.items() if k != "counts")
    return "<h2>Data</h2>" + _table(["split", *classes, "total"], rows) + f"<ul>{extra}</ul>"


def _figure(caption: str, path: Path) -> str:
    encoded = base64.b64encode(path.read_bytes()).decode()
    return (
        f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{encoded}'>"
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def render_report(content: ReportContent, figures: dict[str, Path]) -> str:
    """The whole page as one HTML string; `figures` maps captions to PNG files."""
    model_rows = _table(["", ""], [[k, v] for k, v in content.model.items()])
    pictures = "".join(_figure(caption, path) for caption, path in figures.items())
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>pneumo: {html.escape(content.title)}</title>"
        f"<style>{STYLE}</style></head><body><h1>{html.escape(content.title)}</h1>"
        f"<p class='note'>pneumo evaluation report, written {time.strftime('%Y-%m-%d %H:%M:%S %Z')}</p>"
        f"<h2>Model</h2>{model_rows}"
        + _metrics_section(content.evaluation)
        + _operating_points_section(content.evaluation, content.threshold_policy)
        + _baselines_section(content.evaluation, content.baseline_dataset)
        + f"<h2>Pictures</h2><div class='figures'>{pictures}</div>"
        + content.explanations
        + _data_section(content.data_summary)
        + f"<h2>Configuration</h2><pre>{html.escape(content.config_yaml)}</pre></body></html>"
    )
