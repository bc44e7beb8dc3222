"""JetNet encoder, RegSeg-style decoder and the JetSeg network; ``build_model(config)``.

The encoder publishes the channels and stride of every feature it produces; the decoder is built
from them, so nothing is written twice. ``build_model`` is the one place that maps a
:class:`~jetseg.config.JetSegConfig` onto constructors with explicit arguments.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import JetSegConfig, load_config, resolve_groups
from .layers import BranchSpec, ConvBnAct, ConvStem, JetBlock, JetStem, create_act


@dataclass(frozen=True)
class FeatureInfo:
    """What one encoder feature looks like: its width and its stride relative to the input."""

    name: str
    channels: int
    stride: int


class JetNet(nn.Module):
    """Encoder: the stem (S0) then stages of JetBlocks. Returns every stage's output."""

    def __init__(
        self, stem: nn.Module, stages: Sequence[nn.Module], info: Sequence[FeatureInfo]
    ) -> None:
        super().__init__()
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.feature_info = tuple(info)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = [self.stem(x)]
        for stage in self.stages:
            feats.append(stage(feats[-1]))
        return feats


def _conv3x3(in_chs: int, out_chs: int, separable: bool, act: str) -> nn.Module:
    if not separable:
        return ConvBnAct(in_chs, out_chs, 3, act=act)
    return nn.Sequential(
        ConvBnAct(in_chs, in_chs, 3, groups=in_chs, act=None),
        ConvBnAct(in_chs, out_chs, 1, act=act),
    )


class RegSegDecoder(nn.Module):
    """RegSeg's decoder on three encoder features (shallow ~1/4, mid ~1/8, deep ~1/16).

    ``x = head_mid + up(head_deep)`` -> 3x3 conv -> upsample to the shallow feature ->
    concatenate with ``head_low`` -> 3x3 conv -> 1x1 classifier (at the shallow resolution).
    """

    def __init__(
        self,
        in_channels: tuple[int, int, int],
        num_classes: int,
        *,
        low_width: int,
        head_width: int,
        fuse_width: int,
        out_width: int,
        separable: bool = False,
        act: str = "relu",
    ) -> None:
        super().__init__()
        low_in, mid_in, deep_in = in_channels
        self.head_low = ConvBnAct(low_in, low_width, 1, act=act)
        self.head_mid = ConvBnAct(mid_in, head_width, 1, act=act)
        self.head_deep = ConvBnAct(deep_in, head_width, 1, act=act)
        self.fuse = _conv3x3(head_width, fuse_width, separable, act)
        self.out = _conv3x3(fuse_width + low_width, out_width, separable, act)
        self.classifier = nn.Conv2d(out_width, num_classes, 1)

    def forward(self, low: torch.Tensor, mid: torch.Tensor, deep: torch.Tensor) -> torch.Tensor:
        deep = self.head_deep(deep)
        x = self.head_mid(mid) + _resize(deep, mid)
        x = self.fuse(x)
        low = self.head_low(low)
        x = self.out(torch.cat([_resize(x, low), low], dim=1))
        return self.classifier(x)


def _resize(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Bilinear resize of ``x`` to the spatial size of ``like`` (a no-op when they match)."""
    if not torch.jit.is_tracing() and x.shape[-2:] == like.shape[-2:]:
        return x
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


class JetSeg(nn.Module):
    """JetNet encoder + RegSeg-style decoder; logits at the input resolution."""

    def __init__(self, encoder: JetNet, decoder: RegSegDecoder, taps: tuple[int, int, int]) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.taps = tuple(taps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"expected a (B, C, H, W) image batch, got shape {tuple(x.shape)}")
        feats = self.encoder(x)
        low, mid, deep = (feats[i] for i in self.taps)
        logits = self.decoder(low, mid, deep)
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def _branches(jetconv) -> list[BranchSpec]:
    return [BranchSpec(b.kernel, b.dilation, b.square_kernel) for b in jetconv.branches]


def build_model(config: JetSegConfig | str) -> JetSeg:
    """Build the network a config (or a preset name / YAML path) describes."""
    if not isinstance(config, JetSegConfig):
        config = load_config(config)
    stem_cfg = config.stem
    if stem_cfg.kind == "jetconv":
        stem: nn.Module = JetStem(
            config.in_channels,
            stem_cfg.width,
            branches=_branches(stem_cfg.jetconv),
            groups=resolve_groups(stem_cfg.jetconv.groups, config.in_channels, stem_cfg.width),
            act=stem_cfg.activation,
        )
    else:
        stem = ConvStem(config.in_channels, stem_cfg.width, act=stem_cfg.activation)
    strides = config.feature_strides()
    info = [FeatureInfo("stem", stem_cfg.width, strides[0])]
    stages = []
    for i, sc in enumerate(config.stages):
        blocks = []
        dilations = sc.dilations or (1,) * sc.depth
        for b in range(sc.depth):
            cin = config.stage_in_width(i) if b == 0 else sc.width
            hidden = cin * sc.expansion
            blocks.append(
                JetBlock(
                    cin,
                    sc.width,
                    expansion=sc.expansion,
                    branches=_branches(sc.jetconv),
                    stride=sc.stride if b == 0 else 1,
                    expand_groups=resolve_groups(sc.groups, cin, hidden),
                    jetconv_groups=resolve_groups(sc.jetconv.groups, hidden, hidden),
                    reduce_groups=resolve_groups(sc.groups, hidden, sc.width),
                    dilation_mult=dilations[b],
                    attention=sc.attention,
                    attention_reduction=sc.attention_reduction,
                    act=sc.activation,
                )
            )
        stages.append(nn.Sequential(*blocks))
        info.append(FeatureInfo(f"stage{i + 1}", sc.width, strides[i + 1]))
    encoder = JetNet(stem, stages, info)
    dec = config.decoder
    widths = tuple(encoder.feature_info[t].channels for t in dec.taps)
    decoder = RegSegDecoder(
        widths,
        config.num_classes,
        low_width=dec.low_width,
        head_width=dec.head_width,
        fuse_width=dec.fuse_width,
        out_width=dec.out_width,
        separable=dec.separable,
        act=dec.activation,
    )
    model = JetSeg(encoder, decoder, dec.taps)
    model.config = config
    return model


__all__ = ["FeatureInfo", "JetNet", "JetSeg", "RegSegDecoder", "build_model", "create_act"]
