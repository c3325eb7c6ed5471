"""The TensorFlow triplet losses equal a slow, loop-by-loop NumPy reference."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from utils.training.losses import (
    batch_all_loss,
    batch_hard_loss,
    pairwise_squared_distances,
    semi_hard_loss,
    triplet_loss,
)

MARGIN = 0.2


def _term(x: float, soft: bool) -> float:
    return float(np.log1p(np.exp(x))) if soft else max(MARGIN + x, 0.0)


def _distances(e: np.ndarray) -> np.ndarray:
    n = len(e)
    return np.array([[float(np.sum((e[i] - e[j]) ** 2)) for j in range(n)] for i in range(n)])


def reference(labels: np.ndarray, e: np.ndarray, mode: str, soft: bool) -> tuple[float, float]:
    """Triplet loss and active fraction, computed one anchor at a time."""
    d = _distances(e.astype(np.float64))
    n = len(labels)
    terms, active = [], []
    for a in range(n):
        pos = [p for p in range(n) if p != a and labels[p] == labels[a]]
        neg = [k for k in range(n) if labels[k] != labels[a]]
        if not pos or not neg:
            continue
        if mode == "batch-hard":
            x = max(d[a, p] for p in pos) - min(d[a, k] for k in neg)
            terms.append(_term(x, soft))
            active.append(MARGIN + x > 0)
            continue
        for p in pos:
            if mode == "semi-hard":
                farther = [d[a, k] for k in neg if d[a, k] > d[a, p]]
                d_neg = min(farther) if farther else max(d[a, k] for k in neg)
                candidates = [d[a, p] - d_neg]
            else:
                candidates = [d[a, p] - d[a, k] for k in neg]
            for x in candidates:
                terms.append(_term(x, soft))
                active.append(MARGIN + x > 0)
    terms, active = np.array(terms), np.array(active)
    if mode == "all" and not soft:
        loss = terms[active].mean() if active.any() else 0.0
    else:
        loss = terms.mean()
    return float(loss), float(active.mean())


def _batch(seed: int, with_singletons: bool) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(5), rng.integers(2, 5, size=5))
    if with_singletons:
        labels = np.concatenate([labels, [10, 11, 12]])
    labels = rng.permutation(labels)
    e = rng.normal(size=(len(labels), 8))
    # Pull the embeddings of about half the identities together so that all three cases
    # (no farther negative, a semi-hard one, an easy one) occur.
    e += (rng.choice([0.0, 3.0], size=(20, 1)) * rng.normal(size=(20, 8)))[labels]
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    return labels.astype(np.int32), e.astype(np.float32)


@pytest.mark.parametrize("mode", ["semi-hard", "batch-hard", "all"])
@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("with_singletons", [False, True])
def test_losses_equal_numpy_reference(mode, soft, seed, with_singletons):
    labels, e = _batch(seed, with_singletons)
    loss, active = triplet_loss(mode)(tf.constant(labels), tf.constant(e), margin=MARGIN, soft_margin=soft)
    ref_loss, ref_active = reference(labels, e, mode, soft)
    assert float(loss) == pytest.approx(ref_loss, rel=1e-4, abs=1e-5)
    assert float(active) == pytest.approx(ref_active, abs=1e-6)


def test_reference_batches_exercise_every_semi_hard_case():
    """The random batches contain pairs with and without a farther negative, active and not."""
    cases = set()
    for seed in range(4):
        labels, e = _batch(seed, True)
        d = _distances(e)
        for a in range(len(labels)):
            for p in range(len(labels)):
                if p != a and labels[p] == labels[a]:
                    neg = d[a][labels != labels[a]]
                    farther = neg[neg > d[a, p]]
                    cases.add("farther" if farther.size else "none farther")
                    if farther.size:
                        cases.add("active" if farther.min() - d[a, p] < MARGIN else "inactive")
    assert cases == {"farther", "none farther", "active", "inactive"}


def test_pairwise_distances_match_numpy():
    _, e = _batch(5, False)
    np.testing.assert_allclose(pairwise_squared_distances(tf.constant(e)).numpy(), _distances(e), atol=1e-5)


@pytest.mark.parametrize("loss_fn", [semi_hard_loss, batch_hard_loss, batch_all_loss])
def test_collapsed_embeddings_give_margin_and_full_activity(loss_fn):
    labels = tf.constant([0, 0, 1, 1, 2, 2])
    e = tf.tile(tf.constant([[0.6, 0.8]]), [6, 1])
    loss, active = loss_fn(labels, e, margin=MARGIN)
    assert float(loss) == pytest.approx(MARGIN)
    assert float(active) == 1.0


@pytest.mark.parametrize("loss_fn", [semi_hard_loss, batch_hard_loss, batch_all_loss])
@pytest.mark.parametrize("soft", [False, True])
def test_gradients_are_finite_with_singletons_and_one_identity(loss_fn, soft):
    labels, e = _batch(7, True)
    for lab in (labels, np.zeros_like(labels)):
        x = tf.Variable(e)
        with tf.GradientTape() as tape:
            loss, _ = loss_fn(tf.constant(lab), tf.math.l2_normalize(x, axis=1), soft_margin=soft)
        grad = tape.gradient(loss, x)
        assert np.isfinite(float(loss))
        assert grad is not None and np.all(np.isfinite(grad.numpy()))


def test_one_identity_batch_has_no_triplets():
    labels, e = _batch(3, False)
    for mode in ("semi-hard", "batch-hard", "all"):
        loss, active = triplet_loss(mode)(tf.constant(np.zeros_like(labels)), tf.constant(e))
        assert float(loss) == 0.0 and float(active) == 0.0


def test_float16_embeddings_give_float32_loss():
    labels, e = _batch(4, False)
    loss, active = semi_hard_loss(tf.constant(labels), tf.constant(e, tf.float16))
    ref_loss, _ = reference(labels, e.astype(np.float16).astype(np.float32), "semi-hard", False)
    assert loss.dtype == tf.float32 and active.dtype == tf.float32
    assert float(loss) == pytest.approx(ref_loss, abs=2e-3)


def test_unknown_mining_is_a_clear_error():
    with pytest.raises(ValueError, match="semi-hard"):
        triplet_loss("hardest")


def test_train_offers_exactly_the_mining_rules():
    from utils.training.config import MINING_NAMES
    from utils.training.losses import MINING

    assert MINING_NAMES == tuple(MINING)
