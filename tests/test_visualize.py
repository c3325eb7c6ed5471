"""visualize.py on a reduced set: both figures, the metrics JSON, per-epoch progress, clear errors."""
from __future__ import annotations

import json
import shutil

import keras
import pytest

import visualize
from models import get_model
from utils.benchmark_faces import benchmark_images

PEOPLE = 4
PER_PERSON = 5


@pytest.fixture(scope="module")
def reduced_faces(tmp_path_factory, lfw_root):
    root = tmp_path_factory.mktemp("faces")
    chosen = {}
    for rel in benchmark_images():
        name = rel.split("/")[0]
        if len(chosen) < PEOPLE or name in chosen:
            chosen.setdefault(name, [])
            if len(chosen[name]) < PER_PERSON:
                chosen[name].append(rel)
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(lfw_root / rel, root / rel)
    return root


def test_figures_and_metrics(reduced_faces, tmp_path, capsys):
    out = tmp_path / "results"
    assert visualize.main(["--faces", str(reduced_faces), "--models", "ang", "--out", str(out)]) == 0
    assert (out / "progress.png").stat().st_size > 10_000
    assert (out / "openface_nn4sv1.png").stat().st_size > 10_000
    metrics = json.loads((out / "visualize_metrics.json").read_text())
    assert metrics["faces"] == PEOPLE * PER_PERSON and len(metrics["people"]) == PEOPLE
    openface = metrics["models"]["openface_nn4_small2"]
    for scores in (openface["random_init"], openface["trained"], metrics["models"]["ang"]["random_init"]):
        assert 0.0 <= scores["loo_1nn_accuracy"] <= 1.0 and -1.0 <= scores["silhouette"] <= 1.0
    # The pretrained network separates these strangers far better than its random init.
    assert openface["trained"]["loo_1nn_accuracy"] >= 0.9
    assert openface["trained"]["silhouette"] > openface["random_init"]["silhouette"] + 0.1
    assert "wrote" in capsys.readouterr().out


def test_same_seed_same_numbers(reduced_faces, tmp_path):
    runs = []
    for name in ("a", "b"):
        visualize.main(["--faces", str(reduced_faces), "--models", "ang", "--no-openface", "--out", str(tmp_path / name)])
        runs.append(json.loads((tmp_path / name / "visualize_metrics.json").read_text()))
    assert runs[0] == runs[1]


def test_progress_from_checkpoints(reduced_faces, tmp_path):
    snapshots = tmp_path / "ckpt"
    snapshots.mkdir()
    for epoch in (1, 2):
        keras.utils.set_random_seed(epoch)
        get_model("ang").save_weights(snapshots / f"epoch_{epoch:03d}.weights.h5")
    out = tmp_path / "results"
    assert visualize.main(["--faces", str(reduced_faces), "--models", "ang", "--progress-from", str(snapshots),
                           "--out", str(out)]) == 0
    assert (out / "progress_ang_epochs.png").exists()
    metrics = json.loads((out / "progress_ang_epochs.json").read_text())
    assert set(metrics["models"]) == {"init", "epoch_1", "epoch_2"}


def test_wrong_paths_give_clear_errors(tmp_path, capsys):
    assert visualize.main(["--faces", str(tmp_path / "nowhere"), "--out", str(tmp_path)]) == 2
    assert "dataset folder not found" in capsys.readouterr().err
    assert visualize.main(["--faces", str(tmp_path), "--models", "ang", "--progress-from", str(tmp_path),
                           "--out", str(tmp_path)]) == 2
