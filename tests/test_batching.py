"""P x K sampling, pooling of datasets and the tf.data pipeline."""
from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
import tensorflow as tf

from utils.faces.store import RowView
from utils.training.batching import (
    PKSampler,
    TrainingFaces,
    augment,
    pool_datasets,
    replica_slice,
    training_dataset,
)


def dataset(counts: dict[str, int], size: int = 8, undetected: frozenset[int] = frozenset(), seed: int = 0):
    """An AlignedFaces-like object: ``counts[name]`` random faces per identity."""
    identities = [name for name, n in counts.items() for _ in range(n)]
    faces = np.random.default_rng(seed).integers(0, 256, (len(identities), size, size, 3), dtype=np.uint8)
    detected = np.array([i not in undetected for i in range(len(identities))])
    paths = [f"{name}/{name}_{i:04d}.jpg" for i, name in enumerate(identities)]
    return SimpleNamespace(identities=identities, faces=faces, detected=detected, paths=paths)


def uneven_pool(identities: int = 13, seed: int = 0) -> TrainingFaces:
    rng = np.random.default_rng(seed)
    return pool_datasets({"d": dataset({f"p{i}": int(rng.integers(2, 9)) for i in range(identities)})})


def test_a_batch_has_p_identities_with_k_images_each_grouped():
    pool = uneven_pool()
    sampler = PKSampler(pool.labels, identities_per_batch=4, images_per_identity=3, seed=7)
    for step in range(10):
        rows = sampler.batch(step)
        labels = pool.labels[rows]
        assert len(rows) == 12
        assert Counter(labels.tolist()) == {label: 3 for label in set(labels.tolist())}
        assert len(set(labels.tolist())) == 4
        assert all(len(set(labels[i:i + 3])) == 1 for i in range(0, 12, 3))


def test_identities_with_k_images_or_more_are_sampled_without_repeats_others_fully():
    pool = pool_datasets({"d": dataset({"few": 2, "many": 9, "other": 5, "more": 6})})
    sampler = PKSampler(pool.labels, 2, 4, seed=0)
    few = pool.names.index("d/few")
    for step in range(12):
        rows = sampler.batch(step)
        for i in range(0, len(rows), 4):
            group = rows[i:i + 4]
            if pool.labels[group[0]] == few:
                assert set(group) == set(np.flatnonzero(pool.labels == few))  # both images, then repeats
            else:
                assert len(set(group)) == 4


def test_each_pass_visits_every_identity_once_in_a_new_order():
    pool = uneven_pool(identities=12)
    sampler = PKSampler(pool.labels, 4, 2, seed=3)
    assert sampler.batches_per_pass == 3
    orders = []
    for first in (0, 3, 6):
        order = [pool.labels[sampler.batch(step)][::2].tolist() for step in range(first, first + 3)]
        flat = [label for batch in order for label in batch]
        assert sorted(flat) == list(range(12))
        orders.append(flat)
    assert orders[0] != orders[1] != orders[2]


def test_batches_are_a_pure_function_of_seed_and_step():
    pool = uneven_pool()
    a, b = PKSampler(pool.labels, 4, 2, seed=1), PKSampler(pool.labels, 4, 2, seed=1)
    forward = [a.batch(s).tolist() for s in range(8)]
    assert [b.batch(s).tolist() for s in reversed(range(8))] == forward[::-1]
    assert [PKSampler(pool.labels, 4, 2, seed=2).batch(s).tolist() for s in range(8)] != forward


def test_sampler_rejects_impossible_batches():
    pool = uneven_pool(identities=3)
    with pytest.raises(ValueError, match="only 3 identities"):
        PKSampler(pool.labels, 4, 2)
    with pytest.raises(ValueError, match="at least 2"):
        PKSampler(pool.labels, 2, 1)


