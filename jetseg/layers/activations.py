"""Light activations: REU and TanhExp, plus the standard ones a search compares them with.

Both are single elementwise expressions: autograd differentiates them in float32 and they export
to plain ONNX ops (Min/Clip, Exp, Tanh, Mul), so TensorRT fuses them like any pointwise chain.
"""

from __future__ import annotations

import torch
from torch import nn

# tanh(exp(x)) is exactly 1.0 in float32 once x > ~3, so clamping the exponent at 10 changes
# nothing in the forward pass and keeps exp (and its gradient) from overflowing.
_TANHEXP_CLAMP = 10.0


def reu(x: torch.Tensor) -> torch.Tensor:
    """Rectified exponential unit: ``x`` for x > 0, ``x * exp(x)`` for x <= 0."""
    # exp(min(x, 0)) is 1 for positive x, so one expression covers both sides without where():
    # where() would backpropagate 0 * inf = NaN from the unused x * exp(x) at large x.
    return x * torch.exp(torch.clamp(x, max=0.0))


def tanhexp(x: torch.Tensor) -> torch.Tensor:
    """TanhExp: ``x * tanh(exp(x))`` with the exponent clamped so large x cannot overflow."""
    return x * torch.tanh(torch.exp(torch.clamp(x, max=_TANHEXP_CLAMP)))


class REU(nn.Module):
    """Module form of :func:`reu`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return reu(x)


class TanhExp(nn.Module):
    """Module form of :func:`tanhexp`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return tanhexp(x)


ACTIVATION_LAYERS: dict[str, type[nn.Module]] = {
    "reu": REU,
    "tanhexp": TanhExp,
    "relu": nn.ReLU,
    "hardswish": nn.Hardswish,
    "silu": nn.SiLU,
}


def get_act_layer(name: str | type[nn.Module]) -> type[nn.Module]:
    """An activation class by name (``reu``, ``tanhexp``, ``relu``, ``hardswish``, ``silu``)."""
    if isinstance(name, type):
        return name
    try:
        return ACTIVATION_LAYERS[name]
    except KeyError:
        allowed = ", ".join(ACTIVATION_LAYERS)
        raise ValueError(f"unknown activation {name!r}; allowed: {allowed}") from None


def create_act(name: str | type[nn.Module]) -> nn.Module:
    """A fresh activation module by name or class."""
    return get_act_layer(name)()
