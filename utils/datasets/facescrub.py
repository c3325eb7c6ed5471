"""FaceScrub downloader: fetch, verify and crop the faces of the published URL lists.

FaceScrub (Ng & Winkler, 2014) is distributed as two tab-separated lists,
``facescrub_actors.txt`` and ``facescrub_actresses.txt``, with the header
``name image_id face_id url bbox sha256``: ``bbox`` is ``x1,y1,x2,y2`` in pixels of
the original image and ``sha256`` is the digest of that original image file.

Faces are written as ``OUT/<Name_With_Underscores>/<face_id>.jpg``. Re-running skips
faces already on disk; failures (dead links, timeouts, checksum mismatches,
non-images) are recorded in ``OUT/.facescrub_state.json`` and not retried unless
asked, and a half-downloaded image is resumed. Every face written is listed in
``OUT/.facescrub-files.txt``; a non-empty OUT without that list is refused unless
``--force`` is given, and a file this tool did not write is never overwritten.

    python -m utils.datasets.facescrub facescrub_actors.txt facescrub_actresses.txt OUT_DIR --workers 16
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from utils.atomic import atomic_path, write_text_atomic
from utils.console import progress_bar
from utils.datasets.folders import DatasetError
from utils.datasets.manifest import OutputManifest
from utils.download import DownloadError, download_file
from utils.faces.image_io import ImageReadError, decode_image, jpeg_bytes

HEADER = ("name", "image_id", "face_id", "url", "bbox", "sha256")
STATE_FILE = ".facescrub_state.json"
INCOMING_DIR = ".incoming"  # hidden, so folder readers ignore unfinished downloads
JPEG_QUALITY = 95
SAVE_STATE_EVERY = 200
MAX_IMAGE_BYTES = 50 << 20  # a photo larger than 50 MiB is not a FaceScrub image


@dataclass(frozen=True)
class FaceScrubEntry:
    """One face of a FaceScrub list."""

    name: str
    image_id: str
    face_id: str
    url: str
    bbox: tuple[int, int, int, int]  # x1, y1, x2, y2
    sha256: str

    @property
    def folder(self) -> str:
        """The identity folder name: the person's name with spaces as underscores."""
        return "_".join(self.name.split())

    @property
    def relpath(self) -> str:
        return f"{self.folder}/{self.face_id}.jpg"


@dataclass
class DownloadReport:
    """What one `download_faces` run did; ``failed`` maps ``Name/face_id.jpg`` to the reason."""

    downloaded: int = 0
    already_present: int = 0
    skipped_known_failures: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    foreign: int = 0  # another file (not written by this tool) is where the face would go: left alone

    def summary(self) -> str:
        return (f"{self.downloaded} downloaded, {self.already_present} already present, "
                f"{self.skipped_known_failures} known failures skipped, {len(self.failed)} failed"
                + (f", {self.foreign} not written because another file is at their place" if self.foreign else ""))


def _parse_line(fields: list[str], where: str) -> FaceScrubEntry:
    if len(fields) != len(HEADER):
        raise DatasetError(f"{where}: expected {len(HEADER)} tab-separated columns, got {len(fields)}")
    name, image_id, face_id, url, bbox_text, sha = (f.strip() for f in fields)
    folder = "_".join(name.split())
    if not folder or folder in (".", "..") or "/" in folder or "\\" in folder:
        raise DatasetError(f"{where}: unusable name {name!r}")
    if not re.fullmatch(r"\w+", face_id):
        raise DatasetError(f"{where}: face_id {face_id!r} is not alphanumeric")
    try:
        bbox = tuple(int(round(float(v))) for v in bbox_text.split(","))
    except ValueError:
        bbox = ()
    if len(bbox) != 4 or bbox[2] <= bbox[0] or bbox[3] <= bbox[1]:
        raise DatasetError(f"{where}: bbox {bbox_text!r} is not 'x1,y1,x2,y2' with x2 > x1 and y2 > y1")
    if not re.fullmatch(r"[0-9a-fA-F]{64}", sha):
        raise DatasetError(f"{where}: sha256 {sha!r} is not 64 hex digits")
    return FaceScrubEntry(name, image_id, face_id, url, bbox, sha.lower())


