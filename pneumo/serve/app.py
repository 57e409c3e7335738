"""The Ray Serve deployment: HTTP routes over the champion (and challenger) loaded in the background.

Concurrent requests share model calls through the adaptive batcher (batching.py); decoding and
inference run in worker threads so the event loop keeps answering health checks. Request parsing
lives in inputs.py, the response schemas in schemas.py, loading in loader.py, which version answers
in versions.py; builder.py turns config into this deployment.

Status codes, each error a JSON {"error", "field"}: 400 for an image that cannot be used (empty, not
an image, truncated, over serve.max_image_pixels) or a malformed multipart body; 413 for a body over
serve.max_body_bytes or more than serve.max_images_per_request images; 415 for a Content-Type other
than multipart/form-data, image/* or application/dicom; 503 while the model loads or after its load
failed (/readyz says why); 404 for a version (X-Model-Version header or ?version=) that is not
served. Every answer names its version (model_version, model_role, X-Model-Version). Serve itself answers 503 once serve.max_queued_requests are waiting.
"""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Optional

import numpy as np
import torch
from fastapi import FastAPI
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from pneumo.config import ServeConfig
from pneumo.data.folder import CLASS_NAMES
from pneumo.data.transforms import ImageDecodeError, decode_image
from pneumo.registry.uri import FetchedModel
from pneumo.serve.audit import AuditLog
from pneumo.serve.batching import AdaptiveBatcher
from pneumo.serve.dicom import (
    PREDICT_FORMATS,
    SR_DOC,
    SR_FORMAT_PARAMETER,
    RefusedFilm,
    as_dicom,
    dicom_source,
    film_facts,
    sr_answer,
    wants_dicom_sr,
)
from pneumo.serve.explanations import (
    EXPLAIN_FORMAT_PARAMETER,
    EXPLAIN_FORMATS,
    EXPLAIN_PNG_DOC,
    ExplainerCache,
    Explanation,
    as_png,
    explain_image,
)
from pneumo.serve.inputs import (
    BATCH_UPLOAD_DOC,
    SINGLE_UPLOAD_DOC,
    RequestError,
    Upload,
    deployment_openapi,
    describe_deployment,
    read_image,
    read_images,
    requested_format,
)
from pneumo.serve.loader import ServedModel
from pneumo.serve.monitor import GateResult, OutOfDistribution, ServeMonitor
from pneumo.serve.page import page_file
from pneumo.serve.prometheus import ServeMetrics
from pneumo.serve.schemas import ERROR_DOCS, BatchPrediction, ErrorBody, Prediction
from pneumo.serve.security import BearerAuthMiddleware, protect
from pneumo.serve.versions import ANSWER_HEADERS, CHAMPION, VERSION_HEADER, VERSION_PARAMETERS, ServedVersions

logger = logging.getLogger(__name__)


def _verdict(probability: float, model: FetchedModel) -> dict[str, Any]:
    threshold = model.loaded.meta.decision_threshold
    return {"probability": probability, "label": CLASS_NAMES[int(probability >= threshold)]}


def _identity(model: FetchedModel) -> dict[str, Any]:
    return {"threshold": model.loaded.meta.decision_threshold, "model_name": model.name, "model_version": model.version}


def _elapsed_ms(started: float) -> float:
    return round(1000 * (time.perf_counter() - started), 3)


