"""Images/second of pneumo's decoding: today's decode against the full-size decode it replaced (one
process), and pneumo's Ray Data pipeline against a plain torch DataLoader (same decode function, same
number of processes), on three kinds of films, in one run.

    python -m bench.data_bench                       # 256 px JPEGs, full-size JPEGs, full-size DICOMs
    python -m bench.data_bench --cases jpeg --full-size-n 400 --passes 5

Cases: the synthetic generator's 256 px JPEGs (`--n`), full-size JPEGs of 1,024-2,048 px at quality
75-95 and 16-bit DICOMs (12 or 16 bits stored, windowed or not, MONOCHROME1/2) of the same sizes
(bench/films.py). Every film goes to 224 px grey.

The machine is shared and noisy, so everything is compared back to back and interleaved: the decode
A/B decodes each file with both functions in turn, `--passes` times (median pass per function); the
pipelines alternate DataLoader and Ray Data passes (median of the passes after the first, which
includes start-up). Both pipelines decode with `load_image` (file bytes, SHA-1, decode, resize) into
uint8 batches of 64: DataLoader(num_workers=W, persistent workers) against Ray Data decode tasks of
1 CPU on a W-CPU Ray (`decode_records`, the pipeline `prepare_data` runs). "+ cache" reads the
entry `data.cache_dir` holds for the same files. The table goes to stdout and bench/results/data.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench.films import write_full_size_films
from bench.reference_decode import reference_decode

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "data.json"
BATCH = 64
IMAGE_SIZE = 224
MAX_PIXELS = 40_000_000
CASES = {
    "small": "JPEG 256 px (generator)",
    "jpeg": "JPEG 1,024-2,048 px, q75-95",
    "dicom": "DICOM 1,024-2,048 px, 12/16-bit",
}


class DecodedFiles(torch.utils.data.Dataset):
    """The DataLoader baseline: one record -> (decoded image, label)."""

    def __init__(self, records, preprocessing):
        self.records, self.preprocessing = records, preprocessing

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        from pneumo.data.sources import load_image

        record = self.records[index]
        image, _ = load_image(record.path, self.preprocessing, MAX_PIXELS)
        return torch.from_numpy(image), record.label


def write_films(case: str, root: Path, n_small: int, n_full: int) -> Path:
    from pneumo.data.synthetic import generate_chest_xrays

    if case == "small":
        generate_chest_xrays(root, n_images=n_small, image_size=256, seed=0)
        return root
    return write_full_size_films(root, n_full, case)


def decode_ab(records, preprocessing, passes: int) -> dict:
    """Single-process decode cost of the full-size reference and of today's decode: each file decoded
    by both, back to back, in alternating order, so load swings on the machine fall on both alike.
    CPU time (this process's) is the headline: on a shared machine wall time mostly measures waiting."""
    from pneumo.data.transforms import decode_image

    files = [Path(r.path).read_bytes() for r in records]
    decoders = [
        ("reference", lambda data: reference_decode(data, preprocessing)),
        ("pneumo", lambda data: decode_image(data, preprocessing, MAX_PIXELS)),
    ]
    cpu_s = {name: [0.0] * passes for name, _ in decoders}
    wall_s = {name: [0.0] * passes for name, _ in decoders}
    for repeat in range(passes):
        for index, data in enumerate(files):
            for name, decode in decoders[::-1] if (index + repeat) % 2 else decoders:
                started, cpu_started = time.perf_counter(), time.process_time()
                decode(data)
                wall_s[name][repeat] += time.perf_counter() - started
                cpu_s[name][repeat] += time.process_time() - cpu_started
    cpu = {name: statistics.median(s) / len(files) for name, s in cpu_s.items()}
    wall = {name: statistics.median(s) / len(files) for name, s in wall_s.items()}
    return {
        "reference_cpu_ms": round(cpu["reference"] * 1e3, 1),
        "cpu_ms": round(cpu["pneumo"] * 1e3, 1),
        "speedup": round(cpu["reference"] / cpu["pneumo"], 2),
        "wall_speedup": round(wall["reference"] / wall["pneumo"], 2),
        "megabytes_per_film": round(sum(map(len, files)) / len(files) / 1e6, 2),
    }


def one_pass(batches) -> tuple[float, int]:
    started, images = time.perf_counter(), 0
    for batch in batches:
        images += len(batch)
    return time.perf_counter() - started, images


def pipelines_ab(records, preprocessing, workers: int, passes: int) -> dict:
    """Steady img/s of DataLoader and Ray Data streaming over the same records, passes interleaved."""
    from pneumo.data.dataset import decode_records

    loader = torch.utils.data.DataLoader(
        DecodedFiles(records, preprocessing),
        batch_size=BATCH,
        num_workers=workers,
        persistent_workers=True,
        multiprocessing_context="forkserver",
    )  # no fork of a Ray driver
    makers = {
        "DataLoader": lambda: (images for images, _ in loader),
        "Ray Data": lambda: (
            b["image"]
            for b in decode_records(records, preprocessing, MAX_PIXELS, cpus_per_task=1).iter_batches(
                batch_size=BATCH, batch_format="numpy"
            )
        ),
    }
    measured = {name: [] for name in makers}
    for _ in range(passes):
        for name, make in makers.items():
            measured[name].append(one_pass(make()))
    return {
        name: {
            "first_pass_images_per_s": round(runs[0][1] / runs[0][0], 1),
            "steady_images_per_s": round(statistics.median(n / s for s, n in runs[1:]), 1),
        }
        for name, runs in measured.items()
    }


def cache_pass(cfg, records, preprocessing, passes: int) -> dict:
    """Ray Data reading the decoded-image cache entry of these records (written first)."""
    from pneumo.data.cache import cache_key, read_cached
    from pneumo.data.dataset import decode_order, prepare_data

    prepare_data(cfg, preprocessing)  # writes the cache entry
    entry = cache_key(decode_order(records, cfg.split_seed), preprocessing, MAX_PIXELS)
    runs = [
        one_pass(
            b["image"] for b in read_cached(cfg.cache_dir, entry).iter_batches(batch_size=BATCH, batch_format="numpy")
        )
        for _ in range(passes)
    ]
    return {
        "first_pass_images_per_s": round(runs[0][1] / runs[0][0], 1),
        "steady_images_per_s": round(statistics.median(n / s for s, n in runs[1:]), 1),
    }


def run(cases: list[str], n_small: int, n_full: int, workers: int, passes: int) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="pneumo-data-bench-") as folder:  # full-size films: ~0.6 GB
        return _run_in(Path(folder), cases, n_small, n_full, workers, passes)


