"""OpenFace-style alignment on real LFW faces: landmarks land where the template says."""
from __future__ import annotations

import cv2
import dlib
import numpy as np
import pytest

from utils.faces.align import LANDMARK_SETS, FaceAligner, centre_crop, openface_template
from utils.faces.image_io import read_image

SAMPLE = ["Aaron_Eckhart/Aaron_Eckhart_0001.jpg", "Colin_Powell/Colin_Powell_0001.jpg",
          "Serena_Williams/Serena_Williams_0001.jpg", "Jennifer_Lopez/Jennifer_Lopez_0001.jpg",
          "Tony_Blair/Tony_Blair_0010.jpg", "Ariel_Sharon/Ariel_Sharon_0002.jpg"]


@pytest.fixture(scope="module")
def images(lfw_root):
    return [read_image(lfw_root / rel) for rel in SAMPLE]


def test_template_is_min_max_normalised(shared_data):
    template = openface_template()
    assert template.shape == (68, 2)
    assert np.allclose(template.min(axis=0), 0) and np.allclose(template.max(axis=0), 1)


@pytest.mark.parametrize("landmarks", sorted(LANDMARK_SETS))
@pytest.mark.parametrize("size", [96, 160])
def test_landmarks_land_on_the_template(images, landmarks, size):
    aligner = FaceAligner(size, landmarks)
    target = openface_template() * size
    anchors = list(LANDMARK_SETS[landmarks])
    all_errors, redetected_errors = [], []
    for rgb in images:
        boxes = aligner.detect(rgb)
        assert boxes, "dlib found no face in a clear LFW portrait"
        points = aligner.landmarks_of(rgb, boxes[0])
        face = aligner.align_points(rgb, points)
        assert face.shape == (size, size, 3) and face.dtype == np.uint8
        # The warp maps the three anchors exactly and the other landmarks close to the mean face.
        matrix = cv2.getAffineTransform(points[anchors].astype(np.float32),
                                        (target[anchors]).astype(np.float32))
        moved = np.c_[points, np.ones(68)] @ matrix.T
        assert np.abs(moved[anchors] - target[anchors]).max() < 1e-3
        all_errors.append(np.linalg.norm(moved - target, axis=1).mean())
        # The pixels really moved: landmarks found again on the aligned face sit on the template.
        again = aligner.landmarks_of(face, dlib.rectangle(0, 0, size - 1, size - 1))
        redetected_errors.append(np.abs(again[anchors] - target[anchors]).max())
    assert np.median(all_errors) < 0.08 * size  # jaw and mouth vary with pose and expression
    assert np.median(redetected_errors) < 0.03 * size
    assert max(redetected_errors) < 0.07 * size


def test_largest_and_all_faces(images):
    aligner = FaceAligner(96)
    pair = np.concatenate([images[0], images[1]], axis=1)
    found = aligner.align_all(pair)
    assert len(found) >= 2
    areas = [box.width() * box.height() for box, _ in found]
    assert areas == sorted(areas, reverse=True)
    assert np.array_equal(aligner.align_largest(pair), found[0][1])


def test_no_face_returns_none_and_centre_crop_fallback():
    blank = np.full((250, 250, 3), 127, np.uint8)
    aligner = FaceAligner(96, upsample=(0, 1))
    assert aligner.detect(blank) == []
    assert aligner.align_largest(blank) is None
    assert centre_crop(blank, 96).shape == (96, 96, 3)


def test_downscaled_detection_finds_the_same_face(images):
    big = cv2.resize(images[0], None, fx=2.5, fy=2.5)
    full = FaceAligner(96, upsample=0).detect(big)[0]
    fast = FaceAligner(96, upsample=0, detect_scale=0.5).detect(big)[0]
    assert abs(full.center().x - fast.center().x) < 15 and abs(full.center().y - fast.center().y) < 15


def test_detection_on_a_huge_image_runs_on_a_capped_copy(images, monkeypatch):
    small_box = FaceAligner(96, upsample=0).detect(images[0])[0]
    huge = cv2.resize(images[0], None, fx=10, fy=10, interpolation=cv2.INTER_LINEAR)  # 2500 x 2500
    aligner = FaceAligner(96, upsample=0, max_detect_side=1000)
    seen, original = [], aligner._detect_once
    monkeypatch.setattr(aligner, "_detect_once", lambda rgb, level: seen.append(rgb.shape) or original(rgb, level))
    box = aligner.detect(huge)[0]
    assert seen == [(1000, 1000, 3)]
    near = 0.08 * box.width()  # dlib's boxes move by a few percent between scales
    assert abs(box.center().x - 10 * small_box.center().x) < near
    assert abs(box.center().y - 10 * small_box.center().y) < near
    assert abs(box.width() - 10 * small_box.width()) < 0.15 * box.width()


def test_cnn_detector_finds_a_face(images):
    aligner = FaceAligner(96, detector="cnn", upsample=0)
    assert aligner.align_largest(images[0]).shape == (96, 96, 3)


def test_bad_arguments_are_explained():
    with pytest.raises(ValueError, match="landmarks"):
        FaceAligner(96, landmarks="ears")
    with pytest.raises(ValueError, match="detector"):
        FaceAligner(96, detector="haar")
    with pytest.raises(ValueError, match="uint8 RGB"):
        FaceAligner(96).detect(np.zeros((10, 10), np.uint8))
