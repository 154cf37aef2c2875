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
:class:`~gradtune.models.resnet.ImagePreprocess`) and ``[erm]``
(:class:`~gradtune.training.config.TrainConfig` fields). The baselines read

* ``[jtt]``: ``epoch`` (T), ``lambda``, and ``[jtt.stage1]`` / ``[jtt.stage2]``:
  overrides of ``[erm]`` for the identification ERM (its ``epochs`` is the schedule
  length; training stops after T) and for the final model (default sampler
  ``uniform``: shuffled passes over the upsampled list);
* ``[group_dro]``: ``eta``, ``adj`` (C), and ``[group_dro.train]``: overrides of
  ``[erm]`` (strong weight decay; the sampler is always group-balanced).

``--jtt-epoch``, ``--jtt-lambda``, ``--dro-eta``, ``--dro-adj`` override those;
``--epochs`` and the other flags apply to every stage. Checkpoints go to
``OUT/checkpoints/last.pt`` (ERM, Group DRO) or ``OUT/{init.pt, stage1/, error_set.json,
stage2/}`` (JTT, see :mod:`gradtune.training.robust`) after every epoch; ``--resume``
continues an interrupted run; ``OUT/train.json`` summarizes a finished one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from gradtune._validation import GradTuneInputError

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10: the same parser as a package
    import tomli as tomllib

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
"""Packaged per-dataset TOML files with the paper's hyperparameters."""

MODEL_ARCHS = ("resnet50", "resnet", "bert")
METHODS = ("erm", "jtt", "group-dro")
_JTT_KEYS = ("epoch", "lambda", "stage1", "stage2")
_DRO_KEYS = ("eta", "adj", "train")


def load_run_config(path: str | Path | None = None, dataset: str | None = None) -> dict[str, Any]:
    """Read a run configuration: ``path`` if given, else the packaged file for ``dataset``.

    Raises
    ------
    FileNotFoundError
        If the file does not exist (the message lists the packaged configs).
    GradTuneInputError
        If it is not valid TOML.
    """
    if path is None:
        if dataset is None:
            raise GradTuneInputError("give a config file or a dataset name")
        path = CONFIG_DIR / f"{dataset.lower()}.toml"
        if not path.is_file():
            known = sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))
            raise FileNotFoundError(
                f"no packaged config for dataset {dataset!r} (known: {known}); pass --config FILE"
            )
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist")
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as err:
        raise GradTuneInputError(f"config file {str(path)!r} is not valid TOML: {err}") from None


def build_model(model_cfg: dict[str, Any], num_classes: int, *, needs_tokenizer: bool = True) -> Any:
    """The backbone + head described by a ``[model]`` table.

    ``arch = "resnet50"``: ``weights`` is ``"imagenet"`` (torch hub cache), a file path, or
    ``"none"``; ``arch = "resnet"`` adds ``layers`` (4 block counts) and ``width`` for smaller
    variants (random init unless ``weights`` is given). ``arch = "bert"``: ``name`` (local hub name or directory), ``pooling``,
    ``max_length``. Random initializations draw from torch's global RNG; wrap the call in
    :func:`gradtune.training.trainer.seeded_scope`.
    """
    cfg = dict(model_cfg)
    arch = str(cfg.pop("arch", "")).lower()
    if arch in ("resnet50", "resnet"):
        from gradtune.models.resnet import RESNET50_LAYERS, build_resnet

        weights = cfg.pop("weights", "imagenet" if arch == "resnet50" else "none")
        if isinstance(weights, str) and weights.lower() in ("none", ""):
            weights = None
        layers = tuple(cfg.pop("layers", RESNET50_LAYERS)) if arch == "resnet" else RESNET50_LAYERS
        width = int(cfg.pop("width", 64)) if arch == "resnet" else 64
        _no_extra(cfg, arch)
        return build_resnet(layers, num_classes, width=width, weights=weights)
    if arch == "bert":
        from gradtune.models.text import build_text_classifier

        name = cfg.pop("name", "bert-base-uncased")
        kwargs = {k: cfg.pop(k) for k in ("pooling", "dropout", "max_length") if k in cfg}
        _no_extra(cfg, "bert")
        return build_text_classifier(name, num_classes, load_tokenizer=needs_tokenizer, **kwargs)
    raise GradTuneInputError(f"[model] arch must be one of {list(MODEL_ARCHS)}, got {arch!r}")


