"""Batch transforms on the training device: `normalize` (training, evaluation, serving) and the
random `augment` of training batches. Their inputs come from pneumo/data/transforms.py."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pneumo.config import AugmentConfig
from pneumo.data.transforms import Preprocessing


def normalize(images: torch.Tensor, preprocessing: Preprocessing) -> torch.Tensor:
    """uint8 or [0, 1] float (N, C, H, W) -> normalized float32."""
    if images.dtype == torch.uint8:
        images = images.float().div_(255.0)
    mean = torch.tensor(preprocessing.mean, device=images.device).view(1, -1, 1, 1)
    std = torch.tensor(preprocessing.std, device=images.device).view(1, -1, 1, 1)
    return (images - mean) / std


def _uniform(n: int, limit: float, generator: torch.Generator) -> torch.Tensor:
    return (torch.rand(n, generator=generator) * 2 - 1) * limit


def augment(images: torch.Tensor, settings: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Random affine (rotation, zoom, shift) and brightness/contrast on [0, 1] float (N, C, H, W).

    Runs batched on the training device; `generator` (CPU) makes it reproducible per seed.
    """
    n = images.shape[0]
    angle = _uniform(n, math.radians(settings.rotation_deg), generator)
    zoom = 1 + _uniform(n, settings.scale, generator)
    shift = _uniform(2 * n, 2 * settings.translate, generator).view(n, 2)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta.to(images), list(images.shape), align_corners=False)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if settings.horizontal_flip:
        flip = (torch.rand(n, generator=generator) < 0.5).to(images.device)
        images = torch.where(flip.view(n, 1, 1, 1), images.flip(-1), images)
    brightness = (1 + _uniform(n, settings.brightness, generator)).to(images).view(n, 1, 1, 1)
    contrast = (1 + _uniform(n, settings.contrast, generator)).to(images).view(n, 1, 1, 1)
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    return ((images - mean) * contrast + mean * brightness).clamp_(0, 1)
