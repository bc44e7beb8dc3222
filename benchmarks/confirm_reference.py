"""Device configs from the reference set: choose on val, confirm on fresh seeds, judge on held-out.

The reference set (``benchmarks/reference.py``) is a random search of the nano space at full
fidelity: 28 networks drawn from it and the two presets, each trained with the reference recipe
(30 epochs at 120x160, 0006R0 held out) with seeds 0 and 1. For each ``--target`` (a board study
file: ``studies/<target>.yaml``) this benchmark:

1. estimates every network's latency with the study's own providers (no board answers here:
   the study's roofline estimate for the board) and keeps those within the study's budget (the
   target preset's latency times the study's factor);
2. **chooses** the one with the highest val mIoU (last epoch, mean of seeds 0 and 1). The choice
   looks at val only; the held-out sequence is left for the verdict;
3. trains it again with **fresh seeds** (2, 3, 4 by default) under the same recipe: a network
   chosen for its seeds' scores carries their luck (the winner's curse), fresh seeds do not. The
   rows go to ``benchmarks/reference/confirm-camvid-v1.jsonl`` (the reference set's format; a
   restarted run skips what is there and resumes a half-done training);
4. **judges** the fresh seeds' held-out mIoU against every reference seed of the target preset
   (none of which was chosen for its score) with :func:`jetsearch.compare.judge` (Welch's
   one-sided t-test at 90%, and an estimate no higher than the preset's);
5. with ``--write-presets DIR``, writes each network that won as ``DIR/<target>-found.yaml``
   with a ``# provenance:`` header (where it was drawn, how it was chosen, the seeds, the test).

Examples::

    python benchmarks/confirm_reference.py --target agx --target nano      # choose, train, judge
    python benchmarks/confirm_reference.py --target agx --report           # judge what is there
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import describe  # noqa: E402
from reference import DEFAULT_DATA, DEFAULT_OUT, RECIPE, base_job, run_jobs  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIRM_OUT = REPO / "benchmarks" / "reference" / "confirm-camvid-v1.jsonl"
CHOICE_SEEDS = (0, 1)


def estimates(target: str, configs: dict[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Each network's latency under ``studies/<target>.yaml``'s providers, and the budget."""
    import yaml

    from jetsearch.budget import preset_latency
    from jetsearch.latency.chain import LatencyChain
    from jetsearch.spec import load_study_spec

    spec = load_study_spec(REPO / "studies" / f"{target}.yaml")
    chain = LatencyChain(spec)
    h, w = spec.latency.input_size
    try:
        rule = spec.latency.budget_rule()
        preset = preset_latency(spec, chain, rule["relative_to"])
        budget = {
            "budget_ms": preset.median_ms * rule["factor"],
            "rule": f"{rule['factor']:g} x the {rule['relative_to']} preset's "
            f"{preset.median_ms:.3f} ms",
            "providers": chain.describe(),
            "input_size": [h, w],
        }
        latency = {}
        for name, config_yaml in configs.items():
            result = preset_latency(spec, chain, yaml.safe_load(config_yaml))
            latency[name] = {"ms": result.median_ms, "source": result.provenance.value}
    finally:
        chain.close()
    return latency, budget


def choose(rows: list[dict[str, Any]], latency: dict[str, Any], budget_ms: float) -> dict:
    """The drawn network within the budget with the highest val mIoU over the choice seeds."""
    from jetsearch.reference import figure

    val: dict[str, list[float]] = {}
    for row in rows:
        if row["seed"] in CHOICE_SEEDS and not row["source"].startswith("preset"):
            val.setdefault(row["network"], []).append(figure(row, "val"))
    feasible = [
        (name, statistics.mean(v))
        for name, v in val.items()
        if len(v) == len(CHOICE_SEEDS) and latency[name]["ms"] <= budget_ms
    ]
    if not feasible:
        raise SystemExit(f"no drawn network of the reference set is within {budget_ms:.3f} ms")
    ranked = sorted(feasible, key=lambda item: (-item[1], latency[item[0]]["ms"]))
    return {
        "network": ranked[0][0],
        "val_choice": ranked[0][1],
        "feasible": len(feasible),
        "drawn": len(val),
        "runner_up": ranked[1] if len(ranked) > 1 else None,
    }


