"""The interrupt notice speaks only where there is a run directory to resume."""

from __future__ import annotations

import pytest
from train_cases import FlakyDataset, make_trainer, synthetic_data

from jetseg.progress import InterruptNotice


@pytest.fixture(scope="module")
def data():
    return synthetic_data()


def test_the_notice_names_the_checkpoint_to_resume_from(data, tmp_path, capsys):
    flaky = FlakyDataset(data[0], fail_at=22, failure="interrupt")  # in epoch 2
    with pytest.raises(KeyboardInterrupt):
        make_trainer(data, tmp_path, train_set=flaky, hooks=[InterruptNotice()]).fit()
    err = capsys.readouterr().err
    assert "interrupted in epoch 2" in err and str(tmp_path) in err


def test_without_a_run_directory_the_notice_stays_silent(data, capsys):
    # A study's trials train without out_dir: "nothing to resume" would mislead there, since
    # the study itself is resumed by running the same command again.
    flaky = FlakyDataset(data[0], fail_at=3, failure="interrupt")
    with pytest.raises(KeyboardInterrupt):
        make_trainer(data, None, train_set=flaky, hooks=[InterruptNotice()]).fit()
    assert capsys.readouterr().err == ""
