"""Running a loaded model over images and prepared splits: logits, calibrated P(pneumonia), and the
decoded images behind given paths (for the report's pictures)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import numpy as np
import torch

from pneumo.data.batch_transforms import normalize
from pneumo.data.transforms import Preprocessing
from pneumo.models.checkpoints import LoadedModel

if TYPE_CHECKING:
    import ray.data

    from pneumo.models.runtimes import Predictor


@dataclass
class Predictions:
    labels: np.ndarray  # 0/1 ground truth
    logits: np.ndarray  # raw model outputs, before calibration
    paths: list[str]  # where each image came from


@torch.inference_mode()
def predict_logits(model: torch.nn.Module, images: torch.Tensor, preprocessing: Preprocessing) -> np.ndarray:
    """uint8 (N, C, H, W) images -> one logit each."""
    return model(normalize(images, preprocessing)).float().squeeze(1).cpu().numpy()


def predict_probabilities(loaded: LoadedModel, images: torch.Tensor) -> np.ndarray:
    """uint8 (N, C, H, W) images -> P(pneumonia), with the calibration stored in the checkpoint."""
    return loaded.meta.calibration.probabilities(predict_logits(loaded.model, images, loaded.meta.preprocessing_spec))


def predict_dataset(
    loaded: LoadedModel, dataset: ray.data.Dataset, batch_size: int = 64, predictor: Optional[Predictor] = None
) -> Predictions:
    """Score every row of a prepared split (columns image, label, path) in this process, with PyTorch
    or with `predictor` (an ONNX Runtime or OpenVINO one from pneumo.models.runtimes)."""
    preprocessing = loaded.meta.preprocessing_spec
    labels, logits, paths = [], [], []
    for batch in dataset.iter_batches(batch_size=batch_size, batch_format="numpy"):
        images = np.ascontiguousarray(np.array(batch["image"]))
        logits.append(
            predictor.logits(images)
            if predictor is not None
            else predict_logits(loaded.model, torch.from_numpy(images), preprocessing)
        )
        labels.append(batch["label"])
        paths.extend(str(p) for p in batch["path"])
    if not labels:
        return Predictions(np.zeros(0, int), np.zeros(0, np.float32), [])
    return Predictions(np.concatenate(labels).astype(int), np.concatenate(logits), paths)


def images_at(dataset: ray.data.Dataset, paths: list[str]) -> dict[str, np.ndarray]:
    """The decoded images of a prepared (materialized) split whose path is in `paths`: its blocks are
    read where they lie, with no Ray Data task to schedule (a filter took ~2 s on the quickstart)."""
    wanted, found = set(paths), {}
    if wanted:
        for block in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            found.update(
                {str(path): np.asarray(image) for path, image in zip(block["path"], block["image"]) if path in wanted}
            )
    return found
