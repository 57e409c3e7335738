"""`pneumo predict` against the two other ways to score an archive, on the same films and runtime:

    python -m bench.predict_bench                            # 48 full-size JPEGs + 24 DICOMs, resnet10t at 64 px
    python -m bench.predict_bench --jpegs 400 --dicoms 200 --runtime openvino
    python -m bench.predict_bench --memory 2000 20000        # peak driver RSS of pneumo predict over small films

(a) a plain single-process loop: read, decode (pneumo.data: the same decode), score in batches with the
    runtime's predictor, given every core as intra-op threads;
(b) `pneumo predict` as a user runs it, on a quarter of the films and then on all of them: films/s of the
    scoring phase and of the whole command, and the marginal rate between the two runs (films added /
    seconds added), in which Ray's, the actors' and the models' start-up cancel out: an archive's rate;
(c) `pneumo serve` as a user runs it, the same films POSTed once each by 8 HTTP clients.

The files are full-size (1,024-2,048 px a side) JPEGs and 12/16-bit DICOMs from bench/films.py; the model
is an untrained checkpoint of the quickstart's architecture and size (a forward pass costs what a trained
one does). `auto` is resolved here once and the winner used by all three. Results: bench/results/predict.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "predict.json"
HTTP_CLIENTS = 8
SMALL_FILM_PX = 64  # films of the memory benchmark


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def write_config(folder: Path, runtime: str) -> Path:
    """The experiment file all three read: its MLflow store, results and serve settings."""
    path = folder / "bench.yaml"
    path.write_text(
        f"name: predict-bench\ndata: {{path: {folder}}}\n"
        f"mlflow: {{tracking_uri: 'sqlite:///{folder / 'mlflow.db'}'}}\n"
        f"scaling: {{storage_path: {folder / 'results'}}}\n"
        f"serve: {{runtime: {runtime}, ood_policy: 'off', poll_interval_s: 0, challenger: null}}\n"
    )
    return path


def resolve_runtime(checkpoint: Path, runtime: str, batch_size: int) -> str:
    from pneumo.models.checkpoints import load_checkpoint
    from pneumo.models.runtimes import choose_runtime, export_onnx

    loaded = load_checkpoint(checkpoint)
    export_onnx(loaded, checkpoint)
    return choose_runtime(runtime, loaded, 1, batch_size).runtime


def plain_loop(files: list[Path], checkpoint: Path, runtime: str, batch_size: int) -> dict:
    """One process: read, decode and score batch by batch; every core as the runtime's threads."""
    from pneumo.config import MAX_IMAGE_PIXELS
    from pneumo.data.sources import decode_stored, read_stored
    from pneumo.models.checkpoints import load_checkpoint
    from pneumo.models.runtimes import create_predictor

    loaded = load_checkpoint(checkpoint)
    spec = loaded.meta.preprocessing_spec
    predictor = create_predictor(loaded, runtime, threads=os.cpu_count())
    predictor.logits(np.zeros((1, spec.in_chans, spec.image_size, spec.image_size), np.uint8))
    read_s = decode_s = score_s = 0.0
    started = time.perf_counter()
    for start in range(0, len(files), batch_size):
        films = []
        for path in files[start : start + batch_size]:
            t0 = time.perf_counter()
            stored, _ = read_stored(str(path))
            t1 = time.perf_counter()
            films.append(decode_stored(stored, spec, MAX_IMAGE_PIXELS))
            t2 = time.perf_counter()
            read_s, decode_s = read_s + t1 - t0, decode_s + t2 - t1
        t3 = time.perf_counter()
        loaded.meta.calibration.probabilities(predictor.logits(np.stack(films)))
        score_s += time.perf_counter() - t3
    wall_s = time.perf_counter() - started
    per_film = {
        key: round(1000 * value / len(files), 2)
        for key, value in (("read", read_s), ("decode", decode_s), ("score", score_s))
    }
    return {
        "films": len(files),
        "wall_s": round(wall_s, 2),
        "films_per_s": round(len(files) / wall_s, 2),
        "ms_per_film": per_film,
    }


