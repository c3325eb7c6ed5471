"""Training images/s of each architecture at 96 px on this machine, and the earlier project's input path.

    python benchmarks/train_speed.py [--models ang ang2 inception_v4 nn2] [--steps 5]
                                     [--batch-identities 8 --images-per-identity 4] [--old-way-model ang]
                                     [--old-way-upsample 0 1]
    python benchmarks/train_speed.py --store-vs-memory [--models ang] [--rounds 3] [--mixed-precision]

Ours: identity-balanced P x K batches gathered from the in-memory aligned LFW cache, augmented in
TF ops and prefetched (utils.training.batching), one tf.function step (utils.training.loop). The earlier
project's way, emulated for one model with the same step and batch size: a Python generator
walking the LFW folders in order (unshuffled, so a batch holds one or two people) that reads
every image from disk, decodes it, detects the face with dlib and aligns it, per step, with no
prefetch. The first two steps of each run (tracing) are not timed. The CPU may be shared:
figures are noisy, compare the two rows of one run.

--store-vs-memory times instead the training data of train.py's default (LFW without the
DevTest and benchmark people, plus the CelebA subset) read two ways, in alternating rounds:
rows gathered from the memory-mapped shards of the face store (what train.py does) and the
same faces copied into one in-memory array (the earlier cache's way); and each input pipeline
alone, without a model.
"""
from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path
from typing import Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from utils.console import import_tensorflow_quietly  # noqa: E402

import_tensorflow_quietly()  # TensorFlow's start-up lines stay off the figures

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from models import TRAINABLE_MODEL_NAMES, get_model  # noqa: E402
from utils.faces.align import FaceAligner, centre_crop  # noqa: E402
from utils.faces.cache import list_images, load_or_build  # noqa: E402
from utils.faces.image_io import read_image  # noqa: E402
from utils.paths import lfw_dir  # noqa: E402
from utils.training.batching import PKSampler, TrainingFaces, pool_datasets, training_dataset  # noqa: E402
from utils.training.config import TrainConfig  # noqa: E402
from utils.training.loop import build_model_and_optimizer, make_train_step  # noqa: E402

WARMUP_STEPS = 2
SIZE = 96


