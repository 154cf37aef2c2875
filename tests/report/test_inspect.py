"""inspect_groups and its gallery: every number recomputed here with numpy from the bundle,
the rows shown checked against their definition, and the real fmnist-biased benchmark's
inferred minorities checked to be its true minorities."""

from __future__ import annotations

import importlib.util
import re

import numpy as np
import pytest

from gradtune.embeddings.bundle import BundleError, EmbeddingBundle
from gradtune.report.gallery import row_inputs, write_gallery
from gradtune.report.inspect import inspect_groups

RED, BLUE = (200, 30, 30), (30, 60, 200)


def toy_bundle(seed: int = 0, agree_val: float = 0.9) -> tuple[EmbeddingBundle, np.ndarray]:
    """Two classes with a strong attribute (the background colour of an 8x8 image) that agrees
    with the class in 95% of the train rows; the ERM head reads the attribute only.

    Returns the bundle and the (N, 8, 8, 3) uint8 images of its rows.
    """
    rng = np.random.default_rng(seed)
    parts = {"train": (800, 0.95), "heldout": (300, agree_val), "selection": (300, agree_val), "test": (200, 0.5)}
    ys, as_, split = [], [], []
    for s, (n, agree) in parts.items():
        y = rng.integers(0, 2, n)
        ys.append(y)
        as_.append(np.where(rng.random(n) < agree, y, 1 - y))
        split += [s] * n
    y, a = np.concatenate(ys), np.concatenate(as_)
    x = rng.normal(size=(len(y), 6)).astype(np.float32)
    x[:, 0] += 1.0 * (2 * y - 1)
    x[:, 1] += 4.0 * (2 * a - 1)
    w = np.zeros((2, 6), dtype=np.float32)
    w[:, 1] = [-1.0, 1.0]
    images = np.empty((len(y), 8, 8, 3), dtype=np.uint8)
    images[:] = np.where(a[:, None, None, None] == 0, RED, BLUE)
    images[:, 2:6, 2:6] = np.where(y[:, None, None, None] == 0, 255, 0)  # the object: white or black
    b = EmbeddingBundle(x, y, np.array(split), logits=x @ w.T, encoder_features=x, head_weight=w,
                        head_bias=np.zeros(2, np.float32), groups=2 * y + a, attributes=a,
                        class_names=["white", "black"],
                        group_names=["white,red", "white,blue", "black,red", "black,blue"],
                        meta={"dataset": "toy"})
    return b, images


