"""Reading a study back: fronts at the highest fidelity, tables, plots, picking and exporting.

A multi-fidelity study is one Optuna study per rung (``NAME``, ``NAME:rung1``, ...; see
:mod:`jetsearch.rungs`). :func:`trial_rows` reads them all and gives **one row per network**:
the result of the highest rung it finished, with that rung, so fronts, tables and picks compare
each network at the most training it got. The front is noise-aware (:mod:`jetsearch.fronts`):
latencies whose samples cannot be told apart are one latency. Trials written by earlier versions
(``latency_ms`` and ``latency_provenance`` instead of the flat ``latency_*`` attributes) load too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jetsearch.fidelity import kendall_tau, spearman_rho
from jetsearch.fronts import MIOU_Z, Point, latency_tied, miou_tied, pareto_front, tie_groups
from jetsearch.rungs import rung_study_name
from jetseg.config import dump_config, load_config, load_yaml_text
from jetseg.fileio import atomic_write_text


class ReportError(RuntimeError):
    """A study that has nothing to show or pick (with the reason)."""


@dataclass(frozen=True)
class TrialRow:
    """One network as the report sees it: its trial at the highest rung it reached.

    ``number`` is the network's trial in the rung-0 study (what ``export --trial`` takes);
    ``rung`` and ``rung_trial`` say where ``miou`` comes from; ``rung_mious`` holds its mIoU
    at every rung it finished.
    """

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
    rung: int = 0
    rung_trial: int | None = None
    heldout_miou: float | None = None
    latency_p90_ms: float | None = None
    latency_cv: float | None = None
    flags: tuple[str, ...] = ()
    samples: tuple[float, ...] = field(default=(), repr=False)
    rung_mious: tuple[tuple[int, float], ...] = ()
    recovered: str | None = None  # "owner died", "interrupted": how a stale trial ended
    miou_sd: float | None = None  # the mIoU's uncertainty (bootstrap over the val frames)

    @property
    def complete(self) -> bool:
        return self.state == "COMPLETE" and self.miou is not None and self.latency_ms is not None

    def point(self) -> Point:
        return Point(
            key=str(self.arch_hash or self.number),
            miou=float(self.miou if self.miou is not None else -math.inf),
            latency_ms=float(self.latency_ms if self.latency_ms is not None else math.inf),
            samples=self.samples,
            miou_sd=float(self.miou_sd or 0.0),
        )


def load_study(study_name: str, storage: str):
    import optuna

    from jetsearch.spec import StudyError
    from jetsearch.storage import open_storage

    try:
        opened = open_storage(storage)
    except StudyError as err:
        raise ReportError(str(err)) from None
    try:
        return optuna.load_study(study_name=study_name, storage=opened)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(opened)]
        raise ReportError(
            f"no study {study_name!r} in {storage}; it holds: {', '.join(names) or 'no studies'}"
        ) from None


def rung_studies(study, storage: Any) -> list[Any]:
    """The study and its higher-rung studies in ``storage`` (a URL or an Optuna storage), or
    ``storage`` itself when it is the rung studies already open (a list, rung 0 first)."""
    import optuna

    from jetsearch.storage import open_storage

    if isinstance(storage, (list, tuple)):
        return list(storage)
    if isinstance(storage, str):
        storage = open_storage(storage)
    names = set(optuna.get_all_study_names(storage))
    ladder = [study]
    while rung_study_name(study.study_name, len(ladder)) in names:
        name = rung_study_name(study.study_name, len(ladder))
        ladder.append(optuna.load_study(study_name=name, storage=storage))
    return ladder


def _latency_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    """Median, p90, cv, source, flags and samples from the flat attributes or the old blob."""
    record = attrs.get("latency") if isinstance(attrs.get("latency"), dict) else {}
    return {
        "latency_ms": attrs.get("latency_median_ms", attrs.get("latency_ms")),
        "p90": attrs.get("latency_p90_ms", record.get("p90_ms")),
        "cv": attrs.get("latency_cv", record.get("cv")),
        "provenance": attrs.get("latency_source", attrs.get("latency_provenance")),
        "flags": tuple(attrs.get("latency_flags", record.get("flags") or ())),
        "samples": tuple(attrs.get("latency_samples_ms", record.get("samples_ms") or ())),
    }


def _row(t, rung: int, number: int | None = None) -> TrialRow:
    attrs = t.user_attrs
    lat = _latency_attrs(attrs)
    miou = t.values[0] if t.values else attrs.get("val_miou")
    constraints = t.constraints or {}
    feasible = attrs.get("feasible")
    if feasible is None:
        feasible = all(v <= 0 for v in constraints.values())
    reason = attrs.get("pruned_reason") or attrs.get("failure_reason")
    return TrialRow(
        number=t.number if number is None else number,
        state=t.state.name,
        miou=miou,
        latency_ms=lat["latency_ms"],
        provenance=lat["provenance"],
        params=attrs.get("params"),
        macs=attrs.get("macs"),
        feasible=bool(feasible),
        preset=attrs.get("preset"),
        arch_hash=attrs.get("arch_hash"),
        duplicate_of=attrs.get("duplicate_of"),
        reason=reason,
        synthetic=attrs.get("synthetic_data"),
        rung=rung,
        rung_trial=t.number,
        heldout_miou=attrs.get("heldout_miou"),
        miou_sd=attrs.get("val_miou_sd"),
        latency_p90_ms=lat["p90"],
        latency_cv=lat["cv"],
        flags=lat["flags"],
        samples=lat["samples"],
        recovered=reason if reason in ("owner died", "interrupted") else None,
    )


def trial_rows(study, storage: Any = None) -> list[TrialRow]:
    """Every trial of the rung-0 ``study``, each network at the highest rung it finished.

    ``storage`` (the study's URL or Optuna storage, or its rung studies already open) is where
    the higher rungs are looked up; without it only ``study``'s own trials are read.
    """
    base = [_row(t, 0) for t in study.get_trials(deepcopy=False)]
    ladder = rung_studies(study, storage) if storage is not None else [study]
    if len(ladder) == 1:
        return [_with_rungs(r, {0: r.miou} if r.complete else {}) for r in base]
    first = {r.arch_hash: r.number for r in base if r.arch_hash and r.duplicate_of is None}
    best: dict[str, TrialRow] = {}
    mious: dict[str, dict[int, float]] = {}
    for rung, rung_study in enumerate(ladder):
        for t in rung_study.get_trials(deepcopy=False):
            key = t.user_attrs.get("arch_hash")
            if key is None or t.state.name != "COMPLETE" or not t.values:
                continue
            mious.setdefault(key, {}).setdefault(rung, t.values[0])
            if rung > 0 and key in first:
                best[key] = _row(t, rung, number=first[key])
    rows = []
    for r in base:
        key = r.arch_hash
        if key in best and r.duplicate_of is None and r.number == first.get(key):
            rows.append(_with_rungs(best[key], mious.get(key, {})))
        else:
            rows.append(_with_rungs(r, mious.get(key, {}) if r.complete else {}))
    return rows


def _with_rungs(row: TrialRow, by_rung: dict[int, float]) -> TrialRow:
    from dataclasses import replace

    return replace(row, rung_mious=tuple(sorted(by_rung.items())))


def feasible_networks(rows: list[TrialRow]) -> list[TrialRow]:
    """Feasible complete networks, one row per network (duplicates left out), in row order."""
    cands: dict[str, TrialRow] = {}
    for r in rows:
        if r.complete and r.feasible and r.duplicate_of is None:
            cands.setdefault(r.point().key, r)
    return list(cands.values())


def front_rows(rows: list[TrialRow]) -> list[TrialRow]:
    """Feasible complete networks not dominated in (max mIoU, min latency), fastest first.

    Latencies whose samples cannot be told apart are ties (:func:`jetsearch.fronts.dominates`);
    duplicates of a network already on the front are left out.
    """
    cands = {r.point().key: r for r in feasible_networks(rows)}
    front = pareto_front([r.point() for r in cands.values()])
    return sorted((cands[p.key] for p in front), key=lambda r: (r.latency_ms, -r.miou))


def front_ties(front: list[TrialRow]) -> list[list[TrialRow]]:
    """Groups of front networks whose latencies are one latency (more than one per group)."""
    by_key = {r.point().key: r for r in front}
    groups = tie_groups([r.point() for r in front])
    return [[by_key[p.key] for p in g] for g in groups if len(g) > 1]


def pick(rows: list[TrialRow], how: str, max_latency: float | None = None) -> TrialRow:
    """A network from the front: ``max-miou``, ``fastest`` or ``knee`` (under ``max_latency``).

    Tied latencies count as equal: ``fastest`` takes the most accurate of the fastest tie group,
    and the knee is computed on the front with each tie group at one latency.
    """
    front = front_rows(rows)
    if max_latency is not None:
        front = [r for r in front if r.latency_ms <= max_latency]
    if not front:
        limit = f" under {max_latency} ms" if max_latency is not None else ""
        raise ReportError(f"no feasible completed trial{limit} to pick from")
    if how == "max-miou":
        # mIoU inside the best one's interval is as accurate: the fastest of those.
        best = max(front, key=lambda r: (r.miou, -r.latency_ms))
        tied = [r for r in front if miou_tied(r.point(), best.point())]
        return min(tied, key=lambda r: (r.latency_ms, -r.miou))
    if how == "fastest":
        fastest = front[0]
        tied = [r for r in front if latency_tied(r.point(), fastest.point())]
        return max(tied, key=lambda r: (r.miou, -r.latency_ms))
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


def rung_agreement(rows: list[TrialRow]) -> list[dict[str, Any]]:
    """How well each rung predicted the next: Kendall tau and Spearman rho of mIoU.

    Over the networks that finished both rungs; one dict per consecutive pair of rungs.
    """
    rungs = sorted({k for r in rows for k, _ in r.rung_mious})
    out = []
    for low, high in zip(rungs, rungs[1:], strict=False):
        pairs = [
            (dict(r.rung_mious)[low], dict(r.rung_mious)[high])
            for r in rows
            if r.duplicate_of is None and low in dict(r.rung_mious) and high in dict(r.rung_mious)
        ]
        x = [a for a, _ in pairs]
        y = [b for _, b in pairs]
        out.append(
            {
                "from_rung": low,
                "to_rung": high,
                "networks": len(pairs),
                "kendall_tau": kendall_tau(x, y) if len(pairs) >= 2 else math.nan,
                "spearman_rho": spearman_rho(x, y) if len(pairs) >= 2 else math.nan,
            }
        )
    return out


def _pct(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{100 * value:.2f}%"


def _miou_cell(row: TrialRow) -> str:
    """mIoU with its 90% interval's half-width (jetsearch.fronts.MIOU_Z standard deviations)."""
    if row.miou is None or not row.miou_sd:
        return _pct(row.miou)
    return f"{_pct(row.miou)} ±{100 * MIOU_Z * row.miou_sd:.1f}"


def front_table(study, rows: list[TrialRow]):
    import rich.table

    front = front_rows(rows)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.state] = counts.get(r.state, 0) + 1
    title = (
        f"study {study.study_name}: {len(rows)} trials ("
        + ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items()))
        + f"); Pareto front of {len(front)}"
    )
    heldout = any(r.heldout_miou is not None for r in front)
    multi = any(r.rung_mious and max(k for k, _ in r.rung_mious) > 0 for r in rows)
    table = rich.table.Table(title=title, title_justify="left")
    columns = ["trial"] + (["rung"] if multi else []) + ["val mIoU"]
    columns += (["held-out mIoU"] if heldout else []) + ["latency ms", "p90 ms", "latency from"]
    columns += ["flags", "params", "MACs", "preset", "arch"]
    for col in columns:
        left = col in ("latency from", "flags", "preset", "arch")
        table.add_column(col, justify="left" if left else "right")
    for r in front:
        cells = [str(r.number)] + ([str(r.rung)] if multi else []) + [_miou_cell(r)]
        cells += [_pct(r.heldout_miou)] if heldout else []
        cells += [
            f"{r.latency_ms:.2f}",
            f"{r.latency_p90_ms:.2f}" if r.latency_p90_ms is not None else "-",
            r.provenance or "?",
            ", ".join(f for f in r.flags if f != "from-cache") or "",
            f"{r.params:,}" if r.params else "-",
            f"{r.macs / 1e6:.1f} M" if r.macs else "-",
            r.preset or "",
            r.arch_hash or "",
        ]
        table.add_row(*cells)
    return table


