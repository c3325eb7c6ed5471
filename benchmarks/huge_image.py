"""Time and peak memory of aligning one 12000 x 9000 JPEG photo, with a face and without.

    python benchmarks/huge_image.py [--face LFW_IMAGE]

The photos are drawn by utils/faces/huge_photos.py. Each is aligned by the aligned-face cache
(one worker) in a fresh interpreter, whose peak resident memory (VmHWM) is printed: it covers
Python, dlib's models and the photo. tests/test_huge_images.py holds the peak under 500 MB.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from utils.paths import lfw_dir  # noqa: E402

ALIGN_ONE = """
import json, sys, time
from utils.faces.cache import load_or_build
start = time.perf_counter()
data = load_or_build(sys.argv[1], out=sys.argv[2], workers=1, progress=False)
seconds = time.perf_counter() - start
peak_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"seconds": seconds, "peak_mb": peak_kb / 1024, "detected": bool(data.detected[0])}))
"""


def run(*args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=REPO,
                          check=True).stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--face", type=Path, default=lfw_dir() / "Aaron_Eckhart" / "Aaron_Eckhart_0001.jpg",
                        help="the face picture enlarged into the photo (default: %(default)s)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        photos = Path(tmp) / "photos"
        run("-m", "utils.faces.huge_photos", str(args.face), str(photos))
        for name in ("big_face.jpg", "big_noface.jpg"):
            dataset = Path(tmp) / name.removesuffix(".jpg") / "Someone"
            dataset.mkdir(parents=True)
            (dataset / name).symlink_to(photos / name)
            result = json.loads(run("-c", ALIGN_ONE, str(dataset.parent), str(Path(tmp) / f"cache-{name}")))
            print(f"{name} (12000x9000, {(photos / name).stat().st_size / 1e6:.1f} MB): aligned in "
                  f"{result['seconds']:.1f} s, peak memory {result['peak_mb']:.0f} MB, "
                  f"face {'found' if result['detected'] else 'not found (kept as a centre crop)'}")


if __name__ == "__main__":
    main()
