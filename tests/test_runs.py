"""Run folders, their lock, stale temporaries, publishing a run, and paths free of this machine's folders."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_evaluate import tiny as tiny_lfw  # noqa: F401 (a fixture: a small LFW-like tree)
from utils.paths import BENCHMARK_RESULTS_DIR, REPO_ROOT, WEIGHTS_DIR, portable_path
from utils.training.publish import publish_run
from utils.training.runs import RunFolderError, RunInUseError, RunLock, remove_stale_temporaries, resolve_run


def make_run(root: Path, name: str, mtime: int) -> Path:
    run = root / "ang" / name
    run.mkdir(parents=True)
    (run / "latest").write_text("step-2\n")
    os.utime(run / "latest", ns=(mtime, mtime))
    return run


def test_a_run_writes_in_its_own_folder_and_resume_finds_it(tmp_path):
    new = resolve_run("ang", "ang.weights.h5", root=tmp_path)
    assert new.run_dir.parent == tmp_path / "ang" and re.fullmatch(r"\d{8}T\d{6}Z", new.run_dir.name)
    assert new.checkpoint_dir == new.log_dir == new.run_dir and new.weights_out == new.run_dir / "ang.weights.h5"
    assert not new.weights_out.resolve().is_relative_to(WEIGHTS_DIR.resolve())  # the shipped weights stay
    new.run_dir.mkdir(parents=True)
    assert resolve_run("ang", "ang.weights.h5", root=tmp_path).run_dir.name == new.run_dir.name + "-2"
    assert resolve_run("ang", "ang.weights.h5", run_name="try.1", root=tmp_path).run_dir == tmp_path / "ang" / "try.1"
    with pytest.raises(RunFolderError, match="no run of ang"):
        resolve_run("ang", "ang.weights.h5", resume="", root=tmp_path)

    older, newer = make_run(tmp_path, "b-older", 10**18), make_run(tmp_path, "a-newer", 2 * 10**18)
    assert resolve_run("ang", "ang.weights.h5", resume="", root=tmp_path).run_dir == newer
    resumed = resolve_run("ang", "ang.weights.h5", resume=str(older), root=tmp_path)
    assert resumed.weights_out == older / "ang.weights.h5"
    assert resolve_run("ang", "ang.weights.h5", resume="", run_name="b-older", root=tmp_path).run_dir == older
    with pytest.raises(RunFolderError, match="not a run folder"):
        resolve_run("ang", "ang.weights.h5", resume=str(tmp_path), root=tmp_path)
    with pytest.raises(RunFolderError, match="letters, digits"):
        resolve_run("ang", "ang.weights.h5", run_name="../weights", root=tmp_path)
    # The explicit folders of earlier versions keep working, for a new run and for --resume.
    legacy = resolve_run("ang", "ang.weights.h5", resume="", checkpoint_dir=tmp_path / "ckpt",
                         log_dir=tmp_path / "logs", weights_out=tmp_path / "w.weights.h5", root=tmp_path)
    assert (legacy.checkpoint_dir, legacy.log_dir, legacy.weights_out) == (
        tmp_path / "ckpt", tmp_path / "logs", tmp_path / "w.weights.h5")


def test_only_our_stale_temporaries_are_removed(tmp_path):
    run, weights = tmp_path / "run", tmp_path / "weights"
    (run / "step-9.tmp").mkdir(parents=True)
    (run / "step-9.tmp" / "model.weights.h5").write_bytes(b"half")
    weights.mkdir()
    ours = [run / ".deadbeef.tmp.epoch_012.weights.h5", run / ".0badcafe.tmp.metrics.csv",
            weights / ".12345678.tmp.ang.weights.h5", weights / ".12345678.tmp.ang.json"]
    theirs = [run / "notes.tmp", run / ".deadbeef.tmp", run / "step-9", weights / ".12345678.tmp.nn2.weights.h5",
              weights / ".XYZ45678.tmp.ang.json"]
    for path in ours + theirs:
        path.write_bytes(b"x")
    removed = remove_stale_temporaries(run, run, weights / "ang.weights.h5")
    assert sorted(removed) == sorted([run / "step-9.tmp", *ours])
    assert all(p.exists() for p in theirs) and not any(p.exists() for p in [run / "step-9.tmp", *ours])


def run_train(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "train.py", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=240, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **env}, check=False)


def test_a_second_process_on_a_run_folder_exits_2_naming_the_first_and_cleans_nothing(tmp_path):
    """A real process holds the run folder's lock: train.py on the same folder exits 2 naming it and
    leaves the folder alone; once the holder is killed, the lock is free and the next start removes
    the temporaries the killed run left."""
    env = {"FACE_RUNS_DIR": str(tmp_path / "runs")}
    run = tmp_path / "runs" / "ang" / "shared"
    run.mkdir(parents=True)
    stale = [run / "step-3.tmp", run / ".deadbeef.tmp.epoch_001.weights.h5"]
    stale[0].mkdir()
    stale[1].write_bytes(b"half")
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom utils.training.runs import RunLock\n"
                               "with RunLock(sys.argv[1]):\n    print('LOCKED', flush=True)\n    time.sleep(300)",
                               str(run)], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "LOCKED"
        args = ("--model", "ang", "--run-name", "shared", "--data", str(tmp_path / "nowhere"))
        second = run_train(*args, env=env)
        assert second.returncode == 2, second.stdout + second.stderr
        assert f"in use by another training process (pid {holder.pid} on " in second.stderr
        assert "Traceback" not in second.stderr and all(p.exists() for p in stale)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
    after = run_train(*args, env=env)
    assert after.returncode == 2 and "training data not found" in after.stderr  # got the lock, then the data
    assert not any(p.exists() for p in stale) and "left half-written by a killed run" in after.stdout


def test_publishing_copies_the_weights_and_redoes_the_lfw_figures(tmp_path, monkeypatch, tiny_lfw):  # noqa: F811
    """train.py --publish RUN_DIR: the run's weights and record replace the published ones, the
    evaluation fields are measured again (here on a tiny LFW), so recognize.py has its threshold."""
    import train
    from models import get_model
    from models.weights import read_metadata, weights_path
    from utils.recognition.matching import default_threshold

    lfw, protocol, _ = tiny_lfw
    data = tmp_path / "data"
    data.mkdir()
    (data / "lfw").symlink_to(lfw)
    shutil.copytree(protocol, data / "lfw-protocol")
    (data / "lfw-protocol" / "peopleDevTest.txt").write_text("2\nGeorge_W_Bush\t3\nColin_Powell\t3\n")
    monkeypatch.setenv("FACE_DATA_DIR", str(data))
    monkeypatch.setattr("models.weights.WEIGHTS_DIR", tmp_path / "weights")
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "ang.json").write_text(json.dumps(
        {"architecture": "ang", "lfw_view2": {"threshold": 9.0, "metric": "sqeuclidean"}}))  # the old weights'
    run = tmp_path / "runs" / "ang" / "r1"
    run.mkdir(parents=True)
    get_model("ang").save_weights(run / "ang.weights.h5")
    shutil.copyfile(run / "ang.weights.h5", run / "epoch_001.weights.h5")
    (run / "ang.json").write_text(json.dumps({"architecture": "ang", "input_size": 96, "embedding_size": 128,
                                              "training": {"steps": 2, "weights_file": "ang.weights.h5"}}))
    with RunLock(run), pytest.raises(RunInUseError):  # a run still training is not published
        publish_run(run)
    assert not weights_path("ang").exists()

    assert train.main(["--publish", str(run)]) == 0
    assert weights_path("ang").read_bytes() == (run / "ang.weights.h5").read_bytes()
    metadata = read_metadata("ang")
    assert metadata["training"]["steps"] == 2 and metadata["published_from"] == "r1"
    assert metadata["lfw_view2"]["n_pairs"] == 12 and metadata["lfw_view2_unseen"]["n_pairs"] == 4
    rule = default_threshold("ang")  # the tiny LFW has nobody with 4 pictures: no impostor distances
    assert rule.impostors is None and rule.fallback == metadata["lfw_view2"]["threshold"] != 9.0
    assert (run / "lfw_view2_ang.json").is_file()  # the evaluation's record stays with the run
    assert train.main(["--publish", str(tmp_path / "runs")]) == 2  # not a run folder


def test_paths_are_recorded_relative_to_the_data_cache_or_repository(tmp_path, monkeypatch):
    monkeypatch.setenv("FACE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("FACE_CACHE_DIR", str(tmp_path / "cache"))
    assert portable_path(tmp_path / "data" / "lfw-protocol" / "pairs.txt") == "data:lfw-protocol/pairs.txt"
    assert portable_path(tmp_path / "cache" / "msceleb" / "x") == "cache:msceleb/x"
    assert portable_path(REPO_ROOT / "weights" / "ang.weights.h5") == "weights/ang.weights.h5"
    assert portable_path(tmp_path / "elsewhere" / "faces") == "faces"


def absolute_paths(value) -> list[str]:
    """Strings in a JSON value that name a place on some machine: /..., C:\\..., ~/..., the home folder."""
    if isinstance(value, dict):
        return [s for v in value.values() for s in absolute_paths(v)]
    if isinstance(value, list):
        return [s for v in value for s in absolute_paths(v)]
    if isinstance(value, str) and (value.startswith(("/", "~", "\\")) or re.match(r"[A-Za-z]:[\\/]", value)
                                   or str(Path.home()) in value):
        return [value]
    return []


def test_committed_results_and_metadata_hold_no_machine_paths():
    files = sorted([*WEIGHTS_DIR.glob("*.json"), *BENCHMARK_RESULTS_DIR.glob("*.json")])
    assert len(files) >= 10
    found = {f.name: paths for f in files if (paths := absolute_paths(json.loads(f.read_text())))}
    assert not found


def test_training_metadata_records_relative_paths(tmp_path, monkeypatch):
    from tests.test_train import config_for, synthetic_faces
    from utils.training.checkpoints import TrainState
    from utils.training.data import default_data, default_exclusions
    from utils.training.metadata import training_record

    config = config_for(tmp_path, data=default_data(), exclude_people=default_exclusions(),
                        weights_out=str(REPO_ROOT / "runs" / "tiny" / "r" / "tiny.weights.h5"))
    record = training_record(config, TrainState(step=3), synthetic_faces(3, 2, 0), 16)["training"]
    assert record["data"][0] == "data:lfw" and record["excluded_people_files"] == [
        "data:lfw-protocol/peopleDevTest.txt", "benchmark_faces/manifest.txt",
        "protocols/celeba-holdout-val-people.txt", "protocols/celeba-holdout-test-people.txt"]
    assert record["weights_file"] == "runs/tiny/r/tiny.weights.h5"
    assert not absolute_paths(record)
