"""LatencyCache (SQLite, WAL, several processes) and CachedProvider (measure once per target)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml
from latency_cases import SHAPE, WARMUP_S, conv_relu_resize_model

from jetsearch.latency import (
    CachedProvider,
    LatencyCache,
    LatencyProvider,
    LatencyResult,
    LocalProvider,
    Provenance,
)
from jetsearch.latency.base import FROM_CACHE_FLAG
from jetseg.config import arch_hash, load_config

# Two different networks the cached providers are told the models were built from.
NANO, AGX = load_config("nano"), load_config("agx")


def result(value: float, provenance: Provenance = Provenance.MEASURED_REMOTE) -> LatencyResult:
    samples = [value] if provenance is Provenance.ESTIMATED else [value, value * 1.1, value * 0.9]
    return LatencyResult.from_samples(
        samples,
        warmup_runs=0 if provenance is Provenance.ESTIMATED else 4,
        provenance=provenance,
        fingerprint={"board_model": "test board"},
        input_shape=SHAPE,
    )


def test_put_get_round_trip_keyed_by_all_three_parts(tmp_path: Path) -> None:
    cache = LatencyCache(tmp_path / "latency.sqlite")
    stored = result(3.0)
    cache.put("arch-a", SHAPE, "agx-key", stored, extra={"params": 1234})
    assert cache.get("arch-a", SHAPE, "agx-key") == stored
    assert cache.get("arch-b", SHAPE, "agx-key") is None
    assert cache.get("arch-a", (1, 3, 16, 32), "agx-key") is None
    assert cache.get("arch-a", SHAPE, "nano-key") is None
    assert len(cache) == 1
    assert cache.journal_mode == "wal"


def test_estimates_never_answer_for_measurements(tmp_path: Path) -> None:
    cache = LatencyCache(tmp_path / "latency.sqlite")
    estimate = result(9.0, Provenance.ESTIMATED)
    cache.put("arch-a", SHAPE, "agx-key", estimate)
    assert cache.get("arch-a", SHAPE, "agx-key") is None
    assert cache.get("arch-a", SHAPE, "agx-key", provenance=Provenance.ESTIMATED) == estimate

    measurement = result(4.0)
    cache.put("arch-a", SHAPE, "agx-key", measurement)
    assert cache.get("arch-a", SHAPE, "agx-key") == measurement
    assert cache.get("arch-a", SHAPE, "agx-key", provenance="estimated") == estimate
    assert len(cache) == 2


def test_all_results_filters_by_target_and_provenance(tmp_path: Path) -> None:
    cache = LatencyCache(tmp_path / "latency.sqlite")
    cache.put("arch-a", SHAPE, "agx-key", result(1.0), extra={"macs": 10})
    cache.put("arch-b", (2, 3, 8, 8), "agx-key", result(2.0), extra={"macs": 20})
    cache.put("arch-a", SHAPE, "nano-key", result(5.0))
    cache.put("arch-c", SHAPE, "agx-key", result(7.0, Provenance.ESTIMATED))

    agx = cache.all_results("agx-key")
    assert sorted((arch, shape, extra["macs"]) for arch, shape, _, extra in agx) == [
        ("arch-a", SHAPE, 10),
        ("arch-b", (2, 3, 8, 8), 20),
    ]
    assert len(cache.all_results()) == 3
    estimates = cache.all_results(provenance=Provenance.ESTIMATED)
    assert [(arch, entry.median_ms) for arch, _, entry, _ in estimates] == [("arch-c", 7.0)]


def test_a_newer_put_replaces_the_older(tmp_path: Path) -> None:
    cache = LatencyCache(tmp_path / "latency.sqlite")
    cache.put("arch-a", SHAPE, "agx-key", result(1.0))
    cache.put("arch-a", SHAPE, "agx-key", result(2.0))
    assert cache.get("arch-a", SHAPE, "agx-key").median_ms == 2.0
    assert len(cache) == 1


# The child processes import the package from this checkout, installed or not.
REPO_ROOT = Path(__file__).resolve().parents[3]
CHILD_ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
}

CHILD = """
import json, sys
from jetsearch.latency import LatencyCache, LatencyResult
cache = LatencyCache(sys.argv[1])
if sys.argv[2] == "read":
    print(json.dumps(cache.get("arch-a", (1, 3, 16, 16), "agx-key").to_dict()))
