"""RemotePool over real worker processes: spreading, refusing, retrying, surviving a dead board."""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from latency_cases import (
    SHAPE,
    TOKEN,
    WARMUP_S,
    conv_relu_resize_model,
    runtime_failing_model,
    unknown_op_model,
)

from jetsearch.latency import (
    CachedProvider,
    InvalidModelError,
    LatencyCache,
    LatencyError,
    Provenance,
    RemotePool,
)
from jetsearch.space import load_space
from jetseg.config import arch_hash

# Every test talks to real worker processes.
pytestmark = pytest.mark.slow


def pool_of(*workers, target: str = "agx", **kwargs) -> RemotePool:
    settings = dict(warmup_s=WARMUP_S, runs=5, max_cv=100.0)
    settings.update(kwargs)
    return RemotePool([worker.url for worker in workers], TOKEN, target, **settings)


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def overlapping(intervals: list[tuple[float, float]]) -> bool:
    intervals = sorted(intervals)
    return any(
        later[0] < earlier[1] for earlier, later in zip(intervals, intervals[1:], strict=False)
    )


def test_measurements_spread_over_free_workers(worker_factory) -> None:
    first, second = worker_factory(), worker_factory()
    pool = pool_of(first, second, warmup_s=0.3)
    with ThreadPoolExecutor(4) as executor:
        results = list(
            executor.map(lambda seed: pool.measure(conv_relu_resize_model(seed), SHAPE), range(4))
        )
    assert all(result.provenance is Provenance.MEASURED_REMOTE for result in results)
    by_worker: dict[str, list[tuple[float, float]]] = {}
    for result in results:
        fingerprint = result.fingerprint
        by_worker.setdefault(fingerprint["worker_url"], []).append(
            (fingerprint["started_at"], fingerprint["finished_at"])
        )
    assert set(by_worker) == {first.url, second.url}
    assert not any(overlapping(intervals) for intervals in by_worker.values())
    assert sum(status.measurements for status in pool.workers) == 4 == pool.measurement_count


def test_worker_of_another_target_is_refused(worker_factory) -> None:
    agx, nano = worker_factory(target="agx"), worker_factory(target="nano")
    with pytest.raises(LatencyError, match="declares target 'nano', this pool measures 'agx'"):
        pool_of(nano)

    pool = pool_of(agx, nano)
    refused = {status.url: status.refused for status in pool.workers}
    assert refused[agx.url] is None
    assert "declares target 'nano'" in refused[nano.url]
    for _ in range(2):
        assert pool.measure(conv_relu_resize_model(0), SHAPE).fingerprint["worker_url"] == agx.url


def test_expected_fingerprint_is_enforced(shared_worker) -> None:
    with pytest.raises(
        LatencyError, match=r"board_model=None \(expected 'NVIDIA Jetson AGX Orin'\)"
    ):
        pool_of(shared_worker, expected_fingerprint={"board_model": "NVIDIA Jetson AGX Orin"})
    pool = pool_of(shared_worker, expected_fingerprint={"runtime": "onnxruntime"})
    assert pool.fingerprint()["runtime"] == "onnxruntime"


def test_workers_of_one_pool_must_share_a_setup(worker_factory) -> None:
    reference, different = worker_factory("--threads", "2"), worker_factory("--threads", "1")
    pool = pool_of(reference, different)
    refused = {status.url: status.refused for status in pool.workers}
    assert refused[reference.url] is None
    assert "threads=1" in refused[different.url] and "have 2" in refused[different.url]


def test_wrong_token_is_refused(shared_worker) -> None:
    with pytest.raises(LatencyError, match="rejected the token"):
        RemotePool([shared_worker.url], "not-the-token", "agx")


def test_unreachable_workers_are_skipped_then_reported(shared_worker) -> None:
    dead = closed_port_url()
    pool = RemotePool([dead, shared_worker.url], TOKEN, "agx", warmup_s=WARMUP_S, runs=5)
    result = pool.measure(conv_relu_resize_model(0), SHAPE)
    assert result.fingerprint["worker_url"] == shared_worker.url
    (dead_status,) = [status for status in pool.workers if status.url == dead]
    assert dead_status.info is None and "failed" in dead_status.last_error

    with pytest.raises(LatencyError, match="no usable worker") as caught:
        RemotePool([dead, closed_port_url()], TOKEN, "agx")
    assert dead in str(caught.value)


