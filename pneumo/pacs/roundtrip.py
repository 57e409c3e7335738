"""A study from the PACS and back: query (QIDO-RS) -> retrieve (WADO-RS) -> score -> SR -> store (STOW-RS).

    rows = report_to_pacs("dicomweb+http://127.0.0.1:8042/dicom-web", fetch_model(uri, tracking_uri),
                          "out/", study_uid="1.2.3", store=True)
    pd.read_parquet("out/instances.parquet")   # one row per instance: status, reason, finding, SR, stored

Every instance the query finds gets a row: `scored` and `refused_ood` films get an SR (a refused one
says that no finding was made, and why), written to OUT/sr/ before anything is stored, so a failed
STOW loses nothing: `store_srs` sends OUT's unstored SRs again. Instances that are not films
(`skipped`: an SR, a presentation state), that cannot be used (`unreadable`: no pixel data, a transfer
syntax no installed decoder reads) or fetched (`failed`) say why in `reason`. Rows hold UIDs, never
patient names or IDs; the SRs themselves carry the patient and study, as a PACS needs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd
import pydicom
import torch

from pneumo.config import MAX_IMAGE_PIXELS
from pneumo.data.transforms import ImageDecodeError, decode_image
from pneumo.monitoring.features import observe
from pneumo.monitoring.profile import profile_of
from pneumo.pacs.dicomweb import (
    SKIPPED,
    UNREADABLE,
    DicomWebError,
    InstanceError,
    InstanceRef,
    connect,
    not_an_image,
    query_instances,
    retrieve_instance,
    store_instance,
)
from pneumo.pacs.sr import FilmResult, build_sr, part10_bytes
from pneumo.registry.uri import FetchedModel

logger = logging.getLogger(__name__)
ROWS_FILE, SR_DIR = "instances.parquet", "sr"
SCORED, REFUSED_OOD = "scored", "refused_ood"  # beside dicomweb's skipped, unreadable, failed
OOD_POLICIES = ("reject", "flag", "off")  # as serve.ood_policy


@dataclass
class InstanceRow:
    """What happened to one instance (the columns of OUT/instances.parquet)."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    modality: str
    status: str  # scored | refused_ood | skipped | unreadable | failed
    reason: Optional[str] = None  # why it has no probability
    probability: Optional[float] = None
    finding: Optional[str] = None  # present | absent | undetermined (the SR's coded finding)
    in_distribution: Optional[bool] = None
    ood_score: Optional[float] = None
    sr_sop_instance_uid: Optional[str] = None
    sr_file: Optional[str] = None  # under OUT/sr/
    stored: Optional[bool] = None  # None: not asked to store
    store_error: Optional[str] = None

    @classmethod
    def of(cls, ref: InstanceRef, status: str, reason: Optional[str] = None) -> InstanceRow:
        return cls(ref.study_uid, ref.series_uid, ref.sop_instance_uid, ref.modality, status, reason)


def _gate(model: FetchedModel, image: np.ndarray) -> tuple[float, Optional[float], Optional[float]]:
    """P(pneumonia), out-of-distribution score and cut-off of one uint8 (C, H, W) film, from one pass."""
    seen = observe(model.loaded, torch.from_numpy(np.array(image[None])))  # decoded arrays are read-only
    profile = profile_of(model.loaded)
    if profile is None:
        return float(seen.probabilities[0]), None, None
    return float(seen.probabilities[0]), float(profile.ood_scores(seen)[0]), profile.gate.cutoff


def score_film(model: FetchedModel, dataset: pydicom.Dataset, ood_policy: str = "reject") -> FilmResult:
    """One DICOM film as `pneumo serve` answers it: decoded the same way, the model's calibration and
    threshold, the gate (ood_policy reject: no probability beyond the cut-off). Raises InstanceError
    when the pixels cannot be decoded."""
    try:
        image = decode_image(part10_bytes(dataset), model.loaded.meta.preprocessing_spec, MAX_IMAGE_PIXELS)
    except ImageDecodeError as error:
        syntax = dataset.file_meta.get("TransferSyntaxUID") if hasattr(dataset, "file_meta") else None
        raise InstanceError(f"{error} [transfer syntax {syntax.name if syntax else 'unknown'}]", UNREADABLE) from None
    probability, score, cutoff = _gate(model, image)
    in_distribution = None if score is None or ood_policy == "off" else score <= cutoff
    refused = ood_policy == "reject" and in_distribution is False
    return FilmResult(
        probability=None if refused else probability,
        threshold=model.loaded.meta.decision_threshold,
        model_name=model.name,
        model_version=model.version,
        model_uri=model.uri,
        in_distribution=in_distribution,
        ood_score=score,
        ood_cutoff=cutoff,
        reason="the film does not look like a frontal chest film the model was trained on" if refused else None,
    )


def _write_sr(source: pydicom.Dataset, result: FilmResult, sr_dir: Path, series_uid: str) -> tuple[str, str]:
    sr = build_sr(source, result, series_instance_uid=series_uid)
    path = sr_dir / f"{sr.SOPInstanceUID}.dcm"
    path.write_bytes(part10_bytes(sr))
    return str(sr.SOPInstanceUID), str(path)


