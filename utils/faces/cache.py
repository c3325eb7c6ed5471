"""Aligned-face cache: a whole dataset aligned once, stored as one uint8 array.

Layout of a cache folder::

    faces.npy      (N, S, S, 3) uint8 aligned RGB faces
    arrays.npz     detected (N,) bool, boxes (N, 4), landmarks (N, 68, 2)
    index.json     settings, and per image its relative path, size and mtime

Images where dlib finds no face are kept as a centre crop with detected=False
(evaluation must not drop them; training skips them). Unreadable files are
listed and left out. A re-run aligns only new or changed images. Each setting
(size, landmarks, upsample levels, detector) has its own folder, and a lock file
beside it makes a second process wait for the first one's build, then reuse it.

Command line: ``python -m utils.faces.cache DATASET_DIR [--out DIR]``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import multiprocessing.pool
import os
import shutil
import signal
import sys
import tempfile
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

try:
    import fcntl
except ImportError:  # Windows: caches are not locked there
    fcntl = None

import numpy as np

from utils.console import progress_bar
from utils.datasets.folders import DatasetError, list_identity_images
from utils.faces.align import FaceAligner, centre_crop
from utils.faces.image_io import ALIGN_MAX_SIDE, ImageReadError, read_image_scaled
from utils.paths import cache_dir

DEFAULT_UPSAMPLE = (0, 1)  # upsample 0 finds LFW-sized faces 4x faster; 1 catches the rest
FORMAT_VERSION = 1


@dataclass
class AlignedFaces:
    """Aligned faces of one dataset, row i describing image paths[i]."""

    root: Path
    faces: np.ndarray
    paths: list[str]
    detected: np.ndarray
    boxes: np.ndarray
    landmarks: np.ndarray
    unreadable: list[str] = field(default_factory=list)

    @property
    def identities(self) -> list[str]:
        """The identity of each image: its folder name."""
        return [p.split("/", 1)[0] for p in self.paths]

    def index_of(self, relpath: str) -> int:
        """Row of an image given as 'Name/Name_0001.jpg'; KeyError naming it if absent."""
        if not hasattr(self, "_rows"):
            self._rows = {p: i for i, p in enumerate(self.paths)}
        try:
            return self._rows[relpath]
        except KeyError:
            raise KeyError(f"{relpath} is not in the aligned cache of {self.root}") from None

    def __len__(self) -> int:
        return len(self.paths)


def list_images(root: Path) -> list[str]:
    """Relative paths ``<identity>/<file>`` of the images of a folder-per-identity tree, sorted.

    The tree is read by ``utils.datasets.folders.list_identity_images``: loose files in the
    root, nested sub-folders and hidden files are not images of an identity and are left out.
    Broken symbolic links and folders named like images are listed, to be reported as unreadable.
    Raises `DatasetError` when no identity folder holds an image.
    """
    images = list_identity_images(root, keep_unreadable=True)
    return sorted(f"{image.identity}/{image.path.name}" for image in images)


def alignment_settings(output_size: int = 96, landmarks: str = "outer_eyes_and_nose",
                       upsample: int | Sequence[int] | None = DEFAULT_UPSAMPLE, detector: str = "hog") -> dict:
    """The settings a cache is built with, as stored in its index.json."""
    levels = DEFAULT_UPSAMPLE if upsample is None else ([upsample] if isinstance(upsample, int) else upsample)
    return {"output_size": output_size, "landmarks": landmarks, "upsample": [int(n) for n in levels],
            "detector": detector}


def default_cache_path(root: Path, output_size: int, landmarks: str,
                       upsample: int | Sequence[int] | None = DEFAULT_UPSAMPLE, detector: str = "hog") -> Path:
    """cache/aligned/<dataset name>-<hash of its path>-<landmarks>-<size>-<hash of all settings>."""
    root = Path(root)
    digest = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:8]
    settings = json.dumps(alignment_settings(output_size, landmarks, upsample, detector), sort_keys=True)
    settings_digest = hashlib.sha1(settings.encode()).hexdigest()[:6]
    return cache_dir() / "aligned" / f"{root.name}-{digest}-{landmarks}-{output_size}-{settings_digest}"


# --- worker processes ----------------------------------------------------------------------

def _start_worker(initializer: Callable[..., None], initargs: tuple) -> None:
    """Pool initializer: Ctrl-C is handled once, by the parent (which then ends the pool)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    initializer(*initargs)


