"""benchmarks/stress.py: which runs may replace the published page."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests._benchmarks import benchmark_module


@pytest.fixture(scope="module")
def stress():
    yield from benchmark_module("stress")


def _args(stress, **kw):
    ns = dict(role="report", members=None, methods=list(stress.METHODS), param=[], seeds=[0, 1, 2],
              kinds=["synthetic", "offline"], no_quality=False, doc=None)
    ns.update(kw)
    import argparse

    return argparse.Namespace(**ns)


def test_only_the_whole_default_reading_replaces_the_page(stress) -> None:
    assert stress.doc_path(_args(stress)) == (Path("docs/label-free.md"), None)
    assert stress.doc_path(_args(stress, kinds=["offline", "synthetic"]))[0] == Path("docs/label-free.md")
    for kw, flag in ((dict(members=["lin-weak-core-512"]), "--members"),
                     (dict(methods=["erm", "dfr", "gradtune-auto"]), "--methods"),
                     (dict(param=['gradtune-auto:margin=0.1']), "--param"),
                     (dict(seeds=[0]), "--seeds"),
                     (dict(kinds=["synthetic"]), "--kinds"),
                     (dict(no_quality=True), "--no-quality")):
        out, why = stress.doc_path(_args(stress, **kw))
        assert out is None and flag in why and "--doc" in why, (kw, why)
    # an explicit page is always written; the development half writes none by default
    assert stress.doc_path(_args(stress, members=["x"], doc=Path("t.md"))) == (Path("t.md"), None)
    assert stress.doc_path(_args(stress, role="dev")) == (None, None)
