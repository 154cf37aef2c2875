"""Run methods on bundles over seeds, storing one self-describing record per run.

Each finished run is a JSON file ``<root>/<benchmark>/seed<k>/<method>-<hash>.json``
written atomically, where the hash covers the method's name and hyperparameters
and the bundle's content. A rerun skips every run whose record exists (unless
``force``), so an interrupted grid resumes where it stopped. This is the one
place that turns a user's seed into the seeds of each stage.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gradtune._io import atomic_write_json
from gradtune.embeddings.bundle import EmbeddingBundle
from gradtune.methods.base import Method, erm_head, get_method
from gradtune.metrics.accuracy import evaluate
from gradtune.scores.grad_norms import grad_norms

__all__ = ["RunSpec", "run_record", "run_grid", "bundle_fingerprint", "erm_diagnostics", "load_records"]


@dataclass(frozen=True)
class RunSpec:
    """One run: a method (by registry name, with hyperparameter overrides) on a benchmark and seed."""

    benchmark: str
    seed: int
    method: str
    params: tuple[tuple[str, Any], ...] = ()
    label: str | None = None  # display name; defaults to the method name

    @property
    def display(self) -> str:
        return self.label or self.method

    def build(self) -> Method:
        return get_method(self.method, **dict(self.params))


def bundle_fingerprint(bundle: EmbeddingBundle) -> str:
    """A short content hash of the arrays a method can see."""
    h = hashlib.sha256()
    for arr in (bundle.features, bundle.labels, bundle.head_weight, bundle.head_bias):
        if arr is not None:
            h.update(np.ascontiguousarray(arr).tobytes())
    h.update("|".join(bundle.split.tolist()).encode())
    return h.hexdigest()[:16]


def _params_hash(spec: RunSpec, method: Method, fingerprint: str) -> str:
    blob = json.dumps({"m": spec.method, "p": method.params(), "b": fingerprint}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _eval_split(model: Any, bundle: EmbeddingBundle, split: str, train_counts: np.ndarray | None) -> dict:
    v = bundle.view(split)
    logits = model.logits(v.features)
    return evaluate(logits, v.labels, v.groups, n_groups=bundle.n_groups, train_group_counts=train_counts,
                    n_classes=bundle.n_classes).to_dict()


def train_group_counts(bundle: EmbeddingBundle) -> np.ndarray | None:
    if bundle.groups is None or not bundle.has_split("train"):
        return None
    return np.bincount(bundle.view("train").groups, minlength=bundle.n_groups)


def run_record(spec: RunSpec, bundle: EmbeddingBundle, *, keep_diagnostics: bool = False) -> dict[str, Any]:
    """Fit one method on one bundle and evaluate it on the selection and test rows."""
    method = spec.build()
    t = time.perf_counter()
    result = method.fit(bundle, seed=spec.seed)
    fit_s = time.perf_counter() - t
    counts = train_group_counts(bundle)
    evals = {s: _eval_split(result.model, bundle, s, counts) for s in ("selection", "test") if bundle.has_split(s)}
    diag = {k: v for k, v in result.diagnostics.items()
            if keep_diagnostics or not isinstance(v, list) or len(v) <= 64}
    return {
        "benchmark": spec.benchmark, "seed": spec.seed, "method": spec.method, "label": spec.display,
        "params": method.params(), "group_labels": method.group_label_use,
        "fit_seconds": fit_s, "evaluation": evals, "diagnostics": diag,
        "group_names": bundle.group_names, "class_names": bundle.class_names,
        "bundle_fingerprint": bundle_fingerprint(bundle),
    }


def erm_diagnostics(bundle: EmbeddingBundle) -> dict[str, Any]:
    """Held-out gradient norms of the ERM head, with groups (for the paper's Fig. 2/4)."""
    head = erm_head(bundle)
    held = bundle.view("heldout")
    norms = grad_norms(held.features, labels=held.labels, weight=head.weight, bias=head.bias).numpy()
    return {"norms": norms.tolist(), "groups": None if held.groups is None else held.groups.tolist(),
            "labels": held.labels.tolist()}


def run_grid(specs: Iterable[RunSpec], get_bundle: Callable[[str, int], EmbeddingBundle], root: str | Path,
             *, force: bool = False, on_record: Callable[[dict, bool], None] | None = None) -> Iterator[dict]:
    """Run every spec, skipping those with a stored record; yield each record.

    ``get_bundle(benchmark, seed)`` builds (or loads from cache) the bundle; it is
    called once per (benchmark, seed). ``on_record(record, reused)`` is called after each.
    """
    root = Path(root)
    bundles: dict[tuple[str, int], EmbeddingBundle] = {}
    for spec in specs:
        key = (spec.benchmark, spec.seed)
        if key not in bundles:
            bundles.clear()  # keep one bundle in memory at a time
            bundles[key] = get_bundle(*key)
            diag_path = root / spec.benchmark / f"seed{spec.seed}" / "erm-heldout-norms.json"
            if force or not diag_path.exists():
                atomic_write_json(diag_path, erm_diagnostics(bundles[key]))
        bundle = bundles[key]
        method = spec.build()
        path = root / spec.benchmark / f"seed{spec.seed}" / \
            f"{spec.display}-{_params_hash(spec, method, bundle_fingerprint(bundle))}.json"
        reused = False
        record = None
        if path.exists() and not force:
            try:
                record = json.loads(path.read_text())
                reused = True
            except json.JSONDecodeError:
                record = None  # a damaged record is recomputed
        if record is None:
            record = run_record(spec, bundle)
            atomic_write_json(path, record)
        if on_record:
            on_record(record, reused)
        yield record


def load_records(root: str | Path) -> list[dict]:
    """Every run record under ``root`` (skips the ERM norm files)."""
    out = []
    for p in sorted(Path(root).rglob("*.json")):
        if p.name == "erm-heldout-norms.json":
            continue
        try:
            out.append(json.loads(p.read_text()))
        except json.JSONDecodeError:
            continue
    return out
