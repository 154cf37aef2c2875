"""Hyperparameters as data: one declaration per parameter, read by every door.

A method (or an inner block of settings such as
:class:`~gradtune.finetune.linear.FinetuneConfig`) is a dataclass whose fields are
declared with :func:`param` (a value) or :func:`nested` (a block of settings, itself a
dataclass declared the same way)::

    @dataclass
    class MyMethod(Method):
        size: int = param(500, "M', fine-tuning set size", ge=1)
        top_k: int = param(400, "k, top scores taken", ge=0, at_most="size")
        finetune: FinetuneConfig = nested(FinetuneConfig, space={"lr": [1e-3, 1e-2]})

A declaration holds the name (the field's), the default, the constraint (an interval
``ge``/``gt``/``le``/``lt``, ``choices``, ``optional`` for None, ``nonempty`` for
tuples, and ``at_most``, a relation to another field), the search-space values
(``space``), the text-family default (``text``), the value that makes a unit test
fast (``fast``) and a one-line ``doc``. From it come the dataclass's defaults, the
constructor's check (:func:`check_fields`, called from ``__post_init__``), the config
checker's field checks, ``search_space``, the family defaults and the tests' fast
settings; :func:`invalid_values` generates values a declaration forbids, for tests.

This module imports nothing heavy: ``gradtune --help`` does not load it, but the config
checker and ``gradtune tune``'s argument check do, before torch.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields, is_dataclass
from typing import Any

from gradtune._errors import GradTuneInputError

__all__ = ["Param", "Nest", "param", "declare", "nested", "override", "declared", "declarations", "check_fields",
           "check_value", "default_of", "space_of", "text_overrides", "fast_params", "invalid_values", "defaults_of",
           "flat_defaults", "NOTHING", "constraint_text", "params_table"]

_PARAM = "gradtune.param"
_NEST = "gradtune.nest"


class _Nothing:
    """Marks an absent ``text`` / ``fast`` value (None is a legitimate value)."""

    def __repr__(self) -> str:
        return "NOTHING"


NOTHING: Any = _Nothing()

_KINDS = ("bool", "int", "float", "str", "tuple")


@dataclass(frozen=True)
class Param:
    """The declaration of one hyperparameter (see the module docstring).

    kind : 'bool', 'int', 'float', 'str' or 'tuple' (inferred from the default);
    item : the kind of a tuple's entries; the interval and ``choices`` then apply to
    each entry. ``optional``: None is allowed. ``or_list``: a list of such values
    (one per group, say) is allowed too.
    """

    default: Any
    doc: str
    kind: str
    item: str | None = None
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple[Any, ...] | None = None
    optional: bool = False
    nonempty: bool = False
    length: int | None = None
    or_list: bool = False
    at_most: str | None = None
    space: tuple[Any, ...] | None = None
    text: Any = NOTHING
    fast: Any = NOTHING

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is forbidden (``"must be > 0, got -3"``), or None if it is allowed."""
        if value is None:
            return None if self.optional else f"must be {_KIND_WORD[self.kind]}, got None"
        if self.or_list and isinstance(value, (list, tuple)):  # a number, or one per item
            for i, v in enumerate(value):
                why = _scalar_problem(self, self.kind, v)
                if why is not None:
                    return f"entry [{i}] {why}"
            return None
        if self.kind == "tuple":
            if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list)):
                return f"must be a list of {_KIND_PLURAL[self.item or 'str']}, got {value!r}"
            if self.nonempty and not value:
                return "must not be empty"
            if self.length is not None and len(value) != self.length:
                return f"must hold {self.length} entries, got {len(value)}"
            for i, v in enumerate(value):
                why = _scalar_problem(self, self.item or "str", v)
                if why is not None:
                    return f"entry [{i}] {why}"
            return None
        return _scalar_problem(self, self.kind, value)

    def field(self, **changes: Any) -> Any:
        """A dataclass field declared by this (shared) declaration, with ``changes``
        (e.g. another ``default=``) applied."""
        from dataclasses import replace

        spec = replace(self, **changes) if changes else self
        why = spec.problem(spec.default)
        if why is not None:
            raise TypeError(f"the default {spec.default!r} breaks its own declaration: {why}")
        return field(default=spec.default, metadata={_PARAM: spec})

    def with_default(self, default: Any) -> Param:
        """The same declaration with another default (a subclass's own value)."""
        from dataclasses import replace

        return replace(self, default=default)


