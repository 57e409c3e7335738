"""`python -m bench all` (or `make bench`): every benchmark beside its baseline, one table of ratios.

    python -m bench all          # train, overhead, data, serve; ~10 minutes on 2 cores
    python -m bench train        # one of them

Each benchmark also writes its own JSON under bench/results/; this writes bench/results/all.json.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from bench.predict_bench import bench_rows as predict_rows

RESULTS = Path(__file__).resolve().parent / "results" / "all.json"


def run_bench(module: str, *args: str) -> dict:
    """One benchmark in a process of its own (its own Ray, nothing left over from the previous one);
    returns the JSON it wrote."""
    subprocess.run([sys.executable, "-m", f"bench.{module}_bench", *args], check=True)
    return json.loads((RESULTS.parent / f"{module}.json").read_text())


def train_rows() -> list[dict]:
    result = run_bench("train")  # resnet18 at 128 px, batch 32, 6 epochs
    return [
        {
            "benchmark": "training step throughput",
            "case": row["loop"],
            "value": row["steady_images_per_s"],
            "unit": "img/s",
            "baseline": "plain PyTorch",
            "ratio": row["ratio_to_plain"],
            "note": f"{row['utilisation_of_matmul_peak']:.1%} of {row['precision']} matmul peak",
        }
        for row in result["rows"]
    ]


def overhead_rows() -> list[dict]:
    median = run_bench("overhead", "--repeats", "2", "--epochs", "2")["median"]
    phases = (
        ("start -> first step", "to_first_step_s"),
        ("last step -> exit", "after_last_step_s"),
        ("between Tune trials", "trial_gap_s"),
    )
    return [
        {
            "benchmark": f"fixed overhead (quickstart, 2 epochs, {mode})",
            "case": case,
            "value": round(m[key], 1),
            "unit": "s",
            "baseline": "training time" if "training_s" in m else "",
            "note": "",
            "ratio": round(m[key] / m["training_s"], 2) if "training_s" in m else "",
        }
        for mode, m in median.items()
        for case, key in phases
        if key in m
    ]


def data_rows() -> list[dict]:
    table = run_bench("data")["rows"]  # 256 px JPEGs, full-size JPEGs and DICOMs -> 224 px, 2 processes
    rows = []
    for row in table:
        rows.append(
            {
                "benchmark": "decoding, 1 process",
                "case": row["case"],
                "value": row["cpu_ms"],
                "unit": "CPU ms/film",
                "baseline": "full-size decode",
                "ratio": row["speedup"],
                "note": f"{row['megabytes_per_film']} MB/film; wall-time ratio {row['wall_speedup']}",
            }
        )
        for name, pipeline in row["pipelines"].items():
            rows.append(
                {
                    "benchmark": "data pipeline",
                    "case": f"{name}, {row['case']}",
                    "value": pipeline["steady_images_per_s"],
                    "unit": "img/s",
                    "baseline": "DataLoader",
                    "ratio": round(
                        pipeline["steady_images_per_s"] / row["pipelines"]["DataLoader"]["steady_images_per_s"], 2
                    ),
                    "note": "same decode, same processes",
                }
            )
    return rows


def serve_rows() -> list[dict]:
    results = run_bench("serve", "--duration-s", "8")["results"]
    plain = {r["concurrency"]: r["rps"] for r in results["plain"]}
    return [
        {
            "benchmark": "serving",
            "case": f"Serve, {r['concurrency']} clients",
            "value": r["rps"],
            "unit": "req/s",
            "baseline": "plain uvicorn",
            "ratio": round(r["rps"] / plain[r["concurrency"]], 2),
            "note": f"p99 {r['p99_ms']:.0f} ms",
        }
        for r in results["serve"]
    ] + explain_rows(results)


def explain_rows(results: dict[str, list[dict]]) -> list[dict]:
    """/explain (prediction + Grad-CAM map) against /predict at the same concurrency, same app."""
    predict = {r["concurrency"]: r["rps"] for r in results["serve"]}
    return [
        {
            "benchmark": "serving",
            "case": f"Serve /explain, {r['concurrency']} clients",
            "value": r["rps"],
            "unit": "req/s",
            "baseline": "Serve /predict",
            "ratio": round(r["rps"] / predict[r["concurrency"]], 2) if r["concurrency"] in predict else "",
            "note": f"p50 {r['p50_ms']:.0f} ms",
        }
        for r in results.get("serve /explain", [])
    ]


BENCHMARKS = {
    "train": train_rows,
    "overhead": overhead_rows,
    "data": data_rows,
    "serve": serve_rows,
    "predict": lambda: predict_rows(run_bench("predict")),
    "tracking": lambda: run_bench("tracking")["rows"],  # bench/tracking_bench.py: sqlite against the team server
}


def main() -> None:
    chosen = sys.argv[1:] or ["all"]
    names = list(BENCHMARKS) if chosen == ["all"] else chosen
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        sys.exit(f"bench: unknown benchmark {', '.join(unknown)}; choose from all, {', '.join(BENCHMARKS)}")
    started, rows = time.time(), []
    for name in names:
        rows += BENCHMARKS[name]()
    machine = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print(f"\n{machine}; {time.time() - started:.0f} s\n")
    print("| benchmark | case | value | baseline | ratio | note |")
    print("| --- | --- | ---: | --- | ---: | --- |")
    for r in rows:
        print(
            f"| {r['benchmark']} | {r['case']} | {r['value']} {r['unit']} | {r['baseline']} | {r['ratio']} | {r['note']} |"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
