"""The 10 people x 10 LFW faces used for the t-SNE figures.

The list is committed (benchmark_faces/manifest.txt); the images are not.
``python -m utils.evaluation.benchmark_faces [--lfw DIR]`` copies them from an LFW folder.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from utils.datasets.folders import DatasetError
from utils.datasets.lfw import benchmark_people, check_images_exist
from utils.paths import BENCHMARK_FACES_DIR, lfw_dir

MANIFEST = BENCHMARK_FACES_DIR / "manifest.txt"


def benchmark_images(manifest: Path = MANIFEST) -> list[str]:
    """The manifest's relative paths, 'Name/Name_NNNN.jpg', grouped by person."""
    return [path for paths in benchmark_people(manifest).values() for path in paths]


def fill_benchmark_faces(lfw_root: Path | None = None, dest: Path = BENCHMARK_FACES_DIR,
                         manifest: Path = MANIFEST) -> Path:
    """Copy the manifest's images from lfw_root into dest/<Name>/ (skipping those already there)."""
    root = Path(lfw_root) if lfw_root else lfw_dir()
    images = benchmark_images(manifest)
    check_images_exist(images, root)
    for rel in images:
        target = dest / rel
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(root / rel, target)
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m utils.evaluation.benchmark_faces",
                                     description="Fill benchmark_faces/ with the 100 LFW images its manifest lists.")
    parser.add_argument("--lfw", type=Path, default=None, help="LFW folder (default: ../shared/data/lfw)")
    args = parser.parse_args(argv)
    try:
        dest = fill_benchmark_faces(args.lfw)
    except DatasetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{len(benchmark_images())} benchmark faces in {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
