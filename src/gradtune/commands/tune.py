"""``gradtune tune``: parse the arguments and call :func:`gradtune.workflows.tune.tune_bundle`."""

from __future__ import annotations

import argparse
import ast
import json
from pathlib import Path
from typing import TYPE_CHECKING

from gradtune._cli_flags import add_force, add_json, add_quiet, run_json_aware
from gradtune._cli_types import method_arg
from gradtune._errors import GradTuneInputError
from gradtune._names import METHOD_NAMES, name_list
from gradtune.report.text import group_table

if TYPE_CHECKING:  # imported where used: building the parser must not load torch
    from gradtune.finetune.linear import FinetuneConfig

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
    p.add_argument("--size", type=int, default=None, help="M', fine-tuning set size (default 500)")
    p.add_argument("--top-k", type=int, default=None, help="k, top gradient norms taken (default 400)")
    p.add_argument("--epochs", type=int, default=None, help="fine-tuning epochs (default 500)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default 3e-3 SGD / 1e-5 AdamW)")
    p.add_argument("--batch-size", type=int, default=None, help="batch size (default 32 SGD / 16 AdamW)")
    p.add_argument("--optimizer", choices=["sgd", "adamw"], default=None, help="default: sgd")
    p.add_argument("--schedule", choices=["cosine", "linear", "constant"], default=None,
                   help="default: cosine for SGD, linear for AdamW")
    p.add_argument("--weight-decay", type=float, default=None, help="default: 1e-4")
    p.add_argument("--sampler", choices=["class_balanced", "uniform"], default=None,
                   help="default: class_balanced")
    p.add_argument("--retrain", action="store_true", help="reset the head before training (paper Table 5)")
    p.add_argument("--no-bias-in-norm", action="store_true", help="gradient norm w.r.t. the weight only")
    p.add_argument("--fit-erm-head", action="store_true",
                   help="if the bundle has no head, fit a class-balanced linear ERM head on its train rows")
    p.add_argument("--seed", type=int, default=0, help="seed of the selection draw and the sampler")
    p.add_argument("--split-seed", type=int, default=0,
                   help="seed that halves 'val' rows into held-out/selection when the bundle has no 'heldout' rows")
    add_force(p, "recompute even if --out holds a finished run")
    add_quiet(p)
    add_json(p)
    p.add_argument("--method", default="gradtune", metavar="NAME", type=method_arg,
                   help="a registered method (default gradtune, the paper's; gradtune-auto is the "
                        "recommended label-free pipeline and uses the bundle's encoder_features); "
                        "with another method, --size/--top-k/--epochs/... set the method's parameter "
                        "of that name (size, top_k, finetune.epochs, ...) and are refused, with the "
                        "reason, where it has none; --param sets any hyperparameter. Registered: "
                        + name_list(METHOD_NAMES))
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="a hyperparameter of --method (repeatable; VALUE is read as a Python "
                        "literal, e.g. --param xrm_steps=500 --param finetune.epochs=20)")
    p.set_defaults(func=run)


def _config(args: argparse.Namespace) -> FinetuneConfig:

    adam = (args.optimizer or "sgd") == "adamw"
    try:
        return _finetune_config(args, adam)
    except GradTuneInputError as err:  # name the flag: "lr must be > 0" -> "--lr: lr must be > 0"
        raise GradTuneInputError(f"--{str(err).split()[0].replace('_', '-')}: {err}") from None


def _finetune_config(args: argparse.Namespace, adam: bool) -> FinetuneConfig:
    from gradtune.finetune.linear import FinetuneConfig

    return FinetuneConfig(
        epochs=500 if args.epochs is None else args.epochs,
        batch_size=(16 if adam else 32) if args.batch_size is None else args.batch_size,
        optimizer=args.optimizer or "sgd",
        lr=(1e-5 if adam else 3e-3) if args.lr is None else args.lr,
        schedule=args.schedule or ("linear" if adam else "cosine"),
        weight_decay=1e-4 if args.weight_decay is None else args.weight_decay,
        sampler=args.sampler or "class_balanced",
        reset=args.retrain,
    )


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


