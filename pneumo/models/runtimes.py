"""Inference runtimes for a checkpoint: PyTorch eager, ONNX Runtime and OpenVINO, one interface.

    export_onnx(loaded, folder)                    # folder/model.onnx: uint8 films in, logits and features out
    predictor = create_predictor(loaded, "openvino", threads=1)
    predictor.logits(images)                       # uint8 (N, C, H, W) numpy -> (N,) float32 logits
    predictor.infer(images)                        # both outputs of the same pass (the serving gate needs both)
    choose_runtime("auto", loaded, threads=1)      # the fastest installed runtime, measured here

The exported graph holds the normalization too (uint8 in, one logit and the pre-logit features out),
so every runtime gets the same bytes the decoder produced, calibration stays in numpy
(`meta.calibration`), and the out-of-distribution gate reads the features of the very pass that
scored the film instead of running the network a second time. The ONNX files
live in the checkpoint folder, so they travel with the registered MLflow model. Checks against
PyTorch happen at registration (evaluation/runtime_check.py).
"""

from __future__ import annotations

import importlib.util
import logging
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Protocol

import numpy as np
import torch

from pneumo.config import ConfigError
from pneumo.data.batch_transforms import normalize
from pneumo.data.transforms import Preprocessing
from pneumo.models.checkpoints import LoadedModel

RUNTIMES = ("torch", "onnxruntime", "openvino")
RUNTIME_PACKAGES = {"torch": "torch", "onnxruntime": "onnxruntime", "openvino": "openvino"}  # pip names
ONNX_FILE = "model.onnx"  # fp32 export, checked against PyTorch on val at registration
INT8_FILE = "model.int8.onnx"  # optional int8 (QDQ) export, kept only within export.max_int8_auroc_drop
ONNX_OPSET = 18
AUTO_TRIALS = 5  # timed calls per runtime and batch size when serve.runtime is auto

logger = logging.getLogger(__name__)


@dataclass
class Outputs:
    """One forward pass over N films."""

    logits: np.ndarray  # (N,) float32
    features: Optional[np.ndarray]  # (N, D) float32 pre-logit features; None from an export without them


class Predictor(Protocol):
    runtime: str  # torch | onnxruntime | openvino
    precision: str  # fp32 | int8 (the weights' precision; OpenVINO computes in f32, see OpenVinoPredictor)

    def infer(self, images: np.ndarray) -> Outputs:
        """uint8 (N, C, H, W) -> logits and features of one pass."""

    def logits(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, C, H, W) -> (N,) float32 logits."""


class FilmsToOutputs(torch.nn.Module):
    """uint8 films -> normalized floats -> the network -> (one logit, pre-logit features) per film: what
    gets exported, and what PyTorch runs. Features are timm's `forward_head(..., pre_logits=True)`, the
    ones the monitoring profile was fitted on (monitoring/features.py)."""

    def __init__(self, model: torch.nn.Module, preprocessing: Preprocessing):
        super().__init__()
        self.model, self.preprocessing = model, preprocessing

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.model.forward_features(normalize(images, self.preprocessing))
        features = self.model.forward_head(tokens, pre_logits=True).float().flatten(1)
        return self.model.forward_head(tokens).float().squeeze(1), features


def require_runtime(runtime: str, key: str = "serve.runtime") -> None:
    """A config error naming the package to install when `runtime` is unknown or not installed."""
    if runtime not in RUNTIMES:
        raise ConfigError(f"{key}={runtime!r} is not one of 'auto', {', '.join(map(repr, RUNTIMES))}")
    package = RUNTIME_PACKAGES[runtime]
    if importlib.util.find_spec(package) is None:
        raise ConfigError(f"{key}={runtime}: the {package!r} package is not installed (pip install {package})")


def installed_runtimes() -> list[str]:
    return [name for name in RUNTIMES if importlib.util.find_spec(RUNTIME_PACKAGES[name]) is not None]


def export_onnx(loaded: LoadedModel, folder: str | Path) -> Path:
    """Write folder/model.onnx with a dynamic batch axis; returns its path."""
    spec = loaded.meta.preprocessing_spec
    path = Path(folder) / ONNX_FILE
    example = torch.zeros((2, spec.in_chans, spec.image_size, spec.image_size), dtype=torch.uint8)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # mean/std become constants, as intended
        torch.onnx.export(
            FilmsToOutputs(loaded.model, spec).eval(),
            (example,),
            str(path),
            dynamo=False,
            opset_version=ONNX_OPSET,
            input_names=["films"],
            output_names=["logits", "features"],
            dynamic_axes={"films": {0: "batch"}, "logits": {0: "batch"}, "features": {0: "batch"}},
        )
    return path


def onnx_path(loaded: LoadedModel, int8: bool = False) -> Path:
    """The checkpoint's ONNX file; an fp32 one is exported now if the checkpoint predates exports."""
    if loaded.directory is None:
        raise ValueError("this model was not loaded from a checkpoint folder, so it has no ONNX export")
    path = Path(loaded.directory) / (INT8_FILE if int8 else ONNX_FILE)
    if int8 and not path.is_file():
        raise ConfigError(
            f"{loaded.directory} has no {INT8_FILE}: it was registered without export.int8 "
            f"(or the int8 model lost too much val AUROC and was not kept)"
        )
    if not path.is_file():
        logger.warning(
            "%s has no %s (registered before exports): exporting it now, unchecked against val",
            loaded.directory,
            ONNX_FILE,
        )
        export_onnx(loaded, loaded.directory)
    return path


