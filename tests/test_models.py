"""Every registry model: shapes, unit-norm output, head structure, save/load, one training step.

Plus the FLOP counter of models.summary on a hand-computable model and against FaceNet's table.
"""
from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import models
from models.layers import L2Normalize
from models.summary import count_flops, markdown_table

EMBEDDING_SIZE = 128


def _faces(count: int, size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.0, 1.0, (count, size, size, 3)).astype("float32")


def _randomise_statistics(model: keras.Model, seed: int) -> None:
    """Give BN moving statistics non-default values, so that losing them on a round trip shows."""
    rng = np.random.default_rng(seed)
    for weight in model.non_trainable_weights:
        if weight.path.endswith("moving_variance"):
            weight.assign(rng.uniform(0.5, 1.5, weight.shape).astype("float32"))
        elif weight.path.endswith("moving_mean"):
            weight.assign(rng.normal(0.0, 0.1, weight.shape).astype("float32"))


def _embed(model: keras.Model, faces: np.ndarray) -> np.ndarray:
    return model(faces, training=False).numpy()


@pytest.fixture(scope="module")
def built_models() -> dict[str, keras.Model]:
    return {}


@pytest.fixture
def model(request, built_models) -> keras.Model:
    """The 96 px model of the parametrized name, built once per module."""
    name = request.node.callspec.params["name"]
    if name not in built_models:
        built_models[name] = models.get_model(name, input_size=96, embedding_size=EMBEDDING_SIZE)
        _randomise_statistics(built_models[name], seed=0)
    return built_models[name]


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_unit_norm_embeddings_at_96_and_160(name, model):
    bigger = models.get_model(name, input_size=160, embedding_size=EMBEDDING_SIZE)
    for net, size in ((model, 96), (bigger, 160)):
        embeddings = _embed(net, _faces(3, size, seed=size))
        assert embeddings.shape == (3, EMBEDDING_SIZE)
        assert np.all(np.abs(np.linalg.norm(embeddings, axis=1) - 1.0) < 1e-5)
        assert not np.allclose(embeddings[0], embeddings[1]), "different faces gave the same embedding"
    assert bigger.count_params() == model.count_params()
    assert count_flops(bigger) > 2 * count_flops(model)


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_plain_dense_feeds_the_final_l2_normalize(name, model):
    last = model.layers[-1]
    assert isinstance(last, L2Normalize)
    assert model.outputs[0] is last.output
    feeding = [layer for layer in model.layers if layer.output is last.input]
    assert len(feeding) == 1
    assert isinstance(feeding[0], keras.layers.Dense)
    assert feeding[0].units == EMBEDDING_SIZE
    assert feeding[0].activation is keras.activations.linear


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_keras_file_round_trip_is_bit_identical(name, model, tmp_path):
    path = tmp_path / f"{name}.keras"
    model.save(path)
    reloaded = keras.models.load_model(path, safe_mode=True)
    faces = _faces(2, 96, seed=1)
    np.testing.assert_array_equal(_embed(reloaded, faces), _embed(model, faces))


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_weights_file_round_trip_is_bit_identical(name, model, tmp_path):
    path = tmp_path / f"{name}.weights.h5"
    model.save_weights(path)
    fresh = models.get_model(name, input_size=96, embedding_size=EMBEDDING_SIZE)
    faces = _faces(2, 96, seed=2)
    assert not np.array_equal(_embed(fresh, faces), _embed(model, faces))
    fresh.load_weights(path)
    np.testing.assert_array_equal(_embed(fresh, faces), _embed(model, faces))


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_triplet_gradient_step_updates_weights(name):
    net = models.get_model(name, input_size=96, embedding_size=EMBEDDING_SIZE)
    anchors = _faces(2, 96, seed=3)
    positives = np.clip(anchors + _faces(2, 96, seed=4) * 0.1, 0.0, 1.0)
    negatives = _faces(2, 96, seed=5)
    before = [w.numpy().copy() for w in net.trainable_weights]

    with tf.GradientTape() as tape:
        embeddings = net(np.concatenate([anchors, positives, negatives]), training=True)
        anchor, positive, negative = tf.split(embeddings, 3)
        gap = tf.reduce_sum(tf.square(anchor - positive), 1) - tf.reduce_sum(tf.square(anchor - negative), 1)
        loss = tf.reduce_mean(tf.nn.softplus(gap + 0.2))
    gradients = tape.gradient(loss, net.trainable_weights)
    assert np.isfinite(float(loss))
    assert all(g is not None and np.all(np.isfinite(g.numpy())) for g in gradients)
    keras.optimizers.Adam(1e-3).apply(gradients, net.trainable_weights)

    after = [w.numpy() for w in net.trainable_weights]
    assert all(np.all(np.isfinite(w)) for w in after)
    changed = [not np.array_equal(b, a) for b, a in zip(before, after, strict=True)]
    assert changed[0], "the first layer did not move: the gradient does not reach the input"
    assert changed[-1], "the embedding layer did not move"
    assert sum(changed) > 0.9 * len(changed)


