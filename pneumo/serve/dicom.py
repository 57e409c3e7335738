"""DICOM at the Serve endpoint: /predict's answer as a DICOM SR (?format=dicom-sr, or Accept:
application/dicom, for a DICOM upload), what the page shows of a DICOM film (modality, view position),
and a refused film's picture (a browser cannot draw DICOM, so the page shows the server's copy).

The SR is pneumo.pacs.sr's: the film's patient and study, a new series, the finding, probability and
threshold, the model, and the out-of-distribution verdict; a film the gate refuses gets an SR that
says no finding was made, and why, instead of a 422.
"""

from __future__ import annotations

import base64
import io
import json
from typing import Any, Optional

import numpy as np
import pydicom
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from pneumo.data.dicom import is_dicom
from pneumo.evaluation.explain import film_png
from pneumo.pacs.sr import FINDING_WORDS, FilmResult, build_sr, part10_bytes
from pneumo.registry.uri import FetchedModel
from pneumo.serve.inputs import RequestError, Upload, format_parameter, parse_header

SR_FORMAT, DICOM_TYPE = "dicom-sr", "application/dicom"
PREDICT_FORMATS = ("json", SR_FORMAT)  # /predict?format=
SR_KEY = "dicom_sr"  # carries the SR from the handler to the route, as explanations.OVERLAY_KEY does
FACTS = {"Modality": "modality", "ViewPosition": "view_position", "BodyPartExamined": "body_part"}  # never patient data
REFUSED_REASON = "the film does not look like a frontal chest film the model was trained on"


def wants_dicom_sr(request: Request) -> bool:
    """?format=dicom-sr, or application/dicom among the Accept header's types."""
    if request.query_params.get("format", "").lower() == SR_FORMAT:
        return True
    accepted = [parse_header(part)[0] for part in request.headers.get("accept", "").split(",") if part.strip()]
    return DICOM_TYPE in accepted


def _header(data: bytes) -> Optional[pydicom.Dataset]:
    if not is_dicom(data):
        return None
    try:
        return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    except Exception:  # pydicom raises many types for malformed headers; decoding reports those
        return None


def dicom_source(upload: Upload) -> pydicom.Dataset:
    """The uploaded film's DICOM header, or a 415 saying an SR needs a DICOM upload."""
    header = _header(upload.data)
    if header is None:
        raise RequestError(
            415,
            f"{upload.label}: an SR ({SR_FORMAT}) is made for a DICOM upload only (it lands in the film's "
            "patient and study and references the image): send the film as application/dicom",
            upload.source,
        )
    return header


def film_facts(upload: Upload) -> dict[str, Any]:
    """{"dicom": {modality, view_position, body_part}} of a DICOM upload, what the header has of them; {} otherwise."""
    header = _header(upload.data)
    facts = {name: str(header.get(keyword)) for keyword, name in FACTS.items() if header and header.get(keyword)}
    return {"dicom": facts} if facts else {}


def sr_answer(
    upload: Upload, source: pydicom.Dataset, answer: dict[str, Any], model: FetchedModel, cutoff: Optional[float]
) -> dict:
    """The SR of one answered (or refused) film, base64 under SR_KEY, and its finding; a 400 for a film
    whose header lacks what an SR must name (its study, series or instance UID)."""
    probability = answer.get("probability")
    result = FilmResult(
        probability=probability,
        threshold=answer["threshold"],
        model_name=model.name,
        model_version=model.version,
        model_uri=model.uri,
        in_distribution=answer.get("in_distribution"),
        ood_score=answer.get("ood_score"),
        ood_cutoff=cutoff,
        reason=None if probability is not None else REFUSED_REASON,
    )
    try:
        sr = build_sr(source, result)
    except ValueError as error:
        raise RequestError(400, f"{upload.label}: {error}", upload.source) from None
    return {"finding": FINDING_WORDS[result.finding.value], SR_KEY: base64.b64encode(part10_bytes(sr)).decode()}


def as_dicom(response: JSONResponse) -> Response:
    """A successful SR answer becomes the SR itself (application/dicom), the finding in X- headers;
    errors pass through as JSON."""
    if response.status_code != 200:
        return response
    body: dict[str, Any] = json.loads(response.body)
    headers = {key: value for key, value in response.headers.items() if key.lower().startswith("x-")}
    headers["X-Finding"] = body["finding"]
    if body.get("probability") is not None:
        headers["X-Probability"] = f"{body['probability']:.6f}"
    return Response(base64.b64decode(body[SR_KEY]), media_type=DICOM_TYPE, headers=headers)


class RefusedFilm(RequestError):
    """The gate's 422 with the refused film's picture (film_png, as /explain sends it) and its DICOM facts."""

    def __init__(self, refusal: RequestError, image: np.ndarray, upload: Upload):
        super().__init__(refusal.status, refusal.message, refusal.field, refusal.headers)
        self.body = {
            **refusal.to_json(),
            "film_png": base64.b64encode(film_png(image)).decode(),
            **film_facts(upload),
        }

    def to_json(self) -> dict[str, Any]:
        return self.body


SR_FORMAT_PARAMETER = format_parameter(
    PREDICT_FORMATS,
    f"{SR_FORMAT}: answer a DICOM upload with a DICOM SR (as Accept: {DICOM_TYPE} does; any other upload: 415); "
    "json: the default",
)
SR_DOC = {
    "content": {
        DICOM_TYPE: {
            "schema": {
                "type": "string",
                "format": "binary",
                "description": f"with ?format={SR_FORMAT} or Accept: {DICOM_TYPE} (a DICOM upload): a Comprehensive "
                "SR (TID 1500) in the film's study; X-Finding: present | absent | undetermined (refused film)",
            }
        }
    }
}
