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
``--token-file`` (missing or wrong: 401, decided as soon as the request head is in, before any
body is read). Requests and answers are JSON; errors are
``{"error": "what went wrong", "error_kind": "..."}``. Every connection carries one request and
is closed after its answer.

``GET /health``
    ``{"status": "ok", "busy": false}``
``GET /info``
    target, chosen backend (or null and the reason), backends found, default and supported
    precisions, limits, queue, counters (measurements, dropped), worker version and the board
    fingerprint (board model, L4T/JetPack, power mode, whether clocks are locked, runtime
    versions, CPU, OS, python, temperatures).
``POST /measure``
    body ``{"onnx_b64": "<base64 ONNX bytes>", "input_shape": [1, 3, 360, 480],
    "precision": "fp16", "warmup_s": 1.0, "runs": 100}``; only ``onnx_b64`` and
    ``input_shape`` are required. Answer: ``{"samples_ms": [...], "warmup_runs": n,
    "timed_runs": n, "backend": ..., "precision": ..., "metric": ..., "flags": [...],
    "fingerprint": {...}, "temps_before": {...}, "temps_after": {...}, "started_at": t0,
    "finished_at": t1}`` (t0 and t1 are Unix times). Status codes: 400 for a malformed body
    (not ASCII JSON, nested or repeated containers, unknown fields, wrong types), an invalid
    ONNX model (a fixed dimension of 0 included), an absurd input shape, out-of-range settings,
    or a model that needs more memory than ``--memory-limit-mb`` (``"error_kind":
    "memory-limit"``); 408 when the request did not arrive within ``--request-timeout``;
    411/413/415 for a missing, too large (checked before reading) or non-JSON body; 431 for an
    oversize request head; 500 when the model failed to run or the child crashed; 503 when the
    worker has no backend, or, with a ``Retry-After`` header (``"error_kind": "busy"``), when
    the measurement queue or the upload budget is full; 504 when the measurement ran past
    ``--timeout``.

Resources a client can take are bounded: one I/O loop holds every connection (a slow or silent
one costs no thread; past ``--max-connections`` the oldest idle one is closed), a fixed pool of
threads parses uploads within ``--upload-budget-mb``, at most ``--queue`` measurements wait,
a request whose client has disconnected is dropped before (or while) it is measured, and the
measuring process runs under ``--memory-limit-mb``. Nothing a client sends is executed or
unpickled: the model is parsed as ONNX and handed to the timing backend, every other field is
checked against a fixed list of names, types and ranges. The worker listens on 127.0.0.1
unless ``--host`` says otherwise.
"""

import argparse
import base64
import binascii
import collections
import contextlib
import email.utils
import glob
import hmac
import http.client
import json
import math
import os
import platform
import queue
import re
import reprlib
import select
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

try:  # POSIX only; without it the measuring child runs without an address-space limit
    import resource
except ImportError:  # pragma: no cover - Windows
    resource = None

WORKER_VERSION = "1.0.0"
API_VERSION = 1

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
DEFAULT_MAX_UPLOAD_MB = 64.0
DEFAULT_TIMEOUT_S = 240.0
DEFAULT_WARMUP_S = 1.0
DEFAULT_RUNS = 100
# The whole request (headers and body) must arrive within this; a 64 MB body needs ~0.6 MB/s.
DEFAULT_REQUEST_TIMEOUT_S = 120.0
# What the measuring child may use; JetSeg networks need a few hundred MB at most.
DEFAULT_MEMORY_LIMIT_MB = 2048
# Measurements that may wait behind the running one.
DEFAULT_QUEUE = 8
DEFAULT_MAX_CONNECTIONS = 512
# Upload bytes held at once (bodies being read and parsed, models waiting in the queue).
DEFAULT_UPLOAD_BUDGET_MB = 256.0

# A body is counted twice while it is parsed: the raw bytes and the decoded text coexist.
PARSE_FACTOR = 2
# Connections the kernel completes before the loop accepts them (capped by somaxconn): a
# burst larger than this waits a second for a SYN retry.
LISTEN_BACKLOG = 1024
ACCEPT_BURST = 128
# Threads that parse uploads and answer /info; sockets are read and written by one I/O loop,
# so a slow or silent client never holds a thread.
HANDLER_THREADS = 4
HANDLER_QUEUE = 64
MAX_HEADER_BYTES = 16384
MAX_HEADERS = 64
# After an answer, how long and how much of an unread body is read and thrown away, so that
# the client reads the answer instead of a reset (a body the worker never asked for is not).
LINGER_S = 2.0
ANSWER_TIMEOUT_S = 30.0
UNTRUSTED_DRAIN_BYTES = 65536
# A /measure body is one flat object of five fields: more containers or items than this is
# hostile (nesting, or millions of tiny objects that parse to 20x the body's size).
MAX_JSON_CONTAINERS = 16
MAX_JSON_ITEMS = 64
MAX_JSON_NUMBER_CHARS = 32
BASE64_CHUNK_CHARS = 1 << 22
# How often a running measurement checks its memory, its deadline and its client.
WATCH_INTERVAL_S = 0.1
RETRY_AFTER_LIMITS_S = (1, 600)

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

_BRIEF = reprlib.Repr()
_BRIEF.maxstring = _BRIEF.maxother = 60
_BRIEF.maxlist = _BRIEF.maxdict = 8
# A \u escape of anything beyond ASCII (\u0000 to \u007f are ASCII).
_NON_ASCII_ESCAPE = re.compile(r"\\u(?!00[0-7][0-9A-Fa-f])")

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
    # A view, not a copy: the model may be tens of MB and the caller already holds it.
    buf = memoryview(data if isinstance(data, (bytes, bytearray)) else bytes(data))
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
        raise InputError(
            "input_shape must be a list of 4 integers [B, C, H, W], got %s" % _brief(shape)
        )
    for value in shape:
        # bool is an int subclass; True is not a dimension.
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError("input_shape must hold integers, got %s" % _brief(shape))
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
        if isinstance(dim, int) and dim <= 0:
            # ONNX writes a fixed size in dim_value; 0 or less can hold no image (a symbolic
            # axis is a dim_param or no value at all).
            raise InputError(
                "input %r has fixed size %d on axis %d (%r): a fixed dimension must be "
                "positive, or symbolic to take any size" % (item["name"], dim, axis, dims),
                "invalid-model",
            )
        if isinstance(dim, int) and dim != value:
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


def limit_address_space(limit_bytes):
    """Cap this process's address space at `limit_bytes` (None or 0: leave it as it is)."""
    if not limit_bytes or resource is None:
        return
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = int(limit_bytes)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    # Soft and hard alike, so nothing the model loads can lift it again.
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


