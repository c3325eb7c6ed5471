"""What a training run logs for people: TensorBoard scalars, metrics.csv and training_curves.png."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Self

import tensorflow as tf

from utils.atomic import atomic_path


class TrainingLog:
    """TensorBoard scalars (per step and per epoch), metrics.csv (one row per epoch) and a PNG of the
    curves, in one folder. A disabled log (a multi-worker run's other workers) writes nothing.
    Use it as a context manager: the TensorBoard writer is closed on leaving."""

    def __init__(self, folder: str | Path, enabled: bool = True):
        self.folder = Path(folder)
        self.writer = None
        if enabled:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.writer = tf.summary.create_file_writer(str(self.folder / "tensorboard"))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self.writer is None:
            return
        with self.writer.as_default(step=step):
            for name, value in values.items():
                tf.summary.scalar(name, value)

    def epoch(self, history: list[dict[str, float]], selected_by: str = "val_mean_auc") -> None:
        """Log the last row of ``history`` to TensorBoard; rewrite the CSV and the PNG from all rows
        (``selected_by``: the column that picks the kept weights, marked in the PNG's legend)."""
        if self.writer is None:
            return
        self.scalars(int(history[-1]["step"]), {f"epoch/{k}": v for k, v in history[-1].items()
                                                 if k not in ("step", "epoch")})
        self.writer.flush()
        columns = list(dict.fromkeys(k for row in history for k in row))
        with atomic_path(self.folder / "metrics.csv") as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(history)
        plot_history(history, self.folder / "training_curves.png", selected_by)


def plot_history(history: list[dict[str, float]], path: Path, selected_by: str = "val_mean_auc") -> None:
    """Training loss, and the validation AUCs and View 1 accuracy, against wall-clock hours, one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hours = [row["wall_hours"] for row in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(hours, [row["loss"] for row in history], "o-")
    ax_loss.set(xlabel="wall-clock hours", ylabel="loss (epoch mean)", title="training loss")
    for key, label, color in (("val_mean_auc", "mean AUC", "tab:purple"),
                              ("val_auc", "LFW View 1 AUC", "tab:blue"),
                              ("val_celeba_auc", "CelebA val-half AUC", "tab:orange"),
                              ("val_accuracy", "LFW View 1 accuracy", "tab:green")):
        val = [(row["wall_hours"], row[key]) for row in history if key in row]
        if val:
            label += " (picks the kept weights)" if key == selected_by else ""
            ax_acc.plot(*zip(*val, strict=True), "o-", color=color, label=label)
    if ax_acc.lines:
        ax_acc.legend(loc="lower right")
    ax_acc.axhline(0.5, color="grey", linestyle=":", linewidth=1)
    ax_acc.set(xlabel="wall-clock hours", title="validation (LFW View 1 DevTest, CelebA hold-out val half)")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
    finally:
        plt.close(fig)
