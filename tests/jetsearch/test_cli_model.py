"""`jetsearch model show|count|export` as a user runs it, in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys

import onnx
import pytest
import yaml

# Every test starts the console script in a subprocess.
pytestmark = pytest.mark.slow


def _run(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "jetsearch.cli", *args], capture_output=True, text=True, cwd=cwd
    )


def test_model_show_prints_a_per_stage_table(tmp_path):
    out = _run("model", "show", "nano", "--size", "512x512", "--json", str(tmp_path / "n.json"))
    assert out.returncode == 0, out.stderr
    for word in ("S0 stem", "S1", "S2", "S3", "decoder", "total", "params", "MACs", "cbam"):
        assert word in out.stdout
    counts = json.loads((tmp_path / "n.json").read_text())
    assert 30_000 <= counts["params"] <= 35_000
    assert f"{counts['params']:,}" in out.stdout
    assert counts["input_size"] == [512, 512]


def test_model_count_with_layers_lists_every_layer():
    out = _run("model", "count", "agx", "--layers", "--size", "64x64")
    assert out.returncode == 0, out.stderr
    assert "per layer" in out.stdout and "encoder.stages.2.0.jetconv.dw_h" in out.stdout


def test_model_export_writes_a_dynamic_onnx_file_from_a_yaml_path(tmp_path):
    from jetseg.config import config_to_dict, load_config

    data = config_to_dict(load_config("nano"))
    data["stages"][0]["activation"] = "silu"
    cfg = tmp_path / "mine.yaml"
    cfg.write_text(yaml.safe_dump(data))
    target = tmp_path / "mine.onnx"
    out = _run("model", "export", str(cfg), "-o", str(target), "--size", "96x128")
    assert out.returncode == 0, out.stderr
    assert "parity" in out.stdout
    proto = onnx.load(str(target))
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims] == ["batch", "", "height", "width"]
    assert proto.opset_import[0].version >= 17


def test_bad_config_exits_2_with_the_key_path(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("stages:\n  - {width: 16, jetconv: {branches: [{kernel: 4}]}}\n")
    out = _run("model", "show", str(cfg))
    assert out.returncode == 2
    assert "stages[0].jetconv.branches[0].kernel: 4 is not one of 3, 5, 7" in out.stderr
    missing = _run("model", "show", "no-such-preset")
    assert missing.returncode == 2 and "built-in preset" in missing.stderr
