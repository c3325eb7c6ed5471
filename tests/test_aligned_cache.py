"""The aligned-face cache: builds, keeps no-face images as flagged crops, re-runs incrementally."""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import threading
import time

import numpy as np
import pytest
from PIL import Image

import utils.faces.cache as face_cache
from tests.test_face_store import write_old_cache
from utils.faces.cache import load_or_build, main
from utils.paths import REPO_ROOT

PEOPLE = ["Aaron_Eckhart", "Abel_Pacheco", "Aaron_Peirsol"]


@pytest.fixture()
def dataset(tmp_path, lfw_root):
    root = tmp_path / "faces"
    for name in PEOPLE:
        shutil.copytree(lfw_root / name, root / name)
    Image.fromarray(np.full((120, 120, 3), 90, np.uint8)).save(root / "Abel_Pacheco" / "blank.png")
    (root / "Aaron_Eckhart" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    return root


@pytest.fixture()
def counted_alignments(monkeypatch):
    calls = []
    original = face_cache._align_one

    def counting(path):
        calls.append(path)
        return original(path)

    monkeypatch.setattr(face_cache, "_align_one", counting)
    return calls


def test_build_flags_no_face_and_lists_unreadable(dataset, tmp_path, counted_alignments):
    data = load_or_build(dataset, out=tmp_path / "cache", workers=1, progress=False)
    real = sum(len(list((dataset / n).glob("*_*.jpg"))) for n in PEOPLE)
    assert len(data) == real + 1  # the blank image is kept, the corrupt one is not
    assert data.faces.shape == (real + 1, 96, 96, 3) and data.faces.dtype == np.uint8
    blank = data.index_of("Abel_Pacheco/blank.png")
    assert not data.detected[blank] and np.isnan(data.landmarks[blank]).all()
    assert data.detected.sum() == real
    assert data.unreadable == ["Aaron_Eckhart/corrupt.jpg"]
    assert set(data.identities) == set(PEOPLE)
    assert not np.isnan(data.landmarks[data.detected]).any()


def test_only_the_needed_images_are_aligned_and_the_rest_later(dataset, tmp_path, counted_alignments):
    """evaluate.py aligns what its protocol needs (only=...); a later full call aligns only the rest."""
    every = face_cache.list_images(dataset)
    needed = [p for p in every if p.startswith("Aaron_Peirsol/")]
    part = load_or_build(dataset, out=tmp_path / "cache", workers=1, progress=False, only=needed)
    assert part.paths == needed and len(counted_alignments) == len(needed)
    whole = load_or_build(dataset, out=tmp_path / "cache", workers=1, progress=False)
    assert set(whole.paths) | set(whole.unreadable) == set(every)
    assert len(counted_alignments) == len(every)  # the needed images were not aligned again
    assert np.array_equal(np.asarray(whole.faces[whole.index_of(needed[0])]), np.asarray(part.faces[0]))


def test_only_images_inside_identity_folders_are_listed(dataset, tmp_path):
    expected = face_cache.list_images(dataset)
    shutil.copy(dataset / "Aaron_Peirsol" / "Aaron_Peirsol_0001.jpg", dataset / "loose.jpg")
    (dataset / "Aaron_Peirsol" / "nested").mkdir()
    shutil.copy(dataset / "Aaron_Peirsol" / "Aaron_Peirsol_0001.jpg", dataset / "Aaron_Peirsol" / "nested" / "x.jpg")
    shutil.copy(dataset / "Aaron_Peirsol" / "Aaron_Peirsol_0001.jpg", dataset / "Aaron_Peirsol" / ".hidden.jpg")
    listed = face_cache.list_images(dataset)
    assert listed == expected and "loose.jpg" not in listed
    assert {p.split("/")[0] for p in listed} == set(PEOPLE)
    assert "Aaron_Peirsol/Aaron_Peirsol_0001.jpg" in listed and "Abel_Pacheco/blank.png" in listed

    only_loose = tmp_path / "loose_only"
    only_loose.mkdir()
    shutil.copy(dataset / "loose.jpg", only_loose / "loose.jpg")
    with pytest.raises(FileNotFoundError, match="no images .* in identity folders under"):
        load_or_build(only_loose, out=tmp_path / "never", workers=1, progress=False)


def test_rerun_aligns_only_new_or_changed(dataset, tmp_path, counted_alignments):
    out = tmp_path / "cache"
    first = load_or_build(dataset, out=out, workers=1, progress=False)
    counted_alignments.clear()
    again = load_or_build(dataset, out=out, workers=1, progress=False)
    assert counted_alignments == []
    assert np.array_equal(first.faces, again.faces)

    shutil.copy(dataset / "Aaron_Peirsol" / "Aaron_Peirsol_0001.jpg", dataset / "Aaron_Peirsol" / "new.jpg")
    (dataset / "Abel_Pacheco" / "blank.png").unlink()
    third = load_or_build(dataset, out=out, workers=1, progress=False)
    assert [p.split("/")[-1] for p in counted_alignments] == ["new.jpg"]
    assert "Abel_Pacheco/blank.png" not in third.paths
    row = third.index_of("Aaron_Eckhart/Aaron_Eckhart_0001.jpg")
    assert np.array_equal(third.faces[row], first.faces[first.index_of("Aaron_Eckhart/Aaron_Eckhart_0001.jpg")])


def test_an_incomplete_or_inconsistent_old_cache_is_rebuilt_with_a_message(dataset, tmp_path, capsys,
                                                                           counted_alignments):
    first = load_or_build(dataset, out=tmp_path / "store", workers=1, progress=False)
    out = tmp_path / "cache"
    write_old_cache(out, first, dataset)
    index = json.loads((out / "index.json").read_text())
    damages = {
        "lacks settings, paths, stats": lambda: (out / "index.json").write_text('{"version": 1}'),
        "paths but": lambda: (out / "index.json").write_text(json.dumps({**index, "stats": index["stats"][:-1]})),
        "faces.npy has shape": lambda: np.save(out / "faces.npy", np.asarray(first.faces)[:-1]),
        "not a JSON object": lambda: (out / "index.json").write_text("[]"),
        "format 7, not 1": lambda: (out / "index.json").write_text(json.dumps({**index, "version": 7})),
    }
    for problem, damage in damages.items():
        write_old_cache(out, first, dataset)
        damage()
        with pytest.raises(ValueError, match=f"aligned cache in {out} is damaged.*{problem}"):
            face_cache.load_cache(out)
        counted_alignments.clear()
        capsys.readouterr()
        rebuilt = load_or_build(dataset, out=out, workers=1, progress=False)
        err = capsys.readouterr().err
        assert f"aligned cache in {out} is damaged (" in err and problem in err and "building it again" in err
        assert len(counted_alignments) == len(first) + 1  # every image again, the unreadable one too
        assert rebuilt.paths == first.paths and np.array_equal(rebuilt.faces, first.faces)
        assert not (out / "index.json").exists()  # now a store


def test_broken_links_and_folders_named_like_images_are_listed_as_unreadable(dataset, tmp_path, capsys):
    (dataset / "Aaron_Eckhart" / "gone.jpg").symlink_to(tmp_path / "deleted.jpg")
    (dataset / "Abel_Pacheco" / "album.jpg").mkdir()
    out = tmp_path / "cache"
    assert main([str(dataset), "--out", str(out), "--workers", "1"]) == 0
    captured = capsys.readouterr()
    assert "gone.jpg: a broken symbolic link" in captured.err and "album.jpg: a folder" in captured.err
    assert "3 unreadable" in captured.out
    for rel in ("Aaron_Eckhart/corrupt.jpg", "Aaron_Eckhart/gone.jpg", "Abel_Pacheco/album.jpg"):
        assert f"unreadable: {rel}" in captured.out
    again = load_or_build(dataset, out=out, workers=1, progress=False)  # unchanged: not read again, still named
    assert again.unreadable == ["Aaron_Eckhart/corrupt.jpg", "Aaron_Eckhart/gone.jpg", "Abel_Pacheco/album.jpg"]
    assert ("skipped 3 unreadable image(s) under " f"{dataset}, unchanged since an earlier run found them unreadable: "
            "Aaron_Eckhart/corrupt.jpg, Aaron_Eckhart/gone.jpg, Abel_Pacheco/album.jpg") in capsys.readouterr().err


def test_parallel_build_equals_serial(dataset, tmp_path):
    serial = load_or_build(dataset, out=tmp_path / "one", workers=1, progress=False)
    parallel = load_or_build(dataset, out=tmp_path / "two", workers=2, progress=False)
    assert serial.paths == parallel.paths
    assert np.array_equal(serial.faces, parallel.faces)


def test_other_size_and_landmarks(dataset, tmp_path):
    data = load_or_build(dataset, 64, "inner_eyes_and_bottom_lip", out=tmp_path / "c", workers=1, progress=False)
    assert data.faces.shape[1:] == (64, 64, 3)


def test_command_line_reports_and_errors(dataset, tmp_path, capsys):
    assert main([str(dataset), "--out", str(tmp_path / "c"), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "no face detected in 1" in out and "unreadable: Aaron_Eckhart/corrupt.jpg" in out
    assert main([str(tmp_path / "nowhere")]) == 2
    assert "dataset folder not found" in capsys.readouterr().err


def test_default_cache_path_depends_on_every_setting(tmp_path):
    base = face_cache.default_cache_path(tmp_path, 96, "outer_eyes_and_nose")
    assert base == face_cache.default_cache_path(tmp_path, 96, "outer_eyes_and_nose", [0, 1], "hog")
    assert face_cache.default_cache_path(tmp_path, 96, "outer_eyes_and_nose", 1) == \
        face_cache.default_cache_path(tmp_path, 96, "outer_eyes_and_nose", [1])
    others = {face_cache.default_cache_path(tmp_path, 96, "outer_eyes_and_nose", [1]),
              face_cache.default_cache_path(tmp_path, 96, "outer_eyes_and_nose", [0, 1], "cnn"),
              face_cache.default_cache_path(tmp_path, 128, "outer_eyes_and_nose"),
              face_cache.default_cache_path(tmp_path, 96, "inner_eyes_and_bottom_lip")}
    assert len(others) == 4 and base not in others
    assert base.name.startswith(f"{tmp_path.name}-") and "outer_eyes_and_nose-96-" in base.name


def test_settings_get_their_own_default_folder(dataset, tmp_path, monkeypatch, counted_alignments):
    monkeypatch.setenv("FACE_CACHE_DIR", str(tmp_path / "cache"))
    load_or_build(dataset, workers=1, progress=False)
    load_or_build(dataset, workers=1, progress=False, upsample=1)
    counted_alignments.clear()
    load_or_build(dataset, workers=1, progress=False)  # the upsample=1 build did not replace this one
    assert counted_alignments == []
    assert len([p for p in (tmp_path / "cache" / "aligned").iterdir() if p.is_dir()]) == 2


def test_progress_false_prints_no_bar(dataset, tmp_path, capsys):
    load_or_build(dataset, out=tmp_path / "quiet", workers=1, progress=False)
    assert "aligning" not in capsys.readouterr().err
    load_or_build(dataset, out=tmp_path / "loud", workers=1, progress=True)
    assert "aligning faces" in capsys.readouterr().err


def test_leftovers_of_a_killed_writer_are_removed_and_shards_are_never_rewritten(dataset, tmp_path,
                                                                               counted_alignments):
    out = tmp_path / "cache"
    first = load_or_build(dataset, out=out, workers=1, progress=False, shard_size=4)
    shards = out / "shards"
    before = {p.name: p.read_bytes() for p in shards.iterdir()}
    assert len([n for n in before if n.endswith(".index.npz")]) == 3  # 11 rows and 1 unreadable in shards of 4
    # A writer of this part killed mid-shard, one killed between its renames, and a running writer of another part.
    (shards / ".tmp-g000009-p1of1-00000.faces.npy").write_bytes(b"half written")
    (shards / "g000009-p1of1-00001.faces.npy").write_bytes(b"no index yet")
    (shards / ".tmp-g000009-p2of3-00000.faces.npy").write_bytes(b"another job's")
    counted_alignments.clear()
    shutil.copy(dataset / "Aaron_Peirsol" / "Aaron_Peirsol_0001.jpg", dataset / "Aaron_Peirsol" / "new.jpg")
    again = load_or_build(dataset, out=out, workers=1, progress=False, shard_size=4)
    assert [p.split("/")[-1] for p in counted_alignments] == ["new.jpg"]
    after = {p.name: p for p in shards.iterdir()}
    assert all(after[name].read_bytes() == data for name, data in before.items())  # old shards untouched
    assert ".tmp-g000009-p2of3-00000.faces.npy" in after
    assert not {".tmp-g000009-p1of1-00000.faces.npy", "g000009-p1of1-00001.faces.npy"} & set(after)
    assert len(after) == len(before) + 3 + 1  # one new shard of three files, the other part's file
    row = again.index_of("Aaron_Peirsol/new.jpg")
    assert np.array_equal(again.faces[row], first.faces[first.index_of("Aaron_Peirsol/Aaron_Peirsol_0001.jpg")])


def test_second_builder_waits_for_the_lock_then_reuses_the_cache(dataset, tmp_path, counted_alignments):
    out = tmp_path / "cache"
    results = []
    with open(tmp_path / "cache.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process is building
        threads = [threading.Thread(target=lambda: results.append(load_or_build(dataset, out=out, workers=1,
                                                                               progress=False)))
                   for _ in range(2)]
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        assert all(thread.is_alive() for thread in threads) and counted_alignments == []
    for thread in threads:
        thread.join(timeout=120)
    assert len(results) == 2 and np.array_equal(results[0].faces, results[1].faces)
    assert len(counted_alignments) == len(results[0]) + 1  # every image aligned once (+1 unreadable)


def _worker_view() -> tuple[bool, list[int]]:
    """What a pool worker sees: whether it ignores Ctrl-C, and a module global the parent patched."""
    return signal.getsignal(signal.SIGINT) == signal.SIG_IGN, list(face_cache.DEFAULT_UPSAMPLE)


def test_worker_pool_starts_fresh_processes_that_ignore_ctrl_c(monkeypatch, ctrl_c_delivered):
    monkeypatch.setattr(face_cache, "DEFAULT_UPSAMPLE", (7,))  # a forked worker would inherit this
    with face_cache.worker_pool(1, os.getpid) as pool:
        ignores_ctrl_c, upsample = pool.apply(_worker_view)
    assert ignores_ctrl_c and upsample == [0, 1]
    assert signal.getsignal(signal.SIGINT) != signal.SIG_IGN  # the parent still handles Ctrl-C


def test_tests_keep_their_caches_out_of_the_repository():
    assert not face_cache.cache_dir().resolve().is_relative_to(REPO_ROOT)  # tests/conftest.py redirects it
