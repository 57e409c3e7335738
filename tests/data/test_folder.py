"""The Kaggle-layout listing and the patient-grouped re-split."""

from collections import Counter
from pathlib import Path

import pytest

from pneumo.data.folder import DatasetLayoutError, list_kaggle_folder
from pneumo.data.split import patients_in_several_splits, resplit_by_patient


def test_labels_splits_and_patients_come_from_the_layout(synthetic_root):
    listing = list_kaggle_folder(synthetic_root)
    assert {r.split for r in listing.records} == {"train", "val", "test"}
    for record in listing.records:
        assert Path(record.path).parent.name == ("PNEUMONIA" if record.label else "NORMAL")
        assert Path(record.path).parent.parent.name == record.split
        assert record.patient_id and record.patient_id in Path(record.path).name
    assert not patients_in_several_splits(listing.records)


def test_stray_files_are_ignored_and_counted(tmp_path, synthetic_root):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(synthetic_root, root)
    (root / "train" / "NORMAL" / ".DS_Store").write_bytes(b"\0\0")
    (root / "train" / "PNEUMONIA" / "notes.txt").write_text("x")
    (root / "test" / "NORMAL" / "IM-9999-0001.JPG").write_bytes(
        (next((root / "test" / "NORMAL").glob("*.jpeg"))).read_bytes()
    )
    listing = list_kaggle_folder(root)
    assert len(listing.ignored_files) == 2
    assert any(r.path.endswith("IM-9999-0001.JPG") for r in listing.records), "upper-case extensions count"


def test_unknown_label_folder_is_an_error(tmp_path, synthetic_root):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(synthetic_root, root)
    (root / "train" / "COVID").mkdir()
    with pytest.raises(DatasetLayoutError, match="COVID"):
        list_kaggle_folder(root)


def test_missing_folder_and_missing_split(tmp_path):
    with pytest.raises(DatasetLayoutError, match="not found"):
        list_kaggle_folder(tmp_path / "absent")
    (tmp_path / "train" / "NORMAL").mkdir(parents=True)
    with pytest.raises(DatasetLayoutError, match="test/"):
        list_kaggle_folder(tmp_path)


def test_resplit_keeps_patients_together_and_stratifies(synthetic_root):
    records = list_kaggle_folder(synthetic_root).records
    resplit = resplit_by_patient(records, val_fraction=0.2, seed=3)
    assert len(resplit) == len(records)
    assert not patients_in_several_splits(resplit)
    assert sorted(r.path for r in resplit if r.split == "test") == sorted(r.path for r in records if r.split == "test")
    val = Counter(r.label for r in resplit if r.split == "val")
    train = Counter(r.label for r in resplit if r.split == "train")
    assert val[0] > 0 and val[1] > 0
    val_share, train_share = val[1] / sum(val.values()), train[1] / sum(train.values())
    assert abs(val_share - train_share) < 0.15
    assert 0.1 < sum(val.values()) / (sum(val.values()) + sum(train.values())) < 0.3


def test_resplit_is_deterministic_per_seed(synthetic_root):
    records = list_kaggle_folder(synthetic_root).records
    first = resplit_by_patient(records, 0.2, seed=3)
    assert first == resplit_by_patient(records, 0.2, seed=3)
    assert first != resplit_by_patient(records, 0.2, seed=4)
