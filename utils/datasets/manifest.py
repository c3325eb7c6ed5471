"""Which files of an output folder a dataset tool wrote: the only ones it may ever delete.

A tool that fills ``OUT`` keeps ``OUT/.<tool>-files.txt``, one relative path per line,
appended as each file is written. A non-empty ``OUT`` without that list was not made by
the tool: it is refused unless the user says otherwise (``force``), and even then only
listed files are ever removed, and a folder only once it is empty.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from pathlib import Path

from utils.atomic import write_text_atomic
from utils.datasets.folders import DatasetError


class OutputManifest:
    """The files a tool wrote under ``out_dir``, as relative POSIX paths."""

    def __init__(self, out_dir: Path, tool: str):
        self.out_dir = out_dir
        self.path = out_dir / f".{tool}-files.txt"
        text = self.path.read_text(encoding="utf-8") if self.path.is_file() else ""
        self._files = {line for line in text.splitlines() if line}
        self._lock = threading.Lock()  # add() is called from download threads

    @classmethod
    def claim(cls, out_dir: str | Path, tool: str, force: bool = False) -> OutputManifest:
        """The manifest of ``out_dir`` (created empty for a new or empty folder).

        A non-empty folder without this tool's manifest raises `DatasetError`, unless
        ``force``: then it is used, and what it held before is never touched.
        """
        out_dir = Path(out_dir)
        if out_dir.exists() and not out_dir.is_dir():
            raise DatasetError(f"{out_dir} is a file, not a folder")
        manifest = cls(out_dir, tool)
        if not manifest.path.is_file():
            present = sorted(p.name for p in out_dir.iterdir()) if out_dir.is_dir() else []
            if present and not force:
                shown = ", ".join(present[:5]) + (f" and {len(present) - 5} more" if len(present) > 5 else "")
                raise DatasetError(
                    f"{out_dir} is not empty ({shown}) and was not written by this tool (no {manifest.path.name}); "
                    f"choose an empty or new folder, or pass --force to add to it (files it did not write are "
                    f"never deleted)")
            out_dir.mkdir(parents=True, exist_ok=True)
            manifest.path.touch()
        return manifest

    def __contains__(self, relpath: str) -> bool:
        return relpath in self._files

    def __iter__(self):
        return iter(sorted(self._files))

    def add(self, relpath: str) -> None:
        """Record a file before it is put in place (a crash then leaves at most a listed, missing file)."""
        with self._lock:
            if relpath in self._files:
                return
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(relpath + "\n")
            self._files.add(relpath)

    def delete(self, relpaths: Iterable[str]) -> int:
        """Delete the listed ones among relpaths (others are left alone) and their folders once empty;
        returns how many files were deleted."""
        deleted = 0
        folders = set()
        for relpath in relpaths:
            if relpath not in self._files:
                continue
            target = self.out_dir / relpath
            if target.is_file() and not target.is_symlink():
                target.unlink()
                deleted += 1
            self._files.discard(relpath)
            folders.add(target.parent)
        for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
            if folder != self.out_dir:
                try:
                    os.rmdir(folder)  # only when empty: another person's files keep their folder
                except OSError:
                    pass
        write_text_atomic(self.path, "".join(f"{p}\n" for p in sorted(self._files)))
        return deleted
