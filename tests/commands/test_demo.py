"""``gradtune demo`` without matplotlib: refused before any bundle is built or run computed."""

from __future__ import annotations

from gradtune.cli import main


def test_demo_without_matplotlib_fails_before_any_work(tmp_path, monkeypatch, hide_matplotlib, capsys):
    import gradtune.experiments.offline as offline

    def no_build(*args, **kwargs):
        raise AssertionError("a bundle was built before the missing extra was reported")

    monkeypatch.setattr(offline, "build_bundle", no_build)
    out = tmp_path / "demo"
    code = main(["demo", "--benchmarks", "adult", "--out", str(out), "--cache-dir", str(tmp_path / "cache")])
    assert code == 2 and "matplotlib is not installed" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "cache").exists()
