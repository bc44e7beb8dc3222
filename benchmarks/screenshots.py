"""Screenshots of optuna-dashboard showing a jetsearch study: the study page and one trial.

    python benchmarks/screenshots.py                       # a small demo study, made here
    python benchmarks/screenshots.py --storage jetsearch-studies.log --study agx [--trial 17]
        [--artifact-store DIR] [--out docs/img] [--chromium chromium] [--window-size 1400,1000]

Starts optuna-dashboard on a free loopback port with the command line that
``jetsearch.artifacts.dashboard_command`` gives (the study storage, and the artifact folder
beside it or ``--artifact-store``), waits for it to answer, and has headless Chromium save

* ``OUT/dashboard-study.png``: ``/dashboard/studies/<id>``, the study page (history, Pareto
  front of val_miou against latency_ms);
* ``OUT/dashboard-trial.png``: ``/dashboard/studies/<id>/trials?numbers=<n>``, one trial in the
  trial list with its user attributes (``feasible``, ``latency_over_budget_ms``) and
  artifacts (the ``overlay.png`` preview, ``config.yaml``, ``model.onnx``, ``latency.json``).

Without ``--storage`` a demo study is built in a temporary folder: synthetic street scenes for
the overlays and made-up metrics (the study's ``demo`` user attribute says so); no network is
trained. ``--trial`` defaults to the first completed trial on the Pareto front that has an
``overlay.png``. A page that renders blank (Chromium without a display server, a dashboard that
failed to load) is reported as an error rather than saved silently.

Needs optuna-dashboard (``pip install optuna-dashboard``) and Chromium (Debian:
``apt-get install chromium``).
"""

from __future__ import annotations

import argparse
import json
import math
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
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from PIL import Image

from jetsearch.artifacts import (
    artifact_store_for,
    dashboard_command,
    feasibility_attrs,
    overlay_panel_png,
    study_feasibility_note,
    upload_trial_artifacts,
)
from jetsearch.study import open_storage
from jetseg.data import CAMVID_CLASSES, render_street_scene

DEMO_STUDY = "demo-agx"
DEMO_BUDGET_MS = 24.0
REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# the demo study


