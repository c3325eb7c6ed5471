"""The gallery of known people: ``people/<Name>.jpg`` and ``people/<Name>/*.jpg``.

Every image is aligned (largest face) and embedded once. Embeddings are cached in
``cache/galleries/`` (never inside the user's picture folder), keyed by each file's content hash
and by the model (name and weights-file hash) and alignment settings, so adding or changing a picture embeds
only that picture, and another model or retrained weights start afresh. Images that cannot
be read or that show no face are reported by name and left out, never fatal.

``enrol`` captures frames that show exactly one face into ``people/<Name>/``.
"""
from __future__ import annotations

import hashlib
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import cv2
import numpy as np

from utils.atomic import atomic_path
from utils.download import file_digests
from utils.faces.align import FaceAligner
from utils.faces.image_io import ImageReadError, check_image_file, decode_image, is_image_name
from utils.paths import cache_dir, folder_cache_name

GALLERY_UPSAMPLE = (0, 1)  # gallery photos are few: also look for small faces
MAX_SIDE = 1280  # larger photos are shrunk while decoding (the face stays far above 96 px)
CACHE_VERSION = 2  # 2: photos are shrunk by Pillow while decoding (bounded memory), not by OpenCV after

Embed = Callable[[np.ndarray], np.ndarray]  # (N, S, S, 3) uint8 faces -> (N, D) embeddings


@dataclass(frozen=True)
class GalleryImage:
    """One gallery picture: whose it is and where it is (relpath is relative to the gallery)."""

    person: str
    path: Path
    relpath: str


@dataclass
class Gallery:
    """Embeddings of the usable gallery images; row i belongs to people[person_index[i]]."""

    people: list[str]
    embeddings: np.ndarray
    person_index: np.ndarray
    paths: list[str]
    issues: list[str] = field(default_factory=list)
    embedded_now: int = 0  # images embedded by this build (the rest came from the cache)

    def __len__(self) -> int:
        return len(self.paths)


def list_gallery(people_dir: str | Path) -> list[GalleryImage]:
    """Every gallery picture, sorted: <Name>.<ext> files and <Name>/<any>.<ext> files.

    Entries named like pictures that are not files (a broken symbolic link, a folder
    ``Ada/x.jpg/``) are listed too, so that build_gallery reports them.
    """
    root = Path(people_dir)
    found = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if is_image_name(entry) and not entry.is_dir():
            found.append(GalleryImage(entry.stem, entry, entry.name))
        elif entry.is_dir():
            found += [GalleryImage(entry.name, p, f"{entry.name}/{p.name}")
                      for p in sorted(entry.iterdir()) if is_image_name(p)]
    return found


def model_fingerprint(model_name: str, weights: str | Path) -> str:
    """Identifies a model's embeddings: its name and the hash of its weights file."""
    return f"{model_name}:{file_digests(weights, ['sha1'])['sha1']}"


def cache_path(people_dir: str | Path, model_name: str) -> Path:
    """cache/galleries/<folder name>-<hash of its path>-<model>.npz: one gallery's embeddings for
    one model, kept out of the gallery folder (which may be read-only or shared)."""
    return cache_dir() / "galleries" / f"{folder_cache_name(people_dir)}-{model_name}.npz"


# --- cache ---------------------------------------------------------------------------------------

@dataclass
class _Entry:
    faces_found: int
    embedding: np.ndarray | None


