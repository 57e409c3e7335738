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

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "overhead.json"
RAY = Path(sys.executable).parent / "ray"
MODES = ("cold", "running-ray", "tune")


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


def epoch_windows(work: Path, name: str) -> list[tuple[float, float]]:
    """(first step, last step) of each training run of experiment `name`, a search's trials in start order."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("pneumo")
    windows = []
    for run in client.search_runs([experiment.experiment_id], filter_string=f"tags.`pneumo.experiment` = '{name}'"):
        started = client.get_metric_history(run.info.run_id, "epoch_started_at")
        if started:
            finished = client.get_metric_history(run.info.run_id, "epoch_finished_at")
            windows.append((min(m.value for m in started), max(m.value for m in finished)))
    return sorted(windows)


def timed_run(work: Path, name: str, epochs: int, env: dict) -> dict:
    """A single training run (no search); its phases in seconds."""
    started, ended = pneumo_run(work, name, epochs, env, "tune.num_samples=0")
    ((first_step, last_step),) = epoch_windows(work, name)
    return {
        "to_first_step_s": round(first_step - started, 1),
        "training_s": round(last_step - first_step, 1),
        "after_last_step_s": round(ended - last_step, 1),
        "total_s": round(ended - started, 1),
    }


def timed_search(work: Path, name: str, epochs: int, env: dict) -> dict:
    """A 3-trial search, one trial at a time (no early stopping); the gaps between trials in seconds."""
    started, ended = pneumo_run(
        work, name, epochs, env, "tune.num_samples=3", "tune.max_concurrent_trials=1", f"tune.grace_period={epochs}"
    )
    windows = epoch_windows(work, name)
    gaps = [round(nxt[0] - prev[1], 1) for prev, nxt in pairwise(windows)]
    return {
        "to_first_step_s": round(windows[0][0] - started, 1),
        "trial_gaps_s": gaps,
        "trial_gap_s": statistics.median(gaps),
        "after_last_step_s": round(ended - windows[-1][1], 1),
        "total_s": round(ended - started, 1),
    }


def _free_port() -> int:
    from pneumo.cli import free_local_port

    return free_local_port(0)


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


def run(modes: list[str], repeats: int, epochs: int, cpus: int) -> dict:
    work = Path(tempfile.mkdtemp(prefix="pneumo-overhead-"))
    cold_env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    pneumo_run(work, "warm-up", 1, cold_env, "tune.num_samples=0")  # generates the data and fills the cache
    runs: dict[str, list[dict]] = {mode: [] for mode in modes}
    with running_ray(cpus) if set(modes) - {"cold"} else nullcontext() as joined:
        for i in range(repeats):
            for mode in modes:
                if mode == "cold":
                    runs[mode].append(timed_run(work, f"cold-{i}", epochs, cold_env))
                elif mode == "running-ray":
                    runs[mode].append(timed_run(work, f"joined-{i}", epochs, joined))
                else:
                    runs[mode].append(timed_search(work, f"search-{i}", epochs, joined))
    median = {
        mode: {key: statistics.median(r[key] for r in rs) for key in rs[0] if key != "trial_gaps_s"}
        for mode, rs in runs.items()
    }
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
    args = parser.parse_args()
    EXTRA_OVERRIDES.extend(args.override)
    result = run(args.modes, args.repeats, args.epochs, args.cpus)
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
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
