"""Distributed data-parallel fine-tuning with Ray Train: the per-worker loop and the TorchTrainer around it.

Each epoch every worker trains on its shard of the prepared train split, the workers score their
shards of val, rank 0 gathers the scores, computes the val metrics and saves a checkpoint, and all ranks
report (Ray Train keeps the best `train.checkpoints_to_keep` by tune.metric and resumes from the latest).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import queue
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from ray.data import ExecutionOptions
from ray.train import (
    CheckpointConfig,
    DataConfig,
    FailureConfig,
    LoggingConfig,
    RunConfig,
    ScalingConfig,
    UserCallback,
)
from ray.train.torch import TorchTrainer
from ray.util.queue import Queue

from pneumo.config import ExperimentConfig, TrainConfig, best_of, from_dict, to_dict
from pneumo.data.batch_transforms import augment, normalize
from pneumo.data.dataset import PreparedData
from pneumo.data.transforms import Preprocessing
from pneumo.evaluation.metrics import binary_metrics
from pneumo.models.checkpoints import CheckpointMeta, load_train_state, save_checkpoint
from pneumo.models.networks import create_model, unwrap
from pneumo.paths import durable_path
from pneumo.tracking import start_system_metrics
from pneumo.training.callbacks import EpochLogger
from pneumo.training.events import COMPLETED, FAILED, LoggedEvents, RunEvents, first_line
from pneumo.training.storage import storage_full_error

IMPORTED_AT = time.time()  # in a Ray Train worker: its process has imported torch, timm, Ray Train and pneumo

# ---------------------------------------------------------------- per-worker pieces


def seed_everything(seed: int) -> None:
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW or SGD; no weight decay on biases and norm scales (1-D parameters)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Linear warmup from ~0 to 1, then cosine decay to 0 (or flat for `constant`)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_lr_schedule(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    total, warmup = cfg.epochs * steps_per_epoch, int(cfg.warmup_epochs * steps_per_epoch)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total, warmup, cfg.lr_schedule))


def native_bf16(device: torch.device) -> bool:
    """Whether the device computes in bf16 natively: Ampere+ GPUs, CPUs with AVX512-BF16 or AMX
    (elsewhere bf16 is emulated and slower than fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def autocast_dtype(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """bf16/fp16 when asked, or bf16 on `auto` where the device has native bf16; None means full fp32."""
    if precision in ("bf16", "fp16"):
        return torch.bfloat16 if precision == "bf16" else torch.float16
    if precision == "auto" and native_bf16(device):
        return torch.bfloat16
    return None


@dataclass
class WorkerContext:
    cfg: ExperimentConfig
    preprocessing: Preprocessing
    model: torch.nn.Module
    device: torch.device
    amp_dtype: Optional[torch.dtype]
    loss_fn: torch.nn.Module
    scaler: torch.amp.GradScaler  # active for fp16 only: scales the loss so small gradients survive
    channels_last: bool  # NHWC activations: faster convolutions (oneDNN on CPUs, tensor cores on GPUs)
    compiled: Optional[torch.nn.Module] = None  # torch.compile(model) when train.compile; shares its weights


def _forward(ctx: WorkerContext, images: torch.Tensor) -> torch.Tensor:
    if ctx.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    with torch.autocast(ctx.device.type, dtype=ctx.amp_dtype or torch.float32, enabled=ctx.amp_dtype is not None):
        return (ctx.model if ctx.compiled is None else ctx.compiled)(images).float().squeeze(1)


def train_one_epoch(ctx: WorkerContext, shard, optimizer, scheduler, generator: torch.Generator, epoch: int) -> dict:
    """One pass over this worker's train shard; returns mean loss and throughput."""
    ctx.model.train()
    total_loss, n_images, start, first_batch_at = 0.0, 0, time.perf_counter(), None
    batches = shard.iter_torch_batches(
        batch_size=ctx.cfg.train.batch_size,
        device=ctx.device,
        local_shuffle_buffer_size=max(256, 4 * ctx.cfg.train.batch_size),
        local_shuffle_seed=ctx.cfg.train.seed + epoch,
        prefetch_batches=2,
    )
    for batch in batches:
        first_batch_at = first_batch_at or time.time()  # the data pipeline's start-up ends here
        images = augment(batch["image"].float().div_(255.0), ctx.cfg.data.augment, generator)
        logits = _forward(ctx, normalize(images, ctx.preprocessing))
        loss = ctx.loss_fn(logits, batch["label"].float())
        optimizer.zero_grad(set_to_none=True)
        ctx.scaler.scale(loss).backward()
        if ctx.cfg.train.grad_clip_norm > 0:
            ctx.scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(ctx.model.parameters(), ctx.cfg.train.grad_clip_norm)
        ctx.scaler.step(optimizer)
        ctx.scaler.update()
        scheduler.step()
        total_loss += loss.item() * len(logits)
        n_images += len(logits)
    seconds = time.perf_counter() - start
    return {
        "train_loss": total_loss / max(n_images, 1),
        "train_images_per_s": n_images / max(seconds, 1e-9),
        "first_batch_at": first_batch_at or time.time(),
    }


def _gather(values: np.ndarray) -> np.ndarray:
    """Concatenate an array from every worker (identity with one worker)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, values)
    return np.concatenate(gathered)


@torch.inference_mode()
def validate(ctx: WorkerContext, shard) -> dict:
    """Val loss, AUROC and accuracy (at 0.5) over the shards of all workers."""
    ctx.model.eval()
    logits, labels = [], []
    for batch in shard.iter_torch_batches(batch_size=2 * ctx.cfg.train.batch_size, device=ctx.device):
        logits.append(_forward(ctx, normalize(batch["image"], ctx.preprocessing)).cpu())
        labels.append(batch["label"].float().cpu())
    all_logits = _gather(torch.cat(logits).numpy()) if logits else _gather(np.zeros(0, np.float32))
    all_labels = _gather(torch.cat(labels).numpy()) if labels else _gather(np.zeros(0, np.float32))
    loss = ctx.loss_fn(torch.from_numpy(all_logits), torch.from_numpy(all_labels)).item()
    scores = binary_metrics(all_labels.astype(int), 1 / (1 + np.exp(-all_logits)), 0.5)
    return {"val_loss": loss, "val_auroc": scores["auroc"], "val_accuracy": scores["accuracy"]}


def _restore(ctx: WorkerContext, optimizer, scheduler) -> int:
    """Load the latest checkpoint Ray Train hands back after a restart; returns the epoch to start at."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 0
    with checkpoint.as_directory() as directory:
        from pneumo.models.checkpoints import load_checkpoint

        unwrap(ctx.model).load_state_dict(load_checkpoint(directory).model.state_dict())
        state = load_train_state(directory)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if "scaler" in state:
        ctx.scaler.load_state_dict(state["scaler"])
    return int(state["epoch"]) + 1


def _report(ctx: WorkerContext, metrics: dict, optimizer, scheduler, epoch: int) -> None:
    """Every rank reports (it is a barrier); only rank 0 attaches a checkpoint."""
    if ray.train.get_context().get_world_rank() != 0:
        ray.train.report(metrics)
        return
    meta = CheckpointMeta(
        model=to_dict(ctx.cfg)["model"], preprocessing=ctx.preprocessing.to_dict(), epoch=epoch, metrics=metrics
    )
    state = {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "epoch": epoch,
        "scaler": ctx.scaler.state_dict(),
    }
    with tempfile.TemporaryDirectory() as directory:
        save_checkpoint(directory, ctx.model, meta, state)
        ray.train.report(
            metrics, checkpoint=ray.train.Checkpoint.from_directory(directory), checkpoint_dir_name=f"epoch_{epoch:03d}"
        )


def _quiet_report_log() -> None:
    """Ray 2.60 logs every `ray.train.report` at INFO through a logger named after its *file*, so
    RunConfig's LoggingConfig does not reach it and each epoch floods the console; EpochLogger
    already prints one line per epoch."""
    from ray.train.v2._internal.execution import context as train_context

    logging.getLogger(train_context.__file__).setLevel(logging.WARNING)


def _start_system_metrics(loop_config: dict[str, Any]):
    """One MLflow system-metrics sampler per node (its local rank 0), logging to the run's MLflow run;
    on several nodes each node's metrics carry its name (system/node1/cpu_utilization_percentage)."""
    target = loop_config.get("system_metrics")
    context = ray.train.get_context()
    if not target or context.get_local_rank() != 0:
        return None
    several_nodes = context.get_world_size() > context.get_local_world_size()
    return start_system_metrics(
        target["tracking_uri"],
        target["run_id"],
        target["interval_s"],
        node_id=f"node{context.get_node_rank()}" if several_nodes else None,
    )


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """What each Ray Train worker runs. `loop_config` holds only plain values (see `fit`)."""
    entered_at = time.time()  # the worker process is up, imported and in torch's process group
    _quiet_report_log()
    monitor = _start_system_metrics(loop_config)
    try:
        _train_epochs(loop_config, entered_at)
    finally:
        if monitor is not None:
            monitor.finish()


def _train_epochs(loop_config: dict[str, Any], entered_at: float) -> None:
    cfg = from_dict(loop_config["experiment"])
    rank = ray.train.get_context().get_world_rank()
    torch.set_num_threads(loop_config["torch_threads"])
    seed_everything(cfg.train.seed)  # same initial weights on every rank
    device = ray.train.torch.get_device()
    channels_last = cfg.train.channels_last
    model = create_model(cfg.model).to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    model = ray.train.torch.prepare_model(model)  # [1] DDP (NCCL on GPUs, gloo on CPUs) + device placement
    start_up = {  # unix s, sent with the first epoch: where a worker's start-up went (bench/overhead_bench.py)
        "worker_imported_at": IMPORTED_AT,
        "loop_started_at": entered_at,
        "model_ready_at": time.time(),
    }
    pos_weight = torch.tensor(loop_config["positive_weight"] if cfg.train.class_weighting == "balanced" else 1.0)
    amp_dtype = autocast_dtype(cfg.train.precision, device)
    ctx = WorkerContext(
        cfg,
        Preprocessing.from_dict(loop_config["preprocessing"]),
        model,
        device,
        amp_dtype,
        torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight.to(device)),
        torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16),
        channels_last,
        torch.compile(model) if cfg.train.compile else None,
    )
    optimizer = build_optimizer(model, cfg.train)
    scheduler = build_lr_schedule(optimizer, cfg.train, loop_config["steps_per_epoch"])
    start_epoch = _restore(ctx, optimizer, scheduler)  # [2] resume from the latest checkpoint
    generator = torch.Generator().manual_seed(cfg.train.seed * 1000 + rank)
    train_shard = ray.train.get_dataset_shard("train")  # [3] this worker's share of Ray Data
    val_shard = ray.train.get_dataset_shard("val")
    for epoch in range(start_epoch, cfg.train.epochs):
        generator.manual_seed(cfg.train.seed * 100_003 + epoch * 1000 + rank)
        started_at = time.time()  # unix seconds: when each epoch ran, for dashboards and bench/overhead_bench.py
        metrics = {"epoch": epoch, **train_one_epoch(ctx, train_shard, optimizer, scheduler, generator, epoch)}
        metrics.update(
            validate(ctx, val_shard),
            lr=optimizer.param_groups[0]["lr"],
            epoch_started_at=started_at,
            epoch_finished_at=time.time(),
            **start_up,
        )
        start_up = {}
        _report(ctx, metrics, optimizer, scheduler, epoch)  # [4] metrics + checkpoint to Ray Train


