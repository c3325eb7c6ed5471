"""Align all of LFW and print images/s, wall time and the no-face count, 1 worker vs all workers.

    python benchmarks/align.py [--lfw DIR] [--single-worker-images 1000] [--out DIR]

The all-workers run aligns the whole dataset from scratch into --out (default:
a temporary folder). The 1-worker run times the first N images only (it is the
same code path, one process), so the two rates compare per image.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from utils.faces.cache import list_images, load_or_build  # noqa: E402
from utils.paths import lfw_dir  # noqa: E402


def timed_build(root: Path, out: Path, workers: int) -> tuple[float, object]:
    start = time.perf_counter()
    data = load_or_build(root, out=out, workers=workers)
    return time.perf_counter() - start, data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lfw", type=Path, default=lfw_dir(), help="LFW folder (default: %(default)s)")
    parser.add_argument("--single-worker-images", type=int, default=1000,
                        help="images timed with one worker (default 1000)")
    parser.add_argument("--out", type=Path, help="cache folder for the full run (default: temporary)")
    args = parser.parse_args()
    workers = os.cpu_count() or 1

    with tempfile.TemporaryDirectory() as tmp:
        subset = Path(tmp) / "subset"
        for rel in list_images(args.lfw)[: args.single_worker_images]:
            (subset / rel).parent.mkdir(parents=True, exist_ok=True)
            (subset / rel).symlink_to(args.lfw / rel)
        one_time, one = timed_build(subset, Path(tmp) / "one", workers=1)
        out = args.out or Path(tmp) / "all"
        if out.exists():
            sys.exit(f"{out} exists; the benchmark times a build from scratch")
        all_time, full = timed_build(args.lfw, out, workers=workers)

    print(f"1 worker : {len(one)} images in {one_time:.1f} s = {len(one) / one_time:.1f} images/s, "
          f"no face in {int((~one.detected).sum())}")
    print(f"{workers} workers: {len(full)} images in {all_time:.1f} s = {len(full) / all_time:.1f} images/s, "
          f"no face in {int((~full.detected).sum())}, unreadable {len(full.unreadable)}")
    print(f"speed-up of {workers} workers over 1: {(len(full) / all_time) / (len(one) / one_time):.2f}x")


if __name__ == "__main__":
    main()
