"""Training throughput: pneumo's Ray Train loop (1 and 2 workers) against the plain single-process
PyTorch loop it replaces, same timm model, image size, batch size, data and per-step work, and the
hardware utilisation that throughput reaches.

    python -m bench.train_bench                          # resnet18 at 128 px, batch 32, 6 epochs
    python -m bench.train_bench --model resnet10t --image-size 64 --images 1024

The plain loop is a DataLoader over the same decoded uint8 films plus the optimizer steps, with the
same augmentation, normalization, class-balanced loss, AdamW, warmup/cosine schedule and gradient
clipping as pneumo's workers, using all cores, in fp32 with PyTorch's defaults; it runs a second time
with pneumo's fp32 settings (channels-last, the malloc tunables of scaling.worker_env) in a process
started with them, before and again after pneumo's loops (the host's speed drifts), which isolates
what pneumo's machinery costs: pneumo's ratio to it is taken against the mean of the two. Steady
state = the median of the epochs after the first; the whole-run ratio counts every epoch.
Utilisation = model FLOPs per image x 3 (forward + backward) x images/s over this machine's dense
matmul peak in the same precision, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import ray
import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "train.json"
PLAIN = "plain PyTorch"  # the baseline of every ratio
TUNED_PLAIN = "plain PyTorch, channels-last + pneumo's malloc setting"
TUNED_PLAIN_AGAIN = f"{TUNED_PLAIN}, again after pneumo's loops"  # brackets the host's drift (A-B-A)
# (row, workers, train.precision): fp32 rows do the plain loop's arithmetic; bf16 is pneumo's default
# (`auto`) on CPUs with native bf16, its utilisation is taken against the bf16 matmul peak
PNEUMO_LOOPS = (
    ("pneumo 1 worker", 1, "fp32"),
    ("pneumo 2 workers", 2, "fp32"),
    ("pneumo 1 worker, bf16 autocast", 1, "bf16"),
)


def measured_matmul_peak(threads: int, dtype: torch.dtype = torch.float32, n: int = 2048, repeats: int = 10) -> float:
    """Dense FLOP/s of torch.mm in `dtype` with `threads` threads (best of `repeats`)."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - started)
    return 2 * n**3 / best


def forward_flops_per_image(model_name: str, image_size: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    from pneumo.config import ModelConfig
    from pneumo.models.networks import create_model

    model = create_model(ModelConfig(name=model_name)).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 1, image_size, image_size))
    return float(counter.get_total_flops())


def plain_loop(
    cfg, images: np.ndarray, labels: np.ndarray, preprocessing, threads: int, channels_last: bool = False
) -> list[float]:
    """The loop pneumo replaces; returns images/s of each epoch."""
    from pneumo.data.batch_transforms import augment, normalize
    from pneumo.models.networks import create_model
    from pneumo.training.train import build_lr_schedule, build_optimizer, seed_everything

    torch.set_num_threads(threads)
    seed_everything(cfg.train.seed)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = create_model(cfg.model).to(memory_format=memory_format)
    optimizer = build_optimizer(model, cfg.train)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.from_numpy(images), torch.from_numpy(labels)),
        batch_size=cfg.train.batch_size,
        shuffle=True,
    )
    scheduler = build_lr_schedule(optimizer, cfg.train, len(loader))
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor((labels == 0).sum() / max((labels == 1).sum(), 1)))
    generator = torch.Generator().manual_seed(0)
    rates = []
    for _ in range(cfg.train.epochs):
        model.train()
        started, seen = time.perf_counter(), 0
        for batch, target in loader:
            x = normalize(augment(batch.float().div_(255.0), cfg.data.augment, generator), preprocessing)
            loss = loss_fn(model(x.contiguous(memory_format=memory_format)).float().squeeze(1), target.float())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip_norm)
            optimizer.step()
            scheduler.step()
            seen += len(batch)
        rates.append(seen / (time.perf_counter() - started))
    return rates


def pneumo_loop(cfg, data, preprocessing, workers: int, precision: str, tracking_uri: str) -> list[float]:
    """pneumo's TorchTrainer over the prepared Ray Datasets; returns total images/s of each epoch."""
    from mlflow.tracking import MlflowClient

    from pneumo.config import with_updates
    from pneumo.tracking import client_for, start_run
    from pneumo.training.train import fit

    cfg = with_updates(
        cfg, {"scaling.num_workers": workers, "train.precision": precision, "name": f"bench-{workers}w-{precision}"}
    )
    client = client_for(cfg)
    run_id = start_run(client, cfg, "train", cfg.name)
    fit(cfg, data, preprocessing, f"{cfg.name}-{time.time_ns()}", tracking_uri, run_id)
    history = sorted(MlflowClient(tracking_uri).get_metric_history(run_id, "train_images_per_s"), key=lambda m: m.step)
    return [m.value * workers for m in history]  # each worker reports its own rate over an equal shard


