"""The tracking path under load: epochs logged per second by N concurrent trials (processes), against
the default sqlite store and against a team MLflow server on PostgreSQL (basic-auth logins, proxied
artifacts, started as docs/how-to/team-mlflow.md starts it), and MLflow's cost per epoch as a share
of a quickstart epoch.

    python -m bench.tracking_bench                           # N = 1 2 4 8 16, 30 epochs each
    python -m bench.tracking_bench --concurrency 2 8 --epochs 20 --quickstart-store sqlite:///mlflow.db

Each trial does what a pneumo trial's Ray Train controller does per epoch (pneumo.tracking.log_epoch_metrics:
one batch of the epoch's metrics at step = epoch), as fast as it can: a stress bound, not a pace. A
backend "holds" at N when no write failed and every trial's every epoch is in the store once. The
quickstart's epoch time is read from a finished quickstart run in --quickstart-store (the median gap
between its val_auroc timestamps); without one the share column stays empty.

Writes bench/results/tracking.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Optional

RESULTS = Path(__file__).resolve().parent / "results" / "tracking.json"
METRICS = ("train_loss", "val_loss", "val_auroc", "val_accuracy", "lr")  # what a pneumo epoch logs


def trial(uri: str, experiment_id: str, parent_id: str, epochs: int, ready, start, results) -> None:
    """One trial process: its nested run, then `epochs` epochs of metrics, each call timed."""
    from mlflow.tracking import MlflowClient

    from pneumo.tracking import log_epoch_metrics

    client = MlflowClient(uri)
    run_id = client.create_run(experiment_id, tags={"mlflow.parentRunId": parent_id}).info.run_id
    ready.put(run_id)
    start.wait()
    latencies, errors = [], []
    for epoch in range(epochs):
        began = time.perf_counter()
        try:
            log_epoch_metrics(uri, run_id, {"epoch": epoch, **{key: 0.5 + epoch / 1000 for key in METRICS}})
        except Exception as error:  # counted, not raised: the bench reports how a backend fails
            errors.append(f"{type(error).__name__}: {str(error).splitlines()[0][:200]}")
        latencies.append(time.perf_counter() - began)
    results.put({"run_id": run_id, "latencies": latencies, "errors": errors, "ended": time.perf_counter()})


def measure(uri: str, concurrency: int, epochs: int) -> dict:
    """`concurrency` trials at once under one parent run; epochs/s from the common start to the last end."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    name = f"tracking-bench-{concurrency}-{time.time_ns()}"
    experiment_id = client.create_experiment(name)
    parent_id = client.create_run(experiment_id).info.run_id
    context = multiprocessing.get_context("spawn")
    ready, start, results = context.Queue(), context.Event(), context.Queue()
    processes = [
        context.Process(target=trial, args=(uri, experiment_id, parent_id, epochs, ready, start, results))
        for _ in range(concurrency)
    ]
    for process in processes:
        process.start()
    for _ in processes:  # every process has imported MLflow and opened its run before the clock starts
        ready.get(timeout=1800)
    began = time.perf_counter()
    start.set()
    done = [results.get(timeout=1800) for _ in processes]
    for process in processes:
        process.join()
    wall = max(d["ended"] for d in done) - began
    logged = [len(client.get_metric_history(d["run_id"], "val_auroc")) for d in done]
    errors = [e for d in done for e in d["errors"]]
    latencies = sorted(s for d in done for s in d["latencies"])
    return {
        "concurrency": concurrency,
        "epochs_per_s": round(concurrency * epochs / wall, 1),
        "p50_ms": round(1000 * statistics.median(latencies), 1),
        "p99_ms": round(1000 * latencies[int(0.99 * (len(latencies) - 1))], 1),
        "failed_writes": len(errors),
        "lost_epochs": concurrency * epochs - sum(logged),
        "first_error": errors[0] if errors else "",
        "holds": not errors and sum(logged) == concurrency * epochs,
    }


def quickstart_epoch_s(store: str) -> Optional[float]:
    """Median seconds between a quickstart trial's epochs (val_auroc timestamps), or None without one."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(store)
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, "tags.`pneumo.experiment` = 'quickstart'") if experiments else []
    gaps = []
    for run in runs:
        stamps = sorted(m.timestamp for m in client.get_metric_history(run.info.run_id, "val_auroc"))
        gaps += [(b - a) / 1000 for a, b in zip(stamps, stamps[1:])]
    return statistics.median(gaps) if gaps else None


def backends(folder: Path):
    """(name, tracking URI) of each store: sqlite in `folder`, then the team server when PostgreSQL is here."""
    from tests.tracking_server.servers import postgres_bin, team_server

    yield "sqlite", f"sqlite:///{folder / 'mlflow.db'}"
    if postgres_bin() is None:
        print("PostgreSQL is not installed (apt-get install postgresql): the server rows are left out")
        return
    with team_server(folder / "artifacts") as server:
        os.environ.update(server.login())  # inherited by the trial processes, as a team member's shell would
        yield "PostgreSQL server", server.url


def rows(results: list[dict], epoch_s: Optional[float]) -> list[dict]:
    """`python -m bench all`'s table rows: throughput, and the p50 cost per epoch as a share of an epoch."""
    table = []
    for r in results:
        share = f"; {r['p50_ms'] / 1000 / epoch_s:.3%} of a {epoch_s:.0f} s quickstart epoch" if epoch_s else ""
        table.append(
            {
                "benchmark": "tracking",
                "case": f"{r['backend']}, {r['concurrency']} trials at once",
                "value": r["epochs_per_s"],
                "unit": "epochs/s",
                "baseline": "",
                "ratio": "",
                "note": f"p50 {r['p50_ms']} ms per epoch{share}; "
                + (
                    "holds"
                    if r["holds"]
                    else f"{r['failed_writes']} failed, {r['lost_epochs']} lost: {r['first_error']}"
                ),
            }
        )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8, 16], help="trials at once")
    parser.add_argument("--epochs", type=int, default=30, help="epochs each trial logs")
    parser.add_argument("--quickstart-store", default="sqlite:///mlflow.db", help="a store with a quickstart run")
    args = parser.parse_args()
    for key, value in {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}.items():
        os.environ.setdefault(key, value)
    epoch_s = quickstart_epoch_s(args.quickstart_store) if args.quickstart_store.startswith("sqlite:///") else None
    results = []
    with tempfile.TemporaryDirectory(prefix="tracking-bench-") as folder:
        for backend, uri in backends(Path(folder)):
            for n in args.concurrency:
                results.append({"backend": backend, **measure(uri, n, args.epochs)})
                print(json.dumps(results[-1]))
    held = [r["concurrency"] for r in results if r["backend"] == "sqlite" and r["holds"]]
    largest = max((n for n in held if all(m in held for m in args.concurrency if m <= n)), default=0)
    summary = {
        "epochs": args.epochs,
        "quickstart_epoch_s": epoch_s,
        "sqlite_holds_up_to": largest,
        "results": results,
        "rows": rows(results, epoch_s),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(summary, indent=2))
    print(f"sqlite held up to {largest} concurrent trials; quickstart epoch {epoch_s} s")


if __name__ == "__main__":
    main()
