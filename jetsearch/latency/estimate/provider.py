"""EstimateProvider: a device profile's roofline answering as a latency provider, labelled.

An estimate stands in for a measurement when no board is at hand. It is always labelled as one
(provenance ``estimated``, flags ``"estimate"`` and ``"calibrated"`` / ``"uncalibrated"``) and
never enters the latency cache as a measurement.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jetsearch.latency._onnx_input import inspect_model, read_onnx_bytes, validate_input_shape
from jetsearch.latency.base import (
    LatencyError,
    LatencyProvider,
    LatencyResult,
    Provenance,
    fingerprint_key,
)
from jetsearch.latency.estimate.calibration import Calibration, calibration_path
from jetsearch.latency.estimate.profiles import PRECISIONS, get_profile
from jetsearch.latency.estimate.roofline import Estimate, network_cost, roofline

if TYPE_CHECKING:
    from jetseg.config import JetSegConfig

ESTIMATE_FLAG = "estimate"
CALIBRATED_FLAG = "calibrated"
UNCALIBRATED_FLAG = "uncalibrated"

# The fingerprint entries that change an estimate: the profile's figures and the calibration.
_STABLE_KEYS = (
    "profile",
    "precision",
    "fp32_tflops",
    "fp16_tflops",
    "tensor_fp16_tflops",
    "memory_gbps",
    "launch_us",
    "calibration_stamp",
)


class EstimateProvider(LatencyProvider):
    """Latency estimates from a device profile: the roofline, calibrated when a fit exists.

    Args:
        profile: a profile name or alias (see :data:`PROFILES`, :data:`PROFILE_ALIASES`).
        cache_path: the latency cache; the calibration saved beside it
            (:func:`calibration_path`) is loaded, and reloaded whenever the file changes.
        precision: "fp32" or "fp16"; default the profile's own (fp16 on the Jetsons). A
            precision the profile has no fast units for is refused (ValueError).
        calibration: an explicit calibration (overrides the one beside the cache).

    ``measure(onnx_model, input_shape, config=config)`` checks the model and shape like every
    provider, then estimates the network `config` describes; without a config it raises
    :class:`LatencyError` (an estimate needs the network's layers, the ONNX graph alone is not
    estimated). Results are always labelled: provenance ``estimated``, one sample, flags
    ``"estimate"`` and ``"calibrated"`` or ``"uncalibrated"``, and a fingerprint naming the
    profile, its source and the calibration.
    Thread-safe: nothing is shared but a small cache of layer costs and the loaded calibration.
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
        label = f"estimate-{self.profile.name}-{self.precision}"
        return fingerprint_key(label, fingerprint, _STABLE_KEYS)

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
