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

**Layer calibration (onnxruntime targets).** A few dozen totals cannot pin down two dozen
group coefficients, and a CPU has large implementation effects the roofline cannot see (a 1x1
convolution runs several times faster in onnxruntime's channel-blocked NCHWc layout; a
channel-multiplier step is far slower per FLOP than a depthwise one). So for a target that runs
onnxruntime (the ``local`` profile) calibration can work at the kernel level, as nn-Meter does:
:func:`jetsearch.latency.local.profile_layers` times every node of onnxruntime's optimised graph;
:func:`node_features` reads each node's group, layout, FLOPs and bytes from that graph (shapes by
inference, nothing run); :func:`fit_layer_model` fits per-node coefficients on thousands of
nodes (:class:`LayerModel`) and maps node sums to measured totals; :func:`calibrate_layers` stores
it as a ``kind="layers"`` :class:`Calibration`, which :class:`EstimateProvider` then uses to
predict a network from its ONNX graph alone::

    jetsearch latency measure net.yaml --layers --threads 2 --cache lat.sqlite   # per network
    jetsearch latency calibrate --profile local --cache lat.sqlite   # layers when tables exist
    jetsearch latency estimate other.yaml --profile local --cache lat.sqlite

**Where the configs come from.** The latency cache stores ``arch_hash -> result``; to recompute
layer costs calibration needs the config itself. It is read from the entry's ``extra``
(``extra["config_yaml"]``) or from a sidecar table ``jetseg_configs (arch_hash, config_yaml)``
in the same SQLite file, which :func:`record_config` fills (``jetsearch latency measure`` calls
it; a study should call it for every network it measures).
"""

from __future__ import annotations

import contextlib
import functools
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


def _export(config: JetSegConfig, input_size: Sequence[int]) -> bytes:
    """The deployed ONNX graph of `config` (traced at `input_size`)."""
    from jetseg.export import export_onnx
    from jetseg.model import build_model

    shape = _input_shape(config, input_size)
    return export_onnx(build_model(config), input_size=shape[2:], in_channels=shape[1])


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
        for layer in self.layers:  # a layer-calibrated estimate has onnxruntime's groups too
            totals[layer.group] = totals.get(layer.group, 0.0) + layer.total_ms
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
    """A device's estimate fitted to its measurements, with how well it fits.

    ``kind`` says which: ``"roofline"`` (roofline ``parameters`` fitted to network totals, any
    device) or ``"layers"`` (a :class:`LayerModel` fitted to onnxruntime's per-node times, for
    targets that run onnxruntime: the ``local`` profile; ``parameters`` is then None).
    ``profile`` and ``precision`` say which estimates it corrects; ``target_key`` names the
    measured target it was fitted to (the cache's key), ``fit`` the quality on the fitting set.
    Save with :meth:`save`, read back with :meth:`load`.
    """

    profile: str
    precision: str
    parameters: RooflineParameters | None
    fit: FitQuality
    target_key: str | None = None
    created_at: str = field(
        default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds")
    )
    kind: str = "roofline"
    layers: LayerModel | None = None
    threads: int | None = None

    FORMAT = "jetsearch-calibration/1"
    KINDS = ("roofline", "layers")

    def __post_init__(self) -> None:
        if self.kind not in self.KINDS:
            raise ValueError(f"calibration key 'kind' must be one of {list(self.KINDS)}")
        if self.kind == "roofline" and self.parameters is None:
            raise ValueError("a roofline calibration needs its 'parameters'")
        if self.kind == "layers" and self.layers is None:
            raise ValueError("a layer calibration needs its 'layers' model")

    def to_dict(self) -> dict[str, Any]:
        data = {
            "format": self.FORMAT,
            "kind": self.kind,
            "profile": self.profile,
            "precision": self.precision,
            "target_key": self.target_key,
            "created_at": self.created_at,
            "parameters": None if self.parameters is None else self.parameters.to_dict(),
            "fit": self.fit.to_dict(),
        }
        if self.layers is not None:
            data["layers"] = self.layers.to_dict()
            data["threads"] = self.threads
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "calibration") -> Calibration:
        if not isinstance(data, Mapping) or data.get("format") != cls.FORMAT:
            found = data.get("format") if isinstance(data, Mapping) else type(data).__name__
            raise ValueError(f"{source}: key 'format' must be {cls.FORMAT!r}, got {found!r}")
        try:
            kind = str(data.get("kind", "roofline"))
            parameters = data["parameters"] if kind == "roofline" else data.get("parameters")
            layers = data["layers"] if kind == "layers" else None
            threads = data.get("threads")
            return cls(
                profile=str(data["profile"]),
                precision=str(data["precision"]),
                parameters=None if parameters is None else RooflineParameters.from_dict(parameters),
                fit=FitQuality(**data["fit"]),
                target_key=data.get("target_key"),
                created_at=str(data["created_at"]),
                kind=kind,
                layers=None if layers is None else LayerModel.from_dict(layers),
                threads=None if threads is None else int(threads),
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
# the kernel-level model: onnxruntime's own nodes, timed one by one


NODE_GROUPS = (
    "conv",
    "pointwise",
    "grouped",
    "depthwise",
    "multiplier",
    "activation",
    "attention",
    "elementwise",
    "resize",
    "shuffle",
    "concat",
    "reorder",
    "shape",
)
_CONV_GROUPS = frozenset({"conv", "pointwise", "grouped", "depthwise", "multiplier"})
NCHWC_DOMAIN = "com.microsoft.nchwc"
_ACTIVATION_OPS = frozenset(
    {"Relu", "Clip", "HardSigmoid", "HardSwish", "Sigmoid", "Tanh", "Exp", "Softplus", "Div",
     "Erf", "Sqrt", "Pow", "Log", "LeakyRelu", "Elu", "Gelu", "QuickGelu", "Neg", "Abs"}
)  # fmt: skip
_ATTENTION_OPS = frozenset(
    {"ReduceMean", "ReduceMax", "ReduceSum", "GlobalAveragePool", "GlobalMaxPool", "MaxPool",
     "AveragePool", "Softmax"}
)  # fmt: skip
_ELEMENTWISE_OPS = frozenset({"Mul", "Add", "Sub", "Where", "Min", "Max"})
_RESIZE_OPS = frozenset({"Resize", "Upsample"})
_SHUFFLE_OPS = frozenset({"Reshape", "Transpose", "Flatten", "Squeeze", "Identity", "Expand"})
_CONCAT_OPS = frozenset({"Concat", "Split", "Slice", "Pad"})
_REORDER_OPS = frozenset({"ReorderInput", "ReorderOutput"})
# Reductions and the like whose work is their input; everything else: their output.
_INPUT_SIZED_OPS = _ATTENTION_OPS


@dataclass(frozen=True)
class NodeFeatures:
    """One node of onnxruntime's optimised graph and the work it does (fp32 bytes).

    ``group`` is one of :data:`NODE_GROUPS`, read from the node itself: a convolution's group
    from its weight (Cout, Cin/g, kh, kw) and group count (depthwise: g == Cin == Cout,
    multiplier: g == Cin < Cout, pointwise: 1x1 with g == 1, grouped: g > 1, conv: dense kxk);
    ``nchwc`` says onnxruntime runs it in its channel-blocked layout (domain
    ``com.microsoft.nchwc``), which on this CPU changes a kernel's speed several-fold.
    ``flops`` counts multiply-adds twice (convolutions) or one per output element;
    ``act_bytes`` are the non-constant inputs and the outputs, ``weight_bytes`` the constant
    inputs.
    """

    name: str
    op: str
    group: str
    nchwc: bool
    flops: float
    act_bytes: float
    weight_bytes: float
    in_channels: int
    out_channels: int

    @property
    def key(self) -> str:
        """The coefficient set the node is predicted with: its group, split by layout for convs."""
        if self.group in _CONV_GROUPS:
            return f"{self.group}/{'nchwc' if self.nchwc else 'nchw'}"
        return self.group

    @property
    def aligned(self) -> bool:
        """Both channel counts are multiples of 16 (onnxruntime's blocked layout on AVX-512)."""
        return self.in_channels % 16 == 0 and self.out_channels % 16 == 0

    def to_dict(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NodeFeatures:
        return cls(
            name=str(data["name"]),
            op=str(data["op"]),
            group=str(data["group"]),
            nchwc=bool(data["nchwc"]),
            flops=float(data["flops"]),
            act_bytes=float(data["act_bytes"]),
            weight_bytes=float(data["weight_bytes"]),
            in_channels=int(data["in_channels"]),
            out_channels=int(data["out_channels"]),
        )


def optimized_graph(onnx_model: bytes | str | Path, threads: int = DEFAULT_LOCAL_THREADS) -> bytes:
    """The graph onnxruntime (CPU, all optimisations) runs for `onnx_model`, as ONNX bytes.

    Builds a session exactly as a local measurement does, without running it, and returns the
    optimised model it saves (fused convolutions, the channel-blocked NCHWc layout and its
    reorders, folded constants).
    """
    import tempfile

    try:
        import onnxruntime
    except ImportError:
        raise ImportError(
            "the layer-level estimate needs onnxruntime: pip install onnxruntime"
        ) from None
    model = read_onnx_bytes(onnx_model)
    with tempfile.TemporaryDirectory(prefix="jetsearch-optimize-") as workdir:
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # the "optimised model is hardware specific" warning
        path = Path(workdir) / "optimized.onnx"
        options.optimized_model_filepath = str(path)
        try:
            onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own exception types
            raise LatencyError(f"onnxruntime could not load the model: {error}") from None
        return path.read_bytes()


def _attribute(node: Any, name: str, default: Any) -> Any:
    import onnx

    for attribute in node.attribute:
        if attribute.name == name:
            value = onnx.helper.get_attribute_value(attribute)
            return value.decode() if isinstance(value, bytes) else value
    return default


def _conv_output(node: Any, x: Sequence[int], w: Sequence[int]) -> tuple[int, ...]:
    """Output shape of a convolution (any domain) from its input and weight shapes."""
    spatial = len(w) - 2
    if len(x) != len(w):  # an input whose shape is not known right: keep the weight's rank
        x = (*x[:2], *([1] * spatial))[: len(w)]
    kernel = list(_attribute(node, "kernel_shape", list(w[2:])))
    strides = list(_attribute(node, "strides", [1] * spatial))
    dilations = list(_attribute(node, "dilations", [1] * spatial))
    pads = list(_attribute(node, "pads", [])) or [0] * (2 * spatial)
    kernel = kernel or list(w[2:])
    strides = strides or [1] * spatial
    dilations = dilations or [1] * spatial
    same = _attribute(node, "auto_pad", "NOTSET").startswith("SAME")
    sizes = []
    for axis in range(spatial):
        if same:
            sizes.append(-(-x[2 + axis] // strides[axis]))
            continue
        span = dilations[axis] * (kernel[axis] - 1) + 1
        padded = x[2 + axis] + pads[axis] + pads[axis + spatial]
        sizes.append((padded - span) // strides[axis] + 1)
    return (x[0], w[0], *sizes)


@functools.lru_cache(maxsize=1)
def nchwc_block() -> int:
    """Channels per block of onnxruntime's NCHWc layout here: 16 with AVX-512, else 8."""
    return 16 if "avx512f" in _cpuinfo()[2] else 8


def _static_shapes(original: Any, optimized: Any, input_shape: Sequence[int]) -> dict[str, tuple]:
    """Every tensor's shape in the optimised graph at `input_shape`, without running it.

    Tensors the original graph has get their shape from onnx shape inference of it (with the
    input fixed to `input_shape`; data propagation resolves the shape arithmetic of dynamic
    axes). Tensors onnxruntime made (fused outputs, NCHWc tensors) are propagated node by node:
    convolutions from their weights, reorders keep the logical shape, anything else broadcasts
    its inputs.
    """
    import onnx

    fixed = onnx.ModelProto()
    fixed.CopyFrom(original)
    graph_input = fixed.graph.input[0]
    dims = graph_input.type.tensor_type.shape.dim
    for dim, value in zip(dims, input_shape, strict=True):
        dim.Clear()
        dim.dim_value = int(value)
    inferred = onnx.shape_inference.infer_shapes(fixed, data_prop=True)
    shapes: dict[str, tuple] = {}
    batch = int(input_shape[0])
    for info in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]:
        if not info.type.tensor_type.HasField("shape"):
            continue
        dims = [
            d.dim_value if d.HasField("dim_value") else None
            for d in info.type.tensor_type.shape.dim
        ]
        # Inference loses the symbolic batch axis now and then; it is the input's batch.
        if dims and dims[0] is None and len(dims) >= 2:
            dims[0] = batch
        if None not in dims:
            shapes[info.name] = tuple(int(value) for value in dims)
    constants = {
        tensor.name: onnx.numpy_helper.to_array(tensor) for tensor in optimized.graph.initializer
        if tensor.data_type == onnx.TensorProto.INT64 and len(tensor.dims) == 1
    }  # fmt: skip
    for tensor in optimized.graph.initializer:
        shapes[tensor.name] = tuple(int(v) for v in tensor.dims)
    for node in optimized.graph.node:
        inputs = [shapes.get(name) for name in node.input]
        for output in node.output:
            if output in shapes or not output:
                continue
            x = inputs[0] if inputs else None
            if node.op_type in ("Conv", "FusedConv") and x and len(inputs) > 1 and inputs[1]:
                shapes[output] = _conv_output(node, x, inputs[1])
            elif (
                node.op_type == "Reshape"
                and x
                and len(node.input) > 1
                and node.input[1] in constants
            ):
                target = [int(v) for v in constants[node.input[1]]]
                target = [x[i] if v == 0 else v for i, v in enumerate(target)]
                if -1 in target:
                    known_part = math.prod(v for v in target if v != -1)
                    target[target.index(-1)] = math.prod(x) // max(known_part, 1)
                shapes[output] = tuple(target)
            elif node.op_type == "ReorderInput" and x and len(x) >= 2:
                block = nchwc_block()
                shapes[output] = (x[0], -(-x[1] // block) * block, *x[2:])
            elif node.op_type == "ReorderOutput" and x:
                shapes[output] = (x[0], int(_attribute(node, "channels", x[1])), *x[2:])
            elif node.op_type in ("GlobalAveragePool", "GlobalMaxPool") and x:
                shapes[output] = (*x[:2], *[1] * (len(x) - 2))
            elif node.op_type == "Upsample" and x and node.domain == NCHWC_DOMAIN:
                scales = _attribute(node, "scales", [1] * (len(x) - 2))
                shapes[output] = (*x[:2], *(d * s for d, s in zip(x[2:], scales, strict=False)))
            else:
                known = [shape for shape in inputs if shape is not None]
                try:
                    shapes[output] = tuple(np.broadcast_shapes(*known)) if known else ()
                except ValueError:
                    shapes[output] = known[0]
    return shapes


def _node_group(node: Any, weight: Sequence[int] | None) -> tuple[str, int, int]:
    """(group, input channels, output channels) of one optimised-graph node."""
    op = node.op_type
    if op in ("Conv", "FusedConv") and weight is not None and len(weight) >= 3:
        groups = int(_attribute(node, "group", 1))
        out_channels, per_group = int(weight[0]), int(weight[1])
        in_channels = per_group * groups
        pointwise = all(k == 1 for k in weight[2:])
        if groups == 1:
            group = "pointwise" if pointwise else "conv"
        elif per_group == 1 and out_channels == groups:
            group = "depthwise"
        elif per_group == 1:
            group = "multiplier"
        else:
            group = "grouped"
        return group, in_channels, out_channels
    for group, ops in (
        ("activation", _ACTIVATION_OPS),
        ("attention", _ATTENTION_OPS),
        ("elementwise", _ELEMENTWISE_OPS),
        ("resize", _RESIZE_OPS),
        ("shuffle", _SHUFFLE_OPS),
        ("concat", _CONCAT_OPS),
        ("reorder", _REORDER_OPS),
    ):
        if op in ops:
            return group, 0, 0
    return "shape", 0, 0


def node_features(
    onnx_model: bytes | str | Path,
    input_shape: Sequence[int],
    optimized_model: bytes | None = None,
    *,
    threads: int = DEFAULT_LOCAL_THREADS,
) -> list[NodeFeatures]:
    """Features of every node onnxruntime runs for `onnx_model` at `input_shape`, in graph order.

    `optimized_model` is the graph onnxruntime saved for it (a :class:`LayerProfile`'s
    ``optimized_model``); without it the graph is optimised here (:func:`optimized_graph`).
    Nothing is run or timed: shapes come from shape inference (see :func:`_static_shapes`).
    """
    import onnx

    shape = validate_input_shape(tuple(input_shape))
    original = onnx.load_from_string(read_onnx_bytes(onnx_model))
    optimized = onnx.load_from_string(
        optimized_model if optimized_model is not None else optimized_graph(onnx_model, threads)
    )
    shapes = _static_shapes(original, optimized, shape)
    constants = {tensor.name for tensor in optimized.graph.initializer}
    features = []
    for node in optimized.graph.node:
        out_shapes = [shapes.get(name, ()) for name in node.output if name]
        weight = shapes.get(node.input[1]) if len(node.input) > 1 else None
        group, in_channels, out_channels = _node_group(node, weight)
        activation = [math.prod(shapes.get(n, ())) for n in node.input if n and n not in constants]
        constant = [math.prod(shapes.get(n, ())) for n in node.input if n in constants]
        outputs = [math.prod(s) for s in out_shapes]
        if group in _CONV_GROUPS and out_shapes and weight is not None:
            # Weight (Cout, Cin/g, kh, kw): each output element takes Cin/g * kh * kw MACs.
            flops = 2.0 * math.prod(out_shapes[0]) * math.prod(weight[1:])
        elif node.op_type in _INPUT_SIZED_OPS:
            flops = float(sum(activation))
        else:
            flops = float(sum(outputs))
        if group not in _CONV_GROUPS and out_shapes and len(out_shapes[0]) >= 2:
            in_channels = out_channels = int(out_shapes[0][1])
        features.append(
            NodeFeatures(
                name=node.name,
                op=node.op_type,
                group=group,
                nchwc=node.domain == NCHWC_DOMAIN,
                flops=flops,
                act_bytes=4.0 * (sum(activation) + sum(outputs)),
                weight_bytes=4.0 * sum(constant),
                in_channels=in_channels,
                out_channels=out_channels,
            )
        )
    return features


LAYER_FEATURES = ("us_per_mflop", "us_per_mb", "us_per_weight_mb", "us_per_node")
_MIN_NODES_PER_KEY = 8
_LAYER_CV_FOLDS = 5


def _fallback_keys(features: NodeFeatures) -> list[str]:
    """The coefficient sets a node may be predicted with, most specific first."""
    keys = []
    if features.group in _CONV_GROUPS:
        keys.append(f"{features.key}/{'a16' if features.aligned else 'u16'}")
    keys += [features.key, features.group, "all"]
    return list(dict.fromkeys(keys))


def _node_row(features: NodeFeatures) -> np.ndarray:
    return np.array(
        [features.flops / 1e6, features.act_bytes / 1e6, features.weight_bytes / 1e6, 1.0]
    )


@dataclass(frozen=True)
class ProfiledNetwork:
    """Calibration input of the layer model: one network's nodes, their times and its total.

    ``times_us`` are the profiled median times of ``nodes`` (same order); ``measured_ms`` the
    network's ordinary (unprofiled) measured latency, None when only the profile is known.
    """

    name: str
    nodes: tuple[NodeFeatures, ...]
    times_us: tuple[float, ...]
    measured_ms: float | None = None

    def __post_init__(self) -> None:
        if len(self.nodes) != len(self.times_us):
            raise ValueError(
                f"network {self.name!r}: {len(self.nodes)} nodes but {len(self.times_us)} times"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "nodes": [node.to_dict() for node in self.nodes],
            "times_us": list(self.times_us),
            "measured_ms": self.measured_ms,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProfiledNetwork:
        measured = data.get("measured_ms")
        return cls(
            name=str(data["name"]),
            nodes=tuple(NodeFeatures.from_dict(node) for node in data["nodes"]),
            times_us=tuple(float(value) for value in data["times_us"]),
            measured_ms=None if measured is None else float(measured),
        )


def profiled_network(
    onnx_model: bytes | str | Path,
    profile: Any,
    measured_ms: float | None = None,
    name: str = "",
) -> ProfiledNetwork:
    """Join a :class:`~jetsearch.latency.local.LayerProfile` of `onnx_model` to its node features.

    Features come from the optimised graph the profile saved, times by node name; a node the
    profile did not time (none, normally) counts as 0 us.
    """
    nodes = node_features(onnx_model, profile.input_shape, profile.optimized_model)
    times = _match_times(nodes, profile.nodes)
    missing = [node.op for node, time_us in zip(nodes, times, strict=True) if time_us is None]
    if len(missing) > len(nodes) // 10:
        raise LatencyError(
            f"network {name!r}: {len(missing)} of {len(nodes)} nodes of the optimised graph have "
            f"no time in the profile (ops {sorted(set(missing))[:5]}); the profile is of another "
            "graph"
        )
    return ProfiledNetwork(
        name=name,
        nodes=tuple(nodes),
        times_us=tuple(0.0 if time_us is None else time_us for time_us in times),
        measured_ms=measured_ms,
    )


def _match_times(nodes: Sequence[NodeFeatures], timed: Sequence[Any]) -> list[float | None]:
    """Each node's profiled time: by name, else (for nodes the saved graph left unnamed, which
    onnxruntime names ``<op>_<index>`` itself) by operator and output size, in order."""
    by_name = {node.name: node for node in timed}
    times: list[float | None] = [
        by_name[node.name].median_us if node.name and node.name in by_name else None
        for node in nodes
    ]
    graph_names = {node.name for node in nodes}
    spare: dict[str, list[Any]] = {}
    for node in timed:
        if node.name not in graph_names:
            spare.setdefault(node.op, []).append(node)
    for index, node in enumerate(nodes):
        candidates = spare.get(node.op)
        if times[index] is not None or not candidates:
            continue
        # The same size first (a hard-swish's pieces come in many sizes), else the next one.
        size = node.flops if node.group not in _CONV_GROUPS else None
        pick = next(
            (c for c in candidates if c.output_shapes and math.prod(c.output_shapes[0]) == size),
            candidates[0],
        )
        candidates.remove(pick)
        times[index] = pick.median_us
    return times


@dataclass(frozen=True)
class LayerModel:
    """Per-node latency model of one onnxruntime target (nn-Meter's kernel-level predictor).

    A node's time is ``a * MFLOPs + b * MB moved + c * weight MB + d`` microseconds with the
    coefficients ``(a, b, c, d)`` of the most specific set fitted for it: its group, layout
    (NCHWc or not) and channel alignment (``"grouped/nchw/a16"``), else its group and layout,
    else its group, else ``"all"``. A network's time is ``scale * sum(nodes) + constant_ms``:
    ``scale`` and ``constant_ms`` carry what the per-node times miss (the executor between
    nodes, the profiler's own cost, the input and output copies).
    """

    coefficients: dict[str, tuple[float, float, float, float]]
    scale: float = 1.0
    constant_ms: float = 0.0
    weighting: float = 1.0

    def node_us(self, node: NodeFeatures) -> float:
        """Predicted microseconds of one node."""
        for key in _fallback_keys(node):
            if key in self.coefficients:
                return float(_node_row(node) @ np.asarray(self.coefficients[key]))
        return 0.0

    def network_ms(self, nodes: Sequence[NodeFeatures]) -> float:
        """Predicted milliseconds of a network made of `nodes`."""
        return self.scale * sum(self.node_us(node) for node in nodes) / 1e3 + self.constant_ms

    def explain(
        self, nodes: Sequence[NodeFeatures], profile: str, input_shape: Sequence[int]
    ) -> Estimate:
        """The estimate of a network made of `nodes`, one :class:`LayerEstimate` per node.

        A node's FLOP term is its ``compute_ms``, its byte terms its ``memory_ms`` and its
        per-node cost its ``launch_ms`` (all times ``scale``; they add up, ``combine="sum"``).
        """
        layers = []
        for node in nodes:
            terms = np.zeros(len(LAYER_FEATURES))
            for key in _fallback_keys(node):
                if key in self.coefficients:
                    terms = _node_row(node) * np.asarray(self.coefficients[key])
                    break
            terms = terms * self.scale / 1e3
            layers.append(
                LayerEstimate(
                    name=node.name,
                    kind=node.op,
                    group=node.group,
                    compute_ms=float(terms[0]),
                    memory_ms=float(terms[1] + terms[2]),
                    launch_ms=float(terms[3]),
                    combine="sum",
                )
            )
        return Estimate(
            profile=profile,
            precision="fp32",
            input_shape=tuple(int(value) for value in input_shape),
            calibrated=True,
            constant_ms=self.constant_ms,
            layers=tuple(layers),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "coefficients": {key: list(value) for key, value in self.coefficients.items()},
            "features": list(LAYER_FEATURES),
            "scale": self.scale,
            "constant_ms": self.constant_ms,
            "weighting": self.weighting,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LayerModel:
        coefficients = {}
        for key, values in data["coefficients"].items():
            if len(values) != len(LAYER_FEATURES):
                raise ValueError(
                    f"layer coefficients {key!r} must hold {len(LAYER_FEATURES)} numbers "
                    f"({', '.join(LAYER_FEATURES)}), got {len(values)}"
                )
            coefficients[str(key)] = tuple(float(value) for value in values)
        return cls(
            coefficients=coefficients,
            scale=float(data.get("scale", 1.0)),
            constant_ms=float(data.get("constant_ms", 0.0)),
            weighting=float(data.get("weighting", 1.0)),
        )


def _fit_node_coefficients(
    networks: Sequence[ProfiledNetwork], weighting: float
) -> dict[str, tuple[float, float, float, float]]:
    """NNLS per coefficient set on every node it may predict, errors weighted by time^-w.

    ``weighting`` 1 minimises relative errors (every node counts alike), 0 absolute errors (the
    big nodes that make up a network's time count most); between the two, both matter.
    """
    rows: dict[str, list[np.ndarray]] = {}
    targets: dict[str, list[float]] = {}
    for network in networks:
        for node, time_us in zip(network.nodes, network.times_us, strict=True):
            if time_us <= 0:
                continue
            for key in _fallback_keys(node):
                rows.setdefault(key, []).append(_node_row(node))
                targets.setdefault(key, []).append(time_us)
    coefficients = {}
    for key, key_rows in rows.items():
        if len(key_rows) < _MIN_NODES_PER_KEY and key != "all":
            continue
        matrix, target = np.array(key_rows), np.array(targets[key])
        # Columns scaled to unit norm so that NNLS's tolerance means the same for each.
        norms = np.linalg.norm(matrix, axis=0)
        norms[norms == 0] = 1.0
        weights = target ** (-weighting)
        solution = nnls((matrix / norms) * weights[:, None], target * weights) / norms
        coefficients[key] = tuple(float(value) for value in solution)
    return coefficients


def _fit_totals(
    networks: Sequence[ProfiledNetwork], coefficients: dict[str, tuple[float, ...]]
) -> tuple[float, float]:
    """(scale, constant_ms) mapping summed node predictions to measured totals (relative NNLS)."""
    model = LayerModel(dict(coefficients))  # type: ignore[arg-type]
    measured = [n for n in networks if n.measured_ms is not None]
    if len(measured) < 2:
        return 1.0, 0.0
    sums = np.array([model.network_ms(n.nodes) for n in measured])
    totals = np.array([n.measured_ms for n in measured], dtype=float)
    matrix = np.column_stack([sums, np.ones_like(sums)]) / totals[:, None]
    scale, constant = nnls(matrix, np.ones(len(totals)))
    if scale <= 0:
        return 1.0, 0.0
    return float(scale), float(constant)


LAYER_WEIGHTINGS = (0.0, 0.5, 1.0)


def fit_layer_model(
    networks: Sequence[ProfiledNetwork], *, weighting: float | None = None
) -> LayerModel:
    """Fit a :class:`LayerModel` to profiled networks (thousands of nodes from a few networks).

    With ``weighting=None`` each of :data:`LAYER_WEIGHTINGS` is tried and the one whose
    network totals have the smallest k-fold (by network) relative error is kept (0, absolute
    errors, with fewer than 3 networks); totals are the
    measured ones where known, else the sums of the profiled node times.
    """
    if len(networks) < 2:
        raise ValueError(f"a layer model needs at least 2 profiled networks, got {len(networks)}")
    if weighting is None and len(networks) < 3:
        weighting = 0.0  # too few networks to cross-validate: absolute errors
    if weighting is None:
        truth = np.array([_network_truth(n) for n in networks])
        folds = min(_LAYER_CV_FOLDS, len(networks))
        errors = {}
        for candidate in LAYER_WEIGHTINGS:
            predicted = np.zeros(len(networks))
            for fold in range(folds):
                train = [n for i, n in enumerate(networks) if i % folds != fold]
                model = fit_layer_model(train, weighting=candidate)
                for i, network in enumerate(networks):
                    if i % folds == fold:
                        predicted[i] = model.network_ms(network.nodes)
            errors[candidate] = float(np.mean((predicted / truth - 1.0) ** 2))
        weighting = min(errors, key=lambda w: errors[w])
    coefficients = _fit_node_coefficients(networks, weighting)
    if not any(n.measured_ms is not None for n in networks):
        return LayerModel(coefficients, weighting=weighting)
    scale, constant = _fit_totals(networks, coefficients)
    return LayerModel(coefficients, scale=scale, constant_ms=constant, weighting=weighting)


def _network_truth(network: ProfiledNetwork) -> float:
    if network.measured_ms is not None:
        return network.measured_ms
    return sum(network.times_us) / 1e3


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


LAYER_TABLE = "jetseg_layer_profiles"


def record_layer_profile(
    cache: LatencyCache | str | Path,
    arch_hash: str,
    input_shape: Sequence[int],
    target_key: str,
    network: ProfiledNetwork,
) -> None:
    """Store one network's per-node table (features and profiled times) beside the cache.

    Layer calibration (:func:`layer_networks`) joins it to the network's measured total.
    """
    from jetsearch.latency.cache import LatencyCache

    path = _cache_file(cache)
    LatencyCache(path)
    shape = "x".join(str(int(value)) for value in input_shape)
    connection = sqlite3.connect(path, timeout=30.0, isolation_level=None)
    try:
        connection.execute("PRAGMA busy_timeout=30000")
        connection.execute(
            f"CREATE TABLE IF NOT EXISTS {LAYER_TABLE} (arch_hash TEXT NOT NULL, input_shape TEXT "
            "NOT NULL, target_key TEXT NOT NULL, network_json TEXT NOT NULL, created_at TEXT NOT "
            "NULL, PRIMARY KEY (arch_hash, input_shape, target_key))"
        )
        connection.execute(
            f"INSERT OR REPLACE INTO {LAYER_TABLE} VALUES (?, ?, ?, ?, ?)",
            (
                arch_hash,
                shape,
                target_key,
                json.dumps(network.to_dict()),
                datetime.now(timezone.utc).isoformat(timespec="seconds"),
            ),
        )
    finally:
        connection.close()


def layer_networks(
    cache: LatencyCache | str | Path, target_key: str
) -> tuple[list[ProfiledNetwork], list[str]]:
    """The cache's per-node tables of `target_key`, each with its measured total where stored.

    Returns (networks, skipped reasons); a table without a measured total is still used for
    the per-node fit but not for mapping node sums to totals.
    """
    from jetsearch.latency.cache import LatencyCache

    path = _cache_file(cache)
    if not path.is_file():
        return [], []
    connection = sqlite3.connect(path, timeout=30.0)
    try:
        exists = connection.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (LAYER_TABLE,)
        ).fetchone()
        rows = []
        if exists:
            rows = connection.execute(
                f"SELECT arch_hash, input_shape, network_json FROM {LAYER_TABLE} "
                "WHERE target_key=? ORDER BY created_at, arch_hash",
                (target_key,),
            ).fetchall()
    finally:
        connection.close()
    totals = {
        (digest, tuple(shape)): result.median_ms
        for digest, shape, result, _ in LatencyCache(path).all_results(target_key)
    }
    networks, skipped = [], []
    for digest, shape_text, text in rows:
        try:
            network = ProfiledNetwork.from_dict(json.loads(text))
        except (KeyError, TypeError, ValueError) as error:
            skipped.append(f"{digest} {shape_text}: stored layer table does not load: {error}")
            continue
        shape = tuple(int(value) for value in shape_text.split("x"))
        networks.append(
            ProfiledNetwork(
                network.name, network.nodes, network.times_us, totals.get((digest, shape))
            )
        )
    return networks, skipped


def calibrate_layers(
    networks: Sequence[ProfiledNetwork],
    profile: DeviceProfile | str = "local",
    *,
    target_key: str | None = None,
    threads: int | None = None,
    weighting: float | None = None,
) -> Calibration:
    """A ``kind="layers"`` :class:`Calibration` of `profile` from profiled networks.

    For targets that run onnxruntime (the ``local`` profile, an onnxruntime board worker):
    see :class:`LayerModel`. ``fit`` reports the fitting networks' measured totals against
    their predictions (the node sums where no total was measured). `threads` is the
    onnxruntime thread count the profiles were taken with (predictions optimise the graph the
    same way).
    """
    profile = get_profile(profile) if isinstance(profile, str) else profile
    model = fit_layer_model(networks, weighting=weighting)
    predicted = [model.network_ms(network.nodes) for network in networks]
    truth = [_network_truth(network) for network in networks]
    return Calibration(
        profile=profile.name,
        precision="fp32",
        parameters=None,
        fit=FitQuality.of(predicted, truth),
        target_key=target_key,
        kind="layers",
        layers=model,
        threads=threads,
    )


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
    :class:`LatencyError` (an estimate needs the network's layers); with a layer calibration
    (``kind="layers"``) the ONNX graph itself is estimated and the config is optional. Results
    are always labelled: provenance ``estimated``, one sample, flags ``"estimate"`` and
    ``"calibrated"`` or ``"uncalibrated"``, and a fingerprint naming the profile, its source and
    the calibration.
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
        self._nodes: dict[tuple[bytes, tuple[int, ...], int | None], list[NodeFeatures]] = {}

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
            "model": "layers"
            if calibration is not None and calibration.kind == "layers"
            else "roofline",
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

    def explain(
        self,
        config: JetSegConfig | None,
        input_size: Sequence[int],
        *,
        onnx_model: bytes | str | Path | None = None,
    ) -> Estimate:
        """The full estimate (per layer) of `config` at `input_size` ((H, W) or (B, C, H, W)).

        With a layer calibration (``kind="layers"``) the network's ONNX graph is what is
        estimated: `onnx_model` when given, else `config` exported; its nodes are those
        onnxruntime would run (nothing is run or timed). Otherwise the roofline of `config`.
        """
        calibration = self.calibration
        if calibration is not None and calibration.kind == "layers":
            assert calibration.layers is not None
            if onnx_model is None:
                if config is None:
                    raise ValueError("an estimate needs the network's config or its ONNX model")
                onnx_model = _export(config, input_size)
            shape = tuple(int(v) for v in input_size)
            if len(shape) == 2:
                if config is None:
                    raise ValueError("input size (H, W) needs the config; pass (B, C, H, W)")
                shape = _input_shape(config, shape)
            key = (read_onnx_bytes(onnx_model), shape, calibration.threads)
            with self._lock:
                nodes = self._nodes.get(key)
            if nodes is None:
                threads = calibration.threads or DEFAULT_LOCAL_THREADS
                nodes = node_features(onnx_model, shape, threads=threads)
                with self._lock:
                    self._nodes = {key: nodes}  # one network at a time: the last one asked
            return calibration.layers.explain(nodes, self.profile.name, shape)
        if config is None:
            raise ValueError("a roofline estimate needs the network's config")
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
        calibration = self.calibration
        by_layers = calibration is not None and calibration.kind == "layers"
        if config is None and not by_layers:
            raise LatencyError(
                f"an estimate on profile {self.profile.name!r} needs the network's config: "
                "call measure(onnx_model, input_shape, config=config); the ONNX graph alone "
                "is not estimated"
            )
        if len(shape) != 4:
            raise LatencyError(f"an estimate needs a (B, C, H, W) input shape, got {shape}")
        try:
            estimate = self.explain(config, shape, onnx_model=model if by_layers else None)
        except ValueError as error:
            name = config.name if config is not None else "the model"
            raise LatencyError(f"cannot estimate {name!r}: {error}") from None
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
    "NODE_GROUPS",
    "LayerModel",
    "NodeFeatures",
    "ProfiledNetwork",
    "calibrate_layers",
    "fit_layer_model",
    "layer_networks",
    "nchwc_block",
    "node_features",
    "optimized_graph",
    "profiled_network",
    "record_layer_profile",
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
