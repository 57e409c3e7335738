"""Fixed overhead of `pneumo run`: seconds from the command's start to the first training step, and
from the last training step to the command's exit (checkpoint, evaluation, report, MLflow, registry),
on the quickstart with one training run instead of the search.

    python -m bench.overhead_bench                  # 2 epochs of the quickstart model, data generated first
    python -m bench.overhead_bench --repeats 3

The run is a fresh `pneumo run` process, as a user starts it; the training window comes from the
`epoch_started_at` / `epoch_finished_at` times that every epoch logs to MLflow. The data set is
generated (and its decoded-image cache written) by a first, unmeasured run, so the measured runs
see what a user's second run sees.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "overhead.json"


def timed_run(work: Path, name: str, epochs: int) -> dict:
    """One `pneumo run` process; returns its phases in seconds."""
    from mlflow.tracking import MlflowClient

    tracking = f"sqlite:///{work / 'mlflow.db'}"
    command = [sys.executable, "-m", "pneumo.cli", "run", str(REPO / "experiments" / "quickstart.yaml"),
               f"name={name}", f"data.path={work / 'chest_xray'}", f"data.cache_dir={work / 'cache'}",
               "tune.num_samples=0", f"train.epochs={epochs}", f"scaling.storage_path={work / 'results'}",
               f"mlflow.tracking_uri={tracking}"]
    started = time.time()
    subprocess.run(command, check=True, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ended = time.time()
    client = MlflowClient(tracking)
    experiment = client.get_experiment_by_name("pneumo")
    run = client.search_runs([experiment.experiment_id], filter_string=f"tags.`pneumo.experiment` = '{name}'")[0]
    first_step = min(m.value for m in client.get_metric_history(run.info.run_id, "epoch_started_at"))
    last_step = max(m.value for m in client.get_metric_history(run.info.run_id, "epoch_finished_at"))
    return {"to_first_step_s": round(first_step - started, 1), "training_s": round(last_step - first_step, 1),
            "after_last_step_s": round(ended - last_step, 1), "total_s": round(ended - started, 1)}


def run(repeats: int, epochs: int) -> dict:
    work = Path(tempfile.mkdtemp(prefix="pneumo-overhead-"))
    timed_run(work, "warm-up", 1)  # generates the data and fills the cache
    runs = [timed_run(work, f"measured-{i}", epochs) for i in range(repeats)]
    median = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
    return {"settings": {"repeats": repeats, "epochs": epochs}, "runs": runs, "median": median}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    result = run(args.repeats, args.epochs)
    m = result["median"]
    print(f"\npneumo run, quickstart model, {args.epochs} epochs, median of {args.repeats}:")
    print(f"  start -> first training step   {m['to_first_step_s']:.1f} s")
    print(f"  training                       {m['training_s']:.1f} s")
    print(f"  last step -> exit              {m['after_last_step_s']:.1f} s")
    print(f"  total                          {m['total_s']:.1f} s")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
