"""Serve app vs a plain FastAPI + uvicorn process, same checkpoint, same images, in one run.

    python -m bench.serve_bench                          # untrained resnet10t at 64 px, 10 s per level
    python -m bench.serve_bench --checkpoint results/quickstart-…/best_model --duration-s 20
    python -m bench.serve_bench --runtimes torch openvino   # which runtimes (default: every one)

For each runtime the plain server and then the Serve app run back to back (A/B under the same
machine load), both with that runtime and the same thread count. Each server is driven by
bench/load.py in a separate process at each concurrency; the table, the issue's target ratios and
bench/results/serve.json follow. Weights do not change the cost of a forward pass, so without
--checkpoint an untrained checkpoint of --model is written (same architecture, same preprocessing).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import requests

from pneumo.cli.ray_start import free_local_port

if TYPE_CHECKING:
    from pneumo.serve.builder import ServeArgs

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "serve.json"
QUICKSTART = REPO / "experiments" / "quickstart.yaml"
EXPLAIN_LEVELS = [1, 8]  # concurrency for /explain: a reader at a time, and a busy page


def untrained_checkpoint(out: Path, model_name: str, image_size: int) -> Path:
    from pneumo.config import ModelConfig
    from pneumo.models.checkpoints import CheckpointMeta, save_checkpoint
    from pneumo.models.networks import create_model, resolve_preprocessing

    cfg = ModelConfig(name=model_name, in_chans=1)
    model = create_model(cfg)
    spec = resolve_preprocessing(model, in_chans=1, image_size=image_size)
    return save_checkpoint(out, model, CheckpointMeta(model=cfg.__dict__, preprocessing=spec.to_dict()))


def write_images(out: Path, n_images: int, image_size: int) -> Path:
    """Synthetic chest films as JPEG files, the request bodies."""
    from pneumo.data.synthetic import generate_chest_xrays

    generate_chest_xrays(out / "synthetic", n_images=n_images, image_size=image_size, seed=0)
    for path in sorted((out / "synthetic").glob("*/*/*.jpeg")):
        path.rename(out / path.name)
    return out


def wait_ready(url: str, timeout_s: float = 180) -> None:
    """Until /readyz answers 200 (a loaded machine may take seconds to answer at all)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/readyz", timeout=10).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url}/readyz did not answer 200 within {timeout_s} s")


def drive(url: str, images: Path, levels: list[int], duration_s: float, route: str = "/predict") -> list[dict]:
    """One load-generator process per concurrency level."""
    rows = []
    for concurrency in levels:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.load",
                f"{url}{route}",
                str(images),
                "--concurrency",
                str(concurrency),
                "--duration-s",
                str(duration_s),
            ],
            cwd=REPO,
            check=True,
            capture_output=True,
            text=True,
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"  {url}: concurrency {concurrency} done", file=sys.stderr)
    return rows


def bench_plain(
    checkpoint: Path, images: Path, levels: list[int], duration_s: float, torch_threads: int, runtime: str
) -> list[dict]:
    port = free_local_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.plain_server",
            "--checkpoint",
            str(checkpoint),
            "--port",
            str(port),
            "--torch-threads",
            str(torch_threads),
            "--runtime",
            runtime,
        ],
        cwd=REPO,
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}")
        return drive(f"http://127.0.0.1:{port}", images, levels, duration_s)
    finally:
        server.terminate()
        server.wait(timeout=30)


def bench_runtimes(
    checkpoint: Path,
    images: Path,
    levels: list[int],
    duration_s: float,
    args: ServeArgs,
    runtimes: list[str],
    torch_threads: int,
) -> dict[str, list[dict]]:
    """Per runtime: the plain server, then the Serve app (serve.runtime=<runtime>) at each level; then
    /explain (prediction + Grad-CAM map) on the last Serve app at EXPLAIN_LEVELS."""
    import ray
    from ray import serve

    from pneumo.serve.builder import build_app

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="WARNING")
    results: dict[str, list[dict]] = {}
    try:
        port = free_local_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        for runtime in runtimes:
            results[f"plain {runtime}"] = bench_plain(checkpoint, images, levels, duration_s, torch_threads, runtime)
            app_args = args.model_copy(update={"overrides": [*args.overrides, f"serve.runtime={runtime}"]})
            serve.run(build_app(app_args), name="pneumo", route_prefix="/")
            wait_ready(f"http://127.0.0.1:{port}")
            results[f"serve {runtime}"] = drive(f"http://127.0.0.1:{port}", images, levels, duration_s)
        results["serve /explain"] = drive(
            f"http://127.0.0.1:{port}", images, EXPLAIN_LEVELS, duration_s, route="/explain"
        )
        return results
    finally:
        serve.shutdown()
        ray.shutdown()


