"""Decoding (every image mode and every bad input) and the batched augmentation."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from pneumo.config import AugmentConfig
from pneumo.data.batch_transforms import augment, normalize
from pneumo.data.transforms import ImageDecodeError, Preprocessing, decode_image

GRAY = Preprocessing(in_chans=1, image_size=32, mean=(0.5,), std=(0.25,))
RGB = Preprocessing(in_chans=3, image_size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def gradient(mode: str = "L", size: int = 64) -> Image.Image:
    ramp = np.tile(np.linspace(0, 255, size, dtype=np.uint8), (size, 1))
    return Image.fromarray(ramp, "L").convert(mode)


@pytest.mark.parametrize("mode", ["L", "RGB", "CMYK", "P", "RGBA", "LA"])
def test_every_common_mode_decodes_to_model_shape(mode):
    fmt = "JPEG" if mode in ("L", "RGB", "CMYK") else "PNG"
    for spec in (GRAY, RGB):
        out = decode_image(encode(gradient(mode), fmt), spec)
        assert out.shape == (spec.in_chans, 32, 32) and out.dtype == np.uint8
        assert out[..., 0].mean() < 40 and out[..., -1].mean() > 200  # the ramp survives


def test_sixteen_bit_film_is_stretched_not_clipped():
    pixels = np.tile(np.linspace(1000, 4000, 64), (64, 1)).astype(np.uint16)
    image = Image.fromarray(pixels)  # uint16 -> mode I;16
    assert image.mode == "I;16"
    out = decode_image(encode(image), GRAY)
    assert out.min() <= 5 and out.max() >= 250


def test_rgba_transparency_becomes_black():
    image = Image.new("RGBA", (16, 16), (255, 255, 255, 0))
    assert decode_image(encode(image), GRAY).max() == 0


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty"),
        (b"this is not an image at all", "not a readable image"),
    ],
)
def test_bad_bytes_raise_with_reason(data, reason):
    with pytest.raises(ImageDecodeError, match=reason):
        decode_image(data, GRAY)


def test_truncated_jpeg_is_rejected():
    data = encode(gradient("L", 256), "JPEG")
    with pytest.raises(ImageDecodeError, match="not a readable image"):
        decode_image(data[: len(data) // 2], GRAY)


def test_decompression_bomb_is_rejected_before_decoding():
    data = encode(Image.new("L", (3000, 3000)), "PNG")
    with pytest.raises(ImageDecodeError, match="exceeds the limit"):
        decode_image(data, GRAY, max_pixels=1_000_000)


def test_normalize_uses_the_given_statistics():
    images = torch.full((2, 1, 4, 4), 255, dtype=torch.uint8)
    assert torch.allclose(normalize(images, GRAY), torch.full((2, 1, 4, 4), 2.0))


def test_augment_is_reproducible_and_bounded():
    images = torch.rand(4, 1, 32, 32)
    settings = AugmentConfig()
    first = augment(images.clone(), settings, torch.Generator().manual_seed(7))
    again = augment(images.clone(), settings, torch.Generator().manual_seed(7))
    other = augment(images.clone(), settings, torch.Generator().manual_seed(8))
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert first.shape == images.shape and first.min() >= 0 and first.max() <= 1


def test_augment_with_zero_ranges_is_identity():
    images = torch.rand(3, 1, 16, 16)
    still = AugmentConfig(rotation_deg=0, scale=0, translate=0, brightness=0, contrast=0)
    assert torch.allclose(augment(images, still, torch.Generator().manual_seed(0)), images, atol=1e-5)
