"""The real Serve app over real HTTP, serving the model the session's smoke `pneumo run` trained.

Readiness is tested honestly: the `serve_app` fixture (conftest) starts the app on
`models:/serve-test@champion` of an empty registry, so /readyz must answer 503 (the loader keeps
retrying) until the model is registered.
"""

import asyncio
import importlib.util
import io
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pydicom.data
import pytest
import requests
import torch
from conftest import SERVE_LIMITS, SERVED_MODEL_NAME, png_bytes, wait_for_state
from PIL import Image
from starlette.datastructures import Headers

from pneumo.config import ConfigError, MlflowConfig, ServeConfig, load_config
from pneumo.data.transforms import decode_image
from pneumo.evaluation.prediction import predict_probabilities
from pneumo.models.checkpoints import load_checkpoint
from pneumo.registry.uri import fetch_model, resolve_model_uri
from pneumo.serve.inputs import RequestError, parse_multipart

REPO = Path(__file__).resolve().parents[1]
MAX_BODY_BYTES = SERVE_LIMITS["max_body_bytes"]
MAX_IMAGES = SERVE_LIMITS["max_images_per_request"]


@pytest.fixture(scope="module")
def images(synthetic_root) -> dict[str, bytes]:
    """Test-split JPEGs plus the modes that trip decoders: 16-bit, palette, RGBA, and a DICOM."""
    files = sorted((synthetic_root / "test").glob("*/*.jpeg"))[:6]
    found = {f.name: f.read_bytes() for f in files}
    film = Image.open(io.BytesIO(found[files[0].name])).convert("L")
    found["film16.png"] = png_bytes(Image.fromarray(np.asarray(film).astype(np.uint16) * 257))
    found["palette.png"] = png_bytes(film.convert("P"))
    found["rgba.png"] = png_bytes(film.convert("RGBA"))
    found["ct.dcm"] = Path(pydicom.data.get_testdata_file("CT_small.dcm")).read_bytes()
    return found


def offline_probability(checkpoint: Path, data: bytes) -> float:
    loaded = load_checkpoint(checkpoint)
    spec = loaded.meta.preprocessing_spec
    return float(predict_probabilities(loaded, torch.from_numpy(np.stack([decode_image(data, spec)])))[0])


def post_raw(url: str, data: bytes, content_type: str = "image/png", path: str = "/predict") -> requests.Response:
    return requests.post(f"{url}{path}", data=data, headers={"Content-Type": content_type}, timeout=30)


@pytest.mark.slow
def test_readyz_is_503_until_the_model_exists(serve_app):
    readyz, predict = serve_app.before_registration["readyz"], serve_app.before_registration["predict"]
    assert readyz.status_code == 503
    assert readyz.json()["ready"] is False and "not found" in readyz.json()["error"]
    assert predict.status_code == 503 and predict.json()["field"] == "model"
    assert requests.get(f"{serve_app.url}/readyz", timeout=10).json()["ready"] is True
    assert requests.get(f"{serve_app.url}/healthz", timeout=10).json() == {"ok": True}


@pytest.mark.slow
def test_model_endpoint_describes_the_registered_champion(serve_app):
    info = requests.get(f"{serve_app.url}/model", timeout=10).json()
    meta = load_checkpoint(serve_app.checkpoint).meta
    assert (info["name"], info["version"], info["uri"]) == (SERVED_MODEL_NAME, "1", f"models:/{SERVED_MODEL_NAME}/1")
    assert info["metrics"]["test_auroc"] == pytest.approx(serve_app.metrics["test_auroc"], abs=1e-5)
    assert info["decision_threshold"] == pytest.approx(meta.decision_threshold)
    assert meta.temperature != 1.0, "fitted on val by pneumo run: a server that ignored it would differ"
    assert (info["temperature"], info["logit_bias"]) == (
        pytest.approx(meta.temperature),
        pytest.approx(meta.logit_bias),
    )
    assert info["preprocessing"]["image_size"] == 48 and info["preprocessing"]["in_chans"] == 1


