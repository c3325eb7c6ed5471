"""Evaluate face-embedding models on LFW verification (View 2 ten-fold, or View 1), or on any pairs file
in LFW's pairs.txt format over any folder-per-identity tree (ten-fold, like View 2).

Several models can be compared in one run; each gives a table row, and all share one JSON
result and one ROC plot:

    python evaluate.py --model openface_nn4_small2 dlib_resnet --protocol view2
    python evaluate.py --model dlib_resnet --pairs protocols/celeba-test-pairs.txt --root ../shared/data/celeba-subset

A View 2 run of a registry model with its default weights, squared L2 and no flip (the setting
recognize.py uses) also stores accuracy, std, AUC and mean threshold in the model's metadata
(``lfw_view2``); a view2-unseen run stores its figures (``lfw_view2_unseen``) with the quantiles of
the distances from its images to other people's mean embeddings, where recognize.py takes its
default threshold from (a target share of strangers falsely named).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from utils.console import import_tensorflow_quietly
from utils.evaluation.dlib_resnet import NAME as DLIB
from utils.paths import BENCHMARK_RESULTS_DIR, lfw_dir, lfw_protocol_dir, portable_path


def _parser() -> argparse.ArgumentParser:
    from models import MODEL_NAMES
    from utils.datasets.lfw import PROTOCOLS

    parser = argparse.ArgumentParser(
        description="LFW face-verification benchmark, or any pairs file (--pairs): accuracy +- std over folds "
                    "(threshold chosen on the other folds), ROC AUC, equal error rate, VAL@FAR=1e-3 and the mean "
                    "threshold, for one or more models. Writes a JSON result and a ROC plot. Each Keras model "
                    "sees faces aligned at the input size its weights were trained at (input_size in the "
                    "metadata beside them).",
        epilog="Exit status: 0 done; 2 bad input (missing files, options that do not fit together) or "
               "results that cannot be written; 130 interrupted.")
    parser.add_argument("--model", nargs="+", required=True, choices=[*MODEL_NAMES, DLIB], metavar="NAME",
                        help=f"one or more of: {', '.join([*MODEL_NAMES, DLIB])} ({DLIB} is dlib's ResNet "
                             "descriptor, computed from the original image and dlib's 68 landmarks)")
    parser.add_argument("--weights", type=Path,
                        help="weights file (default: weights/<model>.weights.h5); only with a single registry model")
    parser.add_argument("--random-init", action="store_true",
                        help="evaluate the architecture with random weights (seed 0): the floor a trained "
                             "model must rise above")
    parser.add_argument("--lfw", type=Path, default=lfw_dir(), help="LFW image folder (default: %(default)s)")
    parser.add_argument("--pairs-dir", type=Path, default=lfw_protocol_dir(),
                        help="folder of pairs.txt / pairsDevTrain.txt / pairsDevTest.txt (default: %(default)s)")
    parser.add_argument("--protocol", choices=PROTOCOLS,
                        help="view2: 10-fold on pairs.txt (the benchmark); view1: threshold on pairsDevTrain, "
                             "scored on pairsDevTest; view2-unseen: the View 2 folds cut to the 1,147 pairs "
                             "whose two people are in peopleDevTest.txt, whom train.py never trains on, so our "
                             "models are scored on strangers (870 pairs are same-person: compare AUC and EER) "
                             "(default: view2, unless --pairs)")
    parser.add_argument("--pairs", type=Path, metavar="FILE",
                        help="score this pairs file instead of an LFW protocol: pairs.txt's format (header "
                             "'folds<TAB>pairs', then per fold the matched 'name a b' and the mismatched "
                             "'name1 a name2 b' lines), where an image is an LFW number (name/name_NNNN.jpg) or "
                             "a file name in name's folder; ten-fold like View 2. Made by python -m "
                             "utils.datasets.make_pairs; ours are in protocols/")
    parser.add_argument("--root", type=Path, metavar="DIR",
                        help="the folder-per-identity tree the --pairs images are in (default: --lfw)")
    parser.add_argument("--name",
                        help="protocol name of a --pairs run in the output and file names (default: the pairs "
                             "file's name without '-pairs.txt', e.g. celeba-test)")
    parser.add_argument("--flip", action="store_true",
                        help="average each face's embedding with its mirror image's (Keras models only)")
    parser.add_argument("--metric", choices=["sqeuclidean", "cosine"], default="sqeuclidean",
                        help="pair distance (default: sqeuclidean, thresholds 0..4 step 0.01; cosine: 0..2 step 0.005)")
    parser.add_argument("--batch-size", type=int, default=64, help="faces per model call (default: 64)")
    parser.add_argument("--verbose", action="store_true", help="show TensorFlow's start-up and log lines")
    parser.add_argument("--workers", type=int, default=os.cpu_count(),
                        help="processes for aligning new images and for dlib descriptors (default: all cores)")
    parser.add_argument("--out", type=Path, default=BENCHMARK_RESULTS_DIR,
                        help="folder for the JSON result and ROC PNG (default: %(default)s)")
    return parser


def _check_options(args: argparse.Namespace) -> None:
    """Reject option combinations that cannot work, before anything is loaded."""
    if len(set(args.model)) != len(args.model):
        raise ValueError("a model is named twice in --model")
    if args.weights and len([m for m in args.model if m != DLIB]) != 1:
        raise ValueError("--weights needs exactly one registry model (not dlib_resnet) in --model")
    if args.random_init and (args.weights or DLIB in args.model):
        raise ValueError("--random-init applies to registry models without --weights")
    if args.flip and DLIB in args.model:
        raise ValueError("--flip applies to Keras models, not dlib_resnet")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be positive, got {args.batch_size}")
    if args.pairs is None and (args.root or args.name):
        raise ValueError("--root and --name go with --pairs")
    if args.pairs is not None and args.protocol:
        raise ValueError("--pairs replaces --protocol: give one of them")
    if args.pairs is not None and not args.pairs.is_file():
        raise ValueError(f"pairs file not found: {args.pairs}")
    if args.pairs is not None and not (args.root or args.lfw).is_dir():
        raise ValueError(f"image folder not found: {args.root or args.lfw}")
    if args.name is not None and not args.name.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"--name may hold letters, digits, '-' and '_' only, got {args.name!r}")


def _evaluate(args: argparse.Namespace) -> list[tuple]:
    """(model name, weights path or None, LFWResult, wall seconds) per model.

    Protocol files, images and weights are all checked before the first (slow) evaluation.
    The wall time of a model covers aligning (on first use of a cache) and embedding.
    """
    import_tensorflow_quietly(args.verbose)
    import keras

    from models import get_model
    from models.weights import load_model, weights_path
    from utils.datasets.lfw import check_images_exist, pair_images, parse_folded_pairs
    from utils.embedding import model_input_size
    from utils.evaluation.dlib_resnet import DlibResNetEmbedder
    from utils.evaluation.verification import evaluate_pairs, protocol_pairs
    from utils.faces.cache import load_or_build

    splits = {"all": parse_folded_pairs(args.pairs)} if args.pairs else protocol_pairs(args.protocol, args.pairs_dir)
    images = pair_images(p for pairs in splits.values() for p in pairs)
    check_images_exist(images, args.root)
    embedders = {}
    for name in args.model:
        if name == DLIB:
            embedders[name] = (DlibResNetEmbedder(workers=args.workers), None, 96)
        elif args.random_init:
            keras.utils.set_random_seed(0)
            model, weights = get_model(name), None
        else:
            model = load_model(name, args.weights)  # without a path, OpenFace's default is made on first use
            weights = args.weights or weights_path(name)
        if name != DLIB:
            embedders[name] = (model, weights, model_input_size(model))
    caches, rows = {}, []
    for name, (embedder, weights, size) in embedders.items():
        start = time.perf_counter()
        if size not in caches:
            caches[size] = load_or_build(args.root, output_size=size, workers=args.workers, only=images)
        result = evaluate_pairs(embedder, splits, args.protocol, aligned=caches[size], flip=args.flip,
                                metric=args.metric, batch_size=args.batch_size, progress=True,
                                impostors=args.protocol == "view2-unseen")
        rows.append((name, weights, result, time.perf_counter() - start))
    return rows


def _table(rows) -> str:
    header = (f"{'model':<22} {'accuracy':>16} {'AUC':>6} {'EER':>6} {'VAL@FAR=1e-3':>12} {'threshold':>9} "
              f"{'pairs':>6} {'images':>6} {'fallback':>8} {'wall s':>7}")
    lines = [header, "-" * len(header)]
    for name, _, result, seconds in rows:
        v = result.verification
        lines.append(f"{name:<22} {v.accuracy:>8.4f} ± {v.accuracy_std:.4f} {v.auc:>6.4f} {v.eer:>6.4f} "
                     f"{v.val_at_far:>12.4f} {v.threshold:>9.3f} {v.n_pairs:>6} {result.n_images:>6} "
                     f"{result.n_fallback:>8} {seconds:>7.1f}")
    return "\n".join(lines)


def _store_metadata(args: argparse.Namespace, rows) -> list[str]:
    """Record View 2 figures (``lfw_view2``, or ``lfw_view2_unseen`` for that protocol) in the
    metadata of registry models evaluated with their default weights; returns the models' names."""
    from models.weights import update_metadata, weights_path

    if args.protocol not in ("view2", "view2-unseen") or args.pairs or args.metric != "sqeuclidean" or args.flip:
        return []
    stored = []
    for name, weights, result, _ in rows:
        if weights is None or Path(weights).resolve() != weights_path(name).resolve():
            continue
        v = result.verification
        key = "lfw_" + args.protocol.replace("-", "_")
        update_metadata(name, **{key: {
            "accuracy": v.accuracy, "accuracy_std": v.accuracy_std, "auc": v.auc, "eer": v.eer,
            "threshold": v.threshold, "metric": args.metric, "flip": False, "n_pairs": v.n_pairs,
            "n_fallback": result.n_fallback, "evaluated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **({"impostor_quantiles": result.impostors} if result.impostors else {})}})
        stored.append(name)
    return stored


def _write_results(args: argparse.Namespace, rows, started: float) -> tuple[dict, Path, Path]:
    """The ROC plot and the JSON record in args.out: (record, JSON path, PNG path)."""
    from utils.evaluation.metrics import plot_roc_curves

    stem = (args.protocol if args.pairs else f"lfw_{args.protocol}") + f"_{'+'.join(args.model)}" + \
           ("_random_init" if args.random_init else "") + \
           ("_flip" if args.flip else "") + \
           ("_cosine" if args.metric == "cosine" else "")
    args.out.mkdir(parents=True, exist_ok=True)
    title = f"{_title(args)} ({args.metric}{', flip' if args.flip else ''})"
    png = plot_roc_curves({name: result.verification for name, _, result, _ in rows},
                          args.out / f"{stem}_roc.png", title=title)
    source = {"pairs_file": portable_path(args.pairs), "root": portable_path(args.root)} if args.pairs else \
        {"lfw": portable_path(args.lfw), "pairs_dir": portable_path(args.pairs_dir)}
    record = {
        "protocol": args.protocol, "metric": args.metric, "flip": args.flip, **source,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "wall_seconds": time.perf_counter() - started, "roc_png": portable_path(png),
        "results": [{"model": name, "weights": portable_path(weights) if weights else None, "wall_seconds": seconds,
                     **result.to_dict()} for name, weights, result, seconds in rows],
    }
    json_path = args.out / f"{stem}.json"
    json_path.write_text(json.dumps(record, indent=2) + "\n")
    return record, json_path, png


def _title(args: argparse.Namespace) -> str:
    return f"{args.protocol} pairs" if args.pairs else f"LFW {args.protocol}"


def _resolve_protocol(args: argparse.Namespace) -> None:
    """Fill in what the options leave implicit: the protocol (its name for --pairs) and the image root."""
    from utils.datasets.lfw import pairs_file_name  # light: TensorFlow is imported quietly later

    if args.pairs:
        args.protocol, args.root = args.name or pairs_file_name(args.pairs), args.root or args.lfw
    else:
        args.protocol, args.root = args.protocol or "view2", args.lfw


def run(args: argparse.Namespace) -> int:
    """Evaluate, write and report; exit status 2 with a message on bad input or unwritable output."""
    started = time.perf_counter()
    try:
        _check_options(args)
        _resolve_protocol(args)
        rows = _evaluate(args)
    except (OSError, ValueError) as err:  # missing files and folders, bad protocol files, unreadable images
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        record, json_path, png = _write_results(args, rows, started)
        stored = _store_metadata(args, rows)
    except (OSError, ValueError) as err:  # unwritable --out or weights folder, damaged metadata
        print(f"error: cannot write the results: {err}", file=sys.stderr)
        return 2

    print(f"\n{_title(args)}, {args.metric}{', flip' if args.flip else ''}")
    print(_table(rows))
    print(f"total wall time {record['wall_seconds']:.1f} s")
    print(f"JSON: {json_path}")
    print(f"ROC:  {png}")
    for name in stored:
        print(f"stored the {args.protocol} figures in the metadata of {name}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
