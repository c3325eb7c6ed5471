"""Training of a face-embedding model: the step and the loop (train.py is the command line).

One run = ``epochs`` x ``steps_per_epoch`` steps of P x K batches (utils.training.batching) with an
online-mined triplet loss or a margin-softmax loss, CosFace or ArcFace, whose class weights train
beside the model (utils.training.losses), Adam (AdamW with weight decay), a custom
``tf.function`` step under a ``tf.distribute`` strategy. After every epoch: validation on LFW
View 1 and the CelebA hold-out's validation half (or a given evaluator), the weights when the mean
validation AUC improves, their metadata (utils.training.metadata), a checkpoint
(utils.training.checkpoints) and the
CSV/TensorBoard/PNG logs (utils.training.log).

The batches are a pure function of (seed, step), so the step number is the data pipeline's
whole position and a resumed run performs the same steps as an uninterrupted one.

Stops (utils.training.stops): Ctrl-C / SIGTERM (checkpoint, then exit), a NaN loss (message;
the last checkpoint is kept), a collapse (triplet loss: a batch's embeddings at almost one point
with every triplet active, for ``collapse_patience`` steps in a row), and the time budget (validate,
checkpoint, finish). Workers of a multi-worker run vote on the signal and budget stops after
every step, so they all stop after the same one.
"""
from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from utils.console import progress_bar
from utils.training.batching import PKSampler, TrainingFaces, training_dataset
from utils.training.checkpoints import (
    SELECTED_BY,
    SELECTION_RULES,
    Checkpoints,
    ResumeError,
    TrainState,
    copy_file_atomic,
    save_weights_atomic,
)
from utils.training.config import STRATEGIES, TrainConfig
from utils.training.data import Evaluator, lfw_labels, load_training_data, validation_evaluator
from utils.training.log import TrainingLog
from utils.training.losses import FIGURES, ClassCosines, get_loss, pairwise_squared_distances
from utils.training.metadata import metadata_writer, training_record
from utils.training.runs import RunLock, remove_stale_temporaries
from utils.training.stops import CollapseDetector, StopSignals, make_stop_vote

FINAL_LR_FRACTION = 0.01
EXIT_CODES = {"completed": 0, "time-budget": 0, "interrupted": 130, "nan": 3, "collapsed": 4}


class TrainingError(RuntimeError):
    """Training cannot start or go on; the message says why and what to do."""


def learning_rate(config: TrainConfig, step: int, wall_seconds: float) -> float:
    """The Adam learning rate for the next step: constant, or a cosine from ``lr`` down to
    ``FINAL_LR_FRACTION * lr`` over the run, whose progress is its share of the steps or of the
    time budget, whichever is further along (a budgeted run anneals by the time it will stop)."""
    if config.lr_schedule == "constant":
        return config.lr
    progress = step / config.total_steps
    if config.time_budget_hours:
        progress = max(progress, wall_seconds / (config.time_budget_hours * 3600))
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    return config.lr * (FINAL_LR_FRACTION + (1.0 - FINAL_LR_FRACTION) * cosine)


@dataclass
class TrainResult:
    """How a run ended: status is completed, time-budget, interrupted, nan or collapsed."""

    status: str
    message: str
    state: TrainState


# --- strategy, model, step ------------------------------------------------------------------

