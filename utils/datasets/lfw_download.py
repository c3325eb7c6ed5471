"""Download LFW (the original ``lfw.tgz`` and the protocol files) for users who lack a copy.

    python -m utils.datasets.lfw_download [--dest DATA_DIR]

puts ``DATA_DIR/lfw/<Name>/<Name>_NNNN.jpg`` and ``DATA_DIR/lfw-protocol/*.txt`` in
place (the layout `utils.paths` expects; DATA_DIR defaults to `utils.paths.data_dir`).

Sources and checksums. The official site, http://vis-www.cs.umass.edu/lfw/, publishes
MD5 a17d05bd522c52d84eca14327a23d494 for lfw.tgz; that host no longer resolves
everywhere, so scikit-learn's figshare mirror (``sklearn/datasets/_lfw.py``) is tried
next. The SHA-256 digests below are scikit-learn's for lfw.tgz, pairs.txt,
pairsDevTrain.txt and pairsDevTest.txt; the mirror's bytes carry the same MD5s as the
official files (torchvision's ``datasets/lfw.py`` lists those MD5s). The digests of
people.txt, peopleDevTrain.txt and peopleDevTest.txt were computed here from copies
whose MD5s match torchvision's published ones (the project's shared copies are those
files without their final newline). Every download is checked against its SHA-256.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tarfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from utils.console import progress_bar
from utils.datasets.folders import DatasetError
from utils.download import DownloadError, download_file, file_digests
from utils.paths import data_dir, lfw_dir, lfw_protocol_dir

OFFICIAL_BASE_URL = "http://vis-www.cs.umass.edu/lfw/"
STAGING_MARK = ".written-by-lfw_download"  # inside the extraction folder: only a marked one is ever removed


@dataclass(frozen=True)
class RemoteFile:
    """A file of the LFW site: its name there, its SHA-256, mirror URLs tried after the official one,
    and the size above which a download is stopped."""

    name: str
    sha256: str
    mirrors: tuple[str, ...] = ()
    max_bytes: int = 16 << 20  # the protocol files are under 1 MB


LFW_ARCHIVE = RemoteFile("lfw.tgz", "055f7d9c632d7370e6fb4afc7468d40f970c34a80d4c6f50ffec63f5a8d536c0",
                         ("https://ndownloader.figshare.com/files/5976018",), max_bytes=512 << 20)  # 173 MB
PROTOCOL_FILES = (
    RemoteFile("pairs.txt", "ea42330c62c92989f9d7c03237ed5d591365e89b3e649747777b70e692dc1592",
               ("https://ndownloader.figshare.com/files/5976006",)),
    RemoteFile("pairsDevTrain.txt", "1d454dada7dfeca0e7eab6f65dc4e97a6312d44cf142207be28d688be92aabfa",
               ("https://ndownloader.figshare.com/files/5976012",)),
    RemoteFile("pairsDevTest.txt", "7cb06600ea8b2814ac26e946201cdb304296262aad67d046a16a7ec85d0ff87c",
               ("https://ndownloader.figshare.com/files/5976009",)),
    RemoteFile("people.txt", "bc8fa2b7f25c895cf7efb6de4f4fc27ca8b8d1cfa63350ad8b96eae2b198d365"),
    RemoteFile("peopleDevTrain.txt", "2e58df13ba4cc143189336e001cc2c195f1dfa5b29a6475c02857be353c2a2fa"),
    RemoteFile("peopleDevTest.txt", "c3ed1f90499473401542101a56c14c1d82396bb8218c67a356d7460601047555"),
)


def fetch(spec: RemoteFile, dest_dir: Path, base_url: str | None = None, progress: bool = True) -> Path:
    """Download ``spec`` into ``dest_dir``: from ``base_url`` only if given, else official site then mirrors."""
    urls = [base_url.rstrip("/") + "/" + spec.name] if base_url else [OFFICIAL_BASE_URL + spec.name, *spec.mirrors]
    dest = dest_dir / spec.name
    if (dest.exists() or dest.is_symlink()) and (
            not dest.is_file() or file_digests(dest, ["sha256"])["sha256"] != spec.sha256):
        raise DatasetError(f"{dest} is in the way: it is not the published {spec.name} (another SHA-256), "
                           f"and it is not replaced; move it away and run again")
    errors: list[DownloadError] = []
    for url in urls:
        try:
            return download_file(url, dest, sha256=spec.sha256, progress=progress, max_bytes=spec.max_bytes)
        except DownloadError as err:
            errors.append(err)
    if len(errors) == 1:
        raise errors[0]
    raise DownloadError(urls[0], dest, "every source failed: " + "; ".join(
        f"{err.url}: {err.reason}" for err in errors)) from errors[-1]


def extract_archive(archive: Path, root: Path, progress: bool = True) -> Path:
    """Unpack an ``lfw.tgz`` (top folder ``lfw/``) so that its images end up in ``root``.

    Members are extracted with tarfile's ``data`` filter (no absolute paths, no ``..``,
    no links leaving the folder) into a temporary folder beside ``root``, which is
    renamed to ``root`` only when everything is out: ``root`` never holds half an archive.
    A leftover temporary folder of an interrupted run (it holds STAGING_MARK) is removed
    first; a folder of that name without the mark is not ours and stops the extraction.
    """
    staging = root.parent / f".{root.name}.extracting"
    if staging.exists() or staging.is_symlink():
        if not (staging.is_dir() and not staging.is_symlink() and (staging / STAGING_MARK).is_file()):
            raise DatasetError(f"{staging} is in the way and was not made by this tool; move it away and run again")
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    (staging / STAGING_MARK).touch()
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in progress_bar(tar, unit=" files", desc=f"extracting {archive.name}", disable=not progress):
                try:
                    tar.extract(member, staging, filter="data")
                except tarfile.FilterError as err:
                    raise DatasetError(f"{archive}: unsafe archive member {member.name!r} refused ({err})") from None
        top = staging / "lfw"
        if not top.is_dir():
            raise DatasetError(f"{archive} has no top-level 'lfw/' folder; is it the LFW archive?")
        if root.is_dir():
            root.rmdir()  # only an empty placeholder can be here (see ensure_lfw)
        top.rename(root)
    except (tarfile.ReadError, EOFError, zlib.error) as err:
        raise DatasetError(f"{archive} is not a readable .tgz archive ({err})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root


def _has_identity_folders(root: Path) -> bool:
    return root.is_dir() and any(child.is_dir() for child in root.iterdir())


def ensure_lfw(
    root: str | Path | None = None,
    *,
    protocol_dir: str | Path | None = None,
    base_url: str | None = None,
    archive: RemoteFile = LFW_ARCHIVE,
    protocol_files: Sequence[RemoteFile] = PROTOCOL_FILES,
    keep_archive: bool = False,
    progress: bool = True,
) -> Path:
    """Return the LFW image folder, downloading only what is missing.

    ``root`` defaults to `utils.paths.lfw_dir`; the protocol files go to ``protocol_dir``
    (default `utils.paths.lfw_protocol_dir`, or ``lfw-protocol`` beside a given ``root``).
    An existing image tree or protocol file is used as is, without any network access.
    """
    protocol_dir = Path(protocol_dir) if protocol_dir else (
        lfw_protocol_dir() if root is None else Path(root).parent / "lfw-protocol")
    root = Path(root) if root else lfw_dir()
    if not _has_identity_folders(root):
        if root.is_dir() and any(root.iterdir()):
            raise DatasetError(f"{root} holds files but no identity folders; move them away before downloading LFW")
        root.parent.mkdir(parents=True, exist_ok=True)
        had_archive = (root.parent / archive.name).is_file()  # the user's own (verified) copy: kept
        archive_path = fetch(archive, root.parent, base_url, progress)
        extract_archive(archive_path, root, progress)
        if not keep_archive and not had_archive:
            archive_path.unlink()
    for spec in protocol_files:
        if not (protocol_dir / spec.name).is_file():
            fetch(spec, protocol_dir, base_url, progress)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m utils.datasets.lfw_download",
        description="Download and unpack LFW (lfw.tgz, about 173 MB) and its protocol files into "
                    "DEST/lfw and DEST/lfw-protocol, checking SHA-256 digests. Parts already present are "
                    "kept; an interrupted download resumes.",
    )
    parser.add_argument("--dest", type=Path, default=None,
                        help=f"data folder to fill (default: {data_dir()}, or $FACE_DATA_DIR)")
    parser.add_argument("--base-url", default=None,
                        help=f"fetch every file from this URL prefix instead of {OFFICIAL_BASE_URL} and mirrors")
    parser.add_argument("--keep-archive", action="store_true", help="keep lfw.tgz after unpacking it")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    root = args.dest / "lfw" if args.dest else None
    try:
        images = ensure_lfw(root, base_url=args.base_url, keep_archive=args.keep_archive,
                            progress=not args.no_progress)
    except (DownloadError, DatasetError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"LFW images: {images}")
    if args.dest and args.dest.resolve() != data_dir().resolve():
        print(f"point the project at it with: export FACE_DATA_DIR={args.dest.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
