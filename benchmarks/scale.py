"""How ingest and training scale with the number of faces: faces/s, images/s and peak memory.

    python benchmarks/scale.py --faces 10000 [--steps 200] [--model ang] [--workdir DIR]

1. make: a synthetic MS-Celeb-style TSV of N faces under made-up identities (about 20 faces
   each); identity i draws its faces from one real person of LFW or the CelebA subset (i modulo
   the number of people), each face a random LFW/CelebA image of that person with random jitter
   (rotation, zoom, shift, brightness), JPEG-encoded. Kept in the work folder for re-runs.
2. ingest: ``python -m utils.faces.cache TSV --out STORE``, the real streamed ingest, from scratch.
3. train: the store loaded as train.py loads a TSV, P x K batches (32 x 4) through the tf.data
   pipeline, ``--steps`` training steps of the model (float32, train.py's default).

Each phase runs as its own process; its peak resident memory is the peak, sampled every 0.1 s,
of the summed RSS of the process and its children (the ingest's worker processes), and the
peak of the main process alone (exact, from the kernel). Prints one table row per phase.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from utils.paths import REPO_ROOT, cache_dir, data_dir, lfw_dir  # noqa: E402

FACES_PER_IDENTITY = 20
SAMPLE_SECONDS = 0.1


# --- phase 1: the synthetic TSV --------------------------------------------------------------

def source_people() -> list[list[str]]:
    """Image paths of each real person with two or more images: LFW, then the CelebA subset."""
    people = []
    for root in (lfw_dir(), data_dir() / "celeba-subset"):
        for person in sorted(p for p in root.iterdir() if p.is_dir()):
            images = sorted(str(p) for p in person.glob("*.jpg"))
            if len(images) >= 2:
                people.append(images)
    return people


def jittered_line(job: tuple[int, int, list[str], int]) -> str:
    """One TSV line: a jittered copy of a random image of the identity's real person."""
    import cv2
    import numpy as np

    from utils.datasets.msceleb import TsvFace, format_line
    from utils.faces.image_io import read_image

    identity, number, images, seed = job
    rng = np.random.default_rng([seed, identity, number])
    rgb = read_image(images[int(rng.integers(len(images)))])
    h, w = rgb.shape[:2]
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(-6, 6), rng.uniform(0.95, 1.05))
    matrix[:, 2] += rng.uniform(-0.03, 0.03, 2) * (w, h)
    rgb = cv2.warpAffine(rgb, matrix, (w, h), borderMode=cv2.BORDER_REFLECT)
    rgb = np.clip(rgb.astype(np.float32) * rng.uniform(0.85, 1.15), 0, 255).astype(np.uint8)
    return format_line(TsvFace(mid=f"m.synth{identity:07d}", face_id=f"{number:03d}", image=rgb, rank=number + 1))


def _no_setup() -> None:
    """Pool initializer: the workers need nothing set up."""


def make_tsv(path: Path, faces: int, seed: int, workers: int) -> None:
    """Write the synthetic TSV (streamed: lines are written as the worker processes make them)."""
    from utils.faces.cache import worker_pool

    people = source_people()
    jobs = ((i // FACES_PER_IDENTITY, i % FACES_PER_IDENTITY, people[(i // FACES_PER_IDENTITY) % len(people)], seed)
            for i in range(faces))
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "w", encoding="ascii") as out, worker_pool(workers, _no_setup) as pool:
        for line in pool.imap(jittered_line, jobs, chunksize=64):
            out.write(line + "\n")
    os.replace(tmp, path)


# --- phase 3: training from the store --------------------------------------------------------

