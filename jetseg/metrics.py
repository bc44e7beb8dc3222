"""Segmentation metrics: count first, reduce second.

Every score comes from one confusion matrix (rows = ground truth, columns = prediction) that is
accumulated over the whole split; per-class IoU, mIoU and pixel accuracy are read off it at the
end. Averaging per-image IoUs would weight a small image's rare class as much as a whole split's,
so we never do that. Void pixels (``ignore_index``, 11 for CamVid) are dropped before counting.

A worked example with three classes, class 2 absent from both the labels and the prediction:

>>> import torch
>>> from jetseg.metrics import ConfusionMatrix
>>> target = torch.tensor([[0, 0, 1, 11]])  # (H, W); 11 is void
>>> pred = torch.tensor([[0, 1, 1, 0]])  # the void pixel's prediction is not counted
>>> metric = ConfusionMatrix(num_classes=3, class_names=("sky", "road", "car"))
>>> metric.update(pred, target)
>>> metric.matrix
tensor([[1, 1, 0],
        [0, 1, 0],
        [0, 0, 0]])

Class 0 ("sky"): TP = 1, FN = 1 (a sky pixel called road), FP = 0, so IoU = 1 / (1 + 0 + 1) = 0.5.
Class 1 ("road"): TP = 1, FP = 1, FN = 0, so IoU = 0.5. Class 2 ("car") is in neither the labels
nor the prediction: its union is 0, its IoU is undefined (NaN) and it is left out of the mean.

>>> scores = metric.compute()
>>> scores.per_class_iou
(0.5, 0.5, nan)
>>> scores.miou, round(scores.pixel_accuracy, 4)
(0.5, 0.6667)
>>> scores.to_dict()["per_class_iou"]
[0.5, 0.5, None]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "ConfusionMatrix",
    "SegMetrics",
    "bootstrap_miou",
    "confusion_matrix",
    "frame_counts",
    "iou_from_confusion",
    "miou_from_confusion",
    "pixel_accuracy_from_confusion",
]


def _check_num_classes(num_classes: int) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")


def _check_ignore_index(ignore_index: int | None) -> None:
    if ignore_index is not None and (
        isinstance(ignore_index, bool) or not isinstance(ignore_index, int)
    ):
        raise ValueError(f"ignore_index must be an integer or None, got {ignore_index!r}")


def confusion_matrix(
    pred: Tensor, target: Tensor, num_classes: int, ignore_index: int | None = 11
) -> Tensor:
    """Count (ground truth, prediction) pairs over all labelled pixels.

    Args:
        pred: predicted class indices, (B, H, W) or (H, W), any integer dtype.
        target: ground-truth class indices, same shape as ``pred``.
        num_classes: number of real classes C (void excluded).
        ignore_index: label of void pixels; ``None`` when there is none. Pixels whose target is
            ``ignore_index`` or outside ``[0, C)`` are dropped; their prediction is not checked.

    Returns:
        int64 tensor (C, C) on ``pred``'s device; entry ``[i, j]`` is the number of pixels of
        true class i predicted as class j (rows = ground truth, columns = prediction).

    Raises:
        ValueError: shapes differ, ``pred`` is floating point (pass logits to
            :class:`ConfusionMatrix` instead, or argmax them), or a labelled pixel's prediction
            is outside ``[0, C)``.
    """
    _check_num_classes(num_classes)
    _check_ignore_index(ignore_index)
    if pred.shape != target.shape:
        raise ValueError(
            f"pred and target must have the same shape, got pred {tuple(pred.shape)} and "
            f"target {tuple(target.shape)}"
        )
    if pred.is_floating_point() or pred.is_complex() or pred.dtype == torch.bool:
        raise ValueError(
            f"pred must hold integer class indices, got dtype {pred.dtype}; "
            "argmax logits over the class axis first (ConfusionMatrix.update does this)"
        )
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise ValueError(f"target must hold integer class indices, got dtype {target.dtype}")

    # int64 before multiplying: uint8 labels times C would wrap around.
    pred = pred.to(device=target.device, dtype=torch.long)
    target = target.long()
    labelled = (target >= 0) & (target < num_classes)
    if ignore_index is not None:
        labelled &= target != ignore_index

    bad_pred = labelled & ((pred < 0) | (pred >= num_classes))
    if bool(bad_pred.any()):
        found = torch.unique(pred[bad_pred])[:10].tolist()
        raise ValueError(
            f"pred holds class indices outside [0, {num_classes}) at labelled pixels: {found}"
        )

    # Unlabelled pixels go to one spare bin past the C*C real ones, which is then cut off; this
    # keeps the count to a single bincount with no boolean indexing.
    spare_bin = num_classes * num_classes
    flat_index = torch.where(labelled, target * num_classes + pred, spare_bin)
    counts = torch.bincount(flat_index.reshape(-1), minlength=spare_bin + 1)
    return counts[:spare_bin].reshape(num_classes, num_classes)


def _as_matrix(matrix: Tensor) -> Tensor:
    if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"a confusion matrix must be square (C, C), got {tuple(matrix.shape)}")
    return matrix.detach().to(torch.float64)


def iou_from_confusion(matrix: Tensor) -> Tensor:
    """Per-class IoU = TP / (TP + FP + FN) from a (C, C) confusion matrix.

    Returns a float64 tensor (C,); a class whose union is 0 (absent from both the ground truth and
    the prediction) gets NaN, since its IoU is undefined rather than 0 or 1.
    """
    counts = _as_matrix(matrix)
    true_positive = counts.diagonal()
    # row sum = TP + FN (pixels of the class), column sum = TP + FP (pixels predicted as it)
    union = counts.sum(dim=1) + counts.sum(dim=0) - true_positive
    nan = torch.full_like(union, math.nan)
    return torch.where(union > 0, true_positive / union.clamp_min(1), nan)


def miou_from_confusion(matrix: Tensor) -> float:
    """Mean IoU over the classes whose IoU is defined (union > 0); NaN when none is."""
    iou = iou_from_confusion(matrix)
    defined = ~torch.isnan(iou)
    if not bool(defined.any()):
        return math.nan
    return float(iou[defined].mean())


def frame_counts(
    pred: Tensor, target: Tensor, num_classes: int, ignore_index: int | None = 11
) -> Tensor:
    """Per-image true positives, false positives and false negatives of every class.

    ``pred`` and ``target`` are (B, H, W) class indices; returns int64 (B, 3, C): for image b,
    ``[b, 0]`` = TP, ``[b, 1]`` = FP, ``[b, 2]`` = FN per class. Summed over images they give the
    split's IoU; resampled over images they give its bootstrap spread (:func:`bootstrap_miou`).
    """
    rows = []
    for image_pred, image_target in zip(pred, target, strict=True):
        matrix = confusion_matrix(image_pred, image_target, num_classes, ignore_index)
        tp = matrix.diagonal()
        rows.append(torch.stack([tp, matrix.sum(dim=0) - tp, matrix.sum(dim=1) - tp]))
    return torch.stack(rows).cpu()


def bootstrap_miou(
    counts: Tensor | Sequence, samples: int = 1000, seed: int = 0
) -> tuple[float, float, float]:
    """mIoU of images resampled with replacement: ``(standard deviation, 5th, 95th percentile)``.

    ``counts``: (F, 3, C) per-image TP, FP, FN (:func:`frame_counts`). The spread says how much
    the figure depends on which frames were evaluated. Frames of one video sequence are not
    independent, so it is a lower bound on the uncertainty, not the whole of it.
    """
    counts = torch.as_tensor(counts, dtype=torch.float64)
    if counts.dim() != 3 or counts.shape[1] != 3:
        raise ValueError(f"counts must be (frames, 3, classes), got {tuple(counts.shape)}")
    frames = counts.shape[0]
    if frames == 0:
        return math.nan, math.nan, math.nan
    generator = torch.Generator().manual_seed(seed)
    pick = torch.randint(frames, (samples, frames), generator=generator)
    summed = counts[pick].sum(dim=1)  # (S, F, 3, C) -> (S, 3, C)
    union = summed.sum(dim=1)  # TP + FP + FN
    iou = torch.where(union > 0, summed[:, 0] / union.clamp_min(1), math.nan)
    miou = torch.nanmean(iou, dim=1)
    low, high = torch.quantile(miou, torch.tensor([0.05, 0.95], dtype=torch.float64))
    return float(miou.std()), float(low), float(high)


def pixel_accuracy_from_confusion(matrix: Tensor) -> float:
    """Correctly classified labelled pixels over all labelled pixels; NaN for an empty matrix."""
    counts = _as_matrix(matrix)
    total = float(counts.sum())
    if total == 0:
        return math.nan
    return float(counts.diagonal().sum()) / total


def _json_float(value: float) -> float | None:
    return None if math.isnan(value) else value


@dataclass(frozen=True)
class SegMetrics:
    """Scores read off one confusion matrix accumulated over a whole split.

    Attributes:
        per_class_iou: IoU of each class in index order; NaN for a class absent from both the
            ground truth and the prediction (union 0).
        miou: mean of ``per_class_iou`` over the classes whose IoU is defined, i.e. NaN entries
            are left out of the mean (not counted as 0 or 1). A class that is in the ground truth
            but never predicted, or predicted but not in the ground truth, has IoU 0 and counts.
            NaN only when no class is defined at all (no labelled pixel, nothing predicted).
        pixel_accuracy: correct labelled pixels / labelled pixels (void excluded).
        class_names: one name per class, or ``None``.
    """

    per_class_iou: tuple[float, ...]
    miou: float
    pixel_accuracy: float
    class_names: tuple[str, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (NaN becomes ``None``), e.g. for Optuna user attributes."""
        return {
            "miou": _json_float(self.miou),
            "pixel_accuracy": _json_float(self.pixel_accuracy),
            "per_class_iou": [_json_float(value) for value in self.per_class_iou],
            "class_names": None if self.class_names is None else list(self.class_names),
        }


