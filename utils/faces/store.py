"""Sharded face store: aligned faces in fixed-size, memory-mapped shards plus a columnar index.

Layout of a store folder::

    store.json                        format version and the alignment settings
    shards/<name>.faces.npy           (n, S, S, 3) uint8 faces, read with np.load(mmap_mode="r")
    shards/<name>.landmarks.npy       (n, 68, 2) float32 landmarks (NaN where no face was found)
    shards/<name>.index.npz           the shard's index: per row its key ("<identity>/<file>"),
                                      stat (two int64 that change when the source changes),
                                      detected flag and box; and the keys and stats of the
                                      sources that could not be read
    locks/<part>.lock                 one writer per part at a time
    <store>.lock (beside the folder)  shared by writers, exclusive for compaction and conversion

``<name>`` is ``g<generation>-<part>-<sequence>``. A shard exists for readers only once its
index.npz is there, which is renamed into place last: a kill loses at most the shard being
written. A shard whose files cannot be read raises :class:`DamagedShardError` naming the file;
:func:`remove_shard` deletes it, so that its faces are aligned again. Adding faces writes new
shards and never rewrites old ones; a key written again (its source changed) is read from its
newest shard. :func:`compact` rewrites the live rows into full shards and deletes the rest.

The index is NumPy ``.npz`` rather than Parquet: it needs nothing beyond NumPy (pyarrow would
be a 100 MB dependency for a handful of fixed-type columns), each column loads in one read, and
the large per-face columns that training never needs whole (faces, landmarks) are ``.npy``
files that memory-map.

Faces and landmarks are handed out as :class:`RowView` objects: read-only (N, ...) arrays whose
rows are gathered from the memory-mapped shards only when indexed.
"""
from __future__ import annotations

import io
import json
import mmap
import os
import re
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: stores are not locked there
    fcntl = None

import numpy as np

from utils.atomic import fsync, write_text_atomic

FORMAT_VERSION = 2
DEFAULT_SHARD_SIZE = 10_000  # 276 MB of 96 px faces: about a minute of alignment on two cores
LANDMARK_POINTS = 68
READ_BLOCK = 1024  # rows read at once when a store is copied
REMOVED = (-1, -1)  # the stat of a key whose source is gone (written by a whole-file TSV re-run)
_SHARD_NAME = re.compile(r"g(\d{6})-([\w]+)-(\d{5})")


class StoreError(ValueError):
    """A folder that is not a usable face store."""


class DamagedShardError(StoreError):
    """A committed shard with a file that cannot be read; the message names the file and what to delete."""

    def __init__(self, folder: Path, shard: str, file: str, reason: str):
        self.folder, self.shard, self.reason = Path(folder), shard, reason
        self.file = self.folder / "shards" / file
        super().__init__(f"{self.file} is damaged ({reason}); delete the files {self.folder / 'shards' / shard}.* "
                         "and align the dataset again")


class RowView:
    """Read-only (N, ...) rows of memory-mapped shard arrays, gathered only when indexed.

    Indexing with an int returns one row, with a slice, an index array or a boolean mask a new
    NumPy array; ``np.asarray(view)`` gathers all rows. :meth:`take` and :meth:`concatenate`
    make new views without reading any row.
    """

    def __init__(self, arrays: Sequence[np.ndarray], shard: np.ndarray, row: np.ndarray):
        if not arrays:
            raise ValueError("a RowView needs at least one array (it gives the row shape)")
        self.arrays = list(arrays)
        self.shard = np.asarray(shard, np.int32)
        self.row = np.asarray(row, np.int64)
        self.dtype = self.arrays[0].dtype
        self.shape = (len(self.row), *self.arrays[0].shape[1:])

    @classmethod
    def of(cls, array: np.ndarray | RowView) -> RowView:
        """An in-memory array as a one-shard view (a view is returned as it is)."""
        if isinstance(array, RowView):
            return array
        return cls([np.asarray(array)], np.zeros(len(array), np.int32), np.arange(len(array)))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def take(self, rows: Sequence[int] | np.ndarray) -> RowView:
        """The view of some rows (ints or a boolean mask), in the order given."""
        rows = np.arange(len(self))[np.asarray(rows)] if np.asarray(rows).dtype == bool else np.asarray(rows, np.int64)
        return RowView(self.arrays, self.shard[rows], self.row[rows])

    @staticmethod
    def concatenate(views: Sequence[RowView | np.ndarray]) -> RowView:
        """One view of the rows of several, in order."""
        views = [RowView.of(v) for v in views]
        arrays, shards = [], []
        for view in views:
            shards.append(view.shard + len(arrays))
            arrays += view.arrays
        return RowView(arrays, np.concatenate(shards), np.concatenate([v.row for v in views]))

    def gather(self, rows: np.ndarray) -> np.ndarray:
        """The rows (int64 indices) as one new array, read shard by shard in row order."""
        shard, row = self.shard[rows], self.row[rows]
        out = np.empty((len(rows), *self.shape[1:]), self.dtype)
        for s in np.unique(shard):
            at = np.flatnonzero(shard == s)
            order = np.argsort(row[at], kind="stable")  # ascending offsets read the file forwards
            out[at[order]] = self.arrays[s][row[at[order]]]
            _release_pages(self.arrays[s])
        return out

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            i = int(index) + (len(self) if index < 0 else 0)
            return np.array(self.arrays[self.shard[i]][self.row[i]])
        if isinstance(index, tuple):  # rows first, then the rest of NumPy's indexing on them
            return self[index[0]][(slice(None), *index[1:])]
        rows = np.arange(len(self))[index]
        return self.gather(np.atleast_1d(rows))

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self.gather(np.arange(len(self)))
        return out if dtype is None else out.astype(dtype)


