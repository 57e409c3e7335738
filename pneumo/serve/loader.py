"""Loading the served model without blocking the replica, and retrying what may heal."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Optional

import numpy as np
import torch
from mlflow.exceptions import MlflowException

from pneumo.evaluation.prediction import predict_probabilities
from pneumo.model_uri import FetchedModel, fetch_model

RETRY_ERROR_CODES = {"RESOURCE_DOES_NOT_EXIST", "TEMPORARILY_UNAVAILABLE", "INTERNAL_ERROR"}  # may heal
FIRST_RETRY_WAIT_S, MAX_RETRY_WAIT_S = 0.5, 10.0

logger = logging.getLogger(__name__)


def warm_up(model: FetchedModel) -> None:
    """One forward pass, so the first request does not pay for lazy allocations."""
    spec = model.loaded.meta.preprocessing_spec
    blank = torch.from_numpy(np.zeros((1, spec.in_chans, spec.image_size, spec.image_size), dtype=np.uint8))
    predict_probabilities(model.loaded, blank)


class ModelLoader:
    """Loads the model in a background thread, so the replica answers /healthz and /readyz meanwhile.

    A registry model or alias that does not exist yet (the endpoint deployed before the first
    champion) or an unreachable tracking server is retried with backoff; anything else (a broken checkpoint) fails
    for good. Either way the reason is in `status()` for /readyz, and the replica stays up.
    """

    def __init__(self, uri: str, tracking_uri: str):
        self.uri, self.tracking_uri = uri, tracking_uri
        self.model: Optional[FetchedModel] = None
        self.state, self.error = "loading", None  # loading | waiting | ready | failed
        self._thread = threading.Thread(target=self._load, name="pneumo-model-loader", daemon=True)
        self._thread.start()

    def _load(self) -> None:
        wait_s = FIRST_RETRY_WAIT_S
        while True:
            try:
                model = fetch_model(self.uri, self.tracking_uri)
                warm_up(model)
            except MlflowException as error:
                if error.error_code not in RETRY_ERROR_CODES:
                    return self._fail(error)
                self.state, self.error = "waiting", f"{self.uri}: {error.message} (retrying every {wait_s:g} s)"
                time.sleep(wait_s)
                wait_s = min(2 * wait_s, MAX_RETRY_WAIT_S)
                continue
            except Exception as error:  # report any failure on /readyz rather than kill the replica
                return self._fail(error)
            self.model, self.state, self.error = model, "ready", None
            logger.info("serving %s (%s version %s)", model.uri, model.name, model.version)
            return

    def _fail(self, error: Exception) -> None:
        logger.error("cannot load %s: %s", self.uri, error)
        self.state, self.error = "failed", f"{self.uri}: {type(error).__name__}: {error}"

    def status(self) -> dict[str, Any]:
        status = {"ready": self.model is not None, "state": self.state, "model_uri": self.uri}
        return {**status, "error": self.error} if self.error else status
