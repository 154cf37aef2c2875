"""Hyperparameter tuning for every registered method, on the ``selection`` rows.

Two policies, chosen by ``mode``:

* ``'group'``: the peers' protocol. Each grid point is scored by **worst-group
  accuracy** on the ``selection`` rows, which reads their group labels; the run is then
  a run that uses group labels in validation (``TuningTable.uses_group_labels_val``).
* ``'label_free'``: each grid point is scored by **worst-class accuracy** on the
  ``selection`` rows (labels only, no groups are read). It needs no annotation of the
  spurious attribute and tracks worst-group accuracy where a shortcut hurts one class
  more than the other (as fine-tuning that collapses one class does); it cannot see a
  failure confined within a class.

Grids are data: each method class declares ``search_space: ClassVar[dict[str, list]]``
next to its defaults (``{}`` when the method tunes itself, like DFR, or has nothing to tune, like ERM). A key ``"finetune.lr"`` sets a
field of the method's :class:`~gradtune.finetune.linear.FinetuneConfig`. Every grid point
is fitted with the same ``seed``, so differences come from the hyperparameters alone.
Ties go to the earliest grid point (the grid is the product of the lists in order, the
first key varying slowest).

Nothing here reads ``test`` rows: methods train on ``heldout`` (DFR also on
``selection``, as its authors do) and scores come from ``selection``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Any

import numpy as np

from gradtune._params import Param, declarations, flat_declarations, relation_problems
from gradtune._validation import GradTuneInputError, check_choice, check_positive_int
from gradtune.embeddings.bundle import EmbeddingBundle
from gradtune.methods.base import METHODS, Method, _import_builtin_methods
from gradtune.metrics.accuracy import worst_class_accuracy, worst_group_accuracy

__all__ = ["select_hyperparameters", "search_space", "family_defaults", "expand_grid", "build_method",
           "check_method_params",
           "TuningTable", "TUNING_MODES"]

TUNING_MODES = ("group", "label_free")

@dataclass
class TuningTable:
    """The scores of every grid point.

    rows : list of dicts ``{"params", "score", "accuracy", "worst_class_accuracy",
        "worst_group_accuracy" (group mode only)}``, in grid order;
    best_index : position of the chosen row;
    mode : 'group' or 'label_free'; metric : the score's name;
    uses_group_labels_val : whether this selection read group labels;
    group_label_use : the whole run's use of group labels: 'train+val', 'val' or 'none'.
    """

    method: str
    mode: str
    metric: str
    uses_group_labels_val: bool
    group_label_use: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    best_index: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "mode": self.mode, "metric": self.metric,
                "uses_group_labels_val": self.uses_group_labels_val,
                "group_label_use": self.group_label_use, "best_index": self.best_index, "rows": self.rows}


def _method_class(name: str) -> type[Method]:
    _import_builtin_methods()
    if name not in METHODS:
        raise GradTuneInputError(f"unknown method {name!r}; available: {sorted(METHODS)}")
    return METHODS[name]


def family_defaults(method_name: str, family: str | None) -> dict[str, Any]:
    """The dotted defaults of a registered method for a data family (see
    :meth:`Method.family_defaults`); ``{}`` for vision, tabular or an unknown family."""
    return _method_class(method_name).family_defaults(family)


def search_space(method_name: str) -> dict[str, list]:
    """The default grid of a registered method (``{}``: nothing to tune)."""
    cls = _method_class(method_name)
    return cls.search_space()


def expand_grid(space: dict[str, list]) -> list[dict[str, Any]]:
    """Cartesian product of ``{name: [values]}`` in order (first key slowest); ``{}`` -> ``[{}]``."""
    for key, values in space.items():
        if not isinstance(values, (list, tuple)) or len(values) == 0:
            raise GradTuneInputError(f"grid entry {key!r} must be a non-empty list of values, got {values!r}")
    keys = list(space)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(space[k] for k in keys))]


def check_method_params(method_name: str, params: dict[str, Any] | None, *, relations: bool = True) -> None:
    """Check dotted ``params`` of a registered method against its declarations, each value
    and then (``relations``) the relations between them and the other parameters'
    defaults (``top_k <= size``), without building it.

    Raises
    ------
    GradTuneInputError
        ``"<key> must be ..., got ..."``, naming the first bad parameter; or naming a key
        the method does not declare.
    """
    cls = _method_class(method_name)
    specs = flat_declarations(cls)
    blocks = {name for name, d in declarations(cls).items() if not isinstance(d, Param)}
    valid = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    for key, value in (params or {}).items():
        outer, _, inner = key.partition(".")
        if outer not in valid:
            raise GradTuneInputError(f"{key!r} is not a parameter of method {method_name!r}; valid: {sorted(valid)}")
        if inner and outer not in blocks:
            raise GradTuneInputError(f"parameter {outer!r} of method {method_name!r} has no sub-fields")
        if key in specs:
            why = specs[key].problem(value)
            if why is not None:
                raise GradTuneInputError(f"{key} {why}")
        elif inner:
            raise GradTuneInputError(f"bad sub-parameter of {outer!r}: {inner!r} is not one of its fields; "
                                     f"valid: {sorted(k.partition('.')[2] for k in specs if k.startswith(outer + '.'))}")
    for key, why in relation_problems(cls, params or {}) if relations else ():
        raise GradTuneInputError(f"{key} {why}")


def build_method(method_name: str, params: dict[str, Any] | None = None) -> Method:
    """Instantiate a registered method with ``params``, checked first against its
    declarations (:func:`check_method_params`); ``"a.b"`` keys set field ``b`` of the block
    ``a`` (e.g. ``{"finetune.epochs": 10}``)."""
    cls = _method_class(method_name)
    check_method_params(method_name, params)
    top: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for key, value in (params or {}).items():
        outer, _, inner = key.partition(".")
        if inner:
            nested.setdefault(outer, {})[inner] = value
        else:
            top[outer] = value
    if nested:
        defaults = cls(**top)
        for outer, overrides in nested.items():
            base = top.get(outer, getattr(defaults, outer))
            if not is_dataclass(base):
                raise GradTuneInputError(f"parameter {outer!r} of method {method_name!r} has no sub-fields")
            try:
                top[outer] = replace(base, **overrides)
            except GradTuneInputError as err:
                raise GradTuneInputError(f"{outer}.{err}") from None
            except TypeError as err:
                raise GradTuneInputError(f"bad sub-parameter of {outer!r}: {err}") from None
    return cls(**top)


def _score(model: Any, bundle: EmbeddingBundle, mode: str) -> dict[str, float]:
    sel = bundle.view("selection")
    logits = np.asarray(model.logits(sel.features))
    if logits.shape != (len(sel), bundle.n_classes) or not np.isfinite(logits).all():
        return {"score": float("-inf"), "accuracy": float("nan"), "worst_class_accuracy": float("nan")}
    pred = logits.argmax(axis=1)
    out = {"accuracy": float((pred == sel.labels).mean()),
           "worst_class_accuracy": worst_class_accuracy(pred, sel.labels)}
    if mode == "group":
        out["worst_group_accuracy"] = worst_group_accuracy(pred, sel.labels, sel.groups)
        out["score"] = out["worst_group_accuracy"]
    else:
        out["score"] = out["worst_class_accuracy"]
    return out


def select_hyperparameters(method_name: str, bundle: EmbeddingBundle, *, seed: int, mode: str = "group",
                           grid: dict[str, list] | None = None,
                           base_params: dict[str, Any] | None = None) -> tuple[dict[str, Any], TuningTable]:
    """Fit ``method_name`` at every grid point and keep the best on the ``selection`` rows.

    Parameters
    ----------
    method_name : str
        A registered method.
    bundle : EmbeddingBundle
        With ``heldout`` and ``selection`` rows (``resolve_heldout`` first if needed).
    seed : int
        Passed to every fit.
    mode : {'group', 'label_free'}, default='group'
        Worst-group accuracy (reads selection groups) or worst-class accuracy (does not).
    grid : dict name -> list, optional
        Overrides the method's default search space.
    base_params : dict, optional
        Fixed parameters applied to every grid point (grid values win on conflict),
        e.g. ``{"finetune.epochs": 5}`` for a quick run.

    Returns
    -------
    best_params : dict
        The chosen grid point (merged with ``base_params``); instantiate with
        :func:`build_method`.
    table : TuningTable
    """
    check_choice(mode, "mode", TUNING_MODES)
    seed = check_positive_int(seed, "seed", allow_zero=True)
    cls = _method_class(method_name)
    sel = bundle.view("selection")
    if mode == "group" and sel.groups is None:
        raise GradTuneInputError("mode='group' needs group labels on the selection rows; the bundle has none "
                                 "(use mode='label_free')")
    points = expand_grid(search_space(method_name) if grid is None else grid)
    uses_val = mode == "group" or cls.uses_group_labels_val or cls.uses_group_labels_train
    use = "train+val" if cls.uses_group_labels_train else ("val" if uses_val else "none")
    table = TuningTable(method_name, mode, "worst_group_accuracy" if mode == "group" else "worst_class_accuracy",
                           uses_val, use)
    for point in points:
        params = {**(base_params or {}), **point}
        result = build_method(method_name, params).fit(bundle, seed=seed)
        table.rows.append({"params": params, **_score(result.model, bundle, mode)})
    table.best_index = int(np.argmax([r["score"] for r in table.rows]))
    return dict(table.rows[table.best_index]["params"]), table
