"""Known people named and strangers left unknown, at the old and the new default threshold.

    FACE_CACHE_DIR=/path/to/cache python benchmarks/stranger_naming.py [--model ang openface_nn4_small2]

Gallery: five-celebrity/train (5 people). Knowns: every five-celebrity/val picture, its largest
face found as recognize.py finds it (HOG, upsample 0). Strangers: one picture each of the LFW
peopleDevTest.txt people outside the view2-unseen pairs (neither trained on nor used to choose the
threshold; the five celebrities left out), as aligned in the LFW cache, pictures with no detected
face left out. Each face is matched as recognize.py matches it (distance to each person's
renormalised mean embedding). Thresholds: the old default (the model's LFW View 2 accuracy
threshold, lfw_view2 in weights/<model>.json) and the new one (utils.recognition.matching.
default_threshold for 5 people at each --false-naming, default 1%).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from utils.console import import_tensorflow_quietly  # noqa: E402

import_tensorflow_quietly()  # TensorFlow's start-up lines stay off the figures

import numpy as np  # noqa: E402

from models.weights import load_model, read_metadata, weights_path  # noqa: E402
from utils.embedding import embed_faces, model_input_size  # noqa: E402
from utils.evaluation.verification import unseen_people_outside_view2  # noqa: E402
from utils.faces.align import FaceAligner  # noqa: E402
from utils.faces.cache import load_or_build  # noqa: E402
from utils.faces.image_io import read_image  # noqa: E402
from utils.paths import data_dir, lfw_dir  # noqa: E402
from utils.recognition.gallery import build_gallery, model_fingerprint  # noqa: E402
from utils.recognition.matching import DEFAULT_FALSE_NAMING, default_threshold, match  # noqa: E402

FIVE_CELEBRITY_IN_LFW = {"Ben_Affleck", "Elton_John", "Jerry_Seinfeld", "Madonna", "Mindy_Kaling"}


def known_faces(val: Path, aligner: FaceAligner) -> tuple[np.ndarray, list[str], int]:
    """Aligned largest faces of the val pictures, their people, and the number of pictures."""
    faces, people, pictures = [], [], sorted(val.glob("*/*.jpg"))
    for picture in pictures:
        face = aligner.align_largest(read_image(picture))
        if face is not None:
            faces.append(face)
            people.append(picture.parent.name)
    return np.stack(faces), people, len(pictures)


def stranger_faces(size: int) -> np.ndarray:
    aligned = load_or_build(lfw_dir(), output_size=size)
    rows = [aligned.index_of(person.images[0]) for person in unseen_people_outside_view2()
            if person.name not in FIVE_CELEBRITY_IN_LFW]
    return aligned.faces[[row for row in rows if aligned.detected[row]]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", nargs="+", default=["ang", "openface_nn4_small2"])
    parser.add_argument("--false-naming", type=float, nargs="+", default=[DEFAULT_FALSE_NAMING],
                        help="target shares of strangers named (default %(default)s)")
    args = parser.parse_args()
    root = data_dir() / "five-celebrity"
    print(f"{'model':<20} {'threshold':<26} {'knowns named correctly':>24} {'strangers named':>18}")
    for name in args.model:
        model = load_model(name)
        size = model_input_size(model)

        def embed(faces: np.ndarray) -> np.ndarray:
            return embed_faces(model, faces)  # noqa: B023 - used within this iteration only

        with tempfile.TemporaryDirectory() as tmp:
            people = Path(tmp)
            for person in sorted((root / "train").iterdir()):
                (people / person.name).symlink_to(person.resolve())
            gallery = build_gallery(people, embed, model_fingerprint(name, weights_path(name)), name,
                                    output_size=size)
        faces, truth, pictures = known_faces(root / "val", FaceAligner(size, upsample=0))
        known = embed(faces)
        strangers = embed(stranger_faces(size))
        thresholds = {"old (LFW View 2 accuracy)": read_metadata(name)["lfw_view2"]["threshold"],
                      **{f"new ({rate:.0%} false naming)": default_threshold(name, rate).value(len(gallery.people))
                         for rate in args.false_naming}}
        for label, threshold in thresholds.items():
            correct = sum(m.name == t for m, t in zip(match(known, gallery, threshold), truth, strict=True))
            named = sum(m.known for m in match(strangers, gallery, threshold))
            print(f"{name:<20} {threshold:.3f} {label:<20} {correct:>4} of {pictures} ({correct / pictures:>4.0%})"
                  f"      {named:>3} of {len(strangers)} ({named / len(strangers):.1%})")


if __name__ == "__main__":
    main()
