"""Segmentation data: CamVid from disk, or embedded synthetic street scenes, plus transforms.

``build_datasets`` is the one entry point commands use::

    >>> train, val, info = build_datasets(None, size=(96, 128))     # synthetic, no files
    >>> train, val, info = build_datasets("../shared/camvid", size=(360, 480), flip=True)
    >>> info.description
    'CamVid (segnet layout) at ../shared/camvid: 367 train / 101 val frames, 11 classes + void'
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from jetseg.data.camvid import (
    CAMVID32_TO_11,
    CamVid,
    DataError,
    SegmentationDataset,
    colorize,
    detect_layout,
    overlay,
)
from jetseg.data.classes import CAMVID_CLASSES, CAMVID_PALETTE, IGNORE_INDEX, NUM_CLASSES
from jetseg.data.synthetic import SyntheticStreets, render_street_scene
from jetseg.data.transforms import (
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

__all__ = [
    "CAMVID32_TO_11",
    "CAMVID_CLASSES",
    "CAMVID_PALETTE",
    "IGNORE_INDEX",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "NUM_CLASSES",
    "SYNTHETIC_DEFAULT_SIZE",
    "SYNTHETIC_VAL_OFFSET",
    "CamVid",
    "Compose",
    "DataError",
    "DataInfo",
    "HorizontalFlip",
    "Normalize",
    "RandomCrop",
    "RandomScale",
    "Resize",
    "SegmentationDataset",
    "SyntheticStreets",
    "build_datasets",
    "build_transforms",
    "colorize",
    "detect_layout",
    "overlay",
    "render_street_scene",
    "to_uint8_image",
]

SYNTHETIC_DEFAULT_SIZE = (96, 128)
# Synthetic validation frames come from this far along the seed's stream of frames, so they never
# coincide with training frames for any training set smaller than a million frames.
SYNTHETIC_VAL_OFFSET = 1_000_000


@dataclass(frozen=True)
class DataInfo:
    """What ``build_datasets`` loaded; printed by commands and stored with every trial."""

    name: str  # "camvid" or "synthetic"
    root: Path | None  # the CamVid folder; None for the synthetic data
    synthetic: bool
    num_classes: int
    class_names: tuple[str, ...]
    train_size: int
    val_size: int
    description: str


def build_datasets(
    data: str | Path | None,
    size: tuple[int, int] | None = None,
    *,
    random_scale: tuple[float, float] | None = None,
    crop: tuple[int, int] | None = None,
    flip: bool = False,
    limit: int | None = None,
    synthetic_images: tuple[int, int] = (64, 16),
    seed: int = 0,
    cache: bool = True,
) -> tuple[SegmentationDataset, SegmentationDataset, DataInfo]:
    """The training and validation datasets, with their transforms, and what they are.

    Args:
        data: a CamVid root in either layout (see ``jetseg.data.camvid``), or ``None`` /
            ``"synthetic"`` for the embedded synthetic street scenes, so that every command runs
            on a fresh machine. ``DataInfo.synthetic`` and the description say which it was.
        size: (H, W) every frame is resized to (CamVid) or drawn at (synthetic; default
            96x128); ``None`` keeps CamVid's native 360x480.
        random_scale, crop, flip: training augmentation (``build_transforms``); none by default,
            as in the JetSeg paper. Validation is only resized and normalised.
        limit: keep the first ``limit`` frames of each split (quick runs, tests).
        synthetic_images: (train, val) frame counts of the synthetic dataset.
        seed: the synthetic dataset's seed (CamVid ignores it).
        cache: keep decoded CamVid frames in memory (see ``CamVid``).

    Raises:
        DataError: a CamVid root that is missing, in no known layout, or holds bad data.
    """
    train_transform = build_transforms(True, size, random_scale, crop, flip)
    val_transform = build_transforms(False, size)
    if data is None or str(data) == "synthetic":
        return _synthetic_datasets(size, synthetic_images, limit, seed, train_transform)
    root = Path(data).expanduser()
    train = CamVid(root, "train", transform=train_transform, cache=cache, limit=limit)
    val = CamVid(root, "val", transform=val_transform, cache=cache, limit=limit)
    description = (
        f"CamVid ({train.layout} layout) at {root}: {len(train)} train / {len(val)} val frames, "
        f"{NUM_CLASSES} classes + void"
    )
    info = DataInfo(
        name="camvid",
        root=root,
        synthetic=False,
        num_classes=NUM_CLASSES,
        class_names=CAMVID_CLASSES,
        train_size=len(train),
        val_size=len(val),
        description=description,
    )
    return train, val, info


def _synthetic_datasets(
    size: tuple[int, int] | None,
    synthetic_images: tuple[int, int],
    limit: int | None,
    seed: int,
    train_transform: Compose,
) -> tuple[SegmentationDataset, SegmentationDataset, DataInfo]:
    if len(synthetic_images) != 2 or min(synthetic_images) < 1:
        raise ValueError(
            f"synthetic_images must be (train, val) frame counts >= 1, got {synthetic_images!r}"
        )
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of frames, got {limit}")
    num_train, num_val = synthetic_images
    if limit is not None:
        num_train, num_val = min(num_train, limit), min(num_val, limit)
    frame_size = tuple(size) if size is not None else SYNTHETIC_DEFAULT_SIZE
    # Frames are drawn at the requested size, so only the normalisation (and any augmentation)
    # remains of the transforms; the resize in them is then a no-op.
    train = SyntheticStreets(num_train, frame_size, seed, train_transform)
    val = SyntheticStreets(
        num_val,
        frame_size,
        seed,
        build_transforms(False, None),
        index_offset=SYNTHETIC_VAL_OFFSET,
    )
    height, width = frame_size
    description = (
        f"synthetic street scenes (procedurally generated, not real data; pass a CamVid root "
        f"for real results): {num_train} train / {num_val} val frames at {height}x{width}, "
        f"seed {seed}"
    )
    info = DataInfo(
        name="synthetic",
        root=None,
        synthetic=True,
        num_classes=NUM_CLASSES,
        class_names=CAMVID_CLASSES,
        train_size=num_train,
        val_size=num_val,
        description=description,
    )
    return train, val, info