def make_strategy(name: str) -> tf.distribute.Strategy:
    """default (one device), mirrored (all local GPUs, else all logical CPUs) or multiworker (TF_CONFIG)."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    if name == "multiworker":
        if "TF_CONFIG" not in os.environ:
            raise TrainingError("--strategy multiworker needs the TF_CONFIG environment variable "
                                "(see python train.py --help)")
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise TrainingError(f"unknown strategy {name!r}; choose one of: {', '.join(STRATEGIES)}")


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes checkpoints, logs and weights (worker 0 of a multi-worker run)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or resolver.task_type is None:
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "chief" or (not has_chief and resolver.task_id == 0)


def mixed_precision_policy() -> str:
    """float16 with loss scaling on GPUs; bfloat16 on CPUs, where oneDNN runs it faster and
    its float32-sized exponent needs no loss scaling."""
    return "mixed_float16" if tf.config.list_physical_devices("GPU") else "mixed_bfloat16"


def with_float32_output(model: keras.Model) -> keras.Model:
    """Under mixed precision, rebuild the final (weightless) L2 normalisation layer in float32."""
    if model.outputs[0].dtype == "float32":
        return model
    last = model.layers[-1]
    if last.weights:
        raise TrainingError(f"{model.name}: expected a weightless normalisation as last layer, got {last.name}")
    layer = type(last).from_config({**last.get_config(), "dtype": "float32"})
    return keras.Model(model.inputs, layer(last.input), name=model.name)


def build_model_and_optimizer(config: TrainConfig, strategy: tf.distribute.Strategy,
                              build_model: Callable[[], keras.Model], num_identities: int
                              ) -> tuple[keras.Model, ClassCosines | None, keras.optimizers.Optimizer]:
    """The model (in the precision policy of the config), the class weights of a margin-softmax
    loss (None for triplet; float32, training only) and a built optimizer for both (make_optimizer),
    under the strategy's scope."""
    keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        previous_policy = keras.mixed_precision.global_policy()
        policy = mixed_precision_policy() if config.mixed_precision else "float32"
        keras.mixed_precision.set_global_policy(policy)
        try:
            model = with_float32_output(build_model())
        finally:
            keras.mixed_precision.set_global_policy(previous_policy)
        class_cosines = None
        if config.loss != "triplet":
            class_cosines = ClassCosines(num_identities, name="class_cosines")
            class_cosines.build(model.output_shape)
        variables = trained_variables(model, class_cosines)
        optimizer = make_optimizer(config, variables)
        if policy == "mixed_float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        optimizer.build(variables)
    return model, class_cosines, optimizer


def make_optimizer(config: TrainConfig, variables: list) -> keras.optimizers.Optimizer:
    """Adam; with weight decay AdamW (Loshchilov & Hutter 2019): with Adam, an L2 term's gradient is
    divided by the same running scale as the loss's, so weights with large gradients are barely
    decayed; AdamW shrinks every matrix by lr x weight_decay per step whatever its gradients
    (following the learning-rate schedule). Biases and batch-norm scales and offsets (the 1-D
    variables) are not decayed."""
    if not config.weight_decay:
        return keras.optimizers.Adam(config.lr)
    optimizer = keras.optimizers.AdamW(config.lr, weight_decay=config.weight_decay)
    optimizer.exclude_from_weight_decay(var_list=[v for v in variables if len(v.shape) <= 1])
    return optimizer


def trained_variables(model: keras.Model, class_cosines: ClassCosines | None) -> list:
    """What the optimizer trains: the model's variables, then the class weights if any."""
    return model.trainable_variables + (class_cosines.trainable_variables if class_cosines else [])


def make_train_step(model: keras.Model, optimizer: keras.optimizers.Optimizer,
                    strategy: tf.distribute.Strategy, config: TrainConfig,
                    class_cosines: ClassCosines | None = None) -> Callable:
    """A tf.function running one step on every replica; returns the means of (loss, the loss's
    figure (FIGURES), mean squared distance between the batch's embeddings)."""
    loss_fn = get_loss(config, class_cosines)
    variables = trained_variables(model, class_cosines)
    replicas = strategy.num_replicas_in_sync

    def replica_step(images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, ...]:
        with tf.GradientTape() as tape:
            embeddings = model(images, training=True)
            loss, figure = loss_fn(labels, embeddings)
            # Gradients are summed over replicas, so each contributes its share of the mean.
            scaled = optimizer.scale_loss(loss / replicas)
        grads = tape.gradient(scaled, variables)
        optimizer.apply_gradients(zip(grads, variables, strict=True))
        d = pairwise_squared_distances(embeddings)
        n = tf.cast(tf.shape(d)[0], tf.float32)
        return loss, figure, tf.reduce_sum(d) / (n * (n - 1.0))

    @tf.function
    def step(iterator) -> list[tf.Tensor]:
        results = strategy.run(replica_step, args=next(iterator))
        return [strategy.reduce(tf.distribute.ReduceOp.MEAN, r, axis=None) for r in results]

    return step


