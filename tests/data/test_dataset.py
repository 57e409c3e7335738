"""Ray Data preparation: every image decoded once, bad files skipped and counted (or fatal), fingerprint."""

import shutil

import pytest

from pneumo.config import DataConfig
from pneumo.data.dataset import BadImageError, prepare_data
from pneumo.data.folder import list_kaggle_folder
from pneumo.data.transforms import Preprocessing

pytestmark = pytest.mark.slow

SPEC = Preprocessing(in_chans=1, image_size=32, mean=(0.5,), std=(0.25,))


@pytest.fixture
def damaged_root(tmp_path, synthetic_root):
    """A copy of the synthetic set with a truncated JPEG and an empty file among the training films."""
    root = tmp_path / "chest_xray"
    shutil.copytree(synthetic_root, root)
    films = sorted((root / "train" / "PNEUMONIA").glob("*.jpeg"))
    films[0].write_bytes(films[0].read_bytes()[:200])
    films[1].write_bytes(b"")
    return root, {str(films[0].resolve()), str(films[1].resolve())}


def test_bad_files_are_skipped_named_and_counted(ray_session, damaged_root):
    root, bad = damaged_root
    data = prepare_data(DataConfig(path=str(root), on_bad_file="skip"), SPEC)
    assert set(data.skipped_files) == bad
    assert any("empty file" in why for why in data.skipped_files.values())
    listed = len(list_kaggle_folder(root).records)
    assert data.n_images == listed - 2
    assert sum(data.counts["train"].values()) == data.datasets["train"].count()
    row = data.training_datasets["train"].take(1)[0]
    assert row["image"].shape == (1, 32, 32) and row["image"].dtype.name == "uint8"
    assert set(row) == {"image", "label"}


def test_error_policy_stops_and_names_the_file(ray_session, damaged_root):
    root, bad = damaged_root
    with pytest.raises(BadImageError) as error:
        prepare_data(DataConfig(path=str(root), on_bad_file="error"), SPEC)
    assert all(path in str(error.value) for path in bad) and "on_bad_file=skip" in str(error.value)


def test_fingerprint_follows_the_bytes(ray_session, synthetic_root, tmp_path):
    first = prepare_data(DataConfig(path=str(synthetic_root)), SPEC).fingerprint
    assert first == prepare_data(DataConfig(path=str(synthetic_root)), SPEC).fingerprint
    changed = tmp_path / "changed"
    shutil.copytree(synthetic_root, changed)
    film = next((changed / "test" / "NORMAL").glob("*.jpeg"))
    film.write_bytes(next((changed / "test" / "PNEUMONIA").glob("*.jpeg")).read_bytes())
    assert prepare_data(DataConfig(path=str(changed)), SPEC).fingerprint != first
