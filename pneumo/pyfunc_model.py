"""The MLflow pyfunc flavour of a pneumo checkpoint: image bytes in, P(pneumonia) and label out.

    model = mlflow.pyfunc.load_model("models:/pneumo-pneumonia@champion")
    model.predict(pd.DataFrame({"image": [open("film.jpeg", "rb").read()]}))
    #    probability  label
    # 0       0.9731      1

The pneumo package travels inside the model (code_paths), the model is logged from code
(pyfunc_entry.py, nothing pickled), and the weights stay a safetensors checkpoint folder.
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

CHECKPOINT_ARTIFACT = "checkpoint"
SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("binary", "image")]),
    outputs=Schema([ColSpec("double", "probability"), ColSpec("long", "label")]),
)


class PneumoniaClassifier(mlflow.pyfunc.PythonModel):
    """Wraps a checkpoint folder; applies the preprocessing, calibration and threshold stored with it."""

    def load_context(self, context) -> None:
        from pneumo.checkpoints import load_checkpoint

        self.loaded = load_checkpoint(context.artifacts[CHECKPOINT_ARTIFACT])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        from pneumo.data.transforms import decode_image
        from pneumo.evaluate import predict_probabilities

        preprocessing = self.loaded.meta.preprocessing_spec
        images = np.stack([decode_image(bytes(data), preprocessing) for data in model_input["image"]])
        probabilities = predict_probabilities(self.loaded, torch.from_numpy(images))
        labels = (probabilities >= self.loaded.meta.decision_threshold).astype(np.int64)
        return pd.DataFrame({"probability": probabilities.astype(np.float64), "label": labels})


def log_pyfunc_model(checkpoint_dir: str | Path):
    """Log into the active MLflow run; returns mlflow's ModelInfo."""
    import pneumo

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*input example was not provided.*")
        return mlflow.pyfunc.log_model(
            name="model",
            python_model=str(Path(__file__).with_name("pyfunc_entry.py")),
            artifacts={CHECKPOINT_ARTIFACT: str(checkpoint_dir)},
            code_paths=[str(Path(pneumo.__file__).parent)],
            signature=SIGNATURE,
            pip_requirements=_requirements(),
        )


def _requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in
            ("torch", "timm", "safetensors", "pillow", "numpy", "pandas", "omegaconf", "scikit-learn", "mlflow")]