class PeakRss:
    """The largest resident set of a process, sampled every 0.1 s in a thread."""

    def __init__(self, pid: int):
        import psutil

        self.process, self.peak, self._stop = psutil.Process(pid), 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.1):
            try:
                self.peak = max(self.peak, self.process.memory_info().rss)
            except Exception:  # the process ended
                return

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def pneumo_predict(data: Path, checkpoint: Path, config: Path, out: Path, runtime: str, batch_size: int) -> dict:
    """`pneumo predict` in its own process, its driver's peak RSS sampled; films/s from its summary.json."""
    command = [sys.executable, "-m", "pneumo.cli", "predict", str(checkpoint), str(data), "--out", str(out)]
    command += ["--runtime", runtime, "--batch-size", str(batch_size), "--config", str(config)]
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    rss = PeakRss(process.pid)
    output, _ = process.communicate()
    wall_s, peak = time.perf_counter() - started, rss.stop()
    if process.returncode != 0:
        raise RuntimeError(f"pneumo predict failed:\n{output}")
    summary = json.loads((out / "summary.json").read_text())
    run = summary["this_run"]
    return {
        "films": run["films"],
        "films_per_s": run["films_per_s"],  # the scoring phase, the actors' start-up included
        "to_first_rows_s": run["to_first_rows_s"],
        "command_films_per_s": round(run["films"] / wall_s, 2),  # with Python, Ray and the actors starting
        "command_s": round(wall_s, 2),
        "scoring_s": run["scoring_s"],
        "actors": summary["actors"],
        "driver_peak_rss_mb": round(peak / 2**20, 1),
        "counts": summary["counts"]["status"],
    }


async def _post_all(url: str, files: list[Path], clients: int) -> tuple[float, int]:
    import aiohttp

    queue: asyncio.Queue[Path] = asyncio.Queue()
    for path in files:
        queue.put_nowait(path)
    errors = 0

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        while not queue.empty():
            path = queue.get_nowait()
            kind = "application/dicom" if path.suffix == ".dcm" else "image/jpeg"
            async with session.post(url, data=path.read_bytes(), headers={"Content-Type": kind}) as response:
                await response.read()
                errors += response.status != 200

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
        started = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(clients)))
        return time.perf_counter() - started, errors


def pneumo_serve(files: list[Path], checkpoint: Path, config: Path) -> dict:
    """`pneumo serve` in its own session; every film POSTed once by HTTP_CLIENTS clients after a warm-up."""
    from bench.serve_bench import wait_ready
    from pneumo.cli.ray_start import free_local_port

    port = free_local_port()
    command = [
        sys.executable,
        "-m",
        "pneumo.cli",
        "serve",
        str(checkpoint),
        "--port",
        str(port),
        "--config",
        str(config),
    ]
    server = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, timeout_s=900)  # a loaded 2-core machine took minutes to start a replica
        asyncio.run(_post_all(f"{url}/predict", files[:HTTP_CLIENTS], HTTP_CLIENTS))  # warm-up
        wall_s, errors = asyncio.run(_post_all(f"{url}/predict", files, HTTP_CLIENTS))
        return {
            "films": len(files),
            "clients": HTTP_CLIENTS,
            "wall_s": round(wall_s, 2),
            "films_per_s": round(len(files) / wall_s, 2),
            "errors": errors,
        }
    finally:
        server.send_signal(signal.SIGTERM)  # pneumo serve drains and stops its own Ray
        server.wait(timeout=120)


def compare(args: argparse.Namespace, work: Path) -> dict:
    from bench.films import write_full_size_films
    from bench.serve_bench import untrained_checkpoint

    data = work / "films"
    write_full_size_films(data / "jpeg", args.jpegs, "jpeg")
    write_full_size_films(data / "dicom", args.dicoms, "dicom", seed=1)
    files = sorted(p for p in data.rglob("*") if p.is_file())
    checkpoint = untrained_checkpoint(work / "model", args.model, args.image_size)
    runtime = resolve_runtime(checkpoint, args.runtime, args.batch_size)
    config = write_config(work, runtime)
    print(f"{len(files)} films, {args.model} at {args.image_size} px, runtime {runtime}", file=sys.stderr)
    plain = plain_loop(files, checkpoint, runtime, args.batch_size)
    print(f"  plain loop: {plain['films_per_s']} films/s", file=sys.stderr)
    quarter = linked(work / "quarter", files[::4], data)
    first = pneumo_predict(quarter, checkpoint, config, work / "scores-quarter", runtime, args.batch_size)
    predict = pneumo_predict(data, checkpoint, config, work / "scores", runtime, args.batch_size)
    # the fixed costs (Ray, actors starting, model loads) cancel out between the two sizes
    extra_s = predict["scoring_s"] - first["scoring_s"]
    predict["marginal_films_per_s"] = round((predict["films"] - first["films"]) / extra_s, 2) if extra_s > 0 else None
    predict["quarter"] = first
    print(
        f"  pneumo predict: {predict['films_per_s']} films/s, marginal {predict['marginal_films_per_s']}",
        file=sys.stderr,
    )
    served = pneumo_serve(files, checkpoint, config)
    print(f"  pneumo serve, {HTTP_CLIENTS} clients: {served['films_per_s']} films/s", file=sys.stderr)
    return {
        "films": {"jpeg": args.jpegs, "dicom": args.dicoms, "bytes": sum(p.stat().st_size for p in files)},
        "model": f"{args.model} at {args.image_size} px (untrained)",
        "runtime": runtime,
        "batch_size": args.batch_size,
        "plain_loop": plain,
        "pneumo_predict": predict,
        "pneumo_serve": served,
        "ratios": {
            "predict marginal / plain loop (target >= 0.9)": ratio(
                predict["marginal_films_per_s"], plain["films_per_s"]
            ),
            "predict marginal / serve, 8 clients (target >= 2)": ratio(
                predict["marginal_films_per_s"], served["films_per_s"]
            ),
            "predict scoring phase (actors starting included) / plain loop": ratio(
                predict["films_per_s"], plain["films_per_s"]
            ),
            "predict command (Python and Ray starting included) / plain loop": ratio(
                predict["command_films_per_s"], plain["films_per_s"]
            ),
        },
    }