# --- the loop --------------------------------------------------------------------------------

def start_or_resume(config: TrainConfig, checkpoints: Checkpoints, model: keras.Model,
                    optimizer: keras.optimizers.Optimizer, faces: TrainingFaces,
                    log: Callable[[str], None], class_cosines: ClassCosines | None = None) -> TrainState:
    """A fresh TrainState, or (--resume) the latest checkpoint's, loaded into model, class weights
    and optimizer."""
    pool = f"{len(faces)} faces of {faces.num_identities} identities"
    if not config.resume:
        if checkpoints.latest() is not None:
            raise ResumeError(f"{config.checkpoint_dir} already holds a checkpoint; pass --resume to continue "
                              "it, or start another run")
        return TrainState(pool=pool, pool_fingerprint=faces.fingerprint())
    state = checkpoints.restore(model, optimizer, config, class_cosines)
    if state.pool_fingerprint:
        same = state.pool_fingerprint == faces.fingerprint()
    else:
        log("the checkpoint predates pool fingerprints: only its face and identity counts can be compared")
        same = state.pool == pool
        state.pool_fingerprint = faces.fingerprint()
    if not same:
        raise ResumeError(f"--resume: the checkpoint was trained on other faces ({state.pool}; now {pool}, "
                          "with other image paths or identities); the batches would differ")
    log(f"resumed from {checkpoints.latest()} at step {state.step}")
    return state


def keep_best_of_history(state: TrainState, checkpoints: Checkpoints, config: TrainConfig,
                         log: Callable[[str], None]) -> bool:
    """Make ``config.weights_out`` the epoch with the highest ``state.selected_by`` among those whose
    weights a checkpoint file still holds (on --resume: the run may have kept its weights by another
    rule before, or --weights-out may name another file). Returns whether any epoch was held."""
    key = state.selected_by
    held = [(row, path) for row in state.history if key in row and (path := checkpoints.weights_of(row, state, config))]
    if not held:
        return False
    best, path = max(reversed(held), key=lambda held_row: held_row[0][key])  # a tie: the later epoch
    copy_file_atomic(path, config.weights_out)
    state.best = best
    log(f"kept weights: step {best['step']}, {SELECTION_RULES[key]} ({best[key]:.4f})")
    return True


def validation_row(figures: dict[str, float]) -> dict[str, float]:
    """An evaluator's figures as history columns (``val_`` + name) and SELECTED_BY, the mean of its AUCs
    (``auc`` and every ``<domain>_auc``)."""
    row = {f"val_{k}": float(v) for k, v in figures.items()}
    aucs = [v for k, v in row.items() if k == "val_auc" or (k.endswith("_auc") and k != SELECTED_BY)]
    if aucs:
        row[SELECTED_BY] = float(np.mean(aucs))
    return row


def validation_figures(row: dict[str, float]) -> str:
    """A history row's validation figures for a log line (', View 1 accuracy 0.8440, View 1 AUC 0.9509,
    CelebA val AUC 0.9312, mean AUC 0.9411'); empty without validation."""
    labels = {"val_accuracy": "View 1 accuracy", "val_auc": "View 1 AUC", "val_celeba_auc": "CelebA val AUC",
              SELECTED_BY: "mean AUC"}
    return "".join(f", {label} {row[key]:.4f}" for key, label in labels.items() if key in row)


