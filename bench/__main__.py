"""`python -m bench all` (or `make bench`): every benchmark beside its baseline, one table of ratios.

    python -m bench all          # train, overhead, data, serve; ~12 minutes on 2 cores
    python -m bench train        # one of them

Each benchmark also writes its own JSON under bench/results/; this writes bench/results/all.json.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "all.json"


def train_rows() -> list[dict]:
    from bench import train_bench

    result = train_bench.run("resnet18", 128, 800, 32, 4)
    train_bench.print_table(result)
    return [{"benchmark": "training step throughput", "case": row["loop"], "value": row["steady_images_per_s"],
             "unit": "img/s", "baseline": "plain PyTorch", "ratio": row["ratio_to_plain"],
             "note": f"{row['utilisation_of_matmul_peak']:.1%} of {row['precision']} matmul peak"} for row in result["rows"]]


def overhead_rows() -> list[dict]:
    from bench import overhead_bench

    median = overhead_bench.run(repeats=2, epochs=2)["median"]
    return [{"benchmark": "fixed overhead (quickstart, 2 epochs)", "case": case, "value": median[key], "unit": "s",
             "baseline": "training time", "ratio": round(median[key] / median["training_s"], 2), "note": ""}
            for case, key in (("start -> first step", "to_first_step_s"), ("last step -> exit", "after_last_step_s"))]


def data_rows() -> list[dict]:
    from bench import data_bench

    table = data_bench.run(2000, 256, 224, 2, 2)
    return [{"benchmark": "data pipeline", "case": row["pipeline"], "value": row["steady_images_per_s"],
             "unit": "img/s", "baseline": "DataLoader", "ratio": row["ratio_to_dataloader"], "note": row["setting"]}
            for row in table]


def serve_rows() -> list[dict]:
    import subprocess

    from bench import serve_bench

    subprocess.run([sys.executable, "-m", "bench.serve_bench", "--duration-s", "8"], check=True)
    results = json.loads(serve_bench.RESULTS.read_text())["results"]
    plain = {r["concurrency"]: r["rps"] for r in results["plain"]}
    return [{"benchmark": "serving", "case": f"Serve, {r['concurrency']} clients", "value": r["rps"],
             "unit": "req/s", "baseline": "plain uvicorn", "ratio": round(r["rps"] / plain[r["concurrency"]], 2),
             "note": f"p99 {r['p99_ms']:.0f} ms"} for r in results["serve"]]


BENCHMARKS = {"train": train_rows, "overhead": overhead_rows, "data": data_rows, "serve": serve_rows}


def main() -> None:
    chosen = sys.argv[1:] or ["all"]
    names = list(BENCHMARKS) if chosen == ["all"] else chosen
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        sys.exit(f"bench: unknown benchmark {', '.join(unknown)}; choose from all, {', '.join(BENCHMARKS)}")
    started, rows = time.time(), []
    for name in names:
        rows += BENCHMARKS[name]()
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    print(f"\n{machine}; {time.time() - started:.0f} s\n")
    print("| benchmark | case | value | baseline | ratio | note |")
    print("| --- | --- | ---: | --- | ---: | --- |")
    for r in rows:
        print(f"| {r['benchmark']} | {r['case']} | {r['value']} {r['unit']} | {r['baseline']} | {r['ratio']} | {r['note']} |")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