@pytest.mark.slow
@pytest.mark.parametrize("how", ["multipart", "raw"])
def test_predictions_match_offline_predictions_of_the_checkpoint(serve_app, images, how):
    for name, data in images.items():
        if how == "multipart":
            response = requests.post(f"{serve_app.url}/predict", files={"file": (name, data)}, timeout=30)
        else:
            response = post_raw(serve_app.url, data, "application/dicom" if name.endswith(".dcm") else "image/png")
        assert response.status_code == 200, (name, response.text)
        body = response.json()
        expected = offline_probability(serve_app.checkpoint, data)
        assert body["probability"] == pytest.approx(expected, abs=1e-5), name
        assert body["label"] == ("PNEUMONIA" if expected >= body["threshold"] else "NORMAL")
        assert (body["model_name"], body["model_version"]) == (SERVED_MODEL_NAME, "1") and body["time_ms"] > 0


@pytest.mark.slow
def test_batch_endpoint_and_concurrent_requests_give_the_same_answers(serve_app, images):
    names = list(images)[:MAX_IMAGES]
    files = [("files", (name, images[name])) for name in names]
    batch = requests.post(f"{serve_app.url}/predict/batch", files=files, timeout=30)
    assert batch.status_code == 200, batch.text
    by_name = {p["filename"]: p["probability"] for p in batch.json()["predictions"]}
    assert list(by_name) == names
    with ThreadPoolExecutor(6) as pool:  # at once, within the queue limits: batching mixes them into model calls
        answers = list(pool.map(lambda name: (name, post_raw(serve_app.url, images[name])), names * 4))
    for name, response in answers:
        assert response.status_code == 200
        assert response.json()["probability"] == pytest.approx(by_name[name], abs=1e-5)


def bomb() -> bytes:
    """Tiny file, 2000x2000 pixels: over the test's serve.max_image_pixels."""
    return png_bytes(Image.new("L", (2000, 2000)))


def chunks(data: bytes):
    yield from (data[i : i + 65536] for i in range(0, len(data), 65536))


