"""How big and how heavy a network is: parameters, MACs, the paper's FLOPs, bytes, kernels.

Every figure is counted, never estimated, by running the network once on a zero image of the
given size:

* **params**: trainable parameters.
* **MACs**: multiply-accumulates of convolutions and linear layers (what the JetSeg paper calls
  "FLOPs"). A merged JetConv depthwise step counts each branch's own taps, not the zeros it is
  padded with.
* **paper FLOPs** (the JetSeg paper's eq. 2, as we read it): the sum of a conv term
  ``2 * MACs`` (one multiply and one add per MAC), a pooling term (one op per pooled input
  element), a fully-connected term ``2 * in * out``, an activation term (one op per activation
  output element) and a batch-norm term (two ops, scale and shift, per element).
* **activation bytes**: bytes read and written by every executed operator (inputs + outputs,
  parameters excluded): the memory traffic that bounds a network this small.
* **kernels**: ATen operators executed in eager mode, views excluded: roughly the kernel launches.

``profile(model, (H, W))`` returns a :class:`ComplexityReport` with totals and a per-layer table.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from .layers import REU, TanhExp
from .layers.jetconv import FusedPointwise, MergedDepthwise

_ACTIVATIONS = (nn.ReLU, nn.Hardswish, nn.SiLU, nn.Sigmoid, REU, TanhExp)
_POOLS = (nn.AvgPool2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


def conv_macs(conv: nn.Conv1d | nn.Conv2d, output: torch.Tensor) -> int:
    """MACs of a convolution: output elements x (in_channels / groups) x kernel area."""
    kernel = 1
    for k in conv.kernel_size:
        kernel *= k
    return output.numel() * (conv.in_channels // conv.groups) * kernel


@dataclass
class LayerStats:
    """One leaf module's share of the network."""

    name: str
    kind: str
    out_shape: tuple[int, ...]
    params: int = 0
    macs: int = 0
    flops: int = 0
    act_bytes: int = 0
    kernels: int = 0


@dataclass
class ComplexityReport:
    """Totals and per-layer rows for one network at one input size."""

    input_size: tuple[int, int]
    params: int
    macs: int
    flops: int
    act_bytes: int
    kernels: int
    layers: list[LayerStats] = field(default_factory=list)

    def by_prefix(self, prefix: str) -> dict[str, int]:
        """Totals over the layers whose name starts with ``prefix`` (e.g. ``encoder.stages.1``)."""
        rows = [r for r in self.layers if r.name == prefix or r.name.startswith(prefix + ".")]
        return {
            "params": sum(r.params for r in rows),
            "macs": sum(r.macs for r in rows),
            "flops": sum(r.flops for r in rows),
            "act_bytes": sum(r.act_bytes for r in rows),
            "kernels": sum(r.kernels for r in rows),
        }

    def to_dict(self) -> dict:
        return {
            "input_size": list(self.input_size),
            "params": self.params,
            "macs": self.macs,
            "paper_flops": self.flops,
            "act_bytes": self.act_bytes,
            "kernels": self.kernels,
        }


class _OpCounter(TorchDispatchMode):
    """Counts executed ATen ops and the bytes they touch, attributed to the current module."""

    def __init__(self, owner: list[str], params: set[int]) -> None:
        super().__init__()
        self.owner = owner
        self.params = params
        self.kernels: dict[str, int] = {}
        self.bytes: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        out = func(*args, **(kwargs or {}))
        if func.is_view or func.__name__.startswith(("detach", "alias", "_to_copy")):
            return out
        name = self.owner[-1] if self.owner else ""
        self.kernels[name] = self.kernels.get(name, 0) + 1
        moved = 0
        for t in _tensors((args, kwargs, out)):
            if t.untyped_storage().data_ptr() not in self.params:
                moved += t.numel() * t.element_size()
        self.bytes[name] = self.bytes.get(name, 0) + moved
        return out


def _tensors(obj) -> Iterator[torch.Tensor]:  # noqa: ANN001
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _tensors(o)


def _leaf_cost(module: nn.Module, inputs: tuple, output: torch.Tensor) -> tuple[int, int]:
    """(MACs, paper FLOPs) of one leaf module call."""
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        macs = conv_macs(module, output)
        bias = output.numel() if module.bias is not None else 0
        return macs, 2 * macs + bias
    if isinstance(module, MergedDepthwise):
        per_channel = output.numel() // module.out_chs  # B * H * W
        macs = per_channel * module.chs * module.effective_taps
        return macs, 2 * macs
    if isinstance(module, FusedPointwise):
        macs = output.numel() * (module.in_chs // module.groups)
        return macs, 2 * macs
    if isinstance(module, nn.Linear):
        macs = output.numel() * module.in_features
        return macs, 2 * macs
    if isinstance(module, nn.BatchNorm2d):
        return 0, 2 * output.numel()
    if isinstance(module, _ACTIVATIONS):
        return 0, output.numel()
    if isinstance(module, _POOLS):
        return 0, inputs[0].numel()
    return 0, 0


def _is_leaf(module: nn.Module) -> bool:
    if isinstance(module, (MergedDepthwise, FusedPointwise)):
        return True
    return next(module.children(), None) is None


@contextmanager
def _hooks(model: nn.Module, stack: list[str], rows: dict[str, LayerStats]):
    handles = []
    for name, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(lambda m, i, name=name: stack.append(name)))

        def post(m, inputs, output, name=name):  # noqa: ANN001
            stack.pop()
            if _is_leaf(m) and isinstance(output, torch.Tensor):
                macs, flops = _leaf_cost(m, inputs, output)
                row = rows.setdefault(name, LayerStats(name, type(m).__name__, tuple(output.shape)))
                row.macs += macs
                row.flops += flops

        handles.append(module.register_forward_hook(post))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def profile(
    model: nn.Module, input_size: tuple[int, int], batch: int = 1, in_channels: int = 3
) -> ComplexityReport:
    """Count a network at ``input_size`` (H, W); the model is run once in eval mode."""
    was_training = model.training
    model.eval()
    stack: list[str] = []
    rows: dict[str, LayerStats] = {}
    param_ptrs = {p.untyped_storage().data_ptr() for p in model.parameters()}
    param_ptrs |= {b.untyped_storage().data_ptr() for b in model.buffers()}
    x = torch.zeros(batch, in_channels, *input_size)
    # Warm the cached JetConv weights so that only the inference path is counted.
    with torch.no_grad():
        model(x)
    counter = _OpCounter(stack, param_ptrs)
    try:
        with torch.no_grad(), _hooks(model, stack, rows), counter:
            model(x)
    finally:
        model.train(was_training)
    # Ops run outside any leaf (adds, concatenations, resizes) belong to their nearest module.
    for name, module in model.named_modules():
        if name in counter.kernels and name not in rows:
            rows[name] = LayerStats(name, type(module).__name__ + " (own ops)", ())
    for name, row in rows.items():
        row.kernels = counter.kernels.get(name, 0)
        row.act_bytes = counter.bytes.get(name, 0)
    for name, module in model.named_modules():
        if name in rows and _is_leaf(module):
            rows[name].params = sum(p.numel() for p in module.parameters() if p.requires_grad)
    ordered = [rows[n] for n, _ in model.named_modules() if n in rows]
    return ComplexityReport(
        input_size=tuple(input_size),
        params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        macs=sum(r.macs for r in ordered),
        flops=sum(r.flops for r in ordered),
        act_bytes=sum(counter.bytes.values()),
        kernels=sum(counter.kernels.values()),
        layers=ordered,
    )
