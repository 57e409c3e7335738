"""The Ray Serve deployment behind `pneumo serve`, `serve run serve_app:app` and serve_config.yaml.

    app = build_app(ServeArgs(model_uri="models:/pneumo-pneumonia@champion",
                              config=["experiments/quickstart.yaml"]))
    serve.run(app)  # POST /predict, POST /predict/batch, GET /healthz /readyz /model, docs at /docs

Concurrent requests share model calls through `@serve.batch`; decoding and inference run in worker
threads so the event loop keeps answering health checks. Request parsing lives in serve_inputs.py,
model resolution and loading in serve_model.py.

Status codes, each error a JSON {"error", "field"}: 400 for an image that cannot be used (empty, not
an image, truncated, over serve.max_image_pixels) or a malformed multipart body; 413 for a body over
serve.max_body_bytes or more than serve.max_images_per_request images; 415 for a Content-Type other
than multipart/form-data, image/* or application/dicom; 503 while the model loads or after its load
failed (/readyz says why). Serve itself answers 503 once serve.max_queued_requests are waiting.
"""

# No `from __future__ import annotations`: Ray's typed app builder needs build_app's annotation as a
# class to turn `serve run … key=value` arguments into ServeArgs.
import asyncio
import dataclasses
import logging
import os
import time
from typing import Any, Awaitable, Callable, Literal, Optional

import numpy as np
import torch
from fastapi import FastAPI
from pydantic import BaseModel, Field, field_validator
from ray import serve
from ray.serve import Application
from ray.serve import metrics
from starlette.requests import Request
from starlette.responses import JSONResponse

from pneumo.config import ConfigError, MlflowConfig, ServeConfig, load_config
from pneumo.data.transforms import ImageDecodeError, decode_image
from pneumo.evaluate import predict_probabilities
from pneumo.serve_inputs import (BATCH_UPLOAD_DOC, SINGLE_UPLOAD_DOC, RequestError, Upload, read_image,
                                 read_images)
from pneumo.serve_model import ModelLoader, ServedModel, resolve_model_uri
from pneumo.tracking import resolve_tracking_uri

CONFIG_ENV = "PNEUMO_CONFIG"  # experiment YAMLs (comma-separated) for `serve run serve_app:app`
LABELS = ("NORMAL", "PNEUMONIA")
LATENCY_BOUNDARIES_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000]
BATCH_SIZE_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64]
RETRY_AFTER_S = "5"  # hint for clients that hit the endpoint while the model loads

logger = logging.getLogger(__name__)


