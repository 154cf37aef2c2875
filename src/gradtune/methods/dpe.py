"""Diverse Prototypical Ensembles, DPE (To et al., ICML 2025), label-free, on frozen features.

DPE replaces the last layer with an ensemble of ``M`` *prototype classifiers*. Member
``m`` holds one prototype ``p_k^m`` (d,) per class and a distance scale ``s_m``; with
``u = normalize(center(x))`` and ``q_k = p_k / ||p_k||``,

* member logits ``z_k^m(x) = -|s_m| ||u - q_k^m||_2`` (IsoMax+; the authors' code first
  standardizes every feature row, which with the L2 normalization that follows is the
  same as centring the row and scaling it to unit norm);
* training loss of a member (IsoMax+ with entropic scale ``E``): the cross-entropy of
  ``E * z^m``, plus ``wd_weight * mean_k ||p_k^m||^2``, plus the inter-prototype
  similarity (IPS) term ``lambda_m |c_m|`` with
  ``c_m = mean_k sum_{j<m} <p_k^m, p_k^j> / ((d - 1)(m + 1))`` (members counted from 0),
  which pushes a member's raw prototypes away from those of the members before it;
  ``lambda_m = cov_reg / (1 + alpha (m - 1))`` for ``m >= 1`` (the authors' decreasing
  schedule; member 0 has no IPS term);
* every member is trained on its own random **class-balanced** subsample of the
  retraining rows (the authors' setting without attribute annotations), 20 epochs of
  SGD (lr 1e-3, momentum 0.9) on shuffled minibatches of 256 (incomplete last batch
  dropped); prototypes start at ``N(0, 0.01^2)``, ``s = 1``;
* each member keeps the epoch with the best validation score (ties go to the later
  epoch); the ensemble predicts ``argmax_k mean_m softmax(z^m)_k``.

That is the recipe of the authors' package (``dpe.core``: ``_train_prototypes``,
``IsoMaxPlusLoss*``, ``cov_reg_scheduler_inv``, defaults of its ``Args``). The IPS term is
written as the code computes it: the absolute value of the class-mean of the summed inner
products of raw prototypes, not a sum of absolute pairwise values.

What differs here, and why
--------------------------
* **Retraining rows.** DPE subsamples the validation set; here the ``heldout`` rows, as
  for every last-layer method of this package.
* **Label-free selection.** The authors' code scores each epoch by worst-group accuracy
  on the validation set with its true groups, even when training without attributes.
  No group label is read here: the default ``selection='worst_class'`` keeps each
  member's epoch of best worst-class accuracy on the ``selection`` rows (class labels
  only, :mod:`gradtune.selection.label_free`); ``'last'`` keeps the last epoch (the
  authors' ``-ec last``). ``'pseudo_erm_worst'`` (class x ERM right/wrong) correlated
  -0.36 with the true selection WGA on fmnist-biased and is no longer the default.
* **Members in order** (``sequential=True``, default), as the authors train them: member
  m's IPS term reads the finished prototypes of members ``0..m-1``
  (:func:`train_dpe_sequential`). ``sequential=False`` trains all members at once
  (:func:`train_dpe`), each IPS term then chasing the earlier members' moving prototypes.
* ``balance='pseudo_group'`` (not the authors') balances the subsamples over
  (class x ERM-wrong) of the held-out rows instead of over classes.

Tests check :func:`dpe_loss_and_grad` against autograd and both loops against ``torch.optim.SGD``.
Shapes: M members, C classes, d features, N rows, B batch rows, S rows per subsample.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from gradtune._seeding import seed_streams
from gradtune._threads import torch_threads
from gradtune._validation import (
    GradTuneInputError,
    check_features,
    check_positive_int,
    make_numpy_rng,
)
from gradtune.embeddings.bundle import EmbeddingBundle
from gradtune.finetune.linear import sgd_step_
from gradtune.methods.base import Method, MethodResult, erm_head, param, register_method
from gradtune.objectives.sampling import balanced_subsample
from gradtune.selection.label_free import LabelFreeScorer

__all__ = ["DPEMethod", "DPEModel", "normalize_features", "ips_weights", "ips_penalty",
           "dpe_loss_and_grad", "train_dpe", "train_dpe_sequential", "class_balanced_subsets", "DPE_BALANCE", "DPE_SELECTION"]

DPE_BALANCE = ("class", "pseudo_group")
#: 'last' or a label-free criterion that needs at most the ERM logits.
DPE_SELECTION = ("last", "pseudo_erm_worst", "pseudo_erm_balanced", "worst_class", "balanced_class", "accuracy")
_EPS = 1e-12  # F.normalize's floor on a norm


def normalize_features(features: Any, *, center: bool = True) -> torch.Tensor:
    """Rows centred (``center``) and scaled to unit L2 norm, (N, d) float32; a row that is
    zero after centring stays zero."""
    x = check_features(features, "features").to(torch.float32)
    if center:
        x = x - x.mean(dim=1, keepdim=True)
    return x / torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min(_EPS)


def ips_weights(cov_reg: float, alpha: float, n_members: int) -> np.ndarray:
    """The IPS weight ``lambda_m`` of every member, (M,): ``cov_reg`` for members 0 and 1,
    then ``cov_reg / (1 + alpha (m - 1))`` (member 0 has no earlier member to be compared with)."""
    m = np.arange(n_members, dtype=np.float64)
    return cov_reg / (1.0 + alpha * np.maximum(m - 1.0, 0.0))


def _ips_terms(prototypes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(c, earlier, denom)``: c (M,) the signed IPS sums, earlier (M, C, d) the sum of
    the earlier members' prototypes, denom (M,) ``C (d - 1)(m + 1)``."""
    n_members, c, d = prototypes.shape
    earlier = torch.cat([torch.zeros_like(prototypes[:1]), prototypes.cumsum(dim=0)[:-1]])
    denom = c * (d - 1) * torch.arange(1, n_members + 1, dtype=prototypes.dtype)
    return (prototypes * earlier).sum(dim=(1, 2)) / denom, earlier, denom


