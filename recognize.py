"""Who is in front of the camera: recognise the people of people/ in a camera, video, stream or images.

Examples:
  python recognize.py                                   # camera 0, window if OpenCV has a GUI
  python recognize.py --source clip.mp4 --output out.mp4 --show-distance
  python recognize.py --source rtsp://user:pass@host/stream --json > faces.jsonl
  python recognize.py --source photos/ --output annotated/
  python recognize.py --source test_people/            # one subfolder per person: prints a score
  python recognize.py --enrol Ada_Lovelace --source 0 --count 5
  python recognize.py --serve 8000                      # live view in a browser: http://127.0.0.1:8000/
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from utils.console import import_tensorflow_quietly
from utils.paths import PEOPLE_DIR
from utils.recognition.matching import DEFAULT_FALSE_NAMING
from utils.recognition.sources import (
    Frame,
    FrameSink,
    FrameSource,
    OutputError,
    SourceError,
    open_source,
    quiet_opencv,
    window_unavailable,
)

DEFAULT_MODEL = "openface_nn4_small2"
DEFAULT_DETECT_EVERY = 3  # 42 frames/s instead of 13 with one face on a busy 2-core CPU (benchmarks/recognize_fps.py)
EXIT_SOURCE_STOPPED, EXIT_SETUP, EXIT_INTERRUPTED = 1, 2, 130
WINDOW_TITLE = "recognize.py (q or Esc to quit)"

EPILOG = f"""
The gallery: people/<Name>.jpg (one picture) or people/<Name>/*.jpg (several); see people/README.md.
Embeddings are cached in cache/galleries/ (not in the gallery folder); adding a picture embeds only
that picture.

Distances are squared L2 between L2-normalised embeddings (0 to 4). A face's distance to a person
is its distance to the mean of that person's picture embeddings (rescaled to unit length; see
utils/recognition/matching.py for why the mean and not the closest picture); the face is named after the
nearest person when that distance is at most the threshold, else "unknown".
The default threshold keeps strangers from being named: a stranger is compared with every gallery
person, so with G people and a per-pair false-accept rate FAR(t) about 1-(1-FAR(t))^G of strangers are
named as someone. The threshold is the distance t at which that share is --false-naming (default
{DEFAULT_FALSE_NAMING:.0%}), read from the distances between pictures of different LFW people the model
was not trained on (stored in weights/<model>.json by `python evaluate.py --model M --protocol
view2-unseen`); it shrinks as the gallery grows. It is printed at start-up, e.g. "threshold 0.87: about
1% of strangers named as one of the 5 people". A model without those distances falls back on its LFW
View 2 accuracy threshold, which names far more strangers; one without either needs --threshold.

--json prints one line per frame on stdout:
  {{"frame": 0, "image": null, "faces": [{{"box": [left, top, right, bottom], "name": "Ada" or "unknown",
    "known": true, "distance": 0.41, "nearest": "Ada", "tracked": false}}]}}
("image" is the file name for image sources; "tracked" marks boxes followed between detections;
"nearest" is the closest person even when the face is unknown.) Messages go to stderr.

A folder of people (one subfolder of pictures per person, like the gallery) is scored: each
picture's largest face is named correctly, named wrongly, unknown, or no face is found; the
table per person and in total ends the run. Subfolders named like no gallery person are strangers
(unknown is right for them). Its frames' JSON lines carry "label" (the subfolder), and with --json
a last line {{"score": {{"people": {{...}}, "known_total": {{...}}, "strangers_total": {{...}}}}}} follows.

Exit status: 0 done; {EXIT_SOURCE_STOPPED} the source stopped delivering frames (a camera or stream that
stopped, or a video file that ends before the frame count its header announces: damaged or cut short;
the frames read are processed first); {EXIT_SETUP} a setup problem
(source cannot be opened, missing or damaged weights, no threshold, empty gallery, a file or folder
that cannot be written); {EXIT_INTERRUPTED} interrupted.
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="0",
                        help="camera index (default 0), video file, rtsp:// or http(s):// URL, image file, "
                             "folder of images, or folder of people (one subfolder per person: scored)")
    parser.add_argument("--people", type=Path, default=PEOPLE_DIR, help=f"gallery folder (default {PEOPLE_DIR})")
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"registry model name (models/__init__.py; default {DEFAULT_MODEL}: pretrained "
                             f"OpenFace nn4.small2.v1)")
    parser.add_argument("--weights", type=Path, help="weights file (default weights/<model>.weights.h5)")
    parser.add_argument("--threshold", type=float,
                        help="squared L2 distance above which a face is unknown (default: the distance at which "
                             "about --false-naming of strangers are named as one of the gallery's people)")
    parser.add_argument("--false-naming", type=float, default=DEFAULT_FALSE_NAMING, metavar="RATE",
                        help="share of strangers the default threshold may name as a gallery person "
                             "(default %(default)s, i.e. 1%%; ignored with --threshold)")
    parser.add_argument("--show-distance", action="store_true", help="print the distance on each label")
    speed = parser.add_argument_group("speed")
    speed.add_argument("--detect-every", type=int, default=DEFAULT_DETECT_EVERY, metavar="N",
                       help="run the face detector every N frames; in between, follow each face near its last "
                            "box and keep its name (default %(default)s; 1 detects and names every frame; "
                            "image files are always detected one by one)")
    speed.add_argument("--detect-scale", type=float, default=1.0, metavar="F",
                       help="detect on the frame resized by F; alignment always uses the full frame "
                            "(default 1.0; 0.5 is about 3x faster, but at upsample 0 it finds faces from ~160 px "
                            "instead of ~80 px)")
    speed.add_argument("--upsample", type=int, nargs="+", default=[0], metavar="N",
                       help="dlib HOG upsample count(s), tried in order until a face is found; 0 finds faces "
                            "from ~80 px, 1 from ~40 px at 4x the cost (default 0)")
    speed.add_argument("--detector", choices=["hog", "cnn"], default="hog",
                       help="dlib detector (cnn is far slower on a CPU; default hog)")
    out = parser.add_argument_group("output")
    out.add_argument("--output", type=Path, help="write annotated frames to a video (.mp4, .avi, ...) or a folder")
    out.add_argument("--json", action="store_true", help="print one JSON line per frame on stdout")
    out.add_argument("--no-window", action="store_true", help="do not open a window")
    out.add_argument("--verbose", action="store_true", help="show TensorFlow's start-up and log lines")
    out.add_argument("--serve", metavar="[HOST:]PORT",
                     help="show the live view in a browser instead of a window: the annotated video, the names "
                          "seen with their distances, and an enrol button (host default 127.0.0.1, only this "
                          "computer; 0.0.0.0 lets the network in, without a password)")
    out.add_argument("--reconnect", type=int, default=5, metavar="N",
                     help="reconnection attempts when a stream URL drops (default 5)")
    enrol = parser.add_argument_group("enrolment")
    enrol.add_argument("--enrol", metavar="NAME",
                       help="capture frames showing exactly one face from --source into people/NAME/ and exit")
    enrol.add_argument("--count", type=int, default=5, help="frames to capture with --enrol (default 5)")
    enrol.add_argument("--enrol-every", type=int, default=10, metavar="K",
                       help="with --enrol, skip K-1 frames after each capture so the pictures differ (default 10)")
    args = parser.parse_args(argv)
    if args.detect_every < 1 or args.count < 1 or args.enrol_every < 1 or args.reconnect < 0:
        parser.error("--detect-every, --count and --enrol-every must be at least 1, --reconnect at least 0")
    if not 0 < args.detect_scale <= 4 or min(args.upsample) < 0:
        parser.error("--detect-scale must be in (0, 4] and --upsample counts non-negative")
    if args.threshold is not None and not 0 <= args.threshold <= 4:
        parser.error("--threshold is a squared L2 distance between unit vectors: between 0 and 4")
    if not 0 < args.false_naming < 1:
        parser.error("--false-naming is a share of strangers: between 0 and 1 (0.01 is 1%)")
    if args.serve is not None:
        from utils.recognition.web import parse_address

        try:
            args.serve = parse_address(args.serve)
        except ValueError as err:
            parser.error(str(err))
        if args.enrol or args.output or args.json:
            parser.error("--serve shows the live view in a browser: it does not combine with --enrol, --output "
                         "or --json (enrol from the page)")
    return args


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class SetupError(Exception):
    """A problem found before the first frame; the message is for the user."""


def os_error_message(err: OSError) -> str:
    """'<file>: <reason>' for errors the system raised, the message itself for our own."""
    if err.filename is not None and err.strerror:
        return f"{err.filename}: {err.strerror}"
    return str(err)


def make_aligner(args: argparse.Namespace, output_size: int = 96):
    from utils.faces.align import FaceAligner

    return FaceAligner(output_size=output_size, upsample=tuple(args.upsample), detector=args.detector,
                       detect_scale=args.detect_scale)


def run_enrol(args: argparse.Namespace, source: FrameSource) -> int:
    from utils.recognition.gallery import check_person_name, enrol

    try:
        name = check_person_name(args.enrol)
    except ValueError as err:
        raise SetupError(str(err)) from None
    saved = enrol(source, make_aligner(args), name, args.people, args.count, args.enrol_every, log=say)
    if len(saved) < args.count:
        say(f"only {len(saved)} of {args.count} frames with exactly one face were found before "
            f"{source.description} ended")
        return EXIT_SOURCE_STOPPED if not saved else 0
    say(f"enrolled {name}: {len(saved)} pictures in {args.people / name}; they are embedded on the next run")
    return 0


def load_recognizer(args: argparse.Namespace, detect_every: int, allow_empty: bool = False):
    """(recognizer, reload_gallery): model, threshold and gallery, and a function that rebuilds the
    gallery from args.people (and the default threshold for its size) and returns its people.
    SetupError with a clear message when something is missing."""
    import_tensorflow_quietly(args.verbose)
    from models.weights import MissingWeightsError, load_model, weights_path
    from utils.embedding import embed_faces, model_input_size
    from utils.recognition.gallery import build_gallery, model_fingerprint
    from utils.recognition.matching import NoThresholdError, default_threshold
    from utils.recognition.tracking import VideoRecognizer

    rule = None
    if args.threshold is None:
        try:
            rule = default_threshold(args.model, args.false_naming)
        except (NoThresholdError, ValueError) as err:  # ValueError: damaged weights/<model>.json
            raise SetupError(str(err)) from None
    if not args.people.is_dir():
        raise SetupError(f"gallery folder not found: {args.people} (see people/README.md)")
    try:
        model = load_model(args.model, args.weights)
    except (MissingWeightsError, ValueError) as err:
        raise SetupError(str(err)) from None
    size = model_input_size(model)

    def embed(faces):
        return embed_faces(model, faces)

    fingerprint = model_fingerprint(args.model, args.weights or weights_path(args.model))

    def gallery_and_threshold():
        gallery = build_gallery(args.people, embed, fingerprint, args.model, output_size=size,
                                detector=args.detector)
        for issue in gallery.issues:
            say(f"gallery: {issue}")
        say(f"gallery: {len(gallery.people)} people, {len(gallery)} pictures "
            f"({gallery.embedded_now} embedded now, {len(gallery) - gallery.embedded_now} from the cache)")
        if rule is None or not gallery.people:
            return gallery, args.threshold if rule is None else rule.value(1)
        say(rule.describe(len(gallery.people))
            + ("; measured with the default weights, not " + str(args.weights) if args.weights else ""))
        return gallery, rule.value(len(gallery.people))

    say(f"embedding the gallery {args.people} with {args.model} ...")
    gallery, threshold = gallery_and_threshold()
    if not gallery.people and not allow_empty:
        raise SetupError(f"no usable pictures in {args.people}: add people/<Name>.jpg or people/<Name>/*.jpg "
                         f"(see people/README.md) or use --enrol NAME")
    recognizer = VideoRecognizer(make_aligner(args, size), embed, gallery, threshold, detect_every)

    def reload_gallery() -> list[str]:
        recognizer.gallery, recognizer.threshold = gallery_and_threshold()
        return recognizer.gallery.people

    return recognizer, reload_gallery


def frame_record(frame: Frame, faces) -> dict:
    """The --json line of one frame (boxes in the pixels of the source, also for a photo read shrunk)."""
    record = {"frame": frame.index, "image": frame.name,
              "faces": [{"box": [round(v / frame.scale) for v in f.box], "name": f.match.name or "unknown",
                         "known": f.match.known, "distance": round(f.match.distance, 4), "nearest": f.match.nearest,
                         "tracked": f.tracked}
                        for f in faces]}
    if frame.label is not None:
        record["label"] = frame.label
    return record


def run_recognition(args: argparse.Namespace, source: FrameSource) -> int:
    import cv2

    from utils.recognition.drawing import draw_face, draw_fps
    from utils.recognition.scoring import LabelledScore

    recognizer, _ = load_recognizer(args, 1 if source.stills else args.detect_every)
    no_window = None if args.no_window else window_unavailable()
    show = not args.no_window and no_window is None
    if no_window:
        say(f"no window: {no_window}" + ("" if args.output or args.json else
                                          "; printing who is seen here (or use --output FILE.mp4 / --json)"))
    sink = FrameSink(args.output, source.fps, source.location) if args.output else None
    draw = show or sink is not None
    log_changes = not (show or sink or args.json)
    last_names: list[str] | None = None
    score = None  # made at the first labelled picture (a folder of people)
    fps, started, frames, tick = 0.0, time.perf_counter(), 0, time.perf_counter()
    try:
        for frame in source:
            faces = recognizer.process(frame.rgb)
            now = time.perf_counter()
            fps = 1.0 / max(now - tick, 1e-6) if fps == 0 else 0.9 * fps + 0.1 / max(now - tick, 1e-6)
            tick, frames = now, frames + 1
            if args.json:
                print(json.dumps(frame_record(frame, faces)), flush=True)
            if frame.label is not None:
                score = score or LabelledScore(recognizer.gallery.people)
                score.add(frame.label, faces)
            if log_changes:
                names = sorted(f.match.name or "unknown" for f in faces)
                if names != last_names or source.stills:
                    described = ", ".join(f"{f.match.name or 'unknown'} ({f.match.distance:.2f})" for f in faces)
                    print(f"frame {frame.index}{' ' + frame.name if frame.name else ''}: {described or 'no face'}",
                          flush=True)
                    last_names = names
            if not draw:
                continue
            canvas = frame.rgb.copy()
            for face in faces:
                draw_face(canvas, face.box, face.match.name, face.match.distance, args.show_distance)
            draw_fps(canvas, fps)
            if sink:
                sink.write(frame, canvas)
            if show:
                cv2.imshow(WINDOW_TITLE, cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
                key = cv2.waitKey(0 if frame.name else 1) & 0xFF
                if key in (ord("q"), 27):
                    break
    finally:
        if sink:
            sink.close()
        if show:
            cv2.destroyAllWindows()
    elapsed = time.perf_counter() - started
    if score:
        if args.json:
            print(json.dumps({"score": score.to_dict()}), flush=True)
        print(score.table(), file=sys.stderr if args.json else sys.stdout, flush=True)
    say(f"{frames} frames in {elapsed:.1f} s ({frames / max(elapsed, 1e-6):.1f} frames/s)"
        + (f"; annotated frames in {args.output}" if sink else ""))
    return 0


def run_serve(args: argparse.Namespace, source: FrameSource) -> int:
    """The live view in a browser until Ctrl-C (utils/recognition/web.py)."""
    from utils.recognition.web import LiveView, serve

    recognizer, reload_gallery = load_recognizer(args, 1 if source.stills else args.detect_every, allow_empty=True)
    if not recognizer.gallery.people:
        say("the gallery is empty: enrol people from the page")
    view = LiveView(source, recognizer, args.people, reload_gallery, show_distance=True, log=say)
    serve(view, *args.serve, log=say)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_opencv()
    source = None
    try:
        source = open_source(args.source, log=say, retries=args.reconnect)
        if args.enrol:
            return run_enrol(args, source)
        if args.serve:
            return run_serve(args, source)
        return run_recognition(args, source)
    except (SetupError, OutputError) as err:
        say(f"error: {err}")
        return EXIT_SETUP
    except OSError as err:  # a folder or file that cannot be created, read or written
        say(f"error: {os_error_message(err)}")
        return EXIT_SETUP
    except SourceError as err:
        say(f"error: {err}")
        return EXIT_SETUP if source is None else EXIT_SOURCE_STOPPED
    except KeyboardInterrupt:
        say("interrupted")
        return EXIT_INTERRUPTED
    finally:
        if source is not None:
            source.close()


if __name__ == "__main__":
    sys.exit(main())
