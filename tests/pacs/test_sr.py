"""The SR of a scored film, judged by the standard's own tools: dciodvfy (dicom3tools) finds no error in
it, dsrdump (DCMTK) renders it, and highdicom reads the finding and probability back; on the real
chest CR of pydicom's test data (MONOCHROME1, uncompressed and JPEG 2000) and on films made here."""

from __future__ import annotations

import pydicom
import pytest
from pydicom.sr import _concepts_dict
from pydicom.uid import generate_uid

from pneumo import __version__
from pneumo.pacs.sr import CODES_FROM_PYDICOM, PNEUMONIA, FilmResult, build_sr, part10_bytes, read_sr
from tests.pacs.films import CHEST_CR, PATIENT_ID, PATIENT_NAME, made_film, pydicom_file
from tests.pacs.validate import dciodvfy, dsrdump, unexplained_warnings

MODEL = {"model_name": "pneumo-pneumonia", "model_version": "7", "model_uri": "models:/pneumo-pneumonia/7"}
RESULTS = {  # name -> (what the film got, the finding the SR must say)
    "present": (FilmResult(0.83, 0.41, in_distribution=True, ood_score=0.52, ood_cutoff=1.3, **MODEL), "present"),
    "absent": (FilmResult(0.12, 0.41, in_distribution=True, ood_score=0.97, ood_cutoff=1.3, **MODEL), "absent"),
    "at threshold": (FilmResult(0.41, 0.41, **MODEL), "present"),  # PNEUMONIA at probability >= threshold
    "flagged": (FilmResult(0.66, 0.41, in_distribution=False, ood_score=4.2, ood_cutoff=1.3, **MODEL), "present"),
    "refused": (
        FilmResult(
            None, 0.41, in_distribution=False, ood_score=9.1, ood_cutoff=1.3, reason="not a chest film", **MODEL
        ),
        "undetermined",
    ),
}


def _source(kind: str) -> pydicom.Dataset:
    if kind in CHEST_CR:
        return pydicom.dcmread(pydicom_file(kind), stop_before_pixels=True)  # an SR needs no pixels
    if kind == "made MONOCHROME1 16 bit":
        return made_film("MONOCHROME1", 16)
    if kind == "made without dates":  # Type 2 study attributes missing altogether
        film = made_film()
        for keyword in ("StudyDate", "StudyTime", "StudyID", "AccessionNumber", "PatientBirthDate"):
            delattr(film, keyword)
        return film
    return made_film()


SOURCES = (*CHEST_CR, "made MONOCHROME2 12 bit", "made MONOCHROME1 16 bit", "made without dates")


@pytest.mark.parametrize("result_name", RESULTS)
@pytest.mark.parametrize("source_kind", SOURCES)
def test_sr_is_valid_renders_and_reads_back(source_kind, result_name, tmp_path):
    result, finding = RESULTS[result_name]
    source = _source(source_kind)
    path = tmp_path / "sr.dcm"
    path.write_bytes(part10_bytes(build_sr(source, result)))

    errors, warnings = dciodvfy(path)
    assert errors == []
    assert unexplained_warnings(warnings) == []

    rendered = dsrdump(path)
    assert "Verification Flag   : UNVERIFIED" in rendered
    assert '<contains CODE:(,,"Finding")=(233604007,SCT,"Pneumonia")>' in rendered
    assert f'<has concept mod TEXT:(,,"Algorithm Name")="{MODEL["model_name"]}">' in rendered
    assert f'<contains NUM:(,,"Threshold Value")="{result.threshold}" (1,UCUM,"no units")>' in rendered

    read = read_sr(pydicom.dcmread(path))
    assert (read.finding, read.probability, read.threshold) == (finding, result.probability, result.threshold)
    assert (read.algorithm_name, read.algorithm_version) == (MODEL["model_name"], MODEL["model_version"])
    assert read.source_sop_instance_uid == source.SOPInstanceUID


def test_every_code_but_pneumonia_is_in_pydicoms_dictionary():
    for code in CODES_FROM_PYDICOM:
        entry = _concepts_dict.concepts[code.scheme_designator]
        assert any(code.value in values and values[code.value][0] == code.meaning for values in entry.values()), code
    # pydicom lists the codes of DICOM's context groups, and none lists Pneumonia: the one code taken
    # from SNOMED CT itself (sr.py says so)
    assert not any(PNEUMONIA.value in values for values in _concepts_dict.concepts["SCT"].values())


def test_sr_is_in_the_films_patient_and_study_in_a_series_of_its_own():
    source = made_film()
    sr = build_sr(source, RESULTS["present"][0])
    assert (sr.PatientName, sr.PatientID) == (PATIENT_NAME, PATIENT_ID)  # what the PACS files it under
    assert sr.StudyInstanceUID == source.StudyInstanceUID
    assert sr.SeriesInstanceUID != source.SeriesInstanceUID
    assert (sr.Modality, sr.SOPClassUID.name) == ("SR", "Comprehensive SR Storage")
    assert (sr.VerificationFlag, sr.CompletionFlag) == ("UNVERIFIED", "COMPLETE")
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert sr.SoftwareVersions == __version__
    shared = build_sr(made_film(study_uid=source.StudyInstanceUID), RESULTS["absent"][0], sr.SeriesInstanceUID, 2)
    assert (shared.SeriesInstanceUID, shared.InstanceNumber) == (sr.SeriesInstanceUID, 2)


def test_a_refused_film_says_no_finding_was_made_and_why(tmp_path):
    result = RESULTS["refused"][0]
    path = tmp_path / "refused.dcm"
    path.write_bytes(part10_bytes(build_sr(made_film(), result)))
    read = read_sr(pydicom.dcmread(path))
    assert (read.finding, read.probability) == ("undetermined", None)
    assert read.comment == "No finding was made: not a chest film (out-of-distribution score 9.1, cut-off 1.3)."
    rendered = dsrdump(path)
    assert '<contains CODE:(,,"Pneumonia")=(373068000,SCT,"Undetermined")>' in rendered
    assert '"Probability"' not in rendered  # no number where no finding was made


def test_the_verdict_says_whether_the_film_looked_like_the_training_films():
    assert RESULTS["present"][0].verdict() == (
        "The film looks like the chest films the model was trained on (out-of-distribution score 0.52, cut-off 1.3)."
    )
    assert RESULTS["flagged"][0].verdict().endswith("; the probability may mean little.")
    assert RESULTS["at threshold"][0].verdict().startswith("No out-of-distribution check was made")


def test_a_film_without_its_study_cannot_get_an_sr():
    film = made_film()
    del film.StudyInstanceUID
    with pytest.raises(ValueError, match="the DICOM film has no StudyInstanceUID: an SR must name the film's study"):
        build_sr(film, RESULTS["present"][0])


def test_read_sr_refuses_an_sr_without_a_pneumonia_evaluation():
    import highdicom as hd
    from pydicom.sr.codedict import codes

    film = made_film()
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier="other"),
        measurements=[hd.sr.Measurement(name=codes.DCM.Probability, value=0.5, unit=codes.UCUM.NoUnits)],
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(),
        procedure_reported=codes.SCT.ImagingProcedure,
        imaging_measurements=[group],
    )
    other = hd.sr.ComprehensiveSR([film], report[0], generate_uid(), 1, generate_uid(), 1)
    with pytest.raises(ValueError, match="has no pneumonia evaluation"):
        read_sr(other)
