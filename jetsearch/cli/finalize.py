"""``jetsearch finalize``: train a study's best networks fully and report them."""

from __future__ import annotations

import argparse

from jetsearch.cli import EXIT_OK, UsageError, parse_size, study_parent
from jetsearch.cli import console as make_console


def cmd_finalize(args: argparse.Namespace) -> int:
    """Train the top networks (and presets) over seeds under one recipe; judge the found
    networks against the presets; write report.md, the plot and, on a win, a derived preset."""
    import sys

    from jetsearch.finalize import FinalizeError, finalize
    from jetsearch.report import ReportError, load_study
    from jetsearch.storage import DEFAULT_STORAGE
    from jetseg.config import preset_names

    if args.top < 1:
        raise UsageError(f"--top must be >= 1, got {args.top}")
    if args.seeds < 1:
        raise UsageError(f"--seeds must be >= 1, got {args.seeds}")
    if args.rounds < 1:
        raise UsageError(f"--rounds must be >= 1, got {args.rounds}")
    if not 0.5 <= args.confidence < 1.0:
        raise UsageError(f"--confidence must lie in [0.5, 1), got {args.confidence}")
    if args.epochs is not None and args.epochs < 1:
        raise UsageError(f"--epochs must be >= 1, got {args.epochs}")
    if args.minutes is not None and not args.minutes > 0:
        raise UsageError(f"--minutes must be > 0, got {args.minutes}")
    presets = args.with_presets
    if presets is not None and not presets:
        presets = list(preset_names())
    for name in presets or ():
        if name not in preset_names():
            raise UsageError(f"--with-presets {name}: not a preset ({', '.join(preset_names())})")
    if args.write_preset is not None and not presets:
        raise UsageError(
            "--write-preset needs a preset to beat: add --with-presets (e.g. the target's)"
        )
    if args.baseline is not None and args.baseline not in (presets or ()):
        raise UsageError(f"--baseline {args.baseline}: give it to --with-presets too")
    storage = args.storage or DEFAULT_STORAGE
    try:
        study = load_study(args.study, storage)
    except ReportError as err:
        raise UsageError(str(err)) from None
    out = args.out or f"runs/finalize-{args.study}"
    console = make_console()
    try:
        report = finalize(
            study,
            storage,
            top=args.top,
            choose_by=args.choose,
            presets=presets or (),
            seeds=args.seeds,
            rounds=args.rounds,
            epochs=args.epochs,
            minutes=args.minutes,
            size=args.size,
            augment=not args.no_augment,
            data=args.data,
            holdout=args.holdout,
            out_dir=out,
            baseline=args.baseline,
            confidence=args.confidence,
            write_preset=args.write_preset,
            preset_dir=args.preset_dir,
            remeasure=args.remeasure,
            progress=sys.stderr.isatty(),
            log=lambda line: console.print(line, highlight=False, soft_wrap=True, markup=False),
        )
    except FinalizeError as err:
        raise UsageError(str(err)) from None
    _upload(study, storage, out)
    console.print(f"recipe: {report['recipe']}; {report['seeds']} seed(s) per network")
    _print_verdicts(console, report)
    console.print(f"wrote {out}/report.md, {out}/report.json and {out}/front_final.png")
    return EXIT_OK


def _print_verdicts(console, report: dict) -> None:
    """One line per found network and preset: its verdict and why."""
    metric = "held-out" if report["comparison"]["metric"] == "heldout_miou" else "val"
    console.print(
        f"verdicts on {metric} mIoU over seeds ({report['comparison']['test']} at "
        f"{100 * report['comparison']['confidence']:g}%) and latency:",
        highlight=False,
    )
    for n in report["networks"]:
        for preset, verdict in n["verdicts"].items():
            console.print(
                f"  {n['name']} vs {preset}: {verdict['reason']}", highlight=False, soft_wrap=True
            )


