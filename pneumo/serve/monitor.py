"""The replica's monitoring: the out-of-distribution gate in front of the model, the drift window
behind it, GET /monitoring, and their Prometheus series.

Every decoded image goes through `check` with the outputs of the pass that scored it (the served
runtime returns the pre-logit features beside the logit, runtimes.Outputs): its features, intensity
statistics and probability are scored against the model's reference profile and kept in this
replica's window (never the pixels). With serve.ood_policy `reject` an image beyond the cut-off gets
a 422 and its probability is withheld; with `flag` it is answered with `in_distribution: false`; with
`off` it is answered as before (the window still counts it).

Several replicas: each keeps and tests its own window (Serve spreads requests at random, so each
window samples the same stream). GET /monitoring answers from the replica that takes the request
(its id is in the answer); Prometheus gets every replica's gauges tagged by replica, and the alert
rules take the maximum over replicas (deploy/prometheus/pneumo-alerts.yml).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from ray.serve import metrics

from pneumo.config import ServeConfig
from pneumo.models.runtimes import Outputs
from pneumo.monitoring.drift import FAMILIES, ObservationWindow, drift_report
from pneumo.monitoring.features import observations, observe
from pneumo.monitoring.profile import NO_PROFILE, ReferenceProfile, profile_of
from pneumo.registry.uri import FetchedModel
from pneumo.serve.inputs import RequestError, Upload

logger = logging.getLogger(__name__)
NOT_LOADED = "the model is not loaded yet"


@dataclass
class GateResult:
    """What the gate says about one image (score None when the model has no profile)."""

    score: Optional[float]  # out-of-distribution score
    cutoff: Optional[float]
    refused: Optional[bool] = None  # the gate's verdict (OodGate.refuses)

    @property
    def in_distribution(self) -> Optional[bool]:
        return None if self.refused is None else not self.refused

    def fields(self) -> dict[str, Any]:
        return {"in_distribution": self.in_distribution, "ood_score": self.score}


class OutOfDistribution(RequestError):
    """422: the gate refuses the image; the body carries the score and the cut-off."""

    def __init__(self, upload: Upload, gate: GateResult):
        super().__init__(
            422,
            f"{upload.label}: the image does not look like a frontal chest film this model was "
            f"trained on (out-of-distribution score {gate.score:.3g} > cut-off {gate.cutoff:.3g}); "
            "no probability is given for it. Send a frontal (PA/AP) chest radiograph, or ask the operators "
            "to set serve.ood_policy=flag",
            upload.source,
        )
        self.gate = gate

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), "ood_score": self.gate.score, "ood_cutoff": self.gate.cutoff}


class MonitorMetrics:
    """Prometheus series of the gate and the drift tests (Ray adds the replica tag)."""

    def __init__(self) -> None:
        self.out_of_distribution = metrics.Counter(
            "pneumo_ood_inputs",
            "inputs beyond the out-of-distribution cut-off, by serve.ood_policy action",
            tag_keys=("action",),
        )
        self.ood_rate = metrics.Gauge("pneumo_ood_rate", "share of the drift window beyond the OOD cut-off")
        self.drift = metrics.Gauge("pneumo_drift_detected", "1 when the last drift test of the window found drift")
        self.drift_p_value = metrics.Gauge(
            "pneumo_drift_p_value", "p-value of the last drift test by family", tag_keys=("family",)
        )
        self.drift_score = metrics.Gauge("pneumo_drift_score", "MMD^2 between window and reference features")
        self.window_size = metrics.Gauge("pneumo_drift_window_inputs", "inputs in the drift window")
        self.ready = metrics.Gauge("pneumo_model_ready", "1 once the replica's model is loaded")

    def publish(self, report: dict[str, Any]) -> None:
        self.window_size.set(report["window"]["size"])
        if "ood" in report:
            self.ood_rate.set(report["ood"]["rate"])
        if report.get("status") == "tested":
            self.drift.set(int(report["drift"]))
            self.drift_score.set(report["features"]["statistic"])
            for family in FAMILIES:
                self.drift_p_value.set(report[family]["p_value"], tags={"family": family})


class ServeMonitor:
    """One replica's gate and drift window; `check` runs in the batcher's worker thread."""

    def __init__(self, settings: ServeConfig, champion: Callable[[], Optional[FetchedModel]]):
        """`champion` returns the loaded champion (None while it loads): its window is the one tested."""
        self.settings = settings
        self.window = ObservationWindow(settings.drift_window)
        self.metrics = MonitorMetrics()
        self._champion = champion
        self._watched: Optional[str] = None  # URI of the model whose inputs the window holds
        self._profiles: dict[str, tuple[Optional[ReferenceProfile], str]] = {}  # uri -> (profile, why none)
        self._lock = threading.Lock()
        threading.Thread(target=self._refresh_periodically, name="pneumo-drift", daemon=True).start()

    def profile(self, model: FetchedModel) -> tuple[Optional[ReferenceProfile], str]:
        """The model's reference profile (read once per model), or None and why."""
        if model.uri not in self._profiles:
            try:
                found = profile_of(model.loaded)
                self._profiles[model.uri] = (found, "" if found else NO_PROFILE)
            except (KeyError, ValueError) as error:  # a profile this pneumo cannot read: serve without it
                logger.error("reference profile of %s unusable: %s", model.uri, error)
                self._profiles[model.uri] = (None, f"the model's reference profile cannot be read ({error})")
        return self._profiles[model.uri]

    def status(self, model: Optional[FetchedModel]) -> dict[str, Any]:
        """For /readyz and /model: whether the gate and drift are on for this model, and if not, why."""
        profile, why = self.profile(model) if model is not None else (None, NOT_LOADED)
        gate_on = profile is not None and self.settings.ood_policy != "off"
        gate = {"on": gate_on, "policy": self.settings.ood_policy}
        if profile is not None:
            gate["cutoff"] = profile.gate.cutoff
        if not gate_on:
            gate["reason"] = why or "serve.ood_policy is off"
        drift = {
            "on": profile is not None,
            "window": self.settings.drift_window,
            **({} if profile else {"reason": why}),
        }
        return {"ood_gate": gate, "drift": drift}

    def check(
        self, model: FetchedModel, images: np.ndarray, outputs: Outputs, recorded: np.ndarray
    ) -> list[GateResult]:
        """One version's pass over uint8 `images` -> a GateResult each; `recorded` rows go in the window."""
        profile, _ = self.profile(model)
        if profile is None:
            return [GateResult(None, None) for _ in images]
        if outputs.features is None:  # an ONNX export from before features were exported: PyTorch's pass
            seen = observe(model.loaded, torch.from_numpy(images))
        else:
            seen = observations(images, outputs.logits, outputs.features, model.loaded)
        projected, residual = profile.project(seen.features)
        scores = profile.gate.scores(projected, residual, seen.intensities)
        beyond = profile.gate.refuses(scores)
        if recorded.any():
            self._watch(model)
            self.window.add(
                projected[recorded], seen.intensities[recorded], seen.probabilities[recorded], beyond[recorded]
            )
        action = (
            "rejected"
            if self.settings.ood_policy == "reject"
            else "flagged"
            if self.settings.ood_policy == "flag"
            else "served"
        )
        for _ in range(int(beyond.sum())):
            self.metrics.out_of_distribution.inc(tags={"action": action})
        return [GateResult(float(score), profile.gate.cutoff, bool(refused)) for score, refused in zip(scores, beyond)]

    def _watch(self, model: FetchedModel) -> None:
        """A new champion has another feature space: its window starts empty."""
        with self._lock:
            if self._watched != model.uri:
                if self._watched is not None:
                    logger.info("drift window restarts for %s (was %s)", model.uri, self._watched)
                self.window = ObservationWindow(self.settings.drift_window)
                self._watched = model.uri

    def enforce(self, gate: GateResult, upload: Upload) -> None:
        """serve.ood_policy reject: refuse an out-of-distribution image with a 422."""
        if self.settings.ood_policy == "reject" and gate.in_distribution is False:
            raise OutOfDistribution(upload, gate)

    def refuses(self, gate: GateResult) -> bool:
        return self.settings.ood_policy == "reject" and gate.in_distribution is False

    @staticmethod
    def refusal(gate: GateResult) -> dict[str, Any]:
        """A refused file's entry in /predict/batch: no probability, and why."""
        return {
            "probability": None,
            "label": None,
            "error": f"not scored: does not look like a frontal chest film (out-of-distribution score "
            f"{gate.score:.3g} > cut-off {gate.cutoff:.3g})",
        }

    def report(self, model: Optional[FetchedModel], replica: str) -> dict[str, Any]:
        """The /monitoring answer for this replica's window (see drift.drift_report)."""
        profile, why = self.profile(model) if model is not None else (None, NOT_LOADED)
        report = drift_report(
            profile, self.window.snapshot(), self.settings.drift_window, self.settings.drift_min_inputs, why
        )
        self.metrics.publish(report)
        return {
            **report,
            "replica": replica,
            "model_uri": self._watched or (model.uri if model else None),
            "ood_policy": self.settings.ood_policy,
            "combined": "per replica: this answer is this replica's window; Prometheus has every replica's",
        }

    def _refresh_periodically(self) -> None:
        """Keep the gauges current without anyone calling /monitoring: retest after new inputs."""
        tested = -1
        while True:  # a daemon thread: it ends with the replica process
            time.sleep(self.settings.drift_interval_s)
            champion = self._champion()
            self.metrics.ready.set(int(champion is not None))
            if champion is not None and self.window.added != tested:
                tested = self.window.added
                try:
                    self.report(champion, "")
                except Exception:  # a failed test must not stop the loop; /monitoring shows the error
                    logger.exception("drift test failed")
