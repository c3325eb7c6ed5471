"""Train a face-embedding network from scratch with an online-mined triplet loss (default) or a
margin-softmax loss over the training identities (--loss cosface or arcface).

    python train.py --model ang --time-budget 2

trains on the LFW people outside View 1 DevTest (and outside the 10 benchmark-face people)
plus ../shared/data/celeba-subset outside its hold-out (protocols/README.md), validates after
every epoch on LFW View 1 and on the CelebA hold-out's validation half, and keeps the weights of
the epoch with the best mean of the two AUCs (a run resumed from a checkpoint made before the
CelebA validation keeps choosing by View 1 AUC, the rule its earlier epochs were chosen by).
Everything goes into the run's own folder, runs/<model>/<UTC start time or --run-name>/:
checkpoints, logs, the kept <model>.weights.h5 and its <model>.json. Ctrl-C stops after a
checkpoint; ``--resume`` continues the latest run of the model exactly where its checkpoint stands
(``--resume RUN_DIR`` a given one); resuming with a larger --time-budget trains on (the cosine
schedule is stretched to the new budget). One process at a time trains in a run folder.

    python train.py --publish runs/ang/20261130T175200Z

makes a run's kept weights the model's published ones (weights/<model>.weights.h5 and .json)
and evaluates them on LFW View 2 and View 2 unseen people (evaluate.py), which recognize.py
takes its default threshold from.

Several machines (--strategy multiworker): start the same command on every machine, each with
a TF_CONFIG environment variable naming the whole cluster and its own place in it, e.g. on the
first of two machines

    TF_CONFIG='{"cluster": {"worker": ["host1:12345", "host2:12345"]},
                "task": {"type": "worker", "index": 0}}' python train.py --model nn2 --strategy multiworker

and ``"index": 1`` on the second. The global batch (P x K) is split by whole identities over
all replicas (P must divide evenly); each replica mines triplets within its own share (or
computes the margin-softmax loss of its share). Every machine needs the training data and the
LFW cache; worker 0 writes the checkpoints, logs and weights, so give --checkpoint-dir on a
shared file system if you want to --resume.
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

Every epoch writes metrics.csv, training_curves.png, TensorBoard events in tensorboard/ (in
--log-dir, default the run folder) and a checkpoint (in --checkpoint-dir, default the run
folder). Exit codes: 0 done or time budget reached, 2 bad input, an unwritable output folder, a
run folder another process trains in, a damaged checkpoint or a step TensorFlow cannot run (out
of memory, say), 3 NaN loss, 4 collapse (all embeddings at one point), 130 stopped by Ctrl-C or
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


def fraction(text: str) -> float:
    """An argparse type: a number from 0 to 1."""
    value = float_above(0.0, inclusive=True)(text)
    if value > 1.0:
        raise argparse.ArgumentTypeError(f"must be at most 1, got {text}")
    return value


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
    from utils.training.config import LOSSES, LR_SCHEDULES, MINING_NAMES, PUBLISHED_SCALE_AND_MARGIN, STRATEGIES
    from utils.training.data import default_data, default_exclusions

    p = argparse.ArgumentParser(prog="python train.py", description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=TRAINABLE_MODEL_NAMES, help="architecture to train (required)")
    p.add_argument("--data", nargs="+", metavar="PATH", default=default_data(),
                   help="training datasets (default: LFW and celeba-subset under the shared data folder)")
    p.add_argument("--exclude-people", action="append", metavar="FILE", default=[],
                   help="also leave out the people in FILE (an LFW people file, or one Name or "
                        "Name/image.jpg per line); may repeat. Always excluded: "
                        + " and ".join(shown(f) for f in default_exclusions()))
    p.add_argument("--min-images", type=int_at_least(1), default=2,
                   help="leave out identities with fewer detected faces (default 2)")
    p.add_argument("--one-photo-negatives", type=int_at_least(0), default=0, metavar="N",
                   help="triplet: add one face each of N people with fewer than --min-images faces (LFW's "
                        "one-photo people) to every P x K batch, as negatives only (default 0: leave them out)")
    p.add_argument("--epochs", type=int_at_least(1), default=50, help="epochs to train (default 50)")
    p.add_argument("--steps-per-epoch", type=int_at_least(1), default=100,
                   help="steps between validations (default 100)")
    p.add_argument("--batch-identities", type=int_at_least(2), default=32, metavar="P",
                   help="identities per batch, at least 2 (default 32)")
    p.add_argument("--images-per-identity", type=int_at_least(2), default=4, metavar="K",
                   help="images per identity, at least 2 (default 4)")
    cosface, arcface = PUBLISHED_SCALE_AND_MARGIN["cosface"], PUBLISHED_SCALE_AND_MARGIN["arcface"]
    p.add_argument("--loss", choices=LOSSES, default="triplet",
                   help="triplet (default): online-mined triplets in each batch (--mining, --margin, "
                        "--soft-margin); cosface: softmax over the training identities with logits "
                        "s (cos(theta_y) - m) for the own identity (Wang et al. 2018); arcface: the same with "
                        "s cos(theta_y + m) (Deng et al. 2019). The softmax losses train class weights, one "
                        "vector per identity, beside the model; only the model is kept")
    p.add_argument("--margin", type=float_above(0.0, inclusive=True),
                   help="triplet margin on squared L2 distances (default 0.2)")
    p.add_argument("--mining", choices=MINING_NAMES,
                   help="triplet mining: semi-hard (FaceNet; default: it learns from scratch where batch-hard "
                        "collapsed), batch-hard (Hermans et al.) or all (every active triplet)")
    p.add_argument("--soft-margin", action="store_true",
                   help="triplet: softplus(d_ap - d_an) instead of the hinge")
    p.add_argument("--scale", type=float_above(0.0), metavar="S",
                   help=f"cosface/arcface: the scale s of the logits (default, as published: cosface {cosface[0]:g}, "
                        f"arcface {arcface[0]:g})")
    p.add_argument("--class-margin", type=float_above(0.0, inclusive=True), metavar="M",
                   help=f"cosface: the cosine margin m (default {cosface[1]:g}); arcface: the angular margin m "
                        f"in radians (default {arcface[1]:g})")
    p.add_argument("--lr", type=float_above(0.0), default=1e-3,
                   help="Adam's (initial) learning rate (default 1e-3)")
    p.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="cosine",
                   help="cosine (default): anneal to 1%% of --lr by the end of --epochs or --time-budget, "
                        "whichever comes first; constant: keep --lr")
    p.add_argument("--image-size", type=int_at_least(MIN_IMAGE_SIZE), default=96,
                   help=f"input size in pixels, at least {MIN_IMAGE_SIZE} (default 96)")
    p.add_argument("--run-name", metavar="NAME",
                   help="the run folder's name under runs/<model>/ (default: the UTC start time)")
    p.add_argument("--resume", nargs="?", const="", metavar="RUN_DIR",
                   help="continue a run from its checkpoint: RUN_DIR, else the one in --checkpoint-dir or "
                        "named by --run-name, else the latest run of --model")
    p.add_argument("--weights-out", type=weights_file,
                   help="best weights file, *.weights.h5, metadata beside it as .json (default: in the run "
                        "folder; weights/<model>.weights.h5 replaces the published weights and drops their "
                        "LFW figures: --publish keeps them)")
    p.add_argument("--checkpoint-dir", type=Path,
                   help="checkpoints and epoch snapshots (default: the run folder, runs/<model>/<run>)")
    p.add_argument("--log-dir", type=Path, help="CSV, PNG and TensorBoard logs (default: the run folder)")
    p.add_argument("--publish", type=Path, metavar="RUN_DIR",
                   help="instead of training: copy RUN_DIR's kept weights and metadata to weights/ and "
                        "evaluate them on LFW View 2 and View 2 unseen people (a few minutes)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights, batches and augmentation (default 0)")
    p.add_argument("--time-budget", type=float_above(0.0), metavar="HOURS",
                   help="stop (after validating and checkpointing) once this much wall time is spent, "
                        "counted over --resume as well")
    p.add_argument("--strategy", choices=STRATEGIES, default="default",
                   help="default: one device; mirrored: all local GPUs; multiworker: several machines "
                        "from TF_CONFIG (see above)")
    p.add_argument("--mixed-precision", action="store_true",
                   help="16-bit compute: float16 with loss scaling on GPUs, bfloat16 on CPUs; the L2 "
                        "normalisation stays float32. Whether a CPU gains depends on the CPU: 1.25x on an AMD "
                        "EPYC, 0.63x (slower) on an Intel Xeon, both with AVX512-BF16; time yours with "
                        "benchmarks/train_speed.py --mixed-precision")
    # The keys of utils.training.batching.AUGMENTATIONS, spelled out so --help needs no TensorFlow
    # (a test keeps them equal).
    p.add_argument("--augmentation", choices=["none", "mild", "strong", "pose"], default="strong",
                   help="strong (default, the published weights' recipe): rotations, shifts, zooms, "
                        "brightness and contrast, plus colour and greyscale, blur and an erased patch; mild: "
                        "smaller geometry and light only, the better choice for budgets under an hour; pose: "
                        "mild with larger rotations (20 degrees), zooms (20%%) and shifts (10%%); none: the "
                        "aligned faces as they are")
    p.add_argument("--lfw-share", type=fraction, metavar="F",
                   help="draw round(F x P) of each batch's identities from LFW's and the rest from the other "
                        "datasets' (default: all identities alike, so the share follows their numbers)")
    p.add_argument("--weight-decay", type=float_above(0.0, inclusive=True), default=0.0, metavar="W",
                   help="decoupled weight decay (AdamW): every step shrinks the weight matrices, not biases "
                        "or batch-norm parameters, by lr x W (default 0: plain Adam)")
    p.add_argument("--no-validation", action="store_true",
                   help="skip the validation after each epoch (LFW View 1, CelebA hold-out validation half); "
                        "the latest weights are kept instead of the best")
    p.add_argument("--verbose", action="store_true", help="show TensorFlow's start-up and log lines")
    p.add_argument("--collapse-patience", type=int_at_least(0), default=50,
                   help="stop after this many collapsed steps in a row; 0 never stops (default 50)")
    return p


def train(args: argparse.Namespace) -> int:
    """Run training as the arguments say; returns the exit code (2 with a message for bad input, a run
    folder in use or a failed TensorFlow step)."""
    from utils.console import import_tensorflow_quietly

    import_tensorflow_quietly(args.verbose)
    import tensorflow as tf

    from models.weights import weights_path
    from utils.training.config import TrainConfig
    from utils.training.data import default_exclusions
    from utils.training.loop import TrainingError, run
    from utils.training.runs import resolve_run

    try:
        folders = resolve_run(args.model, weights_path(args.model).name, run_name=args.run_name, resume=args.resume,
                              checkpoint_dir=args.checkpoint_dir, log_dir=args.log_dir, weights_out=args.weights_out)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    config = TrainConfig(
        model=args.model, data=[str(Path(d).resolve()) for d in args.data],
        checkpoint_dir=str(folders.checkpoint_dir), log_dir=str(folders.log_dir),
        weights_out=str(folders.weights_out),
        epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, identities_per_batch=args.batch_identities,
        images_per_identity=args.images_per_identity, loss=args.loss,
        margin=TrainConfig.margin if args.margin is None else args.margin,
        mining=args.mining or TrainConfig.mining, soft_margin=args.soft_margin, scale=args.scale,
        class_margin=args.class_margin, lr=args.lr, lr_schedule=args.lr_schedule,
        image_size=args.image_size, seed=args.seed,
        time_budget_hours=args.time_budget, strategy=args.strategy, mixed_precision=args.mixed_precision,
        augmentation=args.augmentation, lfw_share=args.lfw_share, weight_decay=args.weight_decay,
        min_images=args.min_images, one_photo_negatives=args.one_photo_negatives,
        exclude_people=default_exclusions() + [str(Path(f).resolve()) for f in args.exclude_people],
        collapse_patience=args.collapse_patience, resume=args.resume is not None)
    print(f"run folder: {folders.run_dir}")
    publishes = folders.weights_out.resolve() == weights_path(args.model).resolve()
    if publishes:
        print(f"--weights-out replaces the published {args.model} weights, and their LFW figures go with them: "
              f"run `python evaluate.py --model {args.model}` after training (recognize.py takes its threshold "
              "from it), or train into the run folder and --publish it")
    try:
        code = run(config, validation=not args.no_validation)
    except (TrainingError, ValueError, OSError) as err:  # DatasetError, ResumeError, RunFolderError: ValueErrors
        print(f"error: {err}", file=sys.stderr)
        return 2
    except tf.errors.OpError as err:  # e.g. out of GPU memory, or an op the device cannot run
        print(f"error: TensorFlow could not run the training step ({type(err).__name__}: "
              f"{err.message.splitlines()[0]}); the last checkpoint in {config.checkpoint_dir}, if any, is "
              "intact", file=sys.stderr)
        return 2
    in_run_folder = folders.weights_out.parent.resolve() == folders.run_dir.resolve()
    if not publishes and in_run_folder and folders.weights_out.is_file():
        print(f"to make these weights the published ones: python train.py --publish {folders.run_dir}")
    return code


def publish(run_dir: Path) -> int:
    """--publish: copy the run's kept weights into weights/, then evaluate them as evaluate.py does."""
    import evaluate
    from utils.training.publish import publish_run

    try:
        model = publish_run(run_dir)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for protocol in ("view2", "view2-unseen"):
        code = evaluate.main(["--model", model, "--protocol", protocol, "--out", str(run_dir)])
        if code != 0:
            print(f"error: the weights are published but their LFW {protocol} evaluation failed, so recognize.py "
                  f"has no default threshold for {model} yet: fix what the message above says and run "
                  f"`python evaluate.py --model {model} --protocol {protocol}`", file=sys.stderr)
            return code
    return 0


