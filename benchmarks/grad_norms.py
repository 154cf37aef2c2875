"""Speed of gradtune.grad_norms against torch.func per-sample gradients and a single read.

For each size (the paper's four held-out sets and 1M x 2048) it prints the median time of:
  * torch     : grad_norms(..., backend="torch"): BLAS logits, then row norms (two passes)
  * fused     : grad_norms(..., backend="fused"): the numba single-pass kernel (gradtune[fast];
                "n/a" without numba)
  * torch.func: vmap(grad(loss)) over samples, then the norm (the usual per-sample-gradient route)
  * read once : features.sum(), a lower bound for anything that must read the features
(torch, fused and read once are timed round-robin, so load from other processes hits them alike)
and the ratios the project targets: >= 10x faster than torch.func, <= 2x the read-once time
(for the default backend="auto", which is "fused" at these sizes when numba is installed).
Then it streams 1M x 2048 from a memory-mapped .npy file (each backend) and reports the extra memory.

    python benchmarks/grad_norms.py [--skip-1m] [--repeat 5] [--tmpdir DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time

import numpy as np
import torch
from torch.func import grad, vmap

from gradtune import grad_norms, grad_norms_streaming
from gradtune.scores import _fused

BACKENDS = ["torch", "fused"] if _fused.available() else ["torch"]

SIZES = [(600, 2048, 2, "Waterbirds held-out"), (9934, 2048, 2, "CelebA held-out"),
         (22590, 768, 2, "CivilComments held-out"), (41231, 768, 3, "MultiNLI held-out"),
         (1_000_000, 2048, 2, "1M x 2048")]


def timeit(fn, repeat):
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def timeit_interleaved(fns, repeat):
    """Median time of each of ``fns`` (name -> callable), run round-robin so that load from
    other processes on a shared machine hits them alike."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}


def func_norms(h, y, w, b, chunk=65536):
    def loss(params, x, t):
        z = x @ params[0].T + params[1]
        return torch.nn.functional.cross_entropy(z[None], t[None])

    per = vmap(grad(loss), in_dims=(None, 0, 0))
    out = []
    for s in range(0, h.shape[0], chunk):  # chunked so 1M x 2048 per-sample grads fit in memory
        gw, gb = per((w, b), h[s:s + chunk], y[s:s + chunk])
        out.append((gw.flatten(1).square().sum(1) + gb.square().sum(1)).sqrt())
    return torch.cat(out)


def rss_anon_mb():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def bench_size(n: int, d: int, c: int, name: str, rep: int) -> None:
    g = torch.Generator().manual_seed(0)
    h = torch.randn(n, d, generator=g)
    y = torch.randint(0, c, (n,), generator=g)
    w = torch.randn(c, d, generator=g) * 0.02
    b = torch.zeros(c)
    fns = {be: (lambda be=be: grad_norms(h, labels=y, weight=w, bias=b, backend=be)) for be in BACKENDS}
    t = timeit_interleaved({**fns, "read": lambda: h.sum()}, rep)
    t_read = t.pop("read")
    t_func = timeit(lambda: func_norms(h, y, w, b), 1 if n >= 1_000_000 else rep)
    ref = func_norms(h[:1000], y[:1000], w, b)
    ok = all(torch.allclose(grad_norms(h[:1000], labels=y[:1000], weight=w, bias=b, backend=be), ref, rtol=1e-4)
             for be in BACKENDS)
    best = min(t.values())
    cols = "".join(f"{t[be] * 1e3:8.1f}ms" if be in t else f"{'n/a':>10s}" for be in ["torch", "fused"])
    ratios = "".join(f"{t[be] / t_read:10.2f}x" if be in t else f"{'n/a':>11s}" for be in ["torch", "fused"])
    print(f"{name:>24s}{cols} {t_func * 1e3:9.1f}ms {t_read * 1e3:8.1f}ms "
          f"{t_func / best:8.1f}x {ratios}{'' if ok else ' MISMATCH'}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-1m", action="store_true")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--tmpdir", default=None)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, fp32, median of {args.repeat}")
    print(f"{'size':>24s}{'torch':>10s}{'fused':>10s} {'torch.func':>11s} {'read once':>10s} {'func/best':>9s}"
          f"{'torch/read':>11s}{'fused/read':>11s}")
    for n, d, c, name in SIZES:
        if n >= 1_000_000 and args.skip_1m:
            continue
        bench_size(n, d, c, name, args.repeat if n < 1_000_000 else max(1, args.repeat // 2))
    if args.skip_1m:
        return
    n, d = 1_000_000, 2048
    with tempfile.TemporaryDirectory(dir=args.tmpdir) as tmp:
        path = os.path.join(tmp, "feats.npy")
        mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
        rng = np.random.default_rng(0)
        for s in range(0, n, 50_000):
            mm[s:s + 50_000] = rng.standard_normal((min(50_000, n - s), d), dtype=np.float32)
        mm.flush()
        del mm
        labels = rng.integers(0, 2, n)
        w = rng.normal(size=(2, d)).astype(np.float32) * 0.02
        feats = np.load(path, mmap_mode="r")
        base = rss_anon_mb()
        peak = [base]
        stop = threading.Event()

        def watch():
            while not stop.is_set():
                peak[0] = max(peak[0], rss_anon_mb())
                time.sleep(0.01)

        th = threading.Thread(target=watch)
        th.start()
        for be in BACKENDS:
            t = time.perf_counter()
            out = grad_norms_streaming(feats, labels, weight=w, bias=np.zeros(2, np.float32), backend=be)
            dt = time.perf_counter() - t
            print(f"streaming 1M x 2048 from a memory-mapped .npy ({os.path.getsize(path) / 2**30:.1f} GiB), "
                  f"backend={be}: {dt:.2f} s, extra anonymous memory so far {peak[0] - base:.0f} MB "
                  f"(target < 1024 MB), output {out.shape}")
        stop.set()
        th.join()


if __name__ == "__main__":
    main()
