"""Identity-balanced P x K training batches from aligned-face caches, as a tf.data pipeline.

A batch holds P identities with K images each, so that every anchor has K - 1 positives and
(P - 1) K negatives to mine from. Which images make batch ``step`` is a pure function of
``(seed, step)``: a resumed run continues with exactly the batches an uninterrupted run
would have seen, with nothing to save but the step number.

Sampling. The identities are visited in passes (the sampler's epochs; a training epoch is a
fixed number of steps instead): each pass is a fresh shuffle of all identities (drawn from
``(seed, pass)``), cut into consecutive groups of P; the P x K batches of one pass hold every
identity once (the ``len % P`` left over at the end of a pass differ from pass to pass). With a
favoured group of identities and its share F (train.py --lfw-share: the LFW identities),
round(F P) places of every batch go to the group and the rest to the other identities, each
part visited in passes of its own as above, and the P identities are shuffled together (so that
replicas get mixed shares). Of each identity K different images are drawn; an identity with
fewer than K images contributes all of them, in random order, and the rest are drawn again with
replacement (augmentation makes the repeats differ). Identities with fewer than
``min_images`` (default 2) images are left out: they can form no positive pair. They can serve
as negatives instead (train.py --one-photo-negatives N): one face each of N of them, visited in
passes of their own, follows the P x K faces of every batch.

Only faces where dlib found a face (``detected``) are used. Several datasets combine; each
identity is named ``<dataset>/<folder>``, so equal folder names in two datasets stay apart.

The pipeline: a generator yields one index array per batch (NumPy, per batch, not per
image), then a parallel map gathers the batch's uint8 faces (read from the memory-mapped shards
of the face store, several batches at once, or from an in-memory array), converts them to
float32 in [0, 1] and augments them (mild: horizontal flip, small rotation, scale and shift,
brightness and contrast; strong: larger ones, plus colour, blur and an erased patch; pose: mild
with larger rotation, scale and shift) with stateless random ops seeded by ``(seed, step, replica)``,
then prefetches.
"""
from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import tensorflow as tf

from utils.faces.store import RowView

if TYPE_CHECKING:
    from utils.faces.cache import AlignedFaces

@dataclass(frozen=True)
class Augmentation:
    """How far training faces are perturbed: each field is a maximum or, where said, a probability."""

    rotation_degrees: float
    scale: float                # zoom factor drawn from [1 - scale, 1 + scale]
    shift: float                # translation as a fraction of the side, per axis
    brightness: float           # added to [0, 1] pixel values
    contrast: float             # contrast factor drawn from [1 - contrast, 1 + contrast]
    saturation: float = 0.0     # colour saturation factor drawn from [1 - saturation, 1 + saturation]
    greyscale: float = 0.0      # probability of dropping the colour altogether
    low_resolution: float = 0.0  # probability of shrinking to LOW_RESOLUTION of the side and back
    erase: float = 0.0          # probability of one rectangle (ERASE_AREA of the face) filled with grey


AUGMENTATIONS = {
    "mild": Augmentation(rotation_degrees=8.0, scale=0.06, shift=0.04, brightness=0.08, contrast=0.15),
    "strong": Augmentation(rotation_degrees=12.0, scale=0.10, shift=0.06, brightness=0.15, contrast=0.3,
                           saturation=0.4, greyscale=0.15, low_resolution=0.25, erase=0.25),
    # Mild's photometric changes with larger head turns, zooms and shifts (faces beyond LFW are
    # less well aligned and framed).
    "pose": Augmentation(rotation_degrees=20.0, scale=0.20, shift=0.10, brightness=0.08, contrast=0.15),
}
LOW_RESOLUTION = (0.35, 0.75)   # side of the shrunken face, as a fraction, one draw per batch
ERASE_AREA = (0.03, 0.15)       # area of an erased rectangle, as a fraction of the face


