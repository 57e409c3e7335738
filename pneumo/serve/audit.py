"""An audit trail of every answered prediction: who asked, which model answered, what it said.

One JSON line per image, in serve.audit_dir/audit-<replica>.jsonl (one file per replica: processes
never share a file), rotated by the standard library's RotatingFileHandler at serve.audit_max_bytes
with serve.audit_backups old files kept. Each line holds the time (UTC), Serve's request id (the
`x-request-id` header of the answer), the client address, the endpoint, the model name and version,
the SHA-256 of the image bytes (to match a film later without keeping it), the probability and the
decision, and the out-of-distribution verdict when the answer has one. Never pixels, never file
names (they often carry patient names).
"""

from __future__ import annotations

import hashlib
import json
import logging
import logging.handlers
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from starlette.requests import Request

from pneumo.config import ServeConfig

OOD_KEYS = ("in_distribution", "ood_score", "out_of_distribution")  # copied when a prediction carries them


def _request_id() -> Optional[str]:
    from ray.serve.context import _get_serve_request_context

    return _get_serve_request_context().request_id or None


def _replica_name() -> str:
    from ray import serve

    try:
        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # outside a Serve replica (a plain process using the app in a test)
        return "local"


class AuditLog:
    """Appends JSON lines for answered predictions; does nothing when serve.audit_dir is unset."""

    def __init__(self, cfg: ServeConfig):
        self.logger: Optional[logging.Logger] = None
        if not cfg.audit_dir:
            return
        directory = Path(cfg.audit_dir).expanduser().resolve()
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"audit-{_replica_name()}.jsonl"
        handler = logging.handlers.RotatingFileHandler(
            self.path, maxBytes=cfg.audit_max_bytes, backupCount=cfg.audit_backups, encoding="utf-8"
        )
        handler.setFormatter(logging.Formatter("%(message)s"))
        self.logger = logging.getLogger(f"pneumo.audit.{self.path.name}")
        self.logger.handlers[:] = [handler]
        self.logger.setLevel(logging.INFO)
        self.logger.propagate = False  # audit lines stay out of the replica's log

    def record(self, request: Request, images: list[bytes], answer: dict[str, Any]) -> None:
        """One line per image of a 200 answer (`answer` is the /predict or /predict/batch body)."""
        if self.logger is None:
            return
        common = {
            "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "request_id": _request_id(),
            "client": request.client.host if request.client else None,
            "endpoint": request.url.path,
            "model_name": answer.get("model_name"),
            "model_version": answer.get("model_version"),
        }
        for image, prediction in zip(images, answer.get("predictions", [answer])):
            line = {
                **common,
                "input_sha256": hashlib.sha256(image).hexdigest(),
                "probability": prediction["probability"],
                "decision": prediction["label"],
                **{key: prediction[key] for key in OOD_KEYS if key in prediction},
            }
            self.logger.info(json.dumps(line))
