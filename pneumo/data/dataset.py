"""From the `data:` config to one decoded Ray Dataset per split.

Images are decoded and resized once, in parallel Ray Data tasks, and kept (materialized) as uint8
arrays in Ray's object store: every epoch and every Tune trial then streams them without decoding
again, and augmentation happens on the training device. With data.cache_dir set, the decoded rows
are also kept on disk (cache.py) for later runs. Each row carries a SHA-1 of the file bytes, which
gives the dataset fingerprint logged with every run.
"""

from __future__ import annotations

import hashlib
import logging
import random
from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np
import ray.data
from ray.data.expressions import col

from pneumo.config import DataConfig
from pneumo.data.cache import cache_key, read_cached, write_cached
from pneumo.data.folder import CLASS_NAMES, SPLITS, ImageRecord, is_empty_dir
from pneumo.data.sources import list_source, load_image
from pneumo.data.transforms import ImageDecodeError, Preprocessing

logger = logging.getLogger(__name__)
DECODE_ROWS = 128  # records per Ray Data decode task, at most
BAD_FILES_SHOWN = 20  # unusable files named in the one-line error under data.on_bad_file=error
MIN_DECODE_BLOCKS = 16  # decode tasks, at least (full-size films take ~50 ms each: 128 of them were one 6 s task)


class BadImageError(ValueError):
    """An image file that cannot be used while data.on_bad_file is `error`."""


@dataclass
class PreparedData:
    datasets: dict[str, ray.data.Dataset]  # split -> rows {image: uint8 (C,H,W), label, path}
    training_datasets: dict[str, ray.data.Dataset]  # train/val -> {image, label}: tensors only
    counts: dict[str, dict[str, int]]  # split -> class name -> images
    fingerprint: str  # SHA-256 over (split, label, file SHA-1) of every used image
    skipped_files: dict[str, str] = field(default_factory=dict)  # path -> why it was dropped
    ignored_files: int = 0  # non-image files in the class folders
    assigned_split: Optional[list[dict]] = None  # path/label/patient_id/split rows, when pneumo made the split

    @property
    def n_images(self) -> int:
        return sum(sum(per_class.values()) for per_class in self.counts.values())

    def positive_weight(self) -> float:
        """negatives / positives in train: the weight that balances the loss between classes."""
        train = self.counts["train"]
        return train[CLASS_NAMES[0]] / max(train[CLASS_NAMES[1]], 1)


def _decode_one(location: str, preprocessing: Preprocessing, max_pixels: int) -> tuple[np.ndarray, str, str]:
    """(image, SHA-1 of the stored bytes, error message or '') for one record."""
    side = preprocessing.image_size
    blank = np.zeros((preprocessing.in_chans, side, side), np.uint8)
    try:
        image, digest = load_image(location, preprocessing, max_pixels)
        return image, digest, ""
    except FileNotFoundError:
        return blank, "", "file not found"
    except OSError as error:
        return blank, "", f"cannot read file ({error.strerror or error})"
    except ImageDecodeError as error:
        return blank, "", str(error)


def _decode_batch(batch: dict[str, np.ndarray], preprocessing: Preprocessing, max_pixels: int) -> dict[str, np.ndarray]:
    """Ray Data UDF: file paths -> decoded images; a bad file keeps its row, with the error."""
    images, digests, errors = zip(*(_decode_one(str(p), preprocessing, max_pixels) for p in batch["path"]))
    return {**batch, "image": np.stack(images), "sha1": np.array(digests), "error": np.array(errors)}


def ensure_dataset(cfg: DataConfig) -> None:
    """Write the synthetic set into data.path when asked to and the folder is empty."""
    if cfg.synthesize_if_missing and is_empty_dir(cfg.path):
        from pneumo.data.synthetic import generate_chest_xrays

        logger.info("data.path %s is empty: generating %d synthetic chest X-rays", cfg.path, cfg.synth.n_images)
        generate_chest_xrays(
            cfg.path,
            n_images=cfg.synth.n_images,
            image_size=cfg.synth.image_size,
            seed=cfg.synth.seed,
            label_noise=cfg.synth.label_noise,
        )


def _fingerprint(rows: list[dict]) -> str:
    digest = hashlib.sha256()
    for row in sorted(rows, key=lambda r: (r["split"], r["sha1"], r["label"])):
        digest.update(f"{row['split']}:{row['label']}:{row['sha1']}\n".encode())
    return digest.hexdigest()


