"""Per-node profiles with onnxruntime and the layer-level (kernel) latency model built on them.

Profiles are real (onnxruntime's profiler in a child process, one thread, tiny inputs); the
model's fit is checked on synthetic nodes with known coefficients, and end to end through the
CLI on a real SQLite cache.
"""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from jetsearch.latency import LatencyCache, LatencyError
from jetsearch.latency.base import Provenance
from jetsearch.latency.estimate import (
    NODE_GROUPS,
    Calibration,
    EstimateProvider,
    FitQuality,
    LayerModel,
    NodeFeatures,
    ProfiledNetwork,
    RooflineParameters,
    _node_group,
    calibrate_layers,
    calibration_path,
    fit_layer_model,
    layer_networks,
    local_profile,
    nchwc_block,
    node_features,
    optimized_graph,
    profiled_network,
    record_layer_profile,
)
from jetsearch.latency.local import LayerProfile, LocalProvider, profile_layers
from jetsearch.space import load_space
from jetseg.config import JetSegConfig, arch_hash, dump_config, load_config
from jetseg.export import export_onnx
from jetseg.model import build_model

SHAPE = (1, 3, 64, 96)


@pytest.fixture(scope="module")
def configs() -> list[JetSegConfig]:
    return [load_config("nano"), *load_space("nano").random_configs(2, seed=5)]


@pytest.fixture(scope="module")
def onnx_models(configs: list[JetSegConfig]) -> list[bytes]:
    return [export_onnx(build_model(config), input_size=SHAPE[2:]) for config in configs]


@pytest.fixture(scope="module")
def profiles(onnx_models: list[bytes]) -> list[LayerProfile]:
    return [profile_layers(model, SHAPE, threads=1, runs=3, warmup_runs=1) for model in onnx_models]


# ---------------------------------------------------------------------------------------------
# profiling


def test_profile_times_every_node_of_the_optimised_graph(profiles: list[LayerProfile]) -> None:
    profile = profiles[0]
    assert profile.runs == 3 and len(profile.run_ms) == 3
    assert profile.input_shape == SHAPE and profile.threads == 1
    graph = onnx.load_from_string(profile.optimized_model).graph
    assert len(graph.node) == len(profile.nodes)
    assert {node.name for node in graph.node} - {""} <= {node.name for node in profile.nodes}
    ops = {node.op for node in profile.nodes}
    assert "Conv" in ops
    assert all(node.median_us >= 0 for node in profile.nodes)
    # The nodes do the work of a run: their sum is some of each run's wall time, never more.
    assert 0 < profile.node_total_ms <= max(profile.run_ms) * 1.05


def test_profile_rejects_a_model_that_is_not_onnx() -> None:
    with pytest.raises(LatencyError):
        profile_layers(b"not an onnx model", SHAPE, threads=1, runs=1)


def test_static_shapes_match_what_onnxruntime_ran(
    onnx_models: list[bytes], profiles: list[LayerProfile]
) -> None:
    """The features are computed without running; their shapes agree with the profile's."""
    for model, profile in zip(onnx_models, profiles, strict=True):
        listed = node_features(model, SHAPE, profile.optimized_model)
        assert len(listed) == len(profile.nodes)
        features = {f.name: f for f in listed}
        # onnxruntime names the nodes the saved graph leaves unnamed (a hard-swish's pieces).
        named = {node.name for node in profile.nodes} & set(features)
        assert len(named) >= 0.8 * len(listed)
        network = profiled_network(model, profile)
        assert sum(network.times_us) == pytest.approx(sum(n.median_us for n in profile.nodes))
        convs = [n for n in profile.nodes if n.op in ("Conv", "FusedConv")]
        assert convs
        for node in convs:
            if node.name not in features:
                continue
            weight = node.input_shapes[1]
            expected = 2.0 * math.prod(node.output_shapes[0]) * math.prod(weight[1:])
            assert features[node.name].flops == expected, node.name
        elementwise = [
            n
            for n in profile.nodes
            if n.op in ("Mul", "Add", "Relu", "Sigmoid") and n.name in features
        ]
        matching = [
            n for n in elementwise if features[n.name].flops == math.prod(n.output_shapes[0])
        ]
        assert len(matching) >= 0.9 * len(elementwise)


def test_features_of_the_graph_optimised_here_equal_the_profiled_graphs(
    onnx_models: list[bytes], profiles: list[LayerProfile]
) -> None:
    here = node_features(onnx_models[1], SHAPE, threads=1)
    profiled = node_features(onnx_models[1], SHAPE, profiles[1].optimized_model)

    # The same nodes and work; generated names (reorder tokens) may be dealt out differently.
    def work(features: list[NodeFeatures]) -> list[tuple]:
        return sorted(
            (f.op, f.group, f.nchwc, f.flops, f.act_bytes, f.weight_bytes) for f in features
        )

    assert work(here) == work(profiled)
    assert onnx.load_from_string(optimized_graph(onnx_models[1], threads=1)).graph.node


