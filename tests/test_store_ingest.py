"""Streamed MS-Celeb TSV ingest into the face store, --shard I/N as separate processes, a SIGKILL mid-ingest."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import utils.faces.cache as face_cache
import utils.faces.tsv_ingest as tsv_ingest
from utils.datasets.msceleb import TsvFace, write_tsv
from utils.faces.cache import load_cache, load_or_build, load_or_build_tsv
from utils.faces.tsv_ingest import line_ranges
from utils.paths import REPO_ROOT

PEOPLE = {"Aaron_Peirsol": 4, "Ari_Fleischer": 5, "Abdullah_Gul": 3}


@pytest.fixture()
def tree(tmp_path, lfw_root):
    root = tmp_path / "tree"
    for name, count in PEOPLE.items():
        (root / name).mkdir(parents=True)
        for image in sorted((lfw_root / name).glob("*.jpg"))[:count]:
            shutil.copy(image, root / name / image.name)
    return root


@pytest.fixture()
def tsv(tree, tmp_path):
    """The tree as an MS-Celeb TSV (MID = folder, rank = position), plus a corrupt line."""
    lines: list[TsvFace | str] = [TsvFace(mid=person.name, face_id=image.stem, image=image.read_bytes(), rank=rank)
                                  for person in sorted(tree.iterdir())
                                  for rank, image in enumerate(sorted(person.glob("*.jpg")), 1)]
    lines.insert(3, "m.0bad\t1\tonly three columns")
    return write_tsv(tmp_path / "faces.tsv", lines)


def same_store(a, b) -> None:
    assert a.paths == b.paths and a.unreadable == b.unreadable
    np.testing.assert_array_equal(np.asarray(a.faces), np.asarray(b.faces))
    np.testing.assert_array_equal(a.detected, b.detected)
    np.testing.assert_array_equal(a.boxes, b.boxes)
    np.testing.assert_array_equal(np.asarray(a.landmarks), np.asarray(b.landmarks))


def test_tsv_is_aligned_straight_into_the_store_like_its_folder_tree(tree, tsv, tmp_path, monkeypatch, capsys):
    from_tree = load_or_build(tree, out=tmp_path / "tree-store", workers=1, progress=False)
    calls = []
    align = face_cache._align_line
    monkeypatch.setattr(face_cache, "_align_line", lambda item: calls.append(item[0]) or align(item))
    from_tsv = load_or_build_tsv(tsv, out=tmp_path / "tsv-store", workers=1, progress=False, shard_size=5)
    assert len(calls) == 13 and from_tsv.unreadable == [f"~corrupt/{tsv.read_bytes().index(b'm.0bad')}"]
    assert [p.split("/")[0] for p in from_tsv.paths] == [p.split("/")[0] for p in from_tree.paths]
    assert from_tsv.paths[0] == "Aaron_Peirsol/1-Aaron_Peirsol_0001.jpg"
    np.testing.assert_array_equal(np.asarray(from_tsv.faces), np.asarray(from_tree.faces))
    np.testing.assert_array_equal(from_tsv.detected, from_tree.detected)
    assert not list(tmp_path.rglob("*.jpg.tmp")) and not (tmp_path / "tsv-store" / "Abdullah_Gul").exists()

    calls.clear()  # a whole ingest of this version of the file: not even scanned again
    capsys.readouterr()
    same_store(load_or_build_tsv(tsv, out=tmp_path / "tsv-store", workers=1, progress=False), from_tsv)
    assert calls == []
    assert (f"skipped 1 unreadable line(s) of {tsv}, unchanged since an earlier run found them unreadable: "
            f"{from_tsv.unreadable[0]}") in capsys.readouterr().err  # the corrupt line is named again
    with open(tsv, "a") as out:  # one line added: only it is aligned
        out.write(open(tsv).readline().replace("\t1\t", "\t9\t", 1))
    grown = load_or_build_tsv(tsv, out=tmp_path / "tsv-store", workers=1, progress=False)
    assert calls == [from_tsv.paths[0].replace("/1-", "/9-")] and len(grown) == len(from_tsv) + 1


def test_byte_ranges_of_the_parts_cover_every_line_once(tsv):
    whole = list(line_ranges(tsv, (1, 1)))
    for parts in (2, 3, 7, 40):
        split = [line for i in range(1, parts + 1) for line in line_ranges(tsv, (i, parts))]
        assert split == whole


def cache_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "utils.faces.cache", *args, "--workers", "1", "--shard-size", "2"]


def run_parts(source, out, parts: int) -> None:
    """The N parts as N processes at once, as N jobs of a scheduler would run them."""
    jobs = [subprocess.Popen(cache_command(str(source), "--out", str(out), "--shard", f"{i}/{parts}"),
                             cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in range(1, parts + 1)]
    for job in jobs:
        out_text, err_text = job.communicate(timeout=600)
        assert job.returncode == 0, err_text
        assert "part" in out_text


@pytest.mark.parametrize("kind", ["tree", "tsv"])
def test_three_processes_make_the_store_one_process_makes(kind, tree, tsv, tmp_path):
    source = tree if kind == "tree" else tsv
    build = load_or_build if kind == "tree" else load_or_build_tsv
    one = build(source, out=tmp_path / "one", workers=1, progress=False, shard_size=2)
    run_parts(source, tmp_path / "three", 3)
    names = [p.name for p in (tmp_path / "three" / "shards").glob("g*.index.npz")]
    assert {n.split("-")[1] for n in names} == {"p1of3", "p2of3", "p3of3"}  # every part wrote shards
    same_store(load_cache(tmp_path / "three"), one)
    if kind == "tsv":  # every part done: loading for training does not scan the file again
        assert tsv_ingest.ingested_whole(tmp_path / "three", tsv)


def test_sigkill_during_ingest_loses_at_most_the_shard_being_written(tmp_path, lfw_root, monkeypatch):
    root = tmp_path / "many"
    shutil.copytree(lfw_root / "Alejandro_Toledo", root / "Alejandro_Toledo")  # 39 images, shards of 2
    reference = load_or_build(root, out=tmp_path / "reference", workers=1, progress=False)
    out = tmp_path / "killed"
    job = subprocess.Popen(cache_command(str(root), "--out", str(out)), cwd=REPO_ROOT,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while len(list(out.glob("shards/g*.index.npz"))) < 3:
        assert job.poll() is None and time.monotonic() < deadline, "the ingest ended before it was killed"
        time.sleep(0.02)
    os.kill(job.pid, signal.SIGKILL)
    job.wait(timeout=60)
    survived = load_cache(out)
    committed = len(list((out / "shards").glob("g*.index.npz")))
    assert len(survived) == 2 * committed and 6 <= len(survived) < len(reference)
    rows = [reference.index_of(p) for p in survived.paths]
    np.testing.assert_array_equal(np.asarray(survived.faces), np.asarray(reference.faces)[rows])

    calls = []
    align = face_cache._align_one
    monkeypatch.setattr(face_cache, "_align_one", lambda path: calls.append(path) or align(path))
    finished = load_or_build(root, out=out, workers=1, progress=False, shard_size=2)
    assert len(calls) == len(reference) - len(survived)  # only what the kill lost is aligned again
    same_store(finished, reference)
    assert not [p for p in (out / "shards").iterdir() if p.name.startswith(".tmp-")]
