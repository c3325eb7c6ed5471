"""What the entry scripts print: TensorFlow's start-up lines filtered out, and progress bars that
suit both a terminal (a live bar) and a log file (a plain line every PLAIN_INTERVAL seconds)."""
from __future__ import annotations

import os
import sys
import tempfile
from typing import Any, TextIO

from tqdm import tqdm

PLAIN_INTERVAL = 20.0  # seconds between progress lines when stderr is not a terminal
# Lines TensorFlow's C++ runtime writes to stderr while it is imported, whatever TF_CPP_MIN_LOG_LEVEL says.
TENSORFLOW_NOISE = ("All log messages before absl::InitializeLog()", "oneDNN custom operations are on",
                    "cpu_feature_guard.cc", "To enable the following instructions",
                    "rebuild TensorFlow with the appropriate compiler flags")


def import_tensorflow_quietly(verbose: bool = False) -> None:
    """Import TensorFlow with its start-up lines (oneDNN, CPU features, absl) kept off stderr;
    everything else it writes is passed on. Shown in full with ``verbose`` or when the user's own
    TF_CPP_MIN_LOG_LEVEL is 0."""
    if "tensorflow" in sys.modules:
        return
    if verbose or os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "0":
        import tensorflow  # noqa: F401
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # runtime INFO and WARNING lines after the import
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode(errors="replace").splitlines(keepends=True)
            sys.stderr.write("".join(line for line in lines if not any(n in line for n in TENSORFLOW_NOISE)))
            sys.stderr.flush()
    import absl.logging

    absl.logging.set_verbosity(absl.logging.ERROR)


class PlainLines:
    """A file for tqdm that turns its carriage-return redraws into whole lines (for log files)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        line = text.replace("\r", "").rstrip()
        if line:
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(iterable: Any = None, **options: Any) -> tqdm:
    """tqdm on stderr: a live bar on a terminal; elsewhere a plain line at most every PLAIN_INTERVAL s."""
    if not options.get("disable") and not sys.stderr.isatty():
        options = {"mininterval": PLAIN_INTERVAL, "maxinterval": PLAIN_INTERVAL, "ncols": 160,
                   "file": PlainLines(sys.stderr), **options}
    return tqdm(iterable, **options)