BAD_INPUTS = {  # case -> (request kwargs, status, field, words in the error)
    "empty body": (dict(data=b"", headers={"Content-Type": "image/png"}), 400, "body", "empty"),
    "not an image": (
        dict(data=b"hello, world" * 20, headers={"Content-Type": "image/jpeg"}),
        400,
        "body",
        "not a readable image",
    ),
    "wrong content type": (
        dict(data=b"{}", headers={"Content-Type": "application/json"}),
        415,
        "content-type",
        "not accepted",
    ),
    "too large (Content-Length)": (
        dict(data=bytes(MAX_BODY_BYTES + 1), headers={"Content-Type": "image/png"}),
        413,
        "body",
        "max_body_bytes",
    ),
    "too large (chunked)": (
        dict(data=chunks(bytes(MAX_BODY_BYTES + 1)), headers={"Content-Type": "image/png"}),
        413,
        "body",
        "max_body_bytes",
    ),
    "decompression bomb": (dict(data=bomb(), headers={"Content-Type": "image/png"}), 400, "body", "exceeds the limit"),
    "multipart without file": (dict(files={"image": ("x.png", b"123")}), 400, "file", "exactly one `file`"),
    "unknown format": (
        dict(params={"format": "gif"}, data=b"", headers={"Content-Type": "image/png"}),
        400,
        "format",
        "not one of json, dicom-sr",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gets_a_json_4xx_and_the_server_keeps_serving(serve_app, images, case):
    kwargs, status, field, words = BAD_INPUTS[case]
    response = requests.post(f"{serve_app.url}/predict", timeout=30, **kwargs)
    assert response.status_code == status, response.text
    assert response.json()["field"] == field and words in response.json()["error"]
    assert post_raw(serve_app.url, images["rgba.png"]).status_code == 200


@pytest.mark.slow
def test_truncated_image_and_oversized_batch_are_refused(serve_app, images):
    jpeg = next(data for name, data in images.items() if name.endswith(".jpeg"))
    truncated = post_raw(serve_app.url, jpeg[: len(jpeg) // 2], "image/jpeg")
    assert truncated.status_code == 400 and "truncated" in truncated.json()["error"]
    files = [("files", (f"{i}.jpeg", jpeg)) for i in range(MAX_IMAGES + 1)]
    too_many = requests.post(f"{serve_app.url}/predict/batch", files=files, timeout=30)
    assert too_many.status_code == 422 and too_many.json()["field"] == "files", "the schema's maxItems: 422"
    one_bad = requests.post(
        f"{serve_app.url}/predict/batch",
        timeout=30,
        files=[("files", ("ok.jpeg", jpeg)), ("files", ("bad.jpeg", b"nope"))],
    )
    assert one_bad.status_code == 400 and one_bad.json()["field"] == "files[1]"
    assert "bad.jpeg" in one_bad.json()["error"]
    assert post_raw(serve_app.url, jpeg, "image/jpeg").status_code == 200


@pytest.mark.slow
def test_overload_answers_503_quickly_then_recovers(serve_app, images):
    """8 ongoing + 8 queued per the test config: a burst of 48 batch requests overflows the queue."""
    jpeg = next(data for name, data in images.items() if name.endswith(".jpeg"))
    files = [("files", (f"{i}.jpeg", jpeg)) for i in range(MAX_IMAGES)]

    def call(_):
        started = time.monotonic()
        response = requests.post(f"{serve_app.url}/predict/batch", files=files, timeout=60)
        return response.status_code, time.monotonic() - started

    with ThreadPoolExecutor(48) as pool:
        results = list(pool.map(call, range(48)))
    rejected = [seconds for status, seconds in results if status == 503]
    assert rejected and all(status in (200, 503) for status, _ in results)
    assert max(rejected) < 5
    assert post_raw(serve_app.url, jpeg, "image/jpeg").status_code == 200


def metric_total(text: str, series: str, **labels: str) -> float:
    """Sum of a Prometheus series over the lines carrying `labels` (Ray prefixes names with ray_)."""
    pattern = rf"^ray_{series}\{{([^}}]*)\}} (\S+)$"
    return sum(
        float(value)
        for tags, value in re.findall(pattern, text, re.MULTILINE)
        if all(f'{key}="{val}"' in tags for key, val in labels.items())
    )


@pytest.mark.slow
def test_metrics_reach_prometheus(serve_app, images):
    """Requests, errors, latency and batch sizes appear on the node's Prometheus endpoint."""
    import ray

    jpeg = next(data for name, data in images.items() if name.endswith(".jpeg"))
    files = [("files", (f"{i}.jpeg", jpeg)) for i in range(MAX_IMAGES)]
    assert requests.post(f"{serve_app.url}/predict/batch", files=files, timeout=30).status_code == 200
    assert post_raw(serve_app.url, bytes(MAX_BODY_BYTES + 1)).status_code == 413
    url = f"http://127.0.0.1:{ray.nodes()[0]['MetricsExportPort']}/metrics"
    deadline = time.monotonic() + 40
    while True:  # replicas push metrics every few seconds
        text = requests.get(url, timeout=10).text
        sizes = metric_total(text, "pneumo_batch_size_sum"), metric_total(text, "pneumo_batch_size_count")
        if (
            metric_total(text, "pneumo_requests_total", endpoint="predict_batch", status="200")
            and metric_total(text, "pneumo_request_errors_total", endpoint="predict", status="413")
            and metric_total(text, "pneumo_request_latency_ms_count", endpoint="predict")
            and sizes[0] > sizes[1] > 0
        ):  # the batch request's images shared a model call
            return
        assert time.monotonic() < deadline, "\n".join(line for line in text.splitlines() if "pneumo_" in line)
        time.sleep(1)


@pytest.mark.slow
def test_a_broken_checkpoint_is_reported_by_readyz_and_the_replica_stays_up(serve_app, images, tmp_path):
    from ray import serve

    from pneumo.serve.builder import ServeArgs, build_app

    (tmp_path / "model.safetensors").write_bytes(b"not weights")
    serve.run(
        build_app(ServeArgs(model_uri=str(tmp_path), config=[str(serve_app.yaml)])),
        name="broken",
        route_prefix="/broken",
    )
    url = f"{serve_app.url}/broken"
    readyz = wait_for_state(url, "ready", "failed")
    assert readyz.status_code == 503 and readyz.json()["state"] == "failed"
    assert "pneumo.json is missing" in readyz.json()["error"]
    assert requests.get(f"{url}/healthz", timeout=10).status_code == 200
    assert post_raw(url, images["rgba.png"]).status_code == 503
    serve.delete("broken")


def test_multipart_parser_returns_the_exact_bytes():
    payload = bytes(range(256)) * 4 + b"\r\n--\r\n\r\n"  # line breaks and dashes inside the file
    prepared = requests.Request(
        "POST",
        "http://127.0.0.1/",
        data={"note": "hi"},
        files=[("files", ("a.bin", payload)), ("files", ("b.bin", b""))],
    ).prepare()
    headers = Headers({"content-type": prepared.headers["Content-Type"]})
    parts = asyncio.run(parse_multipart(headers, prepared.body, max_files=2))
    assert parts == [("note", None, b"hi"), ("files", "a.bin", payload), ("files", "b.bin", b"")]
    with pytest.raises(RequestError) as too_many:
        asyncio.run(parse_multipart(headers, prepared.body, max_files=1))
    assert too_many.value.status == 422
    with pytest.raises(RequestError, match="malformed multipart"):
        asyncio.run(parse_multipart(Headers({"content-type": "multipart/form-data"}), prepared.body, max_files=2))


def test_model_uri_resolution_order(tmp_path):
    serve_cfg, mlflow_cfg = ServeConfig(), MlflowConfig(registered_model_name="chest")
    assert resolve_model_uri(None, serve_cfg, mlflow_cfg, environ={}) == "models:/chest@champion"
    serve_cfg.model_uri = "runs:/abc/model"
    assert resolve_model_uri(None, serve_cfg, mlflow_cfg, environ={}) == "runs:/abc/model"
    env = {"PNEUMO_MODEL_URI": "models:/chest/3"}
    assert resolve_model_uri(None, serve_cfg, mlflow_cfg, environ=env) == "models:/chest/3"
    assert resolve_model_uri(str(tmp_path), serve_cfg, mlflow_cfg, environ=env) == str(tmp_path.resolve())
    with pytest.raises(ConfigError, match="no such checkpoint folder"):
        resolve_model_uri(str(tmp_path / "missing"), serve_cfg, mlflow_cfg, environ={})


def test_loader_waits_for_an_alias_that_is_not_set_yet(mlflow_uri):
    """A registered model without @champion (only challengers so far) is 'not yet', not a failure."""
    from mlflow.tracking import MlflowClient

    from pneumo.serve.loader import ModelLoader

    MlflowClient(mlflow_uri).create_registered_model("chest")
    loader = ModelLoader("models:/chest@champion", mlflow_uri)
    deadline = time.monotonic() + 30
    while loader.state == "loading" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert loader.status()["state"] == "waiting" and "no @champion version yet" in loader.status()["error"]


@pytest.mark.slow
def test_run_and_folder_uris_load_the_same_weights(serve_app):
    """runs:/RUN_ID/model downloads the logged checkpoint; a folder loads in place."""
    from mlflow.tracking import MlflowClient

    tracking_uri = load_config([serve_app.yaml]).mlflow.tracking_uri
    version = MlflowClient(tracking_uri).get_model_version(SERVED_MODEL_NAME, "1")
    from_run = fetch_model(f"runs:/{version.run_id}/model", tracking_uri)
    from_folder = fetch_model(str(serve_app.checkpoint), tracking_uri)
    assert (from_run.version, from_folder.version) == (version.run_id, "local")
    for key, tensor in from_folder.loaded.model.state_dict().items():
        assert torch.equal(tensor, from_run.loaded.model.state_dict()[key])


@pytest.mark.slow
def test_serve_run_typed_builder_turns_key_value_args_into_serve_args(smoke_run):
    """`serve run serve_app:build_app_from_args model_uri=… config=…` goes through this Ray call."""
    from ray.serve import Application
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary

    spec = importlib.util.spec_from_file_location("serve_app", REPO / "serve_app.py")
    serve_app_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(serve_app_module)
    args = {"model_uri": smoke_run.outcome.model_dir, "config": f"{smoke_run.yaml},", "overrides": "serve.port=9000"}
    application = call_user_app_builder_with_args_if_necessary(serve_app_module.build_app_from_args, args)
    assert isinstance(application, Application)
