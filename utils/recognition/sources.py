"""Where frames come from and where annotated frames go.

``open_source(spec)`` turns what a user types after ``--source`` into one iterator of
:class:`Frame` (RGB uint8):

- ``0``, ``1``, ...: a camera index;
- ``rtsp://``, ``http(s)://``, ... : a network stream, reconnected when it drops;
- a video file (anything OpenCV's FFmpeg backend decodes);
- an image file, or a folder of images (sorted by name; unreadable ones, broken symbolic links
  and folders named like images reported and skipped).
- a folder of people: one subfolder of images per person, each frame labelled with its subfolder.

Problems come out as :class:`SourceError` with a message meant for the user. Sinks:
``FrameSink`` writes a video file (by extension) or a folder of JPEGs (never over the source
it reads from); ``window_unavailable()`` says why no OpenCV window can be shown.
"""
from __future__ import annotations

import importlib.metadata
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Protocol
from urllib.parse import urlsplit

import cv2
import numpy as np

from utils.faces.image_io import ALIGN_MAX_SIDE, IMAGE_EXTENSIONS, ImageReadError, is_image_name, read_image_scaled

VIDEO_EXTENSIONS = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "MJPG"}
STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "srt")
CAMERA_FAILED_READS = 30  # consecutive failed reads before a camera counts as stopped
STREAM_TIMEOUT_MS = 10_000
COUNT_SLACK = 0.002  # a video file may deliver this fraction fewer frames than announced without complaint

Log = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def quiet_opencv() -> None:
    """Silence OpenCV's and FFmpeg's own warnings: SourceError messages say what went wrong."""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # read when FFmpeg is first used
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)


class SourceError(RuntimeError):
    """A source cannot be opened or stopped delivering frames; the message says which and why."""


class OutputError(RuntimeError):
    """Annotated frames cannot be written where --output points; the message says why."""


@dataclass
class Frame:
    """One frame: its position in the source, RGB pixels, the file it came from (image sources) and
    the person it is filed under (folder-of-people sources).

    scale is rgb's size over the file's (below 1 for a photo shrunk to ALIGN_MAX_SIDE while read).
    """

    index: int
    rgb: np.ndarray
    name: str | None = None
    scale: float = 1.0
    label: str | None = None


class Capture(Protocol):
    """The part of cv2.VideoCapture the sources use (tests pass fakes)."""

    def isOpened(self) -> bool: ...
    def read(self) -> tuple[bool, np.ndarray | None]: ...
    def get(self, prop: int) -> float: ...
    def release(self) -> None: ...


class FrameSource:
    """An iterable of frames; ``fps`` is the source's frame rate when it has one, else None."""

    description: str = ""
    fps: float | None = None
    stills: bool = False  # frames are unrelated pictures (image files): nothing to follow between them
    location: Path | None = None  # the video file, image file or image folder read (None: camera, stream)

    def __iter__(self) -> Iterator[Frame]:
        raise NotImplementedError

    def close(self) -> None:
        """Release the device or file."""


def _fps_of(capture: Capture) -> float | None:
    fps = capture.get(cv2.CAP_PROP_FPS)
    return float(fps) if fps and 1 <= fps <= 240 else None