_KIND_WORD = {"bool": "a boolean (true/false)", "int": "an integer", "float": "a number", "str": "a string",
              "tuple": "a list"}
_KIND_PLURAL = {"bool": "booleans", "int": "integers", "float": "numbers", "str": "strings", "tuple": "lists"}


def _fits(kind: str, value: Any) -> bool:
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    return isinstance(value, str)


def _scalar_problem(p: Param, kind: str, value: Any) -> str | None:
    if not _fits(kind, value):
        return f"must be {_KIND_WORD[kind]}, got {value!r}"
    if p.choices is not None:
        return None if value in p.choices else f"must be one of {sorted(p.choices)}, got {value!r}"
    if kind in ("int", "float"):
        v = float(value)
        if not math.isfinite(v):
            return f"must be finite, got {value!r}"
        if ((p.ge is not None and v < p.ge) or (p.gt is not None and v <= p.gt)
                or (p.le is not None and v > p.le) or (p.lt is not None and v >= p.lt)):
            interval = _interval_text(p)
            verb = "must lie" if interval.startswith("in ") else "must be"
            none = " (or be None)" if p.optional and p.default is not None else ""
            return f"{verb} {interval}{none}, got {value!r}"
    return None


def _interval_text(p: Param) -> str:
    ge, gt = p.ge, p.gt
    if (p.kind == "int" or p.item == "int") and ge is not None and p.le is not None:
        return f"in {_num(ge)}..{_num(p.le)}"
    if (p.kind == "int" or p.item == "int") and ge == 1:  # an integer >= 1 reads as "> 0"
        ge, gt = None, 0
    parts = [f"{word} {_num(b)}" for b, word in ((ge, ">="), (gt, ">"), (p.le, "<="), (p.lt, "<"))
             if b is not None]
    return " and ".join(parts)


def _num(b: float) -> str:
    return str(int(b)) if float(b).is_integer() else f"{b:g}"


@dataclass(frozen=True)
class Nest:
    """The declaration of a block of settings: a dataclass ``cls`` (declared with
    :func:`param`), this owner's default ``overrides`` of its fields, and the owner's
    ``space`` / ``fast`` values of its fields (``{field: value}``)."""

    cls: type
    doc: str
    overrides: Mapping[str, Any]
    space: Mapping[str, tuple[Any, ...]]
    fast: Mapping[str, Any]

    def default(self) -> Any:
        return self.cls(**dict(self.overrides))


def _kind_of(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, numbers.Integral):
        return "int"
    if isinstance(value, numbers.Real):
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, (tuple, list)):
        return "tuple"
    raise TypeError(f"give kind= for a default of type {type(value).__name__}")


def param(default: Any, doc: str, **constraint: Any) -> Any:
    """A dataclass field holding a hyperparameter's declaration: :func:`declare`'s
    arguments; the return value is a :func:`dataclasses.field`."""
    return declare(default, doc, **constraint).field()


