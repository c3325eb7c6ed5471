"""Verification and clustering metrics on synthetic data with known answers."""
from __future__ import annotations

import numpy as np
import pytest

from utils.evaluation.metrics import (
    DEFAULT_THRESHOLDS,
    best_threshold,
    equal_error_rate,
    kfold_verification,
    leave_one_out_1nn_accuracy,
    pair_distances,
    plot_roc_curves,
    silhouette,
    threshold_accuracies,
    train_test_verification,
    val_at_far,
)

# Matched pairs at 0.1, 0.2, 0.3, 0.5; mismatched at 0.4, 0.42, 0.7, 0.8. "Same iff d < t" is
# right for 7 of 8 exactly when 0.3 < t <= 0.4: grid points 0.31 .. 0.40, middle one 0.36.
SMALL_D = np.array([0.1, 0.2, 0.3, 0.5, 0.4, 0.42, 0.7, 0.8])
SMALL_SAME = np.array([True] * 4 + [False] * 4)


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def synthetic_pairs(rng: np.random.Generator, n: int, noise: float, separable: bool):
    """n matched and n mismatched pairs of unit 128-d embeddings."""
    centres = unit(rng.normal(size=(2 * n, 128)))
    if separable:
        a = unit(centres[:n] + noise * rng.normal(size=(n, 128)))
        b = unit(centres[:n] + noise * rng.normal(size=(n, 128)))
        first, second = np.vstack([a, centres[n:]]), np.vstack([b, unit(rng.normal(size=(n, 128)))])
    else:  # every embedding independent: matched and mismatched distances share one distribution
        first, second = centres, unit(rng.normal(size=(2 * n, 128)))
    return first, second, np.array([True] * n + [False] * n)


def test_pair_distances_sqeuclidean_and_cosine():
    rng = np.random.default_rng(0)
    a, b = unit(rng.normal(size=(5, 16))), unit(rng.normal(size=(5, 16)))
    sq = pair_distances(a, b, "sqeuclidean")
    np.testing.assert_allclose(sq, [np.sum((x - y) ** 2) for x, y in zip(a, b, strict=True)])
    np.testing.assert_allclose(pair_distances(a, b, "cosine"), sq / 2)  # unit vectors: |a-b|^2 = 2(1 - cos)
    np.testing.assert_allclose(pair_distances(3 * a, a, "cosine"), 0, atol=1e-12)
    with pytest.raises(ValueError, match="metric"):
        pair_distances(a, b, "manhattan")
    with pytest.raises(ValueError, match="shape"):
        pair_distances(a, b[:4])


def test_hand_computed_threshold_and_accuracy():
    thresholds = DEFAULT_THRESHOLDS["sqeuclidean"]
    accuracies = threshold_accuracies(SMALL_D, SMALL_SAME, thresholds)
    assert accuracies.max() == 0.875
    assert np.flatnonzero(accuracies == 0.875).tolist() == list(range(31, 41))
    assert accuracies[30] == 0.75  # t = 0.30: d < t is strict, so the matched pair at 0.3 is rejected
    assert best_threshold(SMALL_D, SMALL_SAME, thresholds) == 0.36


def test_train_test_scores_only_the_test_pairs():
    test_d = np.array([0.2, 0.35, 0.5, 0.33, 0.9])
    test_same = np.array([True, True, True, False, False])
    result = train_test_verification(SMALL_D, SMALL_SAME, test_d, test_same)
    assert result.threshold == 0.36
    assert result.accuracy == pytest.approx(3 / 5)  # 0.2, 0.35 accepted, 0.5 rejected, 0.33 accepted, 0.9 rejected
    assert result.accuracy_std == 0
    assert result.auc == pytest.approx(4 / 6)  # matched below mismatched in 4 of the 6 cross pairs
    assert (result.n_pairs, result.n_same) == (5, 3)


def test_separable_embeddings_score_perfectly():
    rng = np.random.default_rng(1)
    a, b, same = synthetic_pairs(rng, 300, noise=0.05, separable=True)
    folds = np.repeat(np.arange(10), 60)
    result = kfold_verification(pair_distances(a, b), same, rng.permutation(folds))
    assert result.accuracy == 1.0 and result.accuracy_std == 0
    assert result.auc == 1.0 and result.eer == 0.0 and result.val_at_far == 1.0
    assert all(0.0 < t <= 2.0 for t in result.fold_thresholds)


def test_identical_distributions_score_about_half():
    rng = np.random.default_rng(2)
    a, b, same = synthetic_pairs(rng, 3000, noise=0, separable=False)
    folds = rng.permutation(np.repeat(np.arange(10), 600))
    result = kfold_verification(pair_distances(a, b), same, folds)
    assert 0.46 < result.accuracy < 0.54
    assert 0.47 < result.auc < 0.53
    assert 0.45 < result.eer < 0.55
    assert result.val_at_far < 0.01


