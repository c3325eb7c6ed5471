"""Triplet training of a face-embedding model: the loop and its pieces (train.py is the command line).

One run = ``epochs`` x ``steps_per_epoch`` steps of P x K batches (utils.batching) with an
online-mined triplet loss (utils.triplet_loss), Adam, a custom ``tf.function`` step under a
``tf.distribute`` strategy. After every epoch: LFW View 1 validation (or a given evaluator),
a checkpoint, the CSV/TensorBoard logs, a PNG of the curves, and, when validation accuracy
improves, the weights and their metadata.

Checkpoints (``checkpoint_dir``): each is a new folder ``step-<N>`` holding ``model.weights.h5``,
``optimizer.npz`` and ``state.json`` (step, epoch sums, images seen, wall time, history, the
run's settings); it is written as ``step-<N>.tmp`` and renamed, then the one-line file
``latest`` is replaced atomically to point at it, and only then are older folders deleted. A
kill at any moment leaves ``latest`` naming a complete checkpoint. The batches are a pure
function of (seed, step), so the step number is the data pipeline's whole position and a
resumed run performs the same steps as an uninterrupted one.

Stops: Ctrl-C / SIGTERM (checkpoint, then exit), a NaN loss (message; the last checkpoint is
kept), a collapse (a batch's embeddings at almost one point with every triplet active, for
``collapse_patience`` steps in a row), and the time budget (validate, checkpoint, finish).
"""
from __future__ import annotations

import csv
import json
import os
import platform
import shutil
import signal
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import keras
import numpy as np
import tensorflow as tf

from utils.batching import PKSampler, TrainingFaces, pool_datasets, training_dataset
from utils.paths import cache_dir, data_dir, lfw_dir, lfw_protocol_dir
from utils.triplet_loss import get_loss, pairwise_squared_distances

if TYPE_CHECKING:
    from utils.aligned_cache import AlignedFaces

STRATEGIES = ("default", "mirrored", "multiworker")
COLLAPSE_DISTANCE = 0.01  # mean squared distance between a batch's unit embeddings (random: ~2)
COLLAPSE_ACTIVE = 0.99
# Settings that must match for --resume to continue the same run.
RESUME_KEYS = ("model", "data", "exclude_people", "min_images", "image_size", "identities_per_batch",
               "images_per_identity", "steps_per_epoch", "seed", "mining", "margin", "soft_margin", "lr",
               "mixed_precision", "augmentation")

Evaluator = Callable[[keras.Model], dict[str, float]]


class TrainingError(RuntimeError):
    """Training cannot start or go on; the message says why and what to do."""


@dataclass
class TrainConfig:
    """Everything a run needs besides the data arrays; saved in every checkpoint."""

    model: str
    data: list[str]
    checkpoint_dir: str
    log_dir: str
    weights_out: str
    epochs: int = 50
    steps_per_epoch: int = 100
    identities_per_batch: int = 32
    images_per_identity: int = 4
    margin: float = 0.2
    mining: str = "semi-hard"
    soft_margin: bool = False
    lr: float = 1e-3
    image_size: int = 96
    seed: int = 0
    time_budget_hours: float | None = None
    strategy: str = "default"
    mixed_precision: bool = False
    augmentation: bool = True
    min_images: int = 2
    exclude_people: list[str] = field(default_factory=list)
    collapse_patience: int = 50
    resume: bool = False

    @property
    def batch_size(self) -> int:
        return self.identities_per_batch * self.images_per_identity

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch


@dataclass
class TrainState:
    """Where a run stands; everything in it goes into the checkpoint."""

    step: int = 0
    pool: str = ""  # what the batches were drawn from; must not change on --resume
    wall_seconds: float = 0.0
    epoch_loss_sum: float = 0.0
    epoch_active_sum: float = 0.0
    epoch_distance_sum: float = 0.0
    epoch_train_seconds: float = 0.0
    epoch_steps: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    best: dict[str, float] | None = None


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


