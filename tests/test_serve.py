"""The real Serve app over real HTTP, on a model trained and registered in this module.

Readiness is tested honestly: the app starts on `models:/NAME@champion` of an empty registry, so
/readyz must answer 503 (the loader keeps retrying) until this module registers the model.
"""

import asyncio
import importlib.util
import io
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pydicom.data
import pytest
import requests
import torch
from PIL import Image
from starlette.datastructures import Headers

from pneumo.checkpoints import CheckpointMeta, load_checkpoint, save_checkpoint
from pneumo.config import ConfigError, EvalConfig, MlflowConfig, ModelConfig, ServeConfig, load_config
from pneumo.data.batch_transforms import normalize
from pneumo.data.synthetic import generate_chest_xrays
from pneumo.data.transforms import decode_image
from pneumo.evaluation.calibration import Calibration
from pneumo.evaluation.metrics import binary_metrics, choose_threshold
from pneumo.evaluation.prediction import predict_logits, predict_probabilities
from pneumo.model_uri import fetch_model, resolve_model_uri
from pneumo.models import create_model, resolve_preprocessing
from pneumo.serve.inputs import RequestError, parse_multipart

REPO = Path(__file__).resolve().parents[1]
REGISTERED_NAME = "serve-test"
MAX_BODY_BYTES = 300_000
MAX_IMAGE_PIXELS = 1_000_000
MAX_IMAGES = 4


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def train_checkpoint(data_root: Path, out: Path) -> tuple[Path, dict[str, float]]:
    """A few SGD steps of timm's test_resnet on the synthetic train split, saved as a pneumo checkpoint."""
    torch.manual_seed(0)
    model_cfg = ModelConfig(name="test_resnet", in_chans=1)
    model = create_model(model_cfg)
    spec = resolve_preprocessing(model, in_chans=1, image_size=32)

    def split(name: str) -> tuple[torch.Tensor, np.ndarray]:
        files = sorted((data_root / name).glob("*/*.jpeg"))
        images = np.stack([decode_image(f.read_bytes(), spec) for f in files])
        return torch.from_numpy(images), np.array([f.parent.name == "PNEUMONIA" for f in files], dtype=int)

    images, labels = split("train")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for _ in range(5):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            model(normalize(images, spec)).squeeze(1), torch.from_numpy(labels).float())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    threshold = choose_threshold(labels, Calibration().probabilities(predict_logits(model, images, spec)), EvalConfig())
    test_images, test_labels = split("test")
    metrics = binary_metrics(test_labels, Calibration().probabilities(predict_logits(model, test_images, spec)), threshold)
    meta = CheckpointMeta(model=model_cfg.__dict__, preprocessing=spec.to_dict(), epoch=0,
                          metrics={"test_auroc": metrics["auroc"]}, decision_threshold=threshold,
                          temperature=1.7, logit_bias=-0.4)  # a server that ignored them would differ
    return save_checkpoint(out, model, meta), {"test_auroc": metrics["auroc"]}


def sample_images(data_root: Path) -> dict[str, bytes]:
    """Test-split JPEGs plus the modes that trip decoders: 16-bit, palette, RGBA, and a DICOM."""
    files = sorted((data_root / "test").glob("*/*.jpeg"))[:6]
    images = {f.name: f.read_bytes() for f in files}
    film = Image.open(io.BytesIO(images[files[0].name])).convert("L")
    images["film16.png"] = encode(Image.fromarray(np.asarray(film).astype(np.uint16) * 257))
    images["palette.png"] = encode(film.convert("P"))
    images["rgba.png"] = encode(film.convert("RGBA"))
    images["ct.dcm"] = Path(pydicom.data.get_testdata_file("CT_small.dcm")).read_bytes()
    return images


def offline_probability(checkpoint: Path, data: bytes) -> float:
    loaded = load_checkpoint(checkpoint)
    spec = loaded.meta.preprocessing_spec
    return float(predict_probabilities(loaded, torch.from_numpy(np.stack([decode_image(data, spec)])))[0])


