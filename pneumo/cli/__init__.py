"""The `pneumo` command: a thin shell over the package's functions, with the process-wide side effects
(logging, environment defaults, ray.init in ray_start.py). Two settings that Ray reads at start-up are
set where their feature is chosen instead: training/train.py (Train's health-check interval, for the
trainer's controller) and serve/ingress.py (Serve's HAProxy ingress).

    pneumo run experiments/quickstart.yaml train.lr=3e-4 [--resume]
    pneumo config show experiments/quickstart.yaml [overrides]
    pneumo data synth --out data/synthetic --n 1200 --size 128 --seed 0
    pneumo data inspect data/chest_xray
    pneumo serve [MODEL_URI] [--config experiments/quickstart.yaml] [--host 127.0.0.1] [--port 8000]
    pneumo eval models:/pneumo-pneumonia@champion data/chest_xray [--split test] [--out reports/x]
    pneumo monitor models:/pneumo-pneumonia@champion data/new_hospital [--split all] [--out reports/m]
    pneumo predict models:/pneumo-pneumonia@champion archive/2025 --out scores/2025 [--resume] [--explain]
    pneumo predict MODEL dicomweb+http://pacs:8042/dicom-web --study UID | --modality CR,DX --out DIR [--store-sr]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import os
import sys
import time
from collections.abc import Iterator
from typing import Optional

from pneumo.cli.ray_start import QUIET_DEFAULTS, init_ray, ray_shut_down_at_exit
from pneumo.cli.timeline import mark

STARTED_AT = time.time()  # this module imported: Python and the CLI are up (the run's timeline starts here)


def split_paths_and_overrides(items: list[str]) -> tuple[list[str], list[str]]:
    """`a.yaml b.yaml train.lr=3e-4` -> (["a.yaml", "b.yaml"], ["train.lr=3e-4"])."""
    return [i for i in items if "=" not in i], [i for i in items if "=" in i]


def _load(items: list[str]):
    from pneumo.config import load_config

    paths, overrides = split_paths_and_overrides(items)
    if not paths:
        raise SystemExit("pneumo: give at least one experiment YAML, e.g. experiments/quickstart.yaml")
    return load_config(paths, overrides)


def _log_folder(cfg) -> str:
    """Where a command's log goes: beside its results, or under the durable local root for bucket storage."""
    from pneumo.paths import durable_path, is_uri

    return durable_path("results") if is_uri(cfg.scaling.storage_path) else cfg.scaling.storage_path


@contextlib.contextmanager
def _quiet_terminal(cfg, args: argparse.Namespace, table: bool = False) -> Iterator:
    """pneumo's lines on the terminal, Ray's in the command's log file (--verbose: everything here);
    Ray started inside is shut down before the terminal is given back."""
    from pneumo.cli.progress import run_log_path, watch_run

    name = cfg.name if args.command == "run" or cfg.name.endswith(args.command) else f"{cfg.name}-{args.command}"
    log_path = None if args.verbose else run_log_path(_log_folder(cfg), name)
    with (
        watch_run(log_path, cfg.tune.metric, cfg.tune.mode, cfg.train.epochs, is_user_error, table) as progress,
        ray_shut_down_at_exit(),  # inside the redirect: Ray's last lines go to the log
    ):
        yield progress


def _load_for_data(args: argparse.Namespace, default_name: str):
    """The config of a command that scores `args.data`: --config files and overrides, data.path set,
    relative paths made durable."""
    from pneumo.config import load_config
    from pneumo.paths import anchor_paths

    paths, overrides = split_paths_and_overrides(args.config)
    defaults = [] if paths else [f"name={default_name}"]
    return anchor_paths(load_config(paths, [*defaults, *overrides, f"data.path={args.data}"]))


def _run_lines(cfg, run_id: str) -> str:
    from pneumo.tracking import client_for, resolve_tracking_uri, run_lines

    return run_lines(client_for(cfg), resolve_tracking_uri(cfg.mlflow), run_id)


