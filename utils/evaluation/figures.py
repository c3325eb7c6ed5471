"""The figures visualize.py draws: each model's benchmark-face embeddings, untrained vs trained."""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Callable

import keras

from models import TRAINABLE_MODEL_NAMES, get_model
from models.weights import DEFAULT_INPUT_SIZE, MissingWeightsError, load_model, read_metadata, weights_path
from utils.datasets.folders import DatasetError
from utils.datasets.lfw_download import ensure_lfw
from utils.download import DownloadError
from utils.embedding import embed_faces, model_input_size
from utils.evaluation.benchmark_faces import fill_benchmark_faces
from utils.evaluation.tsne import Panel, cluster_scores, draw_panels, tsne_2d
from utils.faces.cache import AlignedFaces, load_or_build
from utils.paths import BENCHMARK_FACES_DIR

OPENFACE = "openface_nn4_small2"


class FigureError(RuntimeError):
    """A figure cannot be drawn; the message says why."""


FacesAt = Callable[[int], AlignedFaces]  # the faces aligned at a model's input size


def _faces(args: argparse.Namespace) -> FacesAt:
    """The faces to embed, aligned once per input size that a model asks for."""
    if args.faces == BENCHMARK_FACES_DIR:
        try:
            fill_benchmark_faces(ensure_lfw(args.lfw))
        except (DatasetError, DownloadError, OSError) as err:
            raise FigureError(f"cannot fill benchmark_faces/: {err}") from err
    aligned: dict[int, AlignedFaces] = {}

    def faces_at(size: int) -> AlignedFaces:
        if size not in aligned:
            try:
                aligned[size] = load_or_build(args.faces, output_size=size, workers=1, progress=False)
            except (OSError, ValueError) as err:
                raise FigureError(str(err)) from err
        return aligned[size]

    return faces_at


