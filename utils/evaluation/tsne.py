"""t-SNE figures of face embeddings, with numbers that do not depend on t-SNE's randomness."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.manifold import TSNE  # noqa: E402

from utils.evaluation.metrics import leave_one_out_1nn_accuracy, silhouette  # noqa: E402


@dataclass
class Panel:
    """One scatter plot: 2-D points coloured by person, a title and a few lines of figures."""

    title: str
    points: np.ndarray | None
    labels: list[str]
    lines: list[str]


def cluster_scores(embeddings: np.ndarray, labels: list[str]) -> dict[str, float]:
    """Leave-one-out 1-NN accuracy and silhouette score (squared L2 / Euclidean)."""
    labels_array = np.asarray(labels)
    return {"loo_1nn_accuracy": leave_one_out_1nn_accuracy(embeddings, labels_array),
            "silhouette": silhouette(embeddings, labels_array)}


def tsne_2d(embeddings: np.ndarray, seed: int = 0) -> np.ndarray:
    """A fixed-seed 2-D t-SNE of the embeddings (same input, same picture)."""
    perplexity = min(15.0, (len(embeddings) - 1) / 3)
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(embeddings)


def draw_panels(rows: list[list[Panel]], people: list[str], path: Path, heading: str) -> Path:
    """Draw a grid of panels with one shared legend naming the people, into a PNG."""
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    colours = plt.get_cmap("tab10" if len(people) <= 10 else "tab20")
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(5.2 * n_cols + 2.6, 5.4 * n_rows), squeeze=False)
    for r, row in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(row):
                ax.axis("off")
                continue
            panel = row[c]
            ax.set_title(panel.title, fontsize=11, fontweight="bold")
            if panel.points is None:
                ax.text(0.5, 0.5, "\n".join(panel.lines), ha="center", va="center", fontsize=10,
                        transform=ax.transAxes, wrap=True)
                continue
            for i, person in enumerate(people):
                mask = np.asarray(panel.labels) == person
                ax.scatter(panel.points[mask, 0], panel.points[mask, 1], s=28, color=colours(i),
                           edgecolors="white", linewidths=0.4)
            ax.set_xlabel("\n".join(panel.lines), fontsize=9)
    handles = [plt.Line2D([], [], marker="o", linestyle="", color=colours(i), label=p.replace("_", " "))
               for i, p in enumerate(people)]
    fig.legend(handles=handles, loc="center right", fontsize=10, frameon=False, title="person")
    fig.suptitle(heading, fontsize=14)
    fig.tight_layout(rect=(0, 0, 1 - 2.4 / (5.2 * n_cols + 2.6), 0.97))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
