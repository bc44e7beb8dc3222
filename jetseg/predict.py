"""What a trained checkpoint does: its scores on a split, its masks for images, overlays.

Example::

    >>> metrics = evaluate_checkpoint("runs/nano/best.pt", data="../shared/camvid", split="test")
    >>> print(metrics.miou, metrics.data_description)
    >>> predict_images("runs/nano/best.pt", ["street.png"], out_dir="predictions")
    [PosixPath('predictions/street_mask.png'), PosixPath('predictions/street_overlay.png')]

:func:`write_overlays` draws ``image | truth | prediction`` panels of a dataset's first
frames, titled, above a legend of the class colours (:func:`draw_panels`, laid out by
:func:`panel_layout`); :func:`jetseg.run.run_training` leaves them in a run's ``overlays/``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from jetseg.checkpoint import checkpoint_input_size, load_checkpoint
from jetseg.data import (
    CAMVID_CLASSES,
    CAMVID_PALETTE,
    IGNORE_INDEX,
    NUM_CLASSES,
    CamVid,
    build_datasets,
    build_holdout,
    build_transforms,
    colorize,
    overlay,
    to_uint8_image,
)
from jetseg.fileio import open_image
from jetseg.results import EvalMetrics
from jetseg.train import base_dataset, evaluate, subset_indices

__all__ = [
    "PANEL_TITLES",
    "PanelLayout",
    "draw_panels",
    "evaluate_checkpoint",
    "panel_layout",
    "predict_images",
    "write_overlays",
]


def evaluate_checkpoint(
    checkpoint: str | Path,
    data: str | Path | None,
    split: str = "val",
    size: tuple[int, int] | None = None,
    *,
    device: str = "auto",
    batch_size: int = 8,
    holdout: Sequence[str] = (),
) -> EvalMetrics:
    """Per-class IoU, mIoU and pixel accuracy of a checkpoint on a whole split.

    With ``holdout`` (CamVid sequences) it evaluates every train and val frame of those
    sequences instead of ``split`` (:func:`jetseg.data.build_holdout`).

    ``data`` is a CamVid root (any split it holds: train, val, test) or ``None`` /
    ``"synthetic"`` for the synthetic street scenes (train or val; the returned metrics say
    that they are synthetic). ``size`` ``None`` evaluates at the size the checkpoint was
    trained at (the data's own size if it was trained at that).
    """
    model, config, state = load_checkpoint(checkpoint, device)
    size = checkpoint_input_size(state, size)
    if holdout:
        if data is None or str(data) == "synthetic":
            raise ValueError("held-out sequences need CamVid data (--data PATH/TO/CamVid)")
        dataset = build_holdout(data, tuple(holdout), size)
        description, synthetic = dataset.description, False
    elif data is None or str(data) == "synthetic":
        if split not in ("train", "val"):
            raise ValueError(f"the synthetic data has the splits train and val, not {split!r}")
        train, val, info = build_datasets(None, size)
        dataset = val if split == "val" else train
        description, synthetic = info.description, True
    else:
        dataset = CamVid(data, split, transform=build_transforms(False, size))
        description, synthetic = dataset.description, False
    if config.num_classes != dataset.num_classes:
        raise ValueError(
            f"{checkpoint} predicts {config.num_classes} classes but {description} has "
            f"{dataset.num_classes}"
        )
    torch_device = next(model.parameters()).device
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    metrics, _ = evaluate(
        model,
        loader,
        device=torch_device,
        num_classes=config.num_classes,
        ignore_index=dataset.ignore_index,
        class_names=dataset.class_names,
    )
    return EvalMetrics(
        per_class_iou=metrics.per_class_iou,
        miou=metrics.miou,
        pixel_accuracy=metrics.pixel_accuracy,
        class_names=metrics.class_names,
        split=split,
        frames=len(dataset),
        data_description=description,
        synthetic_data=synthetic,
    )


def _read_image(path: Path) -> np.ndarray:
    from PIL import UnidentifiedImageError

    try:
        with open_image(path) as image:  # refuses a file or header too large to decode
            image.load()
            return np.asarray(image.convert("RGB"))
    except FileNotFoundError as err:
        raise FileNotFoundError(f"image {path} does not exist") from err
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as err:
        raise ValueError(f"cannot read image {path}: {err}") from err


def _check_images(paths: Sequence[Path]) -> None:
    """Fail before writing anything: every image exists, is readable, names are unique."""
    from PIL import UnidentifiedImageError

    stems: dict[str, Path] = {}
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"image {path} does not exist")
        try:
            with open_image(path) as image:
                image.verify()
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as err:
            raise ValueError(f"cannot read image {path}: {err}") from err
        if path.stem in stems:
            raise ValueError(
                f"images {stems[path.stem]} and {path} would write the same output files "
                f"({path.stem}_mask.png); rename one"
            )
        stems[path.stem] = path


@torch.no_grad()
def predict_images(
    checkpoint: str | Path,
    images: Sequence[str | Path],
    out_dir: str | Path,
    size: tuple[int, int] | None = None,
    *,
    device: str = "auto",
) -> list[Path]:
    """Colour masks and overlays for images: writes ``NAME_mask.png`` and ``NAME_overlay.png``.

    Each image is fed at ``size`` (``None``: its own size) and the prediction is resized back,
    so the mask always matches the image. Masks use the CamVid colours. Every image is checked
    before anything is written; a missing or unreadable one raises naming it.
    """
    paths = [Path(p) for p in images]
    if not paths:
        raise ValueError("no images given")
    _check_images(paths)
    model, config, _ = load_checkpoint(checkpoint, device)
    if config.num_classes > NUM_CLASSES:
        raise ValueError(
            f"{checkpoint} predicts {config.num_classes} classes; the colour masks use the "
            f"{NUM_CLASSES}-class CamVid palette"
        )
    torch_device = next(model.parameters()).device
    transform = build_transforms(False, size)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    from PIL import Image

    for path in paths:
        rgb = _read_image(path)
        height, width = rgb.shape[:2]
        tensor, _ = transform(rgb, np.zeros((height, width), dtype=np.uint8))
        logits = model(tensor.unsqueeze(0).to(torch_device))  # (1, C, h, w)
        if logits.shape[-2:] != (height, width):
            logits = F.interpolate(
                logits, size=(height, width), mode="bilinear", align_corners=False
            )
        prediction = logits.argmax(dim=1)[0].cpu().numpy().astype(np.uint8)  # (H, W)
        mask_path = out / f"{path.stem}_mask.png"
        overlay_path = out / f"{path.stem}_overlay.png"
        Image.fromarray(colorize(prediction)).save(mask_path)
        Image.fromarray(overlay(rgb, prediction)).save(overlay_path)
        written += [mask_path, overlay_path]
    return written


def _frame_name(dataset: Dataset, index: int) -> str:
    """A file-name-safe name of frame ``index``: its file stem when the data has files."""
    base = base_dataset(dataset)
    files = getattr(base, "files", None)
    if files is None:
        return f"{index:03d}"
    stem = Path(files[subset_indices(dataset)[index]][0]).stem
    return f"{index:03d}_{stem}"


# ---------------------------------------------------------------------------------------------
# overlay panels: titles, image | truth | prediction, legend

PANEL_TITLES = ("image", "truth", "prediction")
_BACKGROUND = (32, 32, 32)
_TEXT = (240, 240, 240)
_OUTLINE = (160, 160, 160)  # around each swatch, so black (void) and dark classes show


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # scalable where Pillow has FreeType
    except (TypeError, OSError):  # older Pillow or no FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _legend_entries(class_names: Sequence[str]) -> list[tuple[str, tuple[int, int, int]]]:
    def colour(index: int) -> tuple[int, int, int]:
        red, green, blue = (int(c) for c in CAMVID_PALETTE[index])
        return red, green, blue

    return [(name, colour(i)) for i, name in enumerate(class_names)] + [
        ("void", colour(IGNORE_INDEX))
    ]


@dataclass(frozen=True)
class PanelLayout:
    """Where the parts of an overlay PNG lie, for frames of ``height`` x ``width``.

    From the top: a strip of ``title_px`` with the panel titles, the three panels side by side
    (``image | truth | prediction``, each ``width`` wide), then ``legend_px`` of legend: one
    swatch and name per class (and void), in rows as wide as the three panels.
    """

    height: int
    width: int
    font_px: int
    title_px: int
    legend_px: int
    legend_rows: tuple[tuple[int, ...], ...]  # entry indices per legend row

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` of the whole PNG, as PIL's ``Image.size`` gives it."""
        return 3 * self.width, self.title_px + self.height + self.legend_px

    @property
    def panels_top(self) -> int:
        """The first pixel row of the panels."""
        return self.title_px


def panel_layout(
    height: int, width: int, class_names: Sequence[str] = CAMVID_CLASSES
) -> PanelLayout:
    """The :class:`PanelLayout` of :func:`draw_panels` for ``height`` x ``width`` frames."""
    from PIL import Image, ImageDraw

    font_px = int(np.clip(round(height / 18), 10, 24))  # readable, and small beside the frame
    font = _font(font_px)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_px = font_px + max(4, font_px // 2)
    swatch = font_px
    rows: list[list[int]] = [[]]
    used = 0
    for index, (name, _) in enumerate(_legend_entries(class_names)):
        entry = swatch + 4 + int(np.ceil(measure.textlength(name, font=font))) + font_px
        if rows[-1] and used + entry > 3 * width:
            rows.append([])
            used = 0
        rows[-1].append(index)
        used += entry
    return PanelLayout(
        height=height,
        width=width,
        font_px=font_px,
        title_px=line_px,
        legend_px=len(rows) * line_px + max(2, font_px // 3),
        legend_rows=tuple(tuple(row) for row in rows),
    )


def draw_panels(
    image: np.ndarray,
    truth: np.ndarray,
    prediction: np.ndarray,
    class_names: Sequence[str] = CAMVID_CLASSES,
) -> np.ndarray:
    """One overlay PNG's pixels: titles, ``image | truth | prediction``, the colour legend.

    ``image`` is uint8 (H, W, 3); ``truth`` and ``prediction`` are class-index maps (H, W),
    drawn in the CamVid colours (void black). Returns uint8 (rows, 3W, 3) laid out as
    :func:`panel_layout` says.
    """
    from PIL import Image, ImageDraw

    height, width = image.shape[:2]
    if np.shape(truth) != (height, width) or np.shape(prediction) != (height, width):
        raise ValueError(
            f"image {(height, width)}, truth {np.shape(truth)} and prediction "
            f"{np.shape(prediction)} must have one size"
        )
    layout = panel_layout(height, width, class_names)
    canvas = Image.new("RGB", layout.size, _BACKGROUND)
    panels = np.concatenate([image, colorize(truth), colorize(prediction)], axis=1)  # (H, 3W, 3)
    canvas.paste(Image.fromarray(panels), (0, layout.panels_top))
    draw = ImageDraw.Draw(canvas)
    font = _font(layout.font_px)
    pad = max(2, layout.font_px // 4)
    for i, title in enumerate(PANEL_TITLES):
        left = i * width + max(0, (width - int(draw.textlength(title, font=font))) // 2)
        draw.text((left, pad), title, fill=_TEXT, font=font)
    entries = _legend_entries(class_names)
    swatch = layout.font_px
    top = layout.panels_top + height + pad
    for row in layout.legend_rows:
        left = pad
        for index in row:
            name, colour = entries[index]
            box = (left, top + 1, left + swatch - 1, top + swatch)
            draw.rectangle(box, fill=colour, outline=_OUTLINE)
            draw.text((left + swatch + 4, top), name, fill=_TEXT, font=font)
            left += swatch + 4 + int(np.ceil(draw.textlength(name, font=font))) + layout.font_px
        top += layout.title_px
    return np.asarray(canvas)


@torch.no_grad()
def write_overlays(
    model: nn.Module, dataset: Dataset, out_dir: str | Path, count: int
) -> list[Path]:
    """PNG panels ``image | truth | prediction`` (CamVid colours) of the first frames, titled,
    with a legend of the class colours (see :func:`draw_panels`)."""
    from PIL import Image

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = next(model.parameters()).device
    class_names = getattr(base_dataset(dataset), "class_names", CAMVID_CLASSES)
    was_training = model.training
    model.eval()
    written = []
    try:
        for index in range(min(count, len(dataset))):
            image, label = dataset[index]
            logits = model(image.unsqueeze(0).to(device))  # (1, C, H, W)
            prediction = logits.argmax(dim=1)[0].cpu().numpy().astype(np.uint8)
            pixels = draw_panels(
                to_uint8_image(image), label.numpy().astype(np.uint8), prediction, class_names
            )
            path = out / f"{_frame_name(dataset, index)}.png"
            Image.fromarray(pixels).save(path)
            written.append(path)
    finally:
        model.train(was_training)
    return written
