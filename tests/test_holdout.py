"""The CelebA hold-out: recomputed from the data by its fixed rule, committed, and kept out of training."""
from __future__ import annotations

import hashlib

import numpy as np

from utils.datasets.folders import list_identity_images
from utils.datasets.holdout import (
    SEEN_PEOPLE,
    TEST_PEOPLE,
    VAL_PEOPLE,
    celeba_holdout,
    eligible_identities,
    holdout_key,
    split_holdout,
)
from utils.datasets.lfw import read_people_file


def test_the_committed_lists_are_the_rule_applied_to_the_data(shared_data):
    root = shared_data / "celeba-subset"
    assert len(eligible_identities(root)) == 250
    val, test, seen = celeba_holdout(root)
    assert VAL_PEOPLE.read_text().split() == val and TEST_PEOPLE.read_text().split() == test
    assert SEEN_PEOPLE.read_text().split() == seen
    assert len(val) == len(test) == 25 and len(seen) == 200 and not set(val) & set(test)
    assert not set(seen) & (set(val) | set(test))
    images = [image.identity for image in list_identity_images(root)]
    assert sum(images.count(i) for i in val) == 570 and sum(images.count(i) for i in test) == 584


def test_split_takes_the_smallest_keys_alternately():
    identities = [str(n) for n in range(100)]
    val, test, seen = split_holdout(identities)
    ranked = sorted(identities, key=holdout_key)
    assert val == sorted(ranked[0:20:2]) and test == sorted(ranked[1:20:2])  # round(0.2 * 100) people
    assert seen == sorted(ranked[20:])  # all the others
    assert holdout_key("7201") == hashlib.sha256(b"celeba-holdout:7201").hexdigest()


def test_numeric_plain_lists_are_not_taken_for_lfw_people_files(tmp_path, shared_data):
    assert read_people_file(VAL_PEOPLE) == set(VAL_PEOPLE.read_text().split())  # was parsed as "count, names"
    digits = tmp_path / "ids.txt"
    digits.write_text("7201\n7202\n\n7203\n")
    assert read_people_file(digits) == {"7201", "7202", "7203"}
    assert len(read_people_file(shared_data / "lfw-protocol" / "peopleDevTest.txt")) == 1711
    assert len(read_people_file(shared_data / "lfw-protocol" / "people.txt")) == 5749  # folded View 2 file


def test_held_out_people_never_reach_the_training_pool(monkeypatch):
    """The pool train.py builds from its default --data and exclusions (faces faked: 1 px per real image)."""
    import train
    import utils.training.data as data
    from utils.faces.cache import AlignedFaces

    def fake_source(source, image_size, log=print):
        paths = [f"{image.identity}/{image.path.name}" for image in list_identity_images(source)]
        n = len(paths)
        return AlignedFaces(source, np.zeros((n, 1, 1, 3), np.uint8), paths, np.ones(n, bool),
                            np.zeros((n, 4), np.float32), np.zeros((n, 68, 2), np.float32))

    monkeypatch.setattr(data, "load_source", fake_source)
    args = train.build_parser().parse_args(["--model", "ang"])
    pool, _ = data.load_training_data(args.data, 96, data.default_exclusions(), args.min_images, log=lambda m: None)
    trained = {name.split("/", 1)[1] for name in pool.names if name.startswith("celeba-subset/")}
    held_out = set(VAL_PEOPLE.read_text().split()) | set(TEST_PEOPLE.read_text().split())
    assert len(held_out) == 50 and not trained & held_out
    assert set(SEEN_PEOPLE.read_text().split()) <= trained  # the seen control is trained on
    assert len(trained) == 296 - 50  # every other CelebA person with 2+ images trains
    assert any(name.startswith("lfw/") for name in pool.names)
