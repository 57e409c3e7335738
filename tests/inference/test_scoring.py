"""One row per file whatever the file is, and the answer Serve would give for each film: read and
score batches in this process (the same functions the Ray Data tasks and actors run)."""

import hashlib

import numpy as np
import pytest

from pneumo.inference.read import DECODED, read_batch
from pneumo.inference.scorer import FilmScorer
from pneumo.models.checkpoints import load_checkpoint
from tests.inference.archive import write_archive


@pytest.fixture(scope="module")
def archive(tmp_path_factory, synthetic_root):
    root = tmp_path_factory.mktemp("archive")
    return root, write_archive(root, synthetic_root)


def read(root, names, tiny_model):
    spec = load_checkpoint(tiny_model).meta.preprocessing_spec
    paths = np.array([str(root / name) for name in names], dtype=object)
    return read_batch({"path": paths, "true_label": np.array([None] * len(names), dtype=object)}, spec, 10**7)


def test_every_bad_file_is_a_row_with_its_reason(archive, tiny_model):
    root, _ = archive
    names = [
        "bad/corrupt.jpeg",
        "bad/truncated.jpeg",
        "bad/zero-byte.png",
        "bad/notes.txt",
        "bad/no-pixels.dcm",
        "gone.jpeg",
        "bad",
    ]
    batch = read(root, names, tiny_model)
    assert list(batch["status"]) == ["unreadable"] * 5 + ["missing", "unreadable"]
    assert list(batch["error"]) == [
        "not a readable image (not JPEG, PNG, DICOM or another format Pillow reads)",
        "not a readable image (image file is truncated (6 bytes not processed))",
        "empty file",
        "not a readable image (not JPEG, PNG, DICOM or another format Pillow reads)",
        "not a readable image (DICOM pixel data cannot be decoded (The dataset has no 'Pixel Data', "
        "'Float Pixel Data' or 'Double Float Pixel Data' element, no pixel data to decode))",
        "file not found",
        "a folder, not a file",
    ]
    assert batch["sha256"][2] == hashlib.sha256(b"").hexdigest() and batch["sha256"][5] == ""
    assert batch["image"].shape == (7, 1, 32, 32) and not batch["image"].any()


def test_jpeg_png_and_dicom_of_one_film_decode_alike(archive, tiny_model):
    root, expected = archive
    names = [n for n in expected if n.startswith("site_a/PNEUMONIA/")][:2]
    twins = ["site_b/2024/03/PNEUMONIA/IM0000", f"site_b/2024/03/PNEUMONIA/{names[1].rsplit('/', 1)[1][:-5]}.png"]
    batch = read(root, names + twins, tiny_model)
    assert list(batch["status"]) == [DECODED] * 4
    assert batch["sha256"][0] == hashlib.sha256((root / names[0]).read_bytes()).hexdigest()
    assert np.array_equal(batch["image"][0], batch["image"][2]) and np.array_equal(batch["image"][1], batch["image"][3])


@pytest.mark.parametrize("policy", ["reject", "flag"])
def test_the_gate_refuses_or_flags_a_film_that_is_not_a_chest_film(archive, tiny_model, policy):
    root, _ = archive
    names = ["other/white.png", "bad/notes.txt", *sorted(n for n in archive[1] if n.startswith("site_a/"))]
    scorer = FilmScorer(str(tiny_model), "sqlite:///unused.db", "torch", 1, False, policy, explain=True)
    rows = scorer(read(root, names, tiny_model)).to_pylist()
    white, notes, films = rows[0], rows[1], rows[2:]
    assert white["in_distribution"] is False and white["ood_score"] > 1.5  # the cut-off is near 1
    if policy == "reject":
        assert white["status"] == "refused_ood" and white["probability"] is None and white["label"] is None
        assert white["error"].startswith(
            "not scored: does not look like a frontal chest film (out-of-distribution score"
        )
    else:
        assert white["status"] == "scored" and white["probability"] is not None and white["error"] is None
    assert notes["status"] == "unreadable" and notes["probability"] is None and notes["in_distribution"] is None
    assert all(f["status"] == "scored" and f["in_distribution"] and 0 < f["probability"] < 1 for f in films)
    assert {(r["model_name"], r["model_version"], r["runtime"], r["threshold"]) for r in rows} == {
        ("tiny", "local", "torch", 0.5)
    }
    for row in rows:  # an overlay for each scored film at or above the threshold, and none for the others
        assert (row["overlay_png"] is not None) == (row["label"] == "PNEUMONIA")
        assert row["overlay_png"] is None or row["overlay_png"].startswith(b"\x89PNG")


def test_a_model_that_fails_on_a_batch_costs_that_batch_rows_not_the_job(archive, tiny_model):
    root, _ = archive
    scorer = FilmScorer(str(tiny_model), "sqlite:///unused.db", "torch", 1, False, "reject", explain=False)
    batch = read(
        root, ["site_a/NORMAL/" + p.name for p in sorted((root / "site_a" / "NORMAL").glob("*.jpeg"))[:2]], tiny_model
    )
    batch["image"] = np.repeat(batch["image"], 3, axis=1)  # RGB films for a grayscale network
    rows = scorer(batch).to_pylist()
    assert [r["status"] for r in rows] == ["failed", "failed"] and rows[0]["error"].startswith("scoring failed (")


def test_a_column_of_nulls_from_ray_data_is_kept_as_nulls():
    """An unlabelled folder's true_label (and a batch without errors) reaches the actor as float NaN."""
    from pneumo.inference.scorer import _strings

    assert _strings(np.array([np.float32("nan"), np.float32("nan")])) == [None, None]
    assert _strings(np.array(["NORMAL", None], dtype=object)) == ["NORMAL", None]


def test_a_manifest_of_paths_that_do_not_exist_gives_missing_rows_with_their_labels(archive, tiny_model, tmp_path):
    from pneumo.inference.sources import list_inputs

    root, _ = archive
    film = root / "site_a" / "PNEUMONIA" / sorted(p.name for p in (root / "site_a" / "PNEUMONIA").iterdir())[0]
    (tmp_path / "list.csv").write_text(f"path,label\n{film},1\ngone/a.dcm,0\ngone/b.dcm,NORMAL\n")
    listing = list_inputs(str(tmp_path / "list.csv")).table
    spec = load_checkpoint(tiny_model).meta.preprocessing_spec
    batch = read_batch(
        {name: listing[name].to_numpy(zero_copy_only=False) for name in listing.column_names}, spec, 10**7
    )
    scorer = FilmScorer(str(tiny_model), "sqlite:///unused.db", "torch", 1, False, "reject", explain=False)
    rows = {row["path"]: row for row in scorer(batch).to_pylist()}
    assert [(rows[str(film)]["status"], rows[str(film)]["true_label"])] == [("scored", "PNEUMONIA")]
    for gone in ("gone/a.dcm", "gone/b.dcm"):
        row = rows[str(tmp_path / gone)]
        assert (row["status"], row["error"], row["true_label"], row["probability"]) == (
            "missing",
            "file not found",
            "NORMAL",
            None,
        )
