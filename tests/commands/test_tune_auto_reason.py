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
