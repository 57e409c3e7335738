"""timm backbones for binary chest X-ray classification, and the preprocessing each one expects.

    model = create_model(ModelConfig(name="resnet18", weights_path="/models/resnet18.safetensors"))
    preprocessing = resolve_preprocessing(model, in_chans=1)

Weights come from the Hugging Face hub (`pretrained: true`, needs internet or a warm cache) or from a
local file (`weights_path`, for offline clusters); either way timm adapts the stem to `in_chans` and
drops the ImageNet classifier. The model emits one logit: P(pneumonia) = sigmoid(logit).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import timm
import torch
from timm.data import resolve_model_data_config

from pneumo.config import ConfigError, ModelConfig
from pneumo.data.transforms import Preprocessing

NUM_OUTPUTS = 1  # one logit for PNEUMONIA


def create_model(cfg: ModelConfig) -> torch.nn.Module:
    """A timm model with one output, weights from the hub, a local file, or random."""
    if not timm.is_model(cfg.name):
        close = timm.list_models(f"*{cfg.name.split('_')[0][:6]}*")[:8]
        raise ConfigError(f"model.name={cfg.name!r} is not a timm model; similar: {', '.join(close) or 'none'}")
    overlay = None
    if cfg.weights_path:
        require_weights_file(cfg)
        overlay = {"file": str(Path(cfg.weights_path).resolve()), "hf_hub_id": None, "url": None}
    pooling = {} if cfg.global_pool is None else {"global_pool": cfg.global_pool}
    try:
        return timm.create_model(
            cfg.name,
            pretrained=cfg.pretrained or overlay is not None,
            pretrained_cfg_overlay=overlay,
            num_classes=NUM_OUTPUTS,
            in_chans=cfg.in_chans,
            drop_rate=cfg.drop_rate,
            **pooling,
        )
    except (AssertionError, TypeError) as error:  # timm refuses an unknown pool type or the argument itself
        if not pooling:
            raise
        raise ConfigError(f"model.global_pool={cfg.global_pool!r}: {cfg.name} refuses it ({error})") from None


def require_weights_file(cfg: ModelConfig) -> None:
    if cfg.weights_path and not Path(cfg.weights_path).is_file():
        raise ConfigError(f"model.weights_path: file not found: {cfg.weights_path}")


def model_preprocessing(cfg: ModelConfig, image_size: int | None = None) -> Preprocessing:
    """The preprocessing of `cfg`, read off a weightless instance (no download); checks weights_path first
    so a wrong path fails before any data is read."""
    require_weights_file(cfg)
    bare = create_model(replace(cfg, pretrained=False, weights_path=None))
    return resolve_preprocessing(bare, cfg.in_chans, image_size)


def resolve_preprocessing(model: torch.nn.Module, in_chans: int, image_size: int | None = None) -> Preprocessing:
    """The model's own input size and normalization (timm's data config), for `in_chans` channels.

    A one-channel model gets the mean of the RGB statistics, matching how timm sums a pretrained
    RGB stem into one channel.
    """
    data_config = resolve_model_data_config(model)
    mean, std = tuple(data_config["mean"]), tuple(data_config["std"])
    if in_chans == 1:
        mean, std = (sum(mean) / len(mean),), (sum(std) / len(std),)
    interpolation = data_config.get("interpolation", "bilinear")
    return Preprocessing(
        in_chans=in_chans,
        image_size=image_size or int(data_config["input_size"][-1]),
        mean=mean,
        std=std,
        interpolation=interpolation if interpolation in ("bilinear", "bicubic", "nearest") else "bilinear",
    )


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare model inside DistributedDataParallel (or the model itself)."""
    return model.module if hasattr(model, "module") else model