def _conv(weight: tuple[int, ...], groups: int) -> tuple[onnx.NodeProto, tuple[int, ...]]:
    node = helper.make_node("Conv", ["x", "w"], ["y"], group=groups)
    return node, weight


@pytest.mark.parametrize(
    ("weight", "groups", "group", "channels"),
    [
        ((32, 1, 3, 3), 32, "depthwise", (32, 32)),
        ((64, 1, 3, 1), 32, "multiplier", (32, 64)),
        ((48, 24, 1, 1), 1, "pointwise", (24, 48)),
        ((48, 6, 1, 1), 4, "grouped", (24, 48)),
        ((16, 3, 3, 3), 1, "conv", (3, 16)),
    ],
)
def test_convolutions_are_grouped_by_their_weights(
    weight: tuple[int, ...], groups: int, group: str, channels: tuple[int, int]
) -> None:
    node = helper.make_node("Conv", ["x", "w"], ["y"], group=groups)
    assert _node_group(node, weight) == (group, *channels)


@pytest.mark.parametrize(
    ("op", "group"),
    [
        ("Relu", "activation"),
        ("HardSigmoid", "activation"),
        ("ReduceMean", "attention"),
        ("ReduceMax", "attention"),
        ("Mul", "elementwise"),
        ("Resize", "resize"),
        ("Transpose", "shuffle"),
        ("Reshape", "shuffle"),
        ("Concat", "concat"),
        ("ReorderInput", "reorder"),
        ("Shape", "shape"),
    ],
)
def test_other_nodes_are_grouped_by_their_op(op: str, group: str) -> None:
    assert _node_group(helper.make_node(op, ["x"], ["y"]), None)[0] == group
    assert group in NODE_GROUPS


