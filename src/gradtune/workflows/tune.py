"""A last-layer method on one embedding bundle, as ``gradtune tune`` runs it.

:func:`tune_bundle` builds the method from the registry (its parameters checked against
their declarations before anything is read or written), loads a bundle, halves its
validation rows if needed, takes (or fits) the ERM head, runs the method on the held-out
rows, evaluates the head before and after on the selection and test rows, and writes
``head.npz`` and ``metrics.json`` as one unit (a manifest with the head's hash, written
last). A rerun with the same bundle and parameters reuses the stored result. Every
method, the paper's ``gradtune`` included, takes this one path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from gradtune._errors import DivergenceError, GradTuneInputError, ensure_output_dir, writing
from gradtune._io import load_run_manifest, output_lock, save_run_outputs
from gradtune._validation import check_training_rows
from gradtune.embeddings.bundle import EmbeddingBundle, load_bundle_digest
from gradtune.embeddings.cache import hash_array
from gradtune.finetune.linear import FinetuneConfig, finetune_linear
from gradtune.methods.base import LinearHead, erm_head
from gradtune.methods.tuning import build_method
from gradtune.metrics.accuracy import evaluate

__all__ = ["TuneOutcome", "tune_bundle", "erm_head_or_fit", "evaluate_heads", "read_deployment_features"]

METRICS = "metrics.json"
HEAD = "head.npz"


def _refuse_overlap(bundle: Path, out: Path) -> None:
    """Refuse an ``--out`` whose outputs would land on the input bundle: the bundle is one of
    the files written, or the output folder is (or lies inside) a folder bundle."""
    src, dst = bundle.resolve(), out.resolve()
    if bundle.is_dir() and (dst == src or src in dst.parents):
        raise GradTuneInputError(f"--out {out} is inside the input bundle folder {bundle} (--embeddings); "
                                 "tune would write into its input: choose another --out")
    for name in (METRICS, HEAD, ".gradtune.lock"):
        target = out / name
        if target.resolve() == src or (target.exists() and bundle.exists() and target.samefile(bundle)):
            raise GradTuneInputError(f"--out {out} would overwrite the input bundle {bundle} (--embeddings) "
                                     f"with its {name}: choose another --out, or move the bundle")


@dataclass
class TuneOutcome:
    """What :func:`tune_bundle` did.

    result : the ``metrics.json`` content; reused : True if an earlier identical run was
    found and nothing was computed; wrote : files written; summary : one line on the run.
    """

    result: dict[str, Any]
    reused: bool
    wrote: list[Path] = field(default_factory=list)
    summary: str = ""


def erm_head_or_fit(bundle: EmbeddingBundle, fit: bool, seed: int) -> tuple[LinearHead, str]:
    """The bundle's ERM head, or (``fit``) a class-balanced linear head fitted on its train rows."""
    if bundle.head_weight is not None or not fit:
        return erm_head(bundle), "bundle"  # erm_head raises a BundleError naming --fit-erm-head
    train = bundle.view("train")
    c = bundle.n_classes
    res = finetune_linear(train.features, train.labels, np.zeros((c, train.features.shape[1]), np.float32),
                          np.zeros(c, np.float32), FinetuneConfig(epochs=100, batch_size=128, lr=0.01,
                                                                  reset=True), seed=seed)
    return LinearHead(res.weight, res.bias), "fitted on train rows (class-balanced, 100 epochs)"


def evaluate_heads(bundle: EmbeddingBundle, heads: dict[str, Any]) -> dict[str, dict]:
    """``{split: {name: GroupReport dict}}`` of each head on the selection and test rows."""
    train_counts = None
    if bundle.groups is not None and bundle.has_split("train"):
        train_counts = np.bincount(bundle.view("train").groups, minlength=bundle.n_groups)
    ev = {}
    for split in ("selection", "test"):
        if bundle.has_split(split):
            v = bundle.view(split)
            ev[split] = {name: evaluate(h.logits(v.features), v.labels, v.groups, n_groups=bundle.n_groups,
                                        train_group_counts=train_counts, n_classes=bundle.n_classes).to_dict()
                         for name, h in heads.items()}
    return ev


def _stored(out: Path, digest: str, params: dict) -> dict | None:
    """The stored result if ``out`` holds this bundle and params with every file intact."""
    done = load_run_manifest(out, METRICS) if (out / METRICS).exists() else None
    if done is None:
        return None
    if done.get("bundle_sha256") != digest or done.get("params") != json.loads(json.dumps(params, default=str)):
        return None
    return done


def read_deployment_features(path: str | Path) -> tuple[np.ndarray, str]:
    """The array of a ``.npy`` file of unlabeled deployment rows' features (read once, without
    pickle; the bundle checks its shape when it takes it), and the sha256 of its content."""
    path = Path(path)
    if not path.is_file():
        raise GradTuneInputError(f"--deployment-features {str(path)!r} is not a file: save the (M, d) features of "
                                 "unlabeled rows from deployment with numpy.save(FILE.npy, array)")
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise GradTuneInputError(f"--deployment-features {str(path)!r} is not a readable .npy array of numbers "
                                 f"({err}); save it with numpy.save(FILE.npy, array) (no pickled objects)") from None
    if not isinstance(arr, np.ndarray):
        raise GradTuneInputError(f"--deployment-features {str(path)!r} holds an archive of arrays; give one .npy "
                                 "array of shape (M, d)")
    return arr, hash_array(arr)


