"""Parsers for the official LFW protocol files, checked against their own headers.

View 2 (the benchmark): ``pairs.txt`` starts with ``10<TAB>300``, then for each of the
10 folds 300 matched lines ``name n1 n2`` followed by 300 mismatched lines
``name1 n1 name2 n2``; ``people.txt`` starts with ``10``, then for each fold a count
line and that many ``name count`` lines. View 1 (development): ``pairsDevTrain.txt`` /
``pairsDevTest.txt`` start with ``N``, then N matched and N mismatched lines;
``peopleDevTrain.txt`` / ``peopleDevTest.txt`` start with a count, then ``name count``
lines. Images are referred to as ``Name/Name_0001.jpg`` relative to the LFW folder.

The pairs format serves any folder-per-identity tree too (``evaluate.py --pairs``, written by
``python -m utils.datasets.make_pairs``): an image token is either an LFW image number
(``name 1 2`` means ``name/name_0001.jpg`` and ``name/name_0002.jpg``) or, for other trees, the
image's file name in the identity's folder (``7201 001085.jpg 017588.jpg``), told apart by its
image-file extension (``.jpg``, ``.png``, ...).
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from utils.datasets.folders import DatasetError
from utils.faces.image_io import IMAGE_EXTENSIONS
from utils.paths import data_dir, lfw_dir, lfw_protocol_dir

VIEW2_PAIRS = "pairs.txt"
VIEW2_PEOPLE = "people.txt"
DEV_PAIRS = {"train": "pairsDevTrain.txt", "test": "pairsDevTest.txt"}
DEV_PEOPLE = {"train": "peopleDevTrain.txt", "test": "peopleDevTest.txt"}
BENCHMARK_FACES_FILE = "benchmark_faces.txt"
PROTOCOLS = ("view2", "view1", "view2-unseen")
# view2-unseen: the View 2 pairs whose two people are both in peopleDevTest.txt, the people that
# train.py always leaves out, so a model trained here is scored on strangers only (1,147 pairs,
# 870 of them same-person: read AUC and EER, accuracy's chance level is the same-pair share).

Split = Literal["train", "test"]


class ProtocolFormatError(DatasetError):
    """A protocol file does not match its header or the documented line format."""

    def __init__(self, path: Path, line: int, reason: str):
        super().__init__(f"{path}:{line}: {reason}")
        self.path = path
        self.line = line


class MissingImagesError(DatasetError):
    """Images referenced by a protocol are not in the LFW folder; ``missing`` lists them all."""

    def __init__(self, root: Path, missing: list[str], total: int, show: int = 10):
        listed = ", ".join(missing[:show]) + (", ..." if len(missing) > show else "")
        super().__init__(f"{len(missing)} of {total} referenced images are missing under {root}: {listed}")
        self.root = root
        self.missing = missing


@dataclass(frozen=True)
class Pair:
    """Two LFW images (relative paths), whether they show the same person, and the fold (0-based)."""

    path_a: str
    path_b: str
    same: bool
    fold: int


@dataclass(frozen=True)
class Person:
    """A person of a people file, their image count and fold (0 for the View 1 files)."""

    name: str
    count: int
    fold: int

    @property
    def images(self) -> list[str]:
        return [image_relpath(self.name, number) for number in range(1, self.count + 1)]


def image_relpath(name: str, number: int) -> str:
    """``Name/Name_0001.jpg``, as the LFW archive names its images."""
    return f"{name}/{name}_{number:04d}.jpg"


class _Lines:
    """The lines of a protocol file with 1-based numbers, and helpers that fail with file:line."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise DatasetError(f"LFW protocol file not found: {self.path}")
        lines = self.path.read_text(encoding="utf-8").splitlines()
        while lines and not lines[-1].strip():
            lines.pop()
        self.tokens = [line.split() for line in lines]
        self.next = 1  # 1-based number of the next line to read

    def error(self, line: int, reason: str) -> ProtocolFormatError:
        return ProtocolFormatError(self.path, line, reason)

    def take(self, what: str) -> tuple[int, list[str]]:
        """The next line's number and tokens; a clear error if the file ended early."""
        number = self.next
        if number > len(self.tokens):
            raise self.error(number, f"file ends early: expected {what}")
        self.next += 1
        if not self.tokens[number - 1]:
            raise self.error(number, f"blank line where {what} was expected")
        return number, self.tokens[number - 1]

    def count(self, token: str, line: int, what: str) -> int:
        if not token.isdigit() or int(token) < 1:
            raise self.error(line, f"{what} must be a positive whole number, got {token!r}")
        return int(token)

    def image(self, name: str, token: str, line: int) -> str:
        """The relative path an image token of a pairs line names: an LFW image number or a file name."""
        if token.isdigit():
            return image_relpath(name, self.count(token, line, "an image number"))
        if Path(token).suffix.lower() in IMAGE_EXTENSIONS and Path(token).name == token:
            return f"{name}/{token}"
        raise self.error(line, f"expected an image number or an image file name, got {token!r}")

    def finish(self, announced: str) -> None:
        if self.next <= len(self.tokens):
            raise self.error(self.next, f"extra line after the {announced} the header announces")


