"""``jetsearch finalize``: train a study's best networks over seeds, compare them with presets.

A study scores every network after a short proxy run. Finalize closes the loop: it takes the
study's most accurate feasible networks at the highest rung they reached (``choose_by="miou"``;
or the noise-aware front's, ``"front"``), and optionally the presets, and trains each under
**one** full recipe with ``seeds`` seeds (0, 1, ...), each in a resumable run directory of its
own (``<out>/<network>/seed<k>``, the layout ``jetsearch train`` writes). Every run is evaluated
on val and on the held-out sequences; per network the report gives the mean and the sample
standard deviation over the seeds.

Latency is re-measured with the study's providers, without the cache. Where they measure, all
networks are measured in ``rounds`` interleaved rounds (each round measures every network once,
starting one further down the list each time), so a drift in the machine's load hits presets
and found networks alike; a network's latency is the median of its round medians. Where they
estimate, each network gets one estimate from the same provider, labelled ``estimated``.

Each found network is then judged against each preset (:func:`jetsearch.compare.judge`): a
**win** needs a mean mIoU over seeds higher beyond the seed spread (Welch's one-sided t-test,
90% by default) on the held-out sequences (on val when none are held out) **and** a latency no
higher (measured: a median over the rounds no higher and faster in at least half of the rounds;
estimated: an estimate no higher). With ``write_preset``, the best network that wins against
the baseline preset is written as a derived preset whose header says where it came from
(:func:`write_derived_preset`); without a win nothing is written and the report says why.

Writes ``report.md``, ``report.json`` and ``front_final.png`` (latency against mIoU with the
seed spread as error bars, the presets marked, each network's proxy figure beside its final
one). Running the same command again resumes the trainings that did not finish, trains nothing
twice, and keeps the latencies measured for the same networks and settings (``latency.json``)
unless ``remeasure``.

The full recipe is the study's ``train:`` block with the given length (``epochs`` or
``minutes`` of training), at the study's latency input size unless ``size`` is given, with the
usual augmentation (random scale 0.5-2.0, crop to the training size, horizontal flip) unless
``augment`` is off; seed ``k`` replaces only the recipe's seed. The report names the recipe
that produced every number.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import math
import os
import re
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jetsearch.compare import (
    DEFAULT_CONFIDENCE,
    MIN_SEEDS,
    TEST_NAME,
    UNTESTED,
    WIN,
    compare_latency,
    judge,
)
from jetsearch.final_latency import latency_rounds
from jetsearch.final_report import (
    _finite,
    _pct,
    _plain,
    _pm,
    describe_machine,
    plot_final,
    report_markdown,
)
from jetsearch.fronts import ranked
from jetseg.config import JetSegConfig, arch_hash, load_config, load_yaml_text
from jetseg.fileio import atomic_write_text

AUGMENTATION = {"random_scale": (0.5, 2.0), "flip": True}
REPORT_NAME = "report.md"
PLOT_NAME = "front_final.png"
DEFAULT_SEEDS = 3
DEFAULT_ROUNDS = 5
LATENCY_RULE = (
    "measured: the median over interleaved rounds no higher than the preset's and faster in at "
    "least half of the rounds; estimated: the estimate no higher"
)
PRESET_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


class FinalizeError(RuntimeError):
    """Finalize cannot run as asked (no front, unknown preset, ...), with the reason."""


@dataclass
class SeedRun:
    """One training of one network: its seed, its run directory and its figures."""

    seed: int
    run_dir: str
    val_miou: float | None
    heldout_miou: float | None
    train_time_s: float
    epochs: int
    device: str = "cpu"


@dataclass
class FinalRow:
    """One network of the final report: its proxy figures, its seeds and their summary.

    ``val_miou`` and ``heldout_miou`` are means over the seeds, ``*_sd`` their sample standard
    deviations (None below two seeds). ``latency_rounds_ms`` holds the network's median in each
    interleaved round (one value for an estimate); ``latency_median_ms`` is their median.
    ``verdicts`` maps each preset's name to the verdict against it (found networks only).
    """

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
    seeds: list[SeedRun] = field(default_factory=list)
    val_miou: float | None = None
    val_miou_sd: float | None = None
    heldout_miou: float | None = None
    heldout_miou_sd: float | None = None
    latency_median_ms: float | None = None
    latency_p90_ms: float | None = None
    latency_rounds_ms: list[float] = field(default_factory=list)
    latency_flags: list[str] = field(default_factory=list)
    latency_source: str | None = None
    latency_device: str | None = None
    train_time_s: float | None = None
    run_dir: str = ""
    verdicts: dict[str, dict[str, Any]] = field(default_factory=dict)

    def values(self, metric: str) -> list[float]:
        """The per-seed values of ``metric`` (``val_miou`` or ``heldout_miou``) that exist."""
        return [v for v in (getattr(s, metric) for s in self.seeds) if v is not None]

    def summarise(self) -> None:
        """Means and sample standard deviations over the seeds, total training time."""
        for metric in ("val_miou", "heldout_miou"):
            values = self.values(metric)
            mean = statistics.fmean(values) if values else None
            sd = statistics.stdev(values) if len(values) >= MIN_SEEDS else None
            setattr(self, metric, mean)
            setattr(self, f"{metric}_sd", sd)
        self.train_time_s = round(sum(s.train_time_s for s in self.seeds), 1)

    @property
    def measured(self) -> bool:
        return bool(self.latency_source and self.latency_source.startswith("measured"))


def spec_of(study) -> Any:
    """The StudySpec a study was created with (stored as its ``spec`` attribute)."""
    from jetsearch.spec import stored_spec

    spec = stored_spec(study)
    if spec is None:
        raise FinalizeError(f"study {study.study_name} stored no spec; was it made by jetsearch?")
    return spec


CHOICES = ("miou", "front")


def choose(rows: Sequence[Any], top: int, by: str = "miou") -> list[Any]:
    """The ``top`` found networks to finalize, best first.

    ``miou`` (the default): the feasible networks that reached the highest rung, most accurate
    first (then lower rungs, each by mIoU). Finalize is where a found network must beat the
    preset in accuracy at no more latency, and once a trial's mIoU carries its seed spread the
    noise-aware front often holds a single network, the fastest of a tie, the least likely to
    win that comparison. ``front``: the noise-aware front's networks, ends first, then spread.

    Found means not a preset: the presets a study enqueued are trained with ``--with-presets``
    (as presets, once), so the choice here is among the other networks.
    """
    from jetsearch.report import feasible_networks, front_rows

    if by not in CHOICES:
        raise FinalizeError(f"--choose {by!r}: expected one of {', '.join(CHOICES)}")
    found = [r for r in rows if not r.preset]
    if by == "front":
        front = front_rows(found)
        by_key = {r.point().key: r for r in front}
        chosen = [by_key[p.key] for p in ranked([r.point() for r in front])]
    else:
        chosen = sorted(feasible_networks(found), key=lambda r: (-r.rung, -r.miou, r.latency_ms))
    if not chosen:
        raise FinalizeError(
            "the study has no feasible finished network other than the presets to finalize"
        )
    return chosen[:top]


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
    """The one TrainConfig every finalized network trains with (seed 0; seed k replaces it)."""
    if (epochs is None) == (minutes is None):
        raise FinalizeError("give exactly one of --epochs N or --minutes M")
    if epochs is not None and epochs < 1:
        raise FinalizeError(f"--epochs must be >= 1, got {epochs}")
    if minutes is not None and not minutes > 0:
        raise FinalizeError(f"--minutes must be > 0, got {minutes}")
    base = spec.train.train_config(seed=0)
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


def machine() -> dict[str, Any]:
    """The machine finalize runs (and trains) on: CPU, its cores, GPU, torch."""
    import torch

    from jetsearch.latency.worker import cpu_model

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "gpu": gpu, "torch": torch.__version__}


def check_preset_name(name: str, preset_dir: Path) -> Path:
    """Where ``--write-preset name`` will write; refuses a bad name or a paper preset's file.

    A derived preset (a file with a provenance block) of that name may be written again.
    """
    from jetseg.config import ConfigError, config_file, read_provenance

    if not PRESET_NAME.fullmatch(name):
        raise FinalizeError(
            f"--write-preset {name!r}: a preset name is lower-case letters, digits, '-' and "
            "'_' (at most 64), starting with a letter or digit"
        )
    target = Path(preset_dir) / f"{name}.yaml"
    existing = [target] if target.is_file() else []
    with contextlib.suppress(FileNotFoundError):
        existing.append(config_file(name))
    for path in existing:
        try:
            derived = read_provenance(path) is not None
        except (ConfigError, OSError):
            derived = False
        if not derived:
            raise FinalizeError(
                f"--write-preset {name}: {path} exists and is not a derived preset; choose "
                f"another name (e.g. {name}-found)"
            )
    return target


def finalize(
    study,
    storage: Any,
    *,
    top: int,
    choose_by: str = "miou",
    presets: Sequence[str] = (),
    seeds: int = DEFAULT_SEEDS,
    rounds: int = DEFAULT_ROUNDS,
    epochs: int | None = None,
    minutes: float | None = None,
    size: tuple[int, int] | None = None,
    augment: bool = True,
    data: str | None = None,
    holdout: Sequence[str] | None = None,
    out_dir: str | Path,
    baseline: str | None = None,
    confidence: float = DEFAULT_CONFIDENCE,
    write_preset: str | None = None,
    preset_dir: str | Path | None = None,
    remeasure: bool = False,
    progress: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train over seeds, evaluate, re-measure, judge and report; returns ``report.json``'s data.

    ``presets`` are trained beside the found networks; ``baseline`` (default: the preset named
    as the study's target, else the first of ``presets``) is the one a derived preset must
    beat. Every argument is checked before anything is trained.
    """
    from jetsearch.report import trial_rows
    from jetsearch.spec import study_budget
    from jetseg.config import PRESETS_DIR

    if top < 1:
        raise FinalizeError(f"--top must be >= 1, got {top}")
    if seeds < 1:
        raise FinalizeError(f"--seeds must be >= 1, got {seeds}")
    if rounds < 1:
        raise FinalizeError(f"--rounds must be >= 1, got {rounds}")
    presets = list(dict.fromkeys(presets))
    spec = spec_of(study)
    if baseline is None and presets:
        baseline = spec.target if spec.target in presets else presets[0]
    if baseline is not None and baseline not in presets:
        raise FinalizeError(f"--baseline {baseline}: not among the presets trained ({presets})")
    target_file = None
    if write_preset is not None:
        if not presets:
            raise FinalizeError(
                "--write-preset needs a preset to beat: add --with-presets (e.g. the target's)"
            )
        target_file = check_preset_name(write_preset, Path(preset_dir or PRESETS_DIR))
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
    if spec.train.threads is not None:  # the study's torch threads per training process
        import torch

        torch.set_num_threads(spec.train.threads)
    rows = trial_rows(study, storage)
    networks: list[tuple[FinalRow, JetSegConfig]] = []
    for r in choose(rows, top, choose_by):
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

    _train_all(networks, data, recipe, seeds, out, log)
    latency_rounds(networks, spec, rounds, out, remeasure, log)
    metric = comparison_metric([row for row, _ in networks])
    judge_networks([row for row, _ in networks], metric=metric, confidence=confidence)

    report = report_header(
        study.study_name,
        spec,
        recipe,
        data=data,
        holdout=holdout,
        seeds=seeds,
        rounds=rounds,
        metric=metric,
        baseline=baseline,
        confidence=confidence,
        budget=study_budget(study),
    )
    report["chosen_by"] = choose_by
    report["networks"] = [dataclasses.asdict(r) for r, _ in networks]
    if write_preset is not None:
        path, message = write_derived_preset(
            report,
            [row for row, _ in networks],
            {row.name: config for row, config in networks},
            write_preset,
            target_file.parent,
        )
        report["derived_preset"] = {
            "name": write_preset,
            "path": None if path is None else str(path),
            "message": message,
        }
        log(message)
    atomic_write_text(out / "report.json", json.dumps(_plain(report), indent=2) + "\n")
    plot = plot_final(report, out / PLOT_NAME)
    atomic_write_text(out / REPORT_NAME, report_markdown(report, plot))
    return report


