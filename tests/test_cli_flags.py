"""One spelling per flag across the commands; old spellings still parse, hidden, with a warning."""

from __future__ import annotations

import argparse
import re

import pytest

from gradtune import cli

# flag -> the commands that have it (a command with the concept must spell it this way)
SHARED = {"--force": {"demo", "tune", "embed", "run"}, "--no-progress": {"demo", "train", "embed", "run"},
          "--quiet": {"demo", "tune", "train", "embed", "run", "report", "inspect"}}
OLD = {"--overwrite": "force"}


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _visible(p: argparse.ArgumentParser) -> set[str]:
    return {s for a in p._actions if a.help is not argparse.SUPPRESS for s in a.option_strings}


def _hidden(p: argparse.ArgumentParser) -> set[str]:
    return {s for a in p._actions if a.help is argparse.SUPPRESS for s in a.option_strings}


def test_shared_flags_are_spelled_once_and_old_spellings_are_hidden() -> None:
    subs = _subparsers()
    for flag, commands in SHARED.items():
        have = {name for name, p in subs.items() if flag in _visible(p)}
        assert have == commands, flag
    for name, p in subs.items():
        assert not _visible(p) & set(OLD), name
        help_text = p.format_help()
        assert "--overwrite" not in help_text, name
    assert "--overwrite" in _hidden(subs["embed"])


def test_old_spelling_sets_the_new_dest_and_is_reported() -> None:
    from gradtune._cli_flags import deprecated_uses

    embed = _subparsers()["embed"]
    base = ["--checkpoint", "c.pt", "--out", "o.npz"]
    old, new, neither = (embed.parse_args(base + extra) for extra in (["--overwrite"], ["--force"], []))
    assert old.force is True and new.force is True and neither.force is False
    assert deprecated_uses(old) == ["--overwrite is deprecated and will be removed; use --force"]
    assert deprecated_uses(new) == [] and deprecated_uses(neither) == []


def test_quiet_and_no_progress_both_turn_progress_off() -> None:
    from gradtune._cli_flags import progress_enabled

    subs = _subparsers()
    for name in ("demo", "run"):
        p = subs[name]
        assert progress_enabled(p.parse_args([])) is True
        assert progress_enabled(p.parse_args(["--quiet"])) is False
        assert progress_enabled(p.parse_args(["--no-progress"])) is False


def test_main_warns_about_an_old_spelling(tmp_path, capsys) -> None:
    code = cli.main(["embed", "--checkpoint", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "b.npz"),
                     "--overwrite"])
    err = capsys.readouterr().err
    assert "gradtune embed: warning: --overwrite is deprecated and will be removed; use --force" in err
    assert code == 2  # the missing checkpoint, reached because --overwrite meant --force


@pytest.mark.parametrize("flag", ["--force", "--overwrite"])
def test_embed_keeps_an_existing_bundle_only_without_force(tmp_path, capsys, flag) -> None:
    out = tmp_path / "b.npz"
    out.write_bytes(b"x")
    assert cli.main(["embed", "--checkpoint", str(tmp_path / "missing.pt"), "--out", str(out)]) == 0
    assert "keeping it (pass --force to replace it)" in capsys.readouterr().err
    assert cli.main(["embed", "--checkpoint", str(tmp_path / "missing.pt"), "--out", str(out), flag]) == 2
    assert out.read_bytes() == b"x"


def test_plain_help_strips_rst_markup() -> None:
    from gradtune._cli_flags import plain_help

    assert plain_help(":func:`~gradtune.workflows.tune.tune_bundle` runs") == "tune_bundle runs"
    assert plain_help("see :mod:`gradtune.training.robust`.") == "see gradtune.training.robust."
    assert plain_help(":doc:`the guide <label-free>`") == "the guide"
    assert plain_help("``--force`` and `gradtune run`") == "--force and gradtune run"
    assert plain_help("Example::\n\n    a::b") == "Example:\n\n    a::b"
    assert plain_help(None) is None


@pytest.mark.parametrize("argv", [[], ["demo"], ["tune"], ["train"], ["embed"], ["run"], ["report"]])
def test_help_has_no_rst_markup(argv, capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        cli.main([*argv, "--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert "`" not in out and not re.search(r":(func|class|mod|meth|data|attr|doc|ref):", out), out
    assert not re.search(r"\S::\s*$", out, flags=re.MULTILINE)


def test_help_lists_the_benchmarks_and_methods(capsys) -> None:
    from gradtune._names import METHOD_NAMES, OFFLINE_BENCHMARK_NAMES

    def help_of(command: str) -> str:
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        return " ".join(capsys.readouterr().out.split()).replace("- ", "-")  # undo argparse's wrapping

    demo, tune = help_of("demo"), help_of("tune")
    assert all(name in demo for name in OFFLINE_BENCHMARK_NAMES)
    assert all(name in demo and name in tune for name in METHOD_NAMES)
