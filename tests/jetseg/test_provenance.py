"""Derived presets: found by name on the preset path, their provenance block read back."""

from __future__ import annotations

import pytest

import jetseg
from jetseg.config import (
    PRESET_PATH_ENV,
    ConfigError,
    dump_config,
    load_config,
    preset_dirs,
    preset_names,
    provenance_header,
    read_provenance,
)


def _derived(directory, name="mine-found", provenance=None):
    config = load_config({**_nano_dict(), "name": name})
    text = provenance_header(
        provenance or {"study": "s", "beat": {"preset": "nano", "p_value": 0.03}, "seeds": [0, 1]},
        ["mine-found: a network found by a study.", "", "second line"],
    )
    path = directory / f"{name}.yaml"
    path.write_text(text + "\n" + dump_config(config))
    return path


def _nano_dict():
    from jetseg.config import config_to_dict

    return config_to_dict(load_config("nano"))


def test_the_provenance_block_round_trips_and_the_config_loads_unchanged(tmp_path):
    prov = {
        "study": "nano",
        "recipe": "a long line " * 12,  # folded over several comment lines by the YAML dump
        "heldout_miou": {"mean": 0.4312, "sd": 0.0121, "seeds": [0.42, 0.44, 0.43]},
        "latency": {"measured": True, "input_size": (360, 480)},
    }
    path = _derived(tmp_path, provenance=prov)
    text = path.read_text()
    assert text.startswith("# mine-found: a network found by a study.\n#\n# second line\n")
    assert "#   heldout_miou:\n#     mean: 0.4312" in text
    assert read_provenance(path) == {
        **prov,
        "latency": {"measured": True, "input_size": [360, 480]},
    }
    assert load_config(str(path)).name == "mine-found"
    assert read_provenance(jetseg.config.config_file("nano")) is None


def test_a_broken_provenance_block_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("# a derived preset\n# provenance:\n#   study: [unclosed\nname: bad\n")
    with pytest.raises(ConfigError, match=r"provenance block \(.*bad.yaml\)") as err:
        read_provenance(bad)
    assert "line 3" in str(err.value)  # the file's line, not the block's
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("# provenance:\n#   - a list\nname: scalar\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        read_provenance(scalar)


def test_presets_on_the_preset_path_are_listed_and_load_by_name(tmp_path, monkeypatch):
    _derived(tmp_path)
    monkeypatch.delenv(PRESET_PATH_ENV, raising=False)
    assert "mine-found" not in preset_names()
    with pytest.raises(FileNotFoundError, match="neither a config file nor a built-in preset"):
        load_config("mine-found")
    # A shadowing file cannot replace a paper preset: the built-in folder comes first.
    (tmp_path / "nano.yaml").write_text("name: nano\nnum_classes: 3\n")
    monkeypatch.setenv(PRESET_PATH_ENV, f"{tmp_path}:{tmp_path / 'missing'}:")
    assert preset_dirs()[1:] == [tmp_path, tmp_path / "missing"]
    assert preset_names() == ["agx", "mine-found", "nano", "workstation"]
    assert jetseg.list_presets("mine-*") == ["mine-found"]
    assert load_config("mine-found").name == "mine-found"
    assert load_config("nano").num_classes == 11
    assert jetseg.preset_provenance("mine-found")["beat"] == {"preset": "nano", "p_value": 0.03}