def write_yaml(root: Path) -> Path:
    """An experiment file whose serve: section is tight enough to trip every limit in a test."""
    yaml = root / "serve.yaml"
    yaml.write_text(f"""\
name: serve-test
data: {{path: {root / 'xray'}}}
model: {{name: test_resnet}}
mlflow: {{tracking_uri: "sqlite:///{root / 'mlflow.db'}", registered_model_name: {REGISTERED_NAME}}}
serve:
  max_batch_size: 8
  batch_wait_timeout_s: 0.02
  max_ongoing_requests: 8
  max_queued_requests: 8
  max_body_bytes: {MAX_BODY_BYTES}
  max_image_pixels: {MAX_IMAGE_PIXELS}
  max_images_per_request: {MAX_IMAGES}
  cpus_per_replica: 0.5
""")
    return yaml


def register(yaml: Path, checkpoint: Path, metrics: dict[str, float]) -> None:
    """What `pneumo run` does at its end: log the checkpoint in a run, register it, alias it champion."""
    from pneumo.serve.pyfunc import register_checkpoint
    from pneumo.tracking import client_for, finish_run, start_run

    cfg = load_config([yaml])
    client = client_for(cfg)
    run_id = start_run(client, cfg, "train", "serve-test")
    register_checkpoint(client, cfg, run_id, checkpoint, metrics, fingerprint="test")
    finish_run(client, run_id)


def wait_for_state(url: str, *states: str, timeout_s: float = 60) -> requests.Response:
    """/readyz once the loader reaches one of `states` (loading -> waiting | ready | failed)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        response = requests.get(f"{url}/readyz", timeout=10)
        if response.json()["state"] in states:
            return response
        time.sleep(0.2)
    raise AssertionError(f"/readyz never reached {states} in {timeout_s} s: {response.json()}")


def start_serve(yaml: Path) -> str:
    """Serve on a free loopback port (Ray comes from the session fixture); the app's URL."""
    from ray import serve

    from pneumo.serve.builder import ServeArgs, build_app

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(ServeArgs(config=[str(yaml)])), name="pneumo", route_prefix="/")
    return f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def server(tmp_path_factory, ray_session):
    """The app starts on an empty registry (so /readyz is honestly 503), then the model is registered."""
    from ray import serve

    from pneumo.tracking import client_for, ensure_experiment

    root = tmp_path_factory.mktemp("serve")
    generate_chest_xrays(root / "xray", n_images=60, image_size=64, seed=0)
    yaml = write_yaml(root)
    cfg = load_config([yaml])
    ensure_experiment(client_for(cfg), cfg.mlflow.experiment_name)  # a registry without the model yet
    with ThreadPoolExecutor(1) as pool:  # train while Ray and Serve start
        trained = pool.submit(train_checkpoint, root / "xray", root / "checkpoint")
        url = start_serve(yaml)
        images = sample_images(root / "xray")
        before = {"readyz": wait_for_state(url, "waiting"),
                  "predict": post_raw(url, images["palette.png"])}
        checkpoint, metrics = trained.result()
    register(yaml, checkpoint, metrics)
    loaded = wait_for_state(url, "ready", "failed")
    assert loaded.status_code == 200, loaded.json()
    yield {"url": url, "before": before, "yaml": yaml, "checkpoint": checkpoint, "metrics": metrics,
           "images": images}
    serve.shutdown()


def post_raw(url: str, data: bytes, content_type: str = "image/png", path: str = "/predict") -> requests.Response:
    return requests.post(f"{url}{path}", data=data, headers={"Content-Type": content_type}, timeout=30)


def test_readyz_is_503_until_the_model_exists(server):
    readyz, predict = server["before"]["readyz"], server["before"]["predict"]
    assert readyz.status_code == 503
    assert readyz.json()["ready"] is False and "not found" in readyz.json()["error"]
    assert predict.status_code == 503 and predict.json()["field"] == "model"
    assert requests.get(f"{server['url']}/readyz", timeout=10).json()["ready"] is True
    assert requests.get(f"{server['url']}/healthz", timeout=10).json() == {"ok": True}