# ---------------------------------------------------------------- driver side


@dataclass
class TrainOutcome:
    best_checkpoint: str  # folder of the checkpoint with the best tune.metric
    best_metrics: dict[str, float]
    last_metrics: dict[str, float]
    results_path: str  # Ray Train's run folder (checkpoints, logs)


def worker_threads(cfg: ExperimentConfig) -> int:
    """Intra-op threads per worker: the machine's cores shared by the workers, never oversubscribed."""
    return max(1, (os.cpu_count() or 1) // cfg.scaling.num_workers)


def build_loop_config(cfg: ExperimentConfig, data: PreparedData, preprocessing: Preprocessing) -> dict[str, Any]:
    n_train = sum(data.counts["train"].values())
    per_worker = math.ceil(n_train / cfg.scaling.num_workers)
    return {
        "experiment": to_dict(cfg),
        "preprocessing": preprocessing.to_dict(),
        "positive_weight": data.positive_weight(),
        "steps_per_epoch": max(1, math.ceil(per_worker / cfg.train.batch_size)),
        "torch_threads": worker_threads(cfg),
    }


def build_trainer(
    cfg: ExperimentConfig,
    data: PreparedData,
    preprocessing: Preprocessing,
    run_name: str,
    callbacks: list[UserCallback],
    storage: Optional[str] = None,
    mlflow_run: Optional[tuple[str, str]] = None,
) -> TorchTrainer:
    """The TorchTrainer for one training run; the same `run_name` (and storage) resumes its checkpoints.
    `mlflow_run` (tracking URI, run id) receives the workers' system metrics (mlflow.system_metrics_interval_s)."""
    # Ray Train's controller moves between states (workers up, running, finished) once per poll, 2 s by
    # default: polling every 0.25 s makes each fit ~4 s shorter (bench/overhead_bench.py). Read from
    # this process's environment when fit() starts the controller.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
    loop_config = build_loop_config(cfg, data, preprocessing)
    if mlflow_run and cfg.mlflow.system_metrics_interval_s > 0:
        loop_config["system_metrics"] = {
            "tracking_uri": mlflow_run[0],
            "run_id": mlflow_run[1],
            "interval_s": cfg.mlflow.system_metrics_interval_s,
        }
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=cfg.scaling.num_workers,
            use_gpu=cfg.scaling.use_gpu,
            resources_per_worker={"CPU": cfg.scaling.cpus_per_worker},
            placement_strategy=cfg.scaling.placement_strategy,
        ),
        run_config=RunConfig(
            name=run_name,
            storage_path=storage or storage_path(cfg),
            checkpoint_config=CheckpointConfig(
                num_to_keep=cfg.train.checkpoints_to_keep,
                # kept by what picks the best one (tune.metric, val_auroc
                # by default), so the best is never among those deleted
                checkpoint_score_attribute=cfg.tune.metric,
                checkpoint_score_order=cfg.tune.mode,
            ),
            failure_config=FailureConfig(max_failures=cfg.scaling.max_failures),
            callbacks=callbacks,
            logging_config=LoggingConfig(log_level="WARNING"),  # progress comes from EpochLogger
            worker_runtime_env={"env_vars": dict(cfg.scaling.worker_env)},  # read at process start (malloc)
        ),
        datasets=data.training_datasets,
        dataset_config=DataConfig(execution_options=ordered_ingest_options()),
    )


