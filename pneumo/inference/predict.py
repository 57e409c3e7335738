"""`predict_archive`: score every film of DATA with MODEL into OUT, then summarize and log it.

    outcome = predict_archive("models:/pneumo-pneumonia@champion", "archive/2025", "scores/2025", cfg)
    pd.read_parquet("scores/2025/predictions")   # one row per input file (output.py has the columns)

The model is fetched once here to pin it (an alias becomes its version, which every actor then
loads), to claim the output folder for it and to resolve `--runtime auto` once. The metrics
`pneumo eval` prints are computed when films carry labels (folder names, a manifest's label column,
an .npz); the run is logged to MLflow as kind `predict` with the counts and the output location.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from mlflow.tracking import MlflowClient

from pneumo.config import ConfigError, ExperimentConfig
from pneumo.data.folder import CLASS_NAMES
from pneumo.evaluation.metrics import binary_metrics, bootstrap_intervals, format_metrics_table
from pneumo.inference.output import PARTS_DIR, SUMMARY_FILE, OutputFolder, PartWriter, write_csv
from pneumo.inference.progress import PredictProgress
from pneumo.inference.resume import claim_folder, films_to_score, model_identity
from pneumo.inference.score import ScoringPlan, default_actors, score_films
from pneumo.inference.scorer import SCORED
from pneumo.inference.sources import Listing, list_inputs
from pneumo.jobs.scoring import start_job
from pneumo.models.runtimes import choose_runtime, require_runtime
from pneumo.registry.uri import FetchedModel
from pneumo.tracking import finish_run, log_metrics

logger = logging.getLogger(__name__)
TAG_OUTPUT = "pneumo.predict_output"  # where a `predict` run wrote its rows


@dataclass(frozen=True)
class PredictSettings:
    runtime: str = "auto"  # torch | onnxruntime | openvino | auto (measured once, here)
    batch_size: int = 64  # films per model call
    actors: int = 0  # scoring actors, all started at once; 0: a pool growing from 1 to score.default_actors
    threads: int = 1  # intra-op threads (and Ray CPUs) per actor
    use_gpu: bool = False  # one GPU per actor (PyTorch on CUDA)
    part_rows: int = 1000  # rows per Parquet part: what a killed job can lose at most
    read_rows: int = 32  # files per read task
    read_cpus: float = 0.5  # Ray CPUs per read task: unlike the actors', so Ray does not fuse reading into them
    explain: bool = False  # Grad-CAM overlays of the films at or above the threshold
    csv: bool = False  # also write predictions.csv
    resume: bool = False  # continue an output folder of the same model


@dataclass
class PredictOutcome:
    summary: dict[str, Any]  # what summary.json holds
    metrics_table: Optional[str]  # `pneumo eval`'s table over the labelled scored films; None without labels
    mlflow_run_id: str


def resolve_runtime(settings: PredictSettings, model: FetchedModel) -> str:
    """The concrete runtime every actor runs: auto measured here once (as a replica would)."""
    if settings.use_gpu:
        if settings.runtime not in ("auto", "torch"):
            raise ConfigError(
                f"--runtime {settings.runtime}: GPU actors score with torch (give --runtime torch or auto)"
            )
        return "torch"
    if settings.runtime == "auto":
        return choose_runtime("auto", model.loaded, settings.threads, settings.batch_size).runtime
    require_runtime(settings.runtime, "--runtime")
    return settings.runtime


def predict_archive(
    model_uri: str,
    data: str,
    out: str,
    cfg: ExperimentConfig,
    settings: PredictSettings = PredictSettings(),
    progress: Optional[PredictProgress] = None,
) -> PredictOutcome:
    """Score DATA into OUT; Ray must be initialized. Raises OutputError when OUT may not be written."""
    progress = progress or PredictProgress()
    started, clock = time.time(), time.monotonic()
    job = start_job(model_uri, cfg, prepare=False)  # the model pinned: an alias becomes its version
    model = job.model
    listing = list_inputs(data)
    for note in listing.notes:
        progress.note(f"{data}: {note}")
    folder = OutputFolder(out)
    held = claim_folder(folder, model, settings.resume)
    todo = films_to_score(listing.table, folder)
    plan = ScoringPlan(
        model.uri,
        job.client.tracking_uri,
        resolve_runtime(settings, model),
        cfg.serve.ood_policy,
        cfg.data.max_image_pixels,
        settings.batch_size,
        settings.actors or default_actors(settings.use_gpu, settings.threads),
        settings.threads,
        settings.use_gpu,
        settings.read_rows,
        settings.read_cpus,
        settings.explain,
        min_actors=settings.actors or 1,
    )
    prepared_s = time.monotonic() - clock
    if held:
        progress.note(f"{folder.location}: {held} films already scored, {len(todo)} to go")
    params = {"data": data, "out": folder.location, "ood_policy": plan.ood_policy, **asdict(settings)}
    run_id = job.open_run("predict", f"predict-{model.name}-{model.version}", {**params, "runtime": plan.runtime})
    job.client.set_tag(run_id, TAG_OUTPUT, folder.location)
    client = job.client
    timings = {
        "model_listing_and_output_s": prepared_s,
        **_score_into(folder, todo, plan, model, settings, progress, client, run_id),
    }
    summary, table = summarize(folder, listing, model, plan, cfg, len(todo), timings, started)
    summary["mlflow_run_id"] = run_id
    if settings.csv:
        summary["csv"] = write_csv(folder)
    folder.write_json(SUMMARY_FILE, summary)
    _log_summary(client, run_id, summary)
    return PredictOutcome(summary, table, run_id)


def _score_into(
    folder: OutputFolder,
    todo: pa.Table,
    plan: ScoringPlan,
    model: FetchedModel,
    settings: PredictSettings,
    progress: PredictProgress,
    client: MlflowClient,
    run_id: str,
) -> dict[str, float]:
    """Stream the scored rows into parts; whatever stops the job, the rows already scored are written.
    Returns the phase's timings: all of it, and until the first rows (the actors starting, the first batch)."""
    writer = PartWriter(folder, settings.part_rows)
    progress.start(len(todo))
    started, first_at = time.monotonic(), None
    try:
        if len(todo):
            for scored in score_films(todo, plan, model.loaded.meta.preprocessing_spec):
                first_at = first_at or time.monotonic()
                writer.add(scored)
                progress.advance(scored["status"].to_pylist())
        writer.flush()
    except BaseException:
        try:
            writer.flush()
        except Exception as error:  # a full disk: the parts written before stay whole
            logger.error("the last %d scored rows could not be written: %s", writer.unwritten, error)
        finish_run(client, run_id, failed=True)
        raise
    finally:
        progress.finish()
    ended = time.monotonic()
    return {"scoring_s": ended - started, "to_first_rows_s": (first_at or ended) - started}