def cmd_run(args: argparse.Namespace) -> None:
    from pneumo.paths import anchor_paths, describe_storage

    cfg = anchor_paths(_load(args.config))  # relative paths made absolute and durable (not in a Ray job's package)
    config_loaded = time.time()
    with _quiet_terminal(cfg, args, table=True) as progress:
        progress.note(describe_storage(cfg))
        mark("cli_started", STARTED_AT)
        mark("config_loaded", config_loaded)
        dashboard = init_ray()
        mark("ray_started")
        if dashboard:
            progress.note(
                f"dashboard:    {dashboard}  (training runs, workers, logs; login token: `ray get-auth-token`)"
            )
        from pneumo.experiment import run_experiment
        from pneumo.tracking import model_version_url, resolve_tracking_uri

        mark("pipeline_imported")
        outcome = run_experiment(cfg, resume=args.resume, progress=progress)
        uri = resolve_tracking_uri(cfg.mlflow)
        progress.note(
            f"\nresults:      {outcome.results_path}\nbest model:   {outcome.model_dir}\n"
            + _run_lines(cfg, outcome.mlflow_run_id)
        )
        if outcome.model_version is not None:
            name, version = cfg.mlflow.registered_model_name, outcome.model_version.version
            progress.note(
                f"registered:   models:/{name}/{version} aliases {list(outcome.model_version.aliases)}\n"
                f"  open:       {model_version_url(uri, name, version)}\n"
                f"serve it:     pneumo serve models:/{name}@champion"
            )


def cmd_eval(args: argparse.Namespace) -> None:
    from pneumo.paths import describe_storage, durable_path

    cfg = _load_for_data(args, "pneumo-eval")
    with _quiet_terminal(cfg, args) as terminal:
        terminal.note(describe_storage(cfg))
        init_ray()
        from pneumo.evaluation.metrics import format_metrics_table
        from pneumo.jobs.evaluate import evaluate_model

        outcome = evaluate_model(
            args.model, cfg, args.split, durable_path(args.out) if args.out else None, args.runtime, args.int8
        )
        terminal.note(format_metrics_table(outcome.evaluation.metrics, outcome.evaluation.intervals, title=args.split))
        if outcome.ood is not None:
            terminal.note(
                f"out of distribution: {outcome.ood['ood_refused_count']} {args.split} films "
                f"({outcome.ood['ood_refused']:.1%}) beyond the gate's cut-off {outcome.ood['ood_cutoff']:.3g} "
                "(serve.ood_policy reject would refuse them)"
            )
        if outcome.localization is not None:
            terminal.note(outcome.localization.summary())
        terminal.note(f"\n{_run_lines(cfg, outcome.mlflow_run_id)}")
        terminal.note(f"report:       {outcome.report_path}")


def cmd_monitor(args: argparse.Namespace) -> None:
    from pneumo.paths import durable_path

    cfg = _load_for_data(args, "pneumo-monitor")
    with _quiet_terminal(cfg, args) as terminal:
        init_ray()
        from pneumo.jobs.monitor import monitor_dataset
        from pneumo.monitoring.report import format_summary

        outcome = monitor_dataset(args.model, cfg, args.split, durable_path(args.out) if args.out else None)
        terminal.note(format_summary(outcome.report))
        terminal.note(f"\n{_run_lines(cfg, outcome.mlflow_run_id)}")
        terminal.note(f"report:       {outcome.html_path}")


def _predict_from_pacs(args: argparse.Namespace, cfg) -> None:
    """DATA is a DICOMweb server: score its study (or every study of --modality) in this process, an SR
    per film in OUT/sr, stored back with --store-sr (pneumo.pacs.roundtrip)."""
    from pneumo.pacs.dicomweb import DicomWebError
    from pneumo.pacs.roundtrip import describe, report_to_pacs
    from pneumo.registry.uri import fetch_model
    from pneumo.tracking import resolve_tracking_uri

    if bool(args.study) == bool(args.modality):
        raise SystemExit("pneumo: a DICOMweb DATA needs --study UID or --modality CR,DX (one of them)")
    model = fetch_model(args.model, resolve_tracking_uri(cfg.mlflow))
    modalities = tuple(m.strip().upper() for m in (args.modality or "").split(",") if m.strip())
    try:
        rows = report_to_pacs(args.data, model, args.out, args.study, modalities, args.store_sr, cfg.serve.ood_policy)
    except (DicomWebError, ValueError) as error:
        raise SystemExit(f"pneumo: DICOMweb: {error}") from None
    print(describe(rows, args.out))