def _run_in(work: Path, cases: list[str], n_small: int, n_full: int, workers: int, passes: int) -> list[dict]:
    import ray

    from pneumo.config import DataConfig
    from pneumo.data.sources import list_source
    from pneumo.data.transforms import Preprocessing

    preprocessing = Preprocessing(in_chans=1, image_size=IMAGE_SIZE, mean=(0.5,), std=(0.25,))
    prepared = {}
    for case in cases:
        cfg = DataConfig(
            path=str(write_films(case, work / case, n_small, n_full)), cache_dir=str(work / "cache"), resplit_val=False
        )
        prepared[case] = cfg, list_source(cfg).records
    table = [
        {"case": CASES[case], "films": len(records), **decode_ab(records, preprocessing, passes)}
        for case, (cfg, records) in prepared.items()
    ]
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # loopback only, as `pneumo run` does
    ray.init(num_cpus=workers, include_dashboard=False, logging_level="WARNING")
    for row, (cfg, records) in zip(table, prepared.values()):
        pipelines = pipelines_ab(records, preprocessing, workers, passes)
        row["pipelines"] = {**pipelines, "Ray Data + cache": cache_pass(cfg, records, preprocessing, passes)}
        row["ray_data_to_dataloader"] = round(
            pipelines["Ray Data"]["steady_images_per_s"] / pipelines["DataLoader"]["steady_images_per_s"], 2
        )
    ray.shutdown()
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES), help="film kinds to run")
    parser.add_argument("--n", type=int, default=2000, help="256 px synthetic films")
    parser.add_argument("--full-size-n", type=int, default=192, help="full-size films of each kind")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers = Ray CPUs for map tasks")
    parser.add_argument(
        "--passes", type=int, default=3, help="interleaved passes; pipelines report the median after the first"
    )
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    table = run(args.cases, args.n, args.full_size_n, args.workers, args.passes)
    print(
        f"\nfilms -> {IMAGE_SIZE} px grey, batches of {BATCH}, {args.workers} processes, "
        f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    )
    print(
        "| films | MB/film | full-size decode, CPU ms/film | pneumo decode, CPU ms/film | speedup CPU (wall) "
        "| DataLoader img/s | Ray Data img/s | Ray Data / DataLoader | Ray Data + cache img/s |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in table:
        p = row["pipelines"]
        print(
            f"| {row['case']} ({row['films']}) | {row['megabytes_per_film']} | {row['reference_cpu_ms']} | "
            f"{row['cpu_ms']} | {row['speedup']}x ({row['wall_speedup']}x) | {p['DataLoader']['steady_images_per_s']} | "
            f"{p['Ray Data']['steady_images_per_s']} | {row['ray_data_to_dataloader']} | "
            f"{p['Ray Data + cache']['steady_images_per_s']} |"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"settings": vars(args), "rows": table}, indent=2))


if __name__ == "__main__":
    main()
