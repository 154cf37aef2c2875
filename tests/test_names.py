"""The static name lists that --help shows equal the registries they copy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from gradtune import _names

SRC = str(Path(__file__).resolve().parents[1] / "src")

# a fresh interpreter: other tests may register plug-in methods in this one
PROBE = """
import json
from gradtune.experiments.offline import OFFLINE_BENCHMARKS
from gradtune.methods import list_methods
from gradtune.workflows.demo import DEFAULT_BENCHMARKS, DEFAULT_METHODS
print(json.dumps({"methods": list_methods(), "benchmarks": list(OFFLINE_BENCHMARKS),
                  "demo_benchmarks": list(DEFAULT_BENCHMARKS), "demo_methods": list(DEFAULT_METHODS)}))
"""


def test_static_lists_equal_the_registries() -> None:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True,
                         timeout=300)
    reg = json.loads(out.stdout.strip().splitlines()[-1])
    assert list(_names.METHOD_NAMES) == reg["methods"]
    assert list(_names.OFFLINE_BENCHMARK_NAMES) == reg["benchmarks"]
    assert list(_names.DEMO_BENCHMARKS) == reg["demo_benchmarks"]
    assert list(_names.DEMO_METHODS) == reg["demo_methods"]


def test_name_list_escapes_percent_for_argparse() -> None:
    assert _names.name_list(("a", "b%")) == "a, b%%"