@dataclass
class TrainingFaces:
    """Aligned faces pooled for training: uint8 faces, an integer label each, label names, image paths."""

    faces: np.ndarray | RowView  # (N, S, S, 3) uint8, in memory or rows of memory-mapped store shards
    labels: np.ndarray      # (N,) int32, index into names
    names: list[str]        # "<dataset>/<identity>" for each label
    paths: list[str]        # "<dataset>/<relative image path>" of each face

    def __post_init__(self) -> None:
        if self.faces.ndim != 4 or self.faces.shape[3] != 3 or self.faces.dtype != np.uint8:
            raise ValueError(f"expected (N, S, S, 3) uint8 faces, got {self.faces.dtype} {self.faces.shape}")
        if not len(self.labels) == len(self.paths) == len(self.faces):
            raise ValueError(f"{len(self.labels)} labels and {len(self.paths)} paths for {len(self.faces)} faces")

    @property
    def num_identities(self) -> int:
        return len(self.names)

    @property
    def image_size(self) -> int:
        return int(self.faces.shape[1])

    def __len__(self) -> int:
        return len(self.faces)

    def identities_with_fewer_than(self, images: int) -> np.ndarray:
        """The labels of the identities with fewer than ``images`` faces."""
        return np.flatnonzero(np.bincount(self.labels, minlength=len(self.names)) < images)

    def fingerprint(self) -> str:
        """SHA-256 of every row's identity and image path, in row order: the batches of a
        (seed, step) are the same exactly when the fingerprints are."""
        digest = hashlib.sha256()
        for label, path in zip(self.labels.tolist(), self.paths, strict=True):
            digest.update(f"{self.names[label]}\t{path}\n".encode())
        return digest.hexdigest()


def pool_datasets(datasets: Mapping[str, AlignedFaces], exclude: Iterable[str] = (),
                  min_images: int = 2) -> TrainingFaces:
    """Pool aligned datasets, keyed by a short dataset name, into one training set.

    Faces with detected=False, identities in ``exclude`` (plain folder names, matched in
    every dataset) and identities left with fewer than ``min_images`` faces are dropped.
    Raises ValueError when nothing is left.
    """
    if min_images < 1:
        raise ValueError(f"min_images must be at least 1, got {min_images}")
    excluded = sorted(set(exclude))
    chunks, label_chunks, label_names, paths = [], [], [], []
    for name, data in datasets.items():
        identities, faces = np.asarray(data.identities), RowView.of(data.faces)
        keep = np.asarray(data.detected, bool) & ~np.isin(identities, excluded)
        counts = Counter(identities[keep].tolist())
        kept_names = sorted(i for i, n in counts.items() if n >= min_images)
        keep &= np.isin(identities, kept_names)
        label_of = {ident: len(label_names) + j for j, ident in enumerate(kept_names)}
        label_names += [f"{name}/{ident}" for ident in kept_names]
        rows = np.flatnonzero(keep)
        chunks.append(faces.take(rows))
        label_chunks.append(np.array([label_of[i] for i in identities[rows]], np.int32))
        paths += [f"{name}/{data.paths[row]}" for row in rows]
    if not label_names:
        raise ValueError(f"no identity with {min_images} or more detected faces in {', '.join(datasets)}"
                         + (f" after excluding {len(excluded)} people" if excluded else ""))
    sizes = {c.shape[1:] for c in chunks if len(c)}
    if len(sizes) > 1:
        raise ValueError(f"the datasets' faces differ in size: {sorted(sizes)}")
    return TrainingFaces(RowView.concatenate(chunks), np.concatenate(label_chunks), label_names, paths)


