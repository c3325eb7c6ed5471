"""A live view in the browser, for OpenCV builds without a window (recognize.py --serve).

One thread reads the source, recognises and draws each frame and keeps the latest JPEG;
a standard-library ``ThreadingHTTPServer`` serves:

- ``GET /``: a small page showing the video, the names seen and an enrol form;
- ``GET /stream.mjpg``: the annotated frames as MJPEG (``multipart/x-mixed-replace``), any
  number of viewers, each getting the newest frame when it is ready;
- ``GET /faces.json``: the faces of the latest frame, every name seen so far with its closest
  distance, the gallery's people and the threshold (the page polls it);
- ``POST /enrol`` with ``{"name": "Ada"}`` (JSON or a form field): saves the latest frame into
  ``people/<Name>/`` when it shows exactly one face, then rebuilds the gallery (only the new
  picture is embedded), so the person is recognised from the next frame.

A viewer closing its tab is an ordinary end of its connection; the source and the other viewers
go on.
"""
from __future__ import annotations

import json
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable
from urllib.parse import parse_qs

import cv2
import numpy as np

from utils.atomic import atomic_path
from utils.recognition.drawing import draw_face, draw_fps
from utils.recognition.gallery import check_person_name
from utils.recognition.sources import FrameSource, SourceError
from utils.recognition.tracking import RecognizedFace, VideoRecognizer

DEFAULT_HOST = "127.0.0.1"
BOUNDARY = "frame"
JPEG_QUALITY = 80
MAX_BODY = 4096  # bytes of an enrol request
STILL_SECONDS = 1.0  # how long each picture of an image source stays on screen
CLIENT_ERRORS = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)

Log = Callable[[str], None]
ReloadGallery = Callable[[], list[str]]  # rebuilds the recognizer's gallery; returns its people


def parse_address(text: str) -> tuple[str, int]:
    """'[HOST:]PORT' -> (host, port); ValueError with a message for the user."""
    host, _, port = text.rpartition(":")
    host = host.strip("[]") or DEFAULT_HOST
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--serve takes [HOST:]PORT, e.g. 8000 or 0.0.0.0:8000 (PORT 0 picks a free one), "
                         f"not {text!r}")
    return host, int(port)


@dataclass
class LiveState:
    """What the viewers see; written by the source thread, read by the request threads."""

    jpeg: bytes | None = None
    sequence: int = 0
    frame_index: int = -1
    rgb: np.ndarray | None = None
    faces: list[RecognizedFace] = field(default_factory=list)
    seen: dict[str, dict] = field(default_factory=dict)  # name -> closest distance, last frame
    status: str = "starting"
    changed: threading.Condition = field(default_factory=threading.Condition)

    def publish(self, index: int, rgb: np.ndarray, faces: list[RecognizedFace], jpeg: bytes) -> None:
        with self.changed:
            self.jpeg, self.frame_index, self.rgb, self.faces = jpeg, index, rgb, faces
            self.sequence += 1
            self.status = "running"
            for face in faces:
                name = face.match.name or "unknown"
                closest = min(self.seen.get(name, {}).get("closest") or np.inf, face.match.distance)
                self.seen[name] = {"closest": _distance(closest), "last_frame": index}
            self.changed.notify_all()

    def end(self, status: str) -> None:
        with self.changed:
            self.status = status
            self.changed.notify_all()

    def next_jpeg(self, after: int, timeout: float) -> tuple[int, bytes] | None:
        """The newest frame once it is newer than ``after``; None after ``timeout`` seconds without one."""
        with self.changed:
            self.changed.wait_for(lambda: self.sequence > after and self.jpeg is not None, timeout)
            if self.sequence > after and self.jpeg is not None:
                return self.sequence, self.jpeg
            return None


def _distance(value: float) -> float | None:
    """Rounded for JSON; None when there is no one to be near (an empty gallery)."""
    return round(float(value), 4) if np.isfinite(value) else None


def face_record(face: RecognizedFace) -> dict:
    return {"name": face.match.name or "unknown", "known": face.match.known, "nearest": face.match.nearest,
            "distance": _distance(face.match.distance), "box": list(face.box)}


