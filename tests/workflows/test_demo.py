"""A miniature end-to-end demo run on synthetic bundles: report files with sane values; resume."""

import numpy as np
import pandas as pd
import pytest

from gradtune.embeddings.bundle import EmbeddingBundle
from gradtune.finetune.linear import FinetuneConfig, finetune_linear
from gradtune.results.store import ResultStore
from gradtune.workflows.demo import DemoConfig, run_demo

CALLS = []


def toy_build(name, seed, *, cache_dir=None, progress=True):
    """A small spurious-correlation bundle: strong attribute direction, weak label direction."""
    CALLS.append((name, seed))
    rng = np.random.default_rng(100 + seed + (7 if name == "toy-b" else 0))
    parts = {"train": (600, 0.95), "heldout": (160, 0.5), "selection": (160, 0.5), "test": (400, 0.5)}
    xs, ys, as_, split = [], [], [], []
    for s, (n, agree) in parts.items():
        y = rng.integers(0, 2, n)
        a = np.where(rng.random(n) < agree, y, 1 - y)
        x = rng.normal(size=(n, 6)).astype(np.float32)
        x[:, 0] += 1.5 * (2 * y - 1)
        x[:, 1] += 3.0 * (2 * a - 1)
        xs.append(x), ys.append(y), as_.append(a)
        split += [s] * n
    x, y, a = np.concatenate(xs), np.concatenate(ys), np.concatenate(as_)
    split = np.array(split)
    tr = split == "train"
    res = finetune_linear(x[tr], y[tr], np.zeros((2, 6)), np.zeros(2),
                          FinetuneConfig(epochs=20, batch_size=64, lr=0.05, reset=True), seed=seed)
    return EmbeddingBundle(x, y, split, head_weight=res.weight.numpy(), head_bias=res.bias.numpy(),
                           groups=2 * y + a, attributes=a, group_names=["y0,a0", "y0,a1", "y1,a0", "y1,a1"])


@pytest.mark.slow
def test_mini_demo_end_to_end(tmp_path):
    ft = FinetuneConfig(epochs=15)
    cfg = DemoConfig(benchmarks=["toy-a", "toy-b"], seeds=[0, 1], out=tmp_path / "report",
                     cache_dir=tmp_path / "cache", progress=False,
                     methods=["erm", "random", "loss-topk", "gradtune", "dfr"],
                     method_params={m: {"finetune": ft} for m in ("random", "loss-topk", "gradtune")})
    CALLS.clear()
    res = run_demo(cfg, build=toy_build)
    out = tmp_path / "report"
    for f in ("results.csv", "report.md", "report.html", "figures/toy-a-gradnorms.png",
              "figures/toy-b-group-accuracy.png"):
        assert (out / f).exists() and (out / f).stat().st_size > 0, f
    df = pd.read_csv(out / "results.csv")
    assert len(df) == 2 * 2 * 5
    assert df["accuracy"].between(0, 1).all() and df["worst_group_accuracy"].between(0, 1).all()
    assert (df["worst_group_accuracy"] <= df["accuracy"] + 1e-12).all()
    # ERM leans on the attribute: its WGA is clearly below its accuracy on this toy data
    erm = df[df["method"] == "erm"]
    assert (erm["worst_group_accuracy"] < erm["accuracy"] - 0.1).all()
    table = res["table"]
    assert set(table["Method"]) == {"erm", "random", "loss-topk", "gradtune", "dfr"}
    assert table.set_index("Method").loc["dfr", "Group labels (val)"] == "✓"
    assert table.set_index("Method").loc["gradtune", "Group labels (val)"] == "✗"
    md = (out / "report.md").read_text()
    assert "toy-a" in md and "WGA" in md and "gradtune" in md
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 4
    # the report's numbers are the stored records' numbers (one results store for everything)
    store = ResultStore(out / "runs" / "results.sqlite", readonly=True)
    assert store.counts() == {"running": 0, "done": 20, "failed": 0}
    (rec,) = store.records(benchmark="toy-a", seed=0, method="gradtune")
    assert len(store.norms(benchmark="toy-a")) == 2  # ERM held-out gradient norms per seed (Fig. 2/4)
    row = df[(df["benchmark"] == "toy-a") & (df["seed"] == 0) & (df["method"] == "gradtune")].iloc[0]
    assert row["worst_group_accuracy"] == pytest.approx(rec["evaluation"]["test"]["worst_group_accuracy"])
    assert len(CALLS) == 4

    # Second run: bundles come from the cache and every run record is reused.
    CALLS.clear()
    res2 = run_demo(cfg, build=toy_build)
    assert CALLS == [] and res2["counts"] == {"new": 0, "reused": 20}


def test_text_benchmarks_get_the_papers_text_optimizer():
    from dataclasses import asdict

    from gradtune.finetune.linear import FinetuneConfig
    from gradtune.methods.tuning import build_method
    from gradtune.workflows.demo import DemoConfig, _specs, family_params

    text = family_params("gradtune", "reviews")
    assert text == {"finetune.optimizer": "adamw", "finetune.lr": 1e-5, "finetune.schedule": "linear",
                    "finetune.batch_size": 16}
    assert asdict(build_method("gradtune", text).finetune) == asdict(FinetuneConfig.for_text())
    assert family_params("gradtune", "fmnist-biased") == {} and family_params("gradtune", "adult") == {}
    assert family_params("dfr", "reviews") == {}          # no fine-tuning loop: nothing to set
    specs = _specs(DemoConfig(benchmarks=("reviews", "fmnist-spurious"), seeds=(0,), methods=("gradtune",)))
    assert dict(specs[0].params) == text and specs[1].params == ()