def _train_all(
    networks: Sequence[tuple[FinalRow, JetSegConfig]],
    data: str | None,
    recipe: Any,
    seeds: int,
    out: Path,
    log: Callable[[str], None],
) -> None:
    """Every network with every seed, each in ``<out>/<name>/seed<k>`` (resumed if there)."""
    from jetseg.run import run_training

    total = len(networks) * seeds
    started, done = time.time(), 0
    for row, config in networks:
        row.run_dir = str(out / row.name)
        row.seeds = []
        for seed in range(seeds):
            done += 1
            run_dir = out / row.name / f"seed{seed}"
            log(f"[{done}/{total}] {row.name} ({row.kind}) seed {seed}: training in {run_dir}")
            result = run_training(config, data, run_dir, dataclasses.replace(recipe, seed=seed))
            row.seeds.append(
                SeedRun(
                    seed=seed,
                    run_dir=str(run_dir),
                    val_miou=_finite(result.best_miou),
                    heldout_miou=_finite(result.heldout_miou),
                    train_time_s=round(result.train_time_s, 1),
                    epochs=result.epochs_done,
                    device=result.device,
                )
            )
            elapsed = time.time() - started
            log(
                f"  val mIoU {_pct(row.seeds[-1].val_miou)}, held-out "
                f"{_pct(row.seeds[-1].heldout_miou)}; elapsed {elapsed / 60:.1f} min, "
                f"ETA {elapsed / done * (total - done) / 60:.1f} min"
            )
        row.summarise()


