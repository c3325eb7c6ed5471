"""Training runs end to end on tiny synthetic data with a tiny network (the real ones take 20 s to trace).

The synthetic identities are smooth random colour patterns; each image of an identity is its
pattern shifted by a few pixels, with noise. A small conv net separates them within a few dozen
steps, so "the loss falls" and "validation rises above chance" can be asserted quickly.
"""
from __future__ import annotations

import json
import math
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from models.layers import L2Normalize
from utils.evaluation.metrics import DEFAULT_THRESHOLDS, pair_distances, train_test_verification
from utils.paths import REPO_ROOT
from utils.training.batching import TrainingFaces
from utils.training.checkpoints import Checkpoints, ResumeError, TrainState
from utils.training.config import TrainConfig
from utils.training.data import read_people_file
from utils.training.loop import EXIT_CODES, fit
from utils.training.metadata import metadata_writer

SIZE = 32


def synthetic_faces(identities: int, images: int, seed: int, source: str = "syn") -> TrainingFaces:
    """Identity i: a smooth random colour pattern; its images: shifted, noisy crops of it,
    named <source>/<i>/<j>.png."""
    rng = np.random.default_rng(seed)
    patterns = np.kron(rng.uniform(-1, 1, size=(identities, 4, 4, 3)), np.ones((1, 12, 12, 1)))  # 48 px
    faces, labels = [], []
    for i in range(identities):
        for _ in range(images):
            dy, dx = rng.integers(0, 48 - SIZE + 1, size=2)
            face = 128 + 60 * patterns[i, dy:dy + SIZE, dx:dx + SIZE] + rng.normal(0, 12, size=(SIZE, SIZE, 3))
            faces.append(np.clip(face, 0, 255).astype(np.uint8))
            labels.append(i)
    return TrainingFaces(np.stack(faces), np.array(labels, np.int32), [f"{source}/{i}" for i in range(identities)],
                         [f"{source}/{i}/{j}.png" for i in range(identities) for j in range(images)])


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
    settings = {"model": "tiny", "data": ["synthetic"], "checkpoint_dir": str(tmp / "ckpt"),
                "log_dir": str(tmp / "logs"), "weights_out": str(tmp / "tiny.weights.h5"), "epochs": 2,
                "steps_per_epoch": 12, "identities_per_batch": 6, "images_per_identity": 3, "image_size": SIZE,
                "lr": 3e-3, "seed": 1}
    return TrainConfig(**{**settings, **overrides})


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
    best_epoch = max(result.state.history, key=lambda row: row["val_mean_auc"])
    assert synthetic_evaluator()(reloaded)["auc"] == pytest.approx(best_epoch["val_auc"])
    record = written[-1]
    assert record["architecture"] == "tiny" and record["input_size"] == SIZE and record["embedding_size"] == 16
    training = record["training"]
    assert training["steps"] == 24 and training["images_seen"] == 24 * 18
    # The record describes the saved (best) weights beside the run's totals.
    assert training["weights_step"] == best_epoch["step"] and training["weights_images_seen"] == best_epoch["step"] * 18
    assert training["weights_wall_hours"] == pytest.approx(best_epoch["wall_hours"], abs=1e-4)
    assert training["weights_file"] == "tiny.weights.h5"  # no folders of this machine (utils.paths.portable_path)
    assert training["mining"] == "semi-hard" and training["margin"] == 0.2 and training["lr"] == 3e-3
    assert training["augmentation"] == "strong"
    assert training["best_validation"]["val_auc"] == best_epoch["val_auc"]
    assert training["weights_selected_by"] == "val_mean_auc" and best_epoch["val_mean_auc"] == best_epoch["val_auc"]
    assert training["lr_schedule"] == "cosine" and first["lr"] > second["lr"] == pytest.approx(3e-5)
    assert training["final_validation"]["step"] == 24 and training["wall_hours"] > 0
    assert training["hardware"]
    logs = Path(config.log_dir)
    rows = (logs / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3 and "val_accuracy" in rows[0]
    assert (logs / "training_curves.png").stat().st_size > 1000
    assert any((logs / "tensorboard").iterdir())
    assert Checkpoints(config.checkpoint_dir).latest().name == "step-24"

    with pytest.raises(ResumeError, match="--resume"):
        fit(config, faces, tiny_model, log=lambda m: None)
    with pytest.raises(ResumeError, match="lr: 0.003 -> 0.01"):
        fit(config_for(tmp_path, lr=1e-2, resume=True), faces, tiny_model, log=lambda m: None)
    other = synthetic_faces(30, 6, seed=0, source="other")  # as many faces and identities, other images
    with pytest.raises(ResumeError, match="other faces"):
        fit(config_for(tmp_path, resume=True), other, tiny_model, log=lambda m: None)
    # A checkpoint written before fingerprints resumes when the counts match (nothing left to train here).
    state_file = Checkpoints(config.checkpoint_dir).latest() / "state.json"
    saved = json.loads(state_file.read_text())
    del saved["state"]["pool_fingerprint"]
    state_file.write_text(json.dumps(saved))
    assert fit(config_for(tmp_path, resume=True), faces, tiny_model, log=lambda m: None).status == "completed"
    with pytest.raises(ResumeError, match="other faces"):
        fit(config_for(tmp_path, resume=True), synthetic_faces(30, 5, seed=0), tiny_model, log=lambda m: None)
    # So does one from before --augmentation, which saved a switch (on = mild).
    state_file = Checkpoints(config.checkpoint_dir).latest() / "state.json"
    saved = json.loads(state_file.read_text())
    saved["config"]["augmentation"] = True
    state_file.write_text(json.dumps(saved))
    with pytest.raises(ResumeError, match="augmentation: 'mild' -> 'strong'"):
        fit(config_for(tmp_path, resume=True), faces, tiny_model, log=lambda m: None)
    assert fit(config_for(tmp_path, resume=True, augmentation="mild"), faces, tiny_model,
               log=lambda m: None).status == "completed"


# --- subprocess runs ---------------------------------------------------------------------------

def child() -> None:
    """Entry point of the subprocess runs: ``python -c 'from tests.test_train import child; child()' SPEC``."""
    spec = json.loads(sys.argv[1])
    if spec.get("logical_cpus"):
        import tensorflow as tf

        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()]
                                                   * spec["logical_cpus"])
    if spec.get("step_markers"):
        print_a_line_after_every_step()
    faces = synthetic_faces(30, 6, seed=0)
    config = TrainConfig(**spec["config"])
    if spec.get("compare_replicas"):
        print("REPLICAS " + json.dumps(one_step_on_two_replicas_and_on_one_device(faces, config)), flush=True)
    result = fit(config, faces, tiny_model, log=lambda m: print(m, flush=True))
    print("RESULT " + json.dumps({"status": result.status, "step": result.state.step, "message": result.message,
                                  "history": result.state.history}), flush=True)
    sys.exit(EXIT_CODES[result.status])


