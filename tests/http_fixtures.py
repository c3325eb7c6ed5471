"""A loopback HTTP file server for download tests (never leaves 127.0.0.1).

tests/conftest.py registers this module as a plugin, so any test can ask for it::

    def test_x(http_server):
        http_server.add_file("a/b.bin", b"...")
        url = http_server.url("a/b.bin")

The server honours single ``Range: bytes=N-`` / ``bytes=N-M`` requests (206 answers),
and can be told, per path, to answer with an error status, to cut the body short
for the first few requests, to ignore Range headers, to send no Content-Length, or to
stall before answering.
Every request is logged (path and Range header) for assertions.
"""
from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest


@dataclass
class _Behaviour:
    status: int | None = None  # answer this error status instead of the file
    cut_after: int | None = None  # send only this many body bytes, then close
    cut_times: int = 0  # how many more requests get cut
    ignore_range: bool = False
    hide_length: bool = False  # no Content-Length header: the body ends when the connection closes
    stall_s: float = 0.0  # sleep before answering


@dataclass
class RequestRecord:
    path: str
    range: str | None


@dataclass
class LoopbackServer:
    """Serves files under ``root`` at ``base_url``; see the module docstring."""

    root: Path
    base_url: str = ""
    requests: list[RequestRecord] = field(default_factory=list)
    _behaviour: dict[str, _Behaviour] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}"

    def add_file(self, path: str, data: bytes) -> str:
        """Write ``data`` at ``path`` under the served root; return its URL."""
        target = self.root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        return self.url(path)

    def fail(self, path: str, status: int = 404) -> None:
        """Answer every request for ``path`` with ``status``."""
        self._set(path, status=status)

    def cut_short(self, path: str, after_bytes: int, times: int = 1) -> None:
        """Announce the full length but close after ``after_bytes`` bytes, for the next ``times`` requests."""
        self._set(path, cut_after=after_bytes, cut_times=times)

    def ignore_range(self, path: str) -> None:
        """Always send the whole file with 200, as servers without Range support do."""
        self._set(path, ignore_range=True)

    def hide_length(self, path: str) -> None:
        """Send no Content-Length header for ``path`` (the client learns the size only by reading)."""
        self._set(path, hide_length=True)

    def stall(self, path: str, seconds: float) -> None:
        """Wait ``seconds`` before answering requests for ``path``."""
        self._set(path, stall_s=seconds)

    def requests_for(self, path: str) -> list[RequestRecord]:
        with self._lock:
            return [r for r in self.requests if r.path == "/" + path.lstrip("/")]

    def _set(self, path: str, **changes) -> None:
        with self._lock:
            behaviour = self._behaviour.setdefault("/" + path.lstrip("/"), _Behaviour())
            for key, value in changes.items():
                setattr(behaviour, key, value)

    def _take(self, path: str, range_header: str | None) -> _Behaviour:
        """Log the request and return what to do (consuming one 'cut' if set)."""
        with self._lock:
            self.requests.append(RequestRecord(path, range_header))
            current = self._behaviour.get(path, _Behaviour())
            snapshot = _Behaviour(**vars(current))
            if current.cut_times > 0:
                current.cut_times -= 1
            else:
                snapshot.cut_after = None
            return snapshot


def _make_handler(server: LoopbackServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # one request per connection: closing it ends the body

        def log_message(self, *args) -> None:  # keep test output quiet
            pass

        def do_GET(self) -> None:
            path = unquote(urlsplit(self.path).path)
            range_header = self.headers.get("Range")
            behaviour = server._take(path, range_header)
            if behaviour.stall_s:
                time.sleep(behaviour.stall_s)
            if behaviour.status is not None:
                self.send_error(behaviour.status)
                return
            target = (server.root / path.lstrip("/")).resolve()
            if not target.is_file() or server.root.resolve() not in target.parents:
                self.send_error(404)
                return
            data = target.read_bytes()
            start, end = 0, len(data) - 1
            match = re.fullmatch(r"bytes=(\d+)-(\d*)", range_header or "")
            if match and not behaviour.ignore_range:
                start = int(match.group(1))
                end = min(int(match.group(2)), end) if match.group(2) else end
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
            else:
                self.send_response(200)
                self.send_header("Accept-Ranges", "bytes")
            body = data[start:end + 1]
            if not behaviour.hide_length:
                self.send_header("Content-Length", str(len(body)))
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            if behaviour.cut_after is not None:
                body = body[:behaviour.cut_after]
            try:
                self.wfile.write(body)
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                pass

    return Handler


@pytest.fixture
def http_server(tmp_path_factory: pytest.TempPathFactory):
    """A `LoopbackServer` on 127.0.0.1 at a free port, serving a fresh temp dir."""
    root = tmp_path_factory.mktemp("served")
    server = LoopbackServer(root=root)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(server))
    httpd.daemon_threads = True
    server.base_url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
