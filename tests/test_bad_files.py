"""A corpus of bad and unusual files, mixed with good faces, through every tool that reads a folder.

The aligned cache (``python -m utils.faces.cache``), the gallery and recognize.py's folder source
(one ``recognize.py --people DIR --source DIR`` run) and ``train.py --data DIR`` must each: end
with a sensible exit code and no traceback, name every unreadable entry, and use every good file
(the unusual formats made from a real face count as good: they must be read, not refused).
The three commands run side by side (module fixture ``runs``); the tests check their results.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from utils.faces.cache import load_or_build
from utils.paths import REPO_ROOT

# LFW people under made-up names: train.py always leaves out LFW's DevTest people by name.
PEOPLE = {"Person_A": "Colin_Powell", "Person_B": "Tony_Blair"}


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG file whose header declares width x height pixels: a decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def unusual_copies(face: Path, folder: Path) -> list[str]:
    """The face saved in unusual but valid forms; returns their names."""
    rgb = Image.open(face).convert("RGB")
    rgb.convert("RGBA").save(folder / "rgba.png")
    grey16 = (np.asarray(rgb.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    Image.fromarray(grey16).save(folder / "grey16.png")
    rgb.convert("CMYK").save(folder / "cmyk.jpg", quality=95)
    rgb.convert("P", palette=Image.Palette.ADAPTIVE).save(folder / "palette.gif")
    rgb.save(folder / "face.webp", quality=90)
    rotated = rgb.transpose(Image.Transpose.ROTATE_90)  # stored on its side; EXIF 6 turns it upright
    exif = rotated.getexif()
    exif[0x0112] = 6
    rotated.save(folder / "exif_rotated.jpg", exif=exif, quality=95)
    shutil.copy(face, folder / "Zoë Ñandú 日本.jpg")
    Image.new("RGB", (1, 1), (90, 80, 70)).save(folder / "one_pixel.png")
    return ["rgba.png", "grey16.png", "cmyk.jpg", "palette.gif", "face.webp", "exif_rotated.jpg",
            "Zoë Ñandú 日本.jpg", "one_pixel.png"]


def bad_entries(face: Path, folder: Path) -> list[str]:
    """Unreadable entries named like images; returns their names."""
    (folder / "empty.jpg").write_bytes(b"")
    data = face.read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "text.jpg").write_text("this is a note, not a picture")
    (folder / "bomb.png").write_bytes(png_declaring(100_000, 100_000))
    (folder / "gone.jpg").symlink_to(folder / "deleted-long-ago.jpg")
    (folder / "album.jpg").mkdir()
    return ["empty.jpg", "truncated.jpg", "text.jpg", "bomb.png", "gone.jpg", "album.jpg"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, lfw_root):
    """data/<Person>/ (3 good LFW faces each, unusual forms in Person_B/, bad entries in Person_A/) and
    flat/ (every one of those in one folder)."""
    root = tmp_path_factory.mktemp("bad_files")
    good = []
    for person, lfw_name in PEOPLE.items():
        (root / "data" / person).mkdir(parents=True)
        for image in sorted((lfw_root / lfw_name).glob("*.jpg"))[:3]:
            shutil.copy(image, root / "data" / person / image.name)
            good.append(f"{person}/{image.name}")
    face = lfw_root / "Tony_Blair" / "Tony_Blair_0001.jpg"
    unusual = [f"Person_B/{name}" for name in unusual_copies(face, root / "data" / "Person_B")]
    bad = [f"Person_A/{name}" for name in bad_entries(face, root / "data" / "Person_A")]
    (root / "flat").mkdir()
    for rel in good + unusual:
        shutil.copy(root / "data" / rel, root / "flat" / Path(rel).name)
    bad_entries(face, root / "flat")
    return {"root": root, "good": good, "unusual": unusual, "bad": bad}


class Command:
    """A script started in the background, its output going to files (no pipe can fill up)."""

    def __init__(self, folder: Path, name: str, *args: str, cwd: Path = REPO_ROOT):
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
        self.out, self.err = folder / f"{name}.out", folder / f"{name}.err"
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.process = subprocess.Popen([sys.executable, *args], cwd=cwd, stdout=out, stderr=err, env=env,
                                            stdin=subprocess.DEVNULL)

    def finish(self, timeout: float = 900) -> subprocess.CompletedProcess:
        code = self.process.wait(timeout=timeout)
        return subprocess.CompletedProcess(self.process.args, code, self.out.read_text(), self.err.read_text())


@pytest.fixture(scope="module")
def runs(corpus, tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    """The three commands, recognize.py beside the other two; train.py starts when the cache command has
    aligned the folder (it reuses that cache, so it must name the unreadable files from it)."""
    logs, work = tmp_path_factory.mktemp("logs"), tmp_path_factory.mktemp("train")
    data, flat = corpus["root"] / "data", corpus["root"] / "flat"
    recognize = Command(logs, "recognize", "recognize.py", "--people", str(data), "--source", str(flat), "--json",
                        "--no-window", "--threshold", "0.8")
    cache = Command(logs, "cache", "-m", "utils.faces.cache", str(data), "--workers", "2").finish()
    train = Command(logs, "train", str(REPO_ROOT / "train.py"), "--data", str(data), "--model", "ang", "--epochs",
                    "1", "--steps-per-epoch", "1", "--no-validation", "--batch-identities", "2",
                    "--images-per-identity", "2", "--weights-out", str(work / "ang.weights.h5"),
                    "--checkpoint-dir", str(work / "checkpoints"), "--log-dir", str(work / "logs"), cwd=work)
    return {"cache": cache, "recognize": recognize.finish(), "train": train.finish()}


def assert_clean(done: subprocess.CompletedProcess, code: int = 0) -> str:
    output = done.stdout + done.stderr
    assert done.returncode == code, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    return output


def test_aligned_cache(corpus, runs):
    output = assert_clean(runs["cache"])
    for rel in corpus["bad"]:
        assert f"unreadable: {rel}" in output
    assert "no face: Person_B/one_pixel.png" in output
    data = load_or_build(corpus["root"] / "data", workers=1, progress=False)  # the cache the command built
    assert sorted(data.paths) == sorted(corpus["good"] + corpus["unusual"])
    faces = {p for p, found in zip(data.paths, data.detected, strict=True) if found}
    assert set(corpus["good"]) <= faces
    assert set(corpus["unusual"]) - faces == {"Person_B/one_pixel.png"}  # every other form is read correctly


def test_gallery_and_folder_source_of_recognize(corpus, runs):
    flat = corpus["root"] / "flat"
    done = runs["recognize"]
    output = assert_clean(done)
    for rel in corpus["bad"]:
        assert f"gallery: {rel}: " in output  # the gallery names it
        assert f"{flat / Path(rel).name}: " in output  # the folder source names it
    assert "gallery: Person_B/one_pixel.png: no face found" in output
    pictures = len(corpus["good"]) + len(corpus["unusual"]) - 1
    assert f"gallery: 2 people, {pictures} pictures" in output
    frames = [json.loads(line) for line in done.stdout.splitlines()]
    assert sorted(f["image"] for f in frames) == sorted(Path(rel).name for rel in corpus["good"] + corpus["unusual"])
    named = {f["image"]: [face["name"] for face in f["faces"]] for f in frames}
    for rel in corpus["good"]:
        assert len(named[Path(rel).name]) == 1, rel  # its face is found
    for rel in corpus["unusual"]:  # forms of a gallery picture: found and named
        assert named[Path(rel).name] == ([] if rel.endswith("one_pixel.png") else ["Person_B"]), rel


def test_train_on_a_folder_with_bad_files(corpus, runs):
    output = assert_clean(runs["train"])
    for rel in corpus["bad"]:
        assert rel in output
    assert f"{len(corpus['good']) + len(corpus['unusual']) - 1} detected faces of 2 identities" in output
