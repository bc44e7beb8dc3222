#!/usr/bin/env python3
"""jetsearch board worker: serves latency measurements of ONNX models over HTTP.

Copy this one file to the board and run it there::

    python3 worker.py --target agx --port 8765 --token-file ~/.jetsearch-token

It needs nothing but the Python standard library (3.6 or newer, so JetPack 4.6 on a Jetson Nano
works) plus a timing backend the board already has: TensorRT's ``trtexec`` (on PATH or at
/usr/src/tensorrt/bin/trtexec), else the ``onnxruntime`` Python package. ``--backend`` forces one.

Protocol (after TVM's RPC ``time_evaluator`` and HW-NAS-Bench's Jetson recipe): one measurement
at a time, each in a fresh child process with a timeout; a time-based warm-up whose runs are
discarded; then N timed runs whose raw per-run times are returned, so the host computes the
median and the spread. A failed or timed-out measurement is an HTTP error, never a number, and
the worker keeps serving.

HTTP API. Every request needs the header ``Authorization: Bearer TOKEN`` with the token from
``--token-file`` (missing or wrong: 401). Requests and answers are JSON; errors are
``{"error": "what went wrong", "error_kind": "..."}``.

``GET /health``
    ``{"status": "ok", "busy": false}``
``GET /info``
    target, chosen backend (or null and the reason), backends found, default and supported
    precisions, limits, worker version and the board fingerprint (board model, L4T/JetPack,
    power mode, whether clocks are locked, runtime versions, CPU, OS, python, temperatures).
``POST /measure``
    body ``{"onnx_b64": "<base64 ONNX bytes>", "input_shape": [1, 3, 360, 480],
    "precision": "fp16", "warmup_s": 1.0, "runs": 100}``; only ``onnx_b64`` and
    ``input_shape`` are required. Answer: ``{"samples_ms": [...], "warmup_runs": n,
    "timed_runs": n, "backend": ..., "precision": ..., "metric": ..., "flags": [...],
    "fingerprint": {...}, "temps_before": {...}, "temps_after": {...}, "started_at": t0,
    "finished_at": t1}`` (t0 and t1 are Unix times). Status codes: 400 for a malformed body,
    unknown fields, an invalid ONNX model, an absurd input shape or out-of-range settings;
    411/413/415 for a missing, too large (checked before reading) or non-JSON body; 500 when the
    model failed to run or the child crashed; 503 when the worker has no backend; 504 when the
    measurement ran past ``--timeout``.

Nothing a client sends is executed or unpickled: the model is parsed as ONNX and handed to the
timing backend, every other field is checked against a fixed list of names, types and ranges.
The worker listens on 127.0.0.1 unless ``--host`` says otherwise.
"""

import argparse
import base64
import binascii
import contextlib
import glob
import hmac
import json
import os
import platform
import re
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

WORKER_VERSION = "1.0.0"
API_VERSION = 1

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
DEFAULT_MAX_UPLOAD_MB = 64.0
DEFAULT_TIMEOUT_S = 240.0
DEFAULT_WARMUP_S = 1.0
DEFAULT_RUNS = 100

MAX_BATCH = 64
MAX_SIDE = 8192
MAX_INPUT_ELEMENTS = 1 << 26
WARMUP_S_LIMITS = (0.0, 60.0)
RUNS_LIMITS = (1, 10000)

PRECISIONS = ("fp32", "fp16")
BACKENDS = ("trtexec", "onnxruntime")
EXECUTION_PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
MEASURE_FIELDS = ("onnx_b64", "input_shape", "precision", "warmup_s", "runs")
REQUIRED_MEASURE_FIELDS = ("onnx_b64", "input_shape")
TRTEXEC_DEFAULT_PATH = "/usr/src/tensorrt/bin/trtexec"

# ONNX TensorProto.DataType values the input tensor may have.
ONNX_FLOAT = 1
ONNX_FLOAT16 = 10
ONNX_ELEM_TYPE_NAMES = {ONNX_FLOAT: "float32", ONNX_FLOAT16: "float16"}

CHILD_MODE_FLAG = "--_measure-child"
PROBE_MODE_FLAG = "--_probe"


class InputError(ValueError):
    """A request or model that cannot be measured; the message says what was expected."""

    def __init__(self, message, kind="invalid-request"):
        ValueError.__init__(self, message)
        self.kind = kind


class MeasureError(RuntimeError):
    """A measurement that did not produce samples; `status` is the HTTP status to answer with."""

    def __init__(self, status, kind, message):
        RuntimeError.__init__(self, message)
        self.status = status
        self.kind = kind


def worker_path():
    # type: () -> Path
    """Path of this file: copy it to the board and run it with ``python3``."""
    return Path(os.path.abspath(__file__))


# --------------------------------------------------------------------------------------------
# ONNX: a minimal reader of the protobuf wire format, enough to check that bytes are an ONNX
# model and to find its one input, without the onnx package (the board may not have it).


def _read_varint(buf, pos):
    result = 0
    shift = 0
    while True:
        if pos >= len(buf):
            raise InputError("truncated varint at byte %d" % pos, "invalid-model")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise InputError("varint longer than 10 bytes at byte %d" % pos, "invalid-model")


def _iter_fields(buf):
    """Yield (field number, wire type, value) for each field of one protobuf message."""
    pos = 0
    end = len(buf)
    while pos < end:
        key, pos = _read_varint(buf, pos)
        field, wire_type = key >> 3, key & 7
        if field == 0:
            raise InputError("field number 0 at byte %d" % pos, "invalid-model")
        if wire_type == 0:
            value, pos = _read_varint(buf, pos)
        elif wire_type == 1 or wire_type == 5:
            size = 8 if wire_type == 1 else 4
            if pos + size > end:
                raise InputError("truncated fixed-width field at byte %d" % pos, "invalid-model")
            value = buf[pos : pos + size]
            pos += size
        elif wire_type == 2:
            length, pos = _read_varint(buf, pos)
            if pos + length > end:
                raise InputError(
                    "field %d claims %d bytes but only %d remain" % (field, length, end - pos),
                    "invalid-model",
                )
            value = buf[pos : pos + length]
            pos += length
        else:
            raise InputError(
                "unsupported protobuf wire type %d at byte %d" % (wire_type, pos), "invalid-model"
            )
        yield field, wire_type, value