# gradtune's flags and the parameter each sets on a method that declares it
_ALIASES = (("--size", "size", "size"), ("--top-k", "top_k", "top_k"), ("--epochs", "epochs", "finetune.epochs"),
            ("--lr", "lr", "finetune.lr"), ("--batch-size", "batch_size", "finetune.batch_size"),
            ("--optimizer", "optimizer", "finetune.optimizer"), ("--schedule", "schedule", "finetune.schedule"),
            ("--weight-decay", "weight_decay", "finetune.weight_decay"), ("--sampler", "sampler", "finetune.sampler"),
            ("--retrain", "retrain", "finetune.reset"))


def _flag_aliases(args: argparse.Namespace, params: dict[str, object]) -> dict[str, object]:
    """``params`` plus the gradtune flags given on the command line, as the parameters of the
    same name of ``--method``; a flag whose parameter the method does not declare is refused."""
    from dataclasses import fields

    from gradtune.methods import get_method

    method = get_method(args.method)
    declared = {f.name: getattr(method, f.name) for f in fields(method)}  # type: ignore[arg-type]
    out = dict(params)
    given = [(flag, key, getattr(args, dest)) for flag, dest, key in _ALIASES
             if getattr(args, dest) not in (None, False)]
    if args.no_bias_in_norm:
        given.append(("--no-bias-in-norm", "include_bias", False))
    for flag, key, value in given:
        outer, _, inner = key.partition(".")
        has = outer in declared and (not inner or hasattr(declared[outer], inner))
        if not has:
            raise GradTuneInputError(
                f"{flag} sets {key}, which method {args.method!r} does not have; its parameters: "
                f"{', '.join(sorted(declared))} (set them with --param NAME=VALUE)")
        if key in out:
            raise GradTuneInputError(f"{flag} and --param {key}=... both set {key}; give one of them")
        out[key] = value
    return out


def run(args: argparse.Namespace) -> int:
    return run_json_aware(args, lambda: _run(args))


def _run(args: argparse.Namespace) -> tuple[int, dict]:
    """Tune, print the tables; the exit code and the --json results (metrics.json's content and the paths)."""
    from gradtune._io import jsonable
    from gradtune.workflows.tune import tune_bundle

    for flag, seed in (("--seed", args.seed), ("--split-seed", args.split_seed)):
        if not 0 <= seed < 2**63:
            raise GradTuneInputError(f"{flag} must be an integer in 0..2**63-1, got {seed}")
    path = EXAMPLE if args.embeddings == "example" else Path(args.embeddings)
    cfg = _config(args)
    params = parse_params(args.param)
    if args.method != "gradtune":
        params = _flag_aliases(args, params)
    outcome = tune_bundle(path, args.out, method=args.method, method_params=params,
                          finetune=cfg, size=500 if args.size is None else args.size,
                          top_k=400 if args.top_k is None else args.top_k,
                          include_bias=not args.no_bias_in_norm, seed=args.seed,
                          split_seed=args.split_seed, fit_erm_head=args.fit_erm_head, force=args.force)
    metrics_path = Path(args.out) / "metrics.json"
    head_path = Path(args.out) / "head.npz"
    written = json.loads(json.dumps(outcome.result, default=jsonable))  # as written, not re-read: another
    results = {"metrics": written, "reused": outcome.reused,  # tune may have replaced the file since
               "paths": {"out": Path(args.out), "metrics": metrics_path,
                         "head": head_path if head_path.exists() else None}}
    if outcome.reused:
        print(f"{metrics_path} already holds this run (same bundle and parameters); use --force to recompute")
        _print_summary(outcome.result)
        return 0, results
    print(outcome.summary)
    _print_summary(outcome.result)
    print("wrote " + " and ".join(str(w) for w in outcome.wrote))
    return 0, results


def _print_summary(result: dict) -> None:
    for split, ev in result.get("evaluation", {}).items():
        print(f"\n[{split}]")
        print(group_table(ev["before"], ev["after"], result.get("group_names")))