else:
    for index in range(25):
        result = LatencyResult.from_samples(
            [1.0 + index], warmup_runs=1, provenance="measured-remote",
            fingerprint={"writer": sys.argv[2]}, input_shape=(1, 3, 16, 16))
        cache.put(f"{sys.argv[2]}-{index}", (1, 3, 16, 16), "agx-key", result)
"""


def test_another_process_sees_the_entry(tmp_path: Path) -> None:
    path = tmp_path / "latency.sqlite"
    stored = result(3.5)
    LatencyCache(path).put("arch-a", SHAPE, "agx-key", stored)
    answer = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), "read"],
        capture_output=True,
        text=True,
        check=True,
        env=CHILD_ENV,
    )
    assert LatencyResult.from_dict(json.loads(answer.stdout)) == stored


def test_processes_write_at_the_same_time(tmp_path: Path) -> None:
    path = tmp_path / "latency.sqlite"
    LatencyCache(path)
    writers = [
        subprocess.Popen([sys.executable, "-c", CHILD, str(path), f"writer{i}"], env=CHILD_ENV)
        for i in range(3)
    ]
    assert [writer.wait(timeout=60) for writer in writers] == [0, 0, 0]
    entries = LatencyCache(path).all_results("agx-key")
    assert len(entries) == 75
    assert len({arch for arch, _, _, _ in entries}) == 75


def test_not_a_database_is_refused_with_the_path(tmp_path: Path) -> None:
    path = tmp_path / "latency.sqlite"
    path.write_bytes(b"definitely not sqlite" * 100)
    with pytest.raises(ValueError, match="not a usable SQLite file"):
        LatencyCache(path)


def test_cached_provider_measures_once_then_hits(tmp_path: Path) -> None:
    inner = LocalProvider(warmup_s=WARMUP_S, min_runs=5, max_runs=5, max_cv=100.0)
    cache = LatencyCache(tmp_path / "latency.sqlite")
    provider = CachedProvider(inner, cache)
    model = conv_relu_resize_model(0)

    first = provider.measure(model, SHAPE, config=NANO)
    second = provider.measure(model, SHAPE, config=NANO)
    assert inner.measurement_count == 1
    assert (provider.hits, provider.misses) == (1, 1)
    assert second.samples_ms == first.samples_ms
    assert FROM_CACHE_FLAG in second.flags and FROM_CACHE_FLAG not in first.flags
    stored = cache.get(arch_hash(NANO), SHAPE, inner.target_fingerprint_key())
    assert stored == first

    provider.measure(model, SHAPE, config=AGX)  # another network: measured
    provider.measure(model, (1, 3, 8, 8), config=NANO)  # another shape: measured
    provider.measure(model, SHAPE)  # no config: the cache is bypassed
    assert inner.measurement_count == 4
    assert len(cache) == 3


def test_cached_provider_keeps_the_config_of_every_network(tmp_path: Path) -> None:
    inner = LocalProvider(warmup_s=WARMUP_S, min_runs=5, max_runs=5, max_cv=100.0)
    cache = LatencyCache(tmp_path / "latency.sqlite")
    provider = CachedProvider(inner, cache)
    provider.measure(conv_relu_resize_model(0), SHAPE, config=NANO)
    [(digest, _, _, extra)] = cache.all_results()
    assert digest == arch_hash(NANO) and extra["name"] == NANO.name
    assert load_config(yaml.safe_load(extra["config_yaml"])) == NANO
    assert load_config(yaml.safe_load(cache.configs()[digest])) == NANO

    # A hit records the config too: an entry another tool stored may lack it.
    other = LatencyCache(tmp_path / "other.sqlite")
    key = inner.target_fingerprint_key()
    other.put(arch_hash(AGX), SHAPE, key, result(2.0, Provenance.MEASURED_LOCAL))
    assert other.configs() == {}
    CachedProvider(inner, other).measure(conv_relu_resize_model(0), SHAPE, config=AGX)
    assert inner.measurement_count == 1
    assert set(other.configs()) == {arch_hash(AGX)}


def test_refresh_measures_again_and_replaces_the_entry(tmp_path: Path) -> None:
    inner = LocalProvider(warmup_s=WARMUP_S, min_runs=5, max_runs=5, max_cv=100.0)
    cache = LatencyCache(tmp_path / "latency.sqlite")
    model = conv_relu_resize_model(0)
    first = CachedProvider(inner, cache).measure(model, SHAPE, config=NANO)
    again = CachedProvider(inner, cache, refresh=True).measure(model, SHAPE, config=NANO)
    assert inner.measurement_count == 2 and FROM_CACHE_FLAG not in again.flags
    assert len(cache) == 1
    assert cache.get(arch_hash(NANO), SHAPE, inner.target_fingerprint_key()) == again != first


def test_configs_and_target_keys_are_read_through_the_cache(tmp_path: Path) -> None:
    cache = LatencyCache(tmp_path / "latency.sqlite")
    assert cache.configs() == {} and cache.target_keys() == {}
    assert cache.record_config(NANO) == arch_hash(NANO)
    cache.record_config(NANO)  # again: one record
    cache.record_config(AGX)
    assert set(cache.configs()) == {arch_hash(NANO), arch_hash(AGX)}
    assert load_config(yaml.safe_load(cache.configs()[arch_hash(AGX)])) == AGX

    cache.put("arch-a", SHAPE, "agx-key", result(1.0))
    cache.put("arch-b", SHAPE, "agx-key", result(2.0))
    cache.put("arch-a", SHAPE, "nano-key", result(3.0))
    cache.put("arch-c", SHAPE, "nano-key", result(4.0, Provenance.ESTIMATED))
    assert cache.target_keys() == {"agx-key": 2, "nano-key": 1}
    assert cache.target_keys(provenance=Provenance.ESTIMATED) == {"nano-key": 1}
    # Another process reads the same configs: they live in the cache file.
    assert set(LatencyCache(cache.path).configs()) == {arch_hash(NANO), arch_hash(AGX)}


def test_concurrent_calls_for_one_network_measure_once(tmp_path: Path) -> None:
    inner = LocalProvider(warmup_s=WARMUP_S, min_runs=5, max_runs=5, max_cv=100.0)
    provider = CachedProvider(inner, LatencyCache(tmp_path / "latency.sqlite"))
    model = conv_relu_resize_model(0)
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(provider.measure(model, SHAPE, config=NANO)))
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert inner.measurement_count == 1
    assert len({entry.samples_ms for entry in results}) == 1


class CountingEstimator(LatencyProvider):
    """A real (if trivial) estimating provider: 1 ms per kilobyte of model."""

    kind = Provenance.ESTIMATED

    def __init__(self) -> None:
        self.calls = 0

    def measure(self, onnx_model, input_shape, *, config=None):
        self.calls += 1
        return LatencyResult.from_samples(
            [len(onnx_model) / 1024],
            warmup_runs=0,
            provenance=self.kind,
            fingerprint={"profile": "test"},
            input_shape=input_shape,
        )

    def fingerprint(self):
        return {"profile": "test"}

    def target_fingerprint_key(self):
        return "estimate-test"


def test_cached_estimates_stay_estimates(tmp_path: Path) -> None:
    cache = LatencyCache(tmp_path / "latency.sqlite")
    estimator = CountingEstimator()
    provider = CachedProvider(estimator, cache)
    model = conv_relu_resize_model(0)
    assert provider.measure(model, SHAPE, config=NANO).is_estimate
    again = provider.measure(model, SHAPE, config=NANO)
    assert again.is_estimate and estimator.calls == 1
    assert cache.get(arch_hash(NANO), SHAPE, "estimate-test") is None
    assert cache.all_results("estimate-test") == []
    assert len(cache.all_results("estimate-test", provenance=Provenance.ESTIMATED)) == 1
