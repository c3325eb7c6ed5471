"""Where each model's weights and metadata live, and loading a model with its weights."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import keras

from models import get_model
from utils.paths import WEIGHTS_DIR

# File stems differ from registry names only where the published model has a versioned name.
_STEMS = {"openface_nn4_small2": "openface_nn4_small2_v1"}


class MissingWeightsError(FileNotFoundError):
    """The weights file a model needs is not there; the message says how to get it."""


def weights_path(name: str) -> Path:
    """Default weights file of a registry model: weights/<stem>.weights.h5."""
    return WEIGHTS_DIR / f"{_STEMS.get(name, name)}.weights.h5"


def metadata_path(name: str) -> Path:
    """Metadata JSON beside the weights: training record, LFW figures, default threshold."""
    return WEIGHTS_DIR / f"{_STEMS.get(name, name)}.json"


def read_metadata(name: str) -> dict[str, Any]:
    """The model's metadata, or an empty dict when it has none yet."""
    path = metadata_path(name)
    return json.loads(path.read_text()) if path.exists() else {}


def update_metadata(name: str, **fields: Any) -> Path:
    """Merge fields into the model's metadata JSON, written atomically."""
    path = metadata_path(name)
    data = {**read_metadata(name), **fields}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)
    return path


def _missing_weights_hint(name: str) -> str:
    if name == "openface_nn4_small2":
        return ("get the pretrained OpenFace weights with `python -m models.openface_weights download` "
                "and `python -m models.openface_weights convert`")
    return f"train it with `python train.py --model {name}` or pass --weights PATH"


def load_model(name: str, weights: str | Path | None = None, input_size: int = 96) -> keras.Model:
    """Build a registry model and load its weights (the default file unless a path is given)."""
    path = Path(weights) if weights else weights_path(name)
    if not path.exists():
        raise MissingWeightsError(f"weights file not found: {path} ({_missing_weights_hint(name)})")
    model = get_model(name, input_size=input_size)
    if name == "openface_nn4_small2":
        from models.openface_weights import load_openface_weights

        load_openface_weights(model, path)
    else:
        try:
            model.load_weights(path)
        except (ValueError, OSError) as err:
            raise ValueError(f"cannot load weights {path} into {name}: {err}") from err
    return model