def parse_pairs(path: str | Path) -> list[Pair]:
    """Read ``pairs.txt`` (header ``folds<TAB>n``) or ``pairsDev*.txt`` (header ``n``), or a pairs file
    of another tree in the same format (image numbers or file names, see the module docstring)."""
    lines = _Lines(path)
    line, header = lines.take("the header")
    if len(header) == 2:
        folds = lines.count(header[0], line, "the fold count")
        per_fold = lines.count(header[1], line, "pairs per fold")
    elif len(header) == 1:
        folds, per_fold = 1, lines.count(header[0], line, "the pair count")
    else:
        raise lines.error(line, f"expected a header 'folds<TAB>pairs' or 'pairs', got {' '.join(header)!r}")
    pairs = []
    for fold in range(folds):
        for same in (True, False):
            for index in range(1, per_fold + 1):
                what = (f"{'matched' if same else 'mismatched'} pair {index} of {per_fold} of fold {fold + 1}"
                        f" ({'name n1 n2' if same else 'name1 n1 name2 n2'})")
                line, tokens = lines.take(what)
                if len(tokens) != (3 if same else 4):
                    raise lines.error(line, f"expected {what}, got {' '.join(tokens)!r}")
                if same:
                    name_a, name_b, n_a, n_b = tokens[0], tokens[0], tokens[1], tokens[2]
                else:
                    name_a, n_a, name_b, n_b = tokens
                    if name_a == name_b:
                        raise lines.error(line, f"mismatched pair names the same person twice: {name_a}")
                pairs.append(Pair(lines.image(name_a, n_a, line), lines.image(name_b, n_b, line), same, fold))
    lines.finish(f"{folds * 2 * per_fold} pairs")
    return pairs


def parse_folded_pairs(path: str | Path) -> list[Pair]:
    """A pairs file for k-fold scoring: :func:`parse_pairs` with a ``folds<TAB>n`` header of 2 or more folds."""
    pairs = parse_pairs(path)
    if len({pair.fold for pair in pairs}) < 2:
        raise DatasetError(f"{path}: k-fold scoring needs a header 'folds<TAB>pairs' with 2 or more folds")
    return pairs


def parse_people(path: str | Path) -> list[Person]:
    """Read ``people.txt`` (header = fold count, a count line per fold) or ``peopleDev*.txt`` (header = count)."""
    lines = _Lines(path)
    line, header = lines.take("the header")
    if len(header) != 1:
        raise lines.error(line, f"expected a single number as header, got {' '.join(header)!r}")
    first = lines.count(header[0], line, "the header")
    folded = len(lines.tokens) > 1 and len(lines.tokens[1]) == 1
    people: list[Person] = []
    first_line: dict[str, int] = {}
    for fold in range(first if folded else 1):
        size = first
        if folded:
            line, tokens = lines.take(f"the people count of fold {fold + 1}")
            if len(tokens) != 1:
                raise lines.error(line, f"expected the people count of fold {fold + 1}, got {' '.join(tokens)!r}")
            size = lines.count(tokens[0], line, "a people count")
        for index in range(1, size + 1):
            line, tokens = lines.take(f"person {index} of {size} ('name count')")
            if len(tokens) != 2:
                raise lines.error(line, f"expected 'name count' (person {index} of {size}), got {' '.join(tokens)!r}")
            if tokens[0] in first_line:
                raise lines.error(line, f"{tokens[0]} is already listed on line {first_line[tokens[0]]}")
            first_line[tokens[0]] = line
            people.append(Person(tokens[0], lines.count(tokens[1], line, "an image count"), fold))
    lines.finish(f"{len(people)} people")
    return people


def _is_lfw_people_file(lines: list[list[str]]) -> bool:
    """An LFW people file by its structure: a number alone on the first line, then ``Name count`` lines.

    A plain list of numeric identities (CelebA's) has a number on its first line too, but never a
    ``Name count`` line.
    """
    return (bool(lines) and len(lines[0]) == 1 and lines[0][0].isdigit()
            and any(len(tokens) == 2 and tokens[1].isdigit() for tokens in lines[1:]))


