"""``jetsearch finalize``: train the final front fully, re-measure it, and report.

A study scores every network after a short proxy run. Finalize closes the loop: it takes the
top networks of the final front (each at the highest rung it reached), and optionally the
presets, trains each under **one** full recipe in a resumable run directory of its own (the
layout ``jetsearch train`` writes), evaluates each on val and on the held-out sequences,
re-measures its latency with the study's providers (no cache: a fresh measurement), and writes
``report.md``, ``report.json`` and ``front_final.png`` (the final front with the presets marked
and each network's proxy figure beside its final one). Running the same command again resumes
the trainings that did not finish and measures nothing twice.

The full recipe is the study's ``train:`` block with the given length (``epochs`` or
``minutes`` of training), at the study's latency input size unless ``size`` is given, with the
usual augmentation (random scale 0.5-2.0, crop to the training size, horizontal flip) unless
``augment`` is off. The report names the recipe that produced every number.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jetsearch.fronts import ranked
from jetseg.config import JetSegConfig, arch_hash, load_config, load_yaml_text
from jetseg.fileio import atomic_write_text

AUGMENTATION = {"random_scale": (0.5, 2.0), "flip": True}
REPORT_NAME = "report.md"
PLOT_NAME = "front_final.png"


class FinalizeError(RuntimeError):
    """Finalize cannot run as asked (no front, unknown preset, ...), with the reason."""


@dataclass
class FinalRow:
    """One network of the final report: its proxy figures and its final ones."""

    name: str
    kind: str  # "found" or "preset"
    arch_hash: str
    trial: int | None
    params: int | None
    macs: int | None
    proxy_rung: int | None
    proxy_val_miou: float | None
    proxy_heldout_miou: float | None
    proxy_latency_ms: float | None
    val_miou: float | None = None
    heldout_miou: float | None = None
    latency_median_ms: float | None = None
    latency_p90_ms: float | None = None
    latency_flags: list[str] = field(default_factory=list)
    latency_source: str | None = None
    train_time_s: float | None = None
    epochs: int | None = None
    run_dir: str = ""


def spec_of(study) -> Any:
    """The StudySpec a study was created with (stored as its ``spec`` attribute)."""
    from jetsearch.spec import stored_spec

    spec = stored_spec(study)
    if spec is None:
        raise FinalizeError(f"study {study.study_name} stored no spec; was it made by jetsearch?")
    return spec


def choose(rows: Sequence[Any], top: int) -> list[Any]:
    """The ``top`` found networks of the front, best first (ends of the front, then spread).

    Found means not a preset: the presets a study enqueued are trained with ``--with-presets``
    (as presets, once), so the front here is that of the other networks.
    """
    from jetsearch.report import front_rows

    front = front_rows([r for r in rows if not r.preset])
    if not front:
        raise FinalizeError(
            "the study has no feasible finished network other than the presets to finalize"
        )
    by_key = {r.point().key: r for r in front}
    return [by_key[p.key] for p in ranked([r.point() for r in front])][:top]


def full_recipe(
    spec: Any,
    *,
    epochs: int | None,
    minutes: float | None,
    size: tuple[int, int] | None,
    augment: bool,
    holdout: Sequence[str],
    progress: bool,
) -> Any:
    """The one TrainConfig every finalized network trains with."""
    if (epochs is None) == (minutes is None):
        raise FinalizeError("give exactly one of --epochs N or --minutes M")
    if epochs is not None and epochs < 1:
        raise FinalizeError(f"--epochs must be >= 1, got {epochs}")
    if minutes is not None and not minutes > 0:
        raise FinalizeError(f"--minutes must be > 0, got {minutes}")
    base = spec.train.train_config(seed=spec.seed)
    size = tuple(size or spec.latency.input_size)
    changes: dict[str, Any] = {
        "epochs": epochs if epochs is not None else 100000,
        "time_budget_s": None if minutes is None else 60.0 * minutes,
        "size": size,
        "holdout": tuple(holdout),
        "overlays": 4,
        "export_onnx": True,
        "progress": progress,
        "max_train_images": None,
        "max_val_images": None,
    }
    if augment:
        changes.update(AUGMENTATION, crop=size)
    return dataclasses.replace(base, **changes)


def describe_recipe(cfg: Any) -> str:
    length = (
        f"{cfg.time_budget_s / 60:g} min of training"
        if cfg.time_budget_s is not None
        else f"{cfg.epochs} epochs"
    )
    aug = (
        f"random scale {cfg.random_scale[0]:g}-{cfg.random_scale[1]:g}, crop "
        f"{cfg.crop[0]}x{cfg.crop[1]}, flip"
        if cfg.random_scale
        else "no augmentation"
    )
    return (
        f"{length} at {cfg.size[0]}x{cfg.size[1]}, {cfg.loss}, {cfg.optimizer} "
        f"lr {cfg.resolved_lr:g}, batch {cfg.batch_size}, {cfg.schedule} schedule, {aug}"
    )


def finalize(
    study,
    storage: Any,
    *,
    top: int,
    presets: Sequence[str] = (),
    epochs: int | None = None,
    minutes: float | None = None,
    size: tuple[int, int] | None = None,
    augment: bool = True,
    data: str | None = None,
    holdout: Sequence[str] | None = None,
    out_dir: str | Path,
    progress: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train, evaluate, re-measure and report; returns what ``report.json`` holds."""
    from jetsearch.report import trial_rows
    from jetseg.run import run_training

    if top < 1:
        raise FinalizeError(f"--top must be >= 1, got {top}")
    spec = spec_of(study)
    data = data if data is not None else spec.data
    holdout = tuple(spec.train.holdout if holdout is None else holdout)
    recipe = full_recipe(
        spec,
        epochs=epochs,
        minutes=minutes,
        size=size,
        augment=augment,
        holdout=holdout,
        progress=progress,
    )
    rows = trial_rows(study, storage)
    networks: list[tuple[FinalRow, JetSegConfig]] = []
    for r in choose(rows, top):
        config = load_config(load_yaml_text(_trial_config_yaml(study, r.number)))
        networks.append((_final_row(f"trial-{r.number}", "found", r), config))
    by_preset = {r.preset: r for r in rows if r.preset and r.complete}
    for name in presets:
        try:
            config = load_config(name)
        except Exception as err:
            raise FinalizeError(f"--with-presets {name}: {err}") from None
        networks.append(
            (_final_row(f"preset-{name}", "preset", by_preset.get(name), config), config)
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    from jetsearch.latency.chain import LatencyChain

    # A fresh measurement for the report: the study's providers without its cache.
    chain = LatencyChain(
        dataclasses.replace(spec, latency=dataclasses.replace(spec.latency, cache=None))
    )
    started = time.time()
    try:
        for index, (row, config) in enumerate(networks, start=1):
            run_dir = out / row.name
            row.run_dir = str(run_dir)
            log(f"[{index}/{len(networks)}] {row.name} ({row.kind}): training in {run_dir}")
            result = run_training(config, data, run_dir, recipe)
            row.val_miou = _finite(result.best_miou)
            row.heldout_miou = _finite(result.heldout_miou)
            row.train_time_s = round(result.train_time_s, 1)
            row.epochs = result.epochs_done
            _measure(row, config, chain, spec, log)
            elapsed = time.time() - started
            eta = elapsed / index * (len(networks) - index)
            log(
                f"  val mIoU {_pct(row.val_miou)}, held-out {_pct(row.heldout_miou)}, latency "
                f"{row.latency_median_ms:.2f} ms; elapsed {elapsed / 60:.1f} min, "
                f"ETA {eta / 60:.1f} min"
            )
    finally:
        chain.close()
    report = {
        "study": study.study_name,
        "recipe": describe_recipe(recipe),
        "recipe_fields": _plain(recipe.to_dict()),
        "proxy": "the study's highest rung each network reached (see proxy_rung)",
        "data": str(data) if data else "synthetic",
        "holdout": list(holdout),
        "latency": {
            "input_size": list(spec.latency.input_size),
            "providers": list(spec.latency.providers),
            "budget_ms": spec.latency.budget_ms,
        },
        "networks": [dataclasses.asdict(r) for r, _ in networks],
    }
    atomic_write_text(out / "report.json", json.dumps(report, indent=2) + "\n")
    plot = plot_final(report, out / PLOT_NAME)
    atomic_write_text(out / REPORT_NAME, report_markdown(report, plot))
    return report


def _trial_config_yaml(study, number: int) -> str:
    trial = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    return trial.user_attrs["config_yaml"]


def _final_row(name: str, kind: str, row: Any, config: JetSegConfig | None = None) -> FinalRow:
    return FinalRow(
        name=name,
        kind=kind,
        arch_hash=row.arch_hash if row is not None else arch_hash(config),
        trial=row.number if row is not None else None,
        params=row.params if row is not None else None,
        macs=row.macs if row is not None else None,
        proxy_rung=row.rung if row is not None else None,
        proxy_val_miou=row.miou if row is not None else None,
        proxy_heldout_miou=row.heldout_miou if row is not None else None,
        proxy_latency_ms=row.latency_ms if row is not None else None,
    )


def _measure(row: FinalRow, config: JetSegConfig, chain: Any, spec: Any, log) -> None:
    import torch

    from jetseg.complexity import profile
    from jetseg.export import export_onnx
    from jetseg.model import build_model

    model = build_model(config)
    h, w = spec.latency.input_size
    counts = profile(model, (h, w))
    row.params, row.macs = counts.params, counts.macs
    with torch.no_grad():
        onnx_bytes = export_onnx(model, input_size=(h, w))
    result, errors = chain.measure(onnx_bytes, config)
    for error in errors:
        log(f"  latency fallback: {error}")
    row.latency_median_ms = result.median_ms
    row.latency_p90_ms = result.p90_ms
    row.latency_flags = list(result.flags)
    row.latency_source = result.provenance.value


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _plain(data: Any) -> Any:
    return json.loads(json.dumps(data, default=list))


def report_markdown(report: dict[str, Any], plot: Path | None) -> str:
    """The report as Markdown: the recipe, then one table row per network."""
    lines = [
        f"# Final training of study `{report['study']}`",
        "",
        f"- Full recipe (every **final** figure): {report['recipe']}.",
        f"- Proxy figures: {report['proxy']}.",
        f"- Data: {report['data']}; held-out sequences (never trained on): "
        f"{', '.join(report['holdout']) or 'none'}.",
        f"- Latency re-measured at {report['latency']['input_size'][0]}x"
        f"{report['latency']['input_size'][1]} with {', '.join(report['latency']['providers'])}"
        + (
            f"; budget {report['latency']['budget_ms']} ms."
            if report["latency"]["budget_ms"]
            else "."
        ),
        "",
        "| network | kind | params | MACs | latency median / p90 ms | flags | proxy rung | "
        "proxy val mIoU | final val mIoU | proxy held-out | final held-out mIoU | train time |",
        "| --- | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for n in report["networks"]:
        lat = (
            f"{n['latency_median_ms']:.2f} / {n['latency_p90_ms']:.2f}"
            if n["latency_median_ms"] is not None
            else "-"
        )
        flags = ", ".join(f for f in n["latency_flags"] if f != "from-cache") or ""
        lines.append(
            f"| {n['name']} | {n['kind']} | {n['params']:,} | {n['macs'] / 1e6:.1f} M | {lat} | "
            f"{flags} | {n['proxy_rung'] if n['proxy_rung'] is not None else '-'} | "
            f"{_pct(n['proxy_val_miou'])} | {_pct(n['val_miou'])} | "
            f"{_pct(n['proxy_heldout_miou'])} | {_pct(n['heldout_miou'])} | "
            f"{(n['train_time_s'] or 0) / 60:.1f} min |"
        )
    if plot is not None:
        lines += ["", f"![final front]({plot.name})"]
    return "\n".join(lines) + "\n"


def plot_final(report: dict[str, Any], path: Path) -> Path | None:
    """Final mIoU against re-measured latency; presets marked; proxy figure beside each."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    nets = [n for n in report["networks"] if n["latency_median_ms"] is not None]
    metric = "heldout_miou" if any(n["heldout_miou"] is not None for n in nets) else "val_miou"
    label = "held-out mIoU" if metric == "heldout_miou" else "val mIoU"
    fig, ax = plt.subplots(figsize=(8.5, 5), dpi=120)
    for n in nets:
        final = n[metric]
        proxy = n["proxy_" + metric]
        x = n["latency_median_ms"]
        style = (
            {"marker": "*", "s": 200, "c": "#ff7f0e"}
            if n["kind"] == "preset"
            else {"marker": "o", "s": 50, "c": "#1f77b4"}
        )
        if final is not None:
            ax.scatter([x], [100 * final], edgecolors="k", zorder=5, **style)
            ax.annotate(
                n["name"], (x, 100 * final), textcoords="offset points", xytext=(6, 4), fontsize=8
            )
        if proxy is not None and final is not None:
            px = n["proxy_latency_ms"] or x
            ax.scatter(
                [px],
                [100 * proxy],
                marker=style["marker"],
                s=style["s"] / 2,
                facecolors="none",
                edgecolors=style["c"],
            )
            ax.annotate(
                "",
                (x, 100 * final),
                (px, 100 * proxy),
                arrowprops={"arrowstyle": "->", "color": "#9e9e9e", "lw": 0.8},
            )
    budget = report["latency"]["budget_ms"]
    if budget:
        ax.axvline(budget, ls="--", c="#d62728", lw=1)
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], marker="o", ls="", c="#1f77b4", label="found network (final)"),
        Line2D([], [], marker="*", ls="", c="#ff7f0e", ms=12, label="preset (final)"),
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
    if budget:
        handles.append(Line2D([], [], ls="--", c="#d62728", label=f"budget {budget} ms"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    ax.set_xlabel("latency median, ms (re-measured)")
    ax.set_ylabel(f"{label}, %")
    ax.set_title(f"{report['study']}: final training ({report['recipe'].split(' at ')[0]})")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
