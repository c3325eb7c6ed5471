"""Resumable training checkpoints: model weights, optimizer variables and the run's TrainState.

Each checkpoint is a new folder ``<checkpoint_dir>/step-<N>`` holding ``model.weights.h5``,
``optimizer.npz``, ``random.npz`` (the states of the model's random generators, e.g. its Dropout
layers' seeds, which ``save_weights`` leaves out), ``state.json`` (the TrainState and the
run's settings) and, for a margin-softmax loss, ``class_weights.npy`` (its training-only class
weights). Everything else random in training is a pure function of (seed, step)
(utils.training.batching), so a resumed run draws what the uninterrupted one would. It is written as
``step-<N>.tmp``, flushed to disk and renamed; then the one-line file ``latest`` is replaced
atomically to name it, and only then are older folders deleted. A kill at any moment leaves
``latest`` naming a complete checkpoint. One weights file per epoch,
``epoch_<E>.weights.h5``, stays beside them (for visualize.py --progress-from); ``restore``
rewrites the latest one if a kill cut its copy short.
"""
from __future__ import annotations

import json
import os
import shutil
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

import keras
import numpy as np

from utils.atomic import atomic_path, fsync, write_text_atomic

from utils.training.config import TrainConfig

if TYPE_CHECKING:
    from utils.training.losses import ClassCosines

# Settings that must match for --resume to continue the same run. Which faces are trained on is
# checked by TrainState.pool_fingerprint (the people files' paths may change, their people not).
# A setting a checkpoint predates counts as its default (what that run used).
RESUME_KEYS = ("model", "data", "min_images", "image_size", "identities_per_batch", "images_per_identity",
               "steps_per_epoch", "seed", "loss", "mining", "margin", "soft_margin", "scale", "class_margin",
               "lr", "lr_schedule", "mixed_precision", "augmentation", "lfw_share", "weight_decay",
               "one_photo_negatives")
DEFAULTS = {f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}
CLASS_WEIGHTS = "class_weights.npy"


# The validation figure that picks the saved weights: the mean of the validation AUCs, LFW View 1
# DevTest and the CelebA hold-out's validation half, so the kept epoch holds up on two domains. AUC
# needs no threshold (View 1 accuracy's threshold is fit on pairsDevTrain.txt, whose people training
# draws from, so it drifts from the one that suits strangers and can fall while AUC rises).
SELECTED_BY = "val_mean_auc"
# Runs whose checkpoints predate SELECTED_BY (no "selected_by" in their state) keep their own rule
# on --resume: their earlier epochs have no CelebA figure to compare.
LEGACY_SELECTED_BY = "val_auc"
SELECTION_RULES = {
    SELECTED_BY: "the highest mean of the validation AUCs: LFW View 1 DevTest and the CelebA hold-out's "
                 "validation half (protocols/celeba-val-pairs.txt); View 1 alone without celeba-subset",
    LEGACY_SELECTED_BY: "the highest LFW View 1 DevTest AUC (a run started before the CelebA validation)",
}


class ResumeError(ValueError):
    """A run cannot be resumed (or would overwrite one); the message says why and what to do."""


@dataclass
class TrainState:
    """Where a run stands; everything in it goes into the checkpoint."""

    step: int = 0
    pool: str = ""              # "N faces of M identities", for messages
    pool_fingerprint: str = ""  # TrainingFaces.fingerprint(): must not change on --resume
    wall_seconds: float = 0.0
    epoch_loss_sum: float = 0.0
    epoch_figure_sum: float = 0.0   # of the loss's figure (utils.training.losses.FIGURES)
    epoch_distance_sum: float = 0.0
    epoch_train_seconds: float = 0.0
    epoch_steps: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    best: dict[str, float] | None = None  # the history row of the saved weights (highest selected_by)
    selected_by: str = SELECTED_BY  # the history column whose highest value picks the saved weights


def copy_file_atomic(source: str | Path, path: str | Path) -> None:
    """shutil.copyfile, atomically (readers never see a half-written file)."""
    with atomic_path(path) as tmp:
        shutil.copyfile(source, tmp)


def save_weights_atomic(model: keras.Model, path: str | Path) -> None:
    """model.save_weights, atomically (readers never see a half-written file)."""
    with atomic_path(path) as tmp:
        model.save_weights(tmp)


