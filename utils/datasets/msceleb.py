"""MS-Celeb-1M face files (TSV): a streaming reader, a writer for tests, an exporter to folders.

Accepted format, as documented with the release (MsCelebV1-Faces-Aligned.tsv,
FaceImageCroppedWithAlignment.tsv and the cropped/aligned dev sets): one face per
line, 7 tab-separated columns

    1 Freebase MID        e.g. m.0107_f (the identity)
    2 ImageSearchRank     integer
    3 ImageURL
    4 PageURL
    5 FaceID
    6 FaceRectangle       base64 of four little-endian float32: left, top, right, bottom,
                          relative to the source image (an empty column is accepted)
    7 FaceData            base64 of the face's JPEG file

The 6-column whole-image files of the release (Query/Name instead of FaceID, no face
crop) are not face files and are reported as wrong-column lines.

Lines that are damaged (wrong column count, bad base64, undecodable image, unsafe
MID or FaceID) are skipped, counted and reported in one warning with their line
numbers; ``strict=True`` raises on the first one instead.

    python -m utils.datasets.msceleb FaceImageCroppedWithAlignment.tsv OUT_DIR --min-images 10

writes ``OUT_DIR/<MID>/<rank>-<FaceID>.jpg`` (the original JPEG bytes) for training, and
lists every file it writes in ``OUT_DIR/.msceleb-files.txt``: dropping identities with too
few faces deletes only listed files, and a non-empty OUT_DIR without that list is refused
(``--force`` adds to it, still deleting nothing it did not write).
"""
from __future__ import annotations

import argparse
import base64
import binascii
import os
import re
import struct
import sys
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from utils.console import progress_bar
from utils.datasets.folders import DatasetError
from utils.datasets.manifest import OutputManifest
from utils.faces.image_io import ImageReadError, decode_image, jpeg_bytes

COLUMNS = ("MID", "ImageSearchRank", "ImageURL", "PageURL", "FaceID", "FaceRectangle", "FaceData")
RECTANGLE = struct.Struct("<4f")
_SAFE_NAME = re.compile(r"[\w.\-]+")
WARN_LINES = 20  # how many corrupt line numbers the warning spells out


class MsCelebFormatError(DatasetError):
    """A corrupt line met in strict mode."""


@dataclass(frozen=True)
class MsCelebFace:
    """One decoded face: ``image`` is (H, W, 3) uint8 RGB decoded from ``jpeg``."""

    mid: str
    face_id: str
    rank: int
    rectangle: tuple[float, float, float, float] | None
    image: np.ndarray
    jpeg: bytes
    line: int

    @property
    def file_name(self) -> str:
        return f"{self.rank}-{self.face_id}.jpg"


@dataclass(frozen=True)
class CorruptLine:
    line: int
    reason: str


def _b64(text: bytes, column: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"bad base64 in {column}") from None


def _parse(raw: bytes, number: int, path: Path) -> MsCelebFace:
    """Decode one line; ValueError with a short reason if it is corrupt."""
    fields = raw.rstrip(b"\r\n").split(b"\t")
    if len(fields) != len(COLUMNS):
        raise ValueError(f"expected {len(COLUMNS)} tab-separated columns ({', '.join(COLUMNS)}), got {len(fields)}")
    mid, face_id = fields[0].decode("utf-8", "replace"), fields[4].decode("utf-8", "replace")
    for column, value in (("MID", mid), ("FaceID", face_id)):
        if not _SAFE_NAME.fullmatch(value) or value in (".", ".."):
            raise ValueError(f"unusable {column} {value!r}")
    try:
        rank = int(fields[1])
    except ValueError:
        raise ValueError(f"ImageSearchRank {fields[1][:20]!r} is not a whole number") from None
    rectangle = None
    if fields[5].strip():
        packed = _b64(fields[5].strip(), "FaceRectangle")
        if len(packed) != RECTANGLE.size:
            raise ValueError(f"FaceRectangle holds {len(packed)} bytes, expected {RECTANGLE.size} (4 float32)")
        rectangle = RECTANGLE.unpack(packed)
    jpeg = _b64(fields[6].strip(), "FaceData")
    try:
        image = decode_image(jpeg, f"{path}:{number}")
    except ImageReadError as err:
        raise ValueError(f"FaceData is not a decodable image ({type(err).__name__})") from None
    return MsCelebFace(mid, face_id, rank, rectangle, image, jpeg, number)


