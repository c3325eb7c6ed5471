"""Training runs end to end on tiny synthetic data with a tiny network (the real ones take 20 s to trace).

The synthetic identities are smooth random colour patterns; each image of an identity is its
pattern shifted by a few pixels, with noise. A small conv net separates them within a few dozen
steps, so "the loss falls" and "validation rises above chance" can be asserted quickly.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import keras
import numpy as np
import pytest

from models.layers import L2Normalize
from utils.batching import TrainingFaces
from utils.metrics import DEFAULT_THRESHOLDS, pair_distances, train_test_verification
from utils.paths import REPO_ROOT
from utils.training import (EXIT_CODES, Checkpoints, TrainConfig, TrainingError, fit, metadata_writer,
                            read_people_file)

SIZE = 32


def synthetic_faces(identities: int, images: int, seed: int) -> TrainingFaces:
    """Identity i: a smooth random colour pattern; its images: shifted, noisy crops of it."""
    rng = np.random.default_rng(seed)
    patterns = np.kron(rng.uniform(-1, 1, size=(identities, 4, 4, 3)), np.ones((1, 12, 12, 1)))  # 48 px
    faces, labels = [], []
    for i in range(identities):
        for _ in range(images):
            dy, dx = rng.integers(0, 48 - SIZE + 1, size=2)
            face = 128 + 60 * patterns[i, dy:dy + SIZE, dx:dx + SIZE] + rng.normal(0, 12, size=(SIZE, SIZE, 3))
            faces.append(np.clip(face, 0, 255).astype(np.uint8))
            labels.append(i)
    return TrainingFaces(np.stack(faces), np.array(labels, np.int32), [f"syn/{i}" for i in range(identities)])


def tiny_model() -> keras.Model:
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same")(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(16)(x)
    return keras.Model(inputs, L2Normalize(name="l2_normalize")(x), name="tiny")


def synthetic_evaluator(seed: int = 99):
    """Verification on 20 held-out identities: every matched pair and as many mismatched ones;
    threshold chosen on half of the pairs, accuracy on the other half (like LFW View 1)."""
    labels = (held_out := synthetic_faces(20, 4, seed)).labels
    rng = np.random.default_rng(seed)
    i, j = np.triu_indices(len(labels), k=1)
    same = np.flatnonzero(labels[i] == labels[j])
    different = rng.choice(np.flatnonzero(labels[i] != labels[j]), len(same), replace=False)
    pairs = rng.permutation(np.concatenate([same, different]))
    a, b, matched = i[pairs], j[pairs], labels[i[pairs]] == labels[j[pairs]]

    def evaluate(model: keras.Model) -> dict[str, float]:
        e = np.asarray(model.predict_on_batch(held_out.faces.astype(np.float32) / 255.0))
        d = pair_distances(e[a], e[b])
        v = train_test_verification(d[::2], matched[::2], d[1::2], matched[1::2],
                                    DEFAULT_THRESHOLDS["sqeuclidean"])
        return {"accuracy": v.accuracy, "auc": v.auc, "threshold": v.threshold}

    return evaluate


def config_for(tmp: Path, **overrides) -> TrainConfig:
    settings = dict(model="tiny", data=["synthetic"], checkpoint_dir=str(tmp / "ckpt"), log_dir=str(tmp / "logs"),
                    weights_out=str(tmp / "tiny.weights.h5"), epochs=2, steps_per_epoch=12,
                    identities_per_batch=6, images_per_identity=3, image_size=SIZE, lr=3e-3, seed=1)
    settings.update(overrides)
    return TrainConfig(**settings)


def test_two_epochs_lower_the_loss_and_write_weights_logs_and_metadata(tmp_path):
    faces = synthetic_faces(30, 6, seed=0)
    config = config_for(tmp_path)
    written = []
    result = fit(config, faces, tiny_model, synthetic_evaluator(), metadata=written.append, log=lambda m: None)
    assert result.status == "completed" and result.state.step == 24
    first, second = result.state.history
    assert second["loss"] < first["loss"]
    assert min(first["val_accuracy"], second["val_accuracy"]) > 0.6  # chance: 0.5
    assert 0.0 < second["active_fraction"] <= 1.0
    # Best weights: a fresh model loaded from the file embeds like the trained one would.
    assert Path(config.weights_out).is_file()
    reloaded = tiny_model()
    reloaded.load_weights(config.weights_out)
    best_epoch = max(result.state.history, key=lambda row: row["val_accuracy"])
    assert synthetic_evaluator()(reloaded)["accuracy"] == pytest.approx(best_epoch["val_accuracy"])
    record = written[-1]
    assert record["architecture"] == "tiny" and record["input_size"] == SIZE and record["embedding_size"] == 16
    training = record["training"]
    assert training["steps"] == 24 and training["images_seen"] == 24 * 18
    assert training["mining"] == "semi-hard" and training["margin"] == 0.2 and training["lr"] == 3e-3
    assert training["best_validation"]["val_accuracy"] == best_epoch["val_accuracy"]
    assert training["final_validation"]["step"] == 24 and training["wall_hours"] > 0
    assert training["hardware"]
    logs = Path(config.log_dir)
    rows = (logs / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3 and "val_accuracy" in rows[0]
    assert (logs / "training_curves.png").stat().st_size > 1000
    assert any((logs / "tensorboard").iterdir())
    assert Checkpoints(config.checkpoint_dir).latest().name == "step-24"

    with pytest.raises(TrainingError, match="--resume"):
        fit(config, faces, tiny_model, log=lambda m: None)
    with pytest.raises(TrainingError, match="lr: 0.003 -> 0.01"):
        fit(config_for(tmp_path, lr=1e-2, resume=True), faces, tiny_model, log=lambda m: None)


# --- subprocess runs ---------------------------------------------------------------------------

def child() -> None:
    """Entry point of the subprocess runs: ``python -c 'from tests.test_train import child; child()' SPEC``."""
    spec = json.loads(sys.argv[1])
    if spec.get("logical_cpus"):
        import tensorflow as tf

        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()]
                                                   * spec["logical_cpus"])
    faces = synthetic_faces(30, 6, seed=0)
    if spec.get("check_replicas"):
        print("REPLICAS " + json.dumps(replica_labels(faces, TrainConfig(**spec["config"]))), flush=True)
    result = fit(TrainConfig(**spec["config"]), faces, tiny_model, log=lambda m: print(m, flush=True))
    print("RESULT " + json.dumps({"status": result.status, "step": result.state.step,
                                  "history": result.state.history}), flush=True)
    sys.exit(EXIT_CODES[result.status])


def replica_labels(faces: TrainingFaces, config: TrainConfig) -> dict:
    """The labels each replica of the config's strategy receives in the first step, and the whole batch's."""
    import tensorflow as tf

    from utils.batching import PKSampler, training_dataset
    from utils.training import make_strategy

    strategy = make_strategy(config.strategy)
    sampler = PKSampler(faces.labels, config.identities_per_batch, config.images_per_identity, config.seed)
    batches = strategy.distribute_datasets_from_function(
        lambda context: training_dataset(faces, sampler, 0, True, context))
    _, labels = next(iter(batches))
    return {"replicas": [t.numpy().tolist() for t in strategy.experimental_local_results(labels)],
            "batch": faces.labels[sampler.batch(0)].tolist(),
            "cpus": len(tf.config.list_logical_devices("CPU"))}


def start_child(spec: dict) -> subprocess.Popen:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-c", "from tests.test_train import child; child()", json.dumps(spec)]
    return subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def finish(process: subprocess.Popen, timeout: float = 120) -> tuple[int, str, dict | None]:
    out, _ = process.communicate(timeout=timeout)
    results = [json.loads(line[7:]) for line in out.splitlines() if line.startswith("RESULT ")]
    return process.returncode, out, results[-1] if results else None


def wait_for_line(process: subprocess.Popen, text: str, lines: list[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if text in line:
            return
    process.kill()
    raise AssertionError(f"child never printed {text!r}:\n{''.join(lines)}")


def weights_of(path: str) -> list[np.ndarray]:
    model = tiny_model()
    model.load_weights(path)
    return model.get_weights()


def test_killed_and_interrupted_runs_resume_exactly(tmp_path):
    """SIGKILL mid-epoch, resume, SIGTERM mid-epoch, resume: same steps, losses and weights as one run."""
    settings = dict(epochs=3, steps_per_epoch=40, identities_per_batch=8, images_per_identity=4)
    whole = start_child({"config": asdict(config_for(tmp_path / "whole", **settings))})
    parts = config_for(tmp_path / "parts", **settings)

    killed = start_child({"config": asdict(parts)})
    lines: list[str] = []
    wait_for_line(killed, "epoch 1 ", lines)
    time.sleep(0.3)
    killed.send_signal(signal.SIGKILL)
    code, out, _ = finish(killed)
    assert code == -signal.SIGKILL and "epoch 2 " not in "".join(lines) + out
    assert Checkpoints(parts.checkpoint_dir).latest().name == "step-40"

    resumed = start_child({"config": asdict(config_for(tmp_path / "parts", resume=True, **settings))})
    lines = []
    wait_for_line(resumed, "resumed from", lines)
    wait_for_line(resumed, "training tiny", lines)
    time.sleep(0.5)  # the first step (tracing) is still running: the signal lands mid-epoch
    resumed.send_signal(signal.SIGTERM)
    code, out, result = finish(resumed)
    assert code == 130, "".join(lines) + out
    assert result["status"] == "interrupted" and 40 < result["step"] < 80
    assert Checkpoints(parts.checkpoint_dir).latest().name == f"step-{result['step']}"

    code, out, finished = finish(start_child({"config": asdict(config_for(tmp_path / "parts", resume=True,
                                                                          **settings))}))
    assert code == 0, out
    code, out, reference = finish(whole)
    assert code == 0, out
    assert finished["step"] == reference["step"] == 120
    for got, want in zip(finished["history"], reference["history"], strict=True):
        assert got["step"] == want["step"] and got["images_seen"] == want["images_seen"]
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)
    for got, want in zip(weights_of(parts.weights_out), weights_of(config_for(tmp_path / "whole").weights_out)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_mirrored_strategy_on_two_logical_cpus_splits_batches_by_identity(tmp_path):
    config = config_for(tmp_path, strategy="mirrored", epochs=1, steps_per_epoch=3)
    code, out, result = finish(start_child({"config": asdict(config), "logical_cpus": 2, "check_replicas": True}))
    assert code == 0, out
    assert "2 replica(s)" in out
    assert result["status"] == "completed" and result["step"] == 3 and result["history"][0]["loss"] > 0
    split = json.loads(next(line[9:] for line in out.splitlines() if line.startswith("REPLICAS ")))
    assert split["cpus"] == 2
    first, second = split["replicas"]
    assert first + second == split["batch"]  # each replica gets its half of the P x K batch
    assert len(set(first)) == len(set(second)) == config.identities_per_batch // 2
    assert not set(first) & set(second)
    assert all(first.count(label) == config.images_per_identity for label in first)


def test_checkpoints_never_overwrite_the_one_latest_names(tmp_path):
    from utils.training import TrainState

    model, config = tiny_model(), config_for(tmp_path)
    optimizer = keras.optimizers.Adam(1e-3)
    optimizer.build(model.trainable_variables)
    checkpoints = Checkpoints(tmp_path / "ckpt")
    checkpoints.save(model, optimizer, TrainState(step=3, wall_seconds=1.0), config)
    (tmp_path / "ckpt" / "step-9.tmp").mkdir()  # what a kill during a save leaves behind
    assert checkpoints.latest().name == "step-3"
    checkpoints.save(model, optimizer, TrainState(step=3, wall_seconds=2.0), config)
    assert checkpoints.latest().name == "step-3-2"
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["latest", "step-3-2"]
    assert checkpoints.restore(model, optimizer, config).wall_seconds == 2.0


# --- stops -------------------------------------------------------------------------------------

def test_nan_loss_stops_with_a_message_and_writes_nothing(tmp_path):
    def nan_model() -> keras.Model:
        inputs = keras.Input((SIZE, SIZE, 3))
        x = keras.layers.GlobalAveragePooling2D()(inputs)
        x = keras.layers.Dense(16, kernel_initializer=keras.initializers.Constant(float("nan")))(x)
        return keras.Model(inputs, L2Normalize()(x))

    result = fit(config_for(tmp_path), synthetic_faces(12, 4, 0), nan_model, log=lambda m: None)
    assert result.status == "nan" and result.state.step == 0
    assert "loss became nan at step 1" in result.message and "--lr" in result.message
    assert not Path(config_for(tmp_path).weights_out).exists()
    assert Checkpoints(config_for(tmp_path).checkpoint_dir).latest() is None


def test_collapse_is_detected_and_stops_the_run(tmp_path):
    def constant_model() -> keras.Model:
        inputs = keras.Input((SIZE, SIZE, 3))
        x = keras.layers.GlobalAveragePooling2D()(inputs)
        x = keras.layers.Dense(16, kernel_initializer="zeros", bias_initializer="ones")(x)
        return keras.Model(inputs, L2Normalize()(x))

    config = config_for(tmp_path, collapse_patience=5, mining="batch-hard")
    result = fit(config, synthetic_faces(12, 4, 0), constant_model, log=lambda m: None)
    assert result.status == "collapsed" and result.state.step == 5
    assert "collapsed" in result.message and "--mining semi-hard" in result.message
    assert EXIT_CODES[result.status] != 0


def test_time_budget_stops_after_validating_and_checkpointing(tmp_path):
    config = config_for(tmp_path, time_budget_hours=1e-7)
    result = fit(config, synthetic_faces(12, 4, 0), tiny_model, synthetic_evaluator(), log=lambda m: None)
    assert result.status == "time-budget" and result.state.step == 1
    assert len(result.state.history) == 1 and "val_accuracy" in result.state.history[0]
    assert Path(config.weights_out).is_file()
    assert Checkpoints(config.checkpoint_dir).latest().name == "step-1"


def test_mixed_precision_keeps_a_float32_output_and_plain_weights(tmp_path):
    config = config_for(tmp_path, mixed_precision=True, epochs=1, steps_per_epoch=2)
    result = fit(config, synthetic_faces(12, 4, 0), tiny_model, log=lambda m: None)
    assert result.status == "completed"
    assert keras.mixed_precision.global_policy().name == "float32"  # restored after building
    plain = tiny_model()
    plain.load_weights(config.weights_out)
    assert np.isfinite(plain.get_weights()[0]).all()


# --- data, validation and metadata helpers -------------------------------------------------------

def test_people_files_of_both_formats_are_read(tmp_path, shared_data):
    dev_test = read_people_file(shared_data / "lfw-protocol" / "peopleDevTest.txt")
    assert len(dev_test) == 1711
    benchmark = read_people_file(shared_data / "benchmark_faces.txt")
    assert len(benchmark) == 10 and all("/" not in name for name in benchmark)
    plain = tmp_path / "people.txt"
    plain.write_text("Alice_Smith\n\nBob_Jones/Bob_Jones_0001.jpg\n")
    assert read_people_file(plain) == {"Alice_Smith", "Bob_Jones"}


def test_metadata_goes_to_the_registry_json_or_beside_custom_weights(tmp_path, monkeypatch):
    import models.weights

    monkeypatch.setattr(models.weights, "WEIGHTS_DIR", tmp_path / "weights")
    models.weights.update_metadata("ang", lfw_view2={"accuracy": 0.9})
    write = metadata_writer(config_for(tmp_path, model="ang", weights_out=str(models.weights.weights_path("ang"))))
    write({"architecture": "ang"})
    assert json.loads((tmp_path / "weights" / "ang.json").read_text()) == {
        "architecture": "ang", "lfw_view2": {"accuracy": 0.9}}
    write = metadata_writer(config_for(tmp_path, model="ang", weights_out=str(tmp_path / "run" / "x.weights.h5")))
    write({"architecture": "ang"})
    write({"training": {"steps": 3}})
    assert json.loads((tmp_path / "run" / "x.json").read_text()) == {"architecture": "ang",
                                                                     "training": {"steps": 3}}


def test_data_sources_folder_tree_aligned_cache_and_msceleb_tsv(tmp_path, shared_data, monkeypatch):
    """The three --data kinds load the same faces: a tree (aligned and cached), its cache folder, a TSV."""
    from utils.aligned_cache import default_cache_path
    from utils.datasets.msceleb import TsvFace, write_tsv
    from utils.training import load_source, load_training_data

    monkeypatch.setenv("FACE_CACHE_DIR", str(tmp_path / "cache"))
    tree = tmp_path / "tree"
    faces = []
    for person in sorted(p for p in (shared_data / "celeba-subset").iterdir() if p.is_dir())[:2]:
        (tree / person.name).mkdir(parents=True)
        for number, image in enumerate(sorted(person.glob("*.jpg"))[:2]):
            (tree / person.name / image.name).symlink_to(image)
            faces.append(TsvFace(mid=f"m.{person.name}", face_id=str(number), image=image.read_bytes()))
    from_tree = load_source(tree, 96, log=lambda m: None)
    assert len(from_tree) == 4 and from_tree.faces.shape[1:] == (96, 96, 3)
    from_cache = load_source(default_cache_path(tree, 96, "outer_eyes_and_nose"), 96)
    np.testing.assert_array_equal(from_cache.faces, from_tree.faces)
    with pytest.raises(ValueError, match="not --image-size 128"):
        load_source(default_cache_path(tree, 96, "outer_eyes_and_nose"), 128)
    tsv = write_tsv(tmp_path / "celebs.tsv", faces)
    from_tsv = load_source(tsv, 96, log=lambda m: None)
    assert sorted(set(from_tsv.identities)) == [f"m.{name}" for name in sorted(set(from_tree.identities))]
    np.testing.assert_array_equal(from_tsv.faces, from_tree.faces)
    pooled, _ = load_training_data([str(tree), str(tsv)], 96, [], 2, log=lambda m: None)
    assert pooled.num_identities == 4 and pooled.names[0].startswith("tree/")  # namespaced per source
    with pytest.raises(ValueError, match="training data not found"):
        load_source(tmp_path / "missing", 96)


def test_view1_evaluator_scores_a_model_on_the_dev_pairs(shared_data):
    from utils.aligned_cache import AlignedFaces
    from utils.datasets.lfw import load_dev_pairs, pair_images
    from utils.paths import lfw_dir
    from utils.training import view1_evaluator

    images = pair_images(load_dev_pairs("train") + load_dev_pairs("test"))
    rng = np.random.default_rng(0)
    n = len(images)
    fake = AlignedFaces(lfw_dir(), rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8), images,
                        np.ones(n, bool), np.zeros((n, 4), np.float32), np.zeros((n, 68, 2), np.float32))
    figures = view1_evaluator(fake)(tiny_model())
    assert set(figures) == {"accuracy", "auc", "threshold", "eer"}
    assert 0.4 < figures["accuracy"] < 0.6  # noise faces: chance level on the 1,000 DevTest pairs


# --- the command line ----------------------------------------------------------------------------

def run_cli(*args: str, env: dict | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "train.py", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})})


def test_cli_reports_missing_data_without_a_traceback(tmp_path):
    done = run_cli("--model", "ang", "--data", str(tmp_path / "nowhere"), "--checkpoint-dir", str(tmp_path / "c"))
    assert done.returncode == 2
    assert "error: training data not found" in done.stderr and "Traceback" not in done.stderr


def test_cli_trains_a_registry_model_on_a_folder_tree(tmp_path, shared_data):
    """python train.py on 6 celeba-subset identities (aligned on the fly): weights and metadata appear."""
    tree = tmp_path / "faces"
    people = sorted(p for p in (shared_data / "celeba-subset").iterdir() if p.is_dir())[:6]
    for person in people:
        (tree / person.name).mkdir(parents=True)
        for image in sorted(person.glob("*.jpg"))[:3]:
            (tree / person.name / image.name).symlink_to(image)
    out = tmp_path / "out" / "ang.weights.h5"
    done = run_cli("--model", "ang", "--data", str(tree), "--epochs", "1", "--steps-per-epoch", "2",
                   "--batch-identities", "4", "--images-per-identity", "2", "--no-validation",
                   "--weights-out", str(out), "--checkpoint-dir", str(tmp_path / "ckpt"),
                   "--log-dir", str(tmp_path / "logs"), env={"FACE_CACHE_DIR": str(tmp_path / "cache")})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "finished 2 steps" in done.stdout
    from models.weights import load_model

    assert load_model("ang", out).output_shape == (None, 128)
    metadata = json.loads(out.with_name("ang.json").read_text())
    assert metadata["architecture"] == "ang" and metadata["input_size"] == 96
    assert metadata["training"]["data"] == [str(tree.resolve())]
    assert metadata["training"]["steps"] == 2 and metadata["training"]["images_seen"] == 16
    assert metadata["training"]["identities"] >= 4


def test_multiworker_strategy_trains_two_local_workers_in_step(tmp_path):
    """Two processes on 127.0.0.1 with TF_CONFIG: same losses on both, only worker 0 writes files."""
    import socket

    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    workers = []
    for index in range(2):
        config = config_for(tmp_path / f"worker{index}", strategy="multiworker", epochs=1, steps_per_epoch=3,
                            identities_per_batch=8)
        os.environ["TF_CONFIG"] = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        try:
            workers.append((config, start_child({"config": asdict(config)})))
        finally:
            del os.environ["TF_CONFIG"]
    results = []
    for config, process in workers:
        code, out, result = finish(process)
        assert code == 0, out
        assert "2 replica(s)" in out
        results.append(result)
    assert results[0]["step"] == results[1]["step"] == 3
    assert results[0]["history"][0]["loss"] == pytest.approx(results[1]["history"][0]["loss"])
    assert Path(workers[0][0].weights_out).is_file() and Checkpoints(workers[0][0].checkpoint_dir).latest()
    assert not (tmp_path / "worker1").exists()
