"""``jetsearch worker``: the standalone board worker, started here or located for a board."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from jetsearch.cli import EXIT_OK


def cmd_worker(args: argparse.Namespace, extra: Sequence[str]) -> int:
    """Run the worker with every option after ``worker``, or print its file's path."""
    from jetsearch.latency import worker

    if args.print_path:
        print(worker.worker_path())
        return EXIT_OK
    return worker.run_worker(list(extra))


def add_parsers(subparsers) -> None:
    """Register ``worker``; its options pass through to the worker (``passthrough``)."""
    p = subparsers.add_parser(
        "worker",
        help="serve latency measurements on this machine (the board worker)",
        description="Start the standalone board worker here. Every option after 'worker' is "
        "passed to it; on a board, copy the file that --print-path names and run python3 on it.",
        add_help=False,
    )
    p.add_argument(
        "--print-path", action="store_true", help="print the worker file's path and exit"
    )
    p.set_defaults(func=cmd_worker, passthrough=True)
