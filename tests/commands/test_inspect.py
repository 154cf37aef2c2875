"""``gradtune inspect``: a bundle file in, a gallery out; bad input fails before any work and
leaves no output folder."""

from __future__ import annotations

import json

import numpy as np

from gradtune.cli import main
from gradtune.report.inspect import inspect_groups
from tests.report.test_inspect import toy_bundle


def test_inspect_writes_a_gallery_and_json(tmp_path, capsys):
    b, _ = toy_bundle()
    path = b.save(tmp_path / "b.npz")
    out = tmp_path / "out"
    assert main(["inspect", str(path), "--out", str(out), "--rows", "3", "--seed", "1", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    ref = inspect_groups(b, seed=1, n_rows=3)
    assert [g["size"] for g in res["groups"]] == [g.size for g in ref.groups]
    assert [g["typical"] for g in res["groups"]] == [g.typical.tolist() for g in ref.groups]
    np.testing.assert_allclose([g["erm_accuracy"] for g in res["groups"]], [g.erm_accuracy for g in ref.groups])
    for f in ("inspect.html", "inspect.md", "inspect.json"):
        assert (out / f).stat().st_size > 0
    # no original rows in the bundle: the gallery says so and shows feature columns
    assert "no original rows found" in (out / "inspect.md").read_text()


def test_bad_input_fails_fast_and_writes_nothing(tmp_path, capsys, request):
    out = tmp_path / "out"
    assert main(["inspect", str(tmp_path / "missing.npz"), "--out", str(out)]) == 2
    assert "neither an existing bundle file" in capsys.readouterr().err
    assert main(["inspect", "adult", "--out", str(out), "--rows", "0"]) == 2
    assert "--rows must be > 0" in capsys.readouterr().err
    # a missing matplotlib is reported before the bundle is even read
    request.getfixturevalue("hide_matplotlib")
    assert main(["inspect", str(tmp_path / "also-missing.npz"), "--out", str(out)]) == 2
    assert "matplotlib is not installed" in capsys.readouterr().err
    assert not out.exists()