def check_loss_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exit with a usage error when an option of the triplet loss is given for a softmax loss or
    the other way round."""
    given = {"--margin": args.margin is not None, "--mining": args.mining is not None,
             "--soft-margin": args.soft_margin, "--scale": args.scale is not None,
             "--class-margin": args.class_margin is not None, "--one-photo-negatives": args.one_photo_negatives > 0}
    applies = (("--scale", "--class-margin") if args.loss != "triplet" else
               ("--margin", "--mining", "--soft-margin", "--one-photo-negatives"))
    misplaced = [name for name, present in given.items() if present and name not in applies]
    if misplaced:
        parser.error(f"{', '.join(misplaced)}: not an option of --loss {args.loss}")


def main(argv: list[str] | None = None) -> int:
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)  # like Ctrl-C
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.publish is None and args.model is None:
        parser.error("the following arguments are required: --model (or --publish RUN_DIR)")
    check_loss_options(parser, args)
    if args.one_photo_negatives and args.min_images < 2:
        parser.error("--one-photo-negatives: the people with fewer than --min-images faces are the negatives, "
                     "so --min-images must be 2 or more")
    try:
        return publish(args.publish) if args.publish is not None else train(args)
    except KeyboardInterrupt:  # the training steps catch both signals themselves and checkpoint
        print("\ninterrupted outside the training steps: nothing was lost (the latest checkpoint, if any, "
              "is intact; --resume continues from it)", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
