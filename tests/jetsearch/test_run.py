"""The run loop of one process: a study opens its storage once and each rung study once."""

from __future__ import annotations

import collections
from pathlib import Path

import optuna
import pytest
from optuna.storages.journal import JournalStorage
from study_cases import write_study

from jetsearch.cli import EXIT_OK, main
from jetsearch.rungs import rung_study_name
from jetsearch.storage import open_storage

RUNGS = [{"epochs": 1, "size": [32, 48]}, {"epochs": 1, "size": [48, 64]}]


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> collections.Counter:
    """How often this process builds a journal storage and creates or loads a study; every
    call goes through to Optuna's own."""
    counts: collections.Counter = collections.Counter()
    journal_init = JournalStorage.__init__

    def count_journal(self, *args, **kwargs) -> None:
        counts["journal"] += 1
        journal_init(self, *args, **kwargs)

    monkeypatch.setattr(JournalStorage, "__init__", count_journal)
    for name in ("create_study", "load_study"):
        real = getattr(optuna, name)

        def count_study(*args, _real=real, _name=name, **kwargs):
            counts[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(optuna, name, count_study)
    return counts


@pytest.mark.slow
def test_a_study_opens_its_storage_once_and_each_rung_study_once(
    tmp_path: Path, opened: collections.Counter, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = write_study(tmp_path, rungs=RUNGS, eta=2)
    storage = tmp_path / "s.log"
    argv = ["study", "--target", str(spec), "--trials", "3", "--storage", str(storage)]
    assert main(argv) == EXIT_OK, capsys.readouterr().err
    out = capsys.readouterr().out
    assert dict(opened) == {"journal": 1, "create_study": 2}
    # What it ran: three rung-0 trials and the promotions, in the two studies it opened.
    check = open_storage(str(storage))
    rung0, rung1 = (
        optuna.load_study(study_name=rung_study_name("small", k), storage=check) for k in (0, 1)
    )
    assert len(rung0.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == 3
    assert rung1.trials and {t.state.name for t in rung1.trials} == {"COMPLETE"}
    assert out.count(" trained, ETA ") == 3 + len(rung1.trials), out  # a line per trial
