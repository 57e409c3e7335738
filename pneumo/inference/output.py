"""The output folder of `pneumo predict`, local or on an object store (pyarrow.fs):

    OUT/predict.json                   whose results these are (model name, version, URI, weights digest)
    OUT/predictions/part-*.parquet     the rows, written a part at a time, each part whole or not at all
    OUT/predictions.csv                the same rows as one CSV (--csv), written at the end
    OUT/explanations/*.png             Grad-CAM overlays of the films at or above the threshold (--explain)
    OUT/summary.json                   counts by status and label, throughput, timings, model, metrics

A part is written under a temporary name and renamed when complete, so a job killed at any moment
leaves only whole parts: `--resume` reads their paths and scores the rest. `pd.read_parquet(OUT /
"predictions")` (or pyarrow, DuckDB, Spark) reads them as one table.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any, Optional

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from pyarrow import fs

from pneumo.paths import is_uri

ROW_FIELDS = [
    ("path", pa.string()),  # the input file (absolute path or URI)
    ("sha256", pa.string()),  # of the file's bytes (of the pixels for an .npz entry); empty when unreadable
    ("status", pa.string()),  # scored | refused_ood | unreadable | missing | failed
    ("error", pa.string()),  # why a film has no probability; null when scored
    ("probability", pa.float64()),  # calibrated P(pneumonia); null unless scored
    ("label", pa.string()),  # NORMAL | PNEUMONIA at the model's threshold; null unless scored
    ("threshold", pa.float64()),  # the model's decision threshold
    ("in_distribution", pa.bool_()),  # the gate's verdict; null when the model has no reference profile
    ("ood_score", pa.float64()),  # out-of-distribution score (above the cut-off: out of distribution)
    ("model_name", pa.string()),
    ("model_version", pa.string()),
    ("model_uri", pa.string()),  # an alias pinned to its version
    ("runtime", pa.string()),  # torch | onnxruntime | openvino | torch-cuda
    ("true_label", pa.string()),  # from the folder names or the manifest's label column; null when unknown
]
SCORED_SCHEMA = pa.schema([*ROW_FIELDS, ("overlay_png", pa.binary())])  # what the scoring actors return
OUTPUT_SCHEMA = pa.schema([*ROW_FIELDS, ("explanation", pa.string())])  # the overlay's path under OUT, if any
OWNER_FILE, SUMMARY_FILE, CSV_FILE = "predict.json", "summary.json", "predictions.csv"
PARTS_DIR, EXPLANATIONS_DIR = "predictions", "explanations"
PART_SUFFIX, TEMPORARY_SUFFIX = ".parquet", ".incomplete"


class OutputError(OSError):
    """The output folder cannot be written or holds what must not be mixed; the message says what to do."""


class OutputFolder:
    """OUT on its filesystem: small files, parts, listing."""

    def __init__(self, location: str):
        self.location = location
        if is_uri(location):
            self.filesystem, self.root = fs.FileSystem.from_uri(location)
        else:
            self.filesystem, self.root = fs.LocalFileSystem(), str(Path(location).expanduser().resolve())

    def path(self, *parts: str) -> str:
        return str(PurePosixPath(self.root, *parts))

    def shown(self, *parts: str) -> str:
        """A location as the user gave it (for messages and summary.json)."""
        return (
            str(PurePosixPath(self.location, *parts))
            if not is_uri(self.location)
            else "/".join([self.location.rstrip("/"), *parts])
        )

    def exists(self, *parts: str) -> bool:
        return self.filesystem.get_file_info(self.path(*parts)).type != fs.FileType.NotFound

    def is_empty(self) -> bool:
        info = self.filesystem.get_file_info(self.root)
        if info.type == fs.FileType.NotFound:
            return True
        return not self.filesystem.get_file_info(fs.FileSelector(self.root, allow_not_found=True))

    def read_json(self, name: str) -> Optional[dict[str, Any]]:
        if not self.exists(name):
            return None
        with self.filesystem.open_input_stream(self.path(name)) as stream:
            return json.loads(stream.read())

    @contextlib.contextmanager
    def open_whole(self, relative: str) -> Iterator[pa.NativeFile]:
        """A stream to OUT/relative that appears there only once complete: written under a temporary
        name, renamed at the end (object stores publish on close); on an error nothing appears."""
        final = self.path(relative)
        temporary = final + TEMPORARY_SUFFIX
        try:
            self.filesystem.create_dir(str(PurePosixPath(final).parent), recursive=True)
            with self.filesystem.open_output_stream(temporary) as stream:
                yield stream
            self.filesystem.move(temporary, final)
        except OSError as error:
            self._discard(temporary)
            reason = getattr(error, "strerror", None) or error
            raise OutputError(f"cannot write {self.shown(relative)} ({reason})") from None
        except BaseException:
            self._discard(temporary)
            raise

    def write_bytes(self, relative: str, data: bytes) -> None:
        with self.open_whole(relative) as stream:
            stream.write(data)

    def write_json(self, name: str, values: dict[str, Any]) -> None:
        self.write_bytes(name, json.dumps(values, indent=2, sort_keys=True).encode())

    def _discard(self, path: str) -> None:
        with contextlib.suppress(OSError):
            self.filesystem.delete_file(path)

    def part_paths(self) -> list[str]:
        """The whole parts, sorted; leftovers of a killed write are deleted."""
        selector = fs.FileSelector(self.path(PARTS_DIR), allow_not_found=True)
        parts = []
        for info in self.filesystem.get_file_info(selector):
            if info.path.endswith(TEMPORARY_SUFFIX):
                self._discard(info.path)
            elif info.path.endswith(PART_SUFFIX):
                parts.append(info.path)
        return sorted(parts)

    def read_rows(self, columns: Optional[list[str]] = None) -> pa.Table:
        """Every written row (the chosen columns), one part at a time."""
        tables = [pq.read_table(p, columns=columns, filesystem=self.filesystem) for p in self.part_paths()]
        schema = pa.schema([OUTPUT_SCHEMA.field(c) for c in columns]) if columns else OUTPUT_SCHEMA
        return pa.concat_tables([t.cast(schema) for t in tables]) if tables else schema.empty_table()


def part_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table.cast(OUTPUT_SCHEMA), sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def explanation_name(path: str) -> str:
    """explanations/<file stem>-<10 hex of the path>.png: unique per input path, readable."""
    stem = PurePosixPath(path.split("#", 1)[0]).stem[:60] or "film"
    return f"{EXPLANATIONS_DIR}/{stem}-{hashlib.sha1(path.encode()).hexdigest()[:10]}.png"


class PartWriter:
    """Rows in, parts of `part_rows` out; `close` writes the rest. Returns nothing it has not written."""

    def __init__(self, folder: OutputFolder, part_rows: int):
        self.folder, self.part_rows = folder, part_rows
        self.pending: list[pa.Table] = []
        self.written_rows = 0
        self.prefix = f"part-{uuid.uuid4().hex[:8]}"  # a resumed run's parts never take an earlier name
        self.count = 0

    def add(self, scored: pa.Table) -> None:
        """Scored rows (SCORED_SCHEMA): overlays are written out, the rows kept until a part is full."""
        self.pending.append(self._with_explanations(scored))
        while sum(len(t) for t in self.pending) >= self.part_rows:
            rows = pa.concat_tables(self.pending)
            self.pending = [rows.slice(self.part_rows)]
            self._write(rows.slice(0, self.part_rows))

    def _with_explanations(self, scored: pa.Table) -> pa.Table:
        names = []
        for path, png in zip(scored["path"].to_pylist(), scored["overlay_png"].to_pylist()):
            if png is None:
                names.append(None)
                continue
            names.append(explanation_name(path))
            self.folder.write_bytes(names[-1], png)
        return scored.drop_columns(["overlay_png"]).append_column("explanation", pa.array(names, pa.string()))

    def flush(self) -> None:
        """Write the rows kept so far as a part of their own."""
        rows = pa.concat_tables(self.pending) if self.pending else None
        self.pending = []
        if rows is not None and len(rows):
            self._write(rows)

    def _write(self, rows: pa.Table) -> None:
        try:
            self.count += 1
            self.folder.write_bytes(f"{PARTS_DIR}/{self.prefix}-{self.count:05d}{PART_SUFFIX}", part_bytes(rows))
        except BaseException:
            self.pending.insert(0, rows)  # not written: `flush` may try again, `unwritten` counts them
            raise
        self.written_rows += len(rows)

    @property
    def unwritten(self) -> int:
        return sum(len(t) for t in self.pending)


def write_csv(folder: OutputFolder) -> str:
    """predictions.csv from every part, streamed part by part; returns its location."""
    with folder.open_whole(CSV_FILE) as stream, pa_csv.CSVWriter(stream, OUTPUT_SCHEMA) as writer:
        for part in folder.part_paths():
            writer.write_table(pq.read_table(part, filesystem=folder.filesystem).cast(OUTPUT_SCHEMA))
    return folder.shown(CSV_FILE)
