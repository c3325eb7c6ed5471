"""CosFace and ArcFace: the TensorFlow losses equal a float64 NumPy reference, and training with
them learns, resumes exactly (class weights included), runs on two replicas and in mixed precision."""
from __future__ import annotations

import json
import math
import os
import signal
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tests.test_train import config_for, start_child, synthetic_evaluator, synthetic_faces, tiny_model
from utils.training.checkpoints import CLASS_WEIGHTS, Checkpoints
from utils.training.config import PUBLISHED_SCALE_AND_MARGIN, TrainConfig
from utils.training.loop import fit
from utils.training.losses import ClassCosines, get_loss


def reference_loss(labels: np.ndarray, embeddings: np.ndarray, weights: np.ndarray, loss: str, scale: float,
                   margin: float) -> tuple[float, float]:
    """Mean cross-entropy of the margin logits and accuracy of the cosines, one row at a time, in float64."""
    losses, correct = [], []
    for x, y in zip(embeddings.astype(np.float64), labels, strict=True):
        cosines = np.array([x @ w / (np.linalg.norm(x) * np.linalg.norm(w)) for w in weights.astype(np.float64).T])
        theta = math.acos(min(max(cosines[y], -1.0), 1.0))
        if loss == "cosface":
            own = cosines[y] - margin
        elif theta + margin <= math.pi:
            own = math.cos(theta + margin)
        else:  # past pi: the linear continuation of the paper's implementation
            own = cosines[y] - margin * math.sin(margin)
        logits = scale * np.where(np.arange(len(cosines)) == y, own, cosines)
        losses.append(np.log(np.sum(np.exp(logits - logits.max()))) + logits.max() - logits[y])
        correct.append(np.argmax(cosines) == y)
    return float(np.mean(losses)), float(np.mean(correct))


def class_cosines_with(weights: np.ndarray) -> ClassCosines:
    layer = ClassCosines(weights.shape[1])
    layer.build((None, weights.shape[0]))
    layer.class_weights.assign(weights)
    return layer


def margin_config(loss: str, **overrides) -> TrainConfig:
    return TrainConfig("tiny", [], "", "", "", loss=loss, **overrides)


