"""Model registry: every face-embedding network by name.

Each model maps an aligned RGB face (float32 in [0, 1], shape (size, size, 3))
to an L2-normalised embedding.
"""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the names above need no TensorFlow, so the scripts' --help starts fast
    import keras

# name -> module that defines build(input_size, embedding_size) -> keras.Model
_MODULES = {
    "ang": "models.ang",
    "ang2": "models.ang2",
    "inception_v4": "models.inception_v4",
    "nn2": "models.nn2",
    "openface_nn4_small2": "models.openface",
}

# name -> module that publishes pretrained weights for it, with three functions:
# load_weights(model, path), make_default_weights(path) and missing_weights_hint(path) -> str
_PUBLISHED_WEIGHTS = {"openface_nn4_small2": "models.openface_weights"}
# Weights file stems differ from registry names only where the published model has a versioned name.
WEIGHTS_STEMS = {"openface_nn4_small2": "openface_nn4_small2_v1"}

MODEL_NAMES = tuple(_MODULES)
TRAINABLE_MODEL_NAMES = ("ang", "ang2", "inception_v4", "nn2")


def get_model(name: str, input_size: int = 96, embedding_size: int = 128) -> keras.Model:
    """Build the named architecture with random weights."""
    try:
        module = importlib.import_module(_MODULES[name])
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(MODEL_NAMES)}") from None
    return module.build(input_size=input_size, embedding_size=embedding_size)


def published_weights(name: str) -> ModuleType | None:
    """The module that fetches and loads the named model's published weights, None for ours."""
    module = _PUBLISHED_WEIGHTS.get(name)
    return importlib.import_module(module) if module else None
