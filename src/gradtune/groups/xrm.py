"""XRM-style group inference: twin linear probes that swap labels on each other's mistakes.

After Pezeshki et al., "Discovering environments with XRM" (ICML 2024). The pool is
split into two random halves; twin ``t`` is a linear probe trained only on half ``t``,
so the rows of one half are held out for the other twin. During training, every
``flip_every`` steps from step ``flip_start`` on, each row's training label is
replaced, with probability equal to the held-out twin's confidence, by that twin's
prediction wherever the two differ. A shortcut the held-out twin has learned then
spreads to the labels of the rows that contradict it, which makes the twins fit the
shortcut ever more closely; at the end, the rows whose ORIGINAL label the twins'
prediction contradicts are those the shortcut gets wrong: the minority.

Pseudo-group = class x (prediction != label). Which prediction counts is ``rule``:

* ``"average"`` (default): the mean of the two twins' softmax probabilities, the
  reading this module's defaults are tuned for (on frozen encoder features of a pool
  carrying the training bias; ``benchmarks/group_inference.py`` compares the rules).
* ``"held-out"``: for pool rows, the twin that did not train on the row (the reading
  closest to XRM's held-out mistakes); only for the pool, since new rows have none.
* ``"either"``: minority when either twin is wrong (the XRM reference code's
  "cross-mistake").

Defaults: features standardized with the pool's mean and
standard deviation, Adam with lr 1e-3, batch 128, 2,000 steps, flips after steps
200, 250, ... (never after the last step, so the final labels are trained on), flip
probability = the held-out twin's max softmax probability. Both twins start from zero,
train as one (2, C, d) parameter stack (:mod:`gradtune.groups._heads`), and all the
randomness (the halves, the batches, the flip draws) is drawn up front from one seed
(:func:`draw_xrm_schedule`), so a run can be replayed exactly. Training runs on the
CPU in the features' dtype (float32 or float64; others become float32), and features
on another device are copied to it.

The authors' recipe (``quick_run.run_xrm`` of the XRM reference code) is the named
configuration :data:`XRM_AUTHORS` (also ``XRM_CONFIGS["authors"]``), to be read with
``rule="either"``: zero-initialised twins without a bias term on the raw features,
full-batch gradient descent (SGD, lr 1e-2, no momentum) on each twin's whole half for
3,000 steps, the class-balanced loss, and a rescaled-confidence flip after every step.
The flip draws of that recipe are taken step by step from the same generator, after the
halves, rather than up front (3,000 events x N draws would be held in memory otherwise).
Differences from the reference code: the halves are one random split of the pool drawn
here, and the loss gradient is written in closed form (no autograd). The defaults above
stay as they are: other components are tuned on them. Purity / recall of both on the
project's bundles: ``docs/baselines.md`` (``benchmarks/baselines_reference.py``).

Shapes: N pool rows, M new rows, d features, C classes, S steps, B batch, F flip events.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from gradtune._params import check_fields, param
from gradtune._threads import torch_threads
from gradtune._validation import (
    GradTuneInputError,
    check_choice,
    check_features,
    check_labels,
    check_positive_int,
    make_generator,
)
from gradtune.groups._heads import ce_logit_grad, epoch_batches, stack_logits, train_heads
from gradtune.groups.base import InferredGroups, check_pool, class_by_flag, standardizer
from gradtune.groups.registry import register_group_inference

__all__ = ["XRMConfig", "XRMSchedule", "XRMTwins", "XRM_AUTHORS", "XRM_CONFIGS", "draw_xrm_schedule", "fit_xrm",
           "xrm_groups"]

RULES = ("average", "held-out", "either")
FLIP_PROBABILITIES = ("confidence", "rescaled")
OPTIMIZERS = ("adam", "full-batch-sgd")


@dataclass(frozen=True)
class XRMConfig:
    """How the twins are trained.

    Parameters
    ----------
    n_steps : int, default=2000
        Adam steps per twin.
    batch_size : int, default=128
        Rows per twin per step (capped at the smaller half's size).
    lr : float, default=1e-3
        Adam step size (betas 0.9 / 0.999, eps 1e-8, no weight decay).
    flip_start : int, default=200
        First step after which labels are flipped.
    flip_every : int, default=50
        Steps between label flips.
    flip_probability : {"confidence", "rescaled"}, default="confidence"
        ``"confidence"``: the held-out twin's max softmax probability ``p``.
        ``"rescaled"``: ``(p - 1/C) * C / (C - 1)``, which is 0 for a uniform prediction
        (the XRM reference code's choice).
    class_balanced : bool, default=False
        Average each batch's loss per class first (XRM's reference code balances classes).
    standardize : bool, default=True
        Standardize features with the pool's mean and standard deviation (columns with
        zero spread are centred only).
    n_threads : int or None, default=1
        Torch threads while training (tiny steps run fastest on one); None leaves it.
    optimizer : {"adam", "full-batch-sgd"}, default="adam"
        ``"full-batch-sgd"``: plain gradient descent on each twin's whole half per step
        (``batch_size`` is then ignored), as the XRM reference code trains.
    fit_bias : bool, default=True
        Train a bias term (False: the twins are ``W x`` only, as in the reference code).
    """

    n_steps: int = param(2000, "Adam steps per twin", ge=1)
    batch_size: int = param(128, "rows per twin per step", ge=1)
    lr: float = param(1e-3, "Adam step size", gt=0)
    flip_start: int = param(200, "first step after which labels are flipped", ge=1)
    flip_every: int = param(50, "steps between label flips", ge=1)
    flip_probability: str = param("confidence", "the probability a label is flipped with",
                                  choices=FLIP_PROBABILITIES)
    class_balanced: bool = param(False, "average each batch's loss per class first")
    standardize: bool = param(True, "standardize features with the pool's statistics")
    n_threads: int | None = param(1, "torch threads while training (None: leave torch's setting)", kind="int",
                                  ge=1, optional=True)
    optimizer: str = param("adam", "the twins' optimizer", choices=OPTIMIZERS)
    fit_bias: bool = param(True, "train a bias term")

    def __post_init__(self) -> None:
        check_fields(self, prefix="XRMConfig.")

    def flip_steps(self) -> tuple[int, ...]:
        """Steps (1-based) after which labels are flipped."""
        return tuple(range(self.flip_start, self.n_steps, self.flip_every))


#: The XRM reference code's recipe (module doc); read its groups with ``rule="either"``.
XRM_AUTHORS = XRMConfig(n_steps=3000, lr=1e-2, flip_start=1, flip_every=1, flip_probability="rescaled",
                        class_balanced=True, standardize=False, optimizer="full-batch-sgd", fit_bias=False)

#: Named configurations: the project's defaults and the authors' recipe.
XRM_CONFIGS: dict[str, XRMConfig] = {"default": XRMConfig(), "authors": XRM_AUTHORS}


@dataclass(frozen=True)
class XRMSchedule:
    """Every random choice of one XRM run, drawn before training.

    Attributes
    ----------
    assignment : int64 Tensor of shape (N,)
        The twin (0 or 1) that trains on each row; the halves differ in size by at most 1.
    batches : int64 Tensor of shape (S, 2, B)
        Rows each twin trains on at each step (from its own half only).
    flip_steps : tuple of int
        Steps after which labels are flipped (F of them).
    flip_draws : Tensor of shape (F, N)
        Uniform draws in [0, 1): row ``i`` is flipped at event ``f`` when
        ``flip_draws[f, i]`` is below the flip probability.
    """

    assignment: torch.Tensor
    batches: torch.Tensor
    flip_steps: tuple[int, ...]
    flip_draws: torch.Tensor


def draw_xrm_schedule(n: int, config: XRMConfig, seed: int | torch.Generator,
                      dtype: torch.dtype = torch.float32) -> XRMSchedule:
    """Draw the halves, batches and flip draws for a pool of ``n`` rows.

    The order of the draws is fixed: the halves' permutation, twin 0's batches, twin 1's
    batches, then the flip draws, all from one generator.
    """
    n = check_positive_int(n, "n")
    if n < 2:
        raise GradTuneInputError(f"XRM needs at least 2 pool rows (one per twin), got {n}")
    g = make_generator(seed)
    perm = torch.randperm(n, generator=g)
    assignment = torch.zeros(n, dtype=torch.int64)
    assignment[perm[n // 2:]] = 1
    members = [torch.nonzero(assignment == t).squeeze(1) for t in (0, 1)]
    b = min(config.batch_size, n // 2)
    batches = torch.stack([epoch_batches(m, config.n_steps, b, g) for m in members], dim=1)
    steps = config.flip_steps()
    draws = torch.rand(len(steps), n, generator=g, dtype=dtype)
    return XRMSchedule(assignment, batches, steps, draws)


@dataclass(frozen=True)
class XRMTwins:
    """Two fitted twin probes and how to read pseudo-groups from them.

    Attributes
    ----------
    weight : Tensor of shape (2, C, d)
        Twin weights, acting on standardized features.
    bias : Tensor of shape (2, C)
    mean, scale : Tensor of shape (d,)
        The pool statistics features are standardized with: ``(x - mean) / scale``.
    assignment : int64 Tensor of shape (N,)
        The twin that trained on each pool row.
    final_labels : int64 Tensor of shape (N,)
        The pool's training labels after the last flip.
    n_flipped : int
        Pool rows whose final training label differs from the given one.
    config : XRMConfig
    """

    weight: torch.Tensor
    bias: torch.Tensor
    mean: torch.Tensor
    scale: torch.Tensor
    assignment: torch.Tensor
    final_labels: torch.Tensor
    n_flipped: int
    config: XRMConfig = field(default_factory=XRMConfig)

    @property
    def n_classes(self) -> int:
        return int(self.weight.shape[1])

    def _x(self, features: Any, name: str) -> torch.Tensor:
        x = check_features(features, name).detach().cpu()
        if x.shape[1] != self.weight.shape[2]:
            raise GradTuneInputError(
                f"{name} has {x.shape[1]} columns but the twins were fitted on {self.weight.shape[2]}")
        return (x.to(self.weight.dtype) - self.mean) / self.scale

    @torch.no_grad()
    def twin_logits(self, features: Any) -> torch.Tensor:
        """Both twins' logits on ``features`` (M, d): shape (2, M, C)."""
        return stack_logits(self._x(features, "features"), self.weight, self.bias)

    @torch.no_grad()
    def twin_probabilities(self, features: Any) -> torch.Tensor:
        """Both twins' softmax probabilities on ``features`` (M, d): shape (2, M, C)."""
        return torch.softmax(self.twin_logits(features), dim=-1)

    @torch.no_grad()
    def predict_proba(self, features: Any) -> torch.Tensor:
        """The twins' averaged class probabilities, shape (M, C)."""
        return self.twin_probabilities(features).mean(dim=0)

    def pool_groups(self, features: Any, labels: Any, *, rule: str = "average") -> InferredGroups:
        """Pseudo-groups of the pool the twins were fitted on (same rows, same order).

        Parameters
        ----------
        features : array-like of shape (N, d)
        labels : array-like of shape (N,)
            The pool's given labels (not the flipped ones).
        rule : {"average", "held-out", "either"}, default="average"
            Which prediction defines a mistake (see the module docstring).
        """
        check_choice(rule, "rule", RULES)
        n = self.assignment.shape[0]
        x = check_features(features, "features")
        if x.shape[0] != n:
            raise GradTuneInputError(
                f"features has {x.shape[0]} rows but the twins were fitted on a pool of {n}; "
                "use assign() for rows outside the pool")
        return self._groups(x, labels, rule, held_out=self.assignment)

    def assign(self, features: Any, labels: Any, *, rule: str = "average") -> InferredGroups:
        """Pseudo-groups of new rows (e.g. the selection half), from both twins.

        Parameters
        ----------
        features : array-like of shape (M, d)
        labels : array-like of shape (M,)
        rule : {"average", "either"}, default="average"
            New rows were held out from both twins, so ``"held-out"`` does not apply.
        """
        check_choice(rule, "rule", ("average", "either"))
        return self._groups(features, labels, rule, held_out=None)

    def _groups(self, features: Any, labels: Any, rule: str,
                held_out: torch.Tensor | None) -> InferredGroups:
        p = self.twin_probabilities(features)              # (2, M, C)
        m = p.shape[1]
        y = check_labels(labels, self.n_classes, n=m).cpu()
        rows = torch.arange(m)
        if rule == "average":
            q = p.mean(dim=0)
            wrong = q.argmax(dim=1) != y
            score = 1.0 - q[rows, y]
        elif rule == "held-out" and held_out is not None:
            q = p[1 - held_out, rows]
            wrong = q.argmax(dim=1) != y
            score = 1.0 - q[rows, y]
        elif rule == "either":
            wrong = (p.argmax(dim=2) != y).any(dim=0)
            score = 1.0 - p[:, rows, y].min(dim=0).values
        else:
            raise GradTuneInputError(f"rule={rule!r} needs the pool's rows; use pool_groups()")
        y_np = y.numpy()
        minority = wrong.numpy()
        groups, n_groups = class_by_flag(y_np, minority, self.n_classes)
        return InferredGroups(groups, n_groups, minority, score.double().numpy(), "xrm", {
            "rule": rule, "twins": self, "n_flipped": self.n_flipped,
        })


