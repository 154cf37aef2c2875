"""Small synthetic bundles and configs for the experiment tests (fast: tiny sets, few epochs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gradtune.embeddings.bundle import EmbeddingBundle
from gradtune.finetune.linear import FinetuneConfig, finetune_linear

GROUP_NAMES = ["y0,a0", "y0,a1", "y1,a0", "y1,a1"]


def toy_bundle(seed: int = 0, *, n_val: int = 160, n_test: int = 200, d: int = 6) -> EmbeddingBundle:
    """A spurious-correlation bundle: a strong attribute direction, a weak label direction.

    Splits: train (95% attribute/label agreement, ERM head fitted on it), val (50%, split into
    held-out / selection halves at load time by the run's seed), test (50%).
    """
    rng = np.random.default_rng(1000 + seed)
    parts = {"train": (400, 0.95), "val": (n_val, 0.5), "test": (n_test, 0.5)}
    xs, ys, as_, split = [], [], [], []
    for s, (n, agree) in parts.items():
        y = rng.integers(0, 2, n)
        a = np.where(rng.random(n) < agree, y, 1 - y)
        x = rng.normal(size=(n, d)).astype(np.float32)
        x[:, 0] += 1.5 * (2 * y - 1)
        x[:, 1] += 3.0 * (2 * a - 1)
        xs.append(x), ys.append(y), as_.append(a)
        split += [s] * n
    x, y, a = np.concatenate(xs), np.concatenate(ys), np.concatenate(as_)
    split = np.array(split)
    tr = split == "train"
    res = finetune_linear(x[tr], y[tr], np.zeros((2, d)), np.zeros(2),
                          FinetuneConfig(epochs=10, batch_size=64, lr=0.05, reset=True), seed=seed)
    return EmbeddingBundle(x, y, split, head_weight=res.weight.numpy(), head_bias=res.bias.numpy(),
                           groups=2 * y + a, attributes=a, group_names=GROUP_NAMES)


def write_bundles(folder: Path, names: tuple[str, ...] = ("toy-a", "toy-b")) -> dict[str, Path]:
    """One bundle file per benchmark name (each file serves every seed)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for i, name in enumerate(names):
        p = folder / f"{name}.npz"
        if not p.exists():
            toy_bundle(seed=7 * i).save(p)
        out[name] = p
    return out


def config_text(bundles: dict[str, Path], *, name: str = "toy", seeds: tuple[int, ...] = (0, 1),
                methods: tuple[str, ...] = ("erm", "random", "gradtune"), epochs: int = 5,
                extra: str = "", tables: tuple[str, ...] = ("table1",)) -> str:
    """A TOML config over ``bundles`` with tiny fine-tuning for every method that fine-tunes."""
    lines = ["[experiment]", f'name = "{name}"',
             "benchmarks = [" + ", ".join(f'"bundle:{p}"' for p in bundles.values()) + "]",
             f"seeds = {list(seeds)}", "methods = [" + ", ".join(f'"{m}"' for m in methods) + "]", ""]
    for m in methods:
        if m in ("random", "gradtune", "loss-topk"):
            lines += [f"[params.{m}]", f'"finetune.epochs" = {epochs}', "size = 40",
                      *(["top_k = 32"] if m != "random" else []), ""]
    lines += [extra, "", "[report]", "tables = [" + ", ".join(f'"{t}"' for t in tables) + "]", ""]
    return "\n".join(lines)
