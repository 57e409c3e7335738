"""SRs for the DICOM films among `pneumo predict`'s rows (`--dicom-sr DIR`): scored and refused DICOM
films get one each, valid and in their study; a JPEG, an unreadable file and a missing one say why not."""

from __future__ import annotations

from pathlib import Path

import pydicom

from pneumo.pacs.predictions import write_srs
from pneumo.pacs.sr import part10_bytes, read_sr
from tests.pacs.films import made_film
from tests.pacs.validate import dciodvfy, unexplained_warnings

MODEL = {"threshold": 0.5, "model_name": "pneumo-pneumonia", "model_version": "3", "model_uri": "models:/p/3"}


def _film(folder: Path, name: str, study_uid: str) -> tuple[Path, pydicom.Dataset]:
    film = made_film(study_uid=study_uid)
    (folder / name).write_bytes(part10_bytes(film))  # as PACS exports write them: no suffix
    return folder / name, film


def test_scored_and_refused_dicom_films_get_srs_and_other_rows_say_why(tmp_path):
    archive = tmp_path / "archive"
    archive.mkdir()
    scored, scored_film = _film(archive, "IM0001", "1.2.826.0.1.3680043.8.498.1")
    refused, refused_film = _film(archive, "IM0002", "1.2.826.0.1.3680043.8.498.1")
    (archive / "film.jpeg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(64))
    rows = [
        {"path": str(scored), "status": "scored", "error": None, "probability": 0.91, "in_distribution": True,
         "ood_score": 0.4, **MODEL},
        {"path": str(refused), "status": "refused_ood", "probability": None, "in_distribution": False,
         "ood_score": 7.5, "error": "not scored: does not look like a frontal chest film (out-of-distribution "
         "score 7.5 > cut-off 1.2)", **MODEL},
        {"path": str(archive / "film.jpeg"), "status": "scored", "probability": 0.2, "error": None, **MODEL},
        {"path": str(archive / "broken.dcm"), "status": "unreadable", "error": "not a readable image", **MODEL},
    ]  # fmt: skip
    written = write_srs(rows, tmp_path / "sr")

    assert [entry.reason for entry in written[2:]] == [
        "not DICOM: an SR needs the film's DICOM header",
        "no SR for a unreadable film",
    ]
    first, second = (pydicom.dcmread(entry.sr_file) for entry in written[:2])
    assert first.SeriesInstanceUID == second.SeriesInstanceUID  # one SR series per study and run
    assert (first.StudyInstanceUID, first.PatientID) == (scored_film.StudyInstanceUID, scored_film.PatientID)
    read = read_sr(first)
    assert (read.finding, read.probability, read.source_sop_instance_uid) == (
        "present",
        0.91,
        scored_film.SOPInstanceUID,
    )
    read = read_sr(second)
    assert (read.finding, read.probability, read.source_sop_instance_uid) == (
        "undetermined",
        None,
        refused_film.SOPInstanceUID,
    )
    assert read.comment == (
        "No finding was made: does not look like a frontal chest film (out-of-distribution score 7.5 > cut-off 1.2)."
    )
    for entry in written[:2]:
        errors, warnings = dciodvfy(Path(entry.sr_file))
        assert errors == [] and unexplained_warnings(warnings) == []


def test_srs_for_the_rows_pneumo_predict_wrote(tmp_path):
    import pandas as pd

    from pneumo.pacs.predictions import describe, write_srs_for_output

    path, _ = _film(tmp_path, "IM0001", "1.2.826.0.1.3680043.8.498.2")
    rows = [
        {"path": str(path), "status": "scored", "error": None, "probability": 0.3, **MODEL},
        {"path": str(tmp_path / "notes.txt"), "status": "unreadable", "error": "not a readable image", **MODEL},
    ]
    (tmp_path / "out" / "predictions").mkdir(parents=True)
    pd.DataFrame(rows).to_parquet(tmp_path / "out" / "predictions" / "part-00000.parquet")
    written = write_srs_for_output(str(tmp_path / "out"), tmp_path / "sr")
    assert read_sr(pydicom.dcmread(written[0].sr_file)).finding == "absent"
    assert describe(written, tmp_path / "sr") == (
        f"DICOM SRs:    1 written to {tmp_path / 'sr'}; files without one (not DICOM, or not scored): 1"
    )