def print_a_line_after_every_step() -> None:
    """Make fit print ``STEP`` after each training step, so a test can signal it at a known point."""
    import utils.training.loop

    make_train_step = utils.training.loop.make_train_step

    def make_marked_step(*args):
        step = make_train_step(*args)

        def marked(iterator):
            results = step(iterator)
            print("STEP", flush=True)
            return results

        return marked

    utils.training.loop.make_train_step = make_marked_step


def one_step_on_two_replicas_and_on_one_device(faces: TrainingFaces, config: TrainConfig) -> dict:
    """One SGD step of make_train_step under the mirrored strategy, and the same step computed on one
    device from the same weights and the replicas' own batch shares: each replica mines triplets in
    (or computes the margin-softmax loss of) its share, the loss is the mean of the shares' losses
    and the gradient the mean of theirs."""
    import tensorflow as tf

    from utils.training.batching import PKSampler, training_dataset
    from utils.training.loop import make_strategy, make_train_step, trained_variables
    from utils.training.losses import ClassCosines, get_loss

    sampler = PKSampler(faces.labels, config.identities_per_batch, config.images_per_identity, config.seed)
    mirrored, default = make_strategy("mirrored"), make_strategy("default")
    models, heads, optimizers = [], [], []
    for strategy in (mirrored, default):
        with strategy.scope():
            models.append(tiny_model())
            heads.append(None if config.loss == "triplet" else ClassCosines(faces.num_identities))
            if heads[-1] is not None:
                heads[-1].build(models[-1].output_shape)
            optimizers.append(keras.optimizers.SGD(0.5))  # the update is the gradient, scaled
            optimizers[-1].build(trained_variables(models[-1], heads[-1]))
    mirrored_model, reference = models
    reference.set_weights(mirrored_model.get_weights())
    if heads[0] is not None:
        heads[1].set_weights(heads[0].get_weights())
    before = [v.numpy() for v in trained_variables(reference, heads[1])]

    batches = mirrored.distribute_datasets_from_function(
        lambda context: training_dataset(faces, sampler, 0, "mild", context))
    images, labels = next(iter(batches))
    shares = list(zip(mirrored.experimental_local_results(images), mirrored.experimental_local_results(labels),
                      strict=True))
    loss = float(make_train_step(mirrored_model, optimizers[0], mirrored, config, heads[0])(iter(batches))[0])

    loss_fn = get_loss(config, heads[1])
    with tf.GradientTape() as tape:
        reference_loss = tf.add_n([loss_fn(y, reference(x, training=True))[0] for x, y in shares]) / len(shares)
    variables = trained_variables(reference, heads[1])
    grads = tape.gradient(reference_loss, variables)
    optimizers[1].apply_gradients(zip(grads, variables, strict=True))
    updates = [(m.numpy() - b, r.numpy() - b) for m, r, b in zip(trained_variables(mirrored_model, heads[0]),
                                                                 variables, before, strict=True)]
    return {"replicas": [y.numpy().tolist() for _, y in shares], "batch": faces.labels[sampler.batch(0)].tolist(),
            "cpus": len(tf.config.list_logical_devices("CPU")), "loss": loss, "reference_loss": float(reference_loss),
            "largest_update": max(float(np.abs(r).max()) for _, r in updates),
            "largest_update_difference": max(float(np.abs(m - r).max()) for m, r in updates)}


