"""Image preprocessing shared by training, evaluation and serving, so they can never drift apart.

`decode_image` turns file bytes into a resized uint8 array (runs in Ray Data tasks and in the Serve
replica). No torch here: every Ray Data task process imports this module, and torch would add ~1 s
to each (the batch tensor half, `normalize` and `augment`, is pneumo/data/batch_transforms.py).

Films are decoded at the size the model needs, not at full size: a JPEG is decoded in the DCT domain
at 1/2, 1/4 or 1/8 scale (Pillow's `draft`) down to no less than `REDUCING_GAP` times the model's
side, then resized; other formats are box-reduced to that size before the resize. This is how
Pillow's own `thumbnail` works; the pixels differ from a full-size decode by less than a change of
resize filter does (tests/data/test_decode_accuracy.py), and full-size films decode several times
faster (bench/data_bench.py).
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from pneumo.config import MAX_IMAGE_PIXELS
from pneumo.data.dicom import decode_dicom, is_dicom


class ImageDecodeError(ValueError):
    """Bytes that are not a usable image: the message says why."""


@dataclass(frozen=True)
class Preprocessing:
    """How pixels reach the model; stored with every checkpoint."""

    in_chans: int  # 1 grayscale, 3 RGB
    image_size: int  # square side, px
    mean: tuple[float, ...]  # per channel, on [0, 1] pixels
    std: tuple[float, ...]
    interpolation: str = "bilinear"  # bilinear | bicubic | nearest

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> Preprocessing:
        return cls(**{**values, "mean": tuple(values["mean"]), "std": tuple(values["std"])})


_RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}
REDUCING_GAP = 2  # films are decoded or box-reduced to >= this many times the model's side before the resize


def _to_8bit(image: Image.Image) -> Image.Image:
    """16-bit and float films (I;16, I, F) are stretched to 8 bits by their own min and max."""
    pixels = np.asarray(image, dtype=np.float64)
    low, high = float(pixels.min()), float(pixels.max())
    scaled = (pixels - low) / (high - low) * 255.0 if high > low else np.zeros_like(pixels)
    return Image.fromarray(scaled.round().astype(np.uint8), mode="L")


def _to_mode(image: Image.Image, in_chans: int) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        image = _to_8bit(image)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))  # film background is black
        image = Image.alpha_composite(background, image)
    mode = "L" if in_chans == 1 else "RGB"
    return image if image.mode == mode else image.convert(mode)


def decode_image(data: bytes, preprocessing: Preprocessing, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """JPEG/PNG/DICOM/… bytes -> uint8 array (C, H, W) at the model's size and channels.

    Raises ImageDecodeError for empty, truncated or non-image bytes and decompression bombs.
    """
    if not data:
        raise ImageDecodeError("empty file")
    try:
        with decode_dicom(data, max_pixels) if is_dicom(data) else Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise ImageDecodeError(f"{width}x{height} pixels exceeds the limit of {max_pixels}")
            film_box = _draft(image, preprocessing)
            image.load()
            image = _to_mode(ImageOps.exif_transpose(image), preprocessing.in_chans)
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:  # its message is the repr of our in-memory buffer: say what it means
        raise ImageDecodeError("not a readable image (not JPEG, PNG, DICOM or another format Pillow reads)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ImageDecodeError(f"not a readable image ({error})") from None
    return _resize(image, preprocessing, film_box)


def _draft(image: Image.Image, preprocessing: Preprocessing) -> Optional[tuple[float, float, float, float]]:
    """Have a JPEG decode in the DCT domain at the smallest 1/2, 1/4 or 1/8 scale that keeps
    REDUCING_GAP x the model's side (entropy decoding stays, most of the inverse DCT goes). Returns the
    film's exact region in the scaled image (its last row and column are partial) for the resize,
    else None. JPEGs with an EXIF rotation are decoded at full size: the partial edge would turn too."""
    if image.format != "JPEG" or image.getexif().get(ExifTags.Base.Orientation, 1) != 1:
        return None
    side = REDUCING_GAP * preprocessing.image_size
    drafted = image.draft("L" if preprocessing.in_chans == 1 else "RGB", (side, side))
    return drafted[1] if drafted else None


def prepare_array(pixels: np.ndarray, preprocessing: Preprocessing) -> np.ndarray:
    """An (H, W) or (H, W, 3) image array (MedMNIST .npz) -> uint8 (C, H, W) like `decode_image`."""
    if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] not in (1, 3)):
        raise ImageDecodeError(f"array of shape {pixels.shape} is not an (H, W) or (H, W, 3) image")
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    image = (
        Image.fromarray(pixels) if pixels.dtype == np.uint8 else _to_8bit(Image.fromarray(pixels.astype(np.float32)))
    )
    return _resize(_to_mode(image, preprocessing.in_chans), preprocessing)


def _resize(
    image: Image.Image, preprocessing: Preprocessing, film_box: Optional[tuple[float, float, float, float]] = None
) -> np.ndarray:
    size = (preprocessing.image_size, preprocessing.image_size)
    resized = np.asarray(
        image.resize(size, _RESAMPLE[preprocessing.interpolation], box=film_box, reducing_gap=REDUCING_GAP),
        dtype=np.uint8,
    )
    return resized[None] if resized.ndim == 2 else resized.transpose(2, 0, 1)
