"""Time and peak memory of the label-free pipelines at the paper's dataset sizes.

    python benchmarks/auto_cost.py [--sizes celeba multinli] [--methods gradtune-auto dfr-xrm dpe]
                                   [--param gradtune-auto:structure_scale='"standard"']

For each size, generated linear-Gaussian rows in float32 (a weak core signal and a
strong shortcut; the minority share of CelebA's training set), a class-balanced
logistic-regression ERM head (fitted on a 20,000-row sample of the training rows, to
keep the set-up short), and then one ``fit`` per method. Peak memory is the process's
resident high-water mark during the fit (``/proc/self/clear_refs`` resets it first)
minus what was resident before, reported as a multiple of the feature array's size
(the bundle's ``features`` and ``encoder_features`` are the same array here). Test
worst-group accuracy is printed beside ERM's. Linux only (reads ``/proc``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from gradtune.data.base import split_heldout
from gradtune.embeddings.bundle import EmbeddingBundle
from gradtune.methods import get_method
from gradtune.metrics import worst_group_accuracy

SIZES = {  # train, validation, test rows, dimension, classes (the paper's datasets)
    "celeba": (162_770, 19_867, 19_962, 2048, 2),
    "multinli": (206_175, 82_462, 123_712, 768, 3),
    "small": (20_000, 4_000, 4_000, 512, 2),
}
MINORITY = 0.009  # share of training rows against the shortcut (CelebA's blond men: 0.85%)


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def make_bundle(name: str, seed: int = 0) -> EmbeddingBundle:
    n_tr, n_val, n_te, d, c = SIZES[name]
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((d, 2 * c)))
    mu, nu = (1.0 * basis[:, :c].T).astype(np.float32), (3.0 * basis[:, c:].T).astype(np.float32)
    n = n_tr + n_val + n_te
    y = rng.integers(0, c, n)
    agree = np.where(np.arange(n) < n_tr + n_val, rng.random(n) >= MINORITY, rng.random(n) < 1.0 / c)
    a = np.where(agree, y, (y + rng.integers(1, c, n)) % c)
    x = np.empty((n, d), dtype=np.float32)
    for s in range(0, n, 50_000):  # chunks keep the set-up's own memory low
        e = min(n, s + 50_000)
        x[s:e] = rng.standard_normal((e - s, d), dtype=np.float32)
        x[s:e] += mu[y[s:e]] + nu[a[s:e]]
    split = np.array(["train"] * n_tr + ["val"] * n_val + ["test"] * n_te, dtype="<U9")
    held, sel = split_heldout(np.arange(n_tr, n_tr + n_val), seed)
    split[held], split[sel] = "heldout", "selection"
    from sklearn.linear_model import LogisticRegression

    sub = rng.choice(n_tr, size=min(n_tr, 20_000), replace=False)
    clf = LogisticRegression(class_weight="balanced", max_iter=300).fit(x[sub], y[sub])
    w, b = clf.coef_.astype(np.float32), clf.intercept_.astype(np.float32)
    if c == 2:
        w, b = np.stack([-w[0] / 2, w[0] / 2]), np.array([-b[0] / 2, b[0] / 2], dtype=np.float32)
    return EmbeddingBundle(features=x, labels=y, split=split, encoder_features=x, head_weight=w,
                           head_bias=b, groups=y * c + a, n_classes=c)


def wga(bundle: EmbeddingBundle, model) -> float:
    test = bundle.view("test")
    return worst_group_accuracy(np.asarray(model.logits(test.features)).argmax(1), test.labels, test.groups)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["celeba"], choices=sorted(SIZES))
    ap.add_argument("--methods", nargs="+", default=["gradtune-auto", "dfr-xrm", "dpe"])
    ap.add_argument("--param", action="append", default=[], metavar="METHOD:NAME=JSON",
                    help="a parameter of one method, e.g. gradtune-auto:half_folds=2")
    args = ap.parse_args(argv)
    params: dict[str, dict] = {}
    for item in args.param:
        head, _, value = item.partition("=")
        meth, _, name = head.partition(":")
        if not (meth and name and value):
            ap.error(f"--param takes METHOD:NAME=JSON, got {item!r}")
        params.setdefault(meth, {})[name] = json.loads(value)
    for name in args.sizes:
        t = time.perf_counter()
        bundle = make_bundle(name)
        feat_mb = bundle.features.nbytes / 2**20
        from gradtune.methods.base import erm_head

        print(f"{name}: {bundle.features.shape[0]:,} rows x {bundle.features.shape[1]} features "
              f"({feat_mb:,.0f} MiB), set-up {time.perf_counter() - t:.0f} s; ERM test WGA "
              f"{100 * wga(bundle, erm_head(bundle)):.1f}", flush=True)
        for meth in args.methods:
            base = _status_kb("VmRSS")
            _reset_peak()
            t = time.perf_counter()
            res = get_method(meth, **params.get(meth, {})).fit(bundle, seed=0)
            sec = time.perf_counter() - t
            peak_mb = (_status_kb("VmHWM") - base) / 1024
            print(f"  {meth:>14s}: {sec:6.1f} s, peak +{peak_mb:,.0f} MiB = {peak_mb / feat_mb:.2f}x the "
                  f"features; test WGA {100 * wga(bundle, res.model):.1f}"
                  + (" (ERM head kept)" if (res.diagnostics or {}).get("guard_kept_erm") else ""),
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
