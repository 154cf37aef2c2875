"""``gradtune tune``: parse the arguments, check the method's parameters against their
declarations, and call :func:`gradtune.workflows.tune.tune_bundle`."""

from __future__ import annotations

import argparse
import ast
import json
from pathlib import Path

from gradtune._cli_flags import add_force, add_json, add_quiet, run_json_aware
from gradtune._cli_types import method_arg
from gradtune._errors import GradTuneInputError
from gradtune._names import METHOD_NAMES, name_list
from gradtune.report.text import group_table

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
    p.add_argument("--deployment-features", default=None, metavar="FILE.npy",
                   help="(M, d) features of unlabeled rows from where the model is used, the bundle's "
                        "kind of features (numpy.save); gradtune-auto then judges a repair by how these rows "
                        "hold its inferred groups, not as if deployment weighed them equally")
    add_force(p, "recompute even if --out holds a finished run")
    add_quiet(p)
    add_json(p)
    p.add_argument("--method", default="gradtune", metavar="NAME", type=method_arg,
                   help="a registered method (default gradtune, the paper's; gradtune-auto is the "
                        "recommended label-free pipeline and uses the bundle's encoder_features); "
                        "--size/--top-k/--epochs/... set the method's parameter of that name (size, "
                        "top_k, finetune.epochs, ...) and are refused, with the reason, where it has "
                        "none; --param sets any hyperparameter. Registered: "
                        + name_list(METHOD_NAMES))
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="a hyperparameter of --method (repeatable; VALUE is read as a Python "
                        "literal, e.g. --param xrm_steps=500 --param finetune.epochs=20)")
    p.set_defaults(func=run)


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


# the paper's flags and the parameter each sets on a method that declares it
_ALIASES = (("--size", "size", "size"), ("--top-k", "top_k", "top_k"), ("--epochs", "epochs", "finetune.epochs"),
            ("--lr", "lr", "finetune.lr"), ("--batch-size", "batch_size", "finetune.batch_size"),
            ("--optimizer", "optimizer", "finetune.optimizer"), ("--schedule", "schedule", "finetune.schedule"),
            ("--weight-decay", "weight_decay", "finetune.weight_decay"), ("--sampler", "sampler", "finetune.sampler"),
            ("--retrain", "retrain", "finetune.reset"))


def method_params(args: argparse.Namespace) -> dict[str, object]:
    """The parameters of ``--method``: ``--param`` items plus the paper's flags given on the
    command line as the parameters of the same name; each checked against the method's
    declarations, naming the flag, before anything is read or written.

    ``--optimizer adamw`` brings the text-family settings of the method's optimizer block
    (lr 1e-5, batch 16, linear schedule) for the flags not given, as it always has.
    """
    from gradtune.methods.tuning import check_method_params, family_defaults

    params = parse_params(args.param)
    given = [(flag, key, getattr(args, dest)) for flag, dest, key in _ALIASES
             if getattr(args, dest) is not None and getattr(args, dest) is not False]
    if args.no_bias_in_norm:
        given.append(("--no-bias-in-norm", "include_bias", False))
    flags: dict[str, str] = {}
    for flag, key, value in given:
        if key in params:
            raise GradTuneInputError(f"{flag} and --param {key}=... both set {key}; give one of them")
        params[key] = value
        flags[key] = flag
    for key, value in params.items():  # one parameter at a time: the error names its flag
        try:
            check_method_params(args.method, {key: value}, relations=False)
        except GradTuneInputError as err:
            if key not in flags:
                raise GradTuneInputError(f"--param {err}") from None
            declared = _declared(args.method)
            if key not in declared:
                raise GradTuneInputError(
                    f"{flags[key]} sets {key}, which method {args.method!r} does not have; its parameters: "
                    f"{', '.join(sorted(declared))} (set them with --param NAME=VALUE)") from None
            raise GradTuneInputError(f"{flags[key]}: {err}") from None
    if params.get("finetune.optimizer") == "adamw" and "finetune.optimizer" in flags:
        block = {k: v for k, v in family_defaults(args.method, "text").items() if k.startswith("finetune.")}
        params = {**block, **params}
    try:
        check_method_params(args.method, params)
    except GradTuneInputError as err:
        raise GradTuneInputError(f"--method {args.method}: {err}") from None
    return params


def _declared(method: str) -> set[str]:
    """The dotted names of ``method``'s declared parameters."""
    from gradtune._params import flat_declarations
    from gradtune.methods.base import METHODS

    return set(flat_declarations(METHODS[method]))


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
    params = method_params(args)
    outcome = tune_bundle(path, args.out, method=args.method, method_params=params, seed=args.seed,
                          split_seed=args.split_seed, fit_erm_head=args.fit_erm_head, force=args.force,
                          deployment_features=args.deployment_features)
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
