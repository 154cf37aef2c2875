"""The library logs to the "gradtune" logger (silent until configured); the CLI logs it to stderr."""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from pathlib import Path

from gradtune import cli

from .experiments._toy import config_text, toy_bundle

SRC = str(Path(__file__).resolve().parents[1] / "src")

PROBE = """
import logging, sys
import gradtune
logger = logging.getLogger("gradtune")
assert any(isinstance(h, logging.NullHandler) for h in logger.handlers), logger.handlers
logging.getLogger("gradtune.workflows.demo").warning("should stay silent")
print("torch" in sys.modules)
"""


def test_import_adds_a_null_handler_without_torch() -> None:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True,
                         timeout=120)
    assert out.stdout.strip() == "False"  # torch not imported
    assert out.stderr == ""  # no handler configured: the library prints nothing


def _configs(tmp: Path) -> tuple[Path, Path]:
    toy_bundle(0).save(tmp / "toy-a.npz")
    toy_bundle(1).save(tmp / "toy-b.npz")
    a, b = tmp / "a.toml", tmp / "b.toml"
    a.write_text(config_text({"toy-a": tmp / "toy-a.npz"}, name="cfg-a", seeds=(0,), methods=("erm",)))
    b.write_text(config_text({"toy-b": tmp / "toy-b.npz"}, name="cfg-b", seeds=(0,), methods=("erm",)))
    return a, b


def test_library_notice_is_a_log_record(tmp_path, caplog, capsys) -> None:
    from gradtune.workflows.experiment import load_selected

    a, b = _configs(tmp_path)
    with caplog.at_level(logging.INFO, logger="gradtune"):
        loaded = load_selected([a, b], benchmarks=["toy-a"])
    assert [c.name for c in loaded] == ["cfg-a"]
    (rec,) = [r for r in caplog.records if "left out" in r.getMessage()]
    assert rec.name == "gradtune.workflows.experiment" and rec.levelno == logging.WARNING
    assert rec.getMessage().startswith("cfg-b: left out")
    assert "left out" not in capsys.readouterr().err  # not printed by the library itself


def test_cli_handler_levels(tmp_path, capsys) -> None:
    a, b = _configs(tmp_path)
    try:
        assert cli.main(["run", str(a), str(b), "--benchmarks", "toy-a", "--out", str(tmp_path / "o1")]) == 0
        err = capsys.readouterr().err
        assert "gradtune run: warning: cfg-b: left out" in err
        # main() takes its handler away again
        assert not [h for h in logging.getLogger("gradtune").handlers if getattr(h, "_gradtune_cli", False)]
        assert logging.getLogger("gradtune").level == logging.NOTSET
        # INFO is dropped with --quiet, warnings are kept
        cli.configure_logging("run", quiet=True)
        assert logging.getLogger("gradtune").level == logging.WARNING
        logging.getLogger("gradtune.x").info("an info line")
        logging.getLogger("gradtune.x").warning("a warning line")
        err = capsys.readouterr().err
        assert "an info line" not in err and "gradtune run: warning: a warning line" in err
        cli.configure_logging("demo")
        logging.getLogger("gradtune.x").info("now shown")
        assert capsys.readouterr().err == "now shown\n"
        ours = [h for h in logging.getLogger("gradtune").handlers if getattr(h, "_gradtune_cli", False)]
        assert len(ours) == 1  # configuring again replaced the handler
    finally:
        for h in [h for h in logging.getLogger("gradtune").handlers if getattr(h, "_gradtune_cli", False)]:
            logging.getLogger("gradtune").removeHandler(h)
        logging.getLogger("gradtune").setLevel(logging.NOTSET)


def test_quiet_run_drops_info_lines(tmp_path, capsys, monkeypatch) -> None:
    def noisy(args) -> int:  # a command that logs like the library does
        logging.getLogger("gradtune.workflows.demo").info("an info line")
        logging.getLogger("gradtune.workflows.demo").warning("a warning line")
        return 0

    parser = cli.build_parser()
    sub = next(x for x in parser._actions if isinstance(x, argparse._SubParsersAction))
    sub.choices["run"].set_defaults(func=noisy)
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    for extra, shown in (([], True), (["--quiet"], False)):
        assert cli.main(["run", "some.toml", *extra]) == 0
        err = capsys.readouterr().err
        assert ("an info line" in err) is shown and "gradtune run: warning: a warning line" in err
