"""Latency measured on this machine with onnxruntime, one fresh child process per measurement.

The timing protocol is the board worker's own (worker.run_onnxruntime_child): the same child
code runs here and on a board, so local and remote numbers differ only by the device. Each
measurement starts a new process (no state carried between networks, as in HW-NAS-Bench), warms
up for ``warmup_s`` (those runs are discarded, TVM's ``time_evaluator`` style), then times at
least ``min_runs`` runs and keeps going until ``target_s`` has passed or ``max_runs`` is reached.

:func:`profile_layers` times the same session node by node with onnxruntime's profiler (also in
a fresh child process) for the layer-level calibration of the estimate
(:mod:`jetsearch.latency.estimate`).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
        self, onnx_model: bytes | str | Path, input_shape: tuple[int, ...]
    ) -> LatencyResult:
        """Time `onnx_model` at `input_shape`; see the class docstring for the protocol."""
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


# ---------------------------------------------------------------------------------------------
# per-node profiles: what each of onnxruntime's kernels costs

_CHILD_CODE = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from jetsearch.latency.local import _profile_child_main; "
    "sys.exit(_profile_child_main(sys.argv[2]))"
)
DEFAULT_PROFILE_RUNS = 20
DEFAULT_PROFILE_WARMUP_RUNS = 5


@dataclass(frozen=True)
class NodeTime:
    """One node of onnxruntime's optimised graph as it ran: its median time over the runs.

    ``name`` is the node's name in the optimised graph (the profile event's name without
    ``_kernel_time``), ``op`` its operator (``Conv``, ``ReorderInput``, ...), ``median_us`` the
    median of its per-run times in microseconds (summed when a node runs twice in one run), and
    ``input_shapes`` / ``output_shapes`` the shapes onnxruntime reported for it.
    """

    name: str
    op: str
    median_us: float
    input_shapes: tuple[tuple[int, ...], ...]
    output_shapes: tuple[tuple[int, ...], ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "op": self.op,
            "median_us": self.median_us,
            "input_shapes": [list(shape) for shape in self.input_shapes],
            "output_shapes": [list(shape) for shape in self.output_shapes],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NodeTime:
        return cls(
            name=str(data["name"]),
            op=str(data["op"]),
            median_us=float(data["median_us"]),
            input_shapes=tuple(tuple(int(v) for v in shape) for shape in data["input_shapes"]),
            output_shapes=tuple(tuple(int(v) for v in shape) for shape in data["output_shapes"]),
        )


@dataclass(frozen=True)
class LayerProfile:
    """Per-node times of one network, profiled by onnxruntime in a fresh child process.

    ``nodes`` are in execution order; ``run_ms`` the wall time of each profiled run (profiling
    adds a little per node, so these run slower than an unprofiled measurement);
    ``optimized_model`` the graph onnxruntime executed (its node names are the ``nodes``'
    names), so that node features come from the same graph the times do.
    """

    input_shape: tuple[int, ...]
    threads: int
    runs: int
    nodes: tuple[NodeTime, ...]
    run_ms: tuple[float, ...]
    optimized_model: bytes = field(repr=False)
    runtime_version: str = ""

    @property
    def node_total_ms(self) -> float:
        """The sum of the nodes' median times, in ms."""
        return sum(node.median_us for node in self.nodes) / 1e3