def ratio(value: float | None, baseline: float) -> float | None:
    return round(value / baseline, 2) if value and baseline else None


def linked(folder: Path, files: list[Path], root: Path) -> Path:
    """A folder of hard links to `files` (kept at their place under `root`)."""
    for path in files:
        target = folder / path.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(path, target)
    return folder


def small_films(folder: Path, n: int, sources: list[Path]) -> Path:
    """`n` files at n distinct paths (hard links to a few hundred small films), 1,000 per folder."""
    for i in range(n):
        target = folder / f"batch{i // 1000:03d}" / f"film{i:06d}.jpeg"
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(sources[i % len(sources)], target)
    return folder


def memory(args: argparse.Namespace, work: Path) -> dict:
    """Peak driver RSS of `pneumo predict` as the archive grows (it must not grow with the count)."""
    from bench.serve_bench import untrained_checkpoint
    from pneumo.data.synthetic import generate_chest_xrays

    generate_chest_xrays(work / "synthetic", n_images=400, image_size=SMALL_FILM_PX, seed=0)
    sources = sorted((work / "synthetic").rglob("*.jpeg"))
    checkpoint = untrained_checkpoint(work / "model", args.model, args.image_size)
    runtime = resolve_runtime(checkpoint, args.runtime, args.batch_size)
    config = write_config(work, runtime)
    rows = []
    for n in args.memory:
        data = small_films(work / f"small-{n}", n, sources)
        row = pneumo_predict(data, checkpoint, config, work / f"scores-{n}", runtime, args.batch_size)
        rows.append({"films": n, **row})
        print(
            f"  {n} films: driver peak RSS {row['driver_peak_rss_mb']} MB, {row['films_per_s']} films/s",
            file=sys.stderr,
        )
    return {
        "small_films_px": SMALL_FILM_PX,
        "model": f"{args.model} at {args.image_size} px",
        "runtime": runtime,
        "rows": rows,
    }


def bench_rows(result: dict) -> list[dict]:
    """`python -m bench all`'s rows: pneumo predict against the plain loop and the HTTP path."""
    predict, note = (
        result["pneumo_predict"],
        f"{result['films']['jpeg']} JPEG + {result['films']['dicom']} DICOM, {result['runtime']}",
    )
    return [
        {
            "benchmark": "archive scoring",
            "case": f"pneumo predict, {predict['actors']} actor(s)",
            "value": predict["marginal_films_per_s"],
            "unit": "films/s",
            "baseline": baseline,
            "ratio": ratio(predict["marginal_films_per_s"], result[key]["films_per_s"]),
            "note": note,
        }
        for baseline, key in (("plain loop", "plain_loop"), (f"pneumo serve, {HTTP_CLIENTS} clients", "pneumo_serve"))
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jpegs", type=int, default=48, help="full-size JPEG films")
    parser.add_argument("--dicoms", type=int, default=24, help="full-size DICOM films (12 and 16 bits)")
    parser.add_argument("--model", default="resnet10t", help="timm architecture (untrained)")
    parser.add_argument("--image-size", type=int, default=64, help="model input side, px")
    parser.add_argument("--runtime", default="auto", choices=("auto", "torch", "onnxruntime", "openvino"))
    parser.add_argument(
        "--batch-size", type=int, default=16, help="films per model call, all three (serve.max_batch_size)"
    )
    parser.add_argument(
        "--memory", type=int, nargs="+", help="instead: driver RSS of pneumo predict over these many small films"
    )
    args = parser.parse_args()
    started, load_before = time.strftime("%Y-%m-%d %H:%M"), os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="predict-bench-") as folder:
        result = memory(args, Path(folder)) if args.memory else compare(args, Path(folder))
    result.update(machine=machine(), date=started, load_average_before=[round(x, 1) for x in load_before])
    print(json.dumps(result, indent=2))
    path = RESULTS.with_name("predict-memory.json") if args.memory else RESULTS
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
