"""The proxy scoreboard: how well each cheap score ranks the reference set's networks.

Every proxy is scored against the reference set (``benchmarks/reference/camvid-v1.jsonl``, built
by ``benchmarks/reference.py``) without training the reference again: Kendall tau and Spearman
rho between the proxy's score of each network and the network's reference figure (the mean over
its seeds of the last-epoch mIoU), on val and on the held-out sequence, each with a 90% bootstrap
interval over the networks, and the CPU seconds the proxy costs per network. Beside every score
stands the ceiling the reference's own noise puts on any proxy: the tau between the ranking by
one seed and by another seed of the reference recipe.

Proxies:

* **training recipes** (``--recipe NAME=epochs:E,size:HxW[,frames:N][,augment]``; the defaults
  are today's rungs of ``studies/local.yaml`` and variants of epochs 2-20, sizes 64x96 to
  180x240 and frame counts): every reference network trained once (seed 0) under the recipe, on
  the reference's split, every epoch evaluated; each run is scored under the scoring rules
  ``last``, ``best`` (the epoch val picks), ``last3`` and ``val_loss``. Runs are appended to
  ``benchmarks/reference/proxies/NAME.jsonl`` as they end (data, kept) and skipped when there.
* **zero-cost scores** of the untrained network (``jetsearch.zerocost``: params, MACs, synflow,
  NASWOT, grad-norm), computed in seconds, kept in ``proxies/zerocost.jsonl``;
* **combinations**: the mean rank of two proxies, for every pair.

Prints one table (``--markdown`` for docs/). Nothing here is asserted by the test suite.

Examples::

    python benchmarks/proxy_fidelity.py --zero-cost                 # seconds per network
    python benchmarks/proxy_fidelity.py --train r0 r1 e8-120x160    # train these recipes
    python benchmarks/proxy_fidelity.py --markdown                  # the table of what is there
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import describe  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO / ".." / "shared" / "camvid"
DEFAULT_REFERENCE = REPO / "benchmarks" / "reference" / "camvid-v1.jsonl"
RULES = ("last", "best", "last3", "val_loss")
# name -> recipe; r0 and r1 are the rungs studies/local.yaml shipped with before the scoreboard.
RECIPES: dict[str, dict[str, Any]] = {
    "r0": {"epochs": 2, "size": [96, 128], "frames": 128},
    "r1": {"epochs": 4, "size": [128, 160]},
    "e2-64x96": {"epochs": 2, "size": [64, 96]},
    "e4-64x96": {"epochs": 4, "size": [64, 96]},
    "e8-64x96": {"epochs": 8, "size": [64, 96]},
    "e4-96x128": {"epochs": 4, "size": [96, 128]},
    "e8-96x128": {"epochs": 8, "size": [96, 128]},
    "e8-120x160": {"epochs": 8, "size": [120, 160], "augment": True},
    "e12-96x128": {"epochs": 12, "size": [96, 128], "augment": True},
    "e20-64x96": {"epochs": 20, "size": [64, 96], "augment": True},
    "e4-180x240": {"epochs": 4, "size": [180, 240]},
}


def parse_recipe(text: str) -> tuple[str, dict[str, Any]]:
    """``NAME=epochs:E,size:HxW[,frames:N][,augment]`` or a name of :data:`RECIPES`."""
    if "=" not in text:
        if text not in RECIPES:
            raise argparse.ArgumentTypeError(
                f"unknown recipe {text!r}; known: {', '.join(RECIPES)}, or NAME=epochs:E,size:HxW"
            )
        return text, RECIPES[text]
    name, body = text.split("=", 1)
    recipe: dict[str, Any] = {}
    for part in body.split(","):
        key, _, value = part.partition(":")
        if key == "epochs" or key == "frames":
            recipe[key] = int(value)
        elif key == "size":
            recipe["size"] = [int(v) for v in value.lower().split("x")]
        elif key == "augment" and not value:
            recipe["augment"] = True
        else:
            raise argparse.ArgumentTypeError(f"recipe {text!r}: unknown part {part!r}")
    if "epochs" not in recipe or "size" not in recipe:
        raise argparse.ArgumentTypeError(f"recipe {text!r}: needs epochs:E and size:HxW")
    return name, recipe


# ---------------------------------------------------------------------------------------------
# computing proxies


def train_proxy(job: dict[str, Any]) -> dict[str, Any]:
    """One reference network trained under one proxy recipe; every epoch's figures."""
    from reference import train_one

    recipe = job["proxy"]
    full = {
        "epochs": recipe["epochs"],
        "size": recipe["size"],
        "batch_size": 8,
        "optimizer": "adamw",
        "lr": 2e-3,
        "schedule": "poly",
        "warmup_epochs": min(1.0, recipe["epochs"] / 4),
        "loss": "jetloss",
        "holdout": job["holdout"],
        "max_train_images": recipe.get("frames"),
    }
    row = train_one(
        job | {"recipe": full, "augment": bool(recipe.get("augment")), "per_frame": False}
    )
    keep = ("network", "seed", "arch_hash", "epochs", "train_time_s", "wall_s", "machine")
    return {k: row[k] for k in keep} | {"recipe_name": job["recipe_name"], "proxy": recipe}


