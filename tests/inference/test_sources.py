"""What `pneumo predict` lists: every file at any depth with its folder label, manifests with or
without labels (paths that do not exist stay listed), .npz entries; bad DATA is one error line."""

import numpy as np
import pandas as pd
import pytest

from pneumo.data.folder import DatasetLayoutError
from pneumo.inference.sources import folder_label, list_inputs, source_format
from tests.inference.archive import write_archive


def test_a_folder_lists_every_file_at_any_depth_with_its_folder_label(tmp_path, synthetic_root):
    expected = write_archive(tmp_path / "archive", synthetic_root)
    listing = list_inputs(str(tmp_path / "archive"))
    rows = dict(zip(listing.table["path"].to_pylist(), listing.table["true_label"].to_pylist()))
    assert rows == {str(tmp_path / "archive" / name): label for name, (_, label) in expected.items()}
    assert listing.source_format == "folder" and listing.notes == ["1 hidden file(s) skipped"]
    assert listing.labelled == 4 * 3  # the JPEG, PNG and DICOM films under NORMAL/ and PNEUMONIA/


def test_the_nearest_class_folder_names_the_label():
    from pathlib import PurePosixPath

    assert folder_label(PurePosixPath("test/normal/2024/PNEUMONIA/x.dcm")) == "PNEUMONIA"
    assert folder_label(PurePosixPath("ward3/x.jpeg")) is None
    assert folder_label(PurePosixPath("NORMAL")) is None  # a file called NORMAL is not a folder


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_manifest_keeps_paths_that_do_not_exist_and_reads_labels_when_given(tmp_path, suffix):
    table = pd.DataFrame(
        {
            "path": ["films/a.jpeg", "/nowhere/b.dcm", "s3://bucket/c.png", "", "films/a.jpeg"],
            "label": ["PNEUMONIA", "0", "maybe", "1", "PNEUMONIA"],
        }
    )
    manifest = tmp_path / f"list{suffix}"
    table.to_csv(manifest, index=False) if suffix == ".csv" else table.to_parquet(manifest)
    listing = list_inputs(str(manifest))
    assert listing.table.to_pydict() == {
        "path": ["/nowhere/b.dcm", str(tmp_path / "films" / "a.jpeg"), "s3://bucket/c.png"],  # sorted
        "true_label": ["NORMAL", "PNEUMONIA", None],
    }
    assert listing.notes == [
        "1 row(s) without a path skipped",
        "1 label(s) not 0/1 or NORMAL/PNEUMONIA read as unknown",
        "1 repeated path(s) listed once",
    ]


def test_a_manifest_without_labels_lists_paths_only(tmp_path):
    (tmp_path / "m.csv").write_text("Path,site\nx.jpeg,a\ny.jpeg,b\n")
    listing = list_inputs(str(tmp_path / "m.csv"))
    assert listing.table["true_label"].to_pylist() == [None, None] and listing.labelled == 0


def test_an_npz_lists_every_image_with_its_label(tmp_path):
    path = tmp_path / "pneumoniamnist.npz"
    arrays = {
        f"{split}_images": np.zeros((n, 28, 28), np.uint8) for split, n in (("train", 4), ("val", 2), ("test", 3))
    }
    labels = {f"{split}_labels": np.ones((n, 1), np.uint8) for split, n in (("train", 4), ("val", 2), ("test", 3))}
    np.savez(path, **arrays, **labels)
    listing = list_inputs(str(path))
    assert listing.source_format == "npz" and len(listing.table) == 9
    assert listing.table["path"][0].as_py().endswith("pneumoniamnist.npz#test/0")
    assert set(listing.table["true_label"].to_pylist()) == {"PNEUMONIA"}


def test_bad_data_is_one_error_naming_it(tmp_path):
    with pytest.raises(DatasetLayoutError, match="no such folder, manifest"):
        list_inputs(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetLayoutError, match="empty: no files to score"):
        list_inputs(str(tmp_path / "empty"))
    (tmp_path / "m.csv").write_text("file,label\nx.jpeg,1\n")
    with pytest.raises(DatasetLayoutError, match=r"m.csv has no path column \(columns: file, label\)"):
        list_inputs(str(tmp_path / "m.csv"))
    with pytest.raises(DatasetLayoutError, match="manifest not found"):
        list_inputs(str(tmp_path / "gone.parquet"))
    assert [source_format(p) for p in ("a/b", "x.CSV", "s3://b/x.pq", "m.npz")] == [
        "folder",
        "manifest",
        "manifest",
        "npz",
    ]


def test_a_folder_given_as_a_uri_is_listed_and_read_through_pyarrow_filesystems(tmp_path, synthetic_root):
    """file:// goes through the same pyarrow.fs code as s3:// and gs:// (no network here)."""
    from pneumo.data.transforms import Preprocessing
    from pneumo.inference.read import read_one

    expected = write_archive(tmp_path / "archive", synthetic_root)
    listing = list_inputs(f"file://{tmp_path / 'archive'}")
    assert sorted(listing.table["path"].to_pylist()) == sorted(
        f"file://{tmp_path / 'archive' / name}" for name in expected
    )
    spec = Preprocessing(in_chans=1, image_size=16, mean=(0.5,), std=(0.25,))
    _, digest, status, error = read_one(f"file://{tmp_path / 'archive' / 'site_b/2024/03/NORMAL/IM0000'}", spec, 10**7)
    assert (status, error) == ("", "") and len(digest) == 64
