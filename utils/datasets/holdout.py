"""The CelebA hold-out: a fixed, identity-disjoint second test domain carved out of celeba-subset.

The rule (fixed: training runs exclude exactly this set, so it must never change):

- eligible: identity folders with at least 10 image files (``.jpg``, ``.jpeg``, ``.png``);
- key of an identity ``i``: ``sha256("celeba-holdout:" + i)`` as hex;
- held out: the ``round(0.2 * eligible)`` eligible identities with the smallest keys;
- in key order, positions 0, 2, 4, ... are the validation half (chooses the kept epoch in
  train.py), positions 1, 3, 5, ... the test half (never used to choose anything);
- the seen control: every other eligible identity. They stay in training, so a model's figure
  on them beside its test-half figure shows how much having trained on someone flatters it
  (models trained before the hold-out saw both).

On celeba-subset: 250 eligible identities, 25 validation people (570 images) and 25 test people
(584 images), 200 seen-control people. The lists are committed in protocols/, the two halves
excluded from training by default; ``python -m utils.datasets.holdout DIR --out-dir protocols``
rewrites them from the data.
"""
from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

from utils.atomic import write_text_atomic
from utils.datasets.folders import list_identity_images
from utils.paths import PROTOCOLS_DIR

SALT = "celeba-holdout"
EXTENSIONS = (".jpg", ".jpeg", ".png")
MIN_IMAGES = 10
SHARE = 0.2
VAL_PEOPLE = PROTOCOLS_DIR / "celeba-holdout-val-people.txt"
TEST_PEOPLE = PROTOCOLS_DIR / "celeba-holdout-test-people.txt"
SEEN_PEOPLE = PROTOCOLS_DIR / "celeba-seen-people.txt"
VAL_PAIRS = PROTOCOLS_DIR / "celeba-val-pairs.txt"  # python -m utils.datasets.make_pairs (protocols/README.md)
TEST_PAIRS = PROTOCOLS_DIR / "celeba-test-pairs.txt"
SEEN_PAIRS = PROTOCOLS_DIR / "celeba-seen-pairs.txt"


def holdout_key(identity: str) -> str:
    """The stable sort key of an identity: the hex SHA-256 of ``celeba-holdout:<identity>``."""
    return hashlib.sha256(f"{SALT}:{identity}".encode()).hexdigest()


def eligible_identities(root: str | Path, min_images: int = MIN_IMAGES) -> list[str]:
    """Identity folders under ``root`` with at least ``min_images`` .jpg/.jpeg/.png files, sorted."""
    return sorted({image.identity for image in list_identity_images(root, min_images, extensions=EXTENSIONS)})


def split_holdout(identities: list[str], share: float = SHARE) -> tuple[list[str], list[str], list[str]]:
    """(validation, test, seen) people: the ``round(share * n)`` identities with the smallest keys,
    alternately to validation and test in key order, and all the others as the seen control; each
    list sorted."""
    ranked = sorted(identities, key=holdout_key)
    n_held = round(share * len(identities))
    val, test = ranked[:n_held:2], ranked[1:n_held:2]
    return sorted(val), sorted(test), sorted(ranked[n_held:])


def celeba_holdout(root: str | Path) -> tuple[list[str], list[str], list[str]]:
    """(validation, test, seen) people of the tree at ``root`` by the module's rule."""
    return split_holdout(eligible_identities(root))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m utils.datasets.holdout",
        description="Write the hold-out people lists (celeba-holdout-val-people.txt, "
                    "celeba-holdout-test-people.txt) and the seen control (celeba-seen-people.txt) of a "
                    "folder-per-identity tree by the fixed rule above.")
    parser.add_argument("root", type=Path, help="the celeba-subset folder")
    parser.add_argument("--out-dir", type=Path, default=PROTOCOLS_DIR, help="default: %(default)s")
    args = parser.parse_args(argv)
    try:
        val, test, seen = celeba_holdout(args.root)
        args.out_dir.mkdir(parents=True, exist_ok=True)
        for people, name in ((val, VAL_PEOPLE.name), (test, TEST_PEOPLE.name), (seen, SEEN_PEOPLE.name)):
            write_text_atomic(args.out_dir / name, "".join(f"{i}\n" for i in people))
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{len(val)} validation, {len(test)} test and {len(seen)} seen-control people written to {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
