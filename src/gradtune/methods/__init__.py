"""Last-layer methods behind one interface, and their registry.

Each method registers itself where it is defined (``@register_method``); the registry
imports every module of this package the first time it is asked (:func:`get_method`,
:func:`list_methods`), so a new method needs no entry here. The names below are the
package's public API.
"""

from gradtune.methods.afr import AFRMethod
from gradtune.methods.balancing import RWG, RWY, SUBG, SUBY
from gradtune.methods.base import (
    METHODS,
    LinearHead,
    Method,
    MethodResult,
    erm_head,
    get_method,
    list_methods,
    register_method,
)
from gradtune.methods.dfr import DFRMethod
from gradtune.methods.dpe import DPEMethod  # noqa: F401  (registers dpe)
from gradtune.methods.dpe_groups import DPEValGroupsMethod  # noqa: F401  (registers dpe-val-groups)
from gradtune.methods.gradtune import ERMMethod, GradTuneMethod
from gradtune.methods.gradtune_auto import GradTuneAutoMethod
from gradtune.methods.gradtune_select import GradTuneSelectMethod  # noqa: F401  (registers gradtune-select & variants)
from gradtune.methods.group_dro import GroupDROMethod
from gradtune.methods.inferred import DFRInferredMethod
from gradtune.methods.jtt import JTTMethod
from gradtune.methods.random_ft import RandomFinetuneMethod
from gradtune.methods.self_ft import LossTopKMethod, ResidualTopKMethod, SELFMethod
from gradtune.methods.tuning import select_hyperparameters
from gradtune.methods.ula import ULAMethod, ULAModel

__all__ = [
    "METHODS",
    "LinearHead",
    "Method",
    "MethodResult",
    "erm_head",
    "get_method",
    "list_methods",
    "register_method",
    "GradTuneMethod",
    "ERMMethod",
    "AFRMethod",
    "DFRMethod",
    "DFRInferredMethod",
    "GradTuneAutoMethod",
    "GroupDROMethod",
    "JTTMethod",
    "LossTopKMethod",
    "RandomFinetuneMethod",
    "ResidualTopKMethod",
    "RWG",
    "RWY",
    "SELFMethod",
    "SUBG",
    "SUBY",
    "ULAMethod",
    "ULAModel",
    "select_hyperparameters",
]
