"""Where a lone request's time goes: CPU milliseconds per request in each process, Serve against plain.

    python -m bench.serve_cost                       # untrained resnet10t at 64 px, OpenVINO, 400 requests
    python -m bench.serve_cost --runtime torch --requests 1000
    python -m bench.serve_cost --ingress haproxy       # Serve behind Ray's HAProxy ingress

One client sends requests one after another (the 1-client case of bench/serve_bench.py) to three
servers in turn: the plain FastAPI + uvicorn server (bench/plain_server.py) with the runtime, the
pneumo Serve app with the same runtime, and a Serve app whose route only reads the body and answers
(the floor any Serve HTTP app pays: proxy, the replica's request machinery, the body fetched back
from the proxy). CPU time is read from /proc per process (Serve's proxy, replica and controller), so
it shows what each request costs whatever else the machine runs, unlike latency. Results go to
bench/results/serve_cost.json.
"""

# No `from __future__ import annotations`: Echo is pickled by value (this module runs as __main__), and
# FastAPI must resolve its route's `Request` annotation as a class in the replica.

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import requests
from fastapi import FastAPI
from ray import serve
from starlette.requests import Request

from bench.serve_bench import QUICKSTART, REPO, untrained_checkpoint, wait_ready, write_images
from pneumo.cli.ray_start import free_local_port

RESULTS = REPO / "bench" / "results" / "serve_cost.json"
WARMUP_REQUESTS = 30
SERVE_ACTORS = {"proxy": "ProxyActor", "replica": "ServeReplica", "controller": "ServeController"}


def cpu_seconds(processes: dict[str, psutil.Process]) -> dict[str, float]:
    return {name: sum(process.cpu_times()[:2]) for name, process in processes.items()}


def measure(url: str, bodies: list[bytes], n_requests: int, processes: dict[str, psutil.Process]) -> dict:
    """p50 latency and CPU ms per request of each process, over `n_requests` sequential requests."""
    session = requests.Session()
    headers = {"Content-Type": "image/jpeg"}
    for i in range(WARMUP_REQUESTS):
        session.post(url, data=bodies[i % len(bodies)], headers=headers).raise_for_status()
    before, latencies = cpu_seconds(processes), []
    for i in range(n_requests):
        sent = time.perf_counter()
        session.post(url, data=bodies[i % len(bodies)], headers=headers).raise_for_status()
        latencies.append(time.perf_counter() - sent)
    after = cpu_seconds(processes)
    per_request = {name: round(1000 * (after[name] - before[name]) / n_requests, 2) for name in processes}
    return {
        "p50_ms": round(1000 * statistics.median(latencies), 2),
        "cpu_ms_per_request": per_request,
        "cpu_ms_total": round(sum(per_request.values()), 2),
    }


def serve_processes() -> dict[str, psutil.Process]:
    """Serve's proxy, replica and controller in the Ray this process started (its descendants), by their
    process titles (`ray::ProxyActor`, `ray::ServeReplica:…`), and HAProxy with serve.ingress=haproxy
    (the newest: Serve reloads it by starting another)."""
    found = {}
    for process in psutil.Process().children(recursive=True):
        title = " ".join(process.cmdline())
        for name, marker in SERVE_ACTORS.items():
            if title.startswith("ray::") and marker in title:
                found[name] = process
        if process.name() == "haproxy":
            found["haproxy"] = max(process, found.get("haproxy", process), key=lambda p: p.create_time())
    return found


echo_api = FastAPI()


@serve.deployment
@serve.ingress(echo_api)
class Echo:
    """The floor: an ingress deployment that reads the body and answers its length."""

    @echo_api.post("/predict")
    async def predict(self, request: Request) -> dict:
        return {"bytes": len(await request.body())}


def run(args: argparse.Namespace) -> dict:
    import ray

    from pneumo.serve.builder import ServeArgs, build_app
    from pneumo.serve.ingress import use_ingress

    load_before = os.getloadavg()
    rows = {}
    with tempfile.TemporaryDirectory(prefix="pneumo-cost-") as tmp:
        checkpoint = untrained_checkpoint(Path(tmp) / "checkpoint", args.model, args.image_size)
        images = write_images(Path(tmp) / "images", n_images=60, image_size=128)
        bodies = [path.read_bytes() for path in sorted(images.glob("*.jpeg"))]

        port = free_local_port()
        plain = subprocess.Popen(
            [sys.executable, "-m", "bench.plain_server", "--checkpoint", str(checkpoint), "--port", str(port)]
            + ["--torch-threads", "1", "--runtime", args.runtime],
            cwd=REPO,
        )
        try:
            wait_ready(f"http://127.0.0.1:{port}")
            rows[f"plain {args.runtime}"] = measure(
                f"http://127.0.0.1:{port}/predict", bodies, args.requests, {"server": psutil.Process(plain.pid)}
            )
        finally:
            plain.terminate()
            plain.wait(timeout=30)

        use_ingress(args.ingress)
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="WARNING")
        try:
            port = free_local_port()
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            url = f"http://127.0.0.1:{port}"
            serve.run(Echo.bind(), name="echo", route_prefix="/")
            rows["serve echo (floor)"] = measure(f"{url}/predict", bodies, args.requests, serve_processes())
            serve.delete("echo")
            app_args = ServeArgs(
                model_uri=str(checkpoint),
                config=[str(QUICKSTART)],
                overrides=[f"serve.runtime={args.runtime}", f"serve.ingress={args.ingress}"],
            )
            serve.run(build_app(app_args), name="pneumo", route_prefix="/")
            wait_ready(url)
            rows[f"serve {args.runtime}"] = measure(f"{url}/predict", bodies, args.requests, serve_processes())
        finally:
            serve.shutdown()
            ray.shutdown()
    return {
        "model": args.model,
        "image_size": args.image_size,
        "runtime": args.runtime,
        "ingress": args.ingress,
        "requests": args.requests,
        "cpus": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "rows": rows,
    }


def format_table(result: dict) -> str:
    lines = [f"{'server':<22} {'p50 ms':>7} {'CPU ms/request':>15}  by process"]
    for server, row in result["rows"].items():
        parts = ", ".join(f"{name} {ms:.2f}" for name, ms in row["cpu_ms_per_request"].items())
        lines.append(f"{server:<22} {row['p50_ms']:7.2f} {row['cpu_ms_total']:15.2f}  {parts}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnet10t", help="timm model of the untrained checkpoint")
    parser.add_argument("--image-size", type=int, default=64, help="model input side, px")
    parser.add_argument("--runtime", default="openvino", help="serve.runtime of both servers")
    parser.add_argument("--ingress", default="proxy", choices=("proxy", "haproxy"), help="serve.ingress of Serve")
    parser.add_argument("--requests", type=int, default=400, help="measured requests per server")
    result = run(parser.parse_args())
    print(format_table(result))
    print(f"load average (1, 5, 15 min) before {result['load_average_before']}, after {result['load_average_after']}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
