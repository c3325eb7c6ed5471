"""12000 x 9000 JPEG photos for the memory test and benchmark of aligning huge images.

    python -m utils.faces.huge_photos FACE_IMAGE FOLDER

writes FOLDER/big_face.jpg (FACE_IMAGE, ZOOM times larger, pasted at OFFSET on a plain
background) and FOLDER/big_noface.jpg (smooth colour noise, no face). Drawing one takes
about 430 MB, so callers that measure memory draw in a separate process.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = (12000, 9000)  # width, height
ZOOM = 8
OFFSET = (6000, 3000)  # where the zoomed face picture's top-left corner lands


def draw_face_photo(face_image: str | Path, dest: str | Path) -> None:
    """The face picture, ZOOM times larger, at OFFSET on a plain SIZE background."""
    with Image.open(face_image) as face:
        zoomed = face.convert("RGB").resize((face.width * ZOOM, face.height * ZOOM), Image.Resampling.BICUBIC)
    canvas = Image.new("RGB", SIZE, (120, 110, 100))
    canvas.paste(zoomed, OFFSET)
    canvas.save(dest, quality=90)


def draw_noise_photo(dest: str | Path, seed: int = 0) -> None:
    """Smooth colour noise of SIZE: no face, and no shortcut for the detector."""
    coarse = np.random.default_rng(seed).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    Image.fromarray(coarse).resize(SIZE, Image.Resampling.BICUBIC).save(dest, quality=90)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    folder = Path(argv[1])
    folder.mkdir(parents=True, exist_ok=True)
    draw_face_photo(argv[0], folder / "big_face.jpg")
    draw_noise_photo(folder / "big_noface.jpg")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
