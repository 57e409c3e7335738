"""A second Serve app beside the session's `serve_app` (tests/conftest.py), under /<name>, with its own
serve settings (e.g. serve.ood_policy=reject): for tests that need another policy than the session's."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

READY_TIMEOUT_S = 90


@contextmanager
def deployed(serve_app, name: str, model_dir: Path, *overrides: str) -> Iterator[str]:
    """The URL of the app while the block runs; deleted afterwards, so its replica's CPU and memory
    return to the session."""
    from ray import serve

    from pneumo.serve.builder import ServeArgs, build_app

    args = ServeArgs(model_uri=str(model_dir), config=[str(serve_app.yaml)], overrides=list(overrides))
    serve.run(build_app(args), name=name, route_prefix=f"/{name}")
    url = f"{serve_app.url}/{name}"
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while requests.get(f"{url}/readyz", timeout=10).status_code != 200:
            assert time.monotonic() < deadline, requests.get(f"{url}/readyz", timeout=10).json()
            time.sleep(0.3)
        yield url
    finally:
        serve.delete(name)