def judge_target(
    target: str, chosen: dict, rows: list[dict], fresh: list[dict], latency: dict, budget: dict
) -> dict[str, Any]:
    from jetsearch.compare import compare_latency, judge
    from jetsearch.reference import figure

    name = chosen["network"]
    preset = f"{target}-preset"
    cand = {r["seed"]: figure(r, "heldout") for r in fresh if r["network"] == name}
    cand_val = {r["seed"]: figure(r, "val") for r in fresh if r["network"] == name}
    base = {r["seed"]: figure(r, "heldout") for r in rows if r["network"] == preset}
    base_val = {r["seed"]: figure(r, "val") for r in rows if r["network"] == preset}
    chosen_heldout = [
        figure(r, "heldout") for r in rows if r["network"] == name and r["seed"] in CHOICE_SEEDS
    ]
    lat = compare_latency([latency[name]["ms"]], [latency[preset]["ms"]], measured=False)
    verdict = judge(list(cand.values()), list(base.values()), lat) if cand else None
    return {
        "target": target,
        "network": name,
        "budget": budget,
        "choice": chosen,
        "choice_seeds_heldout": chosen_heldout,
        "fresh_seeds": sorted(cand),
        "heldout": [cand[s] for s in sorted(cand)],
        "val": [cand_val[s] for s in sorted(cand_val)],
        "preset": preset,
        "preset_seeds": sorted(base),
        "preset_heldout": [base[s] for s in sorted(base)],
        "preset_val": [base_val[s] for s in sorted(base_val)],
        "latency_ms": latency[name]["ms"],
        "preset_latency_ms": latency[preset]["ms"],
        "latency_source": latency[name]["source"],
        "verdict": None if verdict is None else verdict.verdict,
        "reason": "no fresh seed trained yet" if verdict is None else verdict.reason,
        "p_value": None if verdict is None else verdict.better.p_value,
    }


def _pm(values: list[float]) -> str:
    if not values:
        return "-"
    spread = f" ± {100 * statistics.stdev(values):.1f}" if len(values) > 1 else ""
    return f"{100 * statistics.mean(values):.1f}{spread}"