def test_model_errors_are_not_retried_elsewhere(worker_factory) -> None:
    first, second = worker_factory(), worker_factory()
    pool = pool_of(first, second)
    with pytest.raises(InvalidModelError, match="invalid ONNX model"):
        pool.measure(unknown_op_model(), SHAPE)
    with pytest.raises(LatencyError, match="the model failed to run"):
        pool.measure(runtime_failing_model(), SHAPE)
    assert all(status.refused is None and status.info for status in pool.workers)
    assert pool.measurement_count == 0


def test_timed_out_worker_hands_the_measurement_on(worker_factory) -> None:
    impatient, patient = worker_factory("--timeout", "1"), worker_factory()
    pool = pool_of(impatient, patient, warmup_s=1.5)
    result = pool.measure(conv_relu_resize_model(0), SHAPE)
    assert result.fingerprint["worker_url"] == patient.url
    (impatient_status,) = [status for status in pool.workers if status.url == impatient.url]
    assert impatient_status.refused is None  # alive, only too slow for this one


def test_killed_worker_mid_run_loses_and_duplicates_nothing(worker_factory, tmp_path: Path):
    doomed, survivor = worker_factory(), worker_factory()
    pool = pool_of(doomed, survivor, warmup_s=0.4, recheck_s=60.0)
    cache = LatencyCache(tmp_path / "latency.sqlite")
    provider = CachedProvider(pool, cache)
    # Six networks, each with its own config (the cache keys on the config's arch_hash).
    configs = {arch_hash(config): config for config in load_space("tiny").random_configs(6, 1)}
    assert len(configs) == 6
    models = {arch: conv_relu_resize_model(100 + index) for index, arch in enumerate(configs)}
    results: dict[str, list] = {arch: [] for arch in models}
    lock = threading.Lock()

    def measure(arch: str) -> None:
        result = provider.measure(models[arch], SHAPE, config=configs[arch])
        with lock:
            results[arch].append(result)

    with ThreadPoolExecutor(3) as executor:
        futures = [executor.submit(measure, arch) for arch in models]
        deadline = time.monotonic() + 20
        while not doomed.request("/health")[1]["busy"]:
            assert time.monotonic() < deadline, "the doomed worker never got a measurement"
            time.sleep(0.02)
        doomed.kill()
        for future in futures:
            future.result()

    assert {arch: len(found) for arch, found in results.items()} == dict.fromkeys(models, 1)
    stored = cache.all_results(pool.target_fingerprint_key())
    assert sorted(arch for arch, _, _, _ in stored) == sorted(models)
    assert all(entry.provenance is Provenance.MEASURED_REMOTE for _, _, entry, _ in stored)
    # Every measurement the survivor finished is one returned result: none was recorded twice.
    from_survivor = [r for (r,) in results.values() if r.fingerprint["worker_url"] == survivor.url]
    assert survivor.request("/info")[1]["measurements"] == len(from_survivor) >= 1
    (doomed_status,) = [status for status in pool.workers if status.url == doomed.url]
    assert doomed_status.info is None and doomed_status.last_error


def test_a_worker_that_comes_back_is_used_again(worker_factory) -> None:
    returning, steady = worker_factory(), worker_factory()
    pool = pool_of(returning, steady, recheck_s=0.3)
    returning.kill()
    assert pool.measure(conv_relu_resize_model(0), SHAPE).fingerprint["worker_url"] == steady.url
    (down,) = [status for status in pool.workers if status.url == returning.url]
    assert down.info is None and down.last_error

    port = returning.url.rsplit(":", 1)[1]
    revived = worker_factory("--port", port)
    assert revived.url == returning.url
    time.sleep(0.4)  # past recheck_s: the next call re-checks /health and /info first
    result = pool.measure(conv_relu_resize_model(1), SHAPE)
    assert result.fingerprint["worker_url"] == returning.url
    (back,) = [status for status in pool.workers if status.url == returning.url]
    assert back.info is not None and back.last_error is None
