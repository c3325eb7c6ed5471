"""Make a training run's kept weights the model's published ones, in weights/ (train.py --publish).

The run folder's ``<model>.weights.h5`` and the training record beside it (``<model>.json``)
replace ``weights/<model>.weights.h5`` and ``weights/<model>.json``. Figures measured on the old
weights (evaluate.py's ``lfw_view2``, ``lfw_view2_unseen``) are not carried over: train.py
evaluates the new weights right after publishing, and tells what to run if that fails.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from models import TRAINABLE_MODEL_NAMES
from models.weights import metadata_path, weights_metadata, weights_path
from utils.atomic import write_text_atomic
from utils.paths import portable_path
from utils.training.checkpoints import copy_file_atomic
from utils.training.runs import RunFolderError, RunLock


def kept_weights(run_dir: Path) -> Path:
    """The run's kept weights file (the one ``*.weights.h5`` that is not an epoch snapshot)."""
    if not run_dir.is_dir():
        raise RunFolderError(f"--publish: {run_dir} is not a folder")
    found = [p for p in run_dir.glob("*.weights.h5") if not p.name.startswith("epoch_")]
    if len(found) != 1:
        raise RunFolderError(f"--publish: {run_dir} holds {len(found)} kept weights files (<model>.weights.h5), "
                             "expected one: is it a run folder of train.py?")
    return found[0]


def publish_run(run_dir: Path, log: Callable[[str], None] = print) -> str:
    """Copy a finished run's kept weights and training record into weights/; returns the model name.
    RunFolderError (a ValueError) for a folder that is not a run, or one a process still trains in."""
    weights = kept_weights(run_dir)
    record = weights_metadata(weights)  # ValueError naming a damaged file
    model = record.get("architecture")
    if model not in TRAINABLE_MODEL_NAMES:
        raise RunFolderError(f"--publish: the metadata beside {weights} names no trainable architecture "
                             f"({model!r}); expected one of {', '.join(TRAINABLE_MODEL_NAMES)}")
    record = {key: value for key, value in record.items() if not key.startswith("lfw_")}
    record["published_from"] = portable_path(run_dir)
    if isinstance(record.get("training"), dict):
        record["training"]["weights_file"] = portable_path(weights_path(model))
    with RunLock(run_dir):  # not while it trains: its kept weights may still change
        copy_file_atomic(weights, weights_path(model))
        write_text_atomic(metadata_path(model), json.dumps(record, indent=2, sort_keys=True) + "\n")
    log(f"published {weights} as {weights_path(model)} (metadata {metadata_path(model)})")
    return model
