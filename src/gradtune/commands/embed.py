"""``gradtune embed``: cache a trained model's penultimate features and logits as an embedding bundle.

Example::

    gradtune embed --checkpoint runs/wb-erm-s0/checkpoints/last.pt --out runs/wb-erm-s0/embeddings.npz
    torchrun --nproc_per_node=4 -m gradtune.cli embed --checkpoint ... --out ...

The dataset defaults to the one recorded in the checkpoint (``--dataset``/``--root``
override it). The bundle holds features (N, d), logits (N, C), the head's weight and
bias, labels, groups, attributes and the official split of every row; it is written
atomically, and an existing bundle is kept unless ``--force`` is given.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gradtune._cli_flags import add_force, add_no_progress, add_quiet, progress_enabled
from gradtune._cli_types import device_arg
from gradtune._errors import GradTuneInputError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "embed", help="extract features and logits of a trained model into an embedding bundle",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a gradtune checkpoint (e.g. OUT/checkpoints/last.pt)")
    p.add_argument("--out", required=True, help="bundle path: FILE.npz, or a folder of .npy files")
    p.add_argument("--dataset", default=None, help="benchmark name (default: the checkpoint's)")
    p.add_argument("--root", default=None, help="dataset folder (default: the checkpoint's)")
    p.add_argument("--splits", default="train,val,test", help="comma-separated official splits to embed")
    p.add_argument("--batch-size", type=int, default=256, help="per-process batch size")
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--device", default=None, type=device_arg, help="e.g. cpu, cuda:0")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--encoder-checkpoint", default=None, metavar="CKPT",
                   help="a second gradtune checkpoint (e.g. the pretrained backbone before "
                        "fine-tuning): the inputs of its last linear layer are stored as the "
                        "bundle's encoder_features, which gradtune-auto's group inference reads")
    add_force(p, "replace an existing bundle", old=("--overwrite",))
    add_no_progress(p)
    add_quiet(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from gradtune.data.base import SPLIT_CODES
    from gradtune.embeddings.extract import save_embeddings
    from gradtune.models import distributed as gdist
    from gradtune.models.checkpoint import load_checkpoint, load_model
    from gradtune.models.preprocess import make_preprocess
    from gradtune.models.resnet import ResNet
    from gradtune.models.transforms import ImagePreprocess

    out = Path(args.out)
    for flag, src in (("--checkpoint", args.checkpoint), ("--encoder-checkpoint", args.encoder_checkpoint)):
        if src and (out.resolve() == Path(src).resolve() or out.resolve() in Path(src).resolve().parents):
            raise GradTuneInputError(f"--out {out} would overwrite the input {flag} {src}; choose another --out")
    if out.exists() and not args.force:
        print(f"{out} exists; keeping it (pass --force to replace it)", file=sys.stderr)
        return 0
    splits = [s.strip() for s in str(args.splits).split(",") if s.strip()]
    bad = [s for s in splits if s not in SPLIT_CODES]
    if bad or not splits:
        raise GradTuneInputError(f"--splits must list some of {list(SPLIT_CODES)}, got {args.splits!r}")
    ckpt = load_checkpoint(args.checkpoint)
    meta = ckpt.get("meta") or {}
    name = args.dataset or meta.get("dataset")
    root = args.root or meta.get("root")
    if not name or not root:
        raise GradTuneInputError(
            "the checkpoint does not record its dataset; pass --dataset NAME --root DIR"
        )
    info = gdist.init_distributed()
    try:
        from gradtune.data.registry import load_dataset

        data = load_dataset(name, root)
        model = load_model(args.checkpoint, device="cpu")
        _check_fits(model, data, args.checkpoint, meta.get("dataset"), name)
        if isinstance(model, ResNet):
            prep = dict(meta.get("preprocess") or {})
            if "crop_scale" in prep:
                prep["crop_scale"] = tuple(prep["crop_scale"])
            preprocess = ImagePreprocess(**prep)
        else:
            preprocess = make_preprocess(model, data)
        encoder = None
        if args.encoder_checkpoint:
            encoder = load_model(args.encoder_checkpoint, device="cpu")
        rows = np.flatnonzero(np.isin(data.split, [SPLIT_CODES[s] for s in splits]))
        if rows.size == 0:
            raise GradTuneInputError(f"{name}: no rows in splits {splits}")
        try:
            path = save_embeddings(model, data, out, rows, preprocess=preprocess, batch_size=args.batch_size,
                                   num_workers=args.num_workers, device=args.device, precision=args.precision,
                                   progress=progress_enabled(args), encoder=encoder,
                                   meta={"checkpoint": str(Path(args.checkpoint).resolve()),
                                         "epoch": int(ckpt.get("epoch", 0)),
                                         "encoder_checkpoint": (str(Path(args.encoder_checkpoint).resolve())
                                                                if args.encoder_checkpoint else None)})
        except RuntimeError as err:  # a shape torch could not apply: only another dataset's inputs explain it
            trained_on = meta.get("dataset")
            if not trained_on or trained_on == name:
                raise
            raise GradTuneInputError(f"--checkpoint {args.checkpoint} was trained on {trained_on!r} and does not "
                                     f"fit the inputs of dataset {name!r} ({' '.join(str(err).split())[:200]}); "
                                     f"pass --dataset {trained_on}, or a checkpoint trained on {name}") from None
        if info.is_main:
            print(f"wrote {rows.size} embeddings of {name} to {path}", file=sys.stderr)
    finally:
        gdist.cleanup()
    return 0


def _check_fits(model: object, data: object, checkpoint: str, trained_on: str | None, name: str) -> None:
    """Refuse a checkpoint whose head predicts another number of classes than the dataset has."""
    import torch

    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]  # type: ignore[attr-defined]
    n_out = linears[-1].out_features if linears else None
    if n_out is not None and n_out != data.n_classes:  # type: ignore[attr-defined]
        where = f" (trained on {trained_on!r})" if trained_on else ""
        raise GradTuneInputError(f"--checkpoint {checkpoint}{where} predicts {n_out} classes but dataset {name!r} "
                                 f"has {data.n_classes}; pass the checkpoint of a model trained on {name}"  # type: ignore[attr-defined]
                                 + (f", or --dataset {trained_on}" if trained_on else ""))
