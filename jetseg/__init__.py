"""JetSeg real-time segmentation networks: the short public API.

    >>> import jetseg
    >>> jetseg.list_presets()
    ['agx', 'nano', 'workstation']
    >>> model = jetseg.build_model("nano")                    # a preset name
    >>> model = jetseg.build_model("found.yaml")              # a YAML path
    >>> model = jetseg.build_model("nano", num_classes=19)    # with top-level overrides
    >>> config = jetseg.load_config("agx")
    >>> jetseg.preset_provenance("nano")                      # a paper preset: no provenance

Derived presets (``jetsearch finalize --write-preset NAME``) are presets like the others, from
the built-in folder or from a folder of ``$JETSEG_PRESET_PATH``; their file says where they came
from (:func:`preset_provenance`).

Importing the package costs nothing but the standard library: torch, PyYAML and onnx load on
first use of the function that needs them, so tools that only read a version or list presets
stay fast.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import ConfigError, JetSegConfig, load_config
    from .export import export_onnx
    from .model import JetSeg

# The distribution that ships both the jetseg and the jetsearch packages.
DISTRIBUTION = "jetsearch"


def _pyproject_version(pyproject: Path) -> str | None:
    """``project.version`` of a pyproject.toml, read line by line (tomllib is Python 3.11+)."""
    try:
        lines = pyproject.read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    in_project = False
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("["):
            in_project = stripped == "[project]"
        elif in_project:
            match = re.fullmatch(r"""version\s*=\s*["']([^"']+)["']\s*(#.*)?""", stripped)
            if match:
                return match.group(1)
    return None


def _package_version() -> str:
    """The installed distribution's version; in a source checkout that is not installed, the
    version its pyproject.toml declares."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        pass
    return _pyproject_version(Path(__file__).resolve().parent.parent / "pyproject.toml") or (
        "0+unknown"
    )


__version__ = _package_version()

# Public names served from their modules on first access (PEP 562), so that ``import jetseg``
# does not import torch, PyYAML or onnx.
_LAZY = {
    "load_config": "jetseg.config",
    "JetSegConfig": "jetseg.config",
    "ConfigError": "jetseg.config",
    "export_onnx": "jetseg.export",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


def list_presets(pattern: str | None = None) -> list[str]:
    """Names of the network presets, sorted; ``pattern`` filters them (``fnmatch``).

    The built-in presets and those in the folders of ``$JETSEG_PRESET_PATH``
    (``os.pathsep``-separated), derived presets included. Every name works wherever a config is
    accepted: :func:`build_model`, :func:`load_config` and the ``jetsearch`` command line.
    """
    from fnmatch import fnmatchcase

    from .config import preset_names

    names = preset_names()
    return [n for n in names if fnmatchcase(n, pattern)] if pattern else names


def preset_provenance(name_or_path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Where a derived preset came from (its ``# provenance:`` block: study, target, latency,
    the final figures over seeds, the preset it beat and the test), or None for a config without
    one, such as the paper's presets. A preset name or a YAML path."""
    from .config import config_file, read_provenance

    return read_provenance(config_file(os.fspath(name_or_path)))


def build_model(
    name_or_config: str | os.PathLike[str] | Mapping[str, Any] | JetSegConfig, **overrides: Any
) -> JetSeg:
    """Build a JetSeg network from a preset name, a YAML path, a mapping or a JetSegConfig.

    ``overrides`` replace top-level config fields (``num_classes``, ``in_channels``, ``name``,
    or whole ``stem`` / ``stages`` / ``decoder`` sections as mappings) and are validated like the
    rest of the config: an unknown key or an invalid value raises :class:`ConfigError` naming
    it. The returned module carries its config as ``model.config``.
    """
    from .config import JetSegConfig, config_to_dict, load_config
    from .model import build_model as build_from_config

    if isinstance(name_or_config, JetSegConfig):
        config = name_or_config
    elif isinstance(name_or_config, str | os.PathLike):
        config = load_config(os.fspath(name_or_config))
    elif isinstance(name_or_config, Mapping):
        config = load_config(dict(name_or_config))
    else:
        raise TypeError(
            "build_model takes a preset name, a YAML path, a mapping or a JetSegConfig, "
            f"got {type(name_or_config).__name__}"
        )
    if overrides:
        # Through the mapping form, so overrides get the same key-path errors as a YAML file.
        config = load_config({**config_to_dict(config), **overrides})
    return build_from_config(config)


__all__ = [
    "ConfigError",
    "JetSegConfig",
    "__version__",
    "build_model",
    "export_onnx",
    "list_presets",
    "load_config",
    "preset_provenance",
]
