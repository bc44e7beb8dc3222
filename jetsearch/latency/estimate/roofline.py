"""The roofline: what a network costs layer by layer, and how long that takes on a device.

:func:`network_cost` runs :func:`jetseg.complexity.profile` on the network and sorts every layer
into one of :data:`GROUPS`; it counts what the deployed graph executes (a merged JetConv step
runs its zero-padded dense kernel, batch norm is folded into the convolution before it, a ReLU or
hard-swish right after a convolution is fused into it). :func:`roofline` turns the costs into
time on a :class:`~jetsearch.latency.estimate.profiles.DeviceProfile`, per layer::

    time = max(flops / (P * compute_efficiency), bytes / (BW * memory_efficiency))
           + kernels * launch_cost

with ``P`` the device's peak for the precision (tensor cores only for the conv and pointwise
groups) and ``BW`` its memory bandwidth; :class:`RooflineParameters` hold the efficiencies and
launch costs, the profile's own rough figures until calibration fits them.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jetsearch.latency.estimate.profiles import DeviceProfile, get_profile

if TYPE_CHECKING:
    from jetseg.config import JetSegConfig

GROUPS = (
    "conv",
    "pointwise",
    "grouped",
    "depthwise",
    "multiplier",
    "activation",
    "attention",
    "elementwise",
    "resize",
)
COMBINE_MODES = ("max", "sum")


@dataclass(frozen=True)
class LayerCost:
    """One layer's work: executed FLOPs, activation and weight bytes (fp32), kernel launches."""

    name: str
    kind: str
    group: str
    flops: float
    act_bytes: float
    weight_bytes: float
    kernels: int


@dataclass(frozen=True)
class NetworkCost:
    """Every layer of one network at one input shape (B, C, H, W)."""

    name: str
    arch_hash: str
    input_shape: tuple[int, ...]
    layers: tuple[LayerCost, ...]

    @property
    def flops(self) -> float:
        return sum(layer.flops for layer in self.layers)

    @property
    def bytes(self) -> float:
        return sum(layer.act_bytes + layer.weight_bytes for layer in self.layers)

    @property
    def kernels(self) -> int:
        return sum(layer.kernels for layer in self.layers)


def _conv_group(groups: int, in_channels: int, out_channels: int, pointwise: bool) -> str:
    """The group of a convolution from its channel and group counts."""
    if groups == 1:
        return "pointwise" if pointwise else "conv"
    if groups == in_channels == out_channels:
        return "depthwise"
    if groups == in_channels:
        # Depthwise with a channel multiplier (a JetConv's first step over several branches):
        # neither the dense nor the depthwise kernels apply, it runs group by group.
        return "multiplier"
    return "grouped"


def _layer_cost(row: Any, module: Any, parent: Any) -> LayerCost:
    """Group and executed work of one profiled layer (`row`, a LayerStats)."""
    from torch import nn

    from jetseg.layers import ACTIVATION_LAYERS, ConvBnAct
    from jetseg.layers.attention import ATTENTION_LAYERS, ChannelGate, SpatialGate
    from jetseg.layers.jetconv import FusedPointwise, MergedDepthwise
    from jetseg.model import JetSeg, RegSegDecoder

    attention_types = (ChannelGate, SpatialGate, *(t for t in ATTENTION_LAYERS.values() if t))
    flops, act_bytes, kernels = float(row.flops), float(row.act_bytes), int(row.kernels)
    executes = True
    if isinstance(module, MergedDepthwise):
        # The deployed conv runs the zero-padded dense kernel of the merged branches, not only
        # the taps that count as MACs.
        taps = module.size * module.size if module.axis == "square" else module.size
        flops = 2.0 * math.prod(row.out_shape) * taps
        in_channels = module.chs if module.axis == "h" else module.out_chs
        group = _conv_group(in_channels, in_channels, module.out_chs, pointwise=False)
    elif isinstance(module, FusedPointwise):
        group = _conv_group(module.groups, module.in_chs, module.out_chs, pointwise=True)
    elif isinstance(module, nn.Conv2d):
        pointwise = tuple(module.kernel_size) == (1, 1)
        group = _conv_group(module.groups, module.in_channels, module.out_channels, pointwise)
    elif isinstance(module, nn.Linear):
        group = "pointwise"
    elif isinstance(module, nn.BatchNorm2d):
        # Every batch norm of JetSeg follows a convolution; export folds it into that conv's
        # weights, so it executes nothing.
        group, executes = "elementwise", False
    elif isinstance(module, tuple(ACTIVATION_LAYERS.values())):
        group = "activation"
        # TensorRT and onnxruntime fuse a ReLU or hard-swish into the convolution before it.
        fused = isinstance(module, nn.ReLU | nn.Hardswish) and isinstance(parent, ConvBnAct)
        executes = not fused
    elif isinstance(module, attention_types) or isinstance(parent, attention_types):
        group = "attention"  # pooling, channel reductions, sigmoid gates, the gating multiply
    elif isinstance(module, JetSeg | RegSegDecoder):
        group = "resize"  # their own ops: bilinear upsampling, concatenation, the head's add
    else:
        group = "elementwise"
    if not executes:
        flops, act_bytes, kernels = 0.0, 0.0, 0
    return LayerCost(
        name=row.name,
        kind=row.kind,
        group=group,
        flops=flops,
        act_bytes=act_bytes,
        weight_bytes=4.0 * row.params if executes else 0.0,
        kernels=kernels,
    )


