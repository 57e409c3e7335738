"""GPU end-to-end check, for a machine with GPUs: a real `pneumo run` of resnet50 at 224 px on
synthetic films with one Ray Train worker per GPU (NCCL, bf16 autocast where supported,
channels-last), then images/second per GPU from the run's MLflow metrics. About 3-4 minutes.

    python -m bench.gpu_check                 # all visible GPUs
    python -m bench.gpu_check --smoke         # the same script on CPU, tiny model (checks the script)

Writes bench/results/gpu.json and exits non-zero if the run fails or, without --smoke, if no GPU
is visible.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "gpu.json"


def overrides(work: Path, smoke: bool, n_gpus: int) -> list[str]:
    common = [
        "name=gpu-check",
        f"data.path={work / 'chest_xray'}",
        "data.synthesize_if_missing=true",
        f"data.cache_dir={work / 'cache'}",
        f"scaling.storage_path={work / 'results'}",
        f"mlflow.tracking_uri=sqlite:///{work / 'mlflow.db'}",
        "tune.num_samples=0",
        "mlflow.register=false",
        "eval.bootstrap_samples=200",
    ]
    if smoke:
        return common + [
            "data.synth.n_images=300",
            "data.synth.image_size=64",
            "data.image_size=48",
            "model.name=test_resnet",
            "train.epochs=2",
            "train.batch_size=16",
        ]
    return common + [
        "data.synth.n_images=3000",
        "data.synth.image_size=256",
        "data.image_size=224",
        "model.name=resnet50",
        "train.epochs=3",
        "train.batch_size=64",
        "train.lr=3e-4",
        "scaling.use_gpu=true",
        f"scaling.num_workers={n_gpus}",
        "scaling.cpus_per_worker=2",
        "train.precision=auto",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="CPU and a tiny model: check the script itself")
    args = parser.parse_args()
    import torch

    n_gpus = torch.cuda.device_count()
    if not args.smoke and n_gpus == 0:
        sys.exit("gpu_check: no GPU visible (torch.cuda.device_count() == 0); use --smoke on CPU")
    from mlflow.tracking import MlflowClient

    from pneumo.cli.ray_start import init_ray
    from pneumo.config import load_config
    from pneumo.experiment import run_experiment

    work = Path(tempfile.mkdtemp(prefix="pneumo-gpu-check-"))
    cfg = load_config([REPO / "experiments" / "quickstart.yaml"], overrides(work, args.smoke, n_gpus))
    init_ray()
    started = time.perf_counter()
    outcome = run_experiment(cfg)
    wall_s = time.perf_counter() - started
    history = MlflowClient(cfg.mlflow.tracking_uri).get_metric_history(outcome.mlflow_run_id, "train_images_per_s")
    per_worker = [m.value for m in sorted(history, key=lambda m: m.step)]
    result = {
        "device": torch.cuda.get_device_name(0) if n_gpus else "cpu (smoke)",
        "gpus": n_gpus,
        "model": cfg.model.name,
        "image_size": cfg.data.image_size,
        "batch_size_per_worker": cfg.train.batch_size,
        "precision": cfg.train.precision,
        "images_per_s_per_worker_by_epoch": [round(v, 1) for v in per_worker],
        "steady_images_per_s_per_gpu": round(per_worker[-1], 1),
        "wall_s": round(wall_s, 1),
        "test_auroc": round(outcome.test_metrics["auroc"], 4),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
