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


def test_tune_any_registered_method_with_params(tmp_path, capsys):
    from gradtune.methods import get_method

    out = tmp_path / "auto"
    argv = ["tune", "--embeddings", "example", "--out", str(out), "--method", "gradtune-auto",
            "--param", "xrm_steps=150", "--param", "epochs_grid=(1, 3)", "--param", "num_retrains=1",
            "--seed", "2"]
    assert main(argv) == 0
    assert "group labels: none" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    head = np.load(out / "head.npz", allow_pickle=False)
    # the same method through the Python API gives the same head
    bundle = load_bundle(EXAMPLE).resolve_heldout(0)
    ref = get_method("gradtune-auto", xrm_steps=150, epochs_grid=(1, 3), num_retrains=1).fit(bundle, seed=2)
    np.testing.assert_array_equal(head["weight"], ref.model.weight)
    assert metrics["params"]["method_params"]["xrm_steps"] == 150
    assert main(argv) == 0 and "already holds this run" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--method", "dfr-xrm", "--param", "novalue"], "KEY=VALUE"),
    (["--method", "dfr-xrm", "--param", "bogus=1"], "not a parameter"),
    (["--param", "size=0"], "--param size must be > 0, got 0"),
    (["--top-k", "-3"], "--top-k: top_k must be >= 0, got -3"),
    (["--size", "10"], "--method gradtune: top_k must be at most size (10), got 400"),
    (["--method", "dfr", "--top-k", "3"], "--top-k sets top_k, which method 'dfr' does not have"),
    (["--lr", "0"], "--lr: finetune.lr must be > 0, got 0.0"),
])
def test_tune_method_errors_are_clear(tmp_path, capsys, argv, message):
    rc = main(["tune", "--embeddings", "example", "--out", str(tmp_path / "x"), *argv])
    assert rc == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
