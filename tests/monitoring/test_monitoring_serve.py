"""Monitoring end to end on the session's smoke model (trained and registered by `pneumo run`, which
now stores its reference profile): the profile travels through the registry, the Serve app flags or
refuses what is not a chest film, /monitoring tests its window, a model without a profile serves with
the gate off, and `pneumo monitor` reports a dataset (and an inverted one as drifted)."""

import shutil
import time
from pathlib import Path

import pydicom.data
import pytest
import requests
from mlflow.tracking import MlflowClient

from pneumo.config import load_config
from pneumo.data.synthetic import Acquisition, generate_chest_xrays
from pneumo.models.checkpoints import PROFILE_FILE
from pneumo.monitoring.profile import NO_PROFILE, profile_of
from pneumo.registry.uri import fetch_model
from pneumo.tracking import TAG_KIND

pytestmark = pytest.mark.slow

CT = Path(pydicom.data.get_testdata_file("CT_small.dcm")).read_bytes()


def chest_films(root: Path, count: int) -> list[tuple[str, bytes]]:
    return [(f.name, f.read_bytes()) for f in sorted((root / "test").glob("*/*.jpeg"))[:count]]


@pytest.fixture
def deploy(serve_app):
    """Deploys a second app on the session's Serve, under /<name>, with its own serve settings; every
    app deployed this way is deleted after the test, so its replica's CPU and memory return to the
    session (later tests read datasets through Ray Data and need them)."""
    from ray import serve

    from pneumo.serve.builder import ServeArgs, build_app

    names = []

    def _deploy(name: str, model_dir: Path, *overrides: str) -> str:
        args = ServeArgs(model_uri=str(model_dir), config=[str(serve_app.yaml)], overrides=list(overrides))
        serve.run(build_app(args), name=name, route_prefix=f"/{name}")
        names.append(name)
        url = f"{serve_app.url}/{name}"
        deadline = time.monotonic() + 90
        while requests.get(f"{url}/readyz", timeout=10).status_code != 200:
            assert time.monotonic() < deadline, requests.get(f"{url}/readyz", timeout=10).json()
            time.sleep(0.3)
        return url

    yield _deploy
    for name in names:
        serve.delete(name)


def test_the_registered_model_carries_its_reference_profile(smoke_run):
    model = fetch_model(smoke_run.champion_uri, smoke_run.cfg.mlflow.tracking_uri)
    profile = profile_of(model.loaded)
    assert profile is not None and profile.n_train > 0 and profile.gate.cutoff > 0
    assert (Path(smoke_run.outcome.model_dir) / PROFILE_FILE).stat().st_size < 400_000


def test_flag_policy_marks_a_ct_slice_and_still_answers(serve_app, synthetic_root):
    cutoff = requests.get(f"{serve_app.url}/model", timeout=10).json()["monitoring"]["ood_gate"]["cutoff"]
    ct = requests.post(f"{serve_app.url}/predict", data=CT, headers={"Content-Type": "application/dicom"}, timeout=30)
    assert ct.status_code == 200 and ct.json()["in_distribution"] is False and ct.json()["ood_score"] > cutoff
    answers = [
        requests.post(f"{serve_app.url}/predict", files={"file": film}, timeout=30).json()
        for film in chest_films(synthetic_root, 5)
    ]
    assert sum(answer["in_distribution"] for answer in answers) >= 4, answers


def test_reject_policy_refuses_with_422_and_batch_marks_each_file(serve_app, deploy, synthetic_root):
    url = deploy("reject", serve_app.checkpoint, "serve.ood_policy=reject")
    refused = requests.post(f"{url}/predict", data=CT, headers={"Content-Type": "application/dicom"}, timeout=30)
    assert refused.status_code == 422, refused.text
    body = refused.json()
    assert "does not look like a frontal chest film" in body["error"] and body["field"] == "body"
    assert body["ood_score"] > body["ood_cutoff"]
    film = next(
        f
        for f in chest_films(synthetic_root, 5)
        if requests.post(f"{url}/predict", files={"file": f}, timeout=30).status_code == 200
    )
    batch = requests.post(f"{url}/predict/batch", files=[("files", film), ("files", ("ct.dcm", CT))], timeout=30)
    assert batch.status_code == 200, batch.text
    good, bad = batch.json()["predictions"]
    assert good["in_distribution"] is True and 0 <= good["probability"] <= 1
    assert bad["in_distribution"] is False and bad["probability"] is None and "not scored" in bad["error"]


