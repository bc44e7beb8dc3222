"""LatencyResult arithmetic and serialisation, fingerprint keys, the variance retry helper."""

from __future__ import annotations

import json
import statistics

import numpy as np
import pytest

from jetsearch.latency.base import (
    HIGH_VARIANCE_FLAG,
    LatencyProvider,
    LatencyResult,
    Provenance,
    fingerprint_key,
    measure_until_stable,
    percentile,
)

FINGERPRINT = {"cpu_model": "test cpu", "runtime": "onnxruntime", "threads": 2}


def measured(samples, **kwargs) -> LatencyResult:
    defaults = dict(
        warmup_runs=3,
        provenance=Provenance.MEASURED_LOCAL,
        fingerprint=FINGERPRINT,
        input_shape=(1, 3, 8, 8),
    )
    defaults.update(kwargs)
    return LatencyResult.from_samples(samples, **defaults)


@pytest.mark.parametrize("seed", range(5))
def test_summary_matches_numpy_and_statistics(seed: int) -> None:
    rng = np.random.default_rng(seed)
    samples = rng.lognormal(mean=1.0, sigma=0.3, size=int(rng.integers(1, 40))).tolist()
    result = measured(samples)
    assert result.median_ms == pytest.approx(float(np.median(samples)))
    assert result.p90_ms == pytest.approx(float(np.percentile(samples, 90)))
    assert result.cv == pytest.approx(float(np.std(samples) / np.mean(samples)))
    assert result.timed_runs == len(samples)
    assert result.samples_ms == tuple(samples)  # raw order kept
    assert result.median_ms <= result.p90_ms


def test_percentile_endpoints_and_interpolation() -> None:
    ordered = [1.0, 2.0, 4.0, 8.0]
    assert percentile(ordered, 0.0) == 1.0
    assert percentile(ordered, 1.0) == 8.0
    # rank 0.5 * 3 = 1.5: halfway between 2 and 4
    assert percentile(ordered, 0.5) == 3.0 == statistics.median(ordered)
    with pytest.raises(ValueError, match="within"):
        percentile(ordered, 1.5)


def test_estimate_has_one_value_and_no_runs() -> None:
    result = LatencyResult.from_samples(
        [12.5],
        warmup_runs=0,
        provenance="estimated",
        fingerprint={"profile": "agx"},
        input_shape=[1, 3, 360, 480],
    )
    assert result.is_estimate
    assert result.timed_runs == 0
    assert result.median_ms == result.p90_ms == 12.5
    assert result.cv == 0.0
    assert result.input_shape == (1, 3, 360, 480)
    with pytest.raises(ValueError, match="exactly one value"):
        LatencyResult.from_samples(
            [1.0, 2.0], warmup_runs=0, provenance="estimated", fingerprint={}, input_shape=(1,)
        )


@pytest.mark.parametrize(
    ("samples", "message"),
    [
        ([], "at least one sample"),
        ([1.0, float("nan")], "positive and finite"),
        ([0.0], "positive"),
    ],
)
def test_unusable_samples_are_refused(samples, message) -> None:
    with pytest.raises(ValueError, match=message):
        measured(samples)


def test_round_trip_through_json_and_flags_unique() -> None:
    result = measured([1.0, 2.0, 3.0], flags=("high-variance", "high-variance", "x"))
    assert result.flags == ("high-variance", "x")
    again = LatencyResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert again == result
    assert again.provenance is Provenance.MEASURED_LOCAL
    assert result.with_flags("from-cache").flags == ("high-variance", "x", "from-cache")


def test_from_dict_names_the_broken_key() -> None:
    data = measured([1.0]).to_dict()
    del data["cv"]
    with pytest.raises(ValueError, match=r"missing keys \['cv'\]"):
        LatencyResult.from_dict(data)
    data = measured([1.0]).to_dict()
    data["provenance"] = "guessed"
    with pytest.raises(ValueError, match="'provenance' must be one of"):
        LatencyResult.from_dict(data)
    data = measured([1.0]).to_dict()
    data["colour"] = "blue"
    with pytest.raises(ValueError, match=r"unknown keys \['colour'\]"):
        LatencyResult.from_dict(data)


def test_fingerprint_key_uses_only_the_stable_keys() -> None:
    keys = ("cpu_model", "runtime", "threads")
    base = fingerprint_key("local cpu", FINGERPRINT, keys)
    assert base.startswith("local-cpu-")
    assert fingerprint_key("local cpu", {**FINGERPRINT, "hostname": "other"}, keys) == base
    assert fingerprint_key("local cpu", {**FINGERPRINT, "threads": 4}, keys) != base
    assert fingerprint_key("local cpu", dict(reversed(FINGERPRINT.items())), keys) == base


def test_measure_until_stable_keeps_the_steadiest_and_flags_it() -> None:
    noisy = [measured([1.0, 5.0]), measured([1.0, 3.0]), measured([1.0, 4.0])]
    calls = iter(noisy)
    result = measure_until_stable(lambda: next(calls), max_cv=0.05, retries=2)
    assert result.samples_ms == (1.0, 3.0)
    assert HIGH_VARIANCE_FLAG in result.flags

    steady = [measured([2.0, 2.1]), measured([1.0, 9.0])]
    calls = iter(steady)
    result = measure_until_stable(lambda: next(calls), max_cv=0.05, retries=2)
    assert result.samples_ms == (2.0, 2.1)  # stable at once: measured once only
    assert HIGH_VARIANCE_FLAG not in result.flags
    assert next(calls).samples_ms == (1.0, 9.0)


def test_provider_is_abstract_and_a_context_manager() -> None:
    with pytest.raises(TypeError):
        LatencyProvider()  # type: ignore[abstract]

    class Constant(LatencyProvider):
        kind = Provenance.ESTIMATED
        closed = False

        def measure(self, onnx_model, input_shape, *, config=None):
            return LatencyResult.from_samples(
                [1.0], warmup_runs=0, provenance=self.kind, fingerprint={}, input_shape=input_shape
            )

        def fingerprint(self):
            return {"kind": "constant"}

        def target_fingerprint_key(self):
            return "constant"

        def close(self):
            self.closed = True

    with Constant() as provider:
        assert provider.measure(b"", (1, 3, 4, 4)).is_estimate
    assert provider.closed
