"""``jetsearch study``, ``show``, ``export`` as a user sees them: the live view on a terminal,
one line per trial in a log, JSON and CSV of a stored study, bad input that leaves nothing
behind, and Ctrl-C in a pseudo-terminal.

The studies are ``tests/jetsearch/study_cases.py``'s tiny ones (a second or two per trial).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import pty
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
import yaml
from rich.console import Console
from study_cases import REPO, write_study

from jetsearch.cli import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, main, storage_option
from jetsearch.cli.study_views import LiveView, StudyClock, TrialLines, trial_line
from jetsearch.progress import StudyProgress
from jetsearch.spec import StudySpec
from jetsearch.storage import open_storage

COMPLETE = optuna.trial.TrialState.COMPLETE
PRUNED = optuna.trial.TrialState.PRUNED
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def tiny_study(directory: Path, **changes) -> Path:
    """``write_study``'s tiny study, keeping only the keys this StudySpec knows (a newer
    ``studies/local.yaml`` may carry keys of features still on their way)."""
    path = write_study(directory, **changes)
    data = yaml.safe_load(path.read_text())
    known = {f.name for f in dataclasses.fields(StudySpec)}
    path.write_text(yaml.safe_dump({k: v for k, v in data.items() if k in known}, sort_keys=False))
    return path


def _load(storage: Path, name: str = "small") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(str(storage)))


def _jetsearch(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "jetsearch.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


@pytest.fixture(scope="module")
def logged_study(tmp_path_factory) -> tuple[Path, str]:
    """A two-trial study run with its output in a pipe (not a terminal): storage, stdout."""
    directory = tmp_path_factory.mktemp("logged")
    storage = directory / "s.log"
    spec = tiny_study(directory)
    out = _jetsearch(
        "study", "--target", str(spec), "--trials", "2", "--storage", str(storage), cwd=directory
    )
    assert out.returncode == EXIT_OK, out.stdout + out.stderr
    return storage, out.stdout


@pytest.fixture
def stored(logged_study, tmp_path) -> Path:
    """A copy of the logged study's storage that a test may change."""
    copy = tmp_path / "copy.log"
    shutil.copyfile(logged_study[0], copy)
    return copy


# ---------------------------------------------------------------------------------------------
# what a study prints


@pytest.mark.slow
def test_in_a_log_each_finished_trial_is_one_line_and_nothing_runs_together(logged_study):
    storage, stdout = logged_study
    assert "\x1b[" not in stdout  # no live display, no cursor movement
    lines = stdout.splitlines()
    trial_lines = [line for line in lines if line.startswith("trial ")]
    assert len(trial_lines) == 2
    for number, line in enumerate(trial_lines):
        assert re.fullmatch(
            rf"trial {number} complete: val mIoU \d+\.\d\d%, \d+\.\d\d ms \(measured-local\) "
            rf"\| {number + 1}/2 trained, ETA \d+:\d\d:\d\d",
            line,
        ), line
    assert trial_lines[-1].endswith("ETA 0:00:00")
    # The front follows the lines, and every later line starts on a line of its own.
    assert any("Pareto front of" in line for line in lines)
    assert any(line.startswith("latency from: ") for line in lines)
    assert all("┘latency" not in line for line in lines)
    assert lines[-1].startswith("done: 2 new trials")
    assert len(_load(storage).trials) == 2


def test_trial_line_names_state_miou_latency_and_reason():
    trial = optuna.trial.create_trial(
        state=PRUNED,
        user_attrs={
            "latency_ms": 81.234,
            "latency_provenance": "estimated",
            "pruned_reason": "over the latency budget before training: 81.23 ms > 60 ms",
        },
    )
    trial.number = 4
    assert trial_line(trial) == (
        "trial 4 pruned: 81.23 ms (estimated) - over the latency budget before training: "
        "81.23 ms > 60 ms"
    )


def test_the_eta_is_the_mean_trial_time_times_the_trials_left_counted_down():
    clock = StudyClock(total=7, start_count=2)
    assert clock.eta_s() is None  # nothing finished in this run yet
    now = time.monotonic()
    clock.started, clock.last_end, clock.done = now - 100.0, now - 10.0, 4
    assert clock.eta_s() == pytest.approx(45.0 * 3 - 10.0, abs=0.5)
    assert clock.text() in ("0:02:05", "0:02:04")
    # The running trial took longer than the mean (45 s): the two not started yet remain.
    clock.last_end = now - 60.0
    clock.started = clock.last_end - 90.0
    assert clock.eta_s() == pytest.approx(45.0 * 2, abs=0.5)
    assert clock.text() in ("0:01:30+", "0:01:31+")
    clock.done = 7
    assert clock.eta_s() == 0.0 and clock.text() == "0:00:00"


