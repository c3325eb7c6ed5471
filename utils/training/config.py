"""The settings of one training run (``TrainConfig``), saved in every checkpoint and read by
the loop, the checkpoints and the metadata without importing any of them."""
from __future__ import annotations

from dataclasses import dataclass, field

STRATEGIES = ("default", "mirrored", "multiworker")
LR_SCHEDULES = ("cosine", "constant")
MINING_NAMES = ("semi-hard", "batch-hard", "all")  # the keys of utils.training.losses.MINING


@dataclass
class TrainConfig:
    """Everything a run needs besides the data arrays; saved in every checkpoint."""

    model: str
    data: list[str]
    checkpoint_dir: str
    log_dir: str
    weights_out: str
    epochs: int = 50
    steps_per_epoch: int = 100
    identities_per_batch: int = 32
    images_per_identity: int = 4
    margin: float = 0.2
    mining: str = "semi-hard"
    soft_margin: bool = False
    lr: float = 1e-3
    lr_schedule: str = "cosine"
    image_size: int = 96
    seed: int = 0
    time_budget_hours: float | None = None
    strategy: str = "default"
    mixed_precision: bool = False
    augmentation: str = "mild"   # "none" or a key of utils.training.batching.AUGMENTATIONS
    min_images: int = 2
    exclude_people: list[str] = field(default_factory=list)
    collapse_patience: int = 50
    resume: bool = False

    @property
    def batch_size(self) -> int:
        return self.identities_per_batch * self.images_per_identity

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch
