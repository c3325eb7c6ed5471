"""Drawing recognition results onto RGB frames: boxes, name labels, FPS."""
from __future__ import annotations

import colorsys
import hashlib
from typing import Sequence

import cv2
import numpy as np

UNKNOWN_COLOUR = (150, 150, 150)  # RGB grey for faces that match no one
FONT = cv2.FONT_HERSHEY_SIMPLEX


def colour_for(name: str | None) -> tuple[int, int, int]:
    """A bright RGB colour that depends only on the name (stable across frames and runs)."""
    if name is None:
        return UNKNOWN_COLOUR
    digest = hashlib.md5(name.encode("utf-8")).digest()
    hue = int.from_bytes(digest[:2], "big") / 65536.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def _text_colour(background: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white, whichever reads better on the background."""
    luminance = 0.299 * background[0] + 0.587 * background[1] + 0.114 * background[2]
    return (0, 0, 0) if luminance > 140 else (255, 255, 255)


def draw_label(frame: np.ndarray, text: str, corner: tuple[int, int], colour: tuple[int, int, int],
               scale: float = 0.55) -> None:
    """Text on a filled box whose bottom-left corner is at corner (moved inside the frame)."""
    (width, height), baseline = cv2.getTextSize(text, FONT, scale, 1)
    x = int(np.clip(corner[0], 0, max(0, frame.shape[1] - width - 4)))
    y = int(np.clip(corner[1], height + baseline + 4, frame.shape[0]))
    cv2.rectangle(frame, (x, y - height - baseline - 4), (x + width + 4, y), colour, cv2.FILLED)
    cv2.putText(frame, text, (x + 2, y - baseline - 1), FONT, scale, _text_colour(colour), 1, cv2.LINE_AA)


def label_text(name: str | None, distance: float | None, show_distance: bool) -> str:
    """'Name', 'unknown', or with show_distance 'Name 0.42'."""
    text = name if name is not None else "unknown"
    if show_distance and distance is not None:
        text += f" {distance:.2f}"
    return text


def draw_face(frame: np.ndarray, box: Sequence[int], name: str | None, distance: float | None = None,
              show_distance: bool = False) -> None:
    """A box in the identity's colour and its label above it (below when there is no room)."""
    left, top, right, bottom = (int(v) for v in box)
    colour = colour_for(name)
    thickness = max(2, round(min(frame.shape[:2]) / 240))
    cv2.rectangle(frame, (left, top), (right, bottom), colour, thickness)
    text = label_text(name, distance, show_distance)
    _, text_height = cv2.getTextSize(text, FONT, 0.55, 1)[0]
    above = top - thickness
    corner_y = above if above - text_height - 8 >= 0 else bottom + text_height + 8
    draw_label(frame, text, (left - thickness // 2, corner_y), colour)


def draw_fps(frame: np.ndarray, fps: float) -> None:
    """Frames-per-second overlay in the top-left corner."""
    draw_label(frame, f"{fps:.1f} fps", (4, 24), (0, 0, 0), scale=0.6)