def _counts(column: pa.ChunkedArray, null_name: Optional[str] = None) -> dict[str, int]:
    """value -> rows, nulls counted as `null_name` (or left out)."""
    counts = {}
    for item in pc.value_counts(column).to_pylist():
        if item["values"] is not None or null_name:
            counts[item["values"] if item["values"] is not None else null_name] = int(item["counts"])
    return dict(sorted(counts.items()))


def summarize(
    folder: OutputFolder,
    listing: Listing,
    model: FetchedModel,
    plan: ScoringPlan,
    cfg: ExperimentConfig,
    scored_now: int,
    timings: dict[str, float],
    started: float,
) -> tuple[dict[str, Any], Optional[str]]:
    """summary.json over every row in OUT (this run's and earlier ones'), and the metrics table."""
    rows = folder.read_rows(["status", "label", "true_label", "probability"])
    total_s = time.time() - started
    summary: dict[str, Any] = {
        "model": {
            **model_identity(model),
            "architecture": model.loaded.meta.model["name"],
            "threshold": model.loaded.meta.decision_threshold,
        },
        "data": {
            "location": listing.source,
            "format": listing.source_format,
            "listed": len(listing.table),
            "labelled": listing.labelled,
            "notes": listing.notes,
        },
        "output": {
            "location": folder.location,
            "rows": len(rows),
            "predictions": folder.shown(PARTS_DIR),
            "summary": folder.shown(SUMMARY_FILE),
        },
        "counts": {
            "status": _counts(rows["status"]),
            "label": _counts(rows["label"]),
            "true_label": _counts(rows["true_label"], "unknown"),
        },
        "runtime": plan.runtime,
        "actors": plan.max_actors,
        "batch_size": plan.batch_size,
        "ood_policy": plan.ood_policy,
        "this_run": {
            "films": scored_now,
            "films_per_s": round(scored_now / timings["scoring_s"], 2) if timings["scoring_s"] > 0 else None,
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
            "total_s": round(total_s, 2),
            **{key: round(value, 2) for key, value in timings.items()},
        },
    }
    metrics, intervals = labelled_metrics(rows, model.loaded.meta.decision_threshold, cfg)
    if metrics is None:
        return summary, None
    summary["metrics"] = {**metrics, "intervals": intervals}
    return summary, format_metrics_table(metrics, intervals, title="labelled films")


