"""POST /explain: the prediction of /predict plus its map (Grad-CAM x input gradient,
pneumo/evaluation/explain.py).

The route in app.py runs the /predict path (same inputs, same refusals, same batched probability)
and then this module: one Explainer per served version, built on first use, the map computed in a
worker thread, answered as JSON with the map as a base64 PNG, or with ?format=png as an overlay image.
"""

from __future__ import annotations

import base64
import json
import threading
from typing import Any

import numpy as np
import torch
from pydantic import Field
from starlette.responses import JSONResponse, Response

from pneumo.evaluation.explain import (
    EXPLAINED_CLASS,
    METHOD,
    Explainer,
    ExplanationError,
    film_png,
    heatmap_png,
    overlay_png,
)
from pneumo.models.checkpoints import LoadedModel
from pneumo.serve.inputs import RequestError, format_parameter
from pneumo.serve.schemas import Prediction

EXPLAIN_FORMATS = ("json", "png")  # /explain?format=
OVERLAY_KEY = "overlay_png"  # carries the overlay from the handler to the route for ?format=png


class Explanation(Prediction):
    heatmap_png: str = Field(
        description="the map (Grad-CAM x input gradient) as a base64 RGBA PNG at the model's input size: colour "
        "and opacity rise with the evidence; stretch it over the film to overlay"
    )
    method: str = Field(description=f"{METHOD}: Grad-CAM at target_layer times the positive input gradient")
    explained_class: str = Field(description=f"{EXPLAINED_CLASS}: the map shows evidence for it")
    target_layer: str = Field(description="the model layer of the map's Grad-CAM part")
    film_png: str = Field(description="the film as the model saw it (its input size and channels), base64 PNG")


class ExplainerCache:
    """One Explainer per loaded model (champion, challenger), built on first use; the versions a
    replica no longer serves are dropped when a new one is built."""

    MAX_MODELS = 2

    def __init__(self) -> None:
        self._explainers: dict[int, tuple[LoadedModel, Explainer]] = {}
        self._lock = threading.Lock()

    def get(self, loaded: LoadedModel) -> Explainer:
        with self._lock:
            if id(loaded) not in self._explainers:
                try:
                    explainer = Explainer(loaded)
                except ExplanationError as error:
                    raise RequestError(501, f"this model cannot be explained: {error}", "model") from None
                while len(self._explainers) >= self.MAX_MODELS:
                    self._explainers.pop(next(iter(self._explainers)))
                self._explainers[id(loaded)] = (loaded, explainer)  # the model is held, so its id stays unique
            return self._explainers[id(loaded)][1]


def explain_image(explainer: Explainer, image: np.ndarray, answer: dict[str, Any], fmt: str) -> dict[str, Any]:
    """The /predict answer plus the map of `image` (uint8 (C, H, W) at the model's input). Blocking:
    run it in a worker thread."""
    cam = explainer.explain(torch.as_tensor(np.array(image[None])))[0]  # decoded arrays are read-only
    explained = {
        **answer,
        "heatmap_png": base64.b64encode(heatmap_png(cam)).decode(),
        "method": METHOD,
        "explained_class": EXPLAINED_CLASS,
        "target_layer": explainer.target_layer,
        "film_png": base64.b64encode(film_png(image)).decode(),
    }
    if fmt == "png":
        explained[OVERLAY_KEY] = base64.b64encode(overlay_png(image[0], cam)).decode()
    return explained


def as_png(response: JSONResponse) -> Response:
    """A successful ?format=png answer becomes the overlay image, the prediction in X- headers; errors
    and JSON answers pass through."""
    if response.status_code != 200:
        return response
    body: dict[str, Any] = json.loads(response.body)
    if OVERLAY_KEY not in body:
        return response
    headers = {
        "X-Probability": f"{body['probability']:.6f}",
        "X-Label": body["label"],
        "X-Threshold": f"{body['threshold']:.6f}",
        "X-Target-Layer": body["target_layer"],
        **{key: value for key, value in response.headers.items() if key.lower().startswith("x-")},
    }
    return Response(base64.b64decode(body[OVERLAY_KEY]), media_type="image/png", headers=headers)


EXPLAIN_FORMAT_PARAMETER = format_parameter(
    EXPLAIN_FORMATS,
    "json (default): the map as a base64 PNG in the answer; png: the film with the map over it, "
    "the prediction in X- headers",
)
EXPLAIN_PNG_DOC = {
    "content": {
        "image/png": {
            "schema": {
                "type": "string",
                "format": "binary",
                "description": "with ?format=png: the film with its map over it",
            }
        }
    }
}
