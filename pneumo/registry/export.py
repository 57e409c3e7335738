"""Export, the step between evaluation and registration: the evaluated model folder gains model.onnx
(and optionally model.int8.onnx), each held to PyTorch before it may be registered.

The checks that let a model be served by a compiled runtime: at registration the ONNX export must
give PyTorch's probabilities on val (within export.probability_tolerance, every installed ONNX
runtime) and the same val AUROC to three decimals; otherwise registration stops and says why. An
optional int8 model (ONNX Runtime static quantization, QDQ, calibrated on training films) is kept
only when its val AUROC drops at most export.max_int8_auroc_drop.

    check = export_model_folder(model_dir, data, cfg, evaluation.val)   # after evaluate_model_folder
    check.metrics()  # {"export_max_probability_diff": 3e-08, "int8_val_auroc_drop": 0.0004, ...}
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from pneumo.config import ExperimentConfig
from pneumo.data.dataset import PreparedData
from pneumo.evaluation.metrics import binary_metrics
from pneumo.evaluation.prediction import Predictions, predict_dataset
from pneumo.models.checkpoints import LoadedModel, load_checkpoint, read_meta, write_meta
from pneumo.models.runtimes import (
    INT8_FILE,
    ONNX_FILE,
    create_predictor,
    export_onnx,
    installed_runtimes,
    time_per_call_ms,
)

SPEED_BATCH = 16  # films per call when timing fp32 against int8

logger = logging.getLogger(__name__)


class ExportCheckError(RuntimeError):
    """The ONNX export does not reproduce the PyTorch model closely enough to be registered."""


@dataclass
class RuntimeCheck:
    val_auroc: float  # PyTorch's, the reference
    max_probability_diff: dict[str, float] = field(default_factory=dict)  # per runtime, on val
    runtime_val_auroc: dict[str, float] = field(default_factory=dict)
    int8_val_auroc: Optional[float] = None  # onnxruntime on model.int8.onnx
    int8_kept: bool = False
    int8_speedup: dict[str, float] = field(default_factory=dict)  # fp32 time / int8 time per call, per runtime

    def metrics(self) -> dict[str, float]:
        """Numbers stored in the checkpoint's pneumo.json beside its test metrics."""
        values = {f"export_max_probability_diff_{name}": diff for name, diff in self.max_probability_diff.items()}
        if self.int8_val_auroc is not None:
            values["int8_val_auroc_drop"] = self.val_auroc - self.int8_val_auroc
            values.update({f"int8_speedup_{name}": ratio for name, ratio in self.int8_speedup.items()})
        return values


def _auroc(labels: np.ndarray, probabilities: np.ndarray) -> float:
    return binary_metrics(labels, probabilities, 0.5)["auroc"]


def _compare(
    name: str,
    reference: Predictions,
    candidate: Predictions,
    loaded: LoadedModel,
    tolerance: float,
    check: RuntimeCheck,
) -> None:
    calibration = loaded.meta.calibration
    diff = float(
        np.abs(calibration.probabilities(candidate.logits) - calibration.probabilities(reference.logits)).max()
    )
    auroc = _auroc(candidate.labels, calibration.probabilities(candidate.logits))
    check.max_probability_diff[name], check.runtime_val_auroc[name] = diff, auroc
    same_auroc = round(auroc, 3) == round(check.val_auroc, 3) or (np.isnan(auroc) and np.isnan(check.val_auroc))
    if diff > tolerance or not same_auroc:
        raise ExportCheckError(
            f"{name} on {ONNX_FILE} does not match PyTorch on val: largest probability difference {diff:.2e} "
            f"(export.probability_tolerance {tolerance:g}), val AUROC {auroc:.4f} vs {check.val_auroc:.4f} "
            f"(must agree to 3 decimals). The model is not registered; set export.onnx=false to register "
            f"it without compiled runtimes (serve.runtime=torch)."
        )


def _training_films(data: PreparedData, limit: int, batch_size: int) -> Iterator[np.ndarray]:
    taken = 0
    for batch in data.datasets["train"].iter_batches(batch_size=batch_size, batch_format="numpy"):
        images = np.ascontiguousarray(np.array(batch["image"]))[: limit - taken]
        taken += len(images)
        yield images
        if taken >= limit:
            return