def close_epoch(state: TrainState, config: TrainConfig) -> dict[str, float]:
    """The history row of the epoch's training figures; resets the epoch sums."""
    n = max(state.epoch_steps, 1)
    row = {"epoch": round(state.step / config.steps_per_epoch, 3), "step": state.step,
           "images_seen": state.step * config.batch_size, "wall_hours": state.wall_seconds / 3600,
           "loss": state.epoch_loss_sum / n, FIGURES[config.loss]: state.epoch_figure_sum / n,
           "mean_distance": state.epoch_distance_sum / n,
           "lr": learning_rate(config, state.step, state.wall_seconds),
           "images_per_second": n * config.batch_size / max(state.epoch_train_seconds, 1e-9)}
    state.epoch_loss_sum = state.epoch_figure_sum = state.epoch_distance_sum = 0.0
    state.epoch_train_seconds = 0.0
    state.epoch_steps = 0
    return row


def fit(config: TrainConfig, faces: TrainingFaces, build_model: Callable[[], keras.Model],
        evaluate: Evaluator | None = None, metadata: Callable[[dict], None] | None = None,
        log: Callable[[str], None] = print, strategy: tf.distribute.Strategy | None = None,
        lfw_labels: np.ndarray | None = None) -> TrainResult:
    """Train ``build_model()`` on ``faces``; see the module docstring for what each epoch writes.

    ``evaluate(model)`` returns validation figures, logged with a ``val_`` prefix; the mean of its AUCs
    (``auc``, ``celeba_auc``: see ``validation_row``) selects the kept weights, or View 1 ``auc`` alone
    in a resumed run that started with that rule (``TrainState.selected_by``); without an evaluator the
    latest weights are kept.
    ``metadata(record)`` is called after every epoch with the record of the saved weights and
    the run (utils.training.metadata.training_record). ``strategy`` defaults to
    ``make_strategy(config.strategy)``. ``lfw_labels`` (the LFW identities) are needed with
    ``config.lfw_share``: that share of every batch's identities is drawn from them.
    """
    if faces.image_size != config.image_size:
        raise TrainingError(f"the training faces are {faces.image_size} px, the model takes "
                            f"{config.image_size} px")
    strategy = strategy or make_strategy(config.strategy)
    chief = is_chief(strategy)
    model, class_cosines, optimizer = build_model_and_optimizer(config, strategy, build_model, faces.num_identities)
    checkpoints = Checkpoints(config.checkpoint_dir)
    state = start_or_resume(config, checkpoints, model, optimizer, faces, log, class_cosines)
    if state.selected_by != SELECTED_BY:
        log(f"this run keeps the weights rule it started with: {SELECTION_RULES[state.selected_by]}")
    if chief and config.resume and keep_best_of_history(state, checkpoints, config, log) and metadata is not None:
        metadata(training_record(config, state, faces, int(model.output_shape[-1])))
    if config.lfw_share is not None and lfw_labels is None:
        raise TrainingError("lfw_share needs the labels of the LFW identities")
    negatives = faces.identities_with_fewer_than(config.min_images) if config.one_photo_negatives else None
    sampler = PKSampler(faces.labels, config.identities_per_batch, config.images_per_identity, config.seed,
                        group=lfw_labels, group_share=config.lfw_share, negatives=negatives,
                        negatives_per_batch=config.one_photo_negatives)
    iterator = iter(strategy.distribute_datasets_from_function(
        lambda context: training_dataset(faces, sampler, state.step, config.augmentation, context)))
    train_step = make_train_step(model, optimizer, strategy, config, class_cosines)
    figure = FIGURES[config.loss]
    vote = make_stop_vote(strategy)
    collapse = CollapseDetector(config.collapse_patience)
    budget = config.time_budget_hours * 3600 if config.time_budget_hours else math.inf
    settings = [f"{config.identities_per_batch} x {config.images_per_identity} batches",
                f"triplet loss, {config.mining} mining, margin {config.margin}" if config.loss == "triplet" else
                f"{config.loss} loss, scale {config.scale}, margin {config.class_margin}",
                f"lr {config.lr} ({config.lr_schedule})", f"{config.augmentation} augmentation"]
    if config.weight_decay:
        settings.append(f"weight decay {config.weight_decay}")
    if config.lfw_share is not None:
        settings.append(f"LFW share {config.lfw_share}")
    if negatives is not None:
        settings.append(f"plus one face each of {config.one_photo_negatives} of the {len(negatives)} people with "
                        f"fewer than {config.min_images} faces as negatives")
    log(f"training {config.model} on {len(faces)} faces of {faces.num_identities} identities: "
        f"{', '.join(settings)}, {strategy.num_replicas_in_sync} replica(s), "
        f"steps {state.step} -> {config.total_steps}")
    run_start, wall_before = time.monotonic(), state.wall_seconds

    def tick() -> None:
        state.wall_seconds = wall_before + time.monotonic() - run_start

    def end_epoch() -> None:
        row = close_epoch(state, config)
        if evaluate is not None:
            row.update(validation_row(evaluate(model)))
            tick()
        state.history.append(row)
        key = state.selected_by
        improved = state.best is None or row.get(key, 0.0) >= state.best.get(key, 0.0)
        if improved:
            state.best = row
        if chief:
            if improved:
                save_weights_atomic(model, config.weights_out)
            if metadata is not None:
                metadata(training_record(config, state, faces, int(model.output_shape[-1])))
            checkpoints.save(model, optimizer, state, config, class_cosines)
        logs.epoch(state.history, state.selected_by)
        log(f"epoch {row['epoch']:g} (step {state.step}, {row['wall_hours'] * 60:.1f} min): "
            f"loss {row['loss']:.4f}, {figure.replace('_', ' ')} {row[figure]:.3f}, "
            f"mean distance {row['mean_distance']:.3f}, {row['images_per_second']:.1f} images/s"
            f"{validation_figures(row)}"
            + (" (best)" if improved else ""))

    if state.wall_seconds >= budget:
        return TrainResult("time-budget", f"the time budget of {config.time_budget_hours} h was already spent "
                           f"at step {state.step}; give a larger --time-budget to train on", state)
    with StopSignals() as signals, TrainingLog(config.log_dir, enabled=chief) as logs, \
            progress_bar(total=config.total_steps, initial=state.step, unit="step", desc=config.model,
                         disable=not chief) as bar:
        def log_above_bar(message: str, say: Callable[[str], None] = log) -> None:
            with bar.external_write_mode():
                say(message)

        log = log_above_bar
        while state.step < config.total_steps:
            started = time.monotonic()
            optimizer.learning_rate = learning_rate(config, state.step, state.wall_seconds)
            loss, value, distance = (float(x) for x in train_step(iterator))
            if not np.isfinite(loss):
                return TrainResult("nan", f"the loss became {loss} at step {state.step + 1}; the last checkpoint "
                                   f"({checkpoints.latest()}) is intact; try a lower --lr", state)
            state.step += 1
            state.epoch_loss_sum += loss
            state.epoch_figure_sum += value
            state.epoch_distance_sum += distance
            state.epoch_steps += 1
            state.epoch_train_seconds += time.monotonic() - started
            tick()
            logs.scalars(state.step, {"train/loss": loss, f"train/{figure}": value, "train/mean_distance": distance})
            bar.update(1)
            bar.set_postfix_str(step_status(state, config, loss, budget), refresh=False)
            if config.loss == "triplet" and collapse.update(distance, value):
                return TrainResult("collapsed", (
                    f"training collapsed at step {state.step}: for {collapse.count} steps every embedding of "
                    f"the batch sat at one point (mean squared distance {distance:.2g}) with "
                    f"{value:.0%} of the triplets active, so the loss is stuck at the margin. Try "
                    "--mining semi-hard, a lower --lr, or more identities per batch; the last checkpoint "
                    f"({checkpoints.latest()}) is intact"), state)
            out_of_time, signalled = vote(state.wall_seconds >= budget, signals.received is not None)
            epoch_ends = state.step % config.steps_per_epoch == 0 or state.step == config.total_steps
            if epoch_ends or out_of_time:
                end_epoch()  # (validation may use the budget up: vote again)
                out_of_time, signalled = vote(state.wall_seconds >= budget, signals.received is not None)
            if out_of_time:
                return TrainResult("time-budget", f"time budget of {config.time_budget_hours} h reached "
                                   f"at step {state.step}", state)
            if signalled:
                if chief and not epoch_ends:
                    checkpoints.save(model, optimizer, state, config, class_cosines)
                why = f"{signals.received} received" if signals.received else "another worker was signalled"
                return TrainResult("interrupted", f"{why}: stopped at step {state.step}, checkpoint in "
                                   f"{checkpoints.latest()}; --resume continues", state)
    return TrainResult("completed", f"finished {state.step} steps", state)