def test_pooling_namespaces_identities_and_drops_undetected_excluded_and_rare():
    lfw = dataset({"Ann": 3, "Bob": 2, "Cid": 4}, undetected=frozenset({3}))  # one of Bob's two
    other = dataset({"Ann": 2, "7": 1, "8": 3}, seed=1)
    pool = pool_datasets({"lfw": lfw, "celeba": other}, exclude={"Cid"}, min_images=2)
    assert pool.names == ["lfw/Ann", "celeba/8", "celeba/Ann"]  # two Anns stay apart; Bob has 1 detected
    np.testing.assert_array_equal(pool.labels, [0, 0, 0, 2, 2, 1, 1, 1])
    np.testing.assert_array_equal(pool.faces, np.concatenate([lfw.faces[:3], other.faces[[0, 1, 3, 4, 5]]]))
    assert pool.paths[:3] == [f"lfw/Ann/Ann_{i:04d}.jpg" for i in range(3)]
    assert pool.paths[3] == "celeba/Ann/Ann_0000.jpg"
    with pytest.raises(ValueError, match="after excluding 2 people"):
        pool_datasets({"lfw": lfw}, exclude={"Ann", "Cid"})
    with pytest.raises(ValueError, match="differ in size"):
        pool_datasets({"a": lfw, "b": dataset({"X": 2}, size=10)})


def test_fingerprint_tells_pools_of_equal_size_apart():
    counts = {"Ann": 3, "Bob": 2, "Cid": 4}
    pool = pool_datasets({"lfw": dataset(counts)})
    assert pool.fingerprint() == pool_datasets({"lfw": dataset(counts, seed=1)}).fingerprint()  # paths, not pixels
    renamed = pool_datasets({"lfw": dataset({"Ann": 3, "Bob": 2, "Dan": 4})})
    other_source = pool_datasets({"celeba": dataset(counts)})
    assert (len(renamed), renamed.num_identities) == (len(pool), pool.num_identities)
    assert len({pool.fingerprint(), renamed.fingerprint(), other_source.fingerprint()}) == 3
    moved = TrainingFaces(pool.faces, pool.labels, pool.names, pool.paths[1:] + pool.paths[:1])
    assert moved.fingerprint() != pool.fingerprint()  # same images, other rows: other batches
    with pytest.raises(ValueError, match="paths"):
        TrainingFaces(pool.faces, pool.labels, pool.names, pool.paths[1:])


def test_dataset_yields_float_faces_and_labels_of_the_sampled_rows():
    pool = uneven_pool()
    sampler = PKSampler(pool.labels, 4, 2, seed=5)
    images, labels = next(iter(training_dataset(pool, sampler, augmentation="none")))
    rows = sampler.batch(0)
    assert images.dtype == tf.float32 and images.shape == (8, 8, 8, 3)
    np.testing.assert_allclose(images.numpy(), pool.faces[rows] / 255.0, atol=1e-6)
    np.testing.assert_array_equal(labels.numpy(), pool.labels[rows])


def test_store_rows_and_in_memory_faces_give_identical_batches():
    pool = uneven_pool()
    assert isinstance(pool.faces, RowView)
    in_memory = TrainingFaces(np.asarray(pool.faces), pool.labels, pool.names, pool.paths)
    sampler = PKSampler(pool.labels, 4, 2, seed=5)
    from_rows = [x.numpy() for x, _ in training_dataset(pool, sampler, augmentation="strong").take(3)]
    from_memory = [x.numpy() for x, _ in training_dataset(in_memory, sampler, augmentation="strong").take(3)]
    np.testing.assert_array_equal(np.stack(from_rows), np.stack(from_memory))


def test_resumed_dataset_continues_with_identical_augmented_batches():
    pool = uneven_pool()
    sampler = PKSampler(pool.labels, 4, 2, seed=5)
    whole = [x.numpy() for x, _ in training_dataset(pool, sampler).take(6)]
    resumed = [x.numpy() for x, _ in training_dataset(pool, sampler, start_step=4).take(2)]
    np.testing.assert_array_equal(resumed[0], whole[4])
    np.testing.assert_array_equal(resumed[1], whole[5])
    assert not np.array_equal(whole[0], whole[1])
    assert all(0.0 <= x.min() and x.max() <= 1.0 for x in whole)


