"""Screenshots of optuna-dashboard showing a real jetsearch study: the study page and one trial.

    jetsearch study --target local --data CAMVID --trials 6 --storage /tmp/shots/study.log
    python benchmarks/screenshots.py --storage /tmp/shots/study.log --study local [--trial N]
        [--artifact-store DIR] [--out docs/img] [--chromium chromium]
        [--window-size 1400,1000] [--trial-window-size 1400,1100]

The README's two images are made this way, from a study that ``jetsearch study`` ran (see the
README for which one). The script starts optuna-dashboard on a free loopback port with the
command line that ``jetsearch.artifacts.dashboard_command`` gives (the study storage, and the
artifact folder beside it or ``--artifact-store``), waits for it to answer, and has headless
Chromium save

* ``OUT/dashboard-study.png``: ``/dashboard/studies/<id>``, the study page (history, Pareto
  front of val_miou against latency_ms);
* ``OUT/dashboard-trial.png``: ``/dashboard/studies/<id>/trials?numbers=<n>``, one trial in the
  trial list: its parameters, its user attributes (what a user reads first: ``outcome``,
  ``rung``, ``arch_hash``, ``params``, ``macs``, ``latency_ms``, ``latency_source``,
  ``feasible``, ``val_miou``; then the details) and its artifacts (the ``overlay.png``
  preview, ``config.yaml``, ``model.onnx``, ``latency.json``). The dashboard lists parameters
  and user attributes in boxes that scroll after about five lines: the first five user
  attributes are the ones the picture shows.

``--study`` may be left out when the storage holds one study (a multi-fidelity study holds one
per rung: ``local``, ``local:rung1``, ...). ``--trial`` defaults to the first completed trial on
the Pareto front that has an ``overlay.png``. What the chosen trial's page will show (its data,
its first user attributes) is printed before the screenshots. A page that renders blank
(Chromium without a display server, a dashboard that failed to load) is reported as an error
rather than saved silently.

Needs optuna-dashboard (``pip install optuna-dashboard``) and Chromium (Debian:
``apt-get install chromium``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from jetsearch.artifacts import dashboard_command

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# the dashboard and the browser


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def start_dashboard(command: list[str], log: Path, timeout_s: float = 60.0):
    """Start optuna-dashboard and wait until it answers; returns (process, base URL)."""
    executable = shutil.which(command[0]) or shutil.which(
        command[0], path=str(Path(sys.executable).parent)
    )
    if executable is None:
        raise SystemExit("optuna-dashboard is not installed: pip install optuna-dashboard")
    with log.open("wb") as sink:
        server = subprocess.Popen(
            [executable, *command[1:]],
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # stop whatever it forks along with it
        )
    base = f"http://127.0.0.1:{command[command.index('--port') + 1]}"
    deadline = time.monotonic() + timeout_s
    while True:
        if server.poll() is not None:
            raise SystemExit(f"optuna-dashboard exited ({server.returncode}):\n{log.read_text()}")
        try:
            _get_json(f"{base}/api/meta")
            return server, base
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            if time.monotonic() > deadline:
                stop(server)
                raise SystemExit(f"optuna-dashboard did not answer in {timeout_s:g} s") from None
            time.sleep(0.3)


def stop(server: subprocess.Popen) -> None:
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def pick_trial(detail: dict[str, Any]) -> int:
    """The first Pareto-front trial with an overlay, else any complete trial, else trial 0."""
    trials = detail["trials"]

    def has_overlay(trial: dict[str, Any]) -> bool:
        return any(a["filename"] == "overlay.png" for a in trial.get("artifacts", []))

    best = {t["number"] for t in detail.get("best_trials", [])}
    for candidates in (
        [t for t in trials if t["number"] in best and has_overlay(t)],
        [t for t in trials if t["state"] == "Complete" and has_overlay(t)],
        [t for t in trials if t["state"] == "Complete"],
        trials,
    ):
        if candidates:
            return min(t["number"] for t in candidates)
    raise SystemExit("the study has no trials to show")


def screenshot(chromium: str, url: str, path: Path, window_size: str, profile: Path) -> None:
    """Save a headless Chromium screenshot of ``url``; fail on a blank page."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.unlink()
    command = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        f"--window-size={window_size}",
        "--virtual-time-budget=8000",
        f"--screenshot={path}",
        url,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=180)
    if result.returncode != 0 or not path.exists():
        raise SystemExit(
            f"chromium failed on {url} ({result.returncode}):\n{result.stderr[-2000:]}"
        )
    pixels = np.asarray(Image.open(path).convert("RGB"))
    colours = len(np.unique(pixels.reshape(-1, 3)[::7], axis=0))
    if colours < 20:  # a blank or error page has a handful of colours; the dashboard hundreds
        raise SystemExit(f"{path}: the page looks blank ({colours} colours); see {url}")
    print(f"{path}: {pixels.shape[1]}x{pixels.shape[0]}, {colours} colours, from {url}")


