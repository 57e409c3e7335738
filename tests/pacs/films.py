"""DICOM films for the PACS tests: the real chest CR in pydicom's test data, and films made here with
a known patient (whose name and ID must appear in none of pneumo's own output)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from bench.films import dicom_bytes

PATIENT_NAME, PATIENT_ID = "Testpatient^Known", "PNEUMO-PATIENT-4711"
CHEST_CR = ("RG1_UNCR.dcm", "RG1_UNCI.dcm", "RG1_J2KR.dcm", "RG1_J2KI.dcm")  # real PA chest, MONOCHROME1
NON_CHEST_CR = "RG3_UNCR.dcm"  # a real extremity radiograph (CR)


def pydicom_file(name: str) -> Path:
    """A pydicom test file (pydicom-data has the CR ones), or skip the test saying what is missing."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} is not in pydicom's test data: pip install pydicom-data")
    return Path(path)


def reidentified(dataset: pydicom.Dataset, study_uid: str) -> pydicom.Dataset:
    """A copy of `dataset` in study `study_uid` with a new series and instance, of the known patient:
    each test's films are its own, in a PACS the tests share."""
    copy = pydicom.Dataset(dataset)
    copy.file_meta = pydicom.dataset.FileMetaDataset(dataset.file_meta)
    copy.StudyInstanceUID, copy.SeriesInstanceUID = study_uid, generate_uid()
    copy.SOPInstanceUID = copy.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    copy.PatientName, copy.PatientID = PATIENT_NAME, PATIENT_ID
    return copy


def made_film(
    photometric: str = "MONOCHROME2", bits: int = 12, study_uid: str | None = None, **elements
) -> pydicom.Dataset:
    """A digital X-ray made here: a smooth 128 px film of the known patient, with study, series,
    dates and view position (`elements` override or add any element)."""
    ramp = np.linspace(0, 2**bits - 1, 128)
    pixels = np.outer(np.hanning(128), ramp).astype(np.uint16)
    header = {
        "PatientName": PATIENT_NAME,
        "PatientID": PATIENT_ID,
        "PatientBirthDate": "19700101",
        "PatientSex": "O",
        "StudyInstanceUID": study_uid or generate_uid(),
        "SeriesInstanceUID": generate_uid(),
        "StudyDate": "20260101",
        "StudyTime": "120000",
        "StudyID": "1",
        "AccessionNumber": "A1",
        "ReferringPhysicianName": "",
        "BodyPartExamined": "CHEST",
        "ViewPosition": "PA",
        **elements,
    }
    return pydicom.dcmread(io.BytesIO(dicom_bytes(pixels, bits, photometric, **header)))


def _part10(dataset: pydicom.Dataset, sop_class: str) -> pydicom.Dataset:
    dataset.SOPClassUID, dataset.SOPInstanceUID = sop_class, generate_uid()
    dataset.file_meta = pydicom.dataset.FileMetaDataset()
    dataset.file_meta.MediaStorageSOPClassUID = sop_class
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    dataset.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    return dataset


def presentation_state(study_uid: str) -> pydicom.Dataset:
    """A grayscale softcopy presentation state of the known patient: in a study, never a film."""
    state = pydicom.Dataset()
    state.PatientName, state.PatientID, state.Modality = PATIENT_NAME, PATIENT_ID, "PR"
    state.StudyInstanceUID, state.SeriesInstanceUID = study_uid, generate_uid()
    state.ContentLabel, state.PresentationCreationDate = "WINDOW", "20260101"
    return _part10(state, pydicom.uid.GrayscaleSoftcopyPresentationStateStorage)


def without_pixels(study_uid: str) -> pydicom.Dataset:
    """A digital X-ray header that promises a film and holds no pixel data."""
    film = made_film(study_uid=study_uid)
    del film.PixelData
    film.SOPInstanceUID = film.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    return film


def undecodable(study_uid: str) -> pydicom.Dataset:
    """A 12-bit film in JPEG Extended (process 2 & 4), which no decoder installed here reads
    (Pillow decodes 8-bit JPEG only; pylibjpeg and GDCM are not installed)."""
    from pydicom.encaps import encapsulate

    film = made_film(study_uid=study_uid)
    film.file_meta.TransferSyntaxUID = pydicom.uid.JPEGExtended12Bit
    film.PixelData = encapsulate([b"\xff\xd8\xff\xc1" + bytes(200) + b"\xff\xd9"])
    film["PixelData"].VR = "OB"
    return film
