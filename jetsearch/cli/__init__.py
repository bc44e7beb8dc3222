"""The ``jetsearch`` console script: shared pieces here, one module per command group.

``model`` (:mod:`jetsearch.cli.model`); ``train``, ``eval``, ``predict``
(:mod:`jetsearch.cli.train`); ``study``, ``show``, ``export``, ``dashboard``
(:mod:`jetsearch.cli.study`); ``worker`` (:mod:`jetsearch.cli.worker`); ``latency``
(:mod:`jetsearch.cli.latency`). Each module's ``add_parsers(subparsers)`` registers its
commands, each command's ``func`` takes the parsed arguments and returns the exit code.

Examples::

    jetsearch model show nano --size 360x480
    jetsearch model count agx --size 512x512 --layers
    jetsearch model export nano -o nano.onnx
    jetsearch train --config nano --epochs 5 --out runs/nano
    jetsearch eval --checkpoint runs/nano/best.pt --data ../shared/camvid
    jetsearch predict --checkpoint runs/nano/best.pt frame.png -o predictions/
    jetsearch study --target agx --trials 200 --workers http://agx:8765
    jetsearch export --study agx --pick knee -o agx-knee.yaml
    jetsearch worker --target agx --port 8765 --token-file token.txt

Exit codes: 0 success, 1 the work failed, 2 bad arguments or bad input files, 130 interrupted
(Ctrl-C), 143 stopped by SIGTERM (``jetsearch study`` stops as on Ctrl-C).
Set JETSEARCH_DEBUG=1 to see tracebacks for input errors. The storage of study, show, export
and dashboard is --storage, else $JETSEARCH_STORAGE, else $OPTUNA_STORAGE (the variable
Optuna's own command line reads).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_TERMINATED = 143  # 128 + SIGTERM


class UsageError(Exception):
    """Bad arguments or input files: reported in one line, exit code 2."""


def _number(text: str, kind: type, low: float, strict: bool) -> float:
    """``text`` as ``kind``, at least ``low`` (above ``low`` when ``strict``), for argparse."""
    noun = "an integer" if kind is int else "a number"
    bound = f"> {low:g}" if strict else f">= {low:g}"
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {noun} {bound}, got {text!r}") from None
    if value != value or value < low or (strict and value == low):  # NaN fails too
        raise argparse.ArgumentTypeError(f"must be {noun} {bound}, got {text}")
    return value


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (counts: trials, jobs, epochs, ...)."""
    return int(_number(text, int, 1, strict=False))


def non_negative_int(text: str) -> int:
    """An argparse type: an integer >= 0 (retries, worker processes, trial numbers)."""
    return int(_number(text, int, 0, strict=False))


def positive_float(text: str) -> float:
    """An argparse type: a number > 0 (seconds, milliseconds, rates)."""
    return _number(text, float, 0, strict=True)


def non_negative_float(text: str) -> float:
    """An argparse type: a number >= 0 (GPU fractions)."""
    return _number(text, float, 0, strict=False)


def parse_size(text: str) -> tuple[int, int]:
    """``HxW`` (e.g. ``360x480``) as a pair of positive ints."""
    parts = text.lower().replace("*", "x").split("x")
    try:
        h, w = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"size must look like HxW (e.g. 360x480), got {text!r}"
        ) from None
    if h < 16 or w < 16 or h > 8192 or w > 8192:
        raise argparse.ArgumentTypeError(f"size {h}x{w} is out of range (16 to 8192 per side)")
    return h, w


def console():
    """A ``rich.console.Console`` on stdout; in pipes and logs wide enough that tables never
    wrap."""
    from rich.console import Console

    out = Console()
    if not out.is_terminal:
        out = Console(width=140)
    return out


STORAGE_ENV = ("JETSEARCH_STORAGE", "OPTUNA_STORAGE")  # in order of precedence
STORAGE_HELP = (
    "journal file path, sqlite:/// or postgresql:// URL (default: $JETSEARCH_STORAGE, else "
    "$OPTUNA_STORAGE, else {fallback})"
)


def storage_option(given: str | None) -> str | None:
    """The storage a command was given: ``--storage``, else $JETSEARCH_STORAGE, else
    $OPTUNA_STORAGE; ``None`` when none is set (the caller's default applies)."""
    if given:
        return given
    for name in STORAGE_ENV:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return None


