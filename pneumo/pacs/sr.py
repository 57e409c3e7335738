"""A scored film as a DICOM Structured Report a PACS can hold, and the finding read back from one.

One Comprehensive SR per film, TID 1500 "Measurement Report" made with highdicom, in the film's own
patient and study and a series of its own (VerificationFlag UNVERIFIED: no person has checked it).
Its one measurement group (TID 1501) says:

    Finding                     Pneumonia (SCT 233604007), at the finding site Lung
    Algorithm Name/Version      the registered model and its version; parameters: pneumo's version, the model URI
    Source                      the scored image (its SOP class and instance)
    Probability (NUM)           P(pneumonia), unit "1" (UCUM, no units); absent when no finding was made
    Threshold Value (NUM)       the model's decision threshold, unit "1"
    Pneumonia (CODE)            Present | Absent (CID 240), or Undetermined for a refused film
    Comment (TEXT)              the out-of-distribution verdict in words: why no finding was made, or
                                that the film looked like the training films (row 12's text evaluation)

Every code comes from pydicom's dictionary (pydicom.sr.codedict, DICOM's context groups) except
Pneumonia itself: no DICOM context group lists SNOMED CT 233604007, so pydicom has no entry for it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Optional

import highdicom as hd
import pydicom
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from pneumo import __version__

PNEUMONIA = Code("233604007", "SCT", "Pneumonia")  # SNOMED CT; not in pydicom's dictionary (module docstring)
PRESENT, ABSENT, UNDETERMINED = codes.SCT.Present, codes.SCT.Absent, codes.SCT.Undetermined  # CID 240
PROBABILITY = codes.DCM.Probability
THRESHOLD = codes.DCM.ThresholdValue
NO_UNITS = codes.UCUM.NoUnits  # UCUM "1": a probability and a threshold have no unit
COMMENT = codes.DCM.Comment
FINDING_SITE = codes.SCT.Lung
PROCEDURE = codes.SCT.ImagingProcedure  # CID 100; true of any film the SR may describe (a CT slice too)
TITLE = codes.DCM.ImagingMeasurementReport  # CID 7021
OBSERVER_DEVICE = codes.DCM.Device  # CID 270: a device made the observation, not a person
CODES_FROM_PYDICOM = (PRESENT, ABSENT, UNDETERMINED, PROBABILITY, THRESHOLD, NO_UNITS, COMMENT, FINDING_SITE,
                      PROCEDURE, TITLE, OBSERVER_DEVICE)  # fmt: skip
TRACKING_LABEL = "pneumonia classification"
MANUFACTURER = "pneumo"
SERIES_DESCRIPTION = "pneumo: pneumonia (AI, unverified)"
SR_SERIES_NUMBER = 9901  # high, so viewers list the AI series after the acquired ones
REQUIRED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
# Type 2 patient and study attributes an SR must carry (empty when the film has none)
TYPE2_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                  "ReferringPhysicianName", "StudyID", "AccessionNumber")  # fmt: skip
FINDING_WORDS = {PRESENT.value: "present", ABSENT.value: "absent", UNDETERMINED.value: "undetermined"}


@dataclass(frozen=True)
class FilmResult:
    """What pneumo said about one film: what build_sr needs beside the source image."""

    probability: Optional[float]  # calibrated P(pneumonia); None when no finding was made (a refused film)
    threshold: float  # the model's decision threshold: PNEUMONIA at probability >= threshold
    model_name: str  # registered model name
    model_version: str  # registry version (or run id / "local")
    model_uri: str  # where the model came from, e.g. models:/pneumo-pneumonia/3
    in_distribution: Optional[bool] = None  # the out-of-distribution gate's verdict; None: the gate is off
    ood_score: Optional[float] = None  # the gate's score (above ood_cutoff: out of distribution)
    ood_cutoff: Optional[float] = None
    reason: Optional[str] = None  # why no probability was given (must not name the patient or the file)

    @property
    def finding(self) -> Code:
        if self.probability is None:
            return UNDETERMINED
        return PRESENT if self.probability >= self.threshold else ABSENT

    def verdict(self) -> str:
        """The out-of-distribution verdict in one sentence (the SR's Comment)."""
        gate = (
            f" (out-of-distribution score {self.ood_score:.3g}, cut-off {self.ood_cutoff:.3g})"
            if self.ood_score is not None and self.ood_cutoff is not None
            else ""
        )
        if self.probability is None:
            why = self.reason or "the film does not look like a frontal chest film the model was trained on"
            return f"No finding was made: {why}{gate}."
        if self.in_distribution is None:
            return "No out-of-distribution check was made: the model has no reference profile or the gate is off."
        if self.in_distribution:
            return f"The film looks like the chest films the model was trained on{gate}."
        return f"The film does not look like the chest films the model was trained on{gate}; the probability may mean little."


@dataclass(frozen=True)
class SrFinding:
    """What an SR written by build_sr says, read back."""

    finding: str  # present | absent | undetermined
    probability: Optional[float]
    threshold: Optional[float]
    comment: Optional[str]  # the out-of-distribution verdict
    algorithm_name: Optional[str]
    algorithm_version: Optional[str]
    source_sop_instance_uid: Optional[str]  # the film it describes


def _measurement_group(source: pydicom.Dataset, result: FilmResult) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    algorithm = hd.sr.AlgorithmIdentification(
        name=result.model_name,
        version=result.model_version,
        parameters=[f"pneumo {__version__}", f"model {result.model_uri}"],
    )
    measurements = [hd.sr.Measurement(name=THRESHOLD, value=float(result.threshold), unit=NO_UNITS)]
    if result.probability is not None:
        measurements.insert(0, hd.sr.Measurement(name=PROBABILITY, value=float(result.probability), unit=NO_UNITS))
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=TRACKING_LABEL),
        finding_type=PNEUMONIA,
        finding_sites=[hd.sr.FindingSite(anatomic_location=FINDING_SITE)],
        algorithm_id=algorithm,
        measurements=measurements,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=PNEUMONIA, value=result.finding)],
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
    )
    # TID 1501 row 12: a qualitative evaluation in words (highdicom builds the coded ones only)
    group[0].ContentSequence.append(
        hd.sr.TextContentItem(
            name=COMMENT, value=result.verdict(), relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
        )
    )
    return group