class Child:
    """A subprocess whose output lines a thread collects, so that every wait honours its timeout."""

    def __init__(self, command: list[str], env: dict | None = None):
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1", **(env or {})}
        self.process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._ended = False
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self._queue.put(line)
        self._queue.put(None)

    def _next_line(self, deadline: float) -> str | None:
        """The next line, or None once the output ended or the deadline passed."""
        if self._ended:
            return None
        try:
            line = self._queue.get(timeout=max(deadline - time.monotonic(), 0.0))
        except queue.Empty:
            return None
        if line is None:
            self._ended = True
        else:
            self.lines.append(line)
        return line

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, count: int = 1, timeout: float = 120) -> None:
        """Return once ``count`` more lines containing ``text`` came; kill the child and fail otherwise."""
        deadline = time.monotonic() + timeout
        while count:
            line = self._next_line(deadline)
            if line is None:
                self.process.kill()
                raise AssertionError(f"the child did not print {text!r} within {timeout} s:\n{self.output}")
            count -= text in line

    def finish(self, timeout: float = 120) -> tuple[int, str, dict | None]:
        """Exit code, whole output and the last RESULT line's JSON, once the child has exited."""
        deadline = time.monotonic() + timeout
        while self._next_line(deadline) is not None:
            pass
        try:
            code = self.process.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise AssertionError(f"the child did not end within {timeout} s:\n{self.output}") from None
        results = [json.loads(line[7:]) for line in self.lines if line.startswith("RESULT ")]
        return code, self.output, results[-1] if results else None


def start_child(spec: dict, env: dict | None = None) -> Child:
    return Child([sys.executable, "-c", "from tests.test_train import child; child()", json.dumps(spec)], env)


def weights_of(path: str, build: Callable[[], keras.Model] = tiny_model) -> list[np.ndarray]:
    model = build()
    model.load_weights(path)
    return model.get_weights()


def assert_same_weights(a: str | Path, b: str | Path) -> None:
    for x, y in zip(weights_of(a), weights_of(b), strict=True):
        np.testing.assert_array_equal(x, y)


def test_the_kept_weights_are_the_epoch_with_the_best_auc_not_the_best_accuracy(tmp_path):
    # View 1 accuracy uses a threshold fit on people that training saw, so it can fall while
    # AUC rises: epoch 1 has the higher accuracy, epoch 2 the higher AUC and is the one kept.
    figures = iter([{"accuracy": 0.90, "auc": 0.80}, {"accuracy": 0.70, "auc": 0.85}])
    config = config_for(tmp_path)
    written = []
    result = fit(config, synthetic_faces(30, 6, seed=0), tiny_model, lambda model: next(figures),
                 metadata=written.append, log=lambda m: None)
    assert result.state.best["step"] == 24 and result.state.best["val_auc"] == 0.85
    assert written[-1]["training"]["weights_step"] == 24
    final = Checkpoints(config.checkpoint_dir).latest() / "model.weights.h5"
    assert_same_weights(config.weights_out, final)


def test_resume_keeps_the_best_auc_of_the_history_even_if_another_rule_kept_other_weights(tmp_path):
    # Epoch 1 has the higher AUC; pretend an older rule kept epoch 2 (the run's last weights).
    figures = iter([{"accuracy": 0.70, "auc": 0.85}, {"accuracy": 0.90, "auc": 0.80}])
    config = config_for(tmp_path)
    faces = synthetic_faces(30, 6, seed=0)
    fit(config, faces, tiny_model, lambda model: next(figures), log=lambda m: None)
    checkpoints = Checkpoints(config.checkpoint_dir)
    state_file = checkpoints.latest() / "state.json"
    saved = json.loads(state_file.read_text())
    saved["state"]["best"] = saved["state"]["history"][-1]
    state_file.write_text(json.dumps(saved))
    shutil.copyfile(checkpoints.latest() / "model.weights.h5", config.weights_out)

    written, messages = [], []
    result = fit(config_for(tmp_path, resume=True), faces, tiny_model, lambda model: next(figures),
                 metadata=written.append, log=messages.append)
    assert result.status == "completed" and result.state.step == 24 and len(result.state.history) == 2
    assert result.state.best["step"] == 12 and written[-1]["training"]["weights_step"] == 12
    assert any("kept weights: step 12" in m for m in messages)
    assert_same_weights(config.weights_out, Path(config.checkpoint_dir) / "epoch_001.weights.h5")
    # Resumed with another --weights-out, the checkpoint already naming the best epoch: it is
    # written there too.
    saved["state"]["best"] = saved["state"]["history"][0]
    state_file.write_text(json.dumps(saved))
    other = tmp_path / "other.weights.h5"
    fit(config_for(tmp_path, resume=True, weights_out=str(other)), faces, tiny_model, lambda model: next(figures),
        log=lambda m: None)
    assert other.read_bytes() == Path(config.weights_out).read_bytes()