def read_people_file(path: str | Path) -> set[str]:
    """Identity names in an LFW people file (count header, ``Name count`` lines) or a plain list
    with one ``Name`` or ``Name/image.jpg`` per line (like benchmark_faces/manifest.txt or the
    CelebA hold-out lists in protocols/, whose names are numbers)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"people file not found: {path}")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if _is_lfw_people_file([line.split() for line in lines]):
        return {person.name for person in parse_people(path)}
    return {line.split("/", 1)[0].split("\t", 1)[0] for line in lines}


def _protocol_file(name: str, protocol_dir: str | Path | None) -> Path:
    return Path(protocol_dir) / name if protocol_dir else lfw_protocol_dir() / name


def load_view2_pairs(protocol_dir: str | Path | None = None) -> list[Pair]:
    """The 6,000 View 2 pairs of ``pairs.txt``, with their folds 0-9."""
    return parse_pairs(_protocol_file(VIEW2_PAIRS, protocol_dir))


def load_view2_folds(protocol_dir: str | Path | None = None) -> list[list[Pair]]:
    """The View 2 pairs grouped by fold: ``folds[k]`` holds fold k's matched then mismatched pairs."""
    pairs = load_view2_pairs(protocol_dir)
    folds: list[list[Pair]] = [[] for _ in range(max(p.fold for p in pairs) + 1)]
    for pair in pairs:
        folds[pair.fold].append(pair)
    return folds


def load_dev_pairs(split: Split, protocol_dir: str | Path | None = None) -> list[Pair]:
    """View 1 development pairs: ``"train"`` (pairsDevTrain.txt) or ``"test"`` (pairsDevTest.txt)."""
    if split not in DEV_PAIRS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return parse_pairs(_protocol_file(DEV_PAIRS[split], protocol_dir))


def load_view2_people(protocol_dir: str | Path | None = None) -> list[Person]:
    """The people of ``people.txt`` with their View 2 folds."""
    return parse_people(_protocol_file(VIEW2_PEOPLE, protocol_dir))


def load_dev_people(split: Split, protocol_dir: str | Path | None = None) -> list[Person]:
    """View 1 people: ``"train"`` (peopleDevTrain.txt) or ``"test"`` (peopleDevTest.txt)."""
    if split not in DEV_PEOPLE:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return parse_people(_protocol_file(DEV_PEOPLE[split], protocol_dir))


def pair_images(pairs: Iterable[Pair]) -> list[str]:
    """Every image the pairs refer to, sorted, each once."""
    return sorted({path for pair in pairs for path in (pair.path_a, pair.path_b)})


def check_images_exist(relpaths: Iterable[str], lfw_root: str | Path | None = None, show: int = 10) -> None:
    """Raise `MissingImagesError` (listing the first ``show``) unless every path is a file under the LFW root."""
    root = Path(lfw_root) if lfw_root else lfw_dir()
    if not root.is_dir():
        raise DatasetError(f"LFW folder not found: {root} (python -m utils.datasets.lfw_download fetches it)")
    relpaths = list(relpaths)
    missing = [path for path in relpaths if not (root / path).is_file()]
    if missing:
        raise MissingImagesError(root, missing, len(relpaths), show)


def benchmark_people(path: str | Path | None = None) -> dict[str, list[str]]:
    """The benchmark faces (default ``<data>/benchmark_faces.txt``): person -> their ``Name/Name_NNNN.jpg`` paths."""
    path = Path(path) if path else data_dir() / BENCHMARK_FACES_FILE
    if not path.is_file():
        raise DatasetError(f"benchmark face list not found: {path}")
    people: dict[str, list[str]] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        relpath = line.strip()
        if not relpath:
            continue
        name, _, file = relpath.partition("/")
        stem = file.removesuffix(".jpg")
        if not (file.endswith(".jpg") and stem.startswith(f"{name}_") and stem[len(name) + 1:].isdigit()):
            raise ProtocolFormatError(path, number, f"expected 'Name/Name_NNNN.jpg', got {relpath!r}")
        people.setdefault(name, []).append(relpath)
    if not people:
        raise DatasetError(f"{path} lists no images")
    return people


def pairs_file_name(path: str | Path) -> str:
    """The protocol name of a pairs file: its stem without a ``pairs`` suffix (celeba-test-pairs.txt: celeba-test)."""
    stem = Path(path).stem
    for suffix in ("-pairs", "_pairs", ".pairs"):
        if stem.endswith(suffix) and len(stem) > len(suffix):
            return stem.removesuffix(suffix)
    return stem
