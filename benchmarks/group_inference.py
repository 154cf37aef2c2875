"""Label-free group inference on a held-out pool that carries the training bias.

The CelebA-like variant of ``fmnist-spurious``: 8,000 validation images whose
background agrees with the class for 95% of them, as in training, so the held-out
half (4,000 rows) holds about 5% minority. For each seed, the validation rows are
halved into a held-out pool and a selection half, the ERM MLP is trained on the
training rows (and, for the early-stop signal, the same seed's run stopped after one
epoch), and every method in ``gradtune.groups`` infers pseudo-groups of the pool
without group labels. Purity and recall of the inferred minority against the true
groups are printed per method, with the time each took (true groups are used for
this diagnostic only). For XRM and the GCE probe, the fitted model also labels the
selection half, which it never saw.

    python benchmarks/group_inference.py [--seeds 0 1 2] [--methods xrm gce ...]

The first run encodes 12,800 images (cached afterwards, see the README).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from functools import partial

import numpy as np

from gradtune.data.base import split_heldout
from gradtune.data.offline.fmnist import load_fmnist_spurious
from gradtune.experiments.offline import OFFLINE_BENCHMARKS, encode_benchmark
from gradtune.groups import InferredGroups, XRMConfig, infer_groups, inference_quality
from gradtune.models.mlp import train_erm_mlp

RUNS = {
    # name: (registered method, options, what it reads)
    "xrm": ("xrm", {}, "encoder features"),
    "xrm (held-out twin)": ("xrm", {"rule": "held-out"}, "encoder features"),
    "xrm (no flips)": ("xrm", {"config": XRMConfig(flip_start=10**9)}, "encoder features"),
    "gce": ("gce", {}, "encoder features"),
    "cluster": ("cluster", {}, "encoder features"),
    "early-disagreement": ("early-disagreement", {}, "ERM logits, final and epoch 1"),
    "grad-norm": ("grad-norm", {"fraction": 0.1}, "ERM head, penultimate features"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=list(RUNS), choices=list(RUNS), metavar="NAME")
    ap.add_argument("--n-val", type=int, default=8000)
    ap.add_argument("--agreement", type=float, default=0.95,
                    help="background/class agreement in validation and test")
    args = ap.parse_args()

    bench = OFFLINE_BENCHMARKS["fmnist-spurious"]
    bench = replace(bench, load=partial(load_fmnist_spurious, n_val=args.n_val,
                                        eval_agreement=args.agreement))
    data = bench.load()
    t0 = time.perf_counter()
    feats, enc = encode_benchmark(bench, data, progress=False)
    print(f"encoder features {feats.shape} in {time.perf_counter() - t0:.1f} s "
          f"(cache hit: {enc['cache_hit']})")
    train_idx = np.flatnonzero(data.split == 0)
    val_idx = np.flatnonzero(data.split == 1)

    header = f"{'method':<22} {'seed':>4} {'pool':>5} {'true':>5} {'found':>5} " \
             f"{'purity':>7} {'recall':>7} {'time s':>7}   selection half: purity / recall"
    print(header)
    print("-" * len(header))
    summary: dict[str, list[tuple[float, float, float]]] = {m: [] for m in args.methods}
    for seed in args.seeds:
        pool, sel = split_heldout(val_idx, seed)
        erm = train_erm_mlp(feats, data.labels, train_idx, seed=seed, n_classes=data.n_classes,
                            config=bench.mlp)
        early = train_erm_mlp(feats, data.labels, train_idx, seed=seed, n_classes=data.n_classes,
                              config=replace(bench.mlp, epochs=1))
        inputs = {
            "features": feats[pool], "labels": data.labels[pool], "seed": seed,
            "logits": erm.logits[pool], "early_logits": early.logits[pool],
            "head_features": erm.penultimate[pool], "weight": erm.head_weight, "bias": erm.head_bias,
        }
        for name in args.methods:
            method, options, _ = RUNS[name]
            t = time.perf_counter()
            r = infer_groups(method, **inputs, **options)
            elapsed = time.perf_counter() - t
            q = inference_quality(r, data.labels[pool], data.groups[pool])
            extra = _selection(r, feats[sel], data.labels[sel], data.groups[sel])
            summary[name].append((q.purity, q.recall, elapsed))
            print(f"{name:<22} {seed:>4} {len(pool):>5} {q.n_true:>5} {q.n_inferred:>5} "
                  f"{q.purity:>7.3f} {q.recall:>7.3f} {elapsed:>7.2f}   {extra}")
    print("\nmean over seeds (what each method reads):")
    for name, rows in summary.items():
        a = np.array(rows)
        print(f"{name:<22} purity {np.nanmean(a[:, 0]):.3f}  recall {np.nanmean(a[:, 1]):.3f}  "
              f"time {a[:, 2].mean():.2f} s   ({RUNS[name][2]})")


def _selection(r: InferredGroups, x: np.ndarray, y: np.ndarray, g: np.ndarray) -> str:
    """Purity / recall of the fitted model's groups on the selection half, where it has one."""
    model = r.info.get("twins") or r.info.get("probe")
    if model is None:
        return ""
    q = inference_quality(model.assign(x, y), y, g)
    return f"{q.purity:.3f} / {q.recall:.3f}"


if __name__ == "__main__":
    main()
