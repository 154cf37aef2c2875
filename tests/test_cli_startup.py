"""``gradtune --help`` / ``--version`` load no heavy library (what keeps them under 1 s;
benchmarks/cli_startup.py measures the time itself)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parents[1] / "src")
HEAVY = ("torch", "sklearn", "pandas", "scipy", "matplotlib", "transformers")

PROBE = """
import sys
from gradtune.cli import main
try:
    main(sys.argv[1:])
except SystemExit as stop:
    assert stop.code == 0, stop.code
print("loaded:" + ",".join(sorted(m for m in {heavy!r} if m in sys.modules)))
"""


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["tune", "--help"], ["demo", "--help"],
                                  ["train", "--help"], ["embed", "--help"], ["run", "--help"],
                                  ["report", "--help"]])
def test_help_and_version_import_no_heavy_library(argv: list[str]) -> None:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), *argv], env=env,
                         capture_output=True, text=True, check=True, timeout=120)
    loaded = out.stdout.strip().splitlines()[-1].removeprefix("loaded:")
    assert loaded == "", f"gradtune {' '.join(argv)} imported {loaded}"


def test_lazy_package_attributes() -> None:
    import gradtune

    assert set(gradtune.__all__) <= set(dir(gradtune))
    for name in gradtune.__all__:
        assert getattr(gradtune, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = gradtune.nope
