"""Who may call the endpoint: an optional bearer token, and no open endpoint beyond this machine by accident.

    export PNEUMO_SERVE_TOKEN=$(python -c "import secrets; print(secrets.token_urlsafe(32))")
    pneumo serve --host 0.0.0.0          # refused without a token unless serve.allow_unauthenticated_remote
    curl -H "Authorization: Bearer $PNEUMO_SERVE_TOKEN" -F file=@film.jpeg http://HOST:8000/predict

The token comes from the environment variable named by serve.auth_token_env or from the file
serve.auth_token_file, read where the app is built. Only its SHA-256 travels to the replicas (a Serve
app's arguments are visible to anyone who can read the Ray cluster's state), where each request's
token is hashed and compared in constant time (hmac.compare_digest). Every route needs the token
except the probes and the API description in OPEN_PATHS, so a route added later is closed by default.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
from pathlib import Path
from typing import Optional

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from pneumo.config import ConfigError, ServeConfig
from pneumo.serve.page import PAGE_PATHS

OPEN_PATHS = frozenset(
    {"/healthz", "/readyz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"} | PAGE_PATHS
)  # the page holds no data; its calls send the token
MIN_TOKEN_CHARS = 16  # shorter tokens are guessable; secrets.token_urlsafe(32) gives 43
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="pneumo"'}


def read_token(cfg: ServeConfig, environ: dict[str, str] | os._Environ = os.environ) -> Optional[str]:
    """The configured token (file first, then the environment variable), or None when auth is off."""
    if cfg.auth_token_file:
        path = Path(cfg.auth_token_file).expanduser()
        try:
            token = path.read_text().strip()
        except OSError as error:
            raise ConfigError(f"serve.auth_token_file={path}: cannot read it ({error.strerror})") from None
        source = f"serve.auth_token_file={path}"
    else:
        token, source = environ.get(cfg.auth_token_env, "").strip(), f"${cfg.auth_token_env}"
        if not token:
            return None
    if len(token) < MIN_TOKEN_CHARS:
        raise ConfigError(
            f"{source}: the token has {len(token)} characters, at least {MIN_TOKEN_CHARS} are needed "
            "(make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    return token


def token_digest(token: Optional[str]) -> Optional[str]:
    return hashlib.sha256(token.encode()).hexdigest() if token else None


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and `localhost`; 0.0.0.0, other addresses and names reach beyond this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, cfg: ServeConfig, token: Optional[str]) -> None:
    """Refuse to listen beyond loopback without a token, unless the config says so explicitly."""
    if token or is_loopback(host) or cfg.allow_unauthenticated_remote:
        return
    raise ConfigError(
        f"serve.host={host} is reachable from other machines and no token is set: set "
        f"${cfg.auth_token_env} or serve.auth_token_file, or serve.allow_unauthenticated_remote=true "
        "to serve without authentication on purpose"
    )


def _route_path(request: Request) -> str:
    """The path inside the app, without the route prefix Serve mounted it under (/secure/healthz -> /healthz)."""
    path, prefix = request.scope["path"], request.scope.get("root_path", "")
    return (path[len(prefix) :] or "/") if prefix and path.startswith(prefix) else path


class BearerGuard:
    """Checks `Authorization: Bearer <token>` against the SHA-256 the app was built with."""

    def __init__(self, digest: Optional[str]):
        self.digest = digest

    def refusal(self, request: Request) -> Optional[JSONResponse]:
        """None when the request may pass; else the 401 answer."""
        if self.digest is None or _route_path(request) in OPEN_PATHS:
            return None
        scheme, _, presented = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            return self._unauthorized("missing bearer token: send the header `Authorization: Bearer <token>`")
        presented_digest = hashlib.sha256(presented.strip().encode()).hexdigest()
        if not hmac.compare_digest(presented_digest, self.digest):
            return self._unauthorized("invalid bearer token")
        return None

    @staticmethod
    def _unauthorized(message: str) -> JSONResponse:
        return JSONResponse({"error": message, "field": "authorization"}, status_code=401, headers=CHALLENGE)


_replica_guard = BearerGuard(None)  # one Serve replica per process: its __init__ sets the digest


def protect(digest: Optional[str]) -> None:
    """Require the token whose SHA-256 is `digest` on this replica (None: no authentication)."""
    _replica_guard.digest = digest


class BearerAuthMiddleware:
    """A 401 before any route runs, else the route's answer. Plain ASGI rather than FastAPI's
    `@app.middleware("http")`, which runs every request through an extra task and stream pair."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        refusal = _replica_guard.refusal(Request(scope)) if scope["type"] == "http" else None
        await (refusal or self.app)(scope, receive, send)
