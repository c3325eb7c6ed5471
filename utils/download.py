"""Resumable, checksum-verified file downloads over HTTP(S), standard library only.

`download_file` streams into ``<dest>.part``, resumes a partial ``.part`` with an
HTTP Range request, verifies the checksum, and only then renames the file to
``dest``: a file at ``dest`` is always complete and verified. Only http and https
URLs are fetched (never ``file://`` or ``ftp://``), and a download larger than
``max_bytes`` is stopped and deleted.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from utils.console import progress_bar

USER_AGENT = "facetk-downloader/1.0 (+python-urllib)"
CHUNK_SIZE = 1 << 16
SCHEMES = ("http", "https")
DEFAULT_MAX_BYTES = 1 << 30  # 1 GiB; callers pass a tighter limit for what they expect
_URL_SAFE = ":/?#[]@!$&'()*+,;=%~"  # reserved characters and existing escapes stay as they are


class DownloadError(RuntimeError):
    """A download failed; ``url`` and ``dest`` say which one."""

    def __init__(self, url: str, dest: str | Path, reason: str):
        super().__init__(f"could not download {url} to {dest}: {reason}")
        self.url = url
        self.dest = Path(dest)
        self.reason = reason


class HTTPStatusError(DownloadError):
    """The server answered with an HTTP error status (404, 500, ...)."""

    def __init__(self, url: str, dest: str | Path, status: int, message: str = ""):
        super().__init__(url, dest, f"HTTP {status} {message}".rstrip())
        self.status = status


class DownloadTimeoutError(DownloadError):
    """The server did not answer (or stopped sending) within the timeout."""


class IncompleteDownloadError(DownloadError):
    """The connection closed before the whole file arrived; the ``.part`` file is kept for resuming."""


class DownloadTooLargeError(DownloadError):
    """The file is larger than the caller's ``max_bytes``; nothing of it is kept."""


class ChecksumError(DownloadError):
    """The downloaded bytes do not match the expected digest; the bad file was deleted.

    The message names the expected digest only: ``actual`` holds the other one, for code.
    """

    def __init__(self, url: str, dest: str | Path, algorithm: str, expected: str, actual: str):
        super().__init__(
            url, dest,
            f"{algorithm} checksum mismatch for {Path(dest).name}: expected {expected} "
            "(the corrupt download was deleted)",
        )
        self.algorithm = algorithm
        self.expected = expected
        self.actual = actual


def part_path(dest: str | Path) -> Path:
    """Where `download_file` keeps the unfinished download of ``dest``."""
    dest = Path(dest)
    return dest.with_name(dest.name + ".part")


def file_digests(path: str | Path, algorithms: list[str]) -> dict[str, str]:
    """Hex digests of a file for each hashlib algorithm name, reading it once in chunks."""
    hashes = {name: hashlib.new(name) for name in algorithms}
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            for h in hashes.values():
                h.update(chunk)
    return {name: h.hexdigest() for name, h in hashes.items()}


def _expected_digests(sha256: str | None, sha1: str | None, md5: str | None) -> dict[str, str]:
    given = {"sha256": sha256, "sha1": sha1, "md5": md5}
    return {name: value.strip().lower() for name, value in given.items() if value}


def _first_mismatch(path: Path, expected: dict[str, str]) -> tuple[str, str, str] | None:
    """(algorithm, expected, actual) for the first digest that differs, or None if all match."""
    actual = file_digests(path, list(expected))
    for name, want in expected.items():
        if actual[name] != want:
            return name, want, actual[name]
    return None


def _range_start(content_range: str | None) -> int | None:
    """The first byte of a ``Content-Range: bytes START-END/TOTAL`` header."""
    match = re.match(r"\s*bytes\s+(\d+)-", content_range or "")
    return int(match.group(1)) if match else None


def _open(url: str, dest: Path, offset: int, timeout: float):
    """Open the URL, asking for bytes from ``offset`` on; map failures to typed errors."""
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        # Percent-encode spaces and non-ASCII characters, which old URL lists contain.
        request = urllib.request.Request(urllib.parse.quote(url, safe=_URL_SAFE), headers=headers)
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        err.close()
        raise HTTPStatusError(url, dest, err.code, str(err.reason or "")) from None
    except TimeoutError:
        raise DownloadTimeoutError(url, dest, f"no answer within {timeout:g} s") from None
    except urllib.error.URLError as err:
        if isinstance(err.reason, TimeoutError):
            raise DownloadTimeoutError(url, dest, f"no answer within {timeout:g} s") from None
        raise DownloadError(url, dest, f"cannot reach the server ({err.reason})") from None
    except (OSError, ValueError, http.client.HTTPException) as err:  # reset, malformed URL or answer, ...
        raise DownloadError(url, dest, str(err)) from None


