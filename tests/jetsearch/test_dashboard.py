"""A study as optuna-dashboard serves it: objective names, feasibility, reasons, artifacts, and
a trial's user attributes in the order a user reads them.

A tiny real study on a journal file (three asked-and-told trials, nothing trained) gets its
artifacts through ``jetsearch.artifacts``; a short real ``jetsearch study`` (the shrunk tiny
study) is run, killed with ``kill -9`` and interrupted with Ctrl-C mid-training, and run to its
end. The real ``optuna-dashboard`` server runs in a subprocess on a free loopback port, started
with the command line ``dashboard_command`` gives, and the tests read the dashboard's own JSON
API (``/api/studies/<id>``: each trial's ``user_attrs`` as a list of ``{key, value}`` in the
order the storage gives them, which is the order they were first written) and artifact routes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import optuna
import pytest
from onnx import TensorProto, helper
from optuna.trial import TrialState
from study_cases import REPO, write_study

from jetsearch.artifacts import (
    artifact_store_for,
    dashboard_command,
    feasibility_attrs,
    overlay_panel_png,
    study_feasibility_note,
    upload_trial_artifacts,
)
from jetsearch.objective import HEADLINE_KEYS
from jetsearch.recovery import HEARTBEAT_KEY, OWNER_KEYS, system_key
from jetsearch.storage import open_storage
from jetseg.data import CAMVID_CLASSES, CAMVID_PALETTE

pytest.importorskip("optuna_dashboard")
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
optuna.logging.set_verbosity(optuna.logging.WARNING)

STUDY = "dashboard-check"
BUDGET_MS = 24.0
STARTUP_S = 30.0


def tiny_onnx(num_classes: int = len(CAMVID_CLASSES)) -> bytes:
    """A real, runnable segmentation-shaped graph: one 1x1 convolution, image -> logits."""
    rng = np.random.default_rng(0)
    weight = helper.make_tensor(
        "weight",
        TensorProto.FLOAT,
        (num_classes, 3, 1, 1),
        rng.standard_normal((num_classes, 3, 1, 1)).astype(np.float32).ravel().tolist(),
    )
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "weight"], ["logits"])],
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, "h", "w"])],
        [
            helper.make_tensor_value_info(
                "logits", TensorProto.FLOAT, ["batch", num_classes, "h", "w"]
            )
        ],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by every onnxruntime >= 1.10
    onnx.checker.check_model(model)
    return model.SerializeToString()


@dataclass
class Uploaded:
    number: int
    state: str  # as the dashboard spells it
    feasible: bool
    files: dict[str, bytes]  # filename -> the exact bytes uploaded
    ids: dict[str, str]  # filename -> artifact id


def build_study(journal: Path) -> tuple[optuna.Study, list[Uploaded]]:
    """Three trials: feasible COMPLETE, over-budget COMPLETE, PRUNED with a reason."""
    storage = open_storage(str(journal))
    store = artifact_store_for(str(journal), None)
    study = optuna.create_study(
        study_name=STUDY, storage=storage, directions=["maximize", "minimize"]
    )
    study.set_metric_names(["val_miou", "latency_ms"])
    study_feasibility_note(study, BUDGET_MS)
    onnx_bytes = tiny_onnx()
    rng = np.random.default_rng(7)
    size = (12, 16)
    images = [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(2)]
    labels = [rng.integers(0, len(CAMVID_CLASSES) + 1, size) for _ in range(2)]
    predictions = [rng.integers(0, len(CAMVID_CLASSES), size) for _ in range(2)]
    overlay = overlay_panel_png(images, labels, predictions, CAMVID_CLASSES, CAMVID_PALETTE)

    uploaded = []
    plan = [  # (latency_ms, val_miou or None for pruned)
        (12.5, 0.41),
        (31.0, 0.52),
        (40.0, None),
    ]
    for latency_ms, miou in plan:
        trial = study.ask()
        width = trial.suggest_int("width", 8, 64)
        attrs = feasibility_attrs(latency_ms, BUDGET_MS)
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        trial.set_user_attr("latency_ms", latency_ms)
        trial.set_constraint("latency_ms", latency_ms - BUDGET_MS)
        record = {"median_ms": latency_ms, "samples_ms": [latency_ms] * 3, "provider": "estimated"}
        config_yaml = f"name: trial-{trial.number}\nwidth: {width}\n"
        trained = miou is not None
        ids = upload_trial_artifacts(
            trial,
            study,
            store,
            config_yaml=config_yaml,
            onnx_bytes=onnx_bytes,
            overlay_png=overlay if trained else None,
            latency_record=record,
        )
        files = {
            "config.yaml": config_yaml.encode(),
            "model.onnx": onnx_bytes,
            "latency.json": (json.dumps(record, indent=2, sort_keys=True) + "\n").encode(),
        }
        if trained:
            files["overlay.png"] = overlay
            study.tell(trial, [miou, latency_ms])
            state = "Complete"
        else:
            trial.set_user_attr("pruned_reason", f"over the {BUDGET_MS:g} ms latency budget")
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            state = "Pruned"
        uploaded.append(Uploaded(trial.number, state, attrs["feasible"], files, ids))
    return study, uploaded


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _get(url: str, timeout: float = 10.0) -> tuple[bytes, dict[str, str]]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read(), dict(response.headers)


def _get_json(url: str) -> dict[str, Any]:
    body, _ = _get(url)
    return json.loads(body)


@contextlib.contextmanager
def serve(journal: Path, log: Path) -> Iterator[str]:
    """The real optuna-dashboard on a free loopback port, serving ``journal``; its base URL."""
    command = dashboard_command(str(journal), None, host="127.0.0.1", port=_free_port())
    executable = shutil.which(command[0]) or shutil.which(
        command[0], path=str(Path(sys.executable).parent)
    )
    if executable is None:
        pytest.skip("the optuna-dashboard command is not on PATH (pip install optuna-dashboard)")
    with log.open("wb") as sink:
        # Its own session, so the finally below stops every process it forks (gunicorn).
        server = subprocess.Popen(
            [executable, *command[1:]],
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{command[command.index('--port') + 1]}"
    try:
        deadline = time.monotonic() + STARTUP_S
        while True:
            if server.poll() is not None:
                pytest.fail(f"optuna-dashboard exited with {server.returncode}: {log.read_text()}")
            try:
                _get(f"{base}/api/meta", timeout=2.0)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    pytest.fail(
                        f"optuna-dashboard did not answer in {STARTUP_S:g} s: {log.read_text()}"
                    )
                time.sleep(0.2)
        yield base
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()


@pytest.fixture
def dashboard(tmp_path) -> Iterator[tuple[str, list[Uploaded]]]:
    """The real optuna-dashboard on a free loopback port, serving the tiny study."""
    journal = tmp_path / "studies.log"
    _, uploaded = build_study(journal)
    with serve(journal, tmp_path / "dashboard.log") as base:
        yield base, uploaded


def test_dashboard_serves_names_feasibility_reasons_and_artifacts(dashboard):
    base, uploaded = dashboard
    studies = _get_json(f"{base}/api/studies")["study_summaries"]
    (summary,) = [s for s in studies if s["study_name"] == STUDY]
    study_id = summary["study_id"]
    assert summary["directions"] == ["maximize", "minimize"]

    detail = _get_json(f"{base}/api/studies/{study_id}")
    assert detail["objective_names"] == ["val_miou", "latency_ms"]
    study_attrs = {a["key"]: a["value"] for a in detail["user_attrs"]}
    assert study_attrs["feasibility"].startswith("feasible means latency_median_ms <= 24 ms")
    # The dashboard offers the feasibility attributes as table columns.
    columns = {a["key"] for a in detail["union_user_attrs"]}
    assert {"feasible", "latency_over_budget_ms", "pruned_reason"} <= columns

    trials = {t["number"]: t for t in detail["trials"]}
    assert sorted(trials) == [u.number for u in uploaded]
    for want in uploaded:
        trial = trials[want.number]
        attrs = {a["key"]: a["value"] for a in trial["user_attrs"]}
        assert trial["state"] == want.state
        assert attrs["feasible"] == str(want.feasible)
        assert float(attrs["latency_over_budget_ms"]) == max(
            0.0, float(attrs["latency_ms"]) - BUDGET_MS
        )
        if want.state == "Pruned":
            assert attrs["pruned_reason"] == "over the 24 ms latency budget"
            assert "values" not in trial
        else:
            assert "pruned_reason" not in attrs
            assert trial["values"][1] == float(attrs["latency_ms"])

        # Every artifact is listed with its name and type, and downloads byte for byte.
        listed = {a["filename"]: a for a in trial["artifacts"]}
        assert set(listed) == set(want.files)
        for filename, content in want.files.items():
            meta = listed[filename]
            assert meta["artifact_id"] == want.ids[filename]
            url = f"{base}/artifacts/{study_id}/{trial['trial_id']}/{meta['artifact_id']}"
            body, headers = _get(url)
            assert body == content, filename
            assert headers["Content-Type"] == meta["mimetype"]
        assert listed["config.yaml"]["mimetype"] == "application/yaml"
        assert listed["latency.json"]["mimetype"] == "application/json"
        assert listed["model.onnx"]["mimetype"] == "application/octet-stream"

    # What came back is usable: the overlay is the PNG, the model runs in onnxruntime.
    complete = trials[uploaded[0].number]
    assert {a["filename"]: a["mimetype"] for a in complete["artifacts"]}["overlay.png"] == (
        "image/png"
    )
    onnx_meta = {a["filename"]: a for a in complete["artifacts"]}["model.onnx"]
    model, _ = _get(
        f"{base}/artifacts/{study_id}/{complete['trial_id']}/{onnx_meta['artifact_id']}"
    )
    session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"image": np.zeros((1, 3, 8, 8), np.float32)})
    assert logits.shape == (1, len(CAMVID_CLASSES), 8, 8)

    # An artifact of another trial is not served under this one.
    other = trials[uploaded[1].number]
    foreign = uploaded[0].ids["config.yaml"]
    with pytest.raises(urllib.error.HTTPError) as err:
        _get(f"{base}/artifacts/{study_id}/{other['trial_id']}/{foreign}")
    assert err.value.code == 404


# ---------------------------------------------------------------------------------------------
# a real study, killed and interrupted mid-training, as the dashboard shows it

# What a user reads first on a trained trial's page, in this order (no held-out sequences here).
HEADLINE = [k for k in HEADLINE_KEYS if k != "heldout_miou"]
BOOKKEEPING = {*OWNER_KEYS, HEARTBEAT_KEY}
REAL_STUDY = "small"


def _start_study(spec: Path, storage: Path, log: Path) -> subprocess.Popen:
    """``jetsearch study`` until 2 trials finished, SIGINT at its default as in a terminal."""
    command = [sys.executable, "-m", "jetsearch.cli", "study", "--target", str(spec)]
    command += ["--trials", "2", "--storage", str(storage)]
    with log.open("a") as sink:
        return subprocess.Popen(
            command,
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=spec.parent,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )


def _training(storage: Path, process: subprocess.Popen, log: Path, number: int) -> None:
    """Wait until trial ``number`` is training (its latency measured, not finished)."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        try:
            study = optuna.load_study(study_name=REAL_STUDY, storage=open_storage(str(storage)))
            trials = {t.number: t for t in study.get_trials(states=(TrialState.RUNNING,))}
        except (KeyError, FileNotFoundError):  # the study is not created yet
            trials = {}
        if number in trials and "latency_ms" in trials[number].user_attrs:
            time.sleep(0.5)  # into its training, which takes seconds
            return
        time.sleep(0.2)
    raise AssertionError(f"trial {number} did not reach its training in time:\n{log.read_text()}")


