"""GradTune on embeddings and on a PyTorch model (hook capture, in-place repair)."""

import numpy as np
import pytest
import torch
from torch import nn

from gradtune import FinetuneConfig, GradTune, GradTuneInputError, grad_norms, select_finetune_set
from gradtune.embeddings import capture_features
from gradtune.estimator import resolve_set_size
from gradtune.models.classifier import find_last_linear


class Net(nn.Module):
    def __init__(self, d_in=6, hidden=8, c=3):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Dropout(0.5))
        self.fc = nn.Linear(hidden, c)

    def forward(self, x):
        return self.fc(self.body(x))


def make_loader(n=120, d=6, c=3, bs=25, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = torch.randint(0, c, (n,), generator=g)
    return [(x[i:i + bs], y[i:i + bs]) for i in range(0, n, bs)], x, y


def test_capture_matches_manual_forward_in_eval_mode():
    torch.manual_seed(0)
    net = Net().train()
    loader, x, y = make_loader()
    feats, logits, labels = capture_features(net, loader)
    assert net.training  # mode restored
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(feats, net.body(x))
        torch.testing.assert_close(logits, net(x))
    torch.testing.assert_close(labels, y)


def test_fit_model_in_place_equals_fit_embeddings():
    torch.manual_seed(0)
    net = Net()
    loader, x, y = make_loader()
    with torch.no_grad():
        h = net.eval().body(x)
    w0, b0 = net.fc.weight.detach().clone(), net.fc.bias.detach().clone()
    cfg = FinetuneConfig(epochs=5, lr=0.05)
    ref = GradTune(size=50, top_k=40, finetune=cfg, seed=3).fit_embeddings(h, y, weight=w0, bias=b0)
    tuner = GradTune(size=50, top_k=40, finetune=cfg, seed=3)
    assert tuner.fit(net, loader) is tuner and tuner.layer_ is net.fc
    report = tuner.report_
    torch.testing.assert_close(net.fc.weight.detach(), ref.weight_)
    torch.testing.assert_close(net.fc.bias.detach(), ref.bias_)
    np.testing.assert_array_equal(report.selected, ref.report_.selected)
    # the norms are the closed-form gradient norms of the ERM head
    np.testing.assert_allclose(report.norms, grad_norms(h, labels=y, weight=w0, bias=b0).numpy(), rtol=1e-6)
    # the selection is select_finetune_set's with the estimator's derived stream
    ss = np.random.SeedSequence(3).spawn(2)
    expect = select_finetune_set(report.norms, 50, 40, seed=np.random.default_rng(ss[0]))
    np.testing.assert_array_equal(report.selected, expect)
    assert report.extra["final_loss"] < report.extra["initial_loss"]


def test_dict_batches_and_named_layer():
    torch.manual_seed(0)
    net = Net()
    _, x, y = make_loader()
    loader = [{"x": x[:60], "labels": y[:60]}, {"x": x[60:], "labels": y[60:]}]

    class Wrap(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x)

    model = Wrap(net)
    tuner = GradTune(size=30, top_k=20, finetune=FinetuneConfig(epochs=2), seed=0)
    tuner.fit(model, loader, layer="inner.fc")
    assert tuner.report_.selected.shape == (30,) and tuner.layer_ is net.fc


def test_small_heldout_scales_size():
    assert resolve_set_size(300, 500, 400) == (300, 240)
    assert resolve_set_size(600, 500, 400) == (500, 400)
    with pytest.raises(GradTuneInputError, match="exceeds"):
        resolve_set_size(300, 500, 400, "error")


def test_find_last_linear_errors():
    with pytest.raises(GradTuneInputError, match="no torch.nn.Linear"):
        find_last_linear(nn.Sequential(nn.ReLU()))
    with pytest.raises(GradTuneInputError, match="no submodule"):
        find_last_linear(Net(), "head")
    with pytest.raises(GradTuneInputError, match="not nn.Linear"):
        find_last_linear(Net(), "body")


def test_layer_called_twice_is_refused():
    lin = nn.Linear(4, 4)

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = lin

        def forward(self, x):
            return self.lin(self.lin(x))

    loader = [(torch.randn(5, 4), torch.zeros(5, dtype=torch.long))]
    with pytest.raises(GradTuneInputError, match="ran 2 times"):
        GradTune(size=3, top_k=1, seed=0).fit(Twice(), loader)


def test_estimator_param_errors():
    with pytest.raises(GradTuneInputError, match="top_k"):
        GradTune(size=10, top_k=11)
    with pytest.raises(GradTuneInputError, match="selection_score"):
        GradTune(selection_score="margin")
    with pytest.raises(GradTuneInputError, match="weight has shape"):
        GradTune(size=2, top_k=1).fit_embeddings(np.ones((4, 3)), [0, 1, 0, 1], weight=np.ones((2, 5)))


def test_deprecated_score_keyword_sets_selection_score():
    with pytest.warns(DeprecationWarning, match="selection_score"):
        tuner = GradTune(score="loss")
    assert tuner.selection_score == "loss"
    # no public attribute hides a scikit-learn method name
    assert not hasattr(tuner, "score")