class PKSampler:
    """Row indices of the P x K batch of any step, a pure function of (seed, step); with ``group``
    (identity labels) and ``group_share``, round(group_share * P) of every batch's identities come
    from the group and the rest from the other identities; with ``negatives`` (identity labels) and
    ``negatives_per_batch`` N, those identities are left out of the P x K part and one face each of N
    of them follows it, as negatives only (a label once in a batch has no positive to pair with)."""

    def __init__(self, labels: np.ndarray, identities_per_batch: int, images_per_identity: int,
                 seed: int = 0, group: np.ndarray | None = None, group_share: float | None = None,
                 negatives: np.ndarray | None = None, negatives_per_batch: int = 0):
        labels = np.asarray(labels)
        by_label = np.argsort(labels, kind="stable")  # each label's rows in ascending order, in one sort
        self.rows = np.split(by_label, np.cumsum(np.bincount(labels))[:-1])
        if any(len(r) == 0 for r in self.rows):
            raise ValueError("labels must be 0..n-1 with every label used")
        if identities_per_batch < 2 or images_per_identity < 2:
            raise ValueError(f"need at least 2 identities x 2 images per batch, got "
                             f"{identities_per_batch} x {images_per_identity}")
        is_negative = np.zeros(len(self.rows), bool)
        is_negative[np.asarray(negatives if negatives is not None else [], np.int64)] = True
        self.identities, self.negatives = np.flatnonzero(~is_negative), np.flatnonzero(is_negative)
        if identities_per_batch > len(self.identities):
            raise ValueError(f"{identities_per_batch} identities per batch but only {len(self.identities)} "
                             "identities to train on")
        if not 0 <= negatives_per_batch <= len(self.negatives):
            raise ValueError(f"{negatives_per_batch} negatives per batch, but {len(self.negatives)} identities "
                             "to draw them from")
        self.p, self.k, self.n, self.seed = identities_per_batch, images_per_identity, negatives_per_batch, seed
        self.batches_per_pass = len(self.identities) // self.p  # without a group
        self.parts = None if group_share is None else self._parts(group, group_share)
        self._orders: dict[tuple[int, ...], tuple[int, np.ndarray]] = {}

    def _parts(self, group: np.ndarray | None, share: float) -> list[tuple[np.ndarray, int]]:
        """(identities, places per batch) of the group and of the other identities."""
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"the group's share of a batch must be in [0, 1], got {share}")
        in_group = np.zeros(len(self.rows), bool)
        in_group[np.asarray(group if group is not None else [], np.int64)] = True
        in_group = in_group[self.identities]
        places = round(share * self.p)
        parts = [(self.identities[in_group], places), (self.identities[~in_group], self.p - places)]
        for (identities, wanted), what in zip(parts, ("in the group", "outside the group"), strict=True):
            if wanted > len(identities):
                raise ValueError(f"{wanted} of the {self.p} identities per batch should come from the "
                                 f"identities {what}, but there are only {len(identities)}")
        return [(identities, wanted) for identities, wanted in parts if wanted]

    @property
    def batch_size(self) -> int:
        return self.p * self.k + self.n

    def _drawn(self, key: tuple[int, ...], identities: np.ndarray, places: int, step: int) -> np.ndarray:
        """The ``places`` identities that batch ``step`` takes from ``identities``: passes over them are
        shuffles drawn from (seed, pass, *key), cut into consecutive groups of ``places``."""
        pass_index, position = divmod(step, len(identities) // places)
        cached = self._orders.get(key)
        if cached is None or cached[0] != pass_index:
            cached = (pass_index, np.random.default_rng([self.seed, pass_index, *key]).permutation(identities))
            self._orders[key] = cached
        return cached[1][position * places:(position + 1) * places]

    def batch(self, step: int) -> np.ndarray:
        """(P * K + N,) int64 row indices, grouped by identity: K rows of one, then K of the next, then
        one row of each of the N negatives."""
        if self.parts is None:
            pass_index, position = divmod(step, self.batches_per_pass)
            identities = self._drawn((), self.identities, self.p, step)
            rng = np.random.default_rng([self.seed, pass_index, position, 1])
        else:
            rng = np.random.default_rng([self.seed, step, 2])
            identities = rng.permutation(np.concatenate([self._drawn((part, 3), *self.parts[part], step)
                                                         for part in range(len(self.parts))]))
        picks = []
        for identity in identities:
            rows = self.rows[identity]
            if len(rows) >= self.k:
                picks.append(rng.choice(rows, self.k, replace=False))
            else:
                picks.append(np.concatenate([rng.permutation(rows),
                                             rng.choice(rows, self.k - len(rows), replace=True)]))
        if self.n:
            negative_rng = np.random.default_rng([self.seed, step, 5])
            picks.append(np.array([negative_rng.choice(self.rows[negative])
                                   for negative in self._drawn((4,), self.negatives, self.n, step)]))
        return np.concatenate(picks).astype(np.int64)


def replica_shares(p: int, k: int, negatives: int, num_replicas: int) -> tuple[int, int]:
    """(rows of identities, negatives) of one replica's share of a P x K (+ N negatives) batch;
    ValueError when P or N does not split evenly over the replicas."""
    if p % num_replicas or negatives % num_replicas:
        raise ValueError(f"{p} identities and {negatives} negatives per batch do not split evenly over "
                         f"{num_replicas} replicas")
    return p // num_replicas * k, negatives // num_replicas


def replica_slice(batch: np.ndarray, k: int, replica: int, num_replicas: int, negatives: int = 0) -> np.ndarray:
    """The share of a global P x K (+ N negatives) batch that one replica mines in: P / num_replicas
    whole identities, then N / num_replicas of the negatives."""
    people, extra = batch[:len(batch) - negatives], batch[len(batch) - negatives:]
    share, n = replica_shares(len(people) // k, k, negatives, num_replicas)
    return np.concatenate([people[replica * share:(replica + 1) * share], extra[replica * n:(replica + 1) * n]])


def _affine_transforms(seed: tf.Tensor, n: tf.Tensor, size: int, aug: Augmentation) -> tf.Tensor:
    """(n, 8) projective transforms (output pixel -> input pixel): rotation, scale, shift about the centre."""
    u = tf.random.stateless_uniform([n, 4], seed, minval=-1.0, maxval=1.0)
    angle = u[:, 0] * (aug.rotation_degrees * math.pi / 180.0)
    scale = 1.0 + u[:, 1] * aug.scale
    tx, ty = u[:, 2] * (aug.shift * size), u[:, 3] * (aug.shift * size)
    a, b = tf.cos(angle) / scale, tf.sin(angle) / scale
    c = (size - 1) / 2.0
    # input = R(-angle) / scale @ (output - centre - shift) + centre
    return tf.stack([a, b, c - a * (c + tx) - b * (c + ty),
                     -b, a, c + b * (c + tx) - a * (c + ty),
                     tf.zeros_like(a), tf.zeros_like(a)], axis=1)


def _chosen(seed: tf.Tensor, n: tf.Tensor, probability: float) -> tf.Tensor:
    """(n, 1, 1, 1) booleans, each True with the given probability."""
    return tf.random.stateless_uniform([n, 1, 1, 1], seed) < probability


def _colour(images: tf.Tensor, seed: tf.Tensor, aug: Augmentation) -> tf.Tensor:
    """Scale each face's saturation about its luminance; some faces lose their colour."""
    n = tf.shape(images)[0]
    seeds = tf.random.experimental.stateless_split(seed, 2)
    factor = tf.random.stateless_uniform([n, 1, 1, 1], seeds[0], 1.0 - aug.saturation, 1.0 + aug.saturation)
    factor = tf.where(_chosen(seeds[1], n, aug.greyscale), 0.0, factor)
    grey = tf.image.rgb_to_grayscale(images)
    return grey + (images - grey) * factor


def _low_resolution(images: tf.Tensor, seed: tf.Tensor, aug: Augmentation) -> tf.Tensor:
    """Blur some faces as a smaller or poorer photo would: shrink (one size per batch) and enlarge again."""
    n, size = tf.shape(images)[0], images.shape[1]
    seeds = tf.random.experimental.stateless_split(seed, 2)
    side = tf.random.stateless_uniform([], seeds[0], *LOW_RESOLUTION) * size
    small = tf.image.resize(images, tf.cast(tf.stack([side, side]), tf.int32), method="area")
    blurred = tf.clip_by_value(tf.image.resize(small, [size, size], method="bilinear"), 0.0, 1.0)  # rounding
    return tf.where(_chosen(seeds[1], n, aug.low_resolution), blurred, images)


def _erase(images: tf.Tensor, seed: tf.Tensor, aug: Augmentation) -> tf.Tensor:
    """Cover one random rectangle of some faces with a random grey, as a hand or a cap might."""
    n, size = tf.shape(images)[0], images.shape[1]
    seeds = tf.random.experimental.stateless_split(seed, 3)
    u = tf.random.stateless_uniform([n, 5], seeds[0])
    area = ERASE_AREA[0] + u[:, 0] * (ERASE_AREA[1] - ERASE_AREA[0])
    aspect = tf.exp((u[:, 1] - 0.5) * 2.0 * math.log(2.0))       # height / width in [1/2, 2]
    height, width = tf.sqrt(area * aspect) * size, tf.sqrt(area / aspect) * size
    top, left = u[:, 2] * (size - height), u[:, 3] * (size - width)
    pixels = tf.range(size, dtype=tf.float32)
    rows = (pixels[None, :] >= top[:, None]) & (pixels[None, :] < (top + height)[:, None])
    cols = (pixels[None, :] >= left[:, None]) & (pixels[None, :] < (left + width)[:, None])
    inside = (rows[:, :, None] & cols[:, None, :])[..., None] & _chosen(seeds[1], n, aug.erase)
    return tf.where(inside, u[:, 4, None, None, None], images)


def augment(images: tf.Tensor, seed: tf.Tensor, strength: str = "mild") -> tf.Tensor:
    """Randomly flip, rotate, scale, shift and change brightness and contrast of (B, S, S, 3) floats in
    [0, 1]; ``strong`` also changes colour, blurs and erases a patch (AUGMENTATIONS)."""
    aug = AUGMENTATIONS[strength]
    n = tf.shape(images)[0]
    size = images.shape[1]
    seeds = tf.random.experimental.stateless_split(seed, 4)
    fold_in = tf.random.experimental.stateless_fold_in
    flip = _chosen(seeds[0], n, 0.5)
    images = tf.where(flip, tf.reverse(images, axis=[2]), images)
    images = tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=_affine_transforms(seeds[1], n, size, aug), output_shape=[size, size],
        fill_value=0.0, interpolation="BILINEAR", fill_mode="REFLECT")
    if aug.saturation or aug.greyscale:
        images = _colour(images, fold_in(seed, 4), aug)
    brightness = tf.random.stateless_uniform([n, 1, 1, 1], seeds[2], -aug.brightness, aug.brightness)
    contrast = tf.random.stateless_uniform([n, 1, 1, 1], seeds[3], 1.0 - aug.contrast, 1.0 + aug.contrast)
    mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
    images = tf.clip_by_value((images - mean) * contrast + mean + brightness, 0.0, 1.0)
    if aug.low_resolution:
        images = _low_resolution(images, fold_in(seed, 5), aug)
    if aug.erase:
        images = _erase(images, fold_in(seed, 6), aug)
    return images


def _face_gatherer(faces: np.ndarray | RowView, rows_per_call: int) -> Callable[[tf.Tensor], tf.Tensor]:
    """rows -> uint8 faces: a tf.gather from a constant for in-memory faces; for a store's RowView a
    read of the rows from the memory-mapped shards (run by tf.data's parallel map, so several
    batches are read at once while the model trains)."""
    if isinstance(faces, np.ndarray):
        table = tf.constant(faces)
        return lambda rows: tf.gather(table, rows)
    shape = (rows_per_call, *faces.shape[1:])

    def gather(rows: tf.Tensor) -> tf.Tensor:
        return tf.ensure_shape(tf.numpy_function(faces.gather, [rows], tf.uint8, stateful=False), shape)

    return gather


def training_dataset(faces: TrainingFaces, sampler: PKSampler, start_step: int = 0,
                     augmentation: str = "mild",
                     input_context: tf.distribute.InputContext | None = None) -> tf.data.Dataset:
    """Endless (images float32 (b, S, S, 3) in [0, 1], labels int32 (b,)) batches from ``start_step`` on.

    Without ``input_context`` each element is a whole P x K batch. With one (as
    ``strategy.distribute_datasets_from_function`` passes), the dataset of input pipeline i
    yields, for every step in turn, the share (``replica_slice``) of each of its local
    replicas, in the order the strategy hands elements to them. ``augmentation`` is "none" or a
    key of AUGMENTATIONS.
    """
    if augmentation != "none" and augmentation not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {augmentation!r}; choose none or one of: {', '.join(AUGMENTATIONS)}")
    pipelines = input_context.num_input_pipelines if input_context else 1
    pipeline = input_context.input_pipeline_id if input_context else 0
    replicas = input_context.num_replicas_in_sync if input_context else 1
    if replicas % pipelines:
        raise ValueError(f"{replicas} replicas do not split evenly over {pipelines} input pipelines")
    local = replicas // pipelines
    share = sum(replica_shares(sampler.p, sampler.k, sampler.n, replicas))  # rows each replica gets

    def index_batches() -> Iterator[tuple[int, int, np.ndarray]]:
        step = start_step
        while True:
            batch = sampler.batch(step)
            for r in range(pipeline * local, (pipeline + 1) * local):
                yield step, r, replica_slice(batch, sampler.k, r, replicas, sampler.n)
            step += 1

    gather_faces = _face_gatherer(faces.faces, share)
    labels_table = tf.constant(faces.labels)
    seed = sampler.seed

    def load(step: tf.Tensor, replica: tf.Tensor, rows: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        images = tf.cast(gather_faces(rows), tf.float32) / 255.0
        if augmentation != "none":
            images = augment(images, tf.stack([tf.constant(seed, tf.int64), step * replicas + replica]),
                             augmentation)
        return images, tf.gather(labels_table, rows)

    signature = (tf.TensorSpec((), tf.int64), tf.TensorSpec((), tf.int64), tf.TensorSpec((share,), tf.int64))
    ds = tf.data.Dataset.from_generator(index_batches, output_signature=signature)
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)
