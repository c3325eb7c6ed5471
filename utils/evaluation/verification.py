"""LFW face verification of an embedding model (View 2 ten-fold, or View 1 train/test).

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
    MissingImagesError,
    Pair,
    check_images_exist,
    load_dev_pairs,
    load_dev_people,
    load_view2_pairs,
    pair_images,
)
from utils.embedding import embed_faces, model_input_size
from utils.evaluation.metrics import (
    DEFAULT_THRESHOLDS,
    METRICS,
    VerificationResult,
    kfold_verification,
    pair_distances,
    train_test_verification,
)
from utils.faces.cache import AlignedFaces, load_or_build
from utils.faces.store import RowView
from utils.paths import lfw_dir

PROTOCOLS = ("view2", "view1", "view2-unseen")
# view2-unseen: the View 2 pairs whose two people are both in peopleDevTest.txt, the people that
# train.py always leaves out, so a model trained here is scored on strangers only (1,147 pairs,
# 870 of them same-person: read AUC and EER, accuracy's chance level is the same-pair share).

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

    @property
    def n_pairs(self) -> int:
        """Pairs scored: 6,000 for View 2; the 1,000 DevTest pairs for View 1."""
        return self.verification.n_pairs

    def to_dict(self, with_roc: bool = True) -> dict:
        """JSON-ready dict; the verification figures sit at the top level."""
        return {"protocol": self.protocol, "metric": self.metric, "flip": self.flip,
                **self.verification.to_dict(with_roc), "n_images": self.n_images,
                "n_fallback": self.n_fallback, "fallback_images": self.fallback_images,
                "seconds": self.seconds}


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


def _rows_of(aligned: AlignedFaces, images: list[str]) -> list[int]:
    """Cache rows of the images; a clear error naming any image the cache lacks."""
    unreadable = sorted(set(images) & set(aligned.unreadable))
    if unreadable:
        raise DatasetError(f"{len(unreadable)} LFW images referenced by the pairs cannot be read: "
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
                 progress: bool = False) -> LFWResult:
    """LFW verification of a Keras model or an :data:`Embedder`.

    ``aligned`` is the aligned cache to read faces from; without it the cache of ``lfw_root``
    (default ``utils.paths.lfw_dir()``) at the model's input size and ``landmarks`` is loaded, or
    built on first use. ``flip`` (Keras models only) averages each face's embedding with its
    mirror image's. Thresholds are searched on ``utils.evaluation.metrics.DEFAULT_THRESHOLDS[metric]``.
    Raises ``DatasetError`` (a ``ValueError``) for missing protocol files, a missing LFW folder
    or images that the pairs reference but the folder or cache lacks.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of: {', '.join(METRICS)}")
    splits = protocol_pairs(protocol, protocol_dir)
    images = pair_images(pair for pairs in splits.values() for pair in pairs)
    if isinstance(embedder, keras.Model):
        input_size = model_input_size(embedder)
        embedder = keras_embedder(embedder, batch_size, flip, progress)
    elif flip:
        raise ValueError("flip applies to Keras models only")
    else:
        input_size = 96
    if aligned is None:
        root = Path(lfw_root) if lfw_root else lfw_dir()
        check_images_exist(images, root)
        aligned = load_or_build(root, output_size=input_size, landmarks=landmarks, progress=progress)
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
    if protocol != "view1":
        folds = np.array([p.fold for p in splits["all"]])
        verification = kfold_verification(distances["all"], same["all"], folds, thresholds)
    else:
        verification = train_test_verification(distances["train"], same["train"], distances["test"],
                                               same["test"], thresholds)
    fallback = [image for image, row in zip(images, rows, strict=True) if not aligned.detected[row]]
    return LFWResult(protocol, metric, flip, verification, n_images=len(images), n_fallback=len(fallback),
                     fallback_images=fallback,
                     seconds=time.perf_counter() - start)
