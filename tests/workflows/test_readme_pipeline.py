"""The README's "Reproducing the pipeline" block, run as written on a dataset a user has.

The block is read from README.md and expanded by bash (its loop, variables and the
``GRADTUNE_BUNDLES=bundles`` prefix), then each ``gradtune`` call runs in this process,
from a fresh folder holding ``DATA/<dataset>``, with relative paths exactly as written.
The only changes: ``--config tiny.toml`` is added to ``gradtune train`` (a tiny ResNet or
BERT for one epoch), and the text test names its dataset on the block's ``datasets=`` line.

The numbers of the report are checked against the bundles: the ERM row of Table 1 and
Table 7 is recomputed here from each seed's features and stored head.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gradtune.cli import main
from gradtune.embeddings.bundle import load_bundle
from gradtune.experiments.config import load_config
from gradtune.results.store import ResultStore

from ._fixtures import (
    TINY_BERT_CONFIG,
    TINY_RESNET_CONFIG,
    Call,
    expand_commands,
    readme_pipeline,
    write_civilcomments,
    write_tiny_bert,
    write_waterbirds,
)

pytestmark = pytest.mark.slow

PAPER_BENCHMARKS = ("waterbirds", "celeba", "multinli", "civilcomments")
SEEDS = (0, 1, 2)


def _with_dataset(script: str, dataset: str) -> str:
    lines = script.splitlines()
    hits = [i for i, line in enumerate(lines) if line.startswith("datasets=")]
    assert len(hits) == 1, "the README block should set the datasets on one `datasets=` line"
    lines[hits[0]] = f'datasets="{dataset}"'
    return "\n".join(lines) + "\n"


def _check_calls(calls: list[Call], dataset: str) -> None:
    """The block trains and embeds each seed, then runs Table 1 on the dataset and writes the report."""
    verbs = [c.argv[0] for c in calls]
    assert verbs == ["train", "embed"] * len(SEEDS) + ["run", "report"], verbs
    for seed, (train, embed) in zip(SEEDS, zip(calls[0:6:2], calls[1:6:2], strict=True), strict=True):
        args = dict(zip(train.argv[1::2], train.argv[2::2], strict=False))
        assert args == {"--dataset": dataset, "--root": f"DATA/{dataset}", "--seed": str(seed),
                        "--out": f"runs/{dataset}-s{seed}"}
        assert embed.argv[1:] == ("--checkpoint", f"runs/{dataset}-s{seed}/checkpoints/last.pt", "--out",
                                  f"bundles/{dataset}-seed{seed}.npz")
    run, report = calls[-2:]
    assert run.argv == ("run", "paper-table1", "--benchmarks", dataset)
    assert run.env == {"GRADTUNE_BUNDLES": "bundles"}  # relative: taken from the current folder
    assert report.argv == ("report", "gradtune-results", "--out", "report")


def _execute(calls: list[Call], monkeypatch: pytest.MonkeyPatch) -> None:
    for call in calls:
        argv = list(call.argv)
        if argv[0] == "train":
            argv += ["--config", "tiny.toml"]
        with monkeypatch.context() as m:
            for k, v in call.env.items():
                m.setenv(k, v)
            assert main(argv) == 0, argv


def _erm_numbers(bundles: list[Path]) -> pd.DataFrame:
    """Test accuracy, worst-group accuracy and per-group accuracy of each bundle's stored ERM head."""
    rows = []
    for seed, path in zip(SEEDS, bundles, strict=True):
        b = load_bundle(path)
        test = b.split == "test"
        logits = b.features[test].astype(np.float64) @ b.head_weight.T.astype(np.float64) + b.head_bias
        correct = logits.argmax(axis=1) == b.labels[test]
        groups = b.groups[test]
        per_group = {g: correct[groups == g].mean() for g in np.unique(groups)}
        rows.append({"seed": seed, "Avg": correct.mean(), "WGA": min(per_group.values()),
                     **{f"group:{b.group_names[g]}": acc for g, acc in per_group.items()}})
    return pd.DataFrame(rows)


