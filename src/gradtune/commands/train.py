"""``gradtune train``: full-network training of the paper's backbone on a benchmark.

``--method`` picks the full-network row of Table 1: ``erm`` (class-balanced ERM, the
default), ``jtt`` (Just Train Twice) or ``group-dro`` (Group DRO; uses group labels).

Example::

    gradtune train --dataset waterbirds --root /data --out runs/wb-erm-s0 --seed 0
    gradtune train --dataset waterbirds --root /data --out runs/wb-jtt-s0 --method jtt
    gradtune train --dataset celeba --root /data --out runs/ca-dro-s0 --method group-dro --dro-adj 2
    torchrun --nproc_per_node=4 -m gradtune.cli train --dataset multinli --root /data --out runs/mnli

The run settings come from a TOML file (``--config``; default the packaged
``gradtune/configs/<dataset>.toml`` with the paper's Table 3 values): ``[model]``
(``arch`` = ``resnet50`` with ``weights``, or ``bert`` with ``name``, ``pooling``,
``max_length``), ``[preprocess]`` (image options of
:class:`~gradtune.models.transforms.ImagePreprocess`) and ``[erm]``
(:class:`~gradtune.training.config.TrainConfig` fields). The baselines read

* ``[jtt]``: ``epoch`` (T), ``lambda``, and ``[jtt.stage1]`` / ``[jtt.stage2]``:
  overrides of ``[erm]`` for the identification ERM (its ``epochs`` is the schedule
  length; training stops after T) and for the final model (default sampler
  ``uniform``: shuffled passes over the upsampled list);
* ``[group_dro]``: ``eta``, ``adj`` (C), and ``[group_dro.train]``: overrides of
  ``[erm]`` (strong weight decay; the sampler is always group-balanced).

``--jtt-epoch``, ``--jtt-lambda``, ``--dro-eta``, ``--dro-adj`` (or ``--param NAME=VALUE``
with the names of :mod:`gradtune.workflows.network_methods`) override those, each checked
before anything is loaded; ``--epochs`` and the other flags apply to every stage. Checkpoints go to
``OUT/checkpoints/last.pt`` (ERM, Group DRO) or ``OUT/{init.pt, stage1/, error_set.json,
stage2/}`` (JTT, see :mod:`gradtune.training.robust`) after every epoch; ``--resume``
continues an interrupted run; ``OUT/train.json`` summarizes a finished one.
"""

from __future__ import annotations

import argparse

from gradtune._cli_flags import add_no_progress, add_quiet, progress_enabled
from gradtune._cli_types import device_arg
from gradtune._errors import GradTuneInputError, parse_int
from gradtune.workflows.network_methods import NETWORK_METHODS, get_network_method
from gradtune.workflows.train import METHODS, train_network

# each method's flags: flag -> (argparse dest, the method, its parameter)
_FLAGS = (("--jtt-epoch", "jtt_epoch", "jtt", "epoch"), ("--jtt-lambda", "jtt_lambda", "jtt", "upweight"),
          ("--jtt-erm-checkpoint", "jtt_erm_checkpoint", "jtt", "erm_checkpoint"),
          ("--dro-eta", "dro_eta", "group-dro", "eta"), ("--dro-adj", "dro_adj", "group-dro", "adj"))


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train", help="full-network training (ResNet-50 / BERT): ERM, JTT or Group DRO, with checkpoints and resume",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, help="benchmark name: waterbirds, celeba, multinli, civilcomments")
    p.add_argument("--root", required=True, help="folder holding the dataset files")
    p.add_argument("--config", default=None, help="TOML run config (default: the packaged one for --dataset)")
    p.add_argument("--out", required=True, help="output folder (checkpoints/, train.json)")
    p.add_argument("--seed", type=int, default=0, help="seed of initialization, sampling and augmentation")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last.pt")
    p.add_argument("--epochs", type=int, default=None, help="override [erm] epochs")
    p.add_argument("--device", default=None, type=device_arg, help="e.g. cpu, cuda:0 (default: cuda:LOCAL_RANK if available)")
    p.add_argument("--num-workers", type=int, default=None, help="DataLoader workers (default [erm] num_workers or 0)")
    p.add_argument("--keep-epochs", default=None,
                   help="comma-separated epochs whose checkpoints to keep too (e.g. JTT's T)")
    add_no_progress(p)
    add_quiet(p)
    p.add_argument("--method", choices=METHODS, default="erm",
                   help="; ".join(f"{n}: {c.description}" for n, c in NETWORK_METHODS.items()) + ". Default erm")
    p.add_argument("--jtt-epoch", type=int, default=None,
                   help="JTT's T, the identification model's epoch (default [jtt] epoch)")
    p.add_argument("--jtt-lambda", type=int, default=None,
                   help="JTT's lambda, total copies of each error row (default [jtt] lambda)")
    p.add_argument("--jtt-erm-checkpoint", default=None,
                   help="reuse this epoch-T ERM checkpoint as JTT's identification model (skips stage 1)")
    p.add_argument("--dro-eta", type=float, default=None,
                   help="Group DRO's group-weight step size (default [group_dro] eta)")
    p.add_argument("--dro-adj", type=float, default=None,
                   help="Group DRO's generalization adjustment C (default [group_dro] adj)")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="a parameter of --method (repeatable; VALUE is read as a Python literal), e.g. "
                        "--param upweight=6 for jtt")
    p.set_defaults(func=run)


def method_params(args: argparse.Namespace) -> dict[str, object]:
    """``--param`` items and the method's flags as the parameters of ``--method``, checked
    against its declarations; a flag of another method is refused, naming it."""
    from gradtune.commands.tune import parse_params

    params = parse_params(args.param)
    from_flags: dict[str, str] = {}
    for flag, dest, method, key in _FLAGS:
        value = getattr(args, dest)
        if value is None:
            continue
        if method != args.method:
            raise GradTuneInputError(f"{flag} sets {key} of method {method!r}; --method is {args.method!r}")
        if key in params:
            raise GradTuneInputError(f"{flag} and --param {key}=... both set {key}; give one of them")
        params[key] = value
        from_flags[key] = flag
    try:
        get_network_method(args.method, params)
    except GradTuneInputError as err:
        key = str(err).split()[0].strip("'")
        raise GradTuneInputError(f"{from_flags[key]}: {err}" if key in from_flags else f"--param {err}") from None
    return params


def run(args: argparse.Namespace) -> int:
    keep = tuple(parse_int(e, "--keep-epochs") for e in str(args.keep_epochs).split(",") if e.strip()) \
        if args.keep_epochs else ()
    train_network(args.dataset, args.root, args.out, method=args.method, method_params=method_params(args),
                  config_file=args.config, seed=args.seed, resume=args.resume, epochs=args.epochs,
                  device=args.device, num_workers=args.num_workers, keep_epochs=keep,
                  progress=progress_enabled(args))
    return 0
