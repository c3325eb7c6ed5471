"""Memory of reading a face store for training as it grows, without aligning anything.

    python benchmarks/store_memory.py --faces 10000 100000 300000 [--size 16] [--batches 200]

For each N a store of N made-up faces (random pixels, 20 per made-up identity, keys shaped like
MS-Celeb's) is written with the store's own writer; then a fresh process reads it as train.py
does (load_cache, pool_datasets, PKSampler), gathers ``--batches`` P x K batches of 32 x 4
faces through the index, and reports its peak resident memory and the seconds taken. No
TensorFlow is loaded: what is measured is what grows with N, the index and the row lists
(the faces stay on disk, so --size only changes the disk the benchmark takes).
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from utils.faces import store  # noqa: E402
from utils.faces.cache import alignment_settings  # noqa: E402

FACES_PER_IDENTITY = 20


def write_store(folder: Path, faces: int, size: int) -> None:
    """A store of made-up faces: ``faces`` rows, 20 per identity."""
    store.create(folder, alignment_settings(output_size=size))
    writer = store.ShardWriter(folder, "p1of1", (size, size, 3))
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (1000, size, size, 3), dtype=np.uint8)
    box, points = np.zeros(4, np.float32), np.zeros((68, 2), np.float32)
    for i in range(faces):
        key = f"m.synth{i // FACES_PER_IDENTITY:07d}/{i % FACES_PER_IDENTITY + 1}-{i:09d}.jpg"
        writer.add(key, (i, i), pixels[i % 1000], True, box, points)
    writer.close()


def read_for_training(folder: Path, batches: int) -> dict:
    """Load the store as train.py does and gather batches; peak RSS (MB) and seconds."""
    from utils.faces.cache import load_cache
    from utils.training.batching import PKSampler, pool_datasets

    start = time.perf_counter()
    faces = pool_datasets({"synthetic": load_cache(folder)})
    sampler = PKSampler(faces.labels, 32, 4, seed=0)
    loaded = time.perf_counter() - start
    for step in range(batches):
        faces.faces.gather(sampler.batch(step))
    return {"load_seconds": loaded, "gather_seconds": time.perf_counter() - start - loaded,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faces", type=int, nargs="+", required=True, help="store sizes to measure")
    parser.add_argument("--size", type=int, default=16, help="face side in pixels (default 16)")
    parser.add_argument("--batches", type=int, default=200, help="batches gathered (default 200)")
    parser.add_argument("--read", type=Path, help=argparse.SUPPRESS)  # the reading process
    args = parser.parse_args()
    if args.read:
        print(json.dumps(read_for_training(args.read, args.batches)))
        return
    print("| faces | index load s | 200 batches gathered, s | peak RSS of the reading process (MB) |")
    for faces in args.faces:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "store"
            write_store(folder, faces, args.size)
            result = subprocess.run([sys.executable, __file__, "--faces", str(faces), "--batches", str(args.batches),
                                     "--read", str(folder)], capture_output=True, text=True, check=True)
            measured = json.loads(result.stdout.strip().splitlines()[-1])
            shutil.rmtree(folder)
        print(f"| {faces:,} | {measured['load_seconds']:.1f} | {measured['gather_seconds']:.1f} | "
              f"{measured['peak_mb']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
