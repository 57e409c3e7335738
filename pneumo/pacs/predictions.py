"""SRs for the DICOM films of a scored archive: `pneumo predict … --dicom-sr DIR`.

    written = write_srs(pd.read_parquet("scores/predictions").to_dict("records"), "scores/sr")

Each row is one of `pneumo predict`'s (path, status, error, probability, threshold, in_distribution,
ood_score, model_name, model_version, model_uri): a `scored` or `refused_ood` DICOM film gets an SR
in its study (the SRs of one study share a series), named DIR/<SR SOP Instance UID>.dcm; every other
row says why it has none.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import generate_uid

from pneumo.data.manifest import read_bytes
from pneumo.pacs.sr import FilmResult, build_sr, part10_bytes
from pneumo.paths import is_uri

WITH_SR = ("scored", "refused_ood")  # the statuses whose films get an SR
NOT_SCORED = "not scored: "  # how predict's refusals begin; the SR says "No finding was made: …"


@dataclass(frozen=True)
class WrittenSr:
    path: str  # the film (predict's row path)
    sr_file: Optional[str]  # DIR/<uid>.dcm, or None
    reason: Optional[str] = None  # why there is no SR


def result_of_row(row: Mapping[str, Any]) -> FilmResult:
    """One `pneumo predict` row -> what build_sr needs."""
    error = row.get("error") or None
    return FilmResult(
        probability=row.get("probability") if row.get("status") == "scored" else None,
        threshold=float(row["threshold"]),
        model_name=str(row["model_name"]),
        model_version=str(row["model_version"]),
        model_uri=str(row["model_uri"]),
        in_distribution=row.get("in_distribution"),
        ood_score=row.get("ood_score"),
        reason=error.removeprefix(NOT_SCORED) if error else None,
    )


def _header(path: str) -> pydicom.Dataset:
    source = io.BytesIO(read_bytes(path)) if is_uri(path) else path
    return pydicom.dcmread(source, stop_before_pixels=True)


def write_srs(rows: Iterable[Mapping[str, Any]], sr_dir: str | Path) -> list[WrittenSr]:
    """An SR file per scored or refused DICOM film among `rows`; one WrittenSr per row."""
    directory = Path(sr_dir)
    directory.mkdir(parents=True, exist_ok=True)
    series: dict[str, str] = {}  # study UID -> the SR series of this run in that study
    written = []
    for row in rows:
        path = str(row["path"])
        if row.get("status") not in WITH_SR:
            written.append(WrittenSr(path, None, f"no SR for a {row.get('status')} film"))
            continue
        try:
            header = _header(path)
            sr = build_sr(
                header, result_of_row(row), series.setdefault(str(header.get("StudyInstanceUID")), generate_uid())
            )
        except (InvalidDicomError, ValueError, OSError) as error:
            reason = (
                "not DICOM: an SR needs the film's DICOM header" if isinstance(error, InvalidDicomError) else str(error)
            )
            written.append(WrittenSr(path, None, reason))
            continue
        target = directory / f"{sr.SOPInstanceUID}.dcm"
        target.write_bytes(part10_bytes(sr))
        written.append(WrittenSr(path, str(target)))
    return written


def write_srs_for_output(out: str, sr_dir: str | Path) -> list[WrittenSr]:
    """write_srs over the rows `pneumo predict` wrote to OUT/predictions (local or an object store)."""
    import pyarrow.parquet as pq

    rows = pq.read_table(f"{out.rstrip('/')}/predictions").to_pylist()
    return write_srs(rows, sr_dir)


def describe(written: list[WrittenSr], sr_dir: str | Path) -> str:
    """One line for the terminal: how many SRs, where, and how many films got none."""
    made = sum(entry.sr_file is not None for entry in written)
    return (
        f"DICOM SRs:    {made} written to {sr_dir}; files without one (not DICOM, or not scored): {len(written) - made}"
    )
