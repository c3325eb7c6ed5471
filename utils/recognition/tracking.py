"""Recognising faces in a stream of frames: detect every N frames, follow faces in between.

On a detection frame every face is detected (on the aligner's downscaled copy when its
detect_scale < 1), aligned from the full frame and embedded in one batch, then matched against
the gallery. On the frames in between each face is followed instead: the HOG detector runs
only on a small window around its last box, rescaled so the face is about 100 pixels wide
(a few milliseconds instead of a full-frame search), and the face keeps the identity found at
the last detection frame (no embedding). A face that is not found in its window is dropped
until the next detection frame.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import cv2
import dlib
import numpy as np

from utils.faces.align import FaceAligner
from utils.recognition.matching import EmbeddingGallery, Match, match

Box = tuple[int, int, int, int]  # left, top, right, bottom in frame pixels
WINDOW_FACTOR = 1.8  # search window side, in face-box sides
FOLLOW_FACE_PX = 100  # the face's width in the rescaled search window (HOG finds >= 80 px at upsample 0)


@dataclass
class RecognizedFace:
    """One face in one frame: where, who, and whether the box was detected or followed."""

    box: Box
    match: Match
    tracked: bool = False


def _box(rect: dlib.rectangle) -> Box:
    return rect.left(), rect.top(), rect.right(), rect.bottom()


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return inter / float(area(a) + area(b) - inter)


def follow_box(aligner: FaceAligner, rgb: np.ndarray, box: Box) -> Box | None:
    """The face's box in this frame, searched near its previous box; None when it is gone."""
    height, width = rgb.shape[:2]
    side = max(box[2] - box[0], box[3] - box[1], 1)
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    half = side * WINDOW_FACTOR / 2
    left, top = max(0, int(cx - half)), max(0, int(cy - half))
    right, bottom = min(width, int(cx + half)), min(height, int(cy + half))
    if right - left < side / 2 or bottom - top < side / 2:
        return None  # the face has left the frame
    scale = FOLLOW_FACE_PX / (side * aligner.detect_scale)
    window = cv2.resize(rgb[top:bottom, left:right], None, fx=scale, fy=scale,
                        interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    found = [(int(r.left() / scale) + left, int(r.top() / scale) + top,
              int(r.right() / scale) + left, int(r.bottom() / scale) + top) for r in aligner.detect(window)]
    if not found:
        return None
    best = max(found, key=lambda b: box_iou(b, box))
    return best if box_iou(best, box) > 0 else None


class VideoRecognizer:
    """Turns frames into recognised faces; see the module docstring for the detect/follow cycle."""

    def __init__(self, aligner: FaceAligner, embed: Callable[[np.ndarray], np.ndarray],
                 gallery: EmbeddingGallery, threshold: float, detect_every: int = 1):
        if detect_every < 1:
            raise ValueError(f"detect_every must be at least 1, got {detect_every}")
        self.aligner, self.embed, self.gallery = aligner, embed, gallery
        self.threshold, self.detect_every = threshold, detect_every
        self._faces: list[RecognizedFace] = []
        self._count = 0

    def recognize(self, rgb: np.ndarray, boxes: list[dlib.rectangle]) -> list[RecognizedFace]:
        """Align every box from the full frame, embed them in one batch and match them."""
        if not boxes:
            return []
        faces = np.stack([self.aligner.align(rgb, box) for box in boxes])
        matches = match(self.embed(faces), self.gallery, self.threshold)
        return [RecognizedFace(_box(box), m) for box, m in zip(boxes, matches, strict=True)]

    def process(self, rgb: np.ndarray) -> list[RecognizedFace]:
        """The faces of the next frame (frames must come in order)."""
        rgb = np.ascontiguousarray(rgb)
        if self._count % self.detect_every == 0:
            self._faces = self.recognize(rgb, self.aligner.detect(rgb))
        else:
            followed = []
            for face in self._faces:
                box = follow_box(self.aligner, rgb, face.box)
                if box is not None:
                    followed.append(RecognizedFace(box, face.match, tracked=True))
            self._faces = followed
        self._count += 1
        return list(self._faces)
