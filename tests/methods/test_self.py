"""SELF's selection and exact step count; the loss/residual top-k ablations."""

from __future__ import annotations

import numpy as np
import pytest

from gradtune.embeddings.bundle import BundleError, EmbeddingBundle
from gradtune.finetune.linear import FinetuneConfig
from gradtune.methods import GradTuneMethod, LossTopKMethod, ResidualTopKMethod, SELFMethod
from gradtune.methods.self_ft import steps_finetune


def _ce(z, y):
    z = z.astype(np.float64)
    m = z.max(1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(z - m).sum(1))
    return lse - z[np.arange(len(y)), y]


def test_misclassification_selects_top_k_loss(bundle):
    held = bundle.view("heldout")
    z = held.features @ bundle.head_weight.T + bundle.head_bias
    expected = held.index[np.argsort(-_ce(z, held.labels), kind="stable")[:20]]
    res = SELFMethod(score="misclassification", k=20, steps=3).fit(bundle, seed=0)
    assert sorted(res.diagnostics["selected_rows"]) == sorted(expected.tolist())


def test_disagreement_selects_top_k_kl(bundle):
    held = bundle.view("heldout")
    z = (held.features @ bundle.head_weight.T + bundle.head_bias).astype(np.float64)
    e = held.early_logits.astype(np.float64)
    p_e = np.exp(e - e.max(1, keepdims=True))
    p_e /= p_e.sum(1, keepdims=True)
    log_pe = np.log(p_e)
    log_pf = z - z.max(1, keepdims=True)
    log_pf -= np.log(np.exp(log_pf).sum(1, keepdims=True))
    kl = (p_e * (log_pe - log_pf)).sum(1)
    expected = held.index[np.argsort(-kl, kind="stable")[:30]]
    res = SELFMethod(k=30, steps=3).fit(bundle, seed=0)
    assert sorted(res.diagnostics["selected_rows"]) == sorted(expected.tolist())


def test_disagreement_without_early_logits_is_a_clear_error(bundle):
    b = EmbeddingBundle(features=bundle.features, labels=bundle.labels, split=bundle.split,
                        head_weight=bundle.head_weight, head_bias=bundle.head_bias, n_classes=2)
    with pytest.raises(BundleError, match="early_logits"):
        SELFMethod().fit(b, seed=0)
    SELFMethod(score="misclassification", steps=2).fit(b, seed=0)


def test_random_score_draws_distinct_rows(bundle):
    res = SELFMethod(score="random", k=50, steps=2).fit(bundle, seed=4)
    rows = res.diagnostics["selected_rows"]
    assert len(set(rows)) == 50 and (bundle.split[rows] == "heldout").all()


@pytest.mark.parametrize("steps,batch", [(7, 4), (13, 5)])
def test_exact_step_count(steps, batch):
    """With zero features, only weight decay moves W: W_T = W_0 (1 - lr wd)^steps exactly."""
    n, d = 9, 3
    feats = np.zeros((n, d), dtype=np.float32)
    labels = np.array([0, 1] * 4 + [0])
    w0 = np.ones((2, d), dtype=np.float32)
    res = steps_finetune(feats, labels, w0, np.zeros(2, dtype=np.float32), steps=steps, batch_size=batch,
                         optimizer="sgd", lr=0.1, momentum=0.0, weight_decay=0.5, seed=0)
    np.testing.assert_allclose(res.weight.numpy(), w0 * (1 - 0.05) ** steps, rtol=1e-5)


def test_loss_topk_is_gradtune_with_loss_score(bundle):
    cfg = FinetuneConfig(epochs=2)
    a = LossTopKMethod(finetune=cfg).fit(bundle, seed=3)
    b = GradTuneMethod(score="loss", finetune=cfg).fit(bundle, seed=3)
    assert a.diagnostics["selected_rows"] == b.diagnostics["selected_rows"]
    np.testing.assert_array_equal(a.model.weight, b.model.weight)
    r = ResidualTopKMethod(finetune=cfg).fit(bundle, seed=3)
    assert r.diagnostics["size"] == b.diagnostics["size"]
    assert not LossTopKMethod.uses_group_labels_val and not SELFMethod.uses_group_labels_train



def test_default_runs_plain_sgd_as_the_authors_optimizer_does(bundle):
    """The authors' SGD runs with momentum 0 (their 0.9 is set on a config after construction)."""
    kw = dict(score="misclassification", k=40, steps=20)
    default = SELFMethod(**kw).fit(bundle, seed=0).model
    plain = SELFMethod(**kw, momentum=0.0).fit(bundle, seed=0).model
    heavy = SELFMethod(**kw, momentum=0.9).fit(bundle, seed=0).model
    np.testing.assert_array_equal(np.asarray(default.weight), np.asarray(plain.weight))
    assert not np.allclose(np.asarray(default.weight), np.asarray(heavy.weight))
