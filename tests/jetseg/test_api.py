"""The top-level API: build_model from any source, list_presets, versions, a light import."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import torch

import jetsearch
import jetseg
from jetseg.config import ConfigError, JetSegConfig, arch_hash, config_to_dict, load_config
from jetseg.model import JetSeg

REPO_ROOT = Path(__file__).resolve().parents[2]
PRESETS_DIR = REPO_ROOT / "jetseg" / "presets"


def run_python(code: str, *flags: str, root: Path = REPO_ROOT) -> str:
    """Run ``code`` in a fresh interpreter that imports the checkout at ``root``; its stdout."""
    done = subprocess.run(
        [sys.executable, *flags, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_list_presets_names_every_preset_file_sorted():
    names = jetseg.list_presets()
    assert names == sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))
    assert {"nano", "agx", "workstation"} <= set(names)


def test_list_presets_filters_with_a_pattern():
    assert jetseg.list_presets("n*") == ["nano"]
    assert jetseg.list_presets("*station") == ["workstation"]
    assert jetseg.list_presets("resnet*") == []


@pytest.mark.parametrize("kind", ["name", "yaml_str", "yaml_path", "mapping", "config"])
def test_build_model_takes_every_kind_of_source(kind):
    expected = load_config("nano")
    source = {
        "name": "nano",
        "yaml_str": str(PRESETS_DIR / "nano.yaml"),
        "yaml_path": PRESETS_DIR / "nano.yaml",
        "mapping": config_to_dict(expected),
        "config": expected,
    }[kind]
    model = jetseg.build_model(source)
    assert isinstance(model, JetSeg)
    assert model.config == expected and arch_hash(model.config) == arch_hash(expected)
    torch.manual_seed(0)
    with torch.no_grad():
        out = model.eval()(torch.randn(1, 3, 32, 48))
    assert out.shape == (1, expected.num_classes, 32, 48)


def test_build_model_applies_validated_overrides():
    model = jetseg.build_model("nano", num_classes=19, name="nano19")
    assert model.config.num_classes == 19 and model.config.name == "nano19"
    assert model.config.stages == load_config("nano").stages
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 32, 32)).shape[1] == 19
    with pytest.raises(ConfigError, match=r"num_clases: unknown key.*num_classes"):
        jetseg.build_model("nano", num_clases=19)
    with pytest.raises(ConfigError, match="num_classes"):
        jetseg.build_model("nano", num_classes=0)


def test_build_model_refuses_other_types_and_unknown_names():
    with pytest.raises(TypeError, match="preset name, a YAML path, a mapping or a JetSegConfig"):
        jetseg.build_model(42)
    with pytest.raises(FileNotFoundError, match="neither a config file nor a built-in preset"):
        jetseg.build_model("resnet50")


def test_lazy_names_are_the_module_objects():
    assert jetseg.load_config is load_config
    assert jetseg.JetSegConfig is JetSegConfig
    assert jetseg.ConfigError is ConfigError
    from jetseg.export import export_onnx

    assert jetseg.export_onnx is export_onnx
    assert {"build_model", "list_presets", "load_config", "__version__"} <= set(dir(jetseg))
    with pytest.raises(AttributeError, match="no attribute 'create_model'"):
        jetseg.create_model  # noqa: B018


def test_version_comes_from_the_installed_distribution():
    assert jetseg.__version__ == metadata.version("jetsearch")
    assert jetsearch.__version__ == jetseg.__version__
    assert re.fullmatch(r"\d+\.\d+(\.\d+)?\S*", jetseg.__version__)


def test_version_falls_back_to_pyproject_when_not_installed(tmp_path):
    # A copy of the sources without the *.egg-info an editable install leaves in the checkout,
    # and -S to leave site-packages off sys.path: no distribution metadata can be found.
    for name in ("jetseg", "jetsearch"):
        shutil.copytree(REPO_ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("*.pyc"))
    shutil.copy(REPO_ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    out = run_python(
        "from importlib import metadata\n"
        "try:\n"
        "    metadata.version('jetsearch')\n"
        "    installed = True\n"
        "except metadata.PackageNotFoundError:\n"
        "    installed = False\n"
        "import jetseg, jetsearch, json\n"
        "print(json.dumps([installed, jetseg.__version__, jetsearch.__version__]))",
        "-S",
        root=tmp_path,
    )
    installed, jetseg_version, jetsearch_version = json.loads(out)
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    declared = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert not installed
    assert jetseg_version == jetsearch_version == declared


def test_import_is_light_and_building_does_not_load_onnx():
    out = run_python(
        "import sys, json, jetseg, jetsearch\n"
        "heavy = ('torch', 'yaml', 'onnx', 'onnxruntime', 'numpy', 'optuna')\n"
        "after_import = [m for m in heavy if m in sys.modules]\n"
        "presets = jetseg.list_presets()\n"
        "after_list = [m for m in heavy if m in sys.modules]\n"
        "jetseg.build_model('nano')\n"
        "after_build = [m for m in heavy if m in sys.modules]\n"
        "print(json.dumps([after_import, after_list, after_build, presets]))"
    )
    after_import, after_list, after_build, presets = json.loads(out)
    assert after_import == []
    assert after_list == ["yaml"] and "nano" in presets
    assert "torch" in after_build
    assert "onnx" not in after_build and "onnxruntime" not in after_build