class LiveView:
    """Runs the source through the recognizer into a LiveState, and enrols people from it."""

    def __init__(self, source: FrameSource, recognizer: VideoRecognizer, people_dir: Path,
                 reload_gallery: ReloadGallery, show_distance: bool = True, log: Log = print):
        self.source, self.recognizer, self.people_dir = source, recognizer, Path(people_dir)
        self.reload_gallery, self.show_distance, self.log = reload_gallery, show_distance, log
        self.state = LiveState()
        self.lock = threading.Lock()  # the recognizer and its gallery
        self.stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="source", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """Stop reading the source (waits up to timeout for the frame in hand)."""
        self.stop.set()
        self._thread.join(timeout)

    def _pause(self) -> float:
        if self.source.stills:
            return STILL_SECONDS
        return 1.0 / self.source.fps if self.source.fps and self.source.location is not None else 0.0

    def _run(self) -> None:
        pause, fps, tick = self._pause(), 0.0, time.perf_counter()
        try:
            for frame in self.source:
                if self.stop.is_set():
                    return
                with self.lock:
                    faces = self.recognizer.process(frame.rgb)
                canvas = frame.rgb.copy()
                for face in faces:
                    draw_face(canvas, face.box, face.match.name, face.match.distance, self.show_distance)
                now = time.perf_counter()
                fps = 0.9 * fps + 0.1 / max(now - tick, 1e-6) if fps else 1.0 / max(now - tick, 1e-6)
                draw_fps(canvas, fps)
                ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR),
                                        [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
                if ok:
                    self.state.publish(frame.index, frame.rgb, faces, jpeg.tobytes())
                self.stop.wait(max(0.0, pause - (time.perf_counter() - now)))
                tick = now
            self.state.end(f"{self.source.description} ended: the last frame stays on screen")
        except SourceError as err:
            self.state.end(str(err))
        except Exception as err:  # shown on the page and logged: the server keeps answering
            self.state.end(f"recognition stopped: {err}")
            raise
        finally:
            self.log(f"source: {self.state.status}")

    def faces_json(self) -> dict:
        with self.state.changed:
            faces = [face_record(f) for f in self.state.faces]
            seen = dict(self.state.seen)
            frame, status = self.state.frame_index, self.state.status
        return {"frame": frame, "status": status, "faces": faces, "seen": seen,
                "people": list(self.recognizer.gallery.people), "threshold": round(self.recognizer.threshold, 4)}

    def enrol(self, raw_name: str) -> tuple[HTTPStatus, str]:
        """Save the latest frame as a picture of raw_name (it must show exactly one face)."""
        try:
            name = check_person_name(raw_name)
        except ValueError as err:
            return HTTPStatus.BAD_REQUEST, str(err)
        with self.state.changed:
            rgb, faces = self.state.rgb, list(self.state.faces)
        if rgb is None:
            return HTTPStatus.CONFLICT, "no frame yet"
        if len(faces) != 1:
            return HTTPStatus.CONFLICT, f"{len(faces)} faces in view: enrolment needs exactly one"
        ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
        if not ok:
            return HTTPStatus.INTERNAL_SERVER_ERROR, "could not encode the frame"
        folder = self.people_dir / name
        stamp = time.strftime("%Y%m%d-%H%M%S")
        number = 1
        while (folder / f"{name}_{stamp}_{number:02d}.jpg").exists():
            number += 1
        path = folder / f"{name}_{stamp}_{number:02d}.jpg"
        try:
            with atomic_path(path) as tmp:
                tmp.write_bytes(jpeg.tobytes())
            with self.lock:
                people = self.reload_gallery()
        except OSError as err:
            return HTTPStatus.INTERNAL_SERVER_ERROR, f"cannot save {path}: {err.strerror or err}"
        self.log(f"enrolled {name}: {path}")
        if name not in people:
            return HTTPStatus.UNPROCESSABLE_ENTITY, f"saved {path}, but the gallery found no usable face in it"
        return HTTPStatus.OK, f"saved {path.name} in {folder}; {name} is in the gallery now ({len(people)} people)"


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>recognize.py live view</title>
<style>
 body { font-family: sans-serif; margin: 1em; background: #222; color: #eee; display: flex; gap: 1.5em; }
 img { max-width: 70vw; border: 1px solid #555; }
 table { border-collapse: collapse; } td, th { padding: 2px 10px; text-align: left; }
 .unknown { color: #aaa; } #status, #message { color: #fc6; }
</style></head>
<body>
<div><img id="video" src="/stream.mjpg" alt="live video"><p id="status"></p></div>
<div>
 <h3>In view</h3><table id="now"></table>
 <h3>Seen so far (closest distance)</h3><table id="seen"></table>
 <h3>Enrol the face in view</h3>
 <form id="enrol"><input id="name" placeholder="Ada_Lovelace" required> <button>Enrol</button></form>
 <p id="message"></p>
 <p>Gallery: <span id="people"></span><br>threshold <span id="threshold"></span></p>
</div>
<script>
function rows(table, items) {
  table.replaceChildren(...items.map(([name, value]) => {
    const tr = document.createElement("tr");
    if (name === "unknown") tr.className = "unknown";
    for (const text of [name, value]) { const td = document.createElement("td"); td.textContent = text;
      tr.appendChild(td); }
    return tr;
  }));
}
async function poll() {
  try {
    const data = await (await fetch("/faces.json", {cache: "no-store"})).json();
    const shown = d => d === null ? "-" : d.toFixed(2);
    rows(document.getElementById("now"), data.faces.map(f => [f.name, shown(f.distance)]));
    rows(document.getElementById("seen"), Object.entries(data.seen).map(([n, s]) => [n, shown(s.closest)]));
    document.getElementById("people").textContent = data.people.join(", ") || "empty: enrol someone";
    document.getElementById("threshold").textContent = data.threshold.toFixed(3);
    document.getElementById("status").textContent = "frame " + data.frame + ": " + data.status;
  } catch (err) { document.getElementById("status").textContent = "server not answering"; }
}
document.getElementById("enrol").addEventListener("submit", async (event) => {
  event.preventDefault();
  const reply = await fetch("/enrol", {method: "POST", headers: {"Content-Type": "application/json"},
    body: JSON.stringify({name: document.getElementById("name").value})});
  document.getElementById("message").textContent = (await reply.json()).message;
  poll();
});
poll(); setInterval(poll, 500);
</script></body></html>
"""


class Handler(BaseHTTPRequestHandler):
    """The page, the MJPEG stream, the faces JSON and enrolment of one LiveView (server.view)."""

    server: LiveServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's signature
        """Requests are not logged (the stream would flood the terminal)."""

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _send_json(self, status: HTTPStatus, data: dict) -> None:
        self._send(status, json.dumps(data).encode(), "application/json")

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = self.path.split("?", 1)[0]
        try:
            if path in ("/", "/index.html"):
                self._send(HTTPStatus.OK, PAGE.encode(), "text/html; charset=utf-8")
            elif path == "/faces.json":
                self._send_json(HTTPStatus.OK, self.server.view.faces_json())
            elif path == "/stream.mjpg":
                self._stream()
            else:
                self._send_json(HTTPStatus.NOT_FOUND, {"message": f"no such page: {path}"})
        except CLIENT_ERRORS:
            self.close_connection = True  # the viewer left

    def do_POST(self) -> None:  # noqa: N802
        try:
            if self.path.split("?", 1)[0] != "/enrol":
                self._send_json(HTTPStatus.NOT_FOUND, {"ok": False, "message": f"no such action: {self.path}"})
                return
            name = self._name_from_body()
            if name is None:
                return
            status, message = self.server.view.enrol(name)
            self._send_json(status, {"ok": status == HTTPStatus.OK, "message": message})
        except CLIENT_ERRORS:
            self.close_connection = True

    def _name_from_body(self) -> str | None:
        """The "name" of a JSON or form body; None after answering a bad request."""
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 < length <= MAX_BODY:
            self._send_json(HTTPStatus.BAD_REQUEST, {"ok": False, "message": f"send a name (at most {MAX_BODY} "
                                                                             f"bytes of JSON or form data)"})
            self.close_connection = True
            return None
        body = self.rfile.read(length).decode("utf-8", "replace")
        if self.headers.get_content_type() == "application/json":
            try:
                data = json.loads(body)
            except json.JSONDecodeError:
                data = None
            name = data.get("name") if isinstance(data, dict) else None
        else:
            name = (parse_qs(body).get("name") or [None])[0]
        if not isinstance(name, str):
            self._send_json(HTTPStatus.BAD_REQUEST, {"ok": False, "message": 'send {"name": "..."}'})
            return None
        return name

    def _stream(self) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        sequence = 0
        while not self.server.stopping.is_set():
            latest = self.server.view.state.next_jpeg(sequence, timeout=0.5)
            if latest is None:
                continue
            sequence, jpeg = latest
            self.wfile.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n"
                             .encode() + jpeg + b"\r\n")
            self.wfile.flush()


class LiveServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer serving one LiveView; request threads are daemons."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], view: LiveView):
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, Handler)
        self.view = view
        self.stopping = threading.Event()

    def handle_error(self, request, client_address) -> None:
        """A viewer that vanished mid-request is not an error worth a traceback."""
        if not isinstance(sys.exc_info()[1], CLIENT_ERRORS):
            super().handle_error(request, client_address)


def serve(view: LiveView, host: str, port: int, log: Log = print) -> None:
    """Serve the live view until KeyboardInterrupt (which is re-raised after a clean shutdown)."""
    try:
        server = LiveServer((host, port), view)
    except OSError as err:
        raise OSError(f"cannot serve on {host}:{port}: {err.strerror or err}") from None
    shown_host = f"[{host}]" if ":" in host else host
    log(f"serving the live view on http://{shown_host}:{server.server_address[1]}/ (Ctrl-C stops)")
    view.start()
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.stopping.set()
        view.close()
        server.server_close()
