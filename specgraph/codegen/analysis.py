"""Facts about a structure that its GraphDef alone decides, computed once per GraphDef.

The flatten and the unflatten planners of one structure run at different times (the
unflatten on the first unflatten call) and ask some of the same questions of the
structure: are its containers plain, which of its types repeat? Answers that read
nothing but the GraphDef (never a class dict: a class may change between two builds)
are kept here, per GraphDef, for as long as the GraphDef lives. Equal GraphDefs have
the same structure and the very same classes, so they share the answers.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

from .._ir import GraphDef

__all__ = ["kept", "structure_memo"]

_T = TypeVar("_T")

_memo: weakref.WeakKeyDictionary[GraphDef, dict[str, Any]] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def structure_memo(gd: GraphDef, name: str, compute: Callable[[GraphDef], _T]) -> _T:
    """``compute(gd)``, computed once per GraphDef (and equal ones) under ``name``.

    ``compute`` must read the structure only: no class dict, registry or global state.
    A GraphDef that cannot be hashed (an unhashable static) is answered uncached.
    """
    facts = _facts(gd)
    if facts is None:
        return compute(gd)
    try:
        return facts[name]
    except KeyError:
        value = facts[name] = compute(gd)
        return value


def kept(gd: GraphDef) -> dict[str, Any] | None:
    """A dict of things kept for this very GraphDef for as long as it lives, or ``None``
    (``gd`` cannot be hashed, or the memo of its structure was made for another, equal,
    GraphDef: what is kept may hold ``gd``'s own objects, which must not live as long as
    another GraphDef). What is kept may read more than the structure: it must say which
    classes it read, for a reader to check (see ``shapes.find_shapes``)."""
    facts = _facts(gd)
    return facts if facts is not None and facts[_OWNER]() is gd else None


def _facts(gd: GraphDef) -> dict[str, Any] | None:
    """The memo entry of ``gd``'s structure, made on first use (the first GraphDef to ask is
    its owner); ``None`` if ``gd`` cannot be hashed (an unhashable static)."""
    try:
        with _lock:
            facts = _memo.get(gd)
            if facts is None:
                facts = _memo[gd] = {_OWNER: weakref.ref(gd)}
            return facts
    except TypeError:
        return None


#: The GraphDef a memo entry was made for (weakly): the key equal GraphDefs find it under.
_OWNER = "owner"
