"""Write a deterministic verification pairs file, in LFW's ``pairs.txt`` format, for a folder-per-identity tree.

    python -m utils.datasets.make_pairs DIR --out FILE --seed 0 [--folds 10] [--pairs-per-fold N] [--people FILE]

The folds are identity-disjoint: each identity belongs to one fold only, a fold's matched pairs
are two images of one of its people and its mismatched pairs images of two of its people. So
ten-fold scoring (``evaluate.py --pairs``) chooses each fold's threshold on other people.
Identities are dealt to folds largest first (ties in a seeded random order), in snake order
(0..F-1, F-1..0, ...), which evens out both people and images per fold. Pairs are drawn without
repetition by a generator seeded with ``--seed``: a fold's matched pairs are spread evenly over its
people (each gives the same number, or all it has), so people with many photos do not dominate;
its mismatched pairs are uniform among all pairs of images of two different people. Each block
of lines is then sorted. Images are written by file name
(``7201<TAB>001085.jpg<TAB>017588.jpg``), so a folder that gains photos keeps its pairs.

Every fold must hold the same number N of pairs of each kind (the header says ``folds<TAB>N``):
when some fold cannot give the requested N, every fold gets the largest number all can give,
and a message says so.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from utils.atomic import write_text_atomic
from utils.datasets.folders import DatasetError, list_identity_images
from utils.datasets.lfw import read_people_file

LFW_PAIRS_PER_FOLD = 300


@dataclass
class PairsFile:
    """The pairs of each fold (``same[k]``, ``different[k]``: lines of tokens) and the shortfall, if any."""

    folds: int
    per_fold: int
    requested: int
    same: list[list[tuple[str, ...]]]
    different: list[list[tuple[str, ...]]]

    def text(self) -> str:
        """The file's text: header ``folds<TAB>N``, then per fold N matched and N mismatched lines."""
        lines = [f"{self.folds}\t{self.per_fold}"]
        for same, different in zip(self.same, self.different, strict=True):
            lines += ["\t".join(tokens) for tokens in same + different]
        return "\n".join(lines) + "\n"


def identity_images(root: str | Path, people: Iterable[str] | None = None) -> dict[str, list[str]]:
    """Image file names per identity folder under ``root`` (sorted), only the ``people`` named when given."""
    images: dict[str, list[str]] = {}
    for image in list_identity_images(root):
        images.setdefault(image.identity, []).append(image.path.name)
    if people is not None:
        wanted = set(people)
        missing = sorted(wanted - set(images))
        if missing:
            raise DatasetError(f"{len(missing)} listed people have no images under {root}: {', '.join(missing[:10])}")
        images = {name: files for name, files in images.items() if name in wanted}
    blank = [token for name, files in images.items() for token in (name, *files) if len(token.split()) != 1]
    if blank:
        raise DatasetError(f"names with white space cannot go into a pairs file: {blank[:5]}")
    return images


def deal_folds(counts: dict[str, int], folds: int, rng: np.random.Generator) -> list[list[str]]:
    """Identities in ``folds`` groups: largest first (seeded order among equals), dealt in snake order."""
    names = [sorted(counts)[i] for i in rng.permutation(len(counts))]
    names.sort(key=lambda name: -counts[name])  # stable: equal counts keep the seeded order
    dealt: list[list[str]] = [[] for _ in range(folds)]
    for i, name in enumerate(names):
        turn, step = divmod(i, folds)
        dealt[step if turn % 2 == 0 else folds - 1 - step].append(name)
    return [sorted(fold) for fold in dealt]


def _partners(ends: np.ndarray, same: bool) -> tuple[np.ndarray, np.ndarray]:
    """For each image (rows grouped by identity, ``ends[a]`` = end of a's group): the first row b it pairs
    with (b > a) and how many: the rest of its group (same) or every later group (different)."""
    rows = np.arange(ends.size)
    first = rows + 1 if same else ends
    return first, (ends - rows - 1 if same else ends.size - ends)


