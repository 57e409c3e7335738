"""The output folder: parts written whole, one model per folder, --resume scores exactly what is missing."""

import contextlib
import json
import subprocess

import pyarrow as pa
import pytest

from pneumo.inference.output import SCORED_SCHEMA, OutputError, OutputFolder, PartWriter, write_csv
from pneumo.inference.resume import claim_folder, films_to_score
from pneumo.models.checkpoints import load_checkpoint
from pneumo.registry.uri import FetchedModel


def scored(paths: list[str], overlay: bytes | None = None) -> pa.Table:
    n = len(paths)
    return (
        pa.table(
            {
                "path": paths,
                "status": ["scored"] * n,
                "probability": [0.75] * n,
                "overlay_png": [overlay] * n,
                **{
                    name: [None] * n
                    for name in SCORED_SCHEMA.names
                    if name not in ("path", "status", "probability", "overlay_png")
                },
            },
        )
        .select(SCORED_SCHEMA.names)
        .cast(SCORED_SCHEMA)
    )


def test_rows_are_written_in_whole_parts_of_part_rows(tmp_path):
    folder = OutputFolder(str(tmp_path / "out"))
    writer = PartWriter(folder, part_rows=4)
    writer.add(scored([f"/a/{i}.jpeg" for i in range(6)]))
    assert len(folder.part_paths()) == 1 and writer.unwritten == 2
    writer.add(scored(["/a/6.jpeg"], overlay=b"\x89PNG fake"))
    writer.flush()
    assert [len(pa.parquet.read_table(p)) for p in folder.part_paths()] == [4, 3]
    rows = folder.read_rows()
    assert rows["path"].to_pylist() == [f"/a/{i}.jpeg" for i in range(7)]
    explanation = rows["explanation"].to_pylist()[-1]
    assert (
        explanation.startswith("explanations/6-") and (tmp_path / "out" / explanation).read_bytes() == b"\x89PNG fake"
    )
    assert (tmp_path / "out" / write_csv(folder).rsplit("/", 1)[1]).read_text().count("\n") == 8  # header + rows


def test_a_part_cut_off_by_a_kill_is_dropped_and_its_films_scored_again(tmp_path):
    folder = OutputFolder(str(tmp_path / "out"))
    writer = PartWriter(folder, part_rows=2)
    writer.add(scored(["/a/0.jpeg", "/a/1.jpeg"]))
    (tmp_path / "out" / "predictions" / "part-dead-00001.parquet.incomplete").write_bytes(b"PAR1 half a part")
    listing = pa.table({"path": ["/a/0.jpeg", "/a/1.jpeg", "/a/2.jpeg"], "true_label": [None, None, None]})
    assert films_to_score(listing, folder)["path"].to_pylist() == ["/a/2.jpeg"]
    assert not list((tmp_path / "out" / "predictions").glob("*.incomplete"))


@pytest.fixture
def full_disk(tmp_path):
    """A 64 kB tmpfs, filled by the test."""
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=True)


def test_a_full_disk_loses_no_part_already_written(full_disk):
    folder = OutputFolder(str(full_disk / "out"))
    writer = PartWriter(folder, part_rows=1)
    writer.add(scored(["/a/0.jpeg"]))
    with contextlib.suppress(OSError), open(full_disk / "filler", "wb", buffering=0) as filler:
        while True:  # until the disk is full
            filler.write(bytes(4096))
    full = r"\(.*No space left on device\)"
    with pytest.raises(OutputError, match=rf"cannot write {full_disk}/out/explanations/1-[0-9a-f]{{10}}.png {full}"):
        writer.add(scored(["/a/1.jpeg"], overlay=b"\x89PNG"))
    with pytest.raises(
        OutputError, match=rf"cannot write {full_disk}/out/predictions/part-[0-9a-f]{{8}}-00002.parquet {full}"
    ):
        writer.add(scored(["/a/2.jpeg"]))
    assert folder.read_rows(["path"])["path"].to_pylist() == ["/a/0.jpeg"] and writer.unwritten == 1
    assert not [p for p in full_disk.rglob("*") if p.name.endswith(".incomplete")]


@pytest.fixture
def models(tiny_model) -> tuple[FetchedModel, FetchedModel]:
    loaded = load_checkpoint(tiny_model)
    return FetchedModel(loaded, "models:/cxr/1", "cxr", "1", {}), FetchedModel(loaded, "models:/cxr/2", "cxr", "2", {})


def test_one_folder_holds_one_models_predictions(tmp_path, models):
    first, second = models
    folder = OutputFolder(str(tmp_path / "out"))
    assert claim_folder(folder, first, resume=False) == 0
    assert json.loads((tmp_path / "out" / "predict.json").read_text())["model_uri"] == "models:/cxr/1"
    assert claim_folder(folder, first, resume=False) == 0  # claimed, nothing written yet: start again
    PartWriter(folder, 1).add(scored(["/a/0.jpeg"]))
    with pytest.raises(OutputError) as refused:
        claim_folder(folder, first, resume=False)
    assert str(refused.value) == (
        f"--out {tmp_path / 'out'} already holds 1 predictions of this model: add --resume to score only "
        "the films not yet in it, or choose another --out"
    )
    assert claim_folder(folder, first, resume=True) == 1
    for resume in (False, True):
        with pytest.raises(
            OutputError, match=r"holds 1 predictions of cxr version 1 \(models:/cxr/1\), not of cxr version 2"
        ):
            claim_folder(folder, second, resume=resume)


def test_a_folder_with_other_files_is_not_taken(tmp_path, models):
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "thesis.tex").write_text("...")
    with pytest.raises(OutputError, match="is not empty and holds no pneumo predictions"):
        claim_folder(OutputFolder(str(tmp_path / "home")), models[0], resume=True)


def test_an_output_folder_given_as_a_uri_is_written_through_pyarrow_filesystems(tmp_path):
    folder = OutputFolder(f"file://{tmp_path / 'out'}")
    PartWriter(folder, part_rows=2).add(scored(["/a/0.jpeg", "/a/1.jpeg"]))
    assert len(list((tmp_path / "out" / "predictions").glob("part-*.parquet"))) == 1
    assert folder.shown("summary.json") == f"file://{tmp_path / 'out'}/summary.json"
