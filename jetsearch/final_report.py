"""The report ``jetsearch finalize`` writes: ``report.md`` (the comparison table, per-seed
figures against the proxy) and ``front_final.png`` (the final front with the seed spread drawn),
from the report mapping :func:`jetsearch.finalize.finalize` builds; and the small formatting
helpers both use.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def describe_machine(info: dict[str, Any]) -> str:
    gpu = f"GPU {info['gpu']}" if info.get("gpu") else "no GPU"
    return f"CPU {info['cpu']} ({info['cpu_count']} logical cores), {gpu}, torch {info['torch']}"


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _pm(mean: float | None, sd: float | None) -> str:
    """Mean ± sd in percent."""
    if mean is None:
        return "-"
    return f"{100 * mean:.1f}%" if sd is None else f"{100 * mean:.1f} ± {100 * sd:.1f}%"


def _plain(data: Any) -> Any:
    """JSON-safe: tuples as lists, non-finite floats as None."""
    if isinstance(data, dict):
        return {str(k): _plain(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [_plain(v) for v in data]
    if isinstance(data, float) and not math.isfinite(data):
        return None
    return data


def _verdict_cell(v: dict[str, Any] | None) -> str:
    if v is None:
        return "-"
    if v.get("t") is None and v.get("difference") is None:
        return v["reason"]
    lat = v["latency"]
    latency = (
        f"{lat['candidate_ms']:.2f} vs {lat['baseline_ms']:.2f} ms, faster in "
        f"{lat['faster_rounds']}/{lat['rounds']}"
        if lat["measured"]
        else f"{lat['candidate_ms']:.2f} vs {lat['baseline_ms']:.2f} ms estimated"
    )
    t = "-" if v["t"] is None else f"{v['t']:.2f}"
    p = "-" if v["p_value"] is None else f"{v['p_value']:.3f}"
    diff = "-" if v["difference"] is None else f"{100 * v['difference']:+.1f} pts"
    return f"**{v['verdict']}** ({diff}, t={t}, p={p}; {latency})"


def report_markdown(report: dict[str, Any], plot: Path | None) -> str:
    """The report as Markdown: the recipe, the comparison table, the proxy figures."""
    lat = report["latency"]
    comparison = report["comparison"]
    metric_label = "held-out" if comparison["metric"] == "heldout_miou" else "val"
    presets = [
        n["name"].removeprefix("preset-") for n in report["networks"] if n["kind"] == "preset"
    ]
    measured = {n["latency_source"] for n in report["networks"]}
    lines = [
        f"# Final training of study `{report['study']}` (target {report['target']})",
        "",
        f"- Full recipe (every **final** figure): {report['recipe']}; seeds "
        f"{', '.join(str(s) for s in range(report['seeds']))}, each its own run; mean ± sample "
        "standard deviation over the seeds.",
        f"- Proxy figures: {report['proxy']}.",
        f"- Data: {report['data']}; held-out sequences (never trained on): "
        f"{', '.join(report['holdout']) or 'none'}.",
        f"- Latency taken again at {lat['input_size'][0]}x{lat['input_size'][1]} by "
        f"{', '.join(lat['providers'])} ({', '.join(sorted(s or '-' for s in measured))}"
        + (
            f"; {lat['rounds']} interleaved rounds, median of the round medians"
            if any(s and s.startswith("measured") for s in measured)
            else ""
        )
        + ")"
        + (
            f"; budget {lat.get('budget') or str(lat['budget_ms']) + ' ms'}."
            if lat["budget_ms"]
            else "."
        ),
        f"- Machine: {describe_machine(report['machine'])}; {report['created_at']}.",
        f"- Verdict against each preset: **win** only when the mean {metric_label} mIoU over "
        f"seeds is higher beyond the seed spread ({comparison['test']} at "
        f"{100 * comparison['confidence']:g}%; t and p in the cell) and the latency is no "
        f"higher ({comparison['latency_rule']}); **tie**: no slower, the difference inside "
        "the seed spread; **loss**: no slower, lower beyond the spread; **slower**: fails the "
        "latency rule; **untested**: fewer than 2 seeds.",
        "",
        "| network | kind | val mIoU | held-out mIoU | seeds | latency ms | params | MACs | "
        + " | ".join(f"vs {p}" for p in presets)
        + (" |" if presets else "|"),
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |" + " --- |" * len(presets),
    ]
    for n in report["networks"]:
        source = n["latency_source"] or "-"
        how = "measured" if source.startswith("measured") else source
        latency = f"{n['latency_median_ms']:.2f} ({how})" if n["latency_median_ms"] else "-"
        cells = [
            n["name"],
            n["kind"],
            _pm(n["val_miou"], n["val_miou_sd"]),
            _pm(n["heldout_miou"], n["heldout_miou_sd"]),
            str(len(n["seeds"])),
            latency,
            f"{n['params']:,}",
            f"{n['macs'] / 1e6:.1f} M",
        ]
        cells += [
            _verdict_cell(n["verdicts"].get(p)) if n["kind"] == "found" else "-" for p in presets
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Per seed and against the proxy:",
        "",
        "| network | proxy rung | proxy val | val per seed | proxy held-out | held-out per seed | "
        "latency flags | train time (all seeds) |",
        "| --- | ---: | ---: | --- | ---: | --- | --- | ---: |",
    ]
    for n in report["networks"]:
        per_val = ", ".join(_pct(s["val_miou"]) for s in n["seeds"])
        per_held = ", ".join(_pct(s["heldout_miou"]) for s in n["seeds"])
        lines.append(
            f"| {n['name']} | {n['proxy_rung'] if n['proxy_rung'] is not None else '-'} | "
            f"{_pct(n['proxy_val_miou'])} | {per_val} | {_pct(n['proxy_heldout_miou'])} | "
            f"{per_held} | {', '.join(n['latency_flags'])} | "
            f"{(n['train_time_s'] or 0) / 60:.1f} min |"
        )
    derived = report.get("derived_preset")
    if derived is not None:
        lines += ["", f"Derived preset `{derived['name']}`: {derived['message']}."]
    if plot is not None:
        lines += ["", f"![final front]({plot.name})"]
    return "\n".join(lines) + "\n"


def plot_final(report: dict[str, Any], path: Path) -> Path | None:
    """Final mIoU (mean, seed sd as error bars) against re-measured latency (the rounds' range
    as error bars); presets marked; the proxy figure beside each."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    nets = [n for n in report["networks"] if n["latency_median_ms"] is not None]
    metric = report["comparison"]["metric"]
    label = "held-out mIoU" if metric == "heldout_miou" else "val mIoU"
    fig, ax = plt.subplots(figsize=(8.5, 5), dpi=120)
    for n in nets:
        final, sd = n[metric], n[f"{metric}_sd"]
        proxy = n["proxy_" + metric]
        x = n["latency_median_ms"]
        rounds = n["latency_rounds_ms"]
        preset = n["kind"] == "preset"
        color = "#ff7f0e" if preset else "#1f77b4"
        if final is None:
            continue
        xerr = [[x - min(rounds)], [max(rounds) - x]] if len(rounds) > 1 else None
        ax.errorbar(
            [x],
            [100 * final],
            yerr=None if sd is None else [100 * sd],
            xerr=xerr,
            fmt="*" if preset else "o",
            ms=14 if preset else 7,
            mfc=color,
            mec="k",
            ecolor=color,
            elinewidth=1,
            capsize=3,
            zorder=5,
        )
        ax.annotate(
            n["name"], (x, 100 * final), textcoords="offset points", xytext=(6, 4), fontsize=8
        )
        if proxy is not None:
            px = n["proxy_latency_ms"] or x
            ax.scatter(
                [px],
                [100 * proxy],
                marker="*" if preset else "o",
                s=50 if preset else 25,
                facecolors="none",
                edgecolors=color,
            )
            ax.annotate(
                "",
                (x, 100 * final),
                (px, 100 * proxy),
                arrowprops={"arrowstyle": "->", "color": "#9e9e9e", "lw": 0.8},
            )
    baseline = report["comparison"].get("baseline")
    base = next((n for n in nets if n["name"] == f"preset-{baseline}" and n[metric]), None)
    if base is not None:  # a win lies above and left of the baseline preset
        ax.axhline(100 * base[metric], ls=":", c="#ff7f0e", lw=1)
        ax.axvline(base["latency_median_ms"], ls=":", c="#ff7f0e", lw=1)
    budget = report["latency"]["budget_ms"]
    xs = [x for n in nets for x in (*n["latency_rounds_ms"], n["proxy_latency_ms"]) if x]
    # A budget far right of every network would squash them into one corner: named only.
    budget_shown = bool(budget) and (not xs or budget <= 1.5 * max(xs))
    if budget_shown:
        ax.axvline(budget, ls="--", c="#d62728", lw=1)
    from matplotlib.lines import Line2D

    seeds = report["seeds"]
    handles = [
        Line2D([], [], marker="o", ls="", c="#1f77b4", label=f"found network (mean of {seeds})"),
        Line2D([], [], marker="*", ls="", c="#ff7f0e", ms=12, label="preset (mean)"),
        Line2D([], [], ls="-", c="#7f7f7f", label="seed sd / latency rounds' range"),
        Line2D(
            [],
            [],
            marker="o",
            ls="",
            mfc="none",
            c="#1f77b4",
            label="proxy figure (study's highest rung)",
        ),
    ]
    if base is not None:
        handles.append(
            Line2D([], [], ls=":", c="#ff7f0e", label=f"{baseline}: a win lies above and left")
        )
    if budget:
        where = "" if budget_shown else ", off the right edge"
        handles.append(Line2D([], [], ls="--", c="#d62728", label=f"budget {budget:g} ms{where}"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    sources = {n["latency_source"] for n in nets}
    how = "estimated" if sources == {"estimated"} else "re-measured"
    ax.margins(x=0.15, y=0.08)  # room for the names beside the points
    ax.set_xlabel(f"latency median, ms ({how})")
    ax.set_ylabel(f"{label}, %")
    ax.set_title(
        f"{report['study']}: final training ({report['recipe'].split(' at ')[0]}, {seeds} seeds)"
    )
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