class ServeArgs(BaseModel):
    """What `pneumo serve` and `serve run serve_app:build_app_from_args key=value …` pass to build_app."""

    model_uri: Optional[str] = None  # checkpoint folder, models:/NAME@alias, models:/NAME/VERSION, runs:/ID/model
    config: list[str] = []  # experiment YAMLs; their serve: and mlflow: sections apply
    overrides: list[str] = []  # key=value, e.g. serve.max_batch_size=32 (needs a config)
    tracking_uri: Optional[str] = None  # None: mlflow.tracking_uri, else $MLFLOW_TRACKING_URI, else ./mlflow.db

    @field_validator("config", "overrides", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        """`config=a.yaml,b.yaml` on the `serve run` line arrives as one string."""
        return [item for item in value.replace(",", " ").split()] if isinstance(value, str) else value

    @classmethod
    def from_env(cls) -> "ServeArgs":
        """$PNEUMO_CONFIG; the model comes from $PNEUMO_MODEL_URI via resolve_model_uri."""
        return cls(config=os.environ.get(CONFIG_ENV, ""))


def load_serving_config(args: ServeArgs) -> tuple[ServeConfig, MlflowConfig]:
    """The serve: and mlflow: sections of the experiment files, or their defaults without files."""
    if args.config:
        cfg = load_config(args.config, args.overrides)
        return cfg.serve, cfg.mlflow
    if args.overrides:
        raise ConfigError(f"overrides {args.overrides} need an experiment YAML to apply to: add --config FILE")
    return ServeConfig(), MlflowConfig()


class Prediction(BaseModel):
    probability: float = Field(description="P(pneumonia) from the model")
    label: Literal["NORMAL", "PNEUMONIA"] = Field(description="PNEUMONIA when probability >= threshold")
    threshold: float = Field(description="the model's decision threshold, chosen on validation")
    model_name: str
    model_version: str
    time_ms: float = Field(description="time spent in the server, milliseconds")


class FilePrediction(BaseModel):
    filename: Optional[str]
    probability: float
    label: Literal["NORMAL", "PNEUMONIA"]


class BatchPrediction(BaseModel):
    predictions: list[FilePrediction] = Field(description="one per `files` part, in order")
    threshold: float
    model_name: str
    model_version: str
    time_ms: float


class ErrorBody(BaseModel):
    error: str = Field(description="what was wrong and how to fix it")
    field: Optional[str] = Field(description="the request field at fault: file, files, body, content-type, model")


ERROR_DOCS = {status: {"model": ErrorBody} for status in (400, 413, 415, 503)}


class ServeMetrics:
    """Prometheus series through Ray's metrics agent; Serve adds deployment, replica and app tags."""

    def __init__(self) -> None:
        self.requests = metrics.Counter("pneumo_requests", "requests by endpoint and HTTP status",
                                        tag_keys=("endpoint", "status"))
        self.errors = metrics.Counter("pneumo_request_errors", "4xx and 5xx answers by endpoint and status",
                                      tag_keys=("endpoint", "status"))
        self.latency_ms = metrics.Histogram("pneumo_request_latency_ms", "time in the replica per request, ms",
                                            boundaries=LATENCY_BOUNDARIES_MS, tag_keys=("endpoint",))
        self.batch_size = metrics.Histogram("pneumo_batch_size", "images per model call",
                                            boundaries=BATCH_SIZE_BOUNDARIES)

    def record(self, endpoint: str, status: int, seconds: float) -> None:
        tags = {"endpoint": endpoint, "status": str(status)}
        self.requests.inc(tags=tags)
        if status >= 400:
            self.errors.inc(tags=tags)
        self.latency_ms.observe(1000 * seconds, tags={"endpoint": endpoint})


def _verdict(probability: float, model: ServedModel) -> dict[str, Any]:
    threshold = model.loaded.meta.decision_threshold
    return {"probability": probability, "label": LABELS[int(probability >= threshold)]}


def _identity(model: ServedModel) -> dict[str, Any]:
    return {"threshold": model.loaded.meta.decision_threshold, "model_name": model.name,
            "model_version": model.version}


def _elapsed_ms(started: float) -> float:
    return round(1000 * (time.perf_counter() - started), 3)


api = FastAPI(title="pneumo", description="P(pneumonia) for chest X-rays: JPEG, PNG or DICOM in, JSON out. "
                                          "Errors are {\"error\", \"field\"}: 400 unusable image, 413 too "
                                          "large or too many, 415 wrong Content-Type, 503 model not ready.")


@serve.deployment
@serve.ingress(api)
class PneumoniaService:
    """One replica: the HTTP routes, a model loaded in the background, one batcher for all requests."""

    def __init__(self, model_uri: str, tracking_uri: str, settings: dict[str, Any]):
        self.settings = ServeConfig(**settings)
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

    def _loaded_model(self) -> ServedModel:
        if self.loader.model is None:
            status = self.loader.status()
            reason = f"model is {status['state']}" + (f": {status['error']}" if "error" in status else "")
            raise RequestError(503, f"{reason} (see /readyz)", "model", {"Retry-After": RETRY_AFTER_S})
        return self.loader.model

    async def _decode(self, upload: Upload, model: ServedModel) -> np.ndarray:
        try:
            return await asyncio.to_thread(decode_image, upload.data, model.loaded.meta.preprocessing_spec,
                                           self.settings.max_image_pixels)
        except ImageDecodeError as error:
            raise RequestError(400, f"{upload.label}: {error}", upload.source) from None

    async def _describe(self, started: float) -> dict[str, Any]:
        return self._loaded_model().describe()

    async def _predict_one(self, request: Request, started: float) -> dict[str, Any]:
        model = self._loaded_model()
        image = await self._decode(await read_image(request, self.settings), model)
        probability = await self.score(image)
        return {**_verdict(probability, model), **_identity(model), "time_ms": _elapsed_ms(started)}

    async def _predict_many(self, request: Request, started: float) -> dict[str, Any]:
        model = self._loaded_model()
        uploads = await read_images(request, self.settings)
        images = await asyncio.gather(*(self._decode(upload, model) for upload in uploads))
        probabilities = await asyncio.gather(*(self.score(image) for image in images))
        predictions = [{"filename": upload.filename, **_verdict(probability, model)}
                       for upload, probability in zip(uploads, probabilities)]
        return {"predictions": predictions, **_identity(model), "time_ms": _elapsed_ms(started)}

    @serve.batch(max_batch_size=ServeConfig.max_batch_size, batch_wait_timeout_s=ServeConfig.batch_wait_timeout_s)
    async def score(self, images: list[np.ndarray]) -> list[float]:
        """Images from concurrent requests -> P(pneumonia) each, in one model call."""
        self.metrics.batch_size.observe(len(images))
        model = self.loader.model.loaded
        batch = torch.from_numpy(np.stack(images))
        probabilities = await asyncio.to_thread(predict_probabilities, model, batch)
        return [float(p) for p in probabilities]


def deployment_options(cfg: ServeConfig) -> dict[str, Any]:
    """serve: settings -> Ray Serve deployment options."""
    options: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": cfg.cpus_per_replica},
        "max_ongoing_requests": cfg.max_ongoing_requests,  # >= max_batch_size (checked by ServeConfig)
        "max_queued_requests": cfg.max_queued_requests,  # beyond this Serve answers 503 at once
    }
    if cfg.autoscaling:
        options["autoscaling_config"] = {"min_replicas": cfg.min_replicas, "max_replicas": cfg.max_replicas,
                                         "target_ongoing_requests": cfg.max_batch_size}  # a full batch each
    else:
        options["num_replicas"] = cfg.num_replicas
    return options


def build_app(args: ServeArgs) -> Application:
    """The Serve application for `args`: resolves the model URI here, loads it in the replicas."""
    serve_cfg, mlflow_cfg = load_serving_config(args)
    tracking_uri = args.tracking_uri or resolve_tracking_uri(mlflow_cfg)
    model_uri = resolve_model_uri(args.model_uri, serve_cfg, mlflow_cfg)
    deployment = PneumoniaService.options(**deployment_options(serve_cfg))
    return deployment.bind(model_uri, tracking_uri, dataclasses.asdict(serve_cfg))