# What allocators say when an allocation is refused (onnxruntime's arena, C++, Python, libc).
_ALLOCATION_FAILURE = re.compile(
    r"Failed to allocate memory|bad_alloc|bad allocation|MemoryError|Cannot allocate memory|"
    r"[Oo]ut of memory",
)


def looks_like_allocation_failure(text):
    """True if `text` (an error or a log) says an allocation was refused."""
    return bool(_ALLOCATION_FAILURE.search(text or ""))


def _rss_bytes(pid):
    """Resident memory of process `pid` from /proc (None where there is no /proc)."""
    text = _read_text("/proc/%d/status" % pid)
    match = re.search(r"^VmRSS:\s*(\d+)\s*kB", text or "", re.MULTILINE)
    return int(match.group(1)) * 1024 if match else None


def memory_limit_message(limit_bytes, detail):
    return (
        "the measurement needs more memory than this worker's limit of %d MiB "
        "(--memory-limit-mb): %s" % (limit_bytes // (1 << 20), detail)
    )


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
        if spec.get("memory_limit_bytes") and looks_like_allocation_failure(str(error)):
            raise _ChildError("memory-limit", "loading the model: %s" % error) from None
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
        if spec.get("memory_limit_bytes") and looks_like_allocation_failure(str(error)):
            raise _ChildError("memory-limit", "running the model: %s" % error) from None
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
        # Before onnxruntime is imported: a model that expands to gigabytes (an Expand to a
        # huge shape fits in 137 bytes) gets a refused allocation, not the board's memory.
        limit_address_space(spec.get("memory_limit_bytes"))
        outcome = _onnxruntime_measure(spec)
        outcome["ok"] = True
    except _ChildError as error:
        outcome = {"ok": False, "error_kind": error.kind, "error": str(error)}
    except MemoryError as error:
        outcome = {"ok": False, "error_kind": "memory-limit", "error": "MemoryError: %s" % error}
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


def _run_with_timeout(cmd, timeout_s, cwd=None, memory_limit_bytes=None, cancelled=None):
    """(returncode, output) of `cmd`, killing its whole process group when it runs past
    `timeout_s` (504), when its resident memory passes `memory_limit_bytes` (400
    "memory-limit") or when `cancelled()` turns true (499 "client-gone": nobody waits for it).

    The resident-memory watch is what bounds trtexec and the GPU providers, where an
    address-space limit would break CUDA, which reserves far more address space than it uses.
    """
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        universal_newlines=True,
        cwd=cwd,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            # Retrying communicate() after its timeout loses no output (documented).
            output, _ = proc.communicate(
                timeout=max(0.0, min(WATCH_INTERVAL_S, deadline - time.monotonic()))
            )
            return proc.returncode, output
        except subprocess.TimeoutExpired:
            pass
        if time.monotonic() >= deadline:
            _kill_group(proc)
            raise MeasureError(
                504,
                "timeout",
                "the measurement ran past the %.1f s timeout and was killed" % timeout_s,
            )
        if memory_limit_bytes:
            rss = _rss_bytes(proc.pid)
            if rss is not None and rss > memory_limit_bytes:
                _kill_group(proc)
                raise MeasureError(
                    400,
                    "memory-limit",
                    memory_limit_message(
                        memory_limit_bytes,
                        "its resident memory reached %d MiB and it was killed" % (rss >> 20),
                    ),
                )
        if cancelled is not None and cancelled():
            _kill_group(proc)
            raise MeasureError(
                499, "client-gone", "the client disconnected; the measurement was stopped"
            )


# Child error kinds -> HTTP status of the answer.
CHILD_ERROR_STATUS = {
    "invalid-model": 400,
    "invalid-input": 400,
    "unsupported-precision": 400,
    "provider-fallback": 503,
    "backend-missing": 503,
    "measurement-failed": 500,
    "memory-limit": 400,
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
    memory_limit_bytes=None,
    cancelled=None,
):
    """Time `model_path` with onnxruntime in a fresh child process and return its result dict.

    The child warms up for `warmup_s` (at least one run, always discarded), then times runs with
    time.perf_counter: at least `min_runs`, then on until `target_s` has passed, at most
    `max_runs`. intra-op threads = `threads`, inter-op threads = 1, sequential execution; on a
    GPU provider the input is bound once on the device (IOBinding). Raises MeasureError with the
    HTTP status and kind ("invalid-model", "provider-fallback", "timeout", "memory-limit", ...)
    on failure.

    `memory_limit_bytes` bounds the child: its address space on the CPU provider (a refused
    allocation fails at once), its resident memory on every provider (CUDA needs far more
    address space than memory). `cancelled()`, polled while the child runs, stops it early.
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
            # An address-space limit only where CUDA is not loaded.
            "memory_limit_bytes": memory_limit_bytes if execution_provider == "cpu" else None,
        }
        spec_path = os.path.join(workdir, "spec.json")
        with open(spec_path, "w") as handle:
            json.dump(spec, handle)
        cmd = [python or sys.executable, os.path.abspath(__file__), CHILD_MODE_FLAG, spec_path]
        returncode, output = _run_with_timeout(
            cmd, timeout_s, cwd=workdir, memory_limit_bytes=memory_limit_bytes, cancelled=cancelled
        )
        try:
            with open(spec["result_path"]) as handle:
                outcome = json.load(handle)
        except (OSError, ValueError):
            if memory_limit_bytes and looks_like_allocation_failure(output):
                raise MeasureError(
                    400,
                    "memory-limit",
                    memory_limit_message(
                        memory_limit_bytes,
                        "the measuring process died on a refused allocation: %s"
                        % output.strip()[-500:],
                    ),
                ) from None
            raise MeasureError(
                500,
                "measurement-crashed",
                "the measuring process exited with %d and left no result: %s"
                % (returncode, output.strip()[-2000:]),
            ) from None
        if not outcome.get("ok"):
            kind = outcome.get("error_kind", "measurement-failed")
            message = outcome.get("error", "")
            if kind == "memory-limit":
                message = memory_limit_message(memory_limit_bytes or 0, message)
            raise MeasureError(CHILD_ERROR_STATUS.get(kind, 500), kind, message)
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
    trtexec,
    model_path,
    item,
    input_shape,
    precision,
    warmup_s,
    runs,
    timeout_s,
    workdir,
    memory_limit_bytes=None,
    cancelled=None,
):
    """Build a TensorRT engine with trtexec, time it, and return the result dict.

    `memory_limit_bytes` bounds trtexec's resident memory (not its address space: CUDA
    reserves more than any limit worth setting); `cancelled()` stops it early.
    """
    watch = {"memory_limit_bytes": memory_limit_bytes, "cancelled": cancelled}
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
    returncode, log = _run_with_timeout(cmd + detail, timeout_s, cwd=workdir, **watch)
    if returncode != 0 and re.search(r"[Uu]nknown option|[Uu]nrecognized", log):
        # TensorRT before 8.2 has no layer export; time without it and say so.
        returncode, log = _run_with_timeout(cmd, timeout_s, cwd=workdir, **watch)
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
        self.request_timeout_s = float(args.request_timeout)
        self.memory_limit_bytes = int(args.memory_limit_mb * 1024 * 1024) or None
        self.max_connections = args.max_connections
        self.threads = args.threads or os.cpu_count() or 1
        self.queue = MeasurementQueue(args.queue)
        self.uploads = UploadBudget(int(args.upload_budget_mb * 1024 * 1024))
        self.busy = False
        self.started_at = time.time()
        self.measurements = 0
        # Requests whose client had gone before (or while) they were measured.
        self.dropped = 0
        self.fingerprint = static_fingerprint()
        self.trtexec = find_trtexec(args.trtexec)
        self.trtexec_version = trtexec_version(self.trtexec) if self.trtexec else None
        self.onnxruntime = probe_onnxruntime()
        self.ort_provider = self._choose_ort_provider(args.ort_provider)
        self.backend, self.backend_reason = self._choose_backend(args.backend)
        self.default_precision = "fp16" if self.backend == "trtexec" else "fp32"
        self.fingerprint["onnxruntime_version"] = self.onnxruntime.get("version")
        self.fingerprint["tensorrt_version"] = self.trtexec_version

    def retry_after_s(self):
        """Seconds a refused client should wait: until the running measurement should end."""
        return self.queue.retry_after_s()

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
                "upload_budget_bytes": self.uploads.capacity,
                "timeout_s": self.timeout_s,
                "request_timeout_s": self.request_timeout_s,
                "memory_limit_bytes": self.memory_limit_bytes,
                "queue": self.queue.capacity,
                "max_connections": self.max_connections,
                "max_batch": MAX_BATCH,
                "max_side": MAX_SIDE,
                "max_input_elements": MAX_INPUT_ELEMENTS,
                "warmup_s": list(WARMUP_S_LIMITS),
                "runs": list(RUNS_LIMITS),
            },
            "fingerprint": self.fingerprint_now(),
            "temperatures": temperatures(),
            "busy": self.busy,
            "queued": self.queue.waiting(),
            "measurements": self.measurements,
            "dropped": self.dropped,
        }


def _brief(value):
    """A short repr of a client's value for an error message (a value can be 60 MB long)."""
    return _BRIEF.repr(value)


