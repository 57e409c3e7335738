"""Checkpoint folders that load without unpickling code.

    checkpoint/
      model.safetensors   weights (safetensors: tensors only)
      pneumo.json         model config, preprocessing, epoch, metrics, decision threshold, calibration
      reference_profile.npz   what the model saw on its training films (pneumo.monitoring; optional)
      train_state.pt      optimizer/scheduler state for resuming (torch.load weights_only=True)

Serving and evaluation need only the first two; the preprocessing recorded here is what every
consumer applies, so serving cannot drift from training.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from pneumo.config import ModelConfig
from pneumo.data.transforms import Preprocessing
from pneumo.models.calibration import Calibration
from pneumo.models.networks import create_model, unwrap

WEIGHTS_FILE = "model.safetensors"
META_FILE = "pneumo.json"
PROFILE_FILE = "reference_profile.npz"  # monitoring's reference profile (arrays only, loaded without pickle)
TRAIN_STATE_FILE = "train_state.pt"


class CheckpointError(ValueError):
    """A folder that is not a usable pneumo checkpoint."""


@dataclass
class CheckpointMeta:
    model: dict[str, Any]  # ModelConfig fields
    preprocessing: dict[str, Any]  # Preprocessing fields
    epoch: int = -1  # last finished epoch, 0-based
    metrics: dict[str, float] = field(default_factory=dict)
    decision_threshold: float = 0.5  # P(pneumonia) at or above which the label is PNEUMONIA
    temperature: float = 1.0  # P(pneumonia) = sigmoid(logit / temperature + logit_bias); fitted on val
    logit_bias: float = 0.0
    weights_sha256: str | None = None  # of WEIGHTS_FILE as saved: a flipped byte is refused at load; None: older models

    @property
    def calibration(self) -> Calibration:
        return Calibration(self.temperature, self.logit_bias)

    @property
    def preprocessing_spec(self) -> Preprocessing:
        return Preprocessing.from_dict(self.preprocessing)


@dataclass
class LoadedModel:
    model: torch.nn.Module  # in eval mode, on CPU
    meta: CheckpointMeta
    directory: Path | None = None  # the checkpoint folder (its ONNX exports sit beside the weights)
    profile_arrays: dict[str, np.ndarray] | None = None  # PROFILE_FILE's arrays; None for older models


def save_checkpoint(
    directory: str | Path, model: torch.nn.Module, meta: CheckpointMeta, train_state: dict[str, Any] | None = None
) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in unwrap(model).state_dict().items()}
    save_file(state, directory / WEIGHTS_FILE)
    meta.weights_sha256 = file_sha256(directory / WEIGHTS_FILE)
    write_meta(directory, meta)
    if train_state is not None:
        torch.save(train_state, directory / TRAIN_STATE_FILE)
    return directory


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def copy_for_serving(checkpoint_dir: str | Path, model_dir: str | Path) -> Path:
    """A copy of a training checkpoint without its optimizer state: the folder that is evaluated,
    exported and registered (serving needs weights only)."""
    shutil.copytree(checkpoint_dir, model_dir, dirs_exist_ok=True)
    (Path(model_dir) / TRAIN_STATE_FILE).unlink(missing_ok=True)
    return Path(model_dir)


def write_meta(directory: str | Path, meta: CheckpointMeta) -> None:
    (Path(directory) / META_FILE).write_text(json.dumps(meta.__dict__, indent=2, sort_keys=True))


def read_meta(directory: str | Path) -> CheckpointMeta:
    path = Path(directory) / META_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory} is not a pneumo checkpoint: {META_FILE} is missing")
    try:
        return CheckpointMeta(**json.loads(path.read_text()))
    except (ValueError, TypeError) as error:  # not JSON, or not the fields pneumo writes
        raise CheckpointError(f"{path} is corrupted: {error}") from None


def load_checkpoint(directory: str | Path) -> LoadedModel:
    """Rebuild the model from its config and load the weights (no pickle involved)."""
    meta = read_meta(directory)
    weights = Path(directory) / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{directory} has no {WEIGHTS_FILE}")
    if meta.weights_sha256 and file_sha256(weights) != meta.weights_sha256:
        raise CheckpointError(f"{weights} is corrupted: its SHA-256 differs from the one in {META_FILE}")
    model_cfg = ModelConfig(**{**meta.model, "pretrained": False, "weights_path": None})
    model = create_model(model_cfg)
    try:
        model.load_state_dict(load_file(weights))
    except (SafetensorError, RuntimeError, OSError) as error:  # truncated, not safetensors, wrong tensors
        raise CheckpointError(f"{weights} is corrupted: {error}") from None
    return LoadedModel(
        model=model.eval(), meta=meta, directory=Path(directory), profile_arrays=read_profile_arrays(directory)
    )


def write_profile_arrays(directory: str | Path, arrays: dict[str, np.ndarray]) -> None:
    np.savez_compressed(Path(directory) / PROFILE_FILE, **arrays)


def read_profile_arrays(directory: str | Path) -> dict[str, np.ndarray] | None:
    """The reference profile's arrays (pneumo.monitoring.profile interprets them), None when absent."""
    path = Path(directory) / PROFILE_FILE
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as stored:
        return {key: stored[key] for key in stored.files}


def load_train_state(directory: str | Path) -> dict[str, Any] | None:
    path = Path(directory) / TRAIN_STATE_FILE
    return torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None