def _handle_bad_files(rows: list[dict], refused: dict[str, str], on_bad_file: str) -> dict[str, str]:
    """Unusable images and refused rows: raise under `error`, else log each and return them (location -> why)."""
    bad = {**refused, **{row["path"]: row["error"] for row in rows if row["error"]}}
    if bad and on_bad_file == "error":
        listing = "; ".join(f"{path}: {why}" for path, why in list(bad.items())[:BAD_FILES_SHOWN])
        more = f"; and {len(bad) - BAD_FILES_SHOWN} more" if len(bad) > BAD_FILES_SHOWN else ""
        raise BadImageError(
            f"{len(bad)} unusable image(s) or manifest row(s) (set data.on_bad_file=skip to drop them): {listing}{more}"
        )
    for path, why in bad.items():
        logger.warning("skipping %s: %s", path, why)
    return bad


def decode_records(
    records: list[ImageRecord], preprocessing: Preprocessing, max_pixels: int, cpus_per_task: float = 0.5
) -> ray.data.Dataset:
    """The lazy Ray Data pipeline: records -> rows with image, sha1 and error (streamed when iterated)."""
    # blocks of ~DECODE_ROWS records: Ray Data's default (200 blocks) makes tasks of a few files each;
    # but MIN_DECODE_BLOCKS at least, so a few hundred full-size films still keep every CPU busy. The
    # count depends on the records only: a cache hit keeps a fresh decode's blocks on any cluster
    n_blocks = max(1, min(len(records), max(-(-len(records) // DECODE_ROWS), MIN_DECODE_BLOCKS)))
    return ray.data.from_items([asdict(r) for r in records], override_num_blocks=n_blocks).map_batches(
        _decode_batch,
        fn_kwargs={"preprocessing": preprocessing, "max_pixels": max_pixels},
        batch_size=64,
        num_cpus=cpus_per_task,
    )


def _decoded_records(
    cfg: DataConfig, records: list[ImageRecord], preprocessing: Preprocessing, max_pixels: int
) -> ray.data.Dataset:
    """Every record decoded (materialized in Ray's object store): from data.cache_dir when it holds
    this exact set and preprocessing, else decoded now (and stored there when a cache is set)."""
    key = cache_key(records, preprocessing, max_pixels) if cfg.cache_dir else ""
    cached = read_cached(cfg.cache_dir, key) if cfg.cache_dir else None
    if cached is not None:
        logger.info("decoded images read from cache %s/%s", cfg.cache_dir, key[:12])
        return cached.materialize()
    decoded = decode_records(records, preprocessing, max_pixels).materialize()
    if cfg.cache_dir:
        write_cached(decoded, cfg.cache_dir, key)
    return decoded


def decode_order(records: list[ImageRecord], seed: int) -> list[ImageRecord]:
    """Listings come sorted by split and class folder; blocks of one class would give class-pure
    batches (training streams blocks in order, shuffling only within a local buffer), so records are
    mixed once, seeded, before decoding (and the cache is keyed in this order)."""
    shuffled = list(records)
    random.Random(seed).shuffle(shuffled)
    return shuffled


def prepare_data(cfg: DataConfig, preprocessing: Preprocessing) -> PreparedData:
    """Decode every image once into per-split Ray Datasets at the model's size and channels."""
    ensure_dataset(cfg)
    listing = list_source(cfg)
    decoded = _decoded_records(cfg, decode_order(listing.records, cfg.split_seed), preprocessing, cfg.max_image_pixels)
    rows = decoded.select_columns(["path", "label", "patient_id", "split", "sha1", "error"]).take_all()
    skipped = _handle_bad_files(rows, listing.refused, cfg.on_bad_file)
    usable = [r for r in rows if not r["error"]]
    counts = {
        split: {
            name: sum(1 for r in usable if r["split"] == split and r["label"] == label)
            for label, name in enumerate(CLASS_NAMES)
        }
        for split in SPLITS
    }
    datasets = {
        split: decoded.filter(expr=(col("split") == split) & (col("error") == ""))
        .select_columns(["image", "label", "path"])
        .materialize()
        for split in SPLITS
    }
    # Materialized without a pending operator, so streaming them to trainers starts no Ray Data task:
    # on a small machine a task that needs a whole CPU could wait forever behind the training workers.
    training = {split: datasets[split].select_columns(["image", "label"]).materialize() for split in ("train", "val")}
    split_table = (
        [{k: r[k] for k in ("path", "label", "patient_id", "split")} for r in usable]
        if listing.split_assigned
        else None
    )
    return PreparedData(datasets, training, counts, _fingerprint(usable), skipped, listing.ignored_files, split_table)