def declare(default: Any, doc: str, *, kind: str | None = None, item: str | None = None,
          ge: float | None = None, gt: float | None = None, le: float | None = None, lt: float | None = None,
          choices: tuple[Any, ...] | list[Any] | None = None, optional: bool = False, nonempty: bool = False,
          length: int | None = None, or_list: bool = False, at_most: str | None = None,
          space: tuple[Any, ...] | list[Any] | None = None, text: Any = NOTHING, fast: Any = NOTHING) -> Param:
    """A hyperparameter's declaration (see :class:`Param`), to share between classes
    (``size: int = SIZE.field()``) or read where a plain default is needed.

    ``kind`` is inferred from ``default`` (give it when the default is None); a tuple's
    ``item`` kind from its first entry.
    """
    if kind is None:
        kind = _kind_of(default) if default is not None else None
        if kind is None:
            raise TypeError("give kind= for a default of None")
    if kind not in _KINDS:
        raise TypeError(f"kind must be one of {_KINDS}, got {kind!r}")
    if kind == "tuple" and item is None:
        item = _kind_of(default[0]) if default else None
        if item is None:
            raise TypeError("give item= for an empty tuple default")
    return Param(default=tuple(default) if isinstance(default, list) else default, doc=doc, kind=kind, item=item,
                 ge=ge, gt=gt, le=le, lt=lt, choices=None if choices is None else tuple(choices),
                 optional=optional or default is None, nonempty=nonempty, length=length, or_list=or_list,
                 at_most=at_most,
                 space=None if space is None else tuple(space), text=text, fast=fast)


def nested(cls: type, doc: str = "", *, space: Mapping[str, list[Any] | tuple[Any, ...]] | None = None,
           fast: Mapping[str, Any] | None = None, **overrides: Any) -> Any:
    """A dataclass field holding a block of settings ``cls`` (a dataclass of :func:`param`
    fields), with this owner's default ``overrides`` of some of its fields; ``space`` and
    ``fast`` give the owner's search-space and fast-test values of the block's fields."""
    known = {f.name for f in fields(cls)}
    for key in (*overrides, *(space or {}), *(fast or {})):
        if key not in known:
            raise TypeError(f"{cls.__name__} has no field {key!r}")
    spec = Nest(cls=cls, doc=doc or (cls.__doc__ or "").strip().splitlines()[0], overrides=dict(overrides),
                space={k: tuple(v) for k, v in (space or {}).items()}, fast=dict(fast or {}))
    return field(default_factory=spec.default, metadata={_NEST: spec})


def override(owner: type, name: str, default: Any = NOTHING, **changes: Any) -> Any:
    """A subclass's field ``name``: the declaration of ``owner``'s field with another
    ``default`` (and any other changed attributes, e.g. ``space=``)."""
    from dataclasses import replace

    f = next((f for f in fields(owner) if f.name == name), None)
    if f is None:
        raise TypeError(f"{owner.__name__} has no field {name!r}")
    if _PARAM in f.metadata:
        spec: Param = f.metadata[_PARAM]
        if default is not NOTHING:
            changes["default"] = tuple(default) if isinstance(default, list) else default
        return spec.field(**changes)
    nest: Nest = f.metadata[_NEST]
    nest = replace(nest, **changes)
    return field(default_factory=nest.default, metadata={_NEST: nest})


def declared(f: Field) -> Param | Nest | None:
    """The declaration of a dataclass field, or None for an undeclared field."""
    return f.metadata.get(_PARAM) or f.metadata.get(_NEST)


def declarations(cls: type) -> dict[str, Param | Nest]:
    """``{field name: declaration}`` of a dataclass's declared fields, in field order."""
    out: dict[str, Param | Nest] = {}
    for f in fields(cls):
        d = declared(f)
        if d is not None:
            out[f.name] = d
    return out


def _nested_param(nest: Nest, name: str) -> Param:
    spec = declarations(nest.cls)[name]
    assert isinstance(spec, Param)
    return spec.with_default(nest.overrides[name]) if name in nest.overrides else spec