def worker_pool(workers: int, initializer: Callable[..., None], initargs: tuple = ()) -> multiprocessing.pool.Pool:
    """A process pool of fresh interpreters ("spawn": forking a process whose TensorFlow threads
    are running can deadlock). initializer and the mapped function must be module-level."""
    context = multiprocessing.get_context("spawn")
    return context.Pool(workers, initializer=_start_worker, initargs=(initializer, initargs))


_worker_aligner: FaceAligner | None = None


def _init_worker(settings: dict[str, Any]) -> None:
    global _worker_aligner
    _worker_aligner = FaceAligner(**settings)


def _align_one(path: str) -> tuple[str, np.ndarray | None, bool, np.ndarray, np.ndarray, str | None]:
    """Align one file: (path, face, detected, box, landmarks, error message).

    A photo larger than ALIGN_MAX_SIDE is shrunk to it while decoding (bounded memory); its box
    and landmarks are stored in the file's own pixel coordinates all the same.
    """
    aligner = _worker_aligner
    box = np.full(4, np.nan, np.float32)
    points = np.full((68, 2), np.nan, np.float32)
    try:
        rgb, scale = read_image_scaled(path, ALIGN_MAX_SIDE)
    except ImageReadError as err:
        return path, None, False, box, points, str(err)
    boxes = aligner.detect(rgb)
    if not boxes:
        return path, centre_crop(rgb, aligner.output_size), False, box, points, None
    first = boxes[0]
    points = aligner.landmarks_of(rgb, first)
    face = aligner.align_points(rgb, points)
    box = np.array([first.left(), first.top(), first.right(), first.bottom()], np.float32)
    return path, face, True, box / scale, (points / scale).astype(np.float32), None


def _align_many(files: Sequence[str], settings: dict, workers: int, desc: str,
                progress: bool = True) -> Iterator[tuple]:
    """Align files in a process pool (or in this process for one worker), in order."""
    bar = dict(total=len(files), desc=desc, unit="img", disable=not progress)
    if workers <= 1:
        _init_worker(settings)
        yield from progress_bar(map(_align_one, files), **bar)
        return
    with worker_pool(workers, _init_worker, (settings,)) as pool:
        yield from progress_bar(pool.imap(_align_one, files, chunksize=16), **bar)


# --- cache files ---------------------------------------------------------------------------

def _stat_key(path: Path) -> list[int]:
    try:
        st = path.stat()
    except FileNotFoundError:  # a broken symbolic link: its own size and time
        st = path.lstat()
    return [st.st_size, st.st_mtime_ns]


class DamagedCacheError(ValueError):
    """A cache folder whose files are unreadable or disagree with each other; the message says how."""


def _check_index(index: Any) -> str | None:
    """What is wrong with a parsed index.json, or None."""
    if not isinstance(index, dict):
        return "index.json is not a JSON object"
    if index.get("version") != FORMAT_VERSION:
        return f"index.json has format {index.get('version')!r}, not {FORMAT_VERSION}"
    missing = [key for key in ("settings", "paths", "stats") if key not in index]
    if missing:
        return f"index.json lacks {', '.join(missing)}"
    paths, stats = index["paths"], index["stats"]
    if not isinstance(index["settings"], dict) or not isinstance(paths, list) or not isinstance(stats, list):
        return "index.json's settings, paths or stats have the wrong type"
    if not all(isinstance(p, str) for p in paths) or len(stats) != len(paths):
        return f"index.json lists {len(paths)} paths but {len(stats)} stats"
    unreadable = index.get("unreadable", [])
    if not isinstance(unreadable, list) or not all(isinstance(p, str) for p in unreadable) \
            or not isinstance(index.get("unreadable_stats", {}), dict):
        return "index.json's unreadable lists have the wrong type"
    return None


def _check_arrays(index: dict, faces: np.ndarray, detected: np.ndarray, boxes: np.ndarray,
                  landmarks: np.ndarray) -> str | None:
    """What disagrees between the arrays and index.json, or None."""
    n, size = len(index["paths"]), index["settings"].get("output_size")
    expected = {"faces.npy": (faces, (n, size, size, 3)), "detected": (detected, (n,)),
                "boxes": (boxes, (n, 4)), "landmarks": (landmarks, (n, 68, 2))}
    for name, (array, shape) in expected.items():
        if array.shape != shape:
            return f"{name} has shape {array.shape}, index.json expects {shape}"
    if faces.dtype != np.uint8:
        return f"faces.npy holds {faces.dtype}, not uint8"
    return None