def random_batch(seed: int, classes: int = 7, dimensions: int = 8, batch: int = 12):
    """Labels, embeddings (unit length, like the models'; some pointing away from their own class
    so that theta_y + m > pi) and class weights (any length: the layer normalises them)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, batch)
    weights = rng.normal(size=(dimensions, classes)) * rng.uniform(0.2, 3.0, size=classes)
    embeddings = rng.normal(size=(batch, dimensions))
    opposite = rng.random(batch) < 0.4
    own = weights[:, labels].T / np.linalg.norm(weights[:, labels], axis=0)[:, None]
    embeddings[opposite] = -own[opposite] + 0.05 * embeddings[opposite]
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    return labels, embeddings.astype(np.float32), weights.astype(np.float32)


@pytest.mark.parametrize("loss", ["cosface", "arcface"])
@pytest.mark.parametrize("scale, margin", [(None, None), (16.0, 0.2), (30.0, 1.2)])
def test_margin_losses_equal_a_float64_reference(loss, scale, margin):
    config = margin_config(loss, scale=scale, class_margin=margin)
    assert (config.scale, config.class_margin) == ((scale, margin) if scale else PUBLISHED_SCALE_AND_MARGIN[loss])
    past_pi = 0
    for seed in range(4):
        labels, embeddings, weights = random_batch(seed)
        got, accuracy = get_loss(config, class_cosines_with(weights))(tf.constant(labels), tf.constant(embeddings))
        want, want_accuracy = reference_loss(labels, embeddings, weights, loss, config.scale, config.class_margin)
        assert got.dtype == tf.float32
        assert float(got) == pytest.approx(want, rel=2e-5, abs=1e-4)
        assert float(accuracy) == pytest.approx(want_accuracy)
        cosines = (embeddings @ weights / np.linalg.norm(weights, axis=0))[np.arange(len(labels)), labels]
        past_pi += int(np.sum(np.arccos(np.clip(cosines, -1, 1)) + config.class_margin > math.pi))
    assert past_pi > 0  # the branch past pi was compared too


def test_arcface_turns_the_own_logit_down_past_pi_and_has_finite_gradients_at_the_ends():
    """Past theta_y + m = pi the own logit keeps falling as theta_y grows (cos(theta + m) would rise);
    cos theta_y = +-1 (an embedding on or opposite its class vector) gives finite gradients."""
    from utils.training.losses import arcface_logits

    theta = np.linspace(0.0, math.pi, 201)
    cosines = tf.constant(np.stack([np.cos(theta), np.zeros_like(theta)], axis=1), tf.float32)
    own = arcface_logits(cosines, tf.zeros(len(theta), tf.int32), 1.0, 0.5).numpy()[:, 0]
    assert np.all(np.diff(own) < 0)
    weights = np.eye(4, 3, dtype=np.float32)
    loss_fn = get_loss(margin_config("arcface"), class_cosines_with(weights))
    embeddings = tf.Variable(np.array([[1, 0, 0, 0], [-1, 0, 0, 0], [0, 1, 0, 0]], np.float32))
    with tf.GradientTape() as tape:
        loss, _ = loss_fn(tf.constant([0, 0, 2]), embeddings)
    assert np.isfinite(float(loss)) and np.isfinite(tape.gradient(loss, embeddings).numpy()).all()


def test_unknown_loss_or_missing_class_weights_are_refused():
    with pytest.raises(ValueError, match="unknown loss 'sphereface'"):
        get_loss(margin_config("sphereface"))
    with pytest.raises(ValueError, match="class weights"):
        get_loss(margin_config("cosface"))


@pytest.mark.parametrize("loss", ["cosface", "arcface"])
def test_training_with_a_margin_loss_lowers_it_and_keeps_only_the_model(tmp_path, loss):
    faces = synthetic_faces(30, 6, seed=0)
    config = config_for(tmp_path, loss=loss, scale=16.0)  # s = 64 suits thousands of classes, not 30
    written = []
    result = fit(config, faces, tiny_model, synthetic_evaluator(), metadata=written.append, log=lambda m: None)
    assert result.status == "completed"
    first, second = result.state.history
    assert second["loss"] < first["loss"]
    assert 0.0 <= second["class_accuracy"] <= 1.0 and "active_fraction" not in second
    assert second["val_auc"] > 0.6  # chance: 0.5
    training = written[-1]["training"]
    assert (training["loss"], training["scale"], training["class_margin"]) == (loss, 16.0, config.class_margin)
    assert "mining" not in training
    reloaded = tiny_model()
    reloaded.load_weights(config.weights_out)  # the kept weights are the embedding network alone
    latest = Checkpoints(config.checkpoint_dir).latest()
    assert np.load(latest / CLASS_WEIGHTS).shape == (16, 30)
    assert "class_accuracy" in (Path(config.log_dir) / "metrics.csv").read_text().splitlines()[0]


def test_a_margin_loss_run_stopped_mid_epoch_resumes_exactly_with_its_class_weights(tmp_path, monkeypatch):
    import utils.training.loop

    faces = synthetic_faces(30, 6, seed=0)
    settings = {"loss": "arcface", "scale": 16.0, "epochs": 2, "steps_per_epoch": 6}
    whole = fit(config_for(tmp_path / "whole", **settings), faces, tiny_model, log=lambda m: None)

    make_train_step = utils.training.loop.make_train_step

    def stopping_after_step_8(*args):
        step, calls = make_train_step(*args), []

        def counted(iterator):
            results = step(iterator)
            calls.append(1)
            if len(calls) == 8:
                os.kill(os.getpid(), signal.SIGTERM)  # handled by fit's StopSignals: checkpoint, return
            return results

        return counted

    monkeypatch.setattr(utils.training.loop, "make_train_step", stopping_after_step_8)
    parts = config_for(tmp_path / "parts", **settings)
    stopped = fit(parts, faces, tiny_model, log=lambda m: None)
    assert stopped.status == "interrupted" and stopped.state.step == 8
    monkeypatch.setattr(utils.training.loop, "make_train_step", make_train_step)
    with pytest.raises(ValueError, match="class_margin: 0.5 -> 0.4"):
        fit(config_for(tmp_path / "parts", resume=True, class_margin=0.4, **settings), faces, tiny_model,
            log=lambda m: None)
    resumed = fit(config_for(tmp_path / "parts", resume=True, **settings), faces, tiny_model, log=lambda m: None)
    assert resumed.status == "completed" and resumed.state.step == 12
    for got, want in zip(resumed.state.history, whole.state.history, strict=True):
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)
        assert got["class_accuracy"] == pytest.approx(want["class_accuracy"])
    for name in ("model.weights.h5", CLASS_WEIGHTS):
        checkpoints = [Checkpoints(tmp_path / run / "ckpt").latest() / name for run in ("parts", "whole")]
        if name == CLASS_WEIGHTS:
            got, want = (np.load(path) for path in checkpoints)
            assert np.abs(got - want).max() < 1e-4 * np.abs(want).max()
        else:
            for got, want in zip(*(weights_of_file(path) for path in checkpoints), strict=True):
                np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    # Without its class weights a margin-loss checkpoint cannot resume.
    (Checkpoints(tmp_path / "parts" / "ckpt").latest() / CLASS_WEIGHTS).unlink()
    with pytest.raises(ValueError, match="no class weights"):
        fit(config_for(tmp_path / "parts", resume=True, **{**settings, "epochs": 3}), faces, tiny_model,
            log=lambda m: None)


def weights_of_file(path: Path) -> list[np.ndarray]:
    model = tiny_model()
    model.load_weights(path)
    return model.get_weights()


def test_a_triplet_checkpoint_from_before_the_margin_losses_resumes(tmp_path):
    faces = synthetic_faces(12, 4, 0)
    fit(config_for(tmp_path, epochs=1, steps_per_epoch=2), faces, tiny_model, log=lambda m: None)
    state_file = Checkpoints(tmp_path / "ckpt").latest() / "state.json"
    saved = json.loads(state_file.read_text())
    for key in ("loss", "scale", "class_margin"):
        del saved["config"][key]
    saved["state"]["epoch_active_sum"] = saved["state"].pop("epoch_figure_sum")
    state_file.write_text(json.dumps(saved))
    resumed = fit(config_for(tmp_path, epochs=2, steps_per_epoch=2, resume=True), faces, tiny_model,
                  log=lambda m: None)
    assert resumed.status == "completed" and resumed.state.step == 4
    with pytest.raises(ValueError, match="loss: 'triplet' -> 'cosface'"):
        fit(config_for(tmp_path, loss="cosface", resume=True), faces, tiny_model, log=lambda m: None)


def test_mixed_precision_computes_the_margin_loss_in_float32(tmp_path):
    config = config_for(tmp_path, loss="cosface", scale=16.0, mixed_precision=True, epochs=1, steps_per_epoch=3)
    result = fit(config, synthetic_faces(12, 4, 0), tiny_model, log=lambda m: None)
    assert result.status == "completed" and np.isfinite(result.state.history[-1]["loss"])
    assert np.load(Checkpoints(config.checkpoint_dir).latest() / CLASS_WEIGHTS).dtype == np.float32
    plain = tiny_model()
    plain.load_weights(config.weights_out)


def test_mirrored_strategy_on_two_logical_cpus_averages_the_margin_loss_of_the_shares(tmp_path):
    config = config_for(tmp_path, loss="cosface", scale=16.0, strategy="mirrored", epochs=1, steps_per_epoch=2)
    code, out, result = start_child({"config": asdict(config), "logical_cpus": 2, "compare_replicas": True}).finish()
    assert code == 0, out
    assert "2 replica(s)" in out and result["status"] == "completed" and result["step"] == 2
    split = json.loads(next(line[9:] for line in out.splitlines() if line.startswith("REPLICAS ")))
    assert split["loss"] == pytest.approx(split["reference_loss"], rel=1e-5)
    assert split["largest_update"] > 1e-3
    assert split["largest_update_difference"] < 1e-3 * split["largest_update"]


def test_every_loss_train_offers_has_a_figure_and_its_own_options(capsys):
    import train
    from utils.training.config import LOSSES
    from utils.training.losses import FIGURES, MARGIN_LOGITS

    action = next(a for a in train.build_parser()._actions if a.dest == "loss")
    assert list(action.choices) == list(LOSSES) == list(FIGURES) == ["triplet", *MARGIN_LOGITS]
    for bad, message in ((["--loss", "cosface", "--mining", "all"], "--mining: not an option of --loss cosface"),
                         (["--loss", "arcface", "--soft-margin", "--margin", "0.1"],
                          "--margin, --soft-margin: not an option of --loss arcface"),
                         (["--scale", "30"], "--scale: not an option of --loss triplet"),
                         (["--loss", "cosface", "--one-photo-negatives", "8"],
                          "--one-photo-negatives: not an option of --loss cosface")):
        with pytest.raises(SystemExit) as exit_:
            train.main(["--model", "ang", *bad])
        assert exit_.value.code == 2 and message in capsys.readouterr().err
