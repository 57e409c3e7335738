"""The Ray Serve deployment: HTTP routes over one model loaded in the background.

Concurrent requests share model calls through `@serve.batch`; decoding and inference run in worker
threads so the event loop keeps answering health checks. Request parsing lives in inputs.py, the
response schemas in schemas.py, loading in loader.py; builder.py turns config into this deployment.

Status codes, each error a JSON {"error", "field"}: 400 for an image that cannot be used (empty, not
an image, truncated, over serve.max_image_pixels) or a malformed multipart body; 413 for a body over
serve.max_body_bytes or more than serve.max_images_per_request images; 415 for a Content-Type other
than multipart/form-data, image/* or application/dicom; 503 while the model loads or after its load
failed (/readyz says why). Serve itself answers 503 once serve.max_queued_requests are waiting.
"""

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable, Optional

import numpy as np
import torch
from fastapi import FastAPI
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

from pneumo.config import ServeConfig
from pneumo.data.folder import CLASS_NAMES
from pneumo.data.transforms import ImageDecodeError, decode_image
from pneumo.evaluation.prediction import predict_probabilities
from pneumo.model_uri import FetchedModel
from pneumo.serve.audit import AuditLog
from pneumo.serve.inputs import (
    BATCH_UPLOAD_DOC,
    SINGLE_UPLOAD_DOC,
    RequestError,
    Upload,
    deployment_openapi,
    describe_deployment,
    read_image,
    read_images,
)
from pneumo.serve.loader import ModelLoader
from pneumo.serve.prometheus import ServeMetrics
from pneumo.serve.schemas import ERROR_DOCS, BatchPrediction, ErrorBody, Prediction
from pneumo.serve.security import authenticate, protect

RETRY_AFTER_S = "5"  # hint for clients that hit the endpoint while the model loads

logger = logging.getLogger(__name__)


def _verdict(probability: float, model: FetchedModel) -> dict[str, Any]:
    threshold = model.loaded.meta.decision_threshold
    return {"probability": probability, "label": CLASS_NAMES[int(probability >= threshold)]}


def _identity(model: FetchedModel) -> dict[str, Any]:
    return {"threshold": model.loaded.meta.decision_threshold, "model_name": model.name,
            "model_version": model.version}


def _elapsed_ms(started: float) -> float:
    return round(1000 * (time.perf_counter() - started), 3)


api = FastAPI(title="pneumo", description="P(pneumonia) for chest X-rays: JPEG, PNG or DICOM in, JSON out. "
                                          "Errors are {\"error\", \"field\"}: 400 unusable image, 413 too "
                                          "large or too many, 415 wrong Content-Type, 503 model not ready.")
api.middleware("http")(authenticate)  # bearer token on every route but the probes and docs (security.py)


def _openapi() -> dict[str, Any]:
    return deployment_openapi(api)


api.openapi = _openapi  # /openapi.json states this deployment's limits and auth (inputs.document_limits)


