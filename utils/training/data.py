"""The faces a training run learns from and validates on.

Each --data entry is an aligned-cache folder, a folder-per-identity tree (aligned once and
cached) or an MS-Celeb-1M TSV (streamed once into a face store under the cache folder). The
sources are pooled with identities namespaced per source, minus the excluded people: by
default the LFW View 1 DevTest people (the validation identities) and the benchmark-face
people (benchmark_faces/manifest.txt, the t-SNE figures' faces).
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from utils.datasets.folders import DatasetError
from utils.datasets.lfw import parse_people
from utils.evaluation.benchmark_faces import MANIFEST
from utils.faces.cache import AlignedFaces, load_cache, load_or_build, load_or_build_tsv
from utils.paths import data_dir, lfw_dir, lfw_protocol_dir
from utils.training.batching import TrainingFaces, pool_datasets

if TYPE_CHECKING:
    import keras

Evaluator = Callable[["keras.Model"], dict[str, float]]


def default_data() -> list[str]:
    """LFW (its DevTest and benchmark people are excluded by default) plus celeba-subset when present."""
    celeba = data_dir() / "celeba-subset"
    return [str(lfw_dir())] + ([str(celeba)] if celeba.is_dir() else [])


def default_exclusions() -> list[str]:
    """LFW View 1 DevTest people (the validation identities) and the 10 benchmark-face people."""
    return [str(lfw_protocol_dir() / "peopleDevTest.txt"), str(MANIFEST)]


def read_people_file(path: str | Path) -> set[str]:
    """Identity names in an LFW people file (count header, ``Name count`` lines) or a plain list
    with one ``Name`` or ``Name/image.jpg`` per line (like benchmark_faces/manifest.txt)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"people file not found: {path}")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if lines and lines[0].isdigit():
        return {person.name for person in parse_people(path)}
    return {line.split("/", 1)[0].split("\t", 1)[0] for line in lines}


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


def view1_evaluator(lfw: AlignedFaces) -> Evaluator:
    """LFW View 1: threshold from the DevTrain pairs, accuracy and AUC on the DevTest pairs."""
    from utils.evaluation.verification import evaluate_lfw

    def evaluate(model: keras.Model) -> dict[str, float]:
        v = evaluate_lfw(model, protocol="view1", aligned=lfw).verification
        return {"accuracy": v.accuracy, "auc": v.auc, "threshold": v.threshold, "eer": v.eer}

    return evaluate


def lfw_view1_evaluator(loaded: dict[str, AlignedFaces], image_size: int) -> Evaluator:
    """view1_evaluator on LFW: the training source that is LFW when there is one, else its cache."""
    lfw = next((v for v in loaded.values() if Path(v.root).resolve() == lfw_dir().resolve()), None)
    return view1_evaluator(lfw if lfw is not None else load_or_build(lfw_dir(), output_size=image_size))