def labelled_metrics(
    rows: pa.Table, threshold: float, cfg: ExperimentConfig
) -> tuple[Optional[dict[str, float]], dict[str, tuple[float, float]]]:
    """binary_metrics (with bootstrap intervals, as `pneumo eval`) over the scored films with a known label."""
    usable = rows.filter(pc.and_(pc.equal(rows["status"], SCORED), pc.is_valid(rows["true_label"])))
    if len(usable) == 0:
        return None, {}
    labels = (np.asarray(usable["true_label"].to_pylist()) == CLASS_NAMES[1]).astype(int)
    probabilities = usable["probability"].to_numpy()
    metrics = binary_metrics(labels, probabilities, threshold)
    intervals = (
        bootstrap_intervals(labels, probabilities, threshold, cfg.eval.bootstrap_samples, cfg.eval.confidence_level)
        if cfg.eval.bootstrap_samples
        else {}
    )
    return metrics, intervals


def _log_summary(client: MlflowClient, run_id: str, summary: dict[str, Any]) -> None:
    counts = {f"n_{status}": n for status, n in summary["counts"]["status"].items()}
    counts.update({f"n_label_{label}": n for label, n in summary["counts"]["label"].items()})
    metrics = {key: value for key, value in summary.get("metrics", {}).items() if key != "intervals"}
    log_metrics(
        client,
        run_id,
        {**counts, "n_rows": summary["output"]["rows"], "films_per_s": summary["this_run"]["films_per_s"] or 0.0},
    )
    log_metrics(client, run_id, metrics, prefix="labelled_")
    client.log_dict(run_id, summary, SUMMARY_FILE)
    finish_run(client, run_id)


def format_outcome(outcome: PredictOutcome) -> str:
    """What `pneumo predict` prints at the end: counts, the metrics when labels were known, where the files are
    (the CLI adds the MLflow run's lines)."""
    summary = outcome.summary
    run = summary["this_run"]
    counts = "  ".join(f"{status} {n:,}" for status, n in summary["counts"]["status"].items())
    labels = "  ".join(f"{label} {n:,}" for label, n in summary["counts"]["label"].items())
    lines = [
        f"\n{summary['output']['rows']:,} films in the output: {counts}",
        f"predicted:    {labels or 'none'} (threshold {summary['model']['threshold']:.3f})",
        f"this run:     {run['films']:,} films in {run['scoring_s']:.1f} s ({run['films_per_s'] or 0:.1f} films/s, "
        f"{summary['runtime']}, {summary['actors']} actor(s))",
    ]
    if outcome.metrics_table:
        lines += ["", outcome.metrics_table]
    lines += [
        "",
        f"predictions:  {summary['output']['predictions']}",
        f"summary:      {summary['output']['summary']}",
    ]
    if "csv" in summary:
        lines.append(f"csv:          {summary['csv']}")
    return "\n".join(lines)
