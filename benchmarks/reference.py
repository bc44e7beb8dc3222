"""Build the reference set: a fixed list of networks trained fully, with seeds, kept as data.

The yardstick every proxy (a rung's recipe, a zero-cost score) is scored against by
``benchmarks/proxy_fidelity.py`` without training anything again. One JSON line per
(network, seed) is appended to ``benchmarks/reference/camvid-v1.jsonl`` as each training ends
(the format: :mod:`jetsearch.reference`); a restarted run skips the pairs already there and
resumes a half-done training from its checkpoint (``--runs``, outside git).

The networks: the nano and agx presets and networks drawn with a fixed seed from
``space/nano.yaml``, chosen at evenly spaced quantiles of their estimated latency here so that
they span the space's latency range. The list is written once to
``benchmarks/reference/camvid-v1-networks.json`` (with each network's latency measured here) and
read from there afterwards, so the set never changes under a resumed run. Every network trains
with seeds 0 and 1; ``--four-seed`` of them (the presets first) with seeds 2 and 3 as well.

The recipe (``RECIPE``): CamVid's train split without the held-out sequence, augmented as
``jetsearch finalize`` trains (random scale 0.5-2.0, crop, flip), AdamW with poly decay, at
120x160 (CamVid's 3:4), every epoch evaluated on val (the 0016E5 frames training does not see)
and on the held-out sequence.

``--pilot`` trains the nano preset and one network drawn from the nano space with two seeds,
holding out each candidate sequence in turn (0001TP, 0006R0), under a shorter recipe, and prints
which held-out figure is steadier (seed spread, bootstrap over frames, epoch-to-epoch jitter):
that is how the held-out sequence of the reference recipe was chosen.

Examples::

    python benchmarks/reference.py                        # the whole set, two trainings at a time
    python benchmarks/reference.py --pilot                # the held-out sequence choice
    python benchmarks/reference.py --report               # the noise table of what is there
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing as mp
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import describe  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO / ".." / "shared" / "camvid"
DEFAULT_OUT = REPO / "benchmarks" / "reference" / "camvid-v1.jsonl"
LATENCY_SIZE = (360, 480)
AUGMENTATION = {"random_scale": [0.5, 2.0], "flip": True}
RECIPE: dict[str, Any] = {
    "epochs": 30,
    "size": [120, 160],
    "batch_size": 8,
    "optimizer": "adamw",
    "lr": 2e-3,
    "schedule": "poly",
    "warmup_epochs": 1.0,
    "loss": "jetloss",
    "holdout": ["0006R0"],
}
PILOT_HOLDOUTS = ("0001TP", "0006R0")
PILOT_EPOCHS = 12
PILOT_DRAW_SEED = 1


def networks_path(out: Path) -> Path:
    return out.with_name(out.stem + "-networks.json")


def draw_networks(count: int, seed: int, candidates: int) -> list[dict[str, Any]]:
    """The presets, then ``count - 2`` networks of the nano space spanning its latency range."""
    from jetsearch.latency.estimate.provider import EstimateProvider
    from jetsearch.space import load_space
    from jetseg.config import arch_hash, dump_config, load_config

    estimator = EstimateProvider("local")
    chosen = [
        {"network": f"{name}-preset", "source": f"preset {name}", "config": load_config(name)}
        for name in ("nano", "agx")
    ]
    seen = {arch_hash(c["config"]) for c in chosen}
    pool = []
    for index, config in enumerate(load_space("nano").random_configs(candidates, seed)):
        key = arch_hash(config)
        if key in seen:
            continue
        seen.add(key)
        pool.append((estimator.estimate(config, LATENCY_SIZE), index, config))
    pool.sort(key=lambda item: item[0])
    want = count - len(chosen)
    for k in range(want):
        estimate, index, config = pool[min(len(pool) - 1, int((k + 0.5) / want * len(pool)))]
        chosen.append(
            {
                "network": f"nano-s{seed}-{index:03d}",
                "source": f"space nano, RandomSampler seed {seed}, draw {index}",
                "config": config,
                "estimate_ms": round(estimate, 3),
            }
        )
    for net in chosen:
        net["arch_hash"] = arch_hash(net["config"])
        net["config_yaml"] = dump_config(net["config"])
        del net["config"]
    return chosen


def measure_latency(config_yaml: str) -> dict[str, Any]:
    """Median, p90 and samples of one network at 360x480 with onnxruntime here (2 threads)."""
    import tempfile

    import yaml

    from jetsearch.latency.local import LocalProvider
    from jetseg.config import load_config
    from jetseg.export import export_onnx
    from jetseg.model import build_model

    config = load_config(yaml.safe_load(config_yaml))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "net.onnx"
        export_onnx(build_model(config).eval(), path, input_size=LATENCY_SIZE)
        provider = LocalProvider(threads=2, warmup_s=0.5, min_runs=30, target_s=2.0)
        result = provider.measure(str(path), (1, 3, *LATENCY_SIZE))
    return {
        "median_ms": round(result.median_ms, 4),
        "p90_ms": round(result.p90_ms, 4),
        "samples_ms": [round(s, 4) for s in result.samples_ms],
        "provider": "onnxruntime CPU, 2 threads, fp32, batch 1, 360x480",
    }


def plan(networks: list[dict[str, Any]], four_seed: int) -> list[tuple[str, int]]:
    """(network, seed) in training order: seeds 0 and 1 of each network, then the extra seeds.

    The four-seed networks are the presets and networks evenly spread over the latency order.
    """
    names = [n["network"] for n in networks]
    drawn = names[2:]
    extra = names[:2] + [
        drawn[int((k + 0.5) / (four_seed - 2) * len(drawn))] for k in range(four_seed - 2)
    ]
    order = [(name, seed) for name in names for seed in (0, 1)]
    order += [(name, seed) for name in extra for seed in (2, 3)]
    return order


def train_one(job: dict[str, Any]) -> dict[str, Any]:
    """Train one (network, seed) under the recipe; one reference line."""
    import torch
    import yaml

    from jetsearch.reference import FORMAT
    from jetseg.complexity import profile
    from jetseg.config import load_config
    from jetseg.data import build_datasets, build_holdout
    from jetseg.loss import cui_class_weights
    from jetseg.metrics import frame_counts
    from jetseg.model import build_model
    from jetseg.train import Trainer, seed_everything
    from jetseg.train_config import TrainConfig

    torch.set_num_threads(job["threads"])
    recipe = dict(job["recipe"])
    size = tuple(recipe["size"])
    holdout = tuple(recipe["holdout"])
    config = load_config(yaml.safe_load(job["config_yaml"]))
    aug = {}
    if job.get("augment", True):
        aug = {"random_scale": tuple(AUGMENTATION["random_scale"]), "crop": size, "flip": True}
    train, val, info = build_datasets(job["data"], size, holdout=holdout, **aug)
    heldout = build_holdout(job["data"], holdout, size)
    cfg = TrainConfig(
        **{k: v for k, v in recipe.items() if k not in ("size", "holdout")},
        size=size,
        holdout=holdout,
        **aug,
        seed=job["seed"],
        device=job["device"],
        progress=False,
        export_onnx=False,
        overlays=0,
    )
    seed_everything(job["seed"])
    model = build_model(config)
    counts = profile(model, LATENCY_SIZE)
    run_dir = Path(job["runs"]) / f"{job['network']}-seed{job['seed']}"
    run_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(
        model,
        train,
        val,
        cfg,
        out_dir=run_dir,
        class_weights=cui_class_weights(train.class_pixel_counts()),
        data_info=info,
        hooks=(),
        heldout_set=heldout,
    )
    start = time.time()
    result = trainer.fit(resume=True)
    wall = time.time() - start  # this process's training (a resumed run did part of it before)

    def per_frame(dataset) -> list[list[list[int]]]:
        """Per frame [TP, FP, FN] per class of the final model (jetseg.metrics.frame_counts)."""
        frames = []
        model.eval()
        with torch.no_grad():
            for index in range(len(dataset)):
                image, label = dataset[index]
                pred = model(image[None].to(trainer.device)).argmax(1).cpu()
                counts = frame_counts(pred, label[None], trainer.num_classes, trainer.ignore_index)
                frames.append(counts[0].tolist())
        return frames

    keep = (
        "epoch",
        "train_loss",
        "lr",
        "val_miou",
        "val_loss",
        "val_per_class_iou",
        "heldout_miou",
        "heldout_loss",
        "heldout_per_class_iou",
        "epoch_time_s",
        "eval_time_s",
        "images_per_s",
    )
    epochs = [{k: record.get(k) for k in keep} for record in trainer.history]
    best = max(epochs, key=lambda e: e["val_miou"])
    last = epochs[-1]
    epochs_s = sum(e["epoch_time_s"] + e["eval_time_s"] for e in epochs)
    return {
        "format": FORMAT,
        "network": job["network"],
        "source": job["source"],
        "seed": job["seed"],
        "config_yaml": job["config_yaml"],
        "arch_hash": job["arch_hash"],
        "params": counts.params,
        "macs_360x480": counts.macs,
        "latency": job["latency"],
        "recipe": recipe | {"augmentation": "random scale 0.5-2.0, crop, flip" if aug else None},
        "split": {
            "train": f"train split without {'+'.join(holdout)} ({len(train)} frames)",
            "val": f"val split ({len(val)} frames of 0016E5, not trained on)",
            "heldout": list(holdout),
            "heldout_frames": len(heldout),
        },
        "epochs": epochs,
        "best": {k: best[k] for k in ("epoch", "val_miou", "heldout_miou")},
        "last": {k: last[k] for k in ("epoch", "val_miou", "heldout_miou")},
        "frames": (
            {"val": per_frame(val), "heldout": per_frame(heldout)}
            if job.get("per_frame", True)
            else None
        ),
        "train_time_s": round(result.train_time_s, 1),
        # Training and evaluation of every epoch, across resumed processes, and the per-frame
        # pass of this one: what the training cost.
        "wall_s": round(epochs_s + time.time() - start - wall, 1),
        "machine": job["machine"],
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def run_jobs(jobs: list[dict[str, Any]], parallel: int, on_row, worker=None) -> None:
    """Two (``parallel``) trainings at a time in fresh processes (``worker``, default
    :func:`train_one`, trains one job); ``on_row`` as each ends.

    SIGTERM stops the run as Ctrl-C does: the pool's trainings are terminated with it (their
    checkpoints stay, and the next run resumes them), never left running on their own.
    """
    if not jobs:
        return
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    start = time.time()
    durations: list[float] = []
    ctx = mp.get_context("spawn")
    with ctx.Pool(parallel, maxtasksperchild=1) as pool:
        for k, row in enumerate(pool.imap_unordered(worker or train_one, jobs), start=1):
            on_row(row)
            elapsed = time.time() - start
            # A resumed training's wall time is only its last part: the ETA counts whole ones.
            durations.append(max(row["wall_s"], row.get("train_time_s") or 0.0))
            eta = sum(durations) / len(durations) * (len(jobs) - k) / max(1, parallel)
            last = row["epochs"][-1]
            print(
                f"[{k}/{len(jobs)}] {row['network']} seed {row['seed']}: last epoch val "
                f"{100 * last['val_miou']:.1f}% held-out "
                f"{100 * last['heldout_miou']:.1f}% ({row['wall_s'] / 60:.1f} min; "
                f"elapsed {elapsed / 60:.0f} min, ETA {eta / 60:.0f} min)",
                flush=True,
            )


def load_networks(args: argparse.Namespace, out: Path) -> list[dict[str, Any]]:
    path = networks_path(out)
    if path.is_file():
        return json.loads(path.read_text())["networks"]
    print(f"drawing {args.networks} networks from space nano (seed {args.seed})...", flush=True)
    nets = draw_networks(args.networks, args.seed, args.candidates)
    print("measuring each network's latency here (onnxruntime, 2 threads, 360x480)...", flush=True)
    for net in nets:
        net["latency"] = measure_latency(net["config_yaml"])
        print(f"  {net['network']:<16} {net['latency']['median_ms']:8.2f} ms", flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "drawn": f"space nano, RandomSampler seed {args.seed}, {args.candidates} candidates, "
        "evenly spaced quantiles of the roofline estimate for this CPU",
        "latency_measured_on": describe(2),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "networks": nets,
    }
    path.write_text(json.dumps(document, indent=1) + "\n")
    return nets


def base_job(net: dict[str, Any], seed: int, args: argparse.Namespace) -> dict[str, Any]:
    return {
        "network": net["network"],
        "source": net["source"],
        "seed": seed,
        "config_yaml": net["config_yaml"],
        "arch_hash": net["arch_hash"],
        "latency": net.get("latency"),
        "data": args.data,
        "threads": args.threads,
        "device": args.device,
        "runs": args.runs,
        "machine": describe(args.threads),
    }


def pilot(args: argparse.Namespace) -> int:
    """Train the presets with two seeds per candidate held-out sequence; print the steadier."""
    from jetsearch.reference import append_reference, done_pairs, read_reference
    from jetseg.config import arch_hash, dump_config, load_config

    out = Path(args.pilot_out)
    from jetsearch.space import load_space

    drawn = load_space("nano").random_configs(1, PILOT_DRAW_SEED)[0]
    candidates = [("nano-preset", "preset nano", load_config("nano"))]
    candidates.append(
        ("nano-draw", f"space nano, RandomSampler seed {PILOT_DRAW_SEED}, draw 0", drawn)
    )
    nets = [
        {
            "network": name,
            "source": source,
            "config_yaml": dump_config(config),
            "arch_hash": arch_hash(config),
        }
        for name, source, config in candidates
    ]
    rows = read_reference(out)
    done = done_pairs(rows)
    jobs = []
    for held in PILOT_HOLDOUTS:
        recipe = RECIPE | {"epochs": PILOT_EPOCHS, "holdout": [held]}
        for net in nets:
            for seed in (0, 1):
                name = f"{net['network']}@{held}"
                if (name, seed) in done:
                    continue
                job = base_job(net, seed, args) | {"network": name, "recipe": recipe}
                job["runs"] = str(Path(args.runs) / "pilot")
                jobs.append(job)
    print(f"machine: {describe(args.threads)}; {args.parallel} trainings at a time")
    print(f"pilot: {len(done)} trainings done before, {len(jobs)} to go", flush=True)
    run_jobs(jobs, args.parallel, lambda row: (append_reference(out, row), rows.append(row)))
    print_pilot(rows)
    return 0


def print_pilot(rows: list[dict[str, Any]]) -> None:
    from jetsearch.reference import frame_bootstrap

    print("\nheld-out sequence choice: the held-out figure of each preset (last epoch)")
    print(
        f"{'held out':<9} {'network':<13} {'seeds (h-o %)':<16} {'seed diff':>9} "
        f"{'bootstrap sd':>12} {'jitter last 5':>13}"
    )
    summary: dict[str, list[tuple[float, float, float]]] = {}
    for held in PILOT_HOLDOUTS:
        for name in sorted({r["network"].split("@")[0] for r in rows}):
            runs = [r for r in rows if r["network"] == f"{name}@{held}"]
            if not runs:
                continue
            values = [100 * r["last"]["heldout_miou"] for r in runs]
            diff = max(values) - min(values) if len(values) > 1 else float("nan")
            boot = sum(100 * frame_bootstrap(r["frames"]["heldout"])[0] for r in runs) / len(runs)
            jitters = []
            for r in runs:
                tail = [100 * e["heldout_miou"] for e in r["epochs"][-5:]]
                steps = [abs(b - a) for a, b in zip(tail, tail[1:], strict=False)]
                jitters.append(sum(steps) / len(steps))
            jitter = sum(jitters) / len(jitters)
            summary.setdefault(held, []).append((diff, boot, jitter))
            seeds = ", ".join(f"{v:.1f}" for v in values)
            print(f"{held:<9} {name:<13} {seeds:<16} {diff:>9.1f} {boot:>12.2f} {jitter:>13.2f}")
    for held, figures in summary.items():
        n = len(figures)
        print(
            f"{held}: mean seed difference {sum(f[0] for f in figures) / n:.1f} points, "
            f"bootstrap sd {sum(f[1] for f in figures) / n:.2f}, "
            f"epoch jitter {sum(f[2] for f in figures) / n:.2f} (n={n} networks)"
        )


def report(rows: list[dict[str, Any]]) -> None:
    """The noise table: seed spread and bootstrap spread per network, and the seed ceiling."""
    from jetsearch.reference import by_network, seed_ceiling

    nets = by_network(rows)
    print(
        f"{'network':<16} {'ms here':>8} {'params':>8} {'seeds':>5} "
        f"{'val %':>6} {'sd seeds':>8} {'sd boot':>7} {'h-o %':>6} {'sd seeds':>8} {'sd boot':>7}"
    )
    for n in sorted(nets, key=lambda n: n.latency_ms or 0):
        print(
            f"{n.network:<16} {n.latency_ms or float('nan'):>8.2f} {n.params:>8,} "
            f"{len(n.seeds):>5} {100 * n.val_mean:>6.1f} {100 * n.val_seed_std:>8.2f} "
            f"{100 * n.val_bootstrap_std:>7.2f} {100 * n.heldout_mean:>6.1f} "
            f"{100 * n.heldout_seed_std:>8.2f} {100 * n.heldout_bootstrap_std:>7.2f}"
        )
    for split in ("val", "heldout"):
        tau, count = seed_ceiling(rows, split)
        print(f"seed-vs-seed Kendall tau ({split}, {count} networks): {tau:+.3f}")
    cost = sum(r["wall_s"] for r in rows)
    print(f"{len(rows)} trainings, {cost / 3600:.2f} h of training-process wall time")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="CamVid root")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="the reference .jsonl")
    parser.add_argument("--runs", default="runs/reference", help="checkpoints (not kept)")
    parser.add_argument("--networks", type=int, default=30, help="networks in the set")
    parser.add_argument("--four-seed", type=int, default=8, help="networks with four seeds")
    parser.add_argument("--seed", type=int, default=0, help="seed of the draw from the space")
    parser.add_argument("--candidates", type=int, default=150, help="draws to choose from")
    parser.add_argument("--parallel", type=int, default=2, help="trainings at a time")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per training")
    parser.add_argument("--device", default="auto", help="auto uses a GPU when there is one")
    parser.add_argument("--limit", type=int, help="train at most this many pairs, then stop")
    parser.add_argument("--pilot", action="store_true", help="choose the held-out sequence")
    parser.add_argument(
        "--pilot-out", default=str(REPO / "benchmarks" / "reference" / "pilot-holdout.jsonl")
    )
    parser.add_argument("--report", action="store_true", help="print the noise table only")
    args = parser.parse_args(argv)

    from jetsearch.reference import append_reference, done_pairs, read_reference
    from jetseg.data import DataError, known_sequences

    try:
        sequences = known_sequences(args.data)
    except DataError as err:
        parser.error(f"--data {args.data}: {err}")
    missing = [s for s in (*PILOT_HOLDOUTS, *RECIPE["holdout"]) if s not in sequences]
    if missing:
        parser.error(f"--data {args.data}: no sequence {', '.join(missing)} ({sequences})")
    if args.parallel < 1 or args.threads < 1:
        parser.error("--parallel and --threads must be >= 1")
    if args.pilot:
        return pilot(args)
    out = Path(args.out)
    rows = read_reference(out)
    if args.report:
        report(rows)
        return 0
    nets = {n["network"]: n for n in load_networks(args, out)}
    order = plan(list(nets.values()), args.four_seed)
    done = done_pairs(rows)
    todo = [pair for pair in order if pair not in done][: args.limit]
    print(f"machine: {describe(args.threads)}; {args.parallel} trainings at a time", flush=True)
    print(f"recipe: {json.dumps(RECIPE)} + random scale 0.5-2.0, crop, flip", flush=True)
    print(
        f"{len(nets)} networks, {len(order)} trainings: {len(done)} done before, "
        f"{len(todo)} to go (pid {os.getpid()})",
        flush=True,
    )
    jobs = [base_job(nets[name], seed, args) | {"recipe": RECIPE} for name, seed in todo]
    run_jobs(jobs, args.parallel, lambda row: (append_reference(out, row), rows.append(row)))
    report(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
