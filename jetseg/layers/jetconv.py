"""CDDC branches and JetConv.

A JetConv applies one to three CDDC branches to the same input. Branch ``i`` is three depthwise
convs: ``k_i x 1`` with dilation ``(d_i, 1)``, ``1 x k_i`` with dilation ``(1, d_i)``, then a
square ``q_i x q_i``. The branches are fused hierarchically (``y1 = b1``, ``y2 = y1 + b2``,
``y3 = y2 + b3``), stacked on channels, mixed by a grouped pointwise conv with batch norm, and the
input is added back when shapes match.

The network is memory-bound, so the implementation runs as few kernels as the math allows:

* each of the three depthwise steps runs as **one** conv for all branches. Every branch kernel is
  embedded (zeros elsewhere) in a shared kernel of size ``K`` with dilation ``D = gcd(d_i)``; the
  first step uses a channel multiplier of ``n`` (groups = C, n outputs per channel), so its
  output holds the branches of channel ``c`` at channels ``c*n .. c*n+n-1``;
* the hierarchical fusion is linear and sits right before a linear pointwise conv, so it is
  folded into that conv's weights (``W' = W @ M`` with ``M[i, j] = 1 for i >= j``) instead of
  running as adds;
* in eval mode the assembled weights are cached, and the ONNX exporter folds their assembly
  into constants, so a deployed JetConv is exactly three depthwise convs and one pointwise conv.

Stacking is channel-interleaved (``[y1_c, y2_c, y3_c]`` for each channel ``c``) rather than
branch-major: the pointwise groups then each fuse every branch of their channels, and the
fold above applies within each group.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


class BranchSpec(NamedTuple):
    """One CDDC branch: asymmetric kernel ``kernel`` with ``dilation``, then ``square_kernel``."""

    kernel: int
    dilation: int
    square_kernel: int


def _embedding(kernel: int, dilation: int, size: int, step: int) -> torch.Tensor:
    """(kernel, size) 0/1 matrix placing a dilated kernel's taps in a centred dense kernel."""
    emb = torch.zeros(kernel, size)
    centre = (size - 1) // 2
    for j in range(kernel):
        offset = (j - (kernel - 1) // 2) * dilation // step
        emb[j, centre + offset] = 1.0
    return emb


class _CachedWeights(nn.Module):
    """Base for modules whose conv weight is assembled from parameters: cached in eval mode."""

    def __init__(self) -> None:
        super().__init__()
        self._cache: tuple[tuple[int, ...], torch.Tensor] | None = None

    def _assemble(self) -> torch.Tensor:
        raise NotImplementedError

    def weight(self) -> torch.Tensor:
        if self.training or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            self._cache = None
            return self._assemble()
        key = tuple(p._version for p in self.parameters()) + tuple(
            p.data_ptr() for p in self.parameters()
        )
        if self._cache is None or self._cache[0] != key:
            with torch.no_grad():
                self._cache = (key, self._assemble())
        return self._cache[1]


class MergedDepthwise(_CachedWeights):
    """One depthwise step of every branch of a JetConv, run as a single conv.

    ``axis`` is ``"h"`` (``k x 1``), ``"w"`` (``1 x k``) or ``"square"``. The ``"h"`` step takes
    the JetConv input (``chs`` channels) and multiplies each channel by the branch count; the
    other steps take the ``chs * n`` interleaved branch channels.
    """

    def __init__(
        self,
        chs: int,
        kernels: Sequence[int],
        dilations: Sequence[int],
        axis: str,
        stride: int = 1,
    ) -> None:
        super().__init__()
        if axis not in ("h", "w", "square"):
            raise ValueError(f"axis must be 'h', 'w' or 'square', got {axis!r}")
        self.chs, self.axis, self.stride = chs, axis, stride
        self.n = len(kernels)
        self.kernels = tuple(kernels)
        self.dilations = tuple(dilations)
        self.step = math.gcd(*self.dilations)
        spans = [(k - 1) * d // self.step + 1 for k, d in zip(kernels, dilations, strict=True)]
        self.size = max(spans)
        self.weights = nn.ParameterList()
        for k in kernels:
            shape = (chs, k, k) if axis == "square" else (chs, k)
            w = torch.empty(shape)
            # Depthwise fan-in is the kernel area; kaiming-uniform bound for that fan-in.
            bound = 1.0 / math.sqrt(k * k if axis == "square" else k)
            nn.init.uniform_(w, -bound * math.sqrt(3), bound * math.sqrt(3))
            self.weights.append(nn.Parameter(w))
        self.identical = len(set(zip(kernels, dilations, strict=True))) == 1
        for i, (k, d) in enumerate(zip(kernels, dilations, strict=True)):
            self.register_buffer(
                f"emb{i}", _embedding(k, d, self.size, self.step), persistent=False
            )

    @property
    def out_chs(self) -> int:
        return self.chs * self.n

    @property
    def effective_taps(self) -> int:
        """Multiply-accumulates per output position summed over branches, zeros excluded."""
        return sum(k * k if self.axis == "square" else k for k in self.kernels)

    def _assemble(self) -> torch.Tensor:
        c, n, size = self.chs, self.n, self.size
        if self.axis == "square":
            pads = [(size - k) // 2 for k in self.kernels]
            dense = [
                F.pad(w, (p, p, p, p)) if p else w for w, p in zip(self.weights, pads, strict=True)
            ]
            return torch.stack(dense, dim=1).reshape(c * n, 1, size, size)
        if self.identical and self.step == self.dilations[0]:
            dense = torch.stack(list(self.weights), dim=1)  # (C, n, K)
        else:
            dense = torch.stack(
                [w @ getattr(self, f"emb{i}") for i, w in enumerate(self.weights)], dim=1
            )
        if self.axis == "h":
            return dense.reshape(c * n, 1, size, 1)
        return dense.reshape(c * n, 1, 1, size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight()
        reach = (self.size - 1) * self.step // 2  # "same" padding
        if self.axis == "h":
            return F.conv2d(
                x, w, None, (self.stride, 1), (reach, 0), (self.step, 1), groups=self.chs
            )
        if self.axis == "w":
            return F.conv2d(
                x, w, None, (1, self.stride), (0, reach), (1, self.step), groups=self.out_chs
            )
        return F.conv2d(x, w, None, 1, reach, 1, groups=self.out_chs)


class FusedPointwise(_CachedWeights):
    """Grouped 1x1 conv over interleaved branch channels with the hierarchical fusion folded in.

    Its input is ``chs * n`` channels where channel ``c*n + i`` is branch ``i`` of channel ``c``;
    it behaves as a pointwise conv applied to ``[y1_c, ..., yn_c]`` with ``y_j = sum_{i<=j} b_i``.
    """

    def __init__(self, chs: int, n: int, out_chs: int, groups: int) -> None:
        super().__init__()
        in_chs = chs * n
        if chs % groups or out_chs % groups:
            raise ValueError(
                f"groups={groups} must divide both the JetConv width {chs} and output {out_chs}"
            )
        self.in_chs, self.out_chs, self.groups, self.n = in_chs, out_chs, groups, n
        conv = nn.Conv2d(in_chs, out_chs, 1, groups=groups, bias=False)
        self.weight_raw = nn.Parameter(conv.weight.detach().clone())
        # fold[i, j] = 1 where branch i contributes to stacked output j (i <= j): W' = W @ fold.T
        fold = torch.tril(torch.ones(n, n)).T.contiguous()  # fold[i, j] = 1 for i <= j
        self.register_buffer("fold", fold, persistent=False)

    def _assemble(self) -> torch.Tensor:
        if self.n == 1:
            return self.weight_raw
        w = self.weight_raw.reshape(-1, self.n)  # (O * in/g / n, n): weights of y_1..y_n
        # b_i feeds every y_j with j >= i, so its weight is sum_{j >= i} W_j.
        return (w @ self.fold.T).reshape_as(self.weight_raw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight(), None, 1, 0, 1, self.groups)


class JetConv(nn.Module):
    """JetConv: CDDC branches, hierarchical fusion, stacking, grouped pointwise + BN, residual.

    A downsampling JetConv (``stride=2``) strides inside the asymmetric pair: along the height in
    the ``k x 1`` conv and along the width in the ``1 x k`` conv.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        branches: Sequence[BranchSpec | tuple[int, int, int]],
        stride: int = 1,
        groups: int = 1,
        dilation_mult: int = 1,
    ) -> None:
        super().__init__()
        branches = [BranchSpec(*b) for b in branches]
        if not 1 <= len(branches) <= 3:
            raise ValueError(f"a JetConv has 1 to 3 branches, got {len(branches)}")
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        kernels = [b.kernel for b in branches]
        dilations = [b.dilation * dilation_mult for b in branches]
        self.branches = tuple(branches)
        self.dw_h = MergedDepthwise(in_chs, kernels, dilations, "h", stride)
        self.dw_w = MergedDepthwise(in_chs, kernels, dilations, "w", stride)
        squares = [b.square_kernel for b in branches]
        self.dw_sq = MergedDepthwise(in_chs, squares, [1] * len(branches), "square")
        self.pw = FusedPointwise(in_chs, len(branches), out_chs, groups)
        self.bn = nn.BatchNorm2d(out_chs)
        self.residual = stride == 1 and in_chs == out_chs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.pw(self.dw_sq(self.dw_w(self.dw_h(x)))))
        return x + y if self.residual else y