def test_groups_sizes_accuracy_and_rows_match_their_definitions():
    b, _ = toy_bundle()
    ins = inspect_groups(b, seed=0, n_rows=5)
    val = np.flatnonzero(np.isin(b.split, ["heldout", "selection"]))
    np.testing.assert_array_equal(np.sort(ins.rows), val)
    assert sum(g.size for g in ins.groups) == val.size == 600
    pred = np.argmax(b.logits, 1)
    where = {int(r): i for i, r in enumerate(ins.rows)}
    for g in ins.groups:
        members = ins.rows[ins.pseudo == g.group]
        assert g.size == members.size and np.all(b.labels[members] == g.label)
        np.testing.assert_allclose(g.erm_accuracy, np.mean(pred[members] == b.labels[members]))
        if not g.minority:
            assert g.shown.size == 0
            continue
        # typical: the 5 members nearest the members' mean, in features standardized per class
        ref = b.encoder_features[ins.rows[b.labels[ins.rows] == g.label]].astype(np.float64)
        z = b.encoder_features[members].astype(np.float64)
        d = np.linalg.norm((z - z.mean(0)) / ref.std(0), axis=1)
        assert set(g.typical.tolist()) == set(members[np.argsort(d)[:5]].tolist())
        # confident: no member left out has a higher minority score than a shown one
        s = np.array([ins.scores[where[int(r)]] for r in members])
        shown = np.isin(members, g.confident)
        assert shown.sum() == 5 and s[shown].min() >= s[~shown].max()
        # purity (diagnostic): share of shown rows whose stored group is a minority of the train rows
        tr = b.split == "train"
        counts = np.bincount(b.groups[tr], minlength=4)
        minority = [gg for gg in range(4) if counts[gg] < counts[2 * (gg // 2): 2 * (gg // 2) + 2].mean()]
        np.testing.assert_allclose(g.purity, np.isin(b.groups[g.shown], minority).mean())
    # the ERM head reads the attribute: the inferred minorities are where it fails
    assert all(g.erm_accuracy < 0.3 for g in ins.minorities)
    assert all(g.purity >= 0.8 for g in ins.minorities)


def test_gallery_shows_thumbnails_and_the_same_sections_in_markdown_and_html(tmp_path):
    b, images = toy_bundle()
    ins = inspect_groups(b, seed=0, n_rows=4)
    paths = write_gallery(ins, tmp_path, inputs=row_inputs(b, images))
    md, html = paths["markdown"].read_text(), paths["html"].read_text()
    md_heads = re.findall(r"^## (.+)$", md, flags=re.M)
    html_heads = [h.replace("&#x27;", "'") for h in re.findall(r"<h2>(.+?)</h2>", html)]
    assert md_heads == html_heads and md_heads[0] == "Inferred groups" and len(md_heads) == 3
    galleries = re.findall(r"<div class='gallery'.*?</div>", html)
    assert len(galleries) == 4  # typical and confident of each inferred minority
    for gal, g in zip(galleries, [g for g in ins.minorities for _ in range(2)], strict=True):
        assert gal.count("<img src='data:image/png;base64,") == 4
        for r in re.findall(r"row (\d+) ·", gal):
            assert int(r) in g.shown
    # the strips of the Markdown are PNGs of 4 upscaled 8x8 thumbnails (80 px each) and 3 gaps
    import matplotlib.image as mpimg

    for f in sorted((tmp_path / "gallery").glob("*.png")):
        assert f"gallery/{f.name}" in md
        assert mpimg.imread(f).shape[:2] == (80, 4 * 80 + 3 * 4)
    shown = np.concatenate([g.shown for g in ins.minorities])
    strip = mpimg.imread(tmp_path / "gallery" / "white-inferred-minority-typical.png")
    first = (strip[40, 5, :3] * 255).round()  # the background pixel of the first thumbnail
    assert tuple(first) == (BLUE if b.attributes[ins.minorities[0].typical[0]] == 1 else RED)
    assert b.attributes[shown].size > 0
    import json

    data = json.loads(paths["json"].read_text())
    assert [g["size"] for g in data["groups"]] == [g.size for g in ins.groups]


def test_text_and_tabular_rows(tmp_path):
    b, _ = toy_bundle()
    texts = [f"review {i} " + ("great " if y else "bad ") * 60 for i, y in enumerate(b.labels)]
    ins = inspect_groups(b, seed=0, n_rows=3)
    html = write_gallery(ins, tmp_path / "t", inputs=row_inputs(b, texts))["html"].read_text()
    snippets = re.findall(r"<div class='snippet'>(.*?)</div>", html)
    assert len(snippets) == 12 and all(len(s) <= 220 and s.endswith("…") for s in snippets)
    # tabular: the columns farthest from the class mean, in class standard deviations
    tab = row_inputs(b, b.features.astype(np.float64), columns=[f"c{j}" for j in range(6)])
    md = write_gallery(ins, tmp_path / "x", inputs=tab)["markdown"].read_text()
    r = int(ins.minorities[0].typical[0])
    line = next(ln for ln in md.splitlines() if ln.startswith(f"- row {r} ·"))
    cls = ins.rows[b.labels[ins.rows] == b.labels[r]]
    x = b.features.astype(np.float64)
    z = np.abs((x[r] - x[cls].mean(0)) / x[cls].std(0))
    assert line.split(": ", 1)[1].startswith(f"c{int(np.argmax(z))} = {x[r, np.argmax(z)]:.3g}")


def test_sources_array_and_bad_inputs(tmp_path):
    import matplotlib.image as mpimg

    b, images = toy_bundle()
    (tmp_path / "img").mkdir()
    names = []
    for i, im in enumerate(images):
        names.append(f"img/{i}.png")
        mpimg.imsave(tmp_path / names[-1], im)
    path = b.save(tmp_path / "b.npz")
    arrays = dict(np.load(path, allow_pickle=False))
    np.savez(path, **arrays, sources=np.array(names))
    inputs = row_inputs(b, bundle_path=path)
    assert inputs.kind == "image-file" and inputs.data[3] == tmp_path / "img" / "3.png"
    ins = inspect_groups(b, seed=0, n_rows=2)
    html = write_gallery(ins, tmp_path / "out", inputs=inputs)["html"].read_text()
    assert html.count("<img src='data:image/png;base64,") == 8
    with pytest.raises(BundleError, match="inputs has 3 rows but the bundle has"):
        row_inputs(b, ["a", "b", "c"])
    np.savez(path, **arrays, sources=np.array(names[:5]))
    with pytest.raises(BundleError, match="'sources' array has shape"):
        row_inputs(b, bundle_path=path)


def _fmnist_ready() -> str | None:
    from gradtune.data.offline.fmnist import find_fmnist_dir

    if importlib.util.find_spec("efficientnet_lite_pytorch") is None:
        return "needs efficientnet-lite-pytorch (the demo extra)"
    try:
        find_fmnist_dir()
    except Exception as err:  # noqa: BLE001 - any reason the files are missing is the skip reason
        return f"needs the Fashion-MNIST files: {err}"
    return None


@pytest.mark.slow
@pytest.mark.skipif(_fmnist_ready() is not None, reason=str(_fmnist_ready()))
@pytest.mark.parametrize("seed", [0, 1])
def test_fmnist_biased_gallery_shows_true_minorities(tmp_path, seed):
    """At least 80% of the rows shown for each inferred minority are true minority rows
    (stored groups: sneaker on blue, ankle boot on red), and the thumbnails show it."""
    from gradtune.experiments.offline import build_bundle

    b = build_bundle("fmnist-biased", seed, progress=False)
    ins = inspect_groups(b, seed=seed, n_rows=8)
    paths = write_gallery(ins, tmp_path)
    true_minority = [b.group_names.index("sneaker,blue"), b.group_names.index("ankle-boot,red")]
    assert len(ins.minorities) == 2
    for g in ins.minorities:
        assert g.shown.size >= 8
        share = np.isin(b.groups[g.shown], true_minority).mean()
        assert share >= 0.8, (g.name, share)
    # the thumbnails came from the benchmark's reader: their corner pixel is the background
    inputs = row_inputs(b)
    assert inputs.kind == "image" and inputs.data.shape[1:] == (28, 28, 3)
    corner = inputs.data[ins.minorities[0].typical][:, 0, 0].astype(int)
    assert np.all(corner[:, 2] > corner[:, 0])  # the sneaker minority is on blue
    assert paths["html"].stat().st_size > 10_000


def test_model_and_loader_keep_the_images_of_their_rows(tmp_path):
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    b, images = toy_bundle()
    val = np.flatnonzero(np.isin(b.split, ["heldout", "selection"]))
    x = torch.tensor(images[val], dtype=torch.float32).permute(0, 3, 1, 2) / 255
    x = (x - 0.5) / 0.25  # a normalisation the thumbnails must undo
    y = torch.tensor(b.labels[val])
    gen = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(192, 6), nn.ReLU(), nn.Linear(6, 2))
    for p in model.parameters():
        nn.init.normal_(p, generator=gen)
    loader = DataLoader(TensorDataset(x, y), batch_size=64)
    ins = inspect_groups(model, loader, seed=0, n_rows=3)
    built = ins.bundle
    with torch.no_grad():
        np.testing.assert_allclose(built.features, model[:3](x).numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(built.logits if built.logits is not None else
                                   built.features @ built.head_weight.T + built.head_bias, model(x).numpy(),
                                   rtol=1e-4, atol=1e-4)
    # the kept images are the loader's, in row order, scaled back to 0..255 per image
    xi = x.permute(0, 2, 3, 1).numpy()
    lo, hi = xi.min(axis=(1, 2, 3), keepdims=True), xi.max(axis=(1, 2, 3), keepdims=True)
    np.testing.assert_array_equal(ins.images, np.round(255 * (xi - lo) / (hi - lo)).astype(np.uint8))
    corner = ins.images[:, 0, 0].astype(int)  # the background colour survives the stretch
    np.testing.assert_array_equal(corner[:, 0] > corner[:, 2], b.attributes[val] == 0)
    html = write_gallery(ins, tmp_path)["html"].read_text()
    assert "the loader&#x27;s image batches" in html
    assert html.count("<img src='data:image/png;base64,") == sum(g.typical.size + g.confident.size
                                                                 for g in ins.minorities)
    with pytest.raises(BundleError, match="needs an EmbeddingBundle, or a model with a heldout_loader"):
        inspect_groups(model)
