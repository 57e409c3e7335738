"""Each faster training path gives the same loss curve as the plain one on a fixed seed:
channels-last memory format, bf16 autocast (on CPU here), torch.compile, fp16 with loss scaling's
bookkeeping."""

import numpy as np
import pytest
import torch

from pneumo.config import DataConfig, ExperimentConfig, ModelConfig, TrainConfig
from pneumo.data.transforms import Preprocessing
from pneumo.models.networks import create_model
from pneumo.training.train import (
    WorkerContext,
    autocast_dtype,
    build_lr_schedule,
    build_optimizer,
    seed_everything,
    train_one_epoch,
)

pytestmark = pytest.mark.slow  # trains (and compiles) on a Ray Data shard

SPEC = Preprocessing(in_chans=1, image_size=32, mean=(0.5,), std=(0.25,))


@pytest.fixture(scope="module")
def shard(ray_session):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 96)
    images = (rng.normal(90 + 60 * labels[:, None, None, None], 30, (96, 1, 32, 32))).clip(0, 255).astype(np.uint8)
    return ray_session.data.from_items(
        [{"image": image, "label": int(label)} for image, label in zip(images, labels)]
    ).materialize()


def loss_curve(shard, channels_last: bool, precision: str, epochs: int = 3, compile: bool = False) -> list[float]:
    cfg = ExperimentConfig(
        name="paths",
        data=DataConfig(path="unused"),
        model=ModelConfig(name="test_resnet"),
        train=TrainConfig(epochs=epochs, batch_size=16, lr=5e-3, precision=precision, channels_last=channels_last),
    )
    torch.set_num_threads(1)
    seed_everything(0)
    device = torch.device("cpu")
    model = create_model(cfg.model).to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    amp = autocast_dtype(precision, device)
    ctx = WorkerContext(
        cfg,
        SPEC,
        model,
        device,
        amp,
        torch.nn.BCEWithLogitsLoss(),
        torch.amp.GradScaler("cpu", enabled=amp == torch.float16),
        channels_last,
        torch.compile(model) if compile else None,
    )
    optimizer = build_optimizer(model, cfg.train)
    scheduler = build_lr_schedule(optimizer, cfg.train, steps_per_epoch=6)
    generator = torch.Generator().manual_seed(0)
    return [
        train_one_epoch(ctx, shard, optimizer, scheduler, generator, epoch)["train_loss"] for epoch in range(epochs)
    ]


def test_channels_last_and_bf16_follow_the_plain_loss_curve(shard):
    plain = loss_curve(shard, channels_last=False, precision="fp32")
    assert plain[-1] < plain[0], "the plain path learns"
    np.testing.assert_allclose(loss_curve(shard, channels_last=True, precision="fp32"), plain, rtol=1e-3)
    np.testing.assert_allclose(loss_curve(shard, channels_last=False, precision="bf16"), plain, rtol=0.05)


def test_compiled_model_follows_the_plain_loss_curve(shard):
    plain = loss_curve(shard, channels_last=False, precision="fp32", epochs=2)
    np.testing.assert_allclose(
        loss_curve(shard, channels_last=False, precision="fp32", epochs=2, compile=True), plain, rtol=1e-3
    )
