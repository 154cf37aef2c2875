"""Where gradtune keeps its cache on disk (one rule, read by every module that caches)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CACHE_ENV_VAR", "default_cache_dir"]

CACHE_ENV_VAR = "GRADTUNE_CACHE_DIR"


def default_cache_dir() -> Path:
    """``$GRADTUNE_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/gradtune`` when that is an
    absolute path (the XDG base-directory rule ignores an empty or relative one), else
    ``~/.cache/gradtune``."""
    env = os.environ.get(CACHE_ENV_VAR)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "gradtune"
