"""recognize.py --serve: the live view in a browser, over 127.0.0.1 on a free port.

One server runs for the module: ANG's shipped weights, a gallery of two LFW people and a
synthetic video of a third person's face moving about. The tests read the page, the MJPEG
stream (two viewers at once, one leaving mid-frame), the names JSON, enrol the face in view,
and finally stop the server with Ctrl-C (SIGINT). Every wait is bounded.
"""
from __future__ import annotations

import http.client
import json
import queue
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

from utils.faces.align import FaceAligner
from utils.faces.image_io import read_image
from utils.recognition.synthetic_video import FRAME_SIZE, face_sprite, write_moving_faces_video
from utils.recognition.web import parse_address

REPO = Path(__file__).resolve().parent.parent
GALLERY = ("Colin_Powell", "Tony_Blair")
STARTUP_SECONDS = 600  # model and gallery embedding on a loaded 2-core machine
TIMEOUT = 60


def _restore_sigint() -> None:
    """The server must see Ctrl-C even when the test runner ignores SIGINT (children inherit that)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture(scope="module")
def server(tmp_path_factory, lfw_root, shared_data):
    folder = tmp_path_factory.mktemp("web")
    people = folder / "people"
    for name in GALLERY:
        (people / name).mkdir(parents=True)
        for image in sorted((lfw_root / name).glob("*.jpg"))[:3]:
            (people / name / image.name).symlink_to(image)
    picture = sorted((shared_data / "five-celebrity" / "val" / "madonna").glob("*.jpg"))[0]
    sprite = face_sprite(read_image(picture), FaceAligner(upsample=(0, 1)), 120)
    video = folder / "face.avi"
    write_moving_faces_video(video, [[sprite]], 600)  # 40 s at 15 frames/s: still playing during the tests
    process = subprocess.Popen([sys.executable, "recognize.py", "--model", "ang", "--source", str(video),
                                "--people", str(people), "--serve", "127.0.0.1:0"],
                               cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               preexec_fn=_restore_sigint)
    lines: queue.Queue[str] = queue.Queue()
    log: list[str] = []

    def read() -> None:
        for line in process.stderr:
            log.append(line)
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    deadline, url = time.monotonic() + STARTUP_SECONDS, None
    while url is None and time.monotonic() < deadline and process.poll() is None:
        try:
            found = re.search(r"serving the live view on (http://\S+/)", lines.get(timeout=1))
        except queue.Empty:
            continue
        url = found.group(1) if found else None
    assert url, "the server did not start:\n" + "".join(log)[-3000:]
    try:
        yield {"url": url, "process": process, "log": log, "people": people}
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(TIMEOUT)


def get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=TIMEOUT) as reply:
        return reply.status, reply.read()


def post(url: str, body: bytes, content_type: str = "application/json") -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def read_frames(url: str, count: int) -> list[np.ndarray]:
    """count JPEG frames of the MJPEG stream, decoded."""
    host, port = re.match(r"http://([^:/]+):(\d+)/", url).groups()
    connection = http.client.HTTPConnection(host, int(port), timeout=TIMEOUT)
    try:
        connection.request("GET", "/stream.mjpg")
        reply = connection.getresponse()
        assert reply.status == 200
        assert reply.getheader("Content-Type") == "multipart/x-mixed-replace; boundary=frame"
        frames = []
        while len(frames) < count:
            assert reply.fp.readline() == b"--frame\r\n"
            headers = {}
            while (line := reply.fp.readline()) != b"\r\n":
                key, value = line.decode().split(":", 1)
                headers[key.strip().lower()] = value.strip()
            assert headers["content-type"] == "image/jpeg"
            jpeg = reply.fp.read(int(headers["content-length"]))
            assert reply.fp.readline() == b"\r\n"
            frames.append(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR))
        return frames
    finally:
        connection.close()


def test_page_and_names_json(server):
    status, page = get(server["url"])
    assert status == 200 and b'src="/stream.mjpg"' in page and b"/faces.json" in page and b"/enrol" in page
    status, body = get(server["url"] + "faces.json")
    data = json.loads(body)
    assert status == 200 and data["people"] == list(GALLERY)
    assert 0 < data["threshold"] < 4 and set(data) >= {"frame", "status", "faces", "seen"}
    status, _ = get(server["url"] + "faces.json")  # answered again: nothing was used up
    assert status == 200
    with pytest.raises(urllib.error.HTTPError) as missing:
        get(server["url"] + "nothing-here")
    assert missing.value.code == 404


def test_two_viewers_get_decodable_frames_and_one_leaving_mid_stream_harms_no_one(server):
    results: dict[str, list[np.ndarray]] = {}
    viewers = [threading.Thread(target=lambda k=k: results.update({k: read_frames(server["url"], 3)}))
               for k in ("a", "b")]
    for viewer in viewers:
        viewer.start()
    for viewer in viewers:
        viewer.join(TIMEOUT * 2)
    assert set(results) == {"a", "b"}
    for frames in results.values():
        assert [f.shape for f in frames] == [(FRAME_SIZE[1], FRAME_SIZE[0], 3)] * 3

    port = int(server["url"].rsplit(":", 1)[1].strip("/"))
    for _ in range(3):  # leave in the middle of a frame, with a reset (as a closed tab can)
        leaving = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        leaving.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert leaving.recv(2000)
        leaving.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        leaving.close()
    time.sleep(1)
    assert server["process"].poll() is None
    assert get(server["url"] + "faces.json")[0] == 200
    assert read_frames(server["url"], 2)[1].shape == (FRAME_SIZE[1], FRAME_SIZE[0], 3)
    assert "Traceback" not in "".join(server["log"])


@pytest.mark.parametrize("body, content_type", [
    (b'{"name": "../Eve"}', "application/json"),
    (b'{"name": "  "}', "application/json"),
    (b'{"name": ".hidden"}', "application/json"),
    (b'{"nom": "Ada"}', "application/json"),
    (b"not json", "application/json"),
    (b"name=a%2Fb", "application/x-www-form-urlencoded"),
])
def test_enrol_refuses_bad_names(server, body, content_type):
    status, reply = post(server["url"] + "enrol", body, content_type)
    assert status == 400 and not reply["ok"] and reply["message"]
    assert sorted(p.name for p in server["people"].iterdir()) == \
        list(GALLERY)


def test_enrol_adds_the_face_in_view_to_the_gallery(server):
    deadline = time.monotonic() + TIMEOUT * 2
    status, reply = 409, {}
    while status == 409 and time.monotonic() < deadline:  # 409: no face (or two) in the latest frame
        status, reply = post(server["url"] + "enrol", b"name=Ada+Lovelace", "application/x-www-form-urlencoded")
        if status == 409:
            time.sleep(0.5)
    assert status == 200 and reply["ok"], reply
    [picture] = (server["people"] / "Ada Lovelace").iterdir()
    assert picture.suffix == ".jpg" and read_image(picture).shape == (FRAME_SIZE[1], FRAME_SIZE[0], 3)
    assert not [p for p in server["people"].rglob("*") if ".tmp." in p.name]
    data = json.loads(get(server["url"] + "faces.json")[1])
    assert sorted(data["people"]) == sorted([*GALLERY, "Ada Lovelace"])
    # the face in view is now named after the picture just taken of it
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline and not any(f["name"] == "Ada Lovelace" for f in data["faces"]):
        time.sleep(0.5)
        data = json.loads(get(server["url"] + "faces.json")[1])
    assert any(f["name"] == "Ada Lovelace" for f in data["faces"]), data


def test_ctrl_c_stops_the_server_cleanly(server):
    process = server["process"]
    process.send_signal(signal.SIGINT)
    assert process.wait(TIMEOUT) == 130
    log = "".join(server["log"])
    assert "interrupted" in log and "Traceback" not in log


@pytest.mark.parametrize("text, address", [("8000", ("127.0.0.1", 8000)), ("0.0.0.0:0", ("0.0.0.0", 0)),
                                           ("[::1]:8080", ("::1", 8080))])
def test_serve_address(text, address):
    assert parse_address(text) == address


@pytest.mark.parametrize("text", ["", "host:", "80000", "localhost:http"])
def test_bad_serve_address_is_refused(text):
    with pytest.raises(ValueError, match=r"\[HOST:\]PORT"):
        parse_address(text)