def step_status(state: TrainState, config: TrainConfig, loss: float, budget_seconds: float) -> str:
    """The progress bar's tail: images/s and loss of this epoch, time to the next validation and
    to the end of the time budget."""
    seconds_per_step = state.epoch_train_seconds / max(state.epoch_steps, 1)
    to_validation = (config.steps_per_epoch - state.step % config.steps_per_epoch) % config.steps_per_epoch
    status = (f"{config.batch_size / max(seconds_per_step, 1e-9):.0f} img/s, loss {loss:.4f}, "
              f"validation in {format_duration(to_validation * seconds_per_step)}")
    if math.isfinite(budget_seconds):
        status += f", budget left {format_duration(budget_seconds - state.wall_seconds)}"
    return status


def format_duration(seconds: float) -> str:
    """3 h 05 min, 12 min 30 s or 45 s."""
    seconds = max(int(seconds), 0)
    hours, minutes = divmod(seconds // 60, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {seconds % 60:02d} s" if minutes else f"{seconds} s"


# --- the whole run ---------------------------------------------------------------------------

def create_output_folders(config: TrainConfig) -> None:
    """Make the checkpoint, log and weights folders now, so that an unwritable one fails before
    the data is loaded rather than after the first epoch (OSError / PermissionError)."""
    for folder in (Path(config.checkpoint_dir), Path(config.log_dir), Path(config.weights_out).parent):
        folder.mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK | os.X_OK):
            raise PermissionError(f"cannot write to {folder}")


