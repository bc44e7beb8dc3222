"""Segmentation data: CamVid from disk, or embedded synthetic street scenes, plus transforms.

``build_datasets`` is the one entry point commands use::

    >>> train, val, info = build_datasets(None, size=(96, 128))     # synthetic, no files
    >>> train, val, info = build_datasets("../shared/camvid", size=(360, 480), flip=True)
    >>> info.description
    'CamVid (segnet layout) at ../shared/camvid: 367 train / 101 val frames, 11 classes + void'

CamVid's val split is one driving sequence (0016E5) that also supplies 204 of the 367 training
frames, so val mIoU rewards knowing those streets. Hold whole sequences out of training to
measure a network on streets it never saw::

    >>> train, val, info = build_datasets("../shared/camvid", holdout=("0001TP",))
    >>> heldout = build_holdout("../shared/camvid", ("0001TP",))   # 62 frames, never trained on
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from jetseg.data.camvid import (
    CAMVID32_TO_11,
    CamVid,
    DataError,
    SegmentationDataset,
    colorize,
    detect_layout,
    known_sequences,
    overlay,
    sequence_of,
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
    "build_holdout",
    "build_transforms",
    "colorize",
    "detect_layout",
    "known_sequences",
    "overlay",
    "render_street_scene",
    "sequence_of",
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
    holdout: tuple[str, ...] = ()  # sequences kept out of training (see build_holdout)


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
    holdout: Sequence[str] = (),
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
        holdout: CamVid sequences (frame-name prefixes, e.g. ``("0001TP",)``) whose frames are
            removed from the training split; :func:`build_holdout` returns them for evaluation.
            The val split is left as it is.

    Raises:
        DataError: a CamVid root that is missing, in no known layout, or holds bad data; an
            unknown sequence (the message lists the known ones); a hold-out on synthetic data.
    """
    train_transform = build_transforms(True, size, random_scale, crop, flip)
    val_transform = build_transforms(False, size)
    holdout = tuple(holdout)
    if data is None or str(data) == "synthetic":
        if holdout:
            raise DataError(
                f"holding out sequences {list(holdout)} needs CamVid data: the synthetic "
                "scenes have no sequences (pass --data PATH/TO/CamVid)"
            )
        return _synthetic_datasets(size, synthetic_images, limit, seed, train_transform)
    root = Path(data).expanduser()
    train = CamVid(
        root,
        "train",
        transform=train_transform,
        cache=cache,
        limit=limit,
        exclude_sequences=holdout,
    )
    val = CamVid(root, "val", transform=val_transform, cache=cache, limit=limit)
    held = f"; sequences {', '.join(holdout)} held out of training" if holdout else ""
    description = (
        f"CamVid ({train.layout} layout) at {root}: {len(train)} train / {len(val)} val frames, "
        f"{NUM_CLASSES} classes + void{held}"
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
        holdout=holdout,
    )
    return train, val, info


def build_holdout(
    data: str | Path,
    holdout: Sequence[str],
    size: tuple[int, int] | None = None,
    *,
    cache: bool = True,
    limit: int | None = None,
) -> SegmentationDataset:
    """Every train and val frame of the ``holdout`` sequences, resized and normalised only.

    With ``build_datasets(..., holdout=holdout)`` none of these frames is trained on, so their
    mIoU says how a network does on streets it has not seen.

    Raises:
        DataError: no sequence given, an unknown sequence, or no frame of them in ``data``.
    """
    holdout = tuple(holdout)
    if not holdout:
        raise DataError("name at least one sequence to hold out")
    root = Path(data).expanduser()
    transform = build_transforms(False, size)
    parts = []
    for split in ("train", "val"):
        try:
            parts.append(CamVid(root, split, transform=transform, cache=cache, sequences=holdout))
        except DataError as err:
            if "unknown CamVid sequence" in str(err):
                raise
    if not parts:
        raise DataError(f"{root} holds no frame of the sequences {list(holdout)}")
    return HeldOutFrames(parts, limit)


class HeldOutFrames(SegmentationDataset):
    """The frames of held-out sequences, gathered from several CamVid splits."""

    def __init__(self, parts: Sequence[CamVid], limit: int | None = None) -> None:
        super().__init__(parts[0].transform)
        self.parts = list(parts)
        self.index = [(p, i) for p in self.parts for i in range(len(p))]
        if limit is not None:
            self.index = self.index[:limit]
        self.files = [part.files[i] for part, i in self.index]

    def __len__(self) -> int:
        return len(self.index)

    @property
    def description(self) -> str:
        sequences = sorted({sequence_of(image) for image, _ in self.files})
        return (
            f"held-out sequences {', '.join(sequences)}: {len(self)} frames from "
            f"{self.parts[0].root}, never trained on"
        )

    def raw(self, index: int):
        part, i = self.index[self._check_index(index)]
        return part.raw(i)


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
