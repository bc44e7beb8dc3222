"""Finalize's latency: every network and preset measured again with the study's providers, in
interleaved rounds where they measure (so a drift in the machine's load hits all alike), once
where they estimate; kept in ``latency.json`` so a rerun with the same networks measures nothing.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jetsearch.final_report import _plain
from jetseg.fileio import atomic_write_text

if TYPE_CHECKING:
    from jetsearch.finalize import FinalRow
    from jetseg.config import JetSegConfig

LATENCY_NAME = "latency.json"


def latency_rounds(
    networks: Sequence[tuple[FinalRow, JetSegConfig]],
    spec: Any,
    rounds: int,
    out: Path,
    remeasure: bool,
    log: Callable[[str], None],
) -> None:
    """Params and MACs at the latency input size, and latency in interleaved rounds (kept in
    ``latency.json`` for the same networks and settings)."""
    from jetseg.complexity import profile
    from jetseg.model import build_model

    h, w = spec.latency.input_size
    for row, config in networks:
        counts = profile(build_model(config), (h, w))
        row.params, row.macs = counts.params, counts.macs
    settings = _plain(
        {**dataclasses.asdict(dataclasses.replace(spec.latency, cache=None)), "rounds": rounds}
    )
    stored_path = out / LATENCY_NAME
    stored = None
    if stored_path.is_file() and not remeasure:
        try:
            stored = json.loads(stored_path.read_text())
        except (OSError, ValueError):
            stored = None
    keys = [row.arch_hash for row, _ in networks]
    if (
        stored is not None
        and stored.get("settings") == settings
        and all(k in stored.get("networks", {}) for k in keys)
    ):
        log(f"latency: kept from {stored_path} (same networks and settings; --remeasure to redo)")
        measured = stored["networks"]
    else:
        measured = measure_interleaved(networks, spec, rounds, log)
        atomic_write_text(
            stored_path,
            json.dumps(_plain({"settings": settings, "networks": measured}), indent=2) + "\n",
        )
    for row, _ in networks:
        m = measured[row.arch_hash]
        row.latency_rounds_ms = list(m["rounds_ms"])
        row.latency_median_ms = statistics.median(m["rounds_ms"])
        row.latency_p90_ms = statistics.median(m["p90_ms"])
        row.latency_flags = list(m["flags"])
        row.latency_source = m["source"]
        row.latency_device = m["device"]


def measure_interleaved(
    networks: Sequence[tuple[FinalRow, JetSegConfig]],
    spec: Any,
    rounds: int,
    log: Callable[[str], None] = print,
) -> dict[str, dict[str, Any]]:
    """Every network's latency in ``rounds`` interleaved rounds, by the study's providers
    without the cache: {arch_hash: rounds_ms, p90_ms, flags, source, device}.

    Round ``r`` measures every network once, starting at the ``r``-th, so no network is always
    first after a pause. A network whose latency is an estimate is not asked again: an estimate
    does not drift.
    """
    import torch

    from jetsearch.latency.chain import LatencyChain
    from jetseg.export import export_onnx
    from jetseg.model import build_model

    h, w = spec.latency.input_size
    models = {}
    for row, config in networks:
        with torch.no_grad():
            models[row.arch_hash] = (export_onnx(build_model(config), input_size=(h, w)), config)
    names = {row.arch_hash: row.name for row, _ in networks}
    keys = list(models)
    results: dict[str, list[Any]] = {k: [] for k in keys}
    estimated: set[str] = set()
    chain = LatencyChain(
        dataclasses.replace(spec, latency=dataclasses.replace(spec.latency, cache=None))
    )
    try:
        for r in range(rounds):
            order = keys[r % len(keys) :] + keys[: r % len(keys)]
            for key in order:
                if key in estimated:
                    continue
                result, errors = chain.measure(*models[key])
                for error in errors:
                    log(f"  latency fallback ({names[key]}): {error}")
                results[key].append(result)
                if not result.provenance.is_measurement:
                    estimated.add(key)
            if len(estimated) == len(keys):
                log("latency: estimated (one estimate per network)")
                break
            log(
                f"latency round {r + 1}/{rounds}: "
                + ", ".join(f"{names[k]} {results[k][-1].median_ms:.2f}" for k in keys)
            )
    finally:
        chain.close()
    measured = {}
    for key, found in results.items():
        sources = sorted({res.provenance.value for res in found})
        measured[key] = {
            "rounds_ms": [res.median_ms for res in found],
            "p90_ms": [res.p90_ms for res in found],
            "flags": sorted({f for res in found for f in res.flags if f != "from-cache"}),
            "source": sources[0] if len(sources) == 1 else "mixed: " + ", ".join(sources),
            "device": _latency_device(found[-1].fingerprint),
        }
    return measured


def _latency_device(fingerprint: dict[str, Any]) -> str:
    from jetsearch.latency.base import fingerprint_device

    device = fingerprint_device(fingerprint)
    runtime = fingerprint.get("runtime") or fingerprint.get("model")
    precision = fingerprint.get("precision")
    extra = ", ".join(str(x) for x in (runtime, precision) if x)
    return f"{device} ({extra})" if extra else str(device)
