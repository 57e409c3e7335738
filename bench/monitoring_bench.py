"""Monitoring benchmark: how well the out-of-distribution gate and the drift tests work, and what a
shift costs the model.

    python -m bench.monitoring_bench --model results/<run>/best_model [--config experiments/quickstart.yaml]

Measures, on the given model (the quickstart's by default recipe) and its experiment's data:
* the gate: films of the test split wrongly refused, and the non-chest set (bench/non_chest.py)
  refused per category, for the shipped combined score and each alternative (Mahalanobis on
  features, PCA residual, intensities, k-NN distance, energy score), every cut-off at val's 99th
  percentile; plus a real chest film from another source (pydicom's RG1, a CR PA chest);
* drift: windows of 200 films drawn from a fresh in-distribution set (false alarms) and from each
  shifted set (`pneumo data synth` acquisition options: detections), for the shipped tests and a
  per-component KS alternative;
* AUROC of the model on each shifted set (all its films, none seen in training; what
  `pneumo eval MODEL SET --split test` computes on a part of them);
* the profile's size for this model, and for 5,000 training films.
Writes bench/results/monitoring.json; prints the tables that README and bench/README show.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import ks_2samp
from sklearn.neighbors import NearestNeighbors

from bench.non_chest import REAL_CHEST_FILE, dicom_files, non_chest_images
from pneumo.config import load_config
from pneumo.data.synthetic import Acquisition, generate_chest_xrays
from pneumo.data.transforms import ImageDecodeError, decode_image
from pneumo.evaluation.metrics import binary_metrics
from pneumo.models.checkpoints import PROFILE_FILE
from pneumo.monitoring.drift import DRIFT_ALPHA, WindowData, drift_report
from pneumo.monitoring.features import Observations, observe, observe_dataset
from pneumo.monitoring.ood import OOD_PARTS, VAL_QUANTILE
from pneumo.monitoring.profile import build_profile, profile_of, write_profile

RESULTS = Path(__file__).resolve().parent / "results" / "monitoring.json"
WINDOW = 200  # films per drift window
SHIFTS = {  # name -> how the other hospital's films differ (strong shifts)
    "under-exposed (exposure -0.2)": (Acquisition(exposure=-0.2), 0.74),
    "noisy (noise 0.08)": (Acquisition(noise=0.08), 0.74),
    "blurred (blur 2.5 px)": (Acquisition(blur_px=2.5), 0.74),
    "low resolution (0.25)": (Acquisition(resolution=0.25), 0.74),
    "portable AP": (Acquisition(portable=True), 0.74),
    "inverted polarity": (Acquisition(inverted=True), 0.74),
    "prevalence 30%": (Acquisition(), 0.30),
}


def decode_folder(root: Path, spec) -> tuple[np.ndarray, np.ndarray]:
    """Every JPEG of a Kaggle-layout folder -> (uint8 images, folder labels)."""
    files = sorted(root.glob("*/*/*.jpeg"))
    images = np.stack([decode_image(f.read_bytes(), spec) for f in files])
    return images, np.array([f.parent.name == "PNEUMONIA" for f in files], dtype=int)


def observe_images(loaded, images: np.ndarray, batch: int = 128) -> Observations:
    return Observations.concat(
        [observe(loaded, torch.from_numpy(images[i : i + batch])) for i in range(0, len(images), batch)]
    )


def synthetic_set(
    work: Path, name: str, n: int, seed: int, image_size: int, acquisition: Acquisition, share: float
) -> Path:
    root = work / f"{name.split(' (')[0].replace(' ', '-')}-{n}"
    if not root.exists():
        generate_chest_xrays(
            root, n_images=n, image_size=image_size, seed=seed, acquisition=acquisition, pneumonia_share=share
        )
    return root


def ood_methods(profile, train: Observations, val: Observations, logits_of) -> dict:
    """name -> (score function over Observations, cut-off): the shipped gate with its own cut-off (log-normal
    fit on val), each alternative with val's empirical VAL_QUANTILE quantile (energy scores can be negative)."""
    from pytorch_ood.detector import EnergyBased

    def parts(seen):
        return profile.gate.part_scores(*profile.project(seen.features), seen.intensities)

    knn = NearestNeighbors(n_neighbors=10).fit(profile.project(train.features)[0])
    methods = {
        **{f"{part} only": (lambda seen, i=i: parts(seen)[:, i]) for i, part in enumerate(OOD_PARTS)},
        "k-NN distance (k=10, PCA features)": lambda seen: knn.kneighbors(profile.project(seen.features)[0])[0][:, -1],
        "energy score (pytorch-ood)": lambda seen: EnergyBased.score(logits_of(seen)).numpy(),
    }
    return {
        "combined (shipped)": (profile.ood_scores, profile.gate.cutoff),
        **{name: (score, float(np.quantile(score(val), VAL_QUANTILE))) for name, score in methods.items()},
    }


