"""Embedding speed on this CPU: faces/s at batch 1 and batch 64 for every registry model,
with OpenCV dnn running the original OpenFace .t7 side by side, in one process.

    python benchmarks/embed.py [--batch-sizes 1 64] [--seconds 3] [--models NAME ...] [--no-opencv]

Every model is built at 96x96 with random weights, except openface_nn4_small2, which loads its
pretrained weights (weights/openface_nn4_small2_v1.weights.h5). Each Keras model is timed two ways,
``predict_on_batch`` and a ``tf.function`` around ``model(x, training=False)``; the faster is
reported. Every measurement warms up first, then repeats calls for at least --seconds and takes
the median call time (robust to other processes on the machine; their load is printed too).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from utils.console import import_tensorflow_quietly  # noqa: E402

import_tensorflow_quietly()  # TensorFlow's start-up lines stay off the figures

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from models import MODEL_NAMES, get_model  # noqa: E402
from models.openface_weights import download_t7, pretrained_openface  # noqa: E402

OPENFACE = "openface_nn4_small2"
WARMUP_CALLS = 3


def median_call_seconds(run: Callable[[np.ndarray], object], x: np.ndarray, min_seconds: float) -> float:
    """Warm up, then call ``run(x)`` for at least min_seconds (and 5 times); median seconds per call."""
    for _ in range(WARMUP_CALLS):
        np.asarray(run(x))
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 5 or time.perf_counter() - start < min_seconds:
        tick = time.perf_counter()
        np.asarray(run(x))
        times.append(time.perf_counter() - tick)
    return statistics.median(times)


def keras_runners(model) -> dict[str, Callable[[np.ndarray], object]]:
    graph = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    return {"predict_on_batch": model.predict_on_batch,
            "tf.function": lambda x: graph(tf.convert_to_tensor(x))}


def opencv_runner(t7: Path) -> Callable[[np.ndarray], object]:
    net = cv2.dnn.readNetFromTorch(str(t7))

    def run(x: np.ndarray):
        net.setInput(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        return net.forward()
    return run


def measure(label: str, runners: dict[str, Callable], batch_sizes: list[int], seconds: float,
            rng: np.random.Generator) -> None:
    cells = []
    for batch in batch_sizes:
        x = rng.random((batch, 96, 96, 3), dtype=np.float32)
        best_name, best = min(((name, median_call_seconds(run, x, seconds)) for name, run in runners.items()),
                              key=lambda item: item[1])
        cells.append(f"batch {batch:>3}: {batch / best:7.1f} faces/s {1000 * best / batch:7.2f} ms/face "
                     f"({best_name})")
    print(f"{label:<34} " + " | ".join(cells), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64], help="default: 1 64")
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per measurement (default 3)")
    parser.add_argument("--models", nargs="+", default=list(MODEL_NAMES), choices=MODEL_NAMES,
                        help="registry models to time (default: all)")
    parser.add_argument("--no-opencv", action="store_true", help="skip OpenCV dnn on the OpenFace .t7")
    args = parser.parse_args()
    rng = np.random.default_rng(0)

    print(f"{os.cpu_count()} CPUs, load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}; "
          f"TensorFlow {tf.__version__}, OpenCV {cv2.__version__} ({cv2.getNumThreads()} threads)")
    for name in args.models:
        try:
            model = pretrained_openface() if name == OPENFACE else get_model(name, input_size=96)
        except ModuleNotFoundError as err:
            if not (err.name or "").startswith("models."):
                raise
            print(f"{name:<34} skipped: its module is missing ({err})")
            continue
        label = f"{name} (pretrained)" if name == OPENFACE else f"{name} (random)"
        measure(label, keras_runners(model), args.batch_sizes, args.seconds, rng)
    if not args.no_opencv:
        measure("OpenCV dnn nn4.small2.v1.t7", {"cv2.dnn": opencv_runner(download_t7())},
                args.batch_sizes, args.seconds, rng)
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())} "
          "(other processes share these CPUs; figures are medians over repeated calls)")


if __name__ == "__main__":
    main()
