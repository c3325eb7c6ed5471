"""Train a face-embedding network from scratch with an online-mined triplet loss.

    python train.py --model ang --time-budget 2

trains on the LFW people outside View 1 DevTest (and outside the 10 benchmark-face people)
plus ../shared/data/celeba-subset, validates on LFW View 1 after every epoch and keeps the
best weights in weights/<model>.weights.h5 with weights/<model>.json. Ctrl-C stops after a
checkpoint; ``--resume`` continues exactly where the checkpoint stands.

Several machines (--strategy multiworker): start the same command on every machine, each with
a TF_CONFIG environment variable naming the whole cluster and its own place in it, e.g. on the
first of two machines

    TF_CONFIG='{"cluster": {"worker": ["host1:12345", "host2:12345"]},
                "task": {"type": "worker", "index": 0}}' python train.py --model nn2 --strategy multiworker

and ``"index": 1`` on the second. The global batch (P x K) is split by whole identities over
all replicas (P must divide evenly); each replica mines triplets within its own share. Every
machine needs the training data and the LFW cache; worker 0 writes the checkpoints, logs and
weights, so give --checkpoint-dir on a shared file system if you want to --resume.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from utils.paths import REPO_ROOT

EPILOG = """Data: each --data entry is a folder-per-identity tree (aligned once with dlib and cached), an
aligned-cache folder (python -m utils.aligned_cache) or an MS-Celeb-1M face TSV (exported to a
folder tree in the cache folder first). Only faces where dlib found a face are trained on;
identities with fewer than --min-images of them are left out, those with fewer than K are
sampled with replacement. Identities are namespaced per dataset.

Every epoch writes <log-dir>/metrics.csv, <log-dir>/training_curves.png, TensorBoard events in
<log-dir>/tensorboard and a checkpoint in <checkpoint-dir>. Exit codes: 0 done or time budget
reached, 2 bad input, 3 NaN loss, 4 collapse (all embeddings at one point), 130 stopped by a
signal (checkpoint written)."""


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from models import TRAINABLE_MODEL_NAMES
    from utils.triplet_loss import MINING
    from utils.training import STRATEGIES, default_data, default_exclusions

    p = argparse.ArgumentParser(prog="python train.py", description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, choices=TRAINABLE_MODEL_NAMES, help="architecture to train")
    p.add_argument("--data", nargs="+", metavar="PATH", default=default_data(),
                   help="training datasets (default: LFW and celeba-subset under the shared data folder)")
    p.add_argument("--exclude-people", action="append", metavar="FILE", default=[],
                   help="also leave out the people in FILE (an LFW people file, or one Name or "
                        "Name/image.jpg per line); may repeat. Always excluded: "
                        + " and ".join(Path(f).name for f in default_exclusions()))
    p.add_argument("--min-images", type=positive_int, default=2,
                   help="leave out identities with fewer detected faces (default 2)")
    p.add_argument("--epochs", type=positive_int, default=50, help="epochs to train (default 50)")
    p.add_argument("--steps-per-epoch", type=positive_int, default=100,
                   help="steps between validations (default 100)")
    p.add_argument("--batch-identities", type=positive_int, default=32, metavar="P",
                   help="identities per batch (default 32)")
    p.add_argument("--images-per-identity", type=positive_int, default=4, metavar="K",
                   help="images per identity (default 4)")
    p.add_argument("--margin", type=float, default=0.2,
                   help="triplet margin on squared L2 distances (default 0.2)")
    p.add_argument("--mining", choices=list(MINING), default="semi-hard",
                   help="semi-hard (FaceNet; default: it learns from scratch where batch-hard collapsed), "
                        "batch-hard (Hermans et al.) or all (every active triplet)")
    p.add_argument("--soft-margin", action="store_true", help="softplus(d_ap - d_an) instead of the hinge")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    p.add_argument("--image-size", type=positive_int, default=96, help="input size in pixels (default 96)")
    p.add_argument("--weights-out", type=Path, help="best weights file (default weights/<model>.weights.h5; "
                                                     "metadata goes beside it as .json)")
    p.add_argument("--checkpoint-dir", type=Path, help="default checkpoints/<model>")
    p.add_argument("--log-dir", type=Path, help="CSV, PNG and TensorBoard logs (default runs/<model>)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --checkpoint-dir")
    p.add_argument("--seed", type=int, default=0, help="seed of weights, batches and augmentation (default 0)")
    p.add_argument("--time-budget", type=float, metavar="HOURS",
                   help="stop (after validating and checkpointing) once this much wall time is spent")
    p.add_argument("--strategy", choices=STRATEGIES, default="default",
                   help="default: one device; mirrored: all local GPUs; multiworker: several machines "
                        "from TF_CONFIG (see above)")
    p.add_argument("--mixed-precision", action="store_true",
                   help="16-bit compute: float16 with loss scaling on GPUs, bfloat16 on CPUs (about 1.25-1.5x "
                        "faster on this machine's AVX512-BF16 cores); the L2 normalisation stays float32")
    p.add_argument("--no-augmentation", action="store_true", help="train on the aligned faces as they are")
    p.add_argument("--no-validation", action="store_true",
                   help="skip LFW View 1 after each epoch (the latest weights are kept instead of the best)")
    p.add_argument("--collapse-patience", type=int, default=50,
                   help="stop after this many collapsed steps in a row; 0 never stops (default 50)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from models.weights import weights_path
    from utils.datasets.folders import DatasetError
    from utils.training import TrainConfig, TrainingError, default_exclusions, run

    config = TrainConfig(
        model=args.model, data=[str(Path(d).resolve()) for d in args.data],
        checkpoint_dir=str(args.checkpoint_dir or REPO_ROOT / "checkpoints" / args.model),
        log_dir=str(args.log_dir or REPO_ROOT / "runs" / args.model),
        weights_out=str(args.weights_out or weights_path(args.model)),
        epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, identities_per_batch=args.batch_identities,
        images_per_identity=args.images_per_identity, margin=args.margin, mining=args.mining,
        soft_margin=args.soft_margin, lr=args.lr, image_size=args.image_size, seed=args.seed,
        time_budget_hours=args.time_budget, strategy=args.strategy, mixed_precision=args.mixed_precision,
        augmentation=not args.no_augmentation, min_images=args.min_images,
        exclude_people=default_exclusions() + [str(Path(f).resolve()) for f in args.exclude_people],
        collapse_patience=args.collapse_patience, resume=args.resume)
    try:
        return run(config, validation=not args.no_validation)
    except (TrainingError, DatasetError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