def markdown(results: list[dict[str, Any]]) -> str:
    lines = [
        "| target | budget (estimated) | chosen on val (seeds 0-1) | its latency | held-out % "
        "seeds 0-1 | fresh seeds held-out % | preset held-out % (seeds) | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        c = r["choice"]
        lines.append(
            f"| {r['target']} | {r['budget']['budget_ms']:.2f} ms | {r['network']} (val "
            f"{100 * c['val_choice']:.1f}%, best of {c['feasible']} within budget) | "
            f"{r['latency_ms']:.2f} ms | "
            f"{', '.join(f'{100 * v:.1f}' for v in r['choice_seeds_heldout'])} | "
            f"{_pm(r['heldout'])} (seeds "
            f"{', '.join(map(str, r['fresh_seeds']))}) | {_pm(r['preset_heldout'])} "
            f"({', '.join(map(str, r['preset_seeds']))}) | {r['reason']} |"
        )
    return "\n".join(lines)


def write_preset(result: dict[str, Any], config_yaml: str, directory: Path) -> Path:
    """The won network as ``<directory>/<target>-found.yaml`` under its provenance."""
    import dataclasses

    import yaml

    from jetseg.config import dump_config, load_config, provenance_header

    name = f"{result['target']}-found"
    config = dataclasses.replace(load_config(yaml.safe_load(config_yaml)), name=name)
    summary = [
        f"{name}: a JetSeg network found for {result['target']} by the reference set's random "
        f"search of the nano space ({result['network']}),",
        f"chosen on val over seeds 0-1 among {result['choice']['feasible']} networks within "
        f"the budget, then trained with fresh seeds {result['fresh_seeds']}.",
        f"Held-out mIoU {_pm(result['heldout'])} against the {result['preset']}'s "
        f"{_pm(result['preset_heldout'])} (Welch p={result['p_value']:.3g}), estimated latency "
        f"{result['latency_ms']:.2f} against {result['preset_latency_ms']:.2f} ms.",
    ]
    provenance = {
        "preset": name,
        "search": "benchmarks/reference.py (space nano, RandomSampler seed 0) then "
        "benchmarks/confirm_reference.py",
        "network": result["network"],
        "target": result["target"],
        "budget": result["budget"],
        "recipe": RECIPE,
        "choice": {"metric": "val mIoU, last epoch", "seeds": list(CHOICE_SEEDS)}
        | {k: result["choice"][k] for k in ("val_choice", "feasible", "drawn")},
        "seeds": result["fresh_seeds"],
        "heldout_miou": result["heldout"],
        "val_miou": result["val"],
        "beat": {
            "preset": result["preset"],
            "metric": "heldout_miou",
            "test": "Welch's one-sided t-test at 90%",
            "p_value": result["p_value"],
            "preset_seeds": result["preset_seeds"],
            "preset_heldout_miou": result["preset_heldout"],
        },
        "latency": {
            "ms": result["latency_ms"],
            "preset_ms": result["preset_latency_ms"],
            "source": result["latency_source"],
            "measured": False,
        },
        "machine": describe(1),
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    path = directory / f"{name}.yaml"
    directory.mkdir(parents=True, exist_ok=True)
    path.write_text(provenance_header(provenance, summary) + "\n" + dump_config(config))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", action="append", required=True, help="agx, nano (repeat)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[2, 3, 4], help="fresh seeds")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="CamVid root")
    parser.add_argument("--reference", default=str(DEFAULT_OUT), help="the reference .jsonl")
    parser.add_argument("--out", default=str(CONFIRM_OUT), help="the fresh seeds' .jsonl")
    parser.add_argument("--runs", default="runs/confirm", help="checkpoints (not kept)")
    parser.add_argument("--parallel", type=int, default=1, help="trainings at a time")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per training")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--report", action="store_true", help="judge what is there, train none")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--write-presets", help="folder for the networks that won")
    args = parser.parse_args(argv)

    from jetsearch.reference import append_reference, done_pairs, read_reference

    for target in args.target:
        if not (REPO / "studies" / f"{target}.yaml").is_file():
            parser.error(f"--target {target}: no studies/{target}.yaml")
    if set(args.seeds) & set(CHOICE_SEEDS):
        parser.error(f"--seeds must be fresh: seeds {CHOICE_SEEDS} chose the network")
    rows = read_reference(args.reference)
    fresh = read_reference(args.out) if Path(args.out).is_file() else []
    configs = {}
    for row in rows:
        configs.setdefault(row["network"], row["config_yaml"])
    print(f"machine: {describe(args.threads)}", flush=True)
    results, jobs = [], []
    for target in args.target:
        latency, budget = estimates(target, configs)
        chosen = choose(rows, latency, budget["budget_ms"])
        name = chosen["network"]
        print(
            f"{target}: budget {budget['budget_ms']:.3f} ms ({budget['rule']}, "
            f"{budget['providers']}); {chosen['feasible']} of {chosen['drawn']} drawn networks "
            f"within it; chosen on val: {name} ({100 * chosen['val_choice']:.1f}%, "
            f"{latency[name]['ms']:.3f} ms)",
            flush=True,
        )
        done = done_pairs(fresh)
        row0 = next(r for r in rows if r["network"] == name)
        for seed in args.seeds:
            if (name, seed) not in done and not args.report:
                jobs.append(base_job(row0, seed, args) | {"recipe": RECIPE})
        results.append((target, chosen, latency, budget))
    if jobs:
        print(f"training {len(jobs)} fresh seeds...", flush=True)
        run_jobs(
            jobs, args.parallel, lambda row: (append_reference(args.out, row), fresh.append(row))
        )
    judged = [judge_target(t, c, rows, fresh, lat, b) for t, c, lat, b in results]
    print(markdown(judged))
    if args.json:
        Path(args.json).write_text(json.dumps(judged, indent=1) + "\n")
    if args.write_presets:
        for result in judged:
            if result["verdict"] == "win":
                path = write_preset(result, configs[result["network"]], Path(args.write_presets))
                print(f"wrote {path}")
            else:
                print(f"{result['target']}: no preset written ({result['reason']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