def _frozen(number: int, miou: float, latency: float) -> optuna.trial.FrozenTrial:
    trial = optuna.trial.create_trial(
        values=[miou, latency],
        user_attrs={
            "latency_ms": latency,
            "latency_provenance": "measured-local",
            "val_miou": miou,
            "arch_hash": f"arch{number}",
            "params": 1000 + number,
        },
    )
    return trial


def _text(renderable) -> str:
    console = Console(file=io.StringIO(), width=160, record=True)
    console.print(renderable)
    return console.export_text()


def test_the_live_view_shows_the_running_trial_and_redraws_the_front_when_a_trial_ends():
    console = Console(file=io.StringIO(), force_terminal=True, width=160)
    progress = StudyProgress()
    view = LiveView(console, "demo", total=3, start_count=0, progress=progress)
    study = optuna.create_study(study_name="demo", directions=["maximize", "minimize"])
    with view:
        first = _text(view.render())
        assert "0/3 trials trained" in first and "ETA ?" in first
        assert "no trial finished yet" in first and "now:" not in first
        progress.start_trial(0)
        progress.set_phase("training", epoch=2, epochs=4)
        progress.set_miou(0.312)
        assert "now: trial 0: training epoch 2/4, last val mIoU 31.20%" in _text(view.render())

        study.add_trial(_frozen(0, 0.30, 2.5))
        view(study, study.trials[-1])  # the callback of the finished trial
        after = _text(view.render())
        assert "1/3 trials trained" in after and "ETA ?" not in after
        assert "last: trial 0 complete: val mIoU 30.00%, 2.50 ms (measured-local)" in after
        assert "Pareto front of 1" in after and "arch0" in after
        study.add_trial(_frozen(1, 0.40, 1.5))  # dominates trial 0
        view(study, study.trials[-1])
        front = _text(view.render())
        assert "Pareto front of 1" in front and "arch1" in front and "arch0" not in front


@pytest.mark.slow
def test_the_live_view_redraws_every_second_between_trials():
    out = io.StringIO()
    view = LiveView(Console(file=out, force_terminal=True, width=120), "demo", 5, 0)
    with view:
        time.sleep(3.3)
    clocks = set(re.findall(r"elapsed (\d+:\d\d:\d\d)", ANSI.sub("", out.getvalue())))
    assert {"0:00:01", "0:00:02", "0:00:03"} <= clocks, clocks


@pytest.mark.slow
def test_study_passes_one_progress_to_the_run(tmp_path, monkeypatch, capsys):
    import jetsearch.run as run_module

    real = run_module.run_prepared
    seen = []

    def run_prepared(prepared, *, progress=None, **kwargs):  # the real run, progress recorded
        seen.append(progress)
        return real(prepared, progress=progress, **kwargs)

    monkeypatch.setattr(run_module, "run_prepared", run_prepared)
    spec = tiny_study(tmp_path)
    argv = ["study", "--target", str(spec), "--trials", "1", "--storage", str(tmp_path / "s.log")]
    assert main(argv) == EXIT_OK
    assert len(seen) == 1 and isinstance(seen[0], StudyProgress)
    out = capsys.readouterr().out
    assert re.search(r"^trial 0 complete: .* \| 1/1 trained, ETA 0:00:00$", out, re.M), out


def test_trial_lines_print_one_line_per_trial_to_a_file():
    out = io.StringIO()
    lines = TrialLines(Console(file=out, width=40), "demo", total=2, start_count=0)
    study = optuna.create_study(study_name="demo", directions=["maximize", "minimize"])
    for number in range(2):
        study.add_trial(_frozen(number, 0.1 * (number + 1), 9.87654))
        lines(study, study.trials[-1])
    text = out.getvalue()
    assert text.count("\n") == 2 and text.endswith("\n")  # never wrapped at 40 columns
    assert text.splitlines()[1].startswith("trial 1 complete: val mIoU 20.00%, 9.88 ms")


# ---------------------------------------------------------------------------------------------
# show and export