def test_each_fold_uses_the_threshold_of_the_other_folds():
    # Folds 0 and 1: matched at 0.5, mismatched at 1.5. Fold 2 (larger): matched at 1.8, mismatched
    # at 2.5, so its own best threshold, and that of all pairs together, lies in (1.8, 2.5].
    d = np.array([0.5, 0.5, 1.5, 1.5] * 2 + [1.8] * 6 + [2.5] * 6)
    same = np.array([True, True, False, False] * 2 + [True] * 6 + [False] * 6)
    folds = np.repeat([0, 1, 2], [4, 4, 12])
    grid = DEFAULT_THRESHOLDS["sqeuclidean"]
    assert best_threshold(d[8:], same[8:], grid) > 1.8 and best_threshold(d, same, grid) > 1.8
    expected_2 = best_threshold(d[:8], same[:8], grid)
    assert 0.5 < expected_2 <= 1.5
    result = kfold_verification(d, same, folds)
    assert result.fold_thresholds[2] == expected_2
    assert result.fold_accuracies[2] == 0.5  # fold 2's matched pairs at 1.8 are rejected
    assert result.accuracy == pytest.approx(np.mean(result.fold_accuracies))
    assert result.threshold == pytest.approx(np.mean(result.fold_thresholds))


def test_kfold_matches_a_brute_force_reference():
    rng = np.random.default_rng(3)
    same = rng.random(400) < 0.5
    d = np.where(same, rng.normal(0.9, 0.3, 400), rng.normal(1.4, 0.3, 400)).clip(0, 4)
    thresholds = DEFAULT_THRESHOLDS["sqeuclidean"]
    result = kfold_verification(d, same, folds=4)  # contiguous blocks of 100 pairs
    for k in range(4):
        scored = np.zeros(400, bool)
        scored[100 * k:100 * (k + 1)] = True
        train_acc = [np.mean((d[~scored] < t) == same[~scored]) for t in thresholds]
        assert train_acc[thresholds.tolist().index(result.fold_thresholds[k])] == max(train_acc)
        assert result.fold_accuracies[k] == np.mean((d[scored] < result.fold_thresholds[k]) == same[scored])


def test_val_at_far_and_eer():
    # 1,000 mismatched: one at 0.05, the rest at 3.0. 1,000 matched: 500 in [0.1, 1.0], 500 at 3.5.
    d = np.concatenate([[0.05], np.full(999, 3.0), np.linspace(0.1, 1.0, 500), np.full(500, 3.5)])
    same = np.array([False] * 1000 + [True] * 1000)
    assert val_at_far(d, same, 1e-3) == (0.5, 1.0)  # one false accept allowed: everything below 3.0
    assert val_at_far(d, same, 0.0)[0] == 0.0
    fpr, tpr = np.array([0, 0.1, 0.3, 1]), np.array([0, 0.6, 0.9, 1])
    # false-reject rate 0.4 -> 0.1 while false-accept rate 0.1 -> 0.3: they meet at 0.22
    assert equal_error_rate(fpr, tpr) == pytest.approx(0.22)


def test_invalid_inputs_are_rejected():
    with pytest.raises(ValueError, match="both matched and mismatched"):
        kfold_verification(np.ones(10), np.ones(10, bool), folds=2)
    with pytest.raises(ValueError, match="NaN"):
        kfold_verification(np.array([0.1, np.nan]), np.array([True, False]), folds=2)
    with pytest.raises(ValueError, match="one fold per pair"):
        kfold_verification(SMALL_D, SMALL_SAME, folds=np.zeros(3))


def test_roc_png_has_every_curve(tmp_path):
    rng = np.random.default_rng(4)
    same = rng.random(200) < 0.5
    good = kfold_verification(np.where(same, 0.5, 1.5) + rng.normal(0, 0.3, 200), same, folds=5)
    bad = kfold_verification(rng.random(200) * 2, same, folds=5)
    path = plot_roc_curves({"good": good, "bad": bad}, tmp_path / "sub" / "roc.png", title="test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    image = matplotlib.image.imread(path)
    assert image.shape[0] > 300 and image.shape[1] > 300


def test_leave_one_out_1nn_and_silhouette():
    points = np.array([[0.0], [1.0], [1.2], [5.0]])
    labels = np.array(["a", "a", "b", "b"])
    # nearest others: 0 -> 1 (a, right), 1 -> 1.2 (b, wrong), 1.2 -> 1 (a, wrong), 5 -> 1.2 (b, right)
    assert leave_one_out_1nn_accuracy(points, labels) == 0.5
    rng = np.random.default_rng(5)
    clusters = np.repeat(np.eye(4) * 10, 5, axis=0) + rng.normal(0, 0.1, (20, 4))
    ids = np.repeat(np.arange(4), 5)
    assert leave_one_out_1nn_accuracy(clusters, ids) == 1.0
    assert silhouette(clusters, ids) > 0.9
    assert silhouette(clusters, rng.permutation(ids)) < 0.1