def quantize_int8(model_dir: Path, calibration_films: Iterator[np.ndarray]) -> Path:
    """model.onnx -> model.int8.onnx (QDQ, per-channel int8 weights in a 7-bit range, uint8 activations) whose
    activation ranges come from the uint8 (N, C, H, W) batches of `calibration_films`."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class TrainingFilms(CalibrationDataReader):
        def get_next(self) -> Optional[dict[str, np.ndarray]]:
            return next(({"films": images} for images in calibration_films), None)

    prepared = model_dir / "model.int8-prep.onnx"
    quant_pre_process(str(model_dir / ONNX_FILE), str(prepared), skip_symbolic_shape=True)
    try:
        quantize_static(
            str(prepared),
            str(model_dir / INT8_FILE),
            TrainingFilms(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            # 7-bit weights: x86 CPUs without VNNI saturate u8 x s8 products (onnxruntime's documented
            # caveat); full range put int8 logits at 0.89 correlation with fp32 on an AMD EPYC, 0.99 with this
            reduce_range=True,
        )
    finally:
        prepared.unlink(missing_ok=True)
    return model_dir / INT8_FILE


def _check_int8(
    loaded: LoadedModel, model_dir: Path, data: PreparedData, cfg: ExperimentConfig, check: RuntimeCheck
) -> None:
    quantize_int8(model_dir, _training_films(data, cfg.export.int8_calibration_films, cfg.eval.batch_size))
    int8 = predict_dataset(
        loaded, data.datasets["val"], cfg.eval.batch_size, create_predictor(loaded, "onnxruntime", int8=True)
    )
    check.int8_val_auroc = _auroc(int8.labels, loaded.meta.calibration.probabilities(int8.logits))
    spec = loaded.meta.preprocessing_spec
    films = np.zeros((SPEED_BATCH, spec.in_chans, spec.image_size, spec.image_size), np.uint8)
    for runtime in installed_runtimes():
        if runtime != "torch":
            check.int8_speedup[runtime] = time_per_call_ms(create_predictor(loaded, runtime), films) / time_per_call_ms(
                create_predictor(loaded, runtime, int8=True), films
            )
    drop = check.val_auroc - check.int8_val_auroc
    check.int8_kept = drop <= cfg.export.max_int8_auroc_drop
    logger.info(
        "int8: val AUROC %.4f -> %.4f (drop %.4f, limit %g), speed-up at batch %d: %s; %s",
        check.val_auroc,
        check.int8_val_auroc,
        drop,
        cfg.export.max_int8_auroc_drop,
        SPEED_BATCH,
        ", ".join(f"{name} {ratio:.2f}x" for name, ratio in check.int8_speedup.items()),
        "kept" if check.int8_kept else f"not kept ({INT8_FILE} removed)",
    )
    if not check.int8_kept:
        (model_dir / INT8_FILE).unlink()


def check_runtimes(
    loaded: LoadedModel, model_dir: Path, data: PreparedData, cfg: ExperimentConfig, val: Predictions
) -> Optional[RuntimeCheck]:
    """Export model_dir/model.onnx, hold every installed ONNX runtime to PyTorch's `val` predictions,
    then try int8 if asked. Raises ExportCheckError when an export does not match."""
    if not cfg.export.onnx or len(val.labels) == 0:
        return None
    export_onnx(loaded, model_dir)
    check = RuntimeCheck(val_auroc=_auroc(val.labels, loaded.meta.calibration.probabilities(val.logits)))
    for runtime in installed_runtimes():
        if runtime != "torch":
            scored = predict_dataset(
                loaded, data.datasets["val"], cfg.eval.batch_size, create_predictor(loaded, runtime)
            )
            _compare(runtime, val, scored, loaded, cfg.export.probability_tolerance, check)
    if cfg.export.int8:
        _check_int8(loaded, model_dir, data, cfg, check)
    return check


def export_model_folder(
    model_dir: Path, data: PreparedData, cfg: ExperimentConfig, val: Optional[Predictions]
) -> Optional[RuntimeCheck]:
    """Export the evaluated model in `model_dir` (export.onnx, export.int8) and record the parity
    figures in its pneumo.json; `val` are PyTorch's val predictions, the reference. Raises
    ExportCheckError when an export does not match."""
    if val is None:
        return None
    loaded = load_checkpoint(model_dir)
    check = check_runtimes(loaded, model_dir, data, cfg, val)
    if check is not None:
        meta = read_meta(model_dir)
        meta.metrics.update(check.metrics())
        write_meta(model_dir, meta)
    return check
