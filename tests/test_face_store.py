"""The sharded face store: row views, compaction, old single-array caches, parts written side by side."""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import threading

import numpy as np
import pytest

import utils.faces.cache as face_cache
from utils.faces import store
from utils.faces.cache import load_cache, load_or_build
from utils.faces.store import RowView

PEOPLE = ["Aaron_Eckhart", "Aaron_Peirsol"]


@pytest.fixture()
def dataset(tmp_path, lfw_root):
    root = tmp_path / "faces"
    for name in PEOPLE:
        shutil.copytree(lfw_root / name, root / name)
    return root


def test_row_view_gathers_rows_across_shards_like_numpy():
    a, b = np.arange(12).reshape(6, 2), 100 + np.arange(8).reshape(4, 2)
    view = RowView([a, b], shard=[1, 0, 0, 1, 0], row=[3, 5, 0, 1, 2])
    expected = np.stack([b[3], a[5], a[0], b[1], a[2]])
    assert view.shape == (5, 2) and len(view) == 5 and view.dtype == a.dtype
    np.testing.assert_array_equal(np.asarray(view), expected)
    np.testing.assert_array_equal(view[-1], expected[-1])
    np.testing.assert_array_equal(view[[4, 0, 0]], expected[[4, 0, 0]])
    np.testing.assert_array_equal(view[1:4], expected[1:4])
    mask = np.array([True, False, True, False, True])
    np.testing.assert_array_equal(view[mask], expected[mask])
    np.testing.assert_array_equal(view[[0, 1], 1], expected[[0, 1], 1])
    np.testing.assert_array_equal(np.asarray(view.take([2, 0])), expected[[2, 0]])
    both = RowView.concatenate([view.take([0]), np.array([[7, 7]])])
    np.testing.assert_array_equal(np.asarray(both), [b[3], [7, 7]])


def test_store_faces_are_memory_mapped_and_compaction_keeps_them(dataset, tmp_path):
    out = tmp_path / "store"
    first = load_or_build(dataset, out=out, workers=1, progress=False, shard_size=3)
    assert all(isinstance(a, np.memmap) for a in first.faces.arrays)
    faces = np.asarray(first.faces)
    (dataset / "Aaron_Peirsol" / "Aaron_Peirsol_0002.jpg").unlink()
    shards_before = len(list((out / "shards").glob("g*.index.npz")))
    assert face_cache.compact_cache(out, dataset, shard_size=100) == (shards_before, 1)
    assert sorted(p.name.split(".")[-2] for p in (out / "shards").iterdir()) == ["faces", "index", "landmarks"]
    compacted = load_cache(out)
    gone = first.index_of("Aaron_Peirsol/Aaron_Peirsol_0002.jpg")
    assert compacted.paths == first.paths[:gone] + first.paths[gone + 1:]
    np.testing.assert_array_equal(np.asarray(compacted.faces), np.delete(faces, gone, axis=0))
    np.testing.assert_array_equal(np.asarray(compacted.landmarks), np.delete(np.asarray(first.landmarks), gone, 0))


def write_old_cache(folder, built: face_cache.AlignedFaces, dataset) -> None:
    """The faces of a store as a cache of the old single-array format (faces.npy, arrays.npz, index.json)."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    np.save(folder / "faces.npy", np.asarray(built.faces))
    np.savez(folder / "arrays.npz", detected=built.detected, boxes=built.boxes, landmarks=np.asarray(built.landmarks))
    (folder / "index.json").write_text(json.dumps({
        "version": 1, "settings": face_cache.alignment_settings(), "paths": built.paths,
        "stats": [face_cache._stat_key(dataset / p) for p in built.paths], "unreadable": [], "unreadable_stats": {}}))


def test_old_single_array_cache_is_read_then_converted_without_aligning(dataset, tmp_path, monkeypatch):
    built = load_or_build(dataset, out=tmp_path / "store", workers=1, progress=False)
    old = tmp_path / "old"
    write_old_cache(old, built, dataset)
    read = load_cache(old)
    np.testing.assert_array_equal(np.asarray(read.faces), np.asarray(built.faces))

    monkeypatch.setattr(face_cache, "_align_one", lambda path: pytest.fail(f"aligned {path} again"))
    converted = load_or_build(dataset, out=old, workers=1, progress=False)
    assert store.is_store(old) and not (old / "faces.npy").exists()
    assert converted.paths == built.paths
    np.testing.assert_array_equal(np.asarray(converted.faces), np.asarray(built.faces))


def test_a_store_of_other_settings_is_refused(dataset, tmp_path):
    load_or_build(dataset, out=tmp_path / "store", workers=1, progress=False)
    with pytest.raises(store.StoreError, match="other settings"):
        load_or_build(dataset, output_size=64, out=tmp_path / "store", workers=1, progress=False)


def test_a_part_runs_while_another_part_is_being_written(dataset, tmp_path):
    out = tmp_path / "store"
    load_or_build(dataset, out=out, workers=1, progress=False, shard=(1, 3))
    results = []
    with open(store.store_lock_path(out), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH)  # what a writer of part 1 of 3 holds while it runs
        part = threading.Thread(target=lambda: results.append(
            load_or_build(dataset, out=out, workers=1, progress=False, shard=(2, 3))))
        part.start()
        part.join(timeout=300)
        assert not part.is_alive(), "part 2 of 3 waited for part 1"
    assert {p.split("-")[1] for p in os.listdir(out / "shards") if p.endswith(".index.npz")} >= {"p2of3"}


@pytest.mark.parametrize("column", ["index.npz", "faces.npy", "landmarks.npy"])
def test_a_damaged_shard_is_named_and_aligned_again(dataset, tmp_path, capsys, column):
    out = tmp_path / "store"
    first = load_or_build(dataset, out=out, workers=1, progress=False, shard_size=2)
    faces = np.asarray(first.faces)  # read before the file first maps is replaced
    damaged = sorted((out / "shards").glob(f"g*.{column}"))[1]
    data = damaged.read_bytes()
    damaged.unlink()
    damaged.write_bytes(data[:len(data) // 2])  # truncated
    with pytest.raises(store.DamagedShardError, match=f"{damaged} is damaged .*delete the files "
                                                      f"{out / 'shards' / damaged.name.split('.')[0]}\\.\\*"):
        load_cache(out)
    capsys.readouterr()
    again = load_or_build(dataset, out=out, workers=1, progress=False, shard_size=2)
    err = capsys.readouterr().err
    assert f"{damaged} is damaged" in err and "its faces are aligned again" in err
    assert not damaged.exists() and again.paths == first.paths
    np.testing.assert_array_equal(np.asarray(again.faces), faces)
    np.testing.assert_array_equal(load_cache(out).boxes, first.boxes)


def test_a_shard_index_with_disagreeing_columns_is_damaged(dataset, tmp_path):
    out = tmp_path / "store"
    load_or_build(dataset, out=out, workers=1, progress=False)
    index_file = next((out / "shards").glob("g*.index.npz"))
    with np.load(index_file) as index:
        columns = {key: index[key] for key in index.files}
    np.savez(index_file, **{**columns, "stats": columns["stats"][:-1]})
    with pytest.raises(store.DamagedShardError, match="its columns disagree: keys .*stats"):
        load_cache(out)
