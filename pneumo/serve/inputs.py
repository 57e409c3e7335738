"""Reading /predict request bodies without trusting them.

Bodies are counted while they stream in, so an upload over serve.max_body_bytes is refused before it
fills memory, whatever its Content-Length says; multipart is then parsed from that bounded body with
python-multipart (through Starlette's parser), with the file count capped.
Every refusal is a RequestError that names the field to fix; the deployment turns it into JSON.
"""

from __future__ import annotations

import email.message
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any, Optional

from fastapi import FastAPI
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from pneumo.config import ServeConfig
from pneumo.serve.security import OPEN_PATHS

RAW_IMAGE_TYPES = ("image/jpeg", "image/png", "application/dicom")  # documented; any image/* is accepted
RAW_TYPE_PREFIXES = ("image/", "application/dicom", "application/octet-stream")
SINGLE_FIELD, BATCH_FIELD = "file", "files"


class RequestError(Exception):
    """A request the endpoint refuses: HTTP status, a message saying what to fix, the field at fault."""

    def __init__(self, status: int, message: str, field: Optional[str], headers: Optional[dict[str, str]] = None):
        super().__init__(message)
        self.status, self.message, self.field = status, message, field
        self.headers = headers or {}

    def to_json(self) -> dict[str, Any]:
        return {"error": self.message, "field": self.field}


@dataclass
class Upload:
    """One image from a request: where it came from (for error messages) and its bytes."""

    source: str  # "body", "file" or "files[2]": the field named in errors
    filename: Optional[str]
    data: bytes = field(repr=False)

    @property
    def label(self) -> str:
        return f"{self.source} ({self.filename})" if self.filename else self.source


def parse_header(value: str) -> tuple[str, dict[str, str]]:
    """`multipart/form-data; boundary="x"` -> ("multipart/form-data", {"boundary": "x"}), quotes handled."""
    message = email.message.Message()
    message["content-type"] = value
    params = message.get_params() or [("", "")]
    return params[0][0].lower(), {key.lower(): str(val) for key, val in params[1:]}