def test_monitoring_endpoint_tests_the_window(serve_app, deploy, synthetic_root):
    url = deploy(
        "watched",
        serve_app.checkpoint,
        "serve.ood_policy=flag",
        "serve.drift_min_inputs=20",
        "serve.drift_window=100",
    )
    assert requests.get(f"{url}/monitoring", timeout=30).json()["status"] == "collecting"
    films = chest_films(synthetic_root, 40)
    for start in range(0, len(films), 4):
        files = [("files", film) for film in films[start : start + 4]]
        assert requests.post(f"{url}/predict/batch", files=files, timeout=30).status_code == 200
    requests.post(f"{url}/predict", data=CT, headers={"Content-Type": "application/dicom"}, timeout=30)
    report = requests.get(f"{url}/monitoring", timeout=60).json()
    assert report["status"] == "tested" and isinstance(report["drift"], bool)
    assert report["window"]["size"] == len(films) + 1 and report["window"]["capacity"] == 100
    assert report["ood"]["count"] >= 1 and 0 < report["ood"]["rate"] < 0.5
    assert {"features", "predictions", "intensities"} <= set(report) and report["replica"]
    assert 0 <= report["features"]["p_value"] <= 1 and "MMD" in report["features"]["test"]


def test_a_model_without_profile_serves_with_gate_and_drift_off(serve_app, deploy, synthetic_root, tmp_path):
    legacy = tmp_path / "legacy"
    shutil.copytree(serve_app.checkpoint, legacy)
    (legacy / PROFILE_FILE).unlink()
    url = deploy("legacy", legacy, "serve.ood_policy=reject")
    status = requests.get(f"{url}/readyz", timeout=10).json()["monitoring"]
    assert status["ood_gate"]["on"] is False and status["ood_gate"]["reason"] == NO_PROFILE
    assert status["drift"] == {"on": False, "window": 200, "reason": NO_PROFILE}
    assert requests.get(f"{url}/model", timeout=10).json()["monitoring"] == status
    answer = requests.post(f"{url}/predict", data=CT, headers={"Content-Type": "application/dicom"}, timeout=30)
    assert answer.status_code == 200 and answer.json()["in_distribution"] is None
    assert requests.get(f"{url}/monitoring", timeout=30).json()["status"] == "off"


def test_pneumo_monitor_reports_a_dataset_and_finds_an_inverted_one(smoke_run, synthetic_root, tmp_path):
    from pneumo.jobs.monitor import monitor_dataset

    cfg = load_config([smoke_run.yaml], [f"data.path={synthetic_root}"])
    same = monitor_dataset(smoke_run.champion_uri, cfg, "test", tmp_path / "same")
    assert same.report["status"] == "tested" and same.report["ood"]["rate"] < 0.1
    assert ("Drift detected" if same.report["drift"] else "No drift detected") in Path(same.html_path).read_text()
    inverted_root = tmp_path / "inverted"
    generate_chest_xrays(inverted_root, n_images=200, image_size=64, seed=5, acquisition=Acquisition(inverted=True))
    other = monitor_dataset(
        smoke_run.champion_uri,
        load_config([smoke_run.yaml], [f"data.path={inverted_root}"]),
        "all",
        tmp_path / "inverted-report",
    )
    assert other.report["drift"] is True and other.report["ood"]["rate"] > 0.9
    page = Path(other.html_path).read_text()
    assert "Drift detected" in page
    shown = len(other.report["most_unusual"])
    assert shown == 20 and page.count('<figure><img src="data:image/png;base64,') == shown, "a thumbnail per film"
    assert page.count('<img class="plot"') == 2, "the distributions and the feature map are drawn"
    run = MlflowClient(smoke_run.cfg.mlflow.tracking_uri).get_run(other.mlflow_run_id)
    assert run.data.tags[TAG_KIND] == "monitor" and run.data.metrics["drift"] == 1.0