def run(config: TrainConfig, validation: bool = True, build_model: Callable[[], keras.Model] | None = None,
        log: Callable[[str], None] = print) -> int:
    """Lock the run folder (the checkpoint folder; on the chief worker), load the data, train, report;
    returns the process exit code (see EXIT_CODES). RunInUseError when another process trains there."""
    strategy = make_strategy(config.strategy)  # first: a multi-worker strategy must precede other TF work
    if not is_chief(strategy):
        return train_and_report(config, validation, build_model, log, strategy)
    create_output_folders(config)
    with RunLock(config.checkpoint_dir):
        for path in remove_stale_temporaries(config.checkpoint_dir, config.log_dir, config.weights_out):
            log(f"removed {path}, left half-written by a killed run")
        return train_and_report(config, validation, build_model, log, strategy)


def train_and_report(config: TrainConfig, validation: bool, build_model: Callable[[], keras.Model] | None,
                     log: Callable[[str], None], strategy: tf.distribute.Strategy) -> int:
    """``run`` after the run folder is locked."""
    pooled_min_images = 1 if config.one_photo_negatives else config.min_images  # the rest are negatives
    faces, loaded = load_training_data(config.data, config.image_size, config.exclude_people,
                                       pooled_min_images, log)
    evaluate = validation_evaluator(loaded, config.image_size, log) if validation else None
    lfw = lfw_labels(faces, loaded) if config.lfw_share is not None else None
    if build_model is None:
        from models import get_model

        def build_model() -> keras.Model:
            return get_model(config.model, input_size=config.image_size)
    result = fit(config, faces, build_model, evaluate, metadata_writer(config), log, strategy, lfw)
    log(result.message)
    if result.state.best:
        best = result.state.best
        log(f"best weights (step {best['step']}"
            + validation_figures(best)
            + f") in {config.weights_out}")
    return EXIT_CODES[result.status]