def _too_large(url: str, dest: Path, part: Path, max_bytes: int, size: str) -> DownloadTooLargeError:
    part.unlink(missing_ok=True)
    return DownloadTooLargeError(url, dest, f"the file is larger than the limit of {max_bytes:,} bytes ({size}); "
                                            "nothing was kept")


def _transfer(url: str, dest: Path, part: Path, resume: bool, timeout: float, progress: bool, desc: str,
              max_bytes: int) -> None:
    """One attempt to bring ``part`` up to the full file (resuming it when allowed)."""
    offset = part.stat().st_size if resume and part.exists() else 0
    try:
        response = _open(url, dest, offset, timeout)
    except HTTPStatusError as err:
        if err.status != 416 or not offset:
            raise
        # "Range not satisfiable": the .part is already complete or longer than the file.
        # Start over; the checksum (if any) decides about the new copy.
        part.unlink()
        response = _open(url, dest, 0, timeout)
        offset = 0
    with response:
        if offset and response.status != 206:
            offset = 0  # the server ignored the Range request and sends the whole file
        elif offset and _range_start(response.headers.get("Content-Range")) != offset:
            part.unlink()
            raise IncompleteDownloadError(url, dest, "the server sent another byte range than asked for; "
                                                     "the partial file was discarded")
        length = response.headers.get("Content-Length")
        expected = int(length) if length and length.isdigit() else None
        if expected is not None and offset + expected > max_bytes:
            raise _too_large(url, dest, part, max_bytes, f"{offset + expected:,} bytes announced")
        received = 0
        with open(part, "ab" if offset else "wb") as out, progress_bar(
            total=None if expected is None else offset + expected, initial=offset, unit="B",
            unit_scale=True, unit_divisor=1024, desc=desc, disable=not progress, leave=False,
        ) as bar:
            try:
                for chunk in iter(lambda: response.read(CHUNK_SIZE), b""):
                    if offset + received + len(chunk) > max_bytes:
                        out.close()
                        raise _too_large(url, dest, part, max_bytes, "the server sent more")
                    out.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            except TimeoutError:
                raise DownloadTimeoutError(
                    url, dest, f"the server stopped sending for {timeout:g} s after {offset + received} bytes"
                ) from None
            except (OSError, http.client.HTTPException) as err:  # connection reset, IncompleteRead, ...
                raise IncompleteDownloadError(
                    url, dest, f"connection lost after {offset + received} bytes ({err})"
                ) from None
    if expected is not None and received < expected:
        raise IncompleteDownloadError(
            url, dest, f"connection closed after {offset + received} of {offset + expected} bytes"
        )


def download_file(
    url: str,
    dest: str | Path,
    sha256: str | None = None,
    sha1: str | None = None,
    timeout: float = 30.0,
    progress: bool = True,
    resume: bool = True,
    md5: str | None = None,
    retries: int = 2,
    desc: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Path:
    """Download ``url`` to ``dest`` and return ``dest``.

    Streams into ``dest.part``; with ``resume`` an existing ``.part`` is continued with
    an HTTP Range request (a fresh download if the server ignores Range). A transfer
    cut short or stalled is resumed up to ``retries`` more times. Every given digest
    is checked before the atomic rename to ``dest``; on a mismatch the bad file is
    deleted and `ChecksumError` is raised. An existing ``dest`` is returned without a
    download only when digests are given and it matches them; otherwise it is fetched
    again. ``md5`` is for sources that publish nothing stronger; prefer sha256.
    Only http and https URLs are accepted; a file larger than ``max_bytes`` (announced
    or received) raises `DownloadTooLargeError` and leaves no ``.part`` behind.

    Raises `HTTPStatusError`, `DownloadTimeoutError`, `IncompleteDownloadError`,
    `ChecksumError`, `DownloadTooLargeError` or `DownloadError` (all `DownloadError`).
    """
    dest = Path(dest)
    part = part_path(dest)
    scheme = urllib.parse.urlsplit(url.strip()).scheme.lower()
    if scheme not in SCHEMES:
        given = f"{scheme}://" if scheme else "a URL without a scheme"
        raise DownloadError(url, dest, f"only http:// and https:// URLs are downloaded, not {given}")
    expected = _expected_digests(sha256, sha1, md5)
    if expected and dest.is_file() and _first_mismatch(dest, expected) is None:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not resume and part.exists():
        part.unlink()
    for attempt in range(retries + 1):
        try:
            _transfer(url, dest, part, resume or attempt > 0, timeout, progress, desc or dest.name, max_bytes)
            break
        except (IncompleteDownloadError, DownloadTimeoutError):
            if attempt == retries:
                raise
    mismatch = _first_mismatch(part, expected) if expected else None
    if mismatch is not None:
        part.unlink()
        raise ChecksumError(url, dest, *mismatch)
    os.replace(part, dest)
    return dest