def make_train_step(model: keras.Model, optimizer: keras.optimizers.Optimizer,
                    strategy: tf.distribute.Strategy, config: TrainConfig) -> Callable:
    """A tf.function running one step on every replica; returns mean (loss, active fraction, distance)."""
    loss_fn = get_loss(config.mining)
    replicas = strategy.num_replicas_in_sync

    def replica_step(images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, ...]:
        with tf.GradientTape() as tape:
            embeddings = model(images, training=True)
            loss, active = loss_fn(labels, embeddings, margin=config.margin, soft_margin=config.soft_margin)
            # Gradients are summed over replicas, so each contributes its share of the mean.
            scaled = optimizer.scale_loss(loss / replicas)
        grads = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        d = pairwise_squared_distances(embeddings)
        n = tf.cast(tf.shape(d)[0], tf.float32)
        return loss, active, tf.reduce_sum(d) / (n * (n - 1.0))

    @tf.function
    def step(iterator) -> list[tf.Tensor]:
        results = strategy.run(replica_step, args=next(iterator))
        return [strategy.reduce(tf.distribute.ReduceOp.MEAN, r, axis=None) for r in results]

    return step


# --- files ----------------------------------------------------------------------------------

def write_text_atomic(path: Path, text: str) -> None:
    """Write a file through a temp file and a rename: readers see the old or the new content."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_weights_atomic(model: keras.Model, path: Path) -> None:
    """model.save_weights through a temp file in the same folder (Keras wants the .weights.h5 suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{os.getpid()}.tmp.weights.h5")
    model.save_weights(tmp)
    os.replace(tmp, path)


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
             config: TrainConfig) -> Path:
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
        (tmp / "state.json").write_text(json.dumps({"config": asdict(config), "state": asdict(state)}, indent=1))
        for f in tmp.iterdir():
            with open(f, "rb") as handle:
                os.fsync(handle.fileno())
        final = self.folder / name
        os.replace(tmp, final)
        write_text_atomic(self.folder / "latest", name + "\n")
        # One weights snapshot per epoch stays, for visualize.py --progress-from.
        epoch = -(-state.step // config.steps_per_epoch)
        shutil.copyfile(final / "model.weights.h5", self.folder / f"epoch_{epoch:03d}.weights.h5")
        for old in self.folder.glob("step-*"):
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)
        return final

    def restore(self, model: keras.Model, optimizer: keras.optimizers.Optimizer,
                config: TrainConfig) -> TrainState:
        path = self.latest()
        if path is None:
            raise TrainingError(f"--resume: no checkpoint in {self.folder}")
        saved = json.loads((path / "state.json").read_text())
        old = saved["config"]
        changed = [f"{k}: {old.get(k)!r} -> {getattr(config, k)!r}" for k in RESUME_KEYS
                   if old.get(k) != getattr(config, k)]
        if changed:
            raise TrainingError(f"--resume: the checkpoint in {path} was trained with other settings "
                                f"({'; '.join(changed)}); resume with the same settings or start a new "
                                "--checkpoint-dir")
        model.load_weights(path / "model.weights.h5")
        values = np.load(path / "optimizer.npz")
        if len(values.files) != len(optimizer.variables):
            raise TrainingError(f"--resume: {path} holds {len(values.files)} optimizer variables, "
                                f"the optimizer has {len(optimizer.variables)}")
        for i, variable in enumerate(optimizer.variables):
            variable.assign(values[f"{i:04d}"])
        return TrainState(**saved["state"])