def _release_pages(array: np.ndarray) -> None:
    """Unmap the pages a read of a memory-mapped shard brought in: they stay in the OS page cache
    (a re-read is fast) but stop counting in this process's resident memory, which would
    otherwise grow with every face ever read."""
    handle = getattr(array, "_mmap", None)
    if handle is not None and hasattr(mmap, "MADV_DONTNEED"):
        handle.madvise(mmap.MADV_DONTNEED)


# --- locks ----------------------------------------------------------------------------------

@contextmanager
def _flock(path: Path, mode: int) -> Iterator[None]:
    """An advisory lock on a file, released on leaving; unlocked where the file cannot be made."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a")
    except OSError:  # a read-only store
        yield
        return
    with handle:
        if fcntl is not None:
            try:
                fcntl.flock(handle, mode)
            except OSError:  # a file system without locks
                pass
        yield


def part_name(shard: tuple[int, int]) -> str:
    """The name of part I of N, as in shard file names: ``p<I>of<N>``."""
    return f"p{shard[0]}of{shard[1]}"


def store_lock_path(folder: Path) -> Path:
    return folder.with_name(folder.name + ".lock")


@contextmanager
def writing(folder: Path, part: str) -> Iterator[None]:
    """Held while one part is written: shared with the other parts, exclusive within the part."""
    shared = fcntl.LOCK_SH if fcntl else 0
    exclusive = fcntl.LOCK_EX if fcntl else 0
    with _flock(store_lock_path(folder), shared), _flock(folder / "locks" / f"{part}.lock", exclusive):
        yield


@contextmanager
def exclusive(folder: Path) -> Iterator[None]:
    """Held while the whole store changes (compaction, conversion): no writer runs meanwhile."""
    with _flock(store_lock_path(folder), fcntl.LOCK_EX if fcntl else 0):
        yield


# --- settings -------------------------------------------------------------------------------

def is_store(folder: Path) -> bool:
    return (Path(folder) / "store.json").is_file()


def read_settings(folder: Path) -> dict:
    """The settings in store.json; StoreError when the folder is not a store of this format."""
    try:
        meta = json.loads((Path(folder) / "store.json").read_text())
    except (OSError, ValueError) as err:
        raise StoreError(f"not a face store (no readable store.json): {folder}") from err
    if not isinstance(meta, dict) or meta.get("version") != FORMAT_VERSION or not isinstance(meta.get("settings"),
                                                                                             dict):
        raise StoreError(f"{folder} is a face store of another format than version {FORMAT_VERSION}")
    return meta["settings"]


def create(folder: Path, settings: dict) -> None:
    """Make the folder a store of these settings, or check that it is one; StoreError if it holds others."""
    if is_store(folder):
        found = read_settings(folder)
        if found != settings:
            raise StoreError(f"the face store {folder} was aligned with other settings ({found}, not {settings}); "
                             "choose another folder or delete it")
        return
    (folder / "shards").mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / "store.json", json.dumps({"version": FORMAT_VERSION, "settings": settings}) + "\n")


# --- writing --------------------------------------------------------------------------------

def _npy_header(shape: tuple[int, ...]) -> bytes:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": shape})
    return header.getvalue()


def _shard_names(folder: Path) -> list[str]:
    """The committed shards (those with an index), oldest first."""
    shards = Path(folder) / "shards"
    if not shards.is_dir():
        return []
    return sorted(p.name.removesuffix(".index.npz") for p in shards.glob("g*.index.npz")
                  if _SHARD_NAME.fullmatch(p.name.removesuffix(".index.npz")))


def _next_generation(folder: Path) -> int:
    found = (_SHARD_NAME.match(p.name.removeprefix(".tmp-")) for p in (folder / "shards").iterdir())
    return max((int(m.group(1)) for m in found if m), default=0) + 1


def remove_unfinished(folder: Path, part: str) -> None:
    """Under the part's lock: delete what a killed writer of this part left (temporary files, and
    faces or landmarks whose shard never got its index)."""
    committed = set(_shard_names(folder))
    for path in (folder / "shards").iterdir():
        match = _SHARD_NAME.search(path.name)
        if match and match.group(2) == part and (path.name.startswith(".tmp-") or match.group(0) not in committed):
            path.unlink(missing_ok=True)


class ShardWriter:
    """Append faces to new shards of one part; each full shard is committed at once, the last on close.

    Faces stream to the shard's file as they come (memory stays bounded by one face, not one
    shard); the small columns are kept until the shard is committed.
    """

    def __init__(self, folder: Path, part: str, face_shape: tuple[int, ...], shard_size: int = DEFAULT_SHARD_SIZE):
        if shard_size < 1:
            raise ValueError(f"shard size must be positive, got {shard_size}")
        if not re.fullmatch(r"\w+", part):
            raise ValueError(f"part names are letters, digits and underscores, got {part!r}")
        self.folder, self.part, self.shard_size = Path(folder), part, shard_size
        self.face_shape = tuple(face_shape)
        self.generation = _next_generation(self.folder)
        self.sequence = 0
        self.committed = 0
        self._open = None

    def _start(self) -> None:
        name = f"g{self.generation:06d}-{self.part}-{self.sequence:05d}"
        self.sequence += 1
        handle = open(self.folder / "shards" / f".tmp-{name}.faces.npy", "wb")
        handle.write(_npy_header((0, *self.face_shape)))
        self._open = {"name": name, "handle": handle, "shape": self.face_shape, "keys": [], "stats": [],
                      "detected": [], "boxes": [], "landmarks": [], "bad_keys": [], "bad_stats": []}

    def add(self, key: str, stat: Sequence[int], face: np.ndarray, detected: bool, box: np.ndarray,
            landmarks: np.ndarray) -> None:
        """One aligned face."""
        if self._open is None:
            self._start()
        shard = self._open
        if face.shape != shard["shape"] or face.dtype != np.uint8:
            raise ValueError(f"face of {key} is {face.dtype} {face.shape}, the store holds uint8 {shard['shape']}")
        shard["handle"].write(np.ascontiguousarray(face).tobytes())
        shard["keys"].append(key)
        shard["stats"].append(stat)
        shard["detected"].append(bool(detected))
        shard["boxes"].append(np.asarray(box, np.float32))
        shard["landmarks"].append(np.asarray(landmarks, np.float32))
        if len(shard["keys"]) >= self.shard_size:
            self._commit()

    def add_unreadable(self, key: str, stat: Sequence[int]) -> None:
        """A source that could not be read (remembered so that a re-run does not retry it unchanged),
        or with stat REMOVED one that is gone."""
        if self._open is None:
            self._start()
        self._open["bad_keys"].append(key)
        self._open["bad_stats"].append(stat)

    def _commit(self) -> None:
        shard, self._open = self._open, None
        shards = self.folder / "shards"
        name, n = shard["name"], len(shard["keys"])
        handle = shard["handle"]
        header = _npy_header((n, *shard["shape"]))
        if len(header) != len(_npy_header((0, *shard["shape"]))):
            raise RuntimeError("NumPy's .npy header changed length with the row count")
        handle.seek(0)
        handle.write(header)
        handle.flush()
        os.fsync(handle.fileno())
        handle.close()
        os.replace(shards / f".tmp-{name}.faces.npy", shards / f"{name}.faces.npy")
        landmarks = np.stack(shard["landmarks"]) if n else np.zeros((0, LANDMARK_POINTS, 2), np.float32)
        tmp = shards / f".tmp-{name}.landmarks.npy"
        np.save(tmp, landmarks)
        fsync(tmp)
        os.replace(tmp, shards / f"{name}.landmarks.npy")
        columns = {
            "keys": np.array([k.encode() for k in shard["keys"]], dtype=bytes if n else "S1"),
            "stats": np.array(shard["stats"], np.int64).reshape(n, 2),
            "detected": np.array(shard["detected"], bool),
            "boxes": np.array(shard["boxes"], np.float32).reshape(n, 4),
            "unreadable_keys": np.array([k.encode() for k in shard["bad_keys"]],
                                        dtype=bytes if shard["bad_keys"] else "S1"),
            "unreadable_stats": np.array(shard["bad_stats"], np.int64).reshape(len(shard["bad_keys"]), 2),
        }
        tmp = shards / f".tmp-{name}.index.npz"
        with open(tmp, "wb") as out:
            np.savez(out, **columns)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, shards / f"{name}.index.npz")  # the shard exists from here on
        fsync(shards)
        self.committed += n

    def close(self) -> None:
        """Commit the shard being written, if any."""
        if self._open is not None:
            self._commit()

    def abandon(self) -> None:
        """Drop the shard being written (its temporary file goes; committed shards stay)."""
        if self._open is not None:
            self._open["handle"].close()
            (self.folder / "shards" / f".tmp-{self._open['name']}.faces.npy").unlink(missing_ok=True)
            self._open = None


# --- reading --------------------------------------------------------------------------------

@dataclass
class StoreIndex:
    """Every live key of a store, sorted: readable ones with their shard and row, unreadable ones
    with row -1. ``shards`` names the shards that ``shard`` points into."""

    keys: np.ndarray        # (n,) bytes, sorted, unique
    stats: np.ndarray       # (n, 2) int64
    detected: np.ndarray    # (n,) bool
    boxes: np.ndarray       # (n, 4) float32
    shard: np.ndarray       # (n,) int32
    row: np.ndarray         # (n,) int64, -1 for an unreadable source
    shards: list[str]

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def readable(self) -> np.ndarray:
        """Positions of the keys with a face."""
        return np.flatnonzero(self.row >= 0)

    @property
    def unreadable(self) -> np.ndarray:
        """Positions of the keys whose source could not be read (not those removed)."""
        return np.flatnonzero((self.row < 0) & (self.stats != REMOVED).any(axis=1))

    def find(self, keys: np.ndarray) -> np.ndarray:
        """Position of each key (bytes) in the index, -1 where absent."""
        if not len(self.keys):
            return np.full(len(keys), -1, np.int64)
        at = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        return np.where(self.keys[at] == keys, at, -1)


_INDEX_COLUMNS = {"keys": 1, "stats": 2, "detected": 1, "boxes": 2, "unreadable_keys": 1, "unreadable_stats": 2}


def _read_shard_index(folder: Path, name: str) -> dict[str, np.ndarray]:
    """The columns of one shard's index.npz; DamagedShardError if it is unreadable or inconsistent."""
    file = f"{name}.index.npz"
    try:
        with np.load(folder / "shards" / file) as index:
            columns = {key: index[key] for key in _INDEX_COLUMNS}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        raise DamagedShardError(folder, name, file, f"{type(err).__name__}: {err}") from None
    rows = {key: len(columns[key]) for key in ("keys", "stats", "detected", "boxes")}
    shapes_ok = all(columns[key].ndim == ndim for key, ndim in _INDEX_COLUMNS.items()) and \
        columns["stats"].shape[1:] == (2,) and columns["boxes"].shape[1:] == (4,) and \
        columns["unreadable_stats"].shape[1:] == (2,) and \
        len(columns["unreadable_keys"]) == len(columns["unreadable_stats"])
    if len(set(rows.values())) != 1 or not shapes_ok:
        shapes = ", ".join(f"{key} {columns[key].shape}" for key in _INDEX_COLUMNS)
        raise DamagedShardError(folder, name, file, f"its columns disagree: {shapes}")
    return columns


