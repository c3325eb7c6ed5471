"""The metadata JSON written beside trained weights: what the weights are and how they were trained.

The record describes the saved (best) weights (``weights_step``, ``weights_images_seen``,
``weights_wall_hours``, ``best_validation`` and the rule that chose them, ``weights_selected_by``:
the history column maximised, ``weights_selection_rule``: in words) beside the run's totals so far (``steps``,
``images_seen``, ``wall_hours``, ``final_validation``). Each write replaces the whole file, so
figures measured on earlier weights (evaluate.py's ``lfw_view2``, from which recognize.py takes
its default threshold) never stay beside new weights. Paths are recorded without this machine's
folders (utils.paths.portable_path: ``data:lfw``, ``benchmark_faces/manifest.txt``).
"""
from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tensorflow as tf

from utils.atomic import write_text_atomic
from utils.paths import portable_path
from utils.training.checkpoints import SELECTION_RULES

if TYPE_CHECKING:
    from utils.training.batching import TrainingFaces
    from utils.training.checkpoints import TrainState
    from utils.training.config import TrainConfig


def hardware_description() -> str:
    """CPU model and core count, plus the GPUs TensorFlow sees."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    parts = [f"{cpu} ({os.cpu_count()} cores)"]
    for gpu in tf.config.list_physical_devices("GPU"):
        parts.append(tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name))
    return ", ".join(parts)


def training_record(config: TrainConfig, state: TrainState, faces: TrainingFaces,
                    embedding_size: int) -> dict[str, Any]:
    """The metadata of the weights in ``config.weights_out`` (the row ``state.best``) and of the run."""
    best = state.best or {}
    negative_only = len(faces.identities_with_fewer_than(config.min_images))
    return {
        "architecture": config.model, "input_size": config.image_size, "embedding_size": embedding_size,
        "training": {
            "weights_file": portable_path(config.weights_out), "weights_step": best.get("step"),
            "weights_images_seen": best.get("images_seen"),
            "weights_wall_hours": round(best["wall_hours"], 4) if best else None, "best_validation": state.best,
            "weights_selected_by": state.selected_by if state.selected_by in best else "latest",
            "weights_selection_rule": SELECTION_RULES.get(state.selected_by, state.selected_by) if
            state.selected_by in best else "the latest epoch (no validation)",
            "steps": state.step, "epochs": round(state.step / config.steps_per_epoch, 3),
            "images_seen": state.step * config.batch_size, "wall_hours": round(state.wall_seconds / 3600, 4),
            "final_validation": state.history[-1] if state.history else None,
            "hardware": hardware_description(), "data": [portable_path(d) for d in config.data],
            "excluded_people_files": [portable_path(f) for f in config.exclude_people],
            "identities": faces.num_identities - negative_only, "negative_only_identities": negative_only,
            "images": len(faces),
            **loss_settings(config), "lr": config.lr, "lr_schedule": config.lr_schedule,
            "optimizer": "adamw" if config.weight_decay else "adam", "weight_decay": config.weight_decay,
            "identities_per_batch": config.identities_per_batch,
            "images_per_identity": config.images_per_identity, "seed": config.seed,
            "strategy": config.strategy, "mixed_precision": config.mixed_precision,
            "augmentation": config.augmentation, "lfw_share": config.lfw_share,
            "one_photo_negatives": config.one_photo_negatives,
        },
    }


def loss_settings(config: TrainConfig) -> dict[str, Any]:
    """The loss and the settings that apply to it: mining and margin (triplet) or scale and margin
    (cosface, arcface)."""
    if config.loss == "triplet":
        return {"loss": "triplet", "mining": config.mining, "margin": config.margin,
                "soft_margin": config.soft_margin}
    return {"loss": config.loss, "scale": config.scale, "class_margin": config.class_margin}


def metadata_file(config: TrainConfig) -> Path:
    """weights/<model>.json (models.weights.metadata_path) for the registry weights file, else
    <stem>.json beside the --weights-out file."""
    from models.weights import metadata_path, weights_path

    out = Path(config.weights_out).resolve()
    if out == weights_path(config.model).resolve():
        return metadata_path(config.model)
    return out.with_name(out.name.removesuffix(".weights.h5") + ".json")


def metadata_writer(config: TrainConfig) -> Callable[[dict[str, Any]], None]:
    """A function replacing the weights' metadata file (see ``metadata_file``) with a record."""
    path = metadata_file(config)

    def write(record: dict[str, Any]) -> None:
        write_text_atomic(path, json.dumps(record, indent=2, sort_keys=True) + "\n")

    return write
