"""The board worker: a real worker.py process on loopback, spoken to over HTTP."""

from __future__ import annotations

import ast
import base64
import contextlib
import http.client
import json
import selectors
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from latency_cases import (
    RUNS,
    SHAPE,
    TOKEN,
    WARMUP_S,
    WorkerProcess,
    conv_relu_resize_model,
    launch_worker,
    runtime_failing_model,
    unknown_op_model,
)
from onnx import TensorProto, helper, numpy_helper

from jetsearch.latency import LatencyError, RemotePool, worker
from jetsearch.latency.worker import worker_path

SOURCE = worker_path().read_text()
TREE = ast.parse(SOURCE)
# Optional packages the measuring child may import lazily (inside functions).
LAZY_IMPORTS = {"onnxruntime", "numpy", "onnx", "onnxconverter_common"}


def measure_body(model: bytes | None = None, **fields) -> dict:
    body = {
        "onnx_b64": base64.b64encode(model or conv_relu_resize_model(0)).decode(),
        "input_shape": list(SHAPE),
        "warmup_s": WARMUP_S,
        "runs": RUNS,
    }
    body.update(fields)
    return body


def raw_request(
    worker_process: WorkerProcess, method: str, path: str, headers: dict, body: bytes = b""
) -> tuple[int, dict]:
    """A request built by hand (lying Content-Length, no Content-Length, odd types)."""
    address = urlsplit(worker_process.url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=10)
    try:
        connection.putrequest(method, path, skip_accept_encoding=True)
        for name, value in headers.items():
            connection.putheader(name, value)
        connection.endheaders()
        if body:
            connection.send(body)
        answer = connection.getresponse()
        return answer.status, json.loads(answer.read() or b"{}")
    finally:
        connection.close()


# -- the file itself ----------------------------------------------------------------------------


def test_worker_parses_as_python_36() -> None:
    ast.parse(SOURCE, feature_version=(3, 6))


def test_top_level_imports_are_standard_library_only() -> None:
    top_level = []
    for node in TREE.body:
        if isinstance(node, ast.Import):
            top_level += [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative imports cannot work in a copied single file"
            top_level.append(node.module.split(".")[0])
    assert top_level, "found no imports at all: the check is broken"
    assert sorted(set(top_level) - sys.stdlib_module_names) == []

    lazy = set()
    for node in ast.walk(TREE):
        if isinstance(node, ast.Import | ast.ImportFrom) and node not in TREE.body:
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            names += [node.module] if isinstance(node, ast.ImportFrom) else []
            lazy |= {name.split(".")[0] for name in names}
    assert lazy - sys.stdlib_module_names <= LAZY_IMPORTS


def test_no_python_37_or_newer_apis() -> None:
    newer_names = {
        "dataclasses",
        "ThreadingHTTPServer",
        "nullcontext",
        "cached_property",
        "time_ns",
        "prod",
        "removeprefix",
        "removesuffix",
        "shlex_join",
        "metadata",
    }
    problems = []
    for node in ast.walk(TREE):
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            problems.append("from __future__ import (3.7+ for annotations)")
        if isinstance(node, ast.Call):
            for keyword in node.keywords:
                if keyword.arg in ("capture_output", "text"):
                    problems.append(f"{keyword.arg}= at line {node.lineno}")
            if ast.unparse(node.func) == "asyncio.run":
                problems.append(f"asyncio.run at line {node.lineno}")
        if isinstance(node, ast.Attribute) and node.attr in newer_names:
            problems.append(f".{node.attr} at line {node.lineno}")
        if isinstance(node, ast.Name) and node.id in newer_names:
            problems.append(f"{node.id} at line {node.lineno}")
        if isinstance(node, ast.alias) and node.name.split(".")[0] in newer_names:
            problems.append(f"import {node.name}")
        if isinstance(node, ast.arg) and node.annotation is not None:
            problems.append(f"annotation on {node.arg} at line {node.lineno}")
        if isinstance(node, ast.FunctionDef) and node.returns is not None:
            problems.append(f"return annotation on {node.name}")
    assert problems == []


def test_importing_the_worker_runs_nothing() -> None:
    assert worker_path().is_file() and worker_path().name == "worker.py"
    assert worker.MAX_BATCH == 64 and worker.MAX_SIDE == 8192
    assert worker.DEFAULT_HOST == "127.0.0.1"


# -- the stdlib ONNX reader --------------------------------------------------------------------


def test_onnx_reader_finds_the_input_and_skips_initializers() -> None:
    description = worker.describe_onnx_model(conv_relu_resize_model(0, height=16))
    assert description["node_count"] == 3
    assert description["opsets"] == {"": 13}
    (item,) = description["inputs"]  # weight, bias and scales are initializers
    assert item == {"name": "image", "elem_type": 1, "dims": ["N", 3, 16, "W"]}
    assert worker.model_input(description) is item
    assert worker.input_is_dynamic(item)


@pytest.mark.parametrize("seed", range(3))
def test_onnx_reader_refuses_garbage_with_input_error_only(seed: int) -> None:
    rng = np.random.default_rng(seed)
    valid = conv_relu_resize_model(seed)
    candidates = [rng.bytes(int(rng.integers(1, 400))) for _ in range(100)]
    candidates += [valid[: int(cut)] for cut in rng.integers(1, len(valid) - 1, size=50)]
    refused = 0
    for data in candidates:
        try:
            worker.model_input(worker.describe_onnx_model(data))
        except worker.InputError:
            refused += 1
    # A cut can land on a message boundary and still be a model; random bytes never are.
    assert refused >= 140


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ([1, 3, 16], "list of 4 integers"),
        ("1x3x16x16", "list of 4 integers"),
        ([1, 3, 16.0, 16], "must hold integers"),
        ([True, 3, 16, 16], "must hold integers"),
        ([1, 3, 0, 16], "must be positive"),
        ([1, -3, 16, 16], "must be positive"),
        ([65, 3, 16, 16], "batch 65 is over the limit of 64"),
        ([1, 3, 8193, 16], "at most 8192"),
        ([64, 3, 8192, 8192], "over the limit"),
    ],
)
def test_absurd_shapes_are_refused(shape, message) -> None:
    with pytest.raises(worker.InputError, match=message):
        worker.validate_input_shape(shape)