def count_lines(studies: list[Any]) -> list[str]:
    """What a study holds, for a person: its latency budget and where it comes from, the
    networks trained within the budget at each rung, and the candidates rejected before
    training for their latency (stored, not counted by ``--trials``).

    ``studies`` are the rung studies, rung 0 first (:func:`rung_studies`).
    """
    from jetsearch.budget import is_rejected
    from jetsearch.spec import study_budget

    budget = study_budget(studies[0])
    lines = [
        "latency budget: "
        + (
            budget.describe()
            if budget is not None
            else "relative to a preset, not resolved yet (the study's first start resolves it)"
        )
    ]
    trained = []
    for rung, rung_study in enumerate(studies):
        networks = {
            t.user_attrs.get("arch_hash") or t.number
            for t in rung_study.get_trials(deepcopy=False)
            if t.state.name == "COMPLETE"
            and t.user_attrs.get("duplicate_of") is None
            and t.user_attrs.get("feasible") is not False
        }
        trained.append(f"{len(networks)} at rung {rung}")
    rejected = sum(1 for t in studies[0].get_trials(deepcopy=False) if is_rejected(t))
    lines.append(
        f"networks trained within the budget: {', '.join(trained)}; rejected before training "
        f"(over the budget): {rejected}"
    )
    return lines


