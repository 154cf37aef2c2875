"""Reading stored runs: where a results store lives, its records, flattened parameters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gradtune.results.store import STORE_NAME, ResultStore, find_store

__all__ = ["store_path_for", "load_records", "flatten_params"]


def store_path_for(root: str | Path) -> Path:
    """``root`` itself if it names a ``.sqlite``/``.db`` file, else ``root/results.sqlite``."""
    root = Path(root)
    return root if root.suffix in (".sqlite", ".db", ".sqlite3") else root / STORE_NAME


def load_records(root: str | Path, *, status: str = "done") -> list[dict]:
    """Every stored run under ``root`` (a store file or a folder holding ``results.sqlite``)."""
    return ResultStore(find_store(root), readonly=True).records(status=status)


def flatten_params(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"finetune": {"epochs": 5}}`` -> ``{"finetune.epochs": 5}``; lists become tuples."""
    out: dict[str, Any] = {}
    for k, v in (params or {}).items():
        if isinstance(v, dict):
            out.update(flatten_params(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = tuple(v) if isinstance(v, list) else v
    return out