def test_replicas_receive_their_identity_shares_in_turn():
    pool = uneven_pool()
    sampler = PKSampler(pool.labels, 4, 2, seed=5)
    context = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0, num_replicas_in_sync=2)
    labels = [y.numpy() for _, y in training_dataset(pool, sampler, input_context=context).take(4)]
    for step in range(2):
        whole = pool.labels[sampler.batch(step)]
        np.testing.assert_array_equal(np.concatenate(labels[2 * step:2 * step + 2]), whole)
        assert not set(labels[2 * step]) & set(labels[2 * step + 1])
    with pytest.raises(ValueError, match="split evenly"):
        replica_slice(sampler.batch(0), 2, 0, 3)
    with pytest.raises(ValueError, match="split evenly"):
        training_dataset(pool, sampler, input_context=tf.distribute.InputContext(1, 0, 3))


def test_augmentation_is_seeded_small_and_flips_about_half():
    rng = np.random.default_rng(0)
    # A smooth face-like image: a bright blob left of centre, so a flip moves it.
    y, x = np.mgrid[0:48, 0:48]
    blob = np.exp(-((x - 16) ** 2 + (y - 24) ** 2) / 60.0)
    images = tf.constant(np.repeat((0.2 + 0.6 * blob)[None, :, :, None], 3, axis=3).repeat(64, axis=0)
                         + rng.normal(0, 0.01, (64, 48, 48, 3)), tf.float32)
    out = augment(images, tf.constant([1, 2], tf.int64)).numpy()
    np.testing.assert_array_equal(out, augment(images, tf.constant([1, 2], tf.int64)).numpy())
    assert not np.array_equal(out, augment(images, tf.constant([1, 3], tf.int64)).numpy())
    assert out.shape == images.shape and out.min() >= 0.0 and out.max() <= 1.0
    left_heavy = out[:, :, :24].mean(axis=(1, 2, 3)) > out[:, :, 24:].mean(axis=(1, 2, 3))
    assert 16 < left_heavy.sum() < 48  # about half flipped
    unflipped = out[left_heavy]
    assert np.abs(unflipped - images.numpy()[left_heavy]).mean() < 0.1  # small geometric/photometric change


def runs_of_equal_pixels(images: np.ndarray) -> np.ndarray:
    """Per image: whether some row holds 4 equal pixels in a row."""
    flat = (np.abs(np.diff(images, axis=2)) < 1e-6).all(axis=3)
    return (flat[:, :, :-2] & flat[:, :, 1:-1] & flat[:, :, 2:]).any(axis=(1, 2))


def test_strong_augmentation_greys_blurs_and_erases_some_faces_only():
    # Coloured faces with a fine checkerboard: greyscale removes the colour, blur its contrast.
    stripes = (np.indices((48, 48)).sum(axis=0) % 2).astype(np.float32)
    face = np.stack([0.3 + 0.4 * stripes, 0.5 * np.ones_like(stripes), 0.2 + 0.2 * stripes], axis=-1)
    images = tf.constant(np.repeat(face[None], 400, axis=0))
    seed = tf.constant([3, 4], tf.int64)
    out = augment(images, seed, "strong").numpy()
    np.testing.assert_array_equal(out, augment(images, seed, "strong").numpy())
    assert out.shape == images.shape and out.min() >= 0.0 and out.max() <= 1.0
    grey = np.abs(out - out.mean(axis=3, keepdims=True)).max(axis=(1, 2, 3)) < 1e-4
    assert 0.05 < grey.mean() < 0.3          # greyscale p = 0.15
    mild = augment(images, seed, "mild").numpy()
    assert np.abs(mild - mild.mean(axis=3, keepdims=True)).max(axis=(1, 2, 3)).min() > 0.05  # mild keeps colour
    # An erased rectangle is flat: a row of 4+ equal pixels does not occur in the checkerboard otherwise.
    erased = runs_of_equal_pixels(out)
    assert 0.1 < erased.mean() < 0.45         # erase p = 0.25 (a few rectangles are too thin to show)
    assert not runs_of_equal_pixels(mild).any()
    # Shrinking and enlarging again smooths the checkerboard away.
    detail = np.abs(np.diff(out, axis=2)).mean(axis=(1, 2, 3))
    assert 0.1 < (detail < 0.008).mean() < 0.4  # low resolution p = 0.25
    assert np.abs(np.diff(mild, axis=2)).mean(axis=(1, 2, 3)).min() > 0.008


