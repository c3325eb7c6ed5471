"""Streamed ingest of an MS-Celeb-1M face TSV straight into a face store: no folder of JPEGs.

The file is read one line at a time (part I of N reads only the lines that start in its
I-th N-th of the file's bytes, so N jobs share the work without reading each other's lines);
each line goes, still encoded, to a worker process that decodes and aligns it, and the faces
stream into shards (utils/faces/store.py). Memory holds the lines in flight, one shard's small
columns and the store's index, never the file or a list of its lines.

A face's key is ``<MID>/<rank>-<FaceID>.jpg`` (the file utils/datasets/msceleb.py would export),
so its identity is the MID; its stat is (line length, CRC-32 of the line): a re-run skips the
lines stored unchanged and aligns new or changed ones. Corrupt lines (see msceleb.py) are stored
as unreadable under their key, or ``~corrupt/<byte offset>`` when the key cannot be read.

A whole-file run marks the faces of lines no longer in the file as removed. When part I of N
of a version of the file (size, modification time) is done, a marker says so; loading for
training reads the store without scanning the file once every part of one split is done.
"""
from __future__ import annotations

import os
import sys
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from utils.datasets.msceleb import _parse as parse_line
from utils.faces import store
from utils.faces.cache import (
    DEFAULT_UPSAMPLE,
    AlignedFaces,
    _align_many,
    _align_rgb,
    aligned_from_index,
    alignment_settings,
    default_cache_path,
    open_store,
    part_name,
)

REPORT_CORRUPT = 20  # corrupt lines spelled out on stderr


def line_ranges(path: Path, shard: tuple[int, int]) -> Iterator[tuple[int, bytes]]:
    """(byte offset, raw line) of the lines of part I of N: those starting in [(I-1)/N, I/N) of the bytes."""
    size = path.stat().st_size
    start, end = size * (shard[0] - 1) // shard[1], size * shard[0] // shard[1]
    with open(path, "rb") as handle:
        if start > 0:
            handle.seek(start - 1)
            handle.readline()  # the rest of the line before: it belongs to the previous part
        offset = handle.tell()
        while offset < end:
            raw = handle.readline()
            if not raw:
                return
            yield offset, raw
            offset += len(raw)


def line_key(raw: bytes, offset: int) -> str:
    """The store key of a line: ``<MID>/<rank>-<FaceID>.jpg``, or ``~corrupt/<offset>`` if unreadable."""
    fields = raw.split(b"\t", 5)
    try:
        if len(fields) == 6:
            return f"{fields[0].decode()}/{int(fields[1])}-{fields[4].decode()}.jpg"
    except ValueError:
        pass
    return f"~corrupt/{offset}"


def _align_line(item: tuple[str, tuple[int, int], bytes]) -> tuple:
    """Worker: decode and align one line: (key, stat, face, detected, box, landmarks, error)."""
    key, stat, raw = item
    try:
        face = parse_line(raw, 0, Path(key))
    except ValueError as err:
        return key, stat, None, False, None, None, str(err)
    return (key, stat, *_align_rgb(face.image), None)


def _stamp(tsv: Path) -> str:
    st = tsv.stat()
    return f"{st.st_size}-{st.st_mtime_ns}"


def _marker(folder: Path, stamp: str, shard: tuple[int, int]) -> Path:
    return folder / "parts" / f"{stamp}-{part_name(shard)}.done"


def ingested_whole(folder: Path, tsv: Path) -> bool:
    """Whether every part of some split of this version of the file is in the store."""
    stamp = _stamp(tsv)
    done = {p.name for p in (folder / "parts").glob(f"{stamp}-p*of*.done")}
    splits = {int(name.rsplit("of", 1)[1].removesuffix(".done")) for name in done}
    return any(all(_marker(folder, stamp, (i, n)).name in done for i in range(1, n + 1)) for n in splits)


def _ingest(tsv: Path, folder: Path, settings: dict, workers: int, progress: bool, shard: tuple[int, int],
            shard_size: int) -> None:
    """Under the part's lock: align the part's new or changed lines into new shards."""
    part = part_name(shard)
    store.remove_unfinished(folder, part)
    index = store.read_index(folder)
    counts = {"stored": 0}
    seen = np.zeros(len(index), bool)

    def todo() -> Iterator[tuple[str, tuple[int, int], bytes]]:
        for offset, raw in line_ranges(tsv, shard):
            if not raw.strip():
                continue
            key, stat = line_key(raw, offset), (len(raw), zlib.crc32(raw))
            at = index.find(np.array([key.encode()]))[0]
            if at >= 0:
                seen[at] = True
                if tuple(index.stats[at]) == stat:
                    counts["stored"] += 1
                    continue
            yield key, stat, raw

    writer = store.ShardWriter(folder, part, (settings["output_size"],) * 2 + (3,), shard_size)
    corrupt = []
    try:
        for key, stat, face, detected, box, points, error in _align_many(
                _align_line, todo(), settings, workers, f"aligning {tsv.name} part {shard[0]}/{shard[1]}",
                progress):
            if error:
                writer.add_unreadable(key, stat)
                corrupt.append(f"{key}: {error}")
            else:
                writer.add(key, stat, face, detected, box, points)
        if shard == (1, 1):  # a whole-file run: the faces of lines no longer in the file go
            for i in np.flatnonzero(~seen & (index.stats != store.REMOVED).any(axis=1)):
                writer.add_unreadable(index.keys[i].decode(), store.REMOVED)
    except BaseException:
        writer.abandon()
        raise
    writer.close()
    if corrupt:
        shown = "; ".join(corrupt[:REPORT_CORRUPT]) + (f"; and {len(corrupt) - REPORT_CORRUPT} more"
                                                      if len(corrupt) > REPORT_CORRUPT else "")
        print(f"{tsv}: skipped {len(corrupt)} corrupt line(s): {shown}", file=sys.stderr)
    marker = _marker(folder, _stamp(tsv), shard)
    marker.parent.mkdir(exist_ok=True)
    marker.write_text(f"{writer.committed} faces aligned, {counts['stored']} already stored\n")


def load_or_build_tsv(tsv: str | Path, output_size: int = 96, landmarks: str = "outer_eyes_and_nose",
                      out: str | Path | None = None, workers: int | None = None,
                      upsample: int | Sequence[int] | None = DEFAULT_UPSAMPLE, detector: str = "hog",
                      progress: bool = True, shard: tuple[int, int] = (1, 1),
                      shard_size: int = store.DEFAULT_SHARD_SIZE) -> AlignedFaces:
    """Aligned faces of every face of an MS-Celeb TSV (or of part I of N of it), aligning only new or
    changed lines; the result holds every face the store has. ``root`` of the result is the TSV."""
    tsv = Path(tsv)
    if not tsv.is_file():
        raise FileNotFoundError(f"MS-Celeb-1M TSV file not found: {tsv}")
    folder = Path(out) if out else default_cache_path(tsv, output_size, landmarks, upsample, detector)
    settings = alignment_settings(output_size, landmarks, upsample, detector)
    open_store(folder, settings)
    if shard != (1, 1) or not ingested_whole(folder, tsv):
        with store.writing(folder, part_name(shard)):
            _ingest(tsv, folder, settings, workers or os.cpu_count() or 1, progress, shard, shard_size)
    index = store.read_index(folder)
    if not len(index.readable) and shard == (1, 1):
        raise ValueError(f"no line of {tsv} holds a readable face")
    return aligned_from_index(folder, tsv, index, index.readable, index.unreadable)