_COST_CACHE: OrderedDict[tuple[str, tuple[int, ...]], NetworkCost] = OrderedDict()
_COST_CACHE_SIZE = 256
_COST_LOCK = threading.Lock()


def _input_shape(config: JetSegConfig, input_size: Sequence[int]) -> tuple[int, int, int, int]:
    """(B, C, H, W) from an (H, W) or a (B, C, H, W) input size."""
    size = tuple(int(value) for value in input_size)
    if len(size) == 2:
        size = (1, config.in_channels, *size)
    if len(size) != 4 or min(size) < 1:
        raise ValueError(f"input size must be (H, W) or (B, C, H, W) positive ints, got {size}")
    if size[1] != config.in_channels:
        raise ValueError(
            f"input shape {size} has {size[1]} channels but config {config.name!r} takes "
            f"in_channels={config.in_channels}"
        )
    return size  # type: ignore[return-value]


def network_cost(config: JetSegConfig, input_size: Sequence[int]) -> NetworkCost:
    """Per-layer costs of the network `config` builds at `input_size` ((H, W) or (B, C, H, W)).

    Runs :func:`jetseg.complexity.profile` once per (arch_hash, shape); later calls are served
    from a small in-process cache.
    """
    from jetseg.complexity import profile
    from jetseg.config import arch_hash
    from jetseg.model import build_model

    shape = _input_shape(config, input_size)
    key = (arch_hash(config), shape)
    with _COST_LOCK:
        if key in _COST_CACHE:
            _COST_CACHE.move_to_end(key)
            return _COST_CACHE[key]
    model = build_model(config)
    report = profile(model, shape[2:], batch=shape[0], in_channels=shape[1])
    modules = dict(model.named_modules())
    cost = NetworkCost(
        name=config.name,
        arch_hash=key[0],
        input_shape=shape,
        layers=tuple(
            _layer_cost(row, modules[row.name], modules[row.name.rpartition(".")[0]])
            for row in report.layers
        ),
    )
    with _COST_LOCK:
        _COST_CACHE[key] = cost
        while len(_COST_CACHE) > _COST_CACHE_SIZE:
            _COST_CACHE.popitem(last=False)
    return cost


# ---------------------------------------------------------------------------------------------
# the roofline


