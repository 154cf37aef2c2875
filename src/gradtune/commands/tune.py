"""``gradtune tune``: run GradTune on an embedding bundle (bring your own embeddings)."""

from __future__ import annotations

import argparse
import ast
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from gradtune._errors import DivergenceError, GradTuneInputError, ensure_output_dir, writing
from gradtune._io import file_digest, load_run_manifest, save_run_outputs
from gradtune.report.text import group_table

if TYPE_CHECKING:  # imported where used: building the parser must not load torch
    from gradtune.embeddings.bundle import EmbeddingBundle
    from gradtune.finetune.linear import FinetuneConfig
    from gradtune.methods.base import LinearHead

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "spurious_example.npz"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tune",
        help="fine-tune a last layer with GradTune on cached embeddings",
        description="Score the held-out rows of an embedding bundle by last-layer gradient norm, "
        "select the fine-tuning set (top-k + norm-proportional draw) and fine-tune the ERM head. "
        "Writes head.npz and metrics.json to --out; rerunning with the same inputs reuses them.",
    )
    p.add_argument("--embeddings", required=True, metavar="FILE",
                   help="bundle (.npz or directory of .npy; see gradtune.embeddings.bundle). "
                   f"'example' uses the bundled example ({EXAMPLE.name})")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--size", type=int, default=500, help="M', fine-tuning set size (default 500)")
    p.add_argument("--top-k", type=int, default=400, help="k, top gradient norms taken (default 400)")
    p.add_argument("--epochs", type=int, default=500, help="fine-tuning epochs (default 500)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default 3e-3 SGD / 1e-5 AdamW)")
    p.add_argument("--batch-size", type=int, default=None, help="batch size (default 32 SGD / 16 AdamW)")
    p.add_argument("--optimizer", choices=["sgd", "adamw"], default="sgd")
    p.add_argument("--schedule", choices=["cosine", "linear", "constant"], default=None,
                   help="default: cosine for SGD, linear for AdamW")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--sampler", choices=["class_balanced", "uniform"], default="class_balanced")
    p.add_argument("--retrain", action="store_true", help="reset the head before training (paper Table 5)")
    p.add_argument("--no-bias-in-norm", action="store_true", help="gradient norm w.r.t. the weight only")
    p.add_argument("--fit-erm-head", action="store_true",
                   help="if the bundle has no head, fit a class-balanced linear ERM head on its train rows")
    p.add_argument("--seed", type=int, default=0, help="seed of the selection draw and the sampler")
    p.add_argument("--split-seed", type=int, default=0,
                   help="seed that halves 'val' rows into held-out/selection when the bundle has no 'heldout' rows")
    p.add_argument("--force", action="store_true", help="recompute even if --out holds a finished run")
    p.add_argument("--method", default="gradtune", metavar="NAME",
                   help="a registered method (default gradtune, the paper's; gradtune-auto is the "
                        "recommended label-free pipeline and uses the bundle's encoder_features); "
                        "with a method other than gradtune the --size/--top-k/... flags are ignored "
                        "and --param sets its hyperparameters")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="a hyperparameter of --method (repeatable; VALUE is read as a Python "
                        "literal, e.g. --param xrm_steps=500 --param finetune.epochs=20)")
    p.set_defaults(func=run)


def _config(args: argparse.Namespace) -> FinetuneConfig:

    adam = args.optimizer == "adamw"
    try:
        return _finetune_config(args, adam)
    except GradTuneInputError as err:  # name the flag: "lr must be > 0" -> "--lr: lr must be > 0"
        raise GradTuneInputError(f"--{str(err).split()[0].replace('_', '-')}: {err}") from None


def _finetune_config(args: argparse.Namespace, adam: bool) -> FinetuneConfig:
    from gradtune.finetune.linear import FinetuneConfig

    return FinetuneConfig(
        epochs=args.epochs,
        batch_size=(16 if adam else 32) if args.batch_size is None else args.batch_size,
        optimizer=args.optimizer,
        lr=(1e-5 if adam else 3e-3) if args.lr is None else args.lr,
        schedule=args.schedule or ("linear" if adam else "cosine"),
        weight_decay=args.weight_decay,
        sampler=args.sampler,
        reset=args.retrain,
    )


