"""Gallery building, its embedding cache, problem images, enrolment names and matching.

The gallery is built from real LFW pictures with the real FaceAligner; the embedder is a
small deterministic stand-in (grey thumbnails) that counts what it is asked to embed, so the
cache behaviour is checked without loading a network.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from utils.faces.align import FaceAligner
from utils.faces.image_io import read_image
from utils.recognition.gallery import build_gallery, cache_path, check_person_name, list_gallery, model_fingerprint
from utils.recognition.matching import (
    NoThresholdError,
    default_threshold,
    match,
    pair_false_accept_rate,
    person_distances,
    threshold_for_false_naming,
)

MODEL = "test_model"


class CountingEmbedder:
    """Embeds faces as unit-length 16x16 grey thumbnails and records how many it was given."""

    def __init__(self):
        self.calls: list[int] = []

    def __call__(self, faces: np.ndarray) -> np.ndarray:
        self.calls.append(len(faces))
        grey = np.stack([cv2.resize(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY), (16, 16)) for f in faces])
        vectors = grey.reshape(len(faces), -1).astype(np.float32) - 128
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    @property
    def embedded(self) -> int:
        return sum(self.calls)


def lfw_images(lfw_root: Path, name: str, count: int) -> list[Path]:
    return sorted((lfw_root / name).glob("*.jpg"))[:count]


def link_person(people: Path, lfw_root: Path, name: str, count: int) -> None:
    (people / name).mkdir(parents=True)
    for image in lfw_images(lfw_root, name, count):
        (people / name / image.name).symlink_to(image)


def build(people: Path, embedder: CountingEmbedder, key: str = "key-1"):
    return build_gallery(people, embedder, key, MODEL)


def test_both_layouts_are_read_and_other_files_ignored(tmp_path, lfw_root):
    people = tmp_path / "people"
    link_person(people, lfw_root, "Colin_Powell", 3)
    shutil.copy(lfw_images(lfw_root, "Tony_Blair", 1)[0], people / "Tony_Blair.jpg")
    shutil.copy(lfw_images(lfw_root, "Tony_Blair", 2)[1], people / ".hidden.jpg")
    (people / "README.md").write_text("how to add people")
    (people / "Colin_Powell" / "notes.txt").write_text("not a picture")

    images = list_gallery(people)
    assert [(i.person, i.relpath) for i in images] == (
        [("Colin_Powell", f"Colin_Powell/{p.name}") for p in lfw_images(lfw_root, "Colin_Powell", 3)]
        + [("Tony_Blair", "Tony_Blair.jpg")])

    gallery = build(people, CountingEmbedder())
    assert gallery.people == ["Colin_Powell", "Tony_Blair"]
    assert len(gallery) == 4 and gallery.embeddings.shape == (4, 256)
    blair = gallery.people.index("Tony_Blair")
    assert [p for p, i in zip(gallery.paths, gallery.person_index, strict=True) if i == blair] == ["Tony_Blair.jpg"]
    assert gallery.issues == []


def test_cache_embeds_only_what_is_new_or_changed(tmp_path, lfw_root):
    people = tmp_path / "people"
    link_person(people, lfw_root, "Colin_Powell", 3)
    link_person(people, lfw_root, "Tony_Blair", 2)
    embedder = CountingEmbedder()

    first = build(people, embedder)
    assert first.embedded_now == 5 and embedder.embedded == 5
    assert cache_path(people, MODEL).is_file()
    assert sorted(p.name for p in people.iterdir()) == ["Colin_Powell", "Tony_Blair"], \
        "the cache must stay out of the user's picture folder"

    again = build(people, embedder)
    assert again.embedded_now == 0 and embedder.embedded == 5, "an unchanged gallery must come from the cache"
    np.testing.assert_array_equal(again.embeddings, first.embeddings)

    link_person(people, lfw_root, "Gerhard_Schroeder", 2)  # adding a person embeds only their pictures
    added = build(people, embedder)
    assert added.embedded_now == 2 and embedder.calls[-1] == 2
    assert added.people == ["Colin_Powell", "Gerhard_Schroeder", "Tony_Blair"]

    first_file = sorted((people / "Colin_Powell").iterdir())[0]
    first_file.rename(first_file.with_name("renamed.jpg"))  # same content: still cached
    assert build(people, embedder).embedded_now == 0

    replaced = sorted((people / "Tony_Blair").iterdir())[0]
    replaced.unlink()
    shutil.copy(lfw_images(lfw_root, "Tony_Blair", 3)[2], replaced)  # new content under an old name
    assert build(people, embedder).embedded_now == 1

    other_model = build(people, embedder, key="key-2")  # other weights: everything again
    assert other_model.embedded_now == 7

    cache_path(people, MODEL).write_bytes(b"damaged")
    rebuilt = build(people, embedder, key="key-2")
    assert rebuilt.embedded_now == 7 and len(rebuilt) == 7


def test_problem_pictures_are_reported_by_name_and_skipped(tmp_path, lfw_root):
    people = tmp_path / "people"
    link_person(people, lfw_root, "Colin_Powell", 2)
    good = lfw_images(lfw_root, "Colin_Powell", 1)[0]
    (people / "Colin_Powell" / "truncated.jpg").write_bytes(good.read_bytes()[:400])
    (people / "Colin_Powell" / "empty.jpg").write_bytes(b"")
    (people / "Nobody.jpg").write_bytes(b"this is not an image at all")
    blank = np.full((250, 250, 3), 127, np.uint8)
    cv2.imwrite(str(people / "Colin_Powell" / "no_face.jpg"), blank)
    big = read_image(lfw_images(lfw_root, "Tony_Blair", 1)[0])
    small = cv2.resize(read_image(good), (180, 180))
    two = np.full((300, 480, 3), 90, np.uint8)
    two[25:275, 0:250], two[60:240, 290:470] = big, small
    (people / "Tony_Blair").mkdir()
    cv2.imwrite(str(people / "Tony_Blair" / "two_faces.jpg"), cv2.cvtColor(two, cv2.COLOR_RGB2BGR))

    embedder = CountingEmbedder()
    gallery = build(people, embedder)
    issues = "\n".join(gallery.issues)
    assert "Colin_Powell/truncated.jpg" in issues and "Colin_Powell/empty.jpg" in issues
    assert "Nobody.jpg" in issues and "Nobody: no usable image" in issues
    assert "Colin_Powell/no_face.jpg: no face found; skipped" in issues
    assert "Tony_Blair/two_faces.jpg: 2 faces found; using the largest" in issues
    assert gallery.people == ["Colin_Powell", "Tony_Blair"] and len(gallery) == 3

    aligner = FaceAligner()  # the largest face (Tony Blair's) is the one embedded
    largest = embedder(aligner.align_largest(two)[None])
    row = gallery.paths.index("Tony_Blair/two_faces.jpg")
    assert float(np.sum((gallery.embeddings[row] - largest[0]) ** 2)) < 0.05

    embedder.calls.clear()  # the report is repeated from the cache without aligning again
    cached = build(people, embedder)
    assert embedder.calls == [] and sorted(cached.issues) == sorted(gallery.issues)


def test_broken_links_and_folders_named_like_pictures_are_reported(tmp_path, lfw_root):
    people = tmp_path / "people"
    link_person(people, lfw_root, "Colin_Powell", 1)
    (people / "Colin_Powell" / "moved.jpg").symlink_to(tmp_path / "no-longer-here.jpg")
    (people / "Colin_Powell" / "album.jpg").mkdir()
    (people / "Tony_Blair.jpg").symlink_to(tmp_path / "also-gone.jpg")
    gallery = build(people, CountingEmbedder())
    assert gallery.people == ["Colin_Powell"] and len(gallery) == 1
    assert sorted(gallery.issues) == [
        "Colin_Powell/album.jpg: a folder, not a file; skipped",
        f"Colin_Powell/moved.jpg: a broken symbolic link (to {tmp_path / 'no-longer-here.jpg'}), not an image file; "
        "skipped",
        f"Tony_Blair.jpg: a broken symbolic link (to {tmp_path / 'also-gone.jpg'}), not an image file; skipped",
        "Tony_Blair: no usable image; left out of the gallery"]


def test_missing_gallery_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="gallery folder not found"):
        build(tmp_path / "nowhere", CountingEmbedder())


def test_model_fingerprint_follows_the_weights_file(tmp_path):
    weights = tmp_path / "w.weights.h5"
    weights.write_bytes(b"one")
    before = model_fingerprint("nn2", weights)
    assert model_fingerprint("nn2", weights) == before and model_fingerprint("ang", weights) != before
    weights.write_bytes(b"two")
    assert model_fingerprint("nn2", weights) != before


@pytest.mark.parametrize("name", ["", "   ", ".hidden", "../escape", "a/b", "a\\b"])
def test_enrolment_names_that_cannot_be_folders_are_refused(name):
    with pytest.raises(ValueError, match="cannot be used"):
        check_person_name(name)


def test_enrolment_name_is_stripped():
    assert check_person_name("  Ada Lovelace ") == "Ada Lovelace"


class ToyGallery:
    def __init__(self, people, embeddings, person_index):
        self.people, self.person_index = people, np.array(person_index)
        self.embeddings = np.asarray(embeddings, np.float32)


def unit(*values):
    v = np.array(values, np.float64)
    return v / np.linalg.norm(v)


def test_distance_is_to_each_persons_renormalised_mean():
    a1, a2, b1 = unit(1, 0.2, 0), unit(1, -0.2, 0), unit(0, 0, 1)
    gallery = ToyGallery(["A", "B"], [a1, b1, a2], [0, 1, 0])
    probe = unit(1, 0.1, 0.3)
    centre_a = unit(*(a1 + a2))
    d = person_distances(probe[None], gallery)
    np.testing.assert_allclose(d[0], [np.sum((probe - centre_a) ** 2), np.sum((probe - b1) ** 2)], rtol=1e-6)


def test_match_names_the_nearest_person_only_within_the_threshold():
    gallery = ToyGallery(["A", "B"], [unit(1, 0, 0), unit(0, 1, 0)], [0, 1])
    probes = np.stack([unit(1, 0.1, 0), unit(0.1, 1, 0), unit(0, 0, 1)])
    matches = match(probes, gallery, threshold=0.5)
    assert [m.name for m in matches] == ["A", "B", None]
    assert [m.nearest for m in matches[:2]] == ["A", "B"] and not matches[2].known
    assert matches[2].distance == pytest.approx(2.0)
    assert match(np.zeros((0, 3)), gallery, 0.5) == []


IMPOSTORS = {"far": [1e-4, 1e-3, 1e-2, 1e-1, 1.0], "distance": [0.3, 0.5, 0.8, 1.2, 3.0], "n_pairs": 10**6}


def test_default_threshold_names_the_target_share_of_strangers(monkeypatch):
    import models.weights

    monkeypatch.setattr(models.weights, "read_metadata", lambda name: {
        "lfw_view2": {"threshold": 1.07, "metric": "sqeuclidean"},
        "lfw_view2_unseen": {"metric": "sqeuclidean", "impostor_quantiles": IMPOSTORS}})
    rule = default_threshold("nn2", false_naming=0.01)
    assert rule.value(1) == pytest.approx(0.8)  # one person: the per-pair rate is the target
    # ten people: each pair may accept 1 - 0.99 ** 0.1 = 0.001005 of strangers
    assert pair_false_accept_rate(0.01, 10) == pytest.approx(0.001005, rel=1e-3)
    assert rule.value(10) == pytest.approx(0.5, abs=1e-3)
    assert rule.value(10) < rule.value(5) < rule.value(1)
    assert rule.describe(5).startswith(f"threshold {rule.value(5):.3f}: about 1% of strangers named as one of "
                                       f"the 5 people")
    assert threshold_for_false_naming(IMPOSTORS, 1e-3, 1000) == 0.3  # below the stored rates: the strictest


def test_default_threshold_falls_back_on_the_view2_threshold_or_asks_for_an_evaluation(monkeypatch):
    import models.weights

    monkeypatch.setattr(models.weights, "read_metadata",
                        lambda name: {"lfw_view2": {"accuracy": 0.9, "threshold": 0.87, "metric": "sqeuclidean"}})
    rule = default_threshold("nn2")
    assert rule.value(5) == 0.87 and "--protocol view2-unseen" in rule.describe(5)
    monkeypatch.setattr(models.weights, "read_metadata", lambda name: {})
    with pytest.raises(NoThresholdError, match="python evaluate.py --model nn2 --protocol view2-unseen"):
        default_threshold("nn2")
    monkeypatch.setattr(models.weights, "read_metadata",
                        lambda name: {"lfw_view2": {"threshold": 0.3, "metric": "cosine"}})
    with pytest.raises(NoThresholdError, match="cosine"):
        default_threshold("nn2")


def test_impostor_quantiles_measure_strangers_against_each_persons_mean():
    from utils.evaluation.metrics import impostor_quantiles

    embeddings = np.array([[1.0, 0], [1.0, 0], [0, 1.0], [-1.0, 0]])
    people = ["a", "a", "b", "c"]
    # one picture per person: a is its first picture; a's two pictures meet b (2) and c (4),
    # b meets a and c (2, 2), c meets a and b (4, 2): five 2s and three 4s
    result = impostor_quantiles(embeddings, people, fars=np.array([0.2, 0.5, 1.0]), pictures_per_person=1,
                                confidence=None)
    assert result["n_pairs"] == 8 and result["n_people"] == 3
    assert result["distance"] == [2.0, 2.0, 4.0]
    # two pictures: only a is a gallery person; b (distance 2) and c (4) are its strangers
    result = impostor_quantiles(embeddings, people, fars=np.array([0.5, 1.0]), pictures_per_person=2,
                                confidence=None)
    assert result["n_pairs"] == 2 and result["distance"] == [3.0, 4.0]
    with pytest.raises(ValueError, match="nobody has 3 pictures"):
        impostor_quantiles(embeddings, people, pictures_per_person=3)
    with pytest.raises(ValueError, match="no pairs of different people"):
        impostor_quantiles(embeddings[:2], ["a", "a"], pictures_per_person=1)


def test_impostor_distances_are_a_bound_that_holds_for_other_gallery_people():
    """Half the people draw strangers far more than the rest: the stored distance, a 95% bootstrap
    bound over the gallery people, must keep the false-accept rate of new people of the same kind
    at its target far more often than the plain estimate does."""
    from utils.evaluation.metrics import impostor_quantiles

    def population(rng: np.random.Generator, n_people: int) -> tuple[np.ndarray, list[str]]:
        centres = rng.normal(size=(n_people, 16))
        centres[: n_people // 2] *= 0.25  # people near the middle of face space: strangers come close
        rows = np.repeat(centres, 4, axis=0) + rng.normal(scale=0.3, size=(4 * n_people, 16))
        rows /= np.linalg.norm(rows, axis=1, keepdims=True)
        return rows, [str(i) for i in np.repeat(np.arange(n_people), 4)]

    fars, held, estimate_held = np.array([0.01]), 0, 0
    for trial in range(20):
        rng = np.random.default_rng(trial)
        measured = impostor_quantiles(*population(rng, 30), fars=fars)
        new_rows, new_people = population(rng, 30)
        truth = impostor_quantiles(new_rows, new_people, fars=np.array([0.01]), confidence=None)
        assert measured["distance"][0] <= measured["distance_estimate"][0]
        held += measured["distance"][0] <= truth["distance"][0]
        estimate_held += measured["distance_estimate"][0] <= truth["distance"][0]
    print(f"bound held {held}/20, estimate {estimate_held}/20")
    assert held >= 15 and held >= estimate_held + 5


def test_every_readable_image_format_is_a_gallery_picture(tmp_path, lfw_root):
    people = tmp_path / "people"
    (people / "Colin_Powell").mkdir(parents=True)
    rgb = read_image(lfw_images(lfw_root, "Colin_Powell", 1)[0])
    cv2.imwrite(str(people / "Colin_Powell" / "a.tif"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    Image.fromarray(rgb).save(people / "Tony_Blair.gif")
    assert [(i.person, i.relpath) for i in list_gallery(people)] == [
        ("Colin_Powell", "Colin_Powell/a.tif"), ("Tony_Blair", "Tony_Blair.gif")]
