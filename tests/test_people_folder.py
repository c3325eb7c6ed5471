"""A folder of people as --source: pictures labelled by subfolder, and the score at the end of the run.

The end-to-end run uses the real five-celebrity data: the gallery is five-celebrity/train,
the source five-celebrity/val (the same five subfolder names) plus a subfolder of LFW
strangers, recognised with ANG's shipped weights at a lenient threshold.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from utils.recognition.matching import Match
from utils.recognition.scoring import LabelledScore
from utils.recognition.sources import SourceError, open_source
from utils.recognition.tracking import RecognizedFace

REPO = Path(__file__).resolve().parent.parent
STRANGERS = ["Abdullah_Gul", "Colin_Powell", "Serena_Williams"]  # LFW people, none of the five
THRESHOLD = "1.0"  # lenient (the default, for 1% of strangers, names 8 of the 25): this test is about the score


def link_folders(target: Path, source: Path) -> None:
    target.mkdir(parents=True)
    for person in sorted(d for d in source.iterdir() if d.is_dir()):  # the people, not a gallery cache file
        (target / person.name).symlink_to(person)


def outcome(record: dict) -> str:
    """What the score should count for one --json line of a labelled picture."""
    if not record["faces"]:
        return "no_face"
    largest = max(record["faces"], key=lambda f: (f["box"][2] - f["box"][0]) * (f["box"][3] - f["box"][1]))
    if not largest["known"]:
        return "unknown"
    return "correct" if largest["name"] == record["label"] else "wrong"


def test_folder_of_people_is_recognised_and_scored(tmp_path, shared_data, lfw_root):
    people = tmp_path / "people"
    link_folders(people, shared_data / "five-celebrity" / "train")
    probes = tmp_path / "probes"
    link_folders(probes, shared_data / "five-celebrity" / "val")
    (probes / "strangers").mkdir()
    for name in STRANGERS:
        for image in sorted((lfw_root / name).glob("*.jpg"))[:2]:
            (probes / "strangers" / image.name).symlink_to(image)

    result = subprocess.run([sys.executable, "recognize.py", "--model", "ang", "--source", str(probes),
                             "--people", str(people), "--json", "--upsample", "0", "1", "--threshold", THRESHOLD],
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    *frames, last = [json.loads(line) for line in result.stdout.splitlines()]
    val_pictures = len(list((shared_data / "five-celebrity" / "val").glob("*/*.jpg")))
    assert len(frames) == val_pictures + 2 * len(STRANGERS)
    assert all(r["image"] == f"{r['label']}/{Path(r['image']).name}" for r in frames)
    assert {r["label"] for r in frames} == {p.name for p in probes.iterdir()}

    score = last["score"]
    for label, counts in score["people"].items():
        outcomes = [outcome(r) for r in frames if r["label"] == label]
        assert counts["in_gallery"] == (label != "strangers")
        for name in ("correct", "wrong", "unknown", "no_face"):
            assert counts[name] == outcomes.count(name), (label, name)
    known = score["known_total"]
    assert sum(known.values()) == val_pictures
    assert known["correct"] >= 0.7 * val_pictures, known
    assert score["strangers_total"]["correct"] == 0
    assert sum(score["strangers_total"].values()) == 2 * len(STRANGERS)
    # the table goes to stderr with --json
    assert "gallery people" in result.stderr and "strangers (stranger)" in result.stderr


def test_folder_of_people_source_labels_frames_and_refuses_empty_folders(tmp_path, shared_data):
    source = open_source(str(shared_data / "five-celebrity" / "val"))
    frames = list(source)
    assert {f.label for f in frames} == {"ben_afflek", "elton_john", "jerry_seinfeld", "madonna", "mindy_kaling"}
    assert all(f.name.startswith(f.label + "/") for f in frames) and source.stills

    (tmp_path / "empty" / "nobody").mkdir(parents=True)
    with pytest.raises(SourceError, match="nor in subfolders"):
        open_source(str(tmp_path / "empty"))


def face(name: str | None, side: int) -> RecognizedFace:
    return RecognizedFace((0, 0, side, side), Match(name, name or "ada", 0.5))


def test_score_counts_each_picture_by_its_largest_face():
    score = LabelledScore(["ada", "bob"])
    score.add("ada", [face("bob", 10), face("ada", 50)])  # the large face is Ada: correct
    score.add("ada", [face("bob", 50), face("ada", 10)])  # wrong
    score.add("ada", [face(None, 50)])                     # unknown
    score.add("bob", [])                                   # no face
    score.add("eve", [face("ada", 40)])                    # a stranger named: wrong
    score.add("eve", [face(None, 40)])                     # a stranger unknown
    result = score.to_dict()
    assert result["people"]["ada"] == {"correct": 1, "wrong": 1, "unknown": 1, "no_face": 0, "in_gallery": True}
    assert result["known_total"] == {"correct": 1, "wrong": 1, "unknown": 1, "no_face": 1}
    assert result["strangers_total"] == {"correct": 0, "wrong": 1, "unknown": 1, "no_face": 0}
    table = score.table()
    assert "eve (stranger)" in table and "strangers named as someone: 1 of 2" in table