def test_the_kept_weights_maximise_the_mean_auc_of_both_validation_domains(tmp_path):
    # Epoch 1 is better on LFW View 1, epoch 2 on the mean of View 1 and the CelebA validation half.
    figures = iter([{"auc": 0.90, "celeba_auc": 0.70, "celeba_accuracy": 0.6},
                    {"auc": 0.85, "celeba_auc": 0.80, "celeba_accuracy": 0.7}])
    config = config_for(tmp_path)
    written, messages = [], []
    result = fit(config, synthetic_faces(30, 6, seed=0), tiny_model, lambda model: next(figures),
                 metadata=written.append, log=messages.append)
    first, second = result.state.history
    assert first["val_mean_auc"] == pytest.approx(0.80) and second["val_mean_auc"] == pytest.approx(0.825)
    assert result.state.best["step"] == 24
    training = written[-1]["training"]
    assert training["weights_step"] == 24 and training["weights_selected_by"] == "val_mean_auc"
    assert "CelebA" in training["weights_selection_rule"] and "View 1" in training["weights_selection_rule"]
    assert "View 1 AUC 0.8500, CelebA val AUC 0.8000, mean AUC 0.8250 (best)" in messages[-1]
    header = (Path(config.log_dir) / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"val_auc", "val_celeba_auc", "val_celeba_accuracy", "val_mean_auc"} <= set(header)


def test_a_run_resumed_from_a_view1_only_checkpoint_keeps_choosing_by_view1(tmp_path):
    """A checkpoint written before the CelebA validation (no selected_by, rows without val_mean_auc)
    resumes under its own rule, View 1 AUC: its old epochs stay comparable with the new ones."""
    config = config_for(tmp_path)
    faces = synthetic_faces(30, 6, seed=0)
    fit(config_for(tmp_path, epochs=1), faces, tiny_model, lambda model: {"auc": 0.90}, log=lambda m: None)
    state_file = Checkpoints(config.checkpoint_dir).latest() / "state.json"
    saved = json.loads(state_file.read_text())
    del saved["state"]["selected_by"]
    for row in [*saved["state"]["history"], saved["state"]["best"]]:
        del row["val_mean_auc"]
    state_file.write_text(json.dumps(saved))

    written, messages = [], []
    result = fit(config_for(tmp_path, resume=True), faces, tiny_model,
                 lambda model: {"auc": 0.85, "celeba_auc": 0.99}, metadata=written.append, log=messages.append)
    assert result.status == "completed" and result.state.selected_by == "val_auc"
    assert result.state.best["step"] == 12  # by the mean AUC epoch 2 would win (0.92 > 0.90)
    assert written[-1]["training"]["weights_selected_by"] == "val_auc"
    assert any("keeps the weights rule it started with" in m for m in messages)
    assert_same_weights(config.weights_out, Path(config.checkpoint_dir) / "epoch_001.weights.h5")


def test_killed_and_interrupted_runs_resume_exactly(tmp_path):
    """SIGKILL mid-epoch, resume, SIGTERM mid-epoch, resume: same steps, losses and weights as one run."""
    settings = {"epochs": 3, "steps_per_epoch": 40, "identities_per_batch": 8, "images_per_identity": 4}
    whole = start_child({"config": asdict(config_for(tmp_path / "whole", **settings))})
    parts = config_for(tmp_path / "parts", **settings)

    killed = start_child({"config": asdict(parts), "step_markers": True})
    killed.wait_for("epoch 1 ")  # printed after the epoch's checkpoint
    killed.wait_for("STEP", count=3)  # step 43
    killed.process.send_signal(signal.SIGKILL)
    code, out, _ = killed.finish()
    assert code == -signal.SIGKILL and "epoch 2 " not in out
    assert Checkpoints(parts.checkpoint_dir).latest().name == "step-40"

    resumed = start_child({"config": asdict(config_for(tmp_path / "parts", resume=True, **settings)),
                           "step_markers": True})
    resumed.wait_for("resumed from ")
    resumed.wait_for("STEP", count=5)  # step 45
    resumed.process.send_signal(signal.SIGTERM)
    code, out, result = resumed.finish()
    assert code == 130, out
    assert result["status"] == "interrupted" and 45 <= result["step"] < 80 and "SIGTERM" in result["message"]
    assert Checkpoints(parts.checkpoint_dir).latest().name == f"step-{result['step']}"

    code, out, finished = start_child({"config": asdict(config_for(tmp_path / "parts", resume=True,
                                                                   **settings))}).finish()
    assert code == 0, out
    code, out, reference = whole.finish()
    assert code == 0, out
    assert finished["step"] == reference["step"] == 120
    for got, want in zip(finished["history"], reference["history"], strict=True):
        assert got["step"] == want["step"] and got["images_seen"] == want["images_seen"]
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)
    for got, want in zip(weights_of(parts.weights_out), weights_of(config_for(tmp_path / "whole").weights_out),
                         strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_mirrored_strategy_on_two_logical_cpus_splits_batches_by_identity_and_averages_them(tmp_path):
    config = config_for(tmp_path, strategy="mirrored", epochs=1, steps_per_epoch=3)
    code, out, result = start_child({"config": asdict(config), "logical_cpus": 2,
                                     "compare_replicas": True}).finish()
    assert code == 0, out
    assert "2 replica(s)" in out
    assert result["status"] == "completed" and result["step"] == 3
    split = json.loads(next(line[9:] for line in out.splitlines() if line.startswith("REPLICAS ")))
    assert split["cpus"] == 2
    first, second = split["replicas"]
    assert first + second == split["batch"]  # each replica gets its half of the P x K batch
    assert len(set(first)) == len(set(second)) == config.identities_per_batch // 2
    assert not set(first) & set(second)
    assert all(first.count(label) == config.images_per_identity for label in first)
    # The step on two replicas = the mean of the two shares' losses and gradients on one device.
    assert split["loss"] == pytest.approx(split["reference_loss"], rel=1e-5)
    assert split["largest_update"] > 1e-3
    assert split["largest_update_difference"] < 1e-3 * split["largest_update"]


def test_checkpoints_never_overwrite_the_one_latest_names(tmp_path):
    model, config = tiny_model(), config_for(tmp_path)
    optimizer = keras.optimizers.Adam(1e-3)
    optimizer.build(model.trainable_variables)
    checkpoints = Checkpoints(tmp_path / "ckpt")
    checkpoints.save(model, optimizer, TrainState(step=3, wall_seconds=1.0), config)
    (tmp_path / "ckpt" / "step-9.tmp").mkdir()  # what a kill during a save leaves behind
    assert checkpoints.latest().name == "step-3"
    checkpoints.save(model, optimizer, TrainState(step=3, wall_seconds=2.0), config)
    assert checkpoints.latest().name == "step-3-2"
    # Older checkpoints are gone; the epoch's weights snapshot (visualize.py --progress-from) stays.
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["epoch_001.weights.h5", "latest", "step-3-2"]
    assert checkpoints.restore(model, optimizer, config).wall_seconds == 2.0


@pytest.mark.parametrize("damage", ["optimizer.npz", "state.json", "model.weights.h5", "random.npz"])
def test_a_damaged_checkpoint_file_is_named_with_what_to_do(tmp_path, damage):
    model, config = tiny_model(), config_for(tmp_path, resume=True)
    optimizer = keras.optimizers.Adam(1e-3)
    optimizer.build(model.trainable_variables)
    checkpoints = Checkpoints(config.checkpoint_dir)
    path = checkpoints.save(model, optimizer, TrainState(step=3), config) / damage
    path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])  # cut short, as a full disk might
    with pytest.raises(ResumeError, match=f"the checkpoint file {path} is damaged .*Start a new run"):
        checkpoints.restore(model, optimizer, config)


