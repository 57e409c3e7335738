"""Every dataset format on real files the tests write: manifests (CSV, Parquet), MedMNIST .npz,
DICOM in folders and manifests, and each kind of bad input named and counted (or fatal)."""

import io
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from test_dicom import RAMP, dicom_bytes

from pneumo.config import ConfigError, DataConfig
from pneumo.data.dataset import BadImageError, prepare_data
from pneumo.data.folder import DatasetLayoutError, list_kaggle_folder
from pneumo.data.manifest import list_manifest
from pneumo.data.medmnist import list_npz
from pneumo.data.sources import list_source, resolve_format
from pneumo.data.split import patients_in_several_splits
from pneumo.data.transforms import Preprocessing

SPEC = Preprocessing(in_chans=1, image_size=32, mean=(0.5,), std=(0.25,))


def write_npz(path: Path, size: int = 28, n=(40, 10, 20), bad_label_at: int | None = None) -> Path:
    """A file in the published PneumoniaMNIST format: uint8 (N, S, S) images, (N, 1) labels."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, count in zip(("train", "val", "test"), n):
        labels = (np.arange(count) % 4 != 0).astype(np.uint8).reshape(-1, 1)  # 3 pneumonia : 1 normal
        images = np.stack([np.full((size, size), 60 + 120 * label, np.uint8) for label in labels[:, 0]])
        arrays[f"{split}_images"] = images + rng.integers(0, 5, images.shape, dtype=np.uint8)
        arrays[f"{split}_labels"] = labels
    if bad_label_at is not None:
        arrays["train_labels"][bad_label_at, 0] = 7
    np.savez_compressed(path, **arrays)
    return path


def jpeg(value: int, size: int = 40) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((size, size), value, np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_format_is_detected_from_the_path():
    assert resolve_format(DataConfig(path="x/pneumoniamnist.npz")) == "npz"
    assert resolve_format(DataConfig(path="s3://bucket/manifest.CSV")) == "manifest"
    assert resolve_format(DataConfig(path="data/cxr.parquet")) == "manifest"
    assert resolve_format(DataConfig(path="data/chest_xray")) == "folder"
    assert resolve_format(DataConfig(path="data/list.csv", format="folder")) == "folder"
    with pytest.raises(ConfigError, match="data.split_fractions"):
        DataConfig(path="x.csv", split_fractions=[0.8, 0.3, 0.1])


def test_npz_listing_follows_the_published_layout(tmp_path):
    records, refused = list_npz(write_npz(tmp_path / "pneumoniamnist.npz", bad_label_at=3))
    assert [sum(r.split == s for r in records) for s in ("train", "val", "test")] == [39, 10, 20]
    assert len(refused) == 1 and "label 7" in next(iter(refused.values()))
    assert next(iter(refused)).endswith("pneumoniamnist.npz#train/3")
    np.savez(tmp_path / "wrong.npz", images=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(DatasetLayoutError, match="no train_images/train_labels"):
        list_npz(tmp_path / "wrong.npz")


def write_manifest(tmp_path: Path, with_split: bool = True, suffix: str = ".csv") -> tuple[Path, dict]:
    """A manifest mixing relative, absolute and file:// paths, JPEG and DICOM, label spellings, and bad rows."""
    images = tmp_path / "images"
    images.mkdir()
    rows = []
    for i in range(24):
        label = int(i % 4 != 0)
        name = f"p{i // 2:03d}_{i % 2}." + ("dcm" if i % 6 == 0 else "jpeg")
        data = dicom_bytes(RAMP) if name.endswith("dcm") else jpeg(60 + 120 * label)
        (images / name).write_bytes(data)
        path = {0: f"images/{name}", 1: str(images / name), 2: (images / name).as_uri()}[i % 3]
        rows.append(
            {
                "path": path,
                "label": ["NORMAL", "PNEUMONIA"][label] if i % 2 else str(label),
                "patient_id": f"p{i // 2:03d}",
                "split": ("train", "train", "val", "test")[(i // 2) % 4],
            }
        )
    (images / "empty.jpeg").write_bytes(b"")
    bad = {
        "missing": {"path": "images/never-written.jpeg", "label": "1", "patient_id": "p900", "split": "train"},
        "empty": {"path": "images/empty.jpeg", "label": "0", "patient_id": "p901", "split": "train"},
        "label": {"path": "images/p000_1.jpeg", "label": "2", "patient_id": "p000", "split": "train"},
        "split": {"path": "images/p000_1.jpeg", "label": "1", "patient_id": "p000", "split": "dev"},
    }
    table = pd.DataFrame(rows + list(bad.values()))
    if not with_split:
        table = table.drop(columns=["split"])
    manifest = tmp_path / f"manifest{suffix}"
    table.to_csv(manifest, index=False) if suffix == ".csv" else table.to_parquet(manifest)
    return manifest, bad


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_manifest_rows_resolve_paths_and_refuse_bad_labels_and_splits(tmp_path, suffix):
    manifest, _ = write_manifest(tmp_path, suffix=suffix)
    listing = list_manifest(manifest)
    assert len(listing.records) == 26  # 24 good rows + the missing and the empty file (caught when read)
    assert all(Path(r.path).is_absolute() or r.path.startswith("file://") for r in listing.records)
    reasons = sorted(listing.bad_rows.values())
    assert len(reasons) == 2 and "label '2'" in reasons[0] and "split 'dev'" in reasons[1]
    first_bad_row = 2 + 26 if suffix == ".csv" else 26  # CSV rows count like an editor's line numbers
    assert f"{manifest} row {first_bad_row}" in listing.bad_rows


def test_manifest_needs_path_and_label_columns(tmp_path):
    (tmp_path / "m.csv").write_text("file,diagnosis\na.jpeg,1\n")
    with pytest.raises(DatasetLayoutError, match="no path or label column"):
        list_manifest(tmp_path / "m.csv")


def test_manifest_without_split_gets_a_stratified_patient_grouped_split(tmp_path):
    rows = [
        {"path": f"/data/p{p:03d}_{k}.jpeg", "label": int(p % 4 != 0), "patient_id": f"p{p:03d}"}
        for p in range(200)
        for k in range(1 + p % 3)
    ]
    pd.DataFrame(rows).to_csv(tmp_path / "m.csv", index=False)
    cfg = DataConfig(path=str(tmp_path / "m.csv"), split_fractions=[0.7, 0.1, 0.2], split_seed=3)
    listing = list_source(cfg)
    assert listing.split_assigned and len(listing.records) == len(rows)
    assert patients_in_several_splits(listing.records) == {}
    patients = {s: {r.patient_id for r in listing.records if r.split == s} for s in ("train", "val", "test")}
    assert [len(p) for p in patients.values()] == [140, 20, 40]
    for split in ("val", "test"):
        labels = [r.label for r in listing.records if r.split == split]
        assert 0.6 < np.mean(labels) < 0.9, "each split keeps the 3:1 class balance"
    again = list_source(cfg)
    assert [r.split for r in again.records] == [r.split for r in listing.records], "same seed, same split"


def test_dicom_films_in_a_folder_are_listed(tmp_path, synthetic_root):
    root = tmp_path / "chest_xray"
    shutil.copytree(synthetic_root, root)
    (root / "test" / "NORMAL" / "scanner.DCM").write_bytes(dicom_bytes(RAMP))
    assert any(r.path.endswith("scanner.DCM") for r in list_kaggle_folder(root).records)


@pytest.mark.slow
def test_manifest_prepares_jpeg_dicom_and_uris_and_names_every_bad_row(ray_session, tmp_path):
    manifest, bad = write_manifest(tmp_path)
    data = prepare_data(DataConfig(path=str(manifest)), SPEC)
    assert data.n_images == 24
    reasons = "\n".join(f"{k}: {v}" for k, v in data.skipped_files.items())
    assert "never-written.jpeg: file not found" in reasons and "empty.jpeg: empty file" in reasons
    assert "label '2'" in reasons and "split 'dev'" in reasons and len(data.skipped_files) == 4
    assert data.counts["train"] == {"NORMAL": 3, "PNEUMONIA": 9}
    dicom_row = [r for r in data.datasets["train"].take_all() if r["path"].endswith(".dcm")][0]
    assert (
        dicom_row["image"].shape == (1, 32, 32)
        and dicom_row["image"][0, :, 0].mean() < dicom_row["image"][0, :, -1].mean()
    )
    with pytest.raises(BadImageError) as error:
        prepare_data(DataConfig(path=str(manifest), on_bad_file="error"), SPEC)
    assert "never-written.jpeg" in str(error.value) and "row" in str(error.value)


@pytest.mark.slow
def test_manifest_without_split_records_the_split_it_made(ray_session, tmp_path):
    manifest, _ = write_manifest(tmp_path, with_split=False)
    data = prepare_data(DataConfig(path=str(manifest), split_fractions=[0.5, 0.25, 0.25]), SPEC)
    assert data.assigned_split is not None and len(data.assigned_split) == data.n_images
    assert {row["split"] for row in data.assigned_split} == {"train", "val", "test"}


@pytest.mark.slow
def test_npz_prepares_resized_images_with_their_labels(ray_session, tmp_path):
    path = write_npz(tmp_path / "pneumoniamnist.npz", size=28, bad_label_at=0)
    data = prepare_data(DataConfig(path=str(path)), SPEC)
    assert data.counts == {
        "train": {"NORMAL": 9, "PNEUMONIA": 30},
        "val": {"NORMAL": 3, "PNEUMONIA": 7},
        "test": {"NORMAL": 5, "PNEUMONIA": 15},
    }
    assert list(data.skipped_files) == [f"{path.resolve()}#train/0"]
    for row in data.datasets["test"].take(6):
        assert row["image"].shape == (1, 32, 32)
        assert abs(float(row["image"].mean()) - (60 + 120 * row["label"])) < 6, "pixels and labels stay paired"


@pytest.mark.slow
def test_decompression_bomb_is_refused_by_the_pixel_limit(ray_session, tmp_path):
    manifest = tmp_path / "m.csv"
    buffer = io.BytesIO()
    Image.new("1", (9000, 9000)).save(buffer, format="PNG")  # 81 Mpx in a few kB
    (tmp_path / "bomb.png").write_bytes(buffer.getvalue())
    rows = [{"path": "bomb.png", "label": 1, "split": "train"}]
    for i, split in enumerate(("train", "train", "val", "val", "test", "test")):
        (tmp_path / f"ok{i}.jpeg").write_bytes(jpeg(100))
        rows.append({"path": f"ok{i}.jpeg", "label": i % 2, "split": split})
    pd.DataFrame(rows).to_csv(manifest, index=False)
    data = prepare_data(DataConfig(path=str(manifest), max_image_pixels=40_000_000), SPEC)
    assert list(data.skipped_files.values()) == ["9000x9000 pixels exceeds the limit of 40000000"]


def test_inspect_reports_counts_sizes_and_exits_non_zero_on_leakage(tmp_path, synthetic_root, capsys):
    from pneumo.cli import main

    main(["data", "inspect", str(synthetic_root)])
    clean = capsys.readouterr().out
    assert "no leakage between splits" in clean and "64x64" in clean and "L (400)" in clean

    root = tmp_path / "chest_xray"
    shutil.copytree(synthetic_root, root)
    film = sorted((root / "train" / "PNEUMONIA").glob("*.jpeg"))[0]
    shutil.copy(film, root / "test" / "PNEUMONIA" / "copied-film.jpeg")  # same bytes in train and test
    (root / "val" / "NORMAL" / "broken.jpeg").write_bytes(film.read_bytes()[:300])
    with pytest.raises(SystemExit) as exit_status:
        main(["data", "inspect", str(root)])
    assert exit_status.value.code == 1
    report = capsys.readouterr().out
    assert "identical files in more than one split: 1" in report and "copied-film.jpeg" in report
    assert "unreadable images: 1" in report and "broken.jpeg" in report
    assert "LEAKAGE" in report


def test_inspect_finds_patients_shared_between_manifest_splits(tmp_path):
    from pneumo.data.inspect import inspect_dataset

    manifest, _ = write_manifest(tmp_path)
    table = pd.read_csv(manifest, dtype=str)
    table.loc[table["split"] == "test", "patient_id"] = "p000"  # p000 also has training films
    table.to_csv(manifest, index=False)
    inspection = inspect_dataset(DataConfig(path=str(manifest)))
    assert inspection.patients_across_splits["p000"] == ["test", "train"] and inspection.leaks
    assert len(inspection.refused) == 2 and set(inspection.unreadable.values()) == {
        "cannot read file (No such file or directory)",
        "empty file",
    }
    assert inspection.modes["DICOM"] == 4


@pytest.mark.slow
def test_cache_is_reused_until_a_file_or_setting_changes(ray_session, tmp_path, synthetic_root):
    import os

    root = tmp_path / "chest_xray"
    shutil.copytree(synthetic_root, root)
    cache = tmp_path / "cache"
    cfg = DataConfig(path=str(root), cache_dir=str(cache))
    first = prepare_data(cfg, SPEC)
    assert len(list(cache.iterdir())) == 1

    # same size and mtime but unreadable bytes: only a cache hit can still give the decoded film
    film = sorted((root / "test" / "NORMAL").glob("*.jpeg"))[0]
    stat = film.stat()
    film.write_bytes(bytes(stat.st_size))
    os.utime(film, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    hit = prepare_data(cfg, SPEC)
    assert (hit.fingerprint, hit.counts, hit.skipped_files) == (first.fingerprint, first.counts, {})
    original = {r["path"]: r["image"] for r in first.datasets["test"].take_all()}
    assert all((original[r["path"]] == r["image"]).all() for r in hit.datasets["test"].take_all())

    prepare_data(cfg, Preprocessing(in_chans=1, image_size=24, mean=(0.5,), std=(0.25,)))
    assert len(list(cache.iterdir())) == 2, "another preprocessing is another entry"

    os.utime(film, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # the file changed
    changed = prepare_data(cfg, SPEC)
    assert list(changed.skipped_files) == [str(film.resolve())], "decoded again, not read from the cache"
    assert changed.fingerprint != first.fingerprint and len(list(cache.iterdir())) == 3
