"""From search to deployment for one target: does the search find a network that beats the preset?

1. Run a study exactly as a user would (``jetsearch study --trials N``): for ``local``, the nano
   space on real CamVid; for another target, ``studies/<target>.yaml``; with the study file's
   rungs (those the proxy scoreboard chose, docs/reference.md) unless ``--rungs`` gives others,
   and the reference set's held-out sequence 0006R0 unless ``--holdout`` names another. The
   preset is enqueued; the latency budget is the preset's latency under the study's own
   providers (``budget_relative_to``), fixed when the study starts. By default (``--mode
   budget``) the study maximises mIoU within that budget and promotes each rung's most
   accurate networks; ``--mode pareto`` keeps the study file's mIoU-against-latency front.
2. ``jetsearch finalize`` its most accurate feasible networks at the highest rung and the
   preset under one recipe (by default the reference set's: 30 epochs at 120x160, augmented)
   with ``--seeds`` seeds each, latency re-measured in ``--rounds`` interleaved rounds, every
   found network judged against the preset (``--write-preset NAME`` writes a winner as a
   derived preset).
3. Print the comparison table (mean ± sd over seeds of val and held-out mIoU, latency and how
   it was taken, params, MACs, the verdict with Welch's t and p) and the machine.

Target: a found network that **wins** against the preset: a mean held-out mIoU over seeds
higher beyond the seed spread (Welch's one-sided t-test at 90%) at a latency no higher (the
median over interleaved rounds no higher and faster in at least half of them).
Every step is resumable: running the script again continues the study and the trainings.

``--smoke`` runs the whole path in a couple of minutes on the built-in synthetic scenes (tiny
space, 3 trials, 1-epoch trainings at 32x48, 2 seeds, 2 rounds): it checks the path, not the
search (the synthetic scenes hold no sequence out, so the verdicts compare val mIoU).

Examples::

    python benchmarks/search_to_deploy.py --trials 24 --top 2 --seeds 3 --out runs/s2d
    python benchmarks/search_to_deploy.py --smoke --out /tmp/s2d-smoke
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import describe  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO / ".." / "shared" / "camvid"
STUDY = "search_to_deploy"
# By default the study file's rungs: those the proxy scoreboard chose against the reference set.
DEFAULT_RUNGS = "study"
# The reference set's recipe (benchmarks/reference.py), so that final figures compare with it.
DEFAULT_FINAL = {"epochs": 30, "size": "120x160"}
# The smoke run: studies/local.yaml shrunk to trials of a second or two.
SMOKE_STUDY = {
    "space": "tiny",
    "data": None,
    "synthetic": {"train_images": 8, "val_images": 4},
    "train": {"epochs": 1, "size": [48, 64], "batch_size": 8, "threads": 1, "holdout": []},
    "latency": {"input_size": [64, 64], "runs": 5, "warmup_s": 0.05, "threads": 1},
}
SMOKE_FINALIZE = ["--epochs", "1", "--size", "32x48"]


def parse_rungs(text: str) -> list[dict]:
    from jetsearch.cli import parse_size

    rungs = []
    for part in text.split(","):
        epochs, _, size = part.strip().partition("@")
        try:
            if not epochs.isdigit():
                raise ValueError
            height, width = parse_size(size)
        except (ValueError, argparse.ArgumentTypeError):
            raise SystemExit(f"--rungs: {part!r} is not EPOCHS@HxW (e.g. 6@128x160)") from None
        rungs.append({"epochs": int(epochs), "size": [height, width]})
    return rungs


def run(cmd: list[str], log: Path) -> float:
    print("$ " + " ".join(cmd), flush=True)
    start = time.time()
    with log.open("a") as fh:
        done = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO)
    if done.returncode != 0:
        raise SystemExit(f"{cmd[3]} failed ({done.returncode}); see {log}")
    return time.time() - start


def study_definition(args: argparse.Namespace, preset: str, out: Path) -> dict:
    """The study this benchmark runs: the target's study file with its data, hold-out, rungs,
    preset and storage (or the smoke run's tiny one)."""
    from jetsearch.spec import merge_mappings

    base = yaml.safe_load((REPO / "studies" / f"{args.target}.yaml").read_text())
    study = {
        **base,
        "description": f"search_to_deploy benchmark: target {args.target}, against {preset}",
        "enqueue_presets": [preset],
        "storage": str(out / "studies.log"),
    }
    if args.target == "local":
        study["space"] = "nano"
    if args.space is not None:
        study["space"] = args.space
    if args.mode == "budget":
        # The most accurate network no slower than the preset: promotions by mIoU (rungs do
        # the pruning, Optuna's median pruner is off).
        study["mode"], study["pruner"] = "budget", "none"
    study["data"] = str(Path(args.data).resolve())
    study["train"] = {**base["train"], "holdout": list(args.holdout)}
    if args.rungs != DEFAULT_RUNGS:
        study["rungs"] = parse_rungs(args.rungs)
    study["latency"] = {**base["latency"], "cache": str(out / "latency.sqlite")}
    if args.target == "local":
        # No slower than the preset, timed here by the study's own provider when it starts.
        study["latency"].pop("budget_ms", None)
        study["latency"]["budget_relative_to"] = preset
    if args.smoke:
        study = merge_mappings(study, SMOKE_STUDY)
        study["synthetic"] = SMOKE_STUDY["synthetic"]  # not the study file's recipe for them
        study.pop("rungs", None)
        study.pop("eta", None)
    return study


def pm(mean: float | None, sd: float | None) -> str:
    if mean is None:
        return "-"
    return f"{100 * mean:.1f}" + ("" if sd is None else f" ± {100 * sd:.1f}")


def print_table(report: dict, preset: str) -> list[str]:
    """The comparison table; returns the found networks that win against ``preset``."""
    print(
        f"{'network':<14} {'kind':<6} {'val mIoU %':>12} {'held-out %':>12} {'seeds':>5} "
        f"{'latency ms':>11} {'how':<9} {'faster':>6} {'params':>7} {'MACs':>8}  "
        f"vs {preset} (Welch t, p)"
    )
    wins = []
    for n in report["networks"]:
        verdict = n["verdicts"].get(preset)
        source = n["latency_source"] or "-"
        how = "measured" if source.startswith("measured") else source
        faster, cell = "-", "-"
        if verdict is not None:
            lat = verdict.get("latency")
            if lat and lat["measured"]:
                faster = f"{lat['faster_rounds']}/{lat['rounds']}"
            t = "-" if verdict.get("t") is None else f"{verdict['t']:.2f}"
            p = "-" if verdict.get("p_value") is None else f"{verdict['p_value']:.3f}"
            cell = f"{verdict['verdict']} (t={t}, p={p})"
            if verdict["verdict"] == "win":
                wins.append(n["name"])
        print(
            f"{n['name']:<14} {n['kind']:<6} {pm(n['val_miou'], n['val_miou_sd']):>12} "
            f"{pm(n['heldout_miou'], n['heldout_miou_sd']):>12} {len(n['seeds']):>5} "
            f"{n['latency_median_ms']:>11.2f} {how:<9} {faster:>6} {n['params']:>7,} "
            f"{n['macs'] / 1e6:>7.1f}M  {cell}"
        )
    return wins


def main(argv: list[str] | None = None) -> int:
    from jetseg.config import preset_names

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--target",
        default="local",
        help="a built-in study (studies/NAME.yaml) whose target the search is for (default "
        "local: measured on this machine); its preset is the one to beat (nano for local)",
    )
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument(
        "--trials", type=int, default=24, help="trained rung-0 trials (default %(default)s)"
    )
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--minutes", type=float, help="final training per run")
    length.add_argument(
        "--epochs",
        type=int,
        help=f"final training per run, in epochs (default {DEFAULT_FINAL['epochs']}, the "
        "reference set's recipe)",
    )
    parser.add_argument(
        "--final-size",
        default=DEFAULT_FINAL["size"],
        help="final training HxW (default %(default)s)",
    )
    parser.add_argument("--holdout", nargs="+", default=["0006R0"])
    parser.add_argument(
        "--rungs",
        default=DEFAULT_RUNGS,
        help="the study's rungs as EPOCHS@HxW, comma-separated, on every training frame "
        f"(default {DEFAULT_RUNGS}: the study file's own)",
    )
    parser.add_argument(
        "--space",
        help="search this space instead (a built-in name or a YAML path; default: the study "
        "file's, the nano space for local)",
    )
    parser.add_argument(
        "--mode",
        choices=("budget", "pareto"),
        default="budget",
        help="the study's mode (default budget: the most accurate network within the preset's "
        "latency, promotions by mIoU; pareto: the study file's own, promotions by the front)",
    )
    parser.add_argument("--top", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=3, help="trainings per network (default 3)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="interleaved latency rounds of the final networks (default 5)",
    )
    parser.add_argument("--write-preset", metavar="NAME", help="finalize --write-preset NAME")
    parser.add_argument("--preset-dir", metavar="DIR", help="finalize --preset-dir DIR")
    parser.add_argument("--out", default="runs/search_to_deploy")
    parser.add_argument(
        "--no-study",
        action="store_true",
        help="finalize the study as it stands (a study stopped before --trials)",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="the whole path on the synthetic scenes with tiny settings (a couple of minutes)",
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.holdout = []
        if args.trials == parser.get_default("trials"):
            args.trials = 3
        if args.seeds == parser.get_default("seeds"):
            args.seeds = 2
        if args.rounds == parser.get_default("rounds"):
            args.rounds = 2
        args.top = min(args.top, 2)
    elif args.trials < 24:
        print(f"note: {args.trials} trained rung-0 trials (the benchmark's default is 24)")
    if not (REPO / "studies" / f"{args.target}.yaml").is_file():
        parser.error(f"--target {args.target}: no studies/{args.target}.yaml")
    preset = args.target if args.target in preset_names() else "nano"

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    study = study_definition(args, preset, out)
    study_file = out / f"{STUDY}.yaml"
    study_file.write_text(yaml.safe_dump(study, sort_keys=False))
    print(f"machine: {describe(2)}", flush=True)
    jetsearch = [sys.executable, "-m", "jetsearch.cli"]
    log = out / "log.txt"
    walls = {"study": 0.0}
    if not args.no_study:
        walls["study"] = run(
            [*jetsearch, "study", "--target", str(study_file), "--trials", str(args.trials)], log
        )
    if args.smoke:
        recipe = SMOKE_FINALIZE
    elif args.minutes is not None:
        recipe = ["--minutes", str(args.minutes), "--size", args.final_size]
    else:
        epochs = args.epochs or DEFAULT_FINAL["epochs"]
        recipe = ["--epochs", str(epochs), "--size", args.final_size]
    finalize = [
        *jetsearch,
        "finalize",
        "--study",
        STUDY,
        "--storage",
        str(out / "studies.log"),
        "--top",
        str(args.top),
        "--with-presets",
        preset,
        "--seeds",
        str(args.seeds),
        "--rounds",
        str(args.rounds),
        *recipe,
        "--out",
        str(out / "final"),
    ]
    if args.write_preset:
        finalize += ["--write-preset", args.write_preset]
    if args.preset_dir:
        finalize += ["--preset-dir", args.preset_dir]
    walls["finalize"] = run(finalize, log)

    report = json.loads((out / "final" / "report.json").read_text())
    comparison = report["comparison"]
    metric = "held-out" if comparison["metric"] == "heldout_miou" else "val"
    print(f"\nmachine: {describe(2)}")
    print(f"recipe of every final figure: {report['recipe']}; {report['seeds']} seeds each")
    lat = report["latency"]
    print(
        f"data: {report['data']}; held-out: {', '.join(report['holdout']) or 'none'} (never "
        f"trained on); latency at {lat['input_size'][0]}x{lat['input_size'][1]} by "
        f"{', '.join(lat['providers'])}"
        + (f"; budget {lat.get('budget') or lat['budget_ms']}" if lat["budget_ms"] else "")
    )
    print(
        f"verdict: a win needs the mean {metric} mIoU over seeds higher beyond the seed spread "
        f"({comparison['test']} at {100 * comparison['confidence']:g}%) and a latency no higher "
        f"({comparison['latency_rule']})"
    )
    wins = print_table(report, preset)
    derived = report.get("derived_preset")
    if derived:
        print(derived["message"])
    print(f"wall: study {walls['study'] / 60:.1f} min, finalize {walls['finalize'] / 60:.1f} min")
    if wins:
        print(f"target met: {', '.join(wins)} beat{'s' if len(wins) == 1 else ''} {preset}")
    else:
        print(
            f"target NOT met: no found network beats {preset} beyond the seed spread at a "
            "latency no higher"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
