"""Online triplet mining inside a batch, on squared L2 distances of L2-normalised embeddings.

Every loss takes integer ``labels`` (B,) and ``embeddings`` (B, D) and returns
``(loss, active_fraction)``, both float32 scalars. A triplet (a, p, n) is *valid* when
``labels[a] == labels[p]``, ``a != p`` and ``labels[n] != labels[a]``; it is *active*
when its hinge term is positive, ``margin + d(a, p) - d(a, n) > 0``. With
``soft_margin=True`` the hinge ``max(margin + x, 0)`` becomes ``softplus(x)`` (Hermans et
al. 2017), with ``x = d(a, p) - d(a, n)``; the margin then only sets the threshold used to
count a triplet as active, so the active fraction means the same in both forms.

Mining modes:

- ``semi_hard`` (FaceNet, Schroff et al. 2015, with TensorFlow Addons'
  ``triplet_semihard_loss`` semantics): every anchor-positive pair (a, p) is used; its
  negative is the closest negative that is strictly farther than the positive,
  ``min {d(a, n) : d(a, n) > d(a, p)}``. If the batch has no such negative, the negative
  with the largest distance to the anchor is used instead (every negative is then closer
  than the positive, so this is the least hard of them and the term is always positive).
  The loss is the mean over all anchor-positive pairs (inactive ones count as zero).
- ``batch_hard`` (Hermans et al. 2017): one triplet per anchor, with the anchor's farthest
  positive and closest negative; mean over the anchors that have a positive.
- ``batch_all``: every valid triplet; the hinge loss is the sum over active triplets divided
  by their number (zero when none is active), the soft-margin loss the mean over all valid
  triplets.

Anchors with no positive in the batch (singletons) or no negative (a one-identity batch)
form no triplet and are left out of every mean and fraction. Distances are computed in
float32 whatever the embeddings' dtype (mixed precision).
"""
from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

LossFn = Callable[..., tuple[tf.Tensor, tf.Tensor]]


def pairwise_squared_distances(embeddings: tf.Tensor) -> tf.Tensor:
    """(B, B) squared Euclidean distances, exactly zero on the diagonal, never negative."""
    e = tf.cast(embeddings, tf.float32)
    sq = tf.reduce_sum(tf.square(e), axis=1)
    d = sq[:, None] + sq[None, :] - 2.0 * tf.matmul(e, e, transpose_b=True)
    d = tf.maximum(d, 0.0)
    return d * (1.0 - tf.eye(tf.shape(d)[0], dtype=d.dtype))


def _masks(labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Boolean (B, B) masks: positive pairs (same label, not the same item) and negative pairs."""
    labels = tf.reshape(labels, [-1])
    same = tf.equal(labels[:, None], labels[None, :])
    not_self = tf.logical_not(tf.eye(tf.shape(labels)[0], dtype=tf.bool))
    return tf.logical_and(same, not_self), tf.logical_not(same)


def _term(x: tf.Tensor, margin: float, soft_margin: bool) -> tf.Tensor:
    """Per-triplet loss from x = d(a, p) - d(a, n)."""
    return tf.nn.softplus(x) if soft_margin else tf.nn.relu(margin + x)


def _mean(values: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Mean of values where mask is true; zero when the mask is empty."""
    mask = tf.cast(mask, tf.float32)
    return tf.math.divide_no_nan(tf.reduce_sum(values * mask), tf.reduce_sum(mask))


def semi_hard_loss(labels: tf.Tensor, embeddings: tf.Tensor, margin: float = 0.2,
                   soft_margin: bool = False) -> tuple[tf.Tensor, tf.Tensor]:
    """FaceNet semi-hard mining over all anchor-positive pairs; returns (loss, active fraction)."""
    d = pairwise_squared_distances(embeddings)
    positive, negative = _masks(labels)
    d_an = d[:, None, :]  # [a, p, n] = d(a, n)
    d_ap = d[:, :, None]  # [a, p, n] = d(a, p)
    farther = tf.logical_and(negative[:, None, :], d_an > d_ap)
    has_farther = tf.reduce_any(farther, axis=2)
    inf = tf.constant(float("inf"), tf.float32)
    closest_farther = tf.reduce_min(tf.where(farther, d_an, inf), axis=2)
    largest_negative = tf.reduce_max(tf.where(negative, d, -inf), axis=1, keepdims=True)
    d_neg = tf.where(has_farther, closest_farther, largest_negative)
    pairs = tf.logical_and(positive, tf.reduce_any(negative, axis=1, keepdims=True))
    # Zero out the (unused) pairs whose d_neg is infinite so that no inf or NaN reaches the sum.
    x = tf.where(pairs, d - d_neg, 0.0)
    return (_mean(_term(x, margin, soft_margin), pairs),
            _mean(tf.cast(margin + x > 0, tf.float32), pairs))


def batch_hard_loss(labels: tf.Tensor, embeddings: tf.Tensor, margin: float = 0.2,
                    soft_margin: bool = False) -> tuple[tf.Tensor, tf.Tensor]:
    """Hardest positive and hardest negative per anchor; returns (loss, active fraction)."""
    d = pairwise_squared_distances(embeddings)
    positive, negative = _masks(labels)
    anchors = tf.logical_and(tf.reduce_any(positive, axis=1), tf.reduce_any(negative, axis=1))
    hardest_positive = tf.reduce_max(tf.where(positive, d, 0.0), axis=1)
    big = tf.stop_gradient(tf.reduce_max(d)) + 1.0
    hardest_negative = tf.reduce_min(tf.where(negative, d, big), axis=1)
    x = hardest_positive - hardest_negative
    return (_mean(_term(x, margin, soft_margin), anchors),
            _mean(tf.cast(margin + x > 0, tf.float32), anchors))


def batch_all_loss(labels: tf.Tensor, embeddings: tf.Tensor, margin: float = 0.2,
                   soft_margin: bool = False) -> tuple[tf.Tensor, tf.Tensor]:
    """Every valid triplet; hinge loss averaged over the active ones; returns (loss, active fraction)."""
    d = pairwise_squared_distances(embeddings)
    positive, negative = _masks(labels)
    valid = tf.logical_and(positive[:, :, None], negative[:, None, :])
    x = d[:, :, None] - d[:, None, :]  # [a, p, n] = d(a, p) - d(a, n)
    active = tf.logical_and(valid, margin + x > 0)
    terms = _term(x, margin, soft_margin)
    loss = _mean(terms, valid) if soft_margin else _mean(terms, active)
    return loss, _mean(tf.cast(active, tf.float32), valid)


MINING = {"semi-hard": semi_hard_loss, "batch-hard": batch_hard_loss, "all": batch_all_loss}


def get_loss(mining: str) -> LossFn:
    """The loss function for a --mining name: semi-hard, batch-hard or all."""
    try:
        return MINING[mining]
    except KeyError:
        raise ValueError(f"unknown mining {mining!r}; choose one of: {', '.join(MINING)}") from None