def target_ratios(results: dict[str, list[dict]], fast: str) -> dict[str, float]:
    """The issue's targets: Serve (on `fast`) against plain FastAPI + PyTorch fp32 eager, and against
    plain FastAPI on the same runtime."""

    def row(server: str, concurrency: int) -> dict:
        return next(r for r in results[server] if r["concurrency"] == concurrency)

    serve, levels = f"serve {fast}", [r["concurrency"] for r in results["plain torch"]]
    low, mid, high = min(levels), sorted(levels)[len(levels) // 2], max(levels)
    return {
        f"p50 at {low} client, serve {fast} / plain torch (target <= 1.3)": row(serve, low)["p50_ms"]
        / row("plain torch", low)["p50_ms"],
        f"req/s at {high} clients, serve {fast} / plain torch (target >= 2)": row(serve, high)["rps"]
        / row("plain torch", high)["rps"],
        f"p99 at {high} / p99 at {mid} clients, serve {fast} (target <= 2)": row(serve, high)["p99_ms"]
        / row(serve, mid)["p99_ms"],
        f"p50 at {low} client, serve {fast} / plain {fast}": row(serve, low)["p50_ms"]
        / row(f"plain {fast}", low)["p50_ms"],
        f"req/s at {high} clients, serve {fast} / plain {fast}": row(serve, high)["rps"]
        / row(f"plain {fast}", high)["rps"],
    }


def format_table(results: dict[str, list[dict]]) -> str:
    lines = [f"{'server':<14} {'conc':>4} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}"]
    for server, rows in results.items():
        for row in rows:
            p50, p99 = (f"{row[k]:8.1f}" if row[k] is not None else f"{'-':>8}" for k in ("p50_ms", "p99_ms"))
            lines.append(f"{server:<14} {row['concurrency']:>4} {row['rps']:8.1f} {p50} {p99} {row['errors']:>6}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict:
    """Both servers on the same checkpoint and images; the settings and rows that go to the JSON."""
    from pneumo.serve.builder import ServeArgs, load_serving_config
    from pneumo.serve.ingress import use_ingress

    load_before = os.getloadavg()  # other jobs on the machine move these numbers a lot
    with tempfile.TemporaryDirectory(prefix="pneumo-bench-") as tmp:
        work = Path(tmp)
        checkpoint = args.checkpoint or untrained_checkpoint(work / "checkpoint", args.model, args.image_size)
        images = write_images(work / "images", n_images=60, image_size=128)
        serve_args = ServeArgs(model_uri=str(checkpoint), config=[str(QUICKSTART)], overrides=args.serve_override)
        serve_cfg = load_serving_config(serve_args)[0]
        torch_threads = serve_cfg.torch_threads  # the plain server gets the same
        use_ingress(serve_cfg.ingress)  # before bench_runtimes starts Ray
        results = bench_runtimes(
            checkpoint, images, args.concurrency, args.duration_s, serve_args, args.runtimes, torch_threads
        )
    return {
        "checkpoint": str(args.checkpoint or f"untrained {args.model}"),
        "image_size": args.image_size,
        "duration_s": args.duration_s,
        "serve_overrides": args.serve_override,
        "torch_threads": torch_threads,
        "cpus": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "results": results,
        "targets": target_ratios(results, args.runtimes[-1]) if "torch" in args.runtimes else {},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, help="a pneumo checkpoint folder (default: untrained --model)")
    parser.add_argument("--model", default="resnet10t", help="timm model of the untrained checkpoint")
    parser.add_argument("--image-size", type=int, default=64, help="model input side, px")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--duration-s", type=float, default=10.0, help="measured seconds per level")
    parser.add_argument(
        "--runtimes",
        nargs="+",
        default=["torch", "onnxruntime", "openvino"],
        help="serve.runtime values, each benched on both servers; the last is the fast one "
        "the targets are computed for",
    )
    parser.add_argument(
        "--serve-override",
        nargs="*",
        default=[],
        help="serve.* settings for the Serve app, e.g. serve.torch_threads=2 (default: as shipped)",
    )
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    report = run(parser.parse_args())
    print(format_table(report["results"]))
    for target, ratio in report["targets"].items():
        print(f"{target}: {ratio:.2f}")
    print(f"load average (1, 5, 15 min) before {report['load_average_before']}, after {report['load_average_after']}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2))
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