class Checkpoints:
    """Atomic checkpoints of model, optimizer and TrainState in a folder (see the module docstring)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def latest(self) -> Path | None:
        pointer = self.folder / "latest"
        if not pointer.is_file():
            return None
        path = self.folder / pointer.read_text().strip()
        return path if (path / "state.json").is_file() else None

    def save(self, model: keras.Model, optimizer: keras.optimizers.Optimizer, state: TrainState,
             config: TrainConfig, class_cosines: ClassCosines | None = None) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        name, copy = f"step-{state.step}", 1
        while (self.folder / name).exists():  # never overwrite: it may be the one `latest` names
            copy += 1
            name = f"step-{state.step}-{copy}"
        tmp = self.folder / f"{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        model.save_weights(tmp / "model.weights.h5")
        np.savez(tmp / "optimizer.npz", **{f"{i:04d}": v.numpy() for i, v in enumerate(optimizer.variables)})
        np.savez(tmp / "random.npz", **{f"{i:04d}": v.numpy() for i, v in enumerate(random_states(model))})
        if class_cosines is not None:
            np.save(tmp / CLASS_WEIGHTS, class_cosines.class_weights.numpy())
        (tmp / "state.json").write_text(json.dumps({"config": asdict(config), "state": asdict(state)}, indent=1))
        for f in (*tmp.iterdir(), tmp):
            fsync(f)
        final = self.folder / name
        os.replace(tmp, final)
        write_text_atomic(self.folder / "latest", name + "\n")
        copy_file_atomic(final / "model.weights.h5", self.snapshot_of(state.step, config))
        for old in self.folder.glob("step-*"):
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)
        return final

    def snapshot(self, epoch: int) -> Path:
        """The weights file of an epoch (1-based), written by ``save`` for the step that ends it."""
        return self.folder / f"epoch_{epoch:03d}.weights.h5"

    def snapshot_of(self, step: int, config: TrainConfig) -> Path:
        """The epoch snapshot a checkpoint at ``step`` writes: that of the epoch the step is in."""
        return self.snapshot(-(-step // config.steps_per_epoch))

    def weights_of(self, row: dict[str, float], state: TrainState, config: TrainConfig) -> Path | None:
        """The file holding the weights of a history row: the latest checkpoint's for the run's
        current step, else the row's epoch snapshot if it closed a whole epoch (a snapshot of a
        part epoch is overwritten when that epoch is finished); None when no file holds them."""
        latest = self.latest()
        if row["step"] == state.step and latest is not None:
            return latest / "model.weights.h5"
        snapshot = self.snapshot(row["step"] // config.steps_per_epoch)
        return snapshot if row["step"] % config.steps_per_epoch == 0 and snapshot.is_file() else None

    def restore(self, model: keras.Model, optimizer: keras.optimizers.Optimizer, config: TrainConfig,
                class_cosines: ClassCosines | None = None) -> TrainState:
        """Load the latest checkpoint into model, class weights and optimizer; ResumeError if the
        settings differ or a file of it is damaged (naming the file). Rewrites the checkpoint's epoch
        snapshot if missing."""
        path = self.latest()
        if path is None:
            raise ResumeError(f"--resume: no checkpoint in {self.folder}")
        with damaged_file_is_a_resume_error(path / "state.json"):
            saved = json.loads((path / "state.json").read_text())
            old, raw = saved["config"], saved["state"]
            if "epoch_active_sum" in raw:  # checkpoints from before the margin-softmax losses
                raw["epoch_figure_sum"] = raw.pop("epoch_active_sum")
            state = TrainState(**{"selected_by": LEGACY_SELECTED_BY, **raw})
        if isinstance(old.get("augmentation"), bool):  # checkpoints from before --augmentation
            old["augmentation"] = "mild" if old["augmentation"] else "none"
        old = {**DEFAULTS, **old}
        changed = [f"{k}: {old.get(k)!r} -> {getattr(config, k)!r}" for k in RESUME_KEYS
                   if old.get(k) != getattr(config, k)]
        if changed:
            raise ResumeError(f"--resume: the checkpoint in {path} was trained with other settings "
                              f"({'; '.join(changed)}); resume with the same settings or start a new run")
        with damaged_file_is_a_resume_error(path / "model.weights.h5"):
            model.load_weights(path / "model.weights.h5")
        if class_cosines is not None:
            restore_class_weights(path / CLASS_WEIGHTS, class_cosines)
        load_variables(path / "optimizer.npz", optimizer.variables, "optimizer variables")
        if (path / "random.npz").is_file():  # older checkpoints have none: they resume with fresh Dropout seeds
            load_variables(path / "random.npz", random_states(model), "random generator states")
        snapshot = self.snapshot_of(state.step, config)
        if not snapshot.is_file():  # a kill cut its copy short
            copy_file_atomic(path / "model.weights.h5", snapshot)
        return state


def random_states(model: keras.Model) -> list:
    """The model's variables that ``save_weights`` leaves out: its random generators' states
    (keras.random.SeedGenerator, e.g. in Dropout layers), which advance at every training step."""
    saved = {id(v) for v in model.weights}
    return [v for v in model.variables if id(v) not in saved]


@contextmanager
def damaged_file_is_a_resume_error(path: Path) -> Iterator[None]:
    """Turn the errors of reading a damaged or truncated checkpoint file into a ResumeError naming it."""
    try:
        yield
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as err:
        if isinstance(err, ResumeError):
            raise
        raise ResumeError(
            f"--resume: the checkpoint file {path} is damaged ({type(err).__name__}: {err}), so the run cannot "
            f"continue from it. Start a new run (without --resume); the weights of each finished epoch are "
            f"in {path.parent.parent}/epoch_*.weights.h5") from None


def load_variables(path: Path, variables: list, what: str) -> None:
    """Assign the arrays of an .npz written by ``Checkpoints.save`` to variables, in order."""
    with damaged_file_is_a_resume_error(path), np.load(path) as values:
        if len(values.files) != len(variables):
            raise ResumeError(f"--resume: {path} holds {len(values.files)} {what}, this run has {len(variables)}")
        for i, variable in enumerate(variables):
            variable.assign(values[f"{i:04d}"])


def restore_class_weights(path: Path, class_cosines: ClassCosines) -> None:
    """Load a checkpoint's class weights; ResumeError when missing or of another shape."""
    if not path.is_file():
        raise ResumeError(f"--resume: {path.parent} holds no class weights ({path.name})")
    with damaged_file_is_a_resume_error(path):
        weights = np.load(path)
    variable = class_cosines.class_weights
    if weights.shape != tuple(variable.shape):
        raise ResumeError(f"--resume: {path} holds class weights of shape {weights.shape}, the run needs "
                          f"{tuple(variable.shape)} (embedding size x training identities)")
    variable.assign(weights)
