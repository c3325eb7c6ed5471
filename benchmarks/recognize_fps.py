"""Frames per second of recognize.py's per-frame work on a 640x480 video with one and with four faces.

    python benchmarks/recognize_fps.py [--frames 60] [--model openface_nn4_small2] [--detect-scale 1.0 0.5]

For each video (1 face, 4 faces), each --detect-every (1 and 3) and each HOG upsample (0 and 1)
the video is read, every frame goes through VideoRecognizer.process (detect or follow, align,
embed all faces of a frame in one batch, match) and the results are drawn onto a copy of the
frame, as recognize.py does before showing or writing it. Writing and showing are not timed.
The gallery is 4 LFW people x 5 pictures; faces in the videos are LFW pictures of other people.
The machine's load average is printed: on a shared CPU the figures are pessimistic.
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from utils.console import import_tensorflow_quietly  # noqa: E402

import_tensorflow_quietly()  # TensorFlow's start-up lines stay off the figures

import numpy as np  # noqa: E402

from models.weights import load_model, weights_path  # noqa: E402
from utils.embedding import embed_faces, model_input_size  # noqa: E402
from utils.faces.align import FaceAligner  # noqa: E402
from utils.faces.image_io import read_image  # noqa: E402
from utils.paths import lfw_dir  # noqa: E402
from utils.recognition.drawing import draw_face, draw_fps  # noqa: E402
from utils.recognition.gallery import build_gallery, model_fingerprint  # noqa: E402
from utils.recognition.matching import default_threshold  # noqa: E402
from utils.recognition.sources import VideoFileSource  # noqa: E402
from utils.recognition.synthetic_video import face_sprite, write_moving_faces_video  # noqa: E402
from utils.recognition.tracking import VideoRecognizer  # noqa: E402

GALLERY_PEOPLE = ("Colin_Powell", "Gerhard_Schroeder", "Hugo_Chavez", "Tony_Blair")
FACE_PEOPLE = ("Ariel_Sharon", "Donald_Rumsfeld", "Jean_Chretien", "John_Ashcroft")


def make_gallery(folder: Path) -> Path:
    people = folder / "people"
    for name in GALLERY_PEOPLE:
        (people / name).mkdir(parents=True)
        for image in sorted((lfw_dir() / name).glob("*.jpg"))[:5]:
            (people / name / image.name).symlink_to(image)
    return people


def make_videos(folder: Path, frames: int) -> dict[int, Path]:
    """One video with a single 120-px face and one with four 100-px faces, all moving."""
    aligner = FaceAligner(upsample=(0, 1))
    pictures = [read_image(sorted((lfw_dir() / name).glob("*.jpg"))[0]) for name in FACE_PEOPLE]
    videos = {}
    for count, face_px in ((1, 120), (4, 100)):
        sprites = [face_sprite(picture, aligner, face_px) for picture in pictures[:count]]
        videos[count] = folder / f"{count}_faces.avi"
        write_moving_faces_video(videos[count], [sprites], frames_per_scene=frames, fps=30)
    return videos


def time_run(video: Path, recognizer: VideoRecognizer) -> tuple[float, float, int]:
    """(frames/s, faces found per frame, frames) for one pass over the video."""
    source = VideoFileSource(video)
    frames, faces_found, fps = 0, 0, 0.0
    start = time.perf_counter()
    for frame in source:
        faces = recognizer.process(frame.rgb)
        canvas = frame.rgb.copy()
        for face in faces:
            draw_face(canvas, face.box, face.match.name, face.match.distance, True)
        draw_fps(canvas, fps)
        frames, faces_found = frames + 1, faces_found + len(faces)
        fps = frames / (time.perf_counter() - start)
    source.close()
    return frames / (time.perf_counter() - start), faces_found / max(frames, 1), frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=60, help="frames per video (default 60)")
    parser.add_argument("--model", default="openface_nn4_small2")
    parser.add_argument("--detect-scale", type=float, nargs="+", default=[1.0],
                        help="detection scales to time (default 1.0)")
    args = parser.parse_args()

    model = load_model(args.model)
    size = model_input_size(model)

    def embed(faces: np.ndarray) -> np.ndarray:
        return embed_faces(model, faces)

    for batch in (1, 2, 3, 4):  # compile each batch size before timing
        embed(np.zeros((batch, size, size, 3), np.uint8))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        gallery = build_gallery(make_gallery(folder), embed, model_fingerprint(args.model, weights_path(args.model)),
                                args.model, output_size=size)
        threshold = default_threshold(args.model).value(len(gallery.people))
        videos = make_videos(folder, args.frames)
        aligners = {(up, scale): FaceAligner(size, upsample=up, detect_scale=scale)
                    for up, scale in itertools.product((0, 1), args.detect_scale)}
        load = os.getloadavg()
        print(f"{os.cpu_count()} CPUs, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1/5/15 min); "
              f"model {args.model}, {args.frames} frames of 640x480 per run\n")
        print("| faces | detect every | upsample | detect scale | frames/s | ms/frame | faces found/frame |")
        print("|---|---|---|---|---|---|---|")
        for count, every, (up, scale) in itertools.product(sorted(videos), (1, 3), aligners):
            recognizer = VideoRecognizer(aligners[(up, scale)], embed, gallery, threshold, every)
            fps, found, frames = time_run(videos[count], recognizer)
            print(f"| {count} | {every} | {up} | {scale:g} | {fps:.1f} | {1000 / fps:.0f} | {found:.2f} |", flush=True)


if __name__ == "__main__":
    main()