class TrainingLog:
    """TensorBoard scalars, metrics.csv (one row per epoch) and training_curves.png."""

    def __init__(self, folder: str | Path, enabled: bool = True):
        self.folder = Path(folder)
        self.enabled = enabled
        if enabled:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.writer = tf.summary.create_file_writer(str(self.folder / "tensorboard"))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        with self.writer.as_default(step=step):
            for name, value in values.items():
                tf.summary.scalar(name, value)

    def epoch(self, history: list[dict[str, float]]) -> None:
        if not self.enabled:
            return
        self.scalars(int(history[-1]["step"]), {f"epoch/{k}": v for k, v in history[-1].items()
                                                 if k not in ("step", "epoch")})
        self.writer.flush()
        columns = list(dict.fromkeys(k for row in history for k in row))
        fd, tmp = tempfile.mkstemp(dir=self.folder, suffix=".tmp")
        with os.fdopen(fd, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(history)
        os.replace(tmp, self.folder / "metrics.csv")
        plot_history(history, self.folder / "training_curves.png")


def plot_history(history: list[dict[str, float]], path: Path) -> None:
    """Training loss and validation accuracy against wall-clock hours, one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hours = [row["wall_hours"] for row in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(hours, [row["loss"] for row in history], "o-")
    ax_loss.set(xlabel="wall-clock hours", ylabel="triplet loss (epoch mean)", title="training loss")
    val = [(row["wall_hours"], row["val_accuracy"]) for row in history if "val_accuracy" in row]
    if val:
        ax_acc.plot(*zip(*val), "o-", color="tab:green")
    ax_acc.axhline(0.5, color="grey", linestyle=":", linewidth=1)
    ax_acc.set(xlabel="wall-clock hours", ylabel="accuracy", title="LFW View 1 DevTest accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".png")
    os.close(fd)
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


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


# --- run ------------------------------------------------------------------------------------

class StopSignals:
    """While active, SIGINT and SIGTERM set ``received`` instead of killing the process."""

    def __init__(self):
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopSignals":
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame) -> None:
        self.received = signal.Signals(signum).name

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class CollapseDetector:
    """Flags a run whose batch embeddings sit at one point with every triplet active, step after step."""

    def __init__(self, patience: int):
        self.patience = patience
        self.count = 0

    def update(self, mean_distance: float, active: float) -> bool:
        collapsed = mean_distance < COLLAPSE_DISTANCE and active >= COLLAPSE_ACTIVE
        self.count = self.count + 1 if collapsed else 0
        return self.patience > 0 and self.count >= self.patience


def fit(config: TrainConfig, faces: TrainingFaces, build_model: Callable[[], keras.Model],
        evaluate: Evaluator | None = None, metadata: Callable[[dict[str, Any]], None] | None = None,
        log: Callable[[str], None] = print) -> TrainResult:
    """Train ``build_model()`` on ``faces``; see the module docstring for what each epoch writes.

    ``evaluate(model)`` returns validation figures (``accuracy`` selects the best weights; all
    are logged with a ``val_`` prefix); without it the latest weights count as the best.
    ``metadata(fields)`` is called with the training record whenever weights are saved.
    """
    if faces.image_size != config.image_size:
        raise TrainingError(f"the training faces are {faces.image_size} px, the model takes "
                            f"{config.image_size} px")
    strategy = make_strategy(config.strategy)
    chief = is_chief(strategy)
    keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        previous_policy = keras.mixed_precision.global_policy()
        policy = mixed_precision_policy() if config.mixed_precision else "float32"
        keras.mixed_precision.set_global_policy(policy)
        try:
            model = with_float32_output(build_model())
        finally:
            keras.mixed_precision.set_global_policy(previous_policy)
        optimizer = keras.optimizers.Adam(config.lr)
        if policy == "mixed_float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        optimizer.build(model.trainable_variables)
    checkpoints = Checkpoints(config.checkpoint_dir)
    pool = f"{len(faces)} faces of {faces.num_identities} identities"
    if config.resume:
        state = checkpoints.restore(model, optimizer, config)
        if state.pool != pool:
            raise TrainingError(f"--resume: the checkpoint was trained on {state.pool}, the data now holds "
                                f"{pool}; the batches would differ")
        log(f"resumed from {checkpoints.latest()} at step {state.step}")
    elif checkpoints.latest() is not None:
        raise TrainingError(f"{config.checkpoint_dir} already holds a checkpoint; pass --resume to continue "
                            "it, or choose another --checkpoint-dir")
    else:
        state = TrainState(pool=pool)

    sampler = PKSampler(faces.labels, config.identities_per_batch, config.images_per_identity, config.seed)
    iterator = iter(strategy.distribute_datasets_from_function(
        lambda context: training_dataset(faces, sampler, state.step, config.augmentation, context)))
    train_step = make_train_step(model, optimizer, strategy, config)
    logs = TrainingLog(config.log_dir, enabled=chief)
    collapse = CollapseDetector(config.collapse_patience)
    budget = config.time_budget_hours * 3600 if config.time_budget_hours else None
    log(f"training {config.model} on {len(faces)} faces of {faces.num_identities} identities: "
        f"{config.identities_per_batch} x {config.images_per_identity} batches, {config.mining} mining, "
        f"margin {config.margin}, lr {config.lr}, {strategy.num_replicas_in_sync} replica(s), "
        f"steps {state.step} -> {config.total_steps}")

    def checkpoint() -> None:
        if chief:
            checkpoints.save(model, optimizer, state, config)

    def record(extra: dict[str, Any]) -> dict[str, Any]:
        return {"architecture": config.model, "input_size": config.image_size,
                "embedding_size": int(model.output_shape[-1]),
                "training": {"steps": state.step, "epochs": round(state.step / config.steps_per_epoch, 3),
                             "images_seen": state.step * config.batch_size,
                             "wall_hours": round(state.wall_seconds / 3600, 4),
                             "hardware": hardware_description(), "data": config.data,
                             "excluded_people_files": config.exclude_people,
                             "identities": faces.num_identities, "images": len(faces),
                             "mining": config.mining, "margin": config.margin,
                             "soft_margin": config.soft_margin, "lr": config.lr, "optimizer": "adam",
                             "identities_per_batch": config.identities_per_batch,
                             "images_per_identity": config.images_per_identity, "seed": config.seed,
                             "strategy": config.strategy, "mixed_precision": config.mixed_precision,
                             "best_validation": state.best,
                             "final_validation": state.history[-1] if state.history else None, **extra}}

    run_start, wall_before = time.monotonic(), state.wall_seconds

    def tick() -> None:
        state.wall_seconds = wall_before + time.monotonic() - run_start

    def end_epoch() -> None:
        n = max(state.epoch_steps, 1)
        row = {"epoch": round(state.step / config.steps_per_epoch, 3), "step": state.step,
               "images_seen": state.step * config.batch_size, "wall_hours": state.wall_seconds / 3600,
               "loss": state.epoch_loss_sum / n, "active_fraction": state.epoch_active_sum / n,
               "mean_distance": state.epoch_distance_sum / n,
               "images_per_second": n * config.batch_size / max(state.epoch_train_seconds, 1e-9)}
        if evaluate is not None:
            row.update({f"val_{k}": float(v) for k, v in evaluate(model).items()})
            tick()
        state.history.append(row)
        state.epoch_loss_sum = state.epoch_active_sum = state.epoch_distance_sum = 0.0
        state.epoch_train_seconds = 0.0
        state.epoch_steps = 0
        improved = state.best is None or row.get("val_accuracy", 0.0) >= state.best.get("val_accuracy", 0.0)
        if improved:
            state.best = row
            if chief:
                save_weights_atomic(model, Path(config.weights_out))
        if chief and metadata is not None:
            metadata(record({"weights_file": str(config.weights_out)}))
        val = "".join(f", View 1 {k[4:]} {v:.4f}" for k, v in row.items() if k in ("val_accuracy", "val_auc"))
        log(f"epoch {row['epoch']:g} (step {state.step}, {row['wall_hours'] * 60:.1f} min): "
            f"loss {row['loss']:.4f}, active {row['active_fraction']:.3f}, "
            f"mean distance {row['mean_distance']:.3f}, {row['images_per_second']:.1f} images/s{val}"
            + (" (best)" if improved else ""))
        checkpoint()
        logs.epoch(state.history)

    with StopSignals() as signals:
        while state.step < config.total_steps:
            started = time.monotonic()
            loss, active, distance = (float(x) for x in train_step(iterator))
            if not np.isfinite(loss):
                return TrainResult("nan", f"the loss became {loss} at step {state.step + 1}; the last checkpoint "
                                   f"({checkpoints.latest()}) is intact; try a lower --lr", state)
            state.step += 1
            state.epoch_loss_sum += loss
            state.epoch_active_sum += active
            state.epoch_distance_sum += distance
            state.epoch_steps += 1
            state.epoch_train_seconds += time.monotonic() - started
            tick()
            logs.scalars(state.step, {"train/loss": loss, "train/active_fraction": active,
                                      "train/mean_distance": distance})
            if collapse.update(distance, active):
                return TrainResult("collapsed", (
                    f"training collapsed at step {state.step}: for {collapse.count} steps every embedding of "
                    f"the batch sat at one point (mean squared distance {distance:.2g}) with "
                    f"{active:.0%} of the triplets active, so the loss is stuck at the margin. Try "
                    "--mining semi-hard, a lower --lr, or more identities per batch; the last checkpoint "
                    f"({checkpoints.latest()}) is intact"), state)
            out_of_time = budget is not None and state.wall_seconds >= budget
            if state.step % config.steps_per_epoch == 0 or state.step == config.total_steps or out_of_time:
                end_epoch()
                if budget is not None and state.wall_seconds >= budget:  # validation may have used it up
                    return TrainResult("time-budget", f"time budget of {config.time_budget_hours} h reached "
                                       f"at step {state.step}", state)
            if signals.received:
                checkpoint()
                return TrainResult("interrupted", f"{signals.received} received: stopped at step {state.step}, "
                                   f"checkpoint in {checkpoints.latest()}; --resume continues", state)
    return TrainResult("completed", f"finished {state.step} steps", state)


# --- data and the whole run -----------------------------------------------------------------

def default_data() -> list[str]:
    """LFW (its DevTest and benchmark people are excluded by default) plus celeba-subset when present."""
    celeba = data_dir() / "celeba-subset"
    return [str(lfw_dir())] + ([str(celeba)] if celeba.is_dir() else [])


def default_exclusions() -> list[str]:
    """LFW View 1 DevTest people (the validation identities) and the 10 benchmark-face people."""
    return [str(lfw_protocol_dir() / "peopleDevTest.txt"), str(data_dir() / "benchmark_faces.txt")]


def read_people_file(path: str | Path) -> set[str]:
    """Identity names in an LFW people file (count header, ``Name count`` lines) or a plain list
    with one ``Name`` or ``Name/image.jpg`` per line (like benchmark_faces.txt)."""
    from utils.datasets.folders import DatasetError
    from utils.datasets.lfw import parse_people

    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"people file not found: {path}")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if lines and lines[0].isdigit():
        return {person.name for person in parse_people(path)}
    return {line.split("/", 1)[0].split("\t", 1)[0] for line in lines}


def load_source(source: str | Path, image_size: int, log: Callable[[str], None] = print) -> "AlignedFaces":
    """Aligned faces of one --data entry: an aligned-cache folder, an MS-Celeb TSV (exported to a
    folder tree under the cache folder first) or a folder-per-identity tree (aligned and cached)."""
    from utils.aligned_cache import load_cache, load_or_build
    from utils.datasets.folders import DatasetError

    path = Path(source)
    if path.is_file() and path.suffix.lower() == ".tsv":
        from utils.datasets.msceleb import export_to_folders

        tree = cache_dir() / "msceleb" / path.stem
        log(f"exporting {path} to {tree}")
        export_to_folders(path, tree, min_images=2)
        path = tree
    if (path / "faces.npy").is_file():
        faces = load_cache(path)
        if faces.faces.shape[1] != image_size:
            raise DatasetError(f"the aligned cache {path} holds {faces.faces.shape[1]} px faces, "
                               f"not --image-size {image_size}")
        return faces
    if not path.is_dir():
        raise DatasetError(f"training data not found: {path} (expected a folder-per-identity tree, "
                           "an aligned-cache folder or an MS-Celeb .tsv file)")
    return load_or_build(path, output_size=image_size)


def load_training_data(sources: list[str], image_size: int, exclude_files: list[str], min_images: int,
                       log: Callable[[str], None] = print) -> tuple[TrainingFaces, dict[str, "AlignedFaces"]]:
    """Pool the sources (identities namespaced by the source's folder name) minus the excluded people."""
    excluded = set().union(*(read_people_file(f) for f in exclude_files))
    loaded: dict[str, AlignedFaces] = {}
    for source in sources:
        name = Path(source).name.removesuffix(".tsv")
        while name in loaded:
            name += "+"
        loaded[name] = load_source(source, image_size, log)
    faces = pool_datasets(loaded, excluded, min_images)
    log(f"training data: {len(faces)} detected faces of {faces.num_identities} identities from "
        f"{', '.join(sources)}; {len(excluded)} people excluded")
    return faces, loaded


def view1_evaluator(lfw: "AlignedFaces") -> Evaluator:
    """LFW View 1: threshold from the DevTrain pairs, accuracy and AUC on the DevTest pairs."""
    from utils.evaluation import evaluate_lfw

    def evaluate(model: keras.Model) -> dict[str, float]:
        v = evaluate_lfw(model, protocol="view1", aligned=lfw).verification
        return {"accuracy": v.accuracy, "auc": v.auc, "threshold": v.threshold, "eer": v.eer}

    return evaluate


def metadata_writer(config: TrainConfig) -> Callable[[dict[str, Any]], None]:
    """Merges the training record into weights/<model>.json (models.weights.update_metadata), or
    into <stem>.json beside a --weights-out file elsewhere."""
    from models.weights import update_metadata, weights_path

    out = Path(config.weights_out).resolve()
    if out == weights_path(config.model).resolve():
        return lambda fields: update_metadata(config.model, **fields)
    path = out.with_name(out.name.removesuffix(".weights.h5") + ".json")

    def write(fields: dict[str, Any]) -> None:
        old = json.loads(path.read_text()) if path.exists() else {}
        write_text_atomic(path, json.dumps({**old, **fields}, indent=2, sort_keys=True) + "\n")

    return write


EXIT_CODES = {"completed": 0, "time-budget": 0, "interrupted": 130, "nan": 3, "collapsed": 4}


def run(config: TrainConfig, validation: bool = True, build_model: Callable[[], keras.Model] | None = None,
        log: Callable[[str], None] = print) -> int:
    """Load the data, train, report; returns the process exit code (see EXIT_CODES)."""
    faces, loaded = load_training_data(config.data, config.image_size, config.exclude_people,
                                       config.min_images, log)
    evaluate = None
    if validation:
        lfw = next((v for k, v in loaded.items() if Path(v.root).resolve() == lfw_dir().resolve()), None)
        if lfw is None:
            from utils.aligned_cache import load_or_build

            lfw = load_or_build(lfw_dir(), output_size=config.image_size)
        evaluate = view1_evaluator(lfw)
    if build_model is None:
        from models import get_model

        def build_model() -> keras.Model:
            return get_model(config.model, input_size=config.image_size)
    result = fit(config, faces, build_model, evaluate, metadata_writer(config), log)
    log(result.message)
    if result.state.best:
        best = result.state.best
        log(f"best weights (step {best['step']}"
            + (f", View 1 accuracy {best['val_accuracy']:.4f}" if "val_accuracy" in best else "")
            + f") in {config.weights_out}")
    return EXIT_CODES[result.status]
