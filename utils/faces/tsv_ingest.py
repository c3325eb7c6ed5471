"""Reading an MS-Celeb-1M face TSV for the face store, one line at a time: no folder of JPEGs.

``utils.faces.cache.load_or_build_tsv`` streams the lines this module reads into shards: part
I of N reads only the lines that start in its I-th N-th of the file's bytes (so N jobs share the
work without reading each other's lines), and each line goes still encoded to a worker process
that decodes (:func:`decode_line`) and aligns it. Memory holds the lines in flight, one shard's
small columns and the store's index, never the file or a list of its lines.

A face's key is ``<MID>/<rank>-<FaceID>.jpg`` (the file utils/datasets/msceleb.py would export),
so its identity is the MID; its stat is (line length, CRC-32 of the line): a re-run skips the
lines stored unchanged and aligns new or changed ones. Corrupt lines (see msceleb.py) are stored
as unreadable under their key, or ``~corrupt/<byte offset>`` when the key cannot be read.
A whole-file run marks the faces of lines no longer in the file as removed. When part I of N
of a version of the file (size, modification time) is done, a marker says so; loading for
training reads the store without scanning the file once every part of one split is done.
"""
from __future__ import annotations

import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from utils.datasets.msceleb import MsCelebFace
from utils.datasets.msceleb import _parse as parse_line
from utils.faces import store

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


def _stamp(tsv: Path) -> str:
    st = tsv.stat()
    return f"{st.st_size}-{st.st_mtime_ns}"


def _marker(folder: Path, stamp: str, shard: tuple[int, int]) -> Path:
    return folder / "parts" / f"{stamp}-{store.part_name(shard)}.done"


def ingested_whole(folder: Path, tsv: Path) -> bool:
    """Whether every part of some split of this version of the file is in the store."""
    stamp = _stamp(tsv)
    done = {p.name for p in (folder / "parts").glob(f"{stamp}-p*of*.done")}
    splits = {int(name.rsplit("of", 1)[1].removesuffix(".done")) for name in done}
    return any(all(_marker(folder, stamp, (i, n)).name in done for i in range(1, n + 1)) for n in splits)


def decode_line(key: str, raw: bytes) -> MsCelebFace:
    """The face of a line; ValueError with a short reason if the line is corrupt."""
    return parse_line(raw, 0, Path(key))


class ChangedLines:
    """Iterate over (key, stat, raw line) of the lines of a part that the store lacks or holds in
    another version; afterwards ``stored`` counts the others and ``gone`` lists the index
    positions of the keys that no line of the part had."""

    def __init__(self, tsv: Path, shard: tuple[int, int], index: store.StoreIndex):
        self.tsv, self.shard, self.index = tsv, shard, index
        self.stored = 0
        self._seen = np.zeros(len(index), bool)

    def __iter__(self) -> Iterator[tuple[str, tuple[int, int], bytes]]:
        for offset, raw in line_ranges(self.tsv, self.shard):
            if not raw.strip():
                continue
            key, stat = line_key(raw, offset), (len(raw), zlib.crc32(raw))
            at = self.index.find(np.array([key.encode()]))[0]
            if at >= 0:
                self._seen[at] = True
                if tuple(self.index.stats[at]) == stat:
                    self.stored += 1
                    continue
            yield key, stat, raw

    @property
    def gone(self) -> np.ndarray:
        return np.flatnonzero(~self._seen & (self.index.stats != store.REMOVED).any(axis=1))


def corrupt_summary(tsv: Path, corrupt: list[str]) -> str:
    more = f"; and {len(corrupt) - REPORT_CORRUPT} more" if len(corrupt) > REPORT_CORRUPT else ""
    return f"{tsv}: skipped {len(corrupt)} corrupt line(s): {'; '.join(corrupt[:REPORT_CORRUPT])}{more}"


def forget_done(folder: Path) -> None:
    """Drop every part's marker (after shards were deleted): the next load scans the file again."""
    for marker in (folder / "parts").glob("*.done"):
        marker.unlink(missing_ok=True)


def mark_done(folder: Path, tsv: Path, shard: tuple[int, int], note: str) -> None:
    """Record that part I of N of this version of the file is in the store."""
    marker = _marker(folder, _stamp(tsv), shard)
    marker.parent.mkdir(exist_ok=True)
    marker.write_text(note + "\n")
