"""DICOMweb against a real PACS (Orthanc): query, retrieve and store, and each way it goes wrong named
per instance or per query: a non-image instance, a film without pixels, a server that refuses the
login, one that never answers, one that is not there."""

from __future__ import annotations

import socket
import threading

import pydicom
import pytest
from pydicom.uid import generate_uid

from pneumo.pacs.dicomweb import (
    PASSWORD_ENV,
    USER_ENV,
    DicomWebError,
    InstanceError,
    connect,
    not_an_image,
    query_instances,
    retrieve_instance,
    store_instance,
)
from pneumo.pacs.sr import FilmResult, build_sr, read_sr
from tests.pacs.films import presentation_state, pydicom_file, reidentified, without_pixels

RESULT = FilmResult(0.77, 0.5, "pneumo-pneumonia", "2", "models:/pneumo-pneumonia/2", True, 0.3, 1.2)


def _chest(orthanc, study_uid: str) -> pydicom.Dataset:
    film = reidentified(pydicom.dcmread(pydicom_file("RG1_J2KR.dcm")), study_uid)
    orthanc.upload(film)
    return film


def test_an_sr_stored_into_the_films_study_reads_back_from_the_pacs(orthanc):
    study = generate_uid()
    film = _chest(orthanc, study)
    client = connect(orthanc.dicomweb, environ=orthanc.environ)
    [ref] = query_instances(client, study_uid=study)
    assert (ref.sop_instance_uid, ref.modality) == (film.SOPInstanceUID, "CR")
    retrieved = retrieve_instance(client, ref)
    assert retrieved.file_meta.TransferSyntaxUID == pydicom.uid.JPEG2000Lossless  # as stored, not transcoded

    store_instance(client, build_sr(retrieved, RESULT))
    refs = query_instances(client, study_uid=study)
    [sr_ref] = [found for found in refs if found.modality == "SR"]
    assert not_an_image(sr_ref.sop_class_uid) == "not an image (Comprehensive SR Storage)"
    with pytest.raises(InstanceError, match=r"not an image \(Comprehensive SR Storage\)") as raised:
        retrieve_instance(client, sr_ref)
    assert raised.value.status == "skipped"
    sr = client.retrieve_instance(sr_ref.study_uid, sr_ref.series_uid, sr_ref.sop_instance_uid)
    read = read_sr(sr)
    assert (read.finding, read.probability, read.source_sop_instance_uid) == ("present", 0.77, film.SOPInstanceUID)


def test_instances_that_are_not_films_say_why(orthanc):
    study = generate_uid()
    orthanc.upload(presentation_state(study))
    orthanc.upload(without_pixels(study))
    client = connect(orthanc.dicomweb, environ=orthanc.environ)
    refs = {ref.modality: ref for ref in query_instances(client, study_uid=study)}
    assert not_an_image(refs["PR"].sop_class_uid) == "not an image (Grayscale Softcopy Presentation State Storage)"
    with pytest.raises(InstanceError, match=r"^no pixel data \(Digital X-Ray Image Storage - For Presentation\)$"):
        retrieve_instance(client, refs["DX"])


def test_a_study_and_a_modality_query_find_what_is_there(orthanc):
    client = connect(orthanc.dicomweb, environ=orthanc.environ)
    assert query_instances(client, study_uid=generate_uid()) == []  # a study with nothing in it
    study = generate_uid()
    film = _chest(orthanc, study)
    found = query_instances(client, modalities=("CR", "DX"))
    assert film.SOPInstanceUID in {ref.sop_instance_uid for ref in found}
    assert {ref.modality for ref in found} <= {"CR", "DX"}


def test_a_wrong_password_is_refused_and_the_message_never_holds_it(orthanc):
    wrong = {**orthanc.environ, PASSWORD_ENV: "not-the-password-91c2"}
    with pytest.raises(DicomWebError, match="HTTP 401 Unauthorized") as raised:
        query_instances(connect(orthanc.dicomweb, environ=wrong), study_uid=generate_uid())
    assert f"${USER_ENV}" in str(raised.value)
    assert "not-the-password-91c2" not in str(raised.value)


def test_a_user_without_a_password_is_a_clear_error():
    with pytest.raises(ValueError, match=rf"\${PASSWORD_ENV} is not set"):
        connect("dicomweb+http://127.0.0.1:1/dicom-web", environ={USER_ENV: "reader"})


def test_a_server_that_never_answers_times_out():
    with socket.socket() as server:  # accepts connections and never says a word
        server.bind(("127.0.0.1", 0))
        server.listen()
        held: list[socket.socket] = []
        threading.Thread(target=lambda: held.append(server.accept()[0]), daemon=True).start()
        client = connect(f"dicomweb+http://127.0.0.1:{server.getsockname()[1]}/dicom-web", timeout_s=0.5, retries=1)
        with pytest.raises(DicomWebError, match="the server did not answer in time"):
            query_instances(client, modalities=("CR",))


def test_a_server_that_is_not_there_cannot_be_reached(dead_dicomweb):
    client = connect(dead_dicomweb, retries=1)
    with pytest.raises(DicomWebError, match="the server cannot be reached"):
        query_instances(client, study_uid=generate_uid())
    with pytest.raises(InstanceError, match="STOW-RS store: the server cannot be reached"):
        store_instance(client, build_sr(reidentified(pydicom.dcmread(pydicom_file("RG1_UNCR.dcm")), "1.2.3"), RESULT))


def test_a_url_that_is_not_dicomweb_is_a_clear_error():
    with pytest.raises(ValueError, match="is not a DICOMweb URL: give dicomweb\\+http://HOST:PORT/PATH"):
        connect("ftp://pacs/dicom-web")
