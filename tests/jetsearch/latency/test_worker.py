"""The board worker: a real worker.py process on loopback, spoken to over HTTP."""

from __future__ import annotations

import ast
import base64
import http.client
import json
import shutil
import subprocess
import sys
import threading
import time
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
    runtime_failing_model,
    unknown_op_model,
)

from jetsearch.latency import worker
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


def test_timed_out_measurement_is_504_and_the_worker_goes_on(worker_factory) -> None:
    impatient = worker_factory("--timeout", "1")
    start = time.monotonic()
    status, answer = impatient.request("/measure", measure_body(warmup_s=30))
    assert status == 504 and answer["error_kind"] == "timeout"
    assert time.monotonic() - start < 10
    assert impatient.request("/health") == (200, {"status": "ok", "busy": False})
    assert impatient.request("/measure", measure_body())[0] == 200


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