def _load(folder: Path, root: Path) -> tuple[dict, AlignedFaces] | None:
    """The cache in folder, None when there is none; DamagedCacheError when it cannot be used."""
    if not (folder / "index.json").exists():
        return None
    try:
        index = json.loads((folder / "index.json").read_text())
        problem = _check_index(index)
        if problem is None:
            with np.load(folder / "arrays.npz") as arrays:
                detected, boxes, landmarks = arrays["detected"], arrays["boxes"], arrays["landmarks"]
            faces = np.load(folder / "faces.npy")
            problem = _check_arrays(index, faces, detected, boxes, landmarks)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        problem = f"{type(err).__name__}: {err}"
    if problem:
        raise DamagedCacheError(f"the aligned cache in {folder} is damaged ({problem})")
    return index, AlignedFaces(root, faces, index["paths"], detected.astype(bool), boxes, landmarks,
                               index.get("unreadable", []))


def _old(folder: Path) -> Path:
    return folder.with_name(folder.name + ".old")


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on <folder>.lock: one process builds a cache at a time.
    Where the lock file cannot be created (a read-only cache), go on unlocked."""
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        lock = open(folder.with_name(folder.name + ".lock"), "a")
    except OSError:
        yield
        return
    with lock:
        if fcntl is not None:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
            except OSError:  # a file system without locks
                pass
        yield


def _recover(folder: Path) -> None:
    """Under the lock: undo what a killed _save left (a half-done swap, unfinished temp folders)."""
    if not folder.exists() and _old(folder).is_dir():
        os.replace(_old(folder), folder)
    shutil.rmtree(_old(folder), ignore_errors=True)
    if folder.parent.is_dir():
        for stale in folder.parent.iterdir():
            if stale.name.startswith(folder.name + ".tmp") and stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)


def _save(folder: Path, index: dict, data: AlignedFaces) -> None:
    """Write all three files into a temp folder, then swap it in (a kill leaves the old cache).
    Call under _locked(folder), after _recover(folder)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=folder.name + ".tmp"))
    try:
        tmp.chmod(0o755)
        np.save(tmp / "faces.npy", data.faces)
        np.savez(tmp / "arrays.npz", detected=data.detected, boxes=data.boxes, landmarks=data.landmarks)
        (tmp / "index.json").write_text(json.dumps(index))
        if folder.exists():
            os.replace(folder, _old(folder))
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # only still there when writing failed
    shutil.rmtree(_old(folder), ignore_errors=True)