def _load_cache(path: Path, key: str) -> dict[str, _Entry]:
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["key"]) != key or int(data["version"]) != CACHE_VERSION:
                return {}
            hashes, found, embeddings = data["hashes"], data["faces_found"], data["embeddings"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return {}  # missing, from another model, or damaged: embed again
    return {str(h): _Entry(int(n), e if n > 0 else None) for h, n, e in zip(hashes, found, embeddings, strict=False)}


def _save_cache(path: Path, key: str, entries: dict[str, _Entry], dim: int) -> str | None:
    """Write the cache atomically; returns a warning instead of failing (e.g. a read-only cache folder)."""
    hashes = sorted(entries)
    embeddings = np.full((len(hashes), dim), np.nan, np.float32)
    for row, h in enumerate(hashes):
        if entries[h].embedding is not None:
            embeddings[row] = entries[h].embedding
    try:
        with atomic_path(path) as tmp:
            np.savez(tmp, key=np.array(key), version=np.array(CACHE_VERSION), hashes=np.array(hashes, dtype="U40"),
                     faces_found=np.array([entries[h].faces_found for h in hashes], np.int32),
                     embeddings=embeddings)
    except OSError as err:
        return f"could not save the embedding cache {path} ({err}); the gallery is embedded again next run"
    return None


# --- building ------------------------------------------------------------------------------------

def _align_largest(aligner: FaceAligner, rgb: np.ndarray) -> tuple[int, np.ndarray | None]:
    """(number of faces found, the largest one aligned or None)."""
    boxes = aligner.detect(rgb)
    return len(boxes), (aligner.align(rgb, boxes[0]) if boxes else None)


def build_gallery(people_dir: str | Path, embed: Embed, model_key: str, model_name: str,
                  output_size: int = 96, landmarks: str = "outer_eyes_and_nose",
                  upsample: int | Sequence[int] = GALLERY_UPSAMPLE, detector: str = "hog") -> Gallery:
    """Embeddings of every usable gallery image, from the cache where possible.

    model_key identifies the embeddings (see model_fingerprint); model_name names the cache file.
    The FaceAligner is only created when some image is not in the cache yet.
    """
    root = Path(people_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"gallery folder not found: {root}")
    key = f"{model_key}|{output_size}|{landmarks}|{upsample}|{detector}|{MAX_SIDE}"
    images = list_gallery(root)
    cached = _load_cache(cache_path(root, model_name), key)
    issues: list[str] = []
    entries: dict[str, _Entry] = {}
    row_hash: dict[str, str] = {}
    pending: list[tuple[str, np.ndarray]] = []  # (hash, aligned face) still to embed
    aligner: FaceAligner | None = None
    for image in images:
        try:
            data = check_image_file(image.path).read_bytes()
        except ImageReadError as err:
            issues.append(f"{image.relpath}: {err.reason}; skipped")
            continue
        except OSError as err:
            issues.append(f"{image.relpath}: cannot read the file ({err.strerror}); skipped")
            continue
        digest = hashlib.sha1(data).hexdigest()
        row_hash[image.relpath] = digest
        if digest in entries:
            continue
        if digest in cached:
            entries[digest] = cached[digest]
            continue
        try:
            rgb = decode_image(data, image.relpath, max_side=MAX_SIDE)
        except ImageReadError as err:
            issues.append(f"{err}; skipped")
            row_hash.pop(image.relpath)
            continue
        aligner = aligner or FaceAligner(output_size, landmarks, upsample, detector)
        count, face = _align_largest(aligner, rgb)
        entries[digest] = _Entry(count, None)
        if face is not None:
            pending.append((digest, face))

    if pending:
        vectors = np.asarray(embed(np.stack([face for _, face in pending])), np.float32)
        for (digest, _), vector in zip(pending, vectors, strict=True):
            entries[digest].embedding = vector

    people: list[str] = []
    rows, person_index, paths = [], [], []
    for image in images:
        entry = entries.get(row_hash.get(image.relpath, ""))
        if entry is None:
            continue
        if entry.faces_found == 0:
            issues.append(f"{image.relpath}: no face found; skipped")
            continue
        if entry.faces_found > 1:
            issues.append(f"{image.relpath}: {entry.faces_found} faces found; using the largest")
        if image.person not in people:
            people.append(image.person)
        rows.append(entry.embedding)
        person_index.append(people.index(image.person))
        paths.append(image.relpath)
    for person in sorted({i.person for i in images} - set(people)):
        issues.append(f"{person}: no usable image; left out of the gallery")

    dim = len(rows[0]) if rows else 0
    if pending or set(entries) != set(cached):
        warning = _save_cache(cache_path(root, model_name), key, entries, dim) if dim else None
        if warning:
            issues.append(warning)
    embeddings = np.stack(rows).astype(np.float32) if rows else np.zeros((0, dim), np.float32)
    return Gallery(people, embeddings, np.array(person_index, dtype=np.int64), paths, issues, len(pending))


# --- enrolment -----------------------------------------------------------------------------------

def check_person_name(name: str) -> str:
    """The name, stripped; ValueError when it cannot be a gallery folder name."""
    name = name.strip()
    if not name or name.startswith(".") or any(c in name for c in '/\\:*?"<>|'):
        raise ValueError(f"{name!r} cannot be used as a person's name (it names a folder in the gallery: "
                         f"no slashes, no leading dot)")
    return name


def enrol(frames: Iterable, aligner: FaceAligner, name: str, people_dir: str | Path, count: int = 5,
          every: int = 10, log: Callable[[str], None] = print) -> list[Path]:
    """Save up to count frames that show exactly one face as people/<name>/<name>_<time>_<k>.jpg.

    After each saved frame the next every-1 frames are passed over, so the pictures differ.
    frames yields utils.recognition.sources.Frame objects. Returns the files written.
    """
    name = check_person_name(name)
    folder = Path(people_dir) / name
    folder.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    saved: list[Path] = []
    wait = 0
    for frame in frames:
        if wait > 0:
            wait -= 1
            continue
        faces = len(aligner.detect(frame.rgb))
        if faces != 1:
            continue
        path = folder / f"{name}_{stamp}_{len(saved) + 1:02d}.jpg"
        if not cv2.imwrite(str(path), cv2.cvtColor(frame.rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95]):
            raise OSError(f"cannot write {path}")
        saved.append(path)
        log(f"captured {len(saved)}/{count}: {path}")
        if len(saved) >= count:
            break
        wait = every - 1
    return saved