# -- starting -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("content", "message"), [(None, "cannot read"), ("  \n", "is empty")])
def test_refuses_to_start_without_a_token(tmp_path: Path, content, message) -> None:
    token_file = tmp_path / "token"
    if content is not None:
        token_file.write_text(content)
    command = [sys.executable, str(worker_path()), "--target", "agx", "--port", "0"]
    finished = subprocess.run(
        [*command, "--token-file", str(token_file)], capture_output=True, text=True, timeout=30
    )
    assert finished.returncode == 2
    assert message in finished.stderr and str(token_file) in finished.stderr


def test_a_lone_copy_of_the_file_serves(worker_factory, tmp_path: Path) -> None:
    board = tmp_path / "board"
    board.mkdir()
    copy = board / "worker.py"
    shutil.copy(worker_path(), copy)
    lone = worker_factory(script=copy)
    status, answer = lone.request("/measure", measure_body())
    assert status == 200 and len(answer["samples_ms"]) == RUNS
    assert sorted(path.name for path in board.iterdir()) == ["worker.py"]  # nothing left behind


def test_listens_on_loopback_by_default(shared_worker: WorkerProcess) -> None:
    assert shared_worker.url.startswith("http://127.0.0.1:")


# -- authentication and the plain endpoints ----------------------------------------------------


@pytest.mark.parametrize("path", ["/health", "/info", "/measure"])
@pytest.mark.parametrize("token", [None, "wrong-token", TOKEN + "x"])
def test_missing_or_wrong_token_is_401(shared_worker: WorkerProcess, path, token) -> None:
    body = measure_body() if path == "/measure" else None
    status, answer = shared_worker.request(path, body, token=token, authorize=token is not None)
    assert status == 401
    assert answer["error_kind"] == "unauthorized"
    assert set(answer) == {"error", "error_kind"}  # nothing else leaks


def test_health_and_info(shared_worker: WorkerProcess) -> None:
    assert shared_worker.request("/health") == (200, {"status": "ok", "busy": False})
    status, info = shared_worker.request("/info")
    assert status == 200
    assert info["target"] == "agx"
    assert info["backend"] == "onnxruntime"
    assert info["backends"]["trtexec"]["available"] is False
    assert info["backends"]["onnxruntime"]["available"] is True
    assert info["default_precision"] == "fp32" and info["precisions"] == ["fp32"]
    assert info["limits"]["max_batch"] == 64
    fingerprint = info["fingerprint"]
    # Jetson fields are present even where they are unknown.
    for key in ("board_model", "l4t_release", "jetpack", "power_mode", "clocks_locked"):
        assert key in fingerprint
    assert fingerprint["board_model"] is None or isinstance(fingerprint["board_model"], str)
    assert fingerprint["python"] == ".".join(map(str, sys.version_info[:3]))
    assert fingerprint["cpu_model"] and fingerprint["runtime"] == "onnxruntime"
    assert isinstance(info["temperatures"], dict)


def test_unknown_path_and_wrong_method(shared_worker: WorkerProcess) -> None:
    assert shared_worker.request("/nope")[0] == 404
    status, answer = shared_worker.request("/health", b"{}")
    assert status == 405 and "GET" in answer["error"]


# -- measuring ----------------------------------------------------------------------------------


def test_measurement_round_trip(shared_worker: WorkerProcess) -> None:
    status, answer = shared_worker.request("/measure", measure_body(runs=7))
    assert status == 200, answer
    assert len(answer["samples_ms"]) == answer["timed_runs"] == 7
    assert all(value > 0 for value in answer["samples_ms"])
    assert answer["warmup_runs"] >= 1
    assert answer["backend"] == "onnxruntime" and answer["precision"] == "fp32"
    assert answer["input_shape"] == list(SHAPE)
    assert answer["fingerprint"]["target"] == "agx"
    assert isinstance(answer["temps_before"], dict) and isinstance(answer["temps_after"], dict)
    assert answer["started_at"] <= answer["finished_at"]


