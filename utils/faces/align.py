"""OpenFace-compatible face alignment with dlib.

Detect faces (HOG or CNN), find 68 landmarks, and warp three of them onto
OpenFace's mean-landmark template with an affine transform.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Sequence

import cv2
import dlib
import numpy as np

from utils.faces.dlib_models import CNN_DETECTOR, LANDMARKS_68, dlib_model_path
from utils.paths import data_dir

# Landmark triples that are mapped onto the template (dlib's 68-point numbering).
LANDMARK_SETS = {
    "outer_eyes_and_nose": (36, 45, 33),       # what nn4.small2.v1 was trained with
    "inner_eyes_and_bottom_lip": (39, 42, 57),
}

# Where the landmark warp's 96x96 window falls on a detected, centred LFW face:
# about 0.40 of the image side, its centre 0.07 of the side below the image
# centre (measured on 40 LFW images). The centre-crop fallback reuses it.
CENTRE_CROP_FRACTION = 0.40
CENTRE_CROP_DROP = 0.07

# Detection runs on a copy whose long side is at most this (a 1080p frame is untouched): dlib's HOG
# on a 12000x9000 photo takes over a minute and gigabytes; faces big enough to align are still found.
MAX_DETECT_SIDE = 2048


@lru_cache(maxsize=None)
def openface_template(path: str | None = None) -> np.ndarray:
    """OpenFace's 68-point mean template, min-max normalised to [0, 1] per axis."""
    csv = Path(path) if path else data_dir() / "openface_template.csv"
    if not csv.exists():
        raise FileNotFoundError(f"OpenFace landmark template not found: {csv}")
    points = np.loadtxt(csv, delimiter=",", skiprows=1, dtype=np.float64)
    if points.shape != (68, 2):
        raise ValueError(f"{csv}: expected 68 rows of x,y, got shape {points.shape}")
    low, high = points.min(axis=0), points.max(axis=0)
    return (points - low) / (high - low)


def centre_square(height: int, width: int) -> tuple[int, int, int]:
    """(left, top, side) of the square where a centred LFW-style face lies.

    It is the region that the landmark warp keeps on such a face (CENTRE_CROP_FRACTION,
    CENTRE_CROP_DROP): the fallback crop and the fallback landmark box both use it.
    """
    short = min(height, width)
    side = max(1, round(short * CENTRE_CROP_FRACTION))
    top = min(height - side, (height - side) // 2 + round(short * CENTRE_CROP_DROP))
    left = (width - side) // 2
    return left, top, side


def centre_crop(rgb: np.ndarray, size: int = 96) -> np.ndarray:
    """Fallback when no face is found: the centre square (`centre_square`), resized to size x size."""
    left, top, side = centre_square(*rgb.shape[:2])
    crop = rgb[top:top + side, left:left + side]
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)


def _as_upsample_levels(upsample: int | Sequence[int]) -> tuple[int, ...]:
    levels = (upsample,) if isinstance(upsample, int) else tuple(upsample)
    if not levels or any(level < 0 for level in levels):
        raise ValueError(f"upsample must be a non-negative int or a sequence of them, got {upsample!r}")
    return levels


class FaceAligner:
    """Loads dlib's models once; detects, landmarks and aligns faces per call.

    upsample: dlib's upsample count, or a sequence tried in order until a face
    is found (``(0, 1)`` is fast on LFW-sized faces yet still finds small ones).
    detect_scale: run detection on the image resized by this factor (for
    large video frames); landmarks and the warp still use the full image.
    max_detect_side: the detection copy is shrunk further when its long side
    would be larger than this; boxes are mapped back to the full image.
    """

    def __init__(self, output_size: int = 96, landmarks: str = "outer_eyes_and_nose",
                 upsample: int | Sequence[int] = 1, detector: str = "hog", detect_scale: float = 1.0,
                 max_detect_side: int = MAX_DETECT_SIDE):
        if landmarks not in LANDMARK_SETS:
            raise ValueError(f"landmarks must be one of {sorted(LANDMARK_SETS)}, got {landmarks!r}")
        if detector not in ("hog", "cnn"):
            raise ValueError(f"detector must be 'hog' or 'cnn', got {detector!r}")
        if output_size < 8:
            raise ValueError(f"output_size is too small: {output_size}")
        if not 0 < detect_scale <= 4:
            raise ValueError(f"detect_scale must be in (0, 4], got {detect_scale}")
        if max_detect_side < 64:
            raise ValueError(f"max_detect_side is too small: {max_detect_side}")
        self.output_size = output_size
        self.landmarks = landmarks
        self.upsample = _as_upsample_levels(upsample)
        self.detector = detector
        self.detect_scale = detect_scale
        self.max_detect_side = max_detect_side
        self._indices = np.array(LANDMARK_SETS[landmarks])
        self._destination = (output_size * openface_template()[self._indices]).astype(np.float32)
        self._predictor = dlib.shape_predictor(str(dlib_model_path(LANDMARKS_68)))
        if detector == "hog":
            self._detector = dlib.get_frontal_face_detector()
        else:
            self._detector = dlib.cnn_face_detection_model_v1(str(dlib_model_path(CNN_DETECTOR)))

    def _detect_once(self, rgb: np.ndarray, upsample: int) -> list[dlib.rectangle]:
        found = self._detector(rgb, upsample)
        return [d.rect for d in found] if self.detector == "cnn" else list(found)

    def detect(self, rgb: np.ndarray) -> list[dlib.rectangle]:
        """Face boxes in full-image coordinates, largest first."""
        rgb = _contiguous_rgb(rgb)
        scale = min(self.detect_scale, self.max_detect_side / max(rgb.shape[:2]))
        small = rgb if scale == 1.0 else cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        boxes: list[dlib.rectangle] = []
        for level in self.upsample:
            boxes = self._detect_once(small, level)
            if boxes:
                break
        if scale != 1.0:
            boxes = [dlib.rectangle(int(b.left() / scale), int(b.top() / scale),
                                    int(b.right() / scale), int(b.bottom() / scale)) for b in boxes]
        return sorted(boxes, key=lambda b: b.width() * b.height(), reverse=True)

    def landmarks_of(self, rgb: np.ndarray, box: dlib.rectangle) -> np.ndarray:
        """The 68 dlib landmarks of the face in box, as a (68, 2) float array."""
        shape = self._predictor(_contiguous_rgb(rgb), box)
        return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)

    def align_points(self, rgb: np.ndarray, points: np.ndarray) -> np.ndarray:
        """Warp the image so that the chosen three landmarks land on the template."""
        source = points[self._indices].astype(np.float32)
        matrix = cv2.getAffineTransform(source, self._destination)
        return cv2.warpAffine(rgb, matrix, (self.output_size, self.output_size))

    def align(self, rgb: np.ndarray, box: dlib.rectangle) -> np.ndarray:
        """Aligned output_size x output_size RGB face for one detected box."""
        return self.align_points(rgb, self.landmarks_of(rgb, box))

    def align_largest(self, rgb: np.ndarray) -> np.ndarray | None:
        """The largest face aligned, or None when no face is found."""
        boxes = self.detect(rgb)
        return self.align(rgb, boxes[0]) if boxes else None

    def align_all(self, rgb: np.ndarray) -> list[tuple[dlib.rectangle, np.ndarray]]:
        """Every detected face aligned, largest first, with its box."""
        return [(box, self.align(rgb, box)) for box in self.detect(rgb)]


def _contiguous_rgb(rgb: np.ndarray) -> np.ndarray:
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {rgb.dtype} {rgb.shape}")
    return np.ascontiguousarray(rgb)