def load_or_build(dataset_dir: str | Path, output_size: int = 96, landmarks: str = "outer_eyes_and_nose",
                  out: str | Path | None = None, workers: int | None = None,
                  upsample: int | Sequence[int] | None = DEFAULT_UPSAMPLE, detector: str = "hog",
                  progress: bool = True) -> AlignedFaces:
    """Aligned faces of every image under dataset_dir, aligning only what is new or changed.

    Another process building the same cache folder is waited for, and its result reused.
    """
    root = Path(dataset_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    folder = Path(out) if out else default_cache_path(root, output_size, landmarks, upsample, detector)
    settings = alignment_settings(output_size, landmarks, upsample, detector)
    try:
        files = list_images(root)
    except DatasetError as err:
        raise FileNotFoundError(str(err)) from None
    with _locked(folder):
        return _update(root, folder, settings, files, workers, progress)


def _update(root: Path, folder: Path, settings: dict, files: list[str], workers: int | None,
            progress: bool) -> AlignedFaces:
    """load_or_build under the cache's lock."""
    _recover(folder)
    stats = {f: _stat_key(root / f) for f in files}
    try:
        previous = _load(folder, root)
    except DamagedCacheError as err:
        print(f"{err}; building it again", file=sys.stderr)
        previous = None
    kept: dict[str, int] = {}
    if previous and previous[0]["settings"] == settings:
        old_index, old = previous
        kept = {p: i for i, p in enumerate(old.paths) if stats.get(p) == old_index["stats"][i]}
        unchanged_unreadable = [p for p in old_index.get("unreadable_stats", {})
                                if stats.get(p) == old_index["unreadable_stats"][p]]
    else:
        old, unchanged_unreadable = None, []
    todo = [f for f in files if f not in kept and f not in unchanged_unreadable]
    if unchanged_unreadable:
        _report_unchanged_unreadable(root, unchanged_unreadable)
    if not todo and old is not None and len(kept) == len(old.paths):
        return old

    new_rows: dict[str, tuple] = {}
    unreadable = list(unchanged_unreadable)
    if todo:
        workers = workers or os.cpu_count() or 1
        for path, face, detected, box, points, error in _align_many(
                [str(root / f) for f in todo], settings, min(workers, len(todo)), f"aligning {root.name}",
                progress):
            rel = Path(path).relative_to(root).as_posix()
            if error:
                unreadable.append(rel)
                print(f"skipped unreadable image: {error}", file=sys.stderr)
            else:
                new_rows[rel] = (face, detected, box, points)

    order = [f for f in files if f in kept or f in new_rows]
    if not order:
        raise ValueError(f"none of the images under {root} could be read")
    rows = [(old.faces[kept[f]], old.detected[kept[f]], old.boxes[kept[f]], old.landmarks[kept[f]])
            if f in kept else new_rows[f] for f in order]
    faces, detected, boxes, points = (np.stack(column) for column in zip(*rows, strict=True))
    data = AlignedFaces(root, faces, order, detected.astype(bool), boxes, points, sorted(unreadable))
    index = {"version": FORMAT_VERSION, "settings": settings, "paths": order,
             "stats": [stats[f] for f in order], "unreadable": data.unreadable,
             "unreadable_stats": {f: stats[f] for f in data.unreadable}}
    _save(folder, index, data)
    return data


def _report_unchanged_unreadable(root: Path, files: list[str], shown: int = 20) -> None:
    """One line naming the files found unreadable by an earlier run and not changed since."""
    names = ", ".join(files[:shown]) + (f" and {len(files) - shown} more" if len(files) > shown else "")
    print(f"skipped {len(files)} unreadable image(s) under {root}, unchanged since an earlier run found them "
          f"unreadable: {names}", file=sys.stderr)


def load_cache(folder: str | Path) -> AlignedFaces:
    """A cache folder written by load_or_build, read without its dataset (root = the folder).

    ValueError (DamagedCacheError when the files disagree) names the folder and the problem.
    """
    loaded = _load(Path(folder), Path(folder))
    if loaded is None:
        raise ValueError(f"not an aligned-face cache (no index.json): {folder}")
    return loaded[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m utils.faces.cache",
        description="Align every face of a folder-per-identity dataset once, with all cores, into a cache "
                    "that training and evaluation read. A re-run aligns only new or changed images.")
    parser.add_argument("dataset", type=Path, help="dataset root: <root>/<identity>/<image>")
    parser.add_argument("--out", type=Path, help="cache folder (default: cache/aligned/<dataset>-...)")
    parser.add_argument("--size", type=int, default=96, help="output size in pixels (default 96)")
    parser.add_argument("--landmarks", default="outer_eyes_and_nose",
                        choices=["outer_eyes_and_nose", "inner_eyes_and_bottom_lip"])
    parser.add_argument("--upsample", type=int, nargs="+", default=list(DEFAULT_UPSAMPLE),
                        help="dlib HOG upsample counts tried in order until a face is found (default 0 1)")
    parser.add_argument("--detector", choices=["hog", "cnn"], default="hog")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="processes (default: all cores)")
    args = parser.parse_args(argv)
    try:
        data = load_or_build(args.dataset, args.size, args.landmarks, args.out, args.workers,
                             args.upsample, args.detector)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the pool's workers ignore Ctrl-C and are ended with it
        print("interrupted", file=sys.stderr)
        return 130
    folder = args.out or default_cache_path(args.dataset, args.size, args.landmarks, args.upsample, args.detector)
    no_face = [p for p, d in zip(data.paths, data.detected, strict=True) if not d]
    print(f"{len(data)} images in {folder}; no face detected in {len(no_face)} (kept as centre crops); "
          f"{len(data.unreadable)} unreadable")
    for p in no_face:
        print(f"  no face: {p}")
    for p in data.unreadable:
        print(f"  unreadable: {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
