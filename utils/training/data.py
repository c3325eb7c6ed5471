"""The faces a training run learns from and validates on.

Each --data entry is an aligned-cache folder, a folder-per-identity tree (aligned once and
cached) or an MS-Celeb-1M TSV (streamed once into a face store under the cache folder). The
sources are pooled with identities namespaced per source, minus the excluded people: by
default the LFW View 1 DevTest people (the validation identities), the benchmark-face
people (benchmark_faces/manifest.txt, the t-SNE figures' faces) and the CelebA hold-out
(protocols/celeba-holdout-*-people.txt: the second validation and test domain).
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from utils.datasets.folders import DatasetError
from utils.datasets.holdout import TEST_PEOPLE, VAL_PAIRS, VAL_PEOPLE
from utils.datasets.lfw import read_people_file
from utils.evaluation.benchmark_faces import MANIFEST
from utils.faces.cache import AlignedFaces, load_cache, load_or_build, load_or_build_tsv
from utils.paths import data_dir, lfw_dir, lfw_protocol_dir

if TYPE_CHECKING:  # TensorFlow loads with the first batch, not with train.py --help
    import keras

    from utils.training.batching import TrainingFaces

Evaluator = Callable[["keras.Model"], dict[str, float]]


def default_data() -> list[str]:
    """LFW (its DevTest and benchmark people are excluded by default) plus celeba-subset when present."""
    celeba = data_dir() / "celeba-subset"
    return [str(lfw_dir())] + ([str(celeba)] if celeba.is_dir() else [])


def default_exclusions() -> list[str]:
    """LFW View 1 DevTest people (the LFW validation identities), the 10 benchmark-face people and the
    CelebA hold-out (validation and test halves, protocols/README.md).

    Names match in every source: the hold-out's CelebA identity numbers cannot clash with LFW's
    names, and in another copy of CelebA the same number is the same person, who must stay out too.
    """
    return [str(lfw_protocol_dir() / "peopleDevTest.txt"), str(MANIFEST), str(VAL_PEOPLE), str(TEST_PEOPLE)]


def load_source(source: str | Path, image_size: int, log: Callable[[str], None] = print) -> AlignedFaces:
    """Aligned faces of one --data entry: an aligned-cache folder, an MS-Celeb TSV (streamed into a
    face store) or a folder-per-identity tree (aligned and cached)."""
    path = Path(source)
    if path.is_file() and path.suffix.lower() == ".tsv":
        return load_or_build_tsv(path, output_size=image_size)
    if (path / "store.json").is_file() or (path / "faces.npy").is_file():
        faces = load_cache(path)
        if faces.faces.shape[1] != image_size:
            raise DatasetError(f"the aligned cache {path} holds {faces.faces.shape[1]} px faces, "
                               f"not --image-size {image_size}")
        return faces
    if not path.is_dir():
        raise DatasetError(f"training data not found: {path} (expected a folder-per-identity tree, "
                           "an aligned-cache folder or an MS-Celeb .tsv file)")
    return load_or_build(path, output_size=image_size)


def load_training_data(sources: list[str], image_size: int, exclude_files: list[str], min_images: int,
                       log: Callable[[str], None] = print) -> tuple[TrainingFaces, dict[str, AlignedFaces]]:
    """Pool the sources (identities namespaced by the source's folder name) minus the excluded people."""
    from utils.training.batching import pool_datasets

    excluded = set().union(*(read_people_file(f) for f in exclude_files))
    loaded: dict[str, AlignedFaces] = {}
    for source in sources:
        name = Path(source).name.removesuffix(".tsv")
        while name in loaded:
            name += "+"
        log(f"loading {source}")
        loaded[name] = load_source(source, image_size, log)
    faces = pool_datasets(loaded, excluded, min_images)
    log(f"training data: {len(faces)} detected faces of {faces.num_identities} identities from "
        f"{', '.join(sources)}; {len(excluded)} people excluded")
    return faces, loaded


def _figures(result) -> dict[str, float]:
    v = result.verification
    return {"accuracy": v.accuracy, "auc": v.auc, "threshold": v.threshold, "eer": v.eer}


def view1_evaluator(lfw: AlignedFaces) -> Evaluator:
    """LFW View 1: threshold from the DevTrain pairs, accuracy and AUC on the DevTest pairs."""
    from utils.evaluation.verification import evaluate_lfw

    def evaluate(model: keras.Model) -> dict[str, float]:
        return _figures(evaluate_lfw(model, protocol="view1", aligned=lfw))

    return evaluate


def pairs_evaluator(faces: AlignedFaces, pairs_file: str | Path) -> Evaluator:
    """Ten-fold verification on a pairs file over the aligned tree ``faces`` (see evaluate.py --pairs)."""
    from utils.evaluation.verification import evaluate_pairs_file

    def evaluate(model: keras.Model) -> dict[str, float]:
        return _figures(evaluate_pairs_file(model, pairs_file, faces.root, aligned=faces))

    return evaluate


def _source_cache(loaded: dict[str, AlignedFaces], root: Path, image_size: int) -> AlignedFaces:
    """The training source whose tree is ``root`` when there is one, else that tree's aligned cache."""
    found = next((v for v in loaded.values() if Path(v.root).resolve() == root.resolve()), None)
    return found if found is not None else load_or_build(root, output_size=image_size)


def lfw_source(loaded: dict[str, AlignedFaces]) -> str | None:
    """The name (identity namespace) of the training source that is LFW, if one is."""
    return next((name for name, v in loaded.items() if Path(v.root).resolve() == lfw_dir().resolve()), None)


def lfw_labels(faces: TrainingFaces, loaded: dict[str, AlignedFaces]) -> np.ndarray:
    """The labels of the pooled identities that come from LFW (train.py --lfw-share); DatasetError
    when no training source is LFW."""
    name = lfw_source(loaded)
    if name is None:
        raise DatasetError("--lfw-share: no --data entry is LFW (" + str(lfw_dir()) + ")")
    return np.array([label for label, pooled in enumerate(faces.names) if pooled.startswith(f"{name}/")], np.int64)


def lfw_view1_evaluator(loaded: dict[str, AlignedFaces], image_size: int) -> Evaluator:
    """view1_evaluator on LFW: the training source that is LFW when there is one, else its cache."""
    return view1_evaluator(_source_cache(loaded, lfw_dir(), image_size))


def validation_evaluator(loaded: dict[str, AlignedFaces], image_size: int,
                         log: Callable[[str], None] = print) -> Evaluator:
    """What train.py validates on after each epoch: LFW View 1 (``accuracy``, ``auc``, ...) and the
    CelebA hold-out's validation pairs (``celeba_accuracy``, ``celeba_auc``, ...), the latter only
    when the celeba-subset folder is there. The test half is never looked at."""
    view1 = lfw_view1_evaluator(loaded, image_size)
    celeba = data_dir() / "celeba-subset"
    if not celeba.is_dir():
        log(f"validating on LFW View 1 only: {celeba} is missing, so the CelebA hold-out cannot be scored")
        return view1
    celeba_val = pairs_evaluator(_source_cache(loaded, celeba, image_size), VAL_PAIRS)

    def evaluate(model: keras.Model) -> dict[str, float]:
        return {**view1(model), **{f"celeba_{k}": v for k, v in celeba_val(model).items()}}

    return evaluate