def zero_cost_rows(
    networks: list[dict[str, Any]], data: str, size: Sequence[int], holdout: Sequence[str]
):
    """Zero-cost scores of each network (``network``, ``arch_hash``, ``config_yaml``) on one
    fixed minibatch of training frames."""
    import torch
    import yaml

    from jetsearch.zerocost import zero_cost_scores
    from jetseg.config import load_config
    from jetseg.data import build_datasets

    train, _, _ = build_datasets(data, tuple(size), holdout=tuple(holdout))
    pick = random.Random(0).sample(range(len(train)), 8)
    images = torch.stack([train[i][0] for i in pick])
    labels = torch.stack([train[i][1] for i in pick])
    for row in networks:
        config = load_config(yaml.safe_load(row["config_yaml"]))
        result = zero_cost_scores(config, images, labels, ignore_index=train.ignore_index)
        yield {"network": row["network"], "arch_hash": row["arch_hash"], **result}


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(row, separators=(",", ":")) + "\n")


# ---------------------------------------------------------------------------------------------
# scoring


TRAIN_FRAMES = 266  # CamVid's train split without 0006R0, the reference's training frames
EVAL_FRAMES = 202  # val and held-out frames, evaluated after every epoch, forward only


def nominal_share(recipe: dict[str, Any], reference: dict[str, Any]) -> float:
    """A recipe's work as a share of the reference recipe's, from what it trains and evaluates
    (epochs x pixels x (training frames + a third of the evaluated frames, forward only)):
    measured seconds depend on what else ran on the machine, this does not."""

    def work(r: dict[str, Any]) -> float:
        frames = min(r.get("frames") or TRAIN_FRAMES, TRAIN_FRAMES)
        return r["epochs"] * r["size"][0] * r["size"][1] * (frames + EVAL_FRAMES / 3)

    return work(recipe) / work(reference)


def proxy_columns(
    zero_cost: list[dict[str, Any]], trained: dict[str, list[dict[str, Any]]]
) -> dict[str, tuple[dict[str, float], float]]:
    """Every proxy as (score per network it has scored, CPU seconds per network)."""
    from jetsearch.reference import figure

    columns: dict[str, tuple[dict[str, float], float]] = {}
    if zero_cost:
        for score in zero_cost[0]["scores"]:
            values = {row["network"]: float(row["scores"][score]) for row in zero_cost}
            cost = sum(row["seconds"][score] for row in zero_cost) / len(zero_cost)
            columns[f"zero-cost {score}"] = (values, cost)
    for recipe, all_rows in trained.items():
        rows = [row for row in all_rows if int(row.get("seed", 0)) == 0]  # a study trains once
        if not rows:
            continue
        cost = sum(row["wall_s"] for row in rows) / len(rows)
        for rule in RULES:
            values = {row["network"]: figure(row, "val", rule) for row in rows}
            columns[f"{recipe} {rule}"] = (values, cost)
        # Where a second seed was trained: the mean of the two seeds' scores, at twice the cost
        # (what averaging two short trainings would buy against one).
        second = {r["network"]: r for r in all_rows if int(r.get("seed", 0)) == 1}
        pairs = [(row, second[row["network"]]) for row in rows if row["network"] in second]
        if pairs:
            pair_cost = sum(a["wall_s"] + b["wall_s"] for a, b in pairs) / len(pairs)
            values = {
                a["network"]: (figure(a, "val", "best") + figure(b, "val", "best")) / 2
                for a, b in pairs
            }
            columns[f"{recipe} x2-seeds best"] = (values, pair_cost)
    return columns


