"""finetune_linear against torch.optim + autograd on the same batches; samplers; errors."""

import math

import numpy as np
import pytest
import torch

from gradtune import FinetuneConfig, GradTuneInputError, finetune_linear
from gradtune.finetune import _fused_steps, _steps
from gradtune.finetune import linear as linear_module
from gradtune.finetune.linear import lr_at
from gradtune.objectives.sampling import class_balance_weights, epoch_order


@pytest.fixture(params=["torch", "fused"])
def loop(request, monkeypatch):
    """Run finetune_linear on the torch loop or on the compiled (numba) epoch kernels,
    and check afterwards that the chosen one ran."""
    calls = []
    if request.param == "torch":
        monkeypatch.setattr(linear_module, "_compiled_steps", lambda: None)
        for name in ("epoch_steps", "epoch_steps_dual"):
            real = getattr(_steps, name)
            monkeypatch.setattr(_steps, name, lambda *a, real=real, **k: calls.append(1) or real(*a, **k))
    else:
        pytest.importorskip("numba", reason="the compiled epoch kernels need numba: pip install 'gradtune[fast]'")
        assert _fused_steps.available(), "numba is installed but gradtune.finetune._fused_steps cannot use it"
        for name in ("epoch_primal", "epoch_dual"):
            real = getattr(_fused_steps, name)
            monkeypatch.setattr(_fused_steps, name, lambda *a, real=real, **k: calls.append(1) or real(*a, **k))
    yield request.param
    assert calls, f"the {request.param} loop did not run"


def reference_run(h, y, w0, b0, cfg, seed, sample_weight=None):
    """Slow reference: nn.Linear, autograd, torch.optim, the same sample order."""
    torch.manual_seed(0)  # nn.Linear init only; weights are overwritten below
    layer = torch.nn.Linear(h.shape[1], w0.shape[0]).double()
    gen = torch.Generator().manual_seed(seed)
    if cfg.reset:  # the documented re-initialization: U(-1/sqrt(d), 1/sqrt(d)), drawn first
        d = h.shape[1]
        init = (torch.rand(w0.shape[0], d + 1, generator=gen, dtype=torch.float64) * 2 - 1) / math.sqrt(d)
        w0, b0 = init[:, :d], init[:, d]
    with torch.no_grad():
        layer.weight.copy_(w0)
        layer.bias.copy_(b0)
    anchor = [p.detach().clone() for p in layer.parameters()]
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(layer.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.AdamW(layer.parameters(), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
                                weight_decay=cfg.weight_decay)
    n = h.shape[0]
    bs = n if cfg.batch_size is None else cfg.batch_size
    total = math.ceil(n / bs) * cfg.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_at(s, total, 1.0, cfg.schedule))
    weights = None
    if cfg.sampler == "class_balanced":
        weights = class_balance_weights(y)
    elif cfg.sampler == "weighted":
        weights = sample_weight.double()
    hd = h.double()
    for _ in range(cfg.epochs):
        order = epoch_order(y, cfg.sampler, gen, weights)
        for idx in order.split(bs):
            opt.zero_grad()
            per = torch.nn.functional.cross_entropy(layer(hd[idx]), y[idx], reduction="none")
            if sample_weight is not None and cfg.sampler != "weighted":
                wb = sample_weight[idx].double()
                loss = (wb * per).sum() / wb.sum()
            else:
                loss = per.mean()
            if cfg.l2_to_init:
                loss = loss + cfg.l2_to_init * sum(((p - a) ** 2).sum() for p, a in zip(layer.parameters(), anchor, strict=True))
            loss.backward()
            opt.step()
            sched.step()
    return layer.weight.detach(), layer.bias.detach()


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(45, 6, generator=g)
    y = (torch.rand(45, generator=g) < 0.3).long()
    w0 = torch.randn(2, 6, generator=g) * 0.5
    b0 = torch.randn(2, generator=g) * 0.1
    return h, y, w0, b0


