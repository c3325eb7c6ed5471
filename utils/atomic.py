"""Atomic file writes: readers (and a crash at any moment) see the old file or the whole new one.

A file is written under a temporary name in its own folder, flushed to disk, then renamed
over the target with ``os.replace`` (atomic on POSIX and Windows within one file system).
"""
from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def fsync(path: str | Path) -> None:
    """Flush a written file (or a folder's entries) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write to; on success it replaces ``path``.

    The temporary name ends with the target's whole name, so writers that check or add
    a suffix (Keras' ``.weights.h5``, ``np.savez``'s ``.npz``, ``savefig``'s format) work.
    If the block raises, the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{secrets.token_hex(4)}.tmp.{path.name}")
    try:
        yield tmp
        fsync(tmp)
        os.replace(tmp, path)
        if os.name == "posix":
            fsync(path.parent)  # the rename itself
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str, encoding: str = "utf-8") -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding=encoding)
