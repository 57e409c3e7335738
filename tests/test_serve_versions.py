"""Champion beside challenger in the real Serve app, and moving the champion alias under load.

The app here has its own registry (two versions of the smoke model: 1 champion, 2 challenger) and
its own route prefix on the session's Serve, so moving its aliases touches no other test.
"""

import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import requests
from conftest import register_champion

PREFIX = "/versions-test"
POLL_INTERVAL_S = 1.0
TRAFFIC = 0.5


@pytest.fixture(scope="module")
def versions_app(serve_app, smoke_run, tmp_path_factory):
    """Versions 1 (champion) and 2 (challenger) of the smoke model, served with a 50% canary and shadow."""
    from ray import serve

    from pneumo.config import load_config
    from pneumo.serve.builder import ServeArgs, build_app
    from pneumo.tracking import client_for

    root = tmp_path_factory.mktemp("versions")
    yaml = root / "versions.yaml"
    yaml.write_text(f"""\
base: {smoke_run.yaml}
name: versions-test
mlflow: {{tracking_uri: "sqlite:///{root / "mlflow.db"}", registered_model_name: versions-test}}
serve: {{traffic: {TRAFFIC}, shadow: true, poll_interval_s: {POLL_INTERVAL_S}}}
""")
    checkpoint = Path(smoke_run.outcome.model_dir)
    metrics = {f"test_{key}": value for key, value in smoke_run.outcome.test_metrics.items()}
    assert str(register_champion(yaml, checkpoint, metrics).version) == "1"
    second = register_champion(yaml, checkpoint, metrics)  # equal metrics do not beat the champion
    assert str(second.version) == "2" and "challenger" in second.aliases
    serve.run(build_app(ServeArgs(config=[str(yaml)])), name="versions-test", route_prefix=PREFIX)
    url = serve_app.url + PREFIX
    deadline = time.monotonic() + 180
    while not all(role.get("ready") for role in requests.get(f"{url}/versions", timeout=10).json().values()):
        assert time.monotonic() < deadline, requests.get(f"{url}/versions", timeout=10).json()
        time.sleep(0.5)
    yield {"url": url, "client": client_for(load_config([yaml])), "film": next(iter(_films(smoke_run)))}
    serve.delete("versions-test")


def _films(smoke_run):
    data = Path(smoke_run.cfg.data.path)
    return (path.read_bytes() for path in sorted(data.glob("test/*/*.jpeg")))


def predict(url: str, film: bytes, **kwargs) -> requests.Response:
    return requests.post(
        f"{url}/predict",
        data=film,
        headers={"Content-Type": "image/jpeg", **kwargs.pop("headers", {})},
        timeout=30,
        **kwargs,
    )


@pytest.mark.slow
def test_both_aliases_answer_and_every_answer_names_its_version(versions_app):
    answers = [predict(versions_app["url"], versions_app["film"]) for _ in range(40)]
    assert all(answer.status_code == 200 for answer in answers)
    roles = Counter((a.json()["model_role"], a.json()["model_version"], a.headers["X-Model-Version"]) for a in answers)
    assert set(roles) == {("champion", "1", "1"), ("challenger", "2", "2")}  # 50% canary: both, 2^-40 chance not
    info = requests.get(f"{versions_app['url']}/versions", timeout=10).json()
    assert info["challenger"]["version"] == "2" and info["champion"]["runtime"] in ("torch", "onnxruntime", "openvino")


@pytest.mark.slow
@pytest.mark.parametrize("how", ["header", "query"])
def test_a_request_picks_its_version(versions_app, how):
    for asked, role in (("challenger", "challenger"), ("1", "champion"), ("2", "challenger")):
        options = {"headers": {"X-Model-Version": asked}} if how == "header" else {"params": {"version": asked}}
        answers = [predict(versions_app["url"], versions_app["film"], **options).json() for _ in range(5)]
        assert {(a["model_role"], a["model_version"]) for a in answers} == {(role, "1" if role == "champion" else "2")}


@pytest.mark.slow
def test_an_unknown_version_is_a_404_naming_the_served_ones(versions_app):
    answer = predict(versions_app["url"], versions_app["film"], headers={"X-Model-Version": "9"})
    assert answer.status_code == 404
    assert answer.json()["error"] == (
        "model version '9' is not served here; served: champion (version 1), challenger (version 2)"
    )


@pytest.mark.slow
def test_shadow_agreement_and_per_version_series_reach_prometheus(versions_app):
    import ray
    from test_serve import metric_total

    for _ in range(10):
        predict(versions_app["url"], versions_app["film"], headers={"X-Model-Version": "champion"})
    url = f"http://127.0.0.1:{ray.nodes()[0]['MetricsExportPort']}/metrics"
    deadline = time.monotonic() + 60
    while True:  # replicas push metrics every few seconds
        text = requests.get(url, timeout=10).text
        if (
            metric_total(text, "pneumo_shadow_comparisons_total", agree="true") >= 10  # same weights: agree
            and metric_total(text, "pneumo_version_answers_total", role="challenger", version="2")
            and metric_total(text, "pneumo_version_latency_ms_count", role="champion", version="1")
            and metric_total(text, "pneumo_version_probability_count", role="shadow", version="2")
        ):
            break
        assert time.monotonic() < deadline, "\n".join(
            line for line in text.splitlines() if "pneumo_v" in line or "pneumo_shadow" in line
        )
        time.sleep(1)
    assert metric_total(text, "pneumo_shadow_comparisons_total", agree="false") == 0


@pytest.mark.slow
def test_moving_the_champion_alias_under_load_fails_no_request(versions_app):
    """4 clients ask the champion without pause while the alias moves from version 1 to 2."""
    url, stop, answers, failures = versions_app["url"], threading.Event(), [], []

    def client() -> None:
        while not stop.is_set():
            try:
                answer = predict(url, versions_app["film"], headers={"X-Model-Version": "champion"})
                (answers if answer.status_code == 200 else failures).append(
                    (time.monotonic(), answer.json().get("model_version", answer.text))
                )
            except requests.RequestException as error:
                failures.append((time.monotonic(), repr(error)))

    clients = [threading.Thread(target=client) for _ in range(4)]
    for thread in clients:
        thread.start()
    time.sleep(2)
    moved_at = time.monotonic()
    versions_app["client"].set_registered_model_alias("versions-test", "champion", "2")
    deadline = moved_at + POLL_INTERVAL_S + 60  # poll interval + load time (generous on a busy 2-core machine)
    while time.monotonic() < deadline and not any(t > moved_at and v == "2" for t, v in answers[-20:]):
        time.sleep(0.2)
    time.sleep(1)
    stop.set()
    for thread in clients:
        thread.join(timeout=60)
    assert failures == []
    switched_at = min(t for t, version in answers if version == "2")
    load_s = requests.get(f"{url}/versions", timeout=10).json()["champion"]["load_s"]
    print(f"alias moved; answers name version 2 after {switched_at - moved_at:.1f} s (load {load_s:.1f} s)")
    assert switched_at - moved_at <= POLL_INTERVAL_S + load_s + 2  # + 2 s: registry call and one request
    assert all(version == "2" for t, version in answers if t > switched_at + 0.5)  # the switch is atomic, one way
    assert {version for t, version in answers if t < moved_at} == {"1"}
