"""Batch embedding, the LFW evaluation module, the dlib ResNet embedder and evaluate.py.

Runs on a small LFW-like tree (real LFW photos of four people plus a blank "person" whose
images have no face) with its own View 1 / View 2 protocol files.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import cv2
import keras
import numpy as np
import pytest
from PIL import Image

import evaluate
import utils.evaluation.dlib_resnet as dlib_resnet
from models import get_model
from models.layers import L2Normalize
from utils.datasets.lfw import MissingImagesError
from utils.embedding import embed_faces
from utils.evaluation.verification import evaluate_lfw
from utils.faces.align import centre_crop
from utils.faces.cache import load_or_build
from utils.paths import REPO_ROOT, cache_dir

PEOPLE = ["George_W_Bush", "Colin_Powell", "Tony_Blair", "Serena_Williams"]
BLANK = "Blank_Face"
# View 2: two folds of three matched + three mismatched pairs.
VIEW2 = ["2\t3",
         "George_W_Bush\t1\t2", "Colin_Powell\t1\t2", "Tony_Blair\t1\t2",
         "George_W_Bush\t1\tColin_Powell\t3", "Tony_Blair\t3\tSerena_Williams\t1", "Blank_Face\t1\tGeorge_W_Bush\t3",
         "Serena_Williams\t1\t2", "George_W_Bush\t2\t3", "Blank_Face\t1\t2",
         "Colin_Powell\t1\tTony_Blair\t1", "Serena_Williams\t3\tGeorge_W_Bush\t1",
         "Colin_Powell\t2\tSerena_Williams\t2"]
DEV_TRAIN = ["3", "George_W_Bush\t1\t3", "Colin_Powell\t2\t3", "Serena_Williams\t2\t3",
             "George_W_Bush\t2\tTony_Blair\t2", "Colin_Powell\t1\tSerena_Williams\t3", "Blank_Face\t2\tTony_Blair\t1"]
DEV_TEST = ["2", "Tony_Blair\t2\t3", "Blank_Face\t1\t2",
            "Serena_Williams\t1\tColin_Powell\t3", "George_W_Bush\t3\tTony_Blair\t3"]
N_IMAGES = 14  # 3 per person, 2 blank


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, lfw_root):
    """(lfw folder, protocol folder, aligned cache) with caches kept under a temporary folder."""
    base = tmp_path_factory.mktemp("tiny_lfw")
    root, protocol = base / "lfw", base / "protocol"
    for name in PEOPLE:
        (root / name).mkdir(parents=True)
        for n in (1, 2, 3):
            shutil.copy(lfw_root / name / f"{name}_{n:04d}.jpg", root / name)
    (root / BLANK).mkdir()
    for n in (1, 2):
        Image.fromarray(np.full((250, 250, 3), 60 * n, np.uint8)).save(root / BLANK / f"{BLANK}_{n:04d}.jpg")
    protocol.mkdir()
    for name, lines in (("pairs.txt", VIEW2), ("pairsDevTrain.txt", DEV_TRAIN), ("pairsDevTest.txt", DEV_TEST)):
        (protocol / name).write_text("\n".join(lines) + "\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FACE_CACHE_DIR", str(base / "cache"))
        aligned = load_or_build(root, workers=1, progress=False)
        yield root, protocol, aligned


def one_hot_identity(aligned, rows):
    """A perfect embedder: each identity its own unit vector."""
    names = sorted(set(aligned.identities))
    out = np.zeros((len(rows), len(names)), np.float32)
    for i, row in enumerate(rows):
        out[i, names.index(aligned.identities[row])] = 1
    return out


@pytest.fixture(scope="module")
def small_model():
    face = keras.Input((96, 96, 3))
    x = keras.layers.Conv2D(4, 5, strides=4, activation="relu")(face)
    x = keras.layers.Flatten()(x)
    return keras.Model(face, L2Normalize()(keras.layers.Dense(8)(x)))


def test_embed_faces_batches_resizes_and_flips(small_model):
    rng = np.random.default_rng(0)
    faces = rng.integers(0, 256, (7, 96, 96, 3), dtype=np.uint8)
    whole = embed_faces(small_model, faces)
    assert whole.shape == (7, 8) and whole.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(whole, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(embed_faces(small_model, faces, batch_size=3), whole, atol=1e-5)
    expected = small_model.predict_on_batch(faces.astype(np.float32) / 255)
    np.testing.assert_allclose(whole, expected, atol=1e-5)

    mirrored = faces[:, :, ::-1]
    flipped = embed_faces(small_model, faces, batch_size=4, flip=True)
    both = whole + embed_faces(small_model, mirrored)
    np.testing.assert_allclose(flipped, both / np.linalg.norm(both, axis=1, keepdims=True), atol=1e-5)
    np.testing.assert_allclose(embed_faces(small_model, mirrored, flip=True), flipped, atol=1e-5)
    assert not np.allclose(flipped, whole, atol=1e-3)

    large = rng.integers(0, 256, (3, 130, 130, 3), dtype=np.uint8)
    resized = np.stack([cv2.resize(f, (96, 96), interpolation=cv2.INTER_AREA) for f in large])
    np.testing.assert_allclose(embed_faces(small_model, large), embed_faces(small_model, resized), atol=1e-5)
    with pytest.raises(ValueError, match="uint8"):
        embed_faces(small_model, faces.astype(np.float32))


def test_evaluate_lfw_embeds_each_image_once_and_pairs_them_right(tiny):
    root, protocol, aligned = tiny
    calls = []

    def embedder(cache, rows):
        calls.append(list(rows))
        return one_hot_identity(cache, rows)

    result = evaluate_lfw(embedder, "view2", aligned=aligned, protocol_dir=protocol)
    assert len(calls) == 1 and len(calls[0]) == len(set(calls[0])) == N_IMAGES
    assert result.verification.accuracy == 1.0 and result.verification.auc == 1.0
    assert result.verification.fold_accuracies == [1.0, 1.0]
    assert (result.n_pairs, result.n_images, result.n_fallback) == (12, N_IMAGES, 2)
    assert result.fallback_images == [f"{BLANK}/{BLANK}_0001.jpg", f"{BLANK}/{BLANK}_0002.jpg"]

    view1 = evaluate_lfw(one_hot_identity, "view1", lfw_root=root, protocol_dir=protocol)
    assert view1.n_pairs == 4 and view1.n_images == N_IMAGES  # DevTrain and DevTest images, each once
    assert view1.verification.accuracy == 1.0
    inverted = evaluate_lfw(lambda c, r: -one_hot_identity(c, r) + 1, "view1", aligned=aligned,
                            protocol_dir=protocol, metric="cosine")
    assert inverted.metric == "cosine" and inverted.verification.accuracy == 1.0


def test_view2_unseen_keeps_the_folds_pairs_of_dev_test_people_only(tiny, tmp_path):
    _, protocol, aligned = tiny
    shutil.copytree(protocol, tmp_path / "protocol")
    (tmp_path / "protocol" / "peopleDevTest.txt").write_text("2\nGeorge_W_Bush\t3\nColin_Powell\t3\n")
    seen = []

    def embedder(cache, rows):
        seen.extend(cache.identities[row] for row in rows)
        return one_hot_identity(cache, rows)

    result = evaluate_lfw(embedder, "view2-unseen", aligned=aligned, protocol_dir=tmp_path / "protocol")
    assert result.n_pairs == 4 and set(seen) == {"George_W_Bush", "Colin_Powell"}
    assert len(result.verification.fold_accuracies) == 2  # fold 0: three pairs, fold 1: one
    assert result.verification.auc == 1.0


def test_keras_model_runs_through_the_cache(tiny, small_model):
    _, protocol, aligned = tiny
    result = evaluate_lfw(small_model, "view1", aligned=aligned, protocol_dir=protocol, flip=True)
    assert result.flip and 0.0 <= result.verification.accuracy <= 1.0
    assert result.verification.n_pairs == 4 and len(result.verification.roc_fpr) >= 2


def test_pairs_naming_a_missing_image_fail_clearly(tiny, tmp_path):
    root, protocol, aligned = tiny
    bad = tmp_path / "protocol"
    shutil.copytree(protocol, bad)
    lines = DEV_TEST.copy()
    lines[1] = "Ghost_Person\t1\t2"
    (bad / "pairsDevTest.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(MissingImagesError, match="Ghost_Person/Ghost_Person_0001.jpg") as err:
        evaluate_lfw(one_hot_identity, "view1", lfw_root=root, protocol_dir=bad)
    assert err.value.missing == ["Ghost_Person/Ghost_Person_0001.jpg", "Ghost_Person/Ghost_Person_0002.jpg"]
    with pytest.raises(MissingImagesError, match="Ghost_Person/Ghost_Person_0002.jpg"):
        evaluate_lfw(one_hot_identity, "view1", aligned=aligned, protocol_dir=bad)


def test_dlib_descriptors_separate_people_and_are_cached(tiny, monkeypatch):
    _, _, aligned = tiny
    rows = list(range(len(aligned)))
    embedder = dlib_resnet.DlibResNetEmbedder(workers=1, progress=False)
    first = embedder(aligned, rows)
    assert first.shape == (N_IMAGES, 128) and np.isfinite(first).all()
    assert dlib_resnet.descriptor_cache_path(aligned.root).is_file()
    ids = np.array(aligned.identities)
    d = np.linalg.norm(first[:, None] - first[None], axis=2)
    people = ids != BLANK
    same = (ids[:, None] == ids[None]) & ~np.eye(len(ids), dtype=bool)
    real = people[:, None] & people[None]
    assert d[same & real].max() < 0.6 < d[~same & real & ~np.eye(len(ids), dtype=bool)].min()  # dlib's threshold

    def no_compute(*args, **kwargs):
        raise AssertionError("descriptors were recomputed")

    monkeypatch.setattr(dlib_resnet, "_describe_many", no_compute)
    np.testing.assert_array_equal(embedder(aligned, rows[::-1]), first[::-1])


@pytest.mark.parametrize("height, width", [(250, 250), (180, 301), (97, 40)])
def test_dlib_fallback_box_is_the_centre_crop_square(height, width):
    rgb = np.random.default_rng(height).integers(0, 256, (height, width, 3), dtype=np.uint8)
    box = dlib_resnet.centred_box(height, width)
    assert box.width() == box.height() and box.left() >= 0 and box.top() >= 0
    assert box.right() < width and box.bottom() < height
    region = rgb[box.top():box.bottom() + 1, box.left():box.right() + 1]
    np.testing.assert_array_equal(cv2.resize(region, (96, 96), interpolation=cv2.INTER_AREA), centre_crop(rgb, 96))


def run_cli(capsys, *args):
    code = evaluate.main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture()
def random_ang(tmp_path, monkeypatch):
    """A random-init 'ang' model whose default weights file lives in a temporary weights folder."""
    monkeypatch.setattr("models.weights.WEIGHTS_DIR", tmp_path / "weights")
    (tmp_path / "weights").mkdir()
    get_model("ang").save_weights(tmp_path / "weights" / "ang.weights.h5")
    return tmp_path / "weights"


def test_cli_view1_writes_json_and_roc(tiny, tmp_path, random_ang, capsys):
    root, protocol, _ = tiny
    code, out, err = run_cli(capsys, "--model", "ang", "--weights", random_ang / "ang.weights.h5", "--lfw", root,
                             "--pairs-dir", protocol, "--protocol", "view1", "--workers", 1, "--out", tmp_path / "out")
    assert code == 0, err
    record = json.loads((tmp_path / "out" / "lfw_view1_ang.json").read_text())
    assert record["protocol"] == "view1" and record["metric"] == "sqeuclidean"
    (row,) = record["results"]
    assert row["model"] == "ang" and row["n_pairs"] == 4 and row["n_images"] == N_IMAGES and row["n_fallback"] == 2
    assert 0 <= row["accuracy"] <= 1 and len(row["fold_thresholds"]) == 1
    png = tmp_path / "out" / "lfw_view1_ang_roc.png"
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert str(png) in out and "ang" in out and "± 0.0000" in out
    assert not (random_ang / "ang.json").exists()  # only View 2 results go into the metadata


def test_cli_view2_two_models_and_metadata(tiny, tmp_path, random_ang, capsys):
    root, protocol, _ = tiny
    code, out, err = run_cli(capsys, "--model", "ang", "dlib_resnet", "--lfw", root, "--pairs-dir", protocol,
                             "--workers", 1, "--out", tmp_path / "out")
    assert code == 0, err
    record = json.loads((tmp_path / "out" / "lfw_view2_ang+dlib_resnet.json").read_text())
    ang, dlib_row = record["results"]
    assert (ang["model"], dlib_row["model"]) == ("ang", "dlib_resnet")
    assert len(ang["fold_accuracies"]) == 2 and ang["n_pairs"] == 12
    assert dlib_row["accuracy"] >= 10 / 12
    metadata = json.loads((random_ang / "ang.json").read_text())["lfw_view2"]
    assert metadata["accuracy"] == ang["accuracy"] and metadata["threshold"] == ang["threshold"]
    assert metadata["auc"] == ang["auc"] and metadata["accuracy_std"] == ang["accuracy_std"]
    table = [line for line in out.splitlines() if line.startswith(("ang ", "dlib_resnet "))]
    assert len(table) == 2
    assert "lfw_view2_unseen" not in json.loads((random_ang / "ang.json").read_text())


def test_cli_view2_unseen_stores_its_own_metadata_entry(tiny, tmp_path, random_ang, capsys):
    root, protocol, _ = tiny
    shutil.copytree(protocol, tmp_path / "protocol")
    (tmp_path / "protocol" / "peopleDevTest.txt").write_text("2\nGeorge_W_Bush\t3\nColin_Powell\t3\n")
    code, out, err = run_cli(capsys, "--model", "ang", "--lfw", root, "--pairs-dir", tmp_path / "protocol",
                             "--protocol", "view2-unseen", "--workers", 1, "--out", tmp_path / "out")
    assert code == 0, err
    metadata = json.loads((random_ang / "ang.json").read_text())
    assert "lfw_view2" not in metadata and metadata["lfw_view2_unseen"]["n_pairs"] == 4
    assert "stored the view2-unseen figures in the metadata of ang" in out


@pytest.mark.parametrize("change, message", [
    (lambda a: a.update(lfw=a["tmp"] / "nowhere"), "LFW folder not found"),
    (lambda a: a.update(pairs=a["tmp"]), "protocol file not found"),
    (lambda a: a.update(weights=a["tmp"] / "none.weights.h5"), "weights file not found"),
    (lambda a: a.update(model=["ang", "nn2"]), "--weights needs exactly one registry model"),
])
def test_cli_bad_input_exits_2(tiny, tmp_path, random_ang, capsys, change, message):
    root, protocol, _ = tiny
    a = {"tmp": tmp_path, "lfw": root, "pairs": protocol, "weights": random_ang / "ang.weights.h5", "model": ["ang"]}
    change(a)
    code, _, err = run_cli(capsys, "--model", *a["model"], "--weights", a["weights"], "--lfw", a["lfw"],
                           "--pairs-dir", a["pairs"], "--out", tmp_path / "out")
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_cli_missing_weights_in_a_real_process(tmp_path):
    proc = subprocess.run([sys.executable, "evaluate.py", "--model", "nn2", "--weights", tmp_path / "nn2.weights.h5",
                           "--protocol", "view1", "--out", tmp_path], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert "weights file not found" in proc.stderr and "Traceback" not in proc.stderr


def test_a_default_run_prints_no_tensorflow_start_up_lines(tiny, tmp_path):
    """A real process, as a user starts it (no TF_CPP_MIN_LOG_LEVEL), through the --pairs path."""
    from tests.test_console import noise_lines, run_as_a_user
    from tests.test_datasets import by_file_names

    root, _, _ = tiny
    (tmp_path / "tiny-pairs.txt").write_text(by_file_names(VIEW2))
    proc = run_as_a_user(tmp_path, "evaluate.py", "--model", "ang", "--random-init", "--workers", "1",
                         "--pairs", str(tmp_path / "tiny-pairs.txt"), "--root", str(root),
                         "--out", str(tmp_path / "out"))
    assert "tiny" in proc.stdout
    assert not noise_lines(proc.stderr + proc.stdout)


def test_cli_random_init_is_reproducible_and_stores_nothing(tiny, tmp_path, random_ang, capsys):
    root, protocol, _ = tiny
    records = []
    for run in ("a", "b"):
        code, _, err = run_cli(capsys, "--model", "ang", "--random-init", "--lfw", root, "--pairs-dir", protocol,
                               "--workers", 1, "--out", tmp_path / run)
        assert code == 0, err
        records.append(json.loads((tmp_path / run / "lfw_view2_ang_random_init.json").read_text()))
    assert records[0]["results"][0]["weights"] is None
    assert records[0]["results"][0]["roc_tpr"] == records[1]["results"][0]["roc_tpr"]
    assert not (random_ang / "ang.json").exists()
    code, _, err = run_cli(capsys, "--model", "ang", "--random-init", "--weights", random_ang / "ang.weights.h5")
    assert code == 2 and "--random-init" in err


def test_cli_aligns_at_the_input_size_the_weights_were_trained_at(tiny, tmp_path, random_ang, capsys):
    root, protocol, _ = tiny
    get_model("ang", input_size=128).save_weights(random_ang / "ang.weights.h5")
    (random_ang / "ang.json").write_text(json.dumps({"architecture": "ang", "input_size": 128}))
    code, _, err = run_cli(capsys, "--model", "ang", "--lfw", root, "--pairs-dir", protocol, "--protocol", "view1",
                           "--workers", 1, "--out", tmp_path / "out")
    assert code == 0, err
    aligned = [p.name for p in (cache_dir() / "aligned").iterdir() if p.is_dir()]
    assert any("-outer_eyes_and_nose-128-" in name for name in aligned), aligned


def test_cli_unwritable_output_is_a_clear_error(tiny, tmp_path, random_ang, capsys):
    root, protocol, _ = tiny
    (tmp_path / "out").write_text("a file where the results folder should go")
    code, out, err = run_cli(capsys, "--model", "ang", "--weights", random_ang / "ang.weights.h5", "--lfw", root,
                             "--pairs-dir", protocol, "--protocol", "view1", "--workers", 1, "--out", tmp_path / "out")
    assert code == 2 and "cannot write the results" in err and str(tmp_path / "out") in err
    assert "Traceback" not in err and "JSON:" not in out


def test_cli_ctrl_c_exits_130_without_a_traceback(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluate, "_evaluate", interrupted)
    code, _, err = run_cli(capsys, "--model", "ang", "--protocol", "view1")
    assert code == 130 and err.strip() == "interrupted"


# --- any pairs file over any tree (--pairs) ------------------------------------------------------

def test_lfw_pairs_txt_scores_the_same_through_pairs_as_through_view2(tiny, tmp_path, random_ang, capsys):
    root, protocol, _ = tiny
    common = ["--model", "ang", "--lfw", root, "--workers", 1, "--out", tmp_path / "out"]
    assert run_cli(capsys, *common, "--pairs-dir", protocol)[0] == 0
    code, out, err = run_cli(capsys, *common, "--pairs", protocol / "pairs.txt", "--name", "lfw-pairs")
    assert code == 0, err
    view2 = json.loads((tmp_path / "out" / "lfw_view2_ang.json").read_text())
    pairs = json.loads((tmp_path / "out" / "lfw-pairs_ang.json").read_text())
    assert pairs["protocol"] == "lfw-pairs" and "lfw-pairs pairs" in out
    drop = ("protocol", "seconds", "wall_seconds")
    assert {k: v for k, v in pairs["results"][0].items() if k not in drop} == \
        {k: v for k, v in view2["results"][0].items() if k not in drop}
    assert pairs["results"][0]["n_pairs"] == 12
    assert "lfw_pairs" not in json.loads((random_ang / "ang.json").read_text())  # LFW protocols only


def test_pairs_by_file_name_on_another_tree(tiny, tmp_path, capsys):
    from tests.test_datasets import by_file_names
    from utils.evaluation.verification import evaluate_pairs_file

    root, protocol, aligned = tiny
    (tmp_path / "tiny-test-pairs.txt").write_text(by_file_names(VIEW2))
    result = evaluate_pairs_file(one_hot_identity, tmp_path / "tiny-test-pairs.txt", root, aligned=aligned)
    numbered = evaluate_lfw(one_hot_identity, "view2", aligned=aligned, protocol_dir=protocol)
    assert result.protocol == "tiny-test" and result.n_pairs == 12
    assert result.verification.to_dict() == numbered.verification.to_dict()


def test_celeba_test_pairs_resolve_and_score_in_the_evaluator(shared_data):
    """The committed CelebA test pairs, read by evaluate's parser, name real images; a perfect embedder
    scores 100% (the faces are stand-ins: no alignment needed to check the pairing)."""
    from utils.datasets.folders import list_identity_images
    from utils.datasets.holdout import TEST_PAIRS
    from utils.evaluation.verification import evaluate_pairs_file
    from utils.faces.cache import AlignedFaces

    root = shared_data / "celeba-subset"
    paths = [f"{image.identity}/{image.path.name}" for image in list_identity_images(root)]
    n = len(paths)
    fake = AlignedFaces(root, np.zeros((n, 1, 1, 3), np.uint8), paths, np.ones(n, bool),
                        np.zeros((n, 4), np.float32), np.zeros((n, 68, 2), np.float32))
    result = evaluate_pairs_file(one_hot_identity, TEST_PAIRS, root, aligned=fake)
    assert result.protocol == "celeba-test" and result.n_pairs == 6000 and result.n_images == 584
    assert result.verification.accuracy == 1.0 and len(result.verification.fold_accuracies) == 10


def test_cli_pairs_json_holds_no_absolute_paths(tiny, tmp_path, random_ang, capsys, monkeypatch):
    root, protocol, _ = tiny
    monkeypatch.setattr("utils.paths.REPO_ROOT", tmp_path)  # the weights and the output count as in the repo
    code, _, err = run_cli(capsys, "--model", "ang", "--pairs", protocol / "pairs.txt", "--root", root,
                           "--workers", 1, "--out", tmp_path / "out")
    assert code == 0, err
    record = json.loads((tmp_path / "out" / "pairs_ang.json").read_text())
    assert (record["pairs_file"], record["root"], record["roc_png"]) == ("pairs.txt", "lfw", "out/pairs_ang_roc.png")
    assert record["results"][0]["weights"] == "weights/ang.weights.h5"


@pytest.mark.parametrize("args, message", [
    (["--pairs", "PAIRS", "--protocol", "view1"], "--pairs replaces --protocol"),
    (["--root", "ROOT"], "--root and --name go with --pairs"),
    (["--pairs", "NOWHERE"], "pairs file not found"),
    (["--pairs", "DEVTEST"], "2 or more folds"),
    (["--pairs", "PAIRS", "--root", "NOWHERE"], "image folder not found"),
    (["--pairs", "PAIRS", "--name", "../up"], "--name may hold"),
])
def test_cli_bad_pairs_options_exit_2(tiny, tmp_path, random_ang, capsys, args, message):
    root, protocol, _ = tiny
    values = {"PAIRS": protocol / "pairs.txt", "ROOT": root, "NOWHERE": tmp_path / "nowhere",
              "DEVTEST": protocol / "pairsDevTest.txt"}
    code, _, err = run_cli(capsys, "--model", "ang", "--lfw", root, "--out", tmp_path / "out",
                           *[values.get(a, a) for a in args])
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_help_imports_no_tensorflow():
    code = "import sys, evaluate\ntry:\n    evaluate.main(['--help'])\nexcept SystemExit:\n    pass\n" \
           "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'TensorFlow imported'"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--pairs FILE" in proc.stdout


def test_cli_makes_openfaces_default_weights_on_first_use(tiny, tmp_path, capsys, monkeypatch):
    import models.openface_weights

    made = []

    def make(path):
        made.append(path)
        get_model("openface_nn4_small2").save_weights(path)

    monkeypatch.setattr("models.weights.WEIGHTS_DIR", tmp_path / "weights")
    (tmp_path / "weights").mkdir()
    monkeypatch.setattr(models.openface_weights, "make_default_weights", make)
    root, protocol, _ = tiny
    code, _, err = run_cli(capsys, "--model", "openface_nn4_small2", "--lfw", root, "--pairs-dir", protocol,
                           "--protocol", "view1", "--workers", 1, "--out", tmp_path / "out")
    assert code == 0, err
    assert made == [tmp_path / "weights" / "openface_nn4_small2_v1.weights.h5"]