def flat_declarations(cls: type) -> dict[str, Param]:
    """Dotted name -> :class:`Param` of every declared value of ``cls``, blocks expanded
    (``"finetune.lr"``) with the owner's defaults."""
    out: dict[str, Param] = {}
    for name, d in declarations(cls).items():
        if isinstance(d, Nest):
            for sub in declarations(d.cls):
                out[f"{name}.{sub}"] = _nested_param(d, sub)
        else:
            out[name] = d
    return out


def defaults_of(cls: type) -> dict[str, Any]:
    """``{name: default}`` of ``cls``'s declared fields (a block as its default object)."""
    return {name: d.default() if isinstance(d, Nest) else d.default for name, d in declarations(cls).items()}


def default_of(cls: type, name: str) -> Any:
    """The declared default of ``cls``'s field ``name`` (to build another default from it
    without writing the literal twice)."""
    spec = declarations(cls)[name]
    return spec.default() if isinstance(spec, Nest) else spec.default


def flat_defaults(cls: type) -> dict[str, Any]:
    """Dotted name -> default of every declared value (blocks expanded)."""
    return {name: p.default for name, p in flat_declarations(cls).items()}


def constraint_text(p: Param) -> str:
    """The declaration's constraint in words (``"int >= 0, <= size"``)."""
    kind = f"tuple of {p.item}" if p.kind == "tuple" else p.kind
    parts = [kind + (" or list" if p.or_list else "") + (" or None" if p.optional else "")]
    if p.choices is not None:
        parts.append("one of " + ", ".join(repr(c) for c in p.choices))
    interval = _interval_text(p)
    if interval:
        parts.append(interval)
    if p.nonempty:
        parts.append("not empty")
    if p.length is not None:
        parts.append(f"{p.length} entries")
    if p.at_most is not None:
        parts.append(f"<= {p.at_most}")
    return ", ".join(parts)


def params_table(cls: type) -> str:
    """A reStructuredText-friendly table of ``cls``'s declared parameters (blocks expanded):
    name, default, constraint, search space, text-family default, doc line."""
    lines = []
    for name, p in flat_declarations(cls).items():
        extra = []
        if p.space is not None:
            extra.append(f"searched over {list(p.space)}")
        if p.text is not NOTHING:
            extra.append(f"text data: {p.text!r}")
        lines.append(f"    {name} : {constraint_text(p)}, default={p.default!r}\n        {p.doc}"
                     + (f" ({'; '.join(extra)})" if extra else ""))
    for name, d in declarations(cls).items():
        if isinstance(d, Nest) and d.space:
            lines.append(f"    {name} : searched over " + ", ".join(f"{k}={list(v)}" for k, v in d.space.items()))
    return "\n".join(lines)


def check_value(cls: type, key: str, value: Any) -> str | None:
    """Why ``value`` is forbidden for the (dotted) parameter ``key`` of ``cls``, or None.
    Relations (``at_most``) are not checked here: they need the other values."""
    spec = flat_declarations(cls).get(key)
    return None if spec is None else spec.problem(value)


def check_fields(obj: Any, prefix: str = "") -> None:
    """Check every declared field of the dataclass instance ``obj``, and the relations
    between them; raise :class:`GradTuneInputError` naming the first bad field."""
    specs = declarations(type(obj))
    for name, spec in specs.items():
        value = getattr(obj, name)
        if isinstance(spec, Nest):
            if not isinstance(value, spec.cls):
                raise GradTuneInputError(f"{prefix}{name} must be a {spec.cls.__name__}, got {type(value).__name__}")
            continue  # a block checks itself when it is built
        why = spec.problem(value)
        if why is not None:
            raise GradTuneInputError(f"{prefix}{name} {why}")
    for name, spec in specs.items():
        if isinstance(spec, Param) and spec.at_most is not None:
            value, bound = getattr(obj, name), getattr(obj, spec.at_most)
            if value is not None and bound is not None and value > bound:
                raise GradTuneInputError(f"{prefix}{name} must be at most {spec.at_most} ({bound}), got {value}")