def parse_list(path: str | Path) -> list[FaceScrubEntry]:
    """Read a FaceScrub list file; malformed lines raise `DatasetError` naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"FaceScrub list not found: {path}")
    with open(path, encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    if not lines or tuple(f.strip().lower() for f in lines[0].split("\t")) != HEADER:
        raise DatasetError(f"{path}:1: expected the header {' '.join(HEADER)!r} (tab-separated)")
    return [
        _parse_line(line.split("\t"), f"{path}:{number}")
        for number, line in enumerate(lines[1:], start=2)
        if line.strip()
    ]


def crop_box(rgb: np.ndarray, bbox: tuple[int, int, int, int], margin: float = 0.0) -> np.ndarray:
    """Crop ``bbox`` (x1, y1, x2, y2) enlarged by ``margin`` x its size on each side, clamped to the image."""
    x1, y1, x2, y2 = bbox
    dx, dy = margin * (x2 - x1), margin * (y2 - y1)
    height, width = rgb.shape[:2]
    left, top = max(0, round(x1 - dx)), max(0, round(y1 - dy))
    right, bottom = min(width, round(x2 + dx)), min(height, round(y2 + dy))
    if right <= left or bottom <= top:
        raise ValueError(f"bbox {bbox} lies outside the {width}x{height} image")
    return rgb[top:bottom, left:right]


def _write_jpeg(rgb: np.ndarray, dest: Path) -> None:
    """Write atomically, so a face on disk is always a complete file."""
    with atomic_path(dest) as tmp:
        tmp.write_bytes(jpeg_bytes(np.ascontiguousarray(rgb), JPEG_QUALITY))


def _fetch_face(entry: FaceScrubEntry, out_dir: Path, manifest: OutputManifest, margin: float, timeout: float,
                verify: bool, retries: int) -> str | None:
    """Download, verify, crop and save one face; the failure reason, or None on success."""
    raw = out_dir / INCOMING_DIR / f"{entry.folder}_{entry.face_id}"
    try:
        download_file(entry.url, raw, sha256=entry.sha256 if verify else None, timeout=timeout,
                      progress=False, retries=retries, max_bytes=MAX_IMAGE_BYTES)
        rgb = decode_image(raw.read_bytes(), entry.url)
        face = crop_box(rgb, entry.bbox, margin)
        manifest.add(entry.relpath)
        _write_jpeg(face, out_dir / entry.relpath)
    except DownloadError as err:
        return f"{type(err).__name__}: {err.reason}"
    except ImageReadError as err:
        return f"not an image: {err}"
    except ValueError as err:  # bbox outside the image
        return str(err)
    finally:
        raw.unlink(missing_ok=True)
    return None


def _load_state(path: Path) -> dict[str, dict[str, str]]:
    if not path.is_file():
        return {}
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")).get("failed", {}))
    except (ValueError, AttributeError) as err:
        raise DatasetError(f"{path} is damaged ({err}); delete it to start the failure list afresh") from None


def _save_state(path: Path, failed: dict[str, dict[str, str]]) -> None:
    write_text_atomic(path, json.dumps({"version": 1, "failed": failed}, indent=1, sort_keys=True))


def download_faces(
    entries: Iterable[FaceScrubEntry],
    out_dir: str | Path,
    workers: int = 16,
    margin: float = 0.0,
    timeout: float = 15.0,
    retries: int = 1,
    retry_failed: bool = False,
    verify: bool = True,
    progress: bool = True,
    force: bool = False,
) -> DownloadReport:
    """Download every face not yet in ``out_dir`` with ``workers`` threads; see the module docstring.

    A non-empty ``out_dir`` this tool did not write raises `DatasetError` unless ``force``.
    """
    out_dir = Path(out_dir)
    manifest = OutputManifest.claim(out_dir, "facescrub", force)
    state_path = out_dir / STATE_FILE
    known_failures = _load_state(state_path)
    report = DownloadReport()
    todo: dict[str, FaceScrubEntry] = {}
    for entry in entries:
        if entry.relpath in todo:
            continue
        if (out_dir / entry.relpath).exists() or (out_dir / entry.relpath).is_symlink():
            if entry.relpath in manifest:
                report.already_present += 1
            else:
                report.foreign += 1
        elif entry.relpath in known_failures and not retry_failed:
            report.skipped_known_failures += 1
        else:
            todo[entry.relpath] = entry
    pool = ThreadPoolExecutor(max_workers=max(1, workers))
    try:
        with progress_bar(total=len(todo), unit="face", desc="FaceScrub", disable=not progress) as bar:
            futures = {pool.submit(_fetch_face, entry, out_dir, manifest, margin, timeout, verify, retries): entry
                       for entry in todo.values()}
            for done, future in enumerate(as_completed(futures), start=1):
                entry = futures[future]
                reason = future.result()
                if reason is None:
                    report.downloaded += 1
                    known_failures.pop(entry.relpath, None)
                else:
                    report.failed[entry.relpath] = reason
                    known_failures[entry.relpath] = {"url": entry.url, "reason": reason}
                bar.update()
                bar.set_postfix(failed=len(report.failed), refresh=False)
                if done % SAVE_STATE_EVERY == 0:
                    _save_state(state_path, known_failures)
    finally:
        # On Ctrl-C: drop the queued faces, let the running ones end, keep what is known.
        pool.shutdown(wait=True, cancel_futures=True)
        _save_state(state_path, known_failures)
        incoming = out_dir / INCOMING_DIR
        if incoming.is_dir() and not any(incoming.iterdir()):
            incoming.rmdir()
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m utils.datasets.facescrub",
        description="Download the FaceScrub faces listed in facescrub_actors.txt / facescrub_actresses.txt "
                    "into OUT_DIR/<Name>/<face_id>.jpg (cropped to the listed box). Re-running resumes; "
                    "links that failed before are skipped unless --retry-failed is given.",
    )
    parser.add_argument("lists", nargs="+", type=Path, metavar="LIST", help="FaceScrub list file(s)")
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="folder-per-identity output tree")
    parser.add_argument("--workers", type=int, default=16, help="parallel downloads (default 16)")
    parser.add_argument("--margin", type=float, default=0.0,
                        help="enlarge the box by this fraction of its size on each side (default 0)")
    parser.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for a server (default 15)")
    parser.add_argument("--retry-failed", action="store_true", help="retry faces that failed in earlier runs")
    parser.add_argument("--no-checksum", action="store_true",
                        help="accept images whose sha256 differs from the list (boxes may then be wrong)")
    parser.add_argument("--force", action="store_true",
                        help="download into a non-empty OUT_DIR this tool did not write (its files are never "
                             "overwritten)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        entries = [entry for path in args.lists for entry in parse_list(path)]
        report = download_faces(entries, args.out_dir, workers=args.workers, margin=args.margin,
                                timeout=args.timeout, retry_failed=args.retry_failed,
                                verify=not args.no_checksum, progress=not args.no_progress, force=args.force)
    except (DatasetError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(report.summary())
    shown = sorted(report.failed.items())[:20]
    for relpath, reason in shown:
        print(f"  {relpath}: {reason}")
    if len(report.failed) > len(shown):
        print(f"  ... and {len(report.failed) - len(shown)} more")
    if report.failed or report.skipped_known_failures:
        print(f"all failures are listed in {args.out_dir / STATE_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