def test_model_endpoint_describes_the_registered_champion(server):
    info = requests.get(f"{server['url']}/model", timeout=10).json()
    meta = load_checkpoint(server["checkpoint"]).meta
    assert (info["name"], info["version"], info["uri"]) == (REGISTERED_NAME, "1", f"models:/{REGISTERED_NAME}/1")
    assert info["metrics"]["test_auroc"] == pytest.approx(server["metrics"]["test_auroc"], abs=1e-5)
    assert info["decision_threshold"] == pytest.approx(meta.decision_threshold)
    assert (info["temperature"], info["logit_bias"]) == (pytest.approx(1.7), pytest.approx(-0.4))
    assert info["preprocessing"]["image_size"] == 32 and info["preprocessing"]["in_chans"] == 1


@pytest.mark.parametrize("how", ["multipart", "raw"])
def test_predictions_match_offline_predictions_of_the_checkpoint(server, how):
    for name, data in server["images"].items():
        if how == "multipart":
            response = requests.post(f"{server['url']}/predict", files={"file": (name, data)}, timeout=30)
        else:
            response = post_raw(server["url"], data, "application/dicom" if name.endswith(".dcm") else "image/png")
        assert response.status_code == 200, (name, response.text)
        body = response.json()
        expected = offline_probability(server["checkpoint"], data)
        assert body["probability"] == pytest.approx(expected, abs=1e-5), name
        assert body["label"] == ("PNEUMONIA" if expected >= body["threshold"] else "NORMAL")
        assert (body["model_name"], body["model_version"]) == (REGISTERED_NAME, "1") and body["time_ms"] > 0


def test_batch_endpoint_and_concurrent_requests_give_the_same_answers(server):
    names = list(server["images"])[:MAX_IMAGES]
    files = [("files", (name, server["images"][name])) for name in names]
    batch = requests.post(f"{server['url']}/predict/batch", files=files, timeout=30)
    assert batch.status_code == 200, batch.text
    by_name = {p["filename"]: p["probability"] for p in batch.json()["predictions"]}
    assert list(by_name) == names
    with ThreadPoolExecutor(6) as pool:  # at once, within the queue limits: batching mixes them into model calls
        answers = list(pool.map(lambda name: (name, post_raw(server["url"], server["images"][name])), names * 4))
    for name, response in answers:
        assert response.status_code == 200
        assert response.json()["probability"] == pytest.approx(by_name[name], abs=1e-5)


def bomb() -> bytes:
    """Tiny file, 2000x2000 pixels: over the test's serve.max_image_pixels."""
    return encode(Image.new("L", (2000, 2000)))


def chunks(data: bytes):
    yield from (data[i:i + 65536] for i in range(0, len(data), 65536))


