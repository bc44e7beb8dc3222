"""``jetsearch train`` and ``eval`` on bad input: exit 2, one line naming the problem, and
nothing left behind."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from jetseg_cases import TINY_CONFIG
from PIL import Image

from jetsearch.cli import EXIT_USAGE, main


@pytest.fixture
def tiny(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY_CONFIG))
    return ["train", "--config", str(config), "--epochs", "1", "--size", "48x64"]


def test_an_out_path_that_is_a_file_is_refused_naming_it(tiny, tmp_path, capsys):
    taken = tmp_path / "notes.txt"
    taken.write_text("keep me")
    assert main([*tiny, "--out", str(taken)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert f"--out {taken} is a file, not a run directory" in err and "Traceback" not in err
    assert taken.read_text() == "keep me"
    # A file further up the path is named too.
    assert main([*tiny, "--out", str(taken / "run")]) == EXIT_USAGE
    assert f"{taken} is a file, not a directory" in capsys.readouterr().err


@pytest.mark.parametrize("problem", ["missing data", "data without CamVid", "bad config"])
def test_bad_input_leaves_no_run_directory(tiny, tmp_path, capsys, problem):
    run = tmp_path / "runs" / "tiny"
    argv = [*tiny, "--out", str(run)]
    if problem == "missing data":
        argv += ["--data", str(tmp_path / "nowhere")]
        expected = "nowhere is not a directory"
    elif problem == "data without CamVid":
        (tmp_path / "empty").mkdir()
        argv += ["--data", str(tmp_path / "empty")]
        expected = "holds no CamVid layout"
    else:
        broken = tmp_path / "broken.yaml"
        broken.write_text("stem: {width: [}\n")
        argv[2] = str(broken)
        expected = "not valid YAML"
    assert main(argv) == EXIT_USAGE
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_bad_counts_are_refused_by_the_parser(tiny, capsys):
    for flag, value in (("--epochs", "0"), ("--batch-size", "-2"), ("--time-budget", "0")):
        with pytest.raises(SystemExit) as done:
            main([*tiny, flag, value])
        assert done.value.code == EXIT_USAGE
        assert f"argument {flag}: must be" in capsys.readouterr().err


def test_a_file_that_is_no_checkpoint_is_named_with_what_it_is_not(tmp_path, capsys):
    text = tmp_path / "some.txt"
    text.write_text("hello, these are notes\n")
    assert main(["eval", "--checkpoint", str(text)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert f"cannot read checkpoint {text}: not a jetseg checkpoint (not a torch zip archive" in err
    frame = tmp_path / "frame.png"
    Image.fromarray(np.zeros((20, 30, 3), dtype=np.uint8)).save(frame)
    assert main(["predict", "--checkpoint", str(text), str(frame), "-o", str(tmp_path / "p")]) == 2
    assert f"checkpoint {text}: not a jetseg checkpoint" in capsys.readouterr().err
