"""Full-network training of the paper's backbone on a benchmark: ERM, JTT or Group DRO.

:func:`train_network` is what ``gradtune train`` runs. The run settings come from a TOML
file (default the packaged ``gradtune/configs/<dataset>.toml`` with the paper's Table 3
values): ``[model]`` (``arch`` = ``resnet50`` with ``weights``, or ``bert`` with ``name``,
``pooling``, ``max_length``), ``[preprocess]`` (options of
:class:`~gradtune.models.transforms.ImagePreprocess`) and ``[erm]``
(:class:`~gradtune.training.config.TrainConfig` fields). The baselines read

* ``[jtt]``: ``epoch`` (T), ``lambda``, and ``[jtt.stage1]`` / ``[jtt.stage2]``:
  overrides of ``[erm]`` for the identification ERM (its ``epochs`` is the schedule
  length; training stops after T) and for the final model (default sampler
  ``uniform``: shuffled passes over the upsampled list);
* ``[group_dro]``: ``eta``, ``adj`` (C), and ``[group_dro.train]``: overrides of
  ``[erm]`` (strong weight decay; the sampler is always group-balanced).

Checkpoints go to ``OUT/checkpoints/last.pt`` (ERM, Group DRO) or ``OUT/{init.pt, stage1/,
error_set.json, stage2/}`` (JTT, see :mod:`gradtune.training.robust`) after every epoch;
``resume`` continues an interrupted run; ``OUT/train.json`` summarizes a finished one.
"""


from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gradtune._config_files import CONFIG_DIR, read_toml, run_config_path
from gradtune._errors import GradTuneInputError, parse_int
from gradtune.workflows.network_methods import (
    NETWORK_METHODS,
    GroupDRONetwork,
    JTTNetwork,
    get_network_method,
)

logger = logging.getLogger(__name__)

__all__ = ["CONFIG_DIR", "MODEL_ARCHS", "METHODS", "load_run_config", "build_model", "train_network"]

MODEL_ARCHS = ("resnet50", "resnet", "bert")
METHODS = tuple(NETWORK_METHODS)
"""The full-network methods' names (:data:`~gradtune.workflows.network_methods.NETWORK_METHODS`)."""


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
        path = run_config_path(dataset)
    return read_toml(path)


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
        width = parse_int(cfg.pop("width", 64), "model.width") if arch == "resnet" else 64
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