def read_index(folder: Path) -> StoreIndex:
    """The index of all committed shards; a key in several shards is read from the newest."""
    names = _shard_names(folder)
    parts = []
    for s, name in enumerate(names):
        columns = _read_shard_index(Path(folder), name)
        n, bad = len(columns["keys"]), len(columns["unreadable_keys"])
        parts.append((np.concatenate([columns["keys"].astype(bytes), columns["unreadable_keys"].astype(bytes)]),
                      np.concatenate([columns["stats"], columns["unreadable_stats"]]),
                      np.concatenate([columns["detected"], np.zeros(bad, bool)]),
                      np.concatenate([columns["boxes"], np.full((bad, 4), np.nan, np.float32)]),
                      np.full(n + bad, s, np.int32),
                      np.concatenate([np.arange(n), np.full(bad, -1)])))
    if not parts:
        empty = np.zeros(0, bytes)
        return StoreIndex(empty, np.zeros((0, 2), np.int64), np.zeros(0, bool), np.zeros((0, 4), np.float32),
                          np.zeros(0, np.int32), np.zeros(0, np.int64), names)
    keys, stats, detected, boxes, shard, row = (np.concatenate(column) for column in zip(*parts, strict=True))
    # The last occurrence of each key wins: np.unique on the reversed keys picks it, sorted by key.
    reverse = slice(None, None, -1)
    unique, first = np.unique(keys[reverse], return_index=True)
    last = len(keys) - 1 - first
    return StoreIndex(unique, stats[last], detected[last], boxes[last], shard[last], row[last], names)