def test_flops_of_a_hand_computable_model():
    inputs = keras.Input((10, 10, 3))
    x = keras.layers.Conv2D(4, 3, strides=2, padding="same")(inputs)       # 5x5x4
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same")(x)  # 5x5x8
    x = keras.layers.SeparableConv2D(6, 3, padding="valid")(x)              # 3x3x6
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(5)(x)
    multiply_adds = (
        5 * 5 * 4 * (3 * 3 * 3)            # conv: each output value sums a 3x3x3 window
        + 5 * 5 * 8 * (3 * 3)              # depthwise: each output value sums a 3x3 window of one channel
        + 3 * 3 * 8 * (3 * 3) + 3 * 3 * 6 * 8  # separable: depthwise 3x3 on 8 channels, then pointwise 8 -> 6
        + 6 * 5                            # dense
    )
    assert count_flops(keras.Model(inputs, outputs)) == 2 * multiply_adds


def test_flops_refuse_a_layer_without_a_rule():
    inputs = keras.Input((8, 8, 3))
    outputs = keras.layers.Conv2DTranspose(4, 3, strides=2)(inputs)
    with pytest.raises(NotImplementedError, match="Conv2DTranspose"):
        count_flops(keras.Model(inputs, outputs))


def test_nn2_matches_facenet_table_2():
    # FaceNet's table 2: NN2 at 224 px, 7.5 M parameters, 1.6 B multiply-adds ("FLOPS").
    nn2 = models.get_model("nn2", input_size=224)
    assert count_flops(nn2) / 2 == pytest.approx(1.6e9, rel=0.02)
    assert nn2.count_params() == pytest.approx(7.5e6, rel=0.02)


def test_ang2_has_openface_nn4_small2_parameter_count():
    ang2 = models.get_model("ang2")
    # nn4.small2.def.lua: "Number of Parameters from net:getParameters() with embSize=128: 3733968".
    assert sum(int(np.prod(w.shape)) for w in ang2.trainable_weights) == 3733968


def test_summary_table_reports_an_unimportable_model(monkeypatch):
    def fake_get_model(name, input_size=96, embedding_size=128):
        if name == "missing":
            raise ImportError("No module named 'models.missing'")
        inputs = keras.Input((input_size, input_size, 3))
        return keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(inputs)))

    monkeypatch.setattr(models, "get_model", fake_get_model)
    rows = markdown_table(["tiny", "missing"], input_size=96).splitlines()
    assert len(rows) == 4
    parameters = 96 * 96 * 3 * 2 + 2  # dense kernel and bias
    assert rows[2] == f"| tiny | {parameters:,} | {parameters:,} | {2 * 96 * 96 * 3 * 2 / 1e9:.3f} |"
    assert rows[3].startswith("| missing | not available: No module named 'models.missing'")


# ----------------------------------------------------------------------------- models.weights.load_model

def test_load_model_builds_at_the_size_in_the_metadata_beside_the_weights(tmp_path, monkeypatch):
    import models.weights as weights

    monkeypatch.setattr(weights, "WEIGHTS_DIR", tmp_path)
    keras.utils.set_random_seed(0)
    trained = models.get_model("ang", input_size=128)
    trained.save_weights(tmp_path / "ang.weights.h5")
    assert weights.load_model("ang").input_shape == (None, 96, 96, 3)  # no metadata: the 96 px default
    (tmp_path / "ang.json").write_text(json.dumps({"architecture": "ang", "input_size": 128, "embedding_size": 128}))
    loaded = weights.load_model("ang")
    assert loaded.input_shape == (None, 128, 128, 3)
    faces = _faces(2, 128, seed=1)
    np.testing.assert_allclose(_embed(loaded, faces), _embed(trained, faces), atol=1e-5)
    assert weights.load_model("ang", input_size=112).input_shape == (None, 112, 112, 3)  # an explicit size wins

    elsewhere = tmp_path / "runs" / "run1.weights.h5"  # a --weights-out file: its metadata is beside it
    elsewhere.parent.mkdir()
    trained.save_weights(elsewhere)
    (tmp_path / "runs" / "run1.json").write_text(json.dumps({"input_size": 160}))
    assert weights.load_model("ang", elsewhere).input_shape == (None, 160, 160, 3)


def test_load_model_and_read_metadata_name_a_damaged_file(tmp_path, monkeypatch):
    import models.weights as weights

    monkeypatch.setattr(weights, "WEIGHTS_DIR", tmp_path)
    models.get_model("ang").save_weights(tmp_path / "ang.weights.h5")
    (tmp_path / "ang.json").write_text('{"input_size": 96,')  # cut short
    for call in (lambda: weights.read_metadata("ang"), lambda: weights.load_model("ang")):
        with pytest.raises(ValueError, match=r"ang\.json is damaged"):
            call()
    (tmp_path / "ang.json").write_text('{"input_size": "large"}')
    with pytest.raises(ValueError, match="gives input_size 'large', not a positive integer"):
        weights.load_model("ang")
    with pytest.raises(ValueError, match="is a folder"):
        weights.load_model("ang", tmp_path)
