"""Aligned-face cache: a whole dataset aligned once, into a sharded store (utils/faces/store.py).

Faces go into fixed-size shards that are memory-mapped when read, with a small columnar index
(see store.py for the layout): a dataset bigger than memory is read one batch of rows at a time.
Images where dlib finds no face are kept as a centre crop with detected=False (evaluation must
not drop them; training skips them). Unreadable files are listed and left out. A re-run aligns
only new or changed images, into new shards. Each setting (size, landmarks, upsample levels,
detector) has its own folder; locks make a second process wait for the first one's build,
then reuse it. A cache of the old single-array format (faces.npy) is read as it is by
load_cache and converted into a store, without aligning again, by load_or_build. Damaged files
are named: an old cache or a shard that cannot be read is aligned again by load_or_build.

Command line: ``python -m utils.faces.cache DATASET [--out DIR] [--shard I/N] [--compact]``, where
DATASET is a folder-per-identity tree or an MS-Celeb-1M face TSV (utils/faces/tsv_ingest.py).
``--shard I/N`` aligns only the I-th of N deterministic parts, so N jobs on N machines that share
the store folder can build it together; the store reads all parts, no merge step is needed.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import multiprocessing.pool
import os
import signal
import sys
import zipfile
import zlib
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from utils.console import progress_bar
from utils.datasets.folders import DatasetError, list_identity_images
from utils.faces import store, tsv_ingest
from utils.faces.align import FaceAligner, centre_crop
from utils.faces.image_io import ALIGN_MAX_SIDE, ImageReadError, read_image_scaled
from utils.faces.store import RowView
from utils.paths import cache_dir, folder_cache_name

DEFAULT_UPSAMPLE = (0, 1)  # upsample 0 finds LFW-sized faces 4x faster; 1 catches the rest
OLD_FORMAT_VERSION = 1  # the single-array cache (faces.npy, arrays.npz, index.json) before the store


@dataclass
class AlignedFaces:
    """Aligned faces of one dataset, row i describing image paths[i]. ``faces`` and ``landmarks``
    are RowViews over memory-mapped shards: index them for arrays (``np.asarray`` reads all)."""

    root: Path
    faces: RowView
    paths: list[str]
    detected: np.ndarray
    boxes: np.ndarray
    landmarks: RowView
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
    settings = json.dumps(alignment_settings(output_size, landmarks, upsample, detector), sort_keys=True)
    settings_digest = hashlib.sha1(settings.encode()).hexdigest()[:6]
    return cache_dir() / "aligned" / f"{folder_cache_name(root)}-{landmarks}-{output_size}-{settings_digest}"


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


def _align_rgb(rgb: np.ndarray) -> tuple[np.ndarray, bool, np.ndarray, np.ndarray]:
    """Align one decoded image with this worker's aligner: (face, detected, box, landmarks)."""
    aligner = _worker_aligner
    box = np.full(4, np.nan, np.float32)
    points = np.full((68, 2), np.nan, np.float32)
    boxes = aligner.detect(rgb)
    if not boxes:
        return centre_crop(rgb, aligner.output_size), False, box, points
    first = boxes[0]
    points = aligner.landmarks_of(rgb, first)
    face = aligner.align_points(rgb, points)
    box = np.array([first.left(), first.top(), first.right(), first.bottom()], np.float32)
    return face, True, box, points.astype(np.float32)


def _align_one(path: str) -> tuple[str, np.ndarray | None, bool, np.ndarray, np.ndarray, str | None]:
    """Align one file: (path, face, detected, box, landmarks, error message).

    A photo larger than ALIGN_MAX_SIDE is shrunk to it while decoding (bounded memory); its box
    and landmarks are stored in the file's own pixel coordinates all the same.
    """
    try:
        rgb, scale = read_image_scaled(path, ALIGN_MAX_SIDE)
    except ImageReadError as err:
        return path, None, False, np.full(4, np.nan, np.float32), np.full((68, 2), np.nan, np.float32), str(err)
    face, detected, box, points = _align_rgb(rgb)
    return path, face, detected, box / scale, (points / scale).astype(np.float32), None