class MsCelebReader:
    """Iterate over the faces of an MS-Celeb-1M TSV file, one line at a time.

    After (or during) iteration, ``corrupt`` lists the skipped lines, ``faces_read``
    counts the good ones and ``bytes_read`` tells how far into the file it got.
    """

    def __init__(self, path: str | Path, strict: bool = False):
        self.path = Path(path)
        if not self.path.is_file():
            raise DatasetError(f"MS-Celeb-1M TSV file not found: {self.path}")
        self.strict = strict
        self.corrupt: list[CorruptLine] = []
        self.faces_read = 0
        self.bytes_read = 0

    def __iter__(self) -> Iterator[MsCelebFace]:
        self.corrupt, self.faces_read, self.bytes_read = [], 0, 0
        with open(self.path, "rb") as handle:
            for number, raw in enumerate(handle, start=1):
                self.bytes_read += len(raw)
                if not raw.strip():
                    continue
                try:
                    face = _parse(raw, number, self.path)
                except ValueError as err:
                    if self.strict:
                        raise MsCelebFormatError(f"{self.path}:{number}: {err}") from None
                    self.corrupt.append(CorruptLine(number, str(err)))
                    continue
                self.faces_read += 1
                yield face
        if self.corrupt:
            warnings.warn(self.corrupt_summary(), stacklevel=2)

    def corrupt_summary(self) -> str:
        shown = "; ".join(f"line {c.line}: {c.reason}" for c in self.corrupt[:WARN_LINES])
        more = f"; and {len(self.corrupt) - WARN_LINES} more" if len(self.corrupt) > WARN_LINES else ""
        return f"{self.path}: skipped {len(self.corrupt)} corrupt line(s): {shown}{more}"


@dataclass(frozen=True)
class TsvFace:
    """What `write_tsv` writes for one line; ``image`` is JPEG bytes or an RGB array (encoded as JPEG)."""

    mid: str
    face_id: str
    image: bytes | np.ndarray
    rank: int = 1
    rectangle: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)
    image_url: str = "http://example.invalid/image.jpg"
    page_url: str = "http://example.invalid/page.html"


def format_line(face: TsvFace) -> str:
    """One TSV line (without newline) in the accepted format."""
    data = face.image if isinstance(face.image, bytes) else jpeg_bytes(face.image)
    return "\t".join([
        face.mid, str(face.rank), face.image_url, face.page_url, face.face_id,
        base64.b64encode(RECTANGLE.pack(*face.rectangle)).decode("ascii"),
        base64.b64encode(data).decode("ascii"),
    ])


def write_tsv(path: str | Path, faces: Iterable[TsvFace | str]) -> Path:
    """Write an MS-Celeb-1M style TSV (for tests); a ``str`` item is written verbatim as a line."""
    path = Path(path)
    with open(path, "w", encoding="utf-8", newline="\n") as out:
        for face in faces:
            out.write((face if isinstance(face, str) else format_line(face)) + "\n")
    return path


@dataclass
class ExportSummary:
    written: int = 0
    already_present: int = 0
    corrupt: list[CorruptLine] = field(default_factory=list)
    identities: int = 0  # kept
    removed_identities: int = 0  # below min_images, deleted with their faces
    removed_faces: int = 0
    foreign: int = 0  # files at a face's place that this tool did not write: left alone, not counted