def cmd_predict(args: argparse.Namespace) -> None:
    from pneumo.pacs.dicomweb import is_dicomweb
    from pneumo.paths import durable_path

    cfg = _load_for_data(args, "pneumo-predict")
    if is_dicomweb(args.data):
        return _predict_from_pacs(args, cfg)
    with _quiet_terminal(cfg, args) as terminal:
        init_ray()
        from pneumo.cli.progress import is_interactive
        from pneumo.inference.output import OutputError
        from pneumo.inference.predict import PredictSettings, format_outcome, predict_archive
        from pneumo.inference.progress import PredictProgress

        settings = PredictSettings(
            runtime=args.runtime or cfg.serve.runtime,
            batch_size=args.batch_size or cfg.eval.batch_size,
            actors=args.actors,
            threads=args.threads,
            use_gpu=args.gpu or cfg.scaling.use_gpu,
            part_rows=args.part_rows,
            explain=args.explain,
            csv=args.csv,
            resume=args.resume,
        )
        progress = PredictProgress(terminal.stream, is_interactive(terminal.stream))
        try:
            outcome = predict_archive(args.model, cfg.data.path, durable_path(args.out), cfg, settings, progress)
        except OutputError as error:
            raise SystemExit(f"pneumo: output error: {error}") from None
        terminal.note(format_outcome(outcome))
        terminal.note(_run_lines(cfg, outcome.mlflow_run_id))
        if args.dicom_sr:
            from pneumo.pacs.predictions import describe, write_srs_for_output

            terminal.note(describe(write_srs_for_output(durable_path(args.out), args.dicom_sr), args.dicom_sr))


def cmd_config_show(args: argparse.Namespace) -> None:
    from pneumo.config import to_yaml

    print(to_yaml(_load(args.config)), end="")


def cmd_data_synth(args: argparse.Namespace) -> None:
    from pneumo.data.synthetic import Acquisition, generate_chest_xrays

    acquisition = Acquisition(
        exposure=args.exposure,
        noise=args.noise,
        blur_px=args.blur,
        resolution=args.resolution,
        portable=args.portable,
        inverted=args.inverted,
    )
    summary = generate_chest_xrays(
        args.out,
        n_images=args.n,
        image_size=args.size,
        seed=args.seed,
        label_noise=args.label_noise,
        acquisition=acquisition,
        pneumonia_share=args.prevalence,
    )
    for split, per_class in summary.counts.items():
        print(f"{split:<6} " + "  ".join(f"{name} {n}" for name, n in per_class.items()))
    print(f"{summary.n_patients} patients, label noise {summary.label_noise:.1%}, written to {summary.root}")


def cmd_data_inspect(args: argparse.Namespace) -> None:
    from pneumo.config import DataConfig
    from pneumo.data.inspect import format_inspection, inspect_dataset

    inspection = inspect_dataset(DataConfig(path=args.path, format=args.format))
    print(format_inspection(inspection))
    if inspection.leaks:
        raise SystemExit(1)


def check_model_loads(model_uri: str, tracking_uri: str) -> None:
    """A corrupted checkpoint stops `pneumo serve` here, before Ray starts, with the file named; a
    registry model that is not there yet, or a registry out of reach, is left to the replica's loader,
    which waits and retries (/readyz says why)."""
    from pneumo.models.checkpoints import CheckpointError
    from pneumo.registry.uri import fetch_model

    try:
        fetch_model(model_uri, tracking_uri)
    except CheckpointError as error:  # a registry model's error names its downloaded copy: say which model
        raise CheckpointError(f"{model_uri}: {error}" if ":/" in model_uri else str(error)) from None
    except Exception as error:  # any other reason is the loader's to retry and report
        logging.getLogger(__name__).info("%s does not load yet (%s); the replica will keep trying", model_uri, error)


