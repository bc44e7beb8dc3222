"""Device profiles: what each target can do at best, from its public specifications.

The Jetson and workstation GPUs' figures come from NVIDIA's datasheets and product pages; the
``local`` profile describes this machine's CPU from /proc/cpuinfo and documented defaults.
Every figure that is an assumption rather than a specification says so.
"""

from __future__ import annotations

import contextlib
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PRECISIONS = ("fp32", "fp16")
# Tensor cores run dense and pointwise convolutions; depthwise and elementwise work cannot use
# them and runs on the CUDA cores.
TENSOR_CORE_GROUPS = frozenset({"conv", "pointwise"})


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


def get_profile(name: str | DeviceProfile) -> DeviceProfile:
    """The profile called `name` (or an alias: agx -> agx-xavier, workstation -> titan-rtx).

    A :class:`DeviceProfile` is returned as it is.
    """
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
