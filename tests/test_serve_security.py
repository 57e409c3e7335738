"""Bearer-token auth, the loopback rule and the audit log of the Serve endpoint (pneumo/serve/security.py,
audit.py). The fast tests drive the same middleware in a FastAPI app in-process; the slow ones use the
real Serve app over HTTP."""

import hashlib
import json

import pytest
import requests
from conftest import wait_for_state
from fastapi import FastAPI
from fastapi.testclient import TestClient

from pneumo.config import ConfigError, ServeConfig
from pneumo.serve.security import BearerAuthMiddleware, check_exposure, protect, read_token, token_digest

TOKEN = "s3cret-token-of-enough-length"


def guarded_app(digest) -> TestClient:
    """A FastAPI app with the endpoint's middleware, as a replica built with this token digest has it."""
    app = FastAPI()
    app.add_middleware(BearerAuthMiddleware)
    protect(digest)
    for path in ("/healthz", "/readyz"):
        app.add_api_route(path, lambda: {"ok": True}, methods=["GET"])
    for path in ("/predict", "/anything-added-later"):
        app.add_api_route(path, lambda: {"ok": True}, methods=["POST"])
    return TestClient(app)


def test_every_route_but_the_probes_needs_the_token():
    client = guarded_app(token_digest(TOKEN))
    for path in ("/healthz", "/readyz", "/openapi.json"):
        assert client.get(path).status_code == 200, path
    for path in ("/predict", "/anything-added-later"):
        refused = client.post(path)
        assert refused.status_code == 401 and refused.headers["WWW-Authenticate"].startswith("Bearer")
        assert refused.json() == {
            "error": "missing bearer token: send the header `Authorization: Bearer <token>`",
            "field": "authorization",
        }
        wrong = client.post(path, headers={"Authorization": f"Bearer {TOKEN}x"})
        assert wrong.status_code == 401 and wrong.json()["error"] == "invalid bearer token"
        assert client.post(path, headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401
        assert client.post(path, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert client.post(path, headers={"authorization": f"bearer  {TOKEN} "}).status_code == 200


def test_without_a_token_nothing_is_asked():
    assert guarded_app(None).post("/predict").status_code == 200


def test_token_from_file_or_environment(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    assert read_token(ServeConfig(auth_token_file=str(token_file)), environ={}) == TOKEN
    assert read_token(ServeConfig(), environ={"PNEUMO_SERVE_TOKEN": TOKEN}) == TOKEN
    assert read_token(ServeConfig(auth_token_env="MY_TOKEN"), environ={"MY_TOKEN": TOKEN}) == TOKEN
    assert read_token(ServeConfig(), environ={}) is None
    with pytest.raises(ConfigError, match="serve.auth_token_file=.*cannot read"):
        read_token(ServeConfig(auth_token_file=str(tmp_path / "missing")), environ={})
    with pytest.raises(ConfigError, match="at least 16"):
        read_token(ServeConfig(), environ={"PNEUMO_SERVE_TOKEN": "short"})
    assert token_digest(TOKEN) == hashlib.sha256(TOKEN.encode()).hexdigest()


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "myhost.example"])
def test_listening_beyond_loopback_needs_a_token_or_an_explicit_yes(host):
    with pytest.raises(ConfigError, match="serve.allow_unauthenticated_remote"):
        check_exposure(host, ServeConfig(), token=None)
    check_exposure(host, ServeConfig(), token=TOKEN)
    check_exposure(host, ServeConfig(allow_unauthenticated_remote=True), token=None)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_needs_nothing(host):
    check_exposure(host, ServeConfig(), token=None)


def test_pneumo_serve_refuses_an_open_public_endpoint(monkeypatch, tmp_path):
    from pneumo.cli import main

    monkeypatch.delenv("PNEUMO_SERVE_TOKEN", raising=False)
    with pytest.raises(SystemExit) as refused:  # before Ray or Serve start
        main(["serve", str(tmp_path), "--host", "0.0.0.0"])
    assert str(refused.value).startswith("pneumo: config error: serve.host=0.0.0.0 is reachable from other machines")


@pytest.mark.slow
def test_served_app_with_a_token_and_an_audit_log(serve_app, synthetic_root, tmp_path, monkeypatch):
    """The real app, built with $PNEUMO_SERVE_TOKEN and serve.audit_dir, over HTTP."""
    from ray import serve

    from pneumo.serve.builder import ServeArgs, build_app

    monkeypatch.setenv("PNEUMO_SERVE_TOKEN", TOKEN)
    args = ServeArgs(
        model_uri=str(serve_app.checkpoint),
        config=[str(serve_app.yaml)],
        overrides=[f"serve.audit_dir={tmp_path / 'audit'}"],
    )
    serve.run(build_app(args), name="secure", route_prefix="/secure")
    url = f"{serve_app.url}/secure"
    try:
        assert wait_for_state(url, "ready", "failed").status_code == 200, "the probes need no token"
        film = sorted((synthetic_root / "test").glob("*/*.jpeg"))[0].read_bytes()
        refused = requests.post(f"{url}/predict", data=film, headers={"Content-Type": "image/jpeg"}, timeout=30)
        assert refused.status_code == 401 and refused.headers["WWW-Authenticate"].startswith("Bearer")
        assert requests.get(f"{url}/model", timeout=10).status_code == 401
        answered = requests.post(
            f"{url}/predict",
            data=film,
            timeout=30,
            headers={"Content-Type": "image/jpeg", "Authorization": f"Bearer {TOKEN}"},
        )
        assert answered.status_code == 200, answered.text
        schema = requests.get(f"{url}/openapi.json", timeout=10).json()
        assert schema["paths"]["/predict"]["post"]["security"] == [{"bearer": []}]
        assert "security" not in schema["paths"]["/readyz"]["get"]
    finally:
        serve.delete("secure")
    lines = [
        json.loads(line)
        for path in (tmp_path / "audit").glob("audit-*.jsonl")
        for line in path.read_text().splitlines()
    ]
    assert len(lines) == 1, "one line per answered image; refusals are not predictions"
    line = lines[0]
    assert line["input_sha256"] == hashlib.sha256(film).hexdigest()
    assert line["request_id"] == answered.headers["x-request-id"] and line["client"] == "127.0.0.1"
    assert (line["probability"], line["decision"], line["model_version"]) == (
        answered.json()["probability"],
        answered.json()["label"],
        answered.json()["model_version"],
    )
    assert set(line) <= {
        "time",
        "request_id",
        "client",
        "endpoint",
        "model_name",
        "model_version",
        "input_sha256",
        "probability",
        "decision",
        "in_distribution",
        "ood_score",
        "out_of_distribution",
    }
