"""Write the small synthetic example bundle shipped with gradtune.

The example imitates Waterbirds' structure with synthetic features (it is NOT real
data; the offline demo uses real data): a weak "core" direction carries the label, a
strong "spurious" direction carries an attribute that agrees with the label for 95%
of training rows and 50% of validation/test rows, plus noise dimensions. The ERM
head is a class-balanced linear model fitted on the train rows, so it leans on the
spurious direction, and its worst group is a minority group.

    python scripts/make_example_bundle.py src/gradtune/examples/spurious_example.npz
"""

from __future__ import annotations

import sys

import numpy as np

from gradtune.embeddings.bundle import EmbeddingBundle
from gradtune.finetune.linear import FinetuneConfig, finetune_linear


def make(seed: int = 0, d: int = 16) -> EmbeddingBundle:
    rng = np.random.default_rng(seed)
    sizes = {"train": 3000, "val": 1200, "test": 2000}
    agree = {"train": 0.95, "val": 0.5, "test": 0.5}
    feats, labels, attrs, split = [], [], [], []
    for name, n in sizes.items():
        y = rng.integers(0, 2, n)
        a = np.where(rng.random(n) < agree[name], y, 1 - y)
        x = rng.normal(size=(n, d)).astype(np.float32)
        x[:, 0] += 1.2 * (2 * y - 1)  # core: informative but noisy
        x[:, 1] += 2.5 * (2 * a - 1)  # spurious: easy
        feats.append(x)
        labels.append(y)
        attrs.append(a)
        split += [name] * n
    x, y, a = np.concatenate(feats), np.concatenate(labels), np.concatenate(attrs)
    split = np.asarray(split)
    tr = split == "train"
    res = finetune_linear(x[tr], y[tr], np.zeros((2, d), np.float32), np.zeros(2, np.float32),
                          FinetuneConfig(epochs=30, batch_size=64, lr=0.05, reset=True), seed=seed)
    w, b = res.weight.numpy(), res.bias.numpy()
    return EmbeddingBundle(
        features=x, labels=y, split=split, logits=x @ w.T + b, head_weight=w, head_bias=b,
        groups=2 * y + a, attributes=a, class_names=["class 0", "class 1"],
        group_names=["class 0, attr 0", "class 0, attr 1", "class 1, attr 0", "class 1, attr 1"],
        meta={"description": "synthetic example (not real data)", "seed": seed},
    )


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else "src/gradtune/examples/spurious_example.npz"
    make().save(out)
    print("wrote", out)
