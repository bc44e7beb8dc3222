"""Reading a study back: the Pareto front as a table and a plot, picking and exporting a winner."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from jetseg.config import dump_config, load_config
from jetseg.fileio import atomic_write_text


class ReportError(RuntimeError):
    """A study that has nothing to show or pick (with the reason)."""


@dataclass(frozen=True)
class TrialRow:
    """One trial as the report sees it."""

    number: int
    state: str
    miou: float | None
    latency_ms: float | None
    provenance: str | None
    params: int | None
    macs: int | None
    feasible: bool
    preset: str | None
    arch_hash: str | None
    duplicate_of: int | None
    reason: str | None
    synthetic: bool | None

    @property
    def complete(self) -> bool:
        return self.state == "COMPLETE" and self.miou is not None and self.latency_ms is not None


def load_study(study_name: str, storage: str):
    import optuna

    from jetsearch.study import open_storage

    try:
        return optuna.load_study(study_name=study_name, storage=open_storage(storage))
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(open_storage(storage))]
        raise ReportError(
            f"no study {study_name!r} in {storage}; it holds: {', '.join(names) or 'no studies'}"
        ) from None


def trial_rows(study) -> list[TrialRow]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        attrs = t.user_attrs
        miou = t.values[0] if t.values else attrs.get("val_miou")
        latency = attrs.get("latency_ms")
        constraints = t.constraints or {}
        rows.append(
            TrialRow(
                number=t.number,
                state=t.state.name,
                miou=miou,
                latency_ms=latency,
                provenance=attrs.get("latency_provenance"),
                params=attrs.get("params"),
                macs=attrs.get("macs"),
                feasible=all(v <= 0 for v in constraints.values()),
                preset=attrs.get("preset"),
                arch_hash=attrs.get("arch_hash"),
                duplicate_of=attrs.get("duplicate_of"),
                reason=attrs.get("pruned_reason") or attrs.get("failure_reason"),
                synthetic=attrs.get("synthetic_data"),
            )
        )
    return rows


def pareto_front(rows: list[TrialRow]) -> list[TrialRow]:
    """Feasible complete trials not dominated in (max mIoU, min latency), fastest first.

    Duplicates of an architecture already on the front are left out.
    """
    cands = [r for r in rows if r.complete and r.feasible and r.duplicate_of is None]
    front = []
    for r in cands:
        dominated = any(
            (o.miou >= r.miou and o.latency_ms <= r.latency_ms)
            and (o.miou > r.miou or o.latency_ms < r.latency_ms)
            for o in cands
        )
        if not dominated:
            front.append(r)
    seen, unique = set(), []
    for r in sorted(front, key=lambda r: (r.latency_ms, -r.miou)):
        if r.arch_hash not in seen:
            seen.add(r.arch_hash)
            unique.append(r)
    return unique


def pick(rows: list[TrialRow], how: str, max_latency: float | None = None) -> TrialRow:
    """A trial from the front: ``max-miou``, ``fastest`` or ``knee`` (under ``max_latency``)."""
    front = pareto_front(rows)
    if max_latency is not None:
        front = [r for r in front if r.latency_ms <= max_latency]
    if not front:
        limit = f" under {max_latency} ms" if max_latency is not None else ""
        raise ReportError(f"no feasible completed trial{limit} to pick from")
    if how == "max-miou":
        return max(front, key=lambda r: (r.miou, -r.latency_ms))
    if how == "fastest":
        return min(front, key=lambda r: (r.latency_ms, -r.miou))
    if how == "knee":
        if len(front) <= 2:
            return max(front, key=lambda r: (r.miou, -r.latency_ms))
        # The point farthest from the line through the front's two ends (normalised axes).
        lat = [r.latency_ms for r in front]
        miou = [r.miou for r in front]
        lat_span = (max(lat) - min(lat)) or 1.0
        miou_span = (max(miou) - min(miou)) or 1.0
        pts = [
            ((a - min(lat)) / lat_span, (m - min(miou)) / miou_span)
            for a, m in zip(lat, miou, strict=True)
        ]
        (x1, y1), (x2, y2) = pts[0], pts[-1]
        norm = ((x2 - x1) ** 2 + (y2 - y1) ** 2) ** 0.5 or 1.0
        dist = [abs((y2 - y1) * x - (x2 - x1) * y + x2 * y1 - y2 * x1) / norm for x, y in pts]
        return front[max(range(len(front)), key=dist.__getitem__)]
    raise ReportError(f"unknown pick {how!r}; use max-miou, knee or fastest")


def front_table(study, rows: list[TrialRow]):
    import rich.table

    front = pareto_front(rows)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.state] = counts.get(r.state, 0) + 1
    title = (
        f"study {study.study_name}: {len(rows)} trials ("
        + ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items()))
        + f"); Pareto front of {len(front)}"
    )
    table = rich.table.Table(title=title, title_justify="left")
    for col in (
        "trial",
        "val mIoU",
        "latency ms",
        "latency from",
        "params",
        "MACs",
        "preset",
        "arch",
    ):
        table.add_column(
            col, justify="right" if col not in ("latency from", "preset", "arch") else "left"
        )
    for r in front:
        table.add_row(
            str(r.number),
            f"{100 * r.miou:.2f}%",
            f"{r.latency_ms:.2f}",
            r.provenance or "?",
            f"{r.params:,}" if r.params else "-",
            f"{r.macs / 1e6:.1f} M" if r.macs else "-",
            r.preset or "",
            r.arch_hash or "",
        )
    return table


def study_notes(rows: list[TrialRow]) -> list[str]:
    notes = []
    if any(r.synthetic for r in rows):
        notes.append("mIoU was measured on the built-in SYNTHETIC dataset, not on real images.")
    if any(r.provenance == "estimated" for r in rows):
        notes.append("some latencies are ESTIMATES (roofline model), not measurements.")
    if any(r.provenance == "measured-local" for r in rows):
        notes.append("'measured-local' latencies were timed on the machine that ran the study.")
    return notes


def plot_front(study, rows: list[TrialRow], path: str | Path) -> Path:
    """Scatter of every trial: front, dominated, infeasible (pruned) and presets marked."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ReportError("plotting needs matplotlib: pip install 'jetsearch[plot]'") from None
    front = pareto_front(rows)
    front_ids = {r.number for r in front}
    fig, ax = plt.subplots(figsize=(7.5, 5), dpi=120)
    done = [r for r in rows if r.complete and r.feasible and r.number not in front_ids]
    infeasible = [r for r in rows if r.latency_ms is not None and not r.feasible]
    ax.scatter(
        [r.latency_ms for r in done],
        [100 * r.miou for r in done],
        c="#9e9e9e",
        s=22,
        label="dominated",
    )
    ax.scatter(
        [r.latency_ms for r in infeasible],
        [100 * r.miou if r.miou is not None else 0.0 for r in infeasible],
        marker="x",
        c="#d62728",
        s=28,
        label="over budget (pruned, not trained)",
    )
    ax.plot(
        [r.latency_ms for r in front],
        [100 * r.miou for r in front],
        "-o",
        c="#1f77b4",
        ms=6,
        label="Pareto front",
    )
    for r in rows:
        if r.preset and r.latency_ms is not None:
            y = 100 * r.miou if r.miou is not None else 0.0
            ax.scatter(
                [r.latency_ms], [y], marker="*", s=180, c="#ff7f0e", edgecolors="k", zorder=5
            )
            ax.annotate(r.preset, (r.latency_ms, y), textcoords="offset points", xytext=(6, 6))
    budget = (study.user_attrs.get("spec") or {}).get("latency", {}).get("budget_ms")
    if budget:
        ax.axvline(budget, ls="--", c="#d62728", lw=1, label=f"budget {budget} ms")
    prov = sorted({r.provenance for r in rows if r.provenance})
    ax.set_xlabel(f"latency, ms ({', '.join(prov) or 'unknown'})")
    ax.set_ylabel("val mIoU, %" + (" (synthetic data)" if any(r.synthetic for r in rows) else ""))
    ax.set_title(f"{study.study_name}: {len(rows)} trials")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def export_trial(study, number: int, output: str | Path) -> tuple[Path, dict[str, Any]]:
    """Write trial ``number``'s network as a config YAML that ``jetsearch train`` trains."""
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    if number not in trials:
        raise ReportError(f"study {study.study_name} has no trial {number}")
    trial = trials[number]
    text = trial.user_attrs.get("config_yaml")
    if not text:
        raise ReportError(f"trial {number} stored no config (state {trial.state.name})")
    data = yaml.safe_load(text)
    data["name"] = Path(output).stem
    config = load_config(data)
    path = atomic_write_text(output, dump_config(config))
    return path, {
        "trial": number,
        **{k: trial.user_attrs.get(k) for k in ("val_miou", "latency_ms", "arch_hash")},
    }