def test_resume_rewrites_the_epoch_snapshot_a_kill_cut_short(tmp_path):
    model, config = tiny_model(), config_for(tmp_path, steps_per_epoch=3)
    optimizer = keras.optimizers.Adam(1e-3)
    optimizer.build(model.trainable_variables)
    checkpoints = Checkpoints(config.checkpoint_dir)
    latest = checkpoints.save(model, optimizer, TrainState(step=3), config)
    checkpoints.snapshot(1).unlink()  # killed after the checkpoint, before its snapshot was copied
    checkpoints.restore(model, optimizer, config)
    assert checkpoints.snapshot(1).read_bytes() == (latest / "model.weights.h5").read_bytes()


def dropout_model() -> keras.Model:
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.5)(x)
    x = keras.layers.Dense(16)(x)
    return keras.Model(inputs, L2Normalize()(x), name="dropout")


def test_resume_is_exact_for_a_model_with_dropout(tmp_path):
    """4 + 4 steps with a stop and --resume between = 8 steps in one go, Dropout masks included (their
    random generator's state is checkpointed, not restarted)."""
    faces = synthetic_faces(12, 4, 0)
    settings = {"epochs": 2, "steps_per_epoch": 4, "lr_schedule": "constant"}
    whole = fit(config_for(tmp_path / "whole", **settings), faces, dropout_model, log=lambda m: None)
    first = fit(config_for(tmp_path / "parts", **{**settings, "epochs": 1}), faces, dropout_model, log=lambda m: None)
    assert first.state.step == 4
    parts = fit(config_for(tmp_path / "parts", **settings, resume=True), faces, dropout_model, log=lambda m: None)
    assert [row["loss"] for row in parts.state.history] == pytest.approx(
        [row["loss"] for row in whole.state.history], rel=1e-6, abs=1e-7)
    for got, want in zip(weights_of(config_for(tmp_path / "parts").weights_out, dropout_model),
                         weights_of(config_for(tmp_path / "whole").weights_out, dropout_model), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


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


def test_cosine_schedule_anneals_by_steps_or_by_the_time_budget_whichever_is_further():
    from utils.training.loop import learning_rate
    config = config_for(Path("."), lr=1e-3, epochs=10, steps_per_epoch=10)
    assert learning_rate(config, 0, 0.0) == pytest.approx(1e-3)
    assert learning_rate(config, 50, 0.0) == pytest.approx(1e-3 * (0.01 + 0.99 * 0.5))
    assert learning_rate(config, 100, 0.0) == pytest.approx(1e-5)
    budgeted = config_for(Path("."), lr=1e-3, epochs=10, steps_per_epoch=10, time_budget_hours=1.0)
    assert learning_rate(budgeted, 10, 1800.0) == learning_rate(config, 50, 0.0)  # half the time is spent
    assert learning_rate(budgeted, 10, 7200.0) == pytest.approx(1e-5)  # past the budget: the floor
    assert learning_rate(config_for(Path("."), lr_schedule="constant"), 20, 1e9) == 3e-3


def test_time_budget_stops_after_validating_and_checkpointing(tmp_path):
    config = config_for(tmp_path, time_budget_hours=1e-7)
    result = fit(config, synthetic_faces(12, 4, 0), tiny_model, synthetic_evaluator(), log=lambda m: None)
    assert result.status == "time-budget" and result.state.step == 1
    assert len(result.state.history) == 1 and "val_accuracy" in result.state.history[0]
    assert Path(config.weights_out).is_file()
    assert Checkpoints(config.checkpoint_dir).latest().name == "step-1"
    # Resumed with the budget already spent: nothing more is trained.
    again = fit(config_for(tmp_path, time_budget_hours=1e-7, resume=True), synthetic_faces(12, 4, 0), tiny_model,
                synthetic_evaluator(), log=lambda m: None)
    assert again.status == "time-budget" and again.state.step == 1 and "already spent" in again.message
    assert len(again.state.history) == 1


def test_mixed_precision_keeps_a_float32_output_and_plain_weights(tmp_path):
    config = config_for(tmp_path, mixed_precision=True, epochs=1, steps_per_epoch=2)
    result = fit(config, synthetic_faces(12, 4, 0), tiny_model, log=lambda m: None)
    assert result.status == "completed"
    assert keras.mixed_precision.global_policy().name == "float32"  # restored after building
    plain = tiny_model()
    plain.load_weights(config.weights_out)
    assert np.isfinite(plain.get_weights()[0]).all()


# --- data, validation and metadata helpers -------------------------------------------------------

def test_people_files_of_both_formats_are_read_and_the_benchmark_people_are_excluded(tmp_path, shared_data):
    from utils.evaluation.benchmark_faces import MANIFEST, benchmark_images
    from utils.training.data import default_exclusions

    dev_test = read_people_file(shared_data / "lfw-protocol" / "peopleDevTest.txt")
    assert len(dev_test) == 1711
    assert str(MANIFEST) in default_exclusions()  # the list visualize.py draws, not a copy of it
    benchmark = read_people_file(MANIFEST)
    assert benchmark == {path.split("/")[0] for path in benchmark_images()} and len(benchmark) == 10
    plain = tmp_path / "people.txt"
    plain.write_text("Alice_Smith\n\nBob_Jones/Bob_Jones_0001.jpg\n")
    assert read_people_file(plain) == {"Alice_Smith", "Bob_Jones"}


def test_metadata_replaces_the_registry_json_or_goes_beside_custom_weights(tmp_path, monkeypatch):
    import models.weights

    monkeypatch.setattr(models.weights, "WEIGHTS_DIR", tmp_path / "weights")
    models.weights.update_metadata("ang", architecture="ang", lfw_view2={"accuracy": 0.9, "threshold": 0.8})
    write = metadata_writer(config_for(tmp_path, model="ang", weights_out=str(models.weights.weights_path("ang"))))
    write({"architecture": "ang", "training": {"steps": 3}})
    # The figures of the old weights (recognize.py's default threshold) do not stay beside new weights.
    assert models.weights.read_metadata("ang") == {"architecture": "ang", "training": {"steps": 3}}
    write = metadata_writer(config_for(tmp_path, model="ang", weights_out=str(tmp_path / "run" / "x.weights.h5")))
    write({"architecture": "ang"})
    write({"training": {"steps": 4}})
    assert json.loads((tmp_path / "run" / "x.json").read_text()) == {"training": {"steps": 4}}
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["x.json"]  # no temporary file left


def test_data_sources_folder_tree_aligned_cache_and_msceleb_tsv(tmp_path, shared_data, monkeypatch):
    """The three --data kinds load the same faces: a tree (aligned and cached), its cache folder, a TSV
    (streamed into a store once: scanned again only when the file changes)."""
    import utils.faces.cache
    from utils.datasets.msceleb import TsvFace, write_tsv
    from utils.faces.cache import default_cache_path
    from utils.training.data import load_source, load_training_data

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
    scans = []
    ingest = utils.faces.cache._ingest_tsv
    monkeypatch.setattr(utils.faces.cache, "_ingest_tsv", lambda *a, **k: scans.append(a) or ingest(*a, **k))
    from_tsv = load_source(tsv, 96, log=lambda m: None)
    assert sorted(set(from_tsv.identities)) == [f"m.{name}" for name in sorted(set(from_tree.identities))]
    np.testing.assert_array_equal(from_tsv.faces, from_tree.faces)
    assert len(scans) == 1 and not (tmp_path / "cache" / "msceleb").exists()  # no folder of JPEGs
    np.testing.assert_array_equal(load_source(tsv, 96, log=lambda m: None).faces, from_tree.faces)
    assert len(scans) == 1  # the finished ingest was used
    pooled, _ = load_training_data([str(tree), str(tsv)], 96, [], 2, log=lambda m: None)
    assert pooled.num_identities == 4 and pooled.names[0].startswith("tree/")  # namespaced per source
    assert len(scans) == 1
    write_tsv(tsv, faces[:2] + faces[3:])  # the file changes: scanned again; the removed line's face goes
    again = load_source(tsv, 96, log=lambda m: None)
    assert len(scans) == 2 and len(again) == 3 and again.paths == from_tsv.paths[:2] + from_tsv.paths[3:]
    with pytest.raises(ValueError, match="training data not found"):
        load_source(tmp_path / "missing", 96)


def test_view1_evaluator_scores_a_model_on_the_dev_pairs(shared_data):
    from utils.datasets.lfw import load_dev_pairs, pair_images
    from utils.faces.cache import AlignedFaces
    from utils.paths import lfw_dir
    from utils.training.data import view1_evaluator

    images = pair_images(load_dev_pairs("train") + load_dev_pairs("test"))
    rng = np.random.default_rng(0)
    n = len(images)
    fake = AlignedFaces(lfw_dir(), rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8), images,
                        np.ones(n, bool), np.zeros((n, 4), np.float32), np.zeros((n, 68, 2), np.float32))
    figures = view1_evaluator(fake)(tiny_model())
    assert set(figures) == {"accuracy", "auc", "threshold", "eer"}
    assert 0.4 < figures["accuracy"] < 0.6  # noise faces: chance level on the 1,000 DevTest pairs