def comparison_metric(rows: Sequence[FinalRow]) -> str:
    """``heldout_miou`` when every run has a held-out figure, else ``val_miou``."""
    if rows and all(len(r.values("heldout_miou")) == len(r.seeds) > 0 for r in rows):
        return "heldout_miou"
    return "val_miou"


def judge_networks(
    rows: Sequence[FinalRow], *, metric: str, confidence: float = DEFAULT_CONFIDENCE
) -> None:
    """Each found network's verdict against each preset, into ``row.verdicts``."""
    presets = [r for r in rows if r.kind == "preset"]
    for row in rows:
        if row.kind != "found":
            continue
        row.verdicts = {}
        for preset in presets:
            row.verdicts[preset.name.removeprefix("preset-")] = _verdict(
                row, preset, metric, confidence
            )


def _verdict(row: FinalRow, preset: FinalRow, metric: str, confidence: float) -> dict[str, Any]:
    record: dict[str, Any] = {
        "metric": metric,
        "test": TEST_NAME,
        "confidence": confidence,
    }
    source = row.latency_source or "none"
    if source != preset.latency_source or source.startswith("mixed"):
        return {
            **record,
            "verdict": UNTESTED,
            "reason": f"untested: latencies not comparable ({row.latency_source} against "
            f"{preset.latency_source})",
        }
    measured = row.measured
    latency = compare_latency(
        row.latency_rounds_ms if measured else [row.latency_median_ms],
        preset.latency_rounds_ms if measured else [preset.latency_median_ms],
        measured=measured,
    )
    verdict = judge(row.values(metric), preset.values(metric), latency, confidence)
    better = verdict.better
    return {
        **record,
        "verdict": verdict.verdict,
        "reason": verdict.reason,
        "difference": _finite(better.candidate_mean - better.baseline_mean),
        "t": _finite(better.t),
        "df": _finite(better.df),
        "p_value": _finite(better.p_value),
        "p_value_worse": _finite(verdict.worse.p_value),
        "latency": dataclasses.asdict(latency),
    }


