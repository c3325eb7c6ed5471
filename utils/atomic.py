"""Atomic file writes: readers (and a crash at any moment) see the old file or the whole new one.

A file is written under a temporary name in its own folder, flushed to disk, then renamed
over the target with ``os.replace`` (atomic on POSIX and Windows within one file system).
"""
from __future__ import annotations

import os
import re
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


TOKEN_BYTES = 4
TEMPORARY_NAME = re.compile(rf"\.[0-9a-f]{{{2 * TOKEN_BYTES}}}\.tmp\.(.+)")  # .1a2b3c4d.tmp.<target name>


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write to; on success it replaces ``path``.

    The temporary name ends with the target's whole name, so writers that check or add
    a suffix (Keras' ``.weights.h5``, ``np.savez``'s ``.npz``, ``savefig``'s format) work.
    If the block raises, the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{secrets.token_hex(TOKEN_BYTES)}.tmp.{path.name}")
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


def stale_temporaries(folder: str | Path, name: str | None = None) -> list[Path]:
    """The temporary files ``atomic_path`` left in a folder when its process was killed (of the
    target ``name`` only, when given). Only the writer's owner can tell they are stale."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if (match := TEMPORARY_NAME.fullmatch(p.name)) and name in (None, match.group(1)))