def test_validation_scores_lfw_view1_and_the_celeba_validation_half_only(shared_data):
    """The evaluator train.py validates with, on stand-in faces: the CelebA cache holds the validation
    half's images only, so touching a test-half image would fail."""
    from utils.datasets.holdout import VAL_PEOPLE
    from utils.datasets.lfw import load_dev_pairs, pair_images
    from utils.faces.cache import AlignedFaces
    from utils.paths import data_dir, lfw_dir
    from utils.training.data import validation_evaluator

    def fake(root, paths):
        n = len(paths)
        return AlignedFaces(root, np.random.default_rng(0).integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8),
                            paths, np.ones(n, bool), np.zeros((n, 4), np.float32), np.zeros((n, 68, 2), np.float32))

    celeba = data_dir() / "celeba-subset"
    val_people = read_people_file(VAL_PEOPLE)
    val_images = sorted(f"{p.name}/{f.name}" for p in celeba.iterdir() if p.name in val_people for f in p.iterdir())
    loaded = {"lfw": fake(lfw_dir(), pair_images(load_dev_pairs("train") + load_dev_pairs("test"))),
              "celeba-subset": fake(celeba, val_images)}
    figures = validation_evaluator(loaded, SIZE, log=lambda m: None)(tiny_model())
    names = ("accuracy", "auc", "threshold", "eer")
    assert set(figures) == {f"{domain}{name}" for domain in ("", "celeba_") for name in names}
    assert len(val_images) == 570 and 0.3 < figures["celeba_auc"] < 0.7  # noise faces: chance level


