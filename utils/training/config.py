"""The settings of one training run (``TrainConfig``), saved in every checkpoint and read by
the loop, the checkpoints and the metadata without importing any of them."""
from __future__ import annotations

from dataclasses import dataclass, field

STRATEGIES = ("default", "mirrored", "multiworker")
LR_SCHEDULES = ("cosine", "constant")
MINING_NAMES = ("semi-hard", "batch-hard", "all")  # the keys of utils.training.losses.MINING
LOSSES = ("triplet", "cosface", "arcface")  # utils.training.losses: get_loss
# The published (scale s, margin m) of the margin-softmax losses: CosFace (Wang et al. 2018) and
# ArcFace (Deng et al. 2019).
PUBLISHED_SCALE_AND_MARGIN = {"cosface": (64.0, 0.35), "arcface": (64.0, 0.5)}


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
    loss: str = "triplet"        # one of LOSSES
    margin: float = 0.2          # triplet only, like mining and soft_margin
    mining: str = "semi-hard"
    soft_margin: bool = False
    scale: float | None = None          # cosface/arcface: s; None = the published value
    class_margin: float | None = None   # cosface/arcface: m; None = the published value
    lr: float = 1e-3
    lr_schedule: str = "cosine"
    image_size: int = 96
    seed: int = 0
    time_budget_hours: float | None = None
    strategy: str = "default"
    mixed_precision: bool = False
    augmentation: str = "strong"  # "none" or a key of utils.training.batching.AUGMENTATIONS
    lfw_share: float | None = None  # the share of each batch's identities drawn from LFW; None: no rule
    weight_decay: float = 0.0       # decoupled (AdamW) weight decay; 0: plain Adam
    min_images: int = 2
    one_photo_negatives: int = 0    # triplet: one face each of this many people below min_images per batch
    exclude_people: list[str] = field(default_factory=list)
    collapse_patience: int = 50
    resume: bool = False

    def __post_init__(self) -> None:
        """Margin-softmax losses get the published scale and margin unless given; triplet has none.
        One-photo negatives are for the triplet loss only."""
        if self.loss in PUBLISHED_SCALE_AND_MARGIN:
            scale, margin = PUBLISHED_SCALE_AND_MARGIN[self.loss]
            self.scale = scale if self.scale is None else self.scale
            self.class_margin = margin if self.class_margin is None else self.class_margin
        if self.one_photo_negatives and self.loss != "triplet":
            raise ValueError(f"one-photo negatives need the triplet loss, not {self.loss}: a softmax loss "
                             "has no use for a face without a class of its own")

    @property
    def batch_size(self) -> int:
        return self.identities_per_batch * self.images_per_identity + self.one_photo_negatives

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch
