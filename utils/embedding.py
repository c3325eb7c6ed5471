"""Embedding aligned faces with a Keras model, in batches."""
from __future__ import annotations

import cv2
import keras
import numpy as np

from utils.console import progress_bar
from utils.faces.store import RowView


def model_input_size(model: keras.Model) -> int:
    """Side of the square face the model expects (its input shape is (None, S, S, 3))."""
    shape = model.input_shape
    if len(shape) != 4 or shape[1] != shape[2] or shape[3] != 3 or shape[1] is None:
        raise ValueError(f"expected a model taking (S, S, 3) faces, its input shape is {shape}")
    return int(shape[1])


def _resize(faces: np.ndarray, size: int) -> np.ndarray:
    if faces.shape[1:3] == (size, size):
        return faces
    interpolation = cv2.INTER_AREA if faces.shape[1] > size else cv2.INTER_LINEAR
    return np.stack([cv2.resize(face, (size, size), interpolation=interpolation) for face in faces])


def _normalise(embeddings: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    return embeddings / np.maximum(norms, 1e-12)


def embed_faces(model: keras.Model, faces: np.ndarray | RowView, batch_size: int = 64, flip: bool = False,
                progress: bool = False) -> np.ndarray:
    """Embeddings (N, D) float32 of aligned uint8 RGB faces (N, S, S, 3), an array or a RowView of a
    store (read one batch at a time, so memory stays bounded however many faces there are).

    Faces of another size than the model's input are resized. Each batch goes through
    ``model.predict_on_batch`` (one compiled graph call, much faster than ``model.predict``
    on small inputs). With ``flip`` a face's embedding is the mean of its own and its mirror
    image's embeddings (computed in the same batch), normalised again to unit length.
    """
    faces = faces if isinstance(faces, RowView) else np.asarray(faces)
    if faces.ndim != 4 or faces.shape[3] != 3 or faces.dtype != np.uint8:
        raise ValueError(f"expected (N, S, S, 3) uint8 faces, got {faces.dtype} {faces.shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    size = model_input_size(model)
    dim = int(model.output_shape[-1])
    out = np.empty((len(faces), dim), dtype=np.float32)
    starts = range(0, len(faces), batch_size)
    for start in progress_bar(starts, desc="embedding", unit="batch", disable=not progress):
        batch = _resize(np.asarray(faces[start:start + batch_size]), size).astype(np.float32) / 255.0
        if flip:
            batch = np.concatenate([batch, batch[:, :, ::-1]])
        embeddings = np.asarray(model.predict_on_batch(batch), dtype=np.float32)
        if flip:
            half = len(embeddings) // 2
            embeddings = _normalise(embeddings[:half] + embeddings[half:])
        out[start:start + len(embeddings)] = embeddings
    return out
