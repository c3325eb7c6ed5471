"""Where a training run writes, and one process at a time per run folder.

Each run has its own folder, ``runs/<model>/<run-id>/`` (``utils.paths.runs_dir()``; the run id is
the UTC start time or ``--run-name``), holding its checkpoints (``step-<N>/``, ``latest``), the
epoch snapshots (``epoch_<E>.weights.h5``), the logs (``metrics.csv``, ``training_curves.png``,
``tensorboard/``) and the kept weights with their metadata (``<model>.weights.h5``, ``<model>.json``).
The published weights in weights/ change only by an explicit ``--weights-out`` or
``python train.py --publish RUN_DIR``.

A run folder is locked (``fcntl.flock`` on ``train.lock``, which records the holder's pid and
host) while a process trains in it; the lock dies with the process, so a killed run never
leaves its folder locked.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import socket
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Self

from utils.atomic import stale_temporaries
from utils.paths import runs_dir

LOCK_NAME = "train.lock"
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class RunFolderError(ValueError):
    """No run to resume, a folder that is not a run, or options that do not fit together."""


class RunInUseError(RunFolderError):
    """Another process trains in the run folder; the message names it."""


@dataclass
class RunFolders:
    """Where one run writes: its folder, and the checkpoint, log and kept-weights places in it
    (each may be moved by --checkpoint-dir, --log-dir or --weights-out)."""

    run_dir: Path
    checkpoint_dir: Path
    log_dir: Path
    weights_out: Path


def new_run_id() -> str:
    """The default run id: the UTC start time, e.g. 20261130T175200Z."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def latest_run(model: str, root: Path | None = None) -> Path | None:
    """The run of ``model`` that checkpointed last (None when it has none)."""
    pointers = [p for p in ((root or runs_dir()) / model).glob("*/latest") if p.is_file()]
    return max(pointers, key=lambda p: p.stat().st_mtime_ns).parent if pointers else None


def resolve_run(model: str, weights_name: str, run_name: str | None = None, resume: str | None = None,
                checkpoint_dir: Path | None = None, log_dir: Path | None = None,
                weights_out: Path | None = None, root: Path | None = None) -> RunFolders:
    """The folders of a run as train.py's options name them.

    ``resume`` is None (a new run), "" (``--resume`` alone: the run in --checkpoint-dir, else the
    one named by ``run_name``, else the latest run of the model) or a run folder. A new run goes
    to ``<root>/<model>/<run_name or UTC time>`` unless --checkpoint-dir names its folder.
    ``weights_name`` is the kept weights' file name (weights/<name> of the model).
    """
    root = root or runs_dir()
    if run_name is not None and not RUN_NAME.fullmatch(run_name):
        raise RunFolderError(f"--run-name {run_name!r}: use letters, digits, '.', '_' and '-' only")
    if resume:
        if run_name is not None or checkpoint_dir is not None:
            raise RunFolderError("--resume RUN_DIR names the run: leave out --run-name and --checkpoint-dir")
        run_dir = Path(resume)
        if not (run_dir / "latest").is_file():
            raise RunFolderError(f"--resume: {run_dir} is not a run folder with a checkpoint")
    elif checkpoint_dir is not None:
        run_dir = checkpoint_dir
    elif run_name is not None:
        run_dir = root / model / run_name
    elif resume == "":
        run_dir = latest_run(model, root)
        if run_dir is None:
            raise RunFolderError(f"--resume: no run of {model} in {root / model} to resume; start one without "
                                 "--resume, or give --resume RUN_DIR")
    else:
        run_id = new_run_id()
        run_dir, copy = root / model / run_id, 1
        while run_dir.exists():  # two runs started in the same second
            copy += 1
            run_dir = root / model / f"{run_id}-{copy}"
    return RunFolders(run_dir, checkpoint_dir or run_dir, log_dir or run_dir, weights_out or run_dir / weights_name)


class RunLock:
    """An exclusive lock on a run folder for this process's lifetime (use it as a context manager).
    RunInUseError, naming the holder, when another process has it."""

    def __init__(self, folder: str | Path):
        self.path = Path(folder) / LOCK_NAME
        self._fd: int | None = None

    def __enter__(self) -> Self:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode("utf-8", "replace")
            os.close(fd)
            raise RunInUseError(f"{self.path.parent} is in use by another training process "
                                f"({describe_holder(holder)}); wait for it to finish or stop it, or train "
                                "into another run folder") from None
        os.ftruncate(fd, 0)
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        os.write(fd, (json.dumps(record) + "\n").encode())
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the lock; the file stays (removing it would race a new holder)
            self._fd = None


def describe_holder(text: str) -> str:
    """'pid 123 on host h since ...' from a lock file's record."""
    try:
        record = json.loads(text)
        return f"pid {record['pid']} on {record['host']}, since {record['started']}"
    except (ValueError, KeyError, TypeError):
        return "a process that has not recorded itself yet"


def remove_stale_temporaries(checkpoint_dir: str | Path, log_dir: str | Path, weights_out: str | Path) -> list[Path]:
    """Delete what a killed run leaves half-written: ``step-*.tmp`` checkpoint folders and the
    atomic writers' temporary files (utils.atomic) in the run's checkpoint and log folders, and
    those of the kept weights and their metadata. Call it only while holding the run's lock.
    Returns what was deleted."""
    checkpoint_dir, log_dir, weights = Path(checkpoint_dir), Path(log_dir), Path(weights_out)
    stale = [p for p in checkpoint_dir.glob("step-*.tmp") if p.is_dir()] + stale_temporaries(checkpoint_dir)
    if log_dir != checkpoint_dir:
        stale += stale_temporaries(log_dir)
    for name in (weights.name, weights.name.removesuffix(".weights.h5") + ".json"):
        stale += [p for p in stale_temporaries(weights.parent, name) if p not in stale]
    for path in stale:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return stale
