"""Latency estimates from device specifications: a per-layer roofline, calibrated by measurements.

An estimate stands in for a measurement when no board is at hand. It is always labelled as one
(provenance ``estimated``, flags ``"estimate"`` and ``"calibrated"`` / ``"uncalibrated"``) and
never enters the latency cache as a measurement.

**The roofline.** :func:`network_cost` runs :func:`jetseg.complexity.profile` on the network
and sorts every layer into a group: ``conv`` (dense spatial convolutions), ``pointwise`` (dense
1x1), ``grouped`` (grouped convolutions), ``depthwise``, ``multiplier`` (depthwise with a
channel multiplier: a JetConv's first step over several branches), ``activation``,
``attention`` (the gates' pooling, reductions, sigmoids and products), ``elementwise`` (shuffles,
additions) and ``resize`` (the decoder's and the head's upsampling and concatenation). It counts
what the deployed graph executes: a merged JetConv step runs its zero-padded dense kernel, batch
norm is folded into the convolution before it, and a ReLU or hard-swish right after a
convolution is fused into it (both free). For each layer, with ``P`` the device's peak for the
precision (tensor cores only for conv and pointwise groups) and ``BW`` its memory bandwidth::

    time = max(flops / (P * compute_efficiency), bytes / (BW * memory_efficiency))
           + kernels * launch_cost

summed over the layers. ``bytes`` are the activation traffic plus the weights at the precision's
element size, ``kernels`` the eager operator count.

**Calibration.** :func:`calibrate` fits, from measured latencies of known networks, a
:class:`Calibration` (:class:`RooflineParameters`): per group a compute and a memory time
multiplier (``1 / efficiency``) and a per-kernel cost, plus a constant per inference. A few
dozen totals cannot separate two dozen numbers, so some are fitted as one (one compute
efficiency for the matrix-product groups conv, pointwise and grouped; one for the light groups;
one kernel cost). The fit is non-negative least squares on relative errors with a mild pull
towards the profile's own figures. Two ways of combining a layer's compute and memory times are
fitted, the roofline's ``max`` (each layer's bound re-decided until none changes side) and
``sum`` (no overlap, closer to a CPU running small layers); 5-fold cross-validation on the
measurements picks one. :class:`EstimateProvider` loads the calibration saved next to its cache
(:func:`calibration_path`), so estimates improve as a board measures::

    jetsearch latency measure agx.yaml --provider worker --workers http://agx:8765 \\
        --token-file agx.token --target agx --cache lat.sqlite   # stores results with configs
    jetsearch latency calibrate --profile agx-xavier --cache lat.sqlite
    jetsearch latency estimate my-net.yaml --profile agx-xavier --cache lat.sqlite

**Where the configs come from.** The latency cache stores ``arch_hash -> result``; to recompute
layer costs calibration needs the config itself. It is read from the entry's ``extra``
(``extra["config_yaml"]``) or from a sidecar table ``jetseg_configs (arch_hash, config_yaml)``
in the same SQLite file, which :func:`record_config` fills (``jetsearch latency measure`` calls
it; a study should call it for every network it measures).
"""

from __future__ import annotations

import contextlib
import json
import math
import platform
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from jetsearch.latency._onnx_input import inspect_model, read_onnx_bytes, validate_input_shape
from jetsearch.latency.base import (
    LatencyError,
    LatencyProvider,
    LatencyResult,
    Provenance,
    fingerprint_key,
)

if TYPE_CHECKING:
    from jetsearch.latency.cache import LatencyCache
    from jetseg.config import JetSegConfig

PRECISIONS = ("fp32", "fp16")
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
# Tensor cores run dense and pointwise convolutions; depthwise and elementwise work cannot use
# them and runs on the CUDA cores.
TENSOR_CORE_GROUPS = frozenset({"conv", "pointwise"})
ESTIMATE_FLAG = "estimate"
CALIBRATED_FLAG = "calibrated"
UNCALIBRATED_FLAG = "uncalibrated"
CONFIG_TABLE = "jetseg_configs"
COMBINE_MODES = ("max", "sum")


# ---------------------------------------------------------------------------------------------
# device profiles


