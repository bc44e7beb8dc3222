"""ONNX export: metadata, the static class dimension, simplification and its parity check."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import yaml
from jetseg_cases import TINY_CONFIG, randomize_bn

import jetseg
from jetseg.config import arch_hash, load_config
from jetseg.data import CAMVID_CLASSES
from jetseg.export import (
    INPUT_NAME,
    OUTPUT_NAME,
    ExportError,
    check_parity,
    check_simplified,
    check_standard_ops,
    export_onnx,
    read_metadata,
)
from jetseg.model import build_model

SIZE = (64, 96)


def shape_of(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def op_counts(data: bytes) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in onnx.load_from_string(data).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def run(data: bytes, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]


@pytest.fixture(scope="module")
def nano():
    torch.manual_seed(0)
    model = build_model("nano").eval()
    randomize_bn(model)  # running statistics away from (0, 1), so folding them matters
    return model


@pytest.fixture(scope="module")
def exported(nano) -> tuple[bytes, bytes]:
    """(simplified, as traced) exports of the same network."""
    return export_onnx(nano, input_size=SIZE), export_onnx(nano, input_size=SIZE, simplify=False)


def test_metadata_names_the_network_for_onnxruntime(nano, exported):
    simplified, _ = exported
    meta = ort.InferenceSession(simplified, providers=["CPUExecutionProvider"]).get_modelmeta()
    props = meta.custom_metadata_map
    assert props["arch_hash"] == arch_hash(nano.config)
    assert props["jetseg_version"] == jetseg.__version__
    assert props["graph_optimization"].startswith(f"onnxruntime {ort.__version__}")
    assert meta.producer_name == "jetseg"
    # The YAML rebuilds exactly the exported network.
    rebuilt = load_config(yaml.safe_load(props["config"]))
    assert rebuilt == nano.config and arch_hash(rebuilt) == props["arch_hash"]


def test_read_metadata_decodes_the_values(nano, exported):
    simplified, traced = exported
    meta = read_metadata(simplified)
    assert meta["class_names"] == list(CAMVID_CLASSES)
    assert meta["num_classes"] == nano.config.num_classes == len(CAMVID_CLASSES)
    assert meta["input_size"] == SIZE
    assert read_metadata(traced)["graph_optimization"] == "none"
    assert {k: v for k, v in read_metadata(traced).items() if k != "graph_optimization"} == {
        k: v for k, v in meta.items() if k != "graph_optimization"
    }


def test_metadata_of_a_file_on_disk_matches_the_returned_bytes(nano, tmp_path):
    path = tmp_path / "out" / "tiny.onnx"
    tiny = build_model(load_config(TINY_CONFIG))
    data = export_onnx(tiny, path, input_size=(32, 48))
    assert path.read_bytes() == data
    assert [p.name for p in path.parent.iterdir()] == ["tiny.onnx"]  # no temporary left
    meta = read_metadata(path)
    assert meta["arch_hash"] == arch_hash(tiny.config) != arch_hash(nano.config)
    assert meta["input_size"] == (32, 48)


def test_class_names_given_or_generic():
    config = load_config({**TINY_CONFIG, "num_classes": 3})
    model = build_model(config)
    named = export_onnx(model, input_size=(32, 32), class_names=["road", "car", "person"])
    assert read_metadata(named)["class_names"] == ["road", "car", "person"]
    generic = export_onnx(model, input_size=(32, 32))
    assert read_metadata(generic)["class_names"] == ["class_0", "class_1", "class_2"]
    with pytest.raises(ValueError, match="class_names must be 3 non-empty strings"):
        export_onnx(model, input_size=(32, 32), class_names=["road", "car"])


def test_export_needs_the_config():
    bare = build_model("nano")
    del bare.config
    with pytest.raises(ValueError, match="needs the network's JetSegConfig"):
        export_onnx(bare, input_size=(32, 32))
    # Given explicitly, it exports.
    data = export_onnx(bare, input_size=(32, 32), config=load_config("nano"))
    assert read_metadata(data)["arch_hash"] == arch_hash(load_config("nano"))


@pytest.mark.parametrize("which", ["simplified", "traced"])
def test_class_dimension_is_static_and_the_rest_dynamic(exported, which):
    proto = onnx.load_from_string(exported[0 if which == "simplified" else 1])
    assert shape_of(proto.graph.input[0]) == ["batch", 3, "height", "width"]
    assert shape_of(proto.graph.output[0]) == ["batch", 11, "height", "width"]


def test_class_dimension_follows_the_config():
    model = build_model(load_config({**TINY_CONFIG, "num_classes": 5})).eval()
    data = export_onnx(model, input_size=(32, 48))
    assert shape_of(onnx.load_from_string(data).graph.output[0]) == [
        "batch",
        5,
        "height",
        "width",
    ]
    # The declared shape is the one onnxruntime produces, at another batch and size.
    assert run(data, np.zeros((2, 3, 40, 56), np.float32)).shape == (2, 5, 40, 56)


def test_simplified_graph_is_smaller_without_identities_and_standard(exported):
    simplified, traced = exported
    before, after = op_counts(traced), op_counts(simplified)
    assert sum(after.values()) <= sum(before.values())
    assert "Identity" not in after
    assert after.get("Conv") == before.get("Conv")  # every convolution is still there
    check_standard_ops(simplified)
    proto = onnx.load_from_string(simplified)
    # onnxruntime declares all its domains in the files it writes; only ai.onnx is used.
    assert [(op.domain, op.version) for op in proto.opset_import] == [("", 17)]


def test_simplified_graph_matches_the_traced_one_and_pytorch(nano, exported):
    simplified, traced = exported
    rng = np.random.default_rng(1)
    for shape in [(1, 3, *SIZE), (2, 3, 75, 101)]:
        x = rng.standard_normal(shape, dtype=np.float32)
        expected, got = run(traced, x), run(simplified, x)
        assert float(expected.std()) > 1e-3  # the outputs are not constants
        assert float(np.abs(got - expected).max()) <= 1e-4
    assert check_simplified(traced, simplified, (1, 3, 48, 64)) <= 1e-4
    diffs = check_parity(nano, simplified, sizes=[(96, 128), (75, 101)], batch=2, atol=1e-4)
    assert max(diffs.values()) <= 1e-4


def test_a_graph_that_computes_something_else_is_refused(exported):
    _, traced = exported
    # Same input and output names and shapes, different weights: what a wrong rewrite gives.
    torch.manual_seed(1)
    other = export_onnx(build_model("nano"), input_size=SIZE, simplify=False)
    with pytest.raises(ExportError, match=r"changed its outputs: max abs difference .* > 1e-04"):
        check_simplified(traced, other, (1, 3, 48, 64))
    tiny = load_config({**TINY_CONFIG, "num_classes": 5})
    fewer = export_onnx(build_model(tiny), input_size=SIZE, simplify=False)
    with pytest.raises(ExportError, match=r"changed its output shape"):
        check_simplified(traced, fewer, (1, 3, 48, 64))


def test_input_size_and_channels_are_checked_before_tracing(nano):
    with pytest.raises(ValueError, match=r"input_size must be \(height, width\) as positive ints"):
        export_onnx(nano, input_size=(64.0, 96))
    with pytest.raises(ValueError, match="in_channels=1 does not match the config's in_channels=3"):
        export_onnx(nano, input_size=SIZE, in_channels=1)
