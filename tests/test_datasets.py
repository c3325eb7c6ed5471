"""Dataset readers: the real LFW protocol files, folder trees, MS-Celeb-1M TSV files."""
from __future__ import annotations

import base64
import warnings

import numpy as np
import pytest

from utils.datasets import lfw, msceleb
from utils.datasets.folders import DatasetError, LabelledImage, list_identity_images
from utils.faces.image_io import decode_image, jpeg_bytes, read_image
from utils.paths import data_dir, lfw_dir, lfw_protocol_dir

# --- LFW protocol files (the real ones in ../shared/data/lfw-protocol) -------------------------


def header(name: str) -> list[int]:
    return [int(t) for t in (lfw_protocol_dir() / name).read_text().splitlines()[0].split()]


def test_view2_pairs_match_the_header():
    folds, per_fold = header("pairs.txt")
    pairs = lfw.load_view2_pairs()
    assert len(pairs) == folds * 2 * per_fold == 6000
    by_fold = lfw.load_view2_folds()
    assert len(by_fold) == folds == 10
    for k, fold in enumerate(by_fold):
        assert [p.same for p in fold] == [True] * per_fold + [False] * per_fold
        assert {p.fold for p in fold} == {k}
    same = [p for p in pairs if p.same]
    assert all(p.path_a.split("/")[0] == p.path_b.split("/")[0] for p in same)
    assert all(p.path_a.split("/")[0] != p.path_b.split("/")[0] for p in pairs if not p.same)
    # The file's first line after the header is "Abel_Pacheco 1 4".
    assert pairs[0] == lfw.Pair("Abel_Pacheco/Abel_Pacheco_0001.jpg", "Abel_Pacheco/Abel_Pacheco_0004.jpg", True, 0)


@pytest.mark.parametrize("split, expected", [("train", 2200), ("test", 1000)])
def test_view1_pairs_match_the_header(split, expected):
    (n,) = header(lfw.DEV_PAIRS[split])
    pairs = lfw.load_dev_pairs(split)
    assert len(pairs) == 2 * n == expected
    assert [p.same for p in pairs] == [True] * n + [False] * n
    assert {p.fold for p in pairs} == {0}


def test_view2_people_folds_match_their_count_lines():
    lines = (lfw_protocol_dir() / "people.txt").read_text().splitlines()
    people = lfw.load_view2_people()
    assert {p.fold for p in people} == set(range(int(lines[0])))
    # Each fold's count line sits right before that fold's people.
    row = 1
    for fold in range(int(lines[0])):
        count = int(lines[row])
        assert sum(p.fold == fold for p in people) == count
        row += count + 1
    assert len({p.name for p in people}) == len(people)
    assert sum(p.count for p in people) == sum(1 for _ in lfw_dir().glob("*/*.jpg"))


def test_view1_people_are_disjoint_and_match_the_header():
    train, test = lfw.load_dev_people("train"), lfw.load_dev_people("test")
    assert (len(train), len(test)) == (header("peopleDevTrain.txt")[0], header("peopleDevTest.txt")[0])
    assert (len(train), len(test)) == (4038, 1711)
    assert not {p.name for p in train} & {p.name for p in test}
    train_pairs_people = {path.split("/")[0] for path in lfw.pair_images(lfw.load_dev_pairs("train"))}
    assert train_pairs_people <= {p.name for p in train}


def test_every_referenced_image_exists_in_the_shared_lfw():
    referenced = set(lfw.pair_images(lfw.load_view2_pairs()))
    for split in ("train", "test"):
        referenced |= set(lfw.pair_images(lfw.load_dev_pairs(split)))
        referenced |= {image for person in lfw.load_dev_people(split) for image in person.images}
    referenced |= {image for person in lfw.load_view2_people() for image in person.images}
    lfw.check_images_exist(sorted(referenced))
    assert len(referenced) == 13233