def evidence_header(source: pydicom.Dataset) -> pydicom.Dataset:
    """The film's header as SR evidence: no pixels, and the Type 2 patient/study attributes a film may
    lack present but empty (DICOM allows an empty value, not a missing attribute). Raises ValueError
    naming a missing UID: without its study and instance the film cannot be referenced."""
    missing = [keyword for keyword in REQUIRED_UIDS if not source.get(keyword)]
    if missing:
        raise ValueError(f"the DICOM film has no {', '.join(missing)}: an SR must name the film's study and image")
    header = pydicom.Dataset()
    header.update({element.tag: element for element in source if element.keyword != "PixelData"})
    for keyword in TYPE2_KEYWORDS:
        if keyword not in header:
            setattr(header, keyword, None)
    return header


def build_sr(
    source: pydicom.Dataset,
    result: FilmResult,
    series_instance_uid: Optional[str] = None,
    instance_number: int = 1,
) -> hd.sr.ComprehensiveSR:
    """The SR of one scored film: `source` is the film's DICOM dataset (pixels not needed), in whose
    patient and study the SR lands. SRs of one run can share `series_instance_uid` (default: a new series).

        sr = build_sr(pydicom.dcmread("film.dcm"), FilmResult(0.83, 0.5, "pneumo-pneumonia", "3", "models:/…"))
        sr.save_as("film-sr.dcm")
    """
    source = evidence_header(source)
    observer = hd.sr.ObserverContext(
        observer_type=OBSERVER_DEVICE,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(entropy_srcs=[result.model_uri]),  # one UID per model, the same in every SR
            name=f"{result.model_name} {result.model_version}",
            manufacturer_name=MANUFACTURER,
            model_name=result.model_name,
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=PROCEDURE,
        imaging_measurements=[_measurement_group(source, result)],
        title=TITLE,
    )
    sr = hd.sr.ComprehensiveSR(
        evidence=[source],
        content=report[0],
        series_instance_uid=series_instance_uid or generate_uid(),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=generate_uid(),
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,  # VerificationFlag UNVERIFIED: no person has checked the finding
    )
    sr.SeriesDescription = SERIES_DESCRIPTION
    sr.SoftwareVersions = __version__
    return sr


def part10_bytes(dataset: pydicom.Dataset) -> bytes:
    """A dataset as a DICOM Part 10 file (preamble, meta header) in memory: what application/dicom carries."""
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _text(group: hd.sr.MeasurementsAndQualitativeEvaluations, name: Code) -> Optional[str]:
    items = hd.sr.utils.find_content_items(group[0], name=name, value_type=hd.sr.ValueTypeValues.TEXT)
    return str(items[0].value) if items else None


def _number(group: hd.sr.MeasurementsAndQualitativeEvaluations, name: Code) -> Optional[float]:
    found = group.get_measurements(name=name)
    return float(found[0].value) if found else None


def read_sr(dataset: pydicom.Dataset) -> SrFinding:
    """The finding, probability and verdict of an SR that build_sr wrote (parsed back with highdicom).

    Raises ValueError for an SR without a pneumonia evaluation (another tool's SR)."""
    sr = hd.sr.ComprehensiveSR.from_dataset(dataset, copy=False)
    groups = [
        group
        for group in sr.content.get_image_measurement_groups()
        if group.get_qualitative_evaluations(name=PNEUMONIA)
    ]
    if not groups:
        raise ValueError(f"SR {dataset.SOPInstanceUID} has no pneumonia evaluation (TID 1501 {PNEUMONIA.meaning})")
    group = groups[0]
    value = group.get_qualitative_evaluations(name=PNEUMONIA)[0].value
    sources = group.source_images
    return SrFinding(
        finding=FINDING_WORDS.get(value.value, value.meaning),
        probability=_number(group, PROBABILITY),
        threshold=_number(group, THRESHOLD),
        comment=_text(group, COMMENT),
        algorithm_name=_text(group, codes.DCM.AlgorithmName),
        algorithm_version=_text(group, codes.DCM.AlgorithmVersion),
        source_sop_instance_uid=sources[0].referenced_sop_instance_uid if sources else None,
    )