def _head(bundle: EmbeddingBundle, fit: bool, seed: int) -> tuple[LinearHead, str]:
    from gradtune.finetune.linear import FinetuneConfig, finetune_linear
    from gradtune.methods.base import LinearHead, erm_head

    if bundle.head_weight is not None:
        return erm_head(bundle), "bundle"
    if not fit:
        return erm_head(bundle), "bundle"  # raises a BundleError explaining --fit-erm-head
    train = bundle.view("train")
    c = bundle.n_classes
    res = finetune_linear(train.features, train.labels, np.zeros((c, train.features.shape[1]), np.float32),
                          np.zeros(c, np.float32), FinetuneConfig(epochs=100, batch_size=128, lr=0.01,
                                                                  reset=True), seed=seed)
    return LinearHead(res.weight, res.bias), "fitted on train rows (class-balanced, 100 epochs)"


def parse_params(items: list[str]) -> dict[str, object]:
    """``["a=1", "b.c='x'"]`` -> ``{"a": 1, "b.c": "x"}``; values are Python literals (else strings)."""
    out: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise GradTuneInputError(f"--param expects KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            out[key.strip()] = value.strip()
    return out


def run(args: argparse.Namespace) -> int:
    from gradtune._validation import check_training_rows
    from gradtune.embeddings.bundle import load_bundle
    from gradtune.estimator import GradTune
    from gradtune.methods.base import LinearHead
    from gradtune.metrics.accuracy import evaluate

    path = EXAMPLE if args.embeddings == "example" else Path(args.embeddings)
    out = Path(args.out)
    cfg = _config(args)
    method_params = parse_params(args.param)
    if args.method != "gradtune":
        return _run_method(args, path, out, method_params)
    if method_params:
        raise GradTuneInputError("--param sets hyperparameters of --method; for the paper's gradtune use "
                                 "its flags (--size, --top-k, --epochs, ...)")
    params = {"size": args.size, "top_k": args.top_k, "include_bias": not args.no_bias_in_norm,
              "seed": args.seed, "split_seed": args.split_seed, "finetune": cfg.to_dict(),
              "fit_erm_head": args.fit_erm_head}
    bundle = load_bundle(path)
    ensure_output_dir(out)
    digest = file_digest(path)
    metrics_path = out / "metrics.json"
    if not args.force and _already_done(metrics_path, digest, params):
        return 0
    bundle = bundle.resolve_heldout(args.split_seed)
    head, head_source = _head(bundle, args.fit_erm_head, args.seed)
    held = bundle.view("heldout")
    check_training_rows(held.labels, "the held-out rows")
    tuner = GradTune(args.size, args.top_k, finetune=cfg, include_bias=not args.no_bias_in_norm,
                     seed=args.seed)
    tuner.fit_embeddings(held.features, held.labels, weight=head.weight, bias=head.bias)
    tuned = LinearHead(tuner.weight_, tuner.bias_)
    rep = tuner.report_
    result = {
        "bundle": str(path), "bundle_sha256": digest, "params": params, "head_source": head_source,
        "heldout_size": len(held), "size_used": rep.size, "top_k_used": rep.top_k,
        "selected_rows": held.index[rep.selected].tolist(),
        "finetune_loss": {"initial": rep.extra["initial_loss"], "final": rep.extra["final_loss"]},
        "group_names": bundle.group_names, "class_names": bundle.class_names,
        "evaluation": {},
    }
    train_counts = None
    if bundle.groups is not None and bundle.has_split("train"):
        train_counts = np.bincount(bundle.view("train").groups, minlength=bundle.n_groups)
    for split in ("selection", "test"):
        if not bundle.has_split(split):
            continue
        v = bundle.view(split)
        result["evaluation"][split] = {
            name: evaluate(h.logits(v.features), v.labels, v.groups, n_groups=bundle.n_groups,
                           train_group_counts=train_counts, n_classes=bundle.n_classes).to_dict()
            for name, h in (("before", head), ("after", tuned))
        }
    with writing("the results of tune", out):
        save_run_outputs(out, metrics_path.name, result, {"head.npz": _head_arrays(tuned)})
    print(f"held-out rows: {len(held)}; fine-tuning set: M'={rep.size}, k={rep.top_k}; "
          f"loss on it {rep.extra['initial_loss']:.4f} -> {rep.extra['final_loss']:.4f}")
    _print_summary(result)
    print(f"wrote {out / 'head.npz'} and {metrics_path}")
    return 0


def _evaluate_heads(bundle: EmbeddingBundle, heads: dict[str, object]) -> dict:
    from gradtune.metrics.accuracy import evaluate

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


def _run_method(args: argparse.Namespace, path: Path, out: Path, method_params: dict) -> int:
    """``tune --method NAME``: any registered method on the bundle, same outputs."""
    from dataclasses import replace

    from gradtune.embeddings.bundle import load_bundle
    from gradtune.methods.base import LinearHead
    from gradtune.methods.tuning import build_method

    method = build_method(args.method, method_params)
    params = {"method": args.method, "method_params": method.params(), "seed": args.seed,
              "split_seed": args.split_seed, "fit_erm_head": args.fit_erm_head}
    bundle = load_bundle(path)
    ensure_output_dir(out)
    digest = file_digest(path)
    metrics_path = out / "metrics.json"
    if not args.force and _already_done(metrics_path, digest, params):
        return 0
    bundle = bundle.resolve_heldout(args.split_seed)
    head, head_source = _head(bundle, args.fit_erm_head, args.seed)
    if bundle.head_weight is None:
        bundle = replace(bundle, head_weight=head.weight, head_bias=head.bias)
    res = method.fit(bundle, seed=args.seed)
    heads = {"head.npz": _head_arrays(res.model)} if isinstance(res.model, LinearHead) else {}
    result = {
        "bundle": str(path), "bundle_sha256": digest, "params": json.loads(json.dumps(params, default=str)),
        "head_source": head_source, "method": args.method, "group_labels": method.group_label_use,
        "heldout_size": int((bundle.split == "heldout").sum()),
        "diagnostics": {k: v for k, v in res.diagnostics.items() if not isinstance(v, list) or len(v) <= 64},
        "group_names": bundle.group_names, "class_names": bundle.class_names,
        "evaluation": _evaluate_heads(bundle, {"before": head, "after": res.model}),
    }
    with writing("the results of tune", out):
        wrote = save_run_outputs(out, metrics_path.name, result, heads)
    print(f"method {args.method} (group labels: {method.group_label_use}) on {result['heldout_size']} "
          "held-out rows")
    _print_summary(result)
    print("wrote " + " and ".join(str(w) for w in wrote))
    return 0


def _already_done(metrics_path: Path, digest: str, params: dict) -> bool:
    """True (and the stored summary printed) if ``metrics_path`` holds this bundle and params,
    and every file its manifest lists still has the recorded hash."""
    done = load_run_manifest(metrics_path.parent, metrics_path.name) if metrics_path.exists() else None
    if done is None:
        return False
    if done.get("bundle_sha256") != digest or done.get("params") != json.loads(json.dumps(params, default=str)):
        return False
    print(f"{metrics_path} already holds this run (same bundle and parameters); use --force to recompute")
    _print_summary(done)
    return True


def _head_arrays(head: LinearHead) -> dict[str, np.ndarray]:
    """The arrays of ``head.npz``; a head with non-finite values fails the run."""
    arrays = {"weight": np.asarray(head.weight), "bias": np.asarray(head.bias)}
    if not all(np.isfinite(a).all() for a in arrays.values()):
        raise DivergenceError("the fine-tuned head holds NaN or infinite values (training diverged); lower the "
                              "learning rate")
    return arrays


def _print_summary(result: dict) -> None:
    for split, ev in result.get("evaluation", {}).items():
        print(f"\n[{split}]")
        print(group_table(ev["before"], ev["after"], result.get("group_names")))