@serve.deployment
@serve.ingress(api)
class PneumoniaService:
    """One replica: the HTTP routes, a model loaded in the background, one batcher for all requests."""

    def __init__(self, model_uri: str, tracking_uri: str, settings: dict[str, Any], token_sha256: Optional[str] = None):
        self.settings = ServeConfig(**settings)
        protect(token_sha256)  # None: no authentication
        describe_deployment(self.settings, authenticated=token_sha256 is not None)
        self.audit = AuditLog(self.settings)
        torch.set_num_threads(self.settings.torch_threads)
        self.score.set_max_batch_size(self.settings.max_batch_size)
        self.score.set_batch_wait_timeout_s(self.settings.batch_wait_timeout_s)
        self.metrics = ServeMetrics()
        self.loader = ModelLoader(model_uri, tracking_uri)

    @api.get("/healthz")
    def healthz(self) -> dict[str, bool]:
        """The replica is alive (it may still be loading: see /readyz)."""
        return {"ok": True}

    @api.get("/readyz", responses={503: {"description": "model not loaded yet, or its load failed (see error)"}})
    def readyz(self) -> JSONResponse:
        """200 once the model is loaded; 503 with the state and the last error before that."""
        status = self.loader.status()
        return JSONResponse(status, status_code=200 if status["ready"] else 503)

    @api.get("/model", responses={503: {"model": ErrorBody}})
    async def model_info(self) -> JSONResponse:
        """Name, version, registered metrics, preprocessing and decision threshold of the served model."""
        return await self._answer("model", self._describe)

    @api.post("/predict", response_model=Prediction, responses=ERROR_DOCS, openapi_extra=SINGLE_UPLOAD_DOC)
    async def predict(self, request: Request) -> JSONResponse:
        """One image: multipart field `file`, or the raw body (image/jpeg, image/png, application/dicom)."""
        return await self._answer("predict", lambda started: self._predict_one(request, started))

    @api.post("/predict/batch", response_model=BatchPrediction, responses=ERROR_DOCS,
              openapi_extra=BATCH_UPLOAD_DOC)
    async def predict_batch(self, request: Request) -> JSONResponse:
        """Several images in one multipart request, one `files` field each."""
        return await self._answer("predict_batch", lambda started: self._predict_many(request, started))

    async def _answer(self, endpoint: str, handler: Callable[[float], Awaitable[dict[str, Any]]]) -> JSONResponse:
        """Run a handler; bad input becomes its JSON error, a bug a 500; either way the replica serves on."""
        started = time.perf_counter()
        headers: dict[str, str] = {}
        try:
            body, status = await handler(started), 200
        except RequestError as error:
            body, status, headers = error.to_json(), error.status, error.headers
        except Exception as error:
            logger.exception("%s failed", endpoint)
            body, status = {"error": f"internal error ({type(error).__name__}: {error})", "field": None}, 500
        self.metrics.record(endpoint, status, time.perf_counter() - started)
        return JSONResponse(body, status_code=status, headers=headers)

    def _loaded_model(self) -> FetchedModel:
        if self.loader.model is None:
            status = self.loader.status()
            reason = f"model is {status['state']}" + (f": {status['error']}" if "error" in status else "")
            raise RequestError(503, f"{reason} (see /readyz)", "model", {"Retry-After": RETRY_AFTER_S})
        return self.loader.model

    async def _decode(self, upload: Upload, model: FetchedModel) -> np.ndarray:
        try:
            return await asyncio.to_thread(decode_image, upload.data, model.loaded.meta.preprocessing_spec,
                                           self.settings.max_image_pixels)
        except ImageDecodeError as error:
            raise RequestError(400, f"{upload.label}: {error}", upload.source) from None

    async def _describe(self, started: float) -> dict[str, Any]:
        return self._loaded_model().describe()

    async def _predict_one(self, request: Request, started: float) -> dict[str, Any]:
        model = self._loaded_model()
        upload = await read_image(request, self.settings)
        probability = await self.score(await self._decode(upload, model))
        answer = {**_verdict(probability, model), **_identity(model), "time_ms": _elapsed_ms(started)}
        self.audit.record(request, [upload.data], answer)
        return answer

    async def _predict_many(self, request: Request, started: float) -> dict[str, Any]:
        model = self._loaded_model()
        uploads = await read_images(request, self.settings)
        images = await asyncio.gather(*(self._decode(upload, model) for upload in uploads))
        probabilities = await asyncio.gather(*(self.score(image) for image in images))
        predictions = [{"filename": upload.filename, **_verdict(probability, model)}
                       for upload, probability in zip(uploads, probabilities)]
        answer = {"predictions": predictions, **_identity(model), "time_ms": _elapsed_ms(started)}
        self.audit.record(request, [upload.data for upload in uploads], answer)
        return answer

    @serve.batch(max_batch_size=ServeConfig.max_batch_size, batch_wait_timeout_s=ServeConfig.batch_wait_timeout_s)
    async def score(self, images: list[np.ndarray]) -> list[float]:
        """Images from concurrent requests -> P(pneumonia) each, in one model call."""
        self.metrics.batch_size.observe(len(images))
        model = self.loader.model.loaded
        batch = torch.from_numpy(np.stack(images))
        probabilities = await asyncio.to_thread(predict_probabilities, model, batch)
        return [float(p) for p in probabilities]