def fit_xrm(features: Any, labels: Any, *, seed: int | torch.Generator,
            config: XRMConfig | None = None, n_classes: int | None = None) -> XRMTwins:
    """Train the twin probes on a pool.

    Parameters
    ----------
    features : array-like of shape (N, d)
        The pool's features; frozen pretrained-encoder features work best.
    labels : array-like of shape (N,)
        Class labels in ``0..C-1``.
    seed : int or torch.Generator
        Source of the halves, batches and flip draws.
    config : XRMConfig, optional
    n_classes : int, optional
        C, when some class is absent from the pool (default: ``labels.max() + 1``).

    Returns
    -------
    XRMTwins
    """
    config = XRMConfig() if config is None else config
    x, y, c = check_pool(features, labels, n_classes, min_rows=2)
    x = x.detach().cpu()
    if x.dtype not in (torch.float32, torch.float64):
        x = x.to(torch.float32)
    mean, scale = standardizer(x, config.standardize)
    if config.optimizer == "full-batch-sgd":
        n = check_positive_int(x.shape[0], "n")
        g = make_generator(seed)
        perm = torch.randperm(n, generator=g)
        assignment = torch.zeros(n, dtype=torch.int64)
        assignment[perm[n // 2:]] = 1
        xs = (x - mean).div_(scale)
        with torch.no_grad(), torch_threads(config.n_threads):
            weight, bias, final = _train_twins_full_batch(xs, y.cpu(), c, assignment, config, g)
        return XRMTwins(weight, bias, mean, scale, assignment, final, int((final != y.cpu()).sum()), config)
    schedule = draw_xrm_schedule(x.shape[0], config, seed, dtype=x.dtype)
    xs = (x - mean).div_(scale)  # one pool-sized temporary, not two
    weight, bias, final = _train_twins(xs, y.cpu(), c, schedule, config)
    return XRMTwins(weight, bias, mean, scale, schedule.assignment, final,
                    int((final != y.cpu()).sum()), config)


def _train_twins_full_batch(xs: torch.Tensor, y: torch.Tensor, c: int, assignment: torch.Tensor,
                            config: XRMConfig, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Full-batch gradient descent of both twins on their halves of ``xs`` (N, d), flipping
    labels after each step in ``config.flip_steps()``; returns weight (2, C, d), bias (2, C)
    (zero when ``fit_bias`` is False) and the final labels (N,)."""
    n, d = xs.shape
    weight = torch.zeros(2, c, d, dtype=xs.dtype)
    bias = torch.zeros(2, c, dtype=xs.dtype)
    labels = y.clone()
    rows = torch.arange(n)
    own = torch.nn.functional.one_hot(assignment, 2).to(xs.dtype).T  # (2, N): twin t trains on its half
    sibling = 1 - assignment
    flips = set(config.flip_steps())
    eye = torch.eye(c, dtype=xs.dtype)
    for step in range(1, config.n_steps + 1):
        prob = torch.softmax(stack_logits(xs, weight, bias), dim=-1)     # (2, N, C)
        if step - 1 in flips:  # the flip after the previous step reads the twins as they are now
            conf, pred = prob[sibling, rows].max(dim=1)
            if config.flip_probability == "rescaled":
                conf = (conf - 1.0 / c) * (c / (c - 1.0))
            hit = torch.rand(n, generator=g, dtype=xs.dtype) < conf
            labels = torch.where(hit, pred, labels)
        onehot = eye[labels]                                             # (N, C)
        if config.class_balanced:  # mean over present classes of each class's mean loss, per twin
            counts = own @ onehot                                        # (2, C)
            present = (counts > 0).sum(dim=1, keepdim=True).to(xs.dtype)  # (2, 1)
            coef = own / (counts[:, labels] * present).clamp_min(1.0)    # (2, N)
        else:
            coef = own / own.sum(dim=1, keepdim=True)
        g_rows = (prob - onehot) * coef.unsqueeze(2)                     # (2, N, C)
        weight.sub_(torch.bmm(g_rows.transpose(1, 2), xs.expand(2, n, d)), alpha=config.lr)
        if config.fit_bias:
            bias.sub_(g_rows.sum(dim=1), alpha=config.lr)
    return weight, bias, labels


def _train_twins(xs: torch.Tensor, y: torch.Tensor, c: int, schedule: XRMSchedule,
                 config: XRMConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Train on standardized features ``xs`` (N, d); return weight, bias, final labels."""
    n, d = xs.shape
    weight = torch.zeros(2, c, d, dtype=xs.dtype)
    bias = torch.zeros(2, c, dtype=xs.dtype)
    labels = y.clone()
    rows = torch.arange(n)
    sibling = 1 - schedule.assignment
    event = {s: f for f, s in enumerate(schedule.flip_steps)}

    def flip(step: int, w: torch.Tensor, b: torch.Tensor) -> None:
        f = event.get(step)
        if f is None:
            return
        p = torch.softmax(stack_logits(xs, w, b), dim=-1)[sibling, rows]   # (N, C)
        conf, pred = p.max(dim=1)
        if config.flip_probability == "rescaled":
            conf = (conf - 1.0 / c) * (c / (c - 1.0))
        hit = schedule.flip_draws[f] < conf
        labels.copy_(torch.where(hit, pred, labels))

    with torch.no_grad(), torch_threads(config.n_threads):
        train_heads(xs, labels, schedule.batches, weight, bias, logit_grad=ce_logit_grad,
                    lr=config.lr, class_balanced=config.class_balanced, hook=flip)
    return weight, bias, labels


@register_group_inference("xrm", ("features", "labels", "seed"),
                          "XRM-style twin probes with cross-mistake label flipping")
def xrm_groups(features: Any, labels: Any, *, seed: int | torch.Generator,
               config: XRMConfig | None = None, rule: str = "average",
               n_classes: int | None = None) -> InferredGroups:
    """Fit XRM twins on the pool and return the pool's pseudo-groups.

    Parameters
    ----------
    features : array-like of shape (N, d)
        Pool features (frozen encoder features, not the ERM model's penultimate layer).
    labels : array-like of shape (N,)
    seed : int or torch.Generator
    config : XRMConfig, optional
    rule : {"average", "held-out", "either"}, default="average"
        Which prediction defines a mistake (see the module docstring).
    n_classes : int, optional

    Returns
    -------
    InferredGroups
        ``groups = 2 * label + minority`` (G = 2C); ``minority`` = the rule's prediction
        differs from the label; ``scores`` = 1 - the rule's probability of the label
        (for ``"either"``, the larger of the twins'). ``info["twins"]`` holds the fitted
        :class:`XRMTwins`, whose :meth:`XRMTwins.assign` labels new rows.
    """
    check_choice(rule, "rule", RULES)
    twins = fit_xrm(features, labels, seed=seed, config=config, n_classes=n_classes)
    return twins.pool_groups(features, labels, rule=rule)

