"""Draw how training moves faces of one person together: t-SNE of the benchmark faces.

Writes into benchmark_results/ (or --out):
  progress.png          each trained-from-scratch architecture, random init beside trained
  openface_nn4sv1.png   OpenFace nn4.small2.v1, random init beside pretrained
  visualize_metrics.json  leave-one-out 1-NN accuracy and silhouette of every panel
With --progress-from RUN_DIR (a train.py run folder, runs/<model>/<run>) it draws one panel per
saved epoch instead.

The 100 benchmark faces (10 LFW people x 10) are copied from LFW on first use
(python -m utils.evaluation.benchmark_faces). Training excludes these people, so the
figures show strangers clustering.

Exit status: 0 done; 2 a figure cannot be drawn (the message says why); 130 interrupted.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from utils.paths import BENCHMARK_FACES_DIR, BENCHMARK_RESULTS_DIR


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lfw", type=Path, default=None,
                        help="LFW folder to take the benchmark faces from (default: ../shared/data/lfw; "
                             "downloaded to data/lfw when there is none)")
    parser.add_argument("--faces", type=Path, default=BENCHMARK_FACES_DIR,
                        help="folder-per-person images to embed (default: benchmark_faces/)")
    parser.add_argument("--models", nargs="+", default=None,
                        help="architectures for progress.png (default: ang ang2 inception_v4 nn2)")
    parser.add_argument("--no-openface", action="store_true", help="skip openface_nn4sv1.png")
    parser.add_argument("--progress-from", type=Path, metavar="RUN_DIR",
                        help="draw one panel per epoch_*.weights.h5 in this folder: a training run's, "
                             "runs/<model>/<run> (or its --checkpoint-dir); needs one --models name")
    parser.add_argument("--out", type=Path, default=BENCHMARK_RESULTS_DIR, help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random-init weights and of t-SNE")
    parser.add_argument("--verbose", action="store_true", help="show TensorFlow's start-up and log lines")
    return parser.parse_args(argv)


def draw(args: argparse.Namespace) -> int:
    """Draw the figures; exit status 2 with a message when they cannot be drawn."""
    from utils.console import import_tensorflow_quietly

    start = time.perf_counter()
    import_tensorflow_quietly(args.verbose)
    from utils.evaluation.figures import FigureError, draw_figures

    try:
        written = draw_figures(args)
    except (FigureError, OSError) as err:  # OSError: the figures or the JSON cannot be written
        print(f"error: {err}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    print(json.dumps({"seconds": round(time.perf_counter() - start, 1)}))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return draw(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
