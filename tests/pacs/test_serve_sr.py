"""POST /predict as a DICOM SR, on the session's Serve app (serve.ood_policy flag) and on one with the
reject policy: the SR is valid, in the film's study, and says what the JSON answer says; a refused
film gets an SR that says no finding was made, not a 422; the audit log holds no patient name."""

from __future__ import annotations

import io
import json

import pydicom
import pytest
import requests

from pneumo.pacs.sr import part10_bytes, read_sr
from tests.pacs.films import PATIENT_ID, PATIENT_NAME, made_film, pydicom_file, reidentified
from tests.pacs.validate import dciodvfy, dsrdump, unexplained_warnings
from tests.serve_deploy import deployed

pytestmark = pytest.mark.slow  # the session's Serve app over the smoke model


def _predict(url: str, data: bytes, **kwargs) -> requests.Response:
    headers = {"Content-Type": "application/dicom", **kwargs.pop("headers", {})}
    return requests.post(f"{url}/predict", data=data, headers=headers, timeout=60, **kwargs)


@pytest.fixture(scope="module")
def reject(serve_app, tmp_path_factory):
    """An app with serve.ood_policy=reject and an audit log, beside the session's."""
    audit = tmp_path_factory.mktemp("audit")
    overrides = ("serve.ood_policy=reject", f"serve.audit_dir={audit}")
    with deployed(serve_app, "sr-reject", serve_app.checkpoint, *overrides) as url:
        yield url, audit


def test_a_dicom_film_gets_its_sr_with_format_or_accept(serve_app, tmp_path):
    film = made_film()
    answer = _predict(serve_app.url, part10_bytes(film)).json()
    assert answer["dicom"] == {"modality": "DX", "view_position": "PA", "body_part": "CHEST"}
    by_format = _predict(serve_app.url, part10_bytes(film), params={"format": "dicom-sr"})
    by_accept = _predict(serve_app.url, part10_bytes(film), headers={"Accept": "application/dicom"})
    for response in (by_format, by_accept):
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/dicom"
        assert response.headers["X-Model-Version"] == "1"
        sr = pydicom.dcmread(io.BytesIO(response.content))
        read = read_sr(sr)
        expected = "present" if answer["label"] == "PNEUMONIA" else "absent"
        assert (read.finding, response.headers["X-Finding"]) == (expected, expected)
        assert read.probability == pytest.approx(answer["probability"], abs=1e-6)
        assert read.threshold == answer["threshold"]
        assert (sr.StudyInstanceUID, sr.PatientID, read.source_sop_instance_uid) == (
            film.StudyInstanceUID,
            PATIENT_ID,
            film.SOPInstanceUID,
        )
    path = tmp_path / "sr.dcm"
    path.write_bytes(by_format.content)
    errors, warnings = dciodvfy(path)
    assert errors == [] and unexplained_warnings(warnings) == []
    assert "Verification Flag   : UNVERIFIED" in dsrdump(path)


def test_an_sr_needs_a_dicom_upload_that_names_its_study(serve_app, synthetic_root):
    jpeg = next((synthetic_root / "test" / "NORMAL").glob("*.jpeg")).read_bytes()
    response = requests.post(
        f"{serve_app.url}/predict?format=dicom-sr", data=jpeg, headers={"Content-Type": "image/jpeg"}, timeout=60
    )
    assert response.status_code == 415
    assert response.json()["error"].startswith("body: an SR (dicom-sr) is made for a DICOM upload only")
    film = made_film()
    del film.StudyInstanceUID
    response = _predict(serve_app.url, part10_bytes(film), params={"format": "dicom-sr"})
    assert (response.status_code, response.json()["field"]) == (400, "body")
    assert response.json()["error"] == (
        "body: the DICOM film has no StudyInstanceUID: an SR must name the film's study and image"
    )


def test_a_refused_film_gets_an_sr_saying_no_finding_was_made(reject, tmp_path):
    url, audit = reject
    ct = reidentified(pydicom.dcmread(pydicom_file("CT_small.dcm")), pydicom.uid.generate_uid())
    assert _predict(url, part10_bytes(ct)).status_code == 422  # the JSON answer refuses, as before
    response = _predict(url, part10_bytes(ct), params={"format": "dicom-sr"})
    assert response.status_code == 200, response.text
    assert response.headers["X-Finding"] == "undetermined" and "X-Probability" not in response.headers
    path = tmp_path / "refused.dcm"
    path.write_bytes(response.content)
    read = read_sr(pydicom.dcmread(path))
    assert (read.finding, read.probability) == ("undetermined", None)
    assert read.comment.startswith("No finding was made: the film does not look like a frontal chest film")
    assert dciodvfy(path)[0] == []

    lines = [json.loads(line) for file in audit.glob("*.jsonl") for line in file.read_text().splitlines()]
    assert [(line["probability"], line["decision"], line["in_distribution"]) for line in lines] == [(None, None, False)]
    written = "".join(file.read_text() for file in audit.glob("*.jsonl"))
    for secret in (PATIENT_NAME, PATIENT_NAME.replace("^", " "), PATIENT_ID):
        assert secret not in written