api = FastAPI(
    title="pneumo",
    description="P(pneumonia) for chest X-rays: JPEG, PNG or DICOM in, JSON out. "
    'Errors are {"error", "field"}: 400 a file that cannot be decoded as an image (a one-byte file, a '
    "truncated JPEG); 413 a body over serve.max_body_bytes; 415 a wrong Content-Type; 422 more files than "
    "the schema's maxItems, or a decodable image the out-of-distribution gate refuses (not a frontal chest "
    "film: a 1x1 PNG, a CT slice, a photo) under serve.ood_policy=reject; 503 model not ready.",
)
api.add_middleware(BearerAuthMiddleware)  # bearer token on every route but the probes and docs (security.py)


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
        self.metrics = ServeMetrics()
        self.versions = ServedVersions(model_uri, tracking_uri, self.settings)  # champion (+ challenger)
        self.loader = self.versions.champion
        self.monitor = ServeMonitor(self.settings, lambda: self.loader.model)  # OOD gate and drift (monitor.py)
        self.batcher = AdaptiveBatcher(
            self._score_and_gate,
            self.settings.max_batch_size,  # one for all versions
            self.settings.batch_wait_timeout_s,
            self.metrics.batch_size.observe,
        )
        self._shadow_tasks: set[asyncio.Task] = set()  # held so they are not garbage-collected mid-flight
        self.explainers = ExplainerCache()  # the maps of /explain, built on first use (explanations.py)

    @api.get("/", include_in_schema=False)
    def page(self) -> Response:
        """The web page for people who read films (page.py): upload, P(pneumonia), heatmap."""
        return page_file("index.html")

    @api.get("/page/{name}", include_in_schema=False)
    def page_asset(self, name: str) -> Response:
        return page_file(name)

    @api.get("/healthz")
    def healthz(self) -> dict[str, bool]:
        """The replica is alive (it may still be loading: see /readyz)."""
        return {"ok": True}

    @api.get("/readyz", responses={503: {"description": "model not loaded yet, or its load failed (see error)"}})
    def readyz(self) -> JSONResponse:
        """200 once the model is loaded; 503 with the state and the last error before that."""
        status = {**self.loader.status(), "monitoring": self.monitor.status(self.loader.model)}
        return JSONResponse(status, status_code=200 if status["ready"] else 503)

    @api.get("/model", responses={503: {"model": ErrorBody}})
    async def model_info(self) -> JSONResponse:
        """Name, version, registered metrics, preprocessing and decision threshold of the served model."""
        return await self._answer("model", self._describe)

    @api.get("/monitoring", responses={503: {"model": ErrorBody}})
    async def monitoring(self) -> JSONResponse:
        """This replica's window of recent inputs against the model's reference: drift, OOD rate, tests."""
        replica = serve.get_replica_context().replica_id.unique_id
        return await self._answer(
            "monitoring", lambda started: asyncio.to_thread(self.monitor.report, self._loaded_model(), replica)
        )

    @api.get("/versions")
    def served_versions(self) -> dict[str, dict]:
        """Each served role (champion, challenger): its loader state, version, runtime and model."""
        return self.versions.describe()

    @api.post(
        "/predict",
        response_model=Prediction,
        responses={**ERROR_DOCS, 200: {**SR_DOC, "headers": ANSWER_HEADERS}},
        openapi_extra={**SINGLE_UPLOAD_DOC, "parameters": [*VERSION_PARAMETERS, SR_FORMAT_PARAMETER]},
    )
    async def predict(self, request: Request) -> Response:
        """One image: multipart field `file`, or the raw body (image/jpeg, image/png, application/dicom).
        A DICOM film with ?format=dicom-sr or Accept: application/dicom: the answer as a DICOM SR (dicom.py)."""
        if wants_dicom_sr(request):
            return as_dicom(await self._answer("predict", lambda started: self._predict_sr(request, started)))
        return await self._answer("predict", lambda started: self._predict_one(request, started))

    @api.post(
        "/predict/batch",
        response_model=BatchPrediction,
        responses={**ERROR_DOCS, 200: {"headers": ANSWER_HEADERS}},
        openapi_extra={**BATCH_UPLOAD_DOC, "parameters": VERSION_PARAMETERS},
    )
    async def predict_batch(self, request: Request) -> JSONResponse:
        """Several images in one multipart request, one `files` field each."""
        return await self._answer("predict_batch", lambda started: self._predict_many(request, started))

    @api.post(
        "/explain",
        response_model=Explanation,
        openapi_extra={**SINGLE_UPLOAD_DOC, "parameters": [*VERSION_PARAMETERS, EXPLAIN_FORMAT_PARAMETER]},
        responses={**ERROR_DOCS, 200: {**EXPLAIN_PNG_DOC, "headers": ANSWER_HEADERS}, 501: {"model": ErrorBody}},
    )
    async def explain(self, request: Request) -> Response:
        """/predict's inputs, refusals and answer, plus where the model looked: a map as a base64
        PNG (heatmap_png), or with ?format=png the film with the map over it (prediction in X- headers)."""
        return as_png(await self._answer("explain", lambda started: self._explain_one(request, started)))

    async def _explain_one(self, request: Request, started: float) -> dict[str, Any]:
        fmt = requested_format(request, EXPLAIN_FORMATS)
        try:
            answer, served, image = await self._predict_image(request, started)
        except OutOfDistribution as refusal:  # the page still shows the refused film: a browser cannot draw DICOM
            raise RefusedFilm(refusal, refusal.image, refusal.upload) from None
        explainer = await asyncio.to_thread(self.explainers.get, served.fetched.loaded)
        explained = await asyncio.to_thread(explain_image, explainer, image, answer, fmt)
        return {**explained, "time_ms": _elapsed_ms(started)}

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
        if "model_version" in body:  # every answer names the version that produced it
            headers[VERSION_HEADER] = str(body["model_version"])
        return JSONResponse(body, status_code=status, headers=headers)

    def _loaded_model(self) -> FetchedModel:
        return self.versions.loaded_champion().fetched

    async def _decode(self, upload: Upload, model: FetchedModel) -> np.ndarray:
        try:
            return await asyncio.to_thread(
                decode_image, upload.data, model.loaded.meta.preprocessing_spec, self.settings.max_image_pixels
            )
        except ImageDecodeError as error:
            raise RequestError(400, f"{upload.label}: {error}", upload.source) from None

    async def _describe(self, started: float) -> dict[str, Any]:
        model = self._loaded_model()
        return {**model.describe(), "monitoring": self.monitor.status(model)}

    async def _predict_one(self, request: Request, started: float) -> dict[str, Any]:
        requested_format(request, PREDICT_FORMATS)
        return (await self._predict_image(request, started))[0]

    async def _predict_sr(self, request: Request, started: float) -> dict[str, Any]:
        """/predict for a DICOM film, as an SR in its study; a film the gate refuses gets an SR saying so."""
        upload = await read_image(request, self.settings)
        source = dicom_source(upload)  # 415 for anything but DICOM
        try:
            answer, served, _ = await self._predict_image(request, started, upload)
        except OutOfDistribution as refusal:
            served = refusal.served
            answer = {**self.monitor.refusal(refusal.gate), **_identity(served.fetched), **refusal.gate.fields()}
            self.audit.record(request, [upload.data], answer)
        cutoff = self.monitor.status(served.fetched)["ood_gate"].get("cutoff")
        return {**answer, **await asyncio.to_thread(sr_answer, upload, source, answer, served.fetched, cutoff)}

    async def _predict_image(
        self, request: Request, started: float, upload: Optional[Upload] = None
    ) -> tuple[dict[str, Any], ServedModel, np.ndarray]:
        """/predict's work: its answer, the version that gave it and the decoded image (/explain maps it)."""
        role, served = self.versions.choose(request)
        model = served.fetched
        upload = upload or await read_image(request, self.settings)
        image = await self._decode(upload, model)
        probability, gate = await self.batcher.submit((served, image, role == CHAMPION))
        try:
            self.monitor.enforce(gate, upload)  # 422 under serve.ood_policy reject
        except OutOfDistribution as refusal:  # what /explain and the SR of a refusal still need
            refusal.served, refusal.image, refusal.upload = served, image, upload
            raise
        self._shadow(role, served, [image], [probability])
        self.versions.metrics.record(role, served, probability, time.perf_counter() - started)
        answer = {
            **_verdict(probability, model),
            **_identity(model),
            "model_role": role,
            "time_ms": _elapsed_ms(started),
            **gate.fields(),
            **film_facts(upload),  # a DICOM film's modality and view position, for the page
        }
        self.audit.record(request, [upload.data], answer)
        return answer, served, image

    async def _predict_many(self, request: Request, started: float) -> dict[str, Any]:
        role, served = self.versions.choose(request)
        model = served.fetched
        uploads = await read_images(request, self.settings)
        images = await asyncio.gather(*(self._decode(upload, model) for upload in uploads))
        scored = await asyncio.gather(*(self.batcher.submit((served, image, role == CHAMPION)) for image in images))
        answered = [(image, p) for image, (p, gate) in zip(images, scored) if not self.monitor.refuses(gate)]
        self._shadow(role, served, [image for image, _ in answered], [p for _, p in answered])
        for _, probability in answered:
            self.versions.metrics.record(role, served, probability, time.perf_counter() - started)
        predictions = [
            {
                "filename": upload.filename,
                **gate.fields(),
                **(self.monitor.refusal(gate) if self.monitor.refuses(gate) else _verdict(probability, model)),
            }
            for upload, (probability, gate) in zip(uploads, scored)
        ]
        answer = {"predictions": predictions, **_identity(model), "model_role": role, "time_ms": _elapsed_ms(started)}
        self.audit.record(request, [upload.data for upload in uploads], answer)
        return answer

    def _shadow(self, role: str, served: ServedModel, images: list[np.ndarray], probabilities: list[float]) -> None:
        """serve.shadow: score the same images on the challenger after answering; only metrics see it."""
        challenger = self.versions.shadow_of(role)
        if challenger is None:
            return
        task = asyncio.create_task(self._compare_on(challenger, served, images, probabilities))
        self._shadow_tasks.add(task)
        task.add_done_callback(self._shadow_tasks.discard)

    async def _compare_on(
        self, challenger: ServedModel, champion: ServedModel, images: list[np.ndarray], probabilities: list[float]
    ) -> None:
        started = time.perf_counter()
        shadow = await asyncio.gather(*(self.batcher.submit((challenger, image, False)) for image in images))
        for ours, (theirs, _) in zip(probabilities, shadow):
            self.versions.metrics.record("shadow", challenger, theirs, time.perf_counter() - started)
            self.versions.metrics.record_shadow(
                _verdict(ours, champion.fetched)["label"] == _verdict(theirs, challenger.fetched)["label"]
            )

    def _score_and_gate(self, items: list[tuple[ServedModel, np.ndarray, bool]]) -> list[tuple[float, GateResult]]:
        """(version, image, whether it goes in the drift window) from concurrent requests -> (P(pneumonia),
        the gate's verdict) each, run by the batcher (batching.py) in its thread: one pass per version
        gives both the probability and the features the gate reads."""
        answers: list[Optional[tuple[float, GateResult]]] = [None] * len(items)
        for served in {id(served): served for served, _, _ in items}.values():
            rows = [i for i, (owner, _, _) in enumerate(items) if owner is served]
            images = np.stack([items[i][1] for i in rows])
            probabilities, outputs = served.score(images)
            gates = self.monitor.check(served.fetched, images, outputs, np.array([items[i][2] for i in rows]))
            for row, probability, gate in zip(rows, probabilities, gates):
                answers[row] = (float(probability), gate)
        return answers
