"""Wall time of every registered last-layer method, default parameters, on one bundle.

A synthetic bundle of Waterbirds-like size (held-out 600 x 1280 features, selection 600,
test 5000, train 2000; two classes, a spurious attribute that agrees with the label on
95% of train rows and half of the others) stands in for real embeddings. Each method is
fitted for ``--seeds`` seeds; the time of ``fit`` plus the test logits is printed per
method, with the test accuracy and worst-group accuracy (a sanity check, not a result).

The issue's target: all last-layer methods, 3 seeds, under 2 minutes on 2 cores.

    python benchmarks/all_methods.py [--seeds 3] [--d 1280] [--methods dfr afr ...]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
from sklearn.linear_model import LogisticRegression

from gradtune.embeddings.bundle import EmbeddingBundle
from gradtune.methods import get_method, list_methods


def make_bundle(*, d: int, n_train: int, n_heldout: int, n_selection: int, n_test: int,
                seed: int = 0) -> EmbeddingBundle:
    """Features ``0.5 + s_y * u + 2 * s_a * v + N(0, I)`` (u, v two coordinates), an ERM head
    fitted on train by class-balanced logistic regression, its logits and an early head's."""
    rng = np.random.default_rng(seed)
    parts = []
    for name, n, align in (("train", n_train, 0.95), ("heldout", n_heldout, 0.5),
                           ("selection", n_selection, 0.5), ("test", n_test, 0.5)):
        y = rng.integers(0, 2, n)
        a = np.where(rng.random(n) < align, y, 1 - y)
        h = 0.5 + rng.normal(size=(n, d))
        h[:, 0] += 2.0 * y - 1.0
        h[:, 1] += 2.0 * (2.0 * a - 1.0)
        parts.append((h.astype(np.float32), y, a, np.full(n, name)))
    h, y, a, split = (np.concatenate([p[i] for p in parts]) for i in range(4))
    tr = split == "train"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        heads = [LogisticRegression(C=1.0, class_weight="balanced", max_iter=it).fit(h[tr], y[tr])
                 for it in (300, 2)]

    def two_class(lr: LogisticRegression) -> tuple[np.ndarray, np.ndarray]:
        w, b = lr.coef_[0], lr.intercept_[0]
        return np.stack([-w / 2, w / 2]).astype(np.float32), np.array([-b / 2, b / 2], dtype=np.float32)

    (w, b), (we, be) = two_class(heads[0]), two_class(heads[1])
    return EmbeddingBundle(features=h, labels=y, split=split, logits=h @ w.T + b, early_logits=h @ we.T + be,
                           head_weight=w, head_bias=b, groups=2 * y + a, attributes=a, n_classes=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--d", type=int, default=1280)
    parser.add_argument("--n-heldout", type=int, default=600)
    parser.add_argument("--n-test", type=int, default=5000)
    parser.add_argument("--methods", nargs="*", default=None, help="default: every registered method")
    args = parser.parse_args()

    t0 = time.perf_counter()
    bundle = make_bundle(d=args.d, n_train=2000, n_heldout=args.n_heldout, n_selection=args.n_heldout,
                         n_test=args.n_test)
    test = bundle.view("test")
    print(f"bundle: d={args.d}, heldout={args.n_heldout}, test={args.n_test} "
          f"(built in {time.perf_counter() - t0:.1f} s); {args.seeds} seeds per method\n")
    print(f"{'method':<14} {'groups':<10} {'s/seed':>7} {'total s':>8} {'test acc':>9} {'test WGA':>9}")
    grand = 0.0
    for name in args.methods or list_methods():
        times, accs, wgas = [], [], []
        method = get_method(name)
        for seed in range(args.seeds):
            start = time.perf_counter()
            z = method.fit(bundle, seed=seed).model.logits(test.features)
            times.append(time.perf_counter() - start)
            pred = z.argmax(1)
            accs.append(float((pred == test.labels).mean()))
            wgas.append(min(float((pred[test.groups == g] == test.labels[test.groups == g]).mean())
                            for g in np.unique(test.groups)))
        grand += sum(times)
        print(f"{name:<14} {method.group_label_use:<10} {np.mean(times):7.2f} {sum(times):8.2f} "
              f"{np.mean(accs):9.3f} {np.mean(wgas):9.3f}")
    verdict = "within" if grand < 120 else "OVER"
    print(f"\ntotal: {grand:.1f} s for {args.seeds} seeds ({verdict} the 120 s target)")


if __name__ == "__main__":
    main()
