"""Joint transforms of a segmentation pair: uint8 image (H, W, 3) and uint8 label (H, W).

Geometry changes both arrays the same way: images are resampled bilinearly, labels with nearest
neighbour (so no new class values appear), and padding fills the label with void
(``IGNORE_INDEX``). ``Normalize`` ends a pipeline and turns the pair into tensors.

Randomness: each random transform takes an optional ``rng`` (``np.random.Generator``). Without
one, it draws from torch's global RNG. That is the reproducible choice with a DataLoader: every
worker's torch RNG is seeded from the loader's base seed (itself drawn from torch's RNG, so
``torch.manual_seed`` before iterating fixes it), whereas a numpy Generator passed in is copied
into every worker and all workers would then draw the same stream.

Example::

    >>> transform = build_transforms(train=True, size=(360, 480), crop=(320, 320), flip=True)
    >>> image, label = transform(image_uint8, label_uint8)   # float32 (3, 320, 320), int64
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from jetseg.data.classes import IGNORE_INDEX

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Pair = tuple[np.ndarray, np.ndarray]


def _check_size(size: Sequence[int], name: str) -> tuple[int, int]:
    if len(size) != 2 or not all(isinstance(v, (int, np.integer)) and v > 0 for v in size):
        raise ValueError(f"{name} must be (height, width) with positive integers, got {size!r}")
    return int(size[0]), int(size[1])


def _check_pair(image: np.ndarray, label: np.ndarray) -> None:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
    if label.dtype != np.uint8 or label.shape != image.shape[:2]:
        raise ValueError(
            f"expected a uint8 label of the image's size {image.shape[:2]}, "
            f"got {label.dtype} {label.shape}"
        )


def _uniform(rng: np.random.Generator | None, low: float, high: float) -> float:
    if rng is not None:
        return float(rng.uniform(low, high))
    return low + (high - low) * float(torch.rand(()))


def _randint(rng: np.random.Generator | None, high: int) -> int:
    """A random integer in [0, high)."""
    if high <= 1:
        return 0
    if rng is not None:
        return int(rng.integers(high))
    return int(torch.randint(high, ()))


def resize_pair(image: np.ndarray, label: np.ndarray, size: tuple[int, int]) -> Pair:
    """Resize to ``size`` = (H, W): image bilinear, label nearest."""
    _check_pair(image, label)
    height, width = size
    if image.shape[:2] == (height, width):
        return image, label
    image = np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR))
    label = np.asarray(Image.fromarray(label).resize((width, height), Image.Resampling.NEAREST))
    return image, label


class Compose:
    """Apply transforms in order to the (image, label) pair."""

    def __init__(self, transforms: Sequence[Callable[[Any, Any], tuple[Any, Any]]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: Any, label: Any) -> tuple[Any, Any]:
        for transform in self.transforms:
            image, label = transform(image, label)
        return image, label

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


class Resize:
    """Resize to a fixed (H, W): image bilinear, label nearest."""

    def __init__(self, size: Sequence[int]) -> None:
        self.size = _check_size(size, "Resize size")

    def __call__(self, image: np.ndarray, label: np.ndarray) -> Pair:
        return resize_pair(image, label, self.size)

    def __repr__(self) -> str:
        return f"Resize(size={self.size})"


class RandomScale:
    """Rescale both axes by one factor drawn uniformly from [min_scale, max_scale]."""

    def __init__(
        self, min_scale: float, max_scale: float, rng: np.random.Generator | None = None
    ) -> None:
        if not 0 < min_scale <= max_scale:
            raise ValueError(
                f"0 < min_scale <= max_scale must hold, got min_scale={min_scale}, "
                f"max_scale={max_scale}"
            )
        self.min_scale, self.max_scale, self.rng = float(min_scale), float(max_scale), rng

    def __call__(self, image: np.ndarray, label: np.ndarray) -> Pair:
        scale = _uniform(self.rng, self.min_scale, self.max_scale)
        height, width = image.shape[:2]
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        return resize_pair(image, label, size)

    def __repr__(self) -> str:
        return f"RandomScale(min_scale={self.min_scale}, max_scale={self.max_scale})"


class RandomCrop:
    """Crop a random (H, W) window; smaller inputs are padded at the bottom and right first.

    Padding fills the image with ``image_fill`` and the label with ``ignore_index`` (void), so
    the padded area costs nothing in the loss and the metrics.
    """

    def __init__(
        self,
        size: Sequence[int],
        ignore_index: int = IGNORE_INDEX,
        image_fill: int = 0,
        rng: np.random.Generator | None = None,
    ) -> None:
        self.size = _check_size(size, "RandomCrop size")
        self.ignore_index, self.image_fill, self.rng = ignore_index, image_fill, rng

    def __call__(self, image: np.ndarray, label: np.ndarray) -> Pair:
        _check_pair(image, label)
        crop_height, crop_width = self.size
        height, width = image.shape[:2]
        if height < crop_height or width < crop_width:
            padded_height, padded_width = max(height, crop_height), max(width, crop_width)
            padded_image = np.full((padded_height, padded_width, 3), self.image_fill, np.uint8)
            padded_label = np.full((padded_height, padded_width), self.ignore_index, np.uint8)
            padded_image[:height, :width] = image
            padded_label[:height, :width] = label
            image, label, height, width = padded_image, padded_label, padded_height, padded_width
        top = _randint(self.rng, height - crop_height + 1)
        left = _randint(self.rng, width - crop_width + 1)
        window = (slice(top, top + crop_height), slice(left, left + crop_width))
        return image[window], label[window]

    def __repr__(self) -> str:
        return f"RandomCrop(size={self.size}, ignore_index={self.ignore_index})"


class HorizontalFlip:
    """Mirror image and label left-right with probability ``p``."""

    def __init__(self, p: float = 0.5, rng: np.random.Generator | None = None) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"HorizontalFlip p must lie in [0, 1], got {p}")
        self.p, self.rng = float(p), rng

    def __call__(self, image: np.ndarray, label: np.ndarray) -> Pair:
        if self.p > 0 and _uniform(self.rng, 0.0, 1.0) < self.p:
            return np.ascontiguousarray(image[:, ::-1]), np.ascontiguousarray(label[:, ::-1])
        return image, label

    def __repr__(self) -> str:
        return f"HorizontalFlip(p={self.p})"


class Normalize:
    """uint8 pair -> (float32 (3, H, W) ``(x / 255 - mean) / std``, int64 (H, W)) tensors."""

    def __init__(
        self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
    ) -> None:
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std need 3 values each, std > 0; got {mean}, {std}")
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        # Folded into one multiply-add per pixel: x * scale + shift.
        mean_array = np.asarray(self.mean, dtype=np.float32)
        std_array = np.asarray(self.std, dtype=np.float32)
        self._scale = 1.0 / (255.0 * std_array)
        self._shift = -mean_array / std_array

    def __call__(self, image: np.ndarray, label: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        _check_pair(image, label)
        normalised = image.astype(np.float32) * self._scale + self._shift  # (H, W, 3)
        image_tensor = torch.from_numpy(np.ascontiguousarray(normalised.transpose(2, 0, 1)))
        label_tensor = torch.from_numpy(label.astype(np.int64))
        return image_tensor, label_tensor

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean}, std={self.std})"


def to_uint8_image(
    image: torch.Tensor,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> np.ndarray:
    """Undo ``Normalize``: float (3, H, W) tensor -> uint8 (H, W, 3) array, for viewing."""
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected a (3, H, W) image tensor, got shape {tuple(image.shape)}")
    array = image.detach().cpu().float().numpy().transpose(1, 2, 0)  # (H, W, 3)
    array = (array * np.asarray(std, np.float32) + np.asarray(mean, np.float32)) * 255.0
    return np.clip(np.rint(array), 0, 255).astype(np.uint8)


def build_transforms(
    train: bool,
    size: tuple[int, int] | None,
    random_scale: tuple[float, float] | None = None,
    crop: tuple[int, int] | None = None,
    flip: bool = False,
    *,
    rng: np.random.Generator | None = None,
) -> Compose:
    """The transform of a training or evaluation split.

    Both: ``Resize(size)`` when a size is given, then ``Normalize()`` (ImageNet mean/std).
    Training adds, between the two and only when asked, ``RandomScale(*random_scale)``,
    ``RandomCrop(crop)`` (label padded with void) and ``HorizontalFlip(0.5)``; evaluation stays
    deterministic and ignores them. The defaults reproduce the JetSeg paper, which used no
    augmentation. ``rng`` feeds the random transforms (default: torch's RNG, see module doc).
    """
    steps: list[Callable[[Any, Any], tuple[Any, Any]]] = []
    if size is not None:
        steps.append(Resize(size))
    if train:
        if random_scale is not None:
            if len(random_scale) != 2:
                raise ValueError(f"random_scale must be (min, max), got {random_scale!r}")
            steps.append(RandomScale(random_scale[0], random_scale[1], rng=rng))
        if crop is not None:
            steps.append(RandomCrop(crop, rng=rng))
        if flip:
            steps.append(HorizontalFlip(0.5, rng=rng))
    steps.append(Normalize())
    return Compose(steps)
