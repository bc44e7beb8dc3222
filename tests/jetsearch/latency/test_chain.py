"""make_provider's one precision rule, and LatencyChain: order, fall-through, skipping, a study.

Everything is real: onnxruntime here, worker processes on loopback, a SQLite cache, and one
whole (tiny) study whose stored trial must say that fp32 stood in for the fp16 it asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from latency_cases import SHAPE, WARMUP_S, WorkerProcess, conv_relu_resize_model

from jetsearch.latency import (
    PRECISION_FALLBACK_FLAG,
    CachedProvider,
    EstimateProvider,
    FlaggedProvider,
    LatencyCache,
    LatencyChain,
    LatencyError,
    LocalProvider,
    ProviderSetupError,
    ProviderSpec,
    RemotePool,
    make_provider,
    resolve_precision,
)
from jetsearch.run import run_study
from jetsearch.spec import load_study_spec
from jetsearch.storage import open_storage
from jetseg.config import arch_hash, load_config

REPO = Path(__file__).resolve().parents[3]
NANO = load_config("nano")


def study_file(directory: Path, **latency: Any) -> Path:
    """``studies/local.yaml`` made tiny (trials of a second or two), `latency` merged in."""
    data = yaml.safe_load((REPO / "studies" / "local.yaml").read_text())
    data.update(
        space="tiny",
        synthetic={"train_images": 8, "val_images": 4},
        train={"epochs": 1, "size": [48, 64], "batch_size": 8, "threads": 1},
        enqueue_presets=[],
    )
    data["latency"].update(
        input_size=[64, 64],
        budget_ms=1000,
        runs=5,
        warmup_s=WARMUP_S,
        threads=1,
        cache=str(directory / "latency.sqlite"),
        **latency,
    )
    path = directory / "small.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# ---------------------------------------------------------------------------------------------
# the precision rule


@pytest.mark.parametrize(
    ("kind", "settings", "expected"),
    [
        ("local", {}, ("fp32", False)),
        ("local", {"precision": "fp32"}, ("fp32", False)),
        ("local", {"precision": "fp16"}, ("fp32", True)),
        ("local", {"precision": "fp16", "execution_provider": "cuda"}, ("fp16", False)),
        ("estimate", {"device_profile": "local", "precision": "fp16"}, ("fp32", True)),
        ("estimate", {"device_profile": "local"}, ("fp32", False)),
        ("estimate", {"target": "agx"}, ("fp16", False)),
        ("estimate", {"target": "agx", "precision": "fp32"}, ("fp32", False)),
        ("workers", {}, (None, False)),
        ("workers", {"precision": "fp16"}, ("fp16", False)),
    ],
)
def test_one_precision_rule_for_every_kind(
    kind: str, settings: dict[str, Any], expected: tuple[str | None, bool]
) -> None:
    assert resolve_precision(kind, ProviderSpec(**settings)) == expected


def test_unknown_kind_and_missing_profile_are_refused() -> None:
    with pytest.raises(ValueError, match="must be one of \\['workers', 'local', 'estimate'\\]"):
        make_provider("gpu", ProviderSpec())
    with pytest.raises(ValueError, match="needs a device profile"):
        make_provider("estimate", ProviderSpec())


def test_fp16_on_the_cpu_is_fp32_flagged_outside_the_cache(tmp_path: Path) -> None:
    cache_path = tmp_path / "latency.sqlite"
    spec = ProviderSpec(
        precision="fp16", threads=1, warmup_s=WARMUP_S, runs=3, cache=str(cache_path)
    )
    provider = make_provider("local", spec)
    assert isinstance(provider, FlaggedProvider) and "no fast fp16" in provider.note
    assert isinstance(provider.provider, CachedProvider)
    local = provider.provider.provider
    assert isinstance(local, LocalProvider) and local.precision == "fp32"
    assert (local.threads, local.min_runs, local.max_runs) == (1, 3, 3)

    result = provider.measure(conv_relu_resize_model(0), SHAPE, config=NANO)
    assert PRECISION_FALLBACK_FLAG in result.flags and result.fingerprint["precision"] == "fp32"
    stored = LatencyCache(cache_path).get(arch_hash(NANO), SHAPE, local.target_fingerprint_key())
    assert stored is not None and PRECISION_FALLBACK_FLAG not in stored.flags
    # The key is the fp32 setup's: an fp32 request shares the entry, and is not flagged.
    plain = make_provider("local", ProviderSpec(**{**vars(spec), "precision": "fp32"}))
    assert plain.target_fingerprint_key() == provider.target_fingerprint_key()
    again = plain.measure(conv_relu_resize_model(0), SHAPE, config=NANO)
    assert "from-cache" in again.flags and PRECISION_FALLBACK_FLAG not in again.flags


@pytest.mark.slow
def test_an_estimate_is_never_cached_and_reads_its_calibration_beside_the_cache(
    tmp_path: Path,
) -> None:
    spec = ProviderSpec(target="local", precision="fp16", cache=str(tmp_path / "lat.sqlite"))
    provider = make_provider("estimate", spec)
    assert isinstance(provider, FlaggedProvider)
    estimate = provider.provider
    assert isinstance(estimate, EstimateProvider) and estimate.precision == "fp32"
    assert estimate.calibration_file is not None
    assert estimate.calibration_file.parent == tmp_path
    result = provider.measure(conv_relu_resize_model(0), SHAPE, config=NANO)
    assert result.is_estimate and {"estimate", PRECISION_FALLBACK_FLAG} <= set(result.flags)
    assert not (tmp_path / "lat.sqlite").exists()
    agx = make_provider("estimate", ProviderSpec(device_profile="agx", cache=spec.cache))
    assert isinstance(agx, EstimateProvider) and agx.precision == "fp16"


def test_workers_need_urls_token_and_target(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("secret\n")
    empty = tmp_path / "empty"
    empty.write_text(" \n")
    cases = [
        ({}, "needs --workers"),
        ({"workers": ("http://127.0.0.1:9",)}, "needs --token-file"),
        ({"workers": ("http://127.0.0.1:9",), "token_file": str(token)}, "needs --target"),
        (
            {"workers": ("http://x:1",), "token_file": str(tmp_path / "no"), "target": "agx"},
            "token file .*no does not exist",
        ),
        ({"workers": ("http://x:1",), "token_file": str(empty), "target": "agx"}, "is empty"),
    ]
    for settings, message in cases:
        with pytest.raises(ProviderSetupError, match=message) as caught:
            make_provider("workers", ProviderSpec(**settings))
        assert isinstance(caught.value, ValueError)  # bad input, reported as such


def test_workers_get_the_spec_protocol_and_precision(
    shared_worker: WorkerProcess, tmp_path: Path
) -> None:
    token = tmp_path / "token"
    token.write_text(shared_worker.token)
    spec = ProviderSpec(
        target="agx",
        workers=(shared_worker.url,),
        token_file=str(token),
        warmup_s=0.2,
        runs=7,
        precision="fp32",
    )
    with make_provider("workers", spec) as pool:
        assert isinstance(pool, RemotePool)
        assert (pool.precision, pool.warmup_s, pool.runs) == ("fp32", 0.2, 7)
    # A worker that cannot measure the precision asked is refused, never used at another one.
    with pytest.raises(LatencyError, match="cannot measure fp16"):
        make_provider("workers", ProviderSpec(**{**vars(spec), "precision": "fp16"}))


# ---------------------------------------------------------------------------------------------
# the chain


@pytest.mark.slow
def test_chain_falls_through_to_the_next_provider(
    tmp_path: Path, worker_factory: Callable[..., WorkerProcess]
) -> None:
    board = worker_factory(target="local")  # the study's target
    token = tmp_path / "token"
    token.write_text(board.token)
    path = study_file(
        tmp_path,
        providers=["workers", "estimate"],
        workers=[board.url],
        token_file=str(token),
        precision="fp32",
        device_profile="agx",
    )
    chain = LatencyChain(load_study_spec(path))  # the real StudySpec, as a study builds it
    try:
        assert [kind for kind, _ in chain.providers] == ["workers", "estimate"]
        config = load_config("nano")
        model = conv_relu_resize_model(0)
        result, errors = chain.measure(model, config)
        assert result.provenance.value == "measured-remote" and errors == []
        assert result.input_shape == (1, config.in_channels, 64, 64)
        cache = LatencyCache(tmp_path / "latency.sqlite")
        assert arch_hash(config) in cache.configs()  # recorded for calibration

        board.kill()  # the board goes away: the estimate answers, and the reason is kept
        result, errors = chain.measure(model, load_config("agx"))
        assert result.is_estimate
        assert len(errors) == 1 and errors[0].startswith("workers: ")
    finally:
        chain.close()


def test_chain_skips_what_cannot_be_set_up_and_fails_with_every_reason(tmp_path: Path) -> None:
    path = study_file(tmp_path, providers=["workers", "local"], workers=["http://127.0.0.1:9"])
    chain = LatencyChain(load_study_spec(path))
    try:
        assert [kind for kind, _ in chain.providers] == ["local"]
        assert len(chain.skipped) == 1 and chain.skipped[0].startswith("workers: ")
        assert "needs --token-file" in chain.skipped[0]
        assert chain.describe().startswith("local (skipped: workers: ")
        with pytest.raises(LatencyError, match="every latency provider failed: local: .*ONNX"):
            chain.measure(b"not a model", NANO)
    finally:
        chain.close()

    path = study_file(tmp_path, providers=["workers"], workers=[])
    with pytest.raises(ProviderSetupError, match="no latency provider is usable: workers: "):
        LatencyChain(load_study_spec(path))


@pytest.mark.slow
def test_a_study_stores_that_fp32_stood_in_for_fp16(tmp_path: Path) -> None:
    path = study_file(tmp_path, providers=["local"], precision="fp16")
    spec = load_study_spec(path)
    storage = tmp_path / "studies.log"
    run = run_study(spec, trials=1, storage=str(storage))
    assert PRECISION_FALLBACK_FLAG in run.latency_sources and "no fast fp16" in run.latency_sources
    study = optuna.load_study(study_name=spec.name, storage=open_storage(str(storage)))
    [trial] = study.trials
    assert PRECISION_FALLBACK_FLAG in trial.user_attrs["latency_flags"]
    assert trial.user_attrs["precision"] == "fp32"
    assert trial.user_attrs["latency_source"] == "measured-local"