def _upload(study, storage: str, out: str) -> None:
    """The report and the plot as study artifacts, so the dashboard opens them."""
    from pathlib import Path

    from jetsearch.artifacts import upload_file_artifact
    from jetsearch.finalize import spec_of
    from jetsearch.storage import study_artifact_store

    store = study_artifact_store(storage, spec_of(study))
    if store is None:
        return
    for name in ("report.md", "report.json", "front_final.png"):
        path = Path(out) / name
        if path.is_file():
            upload_file_artifact(study, store, path)


def add_parsers(subparsers) -> None:
    p = subparsers.add_parser(
        "finalize",
        parents=[study_parent()],
        help="train a study's best networks fully, re-measure them, write a report",
        description=(
            "Train a study's top found networks (by default the most accurate feasible ones "
            "at the highest rung they reached), and with --with-presets the presets, under "
            "one full recipe with --seeds seeds; evaluate them on val and the held-out "
            "sequences; re-measure their latency in interleaved rounds; judge each found "
            "network against each preset (a win: mean mIoU higher beyond the seed spread, "
            "Welch's one-sided t-test, and latency no higher); write report.md, report.json "
            "and front_final.png, and with --write-preset the winner as a derived preset. "
            "Running it again resumes."
        ),
        epilog=(
            "example:\n  jetsearch finalize --study nano --top 3 --with-presets nano "
            "--seeds 3 --minutes 30 --data ../shared/camvid --write-preset nano-found"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--top", type=int, default=3, help="found networks to train, presets aside (default 3)"
    )
    p.add_argument(
        "--choose",
        default="miou",  # checked by jetsearch.finalize.choose, not imported for every command
        help=(
            "which found networks: miou (default) the most accurate feasible ones at the "
            "highest rung they reached; front the noise-aware front's (ends first)"
        ),
    )
    p.add_argument(
        "--with-presets",
        nargs="*",
        metavar="PRESET",
        help="also train these presets (no name: every preset) under the same recipe",
    )
    length = p.add_mutually_exclusive_group(required=True)
    length.add_argument("--epochs", type=int, help="epochs of training per network")
    length.add_argument("--minutes", type=float, help="minutes of training per network")
    p.add_argument(
        "--size", type=parse_size, help="training HxW (default: the study's latency input size)"
    )
    p.add_argument(
        "--no-augment",
        action="store_true",
        help="train without random scale 0.5-2.0, crop and flip",
    )
    p.add_argument("--data", help="CamVid root (default: the study's data)")
    p.add_argument(
        "--holdout",
        nargs="*",
        metavar="SEQUENCE",
        help="CamVid sequences held out of training (default: the study's train.holdout)",
    )
    p.add_argument(
        "--seeds",
        type=int,
        default=3,
        help="trainings per network, seeds 0..N-1, each its own run (default 3)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="interleaved latency rounds where the provider measures (default 5)",
    )
    p.add_argument(
        "--remeasure",
        action="store_true",
        help="measure latency again even if latency.json holds these networks",
    )
    p.add_argument(
        "--baseline",
        metavar="PRESET",
        help="the preset a derived preset must beat (default: the study's target if it is "
        "among --with-presets, else the first of them)",
    )
    p.add_argument(
        "--confidence",
        type=float,
        default=0.90,
        help="confidence of the one-sided Welch t-test over seeds (default 0.90)",
    )
    p.add_argument(
        "--write-preset",
        metavar="NAME",
        help="write the best network that beats the baseline as preset NAME (e.g. nano-found);"
        " nothing is written without a win",
    )
    p.add_argument(
        "--preset-dir",
        metavar="DIR",
        help="where --write-preset writes NAME.yaml (default: jetseg's presets folder; another "
        "folder is found by name through $JETSEG_PRESET_PATH)",
    )
    p.add_argument("--out", help="output folder (default runs/finalize-STUDY)")
    p.set_defaults(func=cmd_finalize)
