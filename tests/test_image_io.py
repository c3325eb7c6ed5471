"""read_image: every format and colour mode to uint8 RGB, typed errors for bad files."""
from __future__ import annotations

import io
import warnings

import cv2
import numpy as np
import pytest
from PIL import Image

from utils.faces.image_io import (
    IMAGE_EXTENSIONS,
    EmptyImageError,
    ImageReadError,
    ImageTooLargeError,
    read_image_scaled,
    NotAnImageError,
    TruncatedImageError,
    decode_image,
    read_image,
)


def _gradient(h=40, w=30) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 8 % 256, y * 6 % 256, (x + y) * 3 % 256], axis=2).astype(np.uint8)


@pytest.mark.parametrize("fmt,suffix", [("JPEG", ".jpg"), ("PNG", ".png"), ("BMP", ".bmp"), ("WEBP", ".webp")])
def test_formats_read_as_rgb(tmp_path, fmt, suffix):
    rgb = _gradient()
    path = tmp_path / f"face{suffix}"
    Image.fromarray(rgb).save(path, fmt, **({"quality": 100} if fmt in ("JPEG", "WEBP") else {}))
    out = read_image(path)
    assert out.dtype == np.uint8 and out.shape == (40, 30, 3)
    tolerance = 0 if fmt in ("PNG", "BMP") else 12
    assert np.abs(out.astype(int) - rgb).mean() <= tolerance


def test_grey_becomes_three_equal_channels(tmp_path):
    grey = _gradient()[:, :, 0]
    Image.fromarray(grey).save(tmp_path / "g.png")
    out = read_image(tmp_path / "g.png")
    assert out.shape == (40, 30, 3)
    assert np.array_equal(out[:, :, 0], grey) and np.array_equal(out[:, :, 1], grey)


def test_rgba_is_flattened_onto_white(tmp_path):
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:5, :, 3] = 255  # top half opaque red, bottom half transparent
    Image.fromarray(rgba).save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert out.shape == (10, 10, 3)
    assert tuple(out[0, 0]) == (200, 0, 0)
    assert tuple(out[9, 9]) == (255, 255, 255)


def test_sixteen_bit_is_scaled_to_eight(tmp_path):
    wide = (np.arange(100, dtype=np.uint16).reshape(10, 10) * 600)
    Image.fromarray(wide).save(tmp_path / "w.png")
    out = read_image(tmp_path / "w.png")
    assert out.dtype == np.uint8 and out.shape == (10, 10, 3)
    assert out[0, 0, 0] == 0 and out[9, 9, 0] == round(99 * 600 / 65535 * 255)


def test_cmyk_jpeg_converts(tmp_path):
    Image.fromarray(_gradient()).convert("CMYK").save(tmp_path / "c.jpg", quality=100)
    out = read_image(tmp_path / "c.jpg")
    assert out.shape == (40, 30, 3)
    assert np.abs(out.astype(int) - _gradient()).mean() < 12


def test_exif_orientation_is_applied(tmp_path):
    rgb = np.zeros((20, 40, 3), np.uint8)  # wide image
    image = Image.fromarray(rgb)
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    image.save(tmp_path / "r.jpg", exif=exif)
    assert read_image(tmp_path / "r.jpg").shape == (40, 20, 3)


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_large_images_are_shrunk_while_decoding(tmp_path, suffix):
    ys, xs = np.mgrid[0:2000, 0:3000]
    rgb = np.stack([xs * 255 // 3000, ys * 255 // 2000, (xs + ys) * 255 // 5000], axis=2).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / f"big{suffix}", quality=95)
    small, scale = read_image_scaled(tmp_path / f"big{suffix}", max_side=1000)
    assert small.shape == (667, 1000, 3) and scale == pytest.approx(1 / 3)
    expected = cv2.resize(read_image(tmp_path / f"big{suffix}"), (1000, 667), interpolation=cv2.INTER_AREA)
    assert np.abs(small.astype(int) - expected).mean() < 2
    assert read_image_scaled(tmp_path / f"big{suffix}", max_side=4000)[1] == 1.0  # smaller than the cap: as is


def test_exif_orientation_is_applied_to_shrunk_images(tmp_path):
    image = Image.fromarray(np.zeros((2000, 3000, 3), np.uint8))
    exif = image.getexif()
    exif[0x0112] = 6
    image.save(tmp_path / "r.jpg", exif=exif)
    rgb, scale = read_image_scaled(tmp_path / "r.jpg", max_side=1000)
    assert rgb.shape == (1000, 667, 3) and scale == pytest.approx(1 / 3)


def test_empty_file(tmp_path):
    (tmp_path / "e.jpg").write_bytes(b"")
    with pytest.raises(EmptyImageError, match="e.jpg"):
        read_image(tmp_path / "e.jpg")
    with pytest.raises(EmptyImageError):
        decode_image(b"", "nothing")


def test_truncated_jpeg(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(_gradient(200, 200)).save(buffer, "JPEG")
    (tmp_path / "t.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(TruncatedImageError, match="t.jpg"):
        read_image(tmp_path / "t.jpg")


def test_not_an_image(tmp_path):
    (tmp_path / "n.jpg").write_text("this is a text file, not a face")
    with pytest.raises(NotAnImageError, match="n.jpg"):
        read_image(tmp_path / "n.jpg")


def test_missing_path_and_directory(tmp_path):
    with pytest.raises(ImageReadError, match="no such file"):
        read_image(tmp_path / "missing.jpg")
    with pytest.raises(ImageReadError, match="not a file"):
        read_image(tmp_path)


def test_errors_are_value_errors_with_path(tmp_path):
    (tmp_path / "n.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(ValueError) as info:
        read_image(tmp_path / "n.png")
    assert info.value.path == str(tmp_path / "n.png")


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow warns before our check
@pytest.mark.parametrize("limit", [1000, 100])  # 1200 pixels: Pillow's warning zone, then its error zone
def test_decompression_bomb_is_a_typed_error(tmp_path, monkeypatch, limit):
    Image.fromarray(_gradient()).save(tmp_path / "big.png")  # 40 x 30 = 1200 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    with pytest.raises(ImageTooLargeError, match="big.png: image too large"):
        read_image(tmp_path / "big.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # DecompressionBombWarning raised as an exception
        with pytest.raises(ImageTooLargeError, match="decompression bomb"):
            decode_image((tmp_path / "big.png").read_bytes(), "bytes.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1200)
    assert read_image(tmp_path / "big.png").shape == (40, 30, 3)


def test_every_listed_extension_decodes(tmp_path):
    formats = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".webp": "WEBP", ".gif": "GIF",
               ".tif": "TIFF", ".tiff": "TIFF", ".ppm": "PPM", ".pgm": "PPM"}
    assert set(IMAGE_EXTENSIONS) == set(formats)
    for suffix, fmt in formats.items():
        image = Image.fromarray(_gradient())
        (image.convert("L") if suffix == ".pgm" else image).save(tmp_path / f"f{suffix}", fmt)
        assert read_image(tmp_path / f"f{suffix}").shape == (40, 30, 3), suffix