def test_channel_shuffle_and_nchwc_nodes_get_shapes() -> None:
    """A hand-made graph: a grouped conv, a channel shuffle (reshape-transpose), a dense conv."""
    channels, groups = 24, 4
    weights = [
        helper.make_tensor("w1", TensorProto.FLOAT, [channels, channels // groups, 1, 1],
                           np.ones(channels * channels // groups).tolist()),
        helper.make_tensor("w2", TensorProto.FLOAT, [32, channels, 3, 3],
                           np.ones(32 * channels * 9).tolist()),
        helper.make_tensor("s1", TensorProto.INT64, [5], [1, groups, channels // groups, 16, 16]),
        helper.make_tensor("s2", TensorProto.INT64, [4], [1, channels, 16, 16]),
    ]  # fmt: skip
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], group=groups, name="grouped"),
        helper.make_node("Reshape", ["a", "s1"], ["b"], name="split"),
        helper.make_node("Transpose", ["b"], ["c"], perm=[0, 2, 1, 3, 4], name="shuffle"),
        helper.make_node("Reshape", ["c", "s2"], ["d"], name="merge"),
        helper.make_node("Conv", ["d", "w2"], ["e"], pads=[1, 1, 1, 1], name="dense"),
        helper.make_node("Relu", ["e"], ["y"], name="relu"),
    ]
    graph = helper.make_graph(
        nodes,
        "shuffle",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32, 16, 16])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    features = node_features(model.SerializeToString(), (1, channels, 16, 16), threads=1)
    by_group: dict[str, list[NodeFeatures]] = {}
    for feature in features:
        by_group.setdefault(feature.group, []).append(feature)
    assert by_group["grouped"][0].flops == 2.0 * channels * 256 * (channels // groups)
    dense = [f for f in features if f.group == "conv"]
    # In the channel-blocked layout the input channels are padded to whole blocks: the
    # padded work is what runs.
    padded = -(-channels // nchwc_block()) * nchwc_block() if dense[0].nchwc else channels
    assert len(dense) == 1 and dense[0].flops == 2.0 * 32 * 256 * padded * 9
    assert dense[0].out_channels == 32 and dense[0].in_channels == padded
    assert len(by_group["shuffle"]) == 3
    # The Relu is fused into the dense convolution: it runs nothing of its own.
    assert "activation" not in by_group


# ---------------------------------------------------------------------------------------------
# the model


COEFFICIENTS = {
    "pointwise/nchwc": (0.02, 0.5, 0.3, 2.0),
    "grouped/nchw": (0.08, 1.2, 0.2, 3.0),
    "depthwise/nchwc": (0.05, 0.8, 0.1, 1.5),
    "activation": (0.0, 0.6, 0.0, 1.0),
    "reorder": (0.0, 1.5, 0.0, 0.5),
}


def synthetic_network(rng: random.Random, index: int, scale: float, constant: float):
    nodes = []
    for i in range(60):
        key = rng.choice(sorted(COEFFICIENTS))
        group, _, layout = key.partition("/")
        channels = rng.choice([8, 24, 40])  # never a multiple of 16: no alignment split
        nodes.append(
            NodeFeatures(
                name=f"n{index}_{i}",
                op="Conv" if layout else "Relu",
                group=group,
                nchwc=layout == "nchwc",
                flops=rng.uniform(0.1, 20.0) * 1e6,
                act_bytes=rng.uniform(0.05, 4.0) * 1e6,
                weight_bytes=rng.uniform(0.0, 0.5) * 1e6,
                in_channels=channels,
                out_channels=channels,
            )
        )
    truth = LayerModel(COEFFICIENTS)  # type: ignore[arg-type]
    times = tuple(truth.node_us(node) for node in nodes)
    total = scale * sum(times) / 1e3 + constant
    return ProfiledNetwork(f"net{index}", tuple(nodes), times, total)


def test_layer_model_recovers_known_coefficients() -> None:
    rng = random.Random(0)
    networks = [synthetic_network(rng, i, 1.3, 0.4) for i in range(6)]
    model = fit_layer_model(networks)
    for key, expected in COEFFICIENTS.items():
        assert np.allclose(model.coefficients[key], expected, rtol=1e-4, atol=1e-6), key
    assert model.scale == pytest.approx(1.3, rel=1e-4)
    assert model.constant_ms == pytest.approx(0.4, rel=1e-3)
    held_out = synthetic_network(rng, 99, 1.3, 0.4)
    assert model.network_ms(held_out.nodes) == pytest.approx(held_out.measured_ms, rel=1e-4)
    # A node of a group the fit never saw falls back to the pooled coefficients, never to 0.
    stranger = NodeFeatures("x", "Resize", "resize", False, 1e6, 1e6, 0.0, 8, 8)
    assert model.node_us(stranger) > 0


def test_layer_model_fits_real_profiles_in_sample(
    onnx_models: list[bytes], profiles: list[LayerProfile]
) -> None:
    networks = [
        profiled_network(model, profile, name=str(i))
        for i, (model, profile) in enumerate(zip(onnx_models, profiles, strict=True))
    ]
    model = fit_layer_model(networks, weighting=0.0)
    for network in networks:
        measured = sum(network.times_us) / 1e3
        assert model.network_ms(network.nodes) == pytest.approx(measured, rel=0.25)


def test_layer_calibration_round_trips_and_old_files_still_load(tmp_path: Path) -> None:
    rng = random.Random(1)
    networks = [synthetic_network(rng, i, 1.0, 0.0) for i in range(4)]
    calibration = calibrate_layers(networks, "local", target_key="local-key", threads=1)
    assert calibration.kind == "layers" and calibration.parameters is None
    assert calibration.fit.within_10pct == 1.0
    loaded = Calibration.load(calibration.save(tmp_path / "c.json"))
    assert loaded == calibration
    # A roofline calibration written before layer calibrations existed (no "kind") loads.
    roofline_calibration = Calibration(
        profile="local",
        precision="fp32",
        parameters=RooflineParameters.from_profile(local_profile(1)),
        fit=FitQuality.of([1.0, 2.0], [1.0, 2.1]),
    )
    old = roofline_calibration.to_dict()
    del old["kind"]
    assert Calibration.from_dict(old) == roofline_calibration
    data = calibration.to_dict()
    del data["layers"]
    with pytest.raises(ValueError, match="missing key 'layers'"):
        Calibration.from_dict(data)
    data = calibration.to_dict()
    data["layers"]["coefficients"]["activation"] = [1.0]
    with pytest.raises(ValueError, match="'activation' must hold 4 numbers"):
        Calibration.from_dict(data)


# ---------------------------------------------------------------------------------------------
# the provider, the cache and the command line


def test_provider_estimates_from_the_onnx_graph_with_a_layer_calibration(
    tmp_path: Path, onnx_models: list[bytes], profiles: list[LayerProfile]
) -> None:
    networks = [
        profiled_network(model, profile, measured_ms=1.2 * profile.node_total_ms)
        for model, profile in zip(onnx_models, profiles, strict=True)
    ]
    calibration = calibrate_layers(networks, local_profile(1), threads=1)
    provider = EstimateProvider("local", calibration=calibration)
    result = provider.measure(onnx_models[0], SHAPE)  # no config needed: the graph is enough
    assert result.provenance is Provenance.ESTIMATED
    assert result.flags == ("estimate", "calibrated")
    assert result.fingerprint["model"] == "layers"
    expected = calibration.layers.network_ms(node_features(onnx_models[0], SHAPE, threads=1))
    assert result.median_ms == pytest.approx(expected)
    explained = provider.explain(load_config("nano"), SHAPE[2:])
    assert explained.total_ms == pytest.approx(expected, rel=1e-6)
    assert {"reorder", "shape"} & set(explained.by_group())


def test_cache_keeps_layer_tables_with_their_measured_totals(
    tmp_path: Path, onnx_models: list[bytes], profiles: list[LayerProfile], configs
) -> None:
    cache_path = tmp_path / "lat.sqlite"
    cache = LatencyCache(cache_path)
    provider = LocalProvider(threads=1, warmup_s=0.0, min_runs=2, max_runs=2, target_s=0.0)
    key = provider.target_fingerprint_key()
    measured = provider.measure(onnx_models[0], SHAPE)
    cache.put(arch_hash(configs[0]), SHAPE, key, measured, extra={})
    for config, model, profile in zip(configs, onnx_models, profiles, strict=True):
        network = profiled_network(model, profile, name=config.name)
        record_layer_profile(cache_path, arch_hash(config), SHAPE, key, network)
    networks, skipped = layer_networks(cache_path, key)
    assert not skipped and len(networks) == 3
    by_name = {network.name: network for network in networks}
    assert by_name[configs[0].name].measured_ms == measured.median_ms
    assert by_name[configs[1].name].measured_ms is None
    assert (
        by_name[configs[1].name].times_us == profiled_network(onnx_models[1], profiles[1]).times_us
    )
    assert layer_networks(cache_path, "another-target") == ([], [])


def run(argv: list[str]) -> int:
    from jetsearch.cli import main

    return main(argv)


def test_cli_measures_layers_and_calibrates_on_them(
    tmp_path: Path, configs: list[JetSegConfig], capsys: pytest.CaptureFixture[str]
) -> None:
    cache_path = tmp_path / "lat.sqlite"
    common = ["--size", "64x96", "--runs", "3", "--warmup", "0", "--threads", "1"]
    for i, config in enumerate(configs):
        path = tmp_path / f"net{i}.yaml"
        path.write_text(dump_config(config))
        argv = ["latency", "measure", str(path), *common, "--layers", "--cache", str(cache_path)]
        assert run(argv) == 0
    assert "per-node table" in capsys.readouterr().out
    assert run(["latency", "calibrate", "--profile", "local", "--cache", str(cache_path)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"3 per-node tables of target\s+local-cpu-fp32-t1", out), out
    saved = json.loads(calibration_path(cache_path, "local", "fp32").read_text())
    assert saved["kind"] == "layers" and saved["threads"] == 1
    argv = ["latency", "estimate", str(tmp_path / "net0.yaml"), "--profile", "local"]
    assert run([*argv, "--size", "64x96", "--cache", str(cache_path)]) == 0
    assert "per-node layer model" in capsys.readouterr().out
    # --totals still fits the roofline to the same measurements.
    argv = ["latency", "calibrate", "--profile", "local", "--cache", str(cache_path), "--totals"]
    assert run(argv) == 0
    saved = json.loads(calibration_path(cache_path, "local", "fp32").read_text())
    assert saved["kind"] == "roofline"


def test_cli_layers_needs_the_local_cpu_provider(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["latency", "measure", "nano", "--layers", "--provider", "worker"]
    assert run([*argv, "--cache", str(tmp_path / "c.sqlite")]) == 2
    assert "--layers profiles onnxruntime's nodes" in capsys.readouterr().err
    assert run(["latency", "measure", "nano", "--layers", "--cache", ""]) == 2
    assert "give --cache FILE" in capsys.readouterr().err


def test_fit_quality_of_layer_calibration_uses_measured_totals() -> None:
    rng = random.Random(2)
    networks = [synthetic_network(rng, i, 1.0, 0.0) for i in range(3)]
    skewed = [
        ProfiledNetwork(n.name, n.nodes, n.times_us, n.measured_ms * (1.5 if i == 0 else 1.0))
        for i, n in enumerate(networks)
    ]
    calibration = calibrate_layers(skewed, "local")
    predicted = [calibration.layers.network_ms(n.nodes) for n in skewed]
    assert calibration.fit == FitQuality.of(predicted, [n.measured_ms for n in skewed])
