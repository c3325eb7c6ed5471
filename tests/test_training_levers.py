"""The cheap training levers, each off by default: --lfw-share, --weight-decay, the pose augmentation
preset, --image-size with a margin-softmax loss and --one-photo-negatives."""
from __future__ import annotations

import json
from types import SimpleNamespace

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.test_train import celeba_tree, config_for, run_cli, synthetic_faces, tiny_model
from utils.training.batching import PKSampler, TrainingFaces, pool_datasets
from utils.training.checkpoints import ResumeError
from utils.training.config import TrainConfig
from utils.training.loop import TrainingError, build_model_and_optimizer, fit


@pytest.fixture
def samplers(monkeypatch) -> list[PKSampler]:
    """The samplers fit builds, in order."""
    import utils.training.loop

    built = []

    class RecordedSampler(PKSampler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self)

    monkeypatch.setattr(utils.training.loop, "PKSampler", RecordedSampler)
    return built


def test_lfw_share_draws_that_share_of_every_batch_from_the_lfw_identities(tmp_path, samplers):
    faces, lfw = synthetic_faces(30, 6, seed=0), np.arange(10)
    config = config_for(tmp_path, lfw_share=0.5, epochs=1, steps_per_epoch=3)
    with pytest.raises(TrainingError, match="LFW identities"):
        fit(config, faces, tiny_model, log=lambda m: None)
    written, messages = [], []
    result = fit(config, faces, tiny_model, metadata=written.append, log=messages.append, lfw_labels=lfw)
    assert result.status == "completed" and "LFW share 0.5" in messages[0]
    assert written[-1]["training"]["lfw_share"] == 0.5
    for step in range(3):  # 3 of the 6 identities of every batch are LFW's
        assert np.isin(faces.labels[samplers[-1].batch(step)][::3], lfw).sum() == 3
    with pytest.raises(ResumeError, match="lfw_share: 0.5 -> 0.25"):
        fit(config_for(tmp_path, lfw_share=0.25, resume=True), faces, tiny_model, log=lambda m: None, lfw_labels=lfw)


def with_one_photo_people(identities: int, one_photo: int) -> TrainingFaces:
    """synthetic_faces with 6 images of each of ``identities`` people, then one of each of ``one_photo``."""
    faces = synthetic_faces(identities + one_photo, 6, seed=0)
    keep = (faces.labels < identities) | (np.arange(len(faces)) % 6 == 0)
    paths = [path for path, kept in zip(faces.paths, keep, strict=True) if kept]
    return TrainingFaces(faces.faces[keep], faces.labels[keep], faces.names, paths)


def test_one_photo_negatives_join_every_batch_as_negatives_and_must_match_on_resume(tmp_path, samplers):
    faces = with_one_photo_people(30, 10)
    config = config_for(tmp_path, one_photo_negatives=4, epochs=1, steps_per_epoch=3)
    written, messages = [], []
    result = fit(config, faces, tiny_model, metadata=written.append, log=messages.append)
    assert result.status == "completed"
    assert "plus one face each of 4 of the 10 people with fewer than 2 faces as negatives" in messages[0]
    training = written[-1]["training"]
    counts = training["one_photo_negatives"], training["identities"], training["negative_only_identities"]
    assert counts == (4, 30, 10)
    assert training["images_seen"] == 3 * (6 * 3 + 4)
    for step in range(3):
        labels = faces.labels[samplers[-1].batch(step)]
        assert (labels[:18] < 30).all() and (labels[18:] >= 30).all() and len(set(labels[18:])) == 4
    with pytest.raises(ResumeError, match="one_photo_negatives: 4 -> 2"):
        fit(config_for(tmp_path, one_photo_negatives=2, resume=True), faces, tiny_model, log=lambda m: None)
    with pytest.raises(ValueError, match="one-photo negatives need the triplet loss, not cosface"):
        TrainConfig(model="ang", data=[], checkpoint_dir="c", log_dir="l", weights_out="w.weights.h5",
                    loss="cosface", one_photo_negatives=4)


def test_cli_refuses_one_photo_negatives_when_no_one_is_below_min_images(capsys):
    import train

    with pytest.raises(SystemExit) as exit_:
        train.main(["--model", "ang", "--one-photo-negatives", "8", "--min-images", "1"])
    assert exit_.value.code == 2 and "--min-images must be 2 or more" in capsys.readouterr().err


