"""POST /explain and the page at / on the real Serve app (conftest's serve_app: the smoke model over HTTP)."""

import base64
import io
import re

import numpy as np
import pytest
import requests
from conftest import SERVE_LIMITS
from PIL import Image

from pneumo.models.checkpoints import load_checkpoint
from pneumo.serve.page import PAGE_FILES

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def film(synthetic_root) -> bytes:
    return sorted((synthetic_root / "test" / "PNEUMONIA").glob("*.jpeg"))[0].read_bytes()


def same_error(body: dict) -> dict:
    """The error without object addresses (PIL names its BytesIO object in some messages)."""
    return {**body, "error": re.sub(r" at 0x[0-9a-f]+", "", body["error"])}


def decode_png(encoded: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(encoded)))


def test_explain_answers_the_prediction_and_its_map(serve_app, film):
    predicted = requests.post(f"{serve_app.url}/predict", files={"file": ("a.jpeg", film)}, timeout=60).json()
    response = requests.post(f"{serve_app.url}/explain", files={"file": ("a.jpeg", film)}, timeout=60)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["probability"] == pytest.approx(predicted["probability"], abs=1e-6)
    for key in ("label", "threshold", "model_name", "model_version"):
        assert body[key] == predicted[key]
    size = load_checkpoint(serve_app.checkpoint).meta.preprocessing_spec.image_size
    heatmap, seen = decode_png(body["heatmap_png"]), decode_png(body["film_png"])
    assert heatmap.mode == "RGBA" and heatmap.size == (size, size)
    assert seen.mode == "L" and seen.size == (size, size)
    assert (body["method"], body["explained_class"]) == ("grad-cam x gradient", "PNEUMONIA")
    assert body["target_layer"].startswith("layer") and body["time_ms"] > 0


def test_explain_as_png_is_the_overlay_with_the_prediction_in_headers(serve_app, film):
    response = requests.post(
        f"{serve_app.url}/explain?format=png", data=film, headers={"Content-Type": "image/jpeg"}, timeout=60
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    overlay = Image.open(io.BytesIO(response.content))
    assert overlay.mode == "RGB" and overlay.width >= 320
    assert 0 <= float(response.headers["x-probability"]) <= 1
    assert response.headers["x-label"] in ("NORMAL", "PNEUMONIA")
    assert response.headers["x-model-version"] == "1"


@pytest.mark.parametrize("case", ["empty", "garbage", "truncated", "content-type", "too large", "two files"])
def test_explain_refuses_what_predict_refuses_the_same_way(serve_app, film, case):
    """Each bad request gets the identical status, message and field from both routes."""

    def send(path: str) -> requests.Response:
        url = f"{serve_app.url}{path}"
        if case == "empty":
            return requests.post(url, data=b"", headers={"Content-Type": "image/png"}, timeout=60)
        if case == "garbage":
            return requests.post(url, files={"file": ("notes.png", b"these are not pixels" * 10)}, timeout=60)
        if case == "truncated":
            return requests.post(url, files={"file": ("cut.jpeg", film[: len(film) // 3])}, timeout=60)
        if case == "content-type":
            return requests.post(url, data=film, headers={"Content-Type": "text/plain"}, timeout=60)
        if case == "too large":
            big = b"\0" * (SERVE_LIMITS["max_body_bytes"] + 1)
            return requests.post(url, data=big, headers={"Content-Type": "image/png"}, timeout=60)
        return requests.post(url, files=[("file", ("a.jpeg", film)), ("file", ("b.jpeg", film))], timeout=60)

    predicted, explained = send("/predict"), send("/explain")
    assert predicted.status_code >= 400
    assert explained.status_code == predicted.status_code
    assert same_error(explained.json()) == same_error(predicted.json())


def test_explain_names_a_bad_format(serve_app, film):
    response = requests.post(f"{serve_app.url}/explain?format=gif", files={"file": ("a.jpeg", film)}, timeout=60)
    assert response.status_code == 400 and response.json()["field"] == "format"


def test_explain_is_documented_in_openapi(serve_app):
    schema = requests.get(f"{serve_app.url}/openapi.json", timeout=30).json()
    explain = schema["paths"]["/explain"]["post"]
    assert {"application/json", "image/png"} <= set(explain["responses"]["200"]["content"])
    assert "/" not in schema["paths"]  # the page is not an API


def test_the_page_and_its_assets_are_served_with_nothing_from_elsewhere(serve_app):
    page = requests.get(f"{serve_app.url}/", timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "Not for diagnostic use" in page.text
    for name in PAGE_FILES:
        asset = requests.get(f"{serve_app.url}/page/{name}", timeout=30)
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(PAGE_FILES[name].split(";")[0])
        assert not re.search(r"(src|href)=\"(https?:)?//|@import|https?://", asset.text), name
    missing = requests.get(f"{serve_app.url}/page/secrets.txt", timeout=30)
    assert missing.status_code == 404 and missing.json()["field"] == "path"


def test_maps_of_one_film_are_repeatable(serve_app, film):
    first, second = (
        requests.post(f"{serve_app.url}/explain", files={"file": ("a.jpeg", film)}, timeout=60).json() for _ in range(2)
    )
    a, b = (np.asarray(decode_png(body["heatmap_png"])) for body in (first, second))
    assert np.array_equal(a, b)
