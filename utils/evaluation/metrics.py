"""Face-verification and embedding-quality metrics.

Verification works on distances between the two embeddings of each pair: a pair is predicted
"same person" when its distance is *below* the threshold, so ROC scores are ``-distance``.

- :func:`kfold_verification`: the LFW View 2 protocol as OpenFace and FaceNet run it: for each
  fold the threshold that maximises accuracy on the *other* folds is applied to that fold.
- :func:`train_test_verification`: View 1, threshold chosen on DevTrain, scored on DevTest.
- :func:`plot_roc_curves`: several ROC curves on one PNG.
- :func:`impostor_quantiles`: the distance below which a given share of strangers fall from a person's
  mean embedding (recognize.py picks its default threshold from them).
- :func:`leave_one_out_1nn_accuracy`, :func:`silhouette`: how well embeddings cluster by identity.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from sklearn.metrics import pairwise_distances, roc_auc_score, roc_curve, silhouette_score
from sklearn.model_selection import KFold

METRICS = ("sqeuclidean", "cosine")
FAR_TARGET = 1e-3
IMPOSTOR_FARS = np.round(np.logspace(-5, 0, 26), 7)  # 1e-5 ... 1, five steps per decade
# Gallery people for impostor distances are the mean of this many pictures: the more pictures, the
# nearer a stranger comes to the mean (LFW view2-unseen, ANG, distance below which 0.2% of strangers
# fall: 0.511 to single pictures, 0.481 to means of 2, 0.459 of 4, 0.442 of 8).
CENTRE_PICTURES = 4
# The default threshold must hold for the user's gallery people, not just for the evaluated ones:
# impostor distances are stored as a one-sided 95% bootstrap bound over the gallery people.
IMPOSTOR_CONFIDENCE = 0.95

# Threshold grids: squared L2 between unit vectors lies in [0, 4] (OpenFace's grid, step 0.01);
# cosine distance in [0, 2], the same grid scaled by one half.
DEFAULT_THRESHOLDS = {
    "sqeuclidean": np.round(np.arange(401) * 0.01, 2),
    "cosine": np.round(np.arange(401) * 0.005, 3),
}


def pair_distances(a: np.ndarray, b: np.ndarray, metric: str = "sqeuclidean") -> np.ndarray:
    """Distance between row i of ``a`` and row i of ``b``: squared L2 or cosine (1 - cos)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"expected two (N, D) arrays of one shape, got {a.shape} and {b.shape}")
    if metric == "sqeuclidean":
        return np.sum((a - b) ** 2, axis=1)
    if metric == "cosine":
        norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        return 1.0 - np.sum(a * b, axis=1) / np.maximum(norms, 1e-12)
    raise ValueError(f"unknown metric {metric!r}; choose one of: {', '.join(METRICS)}")


@dataclass
class VerificationResult:
    """Verification figures for one set of pairs.

    ``accuracy``/``accuracy_std`` are the mean and standard deviation of the per-fold accuracies
    (one "fold" for a train/test split, std 0); ``threshold`` is the mean of the chosen thresholds.
    ``auc``, ``eer``, ``val_at_far`` and the ROC points are computed on all scored pairs pooled
    (see :func:`val_at_far`).
    """

    accuracy: float
    accuracy_std: float
    fold_accuracies: list[float]
    fold_thresholds: list[float]
    threshold: float
    auc: float
    eer: float
    val_at_far: float
    val_threshold: float
    far_target: float
    n_pairs: int
    n_same: int
    roc_fpr: list[float] = field(repr=False)
    roc_tpr: list[float] = field(repr=False)

    def to_dict(self, with_roc: bool = True) -> dict:
        """Plain JSON-ready dict (ROC points included unless ``with_roc`` is False)."""
        data = asdict(self)
        if not with_roc:
            del data["roc_fpr"], data["roc_tpr"]
        return data


