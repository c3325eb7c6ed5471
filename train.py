"""Train a face-embedding network from scratch with an online-mined triplet loss.

    python train.py --model ang --time-budget 2

trains on the LFW people outside View 1 DevTest (and outside the 10 benchmark-face people)
plus ../shared/data/celeba-subset, validates on LFW View 1 after every epoch and keeps the
weights of the epoch with the best View 1 AUC in weights/<model>.weights.h5 with
weights/<model>.json. Ctrl-C stops after a checkpoint; ``--resume`` continues exactly where the
checkpoint stands; resuming with a larger --time-budget trains on (the cosine schedule is
stretched to the new budget).

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
import math
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from utils.paths import REPO_ROOT

EPILOG = """Data: each --data entry is a folder-per-identity tree (aligned once with dlib and cached), an
aligned-cache folder (python -m utils.faces.cache) or an MS-Celeb-1M face TSV (streamed into a
face store in the cache folder, no JPEG files written). Only faces where dlib found a face are trained on;
identities with fewer than --min-images of them are left out, those with fewer than K are
sampled with replacement. Identities are namespaced per dataset.

Every epoch writes <log-dir>/metrics.csv, <log-dir>/training_curves.png, TensorBoard events in
<log-dir>/tensorboard and a checkpoint in <checkpoint-dir>. Exit codes: 0 done or time budget
reached, 2 bad input, an unwritable output folder or a step TensorFlow cannot run (out of
memory, say), 3 NaN loss, 4 collapse (all embeddings at one point), 130 stopped by Ctrl-C or
SIGTERM (during the training steps: after a checkpoint)."""
MIN_IMAGE_SIZE = 96  # the smallest input the architectures take (models.blocks.face_input)


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number >= minimum."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    return parse


def float_above(minimum: float, inclusive: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number > minimum (>= with inclusive)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or value < minimum or (value == minimum and not inclusive):
            raise argparse.ArgumentTypeError(f"must be {'at least' if inclusive else 'above'} {minimum:g}, "
                                             f"got {text}")
        return value
    return parse


def weights_file(text: str) -> Path:
    """An argparse type: a path ending in .weights.h5 (what Keras' save_weights writes)."""
    if not text.endswith(".weights.h5"):
        raise argparse.ArgumentTypeError(f"must end with .weights.h5, got {text}")
    return Path(text)


def shown(path: str) -> str:
    """A path relative to the repository when it is inside it."""
    return str(Path(path).relative_to(REPO_ROOT)) if Path(path).is_relative_to(REPO_ROOT) else Path(path).name


def build_parser() -> argparse.ArgumentParser:
    from models import TRAINABLE_MODEL_NAMES
    from utils.training.config import LR_SCHEDULES, STRATEGIES
    from utils.training.data import default_data, default_exclusions
    from utils.training.losses import MINING

    p = argparse.ArgumentParser(prog="python train.py", description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, choices=TRAINABLE_MODEL_NAMES, help="architecture to train")
    p.add_argument("--data", nargs="+", metavar="PATH", default=default_data(),
                   help="training datasets (default: LFW and celeba-subset under the shared data folder)")
    p.add_argument("--exclude-people", action="append", metavar="FILE", default=[],
                   help="also leave out the people in FILE (an LFW people file, or one Name or "
                        "Name/image.jpg per line); may repeat. Always excluded: "
                        + " and ".join(shown(f) for f in default_exclusions()))
    p.add_argument("--min-images", type=int_at_least(1), default=2,
                   help="leave out identities with fewer detected faces (default 2)")
    p.add_argument("--epochs", type=int_at_least(1), default=50, help="epochs to train (default 50)")
    p.add_argument("--steps-per-epoch", type=int_at_least(1), default=100,
                   help="steps between validations (default 100)")
    p.add_argument("--batch-identities", type=int_at_least(2), default=32, metavar="P",
                   help="identities per batch, at least 2 (default 32)")
    p.add_argument("--images-per-identity", type=int_at_least(2), default=4, metavar="K",
                   help="images per identity, at least 2 (default 4)")
    p.add_argument("--margin", type=float_above(0.0, inclusive=True), default=0.2,
                   help="triplet margin on squared L2 distances (default 0.2)")
    p.add_argument("--mining", choices=list(MINING), default="semi-hard",
                   help="semi-hard (FaceNet; default: it learns from scratch where batch-hard collapsed), "
                        "batch-hard (Hermans et al.) or all (every active triplet)")
    p.add_argument("--soft-margin", action="store_true", help="softplus(d_ap - d_an) instead of the hinge")
    p.add_argument("--lr", type=float_above(0.0), default=1e-3,
                   help="Adam's (initial) learning rate (default 1e-3)")
    p.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="cosine",
                   help="cosine (default): anneal to 1%% of --lr by the end of --epochs or --time-budget, "
                        "whichever comes first; constant: keep --lr")
    p.add_argument("--image-size", type=int_at_least(MIN_IMAGE_SIZE), default=96,
                   help=f"input size in pixels, at least {MIN_IMAGE_SIZE} (default 96)")
    p.add_argument("--weights-out", type=weights_file,
                   help="best weights file, *.weights.h5 (default weights/<model>.weights.h5; "
                        "metadata goes beside it as .json)")
    p.add_argument("--checkpoint-dir", type=Path, help="default checkpoints/<model>")
    p.add_argument("--log-dir", type=Path, help="CSV, PNG and TensorBoard logs (default runs/<model>)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --checkpoint-dir")
    p.add_argument("--seed", type=int, default=0, help="seed of weights, batches and augmentation (default 0)")
    p.add_argument("--time-budget", type=float_above(0.0), metavar="HOURS",
                   help="stop (after validating and checkpointing) once this much wall time is spent, "
                        "counted over --resume as well")
    p.add_argument("--strategy", choices=STRATEGIES, default="default",
                   help="default: one device; mirrored: all local GPUs; multiworker: several machines "
                        "from TF_CONFIG (see above)")
    p.add_argument("--mixed-precision", action="store_true",
                   help="16-bit compute: float16 with loss scaling on GPUs, bfloat16 on CPUs (about 1.25-1.5x "
                        "faster on this machine's AVX512-BF16 cores); the L2 normalisation stays float32")
    # The keys of utils.training.batching.AUGMENTATIONS, spelled out so --help needs no TensorFlow
    # (a test keeps them equal).
    p.add_argument("--augmentation", choices=["none", "mild", "strong"], default="mild",
                   help="mild (default): flips, small rotations, shifts, zooms, brightness and contrast; "
                        "strong: larger ones, plus colour and greyscale, blur and an erased patch; none: the "
                        "aligned faces as they are")
    p.add_argument("--no-validation", action="store_true",
                   help="skip LFW View 1 after each epoch (the latest weights are kept instead of the best)")
    p.add_argument("--collapse-patience", type=int_at_least(0), default=50,
                   help="stop after this many collapsed steps in a row; 0 never stops (default 50)")
    return p


