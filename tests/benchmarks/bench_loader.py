"""Loading a benchmark script as a module, for the tests of its arithmetic."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load_benchmark(name: str) -> Iterator[ModuleType]:
    """``benchmarks/<name>.py`` as a module, with its folder on ``sys.path`` while it is in use
    (the scripts import their siblings, such as ``_machine``); for a fixture to yield from."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(BENCHMARKS))