def _random_init(name: str, seed: int, input_size: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return get_model(name, input_size=input_size)


def _load(name: str, weights: Path | None = None) -> keras.Model:
    """load_model, with damaged or mismatched weights and metadata as FigureError."""
    try:
        return load_model(name, weights)
    except MissingWeightsError:
        raise
    except (OSError, ValueError) as err:
        raise FigureError(str(err)) from err


def _panel(title: str, model: keras.Model, faces: AlignedFaces, extra: list[str], seed: int,
           record: dict) -> Panel:
    embeddings = embed_faces(model, faces.faces)
    scores = cluster_scores(embeddings, faces.identities)
    record.update(scores)
    lines = [f"1-NN accuracy {scores['loo_1nn_accuracy']:.2f}   silhouette {scores['silhouette']:+.2f}", *extra]
    return Panel(title, tsne_2d(embeddings, seed), faces.identities, lines)


def _count(n: int) -> str:
    """640000 -> '640k', 1234567 -> '1.23M'."""
    if n >= 1_000_000:
        return f"{n / 1e6:.3g}M"
    return f"{n / 1e3:.3g}k" if n >= 1000 else str(n)


def _trained_lines(name: str) -> tuple[str, list[str]]:
    """('trained 1.5 h on <hardware>, 640k images', LFW accuracy lines) from the model's metadata:
    the training record (models trained here) and evaluate.py's View 2 figures (full View 2 only
    for models not trained here: ours saw its DevTrain people; view2-unseen for every model)."""
    try:
        meta = read_metadata(name)
    except ValueError as err:
        raise FigureError(str(err)) from err
    training = meta.get("training") or {}
    # The kept weights' own figures (weights_*) when the trainer recorded them, else the run's.
    hours = training.get("weights_wall_hours", training.get("wall_hours"))
    images = training.get("weights_images_seen", training.get("images_seen"))
    budget = "trained"
    if isinstance(hours, (int, float)):
        budget += f" {hours:.1f} h" if hours >= 1 else f" {hours * 60:.0f} min"
    if training.get("hardware"):
        budget += f" on {training['hardware']}"
    if isinstance(images, int):
        budget += f", {_count(images)} images"
    lines = []
    view1 = training.get("best_validation") or {}
    if isinstance(view1.get("val_accuracy"), (int, float)):
        lines.append(f"LFW View 1 accuracy {view1['val_accuracy']:.3f}")
    view2 = meta.get("lfw_view2") or {}
    if not training and isinstance(view2.get("accuracy"), (int, float)):  # View 2 people were trained on here
        lines.append(f"LFW View 2 {view2['accuracy']:.3f} ± {view2.get('accuracy_std', 0.0):.3f}")
    unseen = meta.get("lfw_view2_unseen") or {}
    if isinstance(unseen.get("auc"), (int, float)):
        lines.append(f"View 2 AUC, unseen people {unseen['auc']:.3f}")
    return budget, lines


def _model_row(name: str, faces_at: FacesAt, seed: int, metrics: dict, trained_label: str) -> list[Panel]:
    """Random init beside trained, both at the input size the trained weights were made for."""
    metrics[name] = {"random_init": {}, "trained": {}}
    try:
        trained = _load(name)
    except MissingWeightsError as err:
        print(f"note: {err}")
        trained = None
    size = model_input_size(trained) if trained is not None else DEFAULT_INPUT_SIZE
    row = [_panel(f"{name}: random init", _random_init(name, seed, size), faces_at(size), ["untrained"], seed,
                  metrics[name]["random_init"])]
    if trained is None:
        metrics[name]["trained"] = None
        return row + [Panel(f"{name}: {trained_label}", None, [],
                             ["no trained weights yet:", str(weights_path(name).name)])]
    budget, lines = _trained_lines(name)
    title = f"{name}: {trained_label if name == OPENFACE else budget}"
    row.append(_panel(title, trained, faces_at(size), lines, seed, metrics[name]["trained"]))
    metrics[name]["trained"].update(title=title, lines=lines)
    return row


def _epoch_number(path: Path) -> int:
    match = re.search(r"(\d+)", path.name)
    return int(match.group(1)) if match else -1


def _progress_rows(name: str, folder: Path, faces_at: FacesAt, seed: int, metrics: dict) -> list[list[Panel]]:
    snapshots = sorted(folder.glob("epoch_*.weights.h5"), key=_epoch_number)
    if not snapshots:
        raise FigureError(f"no epoch_*.weights.h5 snapshots in {folder}")
    models = [(_epoch_number(snapshot), _load(name, snapshot)) for snapshot in snapshots]
    size = model_input_size(models[0][1])
    panels = [_panel(f"{name}: random init", _random_init(name, seed, size), faces_at(size), [], seed,
                     metrics.setdefault("init", {}))]
    for epoch, model in models:
        panels.append(_panel(f"{name}: epoch {epoch}", model, faces_at(model_input_size(model)), [], seed,
                             metrics.setdefault(f"epoch_{epoch}", {})))
    columns = 4
    return [panels[i:i + columns] for i in range(0, len(panels), columns)]


def draw_figures(args: argparse.Namespace) -> list[Path]:
    """Draw the requested figures and the metrics JSON; return the paths written."""
    names = args.models or list(TRAINABLE_MODEL_NAMES)
    unknown = [n for n in names if n not in TRAINABLE_MODEL_NAMES + (OPENFACE,)]
    if unknown:
        raise FigureError(f"unknown model(s): {', '.join(unknown)}")
    faces_at = _faces(args)
    faces = faces_at(DEFAULT_INPUT_SIZE)  # a missing or empty folder fails here, before any model is built
    people = list(dict.fromkeys(faces.identities))
    out = args.out
    written, metrics = [], {}
    if args.progress_from:
        if len(names) != 1:
            raise FigureError("--progress-from needs exactly one --models name")
        rows = _progress_rows(names[0], args.progress_from, faces_at, args.seed, metrics)
        written.append(draw_panels(rows, people, out / f"progress_{names[0]}_epochs.png",
                                   f"{names[0]}: benchmark faces over training (t-SNE)"))
    else:
        rows = [_model_row(name, faces_at, args.seed, metrics, "trained") for name in names]
        written.append(draw_panels(rows, people, out / "progress.png",
                                   "Benchmark faces (10 people unseen in training), t-SNE: random init vs trained"))
        if not args.no_openface:
            row = _model_row(OPENFACE, faces_at, args.seed, metrics, "pretrained")
            written.append(draw_panels([row], people, out / "openface_nn4sv1.png",
                                       "OpenFace nn4.small2.v1 on the benchmark faces (t-SNE)"))
    metrics_path = out / ("visualize_metrics.json" if not args.progress_from else f"progress_{names[0]}_epochs.json")
    metrics_path.write_text(json.dumps({"faces": len(faces), "people": people, "models": metrics}, indent=2) + "\n")
    written.append(metrics_path)
    return written