def rung_fidelity_notes(spec: Any) -> list[str]:
    """Per rung of ``spec``: what the proxy scoreboard measured for its recipe (how well it
    ranks the reference set), or that the recipe was not measured."""
    from jetsearch.scoreboard import SCOREBOARD_FILE, budget_recipe, fidelity_of, load_scoreboard
    from jetsearch.spec import studies_dir

    if spec is None or not spec.rungs:
        return []
    board = load_scoreboard(studies_dir() / SCOREBOARD_FILE)
    notes = []
    for index in range(len(spec.rungs)):
        budget = spec.rung_budget(index)
        found = fidelity_of(budget_recipe(budget), board)
        what = f"rung {index} ({budget.epochs} epochs at {budget.size[0]}x{budget.size[1]}"
        what += f", {budget.train_images} frames)" if budget.train_images else ")"
        if found is None:
            notes.append(f"{what}: this recipe is not on the proxy scoreboard (docs/reference.md)")
        else:
            where = (
                "" if spec.data else " (measured on CamVid; this study trains on synthetic scenes)"
            )
            notes.append(f"{what}: {found.describe()}{where}")
    return notes


def study_notes(rows: list[TrialRow], spec: Any = None) -> list[str]:
    """Lines a person must read with the front: data, latency sources, ties, flags, rungs
    (with ``spec``, also what the proxy scoreboard measured for each rung's recipe)."""
    notes = []
    if any(r.synthetic for r in rows):
        notes.append("mIoU was measured on the built-in SYNTHETIC dataset, not on real images.")
    if any(r.provenance == "estimated" for r in rows):
        notes.append("some latencies are ESTIMATES (roofline model), not measurements.")
    if any(r.provenance == "measured-local" for r in rows):
        notes.append("'measured-local' latencies were timed on the machine that ran the study.")
    front = front_rows(rows)
    for group in front_ties(front):
        values = ", ".join(f"{r.latency_ms:.2f}" for r in group)
        notes.append(
            f"latency tie: trials {', '.join(str(r.number) for r in group)} ({values} ms) cannot "
            "be told apart by their samples (Mann-Whitney, alpha 0.05): one latency, not "
            f"{len(group)}"
        )
    flagged = {f for r in front for f in r.flags if f != "from-cache"}
    for flag in sorted(flagged):
        who = [str(r.number) for r in front if flag in r.flags]
        notes.append(f"latency flag {flag!r} on front trial(s) {', '.join(who)}")
    for a in rung_agreement(rows):
        if a["networks"] >= 2:
            notes.append(
                f"rung {a['from_rung']} -> rung {a['to_rung']} on {a['networks']} networks: "
                f"Kendall tau {a['kendall_tau']:+.2f}, Spearman rho {a['spearman_rho']:+.2f}"
            )
    notes.extend(rung_fidelity_notes(spec))
    if any(r.miou_sd for r in front):
        notes.append(
            "val mIoU +-: half-width of its 90% interval from a bootstrap over the validation "
            "frames; mIoU whose intervals overlap are ties on the front"
        )
    recovered = [r for r in rows if r.recovered]
    if recovered:
        notes.append(
            "recovered trials: " + ", ".join(f"{r.number} ({r.recovered})" for r in recovered)
        )
    return notes