def test_train_offers_exactly_the_augmentation_presets():
    from train import build_parser
    from utils.training.batching import AUGMENTATIONS

    action = next(a for a in build_parser()._actions if a.dest == "augmentation")
    assert action.choices == ["none", *AUGMENTATIONS]


def test_training_dataset_rejects_an_unknown_augmentation():
    pool = uneven_pool()
    with pytest.raises(ValueError, match="unknown augmentation"):
        training_dataset(pool, PKSampler(pool.labels, 4, 2), augmentation="heavy")


def test_a_group_gets_its_share_of_every_batch_in_passes_of_its_own():
    pool = uneven_pool(identities=13)
    group = np.arange(5)  # e.g. the LFW identities
    sampler = PKSampler(pool.labels, 4, 2, seed=3, group=group, group_share=0.5)
    batches = [pool.labels[sampler.batch(step)] for step in range(10)]
    firsts = []
    for labels in batches:
        identities = labels[::2]
        assert all(Counter(labels.tolist())[i] == 2 for i in identities) and len(set(identities)) == 4
        assert np.isin(identities, group).sum() == 2  # round(0.5 * 4)
        firsts.append(identities[0] in group)
    assert 0 < sum(firsts) < 10  # the group's identities are shuffled among the others
    # The group's 5 identities: passes of 2 batches (2 places each) visit 4 of them, all different.
    for first in (0, 2, 4):
        seen = [i for labels in batches[first:first + 2] for i in labels[::2] if i in group]
        assert len(set(seen)) == 4
    again = PKSampler(pool.labels, 4, 2, seed=3, group=group, group_share=0.5)  # a pure function of (seed, step)
    assert [again.batch(s).tolist() for s in reversed(range(10))][::-1] == [sampler.batch(s).tolist()
                                                                            for s in range(10)]
    only_others = PKSampler(pool.labels, 4, 2, seed=3, group=group, group_share=0.1)  # round(0.4) = 0
    assert not any(np.isin(pool.labels[only_others.batch(s)], group).any() for s in range(6))
    only_group = PKSampler(pool.labels, 4, 2, seed=3, group=group, group_share=1.0)
    assert all(np.isin(pool.labels[only_group.batch(s)], group).all() for s in range(6))
    with pytest.raises(ValueError, match="4 of the 4 identities per batch should come from the identities in the "
                                         "group, but there are only 3"):
        PKSampler(pool.labels, 4, 2, group=np.arange(3), group_share=1.0)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        PKSampler(pool.labels, 4, 2, group=group, group_share=1.5)


