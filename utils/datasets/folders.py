"""Folder-per-identity image trees: ``<root>/<identity>/<image>``.

LFW, an exported MS-Celeb-1M, a downloaded FaceScrub and a user's own photos all
use this layout; `list_identity_images` turns one into a sorted, filtered list.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from utils.faces.image_io import IMAGE_EXTENSIONS, is_image_name


class DatasetError(ValueError):
    """A dataset on disk or a dataset description file is missing or malformed."""


class LabelledImage(NamedTuple):
    """One image of a folder tree; unpacks as ``identity, path``."""

    identity: str
    path: Path


def list_identity_images(
    root: str | Path,
    min_images: int = 1,
    exclude: Iterable[str] = (),
    extensions: Iterable[str] = IMAGE_EXTENSIONS,
    keep_unreadable: bool = False,
) -> list[LabelledImage]:
    """Every image under ``root/<identity>/``, sorted by identity then file name.

    Identities named in ``exclude`` are dropped first, then those with fewer than
    ``min_images`` images. Hidden files and folders (``.name``), loose files
    directly in ``root`` and files with other extensions (compared case-blind)
    are ignored. Entries named like images that are not files (broken symbolic links,
    folders such as ``x.jpg/``) are left out too, unless ``keep_unreadable`` asks to
    keep them so that the caller reports them as unreadable.
    Raises `DatasetError` for a missing root or when nothing is left.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder not found: {root}")
    if min_images < 1:
        raise ValueError(f"min_images must be at least 1, got {min_images}")
    suffixes = {ext.lower() if ext.startswith(".") else f".{ext.lower()}" for ext in extensions}
    excluded = set(exclude)
    images = [
        LabelledImage(folder.name, file)
        for folder in sorted(root.iterdir())
        if folder.is_dir() and not folder.name.startswith(".") and folder.name not in excluded
        for file in sorted(folder.iterdir())
        if (file.is_file() or (keep_unreadable and is_image_name(file)))
        and not file.name.startswith(".") and file.suffix.lower() in suffixes
    ]
    if not images:
        raise DatasetError(
            f"no images ({', '.join(sorted(suffixes))}) in identity folders under {root}"
            + (f" after excluding {len(excluded)} identities" if excluded else "")
        )
    counts = Counter(image.identity for image in images)
    kept = [image for image in images if counts[image.identity] >= min_images]
    if not kept:
        raise DatasetError(
            f"no identity under {root} has {min_images} or more images "
            f"({len(counts)} identities, the largest has {max(counts.values())})"
        )
    return kept
