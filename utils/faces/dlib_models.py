"""Paths to dlib's model files shipped by the `face_recognition_models` package."""
from __future__ import annotations

import importlib.util
from pathlib import Path

LANDMARKS_68 = "shape_predictor_68_face_landmarks.dat"
CNN_DETECTOR = "mmod_human_face_detector.dat"
RESNET_DESCRIPTOR = "dlib_face_recognition_resnet_model_v1.dat"


def dlib_model_path(filename: str) -> Path:
    """Locate one of dlib's .dat files without importing face_recognition_models.

    The package imports pkg_resources, which recent setuptools no longer ships,
    so only its folder is looked up.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "dlib's model files are missing: pip install face_recognition_models==0.3.0")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / filename
    if not path.exists():
        raise FileNotFoundError(f"dlib model file not found: {path}")
    return path
