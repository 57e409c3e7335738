"""Fixed overhead of `pneumo run`: seconds from the command's start to the first training step, and
from the last training step to the command's exit (checkpoint, evaluation, report, MLflow, registry),
on the quickstart with one training run instead of the search; in two modes, and the gap between
Tune trials.

    python -m bench.overhead_bench                  # 2 epochs of the quickstart model, data generated first
    python -m bench.overhead_bench --repeats 3 --modes cold running-ray tune

Modes: `cold` is a fresh `pneumo run` process that starts its own Ray, as a user's first command;
`running-ray` joins a Ray already started with `ray start --head` (RAY_ADDRESS), as on a cluster or a
workstation that keeps Ray up; `tune` is a 3-trial search run one trial at a time on a running Ray,
and reports the gap between one trial's last training step and the next one's first. The training
window comes from the `epoch_started_at` / `epoch_finished_at` times that every epoch logs to
MLflow. The data set is generated (and its decoded-image cache written) by a first, unmeasured run,
so the measured runs see what a user's second run sees. Runs of the modes alternate, so the
machine's load falls on each alike.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from itertools import pairwise
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "overhead.json"
RAY = Path(sys.executable).parent / "ray"
MODES = ("cold", "running-ray", "tune", "floor")


EXTRA_OVERRIDES: list[str] = []  # --override values, added to every run


def pneumo_run(work: Path, name: str, epochs: int, env: dict, *overrides: str) -> tuple[float, float]:
    """One `pneumo run` process of the quickstart; returns its (start, end) wall-clock times."""
    command = [
        sys.executable,
        "-m",
        "pneumo.cli",
        "run",
        str(REPO / "experiments" / "quickstart.yaml"),
        f"name={name}",
        f"data.path={work / 'chest_xray'}",
        f"data.cache_dir={work / 'cache'}",
        f"train.epochs={epochs}",
        f"scaling.storage_path={work / 'results'}",
        f"mlflow.tracking_uri=sqlite:///{work / 'mlflow.db'}",
        *overrides,
        *EXTRA_OVERRIDES,
    ]
    started = time.time()
    subprocess.run(command, check=True, cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return started, time.time()


# The run's phases in order: (name, the mark that ends it). Driver marks come from the run's log
# (pneumo/cli/timeline.py), the rest from rank 0's first-epoch metrics in MLflow (pneumo/training/train.py).
BEFORE_FIRST_STEP = (
    ("python + CLI import", "cli_started"),
    ("config", "config_loaded"),
    ("ray.init", "ray_started"),
    ("pipeline imports (torch, timm, MLflow...)", "pipeline_imported"),
    ("dataset listing", "data_listed"),
    ("split + Ray Data datasets", "data_prepared"),
    ("MLflow run (sqlite)", "mlflow_run_opened"),
    ("Train controller + worker processes + imports", "worker_imported_at"),
    ("torch distributed init + loop dispatch", "loop_started_at"),
    ("model + DDP", "model_ready_at"),
    ("restore + dataset shards", "epoch_started_at"),
    ("first batch (Ray Data pipeline start)", "first_batch_at"),
)
AFTER_LAST_STEP = (
    ("last checkpoint + report + Train shutdown", "training_returned"),
    ("evaluation on test", "evaluated"),
    ("ONNX export + parity check", "exported"),
    ("monitoring profile", "profiled"),
    ("Grad-CAM localization", "localized"),
    ("log + register the model", "registered"),
    ("HTML report", "report_written"),
    ("finish the MLflow run", "run_finished"),
    ("ray.shutdown", "ray_stopped"),
    ("process exit", "exited"),
)
WORKER_MARKS = ("worker_imported_at", "loop_started_at", "model_ready_at", "epoch_started_at", "first_batch_at")
TRIAL_GAP = (
    ("Train controller + worker processes + imports", "worker_imported_at"),
    ("torch distributed init + loop dispatch", "loop_started_at"),
    ("model + DDP", "model_ready_at"),
    ("restore + dataset shards", "epoch_started_at"),
    ("first batch (Ray Data pipeline start)", "first_batch_at"),
)


def training_runs(work: Path, name: str) -> list[dict[str, float]]:
    """Rank 0's start-up marks and the (first step, last step) of each training run of experiment
    `name` (a search's trials in start order), in unix seconds."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("pneumo")
    runs = []
    for run in client.search_runs([experiment.experiment_id], filter_string=f"tags.`pneumo.experiment` = '{name}'"):
        history = {key: client.get_metric_history(run.info.run_id, key) for key in (*WORKER_MARKS, "epoch_finished_at")}
        if history["epoch_started_at"]:
            marks = {key: min(m.value for m in values) for key, values in history.items() if values}
            marks["first_step"] = marks.get("first_batch_at", marks["epoch_started_at"])
            marks["last_step"] = max(m.value for m in history["epoch_finished_at"])
            runs.append(marks)
    return sorted(runs, key=lambda marks: marks["first_step"])


DASHBOARD_LOST = "Failed to start the dashboard"  # another Ray took the probed port first: ray.init waits 60 s


def run_log(work: Path, name: str) -> str:
    """The run's log (results/logs/<name>-*.log), whose driver phase marks pneumo/cli/timeline.py reads."""
    (log,) = (work / "results" / "logs").glob(f"{name}-*.log")
    return log.read_text(errors="replace")


def phase_seconds(phases, marks: dict[str, float], since: float) -> dict[str, float]:
    """Seconds of each phase from `since`: a phase ends at its mark; a missing mark (a step that did not
    run) gives no row, and its time falls to the next phase."""
    seconds, previous = {}, since
    for label, key in phases:
        if key in marks:
            seconds[label] = round(marks[key] - previous, 2)
            previous = marks[key]
    return seconds


def timed_run(work: Path, name: str, epochs: int, env: dict) -> dict:
    """A single training run (no search); its phases in seconds."""
    started, ended = pneumo_run(work, name, epochs, env, "tune.num_samples=0")
    from pneumo.cli.timeline import read_marks

    (worker,) = training_runs(work, name)
    log = run_log(work, name)
    marks = {**read_marks(log), **worker, "exited": ended}
    return {
        "dashboard_lost": DASHBOARD_LOST in log,
        "to_first_step_s": round(worker["first_step"] - started, 1),
        "training_s": round(worker["last_step"] - worker["first_step"], 1),
        "after_last_step_s": round(ended - worker["last_step"], 1),
        "total_s": round(ended - started, 1),
        "before_first_step": phase_seconds(BEFORE_FIRST_STEP, marks, started),
        "after_last_step": phase_seconds(AFTER_LAST_STEP, marks, worker["last_step"]),
    }


def timed_search(work: Path, name: str, epochs: int, env: dict) -> dict:
    """A 3-trial search, one trial at a time (no early stopping); the gaps between trials in seconds."""
    started, ended = pneumo_run(
        work, name, epochs, env, "tune.num_samples=3", "tune.max_concurrent_trials=1", f"tune.grace_period={epochs}"
    )
    trials = training_runs(work, name)
    gaps = [round(nxt["first_step"] - prev["last_step"], 1) for prev, nxt in pairwise(trials)]
    return {
        "to_first_step_s": round(trials[0]["first_step"] - started, 1),
        "trial_gaps_s": gaps,
        "trial_gap_s": statistics.median(gaps),
        "after_last_step_s": round(ended - trials[-1]["last_step"], 1),
        "total_s": round(ended - started, 1),
        "trial_gap": [phase_seconds(TRIAL_GAP, nxt, prev["last_step"]) for prev, nxt in pairwise(trials)],
    }


def _free_port() -> int:
    from pneumo.cli.ray_start import free_local_port

    return free_local_port()


@contextmanager
def running_ray(cpus: int) -> Iterator[dict]:
    """`ray start --head` on loopback in a temp dir of its own; yields the environment of a client
    that joins it (RAY_ADDRESS, token authentication), and stops only this head."""
    env = {
        **os.environ,
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_TMPDIR": tempfile.mkdtemp(prefix="rayov", dir="/tmp"),
    }
    for inherited in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        env.pop(inherited, None)
    port, dashboard_port = _free_port(), _free_port()
    head = subprocess.Popen(
        [
            RAY,
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={port}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard_port}",
            f"--num-cpus={cpus}",
            "--disable-usage-stats",
            f"--dashboard-agent-listen-port={_free_port()}",
            f"--metrics-export-port={_free_port()}",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = {
        **env,
        "RAY_ADDRESS": f"127.0.0.1:{port}",
        "RAY_AUTH_MODE": "token",
        "RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{dashboard_port}",
    }
    try:
        deadline = time.monotonic() + 180
        while (
            subprocess.run(
                [RAY, "status", "--address", client["RAY_ADDRESS"]], env=client, capture_output=True, check=False
            ).returncode
            != 0
        ):
            if time.monotonic() > deadline or head.poll() is not None:
                raise RuntimeError("the Ray head did not come up")
            time.sleep(2)
        yield client
    finally:
        head.send_signal(signal.SIGTERM)
        head.wait(timeout=120)
        shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)


def floor_child() -> None:
    """Ray's own fixed cost, in a process of its own: import Ray Train, start a local Ray as pneumo
    does (`init_ray`: dashboard, state tracking), fit a TorchTrainer of one worker whose loop only
    notes the time, shut Ray down; prints the marks as JSON."""
    marks = {"started": time.time()}
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from pneumo.cli.ray_start import init_ray

    marks["imported"] = time.time()
    init_ray()
    marks["ray_started"] = time.time()
    folder = Path(tempfile.mkdtemp(prefix="rayfloor"))

    def loop(config: dict) -> None:
        Path(config["entered"]).write_text(str(time.time()))

    TorchTrainer(
        loop,
        train_loop_config={"entered": str(folder / "entered")},
        scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 0.5}),
        run_config=RunConfig(storage_path=str(folder)),
    ).fit()
    marks["fit_returned"] = time.time()
    marks["loop_entered"] = float((folder / "entered").read_text())
    ray.shutdown()
    marks["ray_stopped"] = time.time()
    shutil.rmtree(folder, ignore_errors=True)
    print("FLOOR " + json.dumps(marks), flush=True)


