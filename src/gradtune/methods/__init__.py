"""Last-layer methods behind one interface, and their registry.

Importing this package registers the built-in methods; look them up with
:func:`get_method` / :func:`list_methods`.
"""

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
from gradtune.methods.gradtune import ERMMethod, GradTuneMethod

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
]