async def read_body(request: Request, max_body_bytes: int) -> bytes:
    """The whole body, refused with 413 from Content-Length or as soon as the count passes the limit."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
        raise RequestError(413, f"body of {int(declared)} bytes exceeds serve.max_body_bytes={max_body_bytes}", "body")
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > max_body_bytes:
            raise RequestError(413, f"body exceeds serve.max_body_bytes={max_body_bytes}", "body")
        chunks.append(chunk)
    return b"".join(chunks)


async def parse_multipart(headers: Headers, body: bytes, max_files: int) -> list[tuple[str, Optional[str], bytes]]:
    """multipart/form-data (python-multipart, through Starlette) -> [(field name, filename, content)] in order.

    Parses the already size-checked body; more than `max_files` files is a 422 (the schema's maxItems),
    anything malformed a 400.
    """

    async def replay() -> AsyncGenerator[bytes, None]:
        yield body

    parser = MultiPartParser(headers, replay(), max_files=max_files, max_fields=100, max_part_size=len(body) + 1)
    try:
        form = await parser.parse()
    except MultiPartException as error:
        if error.message.startswith("Too many files"):
            raise RequestError(422, f"more images than serve.max_images_per_request={max_files}", BATCH_FIELD) from None
        raise RequestError(400, f"malformed multipart body: {error.message}", "body") from None
    parts = []
    for name, value in form.multi_items():
        if isinstance(value, UploadFile):
            parts.append((name, value.filename, await value.read()))
            await value.close()
        else:
            parts.append((name, None, value.encode()))
    return parts


def _require_bytes(upload: Upload) -> Upload:
    if not upload.data:
        raise RequestError(400, f"{upload.label}: empty image (0 bytes)", upload.source)
    return upload


def _unsupported_type(content_type: str, expected: str) -> RequestError:
    return RequestError(
        415, f"Content-Type {content_type or '(none)'} is not accepted: send {expected}", "content-type"
    )


async def read_image(request: Request, limits: ServeConfig) -> Upload:
    """/predict: multipart with a `file` field, or the raw image as the body (JPEG, PNG, DICOM)."""
    content_type, _ = parse_header(request.headers.get("content-type", ""))
    if content_type == "multipart/form-data":
        parts = await parse_multipart(request.headers, await read_body(request, limits.max_body_bytes), 1)
        files = [Upload(SINGLE_FIELD, filename, data) for name, filename, data in parts if name == SINGLE_FIELD]
        if len(files) != 1:
            raise RequestError(
                400,
                f"multipart upload needs exactly one `{SINGLE_FIELD}` field, got {len(files)} "
                "(several images go to /predict/batch as `files`)",
                SINGLE_FIELD,
            )
        return _require_bytes(files[0])
    if content_type.startswith(RAW_TYPE_PREFIXES):
        return _require_bytes(Upload("body", None, await read_body(request, limits.max_body_bytes)))
    raise _unsupported_type(
        content_type,
        f"multipart/form-data with a `{SINGLE_FIELD}` field, or the image as "
        f"the body with Content-Type {', '.join(RAW_IMAGE_TYPES)}",
    )


async def read_images(request: Request, limits: ServeConfig) -> list[Upload]:
    """/predict/batch: multipart with one `files` field per image, at most serve.max_images_per_request."""
    content_type, _ = parse_header(request.headers.get("content-type", ""))
    if content_type != "multipart/form-data":
        raise _unsupported_type(content_type, f"multipart/form-data with one `{BATCH_FIELD}` field per image")
    parts = await parse_multipart(
        request.headers, await read_body(request, limits.max_body_bytes), limits.max_images_per_request
    )
    files = [(filename, data) for name, filename, data in parts if name == BATCH_FIELD]
    if not files:
        raise RequestError(400, f"multipart upload has no `{BATCH_FIELD}` field", BATCH_FIELD)
    if len(files) > limits.max_images_per_request:
        raise RequestError(
            422, f"{len(files)} images exceed serve.max_images_per_request={limits.max_images_per_request}", BATCH_FIELD
        )
    return [_require_bytes(Upload(f"{BATCH_FIELD}[{i}]", filename, data)) for i, (filename, data) in enumerate(files)]


def requested_format(request: Request, formats: tuple[str, ...]) -> str:
    """The route's ?format=, one of `formats` (the first when absent); anything else is a 400 naming `format`."""
    value = request.query_params.get("format", formats[0]).lower()
    if value not in formats:
        raise RequestError(400, f"format={value!r} is not one of {', '.join(formats)}", "format")
    return value


def format_parameter(formats: tuple[str, ...], description: str) -> dict[str, Any]:
    """The OpenAPI description of a route's ?format= (requested_format reads it)."""
    schema = {"type": "string", "enum": list(formats)}
    return {"name": "format", "in": "query", "required": False, "schema": schema, "description": description}


def _binary(description: str) -> dict[str, Any]:
    return {"type": "string", "format": "binary", "minLength": 1, "description": description}


IMAGE_PARTS = {"contentType": ", ".join(RAW_IMAGE_TYPES)}  # what a multipart file part should carry


def _upload_doc(field: str, schema: dict[str, Any], raw_body: bool) -> dict[str, Any]:
    """An OpenAPI requestBody: multipart with the required `field`, and the raw image types if `raw_body`."""
    multipart = {
        "schema": {"type": "object", "required": [field], "properties": {field: schema}},
        "encoding": {field: IMAGE_PARTS},
    }
    raw = {kind: {"schema": _binary("the image itself")} for kind in RAW_IMAGE_TYPES} if raw_body else {}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": multipart, **raw}}}


SINGLE_UPLOAD_DOC = _upload_doc(SINGLE_FIELD, _binary("one JPEG, PNG or DICOM file"), raw_body=True)
BATCH_UPLOAD_DOC = _upload_doc(
    BATCH_FIELD,
    {
        "type": "array",
        "minItems": 1,
        "maxItems": ServeConfig.max_images_per_request,
        "items": _binary("a JPEG, PNG or DICOM file"),
        "description": "one part per image, at most serve.max_images_per_request (more: 422)",
    },
    raw_body=False,
)
BEARER_SCHEME = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "serve.auth_token_env / auth_token_file"}
}


def document_limits(openapi: dict[str, Any], limits: ServeConfig, authenticated: bool) -> dict[str, Any]:
    """FastAPI's schema made true for one deployment: its serve.max_images_per_request, and — when a
    token is required — the bearer scheme on every operation the token guards (security.OPEN_PATHS stay open)."""
    batch = openapi["paths"].get("/predict/batch", {}).get("post")
    if batch:
        files = batch["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"][BATCH_FIELD]
        files["maxItems"] = limits.max_images_per_request
    if authenticated:
        openapi.setdefault("components", {}).setdefault("securitySchemes", {}).update(BEARER_SCHEME)
    for path, operations in openapi["paths"].items():
        for operation in operations.values():
            if authenticated and path not in OPEN_PATHS:
                operation["security"] = [{"bearer": []}]
                operation["responses"].setdefault(
                    "401",
                    {
                        "description": "missing or invalid bearer token",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
                    },
                )
            else:
                operation.pop("security", None)
    return openapi


_deployment = {"limits": ServeConfig(), "authenticated": False}  # this replica's (one Serve replica per process)


def describe_deployment(limits: ServeConfig, authenticated: bool) -> None:
    """Record the replica's serve: limits and whether it requires a token, for its OpenAPI schema."""
    _deployment.update(limits=limits, authenticated=authenticated)


def deployment_openapi(app: FastAPI) -> dict[str, Any]:
    """What /openapi.json serves: FastAPI's schema of `app` with this deployment's limits and auth."""
    return document_limits(FastAPI.openapi(app), **_deployment)