def _as_text(value):
    try:
        return bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        raise InputError("a name in the graph is not valid UTF-8", "invalid-model") from None


def _signed64(value):
    return value - (1 << 64) if value >= (1 << 63) else value


def _parse_value_info(buf):
    """ValueInfoProto -> {"name", "elem_type", "dims"}; a dim is an int, a str param or None."""
    info = {"name": None, "elem_type": None, "dims": None}
    for field, wire_type, value in _iter_fields(buf):
        if field == 1 and wire_type == 2:
            info["name"] = _as_text(value)
        elif field == 2 and wire_type == 2:  # TypeProto
            for t_field, t_wire, t_value in _iter_fields(value):
                if t_field != 1 or t_wire != 2:  # only tensor_type
                    continue
                for k_field, k_wire, k_value in _iter_fields(t_value):
                    if k_field == 1 and k_wire == 0:
                        info["elem_type"] = k_value
                    elif k_field == 2 and k_wire == 2:  # TensorShapeProto
                        dims = []
                        for s_field, s_wire, s_value in _iter_fields(k_value):
                            if s_field != 1 or s_wire != 2:
                                continue
                            dim = None
                            for d_field, d_wire, d_value in _iter_fields(s_value):
                                if d_field == 1 and d_wire == 0:
                                    dim = _signed64(d_value)
                                elif d_field == 2 and d_wire == 2:
                                    dim = _as_text(d_value)
                            dims.append(dim)
                        info["dims"] = dims
    return info


def _tensor_name(buf, name_field):
    for field, wire_type, value in _iter_fields(buf):
        if field == name_field and wire_type == 2:
            return _as_text(value)
    return None


def describe_onnx_model(data):
    """Check that `data` is an ONNX ModelProto and describe it.

    Returns ``{"ir_version", "opsets", "node_count", "inputs", "outputs"}`` where ``inputs`` are
    the graph inputs that are not initializers, each ``{"name", "elem_type", "dims"}``. Raises
    InputError (kind "invalid-model") saying what is wrong.
    """
    buf = memoryview(bytes(data))
    if len(buf) == 0:
        raise InputError("the ONNX model is empty", "invalid-model")
    ir_version = None
    graph = None
    opsets = {}
    for field, wire_type, value in _iter_fields(buf):
        if field == 1 and wire_type == 0:
            ir_version = value
        elif field == 7 and wire_type == 2:
            graph = value
        elif field == 8 and wire_type == 2:
            domain, version = "", None
            for o_field, o_wire, o_value in _iter_fields(value):
                if o_field == 1 and o_wire == 2:
                    domain = _as_text(o_value)
                elif o_field == 2 and o_wire == 0:
                    version = o_value
            opsets[domain] = version
    if ir_version is None or graph is None:
        raise InputError("not an ONNX model: no ir_version or no graph", "invalid-model")
    node_count = 0
    initializer_names = set()
    inputs = []
    outputs = []
    for field, wire_type, value in _iter_fields(graph):
        if wire_type != 2:
            continue
        if field == 1:
            node_count += 1
        elif field == 5:  # TensorProto.name is field 8
            initializer_names.add(_tensor_name(value, 8))
        elif field == 15:  # SparseTensorProto.values (field 1) carries the name
            for s_field, s_wire, s_value in _iter_fields(value):
                if s_field == 1 and s_wire == 2:
                    initializer_names.add(_tensor_name(s_value, 8))
        elif field == 11:
            inputs.append(_parse_value_info(value))
        elif field == 12:
            outputs.append(_parse_value_info(value))
    if node_count == 0:
        raise InputError("the ONNX graph has no nodes", "invalid-model")
    inputs = [item for item in inputs if item["name"] not in initializer_names]
    return {
        "ir_version": ir_version,
        "opsets": opsets,
        "node_count": node_count,
        "inputs": inputs,
        "outputs": outputs,
    }


def model_input(description):
    """The one input of a described model, checked to be a float tensor."""
    inputs = description["inputs"]
    if len(inputs) != 1:
        raise InputError(
            "the model must have exactly one input, got %d: %s"
            % (len(inputs), [item["name"] for item in inputs]),
            "invalid-model",
        )
    item = inputs[0]
    if item["elem_type"] not in ONNX_ELEM_TYPE_NAMES:
        raise InputError(
            "input %r must be float32 or float16, got ONNX element type %r"
            % (item["name"], item["elem_type"]),
            "invalid-model",
        )
    return item


def validate_input_shape(shape):
    """Return `shape` as a list of 4 ints (B, C, H, W) or raise InputError saying why not."""
    if not isinstance(shape, (list, tuple)) or len(shape) != 4:
        raise InputError("input_shape must be a list of 4 integers [B, C, H, W], got %r" % (shape,))
    for value in shape:
        # bool is an int subclass; True is not a dimension.
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError("input_shape must hold integers, got %r" % (shape,))
        if value <= 0:
            raise InputError("input_shape dimensions must be positive, got %r" % (shape,))
    batch, _, height, width = shape
    if batch > MAX_BATCH:
        raise InputError("batch %d is over the limit of %d" % (batch, MAX_BATCH))
    if height > MAX_SIDE or width > MAX_SIDE:
        raise InputError(
            "height and width must be at most %d, got %dx%d" % (MAX_SIDE, height, width)
        )
    elements = 1
    for value in shape:
        elements *= value
    if elements > MAX_INPUT_ELEMENTS:
        raise InputError(
            "input_shape %r has %d elements, over the limit of %d"
            % (list(shape), elements, MAX_INPUT_ELEMENTS)
        )
    return [int(value) for value in shape]


def check_shape_against_input(shape, item):
    """Raise InputError if `shape` cannot feed the model input `item` (rank or a fixed dim)."""
    dims = item["dims"]
    if dims is None:
        return
    if len(dims) != len(shape):
        raise InputError(
            "input %r has rank %d (%r) but input_shape %r has rank %d"
            % (item["name"], len(dims), dims, list(shape), len(shape)),
            "invalid-input",
        )
    for axis, (dim, value) in enumerate(zip(dims, shape)):
        if isinstance(dim, int) and dim > 0 and dim != value:
            raise InputError(
                "input %r has fixed size %d on axis %d but input_shape %r asks for %d"
                % (item["name"], dim, axis, list(shape), value),
                "invalid-input",
            )


