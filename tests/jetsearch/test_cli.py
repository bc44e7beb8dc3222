"""The ``jetsearch`` parser: every command group registered, shared options, exit codes."""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest

from jetsearch.cli import EXIT_USAGE, build_parser, main

COMMANDS = (
    "model",
    "train",
    "eval",
    "predict",
    "study",
    "show",
    "export",
    "dashboard",
    "finalize",
    "worker",
    "latency",
)


def _subparsers(parser):
    (action,) = [a for a in parser._actions if a.dest == "command"]
    return action.choices


def test_every_command_is_registered_in_order():
    assert tuple(_subparsers(build_parser())) == COMMANDS


@pytest.mark.parametrize("command", [c for c in COMMANDS if c != "worker"])
def test_every_command_prints_its_help(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: jetsearch {command}")


def test_shared_options_mean_the_same_in_every_command():
    commands = _subparsers(build_parser())

    def option(command, flag):
        (action,) = [a for a in commands[command]._actions if flag in a.option_strings]
        return action.help, action.required, action.default

    assert option("train", "--data") == option("eval", "--data")
    assert option("eval", "--checkpoint") == option("predict", "--checkpoint")
    assert option("eval", "--checkpoint")[1] is True
    assert option("show", "--study") == option("export", "--study")
    assert option("show", "--storage") == option("export", "--storage")


def test_bad_arguments_exit_2_naming_the_problem(capsys):
    with pytest.raises(SystemExit) as done:
        main(["train"])
    assert done.value.code == EXIT_USAGE
    assert "--config" in capsys.readouterr().err
    with pytest.raises(SystemExit) as done:
        main(["model", "show", "nano", "--size", "3x3"])
    assert done.value.code == EXIT_USAGE
    assert "out of range" in capsys.readouterr().err
    assert main(["model", "show", "no-such-preset"]) == EXIT_USAGE
    assert "jetsearch model:" in capsys.readouterr().err


def test_the_console_script_runs_this_main():
    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "jetsearch"]
    assert script.value == "jetsearch.cli:main"
    assert script.load() is main


def test_the_latency_commands_find_the_shared_pieces():
    from jetsearch import cli
    from jetsearch.cli import latency

    assert latency.parse_size is cli.parse_size and latency._console is cli.console


def test_the_latency_package_never_imports_the_cli():
    import subprocess
    import sys

    code = (
        "import sys, jetsearch.latency, jetsearch.latency.chain, jetsearch.latency.estimate\n"
        "print(sorted(m for m in sys.modules if m.startswith('jetsearch.cli')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_version_prints_the_package_version(capsys):
    import jetsearch

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"jetsearch {jetsearch.__version__}\n"


def test_the_count_types_say_the_rule_and_the_value():
    import argparse

    from jetsearch.cli import non_negative_float, positive_float, positive_int

    assert positive_int("3") == 3 and positive_float("0.5") == 0.5
    assert non_negative_float("0") == 0.0
    for parse, text, message in (
        (positive_int, "0", "must be an integer >= 1, got 0"),
        (positive_int, "two", "must be an integer >= 1, got 'two'"),
        (positive_float, "0", "must be a number > 0, got 0"),
        (positive_float, "nan", "must be a number > 0, got nan"),
        (non_negative_float, "-0.5", "must be a number >= 0, got -0.5"),
    ):
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            parse(text)