def open_column(folder: Path, shards: Sequence[str], column: str, used: np.ndarray,
                empty: np.ndarray) -> list[np.ndarray]:
    """The memory-mapped ``column`` ("faces" or "landmarks") of the shards whose positions are in
    ``used``; the others are not opened: ``empty``, a zero-row array of the column, stands in."""
    arrays = [empty] * max(len(shards), 1)
    for s in np.unique(used):
        file = f"{shards[s]}.{column}.npy"
        try:
            arrays[s] = np.load(Path(folder) / "shards" / file, mmap_mode="r")
        except (OSError, ValueError) as err:
            raise DamagedShardError(folder, shards[s], file, f"{type(err).__name__}: {err}") from None
        if arrays[s].shape[1:] != empty.shape[1:] or arrays[s].dtype != empty.dtype:
            raise DamagedShardError(folder, shards[s], file, f"it holds {arrays[s].dtype} {arrays[s].shape}, "
                                    f"not {empty.dtype} rows of {empty.shape[1:]}")
    return arrays


def remove_shard(folder: Path, name: str) -> None:
    """Delete a committed shard's files (its keys are then missing, so aligned again), under the store's
    exclusive lock."""
    with exclusive(folder):
        for column in ("index.npz", "faces.npy", "landmarks.npy"):  # the index first: it makes the shard exist
            (Path(folder) / "shards" / f"{name}.{column}").unlink(missing_ok=True)


