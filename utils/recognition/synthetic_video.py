"""Synthetic 640x480 videos of real faces moving across a background, for tests and benchmarks."""
from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

from utils.faces.align import FaceAligner

FRAME_SIZE = (640, 480)
SPRITE_MARGIN = 2.0  # sprite side in face-box sides
STEP_PX = 32  # how far a face moves per frame


def background(seed: int = 0) -> np.ndarray:
    """A smooth, textured 640x480 RGB background."""
    coarse = np.random.default_rng(seed).integers(40, 215, (12, 16, 3), dtype=np.uint8)
    return cv2.resize(coarse, FRAME_SIZE, interpolation=cv2.INTER_CUBIC)


def face_sprite(rgb: np.ndarray, aligner: FaceAligner, face_px: int) -> np.ndarray | None:
    """A square cut around the largest face, scaled so that its detector box is face_px wide."""
    boxes = aligner.detect(rgb)
    if not boxes:
        return None
    box = boxes[0]
    side = max(box.width(), box.height()) * SPRITE_MARGIN
    cx, cy = (box.left() + box.right()) / 2, (box.top() + box.bottom()) / 2
    pad = int(side)
    padded = cv2.copyMakeBorder(rgb, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    left, top = int(cx - side / 2) + pad, int(cy - side / 2) + pad
    crop = padded[top:top + int(side), left:left + int(side)]
    out = int(face_px * SPRITE_MARGIN)
    return cv2.resize(crop, (out, out), interpolation=cv2.INTER_AREA if side > out else cv2.INTER_CUBIC)


def sprite_positions(count: int, size: int, frame: int) -> list[tuple[int, int]]:
    """Top-left corners of count sprites in a grid of cells, each moving back and forth in its cell."""
    columns = min(count, 2)
    rows = math.ceil(count / columns)
    cell_w, cell_h = FRAME_SIZE[0] // columns, FRAME_SIZE[1] // rows
    room = max(1, cell_w - size)
    positions = []
    for i in range(count):
        travel = (frame * STEP_PX + i * room // 2) % (2 * room)
        x = (i % columns) * cell_w + (travel if travel < room else 2 * room - travel)
        y = (i // columns) * cell_h + max(0, (cell_h - size) // 2)
        positions.append((int(x), int(y)))
    return positions


def write_moving_faces_video(path: Path, scenes: list[list[np.ndarray]], frames_per_scene: int,
                             fps: float = 15.0) -> int:
    """Write scenes (each a list of sprites shown together) as a 640x480 MJPG/mp4v video; returns frames."""
    fourcc = cv2.VideoWriter_fourcc(*("MJPG" if path.suffix == ".avi" else "mp4v"))
    writer = cv2.VideoWriter(str(path), fourcc, fps, FRAME_SIZE)
    try:
        if not writer.isOpened():
            raise OSError(f"cannot write {path}")
        frames = 0
        for number, sprites in enumerate(scenes):
            base = background(number)
            for k in range(frames_per_scene):
                frame = base.copy()
                for sprite, (x, y) in zip(sprites, sprite_positions(len(sprites), sprites[0].shape[0], k), strict=True):
                    h = min(sprite.shape[0], FRAME_SIZE[1] - y)
                    w = min(sprite.shape[1], FRAME_SIZE[0] - x)
                    frame[y:y + h, x:x + w] = sprite[:h, :w]
                writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
                frames += 1
    finally:
        writer.release()
    return frames