FLOOR = (
    ("python + import Ray Train", "imported"),
    ("ray.init (local, with dashboard)", "ray_started"),
    ("fit(): controller + 1 worker up, loop entered", "loop_entered"),
    ("loop returned -> fit() returned", "fit_returned"),
    ("ray.shutdown", "ray_stopped"),
    ("process exit", "exited"),
)


def timed_floor(env: dict) -> dict:
    """floor_child in a fresh process (the same environment as `cold`)."""
    started = time.time()
    done = subprocess.run(
        [sys.executable, "-c", "from bench.overhead_bench import floor_child; floor_child()"],
        cwd=REPO,
        env={**env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        check=False,
    )
    ended = time.time()
    if done.returncode != 0:
        raise RuntimeError(f"the floor run failed:\n{done.stderr[-3000:]}")
    (line,) = [line for line in done.stdout.splitlines() if line.startswith("FLOOR ")]
    marks = {**json.loads(line[len("FLOOR ") :]), "exited": ended}
    return {
        "to_first_step_s": round(marks["loop_entered"] - started, 1),
        "after_last_step_s": round(ended - marks["loop_entered"], 1),
        "total_s": round(ended - started, 1),
        "before_first_step": phase_seconds(FLOOR[:3], marks, started),
        "after_last_step": phase_seconds(FLOOR[3:], marks, marks["loop_entered"]),
    }


def median_phases(breakdowns: list[dict[str, float]]) -> dict[str, float]:
    """Per phase, the median over the runs that had it (phases in the order they ran)."""
    labels = list(dict.fromkeys(label for breakdown in breakdowns for label in breakdown))
    return {label: round(statistics.median(b[label] for b in breakdowns if label in b), 2) for label in labels}


def median_run(runs: list[dict]) -> dict:
    """The median of each total and of each phase over repeated runs of one mode."""
    median = {
        key: statistics.median(r[key] for r in runs) for key, value in runs[0].items() if isinstance(value, float)
    }
    for key in ("before_first_step", "after_last_step"):
        if key in runs[0]:
            median[key] = median_phases([r[key] for r in runs])
    if "trial_gap" in runs[0]:
        median["trial_gap"] = median_phases([gap for r in runs for gap in r["trial_gap"]])
    return median


def print_phases(result: dict) -> None:
    """One table per part of the run: each phase's median seconds, by mode."""
    parts = (
        ("start -> first step", "before_first_step"),
        ("last step -> exit", "after_last_step"),
        ("one trial's last step -> the next one's first", "trial_gap"),
    )
    for title, key in parts:
        modes = [mode for mode, m in result["median"].items() if key in m]
        if not modes:
            continue
        print(f"\n{title}, median seconds per phase:")
        print("| phase | " + " | ".join(modes) + " |")
        print("| --- |" + " ---: |" * len(modes))
        labels = list(dict.fromkeys(label for mode in modes for label in result["median"][mode][key]))
        for label in labels:
            cells = [result["median"][mode][key].get(label) for mode in modes]
            print(f"| {label} | " + " | ".join("" if c is None else f"{c:.2f}" for c in cells) + " |")


def run(modes: list[str], repeats: int, epochs: int, cpus: int, work: Optional[Path] = None) -> dict:
    cold_env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    if work is None or not (work / "mlflow.db").exists():
        work = work or Path(tempfile.mkdtemp(prefix="pneumo-overhead-"))
        work.mkdir(parents=True, exist_ok=True)
        pneumo_run(work, "warm-up", 1, cold_env, "tune.num_samples=0")  # generates the data and fills the cache
    runs: dict[str, list[dict]] = {mode: [] for mode in modes}
    stamp = time.strftime("%H%M%S")  # run names stay unique when --work is reused
    with running_ray(cpus) if set(modes) & {"running-ray", "tune"} else nullcontext() as joined:
        for i in range(repeats):
            for mode in modes:
                if mode == "floor":
                    runs[mode].append(timed_floor(cold_env))
                elif mode == "cold":
                    runs[mode].append(timed_run(work, f"cold-{stamp}-{i}", epochs, cold_env))
                elif mode == "running-ray":
                    runs[mode].append(timed_run(work, f"joined-{stamp}-{i}", epochs, joined))
                else:
                    runs[mode].append(timed_search(work, f"search-{stamp}-{i}", epochs, joined))
    median = {mode: median_run(rs) for mode, rs in runs.items()}
    return {"settings": {"repeats": repeats, "epochs": epochs, "modes": modes}, "runs": runs, "median": median}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--cpus", type=int, default=os.cpu_count(), help="CPUs of the running Ray head")
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override added to every run (repeatable)",
    )
    parser.add_argument(
        "--work", type=Path, help="folder to run in; one holding mlflow.db from an earlier run skips the warm-up"
    )
    args = parser.parse_args()
    EXTRA_OVERRIDES.extend(args.override)
    result = run(args.modes, args.repeats, args.epochs, args.cpus, args.work)
    print(
        f"\npneumo run, quickstart model, {args.epochs} epochs, median of {args.repeats}, load average "
        f"{os.getloadavg()[0]:.1f}:"
    )
    print("| mode | start -> first step | training | last step -> exit | between trials | total |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for mode, m in result["median"].items():
        gap = f"{m['trial_gap_s']:.1f} s" if "trial_gap_s" in m else ""
        training = f"{m['training_s']:.1f} s" if "training_s" in m else ""
        print(
            f"| {mode} | {m['to_first_step_s']:.1f} s | {training} | {m['after_last_step_s']:.1f} s | {gap} | "
            f"{m['total_s']:.1f} s |"
        )
    print_phases(result)
    lost = [r for rs in result["runs"].values() for r in rs if r.get("dashboard_lost")]
    if lost:
        print(f"\n{len(lost)} run(s) lost the dashboard port to another Ray while starting: ray.init waited 60 s")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