def _no_extra(cfg: dict[str, Any], arch: str) -> None:
    if cfg:
        raise GradTuneInputError(f"unknown [model] setting(s) {sorted(cfg)} for arch {arch!r}")


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
    p.add_argument("--device", default=None, help="e.g. cpu, cuda:0 (default: cuda:LOCAL_RANK if available)")
    p.add_argument("--num-workers", type=int, default=None, help="DataLoader workers (default [erm] num_workers or 0)")
    p.add_argument("--keep-epochs", default=None,
                   help="comma-separated epochs whose checkpoints to keep too (e.g. JTT's T)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--method", choices=METHODS, default="erm",
                   help="erm: class-balanced ERM; jtt: Just Train Twice (no group labels); "
                        "group-dro: Group DRO (uses training group labels). Default erm")
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
    p.set_defaults(func=run)


def _table(cfg: dict[str, Any], name: str, keys: tuple[str, ...]) -> dict[str, Any]:
    """A baseline's table of the run config, with its keys checked."""
    table = cfg.get(name, {})
    if not isinstance(table, dict):
        raise GradTuneInputError(f"[{name}] must be a table, got {table!r}")
    unknown = sorted(set(table) - set(keys))
    if unknown:
        raise GradTuneInputError(f"unknown [{name}] setting(s) {unknown}; known: {list(keys)}")
    return table


def _required(cli_value: Any, table: dict[str, Any], key: str, table_name: str, flag: str) -> Any:
    if cli_value is not None:
        return cli_value
    if key not in table:
        raise GradTuneInputError(f"no [{table_name}] {key} in the run config; pass {flag}")
    return table[key]