def train(args: argparse.Namespace) -> int:
    """Run training as the arguments say; returns the exit code (2 with a message for bad input or a
    failed TensorFlow step)."""
    import tensorflow as tf

    from models.weights import weights_path
    from utils.training.config import TrainConfig
    from utils.training.data import default_exclusions
    from utils.training.loop import TrainingError, run

    config = TrainConfig(
        model=args.model, data=[str(Path(d).resolve()) for d in args.data],
        checkpoint_dir=str(args.checkpoint_dir or REPO_ROOT / "checkpoints" / args.model),
        log_dir=str(args.log_dir or REPO_ROOT / "runs" / args.model),
        weights_out=str(args.weights_out or weights_path(args.model)),
        epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, identities_per_batch=args.batch_identities,
        images_per_identity=args.images_per_identity, margin=args.margin, mining=args.mining,
        soft_margin=args.soft_margin, lr=args.lr, lr_schedule=args.lr_schedule,
        image_size=args.image_size, seed=args.seed,
        time_budget_hours=args.time_budget, strategy=args.strategy, mixed_precision=args.mixed_precision,
        augmentation=args.augmentation, min_images=args.min_images,
        exclude_people=default_exclusions() + [str(Path(f).resolve()) for f in args.exclude_people],
        collapse_patience=args.collapse_patience, resume=args.resume)
    try:
        return run(config, validation=not args.no_validation)
    except (TrainingError, ValueError, OSError) as err:  # DatasetError, ResumeError: ValueErrors
        print(f"error: {err}", file=sys.stderr)
        return 2
    except tf.errors.OpError as err:  # e.g. out of GPU memory, or an op the device cannot run
        print(f"error: TensorFlow could not run the training step ({type(err).__name__}: "
              f"{err.message.splitlines()[0]}); the last checkpoint in {config.checkpoint_dir}, if any, is "
              "intact", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)  # like Ctrl-C
    try:
        return train(build_parser().parse_args(argv))
    except KeyboardInterrupt:  # the training steps catch both signals themselves and checkpoint
        print("\ninterrupted outside the training steps: nothing was lost (the latest checkpoint, if any, "
              "is intact; --resume continues from it)", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