def input_is_dynamic(item):
    dims = item["dims"]
    return dims is None or any(not (isinstance(dim, int) and dim > 0) for dim in dims)


# --------------------------------------------------------------------------------------------
# Board fingerprint: what the latency depends on besides the network.


def _read_text(path):
    try:
        with open(path, "rb") as handle:
            return handle.read().decode("utf-8", "replace").replace("\x00", "").strip()
    except OSError:
        return None


def _run_command(cmd, timeout=10.0):
    """(returncode, combined output) of a command, or None if it is missing or hangs."""
    try:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True
        )
    except (OSError, ValueError):
        return None
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return None
    return proc.returncode, output


def cpu_model():
    text = _read_text("/proc/cpuinfo") or ""
    for key in ("model name", "Hardware", "Processor", "cpu model"):
        match = re.search(r"^%s\s*:\s*(.+)$" % re.escape(key), text, re.MULTILINE)
        if match:
            return match.group(1).strip()
    return platform.processor() or "unknown"


def l4t_release():
    text = _read_text("/etc/nv_tegra_release")
    if not text:
        return None
    match = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    if match:
        return "%s.%s" % (match.group(1), match.group(2))
    return text.splitlines()[0]


def dpkg_version(package):
    result = _run_command(["dpkg-query", "-W", "-f=${Version}", package])
    if result is None or result[0] != 0 or not result[1].strip():
        return None
    return result[1].strip()


def power_mode():
    result = _run_command(["nvpmodel", "-q"])
    if result is None or result[0] != 0:
        return None
    match = re.search(r"NV Power Mode:\s*(\S+)\s*\n\s*(\d+)?", result[1])
    if not match:
        return None
    return match.group(1) if match.group(2) is None else "%s (%s)" % match.groups()


def _freq_triplets():
    """(name, min, max) of every CPU core and devfreq device (GPU, EMC) that sysfs exposes."""
    found = []
    for cpu_dir in sorted(glob.glob("/sys/devices/system/cpu/cpu[0-9]*/cpufreq")):
        low = _read_text(os.path.join(cpu_dir, "scaling_min_freq"))
        high = _read_text(os.path.join(cpu_dir, "scaling_max_freq"))
        if low and high:
            found.append((os.path.basename(os.path.dirname(cpu_dir)), low, high))
    for dev_dir in sorted(glob.glob("/sys/class/devfreq/*")):
        low = _read_text(os.path.join(dev_dir, "min_freq"))
        high = _read_text(os.path.join(dev_dir, "max_freq"))
        if low and high:
            found.append((os.path.basename(dev_dir), low, high))
    return found


def clocks_locked():
    """True if every clock's min equals its max (what jetson_clocks does), None if unknown."""
    triplets = _freq_triplets()
    if not triplets:
        return None
    return all(low == high for _, low, high in triplets)


def temperatures():
    """{zone type: degrees Celsius} from /sys/class/thermal; empty where there are none."""
    temps = {}
    for zone in sorted(glob.glob("/sys/class/thermal/thermal_zone*")):
        raw = _read_text(os.path.join(zone, "temp"))
        if raw is None:
            continue
        try:
            value = int(raw) / 1000.0
        except ValueError:
            continue
        name = _read_text(os.path.join(zone, "type")) or os.path.basename(zone)
        if name in temps:
            name = "%s/%s" % (name, os.path.basename(zone))
        temps[name] = value
    return temps