class ConfusionMatrix:
    """Accumulates a confusion matrix over batches and reduces it to :class:`SegMetrics`.

    Call :meth:`update` once per batch with either logits (B, C, H, W) or class indices
    (B, H, W) / (H, W), then :meth:`compute` once for the split. The accumulator lives on the
    device of the batches it is fed, so evaluation on a GPU does not copy predictions to the CPU.

    Args:
        num_classes: number of real classes C (void excluded).
        ignore_index: void label, dropped before counting; ``None`` when there is none.
        class_names: optional names, one per class, carried into :class:`SegMetrics`.
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int | None = 11,
        class_names: Sequence[str] | None = None,
    ) -> None:
        _check_num_classes(num_classes)
        _check_ignore_index(ignore_index)
        if class_names is not None:
            class_names = tuple(class_names)
            if len(class_names) != num_classes:
                raise ValueError(
                    f"class_names must have num_classes={num_classes} entries, "
                    f"got {len(class_names)}: {list(class_names)}"
                )
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names: tuple[str, ...] | None = class_names
        self._matrix = torch.zeros(num_classes, num_classes, dtype=torch.long)

    @property
    def matrix(self) -> Tensor:
        """The accumulated int64 (C, C) matrix, rows = ground truth, columns = prediction."""
        return self._matrix

    def reset(self) -> None:
        """Forget everything counted so far (keeps the device)."""
        self._matrix = torch.zeros_like(self._matrix)

    @torch.no_grad()
    def update(self, pred_or_logits: Tensor, target: Tensor) -> None:
        """Add one batch.

        Args:
            pred_or_logits: logits / probabilities with a class axis, (B, C, H, W) or (C, H, W),
                which are argmaxed over that axis; or integer class indices shaped like
                ``target``.
            target: ground-truth class indices, (B, H, W) or (H, W).
        """
        pred = pred_or_logits
        if pred.is_floating_point():
            if pred.dim() != target.dim() + 1:
                raise ValueError(
                    "floating-point input is taken as logits and needs a class axis: expected "
                    f"{target.dim() + 1} dims for target {tuple(target.shape)}, "
                    f"got {tuple(pred.shape)}"
                )
            class_axis = pred.dim() - 3  # (B, C, H, W) -> 1, (C, H, W) -> 0
            if pred.shape[class_axis] != self.num_classes:
                raise ValueError(
                    f"logits have {pred.shape[class_axis]} channels on the class axis "
                    f"(shape {tuple(pred.shape)}), expected num_classes={self.num_classes}"
                )
            pred = pred.argmax(dim=class_axis)
        batch_matrix = confusion_matrix(pred, target, self.num_classes, self.ignore_index)
        if self._matrix.device != batch_matrix.device:
            self._matrix = self._matrix.to(batch_matrix.device)
        self._matrix += batch_matrix

    def compute(self) -> SegMetrics:
        """Per-class IoU, mIoU and pixel accuracy of everything counted since the last reset."""
        matrix = self._matrix.cpu()
        iou = iou_from_confusion(matrix)
        return SegMetrics(
            per_class_iou=tuple(float(value) for value in iou),
            miou=miou_from_confusion(matrix),
            pixel_accuracy=pixel_accuracy_from_confusion(matrix),
            class_names=self.class_names,
        )