@dataclass(frozen=True)
class DeviceProfile:
    """What a device can do at best, from its public specifications.

    ``fp32_tflops`` and ``fp16_tflops`` are dense peaks of the general-purpose cores (CUDA
    cores on a GPU, SIMD units on a CPU; ``fp16_tflops`` is None where there is no fast fp16).
    ``tensor_fp16_tflops`` is the dense (not sparse) tensor-core fp16 peak, None without tensor
    cores; it applies to dense and pointwise convolutions only. ``memory_gbps`` is the peak
    DRAM bandwidth, ``launch_us`` the fixed cost of one kernel launch (always a rough
    assumption). ``compute_efficiency`` and ``memory_efficiency`` are the fractions of the peaks
    an uncalibrated estimate assumes small segmentation layers reach (rough assumptions too;
    calibration replaces them). ``source`` says where the figures come from.
    """

    name: str
    description: str
    device_type: str
    fp32_tflops: float
    fp16_tflops: float | None
    tensor_fp16_tflops: float | None
    memory_gbps: float
    launch_us: float
    compute_efficiency: float
    memory_efficiency: float
    default_precision: str
    source: str

    def __post_init__(self) -> None:
        if self.device_type not in ("gpu", "cpu"):
            raise ValueError(f"device_type must be 'gpu' or 'cpu', got {self.device_type!r}")
        if self.default_precision not in self.precisions:
            raise ValueError(
                f"profile {self.name!r}: default_precision {self.default_precision!r} is not "
                f"one of its precisions {list(self.precisions)}"
            )
        for key in ("fp32_tflops", "memory_gbps", "compute_efficiency", "memory_efficiency"):
            if not getattr(self, key) > 0:
                raise ValueError(f"profile {self.name!r}: {key} must be > 0")
        if self.launch_us < 0:
            raise ValueError(f"profile {self.name!r}: launch_us must be >= 0")

    @property
    def precisions(self) -> tuple[str, ...]:
        """The precisions this device runs fast: fp32, and fp16 where it has fp16 units."""
        return PRECISIONS if self.fp16_tflops is not None else ("fp32",)

    def peak_flops(self, precision: str, group: str) -> float:
        """Peak FLOP/s for `precision` on layers of `group` (tensor cores where they apply)."""
        self.check_precision(precision)
        if precision == "fp32":
            return self.fp32_tflops * 1e12
        if self.tensor_fp16_tflops is not None and group in TENSOR_CORE_GROUPS:
            return self.tensor_fp16_tflops * 1e12
        assert self.fp16_tflops is not None
        return self.fp16_tflops * 1e12

    def check_precision(self, precision: str) -> None:
        if precision not in self.precisions:
            raise ValueError(
                f"profile {self.name!r} has no fast {precision} (no fp16 units); "
                f"use one of {list(self.precisions)}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in self.__dataclass_fields__}


# Figures from NVIDIA's public module datasheets and product pages. "Derived" figures follow from
# the listed core count and clock (cores x 2 FLOPs per FMA x clock); tensor-core fp16 on Ampere
# is half the dense INT8 rate NVIDIA lists. Launch costs and efficiencies are rough assumptions.
_GPU_PROFILES = (
    DeviceProfile(
        name="agx-xavier",
        description="Jetson AGX Xavier (512-core Volta, 64 tensor cores), TensorRT",
        device_type="gpu",
        # Jetson AGX Xavier Series datasheet: 512 CUDA cores at 1377 MHz -> 1.41 TFLOPS fp32,
        # 2.82 fp16 on CUDA cores (derived); 11 TFLOPS fp16 tensor cores (NVIDIA's AGX Xavier
        # product page: "32 TOPS INT8, 11 TFLOPS FP16").
        fp32_tflops=1.41,
        fp16_tflops=2.82,
        tensor_fp16_tflops=11.0,
        # 256-bit LPDDR4x at 2133 MHz: 136.5 GB/s (datasheet).
        memory_gbps=136.5,
        launch_us=10.0,  # rough assumption: TensorRT enqueue per layer on Carmel CPUs
        compute_efficiency=0.25,  # rough assumption
        memory_efficiency=0.6,  # rough assumption
        default_precision="fp16",
        source="NVIDIA Jetson AGX Xavier Series datasheet and product page",
    ),
    DeviceProfile(
        name="agx-orin",
        description="Jetson AGX Orin 64GB (2048-core Ampere, 64 tensor cores), TensorRT",
        device_type="gpu",
        # Jetson AGX Orin Series datasheet: 2048 CUDA cores at 1.3 GHz -> 5.3 TFLOPS fp32 (as
        # listed), 10.6 fp16 on CUDA cores (derived); GPU 170 sparse INT8 TOPS -> 85 dense ->
        # 42.5 TFLOPS dense fp16 on tensor cores (derived).
        fp32_tflops=5.3,
        fp16_tflops=10.6,
        tensor_fp16_tflops=42.5,
        # 256-bit LPDDR5: 204.8 GB/s (datasheet).
        memory_gbps=204.8,
        launch_us=6.0,  # rough assumption
        compute_efficiency=0.25,  # rough assumption
        memory_efficiency=0.6,  # rough assumption
        default_precision="fp16",
        source="NVIDIA Jetson AGX Orin Series datasheet",
    ),
    DeviceProfile(
        name="orin-nano",
        description="Jetson Orin Nano 8GB (1024-core Ampere, 32 tensor cores), TensorRT",
        device_type="gpu",
        # Jetson Orin Nano Series datasheet: 1024 CUDA cores at 625 MHz -> 1.28 TFLOPS fp32,
        # 2.56 fp16 on CUDA cores (derived); 40 sparse INT8 TOPS -> 20 dense -> 10 TFLOPS
        # dense fp16 on tensor cores (derived). (JetPack 6.2 "Super" clocks are higher.)
        fp32_tflops=1.28,
        fp16_tflops=2.56,
        tensor_fp16_tflops=10.0,
        # 128-bit LPDDR5: 68 GB/s (datasheet).
        memory_gbps=68.0,
        launch_us=10.0,  # rough assumption
        compute_efficiency=0.25,  # rough assumption
        memory_efficiency=0.6,  # rough assumption
        default_precision="fp16",
        source="NVIDIA Jetson Orin Nano Series datasheet",
    ),
    DeviceProfile(
        name="nano",
        description="Jetson Nano 4GB (128-core Maxwell, no tensor cores), TensorRT",
        device_type="gpu",
        # Jetson Nano datasheet / product page: 128 CUDA cores at 921 MHz, 472 GFLOPS fp16
        # (as listed); fp32 at half that rate, 236 GFLOPS (derived). No tensor cores.
        fp32_tflops=0.236,
        fp16_tflops=0.472,
        tensor_fp16_tflops=None,
        # 64-bit LPDDR4 at 1600 MHz: 25.6 GB/s (datasheet).
        memory_gbps=25.6,
        launch_us=20.0,  # rough assumption: slower Cortex-A57 host
        compute_efficiency=0.35,  # rough assumption
        memory_efficiency=0.6,  # rough assumption
        default_precision="fp16",
        source="NVIDIA Jetson Nano module datasheet and product page",
    ),
    DeviceProfile(
        name="titan-rtx",
        description="NVIDIA TITAN RTX workstation GPU (4608-core Turing, 576 tensor cores)",
        device_type="gpu",
        # TITAN RTX product page: 4608 CUDA cores at 1770 MHz boost -> 16.3 TFLOPS fp32 (as
        # listed), 32.6 fp16 on CUDA cores (derived); 130 TFLOPS tensor performance (as listed,
        # dense fp16).
        fp32_tflops=16.3,
        fp16_tflops=32.6,
        tensor_fp16_tflops=130.0,
        # 384-bit GDDR6 at 14 Gbps: 672 GB/s (product page).
        memory_gbps=672.0,
        launch_us=4.0,  # rough assumption: desktop CPU, TensorRT
        compute_efficiency=0.2,  # rough assumption
        memory_efficiency=0.6,  # rough assumption
        default_precision="fp16",
        source="NVIDIA TITAN RTX product page",
    ),
)

# Without /proc/cpuinfo (or a clock in it) the local profile assumes this clock; the memory
# bandwidth available to one or two cores of a shared machine is a documented rough default.
DEFAULT_CPU_GHZ = 2.5
DEFAULT_CPU_MEMORY_GBPS = 20.0
DEFAULT_LOCAL_THREADS = 2


def _cpuinfo() -> tuple[str, float | None, set[str]]:
    """(model name, clock in GHz or None, flags) of this machine's first CPU."""
    model, ghz, flags = platform.processor() or "unknown CPU", None, set()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return model, ghz, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "model name" and model == (platform.processor() or "unknown CPU"):
            model = value
        elif key == "cpu MHz" and ghz is None:
            with contextlib.suppress(ValueError):
                ghz = float(value) / 1000.0
        elif key == "flags" and not flags:
            flags = set(value.split())
    return model, ghz, flags


def local_profile(threads: int = DEFAULT_LOCAL_THREADS) -> DeviceProfile:
    """This machine's CPU as a device profile, from /proc/cpuinfo and documented defaults.

    Peak fp32 = `threads` cores x clock ("cpu MHz", else 2.5 GHz) x FLOPs per cycle from the
    SIMD flags (AVX-512: 64, AVX2 + FMA: 32, AVX: 16, else 8; two FMA ports assumed, a rough
    assumption since some cores split AVX-512 in two). Memory bandwidth is a documented default
    (20 GB/s for one or two cores, a rough assumption), not measured, so that the profile and
    its calibration do not move between runs.
    """
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    model, ghz, flags = _cpuinfo()
    if "avx512f" in flags:
        per_cycle = 64
    elif "avx2" in flags and "fma" in flags:
        per_cycle = 32
    elif "avx" in flags:
        per_cycle = 16
    else:
        per_cycle = 8
    clock = ghz or DEFAULT_CPU_GHZ
    return DeviceProfile(
        name="local",
        description=f"this machine's CPU ({model}), onnxruntime, {threads} threads",
        device_type="cpu",
        fp32_tflops=threads * clock * per_cycle / 1e3,
        fp16_tflops=None,
        tensor_fp16_tflops=None,
        memory_gbps=DEFAULT_CPU_MEMORY_GBPS,
        launch_us=5.0,  # rough assumption: onnxruntime's per-node dispatch on a CPU
        compute_efficiency=0.3,  # rough assumption
        memory_efficiency=0.5,  # rough assumption
        default_precision="fp32",
        source=(
            f"/proc/cpuinfo ({model}, {clock:.2f} GHz"
            f"{'' if ghz else ' assumed'}, {per_cycle} FLOPs/cycle from SIMD flags) and "
            f"documented defaults ({DEFAULT_CPU_MEMORY_GBPS:g} GB/s, 5 us per node)"
        ),
    )


PROFILES: dict[str, DeviceProfile] = {profile.name: profile for profile in _GPU_PROFILES}
PROFILES["local"] = local_profile()
PROFILE_ALIASES = {"agx": "agx-xavier", "workstation": "titan-rtx"}


def profile_names() -> list[str]:
    """Every known profile name and alias."""
    return sorted([*PROFILES, *PROFILE_ALIASES])


def get_profile(name: str) -> DeviceProfile:
    """The profile called `name` (or an alias: agx -> agx-xavier, workstation -> titan-rtx)."""
    if isinstance(name, DeviceProfile):
        return name
    key = PROFILE_ALIASES.get(name, name)
    if key not in PROFILES:
        aliases = ", ".join(f"{alias} -> {real}" for alias, real in PROFILE_ALIASES.items())
        raise ValueError(
            f"unknown device profile {name!r}; known profiles: {', '.join(sorted(PROFILES))} "
            f"(aliases: {aliases})"
        )
    return PROFILES[key]


# ---------------------------------------------------------------------------------------------
# what a network costs, layer by layer


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


def _ideal_terms(
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
        cost.layers, _ideal_terms(cost, profile, precision), strict=True
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


# ---------------------------------------------------------------------------------------------
# fit quality and calibration


def kendall_tau(first: Sequence[float], second: Sequence[float]) -> float:
    """Kendall's tau-b rank correlation of two equally long sequences (ties counted as tau-b).

    1 when both order the items identically, -1 when reversed; NaN when either is constant.
    """
    a = np.asarray(first, dtype=float)
    b = np.asarray(second, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(
            f"kendall_tau needs two equally long 1-D sequences, got {a.shape}, {b.shape}"
        )
    if len(a) < 2:
        return math.nan
    # All pairs i < j at once: sign products say concordant (+) or discordant (-).
    upper = np.triu_indices(len(a), k=1)
    da = np.sign(a[:, None] - a[None, :])[upper]
    db = np.sign(b[:, None] - b[None, :])[upper]
    numerator = float(np.sum(da * db))
    denominator = math.sqrt(float(np.count_nonzero(da)) * float(np.count_nonzero(db)))
    return numerator / denominator if denominator else math.nan


@dataclass(frozen=True)
class FitQuality:
    """How well predictions match measurements: rank agreement and relative errors."""

    count: int
    kendall_tau: float
    within_10pct: float
    median_abs_error: float
    max_abs_error: float

    @classmethod
    def of(cls, predicted: Sequence[float], measured: Sequence[float]) -> FitQuality:
        predicted_array = np.asarray(predicted, dtype=float)
        measured_array = np.asarray(measured, dtype=float)
        if predicted_array.shape != measured_array.shape or not len(measured_array):
            raise ValueError(
                "fit quality needs equally many (and some) predictions and measurements"
            )
        errors = np.abs(predicted_array / measured_array - 1.0)
        return cls(
            count=int(len(measured_array)),
            kendall_tau=kendall_tau(predicted_array, measured_array),
            within_10pct=float(np.mean(errors <= 0.10)),
            median_abs_error=float(np.median(errors)),
            max_abs_error=float(np.max(errors)),
        )

    def describe(self) -> str:
        return (
            f"Kendall tau {self.kendall_tau:.3f}, {100 * self.within_10pct:.0f}% within +-10%, "
            f"median |error| {100 * self.median_abs_error:.1f}%, "
            f"max {100 * self.max_abs_error:.1f}% (n={self.count})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in self.__dataclass_fields__}


@dataclass(frozen=True)
class Calibration:
    """Roofline parameters fitted to one device's measurements, with how well they fit.

    ``profile`` and ``precision`` say which estimates it corrects; ``target_key`` names the
    measured target it was fitted to (the cache's key), ``fit`` the quality on the fitting set.
    Save with :meth:`save`, read back with :meth:`load`.
    """

    profile: str
    precision: str
    parameters: RooflineParameters
    fit: FitQuality
    target_key: str | None = None
    created_at: str = field(
        default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds")
    )

    FORMAT = "jetsearch-calibration/1"

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.FORMAT,
            "profile": self.profile,
            "precision": self.precision,
            "target_key": self.target_key,
            "created_at": self.created_at,
            "parameters": self.parameters.to_dict(),
            "fit": self.fit.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "calibration") -> Calibration:
        if not isinstance(data, Mapping) or data.get("format") != cls.FORMAT:
            found = data.get("format") if isinstance(data, Mapping) else type(data).__name__
            raise ValueError(f"{source}: key 'format' must be {cls.FORMAT!r}, got {found!r}")
        try:
            return cls(
                profile=str(data["profile"]),
                precision=str(data["precision"]),
                parameters=RooflineParameters.from_dict(data["parameters"]),
                fit=FitQuality(**data["fit"]),
                target_key=data.get("target_key"),
                created_at=str(data["created_at"]),
            )
        except KeyError as error:
            raise ValueError(f"{source}: missing key {error.args[0]!r}") from None
        except (TypeError, ValueError) as error:
            raise ValueError(f"{source}: {error}") from None

    def save(self, path: str | Path) -> Path:
        """Write as JSON, atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        temporary.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        """Read a :meth:`save`'d file; errors name the file and the bad key."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"calibration file {path} does not exist")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"calibration file {path} is not valid JSON: {error}") from None
        return cls.from_dict(data, source=f"calibration file {path}")


def calibration_path(cache_path: str | Path, profile: str, precision: str) -> Path:
    """Where the calibration of `profile` at `precision` lives: a JSON file beside the cache."""
    cache_path = Path(cache_path)
    name = get_profile(profile).name
    return cache_path.with_name(f"{cache_path.stem}.calibration-{name}-{precision}.json")


def nnls(matrix: np.ndarray, target: np.ndarray, max_iterations: int | None = None) -> np.ndarray:
    """Non-negative least squares: argmin ||A x - b|| with x >= 0 (Lawson and Hanson, 1974)."""
    rows, columns = matrix.shape
    solution = np.zeros(columns)
    active = np.zeros(columns, dtype=bool)  # the "passive" set P: variables free to move
    tolerance = 10 * np.finfo(float).eps * np.linalg.norm(matrix, 1) * max(rows, columns)
    gradient = matrix.T @ (target - matrix @ solution)
    iterations, limit = 0, max_iterations or 30 * columns
    while (~active).any() and (gradient[~active] > tolerance).any() and iterations < limit:
        active[np.argmax(np.where(active, -np.inf, gradient))] = True
        while True:
            iterations += 1
            trial = np.zeros(columns)
            trial[active] = np.linalg.lstsq(matrix[:, active], target, rcond=None)[0]
            if (trial[active] > tolerance).all() or iterations >= limit:
                solution = np.where(active, np.maximum(trial, 0.0), 0.0)
                break
            # Step back to the boundary of the feasible region, dropping variables that hit 0.
            blocking = active & (trial <= tolerance)
            step = np.min(solution[blocking] / (solution[blocking] - trial[blocking]))
            solution = solution + step * (trial - solution)
            active &= solution > tolerance
            solution[~active] = 0.0
        gradient = matrix.T @ (target - matrix @ solution)
    return solution


CalibrationPair = tuple["JetSegConfig", Sequence[int], float]

# How strongly calibration pulls each parameter towards the profile's own figure (scaled to the
# measurements' overall level), relative to one sample's squared relative error: enough to keep
# groups that the data hardly constrains at sensible values, small enough to let data decide.
DEFAULT_SHRINKAGE = 0.001
_MAX_ASSIGNMENT_ROUNDS = 30
_CV_FOLDS = 5

# Parameters fitted as one, because a few dozen totals cannot tell them apart: dense, pointwise
# and grouped convolutions all run as matrix products (one compute efficiency); the FLOPs of
# activations, attention gates, element-wise ops and resizes are all cheap arithmetic; and one
# kernel launch costs the same whatever it runs.
_GEMM_GROUPS = ("conv", "pointwise", "grouped")
_LIGHT_GROUPS = ("activation", "attention", "elementwise", "resize")
_FITTED_TOGETHER = (
    [[("compute", g) for g in _GEMM_GROUPS]]
    + [[("compute", "depthwise")], [("compute", "multiplier")]]
    + [[("compute", g) for g in _LIGHT_GROUPS]]
    + [[("memory", g)] for g in GROUPS]
    + [[("launch", g) for g in GROUPS]]
    + [[("constant", "")]]
)


def _slot(kind: str, group: str) -> int:
    """Index of one parameter in the full vector [compute x G, memory x G, launch x G, constant]."""
    offsets = {"compute": 0, "memory": 1, "launch": 2}
    if kind == "constant":
        return 3 * len(GROUPS)
    return offsets[kind] * len(GROUPS) + GROUPS.index(group)


def _tie_matrix() -> np.ndarray:
    """(full parameters, fitted parameters) 0/1 matrix: full = tie @ fitted."""
    tie = np.zeros((3 * len(GROUPS) + 1, len(_FITTED_TOGETHER)))
    for column, members in enumerate(_FITTED_TOGETHER):
        for kind, group in members:
            tie[_slot(kind, group), column] = 1.0
    return tie


class _Design:
    """The fitting set as arrays: per sample, per layer ideal times, kernels and group index."""

    def __init__(self, costs: Sequence[NetworkCost], profile: DeviceProfile, precision: str):
        self.samples = []
        for cost in costs:
            terms = np.array(_ideal_terms(cost, profile, precision), dtype=float).reshape(-1, 3)
            groups = np.array([GROUPS.index(layer.group) for layer in cost.layers], dtype=int)
            self.samples.append((terms[:, 0], terms[:, 1], terms[:, 2], groups))

    def subset(self, indices: Iterable[int]) -> _Design:
        design = object.__new__(_Design)
        design.samples = [self.samples[i] for i in indices]
        return design

    @staticmethod
    def vector(parameters: RooflineParameters) -> np.ndarray:
        return np.array(
            [parameters.compute_scale[g] for g in GROUPS]
            + [parameters.memory_scale[g] for g in GROUPS]
            + [parameters.launch_us[g] for g in GROUPS]
            + [parameters.constant_ms]
        )

    @staticmethod
    def parameters(vector: np.ndarray, combine: str) -> RooflineParameters:
        n = len(GROUPS)
        return RooflineParameters(
            compute_scale={g: float(vector[i]) for i, g in enumerate(GROUPS)},
            memory_scale={g: float(vector[n + i]) for i, g in enumerate(GROUPS)},
            launch_us={g: float(vector[2 * n + i]) for i, g in enumerate(GROUPS)},
            constant_ms=float(vector[3 * n]),
            combine=combine,
        )

    def predict(self, vector: np.ndarray, combine: str) -> np.ndarray:
        n = len(GROUPS)
        compute_scale, memory_scale = vector[:n], vector[n : 2 * n]
        launch_us, constant = vector[2 * n : 3 * n], vector[3 * n]
        totals = []
        for compute, memory, kernels, groups in self.samples:
            compute_ms, memory_ms = compute * compute_scale[groups], memory * memory_scale[groups]
            if combine == "sum":
                per_layer = compute_ms + memory_ms
            else:
                per_layer = np.maximum(compute_ms, memory_ms)
            totals.append(constant + per_layer.sum() + (kernels * launch_us[groups]).sum() / 1e3)
        return np.array(totals)

    def rows(self, vector: np.ndarray, combine: str) -> np.ndarray:
        """The linear design: with "max", each layer counts where it is bound under `vector`."""
        n = len(GROUPS)
        matrix = np.zeros((len(self.samples), 3 * n + 1))
        for row, (compute, memory, kernels, groups) in enumerate(self.samples):
            if combine == "sum":
                compute_bound = np.ones(len(groups), dtype=bool)
                memory_bound = compute_bound
            else:
                compute_bound = compute * vector[:n][groups] >= memory * vector[n : 2 * n][groups]
                memory_bound = ~compute_bound
            np.add.at(matrix[row], groups[compute_bound], compute[compute_bound])
            np.add.at(matrix[row], n + groups[memory_bound], memory[memory_bound])
            np.add.at(matrix[row], 2 * n + groups, kernels / 1e3)
            matrix[row, 3 * n] = 1.0
        return matrix


def _fit(
    design: _Design, measured: np.ndarray, prior: np.ndarray, combine: str, shrinkage: float
) -> np.ndarray:
    """Penalised NNLS of the tied parameters; for "max", repeated until the bounds settle."""
    tie = _tie_matrix()
    # The prior of a tied parameter: the mean of its members' priors.
    tied_prior = (tie.T @ prior) / tie.sum(axis=0)
    level = float(np.median(measured))
    # Ridge rows: (x_j - prior_j) / prior_j; a parameter whose prior is 0 (the constant) is
    # measured against the median latency instead.
    scale = np.where(tied_prior > 0, tied_prior, level)
    penalty = np.sqrt(shrinkage) * np.diag(1.0 / scale)
    penalty_target = np.sqrt(shrinkage) * (tied_prior > 0)

    def objective(vector: np.ndarray) -> float:
        residual = design.predict(vector, combine) / measured - 1.0
        tied = np.linalg.lstsq(tie, vector, rcond=None)[0]
        return float(residual @ residual + np.sum((penalty @ tied - penalty_target) ** 2))

    best, best_loss = prior, objective(prior)
    vector = prior
    seen: set[bytes] = set()
    for _ in range(_MAX_ASSIGNMENT_ROUNDS):
        rows = design.rows(vector, combine)
        matrix = (rows @ tie) / measured[:, None]
        target = np.concatenate([np.ones(len(measured)), penalty_target])
        solution = tie @ nnls(np.vstack([matrix, penalty]), target)
        loss = objective(solution)
        if loss < best_loss:
            best, best_loss = solution, loss
        signature = design.rows(solution, combine).tobytes()
        if combine == "sum" or signature in seen:
            break
        seen.add(signature)
        vector = solution
    return best


def fit_parameters(
    costs: Sequence[NetworkCost],
    measured_ms: Sequence[float],
    profile: DeviceProfile | str,
    precision: str | None = None,
    *,
    shrinkage: float = DEFAULT_SHRINKAGE,
    combine: str | None = None,
) -> RooflineParameters:
    """Roofline parameters that fit `measured_ms` of the networks `costs` describe.

    Minimises the squared relative errors plus ``shrinkage`` times the squared relative
    distance of each parameter from the profile's own figure, scaled by the one factor that
    best fits the data (the constant is pulled towards 0), by non-negative least squares.
    With ``combine="max"`` each layer's bound (compute or memory) is re-decided and the fit
    repeated until no layer changes side. With ``combine=None`` both "max" and "sum" are fitted
    and the one with the smaller 5-fold cross-validated error is kept (with fewer than 10
    measurements: the roofline's "max").
    """
    profile = get_profile(profile) if isinstance(profile, str) else profile
    precision = precision or profile.default_precision
    measured = np.asarray(measured_ms, dtype=float)
    if len(costs) != len(measured) or not len(measured):
        raise ValueError(
            f"calibration needs one measurement per network, got {len(costs)} networks and "
            f"{len(measured)} measurements"
        )
    if not np.all(np.isfinite(measured) & (measured > 0)):
        raise ValueError("measured latencies must be positive and finite")
    if shrinkage <= 0:
        raise ValueError(f"shrinkage must be > 0, got {shrinkage}")
    if combine is not None and combine not in COMBINE_MODES:
        raise ValueError(f"combine must be None or one of {list(COMBINE_MODES)}, got {combine!r}")
    design = _Design(costs, profile, precision)
    base = design.vector(RooflineParameters.from_profile(profile))

    def prior_for(indices: np.ndarray, mode: str) -> np.ndarray:
        # The level: the single factor on the profile's own figures that fits best.
        ratio = design.subset(indices).predict(base, mode) / measured[indices]
        prior = base * float(ratio.sum() / (ratio**2).sum())
        prior[-1] = 0.0
        return prior

    everything = np.arange(len(measured))
    if combine is None:
        if len(measured) < 2 * _CV_FOLDS:
            combine = "max"
        else:
            errors = {}
            for mode in COMBINE_MODES:
                squared = 0.0
                for fold in range(_CV_FOLDS):
                    train = everything[everything % _CV_FOLDS != fold]
                    test = everything[everything % _CV_FOLDS == fold]
                    vector = _fit(
                        design.subset(train),
                        measured[train],
                        prior_for(train, mode),
                        mode,
                        shrinkage,
                    )
                    residual = design.subset(test).predict(vector, mode) / measured[test] - 1.0
                    squared += float(residual @ residual)
                errors[mode] = squared
            combine = min(COMBINE_MODES, key=lambda mode: errors[mode])
    vector = _fit(design, measured, prior_for(everything, combine), combine, shrinkage)
    return design.parameters(vector, combine)


def calibrate(
    pairs: Sequence[CalibrationPair],
    profile: DeviceProfile | str,
    precision: str | None = None,
    *,
    target_key: str | None = None,
    shrinkage: float = DEFAULT_SHRINKAGE,
) -> Calibration:
    """Fit a :class:`Calibration` of `profile` from ``(config, input_size, measured_ms)`` pairs.

    ``input_size`` is (H, W) (batch 1) or (B, C, H, W). The returned calibration's ``fit``
    reports Kendall tau and the share within +-10% on these same pairs.
    """
    profile = get_profile(profile) if isinstance(profile, str) else profile
    precision = precision or profile.default_precision
    profile.check_precision(precision)
    if len(pairs) < 3:
        raise ValueError(f"calibration needs at least 3 measured networks, got {len(pairs)}")
    costs = [network_cost(config, size) for config, size, _ in pairs]
    measured = [float(ms) for _, _, ms in pairs]
    parameters = fit_parameters(costs, measured, profile, precision, shrinkage=shrinkage)
    predicted = [roofline(cost, profile, precision, parameters).total_ms for cost in costs]
    return Calibration(
        profile=profile.name,
        precision=precision,
        parameters=parameters,
        fit=FitQuality.of(predicted, measured),
        target_key=target_key,
    )


# ---------------------------------------------------------------------------------------------
# configs beside the cache, and the measured pairs calibration reads


def _cache_file(cache: LatencyCache | str | Path) -> Path:
    return Path(cache.path if hasattr(cache, "path") else cache)


def record_config(cache: LatencyCache | str | Path, config: JetSegConfig) -> str:
    """Remember `config` under its arch_hash in the cache file's sidecar table; returns the hash.

    Calibration reads it back to recompute the layer costs of measured networks.
    """
    from jetsearch.latency.cache import LatencyCache
    from jetseg.config import arch_hash, dump_config

    path = _cache_file(cache)
    LatencyCache(path)  # creates the file and its schema, or refuses a file that is not one
    digest = arch_hash(config)
    connection = sqlite3.connect(path, timeout=30.0, isolation_level=None)
    try:
        connection.execute("PRAGMA busy_timeout=30000")
        connection.execute(
            f"CREATE TABLE IF NOT EXISTS {CONFIG_TABLE} (arch_hash TEXT PRIMARY KEY, "
            "config_yaml TEXT NOT NULL, created_at TEXT NOT NULL)"
        )
        connection.execute(
            f"INSERT OR REPLACE INTO {CONFIG_TABLE} VALUES (?, ?, ?)",
            (digest, dump_config(config), datetime.now(timezone.utc).isoformat(timespec="seconds")),
        )
    finally:
        connection.close()
    return digest


def recorded_configs(cache: LatencyCache | str | Path) -> dict[str, str]:
    """Every config YAML of the sidecar table, by arch_hash (empty when there is none)."""
    path = _cache_file(cache)
    if not path.is_file():
        return {}
    connection = sqlite3.connect(path, timeout=30.0)
    try:
        exists = connection.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (CONFIG_TABLE,)
        ).fetchone()
        if not exists:
            return {}
        return dict(connection.execute(f"SELECT arch_hash, config_yaml FROM {CONFIG_TABLE}"))
    finally:
        connection.close()


def measured_target_keys(cache: LatencyCache | str | Path) -> dict[str, int]:
    """How many measured results each target key holds in the cache."""
    from jetsearch.latency.base import MEASURED
    from jetsearch.latency.cache import LatencyCache

    path = _cache_file(cache)
    LatencyCache(path)
    connection = sqlite3.connect(path, timeout=30.0)
    try:
        kinds = [kind.value for kind in MEASURED]
        rows = connection.execute(
            "SELECT target_key, COUNT(*) FROM latency WHERE provenance IN (?, ?) "
            "GROUP BY target_key ORDER BY target_key",
            kinds,
        )
        return dict(rows.fetchall())
    finally:
        connection.close()


@dataclass
class MeasuredPairs:
    """Calibration input read from a cache: the pairs, the target key and what was left out."""

    target_key: str
    pairs: list[CalibrationPair]
    skipped: list[str]


def measured_pairs(
    cache: LatencyCache | str | Path,
    target_key: str | None = None,
    *,
    precision: str | None = None,
) -> MeasuredPairs:
    """The (config, input shape, median ms) of every measured result of one target in a cache.

    Without `target_key` the cache must hold measurements of exactly one target. Results whose
    config is unknown (neither in ``extra["config_yaml"]`` nor in the sidecar table), whose
    config no longer hashes to the stored arch_hash, or whose fingerprint precision differs from
    `precision` are skipped, each with its reason.
    """
    import yaml

    from jetsearch.latency.cache import LatencyCache
    from jetseg.config import ConfigError, arch_hash, load_config

    path = _cache_file(cache)
    if not path.is_file():
        raise FileNotFoundError(f"latency cache {path} does not exist")
    keys = measured_target_keys(path)
    if target_key is None:
        if len(keys) != 1:
            listing = ", ".join(f"{key} ({count})" for key, count in keys.items()) or "none"
            raise ValueError(
                f"latency cache {path} holds measurements of {len(keys)} targets; pick one "
                f"with --target-key: {listing}"
            )
        target_key = next(iter(keys))
    elif target_key not in keys:
        listing = ", ".join(f"{key} ({count})" for key, count in keys.items()) or "none"
        raise ValueError(
            f"latency cache {path} has no measurements for target key {target_key!r}; "
            f"it holds: {listing}"
        )
    sidecar = recorded_configs(path)
    pairs: list[CalibrationPair] = []
    skipped: list[str] = []
    for digest, shape, result, extra in LatencyCache(path).all_results(target_key):
        text = extra.get("config_yaml") if isinstance(extra, Mapping) else None
        text = text or sidecar.get(digest)
        if text is None:
            skipped.append(f"{digest}: no config stored for it")
            continue
        try:
            config = load_config(yaml.safe_load(text))
        except (ConfigError, yaml.YAMLError) as error:
            skipped.append(f"{digest}: stored config does not load: {error}")
            continue
        if arch_hash(config) != digest:
            skipped.append(f"{digest}: stored config hashes to {arch_hash(config)}")
            continue
        measured_precision = result.fingerprint.get("precision")
        if precision is not None and measured_precision not in (None, precision):
            skipped.append(f"{digest}: measured at {measured_precision}, not {precision}")
            continue
        pairs.append((config, shape, result.median_ms))
    return MeasuredPairs(target_key, pairs, skipped)


# ---------------------------------------------------------------------------------------------
# the provider


class EstimateProvider(LatencyProvider):
    """Latency estimates from a device profile: the roofline, calibrated when a fit exists.

    Args:
        profile: a profile name or alias (see :data:`PROFILES`, :data:`PROFILE_ALIASES`).
        cache_path: the latency cache; the calibration saved beside it
            (:func:`calibration_path`) is loaded, and reloaded whenever the file changes.
        precision: "fp32" or "fp16"; default the profile's own (fp16 on the Jetsons).
        calibration: an explicit calibration (overrides the one beside the cache).

    ``measure(onnx_model, input_shape, config=config)`` checks the model and shape like every
    provider, then estimates the network `config` describes; without a config it raises
    :class:`LatencyError` (an estimate needs the network's layers). Results are always
    labelled: provenance ``estimated``, one sample, flags ``"estimate"`` and ``"calibrated"``
    or ``"uncalibrated"``, and a fingerprint naming the profile, its source and the calibration.
    Thread-safe: nothing is shared but a small cache of layer costs.
    """

    kind = Provenance.ESTIMATED

    def __init__(
        self,
        profile: str,
        *,
        cache_path: str | Path | None = None,
        precision: str | None = None,
        calibration: Calibration | None = None,
    ) -> None:
        self.profile = get_profile(profile)
        self.precision = precision or self.profile.default_precision
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {self.precision!r}")
        self.profile.check_precision(self.precision)
        if calibration is not None and (
            calibration.profile != self.profile.name or calibration.precision != self.precision
        ):
            raise ValueError(
                f"calibration is for {calibration.profile} {calibration.precision}, not "
                f"{self.profile.name} {self.precision}"
            )
        self.cache_path = Path(cache_path) if cache_path else None
        self._explicit = calibration
        self._loaded: tuple[float, Calibration] | None = None
        self._lock = threading.Lock()

    @property
    def calibration_file(self) -> Path | None:
        if self.cache_path is None:
            return None
        return calibration_path(self.cache_path, self.profile.name, self.precision)

    @property
    def calibration(self) -> Calibration | None:
        """The calibration in use: the explicit one, else the file beside the cache, else None."""
        if self._explicit is not None:
            return self._explicit
        path = self.calibration_file
        if path is None:
            return None
        try:
            stamp = path.stat().st_mtime
        except OSError:
            return None
        with self._lock:
            if self._loaded is None or self._loaded[0] != stamp:
                self._loaded = (stamp, Calibration.load(path))
            return self._loaded[1]

    def fingerprint(self) -> dict[str, Any]:
        calibration = self.calibration
        return {
            "provider": "estimate",
            "model": "roofline",
            "profile": self.profile.name,
            "device": self.profile.description,
            "device_type": self.profile.device_type,
            "precision": self.precision,
            "profile_source": self.profile.source,
            "fp32_tflops": self.profile.fp32_tflops,
            "fp16_tflops": self.profile.fp16_tflops,
            "tensor_fp16_tflops": self.profile.tensor_fp16_tflops,
            "memory_gbps": self.profile.memory_gbps,
            "launch_us": self.profile.launch_us,
            "calibration": None
            if calibration is None
            else {
                "created_at": calibration.created_at,
                "target_key": calibration.target_key,
                "file": str(self.calibration_file) if self._explicit is None else None,
                "fit": calibration.fit.to_dict(),
            },
        }

    def target_fingerprint_key(self) -> str:
        fingerprint = self.fingerprint()
        calibration = fingerprint["calibration"]
        fingerprint["calibration_stamp"] = calibration["created_at"] if calibration else None
        keys = (
            "profile",
            "precision",
            "fp32_tflops",
            "fp16_tflops",
            "tensor_fp16_tflops",
            "memory_gbps",
            "launch_us",
            "calibration_stamp",
        )
        label = f"estimate-{self.profile.name}-{self.precision}"
        return fingerprint_key(label, fingerprint, keys)

    def explain(self, config: JetSegConfig, input_size: Sequence[int]) -> Estimate:
        """The full estimate (per layer) of `config` at `input_size` ((H, W) or (B, C, H, W))."""
        calibration = self.calibration
        parameters = calibration.parameters if calibration is not None else None
        cost = network_cost(config, input_size)
        return roofline(cost, self.profile, self.precision, parameters)

    def estimate(self, config: JetSegConfig, input_size: Sequence[int]) -> float:
        """Estimated milliseconds of `config` at `input_size` ((H, W) or (B, C, H, W))."""
        return self.explain(config, input_size).total_ms

    def measure(
        self,
        onnx_model: bytes | str | Path,
        input_shape: tuple[int, ...],
        *,
        config: JetSegConfig | None = None,
    ) -> LatencyResult:
        """Estimate the network `config` describes (the ONNX model is only checked)."""
        model = read_onnx_bytes(onnx_model)
        shape = validate_input_shape(input_shape)
        inspect_model(model, shape)
        if config is None:
            raise LatencyError(
                f"an estimate on profile {self.profile.name!r} needs the network's config: "
                "call measure(onnx_model, input_shape, config=config); the ONNX graph alone "
                "is not estimated"
            )
        if len(shape) != 4:
            raise LatencyError(f"an estimate needs a (B, C, H, W) input shape, got {shape}")
        try:
            estimate = self.explain(config, shape)
        except ValueError as error:
            raise LatencyError(f"cannot estimate {config.name!r}: {error}") from None
        fingerprint = self.fingerprint()
        fingerprint["by_group_ms"] = {g: round(v, 6) for g, v in estimate.by_group().items()}
        flags = (ESTIMATE_FLAG, CALIBRATED_FLAG if estimate.calibrated else UNCALIBRATED_FLAG)
        return LatencyResult.from_samples(
            [estimate.total_ms],
            warmup_runs=0,
            provenance=self.kind,
            fingerprint=fingerprint,
            input_shape=shape,
            flags=flags,
        )


__all__ = [
    "GROUPS",
    "PRECISIONS",
    "PROFILES",
    "PROFILE_ALIASES",
    "Calibration",
    "DeviceProfile",
    "Estimate",
    "EstimateProvider",
    "FitQuality",
    "LayerCost",
    "LayerEstimate",
    "MeasuredPairs",
    "NetworkCost",
    "RooflineParameters",
    "calibrate",
    "calibration_path",
    "fit_parameters",
    "get_profile",
    "kendall_tau",
    "local_profile",
    "measured_pairs",
    "measured_target_keys",
    "network_cost",
    "nnls",
    "profile_names",
    "record_config",
    "recorded_configs",
    "roofline",
]
