"""visualize.py on a reduced set: both figures, the metrics JSON, per-epoch progress, clear errors."""
from __future__ import annotations

import json
import shutil

import keras
import pytest

import visualize
from models import get_model
from utils.evaluation.benchmark_faces import benchmark_images

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
        visualize.main(["--faces", str(reduced_faces), "--models", "ang", "--no-openface",
                        "--out", str(tmp_path / name)])
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


TRAINING_METADATA = {
    "architecture": "ang", "embedding_size": 128, "input_size": 96,
    "training": {"wall_hours": 1.52, "hardware": "AMD EPYC (2 cores)", "images_seen": 640_000,
                 "best_validation": {"val_accuracy": 0.79, "val_auc": 0.87, "epoch": 5.0}},
    "lfw_view2": {"accuracy": 0.8123, "accuracy_std": 0.0151, "auc": 0.88, "threshold": 1.05},
    "lfw_view2_unseen": {"accuracy": 0.8, "accuracy_std": 0.02, "auc": 0.8561, "threshold": 1.0},
}


@pytest.fixture()
def weights_dir(tmp_path, monkeypatch):
    monkeypatch.setattr("models.weights.WEIGHTS_DIR", tmp_path / "weights")
    (tmp_path / "weights").mkdir()
    return tmp_path / "weights"


def test_trained_panel_reports_the_training_record(reduced_faces, tmp_path, weights_dir):
    keras.utils.set_random_seed(1)
    get_model("ang").save_weights(weights_dir / "ang.weights.h5")
    (weights_dir / "ang.json").write_text(json.dumps(TRAINING_METADATA))
    out = tmp_path / "results"
    assert visualize.main(["--faces", str(reduced_faces), "--models", "ang", "--no-openface", "--out", str(out)]) == 0
    trained = json.loads((out / "visualize_metrics.json").read_text())["models"]["ang"]["trained"]
    assert trained["title"] == "ang: trained 1.5 h on AMD EPYC (2 cores), 640k images"
    # Full View 2 is left out for a model trained here: its folds hold the people it trained on.
    assert trained["lines"] == ["LFW View 1 accuracy 0.790", "View 2 AUC, unseen people 0.856"]
    assert 0.0 <= trained["loo_1nn_accuracy"] <= 1.0


@pytest.mark.parametrize("damage, message", [
    ({"ang.weights.h5": b"not an HDF5 file"}, "cannot load weights"),
    ({"ang.json": b'{"input_size": 9'}, "ang.json is damaged"),
])
def test_damaged_weights_or_metadata_give_a_clear_error(reduced_faces, tmp_path, weights_dir, capsys, damage,
                                                        message):
    get_model("ang").save_weights(weights_dir / "ang.weights.h5")
    for name, data in damage.items():
        (weights_dir / name).write_bytes(data)
    code = visualize.main(["--faces", str(reduced_faces), "--models", "ang", "--no-openface", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


@pytest.mark.parametrize("broken", ["ensure_lfw", "fill_benchmark_faces"])
def test_benchmark_faces_that_cannot_be_filled_give_a_clear_error(tmp_path, monkeypatch, capsys, lfw_root, broken):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", "benchmark_faces/Ariel_Sharon")

    monkeypatch.setattr("utils.evaluation.figures.ensure_lfw", lambda root=None: lfw_root)
    monkeypatch.setattr(f"utils.evaluation.figures.{broken}", refuse)
    assert visualize.main(["--models", "ang", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "cannot fill benchmark_faces/" in err and "Permission denied" in err and "Traceback" not in err


def test_ctrl_c_exits_130(monkeypatch, capsys, tmp_path):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr("utils.evaluation.figures.draw_figures", interrupted)
    assert visualize.main(["--out", str(tmp_path)]) == 130
    assert capsys.readouterr().err.strip() == "interrupted"


def test_trained_panel_describes_the_kept_weights_not_the_whole_run(reduced_faces, tmp_path, weights_dir):
    get_model("ang").save_weights(weights_dir / "ang.weights.h5")
    record = json.loads(json.dumps(TRAINING_METADATA))
    record["training"].update(weights_wall_hours=0.26, weights_images_seen=134_400)
    (weights_dir / "ang.json").write_text(json.dumps(record))
    out = tmp_path / "results"
    assert visualize.main(["--faces", str(reduced_faces), "--models", "ang", "--no-openface", "--out", str(out)]) == 0
    trained = json.loads((out / "visualize_metrics.json").read_text())["models"]["ang"]["trained"]
    assert trained["title"] == "ang: trained 16 min on AMD EPYC (2 cores), 134k images"  # under 1 h: minutes