def _profile_child(spec: Mapping[str, Any]) -> dict[str, Any]:
    """In the child: profile the model `spec` names; returns the JSON-safe outcome."""
    import numpy
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = int(spec["threads"])
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # the NCHWc "optimised model is hardware specific" warning
    options.optimized_model_filepath = spec["optimized_path"]
    options.enable_profiling = True
    options.profile_file_prefix = os.path.join(spec["workdir"], "profile")
    session = onnxruntime.InferenceSession(
        spec["model_path"], options, providers=["CPUExecutionProvider"]
    )
    item = session.get_inputs()[0]
    image = numpy.random.RandomState(0).standard_normal(spec["input_shape"]).astype("float32")
    feed = {item.name: image}
    warmup = int(spec["warmup_runs"])
    run_ms = []
    for index in range(warmup + int(spec["runs"])):
        start = time.perf_counter()
        session.run(None, feed)
        if index >= warmup:
            run_ms.append((time.perf_counter() - start) * 1e3)
    with open(session.end_profiling()) as handle:
        events = json.load(handle)
    # Each run's node events come between two "model_run" events; warm-up runs are dropped.
    runs: list[dict[str, float]] = []
    shapes: dict[str, tuple[str, list, list]] = {}
    order: list[str] = []
    for event in events:
        if event.get("name") == "model_run":
            runs.append({})
            continue
        if event.get("cat") != "Node" or not str(event.get("name", "")).endswith("_kernel_time"):
            continue
        if not runs:
            runs.append({})
        name = event["name"][: -len("_kernel_time")]
        args = event.get("args", {})
        if name not in shapes:
            order.append(name)
            shapes[name] = (
                str(args.get("op_name", "")),
                [next(iter(s.values()), []) for s in args.get("input_type_shape", [])],
                [next(iter(s.values()), []) for s in args.get("output_type_shape", [])],
            )
        runs[-1][name] = runs[-1].get(name, 0.0) + float(event.get("dur", 0.0))
    # model_run events close a run (they are written when the run ends).
    timed = [run for run in runs if run][warmup:]
    nodes = []
    for name in order:
        values = sorted(run.get(name, 0.0) for run in timed)
        median = (
            values[len(values) // 2]
            if len(values) % 2
            else sum(values[len(values) // 2 - 1 : len(values) // 2 + 1]) / 2.0
        )
        op, inputs, outputs = shapes[name]
        nodes.append(
            {
                "name": name,
                "op": op,
                "median_us": median,
                "input_shapes": inputs,
                "output_shapes": outputs,
            }
        )
    return {
        "nodes": nodes,
        "run_ms": run_ms,
        "runs": len(timed),
        "runtime_version": onnxruntime.__version__,
    }


def _profile_child_main(spec_path: str) -> int:
    with open(spec_path) as handle:
        spec = json.load(handle)
    try:
        outcome = {"ok": True, **_profile_child(spec)}
    except Exception as error:  # reported to the parent, which raises LatencyError
        outcome = {"ok": False, "error": f"{type(error).__name__}: {error}"}
    partial = spec["result_path"] + ".partial"
    with open(partial, "w") as handle:
        json.dump(outcome, handle)
    os.replace(partial, spec["result_path"])
    return 0


def profile_layers(
    onnx_model: bytes | str | Path,
    input_shape: tuple[int, ...],
    *,
    threads: int = 2,
    runs: int = DEFAULT_PROFILE_RUNS,
    warmup_runs: int = DEFAULT_PROFILE_WARMUP_RUNS,
    timeout_s: float = 300.0,
) -> LayerProfile:
    """Per-node times of `onnx_model` on this CPU with onnxruntime's profiler.

    A fresh child process builds the session exactly as a local measurement does (all graph
    optimisations, `threads` intra-op threads, one inter-op thread, sequential), saves the
    optimised graph, runs `warmup_runs` discarded and `runs` profiled inferences, and reports
    each node's median time over the profiled runs. Raises :class:`InvalidModelError` for a
    model or shape that cannot run and :class:`LatencyError` when the child fails.
    """
    model = read_onnx_bytes(onnx_model)
    shape = validate_input_shape(input_shape)
    inspect_model(model, shape)
    if threads < 1 or runs < 1 or warmup_runs < 0:
        raise ValueError(
            f"threads and runs must be >= 1 and warmup_runs >= 0, got {threads}, {runs}, "
            f"{warmup_runs}"
        )
    with tempfile.TemporaryDirectory(prefix="jetsearch-profile-") as workdir:
        spec = {
            "model_path": os.path.join(workdir, "model.onnx"),
            "optimized_path": os.path.join(workdir, "optimized.onnx"),
            "workdir": workdir,
            "result_path": os.path.join(workdir, "result.json"),
            "input_shape": list(shape),
            "threads": threads,
            "runs": runs,
            "warmup_runs": warmup_runs,
        }
        Path(spec["model_path"]).write_bytes(model)
        spec_path = os.path.join(workdir, "spec.json")
        Path(spec_path).write_text(json.dumps(spec))
        # The child imports this very package (not whichever one its sys.path finds first).
        root = str(Path(__file__).resolve().parents[2])
        command = [sys.executable, "-c", _CHILD_CODE, root, spec_path]
        try:
            completed = subprocess.run(
                command, capture_output=True, text=True, timeout=timeout_s, cwd=workdir
            )
        except subprocess.TimeoutExpired:
            raise LatencyError(f"layer profile ran past its {timeout_s:g} s timeout") from None
        try:
            outcome = json.loads(Path(spec["result_path"]).read_text())
        except (OSError, ValueError):
            raise LatencyError(
                f"the profiling process exited with {completed.returncode} and left no result: "
                f"{(completed.stdout + completed.stderr).strip()[-2000:]}"
            ) from None
        if not outcome["ok"]:
            raise InvalidModelError(f"layer profile failed: {outcome['error']}")
        optimized = Path(spec["optimized_path"]).read_bytes()
    return LayerProfile(
        input_shape=shape,
        threads=threads,
        runs=int(outcome["runs"]),
        nodes=tuple(NodeTime.from_dict(node) for node in outcome["nodes"]),
        run_ms=tuple(float(value) for value in outcome["run_ms"]),
        optimized_model=optimized,
        runtime_version=str(outcome["runtime_version"]),
    )
