"""Latency measured on this machine with onnxruntime, one fresh child process per measurement.

The timing protocol is the board worker's own (worker.run_onnxruntime_child): the same child
code runs here and on a board, so local and remote numbers differ only by the device. Each
measurement starts a new process (no state carried between networks, as in HW-NAS-Bench), warms
up for ``warmup_s`` (those runs are discarded, TVM's ``time_evaluator`` style), then times at
least ``min_runs`` runs and keeps going until ``target_s`` has passed or ``max_runs`` is reached.
"""

from __future__ import annotations

import os
import platform
import shutil
import socket
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jetsearch.latency import worker
from jetsearch.latency._onnx_input import inspect_model, read_onnx_bytes, validate_input_shape
from jetsearch.latency.base import (
    InvalidModelError,
    LatencyError,
    LatencyProvider,
    LatencyResult,
    Provenance,
    ProviderFallbackError,
    fingerprint_key,
    measure_until_stable,
)

if TYPE_CHECKING:
    from jetseg.config import JetSegConfig

EXECUTION_PROVIDERS = tuple(worker.EXECUTION_PROVIDERS)
PRECISIONS = worker.PRECISIONS

# Fingerprint entries that change the numbers; hostname and the like do not.
STABLE_FINGERPRINT_KEYS = (
    "cpu_model",
    "cpu_count",
    "gpu_model",
    "runtime",
    "runtime_version",
    "execution_provider",
    "precision",
    "threads",
    "inter_op_threads",
)


def _onnxruntime_version() -> str | None:
    try:
        import onnxruntime
    except ImportError:
        return None
    return onnxruntime.__version__