BAD_INPUTS = {  # case -> (request kwargs, status, field, words in the error)
    "empty body": (dict(data=b"", headers={"Content-Type": "image/png"}), 400, "body", "empty"),
    "not an image": (dict(data=b"hello, world" * 20, headers={"Content-Type": "image/jpeg"}), 400, "body",
                     "not a readable image"),
    "wrong content type": (dict(data=b"{}", headers={"Content-Type": "application/json"}), 415, "content-type",
                           "not accepted"),
    "too large (Content-Length)": (dict(data=bytes(MAX_BODY_BYTES + 1), headers={"Content-Type": "image/png"}),
                                   413, "body", "max_body_bytes"),
    "too large (chunked)": (dict(data=chunks(bytes(MAX_BODY_BYTES + 1)), headers={"Content-Type": "image/png"}),
                            413, "body", "max_body_bytes"),
    "decompression bomb": (dict(data=bomb(), headers={"Content-Type": "image/png"}), 400, "body",
                           "exceeds the limit"),
    "multipart without file": (dict(files={"image": ("x.png", b"123")}), 400, "file", "exactly one `file`"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gets_a_json_4xx_and_the_server_keeps_serving(server, case):
    kwargs, status, field, words = BAD_INPUTS[case]
    response = requests.post(f"{server['url']}/predict", timeout=30, **kwargs)
    assert response.status_code == status, response.text
    assert response.json()["field"] == field and words in response.json()["error"]
    assert post_raw(server["url"], server["images"]["rgba.png"]).status_code == 200


def test_truncated_image_and_oversized_batch_are_refused(server):
    jpeg = next(data for name, data in server["images"].items() if name.endswith(".jpeg"))
    truncated = post_raw(server["url"], jpeg[: len(jpeg) // 2], "image/jpeg")
    assert truncated.status_code == 400 and "truncated" in truncated.json()["error"]
    files = [("files", (f"{i}.jpeg", jpeg)) for i in range(MAX_IMAGES + 1)]
    too_many = requests.post(f"{server['url']}/predict/batch", files=files, timeout=30)
    assert too_many.status_code == 413 and too_many.json()["field"] == "files"
    one_bad = requests.post(f"{server['url']}/predict/batch", timeout=30,
                            files=[("files", ("ok.jpeg", jpeg)), ("files", ("bad.jpeg", b"nope"))])
    assert one_bad.status_code == 400 and one_bad.json()["field"] == "files[1]"
    assert "bad.jpeg" in one_bad.json()["error"]
    assert post_raw(server["url"], jpeg, "image/jpeg").status_code == 200


def test_overload_answers_503_quickly_then_recovers(server):
    """8 ongoing + 8 queued per the test config: a burst of 48 batch requests overflows the queue."""
    jpeg = next(data for name, data in server["images"].items() if name.endswith(".jpeg"))
    files = [("files", (f"{i}.jpeg", jpeg)) for i in range(MAX_IMAGES)]

    def call(_):
        started = time.monotonic()
        response = requests.post(f"{server['url']}/predict/batch", files=files, timeout=60)
        return response.status_code, time.monotonic() - started

    with ThreadPoolExecutor(48) as pool:
        results = list(pool.map(call, range(48)))
    rejected = [seconds for status, seconds in results if status == 503]
    assert rejected and all(status in (200, 503) for status, _ in results)
    assert max(rejected) < 5
    assert post_raw(server["url"], jpeg, "image/jpeg").status_code == 200


def metric_total(text: str, series: str, **labels: str) -> float:
    """Sum of a Prometheus series over the lines carrying `labels` (Ray prefixes names with ray_)."""
    pattern = rf"^ray_{series}\{{([^}}]*)\}} (\S+)$"
    return sum(float(value) for tags, value in re.findall(pattern, text, re.MULTILINE)
               if all(f'{key}="{val}"' in tags for key, val in labels.items()))


def test_metrics_reach_prometheus(server):
    """Requests, errors, latency and batch sizes appear on the node's Prometheus endpoint."""
    import ray

    jpeg = next(data for name, data in server["images"].items() if name.endswith(".jpeg"))
    files = [("files", (f"{i}.jpeg", jpeg)) for i in range(MAX_IMAGES)]
    assert requests.post(f"{server['url']}/predict/batch", files=files, timeout=30).status_code == 200
    assert post_raw(server["url"], bytes(MAX_BODY_BYTES + 1)).status_code == 413
    url = f"http://127.0.0.1:{ray.nodes()[0]['MetricsExportPort']}/metrics"
    deadline = time.monotonic() + 40
    while True:  # replicas push metrics every few seconds
        text = requests.get(url, timeout=10).text
        sizes = metric_total(text, "pneumo_batch_size_sum"), metric_total(text, "pneumo_batch_size_count")
        if (metric_total(text, "pneumo_requests_total", endpoint="predict_batch", status="200")
                and metric_total(text, "pneumo_request_errors_total", endpoint="predict", status="413")
                and metric_total(text, "pneumo_request_latency_ms_count", endpoint="predict")
                and sizes[0] > sizes[1] > 0):  # the batch request's images shared a model call
            return
        assert time.monotonic() < deadline, "\n".join(line for line in text.splitlines() if "pneumo_" in line)
        time.sleep(1)


def test_a_broken_checkpoint_is_reported_by_readyz_and_the_replica_stays_up(server, tmp_path):
    from ray import serve

    from pneumo.serve.builder import ServeArgs, build_app

    (tmp_path / "model.safetensors").write_bytes(b"not weights")
    serve.run(build_app(ServeArgs(model_uri=str(tmp_path), config=[str(server["yaml"])])),
              name="broken", route_prefix="/broken")
    url = f"{server['url']}/broken"
    readyz = wait_for_state(url, "ready", "failed")
    assert readyz.status_code == 503 and readyz.json()["state"] == "failed"
    assert "pneumo.json is missing" in readyz.json()["error"]
    assert requests.get(f"{url}/healthz", timeout=10).status_code == 200
    assert post_raw(url, server["images"]["rgba.png"]).status_code == 503
    serve.delete("broken")


def test_multipart_parser_returns_the_exact_bytes():
    payload = bytes(range(256)) * 4 + b"\r\n--\r\n\r\n"  # line breaks and dashes inside the file
    prepared = requests.Request("POST", "http://127.0.0.1/", data={"note": "hi"},
                                files=[("files", ("a.bin", payload)), ("files", ("b.bin", b""))]).prepare()
    headers = Headers({"content-type": prepared.headers["Content-Type"]})
    parts = asyncio.run(parse_multipart(headers, prepared.body, max_files=2))
    assert parts == [("note", None, b"hi"), ("files", "a.bin", payload), ("files", "b.bin", b"")]
    with pytest.raises(RequestError) as too_many:
        asyncio.run(parse_multipart(headers, prepared.body, max_files=1))
    assert too_many.value.status == 413
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


def test_loader_waits_for_an_alias_that_is_not_set_yet(tmp_path):
    """A registered model without @champion (only challengers so far) is 'not yet', not a failure."""
    from mlflow.tracking import MlflowClient

    from pneumo.serve.loader import ModelLoader

    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(tracking_uri).create_registered_model("chest")
    loader = ModelLoader("models:/chest@champion", tracking_uri)
    deadline = time.monotonic() + 30
    while loader.state == "loading" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert loader.status()["state"] == "waiting" and "no @champion version yet" in loader.status()["error"]


def test_run_and_folder_uris_load_the_same_weights(server):
    """runs:/RUN_ID/model downloads the logged checkpoint; a folder loads in place."""
    from mlflow.tracking import MlflowClient

    tracking_uri = load_config([server["yaml"]]).mlflow.tracking_uri
    version = MlflowClient(tracking_uri).get_model_version(REGISTERED_NAME, "1")
    from_run = fetch_model(f"runs:/{version.run_id}/model", tracking_uri)
    from_folder = fetch_model(str(server["checkpoint"]), tracking_uri)
    assert (from_run.version, from_folder.version) == (version.run_id, "local")
    for key, tensor in from_folder.loaded.model.state_dict().items():
        assert torch.equal(tensor, from_run.loaded.model.state_dict()[key])


def test_serve_run_typed_builder_turns_key_value_args_into_serve_args(server):
    """`serve run serve_app:build_app_from_args model_uri=… config=…` goes through this Ray call."""
    from ray.serve import Application
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary

    spec = importlib.util.spec_from_file_location("serve_app", REPO / "serve_app.py")
    serve_app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(serve_app)
    args = {"model_uri": str(server["checkpoint"]), "config": f"{server['yaml']},", "overrides": "serve.port=9000"}
    assert isinstance(call_user_app_builder_with_args_if_necessary(serve_app.build_app_from_args, args), Application)
