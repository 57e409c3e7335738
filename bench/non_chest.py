"""Images that are not frontal chest films, as the bytes a client would send: the CT, MR, nuclear
medicine and extremity radiographs in pydicom's test data (pydicom-data), blank and constant images,
noise, gradients, rendered text, generated photographs of ordinary scenes, and chest films turned
upside down or with inverted polarity. The out-of-distribution gate should refuse them
(bench/monitoring_bench.py, tests/monitoring/test_monitoring_serve.py).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# one file per distinct image in pydicom's test data (several files hold one image in other encodings)
OTHER_MODALITY_FILES = (
    "CT_small.dcm",
    "693_UNCR.dcm",
    "MR_small.dcm",
    "MR2_UNCR.dcm",
    "JPEG2000.dcm",
    "RG3_UNCR.dcm",
    "liver_1frame.dcm",
    "rtdose_1frame.dcm",
)
REAL_CHEST_FILE = "RG1_UNCR.dcm"  # a real PA chest radiograph (CR, MONOCHROME1) in pydicom's test data
SIZE = 256


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def dicom_files(names: tuple[str, ...] = OTHER_MODALITY_FILES) -> dict[str, bytes]:
    """name -> bytes of the pydicom test files that exist here (pydicom-data adds most of them)."""
    from pydicom.data import get_testdata_file

    found = {}
    for name in names:
        path = get_testdata_file(name)
        if path:
            found[f"dicom/{name}"] = Path(path).read_bytes()
    return found


def constant_and_noise(rng: np.random.Generator) -> dict[str, bytes]:
    images = {f"constant/{value}": np.full((SIZE, SIZE), value, np.uint8) for value in (0, 40, 128, 200, 255)}
    for i in range(3):
        images[f"noise/uniform-{i}"] = rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8)
        images[f"noise/gaussian-{i}"] = np.clip(rng.normal(128, 40, (SIZE, SIZE)), 0, 255).astype(np.uint8)
        images[f"noise/salt-pepper-{i}"] = (rng.random((SIZE, SIZE)) < 0.5).astype(np.uint8) * 255
    return {name: png(pixels) for name, pixels in images.items()}


def gradients() -> dict[str, bytes]:
    ramp = np.linspace(0, 255, SIZE)
    y, x = np.meshgrid(ramp, ramp, indexing="ij")
    radial = np.hypot(x - 128, y - 128)
    images = {
        "horizontal": x,
        "vertical": y,
        "diagonal": (x + y) / 2,
        "radial": 255 - radial * 255 / radial.max(),
        "vertical-reversed": 255 - y,
        "rings": 127.5 + 127.5 * np.sin(radial / 8),
    }
    return {f"gradient/{name}": png(pixels.astype(np.uint8)) for name, pixels in images.items()}


def rendered_text(rng: np.random.Generator) -> dict[str, bytes]:
    lines = [
        "PATIENT REPORT",
        "Findings: no acute",
        "cardiopulmonary process.",
        "Signed: Dr. A. Example",
        "Lorem ipsum dolor sit amet",
        "consectetur adipiscing elit",
    ]
    images = {}
    for i, (ink, paper) in enumerate([(0, 255), (255, 0), (30, 230), (220, 20)]):
        page = Image.new("L", (SIZE, SIZE), paper)
        draw = ImageDraw.Draw(page)
        font = ImageFont.load_default(size=int(rng.integers(12, 24)))
        for row, line in enumerate(lines):
            draw.text((8, 10 + row * 40), line, fill=ink, font=font)
        images[f"text/page-{i}"] = png(np.asarray(page))
    return images


def scenes(rng: np.random.Generator, count: int = 8) -> dict[str, bytes]:
    """Generated colour photographs: sky, ground, sun, houses and trees, with sensor noise."""
    images = {}
    for i in range(count):
        scene = Image.new("RGB", (SIZE, SIZE))
        draw = ImageDraw.Draw(scene)
        horizon = int(rng.integers(110, 180))
        for row in range(horizon):  # sky: lighter towards the horizon
            shade = int(120 + 120 * row / horizon)
            draw.line([(0, row), (SIZE, row)], fill=(shade // 2, int(shade / 1.3), 255))
        draw.rectangle([0, horizon, SIZE, SIZE], fill=tuple(int(v) for v in rng.integers(40, 140, 3)))
        sun = rng.integers(20, 200, 2)
        draw.ellipse([sun[0], sun[1] % horizon, sun[0] + 30, sun[1] % horizon + 30], fill=(255, 230, 120))
        for _ in range(int(rng.integers(2, 6))):  # houses and trees
            left, width, height = int(rng.integers(0, 220)), int(rng.integers(20, 60)), int(rng.integers(30, 90))
            colour = tuple(int(v) for v in rng.integers(0, 255, 3))
            if rng.random() < 0.5:
                draw.rectangle([left, horizon - height, left + width, horizon + 10], fill=colour)
            else:
                draw.ellipse([left, horizon - height, left + width, horizon], fill=(20, int(rng.integers(90, 160)), 30))
        pixels = np.asarray(scene).astype(np.float32) + rng.normal(0, 6, (SIZE, SIZE, 3))
        buffer = io.BytesIO()
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=85)
        images[f"photo/scene-{i}"] = buffer.getvalue()
    return images


def turned_chest_films(films: dict[str, np.ndarray]) -> dict[str, bytes]:
    """Chest films (name -> uint8 (H, W)) upside down and with inverted polarity."""
    turned = {}
    for name, pixels in films.items():
        turned[f"upside-down/{name}"] = png(np.ascontiguousarray(pixels[::-1]))
        turned[f"inverted/{name}"] = png(255 - pixels)
    return turned


def non_chest_images(chest_films: dict[str, np.ndarray], seed: int = 0) -> dict[str, bytes]:
    """The whole set: category/name -> bytes as a client would send them."""
    rng = np.random.default_rng(seed)
    return {
        **dicom_files(),
        **constant_and_noise(rng),
        **gradients(),
        **rendered_text(rng),
        **scenes(rng),
        **turned_chest_films(chest_films),
    }
