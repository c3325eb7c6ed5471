"""A 12000 x 9000 photo is aligned in bounded memory, its face found and stored in the file's coordinates.

Both steps run in fresh interpreters: the photos are drawn in one (utils/faces/huge_photos.py), and the
aligned cache is built in another, which reports its own peak memory (VmHWM).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from utils.faces.align import FaceAligner
from utils.faces.cache import DEFAULT_UPSAMPLE
from utils.faces.huge_photos import OFFSET, ZOOM
from utils.faces.image_io import read_image
from utils.paths import REPO_ROOT

FACE = "Aaron_Eckhart/Aaron_Eckhart_0001.jpg"
PEAK_LIMIT_MB = 500

ALIGN = """
import json, sys
import numpy as np
from utils.faces.cache import load_or_build
data = load_or_build(sys.argv[1], out=sys.argv[2], workers=1, progress=False)
peak_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"peak_mb": peak_kb / 1024, "paths": data.paths, "detected": data.detected.tolist(),
                  "landmarks": np.asarray(data.landmarks).tolist(), "faces": np.asarray(data.faces).tolist()}))
"""


def run_python(*args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env,
                          cwd=REPO_ROOT, timeout=600)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def huge_photos(tmp_path_factory, lfw_root):
    root = tmp_path_factory.mktemp("huge")
    run_python("-m", "utils.faces.huge_photos", str(lfw_root / FACE), str(root / "Someone"))
    return root


def test_a_12000_by_9000_photo_is_aligned_in_bounded_memory(huge_photos, tmp_path, lfw_root):
    result = json.loads(run_python("-c", ALIGN, str(huge_photos), str(tmp_path / "cache")))
    assert result["peak_mb"] < PEAK_LIMIT_MB
    assert result["paths"] == ["Someone/big_face.jpg", "Someone/big_noface.jpg"]
    assert result["detected"] == [True, False]

    small = read_image(lfw_root / FACE)
    aligner = FaceAligner(upsample=DEFAULT_UPSAMPLE)
    points = aligner.landmarks_of(small, aligner.detect(small)[0])
    expected = points * ZOOM + OFFSET  # in the big photo's own pixel coordinates
    found = np.array(result["landmarks"][0])
    face_width = np.ptp(expected[:, 0])
    assert np.abs(found - expected)[[36, 45, 33]].max() < 0.02 * face_width
    aligned_small = aligner.align_points(small, points).astype(int)
    assert np.abs(np.array(result["faces"][0]) - aligned_small).mean() < 6
