"""`gradtune tune --method gradtune-auto` says on stderr why it kept the ERM head."""

from __future__ import annotations

from gradtune.cli import main


def test_kept_erm_head_reason_on_stderr(tmp_path, capsys):
    out = tmp_path / "auto"
    argv = ["tune", "--embeddings", "example", "--out", str(out), "--method", "gradtune-auto",
            "--param", "xrm_steps=150", "--param", "num_retrains=1", "--param", "margin=1.0",
            "--param", "features='features'"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "gradtune-auto kept the ERM head" in err and "by more than the noise" in err
    assert "nan" not in err
    assert (out / "metrics.json").exists()


def test_gradtune_flags_set_the_same_parameter_of_another_method_or_are_refused(tmp_path, capsys):
    import json

    import pytest

    from gradtune._errors import GradTuneInputError
    from gradtune.cli import build_parser
    from gradtune.commands.tune import method_params

    def args_of(*extra: str):
        return build_parser().parse_args(["tune", "--embeddings", "example", "--out", str(tmp_path / "x"), *extra])

    # gradtune-auto declares size, top_k and a finetune block: the flags become its parameters
    got = method_params(args_of("--method", "gradtune-auto", "--top-k", "50", "--epochs", "7", "--lr", "0.01"))
    assert got == {"top_k": 50, "finetune.epochs": 7, "finetune.lr": 0.01}
    # dfr has none of them: refused, naming the flag, the parameter and the method
    with pytest.raises(GradTuneInputError, match=r"--top-k sets top_k, which method 'dfr' does not have"):
        method_params(args_of("--method", "dfr", "--top-k", "50"))
    with pytest.raises(GradTuneInputError, match="both set top_k"):
        method_params(args_of("--method", "gradtune-auto", "--top-k", "50", "--param", "top_k=60"))
    # end to end: exit 2 with one line, nothing written
    rc = main(["tune", "--embeddings", "example", "--out", str(tmp_path / "dfr"), "--method", "dfr",
               "--epochs", "5", "--json"])
    out = capsys.readouterr().out
    assert rc == 2 and "--epochs sets finetune.epochs" in json.loads(out)["error"]
    assert not (tmp_path / "dfr" / "metrics.json").exists()


def test_unlabeled_deployment_rows_from_a_file(tmp_path, capsys):
    import json

    import numpy as np

    from tests.methods._synthetic import make_spurious_bundle

    b = make_spurious_bundle(n_train=400, n_heldout=600, n_selection=600, n_test=400, d=16, seed=3,
                             align_eval=0.9, encoder_dim=6)
    bundle, dep = tmp_path / "b.npz", tmp_path / "dep.npy"
    b.save(bundle)
    np.save(dep, b.features[b.split == "test"])
    out = tmp_path / "auto"
    argv = ["tune", "--embeddings", str(bundle), "--out", str(out), "--method", "gradtune-auto",
            "--param", "xrm_steps=150", "--param", "num_retrains=1", "--param", "audit_coverage=False"]
    assert main([*argv, "--deployment-features", str(dep)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["diagnostics"]["deployment_rows"] == "deployment_features"
    assert metrics["diagnostics"]["n_deployment_rows"] == 400
    assert len(metrics["params"]["deployment_features_sha256"]) == 64
    capsys.readouterr()
    assert main([*argv, "--deployment-features", str(dep)]) == 0
    assert "already holds this run" in capsys.readouterr().out
    np.save(dep, b.features[b.split == "test"][:300])         # other rows: another run
    assert main([*argv, "--deployment-features", str(dep)]) == 0
    assert "already holds this run" not in capsys.readouterr().out
    assert json.loads((out / "metrics.json").read_text())["diagnostics"]["n_deployment_rows"] == 300
    # without the flag the same bundle has none: another run again
    assert main(argv) == 0
    assert json.loads((out / "metrics.json").read_text())["diagnostics"]["deployment_rows"] is None


def test_bad_deployment_files_are_named(tmp_path, capsys):
    import numpy as np

    bad = {"narrow.npy": np.zeros((5, 3)), "objects.npy": np.array([{"a": 1}], dtype=object)}
    for name, arr in bad.items():
        np.save(tmp_path / name, arr, allow_pickle=True)
    expect = {"narrow.npy": "deployment_features must have shape (M, ", "objects.npy": "not a readable .npy",
              "missing.npy": "is not a file"}
    for name, message in expect.items():
        rc = main(["tune", "--embeddings", "example", "--out", str(tmp_path / name), "--method", "gradtune-auto",
                   "--deployment-features", str(tmp_path / name)])
        err = capsys.readouterr().err
        assert rc == 2 and "--deployment-features" in err and message in err, err
        assert not (tmp_path / name / "metrics.json").exists()
