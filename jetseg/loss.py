"""JetLoss and the baseline losses it is compared with.

JetLoss (JetSeg paper, eq. 1, made a loss) works on softmax probabilities ``p`` and one-hot
targets ``t``. Over the labelled pixels of the whole batch it forms, per class c, the soft counts
``TP_c = sum p*t``, ``FP_c = sum p*(1-t)`` and ``FN_c = sum (1-p)*t``, and from them three
class-weighted scores::

    R = sum_c W_c (TP_c + eps) / (TP_c + FN_c + eps)          soft recall
    P = sum_c W_c (TP_c + eps) / (TP_c + FP_c + eps)          soft precision
    B = sum_c W_c (TP_c + eps) / (TP_c + FP_c + FN_c + eps)   soft (batch) IoU
    JetLoss = (1 - R) + (1 - P) + (1 - B)                     in [0, 3], 0 when perfect

The weights ``W`` sum to 1 and normally come from :func:`cui_class_weights` on the training
split's pixel counts. Void pixels (``ignore_index``) take no part at all.

The baselines share the forward signature ``loss(logits (B, C, H, W), target (B, H, W))``:
:class:`CrossEntropy` (optionally class-weighted) and :class:`JetLossCE` (JetLoss + CE).
:func:`build_loss` makes any of them by name (:data:`LOSS_NAMES`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "LOSS_NAMES",
    "CrossEntropy",
    "JetLoss",
    "JetLossCE",
    "build_loss",
    "cui_class_weights",
]

LOSS_NAMES: tuple[str, ...] = ("jetloss", "ce", "wce", "jetloss+ce")


def cui_class_weights(pixel_counts: Sequence[int] | Tensor, beta: float = 0.999) -> Tensor:
    """Class weights from the effective number of samples (Cui et al., CVPR 2019).

    ``w_c = (1 - beta) / (1 - beta**n_c)`` with ``n_c`` the number of training pixels of class c,
    then normalised so that the weights sum to 1. ``beta = 0`` gives every present class the same
    weight; ``beta -> 1`` approaches inverse-frequency weighting. For the millions of pixels a
    segmentation class has, ``beta**n_c`` underflows to 0 and the weight saturates at ``1 - beta``
    (all classes above roughly ``5 / (1 - beta)`` pixels are weighted alike): this is the
    method's intent, and the computation runs in float64 so nothing overflows or becomes NaN.

    A class with ``n_c = 0`` would divide by zero; it gets weight 0 (it cannot be learnt from this
    split anyway) and a ``UserWarning`` names it.

    Args:
        pixel_counts: non-negative pixel count per class (void excluded), length C.
        beta: in ``[0, 1)``.

    Returns:
        float32 tensor (C,) summing to 1.
    """
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must be a number in [0, 1), got {beta!r}")
    counts = _per_class_vector(pixel_counts, "pixel_counts", "a non-empty 1-D sequence")
    present = counts > 0
    if not bool(present.any()):
        raise ValueError("pixel_counts are all 0: no class has a pixel, weights are undefined")
    if not bool(present.all()):
        missing = torch.nonzero(~present).flatten().tolist()
        warnings.warn(
            f"classes {missing} have 0 pixels in pixel_counts; their class weight is set to 0",
            UserWarning,
            stacklevel=2,
        )

    if beta == 0.0:
        raw = present.to(torch.float64)
    else:
        # 1 - beta**n as -expm1(n * log(beta)): exact for small n even when beta is close to 1,
        # and tends to 1 (not NaN) when beta**n underflows for large n.
        log_beta = torch.log(torch.tensor(beta, dtype=torch.float64))
        one_minus_beta_pow_n = -torch.expm1(counts * log_beta)
        raw = torch.where(present, (1.0 - beta) / one_minus_beta_pow_n.clamp_min(1e-300), 0.0)
    return (raw / raw.sum()).to(torch.float32)


def _per_class_vector(values: Tensor | Sequence[float], what: str, shape: str) -> Tensor:
    """``values`` as a float64 CPU vector, one finite value >= 0 per class, or a ValueError."""
    vector = torch.as_tensor(values, dtype=torch.float64).detach().cpu()
    if vector.dim() != 1 or vector.numel() == 0:
        raise ValueError(
            f"{what} must be {shape} with one value per class, got shape {tuple(vector.shape)}"
        )
    if not bool(torch.isfinite(vector).all()) or bool((vector < 0).any()):
        raise ValueError(f"{what} must be finite and >= 0, got {vector.tolist()}")
    return vector


def _class_weight_tensor(
    class_weights: Tensor | Sequence[float] | None, num_classes: int | None, owner: str
) -> tuple[Tensor | None, int]:
    """Validate weights against num_classes; returns (float64 weights or None, num_classes)."""
    weights = None
    if class_weights is None:
        if num_classes is None:
            raise ValueError(f"{owner}: give class_weights or num_classes (both are None)")
    else:
        weights = _per_class_vector(class_weights, f"{owner}: class_weights", "1-D")
        if float(weights.sum()) <= 0:
            raise ValueError(f"{owner}: class_weights must not all be 0")
        if num_classes is not None and num_classes != weights.numel():
            raise ValueError(
                f"{owner}: class_weights has {weights.numel()} entries but "
                f"num_classes={num_classes}"
            )
        num_classes = weights.numel()
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"{owner}: num_classes must be an integer >= 1, got {num_classes!r}")
    return weights, num_classes


def _check_inputs(logits: Tensor, target: Tensor, num_classes: int, owner: str) -> Tensor:
    """Shape and dtype checks shared by every loss; returns the target as int64."""
    if logits.dim() != 4:
        raise ValueError(f"{owner}: logits must be (B, C, H, W), got {tuple(logits.shape)}")
    if logits.shape[1] != num_classes:
        raise ValueError(
            f"{owner}: logits have {logits.shape[1]} channels, expected num_classes={num_classes}"
        )
    expected_target = (logits.shape[0], *logits.shape[2:])
    if tuple(target.shape) != expected_target:
        raise ValueError(
            f"{owner}: target must be (B, H, W) = {expected_target} to match logits "
            f"{tuple(logits.shape)}, got {tuple(target.shape)}"
        )
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise ValueError(f"{owner}: target must hold integer class indices, got {target.dtype}")
    return target.long()


def _at_least_float32(logits: Tensor) -> Tensor:
    # float16/bfloat16 logits (autocast) are promoted; float64 stays float64 for gradcheck.
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


class JetLoss(nn.Module):
    """JetLoss: (1 - soft recall) + (1 - soft precision) + (1 - soft IoU), class-weighted.

    Definitions are in the module docstring. Behaviour worth knowing:

    - Counts are summed over the whole batch (B, H, W), not per image, so a class that appears
      in one image of the batch is scored once on all its pixels.
    - Void pixels (target == ``ignore_index``) are masked out of every count: they change
      neither the value nor receive any gradient (exactly 0).
    - ``eps`` (default 1e-6, about a millionth of one pixel) keeps every ratio defined. A class
      absent from both the target and the prediction scores ``eps / eps = 1`` in all three terms,
      so it neither rewards nor penalises; a batch of only void pixels gives a loss of exactly 0
      that is still connected to the graph (zero gradient), never NaN.
    - Each ``1 - score`` is computed in the algebraically identical form
      ``sum_c W_c * FN_c / (TP_c + FN_c + eps)`` (and likewise with FP_c and FP_c + FN_c),
      because ``sum_c W_c = 1``. That form cannot go below 0 through rounding, and gives exactly 0
      for a perfect prediction.
    - Everything runs in float32 (float64 if the logits are float64), also under autocast.

    Args:
        class_weights: one non-negative weight per class; normalised here to sum to 1. ``None``
            means uniform weights ``1 / num_classes``.
        num_classes: number of real classes C; inferred from ``class_weights`` when given.
        ignore_index: label of void pixels.
        eps: smoothing added to numerator and denominator of every ratio, > 0.
    """

    def __init__(
        self,
        class_weights: Tensor | Sequence[float] | None = None,
        num_classes: int | None = None,
        ignore_index: int = 11,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        weights, num_classes = _class_weight_tensor(class_weights, num_classes, "JetLoss")
        if weights is None:
            weights = torch.ones(num_classes, dtype=torch.float64)
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
            raise ValueError(f"JetLoss: eps must be a number > 0, got {eps!r}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.eps = float(eps)
        self.register_buffer("class_weights", (weights / weights.sum()).to(torch.float32))

    def _soft_counts(self, logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Soft TP, FP, FN per class (each (C,)) over the labelled pixels of the batch."""
        target = _check_inputs(logits, target, self.num_classes, "JetLoss")
        labelled = target != self.ignore_index
        out_of_range = labelled & ((target < 0) | (target >= self.num_classes))
        if bool(out_of_range.any()):
            found = torch.unique(target[out_of_range])[:10].tolist()
            raise ValueError(
                f"JetLoss: target holds labels {found} outside [0, {self.num_classes}) that are "
                f"not ignore_index={self.ignore_index}"
            )

        probs = torch.softmax(_at_least_float32(logits), dim=1)  # (B, C, H, W)
        # Written without a one-hot tensor: TP_c sums the probability of the true class over the
        # pixels labelled c, FP_c = (sum of p_c over labelled pixels) - TP_c and FN_c = (pixels
        # labelled c) - TP_c. Same sums as p*t, p*(1-t), (1-p)*t, at a fraction of the
        # full-resolution temporaries (and of their backward).
        # (B, C, H, W) -> (C, B*H*W), labelled pixels only: void pixels take no part at all.
        flat = probs.transpose(0, 1).reshape(self.num_classes, -1)
        keep = labelled.reshape(-1).nonzero().squeeze(1)
        flat = flat.index_select(1, keep)
        classes = target.reshape(-1).index_select(0, keep)
        p_true = flat.gather(0, classes.unsqueeze(0)).squeeze(0)  # (N,)
        true_positive = torch.zeros(
            self.num_classes, dtype=probs.dtype, device=probs.device
        ).index_add(0, classes, p_true)
        pixels = torch.bincount(classes, minlength=self.num_classes).to(probs.dtype)
        false_positive = flat.sum(1) - true_positive
        false_negative = pixels - true_positive
        return true_positive, false_positive, false_negative

    def _one_minus_scores(self, logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(1 - R, 1 - P, 1 - B) as scalars."""
        with torch.autocast(device_type=logits.device.type, enabled=False):
            tp, fp, fn = self._soft_counts(logits, target)
            weights = self.class_weights.to(device=tp.device, dtype=tp.dtype)
            eps = self.eps
            # 1 - (TP + eps) / (TP + X + eps) == X / (TP + X + eps), summed with weights that
            # add up to 1.
            recall_gap = (weights * fn / (tp + fn + eps)).sum()
            precision_gap = (weights * fp / (tp + fp + eps)).sum()
            iou_gap = (weights * (fp + fn) / (tp + fp + fn + eps)).sum()
        return recall_gap, precision_gap, iou_gap

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """JetLoss of a batch: logits (B, C, H, W), target (B, H, W) -> float32 scalar."""
        recall_gap, precision_gap, iou_gap = self._one_minus_scores(logits, target)
        return recall_gap + precision_gap + iou_gap

    def terms(self, logits: Tensor, target: Tensor) -> dict[str, Tensor]:
        """The three scores and the loss, for logging.

        Returns a dict of scalars: ``recall`` (R), ``precision`` (P), ``soft_iou`` (B), each in
        [0, 1], and ``loss`` = (1 - R) + (1 - P) + (1 - B). The scores are detached, the loss is
        not.
        """
        recall_gap, precision_gap, iou_gap = self._one_minus_scores(logits, target)
        return {
            "recall": 1.0 - recall_gap.detach(),
            "precision": 1.0 - precision_gap.detach(),
            "soft_iou": 1.0 - iou_gap.detach(),
            "loss": recall_gap + precision_gap + iou_gap,
        }

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, ignore_index={self.ignore_index}, eps={self.eps}"


class CrossEntropy(nn.Module):
    """Pixel-wise cross-entropy with void ignored, optionally class-weighted.

    The mean is taken over the labelled pixels (weighted by their class weight when weights are
    given), exactly like ``F.cross_entropy(..., ignore_index=...)``, except that a batch of only
    void pixels gives 0 (connected to the graph) instead of NaN.

    Args:
        class_weights: ``None`` for plain CE; otherwise one non-negative weight per class, e.g.
            from :func:`cui_class_weights`, rescaled here so that their mean is 1 (so the loss
            stays on the scale of plain CE).
        num_classes: number of real classes C; inferred from ``class_weights`` when given.
        ignore_index: label of void pixels.
    """

    def __init__(
        self,
        class_weights: Tensor | Sequence[float] | None = None,
        num_classes: int | None = None,
        ignore_index: int = 11,
    ) -> None:
        super().__init__()
        weights, num_classes = _class_weight_tensor(class_weights, num_classes, "CrossEntropy")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_weights: Tensor | None
        if weights is None:
            self.register_buffer("class_weights", None)
        else:
            self.register_buffer("class_weights", (weights / weights.mean()).to(torch.float32))

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Mean CE over labelled pixels: logits (B, C, H, W), target (B, H, W) -> scalar."""
        target = _check_inputs(logits, target, self.num_classes, "CrossEntropy")
        with torch.autocast(device_type=logits.device.type, enabled=False):
            logits = _at_least_float32(logits)
            weights = None
            if self.class_weights is not None:
                weights = self.class_weights.to(device=logits.device, dtype=logits.dtype)
            total = F.cross_entropy(
                logits, target, weight=weights, ignore_index=self.ignore_index, reduction="sum"
            )
            labelled = target != self.ignore_index
            if weights is None:
                normaliser = labelled.sum().to(logits.dtype)
            else:
                safe_target = torch.where(labelled, target, 0)
                normaliser = torch.where(labelled, weights[safe_target], 0.0).sum()
            # With nothing labelled, total is 0 and so is the normaliser: 0 / 1 instead of 0 / 0.
            return total / normaliser.clamp_min(1e-12)

    def extra_repr(self) -> str:
        weighted = self.class_weights is not None
        return (
            f"num_classes={self.num_classes}, ignore_index={self.ignore_index}, weighted={weighted}"
        )


class JetLossCE(nn.Module):
    """JetLoss + ``ce_weight`` * plain cross-entropy.

    Args:
        class_weights: weights for the JetLoss part (``None`` = uniform); the CE part is
            unweighted.
        num_classes: number of real classes C; inferred from ``class_weights`` when given.
        ignore_index: label of void pixels, for both parts.
        eps: JetLoss smoothing.
        ce_weight: factor on the cross-entropy term, >= 0.
    """

    def __init__(
        self,
        class_weights: Tensor | Sequence[float] | None = None,
        num_classes: int | None = None,
        ignore_index: int = 11,
        eps: float = 1e-6,
        ce_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if isinstance(ce_weight, bool) or not isinstance(ce_weight, (int, float)) or ce_weight < 0:
            raise ValueError(f"JetLossCE: ce_weight must be a number >= 0, got {ce_weight!r}")
        self.jetloss = JetLoss(class_weights, num_classes, ignore_index, eps)
        self.cross_entropy = CrossEntropy(None, self.jetloss.num_classes, ignore_index)
        self.ce_weight = float(ce_weight)

    @property
    def num_classes(self) -> int:
        return self.jetloss.num_classes

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """JetLoss + ce_weight * CE: logits (B, C, H, W), target (B, H, W) -> scalar."""
        return self.jetloss(logits, target) + self.ce_weight * self.cross_entropy(logits, target)

    def terms(self, logits: Tensor, target: Tensor) -> dict[str, Tensor]:
        """JetLoss's terms plus ``jetloss`` and ``ce`` (detached) and the combined ``loss``."""
        terms = self.jetloss.terms(logits, target)
        cross_entropy = self.cross_entropy(logits, target)
        jetloss = terms["loss"]
        terms["jetloss"] = jetloss.detach()
        terms["ce"] = cross_entropy.detach()
        terms["loss"] = jetloss + self.ce_weight * cross_entropy
        return terms

    def extra_repr(self) -> str:
        return f"ce_weight={self.ce_weight}"


def build_loss(
    name: str, class_weights: Tensor | None, num_classes: int, ignore_index: int = 11
) -> nn.Module:
    """Make a loss by name (one of :data:`LOSS_NAMES`).

    - ``"jetloss"``: :class:`JetLoss` with ``class_weights`` (uniform when ``None``).
    - ``"ce"``: plain :class:`CrossEntropy`; ``class_weights`` is not used.
    - ``"wce"``: :class:`CrossEntropy` weighted by ``class_weights`` (rescaled to mean 1);
      ``class_weights`` is required.
    - ``"jetloss+ce"``: :class:`JetLossCE`, JetLoss with ``class_weights`` plus plain CE.

    ``class_weights`` are normally ``cui_class_weights(training pixel counts)``.
    """
    if name not in LOSS_NAMES:
        raise ValueError(f"unknown loss {name!r}; expected one of {', '.join(LOSS_NAMES)}")
    if name == "jetloss":
        return JetLoss(class_weights, num_classes, ignore_index)
    if name == "ce":
        return CrossEntropy(None, num_classes, ignore_index)
    if name == "wce":
        if class_weights is None:
            raise ValueError(
                "loss 'wce' (class-weighted cross-entropy) needs class_weights, got None; "
                "compute them with cui_class_weights(pixel counts of the training split)"
            )
        return CrossEntropy(class_weights, num_classes, ignore_index)
    return JetLossCE(class_weights, num_classes, ignore_index)