def plot_front(
    study, rows: list[TrialRow], path: str | Path, picked: TrialRow | None = None
) -> Path:
    """Every trained network, the front, over-budget networks as a rug, presets and the pick."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ReportError("plotting needs matplotlib: pip install 'jetsearch[plot]'") from None
    front = front_rows(rows)
    front_ids = {r.number for r in front}
    fig, ax = plt.subplots(figsize=(8.5, 5), dpi=120)
    done = [r for r in rows if r.complete and r.feasible and r.number not in front_ids]
    trained_over = [r for r in rows if r.complete and not r.feasible]
    untrained = [r for r in rows if r.latency_ms is not None and not r.complete]
    ax.scatter(
        [r.latency_ms for r in done],
        [100 * r.miou for r in done],
        c="#9e9e9e",
        s=22,
        label="dominated",
    )
    if trained_over:
        ax.scatter(
            [r.latency_ms for r in trained_over],
            [100 * r.miou for r in trained_over],
            marker="x",
            c="#d62728",
            s=28,
            label="over budget",
        )
    if untrained:
        # Not trained (rejected over the budget), so no mIoU: a rug along the axis instead of
        # points at 0 %.
        ax.plot(
            [r.latency_ms for r in untrained],
            [0.0] * len(untrained),
            "|",
            c="#d62728",
            ms=12,
            transform=ax.get_xaxis_transform(),
            label="rejected before training (latency only)",
        )
    ax.plot(
        [r.latency_ms for r in front],
        [100 * r.miou for r in front],
        "-o",
        c="#1f77b4",
        ms=6,
        label="Pareto front",
    )
    for r in front:
        if r.latency_p90_ms is not None and r.latency_p90_ms > r.latency_ms:
            ax.plot([r.latency_ms, r.latency_p90_ms], [100 * r.miou] * 2, c="#1f77b4", lw=0.8)
    presets = [r for r in rows if r.preset and r.complete]
    for r in presets:
        ax.scatter(
            [r.latency_ms],
            [100 * r.miou],
            marker="*",
            s=180,
            c="#ff7f0e",
            edgecolors="k",
            zorder=5,
            label="preset" if r is presets[0] else None,
        )
        ax.annotate(
            r.preset, (r.latency_ms, 100 * r.miou), textcoords="offset points", xytext=(6, 6)
        )
    if picked is not None and picked.complete:
        ax.scatter(
            [picked.latency_ms],
            [100 * picked.miou],
            s=240,
            facecolors="none",
            edgecolors="#2ca02c",
            linewidths=2,
            zorder=6,
            label=f"exported pick (trial {picked.number})",
        )
    from jetsearch.spec import study_budget

    stored = study_budget(study)
    budget = stored.budget_ms if stored is not None else None
    if budget:
        ax.axvline(budget, ls="--", c="#d62728", lw=1, label=f"budget {budget:.4g} ms")
    prov = sorted({r.provenance for r in rows if r.provenance})
    ax.set_xlabel(f"latency median, ms ({', '.join(prov) or 'unknown'}; bar to p90)")
    ax.set_ylabel("val mIoU, %" + (" (synthetic data)" if any(r.synthetic for r in rows) else ""))
    rung = max((r.rung for r in front), default=0)
    ax.set_title(
        f"{study.study_name}: {len(rows)} trials"
        + (f", each network at its highest rung (up to {rung})" if rung else "")
    )
    ax.grid(alpha=0.3)
    # Outside the axes, so the legend never covers a point.
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, borderaxespad=0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def export_trial(
    study, number: int, output: str | Path, storage: Any = None
) -> tuple[Path, dict[str, Any]]:
    """Write trial ``number``'s network as a config YAML that ``jetsearch train`` trains.

    The figures returned are the network's at the highest rung it finished.
    """
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    if number not in trials:
        raise ReportError(f"study {study.study_name} has no trial {number}")
    trial = trials[number]
    text = trial.user_attrs.get("config_yaml")
    if not text:
        raise ReportError(f"trial {number} stored no config (state {trial.state.name})")
    data = load_yaml_text(text, f"trial {number} config_yaml")
    data["name"] = Path(output).stem
    config = load_config(data)
    path = atomic_write_text(output, dump_config(config))
    row = next((r for r in trial_rows(study, storage) if r.number == number), None)
    info: dict[str, Any] = {"trial": number, "arch_hash": trial.user_attrs.get("arch_hash")}
    if row is not None:
        info.update(
            val_miou=row.miou,
            heldout_miou=row.heldout_miou,
            latency_ms=row.latency_ms,
            latency_p90_ms=row.latency_p90_ms,
            latency_flags=list(row.flags),
            rung=row.rung,
        )
    return path, info
