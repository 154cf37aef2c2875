"""The code version a stored run records: the package version and the git commit."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

__all__ = ["code_version"]


@functools.lru_cache(maxsize=1)
def code_version() -> tuple[str, str | None]:
    """``(gradtune.__version__, git commit or None)``; the commit ends in ``+dirty`` when
    tracked files differ from it. Computed once per process."""
    from gradtune import __version__

    pkg = Path(__file__).resolve().parent
    commit = None
    try:
        out = subprocess.run(["git", "-C", str(pkg), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=False)
        if out.returncode == 0 and out.stdout.strip():
            commit = out.stdout.strip()
            dirty = subprocess.run(["git", "-C", str(pkg), "diff", "--quiet", "HEAD", "--", "."],
                                   capture_output=True, timeout=5, check=False)
            if dirty.returncode == 1:
                commit += "+dirty"
    except (OSError, subprocess.SubprocessError):
        commit = None
    return __version__, commit