def _nan_as_none(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: _nan_as_none(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_nan_as_none(item) for item in value]
    return value


def test_show_json_holds_every_trial_as_the_storage_has_it(stored, capsys):
    study = _load(stored)
    failed = study.ask()
    failed.set_user_attr("failure_reason", "RuntimeError: out of memory")
    failed.set_user_attr("not_a_number", float("nan"))
    study.tell(failed, state=optuna.trial.TrialState.FAIL)

    assert main(["show", "--study", "small", "--storage", str(stored), "--format", "json"]) == 0
    record = json.loads(capsys.readouterr().out)  # strict JSON: NaN would not parse here

    trials = _load(stored).get_trials()
    assert record["study"] == "small" and record["directions"] == ["maximize", "minimize"]
    assert [t["number"] for t in record["trials"]] == [t.number for t in trials] == [0, 1, 2]
    for got, want in zip(record["trials"], trials, strict=True):
        assert got["state"] == want.state.name
        assert got["values"] == (None if want.values is None else list(want.values))
        assert got["params"] == want.params
        assert got["user_attrs"] == _nan_as_none(want.user_attrs)
    assert record["trials"][2]["user_attrs"]["not_a_number"] is None
    # The front: the complete trials no other complete trial dominates, latencies whose samples
    # cannot be told apart counting as one latency and mIoU inside each other's bootstrap
    # interval as one accuracy (jetsearch.fronts, tested on its own).
    from jetsearch.fronts import Point, dominates

    complete = [t for t in trials if t.state == COMPLETE]

    def point(t):
        return Point(
            str(t.number),
            t.values[0],
            t.values[1],
            t.user_attrs["latency_samples_ms"],
            miou_sd=t.user_attrs.get("val_miou_sd", 0.0),
        )

    front = [t.number for t in complete if not any(dominates(point(o), point(t)) for o in complete)]
    assert sorted(record["front"]) == sorted(front) and front
    assert {t["number"] for t in record["trials"] if t["on_front"]} == set(front)


def test_show_csv_is_one_row_per_trial(stored, capsys):
    assert main(["show", "--study", "small", "--storage", str(stored), "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    trials = _load(stored).get_trials()
    assert [int(r["number"]) for r in rows] == [t.number for t in trials]
    for row, trial in zip(rows, trials, strict=True):
        assert row["state"] == "COMPLETE"
        assert float(row["val_miou"]) == trial.values[0]
        assert float(row["latency_ms"]) == trial.values[1]
        assert row["arch_hash"] == trial.user_attrs["arch_hash"]
    assert "config_yaml" not in rows[0]  # multi-line text stays in the JSON form


def test_show_reads_the_storage_from_the_environment(stored, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("JETSEARCH_STORAGE", raising=False)
    monkeypatch.setenv("OPTUNA_STORAGE", str(stored))
    assert main(["show", "--study", "small", "--format", "json"]) == EXIT_OK
    assert json.loads(capsys.readouterr().out)["study"] == "small"
    missing = tmp_path / "elsewhere.log"
    monkeypatch.setenv("JETSEARCH_STORAGE", str(missing))  # takes precedence over Optuna's
    assert storage_option(None) == str(missing)
    assert main(["show", "--study", "small"]) == EXIT_USAGE
    assert f"storage {missing} does not exist" in capsys.readouterr().err
    assert not missing.exists()  # looking did not create it
    assert main(["show", "--study", "small", "--storage", str(stored)]) == EXIT_OK  # beats both
    assert storage_option("given.log") == "given.log"


def test_the_storage_variables_are_in_the_help(capsys):
    for command in ("study", "show", "export", "dashboard"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        help_text = " ".join(capsys.readouterr().out.split())
        assert "$JETSEARCH_STORAGE, else $OPTUNA_STORAGE" in help_text, command


def test_export_hint_keeps_the_data_the_study_trained_on(stored, tmp_path, capsys):
    out = tmp_path / "picked.yaml"
    argv = ["export", "--study", "small", "--storage", str(stored), "--pick", "knee"]
    assert main([*argv, "-o", str(out)]) == EXIT_OK
    hint = capsys.readouterr().out
    assert f"jetsearch train --config {out} (the study trained on synthetic scenes" in hint

    study = _load(stored)
    spec = dict(study.user_attrs["spec"], data="/data/Cam Vid")
    study.set_user_attr("spec", spec)
    assert main([*argv, "-o", str(out)]) == EXIT_OK
    hint = " ".join(capsys.readouterr().out.split())
    assert f"train it with: jetsearch train --config {out} --data '/data/Cam Vid'" in hint


# ---------------------------------------------------------------------------------------------
# bad input leaves nothing behind


def test_counts_below_one_are_refused(capsys):
    for flag, value in (
        ("--trials", "-3"),
        ("--trials", "0"),
        ("--jobs", "0"),
        ("--timeout", "0"),
        ("--timeout", "-5"),
        ("--max-concurrent", "0"),
    ):
        with pytest.raises(SystemExit) as done:
            main(["study", "--target", "local", flag, value])
        assert done.value.code == EXIT_USAGE
        err = capsys.readouterr().err
        assert f"argument {flag}: must be" in err and value in err, err


@pytest.mark.parametrize(
    "problem", ["unknown target", "bad YAML", "bad --data", "--jobs 2 with SQLite", "bad space"]
)
def test_a_study_with_bad_input_creates_no_storage(tmp_path, capsys, problem):
    spec = tiny_study(tmp_path)
    storage = tmp_path / "s.log"
    extra: list[str] = []
    if problem == "unknown target":
        spec, expected = "no-such-study", "neither a study file nor a built-in study"
    elif problem == "bad YAML":
        spec.write_text("space: [tiny\n")
        expected = "not valid YAML"
    elif problem == "bad --data":
        extra, expected = ["--data", str(tmp_path / "nowhere")], "nowhere is not a directory"
    elif problem == "--jobs 2 with SQLite":
        storage = tmp_path / "s.db"
        extra, expected = ["--jobs", "2"], "SQLite storage cannot be shared"
    else:
        spec = tiny_study(tmp_path, space="no-such-space")
        expected = "no-such-space"
    url = f"sqlite:///{storage}" if storage.suffix == ".db" else str(storage)
    argv = ["study", "--target", str(spec), "--trials", "1", "--storage", url, *extra]
    assert main(argv) == EXIT_USAGE
    assert expected in capsys.readouterr().err
    assert not storage.exists()


def test_a_study_with_bad_input_adds_no_study_to_an_existing_storage(stored, tmp_path, capsys):
    before = stored.read_bytes()
    spec = tiny_study(tmp_path)
    argv = ["study", "--target", str(spec), "--name", "other", "--storage", str(stored)]
    assert main([*argv, "--data", str(tmp_path / "nowhere")]) == EXIT_USAGE
    assert "nowhere is not a directory" in capsys.readouterr().err
    assert stored.read_bytes() == before
    names = [s.study_name for s in optuna.get_all_study_summaries(open_storage(str(stored)))]
    assert names == ["small"]


# ---------------------------------------------------------------------------------------------
# Ctrl-C on a terminal


class _PtyReader(threading.Thread):
    """Everything the child writes to the pseudo-terminal, read as it comes (a full pty
    buffer would block the child)."""

    def __init__(self, fd: int) -> None:
        super().__init__(daemon=True)
        self.fd, self.chunks = fd, []

    def run(self) -> None:
        while True:
            try:
                data = os.read(self.fd, 65536)
            except OSError:  # EIO: the child closed its end
                return
            if not data:
                return
            self.chunks.append(data)

    def text(self) -> str:
        return b"".join(self.chunks).decode("utf-8", "replace")


@pytest.mark.slow
def test_ctrl_c_on_a_terminal_says_one_line_exits_130_and_the_network_is_retried(tmp_path):
    spec = tiny_study(tmp_path, train={"epochs": 30})  # long enough to land in a training
    storage = tmp_path / "s.log"
    master, slave = pty.openpty()
    command = [sys.executable, "-m", "jetsearch.cli", "study", "--target", str(spec)]
    command += ["--trials", "100", "--storage", str(storage)]
    process = subprocess.Popen(
        command,
        stdin=slave,
        stdout=slave,
        stderr=slave,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "120", "LINES": "40"},
        start_new_session=True,  # its own process group, as a shell gives a foreground job
        # and SIGINT as a foreground job has it, even when this test runs in a background job
        # (which a non-interactive shell starts with SIGINT ignored, and Python keeps ignored)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    os.close(slave)
    reader = _PtyReader(master)
    reader.start()
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            assert process.poll() is None, reader.text()
            if storage.exists():
                try:
                    if _load(storage).get_trials(states=(COMPLETE,)):
                        break
                except KeyError:  # the study is not created yet
                    pass
            time.sleep(0.2)
        else:
            raise AssertionError(f"no trial completed in time:\n{reader.text()}")
        while time.monotonic() < deadline:  # into the next trial's training
            assert process.poll() is None, reader.text()
            running = _load(storage).get_trials(states=(optuna.trial.TrialState.RUNNING,))
            if running and "latency_ms" in running[0].user_attrs:
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"no second trial reached its training:\n{reader.text()}")
        time.sleep(0.5)  # its training takes seconds
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C sends to the foreground job
        process.wait(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        reader.join(timeout=10)
        os.close(master)
    text = ANSI.sub("", reader.text())
    assert process.returncode == EXIT_INTERRUPTED, text
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text
    assert "no out_dir" not in text and "failed with" not in text, text  # Optuna's echo of it
    (line,) = re.findall(r"interrupted: [^\r\n]*", text)
    match = re.fullmatch(r"interrupted: (\d+) trials trained, resume with the same command", line)
    assert match, line
    finished = _load(storage).get_trials(states=(COMPLETE, PRUNED))
    assert int(match.group(1)) == len(finished) >= 1
    # The live view ran on the terminal, its clock moving between trial ends.
    clocks = set(re.findall(r"elapsed (\d+:\d\d:\d\d)", text))
    assert len(clocks) >= len(finished) + 2, clocks
    # The network it was training is failed as interrupted, queued, and trained on resume.
    trials = _load(storage).get_trials()
    [stopped] = [t for t in trials if t.user_attrs.get("failure_reason") == "interrupted"]
    assert stopped.state == optuna.trial.TrialState.FAIL
    [waiting] = [t for t in trials if t.state == optuna.trial.TrialState.WAITING]
    assert waiting.user_attrs["retry_of"] == stopped.number
    resumed = _jetsearch(
        "study", "--target", str(spec), "--trials", str(len(finished) + 1),
        "--storage", str(storage), "--quiet", cwd=tmp_path,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    [retry] = [
        t for t in _load(storage).get_trials() if t.user_attrs.get("retry_of") == stopped.number
    ]
    assert retry.state == COMPLETE and retry.params == stopped.params
    assert retry.user_attrs["arch_hash"] == stopped.user_attrs["arch_hash"]


@pytest.mark.slow
def test_sigterm_stops_a_study_as_ctrl_c_does_and_exits_143(tmp_path):
    # kill PID, a service manager or a batch scheduler: the trial in flight is marked
    # interrupted and queued again (not left RUNNING to be counted as a crash), exit 143.
    spec = tiny_study(tmp_path, train={"epochs": 60})  # trials long enough to land in training
    storage = tmp_path / "s.log"
    command = [sys.executable, "-m", "jetsearch.cli", "study", "--target", str(spec)]
    process = subprocess.Popen(
        [*command, "--trials", "3", "--storage", str(storage)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            assert process.poll() is None, process.stdout.read()
            try:
                running = _load(storage).get_trials(states=(optuna.trial.TrialState.RUNNING,))
            except (KeyError, FileNotFoundError):  # the study is not created yet
                running = []
            if running and "latency_ms" in running[0].user_attrs:
                break  # measured, now training
            time.sleep(0.2)
        else:
            raise AssertionError("no trial reached its training in time")
        time.sleep(1.0)
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 143, out
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out
    assert re.search(r"^stopped by SIGTERM: 0 trials trained, resume with", out, re.M), out
    trials = _load(storage).get_trials()
    [stopped] = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    assert stopped.user_attrs["failure_reason"] == "interrupted"
    [waiting] = [t for t in trials if t.state == optuna.trial.TrialState.WAITING]
    assert waiting.user_attrs["retry_of"] == stopped.number
    assert waiting.system_attrs["fixed_params"] == stopped.params  # enqueue_trial's record


def test_show_prints_each_miou_with_its_interval_and_each_rungs_scoreboard_figure(stored, capsys):
    from jetsearch.fronts import MIOU_Z

    trials = [t for t in _load(stored).get_trials() if t.state == COMPLETE]
    assert all(t.user_attrs["val_miou_sd"] >= 0 for t in trials)
    assert main(["show", "--study", "small", "--storage", str(stored)]) == EXIT_OK
    out = capsys.readouterr().out
    widths = {f"±{100 * MIOU_Z * t.user_attrs['val_miou_sd']:.1f}" for t in trials}
    assert any(width in out for width in widths)
    assert "half-width of its 90% interval" in out
    # The small study has no rungs: no scoreboard line. Its spec is read back from the study.
    assert "proxy scoreboard" not in out
