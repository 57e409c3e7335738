"""Published results on the public pneumonia datasets, to place a run beside.

Figures are as printed in the cited papers (test split of the same dataset). They come from other
training recipes and image sizes; the comparison says where a run stands, not which method is better.
"""

from __future__ import annotations

from dataclasses import dataclass

from pneumo.config import DataConfig
from pneumo.data.sources import resolve_format
from pneumo.data.synthetic import is_synthetic_set

KERMANY_2018 = (
    "Kermany et al., Identifying Medical Diagnoses and Treatable Diseases by Image-Based Deep "
    "Learning, Cell 172(5):1122-1131, 2018"
)
MEDMNIST_V2 = (
    "Yang et al., MedMNIST v2: A large-scale lightweight benchmark for 2D and 3D biomedical image "
    "classification, Scientific Data 10:41, 2023 (Table 3, PneumoniaMNIST)"
)


@dataclass(frozen=True)
class PublishedResult:
    method: str  # model and input size as the paper names them
    metrics: dict[str, float]  # keys as in pneumo.metrics.binary_metrics
    source: str  # citation


PUBLISHED = {
    "kaggle": (
        PublishedResult(
            "Inception v3, transfer learning (Kermany et al.)",
            {"accuracy": 0.928, "sensitivity": 0.932, "specificity": 0.901, "auroc": 0.968},
            KERMANY_2018,
        ),
    ),
    "pneumoniamnist": (
        PublishedResult("ResNet-18 (28 px)", {"auroc": 0.944, "accuracy": 0.854}, MEDMNIST_V2),
        PublishedResult("ResNet-50 (224 px)", {"auroc": 0.962, "accuracy": 0.884}, MEDMNIST_V2),
        PublishedResult("Google AutoML Vision", {"auroc": 0.991, "accuracy": 0.946}, MEDMNIST_V2),
    ),
}
DATASET_TITLES = {
    "kaggle": "Kaggle Chest X-Ray Images (Pneumonia), Kermany et al. 2018",
    "pneumoniamnist": "MedMNIST v2 PneumoniaMNIST",
}


def resolve_baseline_dataset(setting: str, data: DataConfig) -> str:
    """eval.baselines -> kaggle | pneumoniamnist | none. `auto` reads the data config: a MedMNIST .npz
    is PneumoniaMNIST, a Kaggle-layout folder is the Kaggle set unless pneumo synthesised it."""
    if setting != "auto":
        return setting
    data_format = resolve_format(data)
    if data_format == "npz":
        return "pneumoniamnist"
    if data_format == "folder" and not is_synthetic_set(data.path):
        return "kaggle"
    return "none"


def published_results(dataset: str) -> tuple[PublishedResult, ...]:
    return PUBLISHED.get(dataset, ())