def _head_arrays(head: LinearHead) -> dict[str, np.ndarray]:
    """The arrays of ``head.npz``; a head with non-finite values fails the run."""
    arrays = {"weight": np.asarray(head.weight), "bias": np.asarray(head.bias)}
    if not all(np.isfinite(a).all() for a in arrays.values()):
        raise DivergenceError("the fine-tuned head holds NaN or infinite values (training diverged); lower the "
                              "learning rate")
    return arrays


def _set_summary(diag: dict[str, Any]) -> dict[str, Any]:
    """The fine-tuning set of a method that reports one (``selected_rows``, ``size``,
    ``top_k``, the loss on it), under the keys ``metrics.json`` has always used for them."""
    out: dict[str, Any] = {}
    if "selected_rows" in diag:
        out["selected_rows"] = diag["selected_rows"]
    if "size" in diag:
        out["size_used"] = diag["size"]
    if "top_k" in diag:
        out["top_k_used"] = diag["top_k"]
    if "initial_loss" in diag and "final_loss" in diag:
        out["finetune_loss"] = {"initial": diag["initial_loss"], "final": diag["final_loss"]}
    return out


def tune_bundle(path: str | Path, out: str | Path, *, method: str = "gradtune",
                method_params: dict[str, Any] | None = None, seed: int = 0, split_seed: int = 0,
                fit_erm_head: bool = False, force: bool = False,
                deployment_features: str | Path | None = None) -> TuneOutcome:
    """Run ``method`` on the bundle at ``path`` and write its results to ``out``.

    Parameters
    ----------
    path : path
        The bundle (``.npz`` or a folder of ``.npy`` files).
    out : path
        Output folder: ``head.npz`` (when the method's model is linear) and ``metrics.json``.
    method : str, default="gradtune"
        A registered method (the paper's ``gradtune`` by default).
    method_params : dict, optional
        Its hyperparameters, dotted keys for a block's fields (``{"top_k": 100,
        "finetune.epochs": 20}``); checked against the declarations before anything is
        read or written.
    seed, split_seed : int
        The method's seed; the seed halving ``val`` rows when the bundle has no ``heldout`` rows.
    fit_erm_head : bool
        Fit a class-balanced linear head on the train rows when the bundle has none.
    force : bool
        Recompute even if ``out`` holds this run.
    deployment_features : path, optional
        A ``.npy`` file of (M, d) features of unlabeled rows from deployment (the same
        features as the bundle's), added to the bundle as its ``deployment_features``
        (read by ``gradtune-auto``'s guard); the file's digest joins the run's identity.
    """
    path, out = Path(path), Path(out)
    runner = build_method(method, dict(method_params or {}))
    params = {"method": method, "method_params": runner.params(), "seed": seed,
              "split_seed": split_seed, "fit_erm_head": fit_erm_head}
    _refuse_overlap(path, out)
    dep = None
    if deployment_features is not None:
        dep, params["deployment_features_sha256"] = read_deployment_features(deployment_features)
    bundle, digest = load_bundle_digest(path)  # one read: the digest is of the bytes loaded
    if dep is not None:
        try:
            bundle = replace(bundle, deployment_features=dep)
        except GradTuneInputError as err:
            raise GradTuneInputError(f"--deployment-features {str(deployment_features)!r}: {err}") from None
    ensure_output_dir(out)
    if not force:
        done = _stored(out, digest, params)
        if done is not None:
            return TuneOutcome(done, reused=True)
    bundle = bundle.resolve_heldout(split_seed)
    head, head_source = erm_head_or_fit(bundle, fit_erm_head, seed)
    held = bundle.view("heldout")
    check_training_rows(held.labels, "the held-out rows")
    if bundle.head_weight is None:
        bundle = replace(bundle, head_weight=head.weight, head_bias=head.bias)
    res = runner.fit(bundle, seed=seed)
    model = res.model
    result = {"bundle": str(path), "bundle_sha256": digest, "params": json.loads(json.dumps(params, default=str)),
              "head_source": head_source, "group_names": bundle.group_names, "class_names": bundle.class_names,
              "method": method, "group_labels": runner.group_label_use, "heldout_size": len(held),
              **_set_summary(res.diagnostics),
              "diagnostics": {k: v for k, v in res.diagnostics.items() if not isinstance(v, list) or len(v) <= 64}}
    summary = f"method {method} (group labels: {runner.group_label_use}) on {len(held)} held-out rows"
    if "size_used" in result:
        summary += f"; fine-tuning set: M'={result['size_used']}" + (
            f", k={result['top_k_used']}" if "top_k_used" in result else "")
    if "finetune_loss" in result:
        summary += f"; loss on it {result['finetune_loss']['initial']:.4f} -> {result['finetune_loss']['final']:.4f}"
    result["evaluation"] = evaluate_heads(bundle, {"before": head, "after": model})
    heads = {HEAD: _head_arrays(model)} if isinstance(model, LinearHead) else {}
    with writing("the results of tune", out), output_lock(out):  # two tunes into one --out take turns
        wrote = save_run_outputs(out, METRICS, result, heads)
    return TuneOutcome(result, reused=False, wrote=list(wrote), summary=summary)