def _check_report(work: Path, dataset: str, n_rows: dict[str, int]) -> None:
    bundles = [work / "bundles" / f"{dataset}-seed{s}.npz" for s in SEEDS]
    for path in bundles:
        b = load_bundle(path)
        sizes = {s: int(np.sum(b.split == s)) for s in ("train", "val", "test")}
        assert sizes == n_rows, (path, sizes)
        assert b.head_weight is not None and b.features.shape[0] == sum(n_rows.values())

    methods = load_config("paper-table1", check_paths=False).methods
    runs = ResultStore(work / "gradtune-results" / "results.sqlite", readonly=True).records(status=None)
    assert len(runs) == len(methods) * len(SEEDS)
    assert {r["benchmark"] for r in runs} == {dataset} and {r["seed"] for r in runs} == set(SEEDS)
    assert {r["status"] for r in runs} == {"done"}
    assert sorted({r["method"] for r in runs}) == sorted(methods)

    md = (work / "report" / "report.md").read_text()
    table1 = md.split("## Table 1", 1)[1].split("\n## ", 1)[0]
    header = next(line for line in table1.splitlines() if line.startswith("| Method"))
    assert f"{dataset} Avg" in header and f"{dataset} WGA" in header
    assert not any(other in header for other in PAPER_BENCHMARKS if other != dataset)
    absent = ", ".join(b for b in PAPER_BENCHMARKS if b != dataset)
    assert f"Benchmarks absent from this experiment: {absent}" in md

    numbers = pd.read_csv(work / "report" / "tables.csv")
    expected = _erm_numbers(bundles)
    checked = 0
    for item, metrics in (("table1", ["Avg", "WGA"]),
                          ("table7", [c for c in expected.columns if c.startswith("group:")])):
        for metric in metrics:
            cell = numbers[(numbers["item"] == item) & (numbers["row"] == "ERM") & (numbers["benchmark"] == dataset)
                           & (numbers["metric"] == metric)]
            assert len(cell) == 1, (item, metric)
            assert cell["mean"].iloc[0] == pytest.approx(100 * expected[metric].mean(), abs=1e-9)
            assert cell["std"].iloc[0] == pytest.approx(100 * expected[metric].std(ddof=0), abs=1e-9)
            assert cell["n"].iloc[0] == len(SEEDS)
            checked += 1
    assert checked == 2 + 4


def test_readme_pipeline_on_waterbirds(tmp_path, monkeypatch):
    pytest.importorskip("PIL", reason="writing the Waterbirds JPEGs needs Pillow")
    work = tmp_path / "fresh"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("GRADTUNE_BUNDLES", raising=False)
    meta = write_waterbirds(Path("DATA/waterbirds"))
    Path("tiny.toml").write_text(TINY_RESNET_CONFIG)

    script = readme_pipeline()
    assert re.search(r'^datasets="waterbirds"', script, flags=re.M), "the README block's example dataset"
    calls = expand_commands(script, work)
    _check_calls(calls, "waterbirds")
    _execute(calls, monkeypatch)
    counts = {s: int(np.sum(meta["split"] == code)) for s, code in (("train", 0), ("val", 1), ("test", 2))}
    _check_report(work, "waterbirds", counts)


def test_readme_pipeline_on_civilcomments(tmp_path, monkeypatch):
    pytest.importorskip("transformers", reason="the text pipeline needs transformers (the demo extra)")
    work = tmp_path / "fresh"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("GRADTUNE_BUNDLES", raising=False)
    meta = write_civilcomments(Path("DATA/civilcomments"))
    model_dir = write_tiny_bert(tmp_path / "tiny-bert")
    Path("tiny.toml").write_text(TINY_BERT_CONFIG.format(model_dir=model_dir.as_posix()))

    calls = expand_commands(_with_dataset(readme_pipeline(), "civilcomments"), work)
    _check_calls(calls, "civilcomments")
    _execute(calls, monkeypatch)
    counts = {s: int(np.sum(meta["split"] == code)) for s, code in (("train", 0), ("val", 1), ("test", 2))}
    _check_report(work, "civilcomments", counts)