def proxy_seed_noise(rows: list[dict[str, Any]], rule: str = "best") -> dict[str, float] | None:
    """A recipe's own noise where it was trained with seeds 0 and 1: the Kendall tau between
    its two seeds' rankings and the mean absolute difference of the two seeds' val score (the
    spread one training of this recipe carries), over the networks with both seeds."""
    from jetsearch.fidelity import kendall_tau
    from jetsearch.reference import figure

    seeds: dict[int, dict[str, float]] = {}
    for row in rows:
        seeds.setdefault(int(row.get("seed", 0)), {})[row["network"]] = figure(row, "val", rule)
    if 0 not in seeds or 1 not in seeds:
        return None
    both = [n for n in seeds[0] if n in seeds[1]]
    if len(both) < 3:
        return None
    a, b = [seeds[0][n] for n in both], [seeds[1][n] for n in both]
    diffs = [abs(x - y) for x, y in zip(a, b, strict=True)]
    # sd of one training from pairs: E|x - y| = 2 sd / sqrt(pi) for two normal draws.
    sd = sum(diffs) / len(diffs) * (3.141592653589793**0.5) / 2
    return {"networks": len(both), "self_tau": kendall_tau(a, b), "seed_sd": sd}


SELF_TAU_FLOOR = 0.2  # a recipe whose two seeds rank the networks less alike ranks nothing


def choose_rungs(
    rows: list[dict[str, Any]],
    rung0_tau: float = 0.6,
    top_tau: float = 0.8,
    self_tau: dict[str, float] | None = None,
) -> list[str]:
    """The rungs the scoreboard supports, in words, among the training recipes under the rule a
    study scores by (``best``), their cost being their nominal share of the reference's work
    (:func:`nominal_share`). The top rung: the cheapest within a tenth of the reference's
    work whose held-out tau reaches ``top_tau``, else the best found within that cost. Rung 0
    (which every network trains): among recipes costing at most a third of the top rung's (eta
    3), the cheapest reaching ``rung0_tau``, else the best found. A recipe trained with two
    seeds whose seed-vs-seed tau (``self_tau``) is under :data:`SELF_TAU_FLOOR` is left out:
    its agreement with the reference is chance."""
    # A study trains each network once: the mean of two seeds is not a rung.
    trained = [r for r in rows if r["proxy"].endswith(" best") and "x2-seeds" not in r["proxy"]]
    noisy = {name for name, tau in (self_tau or {}).items() if tau < SELF_TAU_FLOOR}
    trained = [r for r in trained if r["proxy"].rsplit(" ", 1)[0] not in noisy]

    def pick(pool, tau):
        good = [r for r in pool if r["heldout"]["tau"] >= tau]
        if good:
            return min(good, key=lambda r: r["share"]), f"the cheapest with held-out tau >= {tau}"
        if pool:
            best = max(pool, key=lambda r: r["heldout"]["tau"])
            return best, f"none reaches held-out tau {tau}: the best found"
        return None, ""

    top, top_how = pick([r for r in trained if r["share"] <= 0.1], top_tau)
    if top is None:
        return ["no trained recipe within a tenth of the reference's cost"]
    zero, zero_how = pick([r for r in trained if r["share"] <= top["share"] / 3], rung0_tau)
    lines = []
    for what, row, how in (("rung 0", zero, zero_how), ("top rung", top, top_how)):
        if row is None:
            lines.append(f"{what}: no trained recipe costs a third of the top rung's")
            continue
        name = row["proxy"].rsplit(" ", 1)[0]
        lines.append(
            f"{what}: {name} ({how}): tau {row['heldout']['tau']:+.2f} "
            f"[{row['heldout']['tau_low']:+.2f}, {row['heldout']['tau_high']:+.2f}] held-out, "
            f"{row['share']:.3f} of the reference's work ({row['cost_s']:.0f} s per network here)"
        )
    return lines