def _stage(base: dict[str, Any], overrides: Any, name: str, *, common: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(overrides, dict):
        raise GradTuneInputError(f"[{name}] must be a table of training settings, got {overrides!r}")
    return {**base, **overrides, **common}


def train_network(dataset: str, root: str | Path, out_dir: str | Path, *, method: str = "erm",
                  method_params: dict[str, Any] | None = None, config_file: str | Path | None = None,
                  seed: int = 0, resume: bool = False, epochs: int | None = None, device: str | None = None,
                  num_workers: int | None = None, keep_epochs: Sequence[int] = (),
                  progress: bool = True) -> dict[str, Any]:
    """Train a network on ``dataset`` (files under ``root``) into ``out_dir``; return the summary.

    ``method`` is one of :data:`METHODS` and ``method_params`` its parameters
    (:mod:`gradtune.workflows.network_methods`: JTT's ``epoch``, ``upweight``,
    ``erm_checkpoint``; Group DRO's ``eta``, ``adj``), checked against their declarations
    before anything is read; those not given come from the config's ``[jtt]`` /
    ``[group_dro]`` table. ``epochs``, ``device``, ``num_workers``, ``keep_epochs``,
    ``progress`` and ``seed`` apply to every training stage. The summary (also written to
    ``out_dir/train.json`` by the main process) holds the method's settings, the history,
    the checkpoint path and the final config; other ranks get ``{}``.
    """
    from gradtune._io import atomic_write_json
    from gradtune.models import distributed as gdist
    from gradtune.models.preprocess import make_preprocess
    from gradtune.models.resnet import ResNet
    from gradtune.models.transforms import ImagePreprocess
    from gradtune.training.config import TrainConfig
    from gradtune.training.trainer import seeded_scope, train

    runner = get_network_method(method, method_params)
    cfg = load_run_config(config_file, dataset)
    runner = runner.with_run_config(cfg)
    summary: dict[str, Any] = {}
    out = Path(out_dir)
    # Flags that apply to every training stage of every method.
    common: dict[str, Any] = {"seed": int(seed)}
    if epochs is not None:
        common["epochs"] = epochs
    if num_workers is not None:
        common["num_workers"] = num_workers
    if device is not None:
        common["device"] = device
    if keep_epochs:
        common["keep_epochs"] = tuple(int(e) for e in keep_epochs)
    if not progress:
        common["progress"] = False
    erm = dict(cfg.get("erm", {}))
    table = runner.run_table(cfg)
    settings = runner.summary()
    if isinstance(runner, JTTNetwork):
        config = TrainConfig.from_dict(_stage(erm, table.get("stage1", {}), "jtt.stage1", common=common))
        stage2 = TrainConfig.from_dict(_stage({**erm, "sampler": "uniform"}, table.get("stage2", {}),
                                              "jtt.stage2", common=common))
    elif isinstance(runner, GroupDRONetwork):
        dro = _stage(erm, table.get("train", {}), "group_dro.train", common=common)
        config = TrainConfig.from_dict({**dro, "sampler": "group_balanced",
                                        "checkpoint_dir": str(out / "checkpoints")})
        settings["dro_eta"] = float(settings["dro_eta"])
    else:
        config = TrainConfig.from_dict({**erm, **common, "checkpoint_dir": str(out / "checkpoints")})
    if method != "jtt" and not resume and (out / "checkpoints" / "last.pt").exists():
        raise GradTuneInputError(
            f"{out / 'checkpoints' / 'last.pt'} exists: resume that run (--resume) or choose another output folder"
        )

    info = gdist.init_distributed()
    try:
        from gradtune.data.registry import load_dataset

        data = load_dataset(dataset, root)
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
        meta = {"dataset": dataset, "root": str(Path(root).resolve()),
                "config_file": str(config_file) if config_file else f"packaged:{dataset}",
                "preprocess": {k: (list(v) if isinstance(v, tuple) else v) for k, v in prep_cfg.items()},
                "class_names": list(data.class_names), "group_names": list(data.group_names)}
        summary = {"dataset": dataset, "method": method, "seed": config.seed, **settings}
        if method == "jtt":
            from gradtune.training.robust import train_jtt

            spare = [model]  # built above under the same seed: the factory's first model

            def factory() -> Any:
                return spare.pop() if spare else build()

            res = train_jtt(factory, data, config, T=settings["jtt_epoch"], lam=settings["jtt_lambda"],
                            out_dir=out, seed=config.seed, preprocess=preprocess, stage2_config=stage2,
                            erm_checkpoint=settings["erm_checkpoint"], resume=resume, meta=meta)
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
                                      preprocess=preprocess, resume=resume, meta=meta)
            result = dro_res.train
            summary.update({"q": dro_res.q.tolist(), "group_counts": dro_res.group_counts.tolist()})
        else:
            result = train(model, data, config, preprocess=preprocess, resume=resume, meta=meta)
        if info.is_main:
            summary.update({"epochs": config.epochs, "resumed_from": result.resumed_from,
                            "checkpoint": str(result.checkpoint), "history": result.history,
                            "config": config.to_dict()})
            atomic_write_json(out / "train.json", summary)
            last = result.history[-1] if result.history else {}
            logger.info("trained %s (%s) for %d epochs (loss %.4f); checkpoint: %s", dataset, method, config.epochs,
                        last.get("loss", float("nan")), result.checkpoint)
        gdist.barrier()
    finally:
        gdist.cleanup()
    return summary
