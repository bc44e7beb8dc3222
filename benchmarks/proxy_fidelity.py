"""Does the search's proxy rank networks the way longer training does?

20 networks sampled from ``space/nano.yaml`` (seed 0) plus the nano preset are each trained at
every rung of the ``local`` study (``studies/local.yaml``: epochs, input size, frames per rung)
and once more under the final recipe (``--final-minutes`` of training with random scale 0.5-2.0,
crop and flip), all on real CamVid with the sequence 0001TP held out of training. Every run
reports val mIoU (the val split: sequence 0016E5, which training also sees) and held-out mIoU
(0001TP, never trained on), from the epoch that val picked. Then Kendall tau and Spearman rho
between consecutive rungs and between every rung and the final training, on both.

Results are appended to ``OUT/results.jsonl`` as each run ends; a restarted run skips what is
there. Nothing here is asserted by the test suite.

Example::

    python benchmarks/proxy_fidelity.py --jobs 2 --threads 1 --out runs/proxy_fidelity
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import describe  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO / ".." / "shared" / "camvid"
FINAL = "final"


def rungs_of(study: str | Path) -> list[dict[str, Any]]:
    """The ``rungs`` of a study file (each a mapping of TrainConfig fields)."""
    path = Path(study)
    if not path.is_file():
        path = REPO / "studies" / f"{study}.yaml"
    data = yaml.safe_load(path.read_text())
    rungs = data.get("rungs")
    if not rungs:
        raise SystemExit(f"{path} defines no rungs")
    return [dict(r) for r in rungs]


def networks(n: int, seed: int) -> list[tuple[str, Any]]:
    from jetsearch.space import load_space
    from jetseg.config import load_config

    sampled = load_space("nano").random_configs(n, seed)
    return [("nano-preset", load_config("nano"))] + [
        (f"nano-s{seed}-{i:02d}", cfg) for i, cfg in enumerate(sampled)
    ]


def train_one(job: dict[str, Any]) -> dict[str, Any]:
    """Train one network under one recipe; val and held-out mIoU at val's best epoch."""
    import torch

    from jetseg.complexity import profile
    from jetseg.config import arch_hash, load_config
    from jetseg.data import build_datasets, build_holdout
    from jetseg.loss import cui_class_weights
    from jetseg.model import build_model
    from jetseg.train import Trainer
    from jetseg.train_config import TrainConfig

    torch.set_num_threads(job["threads"])
    config = load_config(job["config"])
    recipe = dict(job["recipe"])
    size = tuple(recipe.pop("size"))
    frames = recipe.pop("train_images", None)
    aug = {}
    if job["stage"] == FINAL:
        aug = {"random_scale": (0.5, 2.0), "crop": size, "flip": True}
    train, val, info = build_datasets(job["data"], size, holdout=tuple(job["holdout"]), **aug)
    heldout = build_holdout(job["data"], tuple(job["holdout"]), size)
    cfg = TrainConfig(
        size=size,
        seed=job["seed"],
        device="cpu",
        progress=False,
        export_onnx=False,
        overlays=0,
        max_train_images=frames,
        **aug,
        **recipe,
    )
    torch.manual_seed(job["seed"])
    model = build_model(config)
    params = profile(model, (360, 480))
    per_epoch: list[tuple[float, float]] = []
    trainer_ref: list[Any] = []

    def on_epoch(report) -> None:
        per_epoch.append((report.val.miou, trainer_ref[0].evaluate(heldout).miou))

    weights = cui_class_weights(train.class_pixel_counts())
    trainer = Trainer(
        model,
        train,
        val,
        cfg,
        out_dir=None,
        class_weights=weights,
        callbacks=[on_epoch],
        data_info=info,
    )
    trainer_ref.append(trainer)
    start = time.time()
    result = trainer.fit(resume=False)
    best = max(range(len(per_epoch)), key=lambda i: per_epoch[i][0])
    return {
        "network": job["network"],
        "stage": job["stage"],
        "arch_hash": arch_hash(config),
        "params": params.params,
        "macs_360x480": params.macs,
        "val_miou": per_epoch[best][0],
        "heldout_miou": per_epoch[best][1],
        "best_epoch": best + 1,
        "epochs": result.epochs_done,
        "train_time_s": round(result.train_time_s, 1),
        "wall_s": round(time.time() - start, 1),
        "recipe": job["recipe"] | ({"augment": "scale 0.5-2.0, crop, flip"} if aug else {}),
    }


def load_results(path: Path) -> dict[tuple[str, str], dict[str, Any]]:
    done = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                done[(row["network"], row["stage"])] = row
    return done