def export_to_folders(tsv: str | Path, out_dir: str | Path, min_images: int = 1, strict: bool = False,
                      progress: bool = True, force: bool = False) -> ExportSummary:
    """Write each face's original JPEG to ``out_dir/<MID>/<rank>-<FaceID>.jpg``.

    Identities with fewer than ``min_images`` faces written by this tool are removed at
    the end (the file is streamed once, so the count is known only then). Faces already
    written are kept, so an interrupted export can be re-run. Only files this tool wrote
    (its manifest, see `OutputManifest`) are ever deleted; a non-empty ``out_dir`` it did
    not write is refused unless ``force``.
    """
    out_dir = Path(out_dir)
    reader = MsCelebReader(tsv, strict=strict)
    manifest = OutputManifest.claim(out_dir, "msceleb", force)
    summary = ExportSummary()
    with progress_bar(total=reader.path.stat().st_size, unit="B", unit_scale=True, unit_divisor=1024,
              desc=f"exporting {reader.path.name}", disable=not progress) as bar:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # corrupt lines are returned in the summary instead
            for face in reader:
                bar.update(reader.bytes_read - bar.n)
                relpath = f"{face.mid}/{face.file_name}"
                dest = out_dir / relpath
                if os.path.lexists(dest):
                    if relpath in manifest:
                        summary.already_present += 1
                    else:
                        summary.foreign += 1  # never overwritten
                    continue
                # Renamed into place so a face on disk is always whole; not utils.atomic, whose two
                # fsyncs per file would make exporting millions of faces many times slower.
                dest.parent.mkdir(exist_ok=True)
                tmp = dest.with_name(f".{dest.name}.tmp")
                tmp.write_bytes(face.jpeg)
                manifest.add(relpath)
                os.replace(tmp, dest)
                summary.written += 1
        bar.update(reader.bytes_read - bar.n)
    summary.corrupt = reader.corrupt
    by_identity: dict[str, list[str]] = {}
    for relpath in manifest:
        if (out_dir / relpath).is_file():
            by_identity.setdefault(relpath.split("/", 1)[0], []).append(relpath)
    too_few = [faces for faces in by_identity.values() if len(faces) < min_images]
    summary.removed_faces = manifest.delete([relpath for faces in too_few for relpath in faces])
    summary.removed_identities = len(too_few)
    summary.identities = len(by_identity) - len(too_few)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m utils.datasets.msceleb",
        description="Export an MS-Celeb-1M face TSV (7 columns: MID, ImageSearchRank, ImageURL, PageURL, "
                    "FaceID, FaceRectangle, FaceData) to OUT_DIR/<MID>/<rank>-<FaceID>.jpg. Corrupt lines "
                    "are skipped and reported.",
    )
    parser.add_argument("tsv", type=Path, metavar="TSV", help="the MS-Celeb-1M .tsv file")
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="folder-per-identity output tree")
    parser.add_argument("--min-images", type=int, default=1,
                        help="drop identities with fewer images than this (default 1)")
    parser.add_argument("--strict", action="store_true", help="stop at the first corrupt line")
    parser.add_argument("--force", action="store_true",
                        help="export into a non-empty OUT_DIR this tool did not write (its files are never "
                             "deleted or overwritten)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.min_images < 1:
        parser.error("--min-images must be at least 1")
    try:
        summary = export_to_folders(args.tsv, args.out_dir, args.min_images, args.strict, not args.no_progress,
                                    args.force)
    except (DatasetError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{summary.written} faces written, {summary.already_present} already present; "
          f"{summary.identities} identities kept, {summary.removed_identities} with fewer than "
          f"{args.min_images} images dropped ({summary.removed_faces} faces); "
          f"{len(summary.corrupt)} corrupt lines skipped"
          + (f"; {summary.foreign} faces not written because another file is at their place" if summary.foreign
             else ""))
    for item in summary.corrupt[:WARN_LINES]:
        print(f"  line {item.line}: {item.reason}")
    if len(summary.corrupt) > WARN_LINES:
        print(f"  ... and {len(summary.corrupt) - WARN_LINES} more")
    return 0


if __name__ == "__main__":
    sys.exit(main())
