"""Config -> the Ray Serve application: `pneumo serve`, `serve run serve_app:app`, serve_config.yaml.

app = build_app(ServeArgs(model_uri="models:/pneumo-pneumonia@champion",
                          config=["experiments/quickstart.yaml"]))
serve.run(app)  # POST /predict, POST /predict/batch, GET /healthz /readyz /model, docs at /docs
"""

# No `from __future__ import annotations`: Ray's typed app builder needs build_app's annotation as a
# class to turn `serve run … key=value` arguments into ServeArgs.
import dataclasses
import os
from typing import Any, Optional

from pydantic import BaseModel, field_validator
from ray.serve import Application

from pneumo.config import ConfigError, MlflowConfig, ServeConfig, load_config
from pneumo.models.runtimes import require_runtime
from pneumo.registry.uri import resolve_model_uri
from pneumo.serve.app import PneumoniaService
from pneumo.serve.security import check_exposure, read_token, token_digest
from pneumo.tracking import resolve_tracking_uri

DRAIN_POLL_S = 0.2  # how often a stopping replica checks whether its last request has finished
CONFIG_ENV = "PNEUMO_CONFIG"  # experiment YAMLs (comma-separated) for `serve run serve_app:app`


class ServeArgs(BaseModel):
    """What `pneumo serve` and `serve run serve_app:build_app_from_args key=value …` pass to build_app."""

    model_uri: Optional[str] = None  # checkpoint folder, models:/NAME@alias, models:/NAME/VERSION, runs:/ID/model
    config: list[str] = []  # experiment YAMLs; their serve: and mlflow: sections apply
    overrides: list[str] = []  # key=value, e.g. serve.max_batch_size=32 (needs a config)
    tracking_uri: Optional[str] = None  # None: mlflow.tracking_uri, else $MLFLOW_TRACKING_URI, else ./mlflow.db

    @field_validator("config", "overrides", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        """`config=a.yaml,b.yaml` on the `serve run` line arrives as one string."""
        return [item for item in value.replace(",", " ").split()] if isinstance(value, str) else value

    @classmethod
    def from_env(cls) -> "ServeArgs":
        """$PNEUMO_CONFIG; the model comes from $PNEUMO_MODEL_URI via resolve_model_uri."""
        return cls(config=os.environ.get(CONFIG_ENV, ""))


def load_serving_config(args: ServeArgs) -> tuple[ServeConfig, MlflowConfig]:
    """The serve: and mlflow: sections of the experiment files, or their defaults without files."""
    if args.config:
        cfg = load_config(args.config, args.overrides)
        return cfg.serve, cfg.mlflow
    if args.overrides:
        raise ConfigError(f"overrides {args.overrides} need an experiment YAML to apply to: add --config FILE")
    return ServeConfig(), MlflowConfig()


def deployment_options(cfg: ServeConfig) -> dict[str, Any]:
    """serve: settings -> Ray Serve deployment options."""
    options: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": cfg.cpus_per_replica},
        "max_ongoing_requests": cfg.max_ongoing_requests,  # >= max_batch_size (checked by ServeConfig)
        "max_queued_requests": cfg.max_queued_requests,  # beyond this Serve answers 503 at once
        "graceful_shutdown_timeout_s": cfg.drain_timeout_s,  # a stopping replica finishes in-flight requests
        "graceful_shutdown_wait_loop_s": DRAIN_POLL_S,
    }
    if cfg.autoscaling:
        options["autoscaling_config"] = {
            "min_replicas": cfg.min_replicas,
            "max_replicas": cfg.max_replicas,
            "target_ongoing_requests": cfg.max_batch_size,
        }  # a full batch each
    else:
        options["num_replicas"] = cfg.num_replicas
    return options


def build_app(args: ServeArgs) -> Application:
    """The Serve application for `args`: resolves the model URI here, loads it in the replicas."""
    serve_cfg, mlflow_cfg = load_serving_config(args)
    tracking_uri = args.tracking_uri or resolve_tracking_uri(mlflow_cfg)
    model_uri = resolve_model_uri(args.model_uri, serve_cfg, mlflow_cfg)
    if serve_cfg.runtime != "auto":
        require_runtime(serve_cfg.runtime)  # a missing package fails here, at start, not in a replica
    token = read_token(serve_cfg)
    check_exposure(serve_cfg.host, serve_cfg, token)
    deployment = PneumoniaService.options(**deployment_options(serve_cfg))
    return deployment.bind(model_uri, tracking_uri, dataclasses.asdict(serve_cfg), token_digest(token))
