"""``jetsearch latency measure|estimate|calibrate`` run in-process, end to end.

Measurements are real (onnxruntime here, a real worker process on loopback); calibration reads
a real SQLite cache that the test fills with stored results of small sampled networks.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from latency_cases import WorkerProcess

from jetsearch.latency import LatencyCache, LatencyResult, Provenance
from jetsearch.latency.estimate import calibration_path, network_cost, roofline
from jetsearch.space import load_space
from jetseg.config import JetSegConfig, arch_hash, load_config


def run(argv: list[str]) -> int:
    """Run ``jetsearch ARGV`` through the real CLI, in-process."""
    from jetsearch.cli import main

    return main(argv)


def run_error(argv: list[str], capsys: pytest.CaptureFixture[str], pattern: str) -> None:
    """The command exits 2 (bad input) and its one-line message matches ``pattern``."""
    capsys.readouterr()
    assert run(argv) == 2
    err = capsys.readouterr().err
    assert re.search(pattern, err), err


@pytest.mark.slow
def test_measure_prints_a_table_and_writes_the_cache(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache_path = tmp_path / "latency.sqlite"
    argv = ["latency", "measure", "nano", "--size", "96x128", "--runs", "5", "--warmup", "0.1"]
    assert run([*argv, "--cache", str(cache_path)]) == 0
    out = capsys.readouterr().out
    for word in ("median", "p90", "cv", "timed runs", "warm-up runs", "measured-local"):
        assert word in out
    assert "onnxruntime" in out and "threads 2" in out

    nano = load_config("nano")
    entries = LatencyCache(cache_path).all_results()
    assert len(entries) == 1
    digest, shape, result, extra = entries[0]
    assert digest == arch_hash(nano) and shape == (1, 3, 96, 128)
    assert result.provenance is Provenance.MEASURED_LOCAL and result.timed_runs == 5
    assert load_config(yaml.safe_load(extra["config_yaml"])) == nano
    assert arch_hash(nano) in LatencyCache(cache_path).configs()
    assert f"{result.median_ms:.3f} ms" in out

    # The same network again comes from the cache, flagged.
    assert run([*argv, "--cache", str(cache_path)]) == 0
    assert "from-cache" in capsys.readouterr().out
    assert len(LatencyCache(cache_path)) == 1


@pytest.mark.slow
def test_measure_times_an_onnx_file_as_it_is(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from jetseg import build_model
    from jetseg.export import export_onnx

    model = tmp_path / "peer.onnx"
    export_onnx(build_model("nano"), model, input_size=(32, 32))
    renamed = tmp_path / "peer-model.bin"  # an ONNX file under any name
    renamed.write_bytes(model.read_bytes())
    cache_path = tmp_path / "latency.sqlite"
    for path in (model, renamed):
        argv = ["latency", "measure", str(path), "--size", "32x32", "--runs", "5"]
        assert run([*argv, "--warmup", "0.1", "--threads", "1", "--cache", str(cache_path)]) == 0
        out = capsys.readouterr().out
        assert "an ONNX file, not a JetSeg config" in out and "1x3x32x32" in out
        assert "measured-local" in out and "no arch_hash to key the cache" in out
    assert not cache_path.exists() or len(LatencyCache(cache_path)) == 0
    # Not ONNX, not YAML: one message naming the file, exit 2 (no bare codec error).
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08\xff\xfe not a model")
    capsys.readouterr()
    assert run(["latency", "measure", str(junk), "--size", "32x32"]) != 0
    err = capsys.readouterr().err
    assert "junk.onnx" in err and "codec" not in err


@pytest.mark.slow
def test_fp16_asked_of_the_cpu_is_measured_at_fp32_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache_path = tmp_path / "latency.sqlite"
    argv = ["latency", "measure", "nano", "--size", "64x64", "--runs", "3", "--warmup", "0.05"]
    assert run([*argv, "--precision", "fp16", "--cache", str(cache_path)]) == 0
    out = capsys.readouterr().out
    assert "fp16 was asked" in out and "precision-fallback-fp32" in out
    [(_, _, stored, _)] = LatencyCache(cache_path).all_results()
    # The cache holds the plain fp32 measurement; only the fp16 request's answer is flagged.
    assert stored.fingerprint["precision"] == "fp32"
    assert "precision-fallback-fp32" not in stored.flags
    assert run([*argv, "--cache", str(cache_path)]) == 0
    out = capsys.readouterr().out
    assert "from-cache" in out and "precision-fallback-fp32" not in out

    argv = ["latency", "estimate", "nano", "--size", "64x64", "--profile", "local"]
    assert run(argv) == 0
    plain = capsys.readouterr().out
    assert run([*argv, "--precision", "fp16"]) == 0
    out = capsys.readouterr().out
    assert "fp32:" in out and "precision-fallback-fp32" in out
    assert plain.split("fp32: ")[1].split(" ms")[0] == out.split("fp32: ")[1].split(" ms")[0]


@pytest.mark.slow
def test_measure_on_a_worker(
    tmp_path: Path, shared_worker: WorkerProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(shared_worker.token + "\n")
    cache_path = tmp_path / "latency.sqlite"
    argv = ["latency", "measure", "nano", "--size", "64x64", "--provider", "worker"]
    argv += ["--workers", shared_worker.url, "--token-file", str(token_file), "--target", "agx"]
    assert run([*argv, "--runs", "3", "--warmup", "0.05", "--cache", str(cache_path)]) == 0
    out = capsys.readouterr().out
    assert "measured-remote" in out
    [(_, shape, result, _)] = LatencyCache(cache_path).all_results()
    assert shape == (1, 3, 64, 64) and result.provenance is Provenance.MEASURED_REMOTE


def test_measure_rejects_incomplete_worker_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["latency", "measure", "nano", "--provider", "worker", "--cache", ""]
    run_error(base, capsys, "needs --workers")
    run_error([*base, "--workers", "http://127.0.0.1:9"], capsys, "needs --token-file")
    missing = str(tmp_path / "missing-token")
    worker_args = ["--workers", "http://127.0.0.1:9", "--token-file", missing, "--target", "agx"]
    run_error([*base, *worker_args], capsys, "token file .*missing-token does not exist")
    run_error(
        ["latency", "measure", "no-such-preset", "--cache", ""],
        capsys,
        "neither a config file nor a built-in preset",
    )


def test_estimate_is_labelled_and_lists_top_layers(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["latency", "estimate", "nano", "--size", "96x128", "--profile", "agx"]) == 0
    out = capsys.readouterr().out
    assert "ESTIMATE" in out and "not a measurement" in out and "UNCALIBRATED" in out
    assert "agx-xavier" in out and "fp16" in out
    assert "top 8 layers" in out and "by layer group" in out
    expected = roofline(network_cost(load_config("nano"), (96, 128)), "agx").total_ms
    assert f"{expected:.3f} ms" in out

    run_error(
        ["latency", "estimate", "nano", "--profile", "tx2"],
        capsys,
        "unknown device profile 'tx2'.*agx-orin",
    )


def fill_cache(path: Path, configs: list[JetSegConfig], target_key: str) -> None:
    """Stored measurements of `configs` (made-up but plausible numbers) with their configs."""
    cache = LatencyCache(path)
    for i, config in enumerate(configs):
        size = (64, 64) if i % 2 else (96, 128)
        shape = (1, 3, *size)
        # 3x the uncalibrated local estimate plus 0.5 ms: a shape calibration can recover.
        ms = 3.0 * roofline(network_cost(config, size), "local").total_ms + 0.5
        result = LatencyResult.from_samples(
            [ms, ms * 1.01, ms * 0.99],
            warmup_runs=2,
            provenance=Provenance.MEASURED_LOCAL,
            fingerprint={"cpu_model": "test", "precision": "fp32"},
            input_shape=shape,
        )
        cache.put(arch_hash(config), shape, target_key, result)
        cache.record_config(config)


def test_calibrate_then_estimate_through_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache_path = tmp_path / "latency.sqlite"
    configs = load_space("tiny").random_configs(8, seed=5)
    fill_cache(cache_path, configs, "local-key")

    assert run(["latency", "calibrate", "--profile", "local", "--cache", str(cache_path)]) == 0
    out = capsys.readouterr().out
    assert "8 measured networks of target local-key" in out
    assert "Kendall tau" in out and "uncalibrated" in out and "fitted parameters" in out
    saved = calibration_path(cache_path, "local", "fp32")
    data = json.loads(saved.read_text())
    assert data["target_key"] == "local-key" and data["fit"]["count"] == 8
    assert data["fit"]["within_10pct"] == 1.0

    argv = ["latency", "estimate", "nano", "--size", "96x128", "--profile", "local"]
    assert run([*argv, "--cache", str(cache_path)]) == 0
    out = capsys.readouterr().out
    assert "calibrated" in out and "UNCALIBRATED" not in out and str(saved) in out
    expected = 3.0 * roofline(network_cost(load_config("nano"), (96, 128)), "local").total_ms + 0.5
    printed = float(out.split("fp32: ")[1].split(" ms")[0])
    assert printed == pytest.approx(expected, rel=0.15)


def test_calibrate_reports_bad_caches(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = str(tmp_path / "missing.sqlite")
    run_error(
        ["latency", "calibrate", "--profile", "local", "--cache", missing],
        capsys,
        "latency cache .*missing.sqlite does not exist",
    )
    cache_path = tmp_path / "latency.sqlite"
    configs = load_space("tiny").random_configs(4, seed=6)
    fill_cache(cache_path, configs[:2], "key-a")
    argv = ["latency", "calibrate", "--profile", "local", "--cache", str(cache_path)]
    run_error(argv, capsys, "has 2 usable measurements .* needs at least 3")
    fill_cache(cache_path, configs[2:], "key-b")
    run_error(argv, capsys, "2 targets; pick one with --target-key: key-a \\(2\\)")
    run_error(
        ["latency", "estimate", "nano", "--profile", "local", "--cache", str(tmp_path / "x")],
        capsys,
        "does not exist",
    )
