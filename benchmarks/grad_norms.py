"""Speed of gradtune.grad_norms against torch.func per-sample gradients and a single read.

For each size (the paper's four held-out sets and 1M x 2048) and each entry point
(logits given: grad_norms(h, logits, labels); head given: grad_norms(h, labels=, weight=, bias=))
it prints the median time of:
  * torch     : backend="torch": row norms, plus BLAS logits when the head is given
  * fused     : backend="fused": the numba single-pass kernels (gradtune[fast]; "n/a" without numba)
  * torch.func: vmap(grad(loss)) over samples, then the norm (the usual per-sample-gradient route)
  * read once : features.sum(), a lower bound for anything that must read the features
(torch, fused and read once are timed in bursts taken round-robin, so load from other processes
hits them alike; see timeit_interleaved)
and the ratios the project targets: >= 10x faster than torch.func, fused <= 1.3x and torch <= 2x
the read-once time (the default backend="auto" is "fused" at these sizes when numba is installed).
Each ratio to the read is the median over rounds of the ratio within one round, to a read burst
taken right after the function's burst, so that memory bandwidth drifting between rounds on a
shared machine cancels; the printed times are medians over rounds.
Then it streams 1M x 2048 from a memory-mapped .npy file (each backend) and reports the extra memory.

    python benchmarks/grad_norms.py [--skip-1m] [--repeat 9] [--tmpdir DIR] [--device cuda]

With --device cuda the features, labels and head live on the GPU: the torch backend runs
there (the fused kernel is CPU-only, so its column reads n/a), every timed call ends with
torch.cuda.synchronize(), and the 1M-row streaming part (a CPU memory-map) is skipped.
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import tempfile
import threading
import time

import numpy as np
import torch

from gradtune import grad_norms, grad_norms_streaming
from gradtune.scores import _fused

_gn = importlib.import_module("gradtune.scores.grad_norms")  # the module; gradtune.scores re-exports the function

BACKENDS = ["torch", "fused"] if _fused.available() else ["torch"]
DEVICE = torch.device("cpu")  # --device; set in main()

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


def timeit_interleaved(fns, repeat, burst_seconds=0.05, per_round=False, settle_seconds=0.02):
    """Median time of each of ``fns`` (name -> callable), timed in bursts taken round-robin
    (with ``per_round``: the list of per-burst times, one per round, instead).

    Round-robin so that load from other processes on a shared machine hits every function
    alike; bursts (back-to-back calls for ~burst_seconds, median per call) because torch
    and numba each keep their own OpenMP thread pool, whose idle threads spin for a while
    after each parallel call: alternating the two call by call would make each wait for
    the other's spinning threads, which a program calling one of them repeatedly does not.
    For the same reason each burst starts ``settle_seconds`` after the previous one ends,
    by when the other pool's threads have stopped spinning and sleep.
    """
    for fn in fns.values():
        fn()
    calls = {}
    for name, fn in fns.items():  # calls per burst, from one timed call
        t = time.perf_counter()
        fn()
        calls[name] = max(1, min(200, int(burst_seconds / max(time.perf_counter() - t, 1e-7))))
    times = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            time.sleep(settle_seconds)
            burst = []
            for _ in range(calls[name]):
                t = time.perf_counter()
                fn()
                burst.append(time.perf_counter() - t)
            times[name].append(statistics.median(burst))
    return times if per_round else {name: statistics.median(ts) for name, ts in times.items()}


def timeit_paired(fns, base, repeat):
    """Per function of ``fns``: (median time, median over rounds of its time over that of a
    burst of ``base`` timed right after it in the same round), from :func:`timeit_interleaved`;
    and the median time of ``base`` over all its bursts."""
    order = {}
    for name, fn in fns.items():
        order[(name, "fn")] = fn
        order[(name, "base")] = base
    rounds = timeit_interleaved(order, repeat, per_round=True)
    paired = {}
    for name in fns:
        fn_t, base_t = rounds[(name, "fn")], rounds[(name, "base")]
        paired[name] = (statistics.median(fn_t), statistics.median(t / b for t, b in zip(fn_t, base_t, strict=True)))
    return paired, statistics.median(t for name in fns for t in rounds[(name, "base")])


def func_norms(h, y, w, b, chunk=65536):
    from torch.func import grad, vmap  # imported late: see main()

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


def make_inputs(n: int, d: int, c: int):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(n, d, generator=g)
    y = torch.randint(0, c, (n,), generator=g)
    w = torch.randn(c, d, generator=g) * 0.02
    return h.to(DEVICE), y.to(DEVICE), w.to(DEVICE), torch.zeros(c, device=DEVICE)


def synced(fn):
    """``fn`` followed by a CUDA synchronize on a GPU, so a timer sees the finished work."""
    if DEVICE.type != "cuda":
        return fn

    def call():
        out = fn()
        torch.cuda.synchronize(DEVICE)
        return out
    return call


def bench_gradtune(n: int, d: int, c: int, rep: int) -> dict:
    """Times of each (entry point, backend) and of one read, in a process without torch.func."""
    h, y, w, b = make_inputs(n, d, c)
    z = torch.addmm(b, h, w.T)  # (N, C) logits for the logits-given entry point
    fns = {}
    for be in BACKENDS:
        fns[("head", be)] = synced(lambda be=be: grad_norms(h, labels=y, weight=w, bias=b, backend=be))
        fns[("logits", be)] = synced(lambda be=be: grad_norms(h, z, y, backend=be))
    paired, t_read = timeit_paired(fns, synced(lambda: h.sum()), rep)
    t = {name: v[0] for name, v in paired.items()}
    t["ratio"] = {name: v[1] for name, v in paired.items()}
    t["read"] = t_read
    t["auto"] = "fused" if _gn._use_fused("auto", h, c, False) else "torch"
    return t


def bench_func(n: int, d: int, c: int, rep: int) -> tuple[float, bool]:
    """Time of torch.func per-sample gradients, and whether every backend matches them."""
    h, y, w, b = make_inputs(n, d, c)
    t_func = timeit(synced(lambda: func_norms(h, y, w, b)), 1 if n >= 1_000_000 else rep)
    ref = func_norms(h[:1000], y[:1000], w, b)
    z = torch.addmm(b, h[:1000], w.T)
    ok = all(torch.allclose(grad_norms(h[:1000], labels=y[:1000], weight=w, bias=b, backend=be), ref, rtol=1e-4)
             and torch.allclose(grad_norms(h[:1000], z, y[:1000], backend=be), ref, rtol=1e-4)
             for be in BACKENDS)
    return t_func, ok


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-1m", action="store_true")
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--tmpdir", default=None)
    ap.add_argument("--device", default="cpu", help="cpu, or cuda[:k] for tensors on a GPU")
    args = ap.parse_args()
    global DEVICE, BACKENDS
    DEVICE = torch.device(args.device)
    if DEVICE.type == "cuda":
        if not torch.cuda.is_available():
            ap.error(f"--device {args.device}: torch {torch.__version__} sees no CUDA device")
        BACKENDS = ["torch"]  # the fused kernel reads CPU memory only
        args.skip_1m = True
    sizes = [s for s in SIZES if not (args.skip_1m and s[0] >= 1_000_000)]
    reps = {n: args.repeat for n, *_ in sizes}
    # Importing torch.func was measured to slow every later torch call in the process (at
    # 600 x 2048: read once 125 -> 180-230 us, the torch backend 600 -> 720-820 us), so
    # gradtune and the read are timed first, for all sizes, and torch.func after.
    gt = {name: bench_gradtune(n, d, c, reps[n]) for n, d, c, name in sizes}
    fn = {name: bench_func(n, d, c, reps[n]) for n, d, c, name in sizes}
    where = (f"{torch.cuda.get_device_name(DEVICE)}" if DEVICE.type == "cuda"
             else f"CPU, threads {torch.get_num_threads()}")
    print(f"torch {torch.__version__}, {where}, fp32, median of {args.repeat} bursts")
    print(f"{'size':>24s}{'entry':>8s}{'torch':>10s}{'fused':>10s}{'torch.func':>12s}{'read once':>11s}"
          f"{'func/torch':>11s}{'func/fused':>11s}{'torch/read':>11s}{'fused/read':>11s}")
    for _, _, _, name in sizes:
        t, (t_func, ok) = gt[name], fn[name]
        for entry in ("logits", "head"):
            tb = {be: t[(entry, be)] for be in BACKENDS}
            cols = "".join(f"{tb[be] * 1e3:8.2f}ms" if be in tb else f"{'n/a':>10s}" for be in ["torch", "fused"])
            speed = "".join(f"{t_func / tb[be]:10.1f}x" if be in tb else f"{'n/a':>11s}" for be in ["torch", "fused"])
            ratios = "".join(f"{t['ratio'][(entry, be)]:10.2f}x" if be in tb else f"{'n/a':>11s}"
                             for be in ["torch", "fused"])
            print(f"{name:>24s}{entry:>8s}{cols}{t_func * 1e3:10.2f}ms{t['read'] * 1e3:9.2f}ms"
                  f"{speed}{ratios}{'' if ok else ' MISMATCH'}")
    print("targets: fused/read <= 1.3x, torch/read <= 2x, func/(torch or fused) >= 10x; "
          f"backend='auto' at these sizes: {', '.join(sorted({gt[name]['auto'] for *_, name in sizes}))}")
    limits = {"fused": 1.3, "torch": 2.0}
    missed = [f"{name} {entry} {be} {gt[name]['ratio'][(entry, be)]:.2f}x"
              for *_, name in sizes for entry in ("logits", "head") for be in BACKENDS
              if gt[name]["ratio"][(entry, be)] > limits[be]]
    missed += [f"{name} {entry} {be} func/{be} {fn[name][0] / gt[name][(entry, be)]:.1f}x"
               for *_, name in sizes for entry in ("logits", "head") for be in BACKENDS
               if fn[name][0] / gt[name][(entry, be)] < 10]
    print("missed: " + ("; ".join(missed) if missed else "none"))
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