@pytest.mark.parametrize(
    ("body", "kind", "message"),
    [
        (b"{not json", "invalid-request", "not valid JSON"),
        (b"[1, 2]", "invalid-request", "must be a JSON object"),
        (measure_body(colour="red", batch=2), "invalid-request", "unknown fields batch, colour"),
        ({"input_shape": [1, 3, 8, 8]}, "invalid-request", "missing required fields: onnx_b64"),
        (measure_body(onnx_b64="@@not base64@@"), "invalid-request", "not valid base64"),
        (
            measure_body(onnx_b64=base64.b64encode(b"garbage bytes").decode()),
            "invalid-model",
            "invalid ONNX model",
        ),
        (measure_body(input_shape=[1, 3, 16]), "invalid-request", "list of 4 integers"),
        (measure_body(input_shape=[65, 3, 16, 16]), "invalid-request", "batch 65"),
        (measure_body(input_shape=[1, 3, 9000, 16]), "invalid-request", "at most 8192"),
        (
            measure_body(conv_relu_resize_model(0, height=16, width=16), input_shape=[1, 3, 8, 8]),
            "invalid-input",
            "fixed size 16 on axis 2",
        ),
        (measure_body(runs=0), "invalid-request", "runs must be within"),
        (measure_body(runs=10**6), "invalid-request", "runs must be within"),
        (measure_body(runs="5"), "invalid-request", "runs must be an integer"),
        (measure_body(warmup_s=-1), "invalid-request", "warmup_s must be within"),
        (measure_body(warmup_s=3600), "invalid-request", "warmup_s must be within"),
        (measure_body(precision="int4"), "invalid-request", "precision must be one of"),
        (measure_body(precision="fp16"), "unsupported-precision", "not available on this worker"),
    ],
)
def test_bad_requests_are_400_with_the_reason(shared_worker: WorkerProcess, body, kind, message):
    status, answer = shared_worker.request("/measure", body)
    assert status == 400
    assert answer["error_kind"] == kind
    assert message in answer["error"]


def test_model_that_only_the_runtime_can_reject_is_400(shared_worker: WorkerProcess) -> None:
    status, answer = shared_worker.request("/measure", measure_body(unknown_op_model()))
    assert status == 400
    assert answer["error_kind"] == "invalid-model"
    assert "invalid ONNX model" in answer["error"]


def test_oversize_body_is_refused_before_it_is_read(shared_worker: WorkerProcess) -> None:
    headers = {
        "Authorization": f"Bearer {TOKEN}",
        "Content-Type": "application/json",
        "Content-Length": str(500 * 1024 * 1024),
    }
    start = time.monotonic()
    status, answer = raw_request(shared_worker, "POST", "/measure", headers)  # no body sent
    assert status == 413 and "over this worker's limit" in answer["error"]
    assert time.monotonic() - start < 5


def test_missing_length_and_wrong_content_type(shared_worker: WorkerProcess) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert raw_request(shared_worker, "POST", "/measure", auth)[0] == 411
    body = json.dumps(measure_body()).encode()
    headers = {
        **auth,
        "Content-Type": "application/x-python-pickle",
        "Content-Length": str(len(body)),
    }
    assert raw_request(shared_worker, "POST", "/measure", headers, body)[0] == 415


def test_failed_measurement_leaves_the_worker_serving(shared_worker: WorkerProcess) -> None:
    status, answer = shared_worker.request("/measure", measure_body(runtime_failing_model()))
    assert status == 500
    assert answer["error_kind"] == "measurement-failed"
    assert "failed to run" in answer["error"]
    assert shared_worker.request("/health") == (200, {"status": "ok", "busy": False})
    assert shared_worker.request("/measure", measure_body())[0] == 200


@pytest.mark.slow
def test_timed_out_measurement_is_504_and_the_worker_goes_on(worker_factory) -> None:
    # 3 s: a tiny measurement fits on a busy machine (1 s did not: onnxruntime's start alone).
    impatient = worker_factory("--timeout", "3")
    start = time.monotonic()
    status, answer = impatient.request("/measure", measure_body(warmup_s=30))
    assert status == 504 and answer["error_kind"] == "timeout"
    assert time.monotonic() - start < 10
    assert impatient.request("/health") == (200, {"status": "ok", "busy": False})
    assert impatient.request("/measure", measure_body())[0] == 200


@pytest.mark.slow
def test_concurrent_clients_are_serialised(shared_worker: WorkerProcess) -> None:
    answers: list[tuple[int, dict]] = []
    seen_busy = []

    def post(seed: int) -> None:
        answers.append(
            shared_worker.request(
                "/measure", measure_body(conv_relu_resize_model(seed), warmup_s=0.3)
            )
        )

    threads = [threading.Thread(target=post, args=(seed,)) for seed in (10, 11)]
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        seen_busy.append(shared_worker.request("/health")[1]["busy"])
        time.sleep(0.05)
    for thread in threads:
        thread.join()

    assert [status for status, _ in answers] == [200, 200]
    first, second = sorted((answer for _, answer in answers), key=lambda a: a["started_at"])
    assert first["finished_at"] <= second["started_at"], "the two measurements overlapped"
    assert True in seen_busy


# -- backends -----------------------------------------------------------------------------------


def test_without_a_backend_info_says_so_and_measure_is_503(worker_factory, tmp_path) -> None:
    # A real environment whose onnxruntime cannot be imported (and no trtexec on PATH).
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "onnxruntime.py").write_text("raise ImportError('onnxruntime is broken here')\n")
    broken = worker_factory(env={"PYTHONPATH": str(shadow)})
    status, info = broken.request("/info")
    assert info["backend"] is None
    assert "onnxruntime is broken here" in info["backend_unavailable_reason"]
    status, answer = broken.request("/measure", measure_body())
    assert status == 503 and answer["error_kind"] == "backend-missing"
    assert "no timing backend" in answer["error"]


