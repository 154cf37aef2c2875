"""`gradtune tune` end to end on the bundled example and on broken bundles."""

import json

import numpy as np
import pytest

from gradtune.cli import main
from gradtune.commands.tune import EXAMPLE
from gradtune.embeddings.bundle import load_bundle


def test_tune_example_writes_head_and_metrics(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["tune", "--embeddings", "example", "--out", str(out), "--epochs", "40"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "worst-group accuracy" in text and "before" in text
    metrics = json.loads((out / "metrics.json").read_text())
    head = np.load(out / "head.npz", allow_pickle=False)
    bundle = load_bundle(EXAMPLE)
    assert head["weight"].shape == bundle.head_weight.shape
    test = metrics["evaluation"]["test"]
    # recompute "after" accuracy from the written head
    v = bundle.view("test")
    acc = float(((v.features @ head["weight"].T + head["bias"]).argmax(1) == v.labels).mean())
    assert test["after"]["accuracy"] == pytest.approx(acc)
    assert len(set(metrics["selected_rows"])) == metrics["size_used"] == 500
    assert test["after"]["worst_group_accuracy"] > test["before"]["worst_group_accuracy"]

    # rerun resumes: nothing recomputed, same file
    mtime = (out / "metrics.json").stat().st_mtime_ns
    assert main(["tune", "--embeddings", "example", "--out", str(out), "--epochs", "40"]) == 0
    assert "already holds this run" in capsys.readouterr().out
    assert (out / "metrics.json").stat().st_mtime_ns == mtime


def test_bad_bundle_gives_clean_error(tmp_path, capsys):
    path = tmp_path / "bad.npz"
    np.savez(path, format_version=np.asarray(1), features=np.zeros((4, 2)), labels=np.array([0, 1, 0, 1]),
             split=np.array(["val"] * 4))
    rc = main(["tune", "--embeddings", str(path), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "no head_weight" in err and "Traceback" not in err
    rc = main(["tune", "--embeddings", str(tmp_path / "missing.npz"), "--out", str(tmp_path / "o")])
    assert rc == 2 and "does not exist" in capsys.readouterr().err


def test_fit_erm_head_option(tmp_path, capsys):
    b = load_bundle(EXAMPLE)
    b.head_weight = b.head_bias = b.logits = None
    path = tmp_path / "nohead.npz"
    b.save(path)
    rc = main(["tune", "--embeddings", str(path), "--out", str(tmp_path / "o"), "--fit-erm-head",
               "--epochs", "5", "--size", "100", "--top-k", "80"])
    assert rc == 0
    assert "fitted on train rows" in json.loads((tmp_path / "o" / "metrics.json").read_text())["head_source"]