def cmd_serve(args: argparse.Namespace) -> None:
    from pneumo.serve.shutdown import serve_in_own_session

    if not os.environ.get("RAY_ADDRESS"):  # its own Ray: out of the caller's process group (shutdown.py)
        serve_in_own_session()
    import ray
    from ray import serve

    from pneumo.registry.uri import resolve_model_uri
    from pneumo.serve.builder import ServeArgs, build_app, load_serving_config
    from pneumo.serve.ingress import use_ingress
    from pneumo.serve.security import check_exposure, read_token
    from pneumo.serve.shutdown import serve_until_signalled
    from pneumo.tracking import resolve_tracking_uri

    paths, overrides = split_paths_and_overrides(args.config)
    serve_args = ServeArgs(model_uri=args.model, config=paths, overrides=overrides)
    serve_cfg, mlflow_cfg = load_serving_config(serve_args)
    model_uri = resolve_model_uri(args.model, serve_cfg, mlflow_cfg)
    host, port = args.host or serve_cfg.host, args.port or serve_cfg.port
    check_exposure(host, serve_cfg, read_token(serve_cfg))  # no open endpoint beyond loopback by accident
    use_ingress(serve_cfg.ingress)  # before Ray starts (its Serve controller reads it once); a config error first
    check_model_loads(model_uri, resolve_tracking_uri(mlflow_cfg))
    app = build_app(serve_args.model_copy(update={"model_uri": model_uri}))
    init_ray()
    serve.start(http_options={"host": host, "port": port})
    url = f"http://{host}:{port}"
    print(
        f"serving {model_uri} at {url} (docs {url}/docs, ready once {url}/readyz answers 200)\n"
        f"  curl -F file=@film.jpeg {url}/predict"
    )
    serve_until_signalled(app, "pneumo", serve_cfg.drain_timeout_s)  # SIGTERM or Ctrl-C: drain, then return
    if not os.environ.get("RAY_ADDRESS"):  # the Ray started here goes with it; a cluster's stays up
        serve.shutdown()
        ray.shutdown()