def ips_penalty(prototypes: Any, weights: Any) -> np.ndarray:
    """The IPS terms ``lambda_m |c_m|`` of every member (M,), float64 (see module doc).

    prototypes : (M, C, d) raw prototypes; weights : (M,) the ``lambda_m``.
    """
    p = torch.as_tensor(np.asarray(prototypes), dtype=torch.float64)
    if p.ndim != 3 or p.shape[2] < 2:
        raise GradTuneInputError(f"prototypes must have shape (M, C, d) with d >= 2, got {tuple(p.shape)}")
    w = torch.as_tensor(np.asarray(weights), dtype=torch.float64)
    if w.shape != (p.shape[0],):
        raise GradTuneInputError(f"weights must have shape ({p.shape[0]},), got {tuple(w.shape)}")
    cvals, _, _ = _ips_terms(p)
    return (w * cvals.abs()).numpy()


def _member_logits(u: torch.Tensor, prototypes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """(M, N, C) logits ``-|s_m| ||u_i - q_k^m||`` of normalized rows u (N, d) or (M, N, d)."""
    q = prototypes / torch.linalg.vector_norm(prototypes, dim=2, keepdim=True).clamp_min(_EPS)
    n_members, c, d = q.shape
    if u.ndim == 3:
        u_sq, uq = (u * u).sum(2, keepdim=True), torch.bmm(u, q.transpose(1, 2))
    else:  # shared rows: one (N, M*C) product, never an (M, N, d) copy of the rows
        u_sq = (u * u).sum(1)[None, :, None]
        uq = (u @ q.reshape(n_members * c, d).T).reshape(-1, n_members, c).permute(1, 0, 2)
    sq = u_sq + (q * q).sum(2).unsqueeze(1) - 2.0 * uq
    return -scales.abs()[:, None, None] * sq.clamp_min(0.0).sqrt()


def dpe_loss_and_grad(u: torch.Tensor, y: torch.Tensor, prototypes: torch.Tensor, scales: torch.Tensor, *,
                      entropic_scale: float, wd_weight: float,
                      ips_weight: torch.Tensor,
                      u_sq: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every member's training loss on its batch and its gradient in closed form.

    Parameters
    ----------
    u : Tensor (M, B, d)
        Normalized feature rows of each member's batch (:func:`normalize_features`).
    y : Tensor (M, B) int64
        Their labels.
    prototypes : Tensor (M, C, d); scales : Tensor (M,)
    entropic_scale, wd_weight : float
    ips_weight : Tensor (M,)
        ``lambda_m`` (:func:`ips_weights`).
    u_sq : Tensor (M, B), optional
        ``||u||^2`` of the batch rows, if already known (saves a pass over ``u``).

    Returns
    -------
    loss : Tensor (M,)
        Cross-entropy + prototype-norm penalty + IPS term of each member.
    grad_prototypes : Tensor (M, C, d); grad_scales : Tensor (M,)
        Gradient of member m's loss in its own parameters, the earlier members'
        prototypes held constant.
    """
    n_members, b, _ = u.shape
    c = prototypes.shape[1]
    norm = torch.linalg.vector_norm(prototypes, dim=2, keepdim=True).clamp_min(_EPS)  # (M, C, 1)
    q = prototypes / norm
    uq = torch.bmm(u, q.transpose(1, 2))  # (M, B, C)
    if u_sq is None:
        u_sq = (u * u).sum(2)
    sq = u_sq.unsqueeze(2) + (q * q).sum(2).unsqueeze(1) - 2.0 * uq
    dist = sq.clamp_min(0.0).sqrt()
    a = (-entropic_scale) * scales.abs()[:, None, None] * dist  # training logits
    logp = torch.log_softmax(a, dim=2)
    ce = -logp.gather(2, y.unsqueeze(2)).squeeze(2).mean(1)  # (M,)
    g_a = (logp.exp() - torch.nn.functional.one_hot(y, c).to(u.dtype)) / b  # dCE/da
    grad_s = -entropic_scale * torch.sign(scales) * (g_a * dist).sum(dim=(1, 2))
    g_dist = (-entropic_scale) * scales.abs()[:, None, None] * g_a
    w = torch.where(dist > 0, g_dist / dist.clamp_min(_EPS), torch.zeros_like(dist))  # (M, B, C)
    g_q = q * w.sum(1).unsqueeze(2) - torch.bmm(w.transpose(1, 2), u)  # (M, C, d)
    grad_p = (g_q - q * (q * g_q).sum(2, keepdim=True)) / norm
    wd = wd_weight * (prototypes * prototypes).sum(2).mean(1)
    grad_p = grad_p + (2.0 * wd_weight / c) * prototypes
    cvals, earlier, denom = _ips_terms(prototypes)
    grad_p = grad_p + (ips_weight * torch.sign(cvals) / denom)[:, None, None] * earlier
    return ce + wd + ips_weight * cvals.abs(), grad_p, grad_s


def class_balanced_subsets(keys: Any, n_members: int, seed: int | np.random.Generator) -> np.ndarray:
    """One balanced subsample per member, (M, S) row indices into ``keys`` (N,).

    Member m's row is the m-th call of :func:`~gradtune.objectives.sampling.balanced_subsample`
    with one generator, so every key keeps ``S / K`` rows (K distinct keys).
    """
    rng = make_numpy_rng(seed)
    n_members = check_positive_int(n_members, "n_members")
    return np.stack([balanced_subsample(keys, rng) for _ in range(n_members)])


@torch.no_grad()
def train_dpe(u: torch.Tensor, y: torch.Tensor, subsets: torch.Tensor, n_classes: int, *, epochs: int,
              batch_size: int, lr: float, momentum: float, weight_decay: float, entropic_scale: float,
              wd_weight: float, ips_weight: torch.Tensor, init_std: float, generator: torch.Generator,
              score_fn: Callable[[torch.Tensor, torch.Tensor], np.ndarray] | None = None) -> dict[str, Any]:
    """Train all members at once; inputs are already checked (see :class:`DPEMethod`).

    Randomness protocol: prototypes ``randn(M, C, d, generator) * init_std``; each epoch one
    order ``rand(M, S, generator).argsort(1)`` of every member's subsample, cut into
    ``S // batch_size`` batches of ``batch_size`` (the rest dropped).

    Parameters
    ----------
    u : Tensor (N, d) normalized rows; y : Tensor (N,) labels
    subsets : Tensor (M, S) int64, each member's rows
    score_fn : callable ``(prototypes, scales) -> (M,) scores``, optional
        Called after every epoch; each member keeps its best epoch (ties: later). Without
        it, the last epoch is kept.

    Returns
    -------
    dict with ``prototypes`` (M, C, d), ``scales`` (M,), ``best_epoch`` (M,) int,
    ``best_score`` (M,) float (NaN without score_fn), ``loss`` (epochs, M) the mean
    training loss of each epoch.
    """
    n_members, s_rows = subsets.shape
    d = u.shape[1]
    protos = torch.randn(n_members, n_classes, d, generator=generator, dtype=u.dtype) * init_std
    scales = torch.ones(n_members, dtype=u.dtype)
    buf_p, buf_s = torch.zeros_like(protos), torch.zeros_like(scales)
    best_p, best_s = protos.clone(), scales.clone()
    best_epoch = np.full(n_members, epochs - 1, dtype=np.int64)
    best_score = np.full(n_members, -np.inf if score_fn is not None else np.nan)
    n_batches = s_rows // batch_size
    u_sq = (u * u).sum(1)
    losses = np.zeros((epochs, n_members))
    step = 0
    for epoch in range(epochs):
        order = torch.gather(subsets, 1, torch.rand(n_members, s_rows, generator=generator).argsort(dim=1))
        for bi in range(n_batches):
            idx = order[:, bi * batch_size:(bi + 1) * batch_size]  # (M, B)
            ub = u.index_select(0, idx.reshape(-1)).view(n_members, batch_size, d)
            loss, g_p, g_s = dpe_loss_and_grad(ub, y[idx], protos, scales, entropic_scale=entropic_scale,
                                               wd_weight=wd_weight, ips_weight=ips_weight, u_sq=u_sq[idx])
            if weight_decay:
                g_p = g_p + weight_decay * protos
                g_s = g_s + weight_decay * scales
            buf_p = sgd_step_(protos, g_p, buf_p, step == 0, lr=lr, momentum=momentum)
            buf_s = sgd_step_(scales, g_s, buf_s, step == 0, lr=lr, momentum=momentum)
            losses[epoch] += loss.numpy() / n_batches
            step += 1
        if score_fn is not None:
            score = np.asarray(score_fn(protos, scales), dtype=np.float64)
            better = score >= best_score
            if better.any():
                mask = torch.as_tensor(better)
                best_p[mask] = protos[mask]
                best_s[mask] = scales[mask]
                best_epoch[better] = epoch
                best_score[better] = score[better]
    if score_fn is None:
        best_p, best_s = protos, scales
    return {"prototypes": best_p, "scales": best_s, "best_epoch": best_epoch, "best_score": best_score,
            "loss": losses}


@torch.no_grad()
def train_dpe_sequential(u: torch.Tensor, y: torch.Tensor, subsets: torch.Tensor, n_classes: int, *, epochs: int,
                         batch_size: int, lr: float, momentum: float, weight_decay: float, entropic_scale: float,
                         wd_weight: float, ips_weight: torch.Tensor, init_std: float, generator: torch.Generator,
                         score_fn: Callable[[torch.Tensor, torch.Tensor], np.ndarray] | None = None
                         ) -> dict[str, Any]:
    """Train the members one after another, as the authors do: member m's IPS term reads
    the *finished* (kept-epoch) prototypes of members ``0..m-1``. Arguments and return
    value as :func:`train_dpe`.

    Randomness protocol, member by member: its prototypes ``randn(1, C, d, generator) *
    init_std``, then each epoch one order ``rand(S, generator).argsort()`` of its subsample.
    """
    n_members, s_rows = subsets.shape
    d = u.shape[1]
    n_batches = s_rows // batch_size
    u_sq = (u * u).sum(1)
    finished_p = torch.zeros(n_members, n_classes, d, dtype=u.dtype)
    finished_s = torch.ones(n_members, dtype=u.dtype)
    best_epoch = np.full(n_members, epochs - 1, dtype=np.int64)
    best_score = np.full(n_members, np.nan)
    losses = np.zeros((epochs, n_members))
    zero = torch.zeros(1, dtype=u.dtype)
    for m in range(n_members):
        protos = torch.randn(1, n_classes, d, generator=generator, dtype=u.dtype) * init_std
        scales = torch.ones(1, dtype=u.dtype)
        earlier = finished_p[:m].sum(0, keepdim=True)  # (1, C, d) the finished members' prototypes
        denom = n_classes * (d - 1) * (m + 1)
        lam = float(ips_weight[m])
        buf_p, buf_s = torch.zeros_like(protos), torch.zeros_like(scales)
        best_p, best_s, best = protos.clone(), scales.clone(), -np.inf
        step = 0
        for epoch in range(epochs):
            order = subsets[m][torch.rand(s_rows, generator=generator).argsort()]
            for bi in range(n_batches):
                idx = order[bi * batch_size:(bi + 1) * batch_size][None]  # (1, B)
                ub = u.index_select(0, idx.reshape(-1)).view(1, batch_size, d)
                loss, g_p, g_s = dpe_loss_and_grad(ub, y[idx], protos, scales, entropic_scale=entropic_scale,
                                                   wd_weight=wd_weight, ips_weight=zero, u_sq=u_sq[idx])
                cval = float((protos * earlier).sum()) / denom
                g_p = g_p + (lam * float(np.sign(cval)) / denom) * earlier
                if weight_decay:
                    g_p = g_p + weight_decay * protos
                    g_s = g_s + weight_decay * scales
                buf_p = sgd_step_(protos, g_p, buf_p, step == 0, lr=lr, momentum=momentum)
                buf_s = sgd_step_(scales, g_s, buf_s, step == 0, lr=lr, momentum=momentum)
                losses[epoch, m] += (float(loss[0]) + lam * abs(cval)) / n_batches
                step += 1
            if score_fn is not None:
                score = float(np.asarray(score_fn(protos, scales), dtype=np.float64)[0])
                if score >= best:
                    best_p, best_s, best = protos.clone(), scales.clone(), score
                    best_epoch[m], best_score[m] = epoch, score
        if score_fn is None:
            best_p, best_s = protos, scales
        finished_p[m], finished_s[m] = best_p[0], best_s[0]
    return {"prototypes": finished_p, "scales": finished_s, "best_epoch": best_epoch, "best_score": best_score,
            "loss": losses}


@dataclass
class DPEModel:
    """A prototype ensemble: ``argmax_k mean_m softmax(-|s_m| ||u - q_k^m||)_k``.

    prototypes : np.ndarray (M, C, d) float32, raw (normalized when used);
    scales : np.ndarray (M,) float32; center : bool, centre each row before normalizing.
    """

    prototypes: np.ndarray
    scales: np.ndarray
    center: bool = True

    def __post_init__(self) -> None:
        self.prototypes = np.asarray(self.prototypes, dtype=np.float32)
        self.scales = np.asarray(self.scales, dtype=np.float32)
        if self.prototypes.ndim != 3 or self.scales.shape != (self.prototypes.shape[0],):
            raise GradTuneInputError(f"prototypes must be (M, C, d) and scales (M,), got "
                                     f"{self.prototypes.shape} and {self.scales.shape}")

    def member_logits(self, features: np.ndarray) -> np.ndarray:
        """(n, d) features -> (M, n, C) logits of every member."""
        u = normalize_features(features, center=self.center)
        if u.shape[1] != self.prototypes.shape[2]:
            raise GradTuneInputError(f"features have {u.shape[1]} columns; this model expects {self.prototypes.shape[2]}")
        with torch.no_grad():
            return _member_logits(u, torch.from_numpy(self.prototypes), torch.from_numpy(self.scales)).numpy()

    def logits(self, features: np.ndarray) -> np.ndarray:
        """(n, d) features -> (n, C) ``log mean_m softmax(member logits)`` (the ensemble's
        log-probabilities; their argmax is the prediction)."""
        z = torch.from_numpy(self.member_logits(features))
        out = torch.logsumexp(torch.log_softmax(z, dim=2), dim=0) - float(np.log(z.shape[0]))
        return out.numpy().astype(np.float32)

    def predict(self, features: np.ndarray) -> np.ndarray:
        """(n, d) features -> (n,) predicted classes."""
        return self.logits(features).argmax(axis=1)


@register_method
@dataclass
class DPEMethod(Method):
    """DPE without group labels on the held-out rows (see module doc).

    Parameters
    ----------
    num_members : int, default=15
        Ensemble size (the authors' ``num_stages``).
    epochs : int, default=20
    batch_size : int, default=256
        Capped at the subsample size.
    lr : float, default=1e-3
    momentum : float, default=0.9
    weight_decay : float, default=0.0
        ``torch.optim.SGD``'s decay on prototypes and scales.
    entropic_scale : float, default=30.0
        IsoMax+'s ``E`` (the authors' scripts use 10 to 30).
    wd_weight : float, default=10.0
        Weight of ``mean_k ||p_k||^2``.
    cov_reg : float, default=5e4
        IPS weight of the second member (the authors' scripts use 1e5 to 5e6).
    alpha : float, default=0.05
        Decay of the IPS weight over members.
    init_std : float, default=1e-2
    center : bool, default=True
        Centre every feature row before its L2 normalization.
    balance : {'class', 'pseudo_group'}, default='class'
        Keys of the balanced subsamples: classes, or (class x ERM-wrong).
    selection : str, default='worst_class'
        Per-member epoch choice: ``'last'`` or a label-free criterion (``DPE_SELECTION``).
    sequential : bool, default=True
        Members one after another (the authors' order) or all at once.
    min_group_size : int, default=10
        Pseudo-groups smaller than this are left out of the criterion.
    """

    name = "dpe"
    description = ("DPE (To et al.): ensemble of diverse prototype classifiers on class-balanced held-out "
                   "subsamples, members trained in order, epochs by worst-class accuracy")
    selections: ClassVar[tuple[str, ...]] = DPE_SELECTION
    space_order: ClassVar[tuple[str, ...]] = ("cov_reg", "entropic_scale")

    num_members: int = param(15, "ensemble size", ge=1)
    epochs: int = param(20, "epochs per member", ge=1)
    batch_size: int = param(256, "batch size (capped at the subsample size)", ge=1)
    lr: float = param(1e-3, "learning rate", gt=0)
    momentum: float = param(0.9, "SGD momentum", ge=0)
    weight_decay: float = param(0.0, "SGD decay on prototypes and scales", ge=0)
    entropic_scale: float = param(30.0, "IsoMax+'s E", gt=0, space=(10.0, 20.0, 30.0))
    wd_weight: float = param(10.0, "weight of mean_k ||p_k||^2", ge=0)
    cov_reg: float = param(5e4, "IPS weight of the second member", ge=0, space=(5e4, 1e5, 5e5))
    alpha: float = param(0.05, "decay of the IPS weight over members", ge=0)
    init_std: float = param(1e-2, "prototype initialization scale", gt=0)
    center: bool = param(True, "centre every feature row before its L2 normalization")
    balance: str = param("class", "keys of the balanced subsamples", choices=DPE_BALANCE)
    selection: str = param("worst_class", "per-member epoch choice", choices=DPE_SELECTION)
    min_group_size: int = param(10, "pseudo-groups smaller than this are left out of the criterion", ge=1)
    sequential: bool = param(True, "members one after another (the authors' order) or all at once")

    def fit(self, bundle: EmbeddingBundle, *, seed: int) -> MethodResult:
        seed = check_positive_int(seed, "seed", allow_zero=True)
        # the hyperparameters were checked against their declarations when the method was built
        n_members, epochs = int(self.num_members), int(self.epochs)
        hp = {k: float(getattr(self, k)) for k in ("momentum", "weight_decay", "wd_weight", "cov_reg", "alpha")}
        lr, scale, init_std = float(self.lr), float(self.entropic_scale), float(self.init_std)
        c = int(bundle.n_classes)
        held = bundle.view("heldout")
        if bundle.features.shape[1] < 2:
            raise GradTuneInputError("DPE needs features with at least 2 columns (its IPS term divides by d - 1)")
        missing = sorted(set(range(c)) - set(np.unique(held.labels).tolist()))
        if missing:
            raise GradTuneInputError(f"DPE trains one prototype per class on the held-out rows, but class(es) "
                                     f"{missing} have no held-out row; give every class held-out rows")
        needs_erm = self.balance == "pseudo_group" or self.selection.startswith("pseudo_erm")
        head = erm_head(bundle) if needs_erm else None
        keys = held.labels
        if self.balance == "pseudo_group":
            keys = 2 * held.labels + (head.predict(held.features) != held.labels)
        streams = seed_streams(seed, "subsets", "heads")
        subsets = class_balanced_subsets(keys, n_members, streams.rng("subsets"))
        gen = streams.generator("heads")
        u = normalize_features(held.features, center=self.center)
        batch = min(int(self.batch_size), subsets.shape[1])
        lam = ips_weights(hp["cov_reg"], hp["alpha"], n_members)
        score_fn = self._epoch_score(bundle, head, c)
        with torch_threads(1):
            trainer = train_dpe_sequential if self.sequential else train_dpe
            out = trainer(u, torch.as_tensor(held.labels), torch.as_tensor(subsets), c, epochs=epochs,
                            batch_size=batch, lr=lr, momentum=hp["momentum"], weight_decay=hp["weight_decay"],
                            entropic_scale=scale, wd_weight=hp["wd_weight"],
                            ips_weight=torch.as_tensor(lam, dtype=torch.float32), init_std=init_std,
                            generator=gen, score_fn=score_fn)
        model = DPEModel(out["prototypes"].numpy(), out["scales"].numpy(), center=self.center)
        q = out["prototypes"] / torch.linalg.vector_norm(out["prototypes"], dim=2, keepdim=True).clamp_min(_EPS)
        cos = torch.einsum("mkd,nkd->kmn", q, q)  # (C, M, M) per-class cosine between members
        off = ~torch.eye(n_members, dtype=torch.bool)
        diag: dict[str, Any] = {
            "subsample_size": int(subsets.shape[1]),
            "batch_size": int(batch),
            "best_epoch": out["best_epoch"].tolist(),
            "member_selection_score": [None if not np.isfinite(v) else float(v) for v in out["best_score"]],
            "distance_scales": out["scales"].tolist(),
            "final_loss": out["loss"][-1].tolist(),
            "ips_weights": lam.tolist(),
            "mean_abs_cosine_between_members": float(cos[:, off].abs().mean()) if n_members > 1 else None,
        }
        if score_fn is not None:
            score = self._scorer(bundle, head, c)
            diag["ensemble_selection_score"] = float(score(model.logits(bundle.view("selection").features)))
        return MethodResult(model, diag)

    def _scorer(self, bundle: EmbeddingBundle, head: Any, c: int) -> Callable[[np.ndarray], float]:
        """The selection rows' score of (n_sel, C) logits (higher is better)."""
        sel = bundle.view("selection")
        scorer = LabelFreeScorer(sel.labels, c, erm_logits=head.logits(sel.features) if head else None,
                                 min_group_size=int(self.min_group_size))
        return lambda z: scorer(self.selection, z)

    def _epoch_score(self, bundle: EmbeddingBundle, head: Any,
                     c: int) -> Callable[[torch.Tensor, torch.Tensor], np.ndarray] | None:
        """``(prototypes (M, C, d), scales (M,)) -> (M,)`` member scores; None keeps the last epoch."""
        if self.selection == "last":
            return None
        score = self._scorer(bundle, head, c)
        u_sel = normalize_features(bundle.view("selection").features, center=self.center)

        def score_fn(protos: torch.Tensor, scales: torch.Tensor) -> np.ndarray:
            z = _member_logits(u_sel, protos, scales).numpy()
            return np.array([score(z[m]) for m in range(z.shape[0])])
        return score_fn