def _brief_name(name):
    return name if len(name) <= 60 else name[:57] + "..."


def _json_number_guard(parse):
    def parse_bounded(text):
        # Python 3.6 turns a long digit string into an int in quadratic time.
        if len(text) > MAX_JSON_NUMBER_CHARS:
            raise InputError(
                "a number in the body has %d characters, more than %d"
                % (len(text), MAX_JSON_NUMBER_CHARS)
            )
        return parse(text)

    return parse_bounded


def _json_constant(name):
    raise InputError("%s is not a number this worker accepts" % name)


def _decode_base64(encoded):
    """bytearray of the strict base64 string `encoded`, decoded slice by slice so that at no
    time a second copy of the whole text exists (b64decode would make one)."""
    if len(encoded) % 4:
        raise InputError(
            "onnx_b64 is not valid base64: its length %d is not a multiple of 4" % len(encoded)
        )
    padding = 2 if encoded.endswith("==") else 1 if encoded.endswith("=") else 0
    model = bytearray(len(encoded) // 4 * 3 - padding)
    written = 0
    for start in range(0, len(encoded), BASE64_CHUNK_CHARS):
        piece = encoded[start : start + BASE64_CHUNK_CHARS]
        if start + BASE64_CHUNK_CHARS < len(encoded) and piece.endswith("="):
            raise InputError("onnx_b64 is not valid base64: padding before its end")
        try:
            decoded = base64.b64decode(piece.encode("ascii"), validate=True)
        except (binascii.Error, ValueError, UnicodeEncodeError) as error:
            raise InputError("onnx_b64 is not valid base64: %s" % error) from None
        if written + len(decoded) > len(model):
            raise InputError("onnx_b64 is not valid base64: misplaced padding")
        model[written : written + len(decoded)] = decoded
        written += len(decoded)
    if written != len(model):
        raise InputError("onnx_b64 is not valid base64: misplaced padding")
    return model


def _ascii_text(body):
    try:
        return body.decode("ascii")
    except UnicodeDecodeError as error:
        raise InputError(
            "the body must be ASCII JSON (non-ASCII characters escaped, as json.dumps writes "
            "it); byte %d is not ASCII" % error.start
        ) from None


def _parse_json_text(text):
    """The JSON object of a /measure body, refusing what would parse to far more memory or
    time than the body's own size: nesting, many items, long numbers, non-ASCII escapes."""
    containers = text.count("{") + text.count("[")
    if containers > MAX_JSON_CONTAINERS:
        raise InputError(
            "the body holds %d JSON objects or arrays, more than %d: a /measure body is one "
            "flat object, nested JSON is refused" % (containers, MAX_JSON_CONTAINERS)
        )
    items = text.count(",")
    if items > MAX_JSON_ITEMS:
        raise InputError(
            "the body holds %d JSON items, more than %d: a /measure body is one flat object "
            "of %d fields" % (items, MAX_JSON_ITEMS, len(MEASURE_FIELDS))
        )
    # One escaped non-ASCII character makes Python store a 64 MB string in 4 bytes per
    # character; every /measure field is ASCII anyway.
    if "\\u" in text and _NON_ASCII_ESCAPE.search(text):
        raise InputError("the body escapes a non-ASCII character; every /measure field is ASCII")
    try:
        request = json.loads(
            text,
            parse_int=_json_number_guard(int),
            parse_float=_json_number_guard(float),
            parse_constant=_json_constant,
        )
    except InputError:
        raise
    except (ValueError, RecursionError) as error:
        raise InputError("the body is not valid JSON: %s" % error) from None
    if not isinstance(request, dict):
        raise InputError("the body must be a JSON object, got %s" % type(request).__name__)
    return request


def parse_measure_request(body, state):
    """Check a /measure JSON body; return (model bytes, model input, shape, settings) or raise
    InputError saying what is wrong.

    `body` is bytes, or a list holding them as its one item: the list is emptied, so that the
    body is freed as soon as it is decoded and a parse holds at most twice the body's size
    (PARSE_FACTOR) at any time (a plain argument stays referenced by the caller).
    """
    if isinstance(body, list):
        body = body.pop()
    text = _ascii_text(body)
    del body
    request = _parse_json_text(text)
    del text
    unknown = sorted(set(request) - set(MEASURE_FIELDS))
    if unknown:
        raise InputError(
            "unknown fields %s; allowed: %s"
            % (", ".join(_brief_name(name) for name in unknown), ", ".join(MEASURE_FIELDS))
        )
    missing = [name for name in REQUIRED_MEASURE_FIELDS if name not in request]
    if missing:
        raise InputError("missing required fields: %s" % ", ".join(missing))
    if not isinstance(request["onnx_b64"], str):
        raise InputError(
            "onnx_b64 must be a base64 string, got %s" % type(request["onnx_b64"]).__name__
        )
    shape = validate_input_shape(request["input_shape"])
    precision = request.get("precision", state.default_precision)
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise InputError(
            "precision must be one of %s, got %s" % (list(PRECISIONS), _brief(precision))
        )
    warmup_s = request.get("warmup_s", DEFAULT_WARMUP_S)
    if isinstance(warmup_s, bool) or not isinstance(warmup_s, (int, float)):
        raise InputError("warmup_s must be a number of seconds, got %s" % _brief(warmup_s))
    if not WARMUP_S_LIMITS[0] <= warmup_s <= WARMUP_S_LIMITS[1]:
        raise InputError(
            "warmup_s must be within [%g, %g], got %r" % (WARMUP_S_LIMITS + (warmup_s,))
        )
    runs = request.get("runs", DEFAULT_RUNS)
    if isinstance(runs, bool) or not isinstance(runs, int):
        raise InputError("runs must be an integer, got %s" % _brief(runs))
    if not RUNS_LIMITS[0] <= runs <= RUNS_LIMITS[1]:
        raise InputError("runs must be within [%d, %d], got %d" % (RUNS_LIMITS + (runs,)))
    # Decoded last, after the cheap checks; the text is dropped as soon as it is decoded.
    model = _decode_base64(request.pop("onnx_b64"))
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


def measure(state, model, item, shape, settings, cancelled=None):
    """Run one measurement and return the answer dict; only the measuring thread calls it,
    so measurements never overlap. `cancelled()`, polled while the child runs, stops it
    (MeasureError 499 "client-gone")."""
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
                memory_limit_bytes=state.memory_limit_bytes,
                cancelled=cancelled,
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
                memory_limit_bytes=state.memory_limit_bytes,
                cancelled=cancelled,
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


class UploadBudget(object):
    """Bytes of uploads held at once, counted before they are read: a body reserves
    PARSE_FACTOR times its Content-Length until it is parsed, then the size of its model until
    its connection closes. A request that does not fit is answered 503, never buffered."""

    def __init__(self, capacity):
        self.capacity = int(capacity)
        self.used = 0
        self._lock = threading.Lock()

    def reserve(self, size):
        with self._lock:
            if self.used + size > self.capacity:
                return False
            self.used += size
            return True

    def release(self, size):
        with self._lock:
            self.used -= size


class MeasurementQueue(object):
    """Parsed measurements for the one measuring thread: the running one plus at most
    `capacity` waiting. It also remembers how long measurements take, for Retry-After."""

    def __init__(self, capacity):
        self.capacity = int(capacity)
        self._jobs = collections.deque()
        self._cond = threading.Condition()
        self._running_since = None
        self._mean_s = None
        self._closed = False

    def _held(self):
        return len(self._jobs) + (0 if self._running_since is None else 1)

    def full(self):
        with self._cond:
            return self._held() > self.capacity

    def waiting(self):
        with self._cond:
            return len(self._jobs)

    def offer(self, job):
        """Queue `job`, or return False when the queue is full."""
        with self._cond:
            if self._held() > self.capacity:
                return False
            self._jobs.append(job)
            self._cond.notify()
            return True

    def take(self):
        """The next job (blocking), or None once the queue is closed."""
        with self._cond:
            while not self._jobs and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            self._running_since = time.monotonic()
            return self._jobs.popleft()

    def done(self, measured):
        with self._cond:
            if measured and self._running_since is not None:
                took = time.monotonic() - self._running_since
                self._mean_s = took if self._mean_s is None else 0.7 * self._mean_s + 0.3 * took
            self._running_since = None

    def retry_after_s(self):
        """Whole seconds until a slot should be free: the rest of the running measurement."""
        with self._cond:
            remaining = self._mean_s if self._mean_s is not None else 1.0
            if self._running_since is not None:
                remaining -= time.monotonic() - self._running_since
        low, high = RETRY_AFTER_LIMITS_S
        return int(min(high, max(low, math.ceil(remaining))))

    def close(self):
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class _HttpError(Exception):
    def __init__(self, status, kind, message):
        Exception.__init__(self, message)
        self.status = status
        self.kind = kind


_HTTP_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
# Headers whose repetition would let two readers of one request disagree.
_SINGLE_HEADERS = ("authorization", "content-length", "content-type", "transfer-encoding")
ROUTES = {"/health": "GET", "/info": "GET", "/measure": "POST"}


def _head_end(buffer):
    """(index, separator length) of the blank line ending a request head, or None."""
    found = [(buffer.find(sep), len(sep)) for sep in (b"\r\n\r\n", b"\n\n")]
    found = [item for item in found if item[0] >= 0]
    return min(found) if found else None


def parse_request_head(head):
    """(method, target, {lower-case header name: value}) of an HTTP/1.x request head (the
    bytes before its blank line); _HttpError 400 or 431 for anything malformed."""
    lines = head.decode("iso-8859-1").replace("\r\n", "\n").split("\n")
    if len(lines) - 1 > MAX_HEADERS:
        raise _HttpError(431, "headers-too-large", "more than %d header lines" % MAX_HEADERS)
    parts = lines[0].split(" ")
    if (
        len(parts) != 3
        or not _HTTP_TOKEN.match(parts[0])
        or not re.match(r"^HTTP/1\.\d$", parts[2])
    ):
        raise _HttpError(
            400, "invalid-request", "malformed HTTP/1.x request line %s" % _brief(lines[0])
        )
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not _HTTP_TOKEN.match(name):
            raise _HttpError(400, "invalid-request", "malformed header line %s" % _brief(line))
        name = name.lower()
        value = value.strip()
        if name in headers:
            if name in _SINGLE_HEADERS:
                raise _HttpError(400, "invalid-request", "header %s is given twice" % name)
            headers[name] += ", " + value
        else:
            headers[name] = value
    return parts[0], parts[1], headers


def http_response(status, payload, headers=None):
    """The bytes of a complete JSON answer; every connection closes after one answer."""
    body = json.dumps(payload).encode("utf-8")
    lines = [
        "HTTP/1.1 %d %s" % (status, http.client.responses.get(status, "Error")),
        "Server: jetsearch-worker/%s" % WORKER_VERSION,
        "Date: %s" % email.utils.formatdate(usegmt=True),
        "Content-Type: application/json",
        "Content-Length: %d" % len(body),
        "Connection: close",
    ]
    for name, value in sorted((headers or {}).items()):
        lines.append("%s: %s" % (name, value))
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def error_payload(kind, message):
    return {"error": message, "error_kind": kind}


def client_gone(sock):
    """True if the client of `sock` has closed or reset the connection.

    A closed peer makes the socket readable with nothing to read (EOF) or an error; a peer
    that is still waiting leaves it unreadable. MSG_PEEK reads nothing away.
    """
    try:
        if hasattr(select, "poll"):
            poller = select.poll()
            poller.register(sock.fileno(), select.POLLIN | select.POLLPRI)
            ready = poller.poll(0)
        else:  # pragma: no cover - no poll() (Windows)
            ready = select.select([sock], [], [], 0)[0]
    except (OSError, ValueError):
        return True
    if not ready:
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True


class _Connection(object):
    """One client connection. The I/O loop owns it, except in phase "processing", when one
    handler or the measuring thread does until it hands the answer back."""

    def __init__(self, sock, address, number, deadline):
        self.sock = sock
        self.fd = sock.fileno()
        self.address = address
        self.number = number
        self.accepted_at = time.monotonic()
        # phase: head -> body (POST /measure) -> processing -> answer; answers can come early.
        self.phase = "head"
        self.deadline = deadline
        self.open = True
        self.events = 0
        self.head = bytearray()
        self.method = None
        self.path = None
        self.trusted = False
        self.declared = None
        self.body = None
        self.received = 0
        self.reserved = 0
        self.out = b""
        self.out_pos = 0
        self.answered = False
        self.peer_done = False
        self.drain_left = 0

    def take_body(self):
        """The body, leaving no reference here (so its parser can free it)."""
        body, self.body = self.body, None
        return body

    def describe(self):
        host = self.address[0] if isinstance(self.address, tuple) else self.address
        return "%s %s %s" % (host, self.method or "-", _brief_name(self.path or "-"))


class _Measurement(object):
    __slots__ = ("conn", "model", "item", "shape", "settings")

    def __init__(self, conn, model, item, shape, settings):
        self.conn = conn
        self.model = model
        self.item = item
        self.shape = shape
        self.settings = settings


_LISTENER = object()
_WAKER = object()


class WorkerServer(object):
    """The worker's HTTP server: one I/O loop, a fixed pool of handler threads, one measuring
    thread.

    The loop (the thread that calls :meth:`serve_forever`) owns every socket: it accepts,
    reads request heads and bodies, checks the token as soon as the head is in, answers
    /health and every refusal itself, and writes every answer. A connection costs no thread
    while its client is slow or silent, and it has until ``--request-timeout`` for its whole
    request (head and body) before it is answered 408. Past ``--max-connections`` the oldest
    connection that has not yet sent a complete head is closed for the newcomer, so idle
    connections cannot lock out anyone. HANDLER_THREADS threads parse uploads (within the
    upload budget) and answer /info; one thread measures, one request at a time from a queue
    of at most ``--queue``, and first drops a request whose client has gone.
    """

    def __init__(self, address, state):
        host, port = address
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.socket.bind((host, port))
            self.socket.listen(LISTEN_BACKLOG)
        except OSError:
            self.socket.close()
            raise
        self.socket.setblocking(False)
        self.server_address = self.socket.getsockname()
        self.state = state
        self.max_connections = state.max_connections
        if resource is not None:
            # Each connection is a file descriptor; keep some for the children's pipes.
            soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
            if soft != resource.RLIM_INFINITY:
                self.max_connections = max(8, min(self.max_connections, soft - 64))
        state.max_connections = self.max_connections
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.socket, selectors.EVENT_READ, _LISTENER)
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._wake_reader.setblocking(False)
        self._wake_writer.setblocking(False)
        self._selector.register(self._wake_reader, selectors.EVENT_READ, _WAKER)
        # Answers from the threads; deque append and popleft are atomic.
        self._handbacks = collections.deque()
        self._connections = {}
        self._count = 0
        self._jobs = queue.Queue(HANDLER_QUEUE)
        self._stopping = False
        self._next_sweep = 0.0
        self._threads = [
            threading.Thread(target=self._handler_main, name="handler-%d" % index)
            for index in range(HANDLER_THREADS)
        ]
        self._threads.append(threading.Thread(target=self._measurer_main, name="measurer"))
        for thread in self._threads:
            thread.daemon = True
            thread.start()

    # -- the loop --------------------------------------------------------------------------

    def serve_forever(self, poll_interval=0.2):
        """Serve until :meth:`shutdown` (or an exception such as KeyboardInterrupt)."""
        while not self._stopping:
            for key, mask in self._selector.select(poll_interval):
                if key.data is _LISTENER:
                    self._accept()
                elif key.data is _WAKER:
                    with contextlib.suppress(OSError):
                        while self._wake_reader.recv(4096):
                            pass
                else:
                    # An answer goes out before more input is read (and maybe thrown away);
                    # a connection closed earlier in this batch is skipped.
                    conn = key.data
                    if mask & selectors.EVENT_WRITE and conn.open and conn.out:
                        self._writable(conn)
                    if mask & selectors.EVENT_READ and conn.open:
                        self._readable(conn)
            self._take_handbacks()
            now = time.monotonic()
            if now >= self._next_sweep:
                self._sweep(now)
                self._next_sweep = now + 0.25

    def shutdown(self):
        self._stopping = True
        self._wake()

    def server_close(self):
        self.state.queue.close()
        for _ in range(HANDLER_THREADS):
            with contextlib.suppress(queue.Full):
                self._jobs.put_nowait((None, None))
        for conn in list(self._connections.values()):
            self._close(conn)
        self._selector.close()
        for sock in (self.socket, self._wake_reader, self._wake_writer):
            sock.close()

    def _log(self, message):
        sys.stderr.write("%s %s\n" % (time.strftime("%Y-%m-%d %H:%M:%S"), message))

    def _wake(self):
        with contextlib.suppress(OSError):  # full: a wake-up is pending anyway
            self._wake_writer.send(b"\0")

    def _set_interest(self, conn):
        if conn.phase in ("head", "body"):
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.out else 0)
        elif conn.phase == "answer":
            events = (selectors.EVENT_WRITE if conn.out else 0) | (
                0 if conn.peer_done else selectors.EVENT_READ
            )
        else:
            events = 0
        if events == conn.events:
            return
        if conn.events == 0:
            self._selector.register(conn.sock, events, conn)
        elif events == 0:
            self._selector.unregister(conn.sock)
        else:
            self._selector.modify(conn.sock, events, conn)
        conn.events = events

    def _accept(self):
        for _ in range(ACCEPT_BURST):
            try:
                sock, address = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:  # out of file descriptors: the sweep frees some
                self._log("cannot accept a connection: %s" % error)
                return
            sock.setblocking(False)
            if len(self._connections) >= self.max_connections and not self._evict():
                # Everything open is an authorised request in progress: refuse the newcomer.
                with contextlib.suppress(OSError):
                    sock.send(
                        http_response(
                            503,
                            error_payload(
                                "busy",
                                "%d connections are open (--max-connections)"
                                % self.max_connections,
                            ),
                            {"Retry-After": str(self.state.retry_after_s())},
                        )
                    )
                sock.close()
                continue
            self._count += 1
            conn = _Connection(
                sock, address, self._count, time.monotonic() + self.state.request_timeout_s
            )
            self._connections[conn.fd] = conn
            self._set_interest(conn)

    def _evict(self):
        """Close the connection worth least to make room: one lingering after its answer,
        else the oldest that has not sent a complete head. False if there is none."""
        lingering = [c for c in self._connections.values() if c.phase == "answer" and c.answered]
        waiting = [c for c in self._connections.values() if c.phase == "head"]
        for candidates in (lingering, waiting):
            if candidates:
                victim = min(candidates, key=lambda conn: conn.accepted_at)
                if victim.phase == "head":
                    self._log(
                        "closed an idle connection from %s: %d connections are open "
                        "(--max-connections)" % (victim.describe(), len(self._connections))
                    )
                self._close(victim)
                return True
        return False

    def _sweep(self, now):
        for conn in list(self._connections.values()):
            if conn.phase == "processing" or now < conn.deadline:
                continue
            if conn.phase == "head" and not conn.head:
                self._log("closed a silent connection from %s" % conn.describe())
                self._close(conn)
            elif conn.phase in ("head", "body"):
                conn.declared = None  # too slow: the rest of its body is not waited for
                got = (
                    ""
                    if conn.phase == "head"
                    else " (%d of %d body bytes)"
                    % (
                        conn.received,
                        len(conn.body),
                    )
                )
                self._reply(
                    conn,
                    408,
                    error_payload(
                        "request-timeout",
                        "the request did not arrive within %g s%s (--request-timeout)"
                        % (self.state.request_timeout_s, got),
                    ),
                )
            else:
                self._close(conn)

    def _close(self, conn):
        if not conn.open:
            return
        conn.open = False
        if conn.events:
            self._selector.unregister(conn.sock)
            conn.events = 0
        self._connections.pop(conn.fd, None)
        conn.body = None
        self._release(conn)
        with contextlib.suppress(OSError):
            conn.sock.close()

    def _release(self, conn):
        if conn.reserved:
            self.state.uploads.release(conn.reserved)
            conn.reserved = 0

    # -- reading ---------------------------------------------------------------------------

    def _readable(self, conn):
        if conn.phase == "head":
            self._read_head(conn)
        elif conn.phase == "body":
            self._read_body(conn)
        elif conn.phase == "answer":
            self._drain(conn)

    def _recv(self, conn, size):
        """Bytes read, b"" at the client's end, None when there is nothing to read now."""
        try:
            return conn.sock.recv(size)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            return b""

    def _read_head(self, conn):
        data = self._recv(conn, 8192)
        if data is None:
            return
        if not data:
            self._close(conn)
            return
        conn.head += data
        end = _head_end(conn.head)
        if end is None or end[0] > MAX_HEADER_BYTES:
            if len(conn.head) > MAX_HEADER_BYTES:
                self._reply(
                    conn,
                    431,
                    error_payload(
                        "headers-too-large",
                        "the request head is over %d bytes" % MAX_HEADER_BYTES,
                    ),
                )
            return
        index, separator = end
        head, rest = bytes(conn.head[:index]), bytes(conn.head[index + separator :])
        conn.head = None
        self._on_head(conn, head, rest)

    def _on_head(self, conn, head, rest):
        try:
            method, target, headers = parse_request_head(head)
        except _HttpError as error:
            self._reply(conn, error.status, error_payload(error.kind, str(error)))
            return
        conn.method = method
        conn.path = target.split("?", 1)[0]
        if not self._authorized(headers.get("authorization", "")):
            self._reply(
                conn,
                401,
                error_payload(
                    "unauthorized",
                    "missing or wrong token: send 'Authorization: Bearer TOKEN' with the token "
                    "from the worker's --token-file",
                ),
                {"WWW-Authenticate": "Bearer"},
            )
            return
        conn.trusted = True
        allowed = ROUTES.get(conn.path)
        if allowed is None:
            self._reply(
                conn,
                404,
                error_payload(
                    "not-found",
                    "no such endpoint %s; have %s" % (_brief(conn.path), sorted(ROUTES)),
                ),
            )
        elif method != allowed:
            self._reply(
                conn,
                405,
                error_payload(
                    "method-not-allowed", "%s needs %s" % (_brief_name(conn.path), allowed)
                ),
                {"Allow": allowed},
            )
        elif conn.path == "/health":
            self._reply(conn, 200, {"status": "ok", "busy": self.state.busy})
        elif conn.path == "/info":
            self._process(conn, "info")
        else:
            self._start_body(conn, headers, rest)

    def _authorized(self, header):
        if not header.startswith("Bearer "):
            return False
        # latin-1 gives back the bytes the client sent.
        sent = header[len("Bearer ") :].strip().encode("latin-1")
        return hmac.compare_digest(sent, self.state.token)

    def _start_body(self, conn, headers, rest):
        state = self.state
        raw_length = headers.get("content-length")
        if "transfer-encoding" in headers or raw_length is None:
            self._reply(
                conn,
                411,
                error_payload(
                    "length-required",
                    "send the body with a Content-Length header (no Transfer-Encoding)",
                ),
            )
            return
        match = re.match(r"^(-?)(\d+)$", raw_length)
        if not match:
            self._reply(
                conn,
                400,
                error_payload(
                    "invalid-request", "Content-Length %s is not an integer" % _brief(raw_length)
                ),
            )
            return
        if match.group(1):
            self._reply(
                conn,
                400,
                error_payload("invalid-request", "Content-Length must not be negative"),
            )
            return
        digits = match.group(2)
        if len(digits) > 18 or int(digits) > state.max_upload_bytes:
            # Checked before reading: an oversize body is never buffered.
            self._reply(
                conn,
                413,
                error_payload(
                    "too-large",
                    "body of %s bytes is over this worker's limit of %d bytes (--max-upload-mb)"
                    % (_brief(digits), state.max_upload_bytes),
                ),
            )
            return
        length = int(digits)
        conn.declared = length
        conn.received = min(len(rest), length)
        content_type = headers.get("content-type", "application/json").split(";")[0].strip()
        if content_type != "application/json":
            self._reply(
                conn,
                415,
                error_payload(
                    "unsupported-media-type", "send application/json, got %s" % _brief(content_type)
                ),
            )
            return
        if state.queue.full():
            self._reply_busy(
                conn,
                "the measurement queue is full (%d waiting behind the running one, --queue)"
                % state.queue.capacity,
            )
            return
        reservation = PARSE_FACTOR * length
        if not state.uploads.reserve(reservation):
            self._reply_busy(
                conn,
                "the upload budget is in use (%d of %d bytes held, --upload-budget-mb); "
                "this body needs %d" % (state.uploads.used, state.uploads.capacity, reservation),
            )
            return
        conn.reserved = reservation
        conn.body = bytearray(length)
        conn.body[: conn.received] = rest[: conn.received]
        conn.phase = "body"
        if conn.received == length:
            self._process(conn, "measure")
            return
        if headers.get("expect", "").lower() == "100-continue":
            self._queue_output(conn, b"HTTP/1.1 100 Continue\r\n\r\n")
        self._set_interest(conn)

    def _read_body(self, conn):
        missing = len(conn.body) - conn.received
        try:
            view = memoryview(conn.body)[conn.received :]
            count = conn.sock.recv_into(view, min(missing, 1 << 18))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            count = 0
        finally:
            view = None
        if count == 0:
            self._log(
                "%s: the client left after %d of %d body bytes"
                % (conn.describe(), conn.received, len(conn.body))
            )
            self._close(conn)
            return
        conn.received += count
        if conn.received == len(conn.body):
            self._process(conn, "measure")

    def _drain(self, conn):
        """Read and throw away what the client still sends after its answer."""
        data = self._recv(conn, 65536)
        if data is None:
            return
        if not data:
            conn.peer_done = True
            if conn.answered:
                self._close(conn)
            else:
                self._set_interest(conn)
            return
        conn.drain_left -= len(data)
        if conn.drain_left < 0:
            self._close(conn)

    # -- answering -------------------------------------------------------------------------

    def _process(self, conn, kind):
        conn.phase = "processing"
        self._set_interest(conn)
        try:
            self._jobs.put_nowait((kind, conn))
        except queue.Full:
            self._reply(
                conn,
                503,
                error_payload("busy", "all request handlers are busy"),
                {"Retry-After": "1"},
            )

    def _reply_busy(self, conn, message):
        seconds = self.state.retry_after_s()
        self._reply(
            conn,
            503,
            error_payload("busy", "%s; retry after %d s" % (message, seconds)),
            {"Retry-After": str(seconds)},
        )

    def _reply(self, conn, status, payload, headers=None):
        self._send(conn, status, http_response(status, payload, headers))

    def _send(self, conn, status, data):
        """Start writing the answer `data`, then close (loop thread only)."""
        pending = 0
        if conn.trusted and conn.declared is not None:
            # An authorised client's body that was not read yet is read and thrown away, so
            # that it gets to read this answer (a 503 it can retry) instead of a reset.
            pending = max(0, conn.declared - conn.received)
        conn.drain_left = pending + UNTRUSTED_DRAIN_BYTES
        conn.body = None
        self._release(conn)
        conn.phase = "answer"
        conn.deadline = time.monotonic() + ANSWER_TIMEOUT_S
        self._log("%s -> %d" % (conn.describe(), status))
        self._queue_output(conn, data)
        self._set_interest(conn)

    def _queue_output(self, conn, data):
        conn.out = conn.out[conn.out_pos :] + data
        conn.out_pos = 0

    def _writable(self, conn):
        try:
            sent = conn.sock.send(memoryview(conn.out)[conn.out_pos : conn.out_pos + (1 << 18)])
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        conn.out_pos += sent
        if conn.out_pos < len(conn.out):
            return
        conn.out = b""
        conn.out_pos = 0
        if conn.phase == "answer":
            conn.answered = True
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_WR)
            if conn.peer_done:
                self._close(conn)
                return
            if conn.drain_left <= UNTRUSTED_DRAIN_BYTES:
                conn.deadline = min(conn.deadline, time.monotonic() + LINGER_S)
        self._set_interest(conn)

    def _take_handbacks(self):
        while True:
            try:
                conn, status, data = self._handbacks.popleft()
            except IndexError:
                return
            if not conn.open:
                continue
            if data is None:
                self._close(conn)
            else:
                self._send(conn, status, data)

    # -- the threads -----------------------------------------------------------------------

    def hand_back(self, conn, status, data):
        """Give `conn` back to the loop with the answer `data` to write (None: close it)."""
        self._handbacks.append((conn, status, data))
        self._wake()

    def _hand_back_json(self, conn, status, payload, headers=None):
        self.hand_back(conn, status, http_response(status, payload, headers))

    def _handler_main(self):
        while True:
            kind, conn = self._jobs.get()
            if kind is None:
                return
            try:
                if kind == "info":
                    self._hand_back_json(conn, 200, self.state.info())
                else:
                    self._prepare_measurement(conn)
            except Exception as error:
                traceback.print_exc()
                self._hand_back_json(
                    conn,
                    500,
                    error_payload("internal-error", "%s: %s" % (type(error).__name__, error)),
                )

    def _prepare_measurement(self, conn):
        state = self.state
        try:
            model, item, shape, settings = parse_measure_request([conn.take_body()], state)
        except InputError as error:
            self._hand_back_json(conn, 400, error_payload(error.kind, str(error)))
            return
        # From now on the connection holds only the model, until it closes.
        state.uploads.release(conn.reserved - len(model))
        conn.reserved = len(model)
        if not state.queue.offer(_Measurement(conn, model, item, shape, settings)):
            seconds = state.retry_after_s()
            self._hand_back_json(
                conn,
                503,
                error_payload(
                    "busy",
                    "the measurement queue is full (%d waiting behind the running one, --queue); "
                    "retry after %d s" % (state.queue.capacity, seconds),
                ),
                {"Retry-After": str(seconds)},
            )

    def _measurer_main(self):
        state = self.state
        while True:
            job = state.queue.take()
            if job is None:
                return
            conn = job.conn
            measured = False
            try:
                if client_gone(conn.sock):
                    raise MeasureError(
                        499, "client-gone", "the client disconnected before it was measured"
                    )
                state.busy = True
                try:
                    result = measure(
                        state,
                        job.model,
                        job.item,
                        job.shape,
                        job.settings,
                        cancelled=lambda: client_gone(conn.sock),
                    )
                finally:
                    state.busy = False
                job.model = None
                measured = True
                state.measurements += 1
                self.hand_back(conn, 200, http_response(200, result))
            except MeasureError as error:
                if error.kind == "client-gone":
                    state.dropped += 1
                    self._log("dropped a measurement for %s: %s" % (conn.describe(), error))
                    self.hand_back(conn, None, None)
                else:
                    self._log("measurement failed (%s): %s" % (error.kind, error))
                    self._hand_back_json(conn, error.status, error_payload(error.kind, str(error)))
            except Exception as error:
                traceback.print_exc()
                self._hand_back_json(
                    conn,
                    500,
                    error_payload("internal-error", "%s: %s" % (type(error).__name__, error)),
                )
            finally:
                job.model = None
                state.queue.done(measured)


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
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=DEFAULT_REQUEST_TIMEOUT_S,
        help="seconds a client has to send its whole request, head and body (default "
        "%(default)s); slower connections are answered 408 and closed",
    )
    parser.add_argument(
        "--memory-limit-mb",
        type=float,
        default=DEFAULT_MEMORY_LIMIT_MB,
        help="memory of the measuring process (default %(default)s; 0: no limit): its address "
        "space on onnxruntime's CPU provider, its resident memory on every backend; a model "
        "that needs more is answered 400 (memory-limit)",
    )
    parser.add_argument(
        "--queue",
        type=int,
        default=DEFAULT_QUEUE,
        help="measurements that may wait behind the running one (default %(default)s); more "
        "are answered 503 with Retry-After",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=DEFAULT_MAX_CONNECTIONS,
        help="open connections (default %(default)s); past it the oldest idle one is closed",
    )
    parser.add_argument(
        "--upload-budget-mb",
        type=float,
        default=None,
        help="upload memory held at once: bodies being read and parsed count twice their "
        "size, queued models their size (default the larger of %g and twice --max-upload-mb); "
        "a request that does not fit is answered 503 with Retry-After" % DEFAULT_UPLOAD_BUDGET_MB,
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
    if args.upload_budget_mb is None:
        args.upload_budget_mb = max(DEFAULT_UPLOAD_BUDGET_MB, PARSE_FACTOR * args.max_upload_mb)
    problems = []
    if args.max_upload_mb <= 0 or args.timeout <= 0 or args.request_timeout <= 0:
        problems.append("--max-upload-mb, --timeout and --request-timeout must be positive")
    if args.threads < 0 or args.queue < 0 or args.memory_limit_mb < 0:
        problems.append("--threads, --queue and --memory-limit-mb must be >= 0")
    if args.max_connections < 1:
        problems.append("--max-connections must be at least 1")
    if args.upload_budget_mb < PARSE_FACTOR * args.max_upload_mb:
        problems.append(
            "--upload-budget-mb %g must be at least %d x --max-upload-mb (%g): a body counts "
            "%d times its size while it is parsed"
            % (args.upload_budget_mb, PARSE_FACTOR, args.max_upload_mb, PARSE_FACTOR)
        )
    if problems:
        sys.stderr.write("worker: %s\n" % "; ".join(problems))
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
    sys.stdout.write(
        "limits: request %g s, measurement %g s, measuring process %s, queue %d, "
        "connections %d, uploads %d MiB at once\n"
        % (
            state.request_timeout_s,
            state.timeout_s,
            "%d MiB" % (state.memory_limit_bytes >> 20)
            if state.memory_limit_bytes
            else "unlimited",
            state.queue.capacity,
            server.max_connections,
            state.uploads.capacity >> 20,
        )
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
