"""What a trained checkpoint does: its scores on a split, its masks for images, overlays.

Example::

    >>> metrics = evaluate_checkpoint("runs/nano/best.pt", data="../shared/camvid", split="test")
    >>> print(metrics.miou, metrics.data_description)
    >>> predict_images("runs/nano/best.pt", ["street.png"], out_dir="predictions")
    [PosixPath('predictions/street_mask.png'), PosixPath('predictions/street_overlay.png')]

:func:`write_overlays` draws ``image | ground truth | prediction`` panels of a dataset's first
frames; :func:`jetseg.run.run_training` leaves them in a run's ``overlays/``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from jetseg.checkpoint import checkpoint_input_size, load_checkpoint
from jetseg.data import (
    NUM_CLASSES,
    CamVid,
    build_datasets,
    build_transforms,
    colorize,
    overlay,
    to_uint8_image,
)
from jetseg.fileio import open_image
from jetseg.results import EvalMetrics
from jetseg.train import base_dataset, evaluate, subset_indices

__all__ = ["evaluate_checkpoint", "predict_images", "write_overlays"]


def evaluate_checkpoint(
    checkpoint: str | Path,
    data: str | Path | None,
    split: str = "val",
    size: tuple[int, int] | None = None,
    *,
    device: str = "auto",
    batch_size: int = 8,
) -> EvalMetrics:
    """Per-class IoU, mIoU and pixel accuracy of a checkpoint on a whole split.

    ``data`` is a CamVid root (any split it holds: train, val, test) or ``None`` /
    ``"synthetic"`` for the synthetic street scenes (train or val; the returned metrics say
    that they are synthetic). ``size`` ``None`` evaluates at the size the checkpoint was
    trained at (the data's own size if it was trained at that).
    """
    model, config, state = load_checkpoint(checkpoint, device)
    size = checkpoint_input_size(state, size)
    if data is None or str(data) == "synthetic":
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


@torch.no_grad()
def write_overlays(
    model: nn.Module, dataset: Dataset, out_dir: str | Path, count: int
) -> list[Path]:
    """PNG panels ``image | ground truth | prediction`` (CamVid colours) of the first frames."""
    from PIL import Image

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    written = []
    try:
        for index in range(min(count, len(dataset))):
            image, label = dataset[index]
            logits = model(image.unsqueeze(0).to(device))  # (1, C, H, W)
            prediction = logits.argmax(dim=1)[0].cpu().numpy().astype(np.uint8)
            panels = [
                to_uint8_image(image),
                colorize(label.numpy().astype(np.uint8)),
                colorize(prediction),
            ]
            path = out / f"{_frame_name(dataset, index)}.png"
            Image.fromarray(np.concatenate(panels, axis=1)).save(path)  # (H, 3W, 3)
            written.append(path)
    finally:
        model.train(was_training)
    return written
