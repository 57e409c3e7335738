"""Serve app vs a plain FastAPI + uvicorn process, same checkpoint, same images, in one run.

    python -m bench.serve_bench                          # untrained resnet10t at 64 px, 10 s per level
    python -m bench.serve_bench --checkpoint results/quickstart-…/best_model --duration-s 20

Each server is driven by bench/load.py in a separate process at each concurrency; the table goes to
stdout and bench/results/serve.json. Weights do not change the cost of a forward pass, so without
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

from pneumo.cli import free_local_port

if TYPE_CHECKING:
    from pneumo.serve.builder import ServeArgs

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "serve.json"
QUICKSTART = REPO / "experiments" / "quickstart.yaml"
EXPLAIN_LEVELS = [1, 8]  # concurrency for /explain: a reader at a time, and a busy page


def untrained_checkpoint(out: Path, model_name: str, image_size: int) -> Path:
    from pneumo.checkpoints import CheckpointMeta, save_checkpoint
    from pneumo.config import ModelConfig
    from pneumo.models import create_model, resolve_preprocessing

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
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/readyz", timeout=5).status_code == 200:
                return
        except requests.ConnectionError:
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


def bench_plain(checkpoint: Path, images: Path, levels: list[int], duration_s: float, torch_threads: int) -> list[dict]:
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
        ],
        cwd=REPO,
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}")
        return drive(f"http://127.0.0.1:{port}", images, levels, duration_s)
    finally:
        server.terminate()
        server.wait(timeout=30)


def bench_serve(checkpoint: Path, images: Path, levels: list[int], duration_s: float, args: ServeArgs
                ) -> dict[str, list[dict]]:
    """/predict at each level, then /explain (prediction + Grad-CAM map) at EXPLAIN_LEVELS."""
    import ray
    from ray import serve

    from pneumo.serve.builder import build_app

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="WARNING")
    try:
        port = free_local_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(args), name="pneumo", route_prefix="/")
        wait_ready(f"http://127.0.0.1:{port}")
        rows = drive(f"http://127.0.0.1:{port}", images, levels, duration_s)
        explain_rows = drive(f"http://127.0.0.1:{port}", images, EXPLAIN_LEVELS, duration_s, route="/explain")
        return {"serve": rows, "serve /explain": explain_rows}
    finally:
        serve.shutdown()
        ray.shutdown()


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

    load_before = os.getloadavg()  # other jobs on the machine move these numbers a lot
    with tempfile.TemporaryDirectory(prefix="pneumo-bench-") as tmp:
        work = Path(tmp)
        checkpoint = args.checkpoint or untrained_checkpoint(work / "checkpoint", args.model, args.image_size)
        images = write_images(work / "images", n_images=60, image_size=128)
        serve_args = ServeArgs(model_uri=str(checkpoint), config=[str(QUICKSTART)], overrides=args.serve_override)
        torch_threads = load_serving_config(serve_args)[0].torch_threads  # the plain server gets the same
        results = {
            "plain": bench_plain(checkpoint, images, args.concurrency, args.duration_s, torch_threads),
            **bench_serve(checkpoint, images, args.concurrency, args.duration_s, serve_args),
        }
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
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, help="a pneumo checkpoint folder (default: untrained --model)")
    parser.add_argument("--model", default="resnet10t", help="timm model of the untrained checkpoint")
    parser.add_argument("--image-size", type=int, default=64, help="model input side, px")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--duration-s", type=float, default=10.0, help="measured seconds per level")
    parser.add_argument(
        "--serve-override",
        nargs="*",
        default=[],
        help="serve.* settings for the Serve app, e.g. serve.torch_threads=2 (default: as shipped)",
    )
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    report = run(parser.parse_args())
    print(format_table(report["results"]))
    print(f"load average (1, 5, 15 min) before {report['load_average_before']}, after {report['load_average_after']}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2))
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
