"""The aligned-face cache: builds, keeps no-face images as flagged crops, re-runs incrementally."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

import utils.aligned_cache as aligned_cache
from utils.aligned_cache import load_or_build, main

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
    original = aligned_cache._align_one

    def counting(path):
        calls.append(path)
        return original(path)

    monkeypatch.setattr(aligned_cache, "_align_one", counting)
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
