"""dlib's ResNet face descriptor (``dlib_face_recognition_resnet_model_v1.dat``) as an embedder.

Descriptors are computed from the original image and the 68 landmarks that the aligned cache
recorded, with dlib's own 150 px chip alignment (``compute_face_descriptor``). Images where no
face was detected get landmarks from the shape predictor run on ``utils.faces.align.centre_square``,
the square that the centre-crop fallback keeps. Descriptors are cached per dataset under
``cache_dir()/dlib_resnet`` and reused while the image file and its landmarks are unchanged.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Sequence

import dlib
import numpy as np

from utils.atomic import atomic_path
from utils.console import progress_bar
from utils.faces.align import centre_square
from utils.faces.cache import AlignedFaces, worker_pool
from utils.faces.dlib_models import LANDMARKS_68, RESNET_DESCRIPTOR, dlib_model_path
from utils.faces.image_io import read_image
from utils.paths import cache_dir, folder_cache_name

NAME = "dlib_resnet"
SAVE_EVERY = 1000  # descriptors computed between cache writes


def centred_box(height: int, width: int) -> dlib.rectangle:
    """`utils.faces.align.centre_square` as a dlib box: the region the centre-crop fallback keeps."""
    left, top, side = centre_square(height, width)
    return dlib.rectangle(left, top, left + side - 1, top + side - 1)


def shape_from_landmarks(box: np.ndarray, landmarks: np.ndarray) -> dlib.full_object_detection:
    """A dlib shape from a (left, top, right, bottom) box and (68, 2) landmark coordinates."""
    rect = dlib.rectangle(*(int(round(v)) for v in box))
    points = [dlib.point(int(round(x)), int(round(y))) for x, y in landmarks]
    return dlib.full_object_detection(rect, points)


# --- worker side -------------------------------------------------------------------------

_models: tuple[dlib.shape_predictor, dlib.face_recognition_model_v1] | None = None


def _init_worker() -> None:
    global _models
    _models = (dlib.shape_predictor(str(dlib_model_path(LANDMARKS_68))),
               dlib.face_recognition_model_v1(str(dlib_model_path(RESNET_DESCRIPTOR))))


def _describe(job: tuple[str, np.ndarray, np.ndarray]) -> np.ndarray:
    """Descriptor of one image given its path, box and landmarks (NaN: no face detected)."""
    path, box, landmarks = job
    predictor, net = _models
    rgb = read_image(path)
    if np.all(np.isfinite(landmarks)):
        shape = shape_from_landmarks(box, landmarks)
    else:
        shape = predictor(rgb, centred_box(*rgb.shape[:2]))
    return np.asarray(net.compute_face_descriptor(rgb, shape), dtype=np.float32)


def _describe_many(jobs: list[tuple], workers: int, progress: bool) -> Iterator[np.ndarray]:
    """Descriptors of the jobs, in order, from a process pool (or this process for one worker)."""
    bar = dict(total=len(jobs), desc="dlib descriptors", unit="img", disable=not progress)
    if workers <= 1:
        _init_worker()
        yield from progress_bar(map(_describe, jobs), **bar)
        return
    with worker_pool(workers, _init_worker) as pool:
        yield from progress_bar(pool.imap(_describe, jobs, chunksize=8), **bar)


# --- descriptor cache ----------------------------------------------------------------------

def descriptor_cache_path(root: Path) -> Path:
    """cache/dlib_resnet/<dataset name>-<hash of its path>.npz"""
    return cache_dir() / NAME / f"{folder_cache_name(root)}.npz"


def _load_cache(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """relative path -> (key: stat, box and landmarks as one vector, descriptor)."""
    try:
        with np.load(path) as data:
            return {p: (k, d) for p, k, d in zip(data["paths"].tolist(), data["keys"], data["descriptors"],
                                                     strict=True)}
    except (OSError, ValueError, KeyError):
        return {}


def _save_cache(path: Path, entries: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    paths = sorted(entries)
    with atomic_path(path) as tmp:
        np.savez(tmp, paths=np.array(paths), keys=np.stack([entries[p][0] for p in paths]),
                 descriptors=np.stack([entries[p][1] for p in paths]))


def _entry_key(file: Path, box: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    st = file.stat()
    return np.concatenate([[st.st_size, st.st_mtime_ns], box.ravel(), landmarks.ravel()]).astype(np.float64)


class DlibResNetEmbedder:
    """Embedder for ``utils.evaluation.verification.evaluate_lfw``: ``embedder(aligned, rows) -> (len(rows), 128)``."""

    def __init__(self, workers: int | None = None, progress: bool = True):
        self.workers = workers or os.cpu_count() or 1
        self.progress = progress

    def __call__(self, aligned: AlignedFaces, rows: Sequence[int]) -> np.ndarray:
        root = Path(aligned.root)
        cache_path = descriptor_cache_path(root)
        cache = _load_cache(cache_path)
        keys = {aligned.paths[i]: _entry_key(root / aligned.paths[i], aligned.boxes[i], aligned.landmarks[i])
                for i in rows}
        stale = [i for i in rows if aligned.paths[i] not in cache
                 or not np.array_equal(cache[aligned.paths[i]][0], keys[aligned.paths[i]], equal_nan=True)]
        if stale:
            jobs = [(str(root / aligned.paths[i]), aligned.boxes[i], aligned.landmarks[i]) for i in stale]
            described = _describe_many(jobs, min(self.workers, len(jobs)), self.progress)
            for n, (i, descriptor) in enumerate(zip(stale, described, strict=True), 1):
                cache[aligned.paths[i]] = (keys[aligned.paths[i]], descriptor)
                if n % SAVE_EVERY == 0 or n == len(stale):  # an interrupted run keeps its work
                    _save_cache(cache_path, cache)
        return np.stack([cache[aligned.paths[i]][1] for i in rows]).astype(np.float32)