def old_way_batches(root: Path, batch_size: int, upsample: list[int]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Read, decode, detect and align every image of each batch, walking the folders in order."""
    aligner = FaceAligner(SIZE, upsample=tuple(upsample))
    files = list_images(root)
    names = {name: i for i, name in enumerate(sorted({f.split("/", 1)[0] for f in files}))}
    for start in itertools.count(0, batch_size):
        chunk = [files[(start + i) % len(files)] for i in range(batch_size)]
        faces = []
        for rel in chunk:
            rgb = read_image(root / rel)
            face = aligner.align_largest(rgb)
            faces.append(face if face is not None else centre_crop(rgb, SIZE))
        labels = [names[rel.split("/", 1)[0]] for rel in chunk]
        yield np.stack(faces).astype(np.float32) / 255.0, np.array(labels, np.int32)


def images_per_second(model_name: str, batches: tf.data.Dataset, batch_size: int, steps: int,
                      mixed_precision: bool = False) -> float:
    """Training images/s of one model over the batches, built and stepped as train.py does (triplet loss)."""
    strategy = tf.distribute.get_strategy()
    config = TrainConfig(model=model_name, data=[], checkpoint_dir="", log_dir="", weights_out="",
                         mixed_precision=mixed_precision)
    model, class_cosines, optimizer = build_model_and_optimizer(
        config, strategy, lambda: get_model(model_name, input_size=SIZE), num_identities=0)  # no class weights
    step = make_train_step(model, optimizer, strategy, config, class_cosines)
    iterator = iter(batches)
    for _ in range(WARMUP_STEPS):
        step(iterator)
    start = time.perf_counter()
    for _ in range(steps):
        loss, _, _ = step(iterator)
    float(loss)
    return steps * batch_size / (time.perf_counter() - start)


def pipeline_images_per_second(batches: tf.data.Dataset, batch_size: int, steps: int) -> float:
    """Images/s of an input pipeline alone: batches made and augmented, no model."""
    iterator = iter(batches)
    for _ in range(WARMUP_STEPS):
        next(iterator)
    start = time.perf_counter()
    for _ in range(steps):
        next(iterator)
    return steps * batch_size / (time.perf_counter() - start)


def store_against_memory(args: argparse.Namespace, batch_size: int) -> None:
    """Print training and pipeline images/s from the store and from memory, median over rounds."""
    from utils.training.data import default_data, default_exclusions, load_training_data

    stored, _ = load_training_data(default_data(), SIZE, default_exclusions(), 2, log=lambda m: None)
    in_memory = TrainingFaces(np.asarray(stored.faces), stored.labels, stored.names, stored.paths)
    sampler = PKSampler(stored.labels, args.batch_identities, args.images_per_identity, seed=0)
    model = args.models[0]
    print(f"{len(stored)} faces of {stored.num_identities} identities; {model}, {batch_size} images per step "
          f"({args.batch_identities} x {args.images_per_identity}), {args.steps} timed steps, {args.rounds} rounds, "
          f"mixed precision {'on' if args.mixed_precision else 'off'}")
    rates: dict[str, list[float]] = {f"{kind} {source}": [] for kind in ("training", "pipeline")
                                     for source in ("memory", "store")}
    for _ in range(args.rounds):
        for source, faces in (("memory", in_memory), ("store", stored)):
            rates[f"pipeline {source}"].append(pipeline_images_per_second(
                training_dataset(faces, sampler), batch_size, args.steps * 4))
            rates[f"training {source}"].append(images_per_second(
                model, training_dataset(faces, sampler), batch_size, args.steps, args.mixed_precision))
            print(", ".join(f"{k} {v[-1]:.1f}" for k, v in rates.items() if v), flush=True)
    median = {k: float(np.median(v)) for k, v in rates.items()}
    for kind in ("training", "pipeline"):
        memory, store = median[f"{kind} memory"], median[f"{kind} store"]
        print(f"{kind:8s} images/s, median: in memory {memory:7.1f}, from the store {store:7.1f} "
              f"({store / memory:.3f} of in memory)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=TRAINABLE_MODEL_NAMES, default=list(TRAINABLE_MODEL_NAMES),
                        help="architectures to time with the cached pipeline (default: all four)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per run (default 5)")
    parser.add_argument("--batch-identities", type=int, default=8, help="P, identities per batch (default 8)")
    parser.add_argument("--images-per-identity", type=int, default=4, help="K, images per identity (default 4)")
    parser.add_argument("--old-way-model", choices=TRAINABLE_MODEL_NAMES, default="ang",
                        help="the model timed the earlier project's way (default ang)")
    parser.add_argument("--old-way-upsample", type=int, nargs="+", default=[0, 1],
                        help="dlib upsample levels of the per-step detection (default 0 1, as the cache; "
                             "FaceAligner's own default is 1)")
    parser.add_argument("--mixed-precision", action="store_true",
                        help="also time the cached pipeline of --old-way-model with 16-bit compute "
                             "(train.py --mixed-precision: bfloat16 on a CPU)")
    parser.add_argument("--lfw", type=Path, default=lfw_dir(), help="LFW folder (default: %(default)s)")
    parser.add_argument("--store-vs-memory", action="store_true",
                        help="time the first of --models reading train.py's default data from the face store "
                             "and from memory, instead of the runs above")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of --store-vs-memory (default 3)")
    args = parser.parse_args()
    batch_size = args.batch_identities * args.images_per_identity
    if args.store_vs_memory:
        store_against_memory(args, batch_size)
        return

    cache = load_or_build(args.lfw, output_size=SIZE)
    faces = pool_datasets({"lfw": cache})
    sampler = PKSampler(faces.labels, args.batch_identities, args.images_per_identity, seed=0)
    print(f"{batch_size} images per step ({args.batch_identities} x {args.images_per_identity}), {SIZE} px, "
          f"{args.steps} timed steps after {WARMUP_STEPS} untimed")
    ours = {}
    for name in args.models:
        ours[name] = images_per_second(name, training_dataset(faces, sampler), batch_size, args.steps)
        print(f"{name:13s} cached P x K pipeline: {ours[name]:7.1f} images/s", flush=True)

    signature = (tf.TensorSpec((batch_size, SIZE, SIZE, 3), tf.float32), tf.TensorSpec((batch_size,), tf.int32))
    old = tf.data.Dataset.from_generator(lambda: old_way_batches(args.lfw, batch_size, args.old_way_upsample),
                                         output_signature=signature)
    old_rate = images_per_second(args.old_way_model, old, batch_size, args.steps)
    name = args.old_way_model
    if name not in ours:
        ours[name] = images_per_second(name, training_dataset(faces, sampler), batch_size, args.steps)
    print(f"{name:13s} earlier project's way (read + detect (upsample {args.old_way_upsample}) + align per "
          "step, unshuffled): "
          f"{old_rate:7.1f} images/s")
    print(f"speed-up of the cached pipeline for {name}: {ours[name] / old_rate:.1f}x")
    if args.mixed_precision:
        fast = images_per_second(name, training_dataset(faces, sampler), batch_size, args.steps, mixed_precision=True)
        print(f"{name:13s} cached P x K pipeline, mixed precision: {fast:7.1f} images/s "
              f"({fast / old_rate:.1f}x the earlier project's way)")


if __name__ == "__main__":
    main()