IN_FLIGHT = 256  # items per chunk handed to the pool; at most two chunks are queued at once


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _align_many(align: Callable[[Any], tuple], items: Iterable[Any], settings: dict, workers: int, desc: str,
                progress: bool = True, total: int | None = None) -> Iterator[tuple]:
    """``align`` (a module-level function) over the items in a process pool, or in this process for
    one worker; results in order. The items are read as they are needed, never all at once."""
    bar = progress_bar(total=total, desc=desc, unit="img", disable=not progress)
    with bar:
        if workers <= 1:
            _init_worker(settings)
            for result in map(align, items):
                bar.update()
                yield result
            return
        with worker_pool(workers, _init_worker, (settings,)) as pool:
            pending: deque = deque()
            for chunk in _chunks(items, IN_FLIGHT):
                pending.append(pool.map_async(align, chunk, chunksize=16))
                if len(pending) == 2:
                    for result in pending.popleft().get():
                        bar.update()
                        yield result
            while pending:
                for result in pending.popleft().get():
                    bar.update()
                    yield result


# --- the store ------------------------------------------------------------------------------

def _stat_key(path: Path) -> list[int]:
    try:
        st = path.stat()
    except FileNotFoundError:  # a broken symbolic link: its own size and time
        st = path.lstat()
    return [st.st_size, st.st_mtime_ns]


def parse_shard(text: str) -> tuple[int, int]:
    """"I/N" (1 <= I <= N) as (I, N); ValueError otherwise."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard takes I/N with whole numbers, e.g. 2/8; got {text!r}") from None
    if not 1 <= i <= n:
        raise ValueError(f"--shard I/N needs 1 <= I <= N, got {text!r}")
    return i, n


def in_part(key: str, shard: tuple[int, int]) -> bool:
    """Whether a folder-tree image belongs to part I of N: a hash of its key, stable as images are added."""
    return zlib.crc32(key.encode()) % shard[1] == shard[0] - 1


class DamagedCacheError(ValueError):
    """A cache folder whose files are unreadable or disagree with each other; the message says how."""


def _check_index(index: Any) -> str | None:
    """What is wrong with a parsed index.json of the old format, or None."""
    if not isinstance(index, dict):
        return "index.json is not a JSON object"
    if index.get("version") != OLD_FORMAT_VERSION:
        return f"index.json has format {index.get('version')!r}, not {OLD_FORMAT_VERSION}"
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
    """A cache of the old single-array format, memory-mapped; None when the folder has no index.json,
    DamagedCacheError naming the folder when it cannot be used."""
    if not (folder / "index.json").exists():
        return None
    try:
        index = json.loads((folder / "index.json").read_text())
        problem = _check_index(index)
        if problem is None:
            with np.load(folder / "arrays.npz") as arrays:
                detected, boxes, landmarks = arrays["detected"], arrays["boxes"], arrays["landmarks"]
            faces = np.load(folder / "faces.npy", mmap_mode="r")
            problem = _check_arrays(index, faces, detected, boxes, landmarks)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        problem = f"{type(err).__name__}: {err}"
    if problem:
        raise DamagedCacheError(f"the aligned cache in {folder} is damaged ({problem})")
    return index, AlignedFaces(root, RowView.of(faces), index["paths"], detected.astype(bool), boxes,
                               RowView.of(landmarks), index.get("unreadable", []))


OLD_FILES = ("faces.npy", "arrays.npz", "index.json")


def _convert_old(folder: Path, settings: dict) -> None:
    """Turn an old single-array cache in the folder into a store (its faces are kept, not realigned)."""
    with store.exclusive(folder):
        if store.is_store(folder) or not any((folder / name).exists() for name in OLD_FILES):
            return
        try:
            old = _load(folder, folder)
        except DamagedCacheError as err:
            print(f"{err}; building it again", file=sys.stderr)
            old = None
        if old is not None and old[0]["settings"] != settings:
            print(f"{folder} holds an aligned cache of other settings: it is replaced by a sharded store, "
                  "aligned anew", file=sys.stderr)
        elif old is not None:
            print(f"converting the single-array aligned cache in {folder} to a sharded store "
                  "(no image is aligned again)", file=sys.stderr)
            index, data = old
            (folder / "shards").mkdir(exist_ok=True)
            writer = store.ShardWriter(folder, "converted", data.faces.shape[1:])
            for start in range(0, len(data), store.READ_BLOCK):
                block = slice(start, start + store.READ_BLOCK)
                for i, face, points in zip(range(start, min(start + store.READ_BLOCK, len(data))),
                                           data.faces[block], data.landmarks[block], strict=True):
                    writer.add(data.paths[i], index["stats"][i], face, data.detected[i], data.boxes[i], points)
            for path, stat in index.get("unreadable_stats", {}).items():
                writer.add_unreadable(path, stat)
            writer.close()
        store.create(folder, settings)
        for name in OLD_FILES:
            (folder / name).unlink(missing_ok=True)


def open_store(folder: Path, settings: dict) -> None:
    """Make ``folder`` a store of these settings: new, converted from the old format, or checked."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    if (folder / "index.json").exists():
        _convert_old(folder, settings)
    if store.is_store(folder):  # only checked: the exclusive lock would wait for every running writer
        store.create(folder, settings)
        return
    with store.exclusive(folder):
        store.create(folder, settings)


