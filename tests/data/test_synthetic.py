from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pneumo.data.patients import patient_id_from_filename
from pneumo.data.synthetic import (
    CLASS_NAMES,
    OPACITY_MASKS_DIR,
    SPLITS,
    SYNTHETIC_MARKER,
    generate_chest_xrays,
    plan_dataset,
)

N_IMAGES, SIZE, SEED = 400, 64, 0


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("synth") / "chest_xray"
    return generate_chest_xrays(root, n_images=N_IMAGES, image_size=SIZE, seed=SEED)


def _files(root: Path) -> list[Path]:
    """The films: every file but the provenance note and the opacity masks beside them."""
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and p.name != SYNTHETIC_MARKER and p.relative_to(root).parts[0] != OPACITY_MASKS_DIR
    )


def _split_and_label(root: Path, file: Path) -> tuple[str, str]:
    split, label, _ = file.relative_to(root).parts
    return split, label


def test_layout_is_kaggle_with_grayscale_square_jpegs(generated) -> None:
    root = generated.root
    assert sorted(p.name for p in root.iterdir()) == sorted([*SPLITS, SYNTHETIC_MARKER, OPACITY_MASKS_DIR])
    assert "Not real patients" in (root / SYNTHETIC_MARKER).read_text()
    for split in SPLITS:
        assert sorted(p.name for p in (root / split).iterdir()) == sorted(CLASS_NAMES)
    files = _files(root)
    assert len(files) == N_IMAGES
    assert all(f.suffix == ".jpeg" and len(f.relative_to(root).parts) == 3 for f in files)
    for file in files[::20]:
        with Image.open(file) as image:
            assert (image.format, image.mode, image.size) == ("JPEG", "L", (SIZE, SIZE))


def test_summary_counts_match_the_files(generated) -> None:
    on_disk = Counter(_split_and_label(generated.root, f) for f in _files(generated.root))
    assert {(s, c): n for s, by_class in generated.counts.items() for c, n in by_class.items() if n} == dict(on_disk)
    assert generated.n_patients == len({patient_id_from_filename(f.name) for f in _files(generated.root)})
    assert generated.label_noise == 0.02


def test_every_split_holds_both_classes(generated) -> None:
    for split in SPLITS:
        assert min(generated.counts[split].values()) > 0, split


def test_about_three_pneumonia_per_normal(generated) -> None:
    totals = Counter(label for _, label in (_split_and_label(generated.root, f) for f in _files(generated.root)))
    assert 2.0 < totals["PNEUMONIA"] / totals["NORMAL"] < 4.5


def test_no_patient_is_in_two_splits(generated) -> None:
    splits_of = defaultdict(set)
    for file in _files(generated.root):
        splits_of[patient_id_from_filename(file.name)].add(_split_and_label(generated.root, file)[0])
    assert all(len(splits) == 1 for splits in splits_of.values())
    assert len(splits_of) < N_IMAGES / 2  # several films per patient on average


def test_plan_lists_exactly_the_written_files(generated) -> None:
    plan = plan_dataset(N_IMAGES, SEED)
    assert sorted(generated.root / p.relative_path for p in plan) == _files(generated.root)


def test_plan_keeps_patients_whole_and_names_them_like_kaggle() -> None:
    plan = plan_dataset(600, seed=3)
    by_patient = defaultdict(list)
    for image in plan:
        by_patient[image.patient_id].append(image)
        assert patient_id_from_filename(image.filename) == image.patient_id
    for images in by_patient.values():
        assert 1 <= len(images) <= 4
        assert len({(i.split, i.true_label) for i in images}) == 1
    assert all(pid.startswith("IM-") == (imgs[0].true_label == "NORMAL") for pid, imgs in by_patient.items())


@pytest.mark.parametrize("n_images", [60, 61, 97])
def test_small_sets_still_hold_out_patients_of_each_class(n_images: int) -> None:
    for seed in range(5):
        plan = plan_dataset(n_images, seed)
        patients = {(i.split, i.true_label, i.patient_id) for i in plan}
        for split in SPLITS:
            for label in CLASS_NAMES:
                assert sum(1 for s, c, _ in patients if (s, c) == (split, label)) >= 2, (seed, split, label)


def test_split_fractions_are_followed() -> None:
    plan = plan_dataset(2000, seed=1, split_fractions=(0.7, 0.1, 0.2))
    shares = Counter(i.split for i in plan)
    assert shares["train"] / 2000 == pytest.approx(0.7, abs=0.04)
    assert shares["val"] / 2000 == pytest.approx(0.1, abs=0.03)
    assert shares["test"] / 2000 == pytest.approx(0.2, abs=0.03)


@pytest.mark.parametrize("label_noise", [0.0, 0.02, 0.1])
def test_label_noise_flips_that_fraction_of_folder_labels(label_noise: float) -> None:
    plan = plan_dataset(1000, seed=4, label_noise=label_noise)
    flipped = [i for i in plan if i.label != i.true_label]
    assert len(flipped) == round(label_noise * 1000)
    assert all(i.label in CLASS_NAMES for i in flipped)


def test_label_noise_depends_on_the_seed() -> None:
    plans = [plan_dataset(1000, seed=seed, label_noise=0.05) for seed in (0, 1)]
    flipped = [{i.index for i in plan if i.label != i.true_label} for plan in plans]
    assert flipped[0] != flipped[1]


def test_same_arguments_give_identical_bytes_and_other_seeds_differ(tmp_path: Path) -> None:
    def contents(root: Path, seed: int) -> dict[Path, bytes]:
        generate_chest_xrays(root, n_images=60, image_size=32, seed=seed)
        return {f.relative_to(root): f.read_bytes() for f in _files(root)}

    first = contents(tmp_path / "a", 7)
    assert first == contents(tmp_path / "b", 7)
    other = contents(tmp_path / "c", 8)
    assert first != other
    shared = first.keys() & other.keys()
    assert all(first[k] != other[k] for k in shared)


def test_writes_into_an_existing_empty_folder(tmp_path: Path) -> None:
    summary = generate_chest_xrays(tmp_path, n_images=60, image_size=32)
    assert sum(n for by_class in summary.counts.values() for n in by_class.values()) == 60


def test_refuses_a_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match=str(tmp_path)):
        generate_chest_xrays(tmp_path, n_images=60, image_size=32)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"split_fractions": (0.5, 0.2, 0.2)},
        {"split_fractions": (1.1, -0.05, -0.05)},
        {"label_noise": 0.5},
        {"n_images": 10},
    ],
)
def test_rejects_bad_arguments(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        generate_chest_xrays(tmp_path / "out", **{"n_images": 60, "image_size": 32, **kwargs})
    assert not (tmp_path / "out").exists()


def test_pneumonia_lungs_are_brighter_than_normal_lungs(generated) -> None:
    """Opacities raise lung-field brightness relative to the whole film (by the true label)."""
    lung_rows, left, right = slice(20, 42), slice(10, 24), slice(40, 54)  # both lung fields at 64 px
    contrast = defaultdict(list)
    for image in plan_dataset(N_IMAGES, SEED):
        pixels = np.asarray(Image.open(generated.root / image.relative_path), dtype=np.float64)
        lungs = np.concatenate([pixels[lung_rows, left].ravel(), pixels[lung_rows, right].ravel()])
        contrast[image.true_label].append(lungs.mean() - pixels.mean())
    assert np.mean(contrast["PNEUMONIA"]) > np.mean(contrast["NORMAL"]) + 5