def static_fingerprint():
    """The parts of the fingerprint that cannot change while the worker runs."""
    return {
        "hostname": socket.gethostname(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "board_model": _read_text("/proc/device-tree/model") or None,
        "l4t_release": l4t_release(),
        "jetpack": dpkg_version("nvidia-jetpack"),
        "tensorrt_package": dpkg_version("tensorrt") or dpkg_version("libnvinfer-bin"),
    }


def dynamic_fingerprint():
    """The parts someone can change under a running worker (nvpmodel, jetson_clocks)."""
    return {"power_mode": power_mode(), "clocks_locked": clocks_locked()}


# --------------------------------------------------------------------------------------------
# onnxruntime backend: runs in a child process (this file with CHILD_MODE_FLAG).


def _drop_own_directory_from_path():
    # Run as a script, this file's folder (jetsearch/latency) heads sys.path; its modules must
    # not shadow anything onnxruntime or numpy import.
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [entry for entry in sys.path if os.path.abspath(entry or ".") != here]


def _exit_with_parent():
    """Stop this child when the worker that started it dies (it is nobody's measurement then)."""
    parent = os.getppid()

    def watch():
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(3)

    thread = threading.Thread(target=watch, name="parent-watchdog")
    thread.daemon = True
    thread.start()


def probe_onnxruntime():
    """{"available", "version", "providers", "error"} of onnxruntime, probed in a child."""
    result = _run_command([sys.executable, os.path.abspath(__file__), PROBE_MODE_FLAG], 120.0)
    if result is None:
        return {"available": False, "version": None, "providers": [], "error": "probe hung"}
    returncode, output = result
    for line in reversed(output.splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                break
    return {
        "available": False,
        "version": None,
        "providers": [],
        "error": "probe exited with %d: %s" % (returncode, output.strip()[-500:]),
    }


def _probe_main():
    _drop_own_directory_from_path()
    try:
        import onnxruntime

        info = {
            "available": True,
            "version": onnxruntime.__version__,
            "providers": list(onnxruntime.get_available_providers()),
            "error": None,
        }
    except Exception as error:  # any import failure means the backend is missing
        info = {
            "available": False,
            "version": None,
            "providers": [],
            "error": "import onnxruntime failed: %s: %s" % (type(error).__name__, error),
        }
    sys.stdout.write(json.dumps(info) + "\n")
    return 0


class _ChildError(Exception):
    def __init__(self, kind, message):
        Exception.__init__(self, message)
        self.kind = kind


def _to_fp16_model(model_path, workdir):
    try:
        import onnx
        from onnxconverter_common import float16
    except ImportError:
        raise _ChildError(
            "unsupported-precision",
            "fp16 on the CUDA execution provider needs the model converted: "
            "pip install onnx onnxconverter-common (or use the TensorRT provider or trtexec)",
        ) from None
    model = onnx.load(model_path)
    # keep_io_types: the input stays float32 so the same feed works for fp32 and fp16.
    converted = float16.convert_float_to_float16(model, keep_io_types=True)
    path = os.path.join(workdir, "model_fp16.onnx")
    onnx.save(converted, path)
    return path


def _onnxruntime_measure(spec):
    """Time one model with onnxruntime according to `spec`; see run_onnxruntime_child."""
    try:
        import numpy
        import onnxruntime
    except Exception as error:
        raise _ChildError(
            "backend-missing",
            "cannot import onnxruntime/numpy: %s: %s" % (type(error).__name__, error),
        ) from None
    provider_key = spec["execution_provider"]
    provider = EXECUTION_PROVIDERS[provider_key]
    available = onnxruntime.get_available_providers()
    if provider not in available:
        raise _ChildError(
            "provider-fallback",
            "%s was requested but onnxruntime %s offers only %s (for a GPU, install "
            "onnxruntime-gpu and its CUDA/TensorRT libraries)"
            % (provider, onnxruntime.__version__, ", ".join(available)),
        )
    model_path = spec["model_path"]
    provider_options = {}
    if spec["precision"] == "fp16":
        if provider_key == "cpu":
            raise _ChildError(
                "unsupported-precision",
                "fp16 is not measured on the CPU execution provider: it has no fast fp16 "
                "kernels; use fp32, or the CUDA/TensorRT provider",
            )
        if provider_key == "tensorrt":
            provider_options["trt_fp16_enable"] = True
        else:
            model_path = _to_fp16_model(model_path, os.path.dirname(spec["result_path"]))

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = int(spec["threads"])
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    providers = [(provider, provider_options)]
    if provider_key != "cpu":
        providers.append(("CPUExecutionProvider", {}))
    try:
        session = onnxruntime.InferenceSession(model_path, options, providers=providers)
    except Exception as error:
        raise _ChildError(
            "invalid-model", "invalid ONNX model: onnxruntime could not load it: %s" % error
        ) from None
    used = session.get_providers()
    if not used or used[0] != provider:
        raise _ChildError(
            "provider-fallback",
            "%s was requested but the session runs on %s (the provider failed to load)"
            % (provider, ", ".join(used)),
        )
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise _ChildError("invalid-model", "the model must have one input, got %d" % len(inputs))
    item = inputs[0]
    shape = [int(value) for value in spec["input_shape"]]
    if len(item.shape) != len(shape):
        raise _ChildError(
            "invalid-input",
            "input %r has rank %d but input_shape %r has rank %d"
            % (item.name, len(item.shape), shape, len(shape)),
        )
    for axis, (dim, value) in enumerate(zip(item.shape, shape)):
        if isinstance(dim, int) and dim > 0 and dim != value:
            raise _ChildError(
                "invalid-input",
                "input %r has fixed size %d on axis %d, input_shape asks for %d"
                % (item.name, dim, axis, value),
            )
    dtypes = {"tensor(float)": numpy.float32, "tensor(float16)": numpy.float16}
    if item.type not in dtypes:
        raise _ChildError(
            "invalid-model", "input %r has unsupported type %s" % (item.name, item.type)
        )
    image = numpy.random.RandomState(0).standard_normal(shape).astype(dtypes[item.type])

    if provider_key == "cpu":
        feed = {item.name: image}

        def run_once():
            session.run(None, feed)

    else:
        # IOBinding: the input lives on the GPU once, outputs stay there, so the timed region
        # is the network, not host-device copies.
        binding = session.io_binding()
        device_image = onnxruntime.OrtValue.ortvalue_from_numpy(image, "cuda", 0)
        binding.bind_ortvalue_input(item.name, device_image)
        for output in session.get_outputs():
            binding.bind_output(output.name, "cuda")
        binding.synchronize_inputs()

        def run_once():
            session.run_with_iobinding(binding)
            binding.synchronize_outputs()

    try:
        run_once()
    except Exception as error:
        raise _ChildError(
            "measurement-failed",
            "the model failed to run on input shape %s: %s" % (shape, error),
        ) from None
    warmup_runs = 1
    warmup_end = time.perf_counter() + float(spec["warmup_s"])
    while time.perf_counter() < warmup_end:
        run_once()
        warmup_runs += 1

    min_runs = int(spec["min_runs"])
    max_runs = int(spec["max_runs"])
    target_s = float(spec["target_s"])
    samples_ms = []
    timed_start = time.perf_counter()
    while len(samples_ms) < max_runs and (
        len(samples_ms) < min_runs or time.perf_counter() - timed_start < target_s
    ):
        start = time.perf_counter()
        run_once()
        samples_ms.append((time.perf_counter() - start) * 1000.0)
    return {
        "samples_ms": samples_ms,
        "warmup_runs": warmup_runs,
        "timed_runs": len(samples_ms),
        "backend": "onnxruntime",
        "runtime_version": onnxruntime.__version__,
        "execution_provider": provider,
        "providers_used": list(used),
        "precision": spec["precision"],
        "threads": int(spec["threads"]),
        "input_name": item.name,
        "input_dtype": item.type,
        "metric": "session-run" if provider_key == "cpu" else "session-run-iobinding",
    }


def _measure_child_main(spec_path):
    _drop_own_directory_from_path()
    _exit_with_parent()
    with open(spec_path) as handle:
        spec = json.load(handle)
    try:
        outcome = _onnxruntime_measure(spec)
        outcome["ok"] = True
    except _ChildError as error:
        outcome = {"ok": False, "error_kind": error.kind, "error": str(error)}
    except Exception as error:
        outcome = {
            "ok": False,
            "error_kind": "measurement-failed",
            "error": "%s: %s" % (type(error).__name__, error),
        }
    partial = spec["result_path"] + ".partial"
    with open(partial, "w") as handle:
        json.dump(outcome, handle)
    os.replace(partial, spec["result_path"])
    return 0


def _kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (OSError, AttributeError):
        proc.kill()
    proc.communicate()


def _run_with_timeout(cmd, timeout_s, cwd=None):
    """(returncode, output) of `cmd`, killing its whole process group after `timeout_s`."""
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        universal_newlines=True,
        cwd=cwd,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        raise MeasureError(
            504, "timeout", "the measurement ran past the %.1f s timeout and was killed" % timeout_s
        ) from None
    return proc.returncode, output


# Child error kinds -> HTTP status of the answer.
CHILD_ERROR_STATUS = {
    "invalid-model": 400,
    "invalid-input": 400,
    "unsupported-precision": 400,
    "provider-fallback": 503,
    "backend-missing": 503,
    "measurement-failed": 500,
}


def run_onnxruntime_child(
    model_path,
    input_shape,
    precision="fp32",
    execution_provider="cpu",
    threads=1,
    warmup_s=DEFAULT_WARMUP_S,
    min_runs=DEFAULT_RUNS,
    max_runs=DEFAULT_RUNS,
    target_s=0.0,
    timeout_s=DEFAULT_TIMEOUT_S,
    workdir=None,
    python=None,
):
    """Time `model_path` with onnxruntime in a fresh child process and return its result dict.

    The child warms up for `warmup_s` (at least one run, always discarded), then times runs with
    time.perf_counter: at least `min_runs`, then on until `target_s` has passed, at most
    `max_runs`. intra-op threads = `threads`, inter-op threads = 1, sequential execution; on a
    GPU provider the input is bound once on the device (IOBinding). Raises MeasureError with the
    HTTP status and kind ("invalid-model", "provider-fallback", "timeout", ...) on failure.
    """
    if execution_provider not in EXECUTION_PROVIDERS:
        raise ValueError(
            "execution_provider must be one of %s, got %r"
            % (sorted(EXECUTION_PROVIDERS), execution_provider)
        )
    own_workdir = workdir is None
    if own_workdir:
        workdir = tempfile.mkdtemp(prefix="jetsearch-measure-")
    try:
        spec = {
            "model_path": os.path.abspath(model_path),
            "input_shape": list(input_shape),
            "precision": precision,
            "execution_provider": execution_provider,
            "threads": threads,
            "warmup_s": warmup_s,
            "min_runs": min_runs,
            "max_runs": max_runs,
            "target_s": target_s,
            "result_path": os.path.join(workdir, "result.json"),
        }
        spec_path = os.path.join(workdir, "spec.json")
        with open(spec_path, "w") as handle:
            json.dump(spec, handle)
        cmd = [python or sys.executable, os.path.abspath(__file__), CHILD_MODE_FLAG, spec_path]
        returncode, output = _run_with_timeout(cmd, timeout_s, cwd=workdir)
        try:
            with open(spec["result_path"]) as handle:
                outcome = json.load(handle)
        except (OSError, ValueError):
            raise MeasureError(
                500,
                "measurement-crashed",
                "the measuring process exited with %d and left no result: %s"
                % (returncode, output.strip()[-2000:]),
            ) from None
        if not outcome.get("ok"):
            kind = outcome.get("error_kind", "measurement-failed")
            raise MeasureError(CHILD_ERROR_STATUS.get(kind, 500), kind, outcome.get("error", ""))
        outcome.pop("ok", None)
        return outcome
    finally:
        if own_workdir:
            shutil.rmtree(workdir, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# trtexec backend.


def find_trtexec(explicit=None):
    if explicit:
        return explicit if os.path.isfile(explicit) and os.access(explicit, os.X_OK) else None
    found = shutil.which("trtexec")
    if found:
        return found
    if os.path.isfile(TRTEXEC_DEFAULT_PATH) and os.access(TRTEXEC_DEFAULT_PATH, os.X_OK):
        return TRTEXEC_DEFAULT_PATH
    return None


def trtexec_version(path):
    result = _run_command([path, "--help"], 30.0)
    if result is None:
        return None
    match = re.search(r"TensorRT[.\w]*\s*\[TensorRT v(\d+)\]", result[1]) or re.search(
        r"TensorRT v(\d+)", result[1]
    )
    return "v" + match.group(1) if match else None


def parse_trtexec_times(text):
    """Per-iteration GPU compute times (ms) from trtexec's --exportTimes JSON."""
    try:
        records = json.loads(text)
    except ValueError as error:
        raise MeasureError(
            500, "measurement-failed", "unreadable trtexec times: %s" % error
        ) from None
    samples = []
    for record in records if isinstance(records, list) else []:
        if not isinstance(record, dict):
            continue
        if "computeMs" in record:
            samples.append(float(record["computeMs"]))
        elif "startComputeMs" in record and "endComputeMs" in record:
            samples.append(float(record["endComputeMs"]) - float(record["startComputeMs"]))
        elif "latencyMs" in record:
            samples.append(float(record["latencyMs"]))
    if not samples:
        raise MeasureError(500, "measurement-failed", "trtexec exported no per-iteration times")
    return samples


def parse_trtexec_warmup_runs(log):
    match = re.search(r"Warmup completed (\d+) quer", log)
    return int(match.group(1)) if match else None


def parse_layer_precisions(text):
    """Count engine layers by the precision of their tensors in --exportLayerInfo JSON.

    Returns {"fp16": n, "fp32": n, "int8": n, "unknown": n}; layers described only by name (no
    detailed profiling) count as unknown.
    """
    counts = {"fp16": 0, "fp32": 0, "int8": 0, "unknown": 0}
    try:
        info = json.loads(text)
    except ValueError:
        return None
    layers = info.get("Layers", []) if isinstance(info, dict) else info
    for layer in layers if isinstance(layers, list) else []:
        if not isinstance(layer, dict):
            counts["unknown"] += 1
            continue
        described = json.dumps(layer)
        if re.search(r"FP16|Half", described):
            counts["fp16"] += 1
        elif re.search(r"Int8|INT8", described):
            counts["int8"] += 1
        elif re.search(r"FP32|Float", described):
            counts["fp32"] += 1
        else:
            counts["unknown"] += 1
    return counts


def run_trtexec(
    trtexec, model_path, item, input_shape, precision, warmup_s, runs, timeout_s, workdir
):
    """Build a TensorRT engine with trtexec, time it, and return the result dict."""
    times_path = os.path.join(workdir, "times.json")
    layers_path = os.path.join(workdir, "layers.json")
    cmd = [
        trtexec,
        "--onnx=" + model_path,
        "--warmUp=%d" % int(round(warmup_s * 1000)),
        "--iterations=%d" % runs,
        "--duration=0",
        "--avgRuns=1",
        "--exportTimes=" + times_path,
    ]
    if input_is_dynamic(item):
        name = item["name"]
        if ":" in name:
            name = "'%s'" % name
        cmd.append("--shapes=%s:%s" % (name, "x".join(str(value) for value in input_shape)))
    if precision == "fp16":
        cmd.append("--fp16")
    detail = ["--exportLayerInfo=" + layers_path, "--profilingVerbosity=detailed"]
    flags = []
    returncode, log = _run_with_timeout(cmd + detail, timeout_s, cwd=workdir)
    if returncode != 0 and re.search(r"[Uu]nknown option|[Uu]nrecognized", log):
        # TensorRT before 8.2 has no layer export; time without it and say so.
        returncode, log = _run_with_timeout(cmd, timeout_s, cwd=workdir)
        flags.append("engine-precision-unverified")
    if returncode != 0:
        kind = (
            "invalid-model" if re.search(r"[Pp]arse|ModelImporter", log) else "measurement-failed"
        )
        status = 400 if kind == "invalid-model" else 500
        raise MeasureError(
            status, kind, "trtexec failed (%d): %s" % (returncode, log.strip()[-2000:])
        )
    with open(times_path) as handle:
        samples = parse_trtexec_times(handle.read())
    counts = None
    if os.path.exists(layers_path):
        with open(layers_path) as handle:
            counts = parse_layer_precisions(handle.read())
    if counts is None or counts["fp16"] + counts["fp32"] + counts["int8"] == 0:
        if "engine-precision-unverified" not in flags:
            flags.append("engine-precision-unverified")
    elif precision == "fp16" and counts["fp16"] == 0:
        flags.append("fp16-not-used")
    if precision == "fp16" and re.search(
        r"without native FP16|no(t)? fast FP16|FP16 is not supported", log, re.IGNORECASE
    ):
        flags.append("no-fast-fp16")
    warmup_runs = parse_trtexec_warmup_runs(log)
    if warmup_runs is None:
        flags.append("warmup-count-unknown")
    return {
        "samples_ms": samples,
        "warmup_runs": warmup_runs or 0,
        "timed_runs": len(samples),
        "backend": "trtexec",
        "precision": precision,
        "engine_layer_precisions": counts,
        "metric": "gpu-compute",
        "flags": flags,
    }


# --------------------------------------------------------------------------------------------
# The server.


class WorkerState:
    """Configuration and shared state of one running worker."""

    def __init__(self, args, token):
        self.target = args.target
        self.token = token.encode("utf-8")
        self.max_upload_bytes = int(args.max_upload_mb * 1024 * 1024)
        self.timeout_s = float(args.timeout)
        self.threads = args.threads or os.cpu_count() or 1
        self.measure_lock = threading.Lock()
        self.busy = False
        self.started_at = time.time()
        self.measurements = 0
        self.fingerprint = static_fingerprint()
        self.trtexec = find_trtexec(args.trtexec)
        self.trtexec_version = trtexec_version(self.trtexec) if self.trtexec else None
        self.onnxruntime = probe_onnxruntime()
        self.ort_provider = self._choose_ort_provider(args.ort_provider)
        self.backend, self.backend_reason = self._choose_backend(args.backend)
        self.default_precision = "fp16" if self.backend == "trtexec" else "fp32"
        self.fingerprint["onnxruntime_version"] = self.onnxruntime.get("version")
        self.fingerprint["tensorrt_version"] = self.trtexec_version

    def _choose_ort_provider(self, requested):
        providers = self.onnxruntime.get("providers") or []
        if requested != "auto":
            return requested
        if EXECUTION_PROVIDERS["cuda"] in providers:
            return "cuda"
        return "cpu"

    def _choose_backend(self, requested):
        ort_ok = bool(self.onnxruntime.get("available"))
        if requested == "trtexec" or (requested == "auto" and self.trtexec):
            if self.trtexec:
                return "trtexec", None
            return None, "trtexec was requested but is neither on PATH nor at %s" % (
                TRTEXEC_DEFAULT_PATH
            )
        if ort_ok:
            return "onnxruntime", None
        reason = "onnxruntime is not usable (%s)" % self.onnxruntime.get("error")
        if requested == "auto":
            reason = "no timing backend: trtexec not found and " + reason
        return None, reason

    def supported_precisions(self):
        if self.backend == "trtexec":
            return ["fp16", "fp32"]
        if self.backend == "onnxruntime":
            return ["fp32"] if self.ort_provider == "cpu" else ["fp32", "fp16"]
        return []

    def fingerprint_now(self):
        fingerprint = dict(self.fingerprint)
        fingerprint.update(dynamic_fingerprint())
        fingerprint["target"] = self.target
        fingerprint["backend"] = self.backend
        fingerprint["worker_version"] = WORKER_VERSION
        if self.backend == "onnxruntime":
            fingerprint["runtime"] = "onnxruntime"
            fingerprint["runtime_version"] = self.onnxruntime.get("version")
            fingerprint["execution_provider"] = EXECUTION_PROVIDERS[self.ort_provider]
            fingerprint["threads"] = self.threads
        elif self.backend == "trtexec":
            fingerprint["runtime"] = "tensorrt"
            fingerprint["runtime_version"] = self.trtexec_version or self.fingerprint.get(
                "tensorrt_package"
            )
            fingerprint["execution_provider"] = "trtexec"
        return fingerprint

    def info(self):
        return {
            "worker_version": WORKER_VERSION,
            "api_version": API_VERSION,
            "target": self.target,
            "backend": self.backend,
            "backend_unavailable_reason": self.backend_reason,
            "backends": {
                "trtexec": {
                    "available": self.trtexec is not None,
                    "path": self.trtexec,
                    "version": self.trtexec_version,
                },
                "onnxruntime": dict(
                    self.onnxruntime,
                    execution_provider=EXECUTION_PROVIDERS[self.ort_provider],
                    threads=self.threads,
                ),
            },
            "default_precision": self.default_precision,
            "precisions": self.supported_precisions(),
            "limits": {
                "max_upload_bytes": self.max_upload_bytes,
                "timeout_s": self.timeout_s,
                "max_batch": MAX_BATCH,
                "max_side": MAX_SIDE,
                "max_input_elements": MAX_INPUT_ELEMENTS,
                "warmup_s": list(WARMUP_S_LIMITS),
                "runs": list(RUNS_LIMITS),
            },
            "fingerprint": self.fingerprint_now(),
            "temperatures": temperatures(),
            "busy": self.busy,
            "measurements": self.measurements,
        }


def parse_measure_request(body, state):
    """Check a /measure JSON body; return (model bytes, model input, settings) or raise."""
    try:
        request = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise InputError("the body is not valid JSON: %s" % error) from None
    if not isinstance(request, dict):
        raise InputError("the body must be a JSON object, got %s" % type(request).__name__)
    unknown = sorted(set(request) - set(MEASURE_FIELDS))
    if unknown:
        raise InputError(
            "unknown fields %s; allowed: %s" % (", ".join(unknown), ", ".join(MEASURE_FIELDS))
        )
    missing = [name for name in REQUIRED_MEASURE_FIELDS if name not in request]
    if missing:
        raise InputError("missing required fields: %s" % ", ".join(missing))
    encoded = request["onnx_b64"]
    if not isinstance(encoded, str):
        raise InputError("onnx_b64 must be a base64 string")
    try:
        model = base64.b64decode(encoded.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError) as error:
        raise InputError("onnx_b64 is not valid base64: %s" % error) from None
    shape = validate_input_shape(request["input_shape"])
    precision = request.get("precision", state.default_precision)
    if precision not in PRECISIONS:
        raise InputError("precision must be one of %s, got %r" % (list(PRECISIONS), precision))
    warmup_s = request.get("warmup_s", DEFAULT_WARMUP_S)
    if isinstance(warmup_s, bool) or not isinstance(warmup_s, (int, float)):
        raise InputError("warmup_s must be a number of seconds, got %r" % (warmup_s,))
    if not WARMUP_S_LIMITS[0] <= warmup_s <= WARMUP_S_LIMITS[1]:
        raise InputError(
            "warmup_s must be within [%g, %g], got %r" % (WARMUP_S_LIMITS + (warmup_s,))
        )
    runs = request.get("runs", DEFAULT_RUNS)
    if isinstance(runs, bool) or not isinstance(runs, int):
        raise InputError("runs must be an integer, got %r" % (runs,))
    if not RUNS_LIMITS[0] <= runs <= RUNS_LIMITS[1]:
        raise InputError("runs must be within [%d, %d], got %d" % (RUNS_LIMITS + (runs,)))
    try:
        item = model_input(describe_onnx_model(model))
    except InputError as error:
        raise InputError("invalid ONNX model: %s" % error, "invalid-model") from None
    check_shape_against_input(shape, item)
    if state.backend is not None and precision not in state.supported_precisions():
        raise InputError(
            "precision %s is not available on this worker (backend %s, provider %s); "
            "supported: %s"
            % (precision, state.backend, state.ort_provider, state.supported_precisions()),
            "unsupported-precision",
        )
    settings = {"precision": precision, "warmup_s": float(warmup_s), "runs": runs}
    return model, item, shape, settings


def measure(state, model, item, shape, settings):
    """Run one measurement (the caller holds state.measure_lock) and return the answer dict."""
    if state.backend is None:
        raise MeasureError(503, "backend-missing", state.backend_reason)
    workdir = tempfile.mkdtemp(prefix="jetsearch-worker-")
    temps_before = temperatures()
    started_at = time.time()
    try:
        model_path = os.path.join(workdir, "model.onnx")
        with open(model_path, "wb") as handle:
            handle.write(model)
        if state.backend == "trtexec":
            result = run_trtexec(
                state.trtexec,
                model_path,
                item,
                shape,
                settings["precision"],
                settings["warmup_s"],
                settings["runs"],
                state.timeout_s,
                workdir,
            )
        else:
            result = run_onnxruntime_child(
                model_path,
                shape,
                precision=settings["precision"],
                execution_provider=state.ort_provider,
                threads=state.threads,
                warmup_s=settings["warmup_s"],
                min_runs=settings["runs"],
                max_runs=settings["runs"],
                target_s=0.0,
                timeout_s=state.timeout_s,
                workdir=workdir,
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result.setdefault("flags", [])
    result["fingerprint"] = state.fingerprint_now()
    result["temps_before"] = temps_before
    result["temps_after"] = temperatures()
    result["started_at"] = started_at
    result["finished_at"] = time.time()
    result["target"] = state.target
    result["worker_version"] = WORKER_VERSION
    result["input_shape"] = shape
    return result


class WorkerHandler(BaseHTTPRequestHandler):
    server_version = "jetsearch-worker/" + WORKER_VERSION
    # A client that stops sending mid-body must not hold a thread forever.
    timeout = 120

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def do_DELETE(self):
        self._dispatch("DELETE")

    @property
    def state(self):
        return self.server.state

    def log_message(self, format, *args):
        sys.stderr.write(
            "%s %s %s\n"
            % (time.strftime("%Y-%m-%d %H:%M:%S"), self.address_string(), format % args)
        )

    def _send_json(self, status, payload, headers=None):
        body = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _send_error(self, status, kind, message, headers=None):
        self._send_json(status, {"error": message, "error_kind": kind}, headers)

    def _authorized(self):
        header = self.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return False
        return hmac.compare_digest(
            header[len("Bearer ") :].strip().encode("utf-8"), self.state.token
        )

    def _dispatch(self, method):
        path = self.path.split("?", 1)[0]
        try:
            if not self._authorized():
                self.close_connection = True
                self._send_error(
                    401,
                    "unauthorized",
                    "missing or wrong token: send 'Authorization: Bearer TOKEN' with the token "
                    "from the worker's --token-file",
                    {"WWW-Authenticate": "Bearer"},
                )
                return
            routes = {"/health": ("GET", self._health), "/info": ("GET", self._info)}
            routes["/measure"] = ("POST", self._measure)
            if path not in routes:
                self._send_error(
                    404, "not-found", "no such endpoint %s; have %s" % (path, sorted(routes))
                )
                return
            allowed, handler = routes[path]
            if method != allowed:
                self._send_error(
                    405, "method-not-allowed", "%s needs %s" % (path, allowed), {"Allow": allowed}
                )
                return
            handler()
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as error:
            traceback.print_exc()
            with contextlib.suppress(OSError):
                self._send_error(500, "internal-error", "%s: %s" % (type(error).__name__, error))

    def _health(self):
        self._send_json(200, {"status": "ok", "busy": self.state.busy})

    def _info(self):
        self._send_json(200, self.state.info())

    def _read_body(self):
        raw_length = self.headers.get("Content-Length")
        if raw_length is None:
            raise MeasureError(411, "length-required", "send the body with a Content-Length header")
        try:
            length = int(raw_length)
        except ValueError:
            raise MeasureError(
                400, "invalid-request", "Content-Length %r is not an integer" % raw_length
            ) from None
        if length < 0:
            raise MeasureError(400, "invalid-request", "Content-Length must not be negative")
        if length > self.state.max_upload_bytes:
            # Checked before reading: an oversize body is never buffered.
            self.close_connection = True
            raise MeasureError(
                413,
                "too-large",
                "body of %d bytes is over this worker's limit of %d bytes (--max-upload-mb)"
                % (length, self.state.max_upload_bytes),
            )
        content_type = self.headers.get("Content-Type", "application/json").split(";")[0].strip()
        if content_type != "application/json":
            self.close_connection = True
            raise MeasureError(
                415, "unsupported-media-type", "send application/json, got %s" % content_type
            )
        body = self.rfile.read(length)
        if len(body) != length:
            raise MeasureError(
                400, "invalid-request", "the body ended after %d of %d bytes" % (len(body), length)
            )
        return body

    def _measure(self):
        try:
            body = self._read_body()
            model, item, shape, settings = parse_measure_request(body, self.state)
        except InputError as error:
            self._send_error(400, error.kind, str(error))
            return
        except MeasureError as error:
            self._send_error(error.status, error.kind, str(error))
            return
        with self.state.measure_lock:
            self.state.busy = True
            try:
                result = measure(self.state, model, item, shape, settings)
                self.state.measurements += 1
            except MeasureError as error:
                self.log_message("measurement failed (%s): %s", error.kind, error)
                self._send_error(error.status, error.kind, str(error))
                return
            finally:
                self.state.busy = False
        self._send_json(200, result)


class WorkerServer(socketserver.ThreadingMixIn, HTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, state):
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        HTTPServer.__init__(self, address, WorkerHandler)
        self.state = state


def read_token(path):
    """The shared token from `path`; refuses a missing or empty file with the reason."""
    try:
        with open(path, "rb") as handle:
            token = handle.read().decode("utf-8").strip()
    except OSError as error:
        raise SystemExit("worker: cannot read --token-file %s: %s" % (path, error)) from None
    except UnicodeDecodeError:
        raise SystemExit("worker: --token-file %s is not UTF-8 text" % path) from None
    if not token:
        raise SystemExit("worker: --token-file %s is empty; put a long random token in it" % path)
    if any(char.isspace() for char in token):
        raise SystemExit("worker: the token in %s must be one word without spaces" % path)
    return token


def build_parser():
    parser = argparse.ArgumentParser(
        prog="worker.py",
        description="Serve latency measurements of ONNX models on this board (jetsearch).",
        epilog="example: python3 worker.py --target agx --port 8765 --token-file ~/.jetsearch-token"
        "  (then point a RemotePool / study at http://BOARD:8765)",
    )
    parser.add_argument("--target", required=True, help="declared target name, e.g. agx or nano")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="0 picks a free port")
    parser.add_argument("--token-file", required=True, help="file holding the shared token")
    parser.add_argument(
        "--host", default=DEFAULT_HOST, help="address to listen on (default %(default)s)"
    )
    parser.add_argument(
        "--max-upload-mb",
        type=float,
        default=DEFAULT_MAX_UPLOAD_MB,
        help="largest request body (default %(default)s)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help="seconds one measurement may take (default %(default)s)",
    )
    parser.add_argument("--backend", choices=("auto",) + BACKENDS, default="auto")
    parser.add_argument("--trtexec", default=None, help="path of trtexec if not on PATH")
    parser.add_argument(
        "--ort-provider",
        choices=("auto",) + tuple(sorted(EXECUTION_PROVIDERS)),
        default="auto",
        help="onnxruntime execution provider (auto: CUDA if available, else CPU)",
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="onnxruntime intra-op threads (0: all cores)"
    )
    return parser


def run_worker(argv=None):
    # type: (Optional[List[str]]) -> int
    """Start the worker with command-line arguments `argv`; returns the exit code."""
    args = build_parser().parse_args(argv)
    if args.max_upload_mb <= 0 or args.timeout <= 0 or args.threads < 0:
        sys.stderr.write("worker: --max-upload-mb and --timeout must be positive, --threads >= 0\n")
        return 2
    try:
        token = read_token(args.token_file)
    except SystemExit as error:
        sys.stderr.write("%s\n" % error)
        return 2
    state = WorkerState(args, token)
    if args.backend != "auto" and state.backend is None:
        sys.stderr.write("worker: %s\n" % state.backend_reason)
        return 2
    offered = state.onnxruntime.get("providers") or []
    if state.backend == "onnxruntime" and EXECUTION_PROVIDERS[state.ort_provider] not in offered:
        sys.stderr.write(
            "worker: --ort-provider %s: onnxruntime %s offers only %s\n"
            % (state.ort_provider, state.onnxruntime.get("version"), ", ".join(offered))
        )
        return 2
    try:
        server = WorkerServer((args.host, args.port), state)
    except OSError as error:
        sys.stderr.write("worker: cannot listen on %s:%d: %s\n" % (args.host, args.port, error))
        return 2
    host, port = server.server_address[:2]
    sys.stdout.write(
        "jetsearch worker %s listening on http://%s:%d target=%s backend=%s\n"
        % (WORKER_VERSION, host, port, state.target, state.backend or "none")
    )
    if state.backend is None:
        sys.stdout.write("no timing backend: %s\n" % state.backend_reason)
    if host not in ("127.0.0.1", "::1", "localhost"):
        sys.stdout.write(
            "note: listening beyond loopback over plain HTTP; the token is only as safe as "
            "this network (an SSH tunnel to 127.0.0.1 is safer)\n"
        )
    sys.stdout.flush()

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [CHILD_MODE_FLAG] and len(argv) == 2:
        return _measure_child_main(argv[1])
    if argv[:1] == [PROBE_MODE_FLAG]:
        return _probe_main()
    return run_worker(argv)


if __name__ == "__main__":
    sys.exit(main())