def run(model: str, image_size: int, n_images: int, batch_size: int, epochs: int) -> dict:
    from pneumo.cli.ray_start import init_ray
    from pneumo.config import load_config
    from pneumo.data.dataset import prepare_data
    from pneumo.data.synthetic import generate_chest_xrays
    from pneumo.models.networks import model_preprocessing

    threads = os.cpu_count() or 1
    work = Path(tempfile.mkdtemp(prefix="pneumo-train-bench-"))
    generate_chest_xrays(work / "chest_xray", n_images=n_images, image_size=max(128, image_size), seed=0)
    tracking_uri = f"sqlite:///{work / 'mlflow.db'}"
    cfg = load_config(
        [REPO / "experiments" / "quickstart.yaml"],
        [
            f"data.path={work / 'chest_xray'}",
            f"data.image_size={image_size}",
            f"model.name={model}",
            f"train.epochs={epochs}",
            f"train.batch_size={batch_size}",
            f"scaling.storage_path={work / 'results'}",
            f"mlflow.tracking_uri={tracking_uri}",
            "tune.num_samples=0",
            "data.cache_dir=null",
        ],
    )
    preprocessing = model_preprocessing(cfg.model, cfg.data.image_size)
    init_ray()
    data = prepare_data(cfg.data, preprocessing)
    rows = data.training_datasets["train"].take_all()
    images = np.stack([r["image"] for r in rows])
    labels = np.array([r["label"] for r in rows])

    rates = {(PLAIN, "fp32"): plain_loop(cfg, images, labels, preprocessing, threads)}
    # the same loop with pneumo's two fp32 settings, in a process started with its malloc tunables:
    # what pneumo's own machinery costs at equal arithmetic
    tuned = ray.remote(num_cpus=0.45, runtime_env={"env_vars": dict(cfg.scaling.worker_env)})(plain_loop)
    rates[(TUNED_PLAIN, "fp32")] = ray.get(tuned.remote(cfg, images, labels, preprocessing, threads, True))
    for name, workers, precision in PNEUMO_LOOPS:
        rates[(name, precision)] = pneumo_loop(cfg, data, preprocessing, workers, precision, tracking_uri)
    rates[(TUNED_PLAIN_AGAIN, "fp32")] = ray.get(tuned.remote(cfg, images, labels, preprocessing, threads, True))
    flops = 3 * forward_flops_per_image(model, image_size)
    peaks = {"fp32": measured_matmul_peak(threads), "bf16": measured_matmul_peak(threads, torch.bfloat16)}
    baseline = statistics.median(rates[(PLAIN, "fp32")][1:])
    # equal settings, what pneumo's machinery itself costs: against the tuned loop run before and after
    # pneumo's, so a host that sped up or slowed down during the benchmark does not land on one side
    tuned_runs = (rates[(TUNED_PLAIN, "fp32")], rates[(TUNED_PLAIN_AGAIN, "fp32")])
    tuned_steady = statistics.mean(statistics.median(run[1:]) for run in tuned_runs)
    tuned_whole = statistics.mean(statistics.mean(run) for run in tuned_runs)
    table = []
    for (name, precision), per_epoch in rates.items():
        steady = statistics.median(per_epoch[1:])
        table.append(
            {
                "loop": name,
                "precision": precision,
                "images_per_s_by_epoch": [round(r, 1) for r in per_epoch],
                "steady_images_per_s": round(steady, 1),
                "ratio_to_plain": round(steady / baseline, 3),
                "ratio_to_tuned_plain": round(steady / tuned_steady, 3),
                # every epoch, the first (warm-up) too: a run's whole training time against the tuned loop's
                "whole_run_ratio_to_tuned_plain": round(statistics.mean(per_epoch) / tuned_whole, 3),
                "achieved_gflop_s": round(flops * steady / 1e9, 2),
                "utilisation_of_matmul_peak": round(flops * steady / peaks[precision], 3),
            }
        )
    return {
        "settings": {
            "model": model,
            "image_size": image_size,
            "train_images": len(images),
            "batch_size": batch_size,
            "epochs": epochs,
            "threads": threads,
        },
        "train_gflop_per_image": round(flops / 1e9, 3),
        "matmul_peak_gflop_s": {key: round(peak / 1e9, 1) for key, peak in peaks.items()},
        "rows": table,
    }


def print_table(result: dict) -> None:
    s, peak = result["settings"], result["matmul_peak_gflop_s"]
    print(
        f"\n{s['model']} at {s['image_size']} px, batch {s['batch_size']}, {s['train_images']} training images, "
        f"{s['threads']} cores; {result['train_gflop_per_image']} GFLOP per image (fwd+bwd); "
        f"matmul peak {peak['fp32']} GFLOP/s fp32, {peak['bf16']} GFLOP/s bf16"
    )
    print(
        "| loop | steady img/s | ratio to plain | ratio to tuned plain (steady, whole run) | achieved GFLOP/s "
        "| of matmul peak (same precision) |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for row in result["rows"]:
        print(
            f"| {row['loop']} | {row['steady_images_per_s']} | {row['ratio_to_plain']} | "
            f"{row['ratio_to_tuned_plain']}, {row['whole_run_ratio_to_tuned_plain']} | "
            f"{row['achieved_gflop_s']} | {row['utilisation_of_matmul_peak']:.1%} {row['precision']} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--images", type=int, default=800, help="synthetic films generated (~80%% train)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=6, help="steady state: the median of all but the first")
    args = parser.parse_args()
    result = run(args.model, args.image_size, args.images, args.batch_size, args.epochs)
    print_table(result)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
