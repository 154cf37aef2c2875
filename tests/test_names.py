"""The names --help shows are read from where they are defined, and --help stays fast.

Nothing here is a list to keep in step: ``gradtune._names`` reads the names out of the
defining modules' text, and these tests check that what it reads equals the registries.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from gradtune import _names

SRC = str(Path(__file__).resolve().parents[1] / "src")
ENV = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}

# a fresh interpreter: other tests may register plug-in methods in this one
PROBE = """
import json
from gradtune.experiments.offline import OFFLINE_BENCHMARKS
from gradtune.methods import list_methods
from gradtune.workflows.demo import DEFAULT_BENCHMARKS, DEFAULT_METHODS
print(json.dumps({"methods": list_methods(), "benchmarks": list(OFFLINE_BENCHMARKS),
                  "demo_benchmarks": list(DEFAULT_BENCHMARKS), "demo_methods": list(DEFAULT_METHODS)}))
"""


def test_names_read_from_the_source_equal_the_registries() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], env=ENV, capture_output=True, text=True, check=True,
                         timeout=300)
    reg = json.loads(out.stdout.strip().splitlines()[-1])
    assert list(_names.METHOD_NAMES) == reg["methods"]
    assert list(_names.OFFLINE_BENCHMARK_NAMES) == reg["benchmarks"]
    assert list(_names.DEMO_BENCHMARKS) == reg["demo_benchmarks"]
    assert list(_names.DEMO_METHODS) == reg["demo_methods"]


def test_report_items_read_from_the_source_equal_the_registry() -> None:
    from gradtune.experiments.config import REPORT_ITEMS
    from gradtune.report.paper_items import REPORT_ITEMS as RENDERERS

    assert REPORT_ITEMS == {key: item.title for key, item in RENDERERS.items()}
    assert list(REPORT_ITEMS)[:2] == ["table1", "fig2"]  # the report's order


def test_a_new_method_module_is_found_without_editing_a_list(tmp_path: Path) -> None:
    (tmp_path / "mine.py").write_text(
        "@register_method\n@dataclass\nclass Mine(Method):\n    \"\"\"Doc.\"\"\"\n\n"
        "    name: ClassVar[str] = 'mine'\n    lr: float = param(0.1, 'a rate', gt=0)\n\n"
        "@dataclass\nclass NotRegistered(Method):\n    name = 'hidden'\n")
    assert _names.registered_method_names(tmp_path) == ("mine",)


def test_help_is_fast() -> None:
    # the best of three (the machine may be busy): building every parser, reading the names
    cmd = [sys.executable, "-c", "import sys; from gradtune.cli import main; sys.argv[0] = 'gradtune'; "
           "main(['tune', '--help'])"]
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run(cmd, env=ENV, capture_output=True, check=False, timeout=60)
        times.append(time.perf_counter() - t0)
    assert min(times) < 0.5, f"gradtune tune --help took {min(times):.2f} s (best of 3)"


def test_name_list_escapes_percent_for_argparse() -> None:
    assert _names.name_list(("a", "b%")) == "a, b%%"
