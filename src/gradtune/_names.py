"""Static lists of the built-in names the command line offers, for ``--help``.

The registries that own these names (:func:`gradtune.methods.list_methods`,
:data:`gradtune.experiments.offline.OFFLINE_BENCHMARKS`) import torch and scikit-learn;
``--help`` must not, so it reads these copies. A test checks that each equals its registry.
"""

from __future__ import annotations

__all__ = ["METHOD_NAMES", "OFFLINE_BENCHMARK_NAMES", "DEMO_BENCHMARKS", "DEMO_METHODS", "name_list"]

# the built-in last-layer methods, sorted (plug-ins registered later are not listed)
METHOD_NAMES: tuple[str, ...] = (
    "afr", "dfr", "dfr-xrm", "dpe", "dpe-val-groups", "erm", "gradtune", "gradtune-auto", "gradtune-es", "gradtune-l2",
    "gradtune-select", "gradtune-selectk", "group-dro", "jtt", "loss-topk", "random", "residual-topk", "rwg",
    "rwy", "self", "subg", "suby", "ula",
)

# the offline benchmarks of ``gradtune demo``, in the registry's order
OFFLINE_BENCHMARK_NAMES: tuple[str, ...] = ("adult", "reviews", "fmnist-spurious", "fmnist-biased", "fmnist-stripes")

# the demo's defaults (gradtune.workflows.demo.DEFAULT_BENCHMARKS / DEFAULT_METHODS)
DEMO_BENCHMARKS: tuple[str, ...] = ("fmnist-spurious", "fmnist-biased", "reviews", "adult")
DEMO_METHODS: tuple[str, ...] = ("erm", "random", "loss-topk", "gradtune", "dfr-xrm", "gradtune-auto", "dfr")


def name_list(names: tuple[str, ...]) -> str:
    """``("a", "b")`` -> ``"a, b"``; for help text (argparse's ``%`` formatting is escaped)."""
    return ", ".join(names).replace("%", "%%")
