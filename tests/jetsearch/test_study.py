"""Studies as a user runs them: ``jetsearch study|show|export`` in a subprocess.

Every study here is ``studies/local.yaml`` made tiny: the tiny space, 8 synthetic training and 4
validation frames at 48x64, one epoch, latency measured by onnxruntime on this machine at 64x64
with 5 timed runs, and the latency cache and the journal storage inside ``tmp_path``. A trial
takes a second or two.
"""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from study_cases import write_study

from jetsearch.recovery import death_cause, owner_of
from jetsearch.report import front_rows, pick, trial_rows
from jetsearch.spec import load_study_spec, study_names
from jetsearch.storage import DEFAULT_HEARTBEAT_GRACE_S, open_storage
from jetseg.config import ConfigError, arch_hash, config_to_dict, load_config
from jetseg.data import CAMVID_CLASSES
from jetseg.model import build_model
from jetseg.train_config import TrainConfig

REPO = Path(__file__).resolve().parents[2]
COMPLETE = optuna.trial.TrialState.COMPLETE
PRUNED = optuna.trial.TrialState.PRUNED


def _jetsearch(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "jetsearch.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


def _study(name: str, storage: Path) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(str(storage)))


def _run_study(spec: Path, storage: Path, trials: int, *extra: str) -> subprocess.CompletedProcess:
    out = _jetsearch(
        "study", "--target", str(spec), "--trials", str(trials), "--storage", str(storage), *extra
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out


@pytest.fixture(scope="module")
def small_study(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """A three-trial study run once, with the live view, for the tests that read it back."""
    directory = tmp_path_factory.mktemp("small_study")
    storage = directory / "s.log"
    out = _run_study(write_study(directory, latency={"budget_ms": 60}), storage, 3)
    return storage, out


@pytest.mark.slow
def test_a_whole_study_completes_and_stores_every_trial(small_study):
    storage, out = small_study
    assert "3 new trials" in out.stdout and "Pareto front" in out.stdout
    assert "SYNTHETIC" in out.stdout
    trials = _study("small", storage).get_trials()
    assert [t.number for t in trials] == [0, 1, 2]
    for t in trials:
        assert t.state == COMPLETE
        miou, latency = t.values
        assert 0.0 <= miou <= 1.0 and latency > 0
        attrs = t.user_attrs
        assert attrs["latency_ms"] == attrs["latency_median_ms"] == latency
        assert attrs["latency_source"] == "measured-local"
        assert attrs["latency_p90_ms"] >= latency and attrs["latency_cv"] >= 0
        assert attrs["runtime"].startswith("onnxruntime") and attrs["precision"] == "fp32"
        assert attrs["feasible"] is (latency <= 60) and attrs["outcome"] == "completed"
        assert set(attrs["per_class_iou"]) == set(CAMVID_CLASSES)
        assert attrs["val_miou"] == miou
        assert attrs["train_time_s"] > 0 and attrs["epochs"] == 1
        assert attrs["params"] > 0 and attrs["macs"] > 0
        assert attrs["synthetic_data"] is True
        assert attrs["arch_hash"] == arch_hash(load_config(yaml.safe_load(attrs["config_yaml"])))
        assert t.constraints["latency_ms"] == pytest.approx(latency - 60)


@pytest.mark.slow
def test_show_prints_the_front_and_plots_it(small_study, tmp_path):
    storage, _ = small_study
    png = tmp_path / "front.png"
    out = _jetsearch("show", "--study", "small", "--storage", str(storage), "--plot", str(png))
    assert out.returncode == 0, out.stderr
    front = front_rows(trial_rows(_study("small", storage)))
    assert front
    assert f"Pareto front of {len(front)}" in out.stdout
    for row in front:
        assert row.arch_hash in out.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    with Image.open(png) as image:
        assert image.size[0] > 300 and image.size[1] > 200


@pytest.mark.parametrize("which", ["--trial=0", "--pick=max-miou", "--pick=knee", "--pick=fastest"])
@pytest.mark.slow
def test_export_writes_a_config_that_builds(small_study, tmp_path, which):
    storage, _ = small_study
    target = tmp_path / "cfg.yaml"
    out = _jetsearch(
        "export", "--study", "small", "--storage", str(storage), which, "-o", str(target)
    )
    assert out.returncode == 0, out.stderr
    config = load_config(target)
    model = build_model(config)
    assert sum(p.numel() for p in model.parameters()) > 0
    study = _study("small", storage)
    how = which.split("=", 1)[1]
    number = 0 if how == "0" else pick(trial_rows(study), how).number
    expected = study.trials[number].user_attrs
    assert arch_hash(config) == expected["arch_hash"]
    assert sum(p.numel() for p in model.parameters()) == expected["params"]
    assert f"trial {number}" in out.stdout


@pytest.mark.slow
def test_resume_adds_trials_instead_of_restarting(tmp_path):
    spec = write_study(tmp_path)
    storage = tmp_path / "s.log"
    _run_study(spec, storage, 2, "--quiet")
    first = {t.number: (t.params, t.values, t.user_attrs) for t in _study("small", storage).trials}
    assert sorted(first) == [0, 1]
    out = _run_study(spec, storage, 4, "--quiet")
    assert "2 new trials" in out.stdout and "4 trained in the study" in out.stdout
    trials = _study("small", storage).trials
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert all(t.state == COMPLETE for t in trials)
    for number, (params, values, attrs) in first.items():
        assert (trials[number].params, trials[number].values) == (params, values)
        assert trials[number].user_attrs == attrs


@pytest.mark.slow
def test_an_over_budget_trial_is_pruned_before_training(tmp_path):
    spec = write_study(tmp_path, latency={"budget_ms": 0.001})
    storage = tmp_path / "s.log"
    # Nothing is under the budget: rejected networks do not count, the cap ends the study.
    out = _jetsearch(
        "study", "--target", str(spec), "--trials", "3", "--storage", str(storage),
        "--quiet", "--max-rejected", "3",
    )  # fmt: skip
    assert out.returncode == 2 and "raise --max-rejected (now 3)" in out.stderr, out.stderr
    trials = _study("small", storage).trials
    assert len(trials) == 3
    for t in trials:
        assert t.state == PRUNED
        assert "budget" in t.user_attrs["pruned_reason"]
        assert t.user_attrs["outcome"].startswith("rejected: over budget (")
        assert "train_time_s" not in t.user_attrs and "val_miou" not in t.user_attrs
        assert t.constraints["latency_ms"] > 0
        assert t.constraints["latency_ms"] == pytest.approx(t.user_attrs["latency_ms"] - 0.001)


@pytest.mark.slow
def test_a_repeated_architecture_is_not_trained_again(tmp_path):
    from jetsearch.space import load_space

    # A space with no dimension: every trial samples the same network.
    config = load_space("tiny").random_configs(1, seed=3)[0]
    space = tmp_path / "one_point.yaml"
    space.write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
    spec = write_study(tmp_path, space=str(space))
    storage = tmp_path / "s.log"
    _run_study(spec, storage, 3, "--quiet")
    first, *repeats = _study("small", storage).trials
    assert first.state == COMPLETE and "duplicate_of" not in first.user_attrs
    assert first.user_attrs["train_time_s"] > 0
    assert first.user_attrs["arch_hash"] == arch_hash(config)
    assert len(repeats) == 2
    for t in repeats:
        assert t.state == COMPLETE
        assert t.user_attrs["duplicate_of"] == 0
        assert t.user_attrs["train_time_s"] == 0
        assert t.values == first.values
        assert t.user_attrs["arch_hash"] == first.user_attrs["arch_hash"]
    rows = trial_rows(_study("small", storage))
    assert [r.number for r in front_rows(rows)] == [0]


@pytest.mark.slow
def test_presets_are_enqueued_first(tmp_path):
    spec = write_study(tmp_path, space="nano", enqueue_presets=["nano"])
    storage = tmp_path / "s.log"
    _run_study(spec, storage, 1, "--quiet")
    (trial,) = _study("small", storage).trials
    assert trial.state == COMPLETE
    assert trial.user_attrs["preset"] == "nano"
    assert trial.user_attrs["arch_hash"] == arch_hash(load_config("nano"))
    assert trial.user_attrs["train_time_s"] > 0


@pytest.mark.parametrize(
    ("mistake", "key"),
    [
        ({"train": {"epochs": 0}}, "train.epochs"),
        ({"latency": {"providers": ["gpu"]}}, "latency.providers[0]"),
    ],
)
@pytest.mark.slow
def test_a_study_file_with_a_mistake_names_its_key(tmp_path, mistake, key):
    spec = write_study(tmp_path, **mistake)
    storage = tmp_path / "s.log"
    out = _jetsearch("study", "--target", str(spec), "--trials", "1", "--storage", str(storage))
    assert out.returncode == 2, out.stdout + out.stderr
    assert key in out.stderr and str(spec) in out.stderr
    assert not storage.exists()


def test_a_study_file_lists_every_mistake_at_once_cross_field_ones_too(tmp_path):
    # Ten keys that are wrong on their own and three rules that tie keys together: one error.
    path = tmp_path / "broken.yaml"
    broken = {
        "target": 5,
        "mode": "budget",  # ... without latency.budget_ms
        "sampler": "grid",
        "colour": "red",
        "synthetic": {"train_images": 0},
        "train": {
            "epochs": 0,
            "optimizer": "adam",
            "seed": 3,  # a trial sets its own seed
            "size": [8, 64],
            "random_scale": [2.0, 0.5],  # min > max, and no crop for batches of 8
        },
        "latency": {"providers": ["local", "gpu"], "runs": 1},
    }
    path.write_text(yaml.safe_dump(broken))
    with pytest.raises(ConfigError) as err:
        load_study_spec(path)
    problems = err.value.problems
    assert sorted(key for key, _ in problems) == sorted(
        [
            "colour",
            "target",
            "sampler",
            "synthetic.train_images",
            "train.seed",
            "train.epochs",
            "train.optimizer",
            "train.size[0]",
            "latency.providers[1]",
            "latency.runs",
            "train.random_scale",
            "train.random_scale",
            "latency.budget_ms",
        ]
    )
    text = str(err.value)
    assert f"invalid study ({path})" in text
    assert "latency.budget_ms: budget mode needs a latency budget" in text
    assert "train.random_scale: min_scale <= max_scale must hold, got min_scale=2.0" in text
    assert "train.random_scale: rescaled frames differ in size, so a batch needs a crop" in text
    assert "latency.providers[1]: 'gpu' is not one of 'workers', 'local', 'estimate'" in text
    assert "train.size[0]: 8 is out of range; 16 <= value <= 8192 must hold" in text


def test_the_train_block_sets_trainconfig_fields_by_name(tmp_path):
    spec = load_study_spec(
        write_study(tmp_path, train={"schedule": "cosine", "weight_decay": 0.01, "lr": 0.004})
    )
    cfg = spec.train.train_config(seed=spec.seed + 7)
    assert isinstance(cfg, TrainConfig)
    assert (cfg.schedule, cfg.weight_decay, cfg.lr) == ("cosine", 0.01, 0.004)
    assert (cfg.epochs, cfg.size, cfg.batch_size) == (1, (48, 64), 8)  # from write_study
    assert (cfg.seed, cfg.progress, cfg.export_onnx, cfg.overlays) == (7, False, False, 0)
    # Left out, a key takes TrainConfig's default, except the study's own 3 epochs at 360x480.
    bare = tmp_path / "bare.yaml"
    bare.write_text("target: local\n")
    default = load_study_spec(bare).train
    assert (default.epochs, default.size) == (3, (360, 480))
    assert (default.train_images, default.val_images, default.threads) == (None, None, None)
    expected = TrainConfig(epochs=3, size=(360, 480), seed=0, progress=False)
    assert default.train_config(seed=0) == dataclasses.replace(
        expected, export_onnx=False, overlays=0
    )
    with pytest.raises(ConfigError) as err:
        load_study_spec(write_study(tmp_path, train={"momentun": 0.5}))
    ((key, message),) = err.value.problems
    assert key == "train.momentun"
    allowed = message.split("allowed keys: ")[1].split(", ")
    assert {"momentum", "schedule", "train_images", "val_images", "threads"} <= set(allowed)
    assert not {"seed", "progress", "export_onnx", "overlays"} & set(allowed)


def test_study_names_and_paths_resolve_like_presets_and_spaces(tmp_path, monkeypatch):
    assert {"agx", "local", "nano", "workstation"} <= set(study_names())
    monkeypatch.chdir(tmp_path)
    (tmp_path / "local").mkdir()  # a folder that shares a built-in name does not shadow it
    assert load_study_spec("local").name == "local"
    with pytest.raises(FileNotFoundError) as err:
        load_study_spec("no-such-study")
    assert "'no-such-study' is neither a study file nor a built-in study (" in str(err.value)
    assert "local" in str(err.value)
    with pytest.raises(FileNotFoundError, match="study file .*missing.yaml does not exist"):
        load_study_spec(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match="the file must hold a mapping at the top level"):
        load_study_spec(tmp_path / "list.yaml")


def _wait_for_complete_trial(
    storage: Path, process: subprocess.Popen, log: Path, timeout: float, url: str | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        if storage.exists() and url is not None and url.startswith("sqlite"):
            # Read-only: an RDBStorage opened here while the study process creates the schema
            # would race it (two CREATEs of alembic_version).
            import sqlite3

            try:
                with sqlite3.connect(f"file:{storage}?mode=ro", uri=True) as db:
                    query = "SELECT COUNT(*) FROM trials WHERE state = 'COMPLETE'"
                    done = db.execute(query).fetchone()[0]
            except sqlite3.Error:  # no schema yet
                done = 0
            if done:
                return
        elif storage.exists():
            try:
                study = optuna.load_study(study_name="small", storage=open_storage(str(storage)))
                trials = study.get_trials(states=(COMPLETE,))
            except KeyError:  # the study is not created yet
                trials = []
            if trials:
                return
        time.sleep(0.2)
    raise AssertionError(f"no trial completed within {timeout} s")


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
@pytest.mark.slow
def test_a_killed_study_keeps_its_completed_trials_and_continues(tmp_path, kind):
    spec = write_study(tmp_path)
    storage = tmp_path / ("s.log" if kind == "journal" else "s.db")
    url = str(storage) if kind == "journal" else f"sqlite:///{storage}"
    cmd = [sys.executable, "-m", "jetsearch.cli", "study", "--target", str(spec)]
    cmd += ["--trials", "100", "--storage", url, "--quiet"]
    log = tmp_path / "stderr.txt"
    with log.open("w") as stderr:
        process = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            _wait_for_complete_trial(storage, process, log, timeout=120, url=url)
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL

    before = optuna.load_study(study_name="small", storage=open_storage(url)).trials
    complete = [t for t in before if t.state == COMPLETE]
    assert complete
    for t in complete:
        assert len(t.values) == 2
        for key in ("arch_hash", "config_yaml", "latency_ms", "val_miou", "train_time_s"):
            assert key in t.user_attrs, key
    finished = sum(t.state in (COMPLETE, PRUNED) for t in before)

    dead = [t for t in before if t.state == optuna.trial.TrialState.RUNNING]
    _run_study(spec, url, finished + 1, "--quiet")
    after = optuna.load_study(study_name="small", storage=open_storage(url)).trials
    assert sum(t.state in (COMPLETE, PRUNED) for t in after) == finished + 1
    # The killed process's trial is failed with the reason, and the network it was training is
    # trained again (a retry trial with the same parameters). A trial killed while it was still
    # sampling (no arch_hash yet, not a queued one) had no network: nothing is retried for it.
    # One exception, by design (jetsearch.recovery): a kill between Optuna creating a trial and
    # the trial's first write (its owner record) leaves a trial no process can prove dead but
    # by its age; it stays RUNNING until the grace has passed, then any study process fails it.
    running = optuna.trial.TrialState.RUNNING
    unowned = [d.number for d in dead if owner_of(d) is None and after[d.number].state == running]
    for number in unowned:
        trial = after[number]
        late = trial.datetime_start.timestamp() + DEFAULT_HEARTBEAT_GRACE_S + 1
        assert "no owner record" in death_cause(trial, grace_s=DEFAULT_HEARTBEAT_GRACE_S, now=late)
    dead = [d for d in dead if d.number not in unowned]
    assert not [t for t in after if t.state == running and t.number not in unowned]
    for d in dead:
        assert after[d.number].state == optuna.trial.TrialState.FAIL
        assert after[d.number].user_attrs["failure_reason"] == "owner died"
        retries = [t for t in after if t.user_attrs.get("retry_of") == d.number]
        queued = d.system_attrs.get("fixed_params")
        if queued or "arch_hash" in d.user_attrs:
            [retry] = retries
            assert retry.params == (queued or d.params) and retry.state == COMPLETE
            assert retry.user_attrs["arch_hash"] == (
                d.user_attrs.get("arch_hash") or retry.user_attrs["arch_hash"]
            )
        else:
            assert retries == []
    for old in complete:
        assert after[old.number].values == old.values
        assert after[old.number].user_attrs == old.user_attrs


@pytest.mark.slow
def test_a_trial_trains_from_the_same_weights_whatever_the_process_ran_before(tmp_path):
    import torch

    from jetsearch.run import run_study

    # Paired comparisons (two samplers, a resumed or a parallel study) need trial n of one
    # spec to start from the same weights in any process, after any earlier work.
    spec = load_study_spec(write_study(tmp_path))
    values = []
    for noise_seed, storage in ((1, "a.log"), (2, "b.log")):
        torch.manual_seed(noise_seed)
        torch.rand(noise_seed)
        run_study(spec, trials=1, storage=str(tmp_path / storage))
        values.append([t.values for t in _study("small", tmp_path / storage).trials])
    assert values[0] == values[1]


def test_a_worker_provider_without_a_usable_token_is_skipped_with_its_reason(tmp_path):
    from jetsearch.latency.chain import LatencyChain

    empty = tmp_path / "token.txt"
    empty.write_text("  \n")
    for token_file, reason in ((empty, "is empty"), (tmp_path / "missing.txt", "does not exist")):
        path = write_study(
            tmp_path,
            latency={
                "providers": ["workers", "local"],
                "workers": ["http://127.0.0.1:9"],
                "token_file": str(token_file),
            },
        )
        chain = LatencyChain(load_study_spec(path))
        try:
            assert [kind for kind, _ in chain.providers] == ["local"]
            assert len(chain.skipped) == 1
            assert chain.skipped[0].startswith("workers: ") and reason in chain.skipped[0]
        finally:
            chain.close()


@pytest.mark.slow
def test_a_queued_trial_whose_parameters_build_another_network_fails_naming_both(tmp_path):
    from jetsearch.run import run_study
    from jetsearch.space import load_space

    # A promotion or a retry names the network it must train; if its parameters build another
    # one (the space file was edited since), training a neighbour under that name is refused.
    spec = load_study_spec(write_study(tmp_path))
    storage = tmp_path / "s.log"
    run_study(spec, trials=1, storage=str(storage))
    space = load_space("tiny")
    config = space.random_configs(1, seed=5)[0]
    _study("small", storage).enqueue_trial(
        space.params_for(config), user_attrs={"arch_hash": "0123456789abcdef", "retry_of": 0}
    )
    run_study(spec, trials=2, storage=str(storage))
    queued = _study("small", storage).trials[1]
    assert queued.state == optuna.trial.TrialState.FAIL
    reason = queued.user_attrs["failure_reason"]
    assert "queued as network 0123456789abcdef" in reason and arch_hash(config) in reason
    assert "train_time_s" not in queued.user_attrs and "config_yaml" not in queued.user_attrs
