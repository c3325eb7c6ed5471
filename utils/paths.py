"""Where the project finds its data, caches and weights.

Every location can be overridden by an environment variable, so tests, CI and
users with their own copies of the datasets share one set of defaults.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
WEIGHTS_DIR = REPO_ROOT / "weights"
PEOPLE_DIR = REPO_ROOT / "people"
BENCHMARK_FACES_DIR = REPO_ROOT / "benchmark_faces"
BENCHMARK_RESULTS_DIR = REPO_ROOT / "benchmark_results"
PROTOCOLS_DIR = REPO_ROOT / "protocols"  # our own evaluation splits and pairs files (protocols/README.md)


def data_dir() -> Path:
    """Root of the datasets: $FACE_DATA_DIR, else ../shared/data beside the repo when it
    exists, else <repo>/data (where the downloaders put what a user fetches)."""
    env = os.environ.get("FACE_DATA_DIR")
    if env:
        return Path(env).expanduser()
    shared = REPO_ROOT.parent / "shared" / "data"
    return shared if shared.is_dir() else REPO_ROOT / "data"


def lfw_dir() -> Path:
    """LFW images as the official archive unpacks: <root>/<Name>/<Name>_NNNN.jpg."""
    return data_dir() / "lfw"


def lfw_protocol_dir() -> Path:
    """The official LFW protocol text files (pairs.txt, peopleDevTrain.txt, ...)."""
    return data_dir() / "lfw-protocol"


def cache_dir() -> Path:
    """Aligned-face caches and other derived data: $FACE_CACHE_DIR, else <repo>/cache."""
    env = os.environ.get("FACE_CACHE_DIR")
    return Path(env).expanduser() if env else REPO_ROOT / "cache"


def folder_cache_name(folder: str | Path) -> str:
    """<folder name>-<hash of its resolved path>: names what a cache derives from one folder, so two
    folders of the same name (people/ in two checkouts) never share a cache file."""
    folder = Path(folder)
    return f"{folder.name}-{hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:8]}"


def model_cache_dir() -> Path:
    """Downloaded model files kept across clones: $FACE_MODEL_CACHE, else ~/.cache/facetk."""
    env = os.environ.get("FACE_MODEL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "facetk"


def runs_dir() -> Path:
    """Training runs, one folder each under <root>/<model>/: $FACE_RUNS_DIR, else <repo>/runs."""
    env = os.environ.get("FACE_RUNS_DIR")
    return Path(env).expanduser() if env else REPO_ROOT / "runs"


def portable_path(path: str | Path) -> str:
    """A path as files meant to be shared (weights metadata, benchmark results) record it, free of
    this machine's folders: ``data:lfw`` under the data root (``data_dir()``), ``cache:...`` under
    the cache folder, a repository-relative path (``weights/ang.weights.h5``) inside the repository,
    else the bare file or folder name."""
    resolved = Path(path).expanduser().resolve()
    for prefix, root in (("data:", data_dir()), ("cache:", cache_dir()), ("", REPO_ROOT)):
        root = root.resolve()
        if resolved.is_relative_to(root):
            return prefix + resolved.relative_to(root).as_posix()
    return resolved.name