def build_parser() -> argparse.ArgumentParser:
    from pneumo.config import SynthConfig
    from pneumo.data.synthetic import PNEUMONIA_SHARE

    parser = argparse.ArgumentParser(prog="pneumo", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="train (or search), evaluate and register one experiment")
    run.add_argument("config", nargs="+", help="experiment YAML(s), then key=value overrides")
    run.add_argument("--resume", action="store_true", help="continue the last unfinished run of this experiment")
    run.add_argument(
        "--verbose", action="store_true", help="show Ray's own output here instead of only in the run's log file"
    )
    run.set_defaults(handler=cmd_run)
    evaluate = commands.add_parser(
        "eval", help="score a model on a dataset: metrics with intervals, pictures, report.html, an MLflow run"
    )
    evaluate.add_argument(
        "model", help="checkpoint folder, models:/NAME@alias, models:/NAME/VERSION or runs:/RUN_ID/model"
    )
    evaluate.add_argument("data", help="dataset path (data.path), e.g. a Kaggle-layout chest_xray folder")
    evaluate.add_argument("--split", default="test", choices=("train", "val", "test"), help="split to score")
    evaluate.add_argument(
        "--config",
        nargs="+",
        default=[],
        help="experiment YAML(s) for the data/eval/mlflow settings, then key=value overrides",
    )
    evaluate.add_argument("--out", help="report folder (default reports/<model>-<version>-eval-<split>-<time>)")
    evaluate.add_argument(
        "--runtime",
        default="torch",
        choices=("torch", "onnxruntime", "openvino", "auto"),
        help="score with this runtime, as serve.runtime would serve it (default torch)",
    )
    evaluate.add_argument("--int8", action="store_true", help="score the model's int8 export (export.int8)")
    evaluate.add_argument("--verbose", action="store_true", help="show Ray's own output here, not only in the log file")
    evaluate.set_defaults(handler=cmd_eval)
    monitor = commands.add_parser(
        "monitor",
        help="compare a dataset with a model's reference profile: drift, "
        "out-of-distribution films, report.html, an MLflow run",
    )
    monitor.add_argument(
        "model", help="checkpoint folder, models:/NAME@alias, models:/NAME/VERSION or runs:/RUN_ID/model"
    )
    monitor.add_argument("data", help="dataset path (data.path): a new hospital's folder, a manifest, an .npz")
    monitor.add_argument("--split", default="all", choices=("all", "train", "val", "test"), help="films to compare")
    monitor.add_argument("--config", nargs="+", default=[], help="experiment YAML(s), then key=value overrides")
    monitor.add_argument("--out", help="report folder (default reports/<model>-<version>-monitor-<split>-<time>)")
    monitor.add_argument("--verbose", action="store_true", help="show Ray's own output here, not only in the log file")
    monitor.set_defaults(handler=cmd_monitor)
    predict = commands.add_parser(
        "predict",
        help="score an archive offline with Ray Data: one row per file in Parquet, summary.json, an MLflow run",
    )
    predict.add_argument(
        "model", help="checkpoint folder, models:/NAME@alias, models:/NAME/VERSION or runs:/RUN_ID/model"
    )
    predict.add_argument(
        "data",
        help="films to score: a folder (any depth; JPEG, PNG, DICOM), a CSV/Parquet manifest with a path "
        "column, or an .npz; local, s3:// or gs://; or a PACS: dicomweb+http(s)://HOST:PORT/PATH (credentials "
        "from $PNEUMO_DICOMWEB_USER and $PNEUMO_DICOMWEB_PASSWORD)",
    )
    predict.add_argument("--out", required=True, help="output folder (new or empty; with --resume, this model's)")
    predict.add_argument("--config", nargs="+", default=[], help="experiment YAML(s), then key=value overrides")
    predict.add_argument(
        "--runtime",
        choices=("torch", "onnxruntime", "openvino", "auto"),
        help="score with this runtime (default serve.runtime: auto, the fastest here)",
    )
    predict.add_argument("--batch-size", type=int, help="films per model call (default eval.batch_size)")
    predict.add_argument(
        "--actors",
        type=int,
        default=0,
        help="scoring actors, all started at once (default: a pool growing from 1 to one per GPU, or per 2 CPUs)",
    )
    predict.add_argument("--threads", type=int, default=1, help="intra-op threads (and Ray CPUs) per actor")
    predict.add_argument("--gpu", action="store_true", help="one GPU per actor, PyTorch on CUDA (or scaling.use_gpu)")
    predict.add_argument(
        "--part-rows", type=int, default=1000, help="rows per Parquet part (a killed job keeps whole parts)"
    )
    predict.add_argument(
        "--explain", action="store_true", help="Grad-CAM overlays (PNG) of films at or above the threshold"
    )
    predict.add_argument("--csv", action="store_true", help="also write predictions.csv")
    predict.add_argument("--resume", action="store_true", help="score only the files not yet in --out (same model)")
    predict.add_argument("--study", metavar="UID", help="with a dicomweb+ DATA: the study to score")
    predict.add_argument("--modality", help="with a dicomweb+ DATA: score every study of these modalities (CR,DX)")
    predict.add_argument(
        "--store-sr", action="store_true", help="with a dicomweb+ DATA: store each SR into its study (STOW-RS)"
    )
    predict.add_argument(
        "--dicom-sr", metavar="DIR", help="a DICOM SR (TID 1500) per scored or refused DICOM film, into DIR"
    )
    predict.add_argument("--verbose", action="store_true", help="show Ray's own output here, not only in the log file")
    predict.set_defaults(handler=cmd_predict)
    config = commands.add_parser("config", help="inspect experiment configs").add_subparsers(
        dest="action", required=True
    )
    show = config.add_parser("show", help="print the resolved config")
    show.add_argument("config", nargs="+", help="experiment YAML(s), then key=value overrides")
    show.set_defaults(handler=cmd_config_show)
    data = commands.add_parser("data", help="dataset tools").add_subparsers(dest="action", required=True)
    synth = data.add_parser("synth", help="write a synthetic chest X-ray set in the Kaggle layout")
    synth.add_argument("--out", required=True, help="folder to create (must be empty)")
    synth.add_argument("--n", type=int, default=SynthConfig.n_images, help="number of images")
    synth.add_argument("--size", type=int, default=SynthConfig.image_size, help="image side, px")
    synth.add_argument("--seed", type=int, default=SynthConfig.seed, help="same seed, same files")
    synth.add_argument(
        "--label-noise", type=float, default=SynthConfig.label_noise, help="fraction of flipped folder labels"
    )
    shift = synth.add_argument_group("another hospital (monitoring tests; defaults: the usual set)")
    shift.add_argument("--exposure", type=float, default=0.0, help="brightness offset on the 0..1 scale, e.g. -0.2")
    shift.add_argument("--noise", type=float, default=0.0, help="extra noise standard deviation, e.g. 0.08")
    shift.add_argument("--blur", type=float, default=0.0, help="extra blur sigma in px of a 128 px film, e.g. 2")
    shift.add_argument("--resolution", type=float, default=1.0, help="detector resolution share, e.g. 0.25")
    shift.add_argument(
        "--portable", action="store_true", help="AP portable look (large heart, shallow breath, collimated edges)"
    )
    shift.add_argument("--inverted", action="store_true", help="inverted polarity")
    shift.add_argument("--prevalence", type=float, default=PNEUMONIA_SHARE, help="share of pneumonia films (0.05-0.95)")
    synth.set_defaults(handler=cmd_data_synth)
    inspect = data.add_parser(
        "inspect", help="counts, sizes, unreadable files and leakage between splits (exit status 1 on leakage)"
    )
    inspect.add_argument("path", help="Kaggle-layout folder, MedMNIST .npz or CSV/Parquet manifest")
    inspect.add_argument("--format", default="auto", choices=("auto", "folder", "npz", "manifest"))
    inspect.set_defaults(handler=cmd_data_inspect)
    serve_cmd = commands.add_parser("serve", help="serve a model over HTTP with Ray Serve (POST /predict)")
    serve_cmd.add_argument(
        "model",
        nargs="?",
        help="checkpoint folder, models:/NAME@alias, models:/NAME/VERSION or "
        "runs:/RUN_ID/model (default: $PNEUMO_MODEL_URI, serve.model_uri, "
        "models:/<registered_model_name>@champion)",
    )
    serve_cmd.add_argument("--config", nargs="+", default=[], help="experiment YAML(s), then key=value overrides")
    serve_cmd.add_argument("--host", help="bind address (default serve.host: 127.0.0.1, this machine only)")
    serve_cmd.add_argument("--port", type=int, help="HTTP port (default serve.port: 8000)")
    serve_cmd.set_defaults(handler=cmd_serve)
    return parser


