from __future__ import annotations

import numpy as np
import pytest
import torch

from jetseg.data import (
    IGNORE_INDEX,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Compose,
    HorizontalFlip,
    Normalize,
    RandomCrop,
    RandomScale,
    Resize,
    build_transforms,
    to_uint8_image,
)


def coded_pair(height: int = 12, width: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """An asymmetric label pattern and an image whose red channel spells the label out."""
    label = (np.arange(height)[:, None] // 3 * 4 + np.arange(width)[None, :] // 4) % 11
    label = label.astype(np.uint8)
    image = np.zeros((height, width, 3), np.uint8)
    image[..., 0] = label * 20
    image[..., 1] = np.arange(width, dtype=np.uint8)[None, :] * 7  # makes left and right differ
    return image, label


def assert_aligned(image: np.ndarray, label: np.ndarray) -> None:
    np.testing.assert_array_equal(
        image[..., 0][label != IGNORE_INDEX], label[label != IGNORE_INDEX] * 20
    )


def test_flip_moves_image_and_label_together():
    image, label = coded_pair()
    flipped_image, flipped_label = HorizontalFlip(p=1.0)(image, label)
    np.testing.assert_array_equal(flipped_label, label[:, ::-1])
    np.testing.assert_array_equal(flipped_image, image[:, ::-1])
    assert not np.array_equal(flipped_label, label)  # the pattern is asymmetric
    assert_aligned(flipped_image, flipped_label)
    same_image, same_label = HorizontalFlip(p=0.0)(image, label)
    assert same_image is image and same_label is label


def test_crop_keeps_alignment_and_pads_label_with_void():
    image, label = coded_pair()
    rng = np.random.default_rng(0)
    for _ in range(5):
        crop_image, crop_label = RandomCrop((5, 7), rng=rng)(image, label)
        assert crop_image.shape == (5, 7, 3) and crop_label.shape == (5, 7)
        assert_aligned(crop_image, crop_label)
    padded_image, padded_label = RandomCrop((20, 18), rng=rng)(image, label)
    assert padded_image.shape == (20, 18, 3)
    np.testing.assert_array_equal(padded_label[:12, :16], label)
    assert (padded_label[12:] == IGNORE_INDEX).all() and (
        padded_label[:, 16:] == IGNORE_INDEX
    ).all()
    assert (padded_image[12:] == 0).all()


def test_resize_is_bilinear_for_images_nearest_for_labels():
    image, label = coded_pair(12, 16)
    resized_image, resized_label = Resize((24, 32))(image, label)
    assert resized_image.shape == (24, 32, 3) and resized_label.shape == (24, 32)
    assert set(np.unique(resized_label)) <= set(np.unique(label))
    # Nearest neighbour on an exact 2x upsampling repeats every label pixel.
    np.testing.assert_array_equal(resized_label, label.repeat(2, 0).repeat(2, 1))
    # Bilinear creates intermediate values along the horizontal ramp of the green channel.
    assert len(np.unique(resized_image[..., 1])) > len(np.unique(image[..., 1]))
    with pytest.raises(ValueError, match="Resize size"):
        Resize((0, 4))


def test_random_scale_stays_in_range_and_is_reproducible():
    image, label = coded_pair(20, 40)
    sizes = set()
    for seed in range(6):
        out_image, out_label = RandomScale(0.5, 1.5, rng=np.random.default_rng(seed))(image, label)
        assert 10 <= out_label.shape[0] <= 30 and out_image.shape[:2] == out_label.shape
        sizes.add(out_label.shape)
        again = RandomScale(0.5, 1.5, rng=np.random.default_rng(seed))(image, label)[1]
        np.testing.assert_array_equal(again, out_label)
    assert len(sizes) > 1
    with pytest.raises(ValueError, match="min_scale <= max_scale"):
        RandomScale(2.0, 1.0)


def test_torch_rng_drives_random_transforms_by_default():
    image, label = coded_pair(20, 24)
    transform = Compose([RandomScale(0.6, 1.4), RandomCrop((8, 8)), HorizontalFlip(0.5)])
    torch.manual_seed(3)
    first = [transform(image, label)[1] for _ in range(4)]
    torch.manual_seed(3)
    second = [transform(image, label)[1] for _ in range(4)]
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(first[0], other) for other in first[1:])


def test_normalize_matches_the_formula_and_inverts():
    image, label = coded_pair()
    tensor_image, tensor_label = Normalize()(image, label)
    assert tensor_image.dtype == torch.float32 and tensor_image.shape == (3, 12, 16)
    assert tensor_label.dtype == torch.int64
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    expected = (torch.from_numpy(image).permute(2, 0, 1).float() / 255 - mean) / std
    torch.testing.assert_close(tensor_image, expected)
    torch.testing.assert_close(tensor_label, torch.from_numpy(label).long())
    np.testing.assert_array_equal(to_uint8_image(tensor_image), image)
    with pytest.raises(ValueError, match="std > 0"):
        Normalize(std=(1.0, 0.0, 1.0))


def test_build_transforms_train_and_eval():
    image, label = coded_pair(12, 16)
    evaluate = build_transforms(False, (6, 8), random_scale=(0.5, 2.0), crop=(4, 4), flip=True)
    assert [type(t) for t in evaluate.transforms] == [Resize, Normalize]
    a, b = evaluate(image, label), evaluate(image, label)
    assert a[0].shape == (3, 6, 8)
    torch.testing.assert_close(a[0], b[0])
    train = build_transforms(True, (12, 16), random_scale=(1.0, 1.5), crop=(10, 10), flip=True)
    assert [type(t) for t in train.transforms] == [
        Resize,
        RandomScale,
        RandomCrop,
        HorizontalFlip,
        Normalize,
    ]
    out_image, out_label = train(image, label)
    assert out_image.shape == (3, 10, 10) and out_label.shape == (10, 10)
    plain = build_transforms(True, None)
    assert [type(t) for t in plain.transforms] == [Normalize]


class _AugmentedPairs(torch.utils.data.Dataset):
    def __init__(self) -> None:
        self.pair = coded_pair(16, 16)
        self.transform = build_transforms(True, None, crop=(6, 6), flip=True)

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int):
        return self.transform(*self.pair)


def test_dataloader_workers_reproduce_augmentation_from_torch_seed():
    def run() -> torch.Tensor:
        torch.manual_seed(11)
        loader = torch.utils.data.DataLoader(_AugmentedPairs(), batch_size=4, num_workers=2)
        return torch.cat([labels for _, labels in loader])

    first, second = run(), run()
    torch.testing.assert_close(first, second)
    # Each item is augmented differently, across both workers.
    assert len({tuple(labels.flatten().tolist()) for labels in first}) > 4
