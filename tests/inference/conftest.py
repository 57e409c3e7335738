"""A tiny model with a reference profile, made without Ray (in seconds), as `pneumo run` would leave one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pneumo.config import ModelConfig
from pneumo.data.transforms import decode_image
from pneumo.models.checkpoints import CheckpointMeta, load_checkpoint, save_checkpoint
from pneumo.models.networks import create_model, resolve_preprocessing
from pneumo.monitoring.features import observe
from pneumo.monitoring.profile import build_profile, write_profile

IMAGE_SIZE = 32
PROFILE_FILMS = 160  # synthetic films observed for the reference profile (train 120, val 40)


@pytest.fixture(scope="session")
def tiny_model(synthetic_root, tmp_path_factory) -> Path:
    """An untrained test_resnet at 32 px, threshold 0.5, with a reference profile of synthetic films
    (so the out-of-distribution gate is on): a checkpoint folder, as `pneumo run` leaves one."""
    torch.manual_seed(0)
    cfg = ModelConfig(name="test_resnet", in_chans=1)
    model = create_model(cfg)
    spec = resolve_preprocessing(model, in_chans=1, image_size=IMAGE_SIZE)
    folder = save_checkpoint(
        tmp_path_factory.mktemp("tiny_model") / "tiny",
        model,
        CheckpointMeta(model=cfg.__dict__, preprocessing=spec.to_dict()),
    )
    loaded = load_checkpoint(folder)
    paths = sorted((synthetic_root / "train").rglob("*.jpeg"))[:PROFILE_FILMS]
    films = torch.from_numpy(np.stack([decode_image(p.read_bytes(), spec) for p in paths]))
    observed = observe(loaded, films)
    cut = PROFILE_FILMS * 3 // 4
    write_profile(folder, build_profile(observed.take(np.arange(cut)), observed.take(np.arange(cut, PROFILE_FILMS))))
    return folder
