"""Face verification of an embedding model: LFW (View 2 ten-fold, or View 1 train/test), or any pairs
file in ``pairs.txt``'s format over any folder-per-identity tree (:func:`evaluate_pairs_file`).

Every image the pairs refer to is embedded once, from the aligned-face cache (images with no
detected face are kept there as centre crops and counted), then each pair's distance goes into
:mod:`utils.evaluation.metrics`. train.py calls :func:`evaluate_lfw` every epoch with ``protocol="view1"``
and the cache it already holds (``aligned=``), so a call costs one batched pass over the images
of the View 1 pairs.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from utils.datasets.folders import DatasetError
from utils.datasets.lfw import (
    PROTOCOLS,
    MissingImagesError,
    Pair,
    Person,
    check_images_exist,
    load_dev_pairs,
    load_dev_people,
    load_view2_pairs,
    pair_images,
    pairs_file_name,
    parse_folded_pairs,
)
from utils.embedding import embed_faces, model_input_size
from utils.evaluation.metrics import (
    DEFAULT_THRESHOLDS,
    METRICS,
    VerificationResult,
    impostor_quantiles,
    kfold_verification,
    pair_distances,
    train_test_verification,
)
from utils.faces.cache import AlignedFaces, load_or_build
from utils.faces.store import RowView
from utils.paths import lfw_dir

# An embedder maps rows of an aligned cache to embeddings, one row each.
Embedder = Callable[[AlignedFaces, Sequence[int]], np.ndarray]


@dataclass
class LFWResult:
    """Verification figures and what went into them."""

    protocol: str
    metric: str
    flip: bool
    verification: VerificationResult
    n_images: int
    n_fallback: int            # images among n_images with no detected face (centre-crop fallback)
    fallback_images: list[str]
    seconds: float             # embedding and scoring, cache loading excluded
    impostors: dict | None = None  # impostor_quantiles of the images (strangers to other people's means)

    @property
    def n_pairs(self) -> int:
        """Pairs scored: 6,000 for View 2; the 1,000 DevTest pairs for View 1."""
        return self.verification.n_pairs

    def to_dict(self, with_roc: bool = True) -> dict:
        """JSON-ready dict; the verification figures sit at the top level."""
        return {"protocol": self.protocol, "metric": self.metric, "flip": self.flip,
                **self.verification.to_dict(with_roc), "n_images": self.n_images,
                "n_fallback": self.n_fallback, "fallback_images": self.fallback_images,
                "seconds": self.seconds, **({"impostor_quantiles": self.impostors} if self.impostors else {})}


def keras_embedder(model: keras.Model, batch_size: int = 64, flip: bool = False,
                   progress: bool = False) -> Embedder:
    """An embedder running a Keras model on the cached aligned faces."""
    def embed(aligned: AlignedFaces, rows: Sequence[int]) -> np.ndarray:
        return embed_faces(model, RowView.of(aligned.faces).take(rows), batch_size=batch_size, flip=flip,
                           progress=progress)
    return embed


def protocol_pairs(protocol: str, protocol_dir: str | Path | None = None) -> dict[str, list[Pair]]:
    """The pairs of a protocol: ``{"all": ...}`` for View 2, ``{"train": ..., "test": ...}`` for View 1."""
    if protocol == "view2":
        return {"all": load_view2_pairs(protocol_dir)}
    if protocol == "view1":
        return {split: load_dev_pairs(split, protocol_dir) for split in ("train", "test")}
    if protocol == "view2-unseen":
        unseen = {person.name for person in load_dev_people("test", protocol_dir)}
        return {"all": [p for p in load_view2_pairs(protocol_dir)
                        if p.path_a.split("/")[0] in unseen and p.path_b.split("/")[0] in unseen]}
    raise ValueError(f"unknown protocol {protocol!r}; choose one of: {', '.join(PROTOCOLS)}")


def unseen_people_outside_view2(protocol_dir: str | Path | None = None) -> list[Person]:
    """peopleDevTest.txt people with no picture in the view2-unseen pairs: strangers to our models whose
    pictures the stored impostor distances (and so recognize.py's default threshold) never saw."""
    used = {image.split("/")[0] for image in pair_images(protocol_pairs("view2-unseen", protocol_dir)["all"])}
    return [person for person in load_dev_people("test", protocol_dir) if person.name not in used]


def _rows_of(aligned: AlignedFaces, images: list[str]) -> list[int]:
    """Cache rows of the images; a clear error naming any image the cache lacks."""
    unreadable = sorted(set(images) & set(aligned.unreadable))
    if unreadable:
        raise DatasetError(f"{len(unreadable)} images referenced by the pairs cannot be read: "
                           f"{', '.join(unreadable[:10])}")
    rows, missing = [], []
    for image in images:
        try:
            rows.append(aligned.index_of(image))
        except KeyError:
            missing.append(image)
    if missing:
        raise MissingImagesError(Path(aligned.root), missing, len(images))
    return rows


def evaluate_lfw(embedder: keras.Model | Embedder, protocol: str = "view2",
                 lfw_root: str | Path | None = None, aligned: AlignedFaces | None = None,
                 flip: bool = False, metric: str = "sqeuclidean", protocol_dir: str | Path | None = None,
                 batch_size: int = 64, landmarks: str = "outer_eyes_and_nose",
                 progress: bool = False, impostors: bool = False) -> LFWResult:
    """LFW verification of a Keras model or an :data:`Embedder` on one of :data:`PROTOCOLS`.

    ``lfw_root`` defaults to ``utils.paths.lfw_dir()``, ``protocol_dir`` to the official protocol
    files' folder; the other arguments are :func:`evaluate_pairs`'.
    """
    return evaluate_pairs(embedder, protocol_pairs(protocol, protocol_dir), protocol,
                          root=lfw_root if lfw_root else lfw_dir(), aligned=aligned, flip=flip, metric=metric,
                          batch_size=batch_size, landmarks=landmarks, progress=progress, impostors=impostors)


def evaluate_pairs_file(embedder: keras.Model | Embedder, pairs_file: str | Path, root: str | Path,
                        name: str | None = None, **options) -> LFWResult:
    """Ten-fold (or as many folds as the file has) verification on a pairs file in ``pairs.txt``'s format
    over the folder-per-identity tree at ``root``; ``name`` (default :func:`pairs_file_name`) labels the
    result. ``options`` are :func:`evaluate_pairs`'."""
    if not Path(root).is_dir():
        raise DatasetError(f"image folder not found: {root}")
    return evaluate_pairs(embedder, {"all": parse_folded_pairs(pairs_file)}, name or pairs_file_name(pairs_file),
                          root=root, **options)


def evaluate_pairs(embedder: keras.Model | Embedder, splits: dict[str, list[Pair]], protocol: str,
                   root: str | Path | None = None, aligned: AlignedFaces | None = None,
                   flip: bool = False, metric: str = "sqeuclidean", batch_size: int = 64,
                   landmarks: str = "outer_eyes_and_nose", progress: bool = False,
                   impostors: bool = False) -> LFWResult:
    """Verification of a Keras model or an :data:`Embedder` on pairs of images of one tree.

    ``splits`` is ``{"all": pairs}`` for k-fold scoring by the pairs' folds (View 2's protocol) or
    ``{"train": ..., "test": ...}`` for a threshold chosen on one set and scored on the other
    (View 1's); ``protocol`` names the result. ``aligned`` is the aligned cache to read faces from;
    without it the cache of ``root`` at the model's input size and ``landmarks`` is loaded, or built
    on first use. ``flip`` (Keras models only) averages each face's embedding with its mirror
    image's. ``impostors`` adds the quantiles of the distances from the images to the mean embeddings
    of other people among them (:func:`utils.evaluation.metrics.impostor_quantiles`), for choosing
    thresholds; None when nobody has enough pictures. Thresholds are searched on
    ``utils.evaluation.metrics.DEFAULT_THRESHOLDS[metric]``.
    Raises ``DatasetError`` (a ``ValueError``) for a missing folder or images that the pairs
    reference but the folder or cache lacks.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of: {', '.join(METRICS)}")
    images = pair_images(pair for pairs in splits.values() for pair in pairs)
    if isinstance(embedder, keras.Model):
        input_size = model_input_size(embedder)
        embedder = keras_embedder(embedder, batch_size, flip, progress)
    elif flip:
        raise ValueError("flip applies to Keras models only")
    else:
        input_size = 96
    if aligned is None:
        if root is None:
            raise ValueError("evaluate_pairs needs the images' root folder or their aligned cache")
        check_images_exist(images, root)
        aligned = load_or_build(Path(root), output_size=input_size, landmarks=landmarks, progress=progress,
                                only=images)
    rows = _rows_of(aligned, images)

    start = time.perf_counter()
    embeddings = embedder(aligned, rows)
    position = {image: i for i, image in enumerate(images)}
    distances, same = {}, {}
    for split, pairs in splits.items():
        a = embeddings[[position[p.path_a] for p in pairs]]
        b = embeddings[[position[p.path_b] for p in pairs]]
        distances[split] = pair_distances(a, b, metric)
        same[split] = np.array([p.same for p in pairs])
    thresholds = DEFAULT_THRESHOLDS[metric]
    if "all" in splits:
        folds = np.array([p.fold for p in splits["all"]])
        verification = kfold_verification(distances["all"], same["all"], folds, thresholds)
    else:
        verification = train_test_verification(distances["train"], same["train"], distances["test"],
                                               same["test"], thresholds)
    fallback = [image for image, row in zip(images, rows, strict=True) if not aligned.detected[row]]
    quantiles = None
    if impostors:
        try:
            quantiles = impostor_quantiles(embeddings, [image.split("/")[0] for image in images], metric)
        except ValueError:  # nobody with enough pictures to stand for a gallery person: nothing to store
            quantiles = None
    return LFWResult(protocol, metric, flip, verification, n_images=len(images), n_fallback=len(fallback),
                     fallback_images=fallback,
                     seconds=time.perf_counter() - start, impostors=quantiles)