def train_from_store(tsv: Path, store: Path, model: str, steps: int) -> dict:
    """Load the store as train.py loads a TSV, and train ``steps`` steps; images/s of the timed steps."""
    from utils.console import import_tensorflow_quietly

    import_tensorflow_quietly()  # TensorFlow's start-up lines stay off the figures
    import tensorflow as tf

    from benchmarks.train_speed import images_per_second
    from utils.faces.cache import load_or_build_tsv
    from utils.training.batching import PKSampler, pool_datasets, training_dataset

    faces = pool_datasets({"synthetic": load_or_build_tsv(tsv, out=store, progress=False)})
    sampler = PKSampler(faces.labels, 32, 4, seed=0)
    tf.keras.utils.set_random_seed(0)
    rate = images_per_second(model, training_dataset(faces, sampler), sampler.batch_size, steps)
    return {"images_per_second": rate, "faces": len(faces), "identities": faces.num_identities}


# --- measuring a phase -----------------------------------------------------------------------

def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return 0


def _tree(pid: int) -> list[int]:
    """The process and its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        found.append(todo.pop())
        todo += children.get(found[-1], [])
    return found


def run_phase(command: list[str]) -> dict:
    """Run a command; its wall time, the sampled peak RSS of its process tree and its own peak RSS (MB)."""
    start = time.perf_counter()
    job = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True,
                           env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], sum(_rss_kb(p) for p in _tree(job.pid)))
            time.sleep(SAMPLE_SECONDS)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output = job.stdout.read()
    _, status, usage = os.wait4(job.pid, 0)
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    if status != 0:
        sys.exit(f"{' '.join(command)} failed (status {status})")
    return {"seconds": seconds, "tree_peak_mb": peak[0] / 1024, "main_peak_mb": usage.ru_maxrss / 1024,
            "output": output}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faces", type=int, required=True, help="faces in the synthetic dataset")
    parser.add_argument("--steps", type=int, default=200, help="training steps (default 200)")
    parser.add_argument("--model", default="ang", help="model trained (default ang)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: all cores)")
    parser.add_argument("--workdir", type=Path, help="folder for the TSV and the store (default: cache/scale)")
    parser.add_argument("--train-only", action="store_true", help=argparse.SUPPRESS)  # phase 3, in its own process
    args = parser.parse_args()
    if args.faces < 2 * FACES_PER_IDENTITY * 32:
        parser.error(f"--faces must be at least {2 * FACES_PER_IDENTITY * 32} (two passes of 32 identities)")
    work = args.workdir or cache_dir() / "scale"
    tsv, store = work / f"synthetic-{args.faces}-seed{args.seed}.tsv", work / f"store-{args.faces}-seed{args.seed}"
    if args.train_only:
        print(json.dumps(train_from_store(tsv, store, args.model, args.steps)))
        return

    work.mkdir(parents=True, exist_ok=True)
    if not tsv.is_file():
        start = time.perf_counter()
        make_tsv(tsv, args.faces, args.seed, args.workers)
        print(f"made {tsv} ({tsv.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - start:.0f} s", flush=True)
    shutil.rmtree(store, ignore_errors=True)
    ingest = run_phase([sys.executable, "-m", "utils.faces.cache", str(tsv), "--out", str(store),
                        "--workers", str(args.workers)])
    train = run_phase([sys.executable, str(Path(__file__).resolve()), "--faces", str(args.faces), "--steps",
                       str(args.steps), "--model", args.model, "--seed", str(args.seed), "--workdir", str(work),
                       "--train-only"])
    trained = json.loads(train["output"].strip().splitlines()[-1])
    store_bytes = sum(p.stat().st_size for p in (store / "shards").iterdir())
    print(f"faces {args.faces}: store {store_bytes / 1e9:.2f} GB, TSV {tsv.stat().st_size / 1e9:.2f} GB; "
          f"training set {trained['faces']} detected faces of {trained['identities']} identities")
    print("| faces | ingest faces/s | ingest peak RSS, all processes / main (MB) | training images/s "
          "| training peak RSS (MB) |")
    print(f"| {args.faces:,} | {args.faces / ingest['seconds']:.1f} | {ingest['tree_peak_mb']:.0f} / "
          f"{ingest['main_peak_mb']:.0f} | {trained['images_per_second']:.1f} | {train['main_peak_mb']:.0f} |")


if __name__ == "__main__":
    main()