@pytest.mark.parametrize(
    "cfg",
    [
        FinetuneConfig(epochs=7, batch_size=8, lr=0.05),
        FinetuneConfig(epochs=5, batch_size=10, lr=0.05, momentum=0.0, schedule="constant", sampler="uniform"),
        FinetuneConfig(epochs=6, batch_size=None, lr=0.1, schedule="linear", sampler="uniform", weight_decay=0.0),
        FinetuneConfig(epochs=5, batch_size=16, optimizer="adamw", lr=0.01, schedule="linear", weight_decay=0.01),
        FinetuneConfig(epochs=4, batch_size=9, lr=0.05, l2_to_init=0.3),
        FinetuneConfig(epochs=7, batch_size=8, lr=0.05, dual="on"),
        FinetuneConfig(epochs=5, batch_size=10, lr=0.05, momentum=0.0, schedule="constant", sampler="uniform",
                       dual="on"),
        FinetuneConfig(epochs=4, batch_size=9, lr=0.05, l2_to_init=0.3, dual="on"),
        FinetuneConfig(epochs=3, batch_size=9, lr=0.05, reset=True),
        FinetuneConfig(epochs=3, batch_size=9, lr=0.05, reset=True, dual="on"),
    ],
    ids=["sgd-cosine-balanced", "sgd-plain-uniform", "fullbatch-linear", "adamw", "l2-pull",
         "dual-sgd", "dual-plain", "dual-l2-pull", "reset", "dual-reset"],
)
def test_matches_torch_optim(data, cfg, loop):
    h, y, w0, b0 = data
    res = finetune_linear(h.double(), y, w0.double(), b0.double(), cfg, seed=11)
    wr, br = reference_run(h, y, w0.double(), b0.double(), cfg, seed=11)
    torch.testing.assert_close(res.weight, wr, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(res.bias, br, rtol=1e-9, atol=1e-10)


def test_dual_is_chosen_automatically_and_matches_primal(loop):
    g = torch.Generator().manual_seed(5)
    h = torch.randn(20, 64, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (20,), generator=g)
    w0 = torch.randn(3, 64, generator=g, dtype=torch.float64) * 0.1
    b0 = torch.zeros(3, dtype=torch.float64)
    cfg = dict(epochs=6, batch_size=4, lr=0.05, snapshot_epochs=(3,))
    auto = finetune_linear(h, y, w0, b0, FinetuneConfig(**cfg), seed=1)
    primal = finetune_linear(h, y, w0, b0, FinetuneConfig(**cfg, dual="off"), seed=1)
    torch.testing.assert_close(auto.weight, primal.weight, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(auto.snapshots[3][1], primal.snapshots[3][1], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(auto.losses, primal.losses, rtol=1e-10)
    with pytest.raises(GradTuneInputError, match="dual='on' needs"):
        finetune_linear(h, y, w0, b0, FinetuneConfig(optimizer="adamw", dual="on"), seed=0)


@pytest.mark.parametrize("cfg", [FinetuneConfig(epochs=20, batch_size=8, lr=0.05, l2_to_init=0.1),
                                 FinetuneConfig(epochs=20, batch_size=8, lr=0.05, dual="on"),
                                 FinetuneConfig(epochs=20, batch_size=16, optimizer="adamw", lr=0.01)],
                         ids=["primal", "dual", "adamw"])
def test_float32_runs_follow_the_float64_reference(data, cfg, loop):
    """In float32, each loop stays within float32 rounding of the float64 torch.optim run."""
    h, y, w0, b0 = data
    res = finetune_linear(h, y, w0, b0, cfg, seed=3)
    assert res.weight.dtype == torch.float32
    wr, br = reference_run(h, y, w0.double(), b0.double(), cfg, seed=3)
    torch.testing.assert_close(res.weight.double(), wr, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(res.bias.double(), br, rtol=1e-4, atol=1e-5)
    ref_losses = finetune_linear(h.double(), y, w0.double(), b0.double(), cfg, seed=3).losses
    np.testing.assert_allclose(res.losses, ref_losses, rtol=1e-4)


def test_sample_weights_match_reference(data, loop):
    h, y, w0, b0 = data
    sw = torch.rand(45, generator=torch.Generator().manual_seed(2)) + 0.1
    cfg = FinetuneConfig(epochs=3, batch_size=7, lr=0.05, sampler="uniform")
    res = finetune_linear(h.double(), y, w0.double(), b0.double(), cfg, seed=4, sample_weight=sw.double())
    wr, br = reference_run(h, y, w0.double(), b0.double(), cfg, seed=4, sample_weight=sw)
    torch.testing.assert_close(res.weight, wr, rtol=1e-9, atol=1e-10)
    cfg = FinetuneConfig(epochs=3, batch_size=7, lr=0.05, sampler="weighted")
    res = finetune_linear(h.double(), y, w0.double(), b0.double(), cfg, seed=4, sample_weight=sw.double())
    wr, br = reference_run(h, y, w0.double(), b0.double(), cfg, seed=4, sample_weight=sw)
    torch.testing.assert_close(res.weight, wr, rtol=1e-9, atol=1e-10)
    cfg = FinetuneConfig(epochs=3, batch_size=7, lr=0.05, sampler="uniform", dual="on")
    res = finetune_linear(h.double(), y, w0.double(), b0.double(), cfg, seed=4, sample_weight=sw.double())
    wr, br = reference_run(h, y, w0.double(), b0.double(), cfg, seed=4, sample_weight=sw)
    torch.testing.assert_close(res.weight, wr, rtol=1e-9, atol=1e-10)


def test_lowers_finetune_loss_and_keeps_inputs(data):
    h, y, w0, b0 = data
    w_copy = w0.clone()
    res = finetune_linear(h, y, w0, b0, FinetuneConfig(epochs=50, lr=0.05), seed=0)
    assert res.final_loss < res.initial_loss
    assert res.losses.shape == (50,)
    torch.testing.assert_close(w0, w_copy)  # the starting head is not modified


def test_deterministic_and_seed_dependent(data):
    h, y, w0, b0 = data
    cfg = FinetuneConfig(epochs=3, lr=0.05)
    a = finetune_linear(h, y, w0, b0, cfg, seed=1).weight
    b = finetune_linear(h, y, w0, b0, cfg, seed=1).weight
    c = finetune_linear(h, y, w0, b0, cfg, seed=2).weight
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


def test_reset_ignores_start(data):
    h, y, w0, b0 = data
    cfg = FinetuneConfig(epochs=0, reset=True)
    r1 = finetune_linear(h, y, w0, b0, cfg, seed=3)
    r2 = finetune_linear(h, y, w0 * 100, b0, cfg, seed=3)
    torch.testing.assert_close(r1.weight, r2.weight)
    assert r1.weight.abs().max() <= 1 / math.sqrt(6)


def test_no_bias_layer_keeps_bias_zero(data):
    h, y, w0, _ = data
    res = finetune_linear(h, y, w0, None, FinetuneConfig(epochs=3, lr=0.1), seed=0)
    assert torch.count_nonzero(res.bias) == 0


def test_snapshots(data):
    h, y, w0, b0 = data
    res = finetune_linear(h, y, w0, b0, FinetuneConfig(epochs=4, lr=0.05, snapshot_epochs=(2, 4)), seed=0)
    assert sorted(res.snapshots) == [2, 4]
    torch.testing.assert_close(res.snapshots[4][0], res.weight)


def test_class_balanced_sampler_balances():
    y = torch.tensor([0] * 900 + [1] * 100)
    gen = torch.Generator().manual_seed(0)
    draws = torch.cat([epoch_order(y, "class_balanced", gen) for _ in range(20)])
    frac1 = float((y[draws] == 1).float().mean())
    n = draws.numel()
    assert abs(frac1 - 0.5) < 4 * math.sqrt(0.25 / n)


def test_uniform_sampler_is_permutation():
    y = torch.tensor([0, 1] * 10)
    order = epoch_order(y, "uniform", torch.Generator().manual_seed(0))
    assert sorted(order.tolist()) == list(range(20))


def test_lr_schedules():
    assert lr_at(0, 10, 1.0, "cosine") == 1.0
    assert abs(lr_at(5, 10, 1.0, "cosine") - 0.5) < 1e-12
    assert lr_at(5, 10, 2.0, "linear") == 1.0
    assert lr_at(7, 10, 2.0, "constant") == 2.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(optimizer="adam"), "optimizer must be one of"),
        (dict(schedule="step"), "schedule must be one of"),
        (dict(sampler="group"), "sampler must be one of"),
        (dict(lr=0), "lr must be > 0"),
        (dict(epochs=-1), "epochs must lie in 0..10000000"),
        (dict(batch_size=0), "batch_size must be > 0"),
        (dict(epochs=3, snapshot_epochs=(4,)), "snapshot_epochs"),
    ],
)
def test_config_errors(kwargs, match):
    with pytest.raises(GradTuneInputError, match=match):
        FinetuneConfig(**kwargs)


def test_input_errors(data):
    h, y, w0, b0 = data
    with pytest.raises(GradTuneInputError, match="expected \\(C, 6\\)"):
        finetune_linear(h, y, torch.ones(2, 5), b0, seed=0)
    with pytest.raises(GradTuneInputError, match="< 2"):
        finetune_linear(h, y + 1, w0, b0, seed=0)
    with pytest.raises(GradTuneInputError, match="needs sample_weight"):
        finetune_linear(h, y, w0, b0, FinetuneConfig(sampler="weighted"), seed=0)
    with pytest.raises(GradTuneInputError, match="seed"):
        finetune_linear(h, y, w0, b0, seed=None)
    with pytest.raises(GradTuneInputError, match="NaN"):
        finetune_linear(h * np.nan, y, w0, b0, seed=0)


def test_schedule_codes_cover_the_named_schedules():
    from gradtune.objectives.choices import FINETUNE_SAMPLERS, SAMPLERS, SCHEDULES, TRAIN_SAMPLERS
    from gradtune.objectives.schedules import SCHEDULE_CODE

    assert set(SCHEDULE_CODE) == set(SCHEDULES)
    assert set(FINETUNE_SAMPLERS) | set(TRAIN_SAMPLERS) == set(SAMPLERS)
    hand = {"cosine": 0.5 * 0.5 * (1 + math.cos(math.pi * 0.3)), "linear": 0.5 * 0.7, "constant": 0.5}
    for name in SCHEDULES:
        assert lr_at(3, 10, 0.5, name) == pytest.approx(hand[name], rel=1e-12)
