"""Reading images into 8-bit RGB arrays, with typed errors for bad files."""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

Image.MAX_IMAGE_PIXELS = 200_000_000  # large photos are fine; decompression bombs are not
# The long side at which whole photos are read for face alignment (aligned cache, image sources):
# larger ones are shrunk while decoding, which bounds memory and leaves any face far above 96 px.
ALIGN_MAX_SIDE = 4096

# Every file suffix read_image decodes; the one list that dataset scanners, the gallery and
# image-folder sources filter on.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm", ".pgm")


class ImageReadError(ValueError):
    """An image could not be read; ``path`` names the file, ``reason`` says why."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


class EmptyImageError(ImageReadError):
    """The file has no bytes."""


class TruncatedImageError(ImageReadError):
    """The file starts like an image but its data ends early or is damaged."""


class NotAnImageError(ImageReadError):
    """The file is not in any image format we can decode."""


class ImageTooLargeError(ImageReadError):
    """The image has more pixels than ``Image.MAX_IMAGE_PIXELS`` (a possible decompression bomb)."""


def _to_rgb8(image: Image.Image) -> np.ndarray:
    """Convert any Pillow mode (grey, 16-bit, RGBA, CMYK, palette) to uint8 RGB."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        wide = np.asarray(image, dtype=np.float64)
        top = 65535.0 if wide.max(initial=0) > 255 else 255.0
        grey = np.clip(wide / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if image.mode == "F":
        grey = np.clip(np.asarray(image) * (255.0 if np.asarray(image).max(initial=0) <= 1 else 1.0), 0, 255)
        return np.repeat(grey.astype(np.uint8)[:, :, None], 3, axis=2)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Flatten transparency onto white, as an image viewer would show it.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.array(image, dtype=np.uint8)


def _shrink_while_decoding(image: Image.Image, max_side: int) -> Image.Image:
    """image loaded with its long side shrunk to max_side. A JPEG is first decoded at 1/2, 1/4 or 1/8
    scale (libjpeg's own scaling: its full-size pixels are never in memory); then a box filter
    (area average, like cv2.INTER_AREA) brings it to the exact size."""
    width, height = image.size
    ratio = max_side / max(width, height)
    size = (max(1, round(width * ratio)), max(1, round(height * ratio)))
    image.draft(None, size)  # a no-op but for JPEG
    image.load()
    return image.resize(size, Image.Resampling.BOX)


def _decode(stream: io.BytesIO | Path, name: str | Path, max_side: int | None = None) -> tuple[np.ndarray, float]:
    """(RGB array, its size / the stored image's size)."""
    try:
        with Image.open(stream) as opened:
            image = opened
            pixels = image.width * image.height
            if Image.MAX_IMAGE_PIXELS and pixels > Image.MAX_IMAGE_PIXELS:
                # Pillow only warns between the limit and twice the limit: refuse those too, before decoding.
                raise Image.DecompressionBombError(
                    f"{pixels:,} pixels, more than the limit of {Image.MAX_IMAGE_PIXELS:,}")
            stored_side = max(image.size)
            if max_side and stored_side > max_side:
                image = _shrink_while_decoding(image, max_side)
                opened.close()  # frees the larger decoded pixels now
            else:
                image.load()
            ImageOps.exif_transpose(image, in_place=True)
            rgb = _to_rgb8(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        # From the check above, or from Image.open itself (past twice the limit, or warnings as errors).
        raise ImageTooLargeError(name, f"image too large, possible decompression bomb ({err})") from None
    except UnidentifiedImageError:
        raise NotAnImageError(name, "not a readable image (JPEG, PNG, BMP, WebP, TIFF, GIF)") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise TruncatedImageError(name, f"damaged or truncated image data ({err})") from None
    return rgb, max(rgb.shape[:2]) / stored_side


def decode_image(data: bytes, name: str | Path = "<bytes>", max_side: int | None = None) -> np.ndarray:
    """Decode image bytes to an (H, W, 3) uint8 RGB array (long side at most max_side, when given)."""
    if not data:
        raise EmptyImageError(name, "empty image data")
    return _decode(io.BytesIO(data), name, max_side)[0]


def check_image_file(path: str | Path) -> Path:
    """The path, if it is a regular file (or a link to one); ImageReadError saying what it is otherwise:
    a broken symbolic link, a folder named like an image, a missing file."""
    path = Path(path)
    if path.is_file():
        return path
    if path.is_symlink() and not path.exists():
        raise ImageReadError(path, f"a broken symbolic link (to {os.readlink(path)}), not an image file")
    if path.is_dir():
        raise ImageReadError(path, "a folder, not a file")
    raise ImageReadError(path, "no such file" if not path.exists() else "not a file")


def is_image_name(path: Path) -> bool:
    """Named like an image (IMAGE_EXTENSIONS, case-blind) and not hidden: listed as one, readable or not."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def read_image_scaled(path: str | Path, max_side: int | None = None) -> tuple[np.ndarray, float]:
    """Read an image file as an (H, W, 3) uint8 RGB array, EXIF orientation applied, with its scale.

    With max_side, a larger image is shrunk to that long side while it is decoded (a
    12000x9000 JPEG never occupies its full 324 MB); scale is the returned size divided by
    the file's size (1.0 when not shrunk): divide coordinates by it to get the file's.
    """
    path = check_image_file(path)
    if path.stat().st_size == 0:
        raise EmptyImageError(path, "the file is empty")
    return _decode(path, path, max_side)


def read_image(path: str | Path, max_side: int | None = None) -> np.ndarray:
    """Read an image file as an (H, W, 3) uint8 RGB array, EXIF orientation applied (see read_image_scaled)."""
    return read_image_scaled(path, max_side)[0]


def jpeg_bytes(rgb: np.ndarray, quality: int = 95) -> bytes:
    """Encode an (H, W, 3) uint8 RGB array as JPEG."""
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()