def scored_networks(
    names: list[str], columns: dict[str, tuple[dict[str, float], float]], coverage: float = 0.75
) -> tuple[list[str], list[str]]:
    """The networks every proxy is scored on, and the proxies left out.

    Proxies are trained a network at a time and may lag behind the reference (or run ahead of
    it). Every score of one table must be over the same networks, so the table keeps the
    proxies that cover at least ``coverage`` of the reference's networks and scores them all on
    the networks they share; a proxy covering fewer is named as left out.
    """
    kept = [
        c
        for c, (values, _) in columns.items()
        if sum(n in values for n in names) >= coverage * len(names)
    ]
    left_out = [c for c in columns if c not in kept]
    shared = [n for n in names if all(n in columns[c][0] for c in kept)]
    return shared, left_out


def scoreboard(args: argparse.Namespace) -> int:
    from jetsearch.fidelity import mean_rank, rank_agreement
    from jetsearch.reference import by_network, read_reference, seed_ceiling

    reference = read_reference(args.reference)
    # The yardstick is the mean over seeds: networks with both seeds of the pair finished.
    complete = [n.network for n in by_network(reference) if len(n.seeds) >= 2]
    proxies_dir = Path(args.reference).parent / "proxies"
    zero_cost = read_jsonl(proxies_dir / "zerocost.jsonl")
    trained = {
        path.stem: read_jsonl(path)
        for path in sorted(proxies_dir.glob("*.jsonl"))
        if path.stem != "zerocost"
    }
    all_columns = proxy_columns(zero_cost, trained)
    names, left_out = scored_networks(complete, all_columns)
    if len(names) < 3:
        print(f"{args.reference}: {len(names)} networks scored by every proxy; need at least 3")
        return 1
    reference = [r for r in reference if r["network"] in names]
    nets = by_network(reference)
    columns = {
        c: ([values[n] for n in names], cost)
        for c, (values, cost) in all_columns.items()
        if c not in left_out
    }
    ref_recipe = reference[0]["recipe"]

    def share_of(column: str) -> float:
        if column.startswith("zero-cost"):
            return 0.0
        recipe, rule = column.rsplit(" ", 1)
        base = recipe.removesuffix(" x2-seeds")
        return nominal_share(trained[base][0]["proxy"], ref_recipe) * (2 if base != recipe else 1)

    shares = {c: share_of(c) for c in columns}
    best_single = sorted(columns)
    for i, a in enumerate(best_single):
        for b in best_single[i + 1 :]:
            if a.split()[0] == b.split()[0] and not a.startswith("zero-cost"):
                continue  # two rules of one recipe are one training
            combined = mean_rank(columns[a][0], columns[b][0])
            pair = f"mean rank of ({a}) and ({b})"
            columns[pair] = (combined, columns[a][1] + columns[b][1])
            shares[pair] = shares[a] + shares[b]
    reference_cost = sum(r["wall_s"] for r in reference) / len(reference)
    ceilings = {split: seed_ceiling(reference, split) for split in ("val", "heldout")}
    rows = []
    for name, (values, cost) in columns.items():
        row = {"proxy": name, "cost_s": cost, "share": shares[name]}
        for split in ("val", "heldout"):
            row[split] = rank_agreement(values, [n.mean(split) for n in nets])
        rows.append(row)
    # Each recipe's own noise, where it was trained with a second seed (computed once).
    noisy = {name: n for name, runs in trained.items() if (n := proxy_seed_noise(runs))}
    if args.write_scoreboard:
        write_scoreboard(args, rows, trained, noisy, len(nets), ceilings)
    self_tau = {name: n["self_tau"] for name, n in noisy.items()}
    rung_lines = choose_rungs(rows, self_tau=self_tau)
    rung_lines += [
        f"left out: {name} (its two seeds rank the networks with tau {tau:+.2f}, under "
        f"{SELF_TAU_FLOOR})"
        for name, tau in sorted(self_tau.items())
        if tau < SELF_TAU_FLOOR
    ]
    rows.sort(
        key=lambda r: -r["heldout"]["tau"] if r["heldout"]["tau"] == r["heldout"]["tau"] else 9
    )
    shown = [r for r in rows if not r["proxy"].startswith("mean rank")]
    shown += [r for r in rows if r["proxy"].startswith("mean rank")][: args.combinations]

    print(f"machine: {describe()}")
    print(
        f"reference: {args.reference} ({len(nets)} networks, {len(reference)} trainings, "
        f"{reference_cost:.0f} s of one training process per training); scored on the "
        f"{len(names)} networks with both seeds and every proxy below"
    )
    if left_out:
        recipes = sorted({c.rsplit(" ", 1)[0] for c in left_out})
        print(f"left out (cover under 3/4 of those networks yet): {', '.join(recipes)}")
    for split, (tau, count) in ceilings.items():
        print(f"ceiling ({split}): seed-vs-seed Kendall tau {tau:+.2f} over {count} networks")
    bar = "|" if args.markdown else " "
    header = (
        f"{bar} proxy {bar} s/network {bar} share of reference (work) {bar} tau val [90%] "
        f"{bar} rho val {bar} tau held-out [90%] {bar} rho held-out {bar} "
        f"ceiling val / held-out {bar}"
    )
    print(header.strip())
    if args.markdown:
        print("|---|---:|---:|---|---:|---|---:|---|")
    for row in shown:
        v, h = row["val"], row["heldout"]
        print(
            (
                f"{bar} {row['proxy']} {bar} {row['cost_s']:.1f} {bar} "
                f"{row['share']:.3f} {bar} "
                f"{v['tau']:+.2f} [{v['tau_low']:+.2f}, {v['tau_high']:+.2f}] {bar} "
                f"{v['rho']:+.2f} {bar} {h['tau']:+.2f} [{h['tau_low']:+.2f}, "
                f"{h['tau_high']:+.2f}] {bar} {h['rho']:+.2f} {bar} "
                f"{ceilings['val'][0]:+.2f} / {ceilings['heldout'][0]:+.2f} {bar}"
            ).strip()
        )
    print("rungs the scoreboard supports (rule best, as a study scores a trial):")
    for line in rung_lines:
        print(f"  {line}")
    if noisy:
        print("recipes trained with two seeds (rule best, val): seed 0 vs seed 1")
        print(f"{bar} recipe {bar} networks {bar} Kendall tau {bar} sd of one training (pts) {bar}")
        if args.markdown:
            print("|---|---:|---:|---:|")
        for name, n in noisy.items():
            print(
                f"{bar} {name} {bar} {n['networks']} {bar} {n['self_tau']:+.2f} {bar} "
                f"{100 * n['seed_sd']:.2f} {bar}".strip()
            )
    return 0