def _tiny_onnx(num_classes: int) -> bytes:
    """A runnable stand-in network (one 1x1 convolution) for the demo's model.onnx."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    weight = helper.make_tensor(
        "weight",
        TensorProto.FLOAT,
        (num_classes, 3, 1, 1),
        rng.standard_normal(num_classes * 3).astype(np.float32).tolist(),
    )
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "weight"], ["logits"])],
        "demo",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, "h", "w"])],
        [
            helper.make_tensor_value_info(
                "logits", TensorProto.FLOAT, ["batch", num_classes, "h", "w"]
            )
        ],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def _noisy_prediction(label: np.ndarray, rng: np.random.Generator, error: float) -> np.ndarray:
    """A plausible prediction: the truth with blocks of wrong classes and no void."""
    num_classes = len(CAMVID_CLASSES)
    prediction = label.astype(np.int64).copy()
    void = prediction == num_classes
    if void.any() and not void.all():  # a network never predicts void: the frame's commonest class
        prediction[void] = np.bincount(prediction[~void], minlength=num_classes).argmax()
    height, width = label.shape
    block = 6
    for top in range(0, height, block):
        for left in range(0, width, block):
            if rng.random() < error:
                prediction[top : top + block, left : left + block] = rng.integers(0, num_classes)
    return prediction


def build_demo_study(folder: Path, trials: int = 14, seed: int = 0) -> tuple[str, str]:
    """A journal study shaped like a jetsearch one; returns (storage path, study name)."""
    journal = folder / "jetsearch-studies.log"
    storage = open_storage(str(journal))
    store = artifact_store_for(str(journal), None)
    study = optuna.create_study(
        study_name=DEMO_STUDY, storage=storage, directions=["maximize", "minimize"]
    )
    study.set_metric_names(["val_miou", "latency_ms"])
    study.set_user_attr("target", "agx")
    study.set_user_attr("demo", "screenshot demo: synthetic scenes, made-up metrics, no training")
    study_feasibility_note(study, DEMO_BUDGET_MS)
    rng = np.random.default_rng(seed)
    onnx_bytes = _tiny_onnx(len(CAMVID_CLASSES))
    scenes = [render_street_scene(72, 96, np.random.default_rng(seed + i)) for i in range(3)]
    for _ in range(trials):
        trial = study.ask()
        width = trial.suggest_categorical("stem_width", [8, 12, 16, 24, 32])
        depth = trial.suggest_int("blocks_per_stage", 1, 4)
        kernel = trial.suggest_categorical("kernel", [3, 5, 7])
        attention = trial.suggest_categorical("attention", ["none", "sam", "eca", "cbam"])
        size = width * depth * (kernel / 3.0) ** 0.5
        latency_ms = round(4.0 + 0.22 * size + float(rng.normal(0, 1.2)), 2)
        miou = round(min(0.72, 0.30 + 0.09 * math.log1p(size / 4) + float(rng.normal(0, 0.02))), 4)
        attrs = feasibility_attrs(latency_ms, DEMO_BUDGET_MS)
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        trial.set_user_attr("latency_ms", latency_ms)
        trial.set_user_attr("latency_provenance", "estimated")
        trial.set_constraint("latency_ms", latency_ms - DEMO_BUDGET_MS)
        config_yaml = (
            f"# demo trial {trial.number}\nstem_width: {width}\nblocks_per_stage: {depth}\n"
            f"kernel: {kernel}\nattention: {attention}\n"
        )
        record = {
            "median_ms": latency_ms,
            "p90_ms": round(latency_ms * 1.04, 2),
            "provider": "estimated",
            "device": {"board": "agx-orin", "precision": "fp16"},
        }
        feasible = attrs["feasible"]
        overlay = None
        if feasible:
            error = max(0.02, 0.75 - miou)
            overlay = overlay_panel_png(
                [image for image, _ in scenes],
                [label for _, label in scenes],
                [_noisy_prediction(label, rng, error) for _, label in scenes],
                captions=[f"val frame {i}" for i in range(len(scenes))],
                scale=2,
            )
        upload_trial_artifacts(
            trial,
            study,
            store,
            config_yaml=config_yaml,
            onnx_bytes=onnx_bytes,
            overlay_png=overlay,
            latency_record=record,
        )
        if feasible:
            trial.set_user_attr("val_miou", miou)
            study.tell(trial, [miou, latency_ms])
        else:
            trial.set_user_attr(
                "pruned_reason",
                f"latency {latency_ms:g} ms over the {DEMO_BUDGET_MS:g} ms budget: not trained",
            )
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    return str(journal), DEMO_STUDY


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--storage", help="study storage (journal file, sqlite:///, postgresql://)")
    parser.add_argument("--study", help="study name (default: the storage's only study)")
    parser.add_argument("--trial", type=int, help="trial number for the trial page")
    parser.add_argument("--artifact-store", help="artifact folder (default: beside the storage)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "img")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    parser.add_argument("--window-size", default="1400,1000", help="W,H in pixels")
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # set_metric_names is marked experimental; the dashboard reads the names it stores.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

    with tempfile.TemporaryDirectory(prefix="jetsearch-screenshots-") as scratch:
        scratch = Path(scratch)
        if args.storage is None:
            storage, study_name = build_demo_study(scratch)
            print(f"demo study {study_name!r} in {storage}")
        else:
            storage, study_name = args.storage, args.study
        command = dashboard_command(
            storage, args.artifact_store, host="127.0.0.1", port=_free_port()
        )
        server, base = start_dashboard(command, scratch / "dashboard.log")
        try:
            summaries = _get_json(f"{base}/api/studies")["study_summaries"]
            if study_name is None:
                if len(summaries) != 1:
                    names = [s["study_name"] for s in summaries]
                    raise SystemExit(
                        f"the storage holds {len(names)} studies {names}: pass --study"
                    )
                study_name = summaries[0]["study_name"]
            matches = [s for s in summaries if s["study_name"] == study_name]
            if not matches:
                names = [s["study_name"] for s in summaries]
                raise SystemExit(f"no study {study_name!r} in {storage}; it holds {names}")
            study_id = matches[0]["study_id"]
            detail = _get_json(f"{base}/api/studies/{study_id}")
            number = args.trial if args.trial is not None else pick_trial(detail)
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
                args.window_size,
                scratch / "chromium-trial",
            )
        finally:
            stop(server)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
