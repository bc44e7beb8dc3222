"""Layers against closed forms and naive reference implementations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from jetseg.config import auto_groups, common_divisors
from jetseg.layers import (
    CBAM,
    ECA,
    SAM,
    JetBlock,
    JetConv,
    channel_shuffle,
    eca_kernel_size,
    reu,
    tanhexp,
)


def _reu_closed(x: float) -> float:
    return x if x > 0 else x * math.exp(x)


def _tanhexp_closed(x: float) -> float:
    return x * math.tanh(math.exp(min(x, 700.0)))


@pytest.mark.parametrize("fn,closed", [(reu, _reu_closed), (tanhexp, _tanhexp_closed)])
def test_activation_matches_closed_form_and_is_finite_at_extremes(fn, closed):
    xs = [-100.0, -20.0, -3.0, -1.0, -0.5, -1e-3, 0.0, 1e-3, 0.5, 1.0, 3.0, 20.0, 100.0]
    x = torch.tensor(xs, dtype=torch.float32, requires_grad=True)
    y = fn(x)
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    for xi, yi in zip(xs, y.tolist(), strict=True):
        assert yi == pytest.approx(closed(xi), rel=1e-5, abs=1e-6), xi
    assert y[-1].item() == pytest.approx(100.0)
    assert abs(y[0].item()) < 1e-6


def test_activation_gradients_match_closed_forms():
    x = torch.linspace(-6, 6, 101, dtype=torch.float64, requires_grad=True)
    reu(x).sum().backward()
    expected = torch.where(x > 0, torch.ones_like(x), (1 + x) * torch.exp(x))
    assert torch.allclose(x.grad, expected.detach(), atol=1e-12)
    x.grad = None
    tanhexp(x).sum().backward()
    e = torch.exp(x)
    expected = torch.tanh(e) + x * e * (1 - torch.tanh(e) ** 2)
    assert torch.allclose(x.grad, expected.detach(), atol=1e-9)


def test_channel_shuffle_matches_definition_and_inverts():
    x = torch.arange(2 * 12 * 3 * 2, dtype=torch.float32).view(2, 12, 3, 2)
    y = channel_shuffle(x, 3)
    # ShuffleNet: output channel j*g + i comes from group i, position j.
    for i in range(3):
        for j in range(4):
            assert torch.equal(y[:, j * 3 + i], x[:, i * 4 + j])
    assert torch.equal(channel_shuffle(y, 4), x)
    assert channel_shuffle(x, 1) is x


def _naive_jetconv(conv: JetConv, x: torch.Tensor) -> torch.Tensor:
    """JetConv written out branch by branch from its parameters, as the paper describes it."""
    stride = 2 if conv.dw_h.stride == 2 else 1
    c = x.shape[1]
    outs = []
    for i, b in enumerate(conv.branches):
        d = conv.dw_h.dilations[i]
        wh = conv.dw_h.weights[i].view(c, 1, b.kernel, 1)
        ww = conv.dw_w.weights[i].view(c, 1, 1, b.kernel)
        wq = conv.dw_sq.weights[i].view(c, 1, b.square_kernel, b.square_kernel)
        pad = (b.kernel - 1) * d // 2
        y = F.conv2d(x, wh, stride=(stride, 1), padding=(pad, 0), dilation=(d, 1), groups=c)
        y = F.conv2d(y, ww, stride=(1, stride), padding=(0, pad), dilation=(1, d), groups=c)
        y = F.conv2d(y, wq, padding=b.square_kernel // 2, groups=c)
        outs.append(y)
    fused = [outs[0]]
    for y in outs[1:]:
        fused.append(fused[-1] + y)  # hierarchical fusion: y_j = y_{j-1} + b_j
    stacked = torch.stack(fused, dim=2).flatten(1, 2)  # channel-interleaved stacking
    y = F.conv2d(stacked, conv.pw.weight_raw, groups=conv.pw.groups)
    y = conv.bn(y)
    return x + y if conv.residual else y


@pytest.mark.parametrize(
    "branches,stride,groups,cout",
    [
        ([(3, 1, 3)], 1, 1, 8),
        ([(3, 1, 3), (5, 2, 5)], 1, 2, 8),
        ([(3, 1, 3), (5, 2, 3), (7, 3, 7)], 2, 4, 8),
        ([(7, 1, 5), (5, 1, 3), (3, 1, 3)], 2, 8, 16),
    ],
)
def test_merged_jetconv_equals_branch_by_branch_reference(branches, stride, groups, cout):
    torch.manual_seed(0)
    conv = JetConv(8, cout, branches, stride=stride, groups=groups)
    conv.bn.running_mean.normal_()
    conv.bn.running_var.uniform_(0.5, 2)
    x = torch.randn(2, 8, 19, 23)
    for mode in (True, False):  # train mode (batch stats) and eval mode (cached weights)
        conv.train(mode)
        got = conv(x)
        ref = _naive_jetconv(conv, x)
        assert got.shape == ref.shape
        assert torch.allclose(got, ref, atol=1e-5), (mode, (got - ref).abs().max())
    if stride == 2:
        assert got.shape[-2:] == (10, 12)
    assert conv.residual == (stride == 1 and cout == 8)


def test_eval_cache_follows_weight_updates():
    torch.manual_seed(0)
    conv = JetConv(4, 4, [(3, 1, 3), (5, 1, 3)], groups=2).eval()
    x = torch.randn(1, 4, 9, 9)
    before = conv(x)
    with torch.no_grad():
        conv.dw_h.weights[0].mul_(2.0)
    after = conv(x)
    assert not torch.allclose(before, after)
    assert torch.allclose(after, _naive_jetconv(conv, x), atol=1e-5)


def test_jetblock_has_one_block_level_skip():
    torch.manual_seed(0)
    block = JetBlock(
        8,
        8,
        expansion=2,
        branches=[(3, 1, 3)],
        expand_groups=2,
        reduce_groups=2,
        jetconv_groups=4,
        attention="eca",
        act="relu",
    ).eval()
    x = torch.randn(1, 8, 12, 12)
    with torch.no_grad():
        inner = block.reduce(
            block.act(block.attention(block.jetconv(block.shuffle(block.expand(x)))))
        )
        assert torch.allclose(block(x), x + inner, atol=1e-6)
    down = JetBlock(8, 16, expansion=2, branches=[(3, 1, 3)], stride=2)
    assert not down.skip and down(x).shape == (1, 16, 6, 6)


@pytest.mark.parametrize("cls", [CBAM, SAM, ECA])
def test_attention_gates_keep_shape_and_scale_into_range(cls):
    torch.manual_seed(0)
    att = cls(16, 4).eval()
    x = torch.rand(2, 16, 10, 14) + 0.1
    y = att(x)
    assert y.shape == x.shape
    ratio = y / x
    assert (ratio >= 0).all() and (ratio <= 1).all()  # sigmoid gates only scale down


def test_eca_kernel_size_is_the_adaptive_odd_size():
    assert [eca_kernel_size(c) for c in (8, 16, 32, 64, 128, 256, 512)] == [3, 3, 3, 3, 5, 5, 5]
    for c in (8, 24, 100, 1000):
        k = eca_kernel_size(c)
        assert k % 2 == 1 and abs(k - (math.log2(c) / 2 + 0.5)) <= 1.5


def test_auto_groups_picks_the_common_divisor_nearest_their_mean():
    assert common_divisors(32, 64) == [1, 2, 4, 8, 16, 32]
    assert auto_groups(32, 64) == 8  # mean 10.5
    assert auto_groups(16, 32) == 8  # divisors 1..16, mean 6.2
    assert auto_groups(3, 16) == 1
    assert auto_groups(12, 18) == 3  # divisors 1, 2, 3, 6: mean 3
