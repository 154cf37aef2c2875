"""``gradtune train``: full-network ERM training of the paper's backbone on a benchmark.

Example::

    gradtune train --dataset waterbirds --root /data --out runs/wb-erm-s0 --seed 0
    torchrun --nproc_per_node=4 -m gradtune.cli train --dataset multinli --root /data --out runs/mnli

The run settings come from a TOML file (``--config``; default the packaged
``gradtune/configs/<dataset>.toml`` with the paper's Table 3 values): ``[model]``
(``arch`` = ``resnet50`` with ``weights``, or ``bert`` with ``name``, ``pooling``,
``max_length``), ``[preprocess]`` (image options of
:class:`~gradtune.models.resnet.ImagePreprocess`) and ``[erm]``
(:class:`~gradtune.models.trainer.TrainConfig` fields). Checkpoints go to
``OUT/checkpoints/last.pt`` after every epoch; ``--resume`` continues an interrupted run.
"""

from __future__ import annotations

import argparse
import json
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
    :func:`gradtune.models.trainer.seeded_scope`.
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
        "train", help="full-network ERM training (ResNet-50 / BERT) with checkpoints and resume",
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
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gradtune.models import distributed as gdist
    from gradtune.models.resnet import ImagePreprocess, ResNet
    from gradtune.models.trainer import TrainConfig, make_preprocess, seeded_scope, train

    cfg = load_run_config(args.config, args.dataset)
    erm = dict(cfg.get("erm", {}))
    if args.epochs is not None:
        erm["epochs"] = args.epochs
    if args.num_workers is not None:
        erm["num_workers"] = args.num_workers
    if args.device is not None:
        erm["device"] = args.device
    if args.keep_epochs:
        erm["keep_epochs"] = tuple(int(e) for e in str(args.keep_epochs).split(",") if e.strip())
    if args.no_progress:
        erm["progress"] = False
    out = Path(args.out)
    erm["seed"] = int(args.seed)
    erm["checkpoint_dir"] = str(out / "checkpoints")
    config = TrainConfig.from_dict(erm)
    if not args.resume and (out / "checkpoints" / "last.pt").exists():
        raise GradTuneInputError(
            f"{out / 'checkpoints' / 'last.pt'} exists: pass --resume to continue that run or choose another --out"
        )

    info = gdist.init_distributed()
    try:
        from gradtune.data.registry import load_dataset

        data = load_dataset(args.dataset, args.root)
        needs_tokenizer = len(data) > 0 and isinstance(data.inputs[0], str)
        device = config.device or info.device
        with seeded_scope(config.seed, device):
            model = build_model(cfg.get("model", {}), data.n_classes, needs_tokenizer=needs_tokenizer)
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
        result = train(model, data, config, preprocess=preprocess, resume=args.resume, meta=meta)
        if info.is_main:
            summary = {"dataset": args.dataset, "seed": config.seed, "epochs": config.epochs,
                       "resumed_from": result.resumed_from, "checkpoint": str(result.checkpoint),
                       "history": result.history, "config": config.to_dict()}
            (out / "train.json").write_text(json.dumps(summary, indent=2))
            last = result.history[-1] if result.history else {}
            print(f"trained {args.dataset} for {config.epochs} epochs (loss {last.get('loss', float('nan')):.4f}); "
                  f"checkpoint: {result.checkpoint}", file=sys.stderr)
        gdist.barrier()
    finally:
        gdist.cleanup()
    return 0