USER_ERRORS = {  # errors a user causes (a config, a dataset, an image, a model) -> the kind `pneumo` names
    ("pneumo.config", "ConfigError"): "config error",
    ("pneumo.data.folder", "DatasetLayoutError"): "data error",
    ("pneumo.data.dataset", "BadImageError"): "data error",
    ("pneumo.data.transforms", "ImageDecodeError"): "image error",
    ("pneumo.models.checkpoints", "CheckpointError"): "model error",
    ("pneumo.training.storage", "StorageFullError"): "storage error",
    ("mlflow.exceptions", "MlflowException"): "MLflow error",
}


def user_error_kind(error: BaseException) -> Optional[str]:
    """The kind USER_ERRORS names for `error`, None for a bug (which keeps its traceback). Classes are
    looked up among the modules imported so far (an error can only come from one of them), so a quick
    command (`config show`) never pays for importing torch and MLflow to word its error."""
    for (module, name), kind in USER_ERRORS.items():
        cls = getattr(sys.modules.get(module), name, None)
        if cls is not None and isinstance(error, cls):
            return kind
    return None


def is_user_error(error: BaseException) -> bool:
    return user_error_kind(error) is not None


def parse_command(argv: Optional[list[str]] = None) -> argparse.Namespace:
    """The command line, with key=value overrides taken after other options too: argparse ends a list
    argument at the next option, so `pneumo run x.yaml --resume train.epochs=2` (the same command again
    with --resume added) would otherwise be refused."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    overrides = [item for item in rest if "=" in item and not item.startswith("-")]
    if rest != overrides or (overrides and not isinstance(getattr(args, "config", None), list)):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if overrides:
        args.config = [*args.config, *overrides]
    return args


def main(argv: Optional[list[str]] = None) -> None:
    for key, value in QUIET_DEFAULTS.items():
        os.environ.setdefault(key, value)
    if not os.environ.get("RAY_ADDRESS"):
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_command(argv)
    try:
        args.handler(args)
    except Exception as error:
        kind = user_error_kind(error)
        if kind is None:
            raise
        message = error.message if hasattr(error, "message") and isinstance(error.message, str) else str(error)
        raise SystemExit(f"pneumo: {kind}: {message}") from None
    if argv is None:  # the process's own command, about to exit (tests call main([...]) and go on)
        # Python's exit traverses every object torch, timm, Ray and MLflow created, in a final garbage
        # collection; frozen ones are skipped: the exit after `pneumo run` is ~1.5 s shorter here.
        gc.freeze()


if __name__ == "__main__":
    main()
