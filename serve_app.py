"""The pneumonia endpoint as a Ray Serve application (pneumo/serve/ holds the deployment).

    serve run serve_app:app                    # model: $PNEUMO_MODEL_URI, else NAME@champion; config: $PNEUMO_CONFIG
    serve run serve_app:build_app_from_args model_uri=models:/pneumo-pneumonia/3 config=experiments/quickstart.yaml
    serve deploy serve_config.yaml             # on a running cluster

Serve's proxy listens on 127.0.0.1:8000 unless told otherwise (`serve run --help`, http_options in
serve_config.yaml); `pneumo serve` takes --host/--port or serve.host/serve.port instead.
"""

from ray.serve import Application

from pneumo.serve.builder import ServeArgs, build_app

build_app_from_args = build_app  # Ray's typed app builder: `key=value` arguments become ServeArgs


def __getattr__(name: str) -> Application:
    """`app` is built when Serve asks for it, so importing this file (for the builder) starts nothing."""
    if name == "app":
        return build_app(ServeArgs.from_env())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
