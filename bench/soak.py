"""Soak test: `pneumo serve` under sustained load with hostile bodies mixed in.

    python -m bench.soak                                   # 10 min, 32 clients, 20% bad bodies
    python -m bench.soak --duration-s 60 --clients 8       # the test suite's short version

Starts `pneumo serve` on an untrained checkpoint (weights do not change the cost of a forward pass)
in its own process tree, drives it with a closed loop of `clients` aiohttp clients (each sends its
next request when the previous answer arrives) and records every request: status, latency, minute.
A share `bad_share` of bodies is hostile: not an image, empty, truncated JPEG, a decompression bomb,
the wrong Content-Type, multipart without `file`. Replica memory (RSS of the Serve replica process)
is sampled every few seconds. The report (stdout and bench/results/soak.json) holds requests and
status counts, p50/p99 per minute and the memory after warm-up (end of minute 1) and at the end, and
`holds` says whether: no 5xx but Serve's 503, memory growth <= 5% after warm-up, last-minute p99 <= 1.2x
the second minute's.

A client of our own rather than locust: it is the same closed loop as bench/load.py (so figures compare
with the serve benchmark), percentiles come from every raw latency (locust rounds into buckets), and
it adds no dependency; on two cores any Python load generator competes with the server for CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np
import psutil
from PIL import Image

from bench.serve_bench import untrained_checkpoint, wait_ready, write_images
from pneumo.cli.ray_start import free_local_port

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "soak.json"
REPLICA_TITLE = "ServeReplica:pneumo:PneumoniaService"  # the replica's process title
MEMORY_GROWTH_LIMIT = 0.05  # after warm-up
P99_DRIFT_LIMIT = 1.2  # last minute's p99 over the second minute's
BUCKET_S = 60.0  # one row of the report per minute
CLIENT_TIMEOUT_S = 29.5  # a request unanswered this long counts as a hang (the target: none over 30 s)


def bad_bodies(jpeg: bytes) -> dict[str, tuple[bytes, dict[str, str]]]:
    """Hostile requests the endpoint must refuse with a 4xx, by name -> (body, headers)."""
    bomb = io.BytesIO()
    Image.new("L", (8000, 8000)).save(bomb, format="PNG")  # 64 Mpx in ~60 kB: over serve.max_image_pixels
    boundary = "soakboundary"
    no_file = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="x.jpeg"\r\n\r\n'
        f"123\r\n--{boundary}--\r\n"
    ).encode()
    return {
        "not_an_image": (os.urandom(2048), {"Content-Type": "image/jpeg"}),
        "empty": (b"", {"Content-Type": "image/png"}),
        "truncated_jpeg": (jpeg[: len(jpeg) // 2], {"Content-Type": "image/jpeg"}),
        "decompression_bomb": (bomb.getvalue(), {"Content-Type": "image/png"}),
        "wrong_content_type": (b'{"image": "x"}', {"Content-Type": "application/json"}),
        "multipart_without_file": (no_file, {"Content-Type": f"multipart/form-data; boundary={boundary}"}),
    }


@dataclass
class Record:
    sent_s: float  # since the start of the run
    latency_s: float
    status: int  # HTTP status; 0: no answer (connection error or client timeout)
    bad: bool  # a hostile body


@dataclass
class Soak:
    records: list[Record] = field(default_factory=list)
    memory: list[tuple[float, int]] = field(default_factory=list)  # (s since start, replica RSS bytes)


async def _client(
    session: aiohttp.ClientSession,
    url: str,
    good: list[bytes],
    bad: list[tuple[bytes, dict]],
    bad_share: float,
    start: float,
    stop: float,
    rng: random.Random,
    soak: Soak,
) -> None:
    while (now := time.perf_counter()) < stop:
        is_bad = rng.random() < bad_share
        body, headers = rng.choice(bad) if is_bad else (rng.choice(good), {"Content-Type": "image/jpeg"})
        try:
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
                status = response.status
        except (aiohttp.ClientError, asyncio.TimeoutError):
            status = 0
        soak.records.append(Record(now - start, time.perf_counter() - now, status, is_bad))


async def _sample_memory(pid: int, start: float, stop: float, soak: Soak, every_s: float = 5.0) -> None:
    while time.perf_counter() < stop:
        rss = replica_rss(pid)
        if rss:
            soak.memory.append((time.perf_counter() - start, rss))
        await asyncio.sleep(every_s)


def replica_rss(server_pid: int) -> int:
    """RSS of the Serve replica process among the descendants of the `pneumo serve` process (0 if none)."""
    try:
        for child in psutil.Process(server_pid).children(recursive=True):
            try:
                if REPLICA_TITLE in " ".join(child.cmdline()):
                    return child.memory_info().rss
            except psutil.Error:
                continue
    except psutil.Error:
        pass
    return 0


async def drive(
    url: str,
    good: list[bytes],
    bad: list[tuple[bytes, dict]],
    clients: int,
    bad_share: float,
    duration_s: float,
    server_pid: int,
    timeout_s: float = CLIENT_TIMEOUT_S,
    seed: int = 0,
) -> Soak:
    soak = Soak()
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
        start = time.perf_counter()
        stop = start + duration_s
        await asyncio.gather(
            _sample_memory(server_pid, start, stop, soak),
            *(
                _client(session, url, good, bad, bad_share, start, stop, random.Random(seed + i), soak)
                for i in range(clients)
            ),
        )
    return soak


def summarize(soak: Soak, duration_s: float, bucket_s: float = BUCKET_S, timeout_s: float = CLIENT_TIMEOUT_S) -> dict:
    """Counts, per-minute latency percentiles of good requests, memory, and whether each target holds."""
    statuses = Counter(str(r.status) for r in soak.records)
    minutes = []
    for index in range(max(1, int(np.ceil(duration_s / bucket_s)))):
        inside = [r for r in soak.records if index * bucket_s <= r.sent_s < (index + 1) * bucket_s]
        good_ms = np.array([r.latency_s for r in inside if not r.bad and r.status == 200]) * 1000
        minutes.append(
            {
                "minute": index + 1,
                "requests": len(inside),
                "statuses": dict(Counter(str(r.status) for r in inside)),
                "p50_ms": round(float(np.percentile(good_ms, 50)), 1) if len(good_ms) else None,
                "p99_ms": round(float(np.percentile(good_ms, 99)), 1) if len(good_ms) else None,
            }
        )
    warm = [rss for s, rss in soak.memory if s >= min(bucket_s, duration_s / 2)]
    after_warmup, at_end = (warm[0], warm[-1]) if warm else (0, 0)
    growth = (at_end - after_warmup) / after_warmup if after_warmup else None
    server_errors = {code: n for code, n in statuses.items() if code.startswith("5") and code != "503"}
    bad_answers = Counter(str(r.status) for r in soak.records if r.bad)
    second, last = (minutes[1]["p99_ms"], minutes[-1]["p99_ms"]) if len(minutes) > 2 else (None, None)
    return {
        "requests": len(soak.records),
        "statuses": dict(statuses),
        "bad_body_statuses": dict(bad_answers),
        "longest_s": round(max((r.latency_s for r in soak.records), default=0), 2),
        "unanswered": {
            "refused_or_reset": sum(r.status == 0 and r.latency_s < timeout_s for r in soak.records),
            "timed_out": sum(r.status == 0 and r.latency_s >= timeout_s for r in soak.records),
        },
        "minutes": minutes,
        "replica_rss_mb": {
            "after_warmup": round(after_warmup / 2**20, 1),
            "end": round(at_end / 2**20, 1),
            "growth": round(growth, 4) if growth is not None else None,
        },
        "holds": {
            "no_5xx_but_503": not server_errors,
            "every_request_answered": "0" not in statuses,
            "bad_bodies_get_4xx": all(code.startswith("4") or code == "503" for code in bad_answers),
            "memory_growth_le_5pct": growth is not None and growth <= MEMORY_GROWTH_LIMIT,
            "last_p99_le_1.2x_second": None if second is None or last is None else last <= P99_DRIFT_LIMIT * second,
        },
    }


def start_server(checkpoint: Path, port: int, workdir: Path) -> tuple[subprocess.Popen, str]:
    """`pneumo serve` in its own session and Ray (own RAY_TMPDIR), so stopping it stops only its processes."""
    env = {**os.environ, "RAY_TMPDIR": tempfile.mkdtemp(prefix="soakray", dir="/tmp")}
    env.pop("RAY_ADDRESS", None)
    server = subprocess.Popen(
        [sys.executable, "-m", "pneumo.cli", "serve", str(checkpoint), "--port", str(port)],
        cwd=workdir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    return server, env["RAY_TMPDIR"]


def stop_server(server: subprocess.Popen, ray_tmpdir: str) -> None:
    os.killpg(server.pid, signal.SIGINT)  # pneumo serve drains and shuts Serve down on Ctrl-C
    try:
        server.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
    shutil.rmtree(ray_tmpdir, ignore_errors=True)  # its Ray's sessions and logs


def run(duration_s: float, clients: int, bad_share: float, model: str, image_size: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="soak") as scratch:
        workdir = Path(scratch)
        checkpoint = untrained_checkpoint(workdir / "checkpoint", model, image_size)
        images = write_images(workdir / "images", 60, 128)
        good = [path.read_bytes() for path in sorted(images.glob("*.jpeg"))]
        bad = list(bad_bodies(good[0]).values())
        port = free_local_port()
        server, ray_tmpdir = start_server(checkpoint, port, workdir)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_ready(url, timeout_s=300)
            soak = asyncio.run(drive(f"{url}/predict", good, bad, clients, bad_share, duration_s, server.pid))
        finally:
            stop_server(server, ray_tmpdir)
    return {
        "duration_s": duration_s,
        "clients": clients,
        "bad_share": bad_share,
        "model": model,
        "image_size": image_size,
        **summarize(soak, duration_s),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration-s", type=float, default=600.0)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--bad-share", type=float, default=0.2)
    parser.add_argument("--model", default="resnet10t")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a timeout still stops the server it started
    report = run(args.duration_s, args.clients, args.bad_share, args.model, args.image_size)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
