"""Attention modules: CBAM (channel + spatial gates), SAM (CBAM's spatial gate) and ECA."""

from __future__ import annotations

import math

import torch
from torch import nn


class ChannelGate(nn.Module):
    """CBAM channel gate: avg- and max-pooled descriptors through a shared bottleneck MLP."""

    def __init__(self, chs: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(1, chs // reduction)
        self.fc1 = nn.Conv2d(chs, hidden, 1)
        self.act = nn.ReLU()
        self.fc2 = nn.Conv2d(hidden, chs, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = x.mean(dim=(2, 3), keepdim=True)
        mx = x.amax(dim=(2, 3), keepdim=True)
        # Both descriptors go through the MLP as one batch: (2B, C, 1, 1).
        both = self.fc2(self.act(self.fc1(torch.cat([avg, mx], dim=0))))
        avg_out, max_out = both.chunk(2, dim=0)
        return x * torch.sigmoid(avg_out + max_out)


class SpatialGate(nn.Module):
    """Spatial gate (SAM): channel-mean and channel-max maps through a 7x7 conv, sigmoid."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        desc = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.bn(self.conv(desc)))


class CBAM(nn.Module):
    """Convolutional block attention module: channel gate, then spatial gate."""

    def __init__(self, chs: int, reduction: int = 4) -> None:
        super().__init__()
        self.channel = ChannelGate(chs, reduction)
        self.spatial = SpatialGate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial(self.channel(x))


class SAM(SpatialGate):
    """Spatial attention module: CBAM's spatial gate alone."""

    def __init__(self, chs: int, reduction: int = 4) -> None:
        super().__init__()


def eca_kernel_size(chs: int, gamma: int = 2, b: int = 1) -> int:
    """ECA's adaptive odd kernel size ``|log2(C) / gamma + b / gamma|`` rounded up to odd."""
    k = int(abs(math.log2(chs) / gamma + b / gamma))
    return k if k % 2 else k + 1


class ECA(nn.Module):
    """Efficient channel attention: global average pool, 1-D conv across channels, sigmoid."""

    def __init__(self, chs: int, reduction: int = 4) -> None:
        super().__init__()
        k = eca_kernel_size(chs)
        self.conv = nn.Conv1d(1, 1, k, padding=k // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        y = x.mean(dim=(2, 3)).view(b, 1, c)  # (B, C, H, W) -> (B, 1, C)
        y = self.conv(y).view(b, c, 1, 1)
        return x * torch.sigmoid(y)


ATTENTION_LAYERS: dict[str, type[nn.Module] | None] = {
    "none": None,
    "cbam": CBAM,
    "sam": SAM,
    "eca": ECA,
}


def create_attention(name: str, chs: int, reduction: int = 4) -> nn.Module:
    """An attention module by name (``none`` gives an identity)."""
    if name not in ATTENTION_LAYERS:
        allowed = ", ".join(ATTENTION_LAYERS)
        raise ValueError(f"unknown attention {name!r}; allowed: {allowed}")
    layer = ATTENTION_LAYERS[name]
    return nn.Identity() if layer is None else layer(chs, reduction)