def _check_pairs(distances: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    distances = np.asarray(distances, dtype=np.float64)
    same = np.asarray(same, dtype=bool)
    if distances.ndim != 1 or distances.shape != same.shape:
        raise ValueError(f"distances and same must be 1-D of one length, got {distances.shape}, {same.shape}")
    if not np.all(np.isfinite(distances)):
        raise ValueError("distances contain NaN or infinite values")
    if same.all() or not same.any():
        raise ValueError("verification needs both matched and mismatched pairs")
    return distances, same


def threshold_accuracies(distances: np.ndarray, same: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Accuracy of "same iff distance < t" for every t in ``thresholds``."""
    distances, same = np.asarray(distances, dtype=np.float64), np.asarray(same, dtype=bool)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    same_sorted = np.sort(distances[same])
    diff_sorted = np.sort(distances[~same])
    true_accepts = np.searchsorted(same_sorted, thresholds, side="left")
    true_rejects = diff_sorted.size - np.searchsorted(diff_sorted, thresholds, side="left")
    return (true_accepts + true_rejects) / distances.size


def best_threshold(distances: np.ndarray, same: np.ndarray, thresholds: np.ndarray) -> float:
    """The threshold in ``thresholds`` with the highest accuracy on these pairs.

    Ties (a plateau of equally good thresholds, common when classes separate with a gap) go to
    the middle maximiser rather than the first, which keeps a margin on both sides.
    """
    accuracies = threshold_accuracies(distances, same, thresholds)
    maximisers = np.flatnonzero(accuracies == accuracies.max())
    return float(np.asarray(thresholds)[maximisers[len(maximisers) // 2]])


def _accuracy(distances: np.ndarray, same: np.ndarray, threshold: float) -> float:
    return float(np.mean((distances < threshold) == same))


def equal_error_rate(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """The rate where false accepts equal false rejects, linearly interpolated along the ROC."""
    gap = (1.0 - tpr) - fpr  # falls from 1 to -1 along the curve
    i = int(np.argmax(gap <= 0))
    if i == 0:
        return float(fpr[0])
    t = gap[i - 1] / (gap[i - 1] - gap[i])
    return float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))


def val_at_far(distances: np.ndarray, same: np.ndarray, far_target: float = FAR_TARGET) -> tuple[float, float]:
    """Validation rate (true-accept rate) at false-accept rate ``far_target``, and its threshold.

    Computed on all given pairs pooled: among the ROC operating points whose FAR is at most
    ``far_target`` (the ROC of "same iff distance <= t"), the one with the highest VAL. The FARs
    reachable with N mismatched pairs are multiples of 1/N, so with LFW View 2's 3,000 mismatched
    pairs FAR <= 1e-3 allows at most 3 false accepts. The threshold returned is the largest
    distance accepted at that point (0.0 when no pair can be accepted within the FAR).
    """
    distances, same = _check_pairs(distances, same)
    fpr, tpr, scores = roc_curve(same, -distances, drop_intermediate=False)
    allowed = np.flatnonzero(fpr <= far_target)
    best = allowed[np.argmax(tpr[allowed])]
    threshold = -scores[best] if np.isfinite(scores[best]) else 0.0
    return float(tpr[best]), float(threshold)


def _result(fold_accuracies: list[float], fold_thresholds: list[float],
            distances: np.ndarray, same: np.ndarray, far_target: float) -> VerificationResult:
    fpr, tpr, _ = roc_curve(same, -distances)
    val, val_threshold = val_at_far(distances, same, far_target)
    return VerificationResult(
        accuracy=float(np.mean(fold_accuracies)),
        accuracy_std=float(np.std(fold_accuracies)),
        fold_accuracies=[float(a) for a in fold_accuracies],
        fold_thresholds=[float(t) for t in fold_thresholds],
        threshold=float(np.mean(fold_thresholds)),
        auc=float(roc_auc_score(same, -distances)),
        eer=equal_error_rate(fpr, tpr),
        val_at_far=val,
        val_threshold=val_threshold,
        far_target=far_target,
        n_pairs=int(distances.size),
        n_same=int(same.sum()),
        roc_fpr=fpr.tolist(),
        roc_tpr=tpr.tolist(),
    )


def kfold_verification(distances: np.ndarray, same: np.ndarray, folds: int | np.ndarray = 10,
                       thresholds: np.ndarray | None = None,
                       far_target: float = FAR_TARGET) -> VerificationResult:
    """K-fold verification accuracy: each fold is scored with the threshold best on the others.

    ``folds`` is either the fold index of every pair (LFW View 2: pairs.txt's 10 folds) or a
    number of contiguous folds (scikit-learn ``KFold`` without shuffling, OpenFace's split).
    ``thresholds`` defaults to 0..4 step 0.01, the grid for squared L2 between unit vectors.
    """
    distances, same = _check_pairs(distances, same)
    thresholds = DEFAULT_THRESHOLDS["sqeuclidean"] if thresholds is None else np.asarray(thresholds)
    if np.isscalar(folds):
        fold_of = np.empty(distances.size, dtype=int)
        for k, (_, test) in enumerate(KFold(n_splits=int(folds)).split(distances)):
            fold_of[test] = k
    else:
        fold_of = np.asarray(folds)
        if fold_of.shape != distances.shape:
            raise ValueError(f"folds must give one fold per pair, got {fold_of.shape} for {distances.shape}")
    fold_ids = np.unique(fold_of)
    if fold_ids.size < 2:
        raise ValueError("k-fold verification needs at least two folds")
    accuracies, chosen = [], []
    for k in fold_ids:
        scored = fold_of == k
        threshold = best_threshold(distances[~scored], same[~scored], thresholds)
        accuracies.append(_accuracy(distances[scored], same[scored], threshold))
        chosen.append(threshold)
    return _result(accuracies, chosen, distances, same, far_target)


def train_test_verification(dist_train: np.ndarray, same_train: np.ndarray, dist_test: np.ndarray,
                            same_test: np.ndarray, thresholds: np.ndarray | None = None,
                            far_target: float = FAR_TARGET) -> VerificationResult:
    """LFW View 1: the threshold best on the training pairs, every figure measured on the test pairs."""
    dist_train, same_train = _check_pairs(dist_train, same_train)
    dist_test, same_test = _check_pairs(dist_test, same_test)
    thresholds = DEFAULT_THRESHOLDS["sqeuclidean"] if thresholds is None else np.asarray(thresholds)
    threshold = best_threshold(dist_train, same_train, thresholds)
    return _result([_accuracy(dist_test, same_test, threshold)], [threshold], dist_test, same_test, far_target)


def plot_roc_curves(curves: Mapping[str, VerificationResult], path: str | Path,
                    title: str = "ROC") -> Path:
    """Write the ROC curves (label -> result) on one plot as a PNG; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 6))
    try:
        for label, result in curves.items():
            ax.plot(result.roc_fpr, result.roc_tpr, lw=1.5, label=f"{label} (AUC {result.auc:.3f})")
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
        ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false accept rate", ylabel="true accept rate", title=title)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)
    return path


def impostor_quantiles(embeddings: np.ndarray, people: Sequence[str], metric: str = "sqeuclidean",
                       fars: np.ndarray = IMPOSTOR_FARS, pictures_per_person: int = CENTRE_PICTURES,
                       confidence: float | None = IMPOSTOR_CONFIDENCE, resamples: int = 200) -> dict:
    """Distances of strangers to gallery-like people, summarised as quantiles.

    Every person with at least ``pictures_per_person`` rows becomes a gallery person: the mean of
    their first ``pictures_per_person`` embeddings, rescaled to unit length (as recognize.py matches a
    face to a person). Every row of another person is a stranger to them. ``distance_estimate[i]``
    is the distance below which the share ``far[i]`` of those stranger-person distances fall: the
    per-person false-accept rate of threshold ``distance_estimate[i]``. Rows should be unit length.

    How many strangers a person draws varies a lot from person to person, so a user's gallery
    draws more or fewer than these few people did. ``distance[i]`` is therefore a one-sided
    ``confidence`` bound: the (1 - confidence) quantile of ``distance_estimate[i]`` over
    ``resamples`` bootstrap draws of the gallery people (seeded, so repeatable); a threshold read
    from it names at most ``far[i]`` of strangers with that confidence (never above the estimate).
    ``confidence=None`` stores the estimate itself as ``distance``.
    """
    people = np.asarray(people)
    embeddings = np.asarray(embeddings, np.float64)
    if len(people) != len(embeddings):
        raise ValueError(f"{len(embeddings)} embeddings but {len(people)} people")
    names, centres = [], []
    for name in dict.fromkeys(people):
        rows = embeddings[people == name][:pictures_per_person]
        if len(rows) == pictures_per_person:
            centre = rows.mean(axis=0)
            names.append(name)
            centres.append(centre / max(np.linalg.norm(centre), 1e-12))
    if not centres:
        raise ValueError(f"nobody has {pictures_per_person} pictures to make a gallery person of")
    distances = pairwise_distances(embeddings, np.array(centres), metric=metric)
    stranger = people[:, None] != np.array(names)[None, :]
    impostors = distances[stranger]
    if impostors.size == 0:
        raise ValueError("no pairs of different people to take impostor distances from")
    fars = np.asarray(fars, np.float64)
    estimate = np.quantile(impostors, fars)
    bound = estimate
    if confidence is not None:
        rng = np.random.default_rng(0)
        draws = []
        for _ in range(resamples):
            columns = rng.integers(len(names), size=len(names))
            draws.append(np.quantile(distances[:, columns][stranger[:, columns]], fars))
        bound = np.minimum(np.quantile(np.array(draws), 1.0 - confidence, axis=0), estimate)
    return {"far": [float(f) for f in fars], "distance": [round(float(d), 4) for d in bound],
            "distance_estimate": [round(float(d), 4) for d in estimate], "confidence": confidence,
            "n_pairs": int(impostors.size), "n_images": len(people), "n_people": len(names),
            "pictures_per_person": pictures_per_person}


def leave_one_out_1nn_accuracy(embeddings: np.ndarray, labels: np.ndarray,
                               metric: str = "sqeuclidean") -> float:
    """Fraction of samples whose nearest other sample has the same label.

    Every sample counts, including one whose label has no other sample (it cannot be right).
    """
    embeddings, labels = np.asarray(embeddings), np.asarray(labels)
    if len(embeddings) < 2 or len(embeddings) != len(labels):
        raise ValueError("need at least two embeddings, one label each")
    distances = pairwise_distances(embeddings, metric=metric)
    np.fill_diagonal(distances, np.inf)
    return float(np.mean(labels[np.argmin(distances, axis=1)] == labels))


def silhouette(embeddings: np.ndarray, labels: np.ndarray, metric: str = "euclidean") -> float:
    """Mean silhouette coefficient of the identity clusters (scikit-learn), in [-1, 1]."""
    return float(silhouette_score(np.asarray(embeddings), np.asarray(labels), metric=metric))