def test_missing_images_are_listed(tmp_path):
    (tmp_path / "Ann").mkdir()
    (tmp_path / "Ann" / "Ann_0001.jpg").write_bytes(b"x")
    with pytest.raises(lfw.MissingImagesError) as info:
        lfw.check_images_exist(["Ann/Ann_0001.jpg", "Ann/Ann_0002.jpg", "Bob/Bob_0001.jpg"], tmp_path)
    assert info.value.missing == ["Ann/Ann_0002.jpg", "Bob/Bob_0001.jpg"]
    assert "2 of 3" in str(info.value) and "Ann/Ann_0002.jpg" in str(info.value)
    with pytest.raises(DatasetError, match="not found"):
        lfw.check_images_exist(["Ann/Ann_0001.jpg"], tmp_path / "nowhere")


def test_benchmark_people():
    people = lfw.benchmark_people()
    lines = (data_dir() / "benchmark_faces.txt").read_text().split()
    assert sum(len(paths) for paths in people.values()) == len(lines)
    assert [path for paths in people.values() for path in paths] == lines
    assert all(path.startswith(f"{name}/") for name, paths in people.items() for path in paths)
    lfw.check_images_exist(lines)


MALFORMED = {
    "wrong_header": ("pairs.txt", "10 300 7\nA 1 2\n", 1, "header"),
    "too_few_lines": ("pairs.txt", "1\t2\nA\t1\t2\nB\t1\t2\nA\t1\tB\t1\n", 5, "file ends early"),
    "too_many_lines": ("pairsDevTest.txt", "1\nA\t1\t2\nA\t1\tB\t1\nA\t1\t3\n", 4, "extra line"),
    "mismatched_in_matched": ("pairs.txt", "1\t1\nA\t1\tB\t2\nA\t1\tB\t1\n", 2, "matched pair 1 of 1"),
    "bad_number": ("pairsDevTrain.txt", "1\nA\t1\tx\nA\t1\tB\t1\n", 2, "image number"),
    "same_name_mismatch": ("pairsDevTrain.txt", "1\nA\t1\t2\nA\t1\tA\t2\n", 3, "same person"),
    "people_fold_count": ("people.txt", "2\n1\nA\t1\n2\nB\t1\n", 6, "file ends early"),
    "people_extra": ("peopleDevTest.txt", "1\nA\t1\nB\t2\n", 3, "extra line"),
    "people_columns": ("peopleDevTest.txt", "2\nA\t1\nB 2 3\n", 3, "name count"),
    "people_duplicate": ("peopleDevTrain.txt", "2\nA\t1\nA\t2\n", 3, "already listed on line 2"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_protocol_files_name_file_and_line(tmp_path, case):
    name, text, line, message = MALFORMED[case]
    path = tmp_path / name
    path.write_text(text)
    parse = lfw.parse_people if name.startswith("people") else lfw.parse_pairs
    with pytest.raises(lfw.ProtocolFormatError, match=message) as info:
        parse(path)
    assert info.value.line == line and str(info.value).startswith(f"{path}:{line}:")


def test_small_wellformed_files_parse(tmp_path):
    (tmp_path / "pairs.txt").write_text("2\t1\nA\t1\t2\nA\t1\tB\t3\nC\t2\t5\nC\t1\tD\t1\n\n")
    pairs = lfw.parse_pairs(tmp_path / "pairs.txt")
    assert pairs == [
        lfw.Pair("A/A_0001.jpg", "A/A_0002.jpg", True, 0), lfw.Pair("A/A_0001.jpg", "B/B_0003.jpg", False, 0),
        lfw.Pair("C/C_0002.jpg", "C/C_0005.jpg", True, 1), lfw.Pair("C/C_0001.jpg", "D/D_0001.jpg", False, 1),
    ]
    (tmp_path / "people.txt").write_text("2\n1\nA\t2\n2\nB\t1\nC\t3")
    people = lfw.parse_people(tmp_path / "people.txt")
    assert [(p.name, p.count, p.fold) for p in people] == [("A", 2, 0), ("B", 1, 1), ("C", 3, 1)]
    assert people[0].images == ["A/A_0001.jpg", "A/A_0002.jpg"]


def test_missing_protocol_file_is_clear(tmp_path):
    with pytest.raises(DatasetError, match="not found.*pairs.txt"):
        lfw.load_view2_pairs(tmp_path)


# --- folder trees ----------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path):
    counts = {"carol": 3, "alice": 1, "bob": 2, "dave": 4}
    for name, n in counts.items():
        (tmp_path / name).mkdir()
        for i in reversed(range(n)):  # created out of order; the first one has an upper-case extension
            suffix = ".JPG" if i == 0 else ".png"
            (tmp_path / name / f"{name}_{i}{suffix}").write_bytes(b"x")
    (tmp_path / "dave" / "notes.txt").write_text("not an image")
    (tmp_path / "dave" / ".hidden.jpg").write_bytes(b"x")
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "x.jpg").write_bytes(b"x")
    (tmp_path / "loose.jpg").write_bytes(b"x")
    return tmp_path


def test_folder_tree_is_sorted_and_filtered(tree):
    images = list_identity_images(tree)
    assert [(i.identity, i.path.name) for i in images] == [
        ("alice", "alice_0.JPG"),
        ("bob", "bob_0.JPG"), ("bob", "bob_1.png"),
        ("carol", "carol_0.JPG"), ("carol", "carol_1.png"), ("carol", "carol_2.png"),
        ("dave", "dave_0.JPG"), ("dave", "dave_1.png"), ("dave", "dave_2.png"), ("dave", "dave_3.png"),
    ]
    identity, path = images[0]  # unpacks as a pair
    assert isinstance(images[0], LabelledImage) and path == tree / "alice" / "alice_0.JPG"
    assert list_identity_images(tree) == images  # deterministic


def test_folder_tree_min_images_and_exclusion(tree):
    assert {i.identity for i in list_identity_images(tree, min_images=3)} == {"carol", "dave"}
    assert {i.identity for i in list_identity_images(tree, min_images=2, exclude={"dave"})} == {"bob", "carol"}
    assert {i.identity for i in list_identity_images(tree, extensions=(".png",))} == {"bob", "carol", "dave"}


def test_folder_tree_errors(tree, tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        list_identity_images(tmp_path / "missing")
    with pytest.raises(DatasetError, match="no identity .* 5 or more images .*largest has 4"):
        list_identity_images(tree, min_images=5)
    with pytest.raises(DatasetError, match="no images"):
        list_identity_images(tree, exclude={"alice", "bob", "carol", "dave"})
    empty = tmp_path / "empty"
    (empty / "someone").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no images"):
        list_identity_images(empty)


def test_folder_tree_on_the_shared_lfw():
    images = list_identity_images(lfw_dir(), min_images=50)
    benchmark = lfw.benchmark_people()
    kept = {i.identity for i in list_identity_images(lfw_dir(), min_images=50, exclude=benchmark)}
    assert kept == {i.identity for i in images} - set(benchmark)
    assert kept and "George_W_Bush" in {i.identity for i in images} and "George_W_Bush" not in kept


# --- MS-Celeb-1M TSV -------------------------------------------------------------------------


def face_pixels(seed: int, size: int = 64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:size, 0:size]
    return ((rng.integers(0, 256, 3) + xs[..., None] * 3 + ys[..., None] * 2) % 256).astype(np.uint8)


@pytest.fixture
def tsv(tmp_path):
    """Five good faces of two MIDs and four corrupt lines (lines 3, 5, 7, 8)."""
    good = [msceleb.TsvFace("m.01abc", f"face{i}", jpeg_bytes(face_pixels(i)), rank=i,
                            rectangle=(0.1 * i, 0.2, 0.5, 0.75)) for i in range(3)]
    good += [msceleb.TsvFace("m.02xyz", f"face{i}", jpeg_bytes(face_pixels(i)), rank=i) for i in range(3, 5)]
    not_jpeg = msceleb.format_line(msceleb.TsvFace("m.03bad", "f", b"GIF89a-broken"))
    bad_b64 = msceleb.format_line(good[0]).rsplit("\t", 1)[0] + "\t%%%not-base64%%%"
    lines = [good[0], good[1], "m.04\tonly\tthree", good[2], not_jpeg, good[3], bad_b64,
             msceleb.format_line(msceleb.TsvFace("../evil", "f", good[4].image)), good[4]]
    return msceleb.write_tsv(tmp_path / "faces.tsv", lines), good


def test_msceleb_round_trip_reports_corrupt_lines(tsv):
    path, good = tsv
    reader = msceleb.MsCelebReader(path)
    with pytest.warns(UserWarning, match=r"skipped 4 corrupt line\(s\): line 3: expected 7 .*got 3; line 5"):
        faces = list(reader)
    assert [c.line for c in reader.corrupt] == [3, 5, 7, 8]
    assert "base64" in reader.corrupt[2].reason and "MID" in reader.corrupt[3].reason
    assert [(f.mid, f.face_id, f.rank, f.line) for f in faces] == [
        (g.mid, g.face_id, g.rank, line) for g, line in zip(good, [1, 2, 4, 6, 9], strict=True)]
    for face, original in zip(faces, good, strict=True):
        assert face.jpeg == original.image
        np.testing.assert_array_equal(face.image, decode_image(original.image))
        assert face.image.shape == (64, 64, 3) and face.image.dtype == np.uint8
    assert faces[1].rectangle == pytest.approx((0.1, 0.2, 0.5, 0.75))
    assert reader.faces_read == 5


def test_msceleb_is_read_as_a_stream(tsv):
    path, good = tsv
    reader = msceleb.MsCelebReader(path)
    first = next(iter(reader))
    assert first.face_id == "face0" and reader.bytes_read < path.stat().st_size


def test_msceleb_strict_mode_raises_at_the_first_corrupt_line(tsv):
    path, _ = tsv
    with pytest.raises(msceleb.MsCelebFormatError, match=r"faces\.tsv:3: expected 7"):
        list(msceleb.MsCelebReader(path, strict=True))


def test_msceleb_rectangle_must_be_four_floats(tmp_path):
    face = msceleb.TsvFace("m.01", "f", jpeg_bytes(face_pixels(0)))
    fields = msceleb.format_line(face).split("\t")
    fields[5] = base64.b64encode(b"\0" * 12).decode()
    path = msceleb.write_tsv(tmp_path / "r.tsv", ["\t".join(fields)])
    reader = msceleb.MsCelebReader(path)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        assert list(reader) == []
    assert "12 bytes" in reader.corrupt[0].reason


def test_msceleb_export_to_folders(tsv, tmp_path, capsys):
    path, good = tsv
    out = tmp_path / "out"
    assert msceleb.main([str(path), str(out), "--min-images", "3", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "5 faces written" in printed
    assert "1 identities kept, 1 with fewer than 3 images dropped (2 faces)" in printed
    assert "4 corrupt lines" in printed and "line 8: unusable MID '../evil'" in printed
    images = list_identity_images(out)
    assert [(i.identity, i.path.name) for i in images] == [
        ("m.01abc", "0-face0.jpg"), ("m.01abc", "1-face1.jpg"), ("m.01abc", "2-face2.jpg")]
    assert images[1].path.read_bytes() == good[1].image  # the original JPEG bytes, not re-encoded
    np.testing.assert_array_equal(read_image(images[1].path), decode_image(good[1].image))
    again = msceleb.export_to_folders(path, out, min_images=1, progress=False)
    assert again.already_present == 3 and again.written == 2 and again.identities == 2


def user_files(out):
    """Files that belong to someone else in an export folder: they must survive any export."""
    owned = {"my_photos/beach.jpg": b"holiday", "notes/todo.txt": b"buy milk", "Jane_Doe/jane_01.jpg": b"jane",
             "m.02xyz/kept_by_user.jpg": b"mine", "m.01abc/0-face0.jpg": b"not a face from the TSV"}
    for rel, data in owned.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(data)
    return owned


def test_msceleb_refuses_a_folder_it_did_not_write(tsv, tmp_path, capsys):
    path, _ = tsv
    out = tmp_path / "out"
    owned = user_files(out)
    before = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    assert msceleb.main([str(path), str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "not empty" in err and "--force" in err and "Jane_Doe" in err
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == before
    assert all((out / rel).read_bytes() == data for rel, data in owned.items())


def test_msceleb_force_never_deletes_or_overwrites_foreign_files(tsv, tmp_path, capsys):
    path, good = tsv
    out = tmp_path / "out"
    owned = user_files(out)
    assert msceleb.main([str(path), str(out), "--min-images", "3", "--force", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "4 faces written" in printed and "1 faces not written because another file" in printed
    # m.01abc has 2 faces from the TSV (its face0 place was taken), m.02xyz 2: both below 3, both dropped
    assert "0 identities kept, 2 with fewer than 3 images dropped (4 faces)" in printed
    assert all((out / rel).read_bytes() == data for rel, data in owned.items())
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == sorted(
        [*owned, ".msceleb-files.txt"])
    # a second run into the same folder is recognised without --force, and keeps what it wrote
    assert msceleb.main([str(path), str(out), "--no-progress"]) == 0
    assert (out / "m.02xyz" / "3-face3.jpg").read_bytes() == good[3].image
    assert (out / "m.01abc" / "0-face0.jpg").read_bytes() == owned["m.01abc/0-face0.jpg"]


def test_msceleb_cli_bad_path(tmp_path, capsys):
    assert msceleb.main([str(tmp_path / "none.tsv"), str(tmp_path / "out")]) == 1
    assert "not found" in capsys.readouterr().err


def test_real_lfw_jpeg_survives_the_tsv(tmp_path):
    original = (lfw_dir() / "George_W_Bush" / "George_W_Bush_0001.jpg").read_bytes()
    path = msceleb.write_tsv(tmp_path / "one.tsv", [msceleb.TsvFace("m.0gwb", "1", original)])
    (face,) = list(msceleb.MsCelebReader(path))
    np.testing.assert_array_equal(face.image, read_image(lfw_dir() / "George_W_Bush" / "George_W_Bush_0001.jpg"))


def by_file_names(lines: list[str]) -> str:
    """An LFW pairs file's text with every image number written as its file name (Name_0001.jpg)."""
    def image(name: str, number: str) -> str:
        return f"{name}_{int(number):04d}.jpg"

    renamed = [lines[0]]
    for t in (line.split() for line in lines[1:]):
        renamed.append("\t".join([t[0], image(t[0], t[1]), image(t[0], t[2])] if len(t) == 3
                                 else [t[0], image(t[0], t[1]), t[2], image(t[2], t[3])]))
    return "\n".join(renamed) + "\n"


def test_lfw_pairs_txt_reads_the_same_as_any_pairs_file_and_by_file_names(tmp_path):
    """evaluate.py --pairs reads the official pairs.txt into exactly View 2's pairs; written with
    file names instead of numbers (the form make_pairs writes) it gives the same pairs again."""
    official = lfw_protocol_dir() / "pairs.txt"
    view2 = lfw.load_view2_pairs()
    assert lfw.parse_folded_pairs(official) == view2 and len(view2) == 6000
    (tmp_path / "named.txt").write_text(by_file_names(official.read_text().splitlines()))
    assert lfw.parse_folded_pairs(tmp_path / "named.txt") == view2
    with pytest.raises(DatasetError, match="2 or more folds"):
        lfw.parse_folded_pairs(lfw_protocol_dir() / "pairsDevTest.txt")
