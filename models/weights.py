"""Where each model's weights and metadata live, and loading a model with its weights."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import keras

from models import WEIGHTS_STEMS, get_model, published_weights
from utils.atomic import write_text_atomic
from utils.paths import WEIGHTS_DIR

DEFAULT_INPUT_SIZE, DEFAULT_EMBEDDING_SIZE = 96, 128  # what a model without metadata was built with


class MissingWeightsError(FileNotFoundError):
    """The weights file a model needs is not there; the message says how to get it."""


def weights_path(name: str) -> Path:
    """Default weights file of a registry model: weights/<stem>.weights.h5."""
    return WEIGHTS_DIR / f"{WEIGHTS_STEMS.get(name, name)}.weights.h5"


def metadata_path(name: str) -> Path:
    """Metadata JSON beside the weights: training record, LFW figures, default threshold."""
    return WEIGHTS_DIR / f"{WEIGHTS_STEMS.get(name, name)}.json"


def _read_json(path: Path) -> dict[str, Any]:
    """A metadata file's contents, {} when there is none; ValueError naming a damaged file."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"model metadata {path} is damaged ({err}); fix or delete it") from None
    if not isinstance(data, dict):
        raise ValueError(f"model metadata {path} is damaged (not a JSON object); fix or delete it")
    return data


def read_metadata(name: str) -> dict[str, Any]:
    """The model's metadata, or an empty dict when it has none yet; ValueError when it is damaged."""
    return _read_json(metadata_path(name))


def weights_metadata(weights: str | Path) -> dict[str, Any]:
    """The metadata beside a weights file (<stem>.json next to <stem>.weights.h5, as training writes
    it), or {} when there is none."""
    path = Path(weights)
    return _read_json(path.with_name(path.name.removesuffix(".weights.h5") + ".json"))


def update_metadata(name: str, **fields: Any) -> Path:
    """Merge fields into the model's metadata JSON, written atomically."""
    path = metadata_path(name)
    data = {**read_metadata(name), **fields}
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
    return path


def _missing_weights_hint(name: str, path: Path) -> str:
    published = published_weights(name)
    if published:
        return published.missing_weights_hint(path)
    return (f"train it with `python train.py --model {name}` and publish the run with `python train.py --publish "
            f"runs/{name}/RUN`, or pass --weights PATH")


def load_model(name: str, weights: str | Path | None = None, input_size: int | None = None) -> keras.Model:
    """Build a registry model and load its weights (the default file unless a path is given).

    The input size and embedding size are the ones the weights were trained with, read from the
    metadata beside the weights file (``input_size``, ``embedding_size``, written by training);
    96 and 128 when there is none. An explicit input_size wins. OpenFace's default weights
    file is made from the published, SHA-1-checked .t7 the first time it is needed (by the
    module ``models.published_weights`` names for it).
    """
    path = Path(weights) if weights else weights_path(name)
    published = published_weights(name)
    if not path.exists() and weights is None and published:
        published.make_default_weights(path)
    if not path.exists():
        raise MissingWeightsError(f"weights file not found: {path} ({_missing_weights_hint(name, path)})")
    if path.is_dir():
        raise ValueError(f"weights path {path} is a folder, not a weights file")
    meta = weights_metadata(path)
    sizes = {"input_size": DEFAULT_INPUT_SIZE, "embedding_size": DEFAULT_EMBEDDING_SIZE}
    for key, default in sizes.items():
        sizes[key] = meta.get(key, default)
        if not isinstance(sizes[key], int) or sizes[key] < 1:
            raise ValueError(f"the metadata beside {path} gives {key} {sizes[key]!r}, not a positive integer")
    if input_size is not None:
        sizes["input_size"] = input_size
    model = get_model(name, **sizes)
    if published:
        published.load_weights(model, path)
    else:
        try:
            model.load_weights(path)
        except (ValueError, OSError) as err:
            raise ValueError(f"cannot load weights {path} into {name}: {err}") from err
    return model