def ordered_ingest_options() -> ExecutionOptions:
    """Ray Data's ingest options with the order of blocks kept, so that the streaming split hands each worker
    the same blocks in the same order on every run: the same seed trains the same model. Ray Train reads its
    defaults from the DataContext of the process that builds the trainer, which in a Tune trial is not the
    driver's (where `pneumo run` sets preserve_order); without it the split hands out blocks as they come.
    The cost: the split ignores locality hints, so on a cluster a worker may read blocks from another node."""
    return ExecutionOptions(preserve_order=True)  # Ray's defaults otherwise (its own copy warns of a deprecation)


def storage_path(cfg: ExperimentConfig) -> str:
    """scaling.storage_path as Ray wants it: URIs as given, local folders absolute and durable (paths.py)."""
    return durable_path(cfg.scaling.storage_path)


@contextlib.contextmanager
def _forward_epochs(events: Queue, progress: RunEvents, row: str) -> Iterator[None]:
    """A driver thread that moves the controller's epoch events into the progress table while fit() blocks."""
    done = threading.Event()

    def forward() -> None:
        while True:
            try:
                kind, payload = events.get(timeout=0.5)
            except queue.Empty:
                if done.is_set():
                    return
                continue
            if kind == "epoch":
                progress.epoch_reported(row, payload)
            else:
                progress.note(payload)

    thread = threading.Thread(target=forward, name="pneumo-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(timeout=10)
        events.shutdown()


def fit(
    cfg: ExperimentConfig,
    data: PreparedData,
    preprocessing: Preprocessing,
    run_name: str,
    tracking_uri: str,
    mlflow_run_id: str,
    progress: Optional[RunEvents] = None,
) -> TrainOutcome:
    """Train once (or resume `run_name`) and return where the best checkpoint is."""
    progress = progress or LoggedEvents()
    events = Queue(actor_options={"num_cpus": 0})  # epochs from the Train controller to this driver's table
    trainer = build_trainer(
        cfg,
        data,
        preprocessing,
        run_name,
        [EpochLogger(tracking_uri, mlflow_run_id, cfg.train.epochs, events=events)],
        mlflow_run=(tracking_uri, mlflow_run_id),
    )
    progress.trial_started("train")
    with _forward_epochs(events, progress, "train"):
        try:
            result = trainer.fit()
        except BaseException as error:
            full = storage_full_error(error, storage_path(cfg))  # said in config terms, not a worker traceback
            progress.trial_ended("train", FAILED, first_line(full or error))
            if full is not None:
                raise full from error
            raise
    progress.trial_ended("train", COMPLETED)
    best_checkpoint, best_metrics = best_of(
        result.best_checkpoints, cfg.tune.mode, lambda pair: pair[1][cfg.tune.metric]
    )
    return TrainOutcome(best_checkpoint.path, best_metrics, result.metrics, result.path)