def correlations(done, names, stages, metric) -> list[str]:
    from jetsearch.fidelity import kendall_tau, spearman_rho

    lines = []
    pairs = [(a, b) for a, b in zip(stages, stages[1:], strict=False)]
    pairs += [(s, FINAL) for s in stages[:-2]] if stages[-1] == FINAL else []
    for a, b in pairs:
        both = [n for n in names if (n, a) in done and (n, b) in done]
        x = [done[(n, a)][metric] for n in both]
        y = [done[(n, b)][metric] for n in both]
        tau, rho = kendall_tau(x, y), spearman_rho(x, y)
        lines.append(
            f"  {metric:<13} {a:>6} -> {b:<6} n={len(both):>2}  Kendall tau {tau:+.3f}  "
            f"Spearman rho {rho:+.3f}"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--study", default="local", help="study whose rungs are used")
    parser.add_argument("--networks", type=int, default=20, help="sampled networks (+ nano)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--holdout", nargs="+", default=["0001TP"])
    parser.add_argument("--final-minutes", type=float, default=3.0)
    parser.add_argument("--final-size", default="192x256")
    parser.add_argument("--no-final", action="store_true")
    parser.add_argument(
        "--final-networks",
        type=int,
        help="train only the first N networks (the preset first) under the final recipe",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time")
    parser.add_argument("--out", default="runs/proxy_fidelity")
    args = parser.parse_args(argv)

    from jetseg.config import dump_config
    from jetseg.data import DataError, known_sequences

    try:
        sequences = known_sequences(args.data)
    except DataError as err:
        parser.error(f"--data {args.data}: {err}")
    unknown = [s for s in args.holdout if s not in sequences]
    if unknown:
        parser.error(
            f"--holdout {' '.join(unknown)}: not a sequence of {args.data} ({', '.join(sequences)})"
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    rungs = rungs_of(args.study)
    stages = [f"r{i}" for i in range(len(rungs))] + ([] if args.no_final else [FINAL])
    recipes = {f"r{i}": r for i, r in enumerate(rungs)}
    fh, fw = (int(v) for v in args.final_size.split("x"))
    recipes[FINAL] = {"epochs": 10000, "time_budget_s": 60 * args.final_minutes, "size": [fh, fw]}
    nets = networks(args.networks, args.seed)
    names = [n for n, _ in nets]
    done = load_results(results)
    jobs = [
        {
            "network": name,
            "stage": stage,
            "config": yaml.safe_load(dump_config(cfg)),
            "recipe": recipes[stage],
            "data": args.data,
            "holdout": args.holdout,
            "seed": args.seed,
            "threads": args.threads,
        }
        for stage in stages
        for k, (name, cfg) in enumerate(nets)
        if (name, stage) not in done
        and not (stage == FINAL and args.final_networks is not None and k >= args.final_networks)
    ]
    print(f"machine: {describe(args.threads)}; {args.jobs} runs at a time", flush=True)
    print(
        f"rungs of study {args.study!r}: {json.dumps(rungs)}; final: {recipes[FINAL]} "
        "with random scale 0.5-2.0, crop, flip",
        flush=True,
    )
    print(
        f"{len(nets)} networks x {len(stages)} recipes: {len(done)} runs done before, "
        f"{len(jobs)} to go",
        flush=True,
    )
    start = time.time()
    ctx = mp.get_context("spawn")
    with ctx.Pool(args.jobs, maxtasksperchild=1) as pool:
        for k, row in enumerate(pool.imap_unordered(train_one, jobs), start=1):
            with results.open("a") as fh_out:
                fh_out.write(json.dumps(row) + "\n")
            done[(row["network"], row["stage"])] = row
            elapsed = time.time() - start
            eta = elapsed / k * (len(jobs) - k)
            print(
                f"[{k}/{len(jobs)}] {row['network']} {row['stage']}: val "
                f"{100 * row['val_miou']:.1f}% held-out {100 * row['heldout_miou']:.1f}% "
                f"({row['wall_s']:.0f} s; elapsed {elapsed / 60:.1f} min, "
                f"ETA {eta / 60:.1f} min)",
                flush=True,
            )
    print()
    header = f"{'network':<14} {'params':>7}" + "".join(
        f" {s + ' val':>9} {s + ' h-o':>9}" for s in stages
    )
    print(
        "mIoU in %, val = val split (0016E5, also in training), h-o = held-out "
        f"{'+'.join(args.holdout)} (never trained on)"
    )
    print(header)
    for name in names:
        cells = []
        for s in stages:
            row = done.get((name, s))
            cells.append(
                f" {100 * row['val_miou']:>9.1f} {100 * row['heldout_miou']:>9.1f}"
                if row
                else f" {'-':>9} {'-':>9}"
            )
        params = next((done[(name, s)]["params"] for s in stages if (name, s) in done), 0)
        print(f"{name:<14} {params:>7,}" + "".join(cells))
    walls = {s: sum(r["wall_s"] for (n, st), r in done.items() if st == s) for s in stages}
    print(
        "wall s per recipe (sum over networks): "
        + ", ".join(f"{s} {w:.0f}" for s, w in walls.items())
    )
    print("rank agreement:")
    for metric in ("val_miou", "heldout_miou"):
        for line in correlations(done, names, stages, metric):
            print(line)
    gaps = [r["val_miou"] - r["heldout_miou"] for r in done.values()]
    if gaps:
        mean = sum(gaps) / len(gaps)
        print(
            f"val minus held-out mIoU over {len(gaps)} runs: mean {100 * mean:+.1f} points "
            f"(min {100 * min(gaps):+.1f}, max {100 * max(gaps):+.1f})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