class _Predictor:
    """What every runtime's predictor shares: the logits alone are the first output of `infer`."""

    def logits(self, images: np.ndarray) -> np.ndarray:
        return self.infer(images).logits


class TorchPredictor(_Predictor):
    runtime, precision = "torch", "fp32"

    def __init__(self, loaded: LoadedModel, threads: int):
        torch.set_num_threads(threads)
        self.network = FilmsToOutputs(loaded.model, loaded.meta.preprocessing_spec)

    @torch.inference_mode()
    def infer(self, images: np.ndarray) -> Outputs:
        logits, features = self.network(torch.from_numpy(images))
        return Outputs(logits.numpy(), features.numpy())


def _outputs(values: list[np.ndarray]) -> Outputs:
    """An ONNX graph's outputs; an export from before features were added has only the logits."""
    return Outputs(values[0], values[1] if len(values) > 1 else None)


class OnnxRuntimePredictor(_Predictor):
    runtime = "onnxruntime"

    def __init__(self, path: Path, threads: int, precision: str):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.log_severity_level = 3  # warnings about unused initializers are noise
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.precision = precision

    def infer(self, images: np.ndarray) -> Outputs:
        return _outputs(self.session.run(None, {"films": images}))


class OpenVinoPredictor(_Predictor):
    """OpenVINO on CPU, computing in f32: its default (bf16 on CPUs with AMX or AVX512-BF16) moved a
    small model's probabilities by up to 1.9e-2, beyond the export check's tolerance."""

    runtime = "openvino"

    def __init__(self, path: Path, threads: int, precision: str):
        import openvino

        compiled = openvino.Core().compile_model(
            str(path),
            "CPU",
            {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"},
        )
        self.request, self.lock = compiled.create_infer_request(), threading.Lock()  # one request, one caller
        self.precision = precision

    def infer(self, images: np.ndarray) -> Outputs:
        with self.lock:
            answer = self.request.infer({0: images})
            return _outputs([np.array(answer[i], copy=True) for i in range(len(answer))])


def create_predictor(loaded: LoadedModel, runtime: str, threads: int = 1, int8: bool = False) -> Predictor:
    """A predictor of `runtime` (not auto) over the checkpoint; int8 needs its model.int8.onnx."""
    require_runtime(runtime)
    if runtime == "torch":
        if int8:
            raise ConfigError("serve.int8 needs an ONNX runtime (onnxruntime or openvino), not torch")
        return TorchPredictor(loaded, threads)
    path, precision = onnx_path(loaded, int8), "int8" if int8 else "fp32"
    if runtime == "onnxruntime":
        return OnnxRuntimePredictor(path, threads, precision)
    return OpenVinoPredictor(path, threads, precision)


def time_per_call_ms(predictor: Predictor, images: np.ndarray, trials: int = AUTO_TRIALS) -> float:
    """Median wall time of `trials` calls after one warm-up call."""
    predictor.logits(images)
    times = []
    for _ in range(trials):
        started = time.perf_counter()
        predictor.logits(images)
        times.append(1000 * (time.perf_counter() - started))
    return float(np.median(times))


def choose_runtime(
    requested: str, loaded: LoadedModel, threads: int = 1, max_batch_size: int = 16, int8: bool = False
) -> Predictor:
    """`requested`'s predictor; for auto, the installed runtime with the least time for one film plus
    one full batch, measured here (median of AUTO_TRIALS calls each), since the winner depends on
    the CPU, the model and the batch size."""
    if requested != "auto":
        return create_predictor(loaded, requested, threads, int8)
    spec = loaded.meta.preprocessing_spec
    candidates = [name for name in installed_runtimes() if not (int8 and name == "torch")]
    timings: dict[str, float] = {}
    best: Optional[Predictor] = None
    for runtime in candidates:
        predictor = create_predictor(loaded, runtime, threads, int8)
        timings[runtime] = sum(
            time_per_call_ms(predictor, np.zeros((n, spec.in_chans, spec.image_size, spec.image_size), np.uint8))
            for n in (1, max_batch_size)
        )
        if best is None or timings[runtime] < timings[best.runtime]:
            best = predictor
    logger.info(
        "serve.runtime auto: %s (ms for batch 1 + batch %d: %s)",
        best.runtime,
        max_batch_size,
        ", ".join(f"{name} {ms:.1f}" for name, ms in timings.items()),
    )
    return best
