"""An archive the way hospitals keep one: films at several depths, JPEG, PNG and DICOM (some without
a suffix), under NORMAL/PNEUMONIA folders or none, with the bad files every real archive has."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from bench.films import dicom_bytes

FILMS_PER_CLASS = 3  # JPEGs in site_a/<CLASS>/, and the same films as PNG or DICOM in site_b/2024/03/<CLASS>/
BAD_FILES = {  # relative path -> status: every one gets its row
    "bad/corrupt.jpeg": "unreadable",
    "bad/truncated.jpeg": "unreadable",
    "bad/zero-byte.png": "unreadable",
    "bad/notes.txt": "unreadable",
    "bad/no-pixels.dcm": "unreadable",
    "other/white.png": "refused_ood",  # not a chest film: the gate refuses it under ood_policy reject
}


def synthetic_films(root: Path, split: str, label: str) -> list[Path]:
    return sorted((root / split / label).glob("*.jpeg"))


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _no_pixel_dicom() -> bytes:
    """A DICOM header that promises a film and holds no pixel data."""
    import pydicom

    dataset = pydicom.dcmread(io.BytesIO(dicom_bytes(np.zeros((8, 8), np.uint16))))
    del dataset.PixelData
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def write_archive(root: Path, synthetic_root: Path) -> dict[str, tuple[str, Optional[str]]]:
    """The mixed archive under `root`; returns {relative path: (expected status, true label)}."""
    expected: dict[str, tuple[str, Optional[str]]] = {}

    def put(relative: str, data: bytes, status: str, label: Optional[str]) -> None:
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(data)
        expected[relative] = (status, label)

    for label in ("NORMAL", "PNEUMONIA"):
        for i, source in enumerate(synthetic_films(synthetic_root, "test", label)[:FILMS_PER_CLASS]):
            put(f"site_a/{label}/{source.name}", source.read_bytes(), "scored", label)
            pixels = np.asarray(Image.open(source).convert("L"))
            if i % 2:
                put(f"site_b/2024/03/{label}/{source.stem}.png", _png(pixels), "scored", label)
            else:  # as PACS exports write them, without a suffix; the window shows the stored values as they are
                film = dicom_bytes(pixels.astype(np.uint16), 8, WindowCenter=128, WindowWidth=256)
                put(f"site_b/2024/03/{label}/IM{i:04d}", film, "scored", label)
    unsorted = synthetic_films(synthetic_root, "val", "NORMAL")[0]
    put("unsorted/a/b/film.jpg", unsorted.read_bytes(), "scored", None)
    good = synthetic_films(synthetic_root, "test", "NORMAL")[-1].read_bytes()
    contents = {
        "bad/corrupt.jpeg": b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4,
        "bad/truncated.jpeg": good[: len(good) // 3],
        "bad/zero-byte.png": b"",
        "bad/notes.txt": b"films from ward 3, see the request forms\n",
        "bad/no-pixels.dcm": _no_pixel_dicom(),
        "other/white.png": _png(np.full((64, 64), 255, np.uint8)),
    }
    for relative, data in contents.items():
        put(relative, data, BAD_FILES[relative], None)
    (root / "site_a" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")  # hidden: skipped
    return expected
