"""The reference update: write new values into a live graph, in place.

States keep their identity and get a new ``.value``; bare array leaves are
replaced where they stand (an immutable container holding one is rebuilt and
put back in its mutable parent). Everything is validated before the first
write, so a failed update changes nothing.
"""

from __future__ import annotations

from typing import Any

from .. import _registry as reg
from .._ir import ArrayEdge, NodeSpec, PytreeEdge, StateSpec
from .._resolve import resolve_partial
from ._flatten import Walk, walk

__all__ = ["update", "apply_update"]


def _has_array(edge: Any, slots: Any) -> bool:
    k = type(edge)
    if k is ArrayEdge:
        return edge[1] in slots
    if k is PytreeEdge:
        return any(_has_array(c, slots) for c in edge[3])
    return False


def _write(obj: Any, edge: Any, new: Any) -> Any:
    """``obj`` (described by ``edge``) with its array leaves replaced from ``new``."""
    k = type(edge)
    if k is ArrayEdge:
        return new[edge[1]] if edge[1] in new else obj
    if k is not PytreeEdge:
        return obj
    ptype = edge[1]
    if ptype is list:
        for i, c in enumerate(edge[3]):
            if _has_array(c, new):
                obj[i] = _write(obj[i], c, new)
        return obj
    if ptype is dict:
        for key, c in zip(edge[2], edge[3], strict=True):
            if _has_array(c, new):
                obj[key] = _write(obj[key], c, new)
        return obj
    # An immutable container is rebuilt, but only when one of its leaves changes.
    if ptype is tuple:
        items = [_write(o, c, new) for o, c in zip(obj, edge[3], strict=True)]
        return obj if all(a is b for a, b in zip(items, obj, strict=True)) else tuple(items)
    from ._flatten import pytree_children

    treedef, _, children = pytree_children(obj)
    items = [_write(o, c, new) for o, c in zip(children, edge[3], strict=True)]
    return obj if all(a is b for a, b in zip(items, children, strict=True)) else treedef.unflatten(items)


def _frozen_changes(edge: Any, obj: Any, new: dict[int, Any]) -> bool:
    """Does ``new`` change an array leaf reachable from ``obj`` only through immutable containers?"""
    k = type(edge)
    if k is ArrayEdge:
        return edge[1] in new and new[edge[1]] is not obj
    if k is not PytreeEdge or edge[1] is list or edge[1] is dict:
        return False  # a list or dict below is a mutable owner for what it holds
    if edge[1] is tuple:
        children = obj
    else:
        from ._flatten import pytree_children

        children = pytree_children(obj)[2]
    return any(_frozen_changes(c, o, new) for c, o in zip(edge[3], children, strict=True))


def apply_update(root: Any, w: Walk, given: dict[int, Any] | list[Any]) -> None:
    """Write ``given`` (slot -> value, or a full list in slot order) into the walked graph."""
    gd = w.graphdef
    new: dict[int, Any] = dict(enumerate(given)) if isinstance(given, list) else given
    types = gd.pathtable.types
    arrays = {slot: v for slot, v in new.items() if types[slot] is None}
    root_edge = gd.root
    if arrays and type(root_edge) is PytreeEdge and root_edge[1] not in (list, dict):
        if _frozen_changes(root_edge, root, arrays):
            raise ValueError(
                "update cannot replace an array leaf held in the immutable root pytree "
                f"({gd.type.__qualname__}) since it has no mutable owner; wrap it in a State "
                "or a Node, or pass a list/dict root"
            )
    # Validation is over: from here on, only writes.
    objects = w.objects
    for spec in gd.table:
        if type(spec) is StateSpec and spec[4] in new:
            objects[spec[2]].value = new[spec[4]]
    if not arrays:
        return
    for spec in gd.table:
        if type(spec) is not NodeSpec:
            continue
        node = objects[spec[2]]
        impl = reg.node_impl(spec[1])
        for key, edge in zip(spec[3], spec[4], strict=True):
            if not _has_array(edge, arrays):
                continue
            if impl.is_builtin_node:
                current = node.__dict__[key]
            else:
                current = dict(impl.flatten(node)[0])[key]
            replaced = _write(current, edge, arrays)
            if replaced is not current:
                if impl.is_builtin_node:
                    node.__dict__[key] = replaced
                else:
                    impl.set_key(node, key, replaced)
    if type(root_edge) is PytreeEdge:
        _write(root, root_edge, arrays)


def update(node: Any, *states: Any) -> None:
    """Write ``states`` into ``node``'s graph in place (the reference implementation)."""
    w = walk(node)
    if states:
        apply_update(node, w, resolve_partial(w.graphdef.pathtable, states))
