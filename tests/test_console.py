"""Entry scripts start fast and quiet: --help without TensorFlow, no TensorFlow start-up lines,
progress bars as plain lines in log files."""
from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from utils.console import TENSORFLOW_NOISE, PlainLines, progress_bar

REPO = Path(__file__).resolve().parents[1]
HELP_WITHOUT_TENSORFLOW = """
import runpy, sys
sys.argv = [sys.argv[1], "--help"]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as exit:
    assert exit.code == 0, exit.code
heavy = sorted(m for m in ("tensorflow", "keras") if m in sys.modules)
assert not heavy, f"--help imported {heavy}"
"""


@pytest.mark.parametrize("script", ["train.py", "evaluate.py", "recognize.py", "visualize.py"])
def test_help_does_not_import_tensorflow(script):
    proc = subprocess.run([sys.executable, "-c", HELP_WITHOUT_TENSORFLOW, script], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage:" in proc.stdout


def import_in_child(verbose: bool) -> str:
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    code = ("import sys; from utils.console import import_tensorflow_quietly; "
            f"import_tensorflow_quietly({verbose}); print('after', file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stderr


def noise_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if any(noise in line for noise in TENSORFLOW_NOISE)]


def test_tensorflow_start_up_lines_are_hidden_unless_verbose():
    assert noise_lines(import_in_child(verbose=True))  # TensorFlow does print them
    quiet = import_in_child(verbose=False)
    assert not noise_lines(quiet)
    assert quiet.splitlines()[-1] == "after"  # stderr works again after the import


def test_progress_in_a_log_file_is_whole_lines_at_most_every_interval(monkeypatch):
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)  # not a terminal
    for _ in progress_bar(range(5000), desc="aligning"):
        pass
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    assert 1 <= len(lines) <= 3 and lines[-1].startswith("aligning: 100%")


def test_plain_lines_drop_empty_redraws():
    out = io.StringIO()
    writer = PlainLines(out)
    for text in ("\r", "\rstep 1", "\r\n", "\rstep 2   "):
        writer.write(text)
    assert out.getvalue() == "step 1\nstep 2\n"