def test_run_pools_the_one_photo_people_only_when_they_serve_as_negatives(tmp_path, monkeypatch):
    import utils.training.loop

    pooled_with = []

    def load(sources, image_size, exclude, min_images, log):
        pooled_with.append(min_images)
        return with_one_photo_people(12, 4 if min_images == 1 else 0), {}

    monkeypatch.setattr(utils.training.loop, "load_training_data", load)
    for negatives, run_name in ((2, "with"), (0, "without")):
        code = utils.training.loop.run(config_for(tmp_path / run_name, one_photo_negatives=negatives, epochs=1,
                                                  steps_per_epoch=1), validation=False, build_model=tiny_model,
                                       log=lambda m: None)
        assert code == 0
    assert pooled_with == [1, 2]


def test_lfw_labels_are_the_identities_of_the_source_rooted_at_lfw(monkeypatch, tmp_path):
    import utils.training.data
    from utils.datasets.folders import DatasetError
    from utils.training.data import lfw_labels

    monkeypatch.setattr(utils.training.data, "lfw_dir", lambda: tmp_path / "lfw")

    def source(root, names):
        return SimpleNamespace(root=root, identities=names, faces=np.zeros((len(names), 4, 4, 3), np.uint8),
                               detected=np.ones(len(names), bool), paths=[f"{n}/{i}.jpg" for i, n in enumerate(names)])

    loaded = {"celeba": source(tmp_path / "celeba", ["a", "a", "b", "b"]),
              "lfw": source(tmp_path / "lfw", ["Ann", "Ann", "Bob", "Bob", "Cid", "Cid"])}
    faces = pool_datasets(loaded)
    assert [faces.names[label] for label in lfw_labels(faces, loaded)] == ["lfw/Ann", "lfw/Bob", "lfw/Cid"]
    with pytest.raises(DatasetError, match="no --data entry is LFW"):
        lfw_labels(faces, {"celeba": loaded["celeba"]})


def test_run_with_lfw_share_needs_lfw_among_the_data(tmp_path, monkeypatch):
    import utils.training.loop
    from utils.datasets.folders import DatasetError

    loaded = {"celeba": SimpleNamespace(root=tmp_path / "celeba")}
    monkeypatch.setattr(utils.training.loop, "load_training_data",
                        lambda *args: (synthetic_faces(12, 4, 0), loaded))
    with pytest.raises(DatasetError, match="--lfw-share: no --data entry is LFW"):
        utils.training.loop.run(config_for(tmp_path, lfw_share=0.5), validation=False, build_model=tiny_model,
                                log=lambda m: None)


def test_weight_decay_shrinks_the_matrices_by_lr_times_w_and_leaves_biases_and_batch_norm(tmp_path):
    config = config_for(tmp_path, loss="cosface", weight_decay=0.1, lr=0.01)
    model, class_cosines, optimizer = build_model_and_optimizer(config, tf.distribute.get_strategy(), tiny_model, 30)
    assert isinstance(optimizer, keras.optimizers.AdamW)
    variables = model.trainable_variables + class_cosines.trainable_variables
    before = [v.numpy() for v in variables]
    optimizer.apply_gradients([(tf.zeros_like(v), v) for v in variables])  # Adam's own step is zero
    for variable, old in zip(variables, before, strict=True):
        factor = 1.0 - 0.01 * 0.1 if len(variable.shape) > 1 else 1.0
        np.testing.assert_allclose(variable.numpy(), old * factor, rtol=1e-6, err_msg=variable.name)
    assert any(len(v.shape) <= 1 for v in variables)
    _, _, plain = build_model_and_optimizer(config_for(tmp_path), tf.distribute.get_strategy(), tiny_model, 30)
    assert type(plain) is keras.optimizers.Adam  # the default is unchanged


def test_cli_trains_with_arcface_at_112_pixels_with_pose_augmentation_and_weight_decay(tmp_path, shared_data):
    tree = celeba_tree(tmp_path / "faces", shared_data, people=4, images=2)
    out = tmp_path / "out" / "ang.weights.h5"
    common = ["--model", "ang", "--data", str(tree), "--epochs", "1", "--steps-per-epoch", "2",
              "--batch-identities", "4", "--images-per-identity", "2", "--no-validation", "--image-size", "112",
              "--weights-out", str(out), "--log-dir", str(tmp_path / "logs")]
    env = {"FACE_CACHE_DIR": str(tmp_path / "cache")}
    done = run_cli(*common, "--checkpoint-dir", str(tmp_path / "ckpt"), "--loss", "arcface", "--augmentation",
                   "pose", "--weight-decay", "0.05", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "arcface loss, scale 64.0, margin 0.5" in done.stdout and "finished 2 steps" in done.stdout
    metadata = json.loads(out.with_name("ang.json").read_text())
    assert metadata["input_size"] == 112 and metadata["embedding_size"] == 128
    training = metadata["training"]
    assert (training["loss"], training["scale"], training["class_margin"]) == ("arcface", 64.0, 0.5)
    assert (training["optimizer"], training["weight_decay"], training["augmentation"]) == ("adamw", 0.05, "pose")
