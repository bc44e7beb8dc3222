"""The counters against closed forms, and the presets against the sizes the paper reports."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from jetseg.complexity import profile
from jetseg.config import load_config
from jetseg.layers import JetConv
from jetseg.model import build_model


def _conv_report(conv: nn.Conv2d, size: tuple[int, int]):
    return profile(nn.Sequential(conv), size, in_channels=conv.in_channels)


@pytest.mark.parametrize(
    "name,conv,size,expected",
    [
        # plain 3x3, stride 1, 'same': H*W*Cout*Cin*k*k
        ("plain", nn.Conv2d(8, 16, 3, padding=1, bias=False), (20, 30), 20 * 30 * 16 * 8 * 9),
        # depthwise 5x5 stride 2: ceil(H/2)*ceil(W/2)*C*k*k
        (
            "depthwise",
            nn.Conv2d(12, 12, 5, 2, 2, groups=12, bias=False),
            (21, 31),
            11 * 16 * 12 * 25,
        ),
        # dilated 3x3, dilation 4, padding 4: same size, same MACs as an undilated 3x3
        (
            "dilated",
            nn.Conv2d(6, 10, 3, padding=4, dilation=4, bias=False),
            (17, 19),
            17 * 19 * 10 * 6 * 9,
        ),
        # grouped 1x1 with 4 groups: H*W*Cout*(Cin/g)
        ("grouped", nn.Conv2d(16, 32, 1, groups=4, bias=False), (9, 11), 9 * 11 * 32 * 4),
    ],
)
def test_mac_counter_equals_closed_form(name, conv, size, expected):
    report = _conv_report(conv, size)
    assert report.macs == expected, name
    assert report.flops == 2 * expected
    assert report.params == conv.weight.numel()
    assert report.kernels >= 1


def test_merged_jetconv_counts_each_branch_taps_not_padding_zeros():
    conv = JetConv(8, 8, [(3, 1, 3), (7, 2, 5)], groups=2)
    report = profile(nn.Sequential(conv), (10, 12), in_channels=8)
    hw = 10 * 12
    depthwise = hw * 8 * ((3 + 7) + (3 + 7) + (9 + 25))  # k x 1, 1 x k, square, per branch
    pointwise = hw * 8 * (16 // 2)  # 16 stacked channels, 2 groups
    assert report.macs == depthwise + pointwise
    assert report.params == sum(p.numel() for p in conv.parameters())


def test_bn_and_activation_terms_of_the_paper_flops():
    model = nn.Sequential(nn.BatchNorm2d(4), nn.ReLU())
    report = profile(model, (5, 6), in_channels=4)
    elems = 4 * 5 * 6
    assert report.macs == 0
    assert report.flops == 2 * elems + elems


def test_layer_rows_add_up_and_scale_with_input_size():
    model = build_model("nano")
    small = profile(model, (128, 128))
    big = profile(model, (256, 256))
    assert sum(r.macs for r in small.layers) == small.macs
    assert sum(r.kernels for r in small.layers) == small.kernels
    assert big.macs == pytest.approx(4 * small.macs, rel=0.02)
    assert big.kernels == small.kernels
    assert big.act_bytes > 3.5 * small.act_bytes
    assert model.training  # profile restores the mode


@pytest.mark.parametrize(
    "name,low,high",
    [("nano", 30_000, 35_000), ("agx", 300_000, 400_000), ("workstation", 1_200_000, 1_400_000)],
)
def test_presets_are_sized_like_the_papers_device_configs(name, low, high):
    report = profile(build_model(load_config(name)), (512, 512))
    assert low <= report.params <= high
    if name == "nano":
        assert report.macs <= 1.125e9


def test_profile_runs_under_no_grad_and_leaves_no_hooks():
    model = build_model("nano")
    profile(model, (64, 64))
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    x = torch.randn(1, 3, 64, 64, requires_grad=True)
    model(x).sum().backward()
    assert x.grad is not None
