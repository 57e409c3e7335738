"""Loading the served model without blocking the replica, retrying what may heal, and following a
registry alias: when `champion` moves, the new version loads in the background and replaces the old
one in a single assignment, so every request sees one whole model (never a half-switched one)."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
from mlflow.exceptions import MlflowException

from pneumo.config import ServeConfig
from pneumo.models.runtimes import Outputs, Predictor, choose_runtime
from pneumo.registry.uri import FetchedModel, current_version, fetch_model

RETRY_ERROR_CODES = {"RESOURCE_DOES_NOT_EXIST", "TEMPORARILY_UNAVAILABLE", "INTERNAL_ERROR"}  # may heal
FIRST_RETRY_WAIT_S, MAX_RETRY_WAIT_S = 0.5, 10.0

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedModel:
    """One loaded version and the runtime that scores it; replaced whole when the alias moves."""

    fetched: FetchedModel
    predictor: Predictor
    load_s: float  # fetch + runtime build + warm-up, seconds

    def score(self, images: np.ndarray) -> tuple[np.ndarray, Outputs]:
        """uint8 (N, C, H, W) -> calibrated P(pneumonia), and the pass's outputs (the gate reads its features)."""
        outputs = self.predictor.infer(images)
        return self.fetched.loaded.meta.calibration.probabilities(outputs.logits), outputs


def load_served_model(uri: str, tracking_uri: str, settings: ServeConfig) -> ServedModel:
    """Fetch, build the configured runtime and run one forward pass, so the first request does not
    pay for lazy allocations."""
    started = time.perf_counter()
    fetched = fetch_model(uri, tracking_uri)
    predictor = choose_runtime(
        settings.runtime, fetched.loaded, settings.torch_threads, settings.max_batch_size, settings.int8
    )
    spec = fetched.loaded.meta.preprocessing_spec
    predictor.logits(np.zeros((1, spec.in_chans, spec.image_size, spec.image_size), np.uint8))
    return ServedModel(fetched, predictor, time.perf_counter() - started)


class ModelLoader:
    """Loads the model in a background thread, so the replica answers /healthz and /readyz meanwhile.

    A registry model or alias that does not exist yet (the endpoint deployed before the first
    champion) or an unreachable tracking server is retried with backoff; anything else (a broken
    checkpoint) fails for good. Either way the reason is in `status()` for /readyz, and the replica
    stays up. Once loaded, an alias URI is polled every serve.poll_interval_s; a failed update keeps
    the current version serving and is reported as `update_error`.
    """

    def __init__(self, uri: str, tracking_uri: str, settings: Optional[ServeConfig] = None):
        self.uri, self.tracking_uri, self.settings = uri, tracking_uri, settings or ServeConfig()
        self.served: Optional[ServedModel] = None
        self.state, self.error, self.update_error = "loading", None, None  # state: loading | waiting | ready | failed
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pneumo-model-loader", daemon=True)
        self._thread.start()

    @property
    def model(self) -> Optional[FetchedModel]:
        """The served version's checkpoint and identity (None until loaded)."""
        served = self.served
        return served.fetched if served is not None else None

    def _run(self) -> None:
        follows_alias = self.uri.startswith("models:/") and "@" in self.uri  # versions and folders cannot move
        if self._load_first() and follows_alias and self.settings.poll_interval_s > 0:
            while not self._stop.wait(self.settings.poll_interval_s):
                self._follow_alias()

    def _load_first(self) -> bool:
        wait_s = FIRST_RETRY_WAIT_S
        while not self._stop.is_set():
            try:
                self.served = load_served_model(self.uri, self.tracking_uri, self.settings)
            except MlflowException as error:
                if error.error_code not in RETRY_ERROR_CODES:
                    return self._fail(error)
                self.state, self.error = "waiting", f"{self.uri}: {error.message} (retrying every {wait_s:g} s)"
                self._stop.wait(wait_s)
                wait_s = min(2 * wait_s, MAX_RETRY_WAIT_S)
                continue
            except Exception as error:  # report any failure on /readyz rather than kill the replica
                return self._fail(error)
            self.state, self.error = "ready", None
            self._log_serving()
            return True
        return False

    def _follow_alias(self) -> None:
        """Load the version the alias points at now, if it moved; then switch in one assignment."""
        try:
            version = current_version(self.uri, self.tracking_uri)
            if version != self.served.fetched.version:
                self.served = load_served_model(self.uri, self.tracking_uri, self.settings)
                self._log_serving()
            self.update_error = None
        except Exception as error:  # keep serving the version we have
            logger.warning(
                "cannot follow %s (still serving version %s): %s", self.uri, self.served.fetched.version, error
            )
            self.update_error = f"{type(error).__name__}: {error}"

    def _log_serving(self) -> None:
        served = self.served
        logger.info(
            "serving %s (%s version %s) on %s %s, loaded in %.1f s",
            served.fetched.uri,
            served.fetched.name,
            served.fetched.version,
            served.predictor.runtime,
            served.predictor.precision,
            served.load_s,
        )

    def _fail(self, error: Exception) -> bool:
        logger.error("cannot load %s: %s", self.uri, error)
        self.state, self.error = "failed", f"{self.uri}: {type(error).__name__}: {error}"
        return False

    def stop(self) -> None:
        """End the polling (and any retry wait); the loaded model keeps serving."""
        self._stop.set()

    def status(self) -> dict[str, Any]:
        served = self.served
        status: dict[str, Any] = {"ready": served is not None, "state": self.state, "model_uri": self.uri}
        if served is not None:
            status.update(
                version=served.fetched.version,
                runtime=served.predictor.runtime,
                precision=served.predictor.precision,
                load_s=round(served.load_s, 3),
            )
        for key in ("error", "update_error"):
            if getattr(self, key):
                status[key] = getattr(self, key)
        return status