def ks_components(reference: np.ndarray, current: np.ndarray) -> bool:
    """Alternative feature test (alibi-detect's KSDrift): KS per PCA component, Bonferroni."""
    p = min(ks_2samp(reference[:, j], current[:, j]).pvalue for j in range(reference.shape[1]))
    return p * reference.shape[1] < DRIFT_ALPHA / 3


def drift_rates(profile, seen: Observations, windows: int, rng: np.random.Generator) -> dict:
    projected = profile.project(seen.features)[0]
    scores = profile.ood_scores(seen)
    found = {"any": 0, "features": 0, "predictions": 0, "intensities": 0, "ks_components": 0}
    for _ in range(windows):
        rows = rng.choice(len(seen), WINDOW, replace=False)
        window = WindowData(
            projected[rows],
            seen.intensities[rows],
            seen.probabilities[rows],
            scores[rows] > profile.gate.cutoff,
            np.arange(WINDOW, dtype=float),
        )
        report = drift_report(profile, window, WINDOW, 50)
        found["any"] += report["drift"]
        for family in ("features", "predictions", "intensities"):
            found[family] += report[family]["drift"]
        found["ks_components"] += ks_components(profile.features, projected[rows])
    return {key: value / windows for key, value in found.items()}


def profile_bytes(profile) -> int:
    with tempfile.TemporaryDirectory() as folder:
        write_profile(folder, profile)
        return (Path(folder) / PROFILE_FILE).stat().st_size


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="checkpoint folder or models:/… URI")
    parser.add_argument("--config", default="experiments/quickstart.yaml", help="the model's experiment YAML")
    parser.add_argument("--work", default="bench/data/monitoring", help="where the generated sets go")
    parser.add_argument("--null-windows", type=int, default=100)
    parser.add_argument("--shift-windows", type=int, default=30)
    parser.add_argument("--fresh", type=int, default=2000, help="films of the fresh in-distribution set")
    parser.add_argument("--shifted", type=int, default=600, help="films of each shifted set")
    args = parser.parse_args(argv)
    started = time.time()
    from pneumo.cli.ray_start import init_ray
    from pneumo.data.dataset import prepare_data
    from pneumo.registry.uri import fetch_model
    from pneumo.tracking import resolve_tracking_uri

    cfg = load_config([args.config])
    loaded = fetch_model(args.model, resolve_tracking_uri(cfg.mlflow)).loaded
    spec = loaded.meta.preprocessing_spec
    init_ray()
    data = prepare_data(cfg.data, spec)
    train, val, test = (observe_dataset(loaded, data.datasets[split]) for split in ("train", "val", "test"))
    profile = profile_of(loaded) or build_profile(train, val)
    repeated = Observations.concat([train] * (5000 // len(train) + 1)).take(np.arange(5000))
    sizes = {"this model": profile_bytes(profile), "5,000 training films": profile_bytes(build_profile(repeated, val))}

    def logits_of(seen: Observations) -> torch.Tensor:  # two-class logits [0, logit] from calibrated P
        logit = np.log(seen.probabilities / (1 - seen.probabilities + 1e-7) + 1e-7)
        return torch.from_numpy(np.stack([np.zeros_like(logit), logit], axis=1))

    methods = ood_methods(profile, train, val, logits_of)
    work = Path(args.work)
    fresh = synthetic_set(work, "in-distribution", args.fresh, 101, cfg.data.synth.image_size, Acquisition(), 0.74)
    fresh_images, fresh_labels = decode_folder(fresh, spec)
    fresh_seen = observe_images(loaded, fresh_images)
    test_films = {f"film-{i}": image[0] for i, image in enumerate(fresh_images[:20])}
    non_chest = {}
    for name, data_bytes in non_chest_images(test_films).items():
        try:
            non_chest[name] = decode_image(data_bytes, spec)
        except ImageDecodeError:
            continue  # refused before the gate (e.g. a multi-frame DICOM): not counted here
    non_chest_seen = observe_images(loaded, np.stack(list(non_chest.values())))
    categories = np.array([name.split("/")[0] for name in non_chest])
    real_chest = observe_images(
        loaded, decode_image(dicom_files((REAL_CHEST_FILE,))[f"dicom/{REAL_CHEST_FILE}"], spec)[None]
    )
    ood = {}
    for name, (score, cutoff) in methods.items():
        refused = score(non_chest_seen) > cutoff
        ood[name] = {
            "test_refused": float(np.mean(score(test) > cutoff)),
            "fresh_in_distribution_refused": float(np.mean(score(fresh_seen) > cutoff)),
            "non_chest_refused": float(refused.mean()),
            "per_category": {c: float(refused[categories == c].mean()) for c in sorted(set(categories))},
            "real_chest_film_score_over_cutoff": float(score(real_chest)[0] / cutoff),
        }
    rng = np.random.default_rng(0)
    drift = {"in-distribution (false alarms)": drift_rates(profile, fresh_seen, args.null_windows, rng)}
    auroc = {
        "in-distribution": binary_metrics(fresh_labels, fresh_seen.probabilities, loaded.meta.decision_threshold)[
            "auroc"
        ]
    }
    shifted_ood = {}
    for name, (acquisition, share) in SHIFTS.items():
        root = synthetic_set(work, name, args.shifted, 202, cfg.data.synth.image_size, acquisition, share)
        images, labels = decode_folder(root, spec)
        seen = observe_images(loaded, images)
        drift[name] = drift_rates(profile, seen, args.shift_windows, rng)
        auroc[name] = binary_metrics(labels, seen.probabilities, loaded.meta.decision_threshold)["auroc"]
        shifted_ood[name] = float(np.mean(profile.ood_scores(seen) > profile.gate.cutoff))
    result = {
        "model": args.model,
        "n": {
            "train": len(train),
            "val": len(val),
            "test": len(test),
            "non_chest": len(non_chest),
            "fresh": len(fresh_seen),
        },
        "cutoff": profile.gate.cutoff,
        "profile_bytes": sizes,
        "ood": ood,
        "drift": drift,
        "auroc": auroc,
        "shifted_ood_rate": shifted_ood,
        "window": WINDOW,
        "alpha": DRIFT_ALPHA,
        "seconds": round(time.time() - started, 1),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    print_tables(result)
    return result


def print_tables(result: dict) -> None:
    print("profile size: " + ", ".join(f"{k} {v / 1024:.0f} KB" for k, v in result["profile_bytes"].items()))
    print(
        "\n| OOD method | test films refused | fresh films refused | non-chest refused | real chest film score / cut-off |"
    )
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, row in result["ood"].items():
        print(
            f"| {name} | {row['test_refused']:.1%} | {row['fresh_in_distribution_refused']:.1%} | "
            f"{row['non_chest_refused']:.1%} | {row['real_chest_film_score_over_cutoff']:.2f} |"
        )
    shipped = result["ood"]["combined (shipped)"]["per_category"]
    print("\nnon-chest refused per category (shipped): " + ", ".join(f"{c} {v:.0%}" for c, v in shipped.items()))
    print(
        f"\n| windows of {result['window']} | drift found (any) | features (MMD) | predictions (KS) | intensities (KS) "
        "| alt: KS per component | OOD rate | AUROC |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, row in result["drift"].items():
        key = "in-distribution" if name.startswith("in-distribution") else name
        ood = result["shifted_ood_rate"].get(name, result["ood"]["combined (shipped)"]["fresh_in_distribution_refused"])
        print(
            f"| {name} | {row['any']:.0%} | {row['features']:.0%} | {row['predictions']:.0%} | "
            f"{row['intensities']:.0%} | {row['ks_components']:.0%} | {ood:.1%} | {result['auroc'][key]:.3f} |"
        )


if __name__ == "__main__":
    main()