def require_storage(url: str) -> None:
    """Refuse a storage file that does not exist, before opening it would create it empty."""
    from jetsearch.storage import locate_storage

    path = locate_storage(url).file
    if path is not None and not path.is_file():
        raise UsageError(f"storage {url} does not exist; run jetsearch study first")


def check_data_root(data: str | Path | None, label: str = "--data") -> None:
    """Refuse a CamVid root that is missing, in no known layout or without a train and a val
    split, before anything is written (``None`` and ``"synthetic"`` pass). ``label`` says
    where the path came from."""
    if data is None or str(data) == "synthetic":
        return
    from jetseg.data import CamVid

    try:
        for split in ("train", "val"):
            CamVid(data, split, cache=False)  # lists the split's files, decodes nothing
    except (FileNotFoundError, ValueError) as err:
        raise UsageError(f"{label} {data}: {err}") from None


def load_network_config(name_or_path: str):
    """A preset or a config YAML; a missing or invalid one is a :class:`UsageError`."""
    from jetseg.config import ConfigError, load_config

    try:
        return load_config(name_or_path)
    except FileNotFoundError as err:
        raise UsageError(str(err)) from None
    except ConfigError as err:
        raise UsageError(str(err)) from None


# ---------------------------------------------------------------------------------------------
# options that several commands share (parent parsers, as Optuna's cli.py has them)


def data_parent() -> argparse.ArgumentParser:
    """``--data``: the CamVid root of ``train`` and ``eval``."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--data", help="CamVid root (default: the built-in synthetic street scenes)"
    )
    return parent


def checkpoint_parent() -> argparse.ArgumentParser:
    """``--checkpoint``: the trained network of ``eval`` and ``predict``."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--checkpoint", required=True, help="a best.pt or last.pt that jetsearch train wrote"
    )
    return parent


def study_parent() -> argparse.ArgumentParser:
    """``--study`` and ``--storage``: the stored study of ``show`` and ``export``."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--study", required=True, help="study name")
    parent.add_argument("--storage", help=STORAGE_HELP.format(fallback="jetsearch-studies.log"))
    return parent


# ---------------------------------------------------------------------------------------------
# the parser and the entry point


def build_parser() -> argparse.ArgumentParser:
    """The whole ``jetsearch`` parser, every command group registered."""
    # Imported here: the command modules import the shared pieces above from this package.
    from jetsearch import __version__
    from jetsearch.cli import finalize, latency, model, study, train, worker

    parser = argparse.ArgumentParser(
        prog="jetsearch",
        description="Hardware-aware architecture search for JetSeg segmentation networks.",
        epilog=__doc__.split("Examples::", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"jetsearch {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    model.add_parsers(sub)
    train.add_parsers(sub)
    study.add_parsers(sub)
    finalize.add_parsers(sub)
    worker.add_parsers(sub)
    latency.add_parsers(sub)
    return parser


class TerminateAsInterrupt:
    """SIGTERM (``kill PID``, a service manager or a batch scheduler stopping the job) raises
    KeyboardInterrupt while the block runs, so it stops exactly as Ctrl-C does: the trial in
    flight is marked interrupted and queued again, and nothing is counted as a crash.
    ``signalled`` says whether it was SIGTERM (exit 143) rather than Ctrl-C (130)."""

    def __init__(self) -> None:
        self.signalled = False
        self.previous = None

    def _handler(self, signum, frame) -> None:
        self.signalled = True
        raise KeyboardInterrupt

    def __enter__(self) -> TerminateAsInterrupt:
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)

    @property
    def exit_code(self) -> int:
        return EXIT_TERMINATED if self.signalled else EXIT_INTERRUPTED


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``jetsearch`` command; returns its exit code (see the module docstring)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "passthrough", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        if getattr(args, "passthrough", False):
            return args.func(args, extra)
        return args.func(args)
    except UsageError as err:
        print(f"jetsearch {args.command}: {err}", file=sys.stderr)
        return EXIT_USAGE
    except (FileNotFoundError, ValueError) as err:
        # Bad input (a config, a data folder, an image, a checkpoint): one clear message, no
        # traceback; JETSEARCH_DEBUG=1 shows the traceback.
        if os.environ.get("JETSEARCH_DEBUG"):
            raise
        print(f"jetsearch {args.command}: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"jetsearch {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:
        from jetsearch.latency.base import LatencyError

        if not isinstance(err, LatencyError) or os.environ.get("JETSEARCH_DEBUG"):
            raise
        print(f"jetsearch {args.command}: latency measurement failed: {err}", file=sys.stderr)
        return EXIT_FAILED
