"""The names every generated function finds in its namespace, besides its plan's constants.

This is all that generated code expects at run time; templates use no other global.
"""

from __future__ import annotations

from typing import Any

from .. import _registry as reg
from .. import _sameness as same

__all__ = ["MISS", "PRELUDE", "PARAMETERS", "prelude"]

#: A generated unflatten's answer when a class guard fails: the reference walker builds.
MISS = object()

#: The parameters and fixed locals of the templates' functions (an unflatten loop's unit takes
#: ``n``, ``head``, ``tail``, ``src`` and counters' starts ``at0``, ... (naming._LOCAL_NAME);
#: a two-phase fill, ``t``; a loop's throwaway target, ``_``).
PARAMETERS = frozenset({"root", "vals", "S", "d", "m", "h", "D", "at", "b", "af", "y", "z",
                        "n", "head", "tail", "src", "t", "_"})


def prelude() -> dict[str, Any]:
    """The namespace generated code runs in (a fresh dict: a function's constants join it)."""
    return {
        "__name__": "specgraph._generated",
        "__builtins__": __builtins__,
        "EPOCH": reg.epoch_cell(),  # the registry epoch, as a mutable cell
        "KIND": reg.kind_cache().get,  # type -> kind, as classified so far
        "ARRAY": reg.ARRAY,
        "LEAF_KINDS": frozenset({reg.ARRAY, reg.STATIC}),  # what a declared data leaf may be
        "ONE_LEVEL": reg.pytree_level,  # (children, treedef) of one pytree level
        "PT_LEVEL": reg.pytree_level_keyed,  # a custom pytree's children, its keys and aux data checked
        "KEY_SIG": same.dict_key_sig,
        "META_SIG": same.meta_sig,
        "SAME": same.same,
        "SAME_AUX": same.same_aux,
        "SAME_KEYS": same.same_keys,
        "STR_NE": str.__ne__,  # str's own !=, whatever a str subclass defines
        "NEW": object.__new__,
        "MISS": MISS,
    }


#: Every global name of the prelude: no bound constant may take one.
PRELUDE = frozenset(prelude())