def describe_trial(detail: dict[str, Any], number: int, first: int = 9) -> str:
    """What the trial page will show: the trial, its state, its data, its first user attributes."""
    [trial] = [t for t in detail["trials"] if t["number"] == number]
    attrs = {a["key"]: a["value"] for a in trial["user_attrs"]}
    head = ", ".join(f"{a['key']}={a['value'][:24]}" for a in trial["user_attrs"][:first])
    data = attrs.get("data", "data not recorded")
    synthetic = " (SYNTHETIC scenes, not CamVid)" if attrs.get("synthetic_data") == "True" else ""
    return (
        f"trial {number} ({trial['state']}) on {data}{synthetic}\n  first user attributes: {head}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--storage",
        required=True,
        help="the study's storage (journal file, sqlite:///, postgresql://), as jetsearch study "
        "wrote it",
    )
    parser.add_argument("--study", help="study name (default: the storage's only study)")
    parser.add_argument("--trial", type=int, help="trial number for the trial page")
    parser.add_argument("--artifact-store", help="artifact folder (default: beside the storage)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "img")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    parser.add_argument("--window-size", default="1400,1000", help="study page, W,H in pixels")
    parser.add_argument(
        "--trial-window-size", default="1400,1100", help="trial page, W,H in pixels"
    )
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="jetsearch-screenshots-") as scratch:
        scratch = Path(scratch)
        command = dashboard_command(
            args.storage, args.artifact_store, host="127.0.0.1", port=_free_port()
        )
        server, base = start_dashboard(command, scratch / "dashboard.log")
        try:
            summaries = _get_json(f"{base}/api/studies")["study_summaries"]
            names = [s["study_name"] for s in summaries]
            study_name = args.study
            if study_name is None:
                if len(names) != 1:
                    raise SystemExit(
                        f"the storage holds {len(names)} studies {names}: pass --study"
                    )
                study_name = names[0]
            matches = [s for s in summaries if s["study_name"] == study_name]
            if not matches:
                raise SystemExit(f"no study {study_name!r} in {args.storage}; it holds {names}")
            study_id = matches[0]["study_id"]
            detail = _get_json(f"{base}/api/studies/{study_id}")
            number = args.trial if args.trial is not None else pick_trial(detail)
            print(f"study {study_name!r} in {args.storage}: {len(detail['trials'])} trials")
            print(describe_trial(detail, number))
            screenshot(
                args.chromium,
                f"{base}/dashboard/studies/{study_id}",
                args.out / "dashboard-study.png",
                args.window_size,
                scratch / "chromium-study",
            )
            screenshot(
                args.chromium,
                f"{base}/dashboard/studies/{study_id}/trials?numbers={number}",
                args.out / "dashboard-trial.png",
                args.trial_window_size,
                scratch / "chromium-trial",
            )
        finally:
            stop(server)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
