"""What a browser shows of recognize.py --serve: a screenshot taken by headless Chromium.

    python benchmarks/browser_view.py --video clip.avi --people people/ --screenshot view.png

Starts ``recognize.py --serve 127.0.0.1:0`` on the video (default: a synthetic video of two
five-celebrity/val faces, one of them in a gallery of five-celebrity/train), waits for it to
serve, opens the page in headless Chromium (Debian's ``chromium``; --chromium names another
binary) in a new temporary profile, saves a screenshot, prints the page's /faces.json as the
browser would have polled it, and stops the server with Ctrl-C (SIGINT), printing its exit status.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from utils.paths import data_dir  # noqa: E402

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def synthetic_video(folder: Path) -> Path:
    """Madonna (in the gallery) and a stranger's face moving, then Madonna alone."""
    from utils.faces.align import FaceAligner
    from utils.faces.image_io import read_image
    from utils.recognition.synthetic_video import face_sprite, write_moving_faces_video

    aligner = FaceAligner(upsample=(0, 1))
    val = data_dir() / "five-celebrity" / "val"
    madonna = face_sprite(read_image(sorted((val / "madonna").glob("*.jpg"))[0]), aligner, 120)
    stranger = face_sprite(read_image(sorted((data_dir() / "lfw" / "Colin_Powell").glob("*.jpg"))[0]), aligner, 120)
    video = folder / "faces.avi"
    write_moving_faces_video(video, [[madonna, stranger]], 900)  # a minute at 15 frames/s
    return video


def five_celebrity_gallery(folder: Path) -> Path:
    people = folder / "people"
    people.mkdir()
    for person in sorted((data_dir() / "five-celebrity" / "train").iterdir()):
        (people / person.name).symlink_to(person.resolve())
    return people


def wait_for_url(process: subprocess.Popen, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    for line in process.stderr:
        print("  server:", line.rstrip())
        found = re.search(r"serving the live view on (http://\S+/)", line)
        if found:
            return found.group(1)
        if time.monotonic() > deadline:
            break
    raise SystemExit("the server did not start")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--video", type=Path, help="video file (default: a synthetic one)")
    parser.add_argument("--people", type=Path, help="gallery (default: five-celebrity/train)")
    parser.add_argument("--model", default="ang")
    parser.add_argument("--screenshot", type=Path, default=Path("browser_view.png"))
    parser.add_argument("--chromium", default="chromium")
    parser.add_argument("--seconds", type=float, default=10, help="how long the page plays before the shot")
    args = parser.parse_args()
    chromium = shutil.which(args.chromium)
    if chromium is None:
        raise SystemExit(f"{args.chromium} not found (on Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        video = args.video or synthetic_video(folder)
        people = args.people or five_celebrity_gallery(folder)
        server = subprocess.Popen([sys.executable, "recognize.py", "--model", args.model, "--source", str(video),
                                   "--people", str(people), "--serve", "127.0.0.1:0"], cwd=ROOT,
                                  stderr=subprocess.PIPE, text=True,
                                  preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            url = wait_for_url(server, 600)
            profile = folder / "chromium-profile"
            command = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                       f"--screenshot={args.screenshot.resolve()}", "--window-size=1280,720",
                       f"--virtual-time-budget={int(args.seconds * 1000)}", url]
            started = time.monotonic()
            shot = subprocess.run(command, capture_output=True, text=True, timeout=120)
            print(f"chromium exit status {shot.returncode} after {time.monotonic() - started:.1f} s; "
                  f"screenshot {args.screenshot} ({args.screenshot.stat().st_size if args.screenshot.exists() else 0}"
                  f" bytes)")
            with urllib.request.urlopen(url + "faces.json", timeout=30) as reply:
                print("faces.json:", json.dumps(json.loads(reply.read()), indent=1))
        finally:
            server.send_signal(signal.SIGINT)
            try:
                status = server.wait(60)
            except subprocess.TimeoutExpired:
                server.kill()
                status = server.wait()
            rest = server.stderr.read()
            print(f"server exit status {status} after Ctrl-C; traceback: {'Traceback' in rest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