def test_one_photo_negatives_follow_the_pk_faces_one_face_each_in_passes_of_their_own():
    pool = pool_datasets({"d": dataset({**{f"p{i}": 3 for i in range(8)}, **{f"one{i}": 1 for i in range(7)},
                                        "two": 2})}, min_images=1)
    negatives = pool.identities_with_fewer_than(3)  # the one-photo people and "two"
    assert sorted(pool.names[n] for n in negatives) == sorted([f"d/one{i}" for i in range(7)] + ["d/two"])
    sampler = PKSampler(pool.labels, 4, 2, seed=3, negatives=negatives, negatives_per_batch=3)
    assert sampler.batch_size == 11
    batches = [pool.labels[sampler.batch(step)] for step in range(8)]
    for labels in batches:
        people, extra = labels[:8], labels[8:]
        assert not np.isin(people, negatives).any() and len(set(people[::2])) == 4
        assert np.isin(extra, negatives).all() and len(set(extra)) == 3  # one face of each
    for first in (0, 2, 4):  # passes of 8 // 3 = 2 batches visit 6 of the 8, all different
        assert len({n for labels in batches[first:first + 2] for n in labels[8:]}) == 6
    again = PKSampler(pool.labels, 4, 2, seed=3, negatives=negatives, negatives_per_batch=3)
    assert [again.batch(s).tolist() for s in reversed(range(8))][::-1] == [sampler.batch(s).tolist()
                                                                           for s in range(8)]
    two = pool.names.index("d/two")
    assert len({row for s in range(40) for row in sampler.batch(s)[8:] if pool.labels[row] == two}) == 2
    group = np.concatenate([sampler.identities[:4], negatives[:4]])
    with_group = PKSampler(pool.labels, 4, 2, seed=3, group=group, group_share=0.5,
                           negatives=negatives, negatives_per_batch=3)  # the group's negatives stay negatives
    assert all(not np.isin(pool.labels[with_group.batch(s)][:8], negatives).any() for s in range(8))
    with pytest.raises(ValueError, match="9 negatives per batch, but 8 identities"):
        PKSampler(pool.labels, 4, 2, negatives=negatives, negatives_per_batch=9)
    with pytest.raises(ValueError, match="only 8 identities"):
        PKSampler(pool.labels, 9, 2, negatives=negatives, negatives_per_batch=3)


def test_replicas_get_whole_identities_and_their_share_of_the_negatives():
    pool = pool_datasets({"d": dataset({**{f"p{i}": 3 for i in range(8)}, **{f"one{i}": 1 for i in range(6)}})},
                         min_images=1)
    negatives = pool.identities_with_fewer_than(2)
    sampler = PKSampler(pool.labels, 4, 2, seed=5, negatives=negatives, negatives_per_batch=2)
    batch = sampler.batch(0)
    shares = [replica_slice(batch, 2, r, 2, negatives=2) for r in range(2)]
    for r, share in enumerate(shares):
        np.testing.assert_array_equal(share, np.concatenate([batch[4 * r:4 * r + 4], batch[8 + r:9 + r]]))
    context = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0, num_replicas_in_sync=2)
    labels = [y.numpy() for _, y in training_dataset(pool, sampler, input_context=context).take(2)]
    np.testing.assert_array_equal(np.concatenate(labels), pool.labels[np.concatenate(shares)])
    odd = PKSampler(pool.labels, 4, 2, seed=5, negatives=negatives, negatives_per_batch=3)
    with pytest.raises(ValueError, match="4 identities and 3 negatives per batch do not split evenly over 2"):
        replica_slice(odd.batch(0), 2, 0, 2, negatives=3)
    with pytest.raises(ValueError, match="do not split evenly"):
        training_dataset(pool, odd, input_context=context)


def test_pose_augmentation_moves_and_turns_faces_further_than_mild():
    # A white square above the centre, on the vertical axis (a flip leaves it in place).
    image = np.zeros((48, 48, 3), np.float32)
    image[10:18, 20:28] = 1.0
    images = tf.constant(np.repeat(image[None], 300, axis=0))
    spreads = {}
    for preset in ("mild", "pose"):
        out = augment(images, tf.constant([5, 6], tf.int64), preset).numpy().mean(axis=3) > 0.5
        y, x = np.mgrid[0:48, 0:48]
        centres = np.stack([(out * y).sum(axis=(1, 2)) / out.sum(axis=(1, 2)),
                            (out * x).sum(axis=(1, 2)) / out.sum(axis=(1, 2))], axis=1)
        spreads[preset] = centres.std(axis=0)
    assert (spreads["pose"] > 1.8 * spreads["mild"]).all()