# --- the command line ----------------------------------------------------------------------------

def celeba_tree(tree: Path, shared_data: Path, people: int, images: int) -> Path:
    """A folder-per-identity tree of links to the first images of the first celeba-subset people
    outside the hold-out (which training leaves out by default)."""
    from utils.datasets.holdout import TEST_PEOPLE, VAL_PEOPLE
    from utils.datasets.lfw import read_people_file

    held_out = read_people_file(VAL_PEOPLE) | read_people_file(TEST_PEOPLE)
    folders = sorted(p for p in (shared_data / "celeba-subset").iterdir() if p.is_dir() and p.name not in held_out)
    for person in folders[:people]:
        (tree / person.name).mkdir(parents=True)
        for image in sorted(person.glob("*.jpg"))[:images]:
            (tree / person.name / image.name).symlink_to(image)
    return tree


def run_cli(*args: str, env: dict | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "train.py", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})},
                          check=False)


def test_cli_reports_missing_data_without_a_traceback(tmp_path):
    done = run_cli("--model", "ang", "--data", str(tmp_path / "nowhere"), "--checkpoint-dir", str(tmp_path / "c"))
    assert done.returncode == 2
    assert "error: training data not found" in done.stderr and "Traceback" not in done.stderr


def test_cli_reports_a_tensorflow_failure_without_a_traceback(tmp_path, monkeypatch, capsys):
    import train

    def out_of_memory(config, validation):
        raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor\nwith shape [128, 96]")

    monkeypatch.setattr("utils.training.loop.run", out_of_memory)
    assert train.main(["--model", "nn2", "--checkpoint-dir", str(tmp_path / "c"), "--log-dir", str(tmp_path / "l"),
                       "--weights-out", str(tmp_path / "nn2.weights.h5")]) == 2
    err = capsys.readouterr().err
    assert "ResourceExhaustedError: OOM when allocating tensor)" in err and str(tmp_path / "c") in err