def _rgb(bgr: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


class CameraSource(FrameSource):
    """A local camera by index; a camera that stops delivering frames raises SourceError."""

    def __init__(self, index: int, opener: Callable[[int], Capture] = cv2.VideoCapture):
        self.description = f"camera {index}"
        self._capture = opener(index)
        if not self._capture.isOpened():
            self._capture.release()
            raise SourceError(f"cannot open camera {index}: there is no such camera, or another program "
                              f"is using it (try another --source index, or a video file)")
        self.fps = _fps_of(self._capture)

    def __iter__(self) -> Iterator[Frame]:
        index, failures = 0, 0
        while True:
            ok, bgr = self._capture.read()
            if not ok or bgr is None:
                failures += 1
                if failures >= CAMERA_FAILED_READS:
                    raise SourceError(f"{self.description} stopped delivering frames "
                                      f"(unplugged, or taken by another program)")
                time.sleep(0.01)
                continue
            failures = 0
            yield Frame(index, _rgb(bgr))
            index += 1

    def close(self) -> None:
        self._capture.release()


class VideoFileSource(FrameSource):
    """A video file, read to its end. A file whose frames stop well before the count its container
    announces (damaged or cut short) raises SourceError after the frames that could be read."""

    def __init__(self, path: Path, opener: Callable[[str], Capture] = cv2.VideoCapture):
        self.description, self.location = str(path), path
        self._capture = opener(str(path))
        if not self._capture.isOpened():
            self._capture.release()
            raise SourceError(f"cannot open {path}: not a video that OpenCV's FFmpeg backend can decode")
        self.fps = _fps_of(self._capture)

    def __iter__(self) -> Iterator[Frame]:
        total = int(self._capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        index = 0
        while True:
            ok, bgr = self._capture.read()
            if not ok or bgr is None:
                break
            yield Frame(index, _rgb(bgr))
            index += 1
        # Containers without an index estimate the count from the duration: allow a little slack.
        if total > 0 and total - index > max(1, round(COUNT_SLACK * total)):
            raise SourceError(f"{self.description} ended early: {index} of the {total} frames its header announces "
                              f"could be read (the file is damaged or cut short); the frames read were processed")

    def close(self) -> None:
        self._capture.release()


def _open_stream(url: str) -> Capture:
    return cv2.VideoCapture(url, cv2.CAP_FFMPEG, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, STREAM_TIMEOUT_MS,
                                                  cv2.CAP_PROP_READ_TIMEOUT_MSEC, STREAM_TIMEOUT_MS])


class StreamSource(FrameSource):
    """A network stream (RTSP, HTTP, ...). When it drops it is reopened, waiting 1, 2, 4, ... s
    (at most 30 s) between tries; after ``retries`` failed tries in a row SourceError is raised.
    A stream that reports a frame count (a video file served over HTTP) ends after its last frame.
    """

    def __init__(self, url: str, retries: int = 5, opener: Callable[[str], Capture] = _open_stream,
                 log: Log = _stderr, sleep: Callable[[float], None] = time.sleep):
        self.description = _redact(url)
        self._url, self._retries, self._opener, self._log, self._sleep = url, retries, opener, log, sleep
        self._capture = self._open()
        if self._capture is None:
            raise SourceError(f"cannot open stream {self.description}: check the address, that the "
                              f"server is up, and any user name or password in the URL")
        self.fps = _fps_of(self._capture)

    def _open(self) -> Capture | None:
        capture = self._opener(self._url)
        if capture.isOpened():
            return capture
        capture.release()
        return None

    def __iter__(self) -> Iterator[Frame]:
        index, failed_tries = 0, 0
        while True:
            if self._capture is not None:
                total = self._capture.get(cv2.CAP_PROP_FRAME_COUNT)
                read_here = 0
                while True:
                    ok, bgr = self._capture.read()
                    if not ok or bgr is None:
                        break
                    failed_tries, read_here = 0, read_here + 1
                    yield Frame(index, _rgb(bgr))
                    index += 1
                self._capture.release()
                self._capture = None
                if total and total > 0 and read_here >= total:
                    return
            failed_tries += 1
            if failed_tries > self._retries:
                raise SourceError(f"stream {self.description} stopped delivering frames and "
                                  f"{self._retries} reconnection attempts failed")
            delay = min(30.0, 2.0 ** (failed_tries - 1))
            self._log(f"stream {self.description} interrupted; reconnecting in {delay:.0f} s "
                      f"(attempt {failed_tries} of {self._retries})")
            self._sleep(delay)
            self._capture = self._open()

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()


class ImageFilesSource(FrameSource):
    """One image file, or every image in a folder (sorted); unreadable images are logged and skipped.
    Photos larger than ALIGN_MAX_SIDE are shrunk to it while decoding (bounded memory). With
    ``labels`` (one per path) each frame carries its picture's label and is named
    ``<label>/<file name>``.
    """

    stills = True

    def __init__(self, paths: list[Path], description: str, log: Log = _stderr, location: Path | None = None,
                 labels: list[str] | None = None):
        self.description, self._paths, self._log, self.location = description, paths, log, location
        self._labels = labels or [None] * len(paths)

    def __iter__(self) -> Iterator[Frame]:
        index = 0
        for path, label in zip(self._paths, self._labels, strict=True):
            try:
                rgb, scale = read_image_scaled(path, ALIGN_MAX_SIDE)
            except ImageReadError as err:
                if len(self._paths) == 1:
                    raise SourceError(f"cannot read image {err}") from None
                self._log(f"skipped unreadable image {err}")
                continue
            yield Frame(index, rgb, f"{label}/{path.name}" if label else path.name, scale, label)
            index += 1


def _redact(url: str) -> str:
    """The URL without a password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc).geturl()


def is_stream_url(spec: str) -> bool:
    """True for rtsp://, http(s)://, ... addresses."""
    return urlsplit(spec).scheme.lower() in STREAM_SCHEMES


def _images_in(folder: Path) -> list[Path]:
    """A folder's image names, sorted; broken links and folders named like images among them are
    reported when read."""
    return sorted(p for p in folder.iterdir() if is_image_name(p))


def _folder_source(path: Path, log: Log) -> ImageFilesSource:
    """The images of a folder; when it has none, the images of its subfolders labelled by subfolder name."""
    images = _images_in(path)
    if images:
        return ImageFilesSource(images, f"{len(images)} images in {path}", log=log, location=path)
    people = [(d.name, _images_in(d)) for d in sorted(path.iterdir()) if d.is_dir() and not d.name.startswith(".")]
    labelled = [(image, name) for name, images in people for image in images]
    if not labelled:
        raise SourceError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in folder {path}, nor in subfolders of it "
                          f"(one folder of pictures per person)")
    persons = len({name for _, name in labelled})
    return ImageFilesSource([image for image, _ in labelled], f"{len(labelled)} images of {persons} people in {path}",
                            log=log, location=path, labels=[name for _, name in labelled])


