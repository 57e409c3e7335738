"""The MLflow pyfunc flavour of a pneumo checkpoint: image bytes in, P(pneumonia) and label out.

    model = mlflow.pyfunc.load_model("models:/pneumo-pneumonia@champion")
    model.predict(pd.DataFrame({"image": [open("film.jpeg", "rb").read()]}))
    #    probability  label
    # 0       0.9731      1

The pneumo package travels inside the model (code_paths), the model is saved from code
(pyfunc_entry.py, nothing pickled), and the weights stay a safetensors checkpoint folder.
registry/register.py logs the saved folder into a run and registers it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema

MODEL_ARTIFACT = "model"  # the MLflow model's folder inside its run
CHECKPOINT_ARTIFACT = "checkpoint"  # the pneumo checkpoint folder inside the MLflow model

SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("binary", "image")]),
    outputs=Schema(
        [
            ColSpec("double", "probability"),
            ColSpec("long", "label"),
            ColSpec("boolean", "in_distribution", required=False),  # None: the model has no profile
            ColSpec("double", "ood_score", required=False),
        ]
    ),
)


class PneumoniaClassifier(mlflow.pyfunc.PythonModel):
    """Wraps a checkpoint folder; applies the preprocessing, calibration and threshold stored with it."""

    def load_context(self, context) -> None:
        from pneumo.models.checkpoints import load_checkpoint
        from pneumo.monitoring.profile import profile_of

        self.loaded = load_checkpoint(context.artifacts[CHECKPOINT_ARTIFACT])
        self.profile = profile_of(self.loaded)  # the out-of-distribution gate, when the model has one

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        """probability and label, plus in_distribution and ood_score from the model's gate (None without one)."""
        from pneumo.data.transforms import decode_image
        from pneumo.monitoring.features import observe

        preprocessing = self.loaded.meta.preprocessing_spec
        images = np.stack([decode_image(bytes(data), preprocessing) for data in model_input["image"]])
        seen = observe(self.loaded, torch.from_numpy(images))
        labels = (seen.probabilities >= self.loaded.meta.decision_threshold).astype(np.int64)
        scores = self.profile.ood_scores(seen) if self.profile is not None else None
        return pd.DataFrame(
            {
                "probability": seen.probabilities.astype(np.float64),
                "label": labels,
                "in_distribution": list(~self.profile.gate.refuses(scores))
                if scores is not None
                else [None] * len(labels),
                "ood_score": scores.astype(np.float64) if scores is not None else [None] * len(labels),
            }
        )


def save_pyfunc_model(checkpoint_dir: str | Path, destination: str | Path) -> Path:
    """Write the MLflow model folder (MLmodel, code, the checkpoint as an artifact) to `destination`."""
    import pneumo

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*input example was not provided.*")
        mlflow.pyfunc.save_model(
            path=str(destination),
            python_model=str(Path(__file__).with_name("pyfunc_entry.py")),
            artifacts={CHECKPOINT_ARTIFACT: str(checkpoint_dir)},
            code_paths=[str(Path(pneumo.__file__).parent)],
            signature=SIGNATURE,
            pip_requirements=_requirements(),
        )
    return Path(destination)


def _requirements() -> list[str]:
    from importlib.metadata import version

    return [
        f"{name}=={version(name)}"
        for name in (
            "torch",
            "timm",
            "safetensors",
            "pillow",
            "numpy",
            "pandas",
            "omegaconf",
            "scikit-learn",
            "scipy",
            "mlflow",
        )
    ]
