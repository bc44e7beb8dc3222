"""CamVid road scenes in the 11-class SegNet version, read from either common distribution.

Two layouts are accepted (``detect_layout`` tells them apart):

``"segnet"``: the copy distributed with the SegNet tutorial. Folders ``train/``, ``val/``,
``test/`` hold RGB frames (PNG or JPEG); ``trainannot/``, ``valannot/``, ``testannot/`` hold
single-channel 8-bit PNG labels with the same stem, values 0..10 for the classes and 11 for void.
List files ``train.txt`` etc. with lines ``image_path label_path`` take precedence over the
folders when present. Listed paths are relative to the root; SegNet's own absolute-looking paths
(``/SegNet/CamVid/train/x.png``) are read as their last two components under the root.

``"colour"``: the original 32-class release. RGB frames ``x.png`` and colour-coded masks
``x_L.png`` in the same or sibling folders (e.g. ``701_StillsRaw_full/`` and
``LabeledApproved_full/``), a ``label_colors.txt`` table (``R G B<tab>Name`` per line; the
``class_dict.csv`` of other mirrors is read too; without either the published standard table is
used). A split is a list file ``train.txt`` of frame stems, or a folder ``train/`` holding frames
and masks (masks may also sit in a sibling ``train_labels/`` or ``trainannot/``); split ``"all"``
takes every frame under the root. The 32 classes are merged onto the 11 by ``CAMVID32_TO_11``.

Example::

    >>> train = CamVid("../shared/camvid", "train", limit=2)
    >>> image, label = train[0]            # float32 (3, 360, 480), int64 (360, 480)
    >>> train.class_pixel_counts().shape   # void excluded
    (11,)
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from jetseg.data.classes import CAMVID_CLASSES, CAMVID_PALETTE, IGNORE_INDEX, NUM_CLASSES
from jetseg.fileio import FileTooLargeError, open_image

# The standard merge of the original 32 classes onto the 11 (Brostow et al. -> SegNet).
# Every name not listed here, Void included, becomes void.
CAMVID32_TO_11: dict[str, str] = {
    "Sky": "Sky",
    "Building": "Building",
    "Wall": "Building",
    "Tunnel": "Building",
    "Archway": "Building",
    "Bridge": "Building",
    "Column_Pole": "Pole",
    "TrafficCone": "Pole",
    "Road": "Road",
    "LaneMkgsDriv": "Road",
    "LaneMkgsNonDriv": "Road",
    "Sidewalk": "Sidewalk",
    "ParkingBlock": "Sidewalk",
    "RoadShoulder": "Sidewalk",
    "Tree": "Tree",
    "VegetationMisc": "Tree",
    "SignSymbol": "SignSymbol",
    "Misc_Text": "SignSymbol",
    "TrafficLight": "SignSymbol",
    "Fence": "Fence",
    "Car": "Car",
    "SUVPickupTruck": "Car",
    "Truck_Bus": "Car",
    "Train": "Car",
    "OtherMoving": "Car",
    "Pedestrian": "Pedestrian",
    "Child": "Pedestrian",
    "CartLuggagePram": "Pedestrian",
    "Animal": "Pedestrian",
    "Bicyclist": "Bicyclist",
    "MotorcycleScooter": "Bicyclist",
}

# The published label_colors.txt of the 32-class release, used when a root ships no table.
CAMVID32_COLOURS: tuple[tuple[tuple[int, int, int], str], ...] = (
    ((64, 128, 64), "Animal"),
    ((192, 0, 128), "Archway"),
    ((0, 128, 192), "Bicyclist"),
    ((0, 128, 64), "Bridge"),
    ((128, 0, 0), "Building"),
    ((64, 0, 128), "Car"),
    ((64, 0, 192), "CartLuggagePram"),
    ((192, 128, 64), "Child"),
    ((192, 192, 128), "Column_Pole"),
    ((64, 64, 128), "Fence"),
    ((128, 0, 192), "LaneMkgsDriv"),
    ((192, 0, 64), "LaneMkgsNonDriv"),
    ((128, 128, 64), "Misc_Text"),
    ((192, 0, 192), "MotorcycleScooter"),
    ((128, 64, 64), "OtherMoving"),
    ((64, 192, 128), "ParkingBlock"),
    ((64, 64, 0), "Pedestrian"),
    ((128, 64, 128), "Road"),
    ((128, 128, 192), "RoadShoulder"),
    ((0, 0, 192), "Sidewalk"),
    ((192, 128, 128), "SignSymbol"),
    ((128, 128, 128), "Sky"),
    ((64, 128, 192), "SUVPickupTruck"),
    ((0, 0, 64), "TrafficCone"),
    ((0, 64, 64), "TrafficLight"),
    ((192, 64, 128), "Train"),
    ((128, 128, 0), "Tree"),
    ((192, 128, 192), "Truck_Bus"),
    ((64, 0, 64), "Tunnel"),
    ((192, 192, 0), "VegetationMisc"),
    ((0, 0, 0), "Void"),
    ((64, 192, 0), "Wall"),
)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SPLITS = ("train", "val", "test")
COLOUR_TABLE_NAMES = ("label_colors.txt", "class_dict.csv")

Layout = Literal["segnet", "colour"]
PairTransform = Callable[[np.ndarray, np.ndarray], tuple[Any, Any]]


class DataError(ValueError):
    """A dataset on disk that cannot be used as it is; the message names the file."""


def colorize(label: np.ndarray) -> np.ndarray:
    """Paint a class-index map (H, W) with ``CAMVID_PALETTE``: uint8 (H, W, 3), void black."""
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"colorize expects a (H, W) label map, got shape {label.shape}")
    bad = np.unique(label[(label < 0) | (label > IGNORE_INDEX)])
    if bad.size:
        raise ValueError(f"label values must be 0..{IGNORE_INDEX}, got {bad[:10].tolist()}")
    return CAMVID_PALETTE[label.astype(np.intp)]


def overlay(image_uint8: np.ndarray, label: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend the colourised label over an RGB uint8 image; void pixels keep the image."""
    image = np.asarray(image_uint8)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"overlay expects a uint8 (H, W, 3) image, got {image.dtype} {image.shape}"
        )
    if image.shape[:2] != np.shape(label):
        raise ValueError(f"image {image.shape[:2]} and label {np.shape(label)} sizes differ")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    colours = colorize(label).astype(np.float32)
    blended = (1.0 - alpha) * image.astype(np.float32) + alpha * colours
    void = np.asarray(label) == IGNORE_INDEX
    blended[void] = image[void]
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


