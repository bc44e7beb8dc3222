"""JetBlock, the input block (stem) and channel shuffle."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .activations import create_act
from .attention import create_attention
from .jetconv import BranchSpec, JetConv


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet channel shuffle: one view, one transpose, one reshape (a single copy)."""
    if groups == 1:
        return x
    b, c, h, w = x.shape
    # (B, C, H, W) -> (B, g, C/g, H, W) -> (B, C/g, g, H, W) -> (B, C, H, W)
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class ChannelShuffle(nn.Module):
    """Module form of :func:`channel_shuffle`."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_shuffle(x, self.groups)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"


class ConvBnAct(nn.Sequential):
    """Conv2d (no bias) -> BatchNorm -> activation (``act=None`` for none)."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 1,
        stride: int = 1,
        groups: int = 1,
        act: str | None = "relu",
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(
                in_chs, out_chs, kernel_size, stride, kernel_size // 2, groups=groups, bias=False
            ),
            nn.BatchNorm2d(out_chs),
        ]
        if act is not None:
            layers.append(create_act(act))
        super().__init__(*layers)


class JetBlock(nn.Module):
    """JetBlock (paper Fig. 3b) with one skip around the whole block.

    grouped 1x1 expand -> BN -> act -> channel shuffle -> JetConv (stride) -> attention -> act
    -> grouped 1x1 reduce -> BN; ``y = x + F(x)`` when ``stride == 1`` and widths match.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        *,
        expansion: int,
        branches: Sequence[BranchSpec | tuple[int, int, int]],
        stride: int = 1,
        expand_groups: int = 1,
        jetconv_groups: int = 1,
        reduce_groups: int = 1,
        dilation_mult: int = 1,
        attention: str = "none",
        attention_reduction: int = 4,
        act: str = "reu",
    ) -> None:
        super().__init__()
        hidden = in_chs * expansion
        self.expand = ConvBnAct(in_chs, hidden, 1, groups=expand_groups, act=act)
        self.shuffle = ChannelShuffle(expand_groups)
        self.jetconv = JetConv(
            hidden,
            hidden,
            branches,
            stride=stride,
            groups=jetconv_groups,
            dilation_mult=dilation_mult,
        )
        self.attention = create_attention(attention, hidden, attention_reduction)
        self.act = create_act(act)
        self.reduce = ConvBnAct(hidden, out_chs, 1, groups=reduce_groups, act=None)
        self.skip = stride == 1 and in_chs == out_chs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.shuffle(self.expand(x))
        y = self.act(self.attention(self.jetconv(y)))
        y = self.reduce(y)
        return x + y if self.skip else y


class JetStem(nn.Module):
    """The input block (paper Fig. 3a): JetConv from the image at stride 2 (ends in BN), act."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        *,
        branches: Sequence[BranchSpec | tuple[int, int, int]],
        groups: int = 1,
        act: str = "reu",
    ) -> None:
        super().__init__()
        self.jetconv = JetConv(in_chs, out_chs, branches, stride=2, groups=groups)
        self.act = create_act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.jetconv(x))


class ConvStem(ConvBnAct):
    """The plain alternative input block: 3x3 stride-2 conv -> BN -> act."""

    def __init__(self, in_chs: int, out_chs: int, *, act: str = "reu") -> None:
        super().__init__(in_chs, out_chs, 3, stride=2, act=act)