def _draw(ends: np.ndarray, same: bool, n: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """``n`` distinct pairs of rows (a < b), uniformly among all pairs of the kind, without listing them all."""
    first, count = _partners(ends, same)
    cumulative = np.cumsum(count)
    chosen = rng.choice(int(cumulative[-1]), size=n, replace=False)
    a = np.searchsorted(cumulative, chosen, side="right")
    b = first[a] + chosen - (cumulative[a] - count[a])
    return list(zip(a.tolist(), b.tolist(), strict=True))


def _quotas(capacity: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` spread over the entries as evenly as their ``capacity`` allows (remainder to seeded picks)."""
    quota = np.zeros_like(capacity)
    while n > 0:
        open_ = np.flatnonzero(quota < capacity)
        share = n // open_.size
        if share == 0:
            quota[rng.choice(open_, size=n, replace=False)] += 1
            break
        added = np.minimum(share, capacity[open_] - quota[open_])
        quota[open_] += added
        n -= int(added.sum())
    return quota


def _draw_matched(ends: np.ndarray, n: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """``n`` distinct same-identity pairs of rows, spread evenly over the identities (groups)."""
    group_ends = np.unique(ends)
    starts = np.concatenate([[0], group_ends[:-1]])
    sizes = group_ends - starts
    pairs = []
    for start, size, quota in zip(starts, sizes, _quotas(sizes * (sizes - 1) // 2, n, rng), strict=True):
        if quota:
            pairs += [(start + a, start + b) for a, b in _draw(np.full(size, size), True, int(quota), rng)]
    return pairs


def _fold_rows(images: dict[str, list[str]], people: list[str]) -> tuple[list[tuple[str, str]], np.ndarray]:
    """The fold's (identity, file) rows grouped by identity, and each row's group end."""
    sizes = np.array([len(images[name]) for name in people])
    return [(name, file) for name in people for file in images[name]], np.repeat(np.cumsum(sizes), sizes)


def make_pairs(images: dict[str, list[str]], folds: int = 10, per_fold: int = LFW_PAIRS_PER_FOLD,
               seed: int = 0) -> PairsFile:
    """Identity-disjoint folds of ``per_fold`` matched and mismatched pairs each (fewer if the data cannot
    give them: see ``PairsFile.per_fold``), a pure function of the arguments."""
    if folds < 2 or per_fold < 1:
        raise ValueError(f"need at least 2 folds and 1 pair per fold, got {folds} and {per_fold}")
    counts = {name: len(files) for name, files in images.items()}
    multi = sum(1 for n in counts.values() if n >= 2)
    if len(counts) < 2 * folds or multi < folds:
        most = min(len(counts) // 2, multi)
        raise DatasetError(f"{len(counts)} identities ({multi} with 2 or more images) cannot fill {folds} "
                           "identity-disjoint folds, each needing 2 people and one with 2+ images: "
                           + (f"ask for --folds {most} or fewer" if most >= 2 else "too few people"))
    rng = np.random.default_rng(seed)
    dealt = [_fold_rows(images, people) for people in deal_folds(counts, folds, rng)]
    capacity = min(int(_partners(ends, same)[1].sum()) for _, ends in dealt for same in (True, False))
    n = min(per_fold, capacity)
    result = PairsFile(folds, n, per_fold, [], [])
    for rows, ends in dealt:
        same = sorted((rows[a][0], rows[a][1], rows[b][1]) for a, b in _draw_matched(ends, n, rng))
        different = sorted((*rows[a], *rows[b]) for a, b in _draw(ends, False, n, rng))
        result.same.append(same)
        result.different.append(different)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m utils.datasets.make_pairs", description=__doc__.split("\n\n")[0],
                                     epilog="Exit status: 0 written; 2 bad input or an output file in the way.")
    parser.add_argument("root", type=Path, metavar="DIR", help="folder-per-identity tree: DIR/<identity>/<image>")
    parser.add_argument("--out", type=Path, required=True, help="pairs file to write")
    parser.add_argument("--seed", type=int, required=True, help="seed of the fold order and the pair draws")
    parser.add_argument("--folds", type=int, default=10, help="identity-disjoint folds (default 10)")
    parser.add_argument("--pairs-per-fold", type=int, default=LFW_PAIRS_PER_FOLD,
                        help="matched pairs, and as many mismatched pairs, per fold (default 300, LFW's)")
    parser.add_argument("--people", type=Path,
                        help="use only these identities: a plain list, one per line, or an LFW people file")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    args = parser.parse_args(argv)
    try:
        if args.out.exists() and not args.force:
            raise DatasetError(f"{args.out} exists; pass --force to replace it")
        people = read_people_file(args.people) if args.people else None
        pairs = make_pairs(identity_images(args.root, people), args.folds, args.pairs_per_fold, args.seed)
        write_text_atomic(args.out, pairs.text())
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if pairs.per_fold < pairs.requested:
        print(f"the data cannot give {pairs.requested} matched and {pairs.requested} mismatched pairs in every "
              f"fold: wrote {pairs.per_fold} of each per fold instead", file=sys.stderr)
    print(f"wrote {args.out}: {pairs.folds} folds x ({pairs.per_fold} matched + {pairs.per_fold} mismatched) = "
          f"{2 * pairs.folds * pairs.per_fold} pairs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
