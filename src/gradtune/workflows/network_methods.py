"""Full-network methods (ERM, JTT, Group DRO) behind one registry, with declared parameters.

The whole-network rows of the paper's Table 1 are methods like the last-layer ones: a
dataclass per method, registered by name (:func:`register_network_method`), whose
parameters are declared once with :func:`~gradtune._params.param` and checked when the
object is built. A value left at None is read from the run config's table of the method
(``[jtt]`` ``epoch`` / ``lambda``, ``[group_dro]`` ``eta`` / ``adj``, see
:mod:`gradtune.workflows.train`) by :meth:`NetworkMethod.with_run_config`, and checked
against the same declaration. :func:`get_network_method` builds one from ``--method`` and
its parameters; :func:`gradtune.workflows.train.train_network` runs it.

This module imports nothing heavy: the command line checks a method's parameters with it
before anything is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, ClassVar

from gradtune._errors import GradTuneInputError
from gradtune._params import check_fields, param

__all__ = ["NetworkMethod", "NETWORK_METHODS", "register_network_method", "get_network_method",
           "ERMNetwork", "JTTNetwork", "GroupDRONetwork"]

NETWORK_METHODS: dict[str, type[NetworkMethod]] = {}
"""The registered full-network methods by name."""


def register_network_method(cls: type[NetworkMethod]) -> type[NetworkMethod]:
    """Class decorator: add a full-network method to :data:`NETWORK_METHODS` under ``cls.name``."""
    if not cls.name:
        raise TypeError(f"{cls.__name__} must set a non-empty `name`")
    known = NETWORK_METHODS.get(cls.name)
    if known is not None and known is not cls:
        raise TypeError(f"network method {cls.name!r} is already registered by {known.__name__}")
    NETWORK_METHODS[cls.name] = cls
    return cls


@dataclass
class NetworkMethod:
    """Base class of a full-network method: a dataclass of declared parameters.

    ``table`` names the run config's table of the method's settings and ``table_keys``
    the keys it may hold; ``config_keys`` maps a parameter to the key of that table it is
    read from when left at None, ``flags`` to the command-line flag that sets it, and
    ``summary_keys`` to its key in ``train.json``.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    uses_group_labels_train: ClassVar[bool] = False
    table: ClassVar[str] = ""
    table_keys: ClassVar[tuple[str, ...]] = ()
    config_keys: ClassVar[dict[str, str]] = {}
    flags: ClassVar[dict[str, str]] = {}
    summary_keys: ClassVar[dict[str, str]] = {}

    def __post_init__(self) -> None:
        check_fields(self)

    def run_table(self, run_config: dict[str, Any]) -> dict[str, Any]:
        """The method's table of ``run_config`` (``{}`` when it has none), its keys checked."""
        if not self.table:
            return {}
        table = run_config.get(self.table, {})
        if not isinstance(table, dict):
            raise GradTuneInputError(f"[{self.table}] must be a table, got {table!r}")
        unknown = sorted(set(table) - set(self.table_keys))
        if unknown:
            raise GradTuneInputError(f"unknown [{self.table}] setting(s) {unknown}; known: {list(self.table_keys)}")
        return table

    def with_run_config(self, run_config: dict[str, Any]) -> NetworkMethod:
        """This method with each parameter left at None read from the run config's table
        (checked against its declaration); one still missing is refused, naming the
        table key and the flag that would give it."""
        table = self.run_table(run_config)
        given: dict[str, Any] = {}
        for name, key in self.config_keys.items():
            if getattr(self, name) is None and key in table:
                given[name] = table[key]
        try:
            out = replace(self, **given)
        except GradTuneInputError as err:
            raise GradTuneInputError(f"[{self.table}] {err}") from None
        for name, key in self.config_keys.items():
            if getattr(out, name) is None:
                flag = self.flags.get(name, f"--param {name}=...")
                raise GradTuneInputError(f"no [{self.table}] {key} in the run config; pass "
                                         f"{self.summary_keys.get(name, name)} ({flag})")
        return out

    def summary(self) -> dict[str, Any]:
        """The method's settings as ``train.json`` records them."""
        return {self.summary_keys.get(f.name, f.name): getattr(self, f.name) for f in fields(self)}


@register_network_method
@dataclass
class ERMNetwork(NetworkMethod):
    """Class-balanced ERM on the whole network (the run config's ``[erm]`` settings)."""

    name = "erm"
    description = "class-balanced ERM"


@register_network_method
@dataclass
class JTTNetwork(NetworkMethod):
    """Just Train Twice on the whole network (:func:`gradtune.training.robust.train_jtt`)."""

    name = "jtt"
    description = "Just Train Twice (no group labels)"
    table = "jtt"
    table_keys = ("epoch", "lambda", "stage1", "stage2")
    config_keys = {"epoch": "epoch", "upweight": "lambda"}
    flags = {"epoch": "--jtt-epoch", "upweight": "--jtt-lambda", "erm_checkpoint": "--jtt-erm-checkpoint"}
    summary_keys = {"epoch": "jtt_epoch", "upweight": "jtt_lambda"}

    epoch: int | None = param(None, "T, the identification model's epoch (default: [jtt] epoch)", kind="int",
                              ge=1)
    upweight: int | None = param(None, "lambda, total copies of each error row (default: [jtt] lambda)",
                                 kind="int", ge=1)
    erm_checkpoint: str | None = param(None, "an epoch-T ERM checkpoint to reuse as the identification model",
                                       kind="str")


@register_network_method
@dataclass
class GroupDRONetwork(NetworkMethod):
    """Group DRO on the whole network (:func:`gradtune.training.robust.train_group_dro`)."""

    name = "group-dro"
    description = "Group DRO (uses training group labels)"
    uses_group_labels_train = True
    table = "group_dro"
    table_keys = ("eta", "adj", "train")
    config_keys = {"eta": "eta", "adj": "adj"}
    flags = {"eta": "--dro-eta", "adj": "--dro-adj"}
    summary_keys = {"eta": "dro_eta", "adj": "dro_adj"}

    eta: float | None = param(None, "group-weight step size (default: [group_dro] eta)", kind="float", ge=0)
    adj: float | None = param(None, "generalization adjustment C, or one per group (default: [group_dro] adj)",
                              kind="float", ge=0, or_list=True)


def get_network_method(name: str, params: dict[str, Any] | None = None) -> NetworkMethod:
    """Build the registered full-network method ``name`` with ``params`` (checked against
    its declarations)."""
    if name not in NETWORK_METHODS:
        raise GradTuneInputError(f"method must be one of {list(NETWORK_METHODS)}, got {name!r}")
    cls = NETWORK_METHODS[name]
    valid = [f.name for f in fields(cls)]
    unknown = sorted(set(params or {}) - set(valid))
    if unknown:
        raise GradTuneInputError(f"{unknown[0]!r} is not a parameter of method {name!r}; valid: {valid}")
    return cls(**(params or {}))