class SegmentationDataset(Dataset):
    """Base of the datasets here: frames of the 11 CamVid classes plus void.

    Subclasses implement ``__len__`` and ``raw(index)``, which returns the decoded frame as
    ``(image uint8 (H, W, 3), label uint8 (H, W))`` with label values in ``0..NUM_CLASSES``
    (``IGNORE_INDEX`` = void). Everything else is shared:

    - ``dataset[i]`` passes ``raw(i)`` through ``transform`` and returns
      ``(image float32 tensor (3, H, W), label int64 tensor (H, W))``. A transform works on the
      uint8 pair (see ``jetseg.data.transforms``); if it returns numpy arrays, or when there is no
      transform, the image is normalised with the ImageNet mean and std.
    - ``class_pixel_counts()`` counts the pixels of each class over the raw labels (void
      excluded), as the effective-number class weights of JetLoss need.
    - ``description`` says in one line what the data is; it is printed and stored with results.
    """

    num_classes: int = NUM_CLASSES
    class_names: tuple[str, ...] = CAMVID_CLASSES
    ignore_index: int = IGNORE_INDEX

    def __init__(self, transform: PairTransform | None = None) -> None:
        # Imported here: transforms imports the class set from this module.
        from jetseg.data.transforms import Normalize

        self.transform = transform
        self._to_tensors = Normalize()
        self._pixel_counts: np.ndarray | None = None
        # The output of the transform's leading fixed-size Resize, per index: it is the same
        # every epoch, so an epoch resizes each frame once (for its random scale) instead of
        # twice. uint8 at the training size, a few MB for CamVid.
        self._resized: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        raise NotImplementedError

    def raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The decoded frame ``(image uint8 (H, W, 3), label uint8 (H, W))``, untransformed."""
        raise NotImplementedError

    @property
    def description(self) -> str:
        raise NotImplementedError

    def _check_index(self, index: int) -> int:
        length = len(self)
        if not -length <= index < length:
            raise IndexError(f"index {index} out of range for {length} frames")
        return index % length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        from jetseg.data.transforms import Compose, Resize

        transform = self.transform
        steps = transform.transforms if isinstance(transform, Compose) else None
        if steps and isinstance(steps[0], Resize):
            key = self._check_index(index)
            if key not in self._resized:
                self._resized[key] = steps[0](*self.raw(key))
            image, label = Compose(steps[1:])(*self._resized[key])
        else:
            image, label = self.raw(index)
            if transform is not None:
                image, label = transform(image, label)
        if isinstance(image, np.ndarray):
            image, label = self._to_tensors(image, label)
        return image, label

    def class_pixel_counts(self) -> np.ndarray:
        """Pixels per class over every raw label, int64 (NUM_CLASSES,), void excluded."""
        if self._pixel_counts is None:
            counts = np.zeros(NUM_CLASSES + 1, dtype=np.int64)
            for index in range(len(self)):
                _, label = self.raw(index)
                counts += np.bincount(label.ravel(), minlength=NUM_CLASSES + 1)[: NUM_CLASSES + 1]
            self._pixel_counts = counts[:NUM_CLASSES]
        return self._pixel_counts.copy()


# --- reading files ---------------------------------------------------------------------------


def _open_image(path: Path) -> Image.Image:
    """A frame or label, decoded; one over the size limits of :func:`jetseg.fileio.open_image`
    (bytes on disk, pixels in its header) is refused before it is decoded."""
    try:
        image = open_image(path)
    except FileNotFoundError as error:
        raise DataError(f"file {path} does not exist") from error
    except FileTooLargeError as error:
        raise DataError(str(error)) from None
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as error:
        raise DataError(f"cannot read {path}: {error}") from error
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as error:
        image.close()
        raise DataError(f"cannot read {path}: {error}") from error
    return image


def _read_rgb(path: Path) -> np.ndarray:
    image = _open_image(path)
    return np.asarray(image.convert("RGB") if image.mode != "RGB" else image)


def _read_index_label(path: Path) -> np.ndarray:
    image = _open_image(path)
    if image.mode not in ("L", "P"):
        raise DataError(
            f"label {path} must be a single-channel 8-bit PNG of class indices, "
            f"got PIL mode {image.mode!r}"
        )
    label = np.array(image, dtype=np.uint8)
    bad = np.unique(label[label > IGNORE_INDEX])
    if bad.size:
        raise DataError(
            f"label {path} has values {bad[:10].tolist()} outside the class set "
            f"0..{NUM_CLASSES - 1} (and {IGNORE_INDEX} = void)"
        )
    return label


class ColourTable:
    """Maps mask colours to the 11 classes through the 32-class names (vectorised lookup)."""

    def __init__(self, entries: Sequence[tuple[tuple[int, int, int], str]], source: str) -> None:
        self.source = source
        class_of: dict[int, int] = {}
        names: dict[int, str] = {}
        for (red, green, blue), name in entries:
            code = (red << 16) | (green << 8) | blue
            index = merged_class_index(name)
            if code in class_of and class_of[code] != index:
                raise DataError(
                    f"{source}: colour {(red, green, blue)} is given to both {names[code]!r} "
                    f"and {name!r}, which merge to different classes"
                )
            class_of[code], names[code] = index, name
        self._codes = np.array(sorted(class_of), dtype=np.int64)
        self._classes = np.array([class_of[c] for c in self._codes.tolist()], dtype=np.uint8)

    def __len__(self) -> int:
        return len(self._codes)

    def to_classes(self, rgb: np.ndarray, path: Path | str) -> np.ndarray:
        """(H, W, 3) uint8 mask -> (H, W) uint8 class indices; unknown colours raise."""
        rgb = rgb.astype(np.int64)
        codes = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]  # (H, W)
        position = np.searchsorted(self._codes, codes).clip(0, len(self._codes) - 1)
        known = self._codes[position] == codes
        if not known.all():
            unknown = np.unique(codes[~known])[:5].tolist()
            colours = [((c >> 16) & 255, (c >> 8) & 255, c & 255) for c in unknown]
            raise DataError(
                f"mask {path} has colours {colours} that are not in the colour table "
                f"({self.source})"
            )
        return self._classes[position]


def _name_key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


_MERGE_BY_KEY = {_name_key(k): CAMVID_CLASSES.index(v) for k, v in CAMVID32_TO_11.items()}


def merged_class_index(name: str) -> int:
    """The 11-class index of a 32-class CamVid name (spacing/case-insensitive); void if unlisted."""
    return _MERGE_BY_KEY.get(_name_key(name), IGNORE_INDEX)


def _parse_label_colors(path: Path) -> ColourTable:
    entries = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        tokens = line.split()
        try:
            red, green, blue = (int(t) for t in tokens[:3])
        except ValueError:
            red = green = blue = -1
        if len(tokens) < 4 or not all(0 <= v <= 255 for v in (red, green, blue)):
            raise DataError(f"{path} line {number}: expected 'R G B<tab>Name', got {line!r}")
        entries.append(((red, green, blue), " ".join(tokens[3:])))
    if not entries:
        raise DataError(f"{path} lists no colours")
    return ColourTable(entries, str(path))


def _parse_class_dict(path: Path) -> ColourTable:
    entries = []
    with path.open(newline="", encoding="utf-8") as handle:
        for number, row in enumerate(csv.DictReader(handle), start=2):
            try:
                colour = (int(row["r"]), int(row["g"]), int(row["b"]))
                entries.append((colour, row["name"]))
            except (KeyError, TypeError, ValueError) as error:
                raise DataError(
                    f"{path} line {number}: expected columns name,r,g,b, got {row}"
                ) from error
    if not entries:
        raise DataError(f"{path} lists no colours")
    return ColourTable(entries, str(path))


def _find_colour_table_file(root: Path) -> Path | None:
    for folder in (root, *sorted(p for p in root.iterdir() if p.is_dir())):
        for name in COLOUR_TABLE_NAMES:
            if (folder / name).is_file():
                return folder / name
    return None


def load_colour_table(root: str | Path) -> ColourTable:
    """The colour table of a colour-layout root: its own file, or the standard one."""
    path = _find_colour_table_file(Path(root))
    if path is None:
        return ColourTable(CAMVID32_COLOURS, "built-in standard CamVid label_colors.txt")
    if path.suffix == ".csv":
        return _parse_class_dict(path)
    return _parse_label_colors(path)


# --- finding the frames of a split -----------------------------------------------------------


def _data_lines(list_file: Path) -> list[tuple[int, list[str]]]:
    try:
        text = list_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read list file {list_file}: {error}") from error
    lines = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip() and not line.lstrip().startswith("#"):
            lines.append((number, line.replace("\\", "/").split()))
    return lines


def _resolve_listed(root: Path, token: str) -> Path:
    path = Path(token)
    if path.is_absolute() and path.is_file():
        return path
    direct = root / path.relative_to(path.anchor) if path.is_absolute() else root / path
    if direct.is_file() or len(path.parts) < 2:
        return direct
    # SegNet's lists say /SegNet/CamVid/train/x.png: keep the last two components.
    return root / path.parts[-2] / path.parts[-1]


def _segnet_pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
    list_file = root / f"{split}.txt"
    pairs: list[tuple[Path, Path]] = []
    if list_file.is_file():
        for number, tokens in _data_lines(list_file):
            if len(tokens) != 2:
                raise DataError(
                    f"{list_file} line {number}: expected 'image_path label_path', got {tokens}"
                )
            image, label = (_resolve_listed(root, t) for t in tokens)
            if not image.is_file():
                raise DataError(f"{list_file} line {number}: image {image} does not exist")
            if not label.is_file():
                raise DataError(
                    f"{list_file} line {number}: missing label {label} for image {image}"
                )
            pairs.append((image, label))
    else:
        image_dir, label_dir = root / split, root / f"{split}annot"
        if not image_dir.is_dir():
            raise DataError(
                f"split {split!r} of {root} is empty: there is neither {list_file.name} "
                f"nor a folder {split}/"
            )
        if not label_dir.is_dir():
            raise DataError(f"{image_dir} has no label folder {label_dir}")
        for image in sorted(image_dir.iterdir()):
            if image.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            label = label_dir / f"{image.stem}.png"
            if not label.is_file():
                raise DataError(f"missing label {label} for image {image}")
            pairs.append((image, label))
    if not pairs:
        raise DataError(f"split {split!r} of {root} is empty: no frames found")
    return pairs


def sequence_of(path: str | Path) -> str:
    """The driving sequence of a CamVid frame: its name up to the first ``_``.

    ``0001TP_006690.png`` -> ``0001TP``, ``Seq05VD_f00000.png`` -> ``Seq05VD``. CamVid's five
    sequences are 0001TP, 0006R0, 0016E5 (the SegNet val split is all 0016E5, which also
    supplies 204 of its 367 train frames) and Seq05VD.
    """
    return Path(path).name.split("_", 1)[0]


def known_sequences(root: str | Path) -> list[str]:
    """The sequences that hold at least one frame of the train or val split of ``root``."""
    root = Path(root).expanduser()
    layout = detect_layout(root)
    found: set[str] = set()
    for split in ("train", "val"):
        try:
            pairs = _segnet_pairs(root, split) if layout == "segnet" else _colour_pairs(root, split)
        except DataError:
            continue
        found.update(sequence_of(image) for image, _ in pairs)
    return sorted(found)


def _select_sequences(
    root: Path,
    files: list[tuple[Path, Path]],
    sequences: Sequence[str] | None,
    exclude: Sequence[str],
    split: str,
) -> list[tuple[Path, Path]]:
    known = known_sequences(root)
    for name in [*(sequences or ()), *exclude]:
        if name not in known:
            raise DataError(
                f"unknown CamVid sequence {name!r} for {root}; its sequences are "
                f"{', '.join(known)} (the frame-name prefix before the first '_')"
            )
    kept = [
        pair
        for pair in files
        if (sequences is None or sequence_of(pair[0]) in sequences)
        and sequence_of(pair[0]) not in exclude
    ]
    if not kept:
        raise DataError(
            f"split {split!r} of {root} has no frames left after selecting sequences "
            f"{list(sequences) if sequences is not None else 'all'} minus {list(exclude)}"
        )
    return kept


def _is_mask(path: Path) -> bool:
    return path.suffix.lower() == ".png" and path.stem.endswith("_L")


def _is_frame(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.stem.endswith("_L")


def _index_by_stem(paths: Sequence[Path], kind: str) -> dict[str, Path]:
    index: dict[str, Path] = {}
    for path in paths:
        stem = path.stem[:-2] if _is_mask(path) else path.stem
        if stem in index:
            raise DataError(f"two {kind}s for frame {stem!r}: {index[stem]} and {path}")
        index[stem] = path
    return index


def _colour_files(folder: Path, recursive: bool) -> tuple[dict[str, Path], dict[str, Path]]:
    found = folder.rglob("*") if recursive else folder.iterdir()
    files = sorted(p for p in found if p.is_file() and not p.name.startswith("."))
    frames = _index_by_stem([p for p in files if _is_frame(p)], "image")
    masks = _index_by_stem([p for p in files if _is_mask(p)], "mask")
    return frames, masks


def _colour_pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
    list_file, split_dir = root / f"{split}.txt", root / split
    pairs: list[tuple[Path, Path]] = []
    if list_file.is_file():
        frames, masks = _colour_files(root, recursive=True)
        for number, tokens in _data_lines(list_file):
            stem = Path(tokens[0]).stem
            stem = stem[:-2] if stem.endswith("_L") else stem
            if stem not in frames:
                raise DataError(f"{list_file} line {number}: no image for frame {stem!r} in {root}")
            if stem not in masks:
                raise DataError(
                    f"missing label {stem}_L.png for image {frames[stem]} "
                    f"(listed in {list_file} line {number})"
                )
            pairs.append((frames[stem], masks[stem]))
    elif split_dir.is_dir() or split == "all":
        folder = split_dir if split_dir.is_dir() else root
        frames, masks = _colour_files(folder, recursive=split == "all")
        for sibling in (f"{split}_labels", f"{split}labels", f"{split}annot", f"{split}_annot"):
            if (root / sibling).is_dir():
                masks.update(_colour_files(root / sibling, recursive=False)[1])
        for stem, frame in sorted(frames.items()):
            if stem not in masks:
                raise DataError(f"missing label {stem}_L.png for image {frame}")
            pairs.append((frame, masks[stem]))
    else:
        raise DataError(
            f"split {split!r} of {root} is empty: there is neither {list_file.name} nor a folder "
            f"{split}/ (use split='all' for every frame under the root)"
        )
    if not pairs:
        raise DataError(f"split {split!r} of {root} is empty: no frames found")
    return pairs


def detect_layout(root: str | Path) -> Layout:
    """Which CamVid distribution ``root`` holds: ``"segnet"`` or ``"colour"`` (see module doc)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"CamVid root {root} is not a directory")
    if any((root / f"{split}annot").is_dir() for split in SPLITS):
        return "segnet"
    if _find_colour_table_file(root) is not None:
        return "colour"
    for split in SPLITS:
        list_file = root / f"{split}.txt"
        if list_file.is_file():
            lines = _data_lines(list_file)
            if lines and len(lines[0][1]) == 2:
                return "segnet"
    if next(root.glob("*_L.png"), None) or next(root.glob("*/*_L.png"), None):
        return "colour"
    raise DataError(
        f"{root} holds no CamVid layout: expected either the SegNet layout (train/ + trainannot/ "
        f"or train.txt with 'image label' lines) or the 32-class colour layout (frames x.png with "
        f"masks x_L.png, optionally label_colors.txt)"
    )