@pytest.mark.slow
def test_a_real_study_shows_what_a_user_reads_first_and_why_a_dead_trial_failed(tmp_path):
    spec = write_study(tmp_path, name=REAL_STUDY, train={"epochs": 30})  # trials of seconds
    storage, log = tmp_path / "s.log", tmp_path / "study.txt"
    # kill -9 during trial 1's training; the next start fails it ("owner died") and runs its
    # network again as trial 2, which a Ctrl-C stops mid-training; the third start finishes.
    killed = _start_study(spec, storage, log)
    _training(storage, killed, log, number=1)
    killed.kill()
    killed.wait()
    interrupted = _start_study(spec, storage, log)
    _training(storage, interrupted, log, number=2)
    interrupted.send_signal(signal.SIGINT)
    assert interrupted.wait(timeout=120) == 130, log.read_text()
    finishing = _start_study(spec, storage, log)
    assert finishing.wait(timeout=300) == 0, log.read_text()
    owners = {0: killed.pid, 1: killed.pid, 2: interrupted.pid, 3: finishing.pid}

    with serve(storage, tmp_path / "dashboard.log") as base:
        summaries = _get_json(f"{base}/api/studies")["study_summaries"]
        [study_id] = [s["study_id"] for s in summaries if s["study_name"] == REAL_STUDY]
        detail = _get_json(f"{base}/api/studies/{study_id}")

    trials = {t["number"]: t for t in detail["trials"]}
    keys = {n: [a["key"] for a in t["user_attrs"]] for n, t in trials.items()}
    attrs = {n: {a["key"]: a["value"] for a in t["user_attrs"]} for n, t in trials.items()}
    assert {n: t["state"] for n, t in trials.items()} == {
        0: "Complete",
        1: "Fail",
        2: "Fail",
        3: "Complete",
    }, log.read_text()
    # A sampled trial starts with what a user reads; the details (config, per-class IoU,
    # latency samples) follow.
    assert keys[0][: len(HEADLINE)] == HEADLINE
    assert attrs[0]["outcome"] == "completed"
    assert float(attrs[0]["val_miou"]) == trials[0]["values"][0]
    assert float(attrs[0]["latency_ms"]) == trials[0]["values"][1]
    assert attrs[0]["latency_source"] == "measured-local" and attrs[0]["rung"] == "0"
    for detail_key in ("config_yaml", "per_class_iou", "latency_samples_ms", "device"):
        assert keys[0].index(detail_key) > keys[0].index("val_miou"), detail_key
    # The killed trial says why it failed, not "running"; so does the interrupted one.
    untrained = [k for k in HEADLINE if k not in ("val_miou", "val_miou_sd")]
    assert keys[1][: len(untrained)] == untrained  # it never got an mIoU
    assert attrs[1]["outcome"] == "failed: owner died"
    assert attrs[1]["failure_reason"] == "owner died"
    assert "is gone" in attrs[1]["failure_detail"]
    assert attrs[2]["outcome"] == "failed: interrupted"
    assert attrs[2]["retry_of"] == "1" and attrs[3]["retry_of"] == "2"
    # A queued retry starts with what it was queued as, then the rest of the same headline.
    queued_as = ["rung", "arch_hash", "retry_of", "retries"]
    assert keys[3][: len(queued_as) + len(HEADLINE) - 2] == queued_as + [
        k for k in HEADLINE if k not in queued_as
    ]
    assert attrs[3]["outcome"] == "completed" and attrs[3]["arch_hash"] == attrs[1]["arch_hash"]
    # The bookkeeping of crash recovery is in no trial's user attributes, nor among the
    # dashboard's user-attribute columns: it is in the system attributes.
    for number in trials:
        assert not BOOKKEEPING & set(keys[number]), keys[number]
    assert not BOOKKEEPING & {a["key"] for a in detail["union_user_attrs"]}
    stored = optuna.load_study(study_name=REAL_STUDY, storage=open_storage(str(storage)))
    for trial in stored.get_trials():
        assert trial.system_attrs[system_key("owner_pid")] == owners[trial.number]
        assert trial.system_attrs[system_key("owner_trial")] == trial.number
        assert isinstance(trial.system_attrs[system_key(HEARTBEAT_KEY)], float)
