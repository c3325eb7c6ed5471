"""The figures visualize.py draws: each model's benchmark-face embeddings, untrained vs trained."""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import keras

from models import TRAINABLE_MODEL_NAMES, get_model
from models.weights import MissingWeightsError, load_model, read_metadata, weights_path
from utils.aligned_cache import AlignedFaces, load_or_build
from utils.benchmark_faces import fill_benchmark_faces
from utils.datasets.folders import DatasetError
from utils.datasets.lfw_download import ensure_lfw
from utils.download import DownloadError
from utils.embedding import embed_faces
from utils.paths import BENCHMARK_FACES_DIR
from utils.visualization import Panel, cluster_scores, draw_panels, tsne_2d

OPENFACE = "openface_nn4_small2"


class FigureError(RuntimeError):
    """A figure cannot be drawn; the message says why."""


def _faces(args: argparse.Namespace) -> AlignedFaces:
    if args.faces == BENCHMARK_FACES_DIR:
        try:
            fill_benchmark_faces(ensure_lfw(args.lfw))
        except (DatasetError, DownloadError) as err:
            raise FigureError(f"cannot fill benchmark_faces/: {err}") from err
    try:
        return load_or_build(args.faces, workers=1, progress=False)
    except (FileNotFoundError, ValueError) as err:
        raise FigureError(str(err)) from err


def _random_init(name: str, seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return get_model(name)


def _panel(title: str, model: keras.Model, faces: AlignedFaces, extra: list[str], seed: int,
           record: dict) -> Panel:
    embeddings = embed_faces(model, faces.faces)
    scores = cluster_scores(embeddings, faces.identities)
    record.update(scores)
    lines = [f"1-NN accuracy {scores['loo_1nn_accuracy']:.2f}   silhouette {scores['silhouette']:+.2f}", *extra]
    return Panel(title, tsne_2d(embeddings, seed), faces.identities, lines)


def _trained_lines(name: str) -> tuple[str, list[str]]:
    meta = read_metadata(name)
    hours = meta.get("wall_hours")
    budget = f"trained {hours:.1f} h" if isinstance(hours, (int, float)) else "trained"
    if meta.get("hardware"):
        budget += f" on {meta['hardware']}"
    view1 = meta.get("best_validation", meta.get("validation", {}))
    lines = [f"LFW View 1 accuracy {view1['accuracy']:.3f}"] if "accuracy" in view1 else []
    view2 = meta.get("lfw_view2", {})
    if "accuracy" in view2:
        lines.append(f"LFW View 2 accuracy {view2['accuracy']:.3f} ± {view2.get('std', 0):.3f}")
    return budget, lines


def _model_row(name: str, faces: AlignedFaces, seed: int, metrics: dict, trained_label: str) -> list[Panel]:
    metrics[name] = {"random_init": {}, "trained": {}}
    row = [_panel(f"{name}: random init", _random_init(name, seed), faces, ["untrained"], seed,
                  metrics[name]["random_init"])]
    try:
        trained = load_model(name)
    except MissingWeightsError as err:
        print(f"note: {err}")
        metrics[name]["trained"] = None
        return row + [Panel(f"{name}: {trained_label}", None, [], ["no trained weights yet:", str(weights_path(name).name)])]
    budget, lines = _trained_lines(name)
    row.append(_panel(f"{name}: {trained_label if name == OPENFACE else budget}", trained, faces, lines, seed,
                      metrics[name]["trained"]))
    metrics[name]["trained"]["lines"] = lines
    return row


def _epoch_number(path: Path) -> int:
    match = re.search(r"(\d+)", path.name)
    return int(match.group(1)) if match else -1


def _progress_rows(name: str, folder: Path, faces: AlignedFaces, seed: int, metrics: dict) -> list[list[Panel]]:
    snapshots = sorted(folder.glob("epoch_*.weights.h5"), key=_epoch_number)
    if not snapshots:
        raise FigureError(f"no epoch_*.weights.h5 snapshots in {folder}")
    panels = [_panel(f"{name}: random init", _random_init(name, seed), faces, [], seed, metrics.setdefault("init", {}))]
    for snapshot in snapshots:
        model = load_model(name, snapshot)
        epoch = _epoch_number(snapshot)
        panels.append(_panel(f"{name}: epoch {epoch}", model, faces, [], seed, metrics.setdefault(f"epoch_{epoch}", {})))
    columns = 4
    return [panels[i:i + columns] for i in range(0, len(panels), columns)]


def draw_figures(args: argparse.Namespace) -> list[Path]:
    """Draw the requested figures and the metrics JSON; return the paths written."""
    names = args.models or list(TRAINABLE_MODEL_NAMES)
    unknown = [n for n in names if n not in TRAINABLE_MODEL_NAMES + (OPENFACE,)]
    if unknown:
        raise FigureError(f"unknown model(s): {', '.join(unknown)}")
    faces = _faces(args)
    people = list(dict.fromkeys(faces.identities))
    out = args.out
    written, metrics = [], {}
    if args.progress_from:
        if len(names) != 1:
            raise FigureError("--progress-from needs exactly one --models name")
        rows = _progress_rows(names[0], args.progress_from, faces, args.seed, metrics)
        written.append(draw_panels(rows, people, out / f"progress_{names[0]}_epochs.png",
                                   f"{names[0]}: benchmark faces over training (t-SNE)"))
    else:
        rows = [_model_row(name, faces, args.seed, metrics, "trained") for name in names]
        written.append(draw_panels(rows, people, out / "progress.png",
                                   "Benchmark faces (10 people unseen in training), t-SNE: random init vs trained"))
        if not args.no_openface:
            row = _model_row(OPENFACE, faces, args.seed, metrics, "pretrained")
            written.append(draw_panels([row], people, out / "openface_nn4sv1.png",
                                       "OpenFace nn4.small2.v1 on the benchmark faces (t-SNE)"))
    metrics_path = out / ("visualize_metrics.json" if not args.progress_from else f"progress_{names[0]}_epochs.json")
    metrics_path.write_text(json.dumps({"faces": len(faces), "people": people, "models": metrics}, indent=2) + "\n")
    written.append(metrics_path)
    return written
