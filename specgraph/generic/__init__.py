"""The reference walker: ``flatten`` / ``unflatten`` / ``update``, never specialized.

Everything the fast path returns must equal what these return.
"""

from __future__ import annotations

from typing import Any

from .._ir import GraphDef
from .._statemap import StateMap
from ._flatten import walk
from ._unflatten import unflatten
from ._update import update

__all__ = ["flatten", "unflatten", "update"]


def flatten(node: Any) -> tuple[GraphDef, StateMap]:
    """Flatten ``node`` into its ``GraphDef`` and ``StateMap`` (reference walker)."""
    w = walk(node)
    return w.graphdef, StateMap._make(w.graphdef.pathtable, w.values)
