"""Load generator, run in its own process so it does not share the server's interpreter.

    python -m bench.load URL IMAGE_DIR --concurrency 8 --duration-s 10   # prints one JSON line

`concurrency` clients each send the next image as soon as their previous answer arrives (a closed
loop), for `duration_s` after `warmup_s`; only answers inside the window count.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import aiohttp
import numpy as np


async def _client(
    session: aiohttp.ClientSession,
    url: str,
    images: list[bytes],
    start: float,
    stop: float,
    offset: int,
    latencies: list[float],
    errors: list[int],
) -> None:
    index = offset
    while time.perf_counter() < stop:
        sent = time.perf_counter()
        try:
            async with session.post(
                url, data=images[index % len(images)], headers={"Content-Type": "image/jpeg"}
            ) as response:
                await response.read()
                ok = response.status == 200
        except aiohttp.ClientError:
            ok = False
        done = time.perf_counter()
        if start <= sent and done <= stop:
            (latencies.append(done - sent) if ok else errors.append(1))
        index += 1


async def drive(url: str, images: list[bytes], concurrency: int, duration_s: float, warmup_s: float) -> dict:
    """Requests/second and latency percentiles of successful answers in the measured window."""
    latencies: list[float] = []
    errors: list[int] = []
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        start = time.perf_counter() + warmup_s
        stop = start + duration_s
        await asyncio.gather(
            *(_client(session, url, images, start, stop, i, latencies, errors) for i in range(concurrency))
        )
    ms = np.array(latencies) * 1000
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": len(errors),
        "rps": len(latencies) / duration_s,
        "p50_ms": float(np.percentile(ms, 50)) if len(ms) else None,
        "p99_ms": float(np.percentile(ms, 99)) if len(ms) else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("url")
    parser.add_argument("image_dir", type=Path)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration-s", type=float, default=10.0)
    parser.add_argument("--warmup-s", type=float, default=1.0)
    args = parser.parse_args()
    images = [path.read_bytes() for path in sorted(args.image_dir.glob("*.jpeg"))]
    print(json.dumps(asyncio.run(drive(args.url, images, args.concurrency, args.duration_s, args.warmup_s))))


if __name__ == "__main__":
    main()