def _gpu_model() -> str | None:
    result = worker._run_command(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"])
    if result is None or result[0] != 0:
        return None
    names = [line.strip() for line in result[1].splitlines() if line.strip()]
    return names[0] if names else None


class LocalProvider(LatencyProvider):
    """Times ONNX models here with onnxruntime (CPU, CUDA or TensorRT execution provider).

    Args:
        execution_provider: "cpu", "cuda" or "tensorrt". A GPU provider that onnxruntime does not
            actually use raises ProviderFallbackError; there is never a silent CPU number.
        precision: "fp32" or "fp16". fp16 needs a GPU provider (TensorRT builds fp16 engines;
            CUDA needs the onnxconverter-common package to convert the model).
        threads: onnxruntime intra-op threads (inter-op is 1, execution sequential).
        warmup_s: seconds of discarded warm-up runs (at least one run).
        min_runs, max_runs, target_s: timed runs: at least `min_runs`, on until `target_s`
            seconds have passed, at most `max_runs`.
        timeout_s: a measurement's child process is killed after this many seconds.
        max_cv, retries: a result whose coefficient of variation exceeds `max_cv` is measured
            again up to `retries` times; the steadiest is kept, flagged "high-variance" if
            still above.

    Measurements are serialised: concurrent callers wait, so two timings never share the CPU.
    """

    kind = Provenance.MEASURED_LOCAL

    def __init__(
        self,
        execution_provider: str = "cpu",
        precision: str = "fp32",
        threads: int = 2,
        warmup_s: float = 1.0,
        min_runs: int = 30,
        max_runs: int = 200,
        target_s: float = 2.0,
        timeout_s: float = 120.0,
        max_cv: float = 0.10,
        retries: int = 2,
    ) -> None:
        if execution_provider not in EXECUTION_PROVIDERS:
            raise ValueError(
                f"execution_provider must be one of {list(EXECUTION_PROVIDERS)}, "
                f"got {execution_provider!r}"
            )
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
        if precision == "fp16" and execution_provider == "cpu":
            raise ValueError(
                "precision='fp16' is not measured on the CPU execution provider (no fast fp16 "
                "kernels there); use precision='fp32', or execution_provider='cuda'/'tensorrt'"
            )
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        if warmup_s < 0:
            raise ValueError(f"warmup_s must be >= 0, got {warmup_s}")
        if not 1 <= min_runs <= max_runs:
            raise ValueError(
                f"1 <= min_runs <= max_runs must hold, got min_runs={min_runs}, max_runs={max_runs}"
            )
        if target_s < 0 or timeout_s <= 0:
            raise ValueError(
                f"target_s must be >= 0 and timeout_s > 0, got {target_s} and {timeout_s}"
            )
        if max_cv < 0 or retries < 0:
            raise ValueError(f"max_cv and retries must be >= 0, got {max_cv} and {retries}")
        self.execution_provider = execution_provider
        self.precision = precision
        self.threads = threads
        self.warmup_s = warmup_s
        self.min_runs = min_runs
        self.max_runs = max_runs
        self.target_s = target_s
        self.timeout_s = timeout_s
        self.max_cv = max_cv
        self.retries = retries
        self.measurement_count = 0
        self._lock = threading.Lock()
        self._fingerprint: dict[str, Any] | None = None

    def fingerprint(self) -> dict[str, Any]:
        if self._fingerprint is None:
            self._fingerprint = {
                "provider": "local",
                "hostname": socket.gethostname(),
                "cpu_model": worker.cpu_model(),
                "cpu_count": os.cpu_count(),
                "gpu_model": None if self.execution_provider == "cpu" else _gpu_model(),
                "os": platform.platform(),
                "python": platform.python_version(),
                "machine": platform.machine(),
                "runtime": "onnxruntime",
                "runtime_version": _onnxruntime_version(),
                "execution_provider": worker.EXECUTION_PROVIDERS[self.execution_provider],
                "precision": self.precision,
                "threads": self.threads,
                "inter_op_threads": 1,
            }
        return dict(self._fingerprint)

    def target_fingerprint_key(self) -> str:
        label = f"local-{self.execution_provider}-{self.precision}-t{self.threads}"
        return fingerprint_key(label, self.fingerprint(), STABLE_FINGERPRINT_KEYS)

    def measure(
        self,
        onnx_model: bytes | str | Path,
        input_shape: tuple[int, ...],
        *,
        config: JetSegConfig | None = None,
    ) -> LatencyResult:
        """Time `onnx_model` at `input_shape` (`config` is not needed); see the class docstring."""
        model = read_onnx_bytes(onnx_model)
        shape = validate_input_shape(input_shape)
        inspect_model(model, shape)
        with self._lock, tempfile.TemporaryDirectory(prefix="jetsearch-local-") as workdir:
            model_path = os.path.join(workdir, "model.onnx")
            with open(model_path, "wb") as handle:
                handle.write(model)
            return measure_until_stable(
                lambda: self._measure_once(model_path, shape, workdir),
                max_cv=self.max_cv,
                retries=self.retries,
            )

    def _measure_once(self, model_path: str, shape: tuple[int, ...], workdir: str) -> LatencyResult:
        self.measurement_count += 1
        attempt_dir = tempfile.mkdtemp(dir=workdir)
        try:
            outcome = worker.run_onnxruntime_child(
                model_path,
                shape,
                precision=self.precision,
                execution_provider=self.execution_provider,
                threads=self.threads,
                warmup_s=self.warmup_s,
                min_runs=self.min_runs,
                max_runs=self.max_runs,
                target_s=self.target_s,
                timeout_s=self.timeout_s,
                workdir=attempt_dir,
            )
        except worker.MeasureError as error:
            if error.kind == "provider-fallback":
                raise ProviderFallbackError(str(error)) from None
            if error.kind in ("invalid-model", "invalid-input"):
                raise InvalidModelError(str(error)) from None
            raise LatencyError(f"local measurement failed ({error.kind}): {error}") from None
        finally:
            shutil.rmtree(attempt_dir, ignore_errors=True)
        fingerprint = self.fingerprint()
        fingerprint.update(
            runtime_version=outcome["runtime_version"],
            providers_used=outcome["providers_used"],
            metric=outcome["metric"],
            input_name=outcome["input_name"],
        )
        try:
            return LatencyResult.from_samples(
                outcome["samples_ms"],
                warmup_runs=outcome["warmup_runs"],
                provenance=self.kind,
                fingerprint=fingerprint,
                input_shape=shape,
                flags=outcome.get("flags", ()),
            )
        except ValueError as error:
            raise LatencyError(f"local measurement returned unusable samples: {error}") from None