def report_header(
    study_name: str,
    spec: Any,
    recipe: Any,
    *,
    data: str | None,
    holdout: Sequence[str],
    seeds: int,
    rounds: int,
    metric: str,
    baseline: str | None,
    confidence: float = DEFAULT_CONFIDENCE,
    budget: Any = None,
) -> dict[str, Any]:
    """Everything ``report.json`` says besides its networks. ``budget`` is the study's
    :class:`jetsearch.spec.StudyBudget` as fixed when it started (None: the spec's
    ``latency.budget_ms``)."""
    budget_ms = spec.latency.budget_ms if budget is None else budget.budget_ms
    return {
        "study": study_name,
        "target": spec.target,
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "recipe": describe_recipe(recipe),
        "recipe_fields": _plain(recipe.to_dict()),
        "seeds": seeds,
        "proxy": "the study's highest rung each network reached (see proxy_rung)",
        "data": str(data) if data else "synthetic",
        "holdout": list(holdout),
        "latency": {
            "input_size": list(spec.latency.input_size),
            "providers": list(spec.latency.providers),
            "budget_ms": budget_ms,
            "budget": None if budget is None else budget.describe(),
            "rounds": rounds,
        },
        "comparison": {
            "metric": metric,
            "test": TEST_NAME,
            "confidence": confidence,
            "latency_rule": LATENCY_RULE,
            "baseline": baseline,
        },
    }


