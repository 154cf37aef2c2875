"""Fixtures shared across the test folders."""

from __future__ import annotations

import pytest


@pytest.fixture
def hide_matplotlib(monkeypatch):
    """Make gradtune's optional-dependency check report matplotlib as missing (other modules
    are still checked as usual)."""
    import gradtune._optional as opt

    real = opt.require

    def no_mpl(module, **kw):
        if module.startswith("matplotlib"):
            raise opt.MissingDependencyError("matplotlib is not installed; the report's figures need it")
        return real(module, **kw)

    monkeypatch.setattr(opt, "require", no_mpl)