def open_source(spec: str, log: Log = _stderr, retries: int = 5) -> FrameSource:
    """Open what ``--source`` names: a camera index, a stream URL, a video, an image or a folder."""
    spec = spec.strip()
    if spec.isdigit():
        return CameraSource(int(spec))
    if is_stream_url(spec):
        return StreamSource(spec, retries=retries, log=log)
    path = Path(spec).expanduser()
    if path.is_dir():
        return _folder_source(path, log)
    if not path.exists():
        raise SourceError(f"no such file or folder: {path} (--source takes a camera index such as 0, "
                          f"a video or image file, a folder of images, or an rtsp:// or http:// URL)")
    if not os.access(path, os.R_OK):
        raise SourceError(f"cannot read {path}: permission denied")
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return ImageFilesSource([path], str(path), log=log, location=path)
    return VideoFileSource(path)


# --- outputs -----------------------------------------------------------------------------------

def window_unavailable() -> str | None:
    """Why an OpenCV window cannot be shown here, or None when it can."""
    gui = next((line.split(":", 1)[1].strip() for line in cv2.getBuildInformation().splitlines()
                if line.strip().startswith("GUI:")), "")
    if gui.upper() in ("", "NONE"):
        try:
            version = importlib.metadata.version("opencv-python-headless")
        except importlib.metadata.PackageNotFoundError:
            version = cv2.__version__
        return ("this OpenCV build has no GUI (opencv-python-headless); for a window run "
                f"`pip uninstall opencv-python-headless && pip install opencv-python=={version}`")
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return "no display (DISPLAY is not set)"
    return None


def _same_place(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


class FrameSink:
    """Writes RGB frames to a video file (.mp4, .avi, ... chosen by extension) or a folder of JPEGs.

    A video takes the size of its first frame (later frames of another size are resized). In a
    folder, frames of a video are frame_000000.jpg, ...; pictures keep their name behind their
    frame number (000003_ada.jpg), so ada.png and ada.jpg do not overwrite each other. The
    source's own file or folder (``source``) is refused as the target.
    """

    def __init__(self, target: Path, fps: float | None, source: Path | None = None):
        self.target = target
        self.fps = fps or 25.0
        self._writer: cv2.VideoWriter | None = None
        self._size: tuple[int, int] | None = None
        self.is_video = target.suffix.lower() in VIDEO_EXTENSIONS
        if source is not None and _same_place(target, source):
            raise OutputError(f"--output {target} is what --source reads from: the annotated frames would "
                              f"overwrite it; choose another {'file' if self.is_video else 'folder'}")
        if not self.is_video:
            if target.suffix:
                raise OutputError(f"--output {target}: use a video file ending in "
                                  f"{', '.join(VIDEO_EXTENSIONS)} or a folder name")
            try:
                target.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise OutputError(f"--output {target}: cannot create the folder ({err.strerror or err})") from None
        elif not target.parent.is_dir():
            raise OutputError(f"--output {target}: folder {target.parent} does not exist")

    def write(self, frame: Frame, rgb: np.ndarray) -> None:
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        if not self.is_video:
            name = f"{frame.index:06d}_{Path(frame.name).stem}.jpg" if frame.name else f"frame_{frame.index:06d}.jpg"
            if not cv2.imwrite(str(self.target / name), bgr):
                raise OutputError(f"cannot write {self.target / name} (folder not writable, or disk full)")
            return
        if self._writer is None:
            self._size = (bgr.shape[1], bgr.shape[0])
            fourcc = cv2.VideoWriter_fourcc(*VIDEO_EXTENSIONS[self.target.suffix.lower()])
            self._writer = cv2.VideoWriter(str(self.target), fourcc, self.fps, self._size)
            if not self._writer.isOpened():
                raise OutputError(f"cannot write video {self.target} (codec not available or folder "
                                  f"not writable); try an .avi file or a folder")
        if (bgr.shape[1], bgr.shape[0]) != self._size:
            bgr = cv2.resize(bgr, self._size, interpolation=cv2.INTER_AREA)
        self._writer.write(bgr)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
