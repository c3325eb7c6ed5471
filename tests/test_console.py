"""Entry scripts start fast and quiet: --help without TensorFlow, no TensorFlow start-up lines (in
the benchmarks either), progress bars as plain lines in log files."""
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


def run_as_a_user(tmp_path: Path, *command: str) -> subprocess.CompletedProcess:
    """An entry script in a real process, as a user starts it: no TF_CPP_MIN_LOG_LEVEL, stores and runs
    in tmp_path."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env.update(FACE_CACHE_DIR=str(tmp_path / "cache"), FACE_RUNS_DIR=str(tmp_path / "runs"))
    proc = subprocess.run([sys.executable, *command], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def test_a_default_training_run_prints_no_tensorflow_start_up_lines(tmp_path, shared_data):
    from tests.test_train import celeba_tree

    tree = celeba_tree(tmp_path / "faces", shared_data, people=4, images=2)
    proc = run_as_a_user(tmp_path, "train.py", "--model", "ang", "--data", str(tree), "--epochs", "1",
                         "--steps-per-epoch", "1", "--batch-identities", "2", "--images-per-identity", "2",
                         "--no-validation")
    assert "finished 1 steps" in proc.stdout
    assert not noise_lines(proc.stderr + proc.stdout)


def test_a_default_visualize_run_prints_no_tensorflow_start_up_lines(tmp_path, lfw_root):
    from utils.evaluation.benchmark_faces import benchmark_images

    people: dict[str, list[str]] = {}
    for image in benchmark_images():
        people.setdefault(image.split("/")[0], []).append(image)
    for images in list(people.values())[:3]:
        for image in images[:3]:
            (tmp_path / "faces" / image).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / "faces" / image).symlink_to(lfw_root / image)
    proc = run_as_a_user(tmp_path, "visualize.py", "--faces", str(tmp_path / "faces"), "--models", "ang",
                         "--no-openface", "--out", str(tmp_path / "out"))
    assert (tmp_path / "out" / "progress.png").exists()
    assert not noise_lines(proc.stderr + proc.stdout)


@pytest.mark.parametrize("script", sorted(p.name for p in (REPO / "benchmarks").glob("*.py")))
def test_benchmark_help_prints_no_tensorflow_start_up_lines(tmp_path, script):
    proc = run_as_a_user(tmp_path, f"benchmarks/{script}", "--help")
    assert "usage:" in proc.stdout
    assert not noise_lines(proc.stderr + proc.stdout)