def _stage(base: dict[str, Any], overrides: Any, name: str, *, common: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(overrides, dict):
        raise GradTuneInputError(f"[{name}] must be a table of training settings, got {overrides!r}")
    return {**base, **overrides, **common}


def run(args: argparse.Namespace) -> int:
    from gradtune._io import atomic_write_json
    from gradtune.models import distributed as gdist
    from gradtune.models.preprocess import make_preprocess
    from gradtune.models.resnet import ResNet
    from gradtune.models.transforms import ImagePreprocess
    from gradtune.training.config import TrainConfig
    from gradtune.training.trainer import seeded_scope, train

    cfg = load_run_config(args.config, args.dataset)
    method = getattr(args, "method", "erm")
    out = Path(args.out)
    # Flags that apply to every training stage of every method.
    common: dict[str, Any] = {"seed": int(args.seed)}
    if args.epochs is not None:
        common["epochs"] = args.epochs
    if args.num_workers is not None:
        common["num_workers"] = args.num_workers
    if args.device is not None:
        common["device"] = args.device
    if args.keep_epochs:
        common["keep_epochs"] = tuple(int(e) for e in str(args.keep_epochs).split(",") if e.strip())
    if args.no_progress:
        common["progress"] = False
    erm = dict(cfg.get("erm", {}))
    settings: dict[str, Any] = {}
    if method == "jtt":
        table = _table(cfg, "jtt", _JTT_KEYS)
        T = int(_required(args.jtt_epoch, table, "epoch", "jtt", "--jtt-epoch"))
        lam = int(_required(args.jtt_lambda, table, "lambda", "jtt", "--jtt-lambda"))
        config = TrainConfig.from_dict(_stage(erm, table.get("stage1", {}), "jtt.stage1", common=common))
        stage2 = TrainConfig.from_dict(_stage({**erm, "sampler": "uniform"}, table.get("stage2", {}),
                                              "jtt.stage2", common=common))
        settings = {"jtt_epoch": T, "jtt_lambda": lam, "erm_checkpoint": args.jtt_erm_checkpoint}
    elif method == "group-dro":
        table = _table(cfg, "group_dro", _DRO_KEYS)
        eta = float(_required(args.dro_eta, table, "eta", "group_dro", "--dro-eta"))
        adj = _required(args.dro_adj, table, "adj", "group_dro", "--dro-adj")
        dro = _stage(erm, table.get("train", {}), "group_dro.train", common=common)
        config = TrainConfig.from_dict({**dro, "sampler": "group_balanced",
                                        "checkpoint_dir": str(out / "checkpoints")})
        settings = {"dro_eta": eta, "dro_adj": adj}
    else:
        config = TrainConfig.from_dict({**erm, **common, "checkpoint_dir": str(out / "checkpoints")})
    if method != "jtt" and not args.resume and (out / "checkpoints" / "last.pt").exists():
        raise GradTuneInputError(
            f"{out / 'checkpoints' / 'last.pt'} exists: pass --resume to continue that run or choose another --out"
        )

    info = gdist.init_distributed()
    try:
        from gradtune.data.registry import load_dataset

        data = load_dataset(args.dataset, args.root)
        needs_tokenizer = len(data) > 0 and isinstance(data.inputs[0], str)
        device = config.device or info.device

        def build() -> Any:
            return build_model(cfg.get("model", {}), data.n_classes, needs_tokenizer=needs_tokenizer)

        with seeded_scope(config.seed, device):
            model = build()
        prep_cfg = dict(cfg.get("preprocess", {}))
        if isinstance(model, ResNet):
            if "crop_scale" in prep_cfg:
                prep_cfg["crop_scale"] = tuple(prep_cfg["crop_scale"])
            preprocess: Any = ImagePreprocess(**prep_cfg)
        else:
            preprocess = make_preprocess(model, data)
        meta = {"dataset": args.dataset, "root": str(Path(args.root).resolve()),
                "config_file": str(args.config) if args.config else f"packaged:{args.dataset}",
                "preprocess": {k: (list(v) if isinstance(v, tuple) else v) for k, v in prep_cfg.items()},
                "class_names": list(data.class_names), "group_names": list(data.group_names)}
        summary: dict[str, Any] = {"dataset": args.dataset, "method": method, "seed": config.seed, **settings}
        if method == "jtt":
            from gradtune.training.robust import train_jtt

            spare = [model]  # built above under the same seed: the factory's first model

            def factory() -> Any:
                return spare.pop() if spare else build()

            res = train_jtt(factory, data, config, T=settings["jtt_epoch"], lam=settings["jtt_lambda"],
                            out_dir=out, seed=config.seed, preprocess=preprocess, stage2_config=stage2,
                            erm_checkpoint=args.jtt_erm_checkpoint, resume=args.resume, meta=meta)
            result = res.stage2
            summary.update({"n_train": int(res.train_rows.size), "n_errors": int(res.error_rows.size),
                            "n_upsampled": int(res.upsampled_rows.size),
                            "stage1_checkpoint": str(res.stage1_checkpoint),
                            "error_set": str(out / "error_set.json"),
                            "stage1_config": config.to_dict()})
            config = stage2
        elif method == "group-dro":
            from gradtune.training.robust import train_group_dro

            dro_res = train_group_dro(model, data, config, eta=settings["dro_eta"], adj=settings["dro_adj"],
                                      preprocess=preprocess, resume=args.resume, meta=meta)
            result = dro_res.train
            summary.update({"q": dro_res.q.tolist(), "group_counts": dro_res.group_counts.tolist()})
        else:
            result = train(model, data, config, preprocess=preprocess, resume=args.resume, meta=meta)
        if info.is_main:
            summary.update({"epochs": config.epochs, "resumed_from": result.resumed_from,
                            "checkpoint": str(result.checkpoint), "history": result.history,
                            "config": config.to_dict()})
            atomic_write_json(out / "train.json", summary)
            last = result.history[-1] if result.history else {}
            print(f"trained {args.dataset} ({method}) for {config.epochs} epochs "
                  f"(loss {last.get('loss', float('nan')):.4f}); checkpoint: {result.checkpoint}", file=sys.stderr)
        gdist.barrier()
    finally:
        gdist.cleanup()
    return 0