def write_derived_preset(
    report: dict[str, Any],
    rows: Sequence[FinalRow],
    configs: dict[str, JetSegConfig],
    name: str,
    preset_dir: str | Path,
) -> tuple[Path | None, str]:
    """The best found network that won against the baseline, as ``<preset_dir>/<name>.yaml``.

    The best is the winner with the highest mean of the comparison metric (the lower latency
    on a tie). Its file is the config under comment lines that say where it came from, and a
    ``# provenance:`` block (:func:`jetseg.config.provenance_header`) with the study, target,
    latency provider and whether it measured, the final figures with their seed spread, the
    preset beaten with the test, the date and the machine. Returns the path (None when no
    network won) and a message that says what was written, or which test each network failed.
    """
    from jetseg.config import dump_config, preset_dirs, provenance_header

    comparison = report["comparison"]
    baseline, metric = comparison["baseline"], comparison["metric"]
    found = [r for r in rows if r.kind == "found"]
    winners = [r for r in found if r.verdicts.get(baseline, {}).get("verdict") == WIN]
    if not winners:
        failed = "; ".join(
            f"{r.name}: {r.verdicts.get(baseline, {}).get('reason', 'not compared')}" for r in found
        )
        return None, (
            f"no derived preset written: no found network beat {baseline} beyond the seed "
            f"spread and no slower ({failed})"
        )
    best = max(winners, key=lambda r: (getattr(r, metric), -(r.latency_median_ms or 0.0)))
    preset = next(r for r in rows if r.kind == "preset" and r.name == f"preset-{baseline}")
    verdict = best.verdicts[baseline]
    config = dataclasses.replace(configs[best.name], name=name)
    label = "held-out" if metric == "heldout_miou" else "val"
    seeds = len(best.seeds)
    latency = verdict["latency"]
    how = "measured" if latency["measured"] else "estimated"
    summary = [
        f"{name}: a JetSeg network found by jetsearch study {report['study']} (target "
        f"{report['target']}), {best.name}, trained with {seeds} seeds.",
        f"It beat the {baseline} preset on {label} mIoU: "
        f"{_pm(getattr(best, metric), _sd(best, metric))} against "
        f"{_pm(getattr(preset, metric), _sd(preset, metric))} (Welch p={verdict['p_value']:.3g}),",
        f"at a latency no higher ({how}): {best.latency_median_ms:.2f} against "
        f"{preset.latency_median_ms:.2f} ms.",
    ]
    provenance = {
        "preset": name,
        "study": report["study"],
        "target": report["target"],
        "network": best.name,
        "trial": best.trial,
        "arch_hash": best.arch_hash,
        "created_at": report["created_at"],
        "machine": describe_machine(report["machine"]),
        "trained_on": sorted({s.device for s in best.seeds}),
        "data": report["data"],
        "holdout": report["holdout"],
        "recipe": report["recipe"],
        "seeds": [s.seed for s in best.seeds],
        "val_miou": _figures(best, "val_miou"),
        "heldout_miou": _figures(best, "heldout_miou"),
        "params": best.params,
        "macs": best.macs,
        "latency": {
            "providers": report["latency"]["providers"],
            "source": best.latency_source,
            "measured": latency["measured"],
            "device": best.latency_device,
            "input_size": report["latency"]["input_size"],
            "median_ms": _round(best.latency_median_ms),
            "rounds": latency["rounds"],
        },
        "beat": {
            "preset": baseline,
            "metric": metric,
            "test": f"{TEST_NAME} at {100 * comparison['confidence']:g}%",
            "difference": _round(verdict["difference"]),
            "t": _round(verdict["t"]),
            "df": _round(verdict["df"]),
            "p_value": _round(verdict["p_value"]),
            "preset_val_miou": _figures(preset, "val_miou"),
            "preset_heldout_miou": _figures(preset, "heldout_miou"),
            "preset_latency_ms": _round(preset.latency_median_ms),
            "faster_rounds": f"{latency['faster_rounds']}/{latency['rounds']}"
            if latency["measured"]
            else None,
            "latency_rule": LATENCY_RULE,
        },
    }
    path = Path(preset_dir) / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, provenance_header(provenance, summary) + "\n" + dump_config(config))
    if path.parent.resolve() in [d.resolve() for d in preset_dirs()]:
        where = f"load it as {name!r}; jetsearch model show {name} prints its provenance"
    else:
        where = (
            f"load it by name with JETSEG_PRESET_PATH={path.parent}; jetsearch model show "
            f"{path} prints its provenance"
        )
    return path, f"wrote derived preset {path} ({best.name}: {verdict['reason']}); {where}"


def _figures(row: FinalRow, metric: str) -> dict[str, Any] | None:
    values = row.values(metric)
    if not values:
        return None
    return {
        "mean": _round(getattr(row, metric)),
        "sd": _round(getattr(row, f"{metric}_sd")),
        "seeds": [_round(v) for v in values],
    }


def _sd(row: FinalRow, metric: str) -> float | None:
    return getattr(row, f"{metric}_sd")


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), digits)


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
