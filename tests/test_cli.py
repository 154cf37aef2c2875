"""The command-line entry point: every command registered, errors as exit codes with messages."""

from __future__ import annotations

import argparse

import pytest

from gradtune import __version__, cli


def _subcommands(parser: argparse.ArgumentParser) -> set[str]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return set(action.choices)


def test_every_command_module_registers_a_command():
    names = _subcommands(cli.build_parser())
    # each module's command name (experiment.py registers ``run``)
    assert names == {"demo", "tune", "train", "embed", "run", "report", "inspect"}
    assert len(cli.COMMANDS) == len(names)


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0 and __version__ in capsys.readouterr().out
    assert cli.main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_input_errors_exit_2_with_the_message(capsys, tmp_path):
    assert cli.main(["run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gradtune run: error:") and "give at least one CONFIG" in err
    assert cli.main(["report", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r")]) == 2
    assert "gradtune report: error:" in capsys.readouterr().err


def test_interrupt_keeps_results_and_exits_130(monkeypatch, capsys):
    def interrupted(args: argparse.Namespace) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr("gradtune.commands.report.run", interrupted)
    parser = cli.build_parser()  # register() binds the patched function
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    assert cli.main(["report", "x", "--out", "y"]) == 130
    assert "interrupted" in capsys.readouterr().err


def test_run_list_names_the_packaged_configs(capsys):
    from gradtune.experiments.config import packaged_configs

    assert cli.main(["run", "--list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in packaged_configs())