def write_scoreboard(args, rows, trained, noisy, networks: int, ceilings) -> None:
    """The trained recipes' figures under the rule a study scores by, for ``jetsearch show``."""
    import datetime as dt

    entries = []
    by_name = {row["proxy"]: row for row in rows}
    for recipe, runs in trained.items():
        row = by_name.get(f"{recipe} best")
        if row is None:
            continue
        entry = {
            "name": recipe,
            "recipe": runs[0]["proxy"],
            "rule": "best",
            "tau_val": row["val"]["tau"],
            "tau_heldout": row["heldout"]["tau"],
            "tau_heldout_low": row["heldout"]["tau_low"],
            "tau_heldout_high": row["heldout"]["tau_high"],
            "seconds_per_network": row["cost_s"],
        }
        noise = noisy.get(recipe)
        if noise is not None:
            entry["seed_sd_val"] = noise["seed_sd"]
            entry["self_tau_val"] = noise["self_tau"]
            entry["seed_networks"] = noise["networks"]
        entries.append(entry)
    document = {
        "reference": str(Path(args.reference).relative_to(REPO)),
        "networks": networks,
        "machine": describe(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "ceiling": {split: tau for split, (tau, _) in ceilings.items()},
        "recipes": entries,
    }
    path = REPO / "studies" / "scoreboard.json"
    path.write_text(json.dumps(document, indent=1) + "\n")
    print(f"wrote {path} ({len(entries)} recipes)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--reference", default=str(DEFAULT_REFERENCE))
    parser.add_argument("--zero-cost", action="store_true", help="compute the zero-cost scores")
    parser.add_argument(
        "--train", nargs="+", type=parse_recipe, default=[], help="train these proxy recipes"
    )
    parser.add_argument("--parallel", type=int, default=2, help="trainings at a time")
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[0],
        help="train each recipe with these seeds (the table scores seed 0, as a study trains "
        "a network once; a second seed measures the recipe's own noise)",
    )
    parser.add_argument(
        "--networks",
        type=int,
        help="train proxies for the first N networks of the set's list only (default: all)",
    )
    parser.add_argument("--runs", default="runs/proxies", help="checkpoints (not kept)")
    parser.add_argument("--markdown", action="store_true", help="print the table as markdown")
    parser.add_argument("--combinations", type=int, default=5, help="best pairs to show")
    parser.add_argument(
        "--write-scoreboard",
        action="store_true",
        help="write each trained recipe's figures (rule: best, as a study scores a trial) to "
        "studies/scoreboard.json, which jetsearch show prints beside a matching rung",
    )
    args = parser.parse_args(argv)

    from jetsearch.reference import read_reference

    reference = read_reference(args.reference)
    if not reference:
        parser.error(f"--reference {args.reference}: no reference runs (benchmarks/reference.py)")
    proxies_dir = Path(args.reference).parent / "proxies"
    if args.zero_cost:
        import torch

        torch.set_num_threads(1)
        path = proxies_dir / "zerocost.jsonl"
        done = {row["network"] for row in read_jsonl(path)}
        # Every network of the set, trained yet or not: the scores cost seconds.
        from reference import networks_path

        listed = json.loads(networks_path(Path(args.reference)).read_text())["networks"]
        todo = [net for net in listed if net["network"] not in done]
        size = reference[0]["recipe"]["size"]
        holdout = reference[0]["split"]["heldout"]
        for row in zero_cost_rows(todo, args.data, size, holdout):
            append_jsonl(path, row)
            seconds = sum(row["seconds"].values()) - row["seconds"]["macs"]
            print(f"zero-cost {row['network']}: {seconds:.1f} s", flush=True)
    from reference import base_job, networks_path, run_jobs

    if args.train:
        listed = json.loads(networks_path(Path(args.reference)).read_text())["networks"]
        # The reference's own order, so that the proxies cover what the reference trains first.
        listed = listed[: args.networks]
        holdout = reference[0]["split"]["heldout"]
    for name, recipe in args.train:
        path = proxies_dir / f"{name}.jsonl"
        done = {(row["network"], int(row.get("seed", 0))) for row in read_jsonl(path)}
        jobs = [
            base_job(
                net, seed, argparse.Namespace(data=args.data, threads=1, device="auto", runs="")
            )
            | {
                "proxy": recipe,
                "recipe_name": name,
                "holdout": holdout,
                "runs": str(Path(args.runs) / name),
            }
            for seed in args.seeds
            for net in listed
            if (net["network"], seed) not in done
        ]
        print(f"recipe {name} {recipe}: {len(jobs)} trainings to go", flush=True)
        started = time.time()
        run_jobs(jobs, args.parallel, lambda row, p=path: append_jsonl(p, row), train_proxy)
        print(f"recipe {name}: {time.time() - started:.0f} s", flush=True)
    return scoreboard(args)


if __name__ == "__main__":
    raise SystemExit(main())
