"""A study from the PACS and back, for real: films uploaded to Orthanc are queried, retrieved, scored by
the smoke run's trained model, and their SRs stored into the study; Orthanc then holds an SR series
whose findings are the model's. Every instance that is not a usable film says why, a failed store
loses nothing, and no patient name or ID reaches pneumo's logs or rows."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from pneumo.pacs.dicomweb import PASSWORD_ENV, connect, query_instances
from pneumo.pacs.roundtrip import ROWS_FILE, read_rows, report_to_pacs, score_film, store_srs, summary
from pneumo.pacs.sr import build_sr, read_sr
from pneumo.registry.uri import fetch_model
from tests.pacs.films import (
    NON_CHEST_CR,
    PATIENT_ID,
    PATIENT_NAME,
    made_film,
    presentation_state,
    pydicom_file,
    reidentified,
    undecodable,
    without_pixels,
)

pytestmark = pytest.mark.slow  # the smoke run's model: Ray and a short training


@pytest.fixture(scope="module")
def model(smoke_run):
    return fetch_model(str(smoke_run.outcome.model_dir), "")


@pytest.fixture(scope="module")
def study(orthanc):
    """One study of the known patient: two real CRs (a chest, JPEG 2000; a hand), a film made here,
    an earlier SR, a presentation state, a header without pixels and a film no decoder here reads."""
    uid = generate_uid()
    films = {
        "chest": reidentified(pydicom.dcmread(pydicom_file("RG1_J2KR.dcm")), uid),
        "hand": reidentified(pydicom.dcmread(pydicom_file(NON_CHEST_CR)), uid),
        "made": made_film(study_uid=uid),
    }
    others = {
        "presentation state": presentation_state(uid),
        "no pixels": without_pixels(uid),
        "undecodable": undecodable(uid),
    }
    for dataset in [*films.values(), *others.values()]:
        orthanc.upload(dataset)
    return uid, films, others


@pytest.fixture(scope="module")
def round_trip(orthanc, model, study, tmp_path_factory):
    """report_to_pacs over the study with --store-sr, with every log line of pneumo and its libraries kept."""
    uid, films, _ = study
    earlier = build_sr(films["chest"], score_film(model, films["chest"]))  # an SR already in the study
    orthanc.upload(earlier)
    out = tmp_path_factory.mktemp("pacs_out")
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        rows = report_to_pacs(orthanc.dicomweb, model, out, study_uid=uid, store=True, environ=orthanc.environ)
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    return rows, out, [handler.format(record) for record in records], earlier


def test_the_study_gets_an_sr_series_with_the_models_findings(orthanc, model, study, round_trip):
    uid, films, _ = study
    rows, out, _, _ = round_trip
    by_uid = {row.sop_instance_uid: row for row in rows}
    for name, film in films.items():
        row = by_uid[film.SOPInstanceUID]
        expected = score_film(model, film)  # the same film scored here, outside the round trip
        assert row.status == ("refused_ood" if expected.probability is None else "scored"), name
        assert row.probability == (None if expected.probability is None else pytest.approx(expected.probability)), name
        assert row.stored is True and row.store_error is None, name
        assert Path(row.sr_file).exists(), name

    client = connect(orthanc.dicomweb, environ=orthanc.environ)
    stored = [ref for ref in query_instances(client, study_uid=uid) if ref.modality == "SR"]
    ours = [ref for ref in stored if ref.sop_instance_uid in {row.sr_sop_instance_uid for row in rows}]
    assert len(ours) == len(films) and len({ref.series_uid for ref in ours}) == 1  # one new series of SRs
    for ref in ours:
        read = read_sr(client.retrieve_instance(ref.study_uid, ref.series_uid, ref.sop_instance_uid))
        row = by_uid[read.source_sop_instance_uid]
        assert (read.finding, read.probability) == (row.finding, row.probability)
        assert (read.algorithm_name, read.algorithm_version) == (model.name, model.version)
        if row.status == "refused_ood":
            assert read.comment.startswith("No finding was made: the film does not look like a frontal chest film")
    assert (summary(rows)["sr_written"], summary(rows)["sr_stored"]) == (len(films), len(films))


def test_instances_that_are_not_usable_films_say_why(study, round_trip):
    _, _, others = study
    rows, _, _, earlier = round_trip
    by_uid = {row.sop_instance_uid: row for row in rows}
    reasons = {
        name: (by_uid[film.SOPInstanceUID].status, by_uid[film.SOPInstanceUID].reason) for name, film in others.items()
    }
    assert reasons["presentation state"] == ("skipped", "not an image (Grayscale Softcopy Presentation State Storage)")
    assert reasons["no pixels"] == ("unreadable", "no pixel data (Digital X-Ray Image Storage - For Presentation)")
    status, reason = reasons["undecodable"]
    assert status == "unreadable"
    assert "DICOM pixel data cannot be decoded" in reason and "12-bit" in reason
    assert reason.endswith("[transfer syntax JPEG Extended (Process 2 and 4)]")
    assert (by_uid[earlier.SOPInstanceUID].status, by_uid[earlier.SOPInstanceUID].reason) == (
        "skipped",
        "not an image (Comprehensive SR Storage)",
    )
    assert all(row.sr_file is None for row in rows if row.status in ("skipped", "unreadable"))


def test_no_patient_name_or_id_in_pneumos_logs_or_rows_and_no_password_anywhere(orthanc, round_trip):
    rows, out, log_lines, _ = round_trip
    logged = "\n".join(log_lines)
    assert "instance " in logged  # the round trip did log, per instance
    table = (out / ROWS_FILE).read_bytes()
    for secret in (PATIENT_NAME, PATIENT_NAME.replace("^", " "), PATIENT_ID, orthanc.environ[PASSWORD_ENV]):
        assert secret not in logged
        assert secret.encode() not in table
    sr_file = next(row.sr_file for row in rows if row.sr_file)
    assert str(pydicom.dcmread(sr_file).PatientName) == PATIENT_NAME  # the SR itself carries what a PACS needs


def test_a_failed_store_loses_nothing_and_stores_again(orthanc, dead_dicomweb, model, study, tmp_path):
    uid, films, _ = study
    rows = report_to_pacs(orthanc.dicomweb, model, tmp_path, study_uid=uid, environ=orthanc.environ)
    assert {row.stored for row in rows} == {None}  # not asked to store
    failed = store_srs(dead_dicomweb, tmp_path, environ=orthanc.environ)  # the PACS is down
    written = [row for row in failed if row.sr_file]
    assert len(written) == len(films)
    assert all(row.stored is False and "the server cannot be reached" in row.store_error for row in written)
    assert [row.stored for row in read_rows(tmp_path) if row.sr_file] == [False] * len(films)  # kept in OUT

    again = store_srs(orthanc.dicomweb, tmp_path, environ=orthanc.environ)
    assert all(row.stored is True and row.store_error is None for row in again if row.sr_file)


def _pneumo(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pneumo.cli", *args], env=env, capture_output=True, text=True, timeout=600
    )


def test_pneumo_predict_scores_a_pacs_study_and_stores_its_srs(orthanc, smoke_run, tmp_path):
    uid = generate_uid()
    film = made_film(study_uid=uid)
    orthanc.upload(film)
    out = tmp_path / "out"
    args = ["predict", str(smoke_run.outcome.model_dir), orthanc.dicomweb, "--study", uid, "--out", str(out)]
    done = _pneumo([*args, "--store-sr"], orthanc.environ)
    assert done.returncode == 0, done.stderr
    [row] = read_rows(out)
    assert row.sop_instance_uid == film.SOPInstanceUID and row.stored is True
    assert f"SRs:          1 written to {out / 'sr'}, 1 stored" in done.stdout
    printed = done.stdout + done.stderr
    for secret in (PATIENT_NAME, PATIENT_ID, orthanc.environ[PASSWORD_ENV]):
        assert secret not in printed

    neither = _pneumo(args[:3] + ["--out", str(tmp_path / "x")], orthanc.environ)
    assert neither.returncode != 0
    assert "a DICOMweb DATA needs --study UID or --modality CR,DX" in neither.stderr