class CamVid(SegmentationDataset):
    """One split of CamVid in the 11-class SegNet version, decoded once into memory.

    Args:
        root: the dataset folder, in either layout (see the module docstring).
        split: ``"train"``, ``"val"``, ``"test"`` (or ``"all"`` in the colour layout).
        transform: applied to the uint8 pair on every access (``jetseg.data.transforms``);
            ``None`` normalises only.
        cache: decode every frame at construction and keep it (uint8) in memory, so that bad
            data fails at once and epochs cost no decoding. With ``False`` frames are decoded
            on access and bad data is only found then.
        limit: keep only the first ``limit`` frames of the split (quick runs, tests).
        sequences: keep only the frames of these driving sequences (frame-name prefixes such as
            ``0001TP``, see :func:`sequence_of`); ``None`` keeps all.
        exclude_sequences: drop the frames of these sequences (a held-out sequence must never
            be trained on). Every name must be a sequence of the root, or :class:`DataError`
            lists the ones it has.

    Raises:
        DataError: naming the file, for a missing label, an image/label size mismatch, a label
            value or mask colour outside the class set, an unreadable file, or an empty split.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transform: PairTransform | None = None,
        cache: bool = True,
        limit: int | None = None,
        sequences: Sequence[str] | None = None,
        exclude_sequences: Sequence[str] = (),
    ) -> None:
        super().__init__(transform)
        self.root = Path(root).expanduser()
        self.split = split
        self.layout: Layout = detect_layout(self.root)
        self.colour_table: ColourTable | None = None
        if self.layout == "segnet":
            files = _segnet_pairs(self.root, split)
        else:
            files = _colour_pairs(self.root, split)
            self.colour_table = load_colour_table(self.root)
        if sequences is not None or exclude_sequences:
            files = _select_sequences(self.root, files, sequences, exclude_sequences, split)
        if limit is not None:
            if limit < 1:
                raise ValueError(f"limit must be a positive number of frames, got {limit}")
            files = files[:limit]
        self.files: list[tuple[Path, Path]] = files
        self._frames: list[tuple[np.ndarray, np.ndarray]] | None = None
        if cache:
            self._frames = self._decode_all()

    def __len__(self) -> int:
        return len(self.files)

    @property
    def description(self) -> str:
        table = f", colours from {self.colour_table.source}" if self.colour_table else ""
        return (
            f"CamVid {self.split} split: {len(self)} frames from {self.root} "
            f"({self.layout} layout{table})"
        )

    def raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        index = self._check_index(index)
        if self._frames is not None:
            return self._frames[index]
        return self._decode(index)

    def _decode(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image_path, label_path = self.files[index]
        image = _read_rgb(image_path)
        if self.colour_table is None:
            label = _read_index_label(label_path)
        else:
            label = self.colour_table.to_classes(_read_rgb(label_path), label_path)
        if image.shape[:2] != label.shape:
            raise DataError(
                f"image {image_path} is {image.shape[1]}x{image.shape[0]} but its label "
                f"{label_path} is {label.shape[1]}x{label.shape[0]}"
            )
        # Frames are shared between accesses (and cached): nothing may write into them.
        image.setflags(write=False)
        label.setflags(write=False)
        return image, label

    def _decode_all(self) -> list[tuple[np.ndarray, np.ndarray]]:
        # PIL releases the GIL while decoding, so threads overlap the JPEG/PNG work.
        workers = min(8, os.cpu_count() or 1, len(self.files))
        if workers <= 1:
            return [self._decode(i) for i in range(len(self.files))]
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(self._decode, range(len(self.files))))