def relation_problems(cls: type, values: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """``(name, why)`` for each ``at_most`` relation of ``cls`` that the dotted ``values``
    (over the defaults) break."""
    specs = flat_declarations(cls)
    merged: dict[str, Any] = {**{k: p.default for k, p in specs.items()}, **values}
    for name, spec in specs.items():
        if spec.at_most is None:
            continue
        prefix = name.rpartition(".")[0]
        other = f"{prefix}.{spec.at_most}" if prefix else spec.at_most
        value: Any = merged.get(name)
        bound: Any = merged.get(other)
        if _fits("float", value) and _fits("float", bound) and value > bound:
            yield name, f"must be at most {other} ({bound}), got {value}"


def space_of(cls: type) -> dict[str, list[Any]]:
    """The search space of ``cls``: ``{dotted name: [values]}`` in field order, or in the
    order of the class attribute ``space_order`` (the grid's first key varies slowest and
    ties go to the earliest point, so the order is part of the method)."""
    out: dict[str, list[Any]] = {}
    for name, d in declarations(cls).items():
        if isinstance(d, Nest):
            for sub, values in d.space.items():
                out[f"{name}.{sub}"] = list(values)
        elif d.space is not None:
            out[name] = list(d.space)
    order = tuple(getattr(cls, "space_order", ()))
    if sorted(order) not in ([], sorted(out)):
        raise TypeError(f"{cls.__name__}.space_order {order} must name each searched parameter {sorted(out)}")
    return {k: out[k] for k in order} if order else out


def text_overrides(cls: type) -> dict[str, Any]:
    """Dotted name -> text-family value, where it differs from ``cls``'s own default."""
    out: dict[str, Any] = {}
    for name, p in flat_declarations(cls).items():
        if p.text is not NOTHING and p.text != p.default:
            out[name] = p.text
    return out


def fast_params(cls: type) -> dict[str, Any]:
    """Dotted name -> the value that makes a unit test of ``cls`` fast."""
    out: dict[str, Any] = {}
    for name, d in declarations(cls).items():
        if isinstance(d, Nest):
            out.update({f"{name}.{k}": v for k, v in d.fast.items()})
        elif d.fast is not NOTHING:
            out[name] = d.fast
    return out


def _bad_scalars(p: Param, kind: str) -> Iterator[Any]:
    yield {"bool": "yes", "int": "many", "float": "much", "str": 7}[kind]
    if kind == "int":
        yield 1.5
    if p.choices is not None:
        yield "no-such-choice" if kind == "str" else -987654
        return
    if kind in ("int", "float"):
        step = 1 if kind == "int" else 0.5
        if p.ge is not None:
            yield _as_kind(kind, p.ge - step)
        if p.gt is not None:
            yield _as_kind(kind, p.gt)
        if p.le is not None:
            yield _as_kind(kind, p.le + step)
        if p.lt is not None:
            yield _as_kind(kind, p.lt)


def _as_kind(kind: str, v: float) -> Any:
    return int(v) if kind == "int" else float(v)


def invalid_values(p: Param) -> Iterator[Any]:
    """Values the declaration ``p`` forbids (a wrong type, each bound crossed, a value
    outside the choices, an empty tuple where one is required); None is left out (the
    config files cannot write it)."""
    if p.kind == "tuple":
        yield "not-a-list"
        if p.nonempty:
            yield ()
        for bad in _bad_scalars(p, p.item or "str"):
            yield (bad,)
        return
    yield from _bad_scalars(p, p.kind)


def check_is_declared(cls: type) -> None:
    """Refuse a dataclass with an undeclared field (every hyperparameter is declared)."""
    if not is_dataclass(cls):
        raise TypeError(f"{cls.__name__} is not a dataclass")
    loose = [f.name for f in fields(cls) if declared(f) is None and f.default is not MISSING]
    if loose:
        raise TypeError(f"{cls.__name__} has undeclared fields {loose}; declare them with param()")
