"""The training losses: online-mined triplet losses and the margin-softmax losses CosFace and ArcFace.

``get_loss(config)`` gives a run's loss as ``loss_fn(labels, embeddings) -> (loss, figure)``,
float32 scalars, where ``figure`` is what the step log reports beside the loss (``FIGURES``):
the active fraction of the triplets, or the accuracy of the class cosines.

Triplet losses
--------------

Online triplet mining inside a batch, on squared L2 distances of L2-normalised embeddings.
Every triplet loss takes integer ``labels`` (B,) and ``embeddings`` (B, D) and returns
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

Margin-softmax losses
---------------------

Softmax cross-entropy over the C training identities (labels are the pooled identity indices
0..C-1), with logits from the cosines ``cos θ_j`` between an embedding x and the class weight
vectors w_j, both L2-normalised (``ClassCosines``, a trainable (D, C) matrix that lives beside
the model during training only), scaled by s, with a margin m on the own class y:

- CosFace (Wang et al. 2018, large margin cosine loss): ``s (cos θ_y - m)``; others ``s cos θ_j``.
- ArcFace (Deng et al. 2019, additive angular margin): ``s cos(θ_y + m)``; others ``s cos θ_j``.
  Where ``θ_y + m > π``, ``cos(θ_y + m)`` would rise again as θ_y grows (rewarding a worse
  embedding); there, as in the paper's implementation, the own logit is ``s (cos θ_y - m sin m)``
  instead, which keeps falling with θ_y: the first-order expansion ``cos θ_y - m sin θ_y`` of
  ``cos(θ_y + m)`` with ``sin θ_y`` held at its value at the threshold, ``sin(π - m) = sin m``.

The loss is the batch mean of the cross-entropy; the cosines, logits and loss are float32
whatever the model's compute dtype (mixed precision).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import keras
import tensorflow as tf

if TYPE_CHECKING:
    from utils.training.config import TrainConfig

LossFn = Callable[..., tuple[tf.Tensor, tf.Tensor]]
# What each loss's figure is, as named in the step log, the CSV and TensorBoard.
FIGURES = {"triplet": "active_fraction", "cosface": "class_accuracy", "arcface": "class_accuracy"}


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


def triplet_loss(mining: str) -> LossFn:
    """The triplet loss function for a --mining name: semi-hard, batch-hard or all."""
    try:
        return MINING[mining]
    except KeyError:
        raise ValueError(f"unknown mining {mining!r}; choose one of: {', '.join(MINING)}") from None


# --- margin-softmax losses ---------------------------------------------------------------------

CLASS_WEIGHT_STDDEV = 0.01


class ClassCosines(keras.layers.Layer):
    """(B, C) float32 cosines ``cos θ_j = x·w_j / (|x| |w_j|)`` between embeddings x and the columns
    w_j of a trainable (D, C) class-weight matrix, one column per training identity."""

    def __init__(self, num_classes: int, **kwargs):
        super().__init__(dtype="float32", **kwargs)
        self.num_classes = num_classes

    def build(self, input_shape: tuple) -> None:
        # Short columns (|w_j| ~ 0.01 sqrt(D)): Adam's steps, about lr per coordinate whatever the
        # gradient, then turn them quickly toward their identities' embeddings. (Unit-length
        # columns lagged behind on small runs: the embeddings crowded into a narrow cone meanwhile.)
        self.class_weights = self.add_weight(shape=(int(input_shape[-1]), self.num_classes), name="class_weights",
                                             initializer=keras.initializers.RandomNormal(stddev=CLASS_WEIGHT_STDDEV))

    def call(self, embeddings: tf.Tensor) -> tf.Tensor:
        x = tf.math.l2_normalize(tf.cast(embeddings, tf.float32), axis=1)
        w = tf.math.l2_normalize(self.class_weights, axis=0)
        return tf.matmul(x, w)


ACOS_EPSILON = 1e-6  # cos θ_y is clipped this far inside [-1, 1]: arccos' gradient is infinite at ±1


def cosface_logits(cosines: tf.Tensor, labels: tf.Tensor, scale: float, margin: float) -> tf.Tensor:
    """CosFace: ``s (cos θ_j - m [j = y])``."""
    own = tf.one_hot(labels, tf.shape(cosines)[1], dtype=tf.float32)
    return scale * (cosines - margin * own)


def arcface_logits(cosines: tf.Tensor, labels: tf.Tensor, scale: float, margin: float) -> tf.Tensor:
    """ArcFace: ``s cos(θ_y + m)`` for the own class y (``s (cos θ_y - m sin m)`` where
    ``θ_y + m > π``), ``s cos θ_j`` for the others."""
    own = tf.one_hot(labels, tf.shape(cosines)[1], on_value=True, off_value=False)
    cos_y = tf.reduce_sum(tf.where(own, cosines, 0.0), axis=1)
    theta_y = tf.acos(tf.clip_by_value(cos_y, -1.0 + ACOS_EPSILON, 1.0 - ACOS_EPSILON))
    own_logit = tf.where(theta_y + margin <= math.pi, tf.cos(theta_y + margin), cos_y - margin * math.sin(margin))
    return scale * tf.where(own, own_logit[:, None], cosines)


MARGIN_LOGITS = {"cosface": cosface_logits, "arcface": arcface_logits}


def margin_softmax_loss(logits: Callable[..., tf.Tensor], class_cosines: ClassCosines, scale: float,
                        margin: float) -> LossFn:
    """``loss_fn(labels, embeddings) -> (mean cross-entropy of the margin logits, accuracy of the
    plain cosines)``: the accuracy is the share of the batch whose own class has the highest cosine."""
    def loss_fn(labels: tf.Tensor, embeddings: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        cosines = class_cosines(embeddings)
        labels = tf.cast(tf.reshape(labels, [-1]), tf.int32)
        cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits(cosines, labels, scale, margin))
        correct = tf.equal(tf.argmax(cosines, axis=1, output_type=tf.int32), labels)
        return tf.reduce_mean(cross_entropy), tf.reduce_mean(tf.cast(correct, tf.float32))

    return loss_fn


def get_loss(config: TrainConfig, class_cosines: ClassCosines | None = None) -> LossFn:
    """A run's ``loss_fn(labels, embeddings) -> (loss, figure)`` (see the module docstring);
    CosFace and ArcFace need the run's ``class_cosines``."""
    if config.loss == "triplet":
        mined = triplet_loss(config.mining)
        return lambda labels, embeddings: mined(labels, embeddings, margin=config.margin,
                                                soft_margin=config.soft_margin)
    if config.loss not in MARGIN_LOGITS:
        raise ValueError(f"unknown loss {config.loss!r}; choose one of: {', '.join(FIGURES)}")
    if class_cosines is None:
        raise ValueError(f"the {config.loss} loss needs the class weights (ClassCosines)")
    return margin_softmax_loss(MARGIN_LOGITS[config.loss], class_cosines, config.scale, config.class_margin)