def test_cli_trains_a_registry_model_into_its_own_run_folder(tmp_path, shared_data):
    """python train.py on 6 celeba-subset identities (aligned on the fly): weights, metadata, logs and
    checkpoints appear in a run folder of their own, the published weights are not touched."""
    import hashlib

    from models.weights import weights_path

    def published() -> str:
        return hashlib.sha256(weights_path("ang").read_bytes()).hexdigest() if weights_path("ang").exists() else ""

    tree = celeba_tree(tmp_path / "faces", shared_data, people=6, images=3)
    before = published()
    env = {"FACE_CACHE_DIR": str(tmp_path / "cache"), "FACE_RUNS_DIR": str(tmp_path / "runs")}
    settings = ("--model", "ang", "--data", str(tree), "--epochs", "1", "--steps-per-epoch", "2",
                "--batch-identities", "4", "--images-per-identity", "2", "--no-validation")
    done = run_cli(*settings, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "finished 2 steps" in done.stdout and "python train.py --publish" in done.stdout
    assert published() == before
    (run,) = (tmp_path / "runs" / "ang").iterdir()
    assert {"ang.weights.h5", "ang.json", "metrics.csv", "training_curves.png", "tensorboard", "latest", "step-2",
            "epoch_001.weights.h5", "train.lock"} == {p.name for p in run.iterdir()}
    from models.weights import load_model

    assert load_model("ang", run / "ang.weights.h5").output_shape == (None, 128)
    metadata = json.loads((run / "ang.json").read_text())
    assert metadata["architecture"] == "ang" and metadata["input_size"] == 96
    assert metadata["training"]["data"] == ["faces"]  # no folders of this machine
    assert metadata["training"]["steps"] == 2 and metadata["training"]["images_seen"] == 16
    assert metadata["training"]["identities"] >= 4


def test_cli_validates_arguments_and_output_folders_before_loading_data(tmp_path, capsys):
    import train

    for bad, message in ((["--image-size", "64"], "--image-size: must be at least 96"),
                         (["--images-per-identity", "1"], "--images-per-identity: must be at least 2"),
                         (["--lr", "-1"], "--lr: must be above 0"),
                         (["--weights-out", "x.h5"], "must end with .weights.h5")):
        with pytest.raises(SystemExit) as exit_:
            train.main(["--model", "ang", *bad])
        assert exit_.value.code == 2 and message in capsys.readouterr().err
    (tmp_path / "file").write_text("")  # a file where a folder should go: unwritable, whoever runs this
    code = train.main(["--model", "ang", "--data", str(tmp_path / "nowhere"),
                       "--checkpoint-dir", str(tmp_path / "file" / "ckpt"), "--log-dir", str(tmp_path / "logs")])
    err = capsys.readouterr().err
    assert code == 2 and "error:" in err and str(tmp_path / "file") in err  # not "training data not found"


def test_cli_ctrl_c_while_loading_data_exits_130_without_a_traceback(tmp_path, shared_data, ctrl_c_delivered):
    tree = celeba_tree(tmp_path / "faces", shared_data, people=4, images=3)
    cli = Child([sys.executable, "train.py", "--model", "ang", "--data", str(tree), "--no-validation",
                 "--checkpoint-dir", str(tmp_path / "ckpt"), "--log-dir", str(tmp_path / "logs"),
                 "--weights-out", str(tmp_path / "ang.weights.h5")], env={"FACE_CACHE_DIR": str(tmp_path / "cache")})
    cli.wait_for(f"loading {tree}")
    cli.process.send_signal(signal.SIGINT)
    code, out, _ = cli.finish()
    assert code == 130, out
    assert "interrupted" in out and "Traceback" not in out


def test_multiworker_workers_train_in_step_and_stop_together(tmp_path):
    """Two processes on 127.0.0.1 with TF_CONFIG: same losses on both, only worker 0 writes files, and
    a SIGTERM to worker 1 alone stops both after the same step (neither waits for the other)."""
    import socket

    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    workers = []
    for index in range(2):
        config = config_for(tmp_path / f"worker{index}", strategy="multiworker", epochs=20, steps_per_epoch=2,
                            identities_per_batch=8)
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        workers.append((config, start_child({"config": asdict(config), "step_markers": True},
                                            env={"TF_CONFIG": tf_config})))
    workers[1][1].wait_for("STEP", count=3)
    workers[1][1].process.send_signal(signal.SIGTERM)
    results = []
    for _, process in workers:
        code, out, result = process.finish()
        assert code == 130, out
        assert "2 replica(s)" in out
        results.append(result)
    assert results[0]["status"] == results[1]["status"] == "interrupted"
    assert "another worker" in results[0]["message"] and "SIGTERM" in results[1]["message"]
    assert 3 <= results[0]["step"] == results[1]["step"] < 40
    assert len(results[0]["history"]) == len(results[1]["history"]) >= 1
    for first, second in zip(results[0]["history"], results[1]["history"], strict=True):
        assert first["loss"] == pytest.approx(second["loss"])
    checkpoint = Checkpoints(workers[0][0].checkpoint_dir).latest()
    assert checkpoint.name == f"step-{results[0]['step']}"
    assert not (tmp_path / "worker1").exists()


def test_progress_status_says_speed_loss_and_time_left(tmp_path):
    from utils.training.checkpoints import TrainState
    from utils.training.loop import format_duration, step_status

    assert [format_duration(s) for s in (45, 750, 11100, -3)] == ["45 s", "12 min 30 s", "3 h 05 min", "0 s"]
    config = config_for(tmp_path, steps_per_epoch=10, identities_per_batch=4, images_per_identity=2)
    state = TrainState(step=13, epoch_steps=3, epoch_train_seconds=6.0, wall_seconds=100.0)
    assert step_status(state, config, 0.1234, math.inf) == "4 img/s, loss 0.1234, validation in 14 s"
    assert step_status(state, config, 0.1234, 400.0).endswith(", budget left 5 min 00 s")
