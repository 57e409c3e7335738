"""The Ray Data actor that scores decoded films: the model loaded once per actor, then batch after batch.

What a film gets is what `pneumo serve` answers for it: the runtime serving uses (torch, onnxruntime,
openvino; `auto` is resolved once on the driver, so every actor runs the same one), the model's own
calibration and decision threshold, and the out-of-distribution gate on the features of the very
pass that scored it. Under serve.ood_policy `reject` a film beyond the gate's cut-off gets status
`refused_ood`, no probability and the reason (Serve's 422); under `flag` it is scored with
`in_distribution` false; under `off` it is scored and the gate's verdict is only reported.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import pyarrow as pa
import torch

from pneumo.data.folder import CLASS_NAMES
from pneumo.inference.output import SCORED_SCHEMA
from pneumo.inference.read import DECODED
from pneumo.models.checkpoints import LoadedModel
from pneumo.models.runtimes import FilmsToOutputs, Outputs, Predictor, create_predictor
from pneumo.monitoring.features import observations, observe
from pneumo.monitoring.profile import ReferenceProfile, profile_of
from pneumo.registry.uri import fetch_model

if TYPE_CHECKING:
    from pneumo.evaluation.explain import Explainer

logger = logging.getLogger(__name__)
SCORED, REFUSED_OOD, FAILED = "scored", "refused_ood", "failed"


def _strings(values: np.ndarray) -> list[Optional[str]]:
    """A string column as Ray Data hands it over: a column of nulls only arrives as float NaN."""
    return [value if isinstance(value, str) else None for value in values]


class CudaPredictor:
    """PyTorch on this actor's GPU: the same network and outputs as the CPU runtimes."""

    runtime, precision = "torch-cuda", "fp32"

    def __init__(self, loaded: LoadedModel):
        self.network = FilmsToOutputs(loaded.model, loaded.meta.preprocessing_spec).cuda().eval()

    @torch.inference_mode()
    def infer(self, images: np.ndarray) -> Outputs:
        logits, features = self.network(torch.from_numpy(images).cuda(non_blocking=True))
        return Outputs(logits.cpu().numpy(), features.cpu().numpy())

    def logits(self, images: np.ndarray) -> np.ndarray:
        return self.infer(images).logits


def readable_profile(loaded: LoadedModel) -> Optional[ReferenceProfile]:
    """The model's reference profile, or None (no profile, or one this pneumo cannot read: scored ungated)."""
    try:
        return profile_of(loaded)
    except (KeyError, ValueError) as error:
        logger.error("reference profile unusable, films are scored without the gate: %s", error)
        return None


def gate_scores(loaded: LoadedModel, profile: ReferenceProfile, images: np.ndarray, outputs: Outputs) -> np.ndarray:
    """Out-of-distribution score of each film, from the pass that scored it (as Serve's gate)."""
    if outputs.features is None:  # an ONNX export from before features were exported: PyTorch's pass
        seen = observe(loaded, torch.from_numpy(images))
    else:
        seen = observations(images, outputs.logits, outputs.features, loaded)
    return profile.ood_scores(seen)


def refusal(score: float, cutoff: float) -> str:
    return (
        f"not scored: does not look like a frontal chest film (out-of-distribution score "
        f"{score:.3g} > cut-off {cutoff:.3g})"
    )


class FilmScorer:
    """Ray Data actor: batches of read films -> SCORED_SCHEMA rows (images dropped)."""

    def __init__(
        self,
        model_uri: str,
        tracking_uri: str,
        runtime: str,
        threads: int,
        use_gpu: bool,
        ood_policy: str,
        explain: bool,
    ):
        started = time.monotonic()
        torch.set_num_threads(threads)
        model = fetch_model(model_uri, tracking_uri)
        self.loaded = model.loaded
        self.predictor: Predictor = (
            CudaPredictor(self.loaded) if use_gpu else create_predictor(self.loaded, runtime, threads)
        )
        self.profile = readable_profile(self.loaded)
        self.ood_policy = ood_policy
        self.explainer = self._explainer() if explain else None
        meta = self.loaded.meta
        self.constants = {
            "threshold": meta.decision_threshold,
            "model_name": model.name,
            "model_version": model.version,
            "model_uri": model.uri,
            "runtime": self.predictor.runtime,
        }
        logger.info(
            "scoring actor ready: %s on %s in %.1f s", model.uri, self.predictor.runtime, time.monotonic() - started
        )

    def _explainer(self) -> Optional[Explainer]:
        from pneumo.evaluation.explain import Explainer, ExplanationError  # matplotlib: only with --explain

        try:
            return Explainer(self.loaded)
        except ExplanationError as error:
            logger.error("--explain: this model cannot be explained (%s); no overlays are written", error)
            return None

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        n = len(batch["path"])
        columns: dict[str, list[Any]] = {
            "path": list(batch["path"]),
            "sha256": _strings(batch["sha256"]),
            "status": list(batch["status"]),
            "error": [error or None for error in _strings(batch["error"])],
            "true_label": _strings(batch["true_label"]),
            **{key: [None] * n for key in ("probability", "label", "in_distribution", "ood_score", "overlay_png")},
        }
        rows = [i for i in range(n) if batch["status"][i] == DECODED]
        if rows:
            try:
                self._score(np.ascontiguousarray(batch["image"][rows]), rows, columns)
            except Exception as error:  # the model failing on a batch costs that batch's rows, not the job
                logger.exception("scoring a batch failed")
                for i in rows:
                    columns["status"][i], columns["error"][i] = (
                        FAILED,
                        f"scoring failed ({type(error).__name__}: {error})",
                    )
        for key, value in self.constants.items():
            columns[key] = [value] * n
        return pa.table(columns, schema=SCORED_SCHEMA)

    def _score(self, images: np.ndarray, rows: list[int], columns: dict[str, list[Any]]) -> None:
        outputs = self.predictor.infer(images)
        probabilities = self.loaded.meta.calibration.probabilities(outputs.logits)
        scores, refused = [None] * len(rows), [None] * len(rows)
        if self.profile is not None:
            scores = gate_scores(self.loaded, self.profile, images, outputs)
            refused = self.profile.gate.refuses(scores)
        threshold = self.loaded.meta.decision_threshold
        for i, probability, score, beyond in zip(rows, probabilities, scores, refused):
            columns["ood_score"][i] = None if score is None else float(score)
            columns["in_distribution"][i] = None if beyond is None else not bool(beyond)
            if beyond and self.ood_policy == "reject":
                columns["status"][i], columns["error"][i] = REFUSED_OOD, refusal(score, self.profile.gate.cutoff)
                continue
            columns["status"][i] = SCORED
            columns["probability"][i] = float(probability)
            columns["label"][i] = CLASS_NAMES[int(probability >= threshold)]
        if self.explainer is not None:
            self._overlays(images, rows, columns)

    def _overlays(self, images: np.ndarray, rows: list[int], columns: dict[str, list[Any]]) -> None:
        """Grad-CAM x gradient over the film, as a PNG, for each scored film at or above the threshold."""
        chosen = [k for k, i in enumerate(rows) if columns["label"][i] == CLASS_NAMES[1]]
        if not chosen:
            return
        from pneumo.evaluation.explain import overlay_png

        maps = self.explainer.explain(torch.from_numpy(images[chosen]))
        for k, cam in zip(chosen, maps):
            columns["overlay_png"][rows[k]] = overlay_png(images[k][0], cam)