def empty_columns(settings: dict) -> dict[str, np.ndarray]:
    """Zero-row faces and landmarks of a store's settings."""
    size = settings["output_size"]
    return {"faces": np.zeros((0, size, size, 3), np.uint8),
            "landmarks": np.zeros((0, LANDMARK_POINTS, 2), np.float32)}


def compact(folder: Path, keep: np.ndarray | None = None, shard_size: int = DEFAULT_SHARD_SIZE) -> tuple[int, int]:
    """Rewrite the live rows (all, or where the boolean ``keep`` over the index is True) into new
    full shards and delete every older shard. Returns (shards before, shards after).

    Takes the store's exclusive lock. A kill midway leaves old and new shards side by side; the
    newer rows win when read, and the next compaction removes the old ones.
    """
    folder = Path(folder)
    with exclusive(folder):
        index = read_index(folder)
        live = (np.ones(len(index), bool) if keep is None else np.asarray(keep, bool)) & \
            (index.stats != REMOVED).any(axis=1)
        used = index.shard[live & (index.row >= 0)]
        empty = empty_columns(read_settings(folder))
        faces = open_column(folder, index.shards, "faces", used, empty["faces"])
        landmarks = open_column(folder, index.shards, "landmarks", used, empty["landmarks"])
        writer = ShardWriter(folder, "compacted", empty["faces"].shape[1:], shard_size)
        rows = np.flatnonzero(live & (index.row >= 0))
        faces = RowView(faces, index.shard[rows], index.row[rows])
        landmarks = RowView(landmarks, index.shard[rows], index.row[rows])
        for start in range(0, len(rows), READ_BLOCK):
            block = slice(start, start + READ_BLOCK)
            for i, face, points in zip(rows[block], faces[block], landmarks[block], strict=True):
                writer.add(index.keys[i].decode(), index.stats[i], face, index.detected[i], index.boxes[i], points)
        for i in np.flatnonzero(live & (index.row < 0)):
            writer.add_unreadable(index.keys[i].decode(), index.stats[i])
        writer.close()
        del faces, landmarks
        for path in (folder / "shards").iterdir():
            match = _SHARD_NAME.search(path.name)
            if match and int(match.group(1)) < writer.generation:
                path.unlink()
            elif path.name.startswith(".tmp-"):
                path.unlink()
        return len(index.shards), len(_shard_names(folder))
