"""Shared pieces of the latency tests: tiny ONNX models, providers built from recipes, and real
worker processes on loopback."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from jetsearch.latency import (
    CachedProvider,
    EstimateProvider,
    LatencyCache,
    LatencyProvider,
    LocalProvider,
    RemotePool,
)
from jetsearch.latency.worker import worker_path

TOKEN = "test-token-0123456789abcdef"
# Tiny, fast protocol settings shared by every test that measures.
WARMUP_S = 0.05
RUNS = 5
SHAPE = (1, 3, 16, 16)


def conv_relu_resize_model(
    seed: int = 0, *, height: int | str = "H", width: int | str = "W", channels: int = 4
) -> bytes:
    """Conv(3->channels, 3x3) + Relu + Resize(x2 nearest) on input "image" [N, 3, H, W].

    `seed` changes the weights (so every seed is a different network); int height/width fix
    those axes instead of leaving them dynamic.
    """
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((channels, 3, 3, 3)).astype(np.float32)
    bias = rng.standard_normal(channels).astype(np.float32)
    scales = np.array([1.0, 1.0, 2.0, 2.0], dtype=np.float32)
    nodes = [
        helper.make_node("Conv", ["image", "weight", "bias"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("Resize", ["relu", "", "scales"], ["mask"], mode="nearest"),
    ]
    graph = helper.make_graph(
        nodes,
        f"tiny_{seed}",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, height, width])],
        [helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["N", "C", "OH", "OW"])],
        initializer=[
            numpy_helper.from_array(weight, "weight"),
            numpy_helper.from_array(bias, "bias"),
            numpy_helper.from_array(scales, "scales"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def build_provider(recipe: dict[str, Any]) -> LatencyProvider:
    """A provider from a JSON-safe recipe, so that another process can build the same one.

    ``recipe["class"]`` is "local", "remote" or "estimate", ``recipe["kwargs"]`` its constructor
    arguments (a RemotePool's ``urls``, ``token`` and ``target`` among them), and a
    ``recipe["cache"]`` path wraps it in a CachedProvider over that file.
    """
    classes = {"local": LocalProvider, "remote": RemotePool, "estimate": EstimateProvider}
    provider = classes[recipe["class"]](**recipe["kwargs"])
    if recipe.get("cache"):
        provider = CachedProvider(provider, LatencyCache(recipe["cache"]))
    return provider


def runtime_failing_model() -> bytes:
    """Loads fine (dynamic H, W) but fails to run unless H = W = 8: Add of a fixed [1,3,8,8]."""
    constant = np.ones((1, 3, 8, 8), dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("Add", ["image", "constant"], ["mask"])],
        "fails_at_run_time",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["N", "C", "OH", "OW"])],
        initializer=[numpy_helper.from_array(constant, "constant")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


def unknown_op_model() -> bytes:
    """Valid ONNX protobuf whose operator no runtime knows: only loading it can tell."""
    graph = helper.make_graph(
        [helper.make_node("NoSuchOperator", ["image"], ["mask"])],
        "unknown_op",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["N", "C", "OH", "OW"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


@dataclass
class WorkerProcess:
    """A real worker.py running in a subprocess on a loopback port."""

    process: subprocess.Popen
    url: str
    token: str
    log_path: Path
    target: str
    extra: dict[str, Any] = field(default_factory=dict)

    def request(
        self,
        path: str,
        body: dict | bytes | None = None,
        *,
        token: str | None = None,
        authorize: bool = True,
        headers: dict[str, str] | None = None,
        timeout: float = 60.0,
    ) -> tuple[int, dict]:
        """(status, JSON answer) of one request; error statuses are returned, not raised."""
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        all_headers = {"Content-Type": "application/json"}
        if authorize:
            all_headers["Authorization"] = f"Bearer {token or self.token}"
        all_headers.update(headers or {})
        request = urllib.request.Request(self.url + path, data=data, headers=all_headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"{}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


def launch_worker(
    directory: Path,
    *args: str,
    target: str = "agx",
    token: str = TOKEN,
    env: dict[str, str] | None = None,
    script: Path | None = None,
) -> WorkerProcess:
    """Start worker.py (or a copy at `script`) on a free loopback port and wait until it listens."""
    directory.mkdir(parents=True, exist_ok=True)
    token_file = directory / f"token-{target}"
    token_file.write_text(token + "\n")
    log_path = directory / f"worker-{target}-{time.monotonic_ns()}.log"
    command = [
        sys.executable,
        str(script or worker_path()),
        "--target",
        target,
        "--port",
        "0",
        "--token-file",
        str(token_file),
        *args,
    ]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=directory,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        match = re.search(r"listening on (http://[\d.]+:\d+)", log_path.read_text(errors="replace"))
        if match:
            return WorkerProcess(process, match.group(1), token, log_path, target)
        if process.poll() is not None:
            raise RuntimeError(f"worker exited with {process.returncode}: {log_path.read_text()}")
        time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"worker did not start: {log_path.read_text()}")