def _report_instance(
    client, ref: InstanceRef, model: FetchedModel, sr_dir: Path, series_uids: dict[str, str], ood_policy: str
) -> InstanceRow:
    reason = not_an_image(ref.sop_class_uid)
    if reason:
        return InstanceRow.of(ref, SKIPPED, reason)
    try:
        dataset = retrieve_instance(client, ref)
    except InstanceError as error:
        return InstanceRow.of(ref, error.status, str(error))
    try:
        result = score_film(model, dataset, ood_policy)
    except InstanceError as error:
        return InstanceRow.of(ref, error.status, str(error))
    series_uid = series_uids.setdefault(ref.study_uid, pydicom.uid.generate_uid())  # one SR series per study
    sr_uid, sr_file = _write_sr(dataset, result, sr_dir, series_uid)
    row = InstanceRow.of(ref, SCORED if result.probability is not None else REFUSED_OOD, result.reason)
    finding = {"52101004": "present", "272519000": "absent"}.get(result.finding.value, "undetermined")
    return replace(
        row,
        probability=result.probability,
        finding=finding,
        in_distribution=result.in_distribution,
        ood_score=result.ood_score,
        sr_sop_instance_uid=sr_uid,
        sr_file=sr_file,
    )


def write_rows(out_dir: str | Path, rows: Sequence[InstanceRow]) -> Path:
    path = Path(out_dir) / ROWS_FILE
    frame = pd.DataFrame([asdict(row) for row in rows], columns=list(InstanceRow.__dataclass_fields__))
    frame.to_parquet(path, index=False)
    return path


def read_rows(out_dir: str | Path) -> list[InstanceRow]:
    frame = pd.read_parquet(Path(out_dir) / ROWS_FILE)
    return [
        InstanceRow(**{k: (None if pd.isna(v) else v) for k, v in record.items()})
        for record in frame.to_dict("records")
    ]


def _store(client, rows: Iterable[InstanceRow]) -> list[InstanceRow]:
    stored = []
    for row in rows:
        if row.sr_file and not row.stored:
            try:
                store_instance(client, pydicom.dcmread(row.sr_file))
                row = replace(row, stored=True, store_error=None)
            except InstanceError as error:
                logger.error(
                    "SR %s of instance %s not stored: %s", row.sr_sop_instance_uid, row.sop_instance_uid, error
                )
                row = replace(row, stored=False, store_error=str(error))
        stored.append(row)
    return stored


def report_to_pacs(
    location: str,
    model: FetchedModel,
    out_dir: str | Path,
    study_uid: Optional[str] = None,
    modalities: Sequence[str] = (),
    store: bool = False,
    ood_policy: str = "reject",
    environ: Mapping[str, str] = os.environ,
    timeout_s: float = 30.0,
) -> list[InstanceRow]:
    """Score one study (`study_uid`) or every study of `modalities` on the DICOMweb server at
    `location`; write OUT/sr/*.dcm and OUT/instances.parquet; with `store`, STOW each SR into its study.
    Raises DicomWebError when the query itself fails (nothing was scored)."""
    if ood_policy not in OOD_POLICIES:
        raise ValueError(f"ood_policy={ood_policy!r} is not one of {', '.join(OOD_POLICIES)}")
    client = connect(location, timeout_s=timeout_s, environ=environ)
    refs = query_instances(client, study_uid, modalities)
    if not refs:
        raise DicomWebError(
            f"no instances found for {'study ' + study_uid if study_uid else 'modalities ' + ','.join(modalities)}"
        )
    sr_dir = Path(out_dir) / SR_DIR
    sr_dir.mkdir(parents=True, exist_ok=True)
    series_uids: dict[str, str] = {}
    rows = [_report_instance(client, ref, model, sr_dir, series_uids, ood_policy) for ref in refs]
    for row in rows:
        logger.info(
            "instance %s (%s): %s%s",
            row.sop_instance_uid,
            row.modality,
            row.status,
            f" ({row.reason})" if row.reason else "",
        )
    if store:
        rows = _store(client, rows)
    write_rows(out_dir, rows)
    return rows


def store_srs(location: str, out_dir: str | Path, environ: Mapping[str, str] = os.environ) -> list[InstanceRow]:
    """STOW-RS again the SRs of OUT that are not stored yet (after a failed store); updates OUT's rows."""
    rows = _store(connect(location, environ=environ), read_rows(out_dir))
    write_rows(out_dir, rows)
    return rows


def describe(rows: Sequence[InstanceRow], out_dir: str | Path) -> str:
    """What the terminal says after a PACS run: counts, where the rows and SRs are, each problem by UID."""
    counts = summary(rows)
    lines = [
        f"instances:    {len(rows)} ("
        + ", ".join(f"{counts[status]} {status}" for status in sorted(counts) if not status.startswith("sr_"))
        + ")",
        f"SRs:          {counts['sr_written']} written to {Path(out_dir) / SR_DIR}, {counts['sr_stored']} stored",
        f"rows:         {Path(out_dir) / ROWS_FILE}",
    ]
    for row in rows:
        if row.reason or row.store_error:
            lines.append(f"  {row.sop_instance_uid} ({row.modality}): {row.status}, {row.store_error or row.reason}")
    return "\n".join(lines)


def summary(rows: Sequence[InstanceRow]) -> dict[str, Any]:
    """Counts by status, and of SRs written and stored."""
    counts: dict[str, Any] = {}
    for row in rows:
        counts[row.status] = counts.get(row.status, 0) + 1
    counts["sr_written"] = sum(1 for row in rows if row.sr_file)
    counts["sr_stored"] = sum(1 for row in rows if row.stored)
    return counts
