from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from jetseg.data import (
    IGNORE_INDEX,
    NUM_CLASSES,
    SyntheticStreets,
    build_datasets,
    build_transforms,
    render_street_scene,
)

SIZE = (48, 64)


def test_frames_have_the_right_shapes_and_values():
    data = SyntheticStreets(num_images=3, size=SIZE, seed=0)
    assert len(data) == 3
    for index in range(3):
        image, label = data.raw(index)
        assert image.shape == (*SIZE, 3) and image.dtype == np.uint8
        assert label.shape == SIZE and label.dtype == np.uint8
        assert label.max() <= IGNORE_INDEX
        assert (label[0] == IGNORE_INDEX).all() and (label[:, -1] == IGNORE_INDEX).all()
    image, label = data[0]
    assert image.dtype == torch.float32 and image.shape == (3, *SIZE)
    assert label.dtype == torch.int64 and label.shape == SIZE
    assert "synthetic" in data.description and "not real data" in data.description


def test_same_seed_same_frames_other_seed_other_frames():
    first = SyntheticStreets(4, SIZE, seed=5)
    second = SyntheticStreets(4, SIZE, seed=5)
    other = SyntheticStreets(4, SIZE, seed=6)
    for index in range(4):
        for a, b in zip(first.raw(index), second.raw(index), strict=True):
            np.testing.assert_array_equal(a, b)
        assert not np.array_equal(first.raw(index)[0], other.raw(index)[0])
    assert not np.array_equal(first.raw(0)[1], first.raw(1)[1])


def test_frame_does_not_depend_on_access_order():
    forward = SyntheticStreets(5, SIZE, seed=1)
    backward = SyntheticStreets(5, SIZE, seed=1)
    forward_frames = [forward.raw(i) for i in range(5)]
    backward_frames = [backward.raw(i) for i in reversed(range(5))][::-1]
    for (image_a, label_a), (image_b, label_b) in zip(forward_frames, backward_frames, strict=True):
        np.testing.assert_array_equal(image_a, image_b)
        np.testing.assert_array_equal(label_a, label_b)
    # The frame is a function of (seed, index) only.
    image, label = render_street_scene(*SIZE, np.random.default_rng((1, 3)))
    np.testing.assert_array_equal(label, forward.raw(3)[1])
    shifted = SyntheticStreets(2, SIZE, seed=1, index_offset=3)
    np.testing.assert_array_equal(shifted.raw(0)[0], forward.raw(3)[0])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_class_appears_in_a_few_frames(seed):
    data = SyntheticStreets(6, (96, 128), seed=seed)
    counts = data.class_pixel_counts()
    assert counts.shape == (NUM_CLASSES,) and counts.dtype == np.int64
    assert (counts > 0).all(), f"classes missing: {np.flatnonzero(counts == 0).tolist()}"
    labels = np.stack([data.raw(i)[1] for i in range(6)])
    np.testing.assert_array_equal(
        counts, np.bincount(labels.ravel(), minlength=NUM_CLASSES + 1)[:NUM_CLASSES]
    )
    assert (labels == IGNORE_INDEX).any()


def test_colour_alone_does_not_give_the_class():
    data = SyntheticStreets(8, SIZE, seed=0)
    images = np.stack([data.raw(i)[0] for i in range(8)]).reshape(-1, 3).astype(np.float32)
    labels = np.stack([data.raw(i)[1] for i in range(8)]).ravel()
    keep = labels != IGNORE_INDEX
    images, labels = images[keep], labels[keep]
    means = np.stack([images[labels == c].mean(axis=0) for c in range(NUM_CLASSES)])
    nearest = ((images[:, None, :] - means[None]) ** 2).sum(-1).argmin(axis=1)
    accuracy = (nearest == labels).mean()
    # Overlapping colour distributions: the nearest class-mean colour is right well under
    # half the time (it is about a third at the time of writing).
    assert accuracy < 0.5


def test_any_size_and_fast_enough_at_camvid_size():
    image, label = render_street_scene(21, 75, np.random.default_rng(0))
    assert image.shape == (21, 75, 3) and label.shape == (21, 75)
    timings = []
    for index in range(3):
        start = time.perf_counter()
        render_street_scene(360, 480, np.random.default_rng((0, index)))
        timings.append(time.perf_counter() - start)
    # About 20 ms here; the bound leaves room for a loaded machine.
    assert min(timings) < 0.25
    with pytest.raises(ValueError, match="at least 8"):
        SyntheticStreets(2, (4, 64))
    with pytest.raises(ValueError, match="num_images"):
        SyntheticStreets(0)


def test_transform_is_applied():
    transform = build_transforms(True, None, crop=(32, 32), flip=True)
    image, label = SyntheticStreets(2, SIZE, seed=0, transform=transform)[1]
    assert image.shape == (3, 32, 32) and label.shape == (32, 32)


def test_build_datasets_defaults_to_synthetic():
    train, val, info = build_datasets(None, size=SIZE, synthetic_images=(5, 3), seed=4)
    assert (info.name, info.synthetic, info.root) == ("synthetic", True, None)
    assert (info.train_size, info.val_size, len(train), len(val)) == (5, 3, 5, 3)
    assert info.num_classes == NUM_CLASSES and len(info.class_names) == NUM_CLASSES
    assert "synthetic" in info.description and "not real data" in info.description
    # Validation frames are not training frames.
    train_labels = [train.raw(i)[1] for i in range(5)]
    for index in range(3):
        assert not any(np.array_equal(val.raw(index)[1], t) for t in train_labels)
    image, label = train[0]
    assert image.shape == (3, *SIZE) and label.shape == SIZE
    limited, _, limited_info = build_datasets("synthetic", size=None, limit=2)
    assert len(limited) == 2 and limited_info.train_size == 2
    assert limited.raw(0)[0].shape == (96, 128, 3)
    with pytest.raises(ValueError, match="synthetic_images"):
        build_datasets(None, size=SIZE, synthetic_images=(0, 3))
