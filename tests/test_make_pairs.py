"""make_pairs: deterministic, balanced, identity-disjoint pairs files that parse_pairs reads back."""
from __future__ import annotations

from collections import Counter

import pytest

from utils.datasets.holdout import SEEN_PAIRS, SEEN_PEOPLE, TEST_PAIRS, TEST_PEOPLE, VAL_PAIRS, VAL_PEOPLE
from utils.datasets.lfw import parse_pairs, read_people_file
from utils.datasets.make_pairs import identity_images, main, make_pairs


def check_pairs_file(path, root, folds: int, per_fold: int) -> list:
    """The file parses; every fold has per_fold matched and mismatched pairs, no pair twice, each
    identity in one fold only, and every image is a file under root. Returns the pairs."""
    pairs = parse_pairs(path)
    assert Counter((p.fold, p.same) for p in pairs) == {(k, s): per_fold for k in range(folds) for s in (True, False)}
    assert len({(p.path_a, p.path_b) for p in pairs}) == len(pairs)
    fold_of: dict[str, set[int]] = {}
    for p in pairs:
        a, b = p.path_a.split("/")[0], p.path_b.split("/")[0]
        assert (a == b) == p.same and p.path_a != p.path_b
        for name in (a, b):
            fold_of.setdefault(name, set()).add(p.fold)
        assert (root / p.path_a).is_file() and (root / p.path_b).is_file()
    assert all(len(f) == 1 for f in fold_of.values())  # identity-disjoint folds
    return pairs


def test_celeba_pairs_are_deterministic_balanced_and_disjoint(tmp_path, shared_data, capsys):
    root = shared_data / "celeba-subset"
    out = [tmp_path / name for name in ("a.txt", "b.txt", "c.txt")]
    for path, seed in zip(out, (0, 0, 1), strict=True):
        assert main([str(root), "--out", str(path), "--seed", str(seed), "--pairs-per-fold", "200"]) == 0
    assert out[0].read_bytes() == out[1].read_bytes() != out[2].read_bytes()
    pairs = check_pairs_file(out[0], root, 10, 200)
    assert len({p.path_a.split("/")[0] for p in pairs}) > 250  # nearly every person takes part
    assert "wrote" in capsys.readouterr().out


def test_committed_celeba_pairs_are_the_readme_commands_output(tmp_path, shared_data):
    root = shared_data / "celeba-subset"
    for people, committed in ((VAL_PEOPLE, VAL_PAIRS), (TEST_PEOPLE, TEST_PAIRS), (SEEN_PEOPLE, SEEN_PAIRS)):
        out = tmp_path / committed.name
        assert main([str(root), "--people", str(people), "--out", str(out), "--seed", "0"]) == 0
        assert committed.read_text() == out.read_text()
        pairs = check_pairs_file(committed, root, 10, 300)
        assert {p.path_a.split("/")[0] for p in pairs} == read_people_file(people)


def test_lfw_tree_and_matched_pairs_spread_over_people(shared_data):
    images = identity_images(shared_data / "lfw")
    result = make_pairs(images, seed=0)
    assert result.per_fold == 300
    by_person = Counter(line[0] for fold in result.same for line in fold)
    assert by_person["George_W_Bush"] <= 3  # 530 photos, yet no more matched pairs than anyone else
    assert make_pairs(images, seed=0).text() == result.text()


def small_tree(root, counts: dict[str, int]):
    for name, n in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            (root / name / f"img{i:02d}.png").write_bytes(b"x")
    return root


def test_too_little_data_writes_fewer_pairs_and_says_so(tmp_path, capsys):
    root = small_tree(tmp_path / "tree", {f"p{i}": 3 for i in range(4)})
    out = tmp_path / "pairs.txt"
    assert main([str(root), "--out", str(out), "--seed", "0", "--folds", "2"]) == 0
    err = capsys.readouterr().err
    assert "cannot give 300 matched and 300 mismatched pairs" in err and "wrote 6 of each per fold" in err
    check_pairs_file(out, root, 2, 6)  # two people of 3 photos per fold: 3 + 3 matched, 9 mismatched


@pytest.mark.parametrize("args, message", [
    (["--folds", "3"], "ask for --folds 2 or fewer"),
    (["--people", "PEOPLE"], "1 listed people have no images"),
    ([], "exists; pass --force"),
])
def test_bad_requests_exit_2_with_a_message(tmp_path, capsys, args, message):
    root = small_tree(tmp_path / "tree", {f"p{i}": 3 for i in range(5)})
    (tmp_path / "people.txt").write_text("p0\nghost\n")
    out = tmp_path / "pairs.txt"
    if not args:
        out.write_text("mine")
    args = [str(tmp_path / "people.txt") if a == "PEOPLE" else a for a in args]
    assert main([str(root), "--out", str(out), "--seed", "0", *args]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists() or out.read_text() == "mine"