@dataclass(frozen=True)
class RooflineParameters:
    """The knobs of the roofline, per layer group.

    ``compute_scale[g]`` and ``memory_scale[g]`` multiply the ideal (peak) compute and memory
    times of a group's layers (``1 / efficiency``); ``launch_us[g]`` is the cost of one of its
    kernels; ``constant_ms`` is paid once per inference (input and output copies, dispatch).
    ``combine`` says how a layer's compute and memory times make its time: ``"max"`` (the
    roofline: they overlap) or ``"sum"`` (they do not, as on CPUs running small layers).
    """

    compute_scale: dict[str, float]
    memory_scale: dict[str, float]
    launch_us: dict[str, float]
    constant_ms: float = 0.0
    combine: str = "max"

    def __post_init__(self) -> None:
        if self.combine not in COMBINE_MODES:
            raise ValueError(
                f"roofline parameter 'combine' must be one of {list(COMBINE_MODES)}, "
                f"got {self.combine!r}"
            )
        for key in ("compute_scale", "memory_scale", "launch_us"):
            values = getattr(self, key)
            missing = sorted(set(GROUPS) - set(values))
            unknown = sorted(set(values) - set(GROUPS))
            if missing or unknown:
                raise ValueError(
                    f"roofline parameter {key!r} must name the groups {list(GROUPS)}; "
                    f"missing {missing}, unknown {unknown}"
                )
            bad = {g: v for g, v in values.items() if not (math.isfinite(v) and v >= 0)}
            if bad:
                raise ValueError(f"roofline parameter {key!r} must be finite and >= 0, got {bad}")
        if not (math.isfinite(self.constant_ms) and self.constant_ms >= 0):
            raise ValueError(f"constant_ms must be finite and >= 0, got {self.constant_ms}")

    @classmethod
    def from_profile(cls, profile: DeviceProfile) -> RooflineParameters:
        """The uncalibrated parameters: the profile's efficiencies and launch cost everywhere."""
        return cls(
            compute_scale={g: 1.0 / profile.compute_efficiency for g in GROUPS},
            memory_scale={g: 1.0 / profile.memory_efficiency for g in GROUPS},
            launch_us={g: profile.launch_us for g in GROUPS},
            constant_ms=0.0,
        )

    def scaled(self, factor: float) -> RooflineParameters:
        """Every time term multiplied by `factor` (constant_ms too)."""
        return RooflineParameters(
            compute_scale={g: v * factor for g, v in self.compute_scale.items()},
            memory_scale={g: v * factor for g, v in self.memory_scale.items()},
            launch_us={g: v * factor for g, v in self.launch_us.items()},
            constant_ms=self.constant_ms * factor,
            combine=self.combine,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "compute_scale": dict(self.compute_scale),
            "memory_scale": dict(self.memory_scale),
            "launch_us": dict(self.launch_us),
            "constant_ms": self.constant_ms,
            "combine": self.combine,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RooflineParameters:
        return cls(
            compute_scale={str(g): float(v) for g, v in data["compute_scale"].items()},
            memory_scale={str(g): float(v) for g, v in data["memory_scale"].items()},
            launch_us={str(g): float(v) for g, v in data["launch_us"].items()},
            constant_ms=float(data.get("constant_ms", 0.0)),
            combine=str(data.get("combine", "max")),
        )


@dataclass(frozen=True)
class LayerEstimate:
    """One layer's estimated time (ms): its compute and memory roofline terms and launches."""

    name: str
    kind: str
    group: str
    compute_ms: float
    memory_ms: float
    launch_ms: float
    combine: str = "max"

    @property
    def total_ms(self) -> float:
        if self.combine == "sum":
            return self.compute_ms + self.memory_ms + self.launch_ms
        return max(self.compute_ms, self.memory_ms) + self.launch_ms

    @property
    def bound(self) -> str:
        """What takes the most time: "compute", "memory" or "launch" (kernel launches)."""
        if self.launch_ms > max(self.compute_ms, self.memory_ms):
            return "launch"
        return "compute" if self.compute_ms >= self.memory_ms else "memory"


@dataclass(frozen=True)
class Estimate:
    """A whole network's estimated latency on one profile, with its per-layer parts."""

    profile: str
    precision: str
    input_shape: tuple[int, ...]
    calibrated: bool
    constant_ms: float
    layers: tuple[LayerEstimate, ...]

    @property
    def total_ms(self) -> float:
        return self.constant_ms + sum(layer.total_ms for layer in self.layers)

    def top(self, count: int = 5) -> list[LayerEstimate]:
        """The `count` layers that take the longest."""
        return sorted(self.layers, key=lambda layer: layer.total_ms, reverse=True)[:count]

    def by_group(self) -> dict[str, float]:
        """Estimated ms per layer group."""
        totals = dict.fromkeys(GROUPS, 0.0)
        for layer in self.layers:
            totals[layer.group] += layer.total_ms
        return totals


def ideal_terms(
    cost: NetworkCost, profile: DeviceProfile, precision: str
) -> list[tuple[float, float, float]]:
    """Per layer: (compute ms at peak, memory ms at peak bandwidth, kernels)."""
    element_scale = 0.5 if precision == "fp16" else 1.0  # costs are counted at fp32
    bandwidth = profile.memory_gbps * 1e9
    terms = []
    for layer in cost.layers:
        compute_ms = 1e3 * layer.flops / profile.peak_flops(precision, layer.group)
        memory_ms = 1e3 * element_scale * (layer.act_bytes + layer.weight_bytes) / bandwidth
        terms.append((compute_ms, memory_ms, float(layer.kernels)))
    return terms


def roofline(
    cost: NetworkCost,
    profile: DeviceProfile | str,
    precision: str | None = None,
    parameters: RooflineParameters | None = None,
) -> Estimate:
    """The roofline estimate of `cost` on `profile` (uncalibrated unless `parameters` given)."""
    profile = get_profile(profile) if isinstance(profile, str) else profile
    precision = precision or profile.default_precision
    profile.check_precision(precision)
    calibrated = parameters is not None
    parameters = parameters or RooflineParameters.from_profile(profile)
    layers = []
    for layer, (compute, memory, kernels) in zip(
        cost.layers, ideal_terms(cost, profile, precision), strict=True
    ):
        group = layer.group
        layers.append(
            LayerEstimate(
                name=layer.name,
                kind=layer.kind,
                group=group,
                compute_ms=compute * parameters.compute_scale[group],
                memory_ms=memory * parameters.memory_scale[group],
                launch_ms=kernels * parameters.launch_us[group] / 1e3,
                combine=parameters.combine,
            )
        )
    return Estimate(
        profile=profile.name,
        precision=precision,
        input_shape=cost.input_shape,
        calibrated=calibrated,
        constant_ms=parameters.constant_ms,
        layers=tuple(layers),
    )
