"""The shared layers against NumPy references of their Torch definitions."""
from __future__ import annotations

import numpy as np
import pytest

from models.layers import L2Normalize, L2Pooling2D, LocalResponseNorm


def _l2_pool_reference(x: np.ndarray, k: int, stride: int, pad: tuple[int, int]) -> np.ndarray:
    xp = np.pad(x, ((0, 0), pad, pad, (0, 0)))
    rows = range(0, xp.shape[1] - k + 1, stride)
    cols = range(0, xp.shape[2] - k + 1, stride)
    return np.array([[[np.sqrt((xp[b, i:i + k, j:j + k] ** 2).sum(axis=(0, 1))) for j in cols] for i in rows]
                     for b in range(len(x))])


@pytest.mark.parametrize("padding,stride,pad", [("valid", 1, (0, 0)), ("same", 1, (1, 1)), ("same", 2, (1, 1))])
def test_l2_pooling_is_a_true_l2_pool(padding, stride, pad):
    x = np.random.default_rng(0).random((2, 7, 7, 3)).astype(np.float32)
    out = np.asarray(L2Pooling2D(3, stride, padding)(x))
    assert np.allclose(out, _l2_pool_reference(x, 3, stride, pad), atol=1e-5)


def test_local_response_norm_matches_torch_formula():
    x = np.random.default_rng(1).random((1, 2, 2, 9)).astype(np.float32)
    out = np.asarray(LocalResponseNorm(5, 1e-4, 0.75, 1.0)(x))
    squares = np.pad(x ** 2, ((0, 0), (0, 0), (0, 0), (2, 2)))
    window = np.stack([squares[..., c:c + 5].sum(-1) for c in range(9)], axis=-1)
    assert np.allclose(out, x / (1.0 + 1e-4 / 5 * window) ** 0.75, atol=1e-6)


def test_local_response_norm_runs_in_bfloat16_as_mixed_precision_trains_it():
    import keras
    x = np.random.default_rng(1).normal(size=(2, 3, 3, 8)).astype(np.float32) * 4
    reference = np.asarray(LocalResponseNorm(5, 1e-4, 0.75, 1.0)(x))
    out = LocalResponseNorm(5, 1e-4, 0.75, 1.0, dtype="mixed_bfloat16")(x)
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    np.testing.assert_allclose(np.asarray(out, np.float32), reference, rtol=2e-2, atol=2e-2)


def test_l2_normalize_gives_unit_vectors():
    x = np.random.default_rng(2).normal(size=(4, 128)).astype(np.float32)
    assert np.allclose(np.linalg.norm(np.asarray(L2Normalize()(x)), axis=1), 1.0, atol=1e-6)