def test_forcing_a_missing_backend_refuses_to_start(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    finished = subprocess.run(
        [sys.executable, str(worker_path()), "--target", "agx", "--port", "0"]
        + ["--token-file", str(token_file), "--backend", "trtexec", "--trtexec", "/nonexistent"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert finished.returncode == 2 and "trtexec was requested" in finished.stderr


FAKE_TRTEXEC = """#!{python}
# Stands in for TensorRT's trtexec (absent here): records its arguments and writes the files
# and log lines real trtexec writes, so the worker's command line and parsing are exercised.
import json, sys
args = dict(arg[2:].split("=", 1) for arg in sys.argv[1:] if "=" in arg)
with open({record!r}, "a") as handle:
    handle.write(json.dumps(sys.argv[1:]) + "\\n")
if "--help" in sys.argv:
    print("&&&& RUNNING TensorRT.trtexec [TensorRT v8502] # trtexec --help")
    sys.exit(0)
print("&&&& RUNNING TensorRT.trtexec [TensorRT v8502] # trtexec " + " ".join(sys.argv[1:]))
print("[I] Warmup completed 37 queries over 50 ms")
runs = int(args["iterations"])
times = [dict(startComputeMs=i, endComputeMs=i + 0.5, computeMs=0.5 + 0.01 * i, latencyMs=0.7)
         for i in range(runs)]
json.dump(times, open(args["exportTimes"], "w"))
fmt = "Row major linear FP16 format" if "--fp16" in sys.argv else "Row major linear FP32 format"
layers = {{"Layers": [{{"Name": "conv", "Outputs": [{{"Format/Datatype": fmt}}]}}]}}
json.dump(layers, open(args["exportLayerInfo"], "w"))
print("&&&& PASSED TensorRT.trtexec")
"""


def test_trtexec_backend_command_and_parsing(worker_factory, tmp_path: Path) -> None:
    record = tmp_path / "trtexec-calls.jsonl"
    fake = tmp_path / "trtexec"
    fake.write_text(FAKE_TRTEXEC.format(python=sys.executable, record=str(record)))
    fake.chmod(0o755)
    board = worker_factory("--backend", "trtexec", "--trtexec", str(fake))

    status, info = board.request("/info")
    assert info["backend"] == "trtexec" and info["default_precision"] == "fp16"
    assert info["fingerprint"]["runtime_version"] == "v8502"

    status, answer = board.request("/measure", measure_body(runs=6))
    assert status == 200, answer
    assert answer["samples_ms"] == pytest.approx([0.5 + 0.01 * i for i in range(6)])
    assert answer["warmup_runs"] == 37
    assert answer["precision"] == "fp16" and answer["metric"] == "gpu-compute"
    assert answer["engine_layer_precisions"]["fp16"] == 1
    assert answer["flags"] == []
    arguments = json.loads(record.read_text().splitlines()[-1])
    assert "--fp16" in arguments
    assert "--shapes=image:1x3x16x16" in arguments  # the input is dynamic
    assert "--iterations=6" in arguments and "--warmUp=50" in arguments

    status, answer = board.request("/measure", measure_body(precision="fp32"))
    assert status == 200 and answer["precision"] == "fp32"
    assert "--fp16" not in json.loads(record.read_text().splitlines()[-1])


def test_trtexec_output_parsers() -> None:
    times = json.dumps([{"startComputeMs": 1.0, "endComputeMs": 1.25}, {"latencyMs": 2.0}])
    assert worker.parse_trtexec_times(times) == [0.25, 2.0]
    with pytest.raises(worker.MeasureError, match="no per-iteration times"):
        worker.parse_trtexec_times("[]")
    assert worker.parse_trtexec_warmup_runs("[I] Warmup completed 12 queries over 200 ms") == 12
    assert worker.parse_trtexec_warmup_runs("nothing here") is None
    detailed = {
        "Layers": [
            {"Name": "a", "Outputs": [{"Format/Datatype": "Row major linear FP16 format"}]},
            {"Name": "b", "Outputs": [{"Format/Datatype": "Row major linear FP32 format"}]},
            {"Name": "c", "Outputs": [{"Format/Datatype": "Channel major Int8 format"}]},
        ]
    }
    assert worker.parse_layer_precisions(json.dumps(detailed)) == {
        "fp16": 1,
        "fp32": 1,
        "int8": 1,
        "unknown": 0,
    }
    names_only = {"Layers": ["conv", "relu"]}
    assert worker.parse_layer_precisions(json.dumps(names_only))["unknown"] == 2


# -- hostile requests: always a 4xx with the reason, never a 500 ------------------------------


def fixed_dim_model(height: int) -> bytes:
    """Identity on an input whose height is the fixed `height` (0 or negative: no image fits)."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["image"], ["mask"])],
        "fixed_dim",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, height, "W"])],
        [helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["N", 3, height, "W"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


def expanding_model(shape: tuple[int, ...]) -> bytes:
    """A model of ~140 bytes whose one node, Expand, makes a float32 tensor of `shape`."""
    graph = helper.make_graph(
        [helper.make_node("Expand", ["image", "shape"], ["mask"])],
        "expands",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("mask", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(np.array(shape, dtype=np.int64), "shape")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


# Expand broadcasts the [1, 3, 16, 16] input to this: 3 GiB of float32.
HUGE = (1 << 20, 3, 16, 16)


def valid_body_text(**fields) -> str:
    return json.dumps(measure_body(**fields))


NESTED = 100_000


@pytest.mark.parametrize(
    ("body", "kind", "message"),
    [
        (b"[" * NESTED + b"]" * NESTED, "invalid-request", "nested JSON is refused"),
        (
            valid_body_text()[:-1].encode() + b', "runs": ' + b"[" * 40 + b"]" * 40 + b"}",
            "invalid-request",
            "nested JSON is refused",
        ),
        (b"[" + b"{}," * NESTED + b"{}]", "invalid-request", "nested JSON is refused"),
        (b'{"input_shape": [' + b"1," * NESTED + b"1]}", "invalid-request", "JSON items"),
        (
            valid_body_text(runs=5)[:-1].encode() + b', "warmup_s": ' + b"9" * 5000 + b"}",
            "invalid-request",
            "a number in the body has 5000 characters",
        ),
        (valid_body_text(warmup_s=float("nan")).encode(), "invalid-request", "NaN is not"),
        (
            valid_body_text(precision="fp16\N{GRINNING FACE}").encode(),
            "invalid-request",
            "escapes a non-ASCII character",
        ),
        (
            json.dumps(measure_body(precision="fp16é"), ensure_ascii=False).encode(),
            "invalid-request",
            "must be ASCII JSON",
        ),
        (measure_body(input_shape=[1, 3, 0, 16]), "invalid-request", "must be positive"),
        (measure_body(input_shape=[1, 3, -16, 16]), "invalid-request", "must be positive"),
        (measure_body(fixed_dim_model(0)), "invalid-model", "fixed size 0 on axis 2"),
        (measure_body(fixed_dim_model(-1)), "invalid-model", "fixed size -1 on axis 2"),
        (measure_body(onnx_b64=12), "invalid-request", "onnx_b64 must be a base64 string"),
        (measure_body(onnx_b64="QUJD="), "invalid-request", "not valid base64"),
        (measure_body(onnx_b64=""), "invalid-model", "the ONNX model is empty"),
        (measure_body(input_shape={"B": 1}), "invalid-request", "list of 4 integers"),
        (measure_body(input_shape="x" * 10**6), "invalid-request", "list of 4 integers"),
        (measure_body(precision=["fp16"]), "invalid-request", "precision must be one of"),
        (measure_body(warmup_s="1"), "invalid-request", "warmup_s must be a number"),
        (measure_body(runs=5.5), "invalid-request", "runs must be an integer"),
        (measure_body(**{"x" * 10**5: 1}), "invalid-request", "unknown fields"),
    ],
    ids=lambda value: value if isinstance(value, str) and len(value) < 50 else "",
)
def test_hostile_bodies_are_400_with_the_reason(
    shared_worker: WorkerProcess, body, kind, message
) -> None:
    status, answer = shared_worker.request("/measure", body)
    assert (status, answer["error_kind"]) == (400, kind), answer
    assert message in answer["error"]
    assert len(answer["error"]) < 1000  # a 1 MB value is not echoed back


def http_request_bytes(
    method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b""
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: worker"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def address(worker_process: WorkerProcess) -> tuple[str, int]:
    parts = urlsplit(worker_process.url)
    return parts.hostname, parts.port


def exchange(worker_process: WorkerProcess, data: bytes, timeout: float = 10.0):
    """Send raw bytes; return (status, headers, JSON answer)."""
    with socket.create_connection(address(worker_process), timeout=timeout) as sock:
        sock.sendall(data)
        answer = http.client.HTTPResponse(sock)
        answer.begin()
        return answer.status, dict(answer.getheaders()), json.loads(answer.read() or b"{}")


AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.mark.parametrize(
    ("data", "status", "message"),
    [
        (b"GARBAGE\r\n\r\n", 400, "malformed HTTP/1.x request line"),
        (b"GET /health HTTP/2.0\r\n\r\n", 400, "malformed HTTP/1.x request line"),
        (b"GET /health HTTP/1.1\r\nno colon here\r\n\r\n", 400, "malformed header line"),
        (b"GET /health HTTP/1.1\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", 431, "over 16384"),
        (
            b"GET /health HTTP/1.1\r\n" + b"X-Many: 1\r\n" * 100 + b"\r\n",
            431,
            "more than 64 header lines",
        ),
        (
            http_request_bytes("GET", "/health", {**AUTH, "authorization": "Bearer x"}),
            400,
            "authorization is given twice",
        ),
        (
            http_request_bytes("POST", "/measure", {**AUTH, "Transfer-Encoding": "chunked"}),
            411,
            "Content-Length",
        ),
        (
            http_request_bytes("POST", "/measure", {**AUTH, "Content-Length": "12abc"}),
            400,
            "is not an integer",
        ),
        (
            http_request_bytes("POST", "/measure", {**AUTH, "Content-Length": "-5"}),
            400,
            "must not be negative",
        ),
        (
            http_request_bytes("POST", "/measure", {**AUTH, "Content-Length": "9" * 40}),
            413,
            "over this worker's limit",
        ),
        (http_request_bytes("BREW", "/health", AUTH), 405, "/health needs GET"),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_malformed_http_is_4xx_with_the_reason(
    shared_worker: WorkerProcess, data: bytes, status: int, message: str
) -> None:
    got, _, answer = exchange(shared_worker, data)
    assert got == status and message in answer["error"], answer
    assert shared_worker.request("/health")[0] == 200


def test_the_token_is_checked_before_any_body_is_read(shared_worker: WorkerProcess) -> None:
    headers = {"Authorization": "Bearer wrong", "Content-Length": str(10 * 1024 * 1024)}
    start = time.monotonic()
    status, _, answer = exchange(shared_worker, http_request_bytes("POST", "/measure", headers))
    assert status == 401 and answer["error_kind"] == "unauthorized"
    assert time.monotonic() - start < 5  # no body was waited for


# -- memory limits ------------------------------------------------------------------------------


def test_a_model_that_expands_to_gigabytes_is_refused_under_the_memory_limit(
    shared_worker: WorkerProcess,
) -> None:
    model = expanding_model(HUGE)
    assert len(model) < 200
    status, answer = shared_worker.request("/measure", measure_body(model))
    assert (status, answer["error_kind"]) == (400, "memory-limit"), answer
    assert "limit of 2048 MiB (--memory-limit-mb)" in answer["error"]  # the default
    assert shared_worker.request("/measure", measure_body())[0] == 200


HOG_TRTEXEC = """#!{python}
# Stands in for a trtexec that eats memory: 512 MB, touched, then a long wait.
import sys, time
if "--help" in sys.argv:
    print("&&&& RUNNING TensorRT.trtexec [TensorRT v8502] # trtexec --help")
    sys.exit(0)
hog = b"x" * (512 << 20)
time.sleep(60)
"""


def test_resident_memory_of_any_backend_is_held_to_the_limit(worker_factory, tmp_path) -> None:
    # trtexec and CUDA cannot run under an address-space limit: their resident memory is watched.
    fake = tmp_path / "trtexec"
    fake.write_text(HOG_TRTEXEC.format(python=sys.executable))
    fake.chmod(0o755)
    board = worker_factory(
        "--backend", "trtexec", "--trtexec", str(fake), "--memory-limit-mb", "64"
    )
    start = time.monotonic()
    status, answer = board.request("/measure", measure_body())
    assert (status, answer["error_kind"]) == (400, "memory-limit"), answer
    assert "limit of 64 MiB (--memory-limit-mb)" in answer["error"]
    assert "resident memory reached" in answer["error"]
    assert time.monotonic() - start < 20  # killed, not waited for
    assert board.request("/health") == (200, {"status": "ok", "busy": False})


def test_an_upload_budget_below_two_bodies_refuses_to_start(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    finished = subprocess.run(
        [sys.executable, str(worker_path()), "--target", "agx", "--token-file", str(token_file)]
        + ["--max-upload-mb", "10", "--upload-budget-mb", "15"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert finished.returncode == 2
    assert "--upload-budget-mb 15 must be at least 2 x --max-upload-mb" in finished.stderr


# -- a worker no client can lock out or exhaust -----------------------------------------------

FAKE_SH_TRTEXEC = """#!/bin/sh
# Stands in for trtexec cheaply: records its call, "warms up" by sleeping --warmUp ms, writes
# --iterations times of 0.5 ms. A long warm-up holds the worker for as long as a test needs.
for arg in "$@"; do
  case "$arg" in
    --help) echo "&&&& RUNNING TensorRT.trtexec [TensorRT v8502] # trtexec --help"; exit 0 ;;
    --warmUp=*) warm=${{arg#--warmUp=}} ;;
    --iterations=*) runs=${{arg#--iterations=}} ;;
    --exportTimes=*) times=${{arg#--exportTimes=}} ;;
  esac
done
echo "$*" >> {record}
if [ "$warm" -gt 0 ]; then sleep "$((warm / 1000)).$(printf %03d $((warm % 1000)))"; fi
i=1
{{ printf '[{{"computeMs": 0.5}}'; while [ $i -lt $runs ]; do printf ', {{"computeMs": 0.5}}';
   i=$((i + 1)); done; printf ']'; }} > "$times"
echo "[I] Warmup completed 3 queries over $warm ms"
echo "&&&& PASSED TensorRT.trtexec"
"""
FAKE_BOARD_TIMEOUT_S = 4


def write_fake_trtexec(directory: Path) -> tuple[Path, Path]:
    """(the stand-in trtexec, the file where it records its calls) in `directory`."""
    record = directory / "trtexec-calls.txt"
    record.touch()
    fake = directory / "trtexec"
    fake.write_text(FAKE_SH_TRTEXEC.format(record=record))
    fake.chmod(0o755)
    return fake, record


@pytest.fixture(scope="module")
def fake_board(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    """A worker whose stand-in trtexec costs milliseconds, with a queue of 2, a request
    deadline of 4 s and room for 400 connections."""
    directory = tmp_path_factory.mktemp("fake-board")
    fake, record = write_fake_trtexec(directory)
    board = launch_worker(
        directory,
        *("--backend", "trtexec", "--trtexec", str(fake), "--queue", "2"),
        *("--request-timeout", str(FAKE_BOARD_TIMEOUT_S), "--max-connections", "400"),
    )
    board.extra["record"] = record
    yield board
    board.stop()


def trtexec_calls(board: WorkerProcess) -> int:
    return len(board.extra["record"].read_text().splitlines())


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def measure_in_background(board: WorkerProcess, **fields) -> tuple[threading.Thread, list]:
    answers: list = []
    thread = threading.Thread(
        target=lambda: answers.append(board.request("/measure", measure_body(**fields)))
    )
    thread.start()
    return thread, answers


def send_measure_request(board: WorkerProcess, **fields) -> socket.socket:
    """The socket of a whole /measure request sent, its answer not read."""
    body = json.dumps(measure_body(**fields)).encode()
    headers = {**AUTH, "Content-Type": "application/json", "Content-Length": str(len(body))}
    sock = socket.create_connection(address(board), timeout=10)
    sock.sendall(http_request_bytes("POST", "/measure", headers, body))
    return sock


def info(board: WorkerProcess) -> dict:
    status, answer = board.request("/info")
    assert status == 200
    return answer


def is_open(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


@pytest.mark.slow
def test_silent_and_slow_connections_do_not_delay_an_authorised_client(fake_board) -> None:
    silent = [socket.create_connection(address(fake_board)) for _ in range(300)]
    slow_heads = [socket.create_connection(address(fake_board)) for _ in range(10)]
    slow_bodies = [socket.create_connection(address(fake_board)) for _ in range(10)]
    for sock in slow_heads:
        sock.sendall(b"GET /health HTTP/1.1\r\nX-Slow: ")
    slow_body_head = http_request_bytes(
        "POST", "/measure", {**AUTH, "Content-Type": "application/json", "Content-Length": "9999"}
    )
    for sock in slow_bodies:
        sock.sendall(slow_body_head + b'{"runs": ')
    stop = threading.Event()

    def dribble() -> None:  # one byte per connection every 0.2 s, as slow-loris does
        while not stop.wait(0.2):
            for sock in slow_heads + slow_bodies:
                with contextlib.suppress(OSError):
                    sock.send(b"1")

    dribbler = threading.Thread(target=dribble)
    dribbler.start()
    try:
        start = time.monotonic()
        assert fake_board.request("/health", timeout=5) == (200, {"status": "ok", "busy": False})
        assert time.monotonic() - start < 1.0
        status, answer = fake_board.request("/measure", measure_body(), timeout=5)
        assert status == 200 and answer["samples_ms"]
        assert all(is_open(sock) for sock in silent + slow_heads + slow_bodies)  # held open
        # The deadline covers the whole request: the dribblers get 408, the silent are closed.
        wait_until(lambda: not any(is_open(sock) for sock in silent), FAKE_BOARD_TIMEOUT_S + 3)
    finally:
        stop.set()
        dribbler.join()
    for sock in slow_heads + slow_bodies:
        sock.setblocking(True)
        sock.settimeout(5)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 408 ") and b"--request-timeout" in answer
    for sock in silent + slow_heads + slow_bodies:
        sock.close()


def test_idle_connections_past_the_limit_make_room(fake_board) -> None:
    idle = [socket.create_connection(address(fake_board)) for _ in range(450)]  # limit: 400
    try:
        start = time.monotonic()
        assert fake_board.request("/health", timeout=5)[0] == 200
        assert time.monotonic() - start < 1.0
        wait_until(lambda: sum(not is_open(sock) for sock in idle) >= 50, 5)
        assert all(is_open(sock) for sock in idle[-300:])  # the oldest made room
    finally:
        for sock in idle:
            sock.close()


def test_200_concurrent_health_checks_are_all_answered_quickly(fake_board) -> None:
    request = http_request_bytes("GET", "/health", AUTH)
    start = time.monotonic()
    sockets = [socket.create_connection(address(fake_board), timeout=10) for _ in range(200)]
    for sock in sockets:
        sock.sendall(request)
    answers = {sock: b"" for sock in sockets}
    with selectors.DefaultSelector() as selector:
        for sock in sockets:
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
        while selector.get_map() and time.monotonic() - start < 10:
            for key, _ in selector.select(1.0):
                chunk = key.fileobj.recv(65536)
                answers[key.fileobj] += chunk
                if not chunk:
                    selector.unregister(key.fileobj)
    elapsed = time.monotonic() - start
    for sock in sockets:
        sock.close()
    assert all(answer.startswith(b"HTTP/1.1 200 ") for answer in answers.values())
    assert all(answer.endswith(b'{"status": "ok", "busy": false}') for answer in answers.values())
    assert elapsed < 3.0


@pytest.mark.slow
def test_an_abandoned_request_is_not_measured(fake_board) -> None:
    before, calls = info(fake_board), trtexec_calls(fake_board)
    holder, held = measure_in_background(fake_board, warmup_s=1.5)
    wait_until(lambda: fake_board.request("/health")[1]["busy"])
    # Would hold the worker for 3 s if measured; the client leaves right after sending.
    send_measure_request(fake_board, warmup_s=3.0).close()
    wait_until(lambda: info(fake_board)["queued"] == 1)
    status, answer = fake_board.request("/measure", measure_body())
    holder.join()
    assert status == 200 and held[0][0] == 200
    # The next measurement started as soon as the first ended: the abandoned one was dropped.
    assert answer["started_at"] - held[0][1]["finished_at"] < 1.0
    after = info(fake_board)
    assert after["dropped"] == before["dropped"] + 1
    assert after["measurements"] == before["measurements"] + 2
    assert trtexec_calls(fake_board) == calls + 2
    assert "disconnected before it was measured" in fake_board.log()


def test_a_measurement_whose_client_leaves_is_stopped(fake_board) -> None:
    before, calls = info(fake_board), trtexec_calls(fake_board)
    client = send_measure_request(fake_board, warmup_s=10.0)
    wait_until(lambda: fake_board.request("/health")[1]["busy"])
    client.close()
    left = time.monotonic()
    wait_until(lambda: not fake_board.request("/health")[1]["busy"], 3)
    assert time.monotonic() - left < 2.0  # not the 10 s it asked for
    after = info(fake_board)
    assert after["dropped"] == before["dropped"] + 1
    assert after["measurements"] == before["measurements"]
    assert trtexec_calls(fake_board) == calls + 1
    assert "the client disconnected; the measurement was stopped" in fake_board.log()


@pytest.mark.slow
def test_a_full_queue_answers_503_with_retry_after(fake_board) -> None:
    running = measure_in_background(fake_board, warmup_s=1.5)
    wait_until(lambda: fake_board.request("/health")[1]["busy"])
    waiting = [measure_in_background(fake_board) for _ in range(2)]  # --queue 2
    wait_until(lambda: info(fake_board)["queued"] == 2)
    body = json.dumps(measure_body()).encode()
    headers = {**AUTH, "Content-Type": "application/json", "Content-Length": str(len(body))}
    status, answer_headers, answer = exchange(
        fake_board, http_request_bytes("POST", "/measure", headers, body)
    )
    assert (status, answer["error_kind"]) == (503, "busy")
    assert "the measurement queue is full" in answer["error"] and "--queue" in answer["error"]
    assert 1 <= int(answer_headers["Retry-After"]) <= 600
    for thread, answers in [running, *waiting]:
        thread.join()
        assert answers[0][0] == 200


def test_uploads_beyond_the_budget_wait_outside(worker_factory) -> None:
    board = worker_factory("--max-upload-mb", "1", "--upload-budget-mb", "2")
    length = 1024 * 1024
    headers = {**AUTH, "Content-Type": "application/json", "Content-Length": str(length)}
    hog = socket.create_connection(address(board), timeout=10)
    hog.sendall(http_request_bytes("POST", "/measure", headers, b" " * (length // 2)))
    wait_until(lambda: "upload budget" in str(board.request("/measure", measure_body())), 5)
    status, answer = board.request("/measure", measure_body())
    assert (status, answer["error_kind"]) == (503, "busy")
    assert "--upload-budget-mb" in answer["error"]
    hog.close()  # the half-sent body is given back
    wait_until(lambda: board.request("/measure", measure_body())[0] == 200, 10)


def rss_bytes(pid: int, field: str = "VmRSS") -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split(f"{field}:")[1].split()[0]) * 1024


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
@pytest.mark.slow
def test_a_large_upload_is_parsed_in_about_twice_its_size(worker_factory, tmp_path) -> None:
    fake, _ = write_fake_trtexec(tmp_path)
    board = worker_factory("--backend", "trtexec", "--trtexec", str(fake), "--max-upload-mb", "40")
    model = conv_relu_resize_model(4, channels=200_000)  # 21.6 MB of weights
    body = json.dumps(measure_body(model, warmup_s=0)).encode()
    assert 25e6 < len(body) < 40 * 2**20
    peak_before = rss_bytes(board.process.pid, "VmHWM")
    assert board.request("/measure", body)[0] == 200
    # Body, text and decoded model never coexist whole: ~2.4x the body here, 3.75x before.
    assert rss_bytes(board.process.pid, "VmHWM") - peak_before < 3.0 * len(body)


def test_expect_100_continue_is_answered(fake_board) -> None:
    body = json.dumps(measure_body(warmup_s=0)).encode()
    headers = {**AUTH, "Content-Type": "application/json", "Content-Length": str(len(body))}
    with socket.create_connection(address(fake_board), timeout=10) as sock:
        sock.sendall(http_request_bytes("POST", "/measure", {**headers, "Expect": "100-continue"}))
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"  # before any body
        sock.sendall(body)
        answer = http.client.HTTPResponse(sock)
        answer.begin()
        assert answer.status == 200 and json.loads(answer.read())["samples_ms"]


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
@pytest.mark.slow
def test_worker_memory_stays_flat_over_100_measurements(fake_board) -> None:
    body = measure_body(conv_relu_resize_model(3, channels=3000), warmup_s=0)  # 440 kB
    for _ in range(20):  # the allocator settles
        assert fake_board.request("/measure", body)[0] == 200
    settled = rss_bytes(fake_board.process.pid)
    for _ in range(100):
        assert fake_board.request("/measure", body)[0] == 200
    # Keeping any part of each body would show: 100 of them are 44 MB.
    assert rss_bytes(fake_board.process.pid) - settled < 4 * 1024 * 1024


# -- the host-side client against a busy worker -------------------------------------------------


@pytest.mark.slow
def test_remote_pool_waits_out_a_busy_worker(fake_board) -> None:
    pool = RemotePool([fake_board.url], TOKEN, "agx", warmup_s=0.0, runs=5, max_cv=100.0)
    running = measure_in_background(fake_board, warmup_s=1.5)
    wait_until(lambda: fake_board.request("/health")[1]["busy"])
    waiting = [measure_in_background(fake_board) for _ in range(2)]
    wait_until(lambda: info(fake_board)["queued"] == 2)
    start = time.monotonic()
    result = pool.measure(conv_relu_resize_model(0), SHAPE)  # 503 first, then a retry
    assert result.fingerprint["worker_url"] == fake_board.url
    assert time.monotonic() - start >= 0.5
    assert "/measure -> 503" in fake_board.log()
    for thread, answers in [running, *waiting]:
        thread.join()
        assert answers[0][0] == 200


def test_remote_pool_shows_the_workers_reason(shared_worker: WorkerProcess) -> None:
    pool = RemotePool([shared_worker.url], TOKEN, "agx", warmup_s=WARMUP_S, runs=5)
    with pytest.raises(LatencyError, match=r"memory-limit.*limit of 2048 MiB"):
        pool.measure(expanding_model(HUGE), SHAPE)
