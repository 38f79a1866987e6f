"""Dispatcher behind the public flatten / unflatten / update (generic for now)."""

from __future__ import annotations

from typing import Any

from .._ir import GraphDef
from .._resolve import resolve_all, resolve_partial
from .._statemap import StateMap
from ..generic._flatten import walk
from ..generic._unflatten import build
from ..generic._update import apply_update


def flatten(node: Any) -> tuple[GraphDef, StateMap]:
    w = walk(node)
    return w.graphdef, StateMap._make(w.graphdef.pathtable, w.values)


def unflatten(graphdef: GraphDef, states: tuple[Any, ...]) -> Any:
    if not isinstance(graphdef, GraphDef):
        raise TypeError(f"expected a GraphDef first, got {type(graphdef).__qualname__}")
    return build(graphdef, resolve_all(graphdef.pathtable, states))


def update(node: Any, states: tuple[Any, ...]) -> None:
    w = walk(node)
    if states:
        apply_update(node, w, resolve_partial(w.graphdef.pathtable, states))