def aligned_from_index(folder: Path, root: Path, index: store.StoreIndex, rows: np.ndarray,
                       unreadable: np.ndarray) -> AlignedFaces:
    """The AlignedFaces of some index positions (readable ones), with faces and landmarks memory-mapped."""
    empty = store.empty_columns(store.read_settings(folder))
    shard, row = index.shard[rows], index.row[rows]
    faces = store.open_column(folder, index.shards, "faces", shard, empty["faces"])
    landmarks = store.open_column(folder, index.shards, "landmarks", shard, empty["landmarks"])
    return AlignedFaces(root, RowView(faces, shard, row), [k.decode() for k in index.keys[rows]],
                        index.detected[rows], index.boxes[rows], RowView(landmarks, shard, row),
                        [k.decode() for k in index.keys[unreadable]])


def _listed(index: store.StoreIndex, files: list[str], stats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index positions of the listed files that are stored unchanged: (readable, unreadable)."""
    at = index.find(np.array([f.encode() for f in files], dtype=bytes))
    found = at >= 0
    at = at[found][(index.stats[at[found]] == stats[found]).all(axis=1)]
    return at[index.row[at] >= 0], at[index.row[at] < 0]


def load_or_build(dataset_dir: str | Path, output_size: int = 96, landmarks: str = "outer_eyes_and_nose",
                  out: str | Path | None = None, workers: int | None = None,
                  upsample: int | Sequence[int] | None = DEFAULT_UPSAMPLE, detector: str = "hog",
                  progress: bool = True, shard: tuple[int, int] = (1, 1),
                  shard_size: int = store.DEFAULT_SHARD_SIZE, only: Iterable[str] | None = None) -> AlignedFaces:
    """Aligned faces of every image under dataset_dir, aligning only what is new or changed.

    ``only`` (relative paths, e.g. the images an evaluation protocol needs) restricts the work and
    the result to those images; the store keeps them, and a later call aligns the rest.

    With ``shard=(I, N)`` only part I of N is aligned (parts are a hash of the image's path), so
    N processes can share the work; the result holds what the store has of the dataset so far.
    Another process writing the same part is waited for, and its result reused.
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
    if only is not None:
        wanted = set(only)
        files = [f for f in files if f in wanted]
    stats = np.array([_stat_key(root / f) for f in files], np.int64).reshape(len(files), 2)
    open_store(folder, settings)

    def build() -> AlignedFaces:
        with store.writing(folder, store.part_name(shard)):
            found_unreadable = _update(root, folder, settings, files, stats, workers, progress, shard, shard_size)
        index = store.read_index(folder)
        readable, unreadable = _listed(index, files, stats)
        if not len(readable) and shard == (1, 1):
            raise ValueError(f"none of the images under {root} could be read")
        data = aligned_from_index(folder, root, index, readable, unreadable)
        earlier = [p for p in data.unreadable if p not in found_unreadable]
        _report_unchanged_unreadable(f"image(s) under {root}", earlier)
        return data

    return _repairing(folder, build)


def _repairing(folder: Path, build: Callable[[], AlignedFaces]) -> AlignedFaces:
    """build(), again after each damaged shard it runs into is removed (its faces are then aligned anew);
    the DamagedShardError, which says what to delete, when a shard cannot be removed or stays damaged."""
    removed = set()
    while True:
        try:
            return build()
        except store.DamagedShardError as err:
            if err.shard in removed:
                raise
            print(f"{err.file} is damaged ({err.reason}): shard {err.shard} is deleted and its faces are "
                  "aligned again", file=sys.stderr)
            try:
                store.remove_shard(folder, err.shard)
            except OSError:
                raise err from None
            tsv_ingest.forget_done(folder)
            removed.add(err.shard)


def _report_unchanged_unreadable(what: str, keys: list[str], shown: int = 20) -> None:
    """One line naming the sources found unreadable by an earlier run and not changed since."""
    if not keys:
        return
    names = ", ".join(keys[:shown]) + (f" and {len(keys) - shown} more" if len(keys) > shown else "")
    print(f"skipped {len(keys)} unreadable {what}, unchanged since an earlier run found them unreadable: {names}",
          file=sys.stderr)


def _update(root: Path, folder: Path, settings: dict, files: list[str], stats: np.ndarray, workers: int | None,
            progress: bool, shard: tuple[int, int], shard_size: int) -> set[str]:
    """Under the part's lock: align the part's new or changed images (stats: their _stat_key) into new shards.
    Returns the images found unreadable (each named on stderr)."""
    part = store.part_name(shard)
    store.remove_unfinished(folder, part)
    index = store.read_index(folder)
    readable, unreadable = _listed(index, files, stats)
    done = {index.keys[i].decode() for i in np.concatenate([readable, unreadable])}
    todo = [i for i, f in enumerate(files) if f not in done and in_part(f, shard)]
    found_unreadable: set[str] = set()
    if not todo:
        return found_unreadable
    writer = store.ShardWriter(folder, part, (settings["output_size"],) * 2 + (3,), shard_size)
    workers = min(workers or os.cpu_count() or 1, len(todo))
    try:
        results = _align_many(_align_one, (str(root / files[i]) for i in todo), settings, workers,
                              f"aligning {root.name}", progress, total=len(todo))
        for i, (_, face, detected, box, points, error) in zip(todo, results, strict=True):
            if error:
                writer.add_unreadable(files[i], stats[i])
                found_unreadable.add(files[i])
                print(f"skipped unreadable image: {error}", file=sys.stderr)
            else:
                writer.add(files[i], stats[i], face, detected, box, points)
    except BaseException:
        writer.abandon()
        raise
    writer.close()
    return found_unreadable


def _align_line(item: tuple[str, tuple[int, int], bytes]) -> tuple:
    """Worker: decode and align one TSV line: (key, stat, face, detected, box, landmarks, error)."""
    key, stat, raw = item
    try:
        face = tsv_ingest.decode_line(key, raw)
    except ValueError as err:
        return key, stat, None, False, None, None, str(err)
    return (key, stat, *_align_rgb(face.image), None)


def _ingest_tsv(tsv: Path, folder: Path, settings: dict, workers: int, progress: bool, shard: tuple[int, int],
                shard_size: int) -> set[str]:
    """Under the part's lock: align the part's new or changed lines into new shards. Returns the keys of
    the lines found corrupt (named on stderr)."""
    part = store.part_name(shard)
    store.remove_unfinished(folder, part)
    lines = tsv_ingest.ChangedLines(tsv, shard, store.read_index(folder))
    writer = store.ShardWriter(folder, part, (settings["output_size"],) * 2 + (3,), shard_size)
    corrupt: dict[str, str] = {}
    try:
        for key, stat, face, detected, box, points, error in _align_many(
                _align_line, lines, settings, workers, f"aligning {tsv.name} part {shard[0]}/{shard[1]}", progress):
            if error:
                writer.add_unreadable(key, stat)
                corrupt[key] = f"{key}: {error}"
            else:
                writer.add(key, stat, face, detected, box, points)
        if shard == (1, 1):  # a whole-file run: the faces of lines no longer in the file go
            for i in lines.gone:
                writer.add_unreadable(lines.index.keys[i].decode(), store.REMOVED)
    except BaseException:
        writer.abandon()
        raise
    writer.close()
    if corrupt:
        print(tsv_ingest.corrupt_summary(tsv, list(corrupt.values())), file=sys.stderr)
    tsv_ingest.mark_done(folder, tsv, shard, f"{writer.committed} faces aligned, {lines.stored} already stored")
    return set(corrupt)


def load_or_build_tsv(tsv: str | Path, output_size: int = 96, landmarks: str = "outer_eyes_and_nose",
                      out: str | Path | None = None, workers: int | None = None,
                      upsample: int | Sequence[int] | None = DEFAULT_UPSAMPLE, detector: str = "hog",
                      progress: bool = True, shard: tuple[int, int] = (1, 1),
                      shard_size: int = store.DEFAULT_SHARD_SIZE) -> AlignedFaces:
    """Aligned faces of every face of an MS-Celeb TSV (utils/faces/tsv_ingest.py), or of part I of N of
    it, streamed into a store without writing JPEGs, aligning only new or changed lines; the result
    holds every face the store has. ``root`` of the result is the TSV."""
    tsv = Path(tsv)
    if not tsv.is_file():
        raise FileNotFoundError(f"MS-Celeb-1M TSV file not found: {tsv}")
    folder = Path(out) if out else default_cache_path(tsv, output_size, landmarks, upsample, detector)
    settings = alignment_settings(output_size, landmarks, upsample, detector)
    open_store(folder, settings)

    def build() -> AlignedFaces:
        found_corrupt: set[str] = set()
        if shard != (1, 1) or not tsv_ingest.ingested_whole(folder, tsv):
            with store.writing(folder, store.part_name(shard)):
                found_corrupt = _ingest_tsv(tsv, folder, settings, workers or os.cpu_count() or 1, progress, shard,
                                            shard_size)
        index = store.read_index(folder)
        if not len(index.readable) and shard == (1, 1):
            raise ValueError(f"no line of {tsv} holds a readable face")
        data = aligned_from_index(folder, tsv, index, index.readable, index.unreadable)
        _report_unchanged_unreadable(f"line(s) of {tsv}", [k for k in data.unreadable if k not in found_corrupt])
        return data

    return _repairing(folder, build)


def load_cache(folder: str | Path) -> AlignedFaces:
    """A store (or an old single-array cache) read without its dataset (root = the folder): every face in it.

    ValueError names the folder or file and the problem (DamagedCacheError for an old cache whose files
    disagree, store.DamagedShardError for a shard that cannot be read: it says which files to delete).
    """
    folder = Path(folder)
    if not store.is_store(folder):
        loaded = _load(folder, folder)  # DamagedCacheError names the folder and the problem
        if loaded is None:
            raise ValueError(f"not an aligned-face store or cache (no store.json or index.json): {folder}")
        return loaded[1]
    store.read_settings(folder)
    index = store.read_index(folder)
    return aligned_from_index(folder, folder, index, index.readable, index.unreadable)


def compact_cache(folder: Path, root: Path | None = None,
                  shard_size: int = store.DEFAULT_SHARD_SIZE) -> tuple[int, int]:
    """Rewrite a store into full shards; with the dataset ``root``, images no longer there are dropped."""
    if not store.is_store(folder):
        raise ValueError(f"not a face store: {folder}")
    keep = None
    if root is not None and root.is_dir():
        index = store.read_index(folder)
        files = list_images(root)
        readable, unreadable = _listed(index, files, np.array([_stat_key(root / f) for f in files], np.int64))
        keep = np.zeros(len(index), bool)
        keep[readable] = keep[unreadable] = True
    return store.compact(folder, keep, shard_size)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m utils.faces.cache",
        description="Align every face of a folder-per-identity dataset, or of an MS-Celeb-1M face TSV, once, "
                    "with all cores, into a sharded store that training and evaluation read. A re-run aligns only "
                    "new or changed images. --shard I/N splits the work over N processes or machines that "
                    "share the store folder (e.g. a Slurm array: --shard $SLURM_ARRAY_TASK_ID/N with "
                    "--array=1-N); the store reads every part, no merge is needed.")
    parser.add_argument("dataset", type=Path, help="dataset root <root>/<identity>/<image>, or an MS-Celeb .tsv")
    parser.add_argument("--out", type=Path, help="store folder (default: cache/aligned/<dataset>-...)")
    parser.add_argument("--size", type=int, default=96, help="output size in pixels (default 96)")
    parser.add_argument("--landmarks", default="outer_eyes_and_nose",
                        choices=["outer_eyes_and_nose", "inner_eyes_and_bottom_lip"])
    parser.add_argument("--upsample", type=int, nargs="+", default=list(DEFAULT_UPSAMPLE),
                        help="dlib HOG upsample counts tried in order until a face is found (default 0 1)")
    parser.add_argument("--detector", choices=["hog", "cnn"], default="hog")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="processes (default: all cores)")
    parser.add_argument("--shard", default="1/1", metavar="I/N",
                        help="align only part I of N (1 <= I <= N); the N parts can run at once (default 1/1)")
    parser.add_argument("--shard-size", type=int, default=store.DEFAULT_SHARD_SIZE,
                        help=f"faces per shard file (default {store.DEFAULT_SHARD_SIZE}); a kill loses at most "
                             "the shard being written")
    parser.add_argument("--compact", action="store_true",
                        help="rewrite the store into full shards, dropping replaced rows and (for a folder) "
                             "images no longer there; run it when no other job writes the store")
    args = parser.parse_args(argv)
    folder = args.out or default_cache_path(args.dataset, args.size, args.landmarks, args.upsample, args.detector)
    try:
        shard = parse_shard(args.shard)
        if args.compact:
            before, after = compact_cache(folder, args.dataset if args.dataset.is_dir() else None, args.shard_size)
            print(f"compacted {folder}: {before} shards -> {after}")
            return 0
        if args.dataset.is_file():
            data = load_or_build_tsv(args.dataset, args.size, args.landmarks, args.out, args.workers,
                                     args.upsample, args.detector, shard=shard, shard_size=args.shard_size)
        else:
            data = load_or_build(args.dataset, args.size, args.landmarks, args.out, args.workers,
                                 args.upsample, args.detector, shard=shard, shard_size=args.shard_size)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the pool's workers ignore Ctrl-C and are ended with it
        print("interrupted", file=sys.stderr)
        return 130
    no_face = [p for p, d in zip(data.paths, data.detected, strict=True) if not d]
    part = f" (part {shard[0]} of {shard[1]} done; the store holds the parts finished so far)" if shard[1] > 1 else ""
    print(f"{len(data)} images in {folder}{part}; no face detected in {len(no_face)} (kept as centre crops); "
          f"{len(data.unreadable)} unreadable")
    for p in no_face[:100]:
        print(f"  no face: {p}")
    for p in data.unreadable[:100]:
        print(f"  unreadable: {p}")
    if max(len(no_face), len(data.unreadable)) > 100:
        print("  (lists cut at 100)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
