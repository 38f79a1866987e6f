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


def _open(edge: Any, obj: Any) -> list[Any]:
    """A frame for rewriting one container: [edge, obj, current children, pos, results, treedef]."""
    ptype = edge[1]
    treedef = None
    if ptype is list or ptype is tuple:
        kids = list(obj)
    elif ptype is dict:
        kids = [obj[k] for k in edge[2]]
    else:
        treedef, _, kids = reg.pytree_children(obj)
    return [edge, obj, kids, 0, [], treedef]


def _place(fr: list[Any], i: int, value: Any) -> None:
    """Record child ``i``'s rewritten value: written into a list or dict at once."""
    edge, obj = fr[0], fr[1]
    ptype = edge[1]
    if ptype is list:
        if obj[i] is not value:
            obj[i] = value
    elif ptype is dict:
        key = edge[2][i]
        if obj[key] is not value:
            obj[key] = value
    else:
        fr[4].append(value)


def _close(fr: list[Any]) -> Any:
    """The container's value: a list or dict is itself; an immutable one is rebuilt if changed."""
    edge, obj, kids, _, results, treedef = fr
    if edge[1] is list or edge[1] is dict:
        return obj
    if all(a is b for a, b in zip(results, kids, strict=True)):
        return obj
    return tuple(results) if edge[1] is tuple else treedef.unflatten(results)


def _write(obj: Any, edge: Any, new: dict[int, Any]) -> Any:
    """``obj`` (described by ``edge``) with its array leaves replaced from ``new``.

    Lists and dicts are written in place, child by child in order; an immutable
    container is rebuilt only when one of its leaves changes. Iterative, so
    nesting deeper than the recursion limit is fine.
    """
    k = type(edge)
    if k is ArrayEdge:
        return new[edge[1]] if edge[1] in new else obj
    if k is not PytreeEdge:
        return obj
    stack = [_open(edge, obj)]
    while True:
        fr = stack[-1]
        edges, kids = fr[0][3], fr[2]
        pos = fr[3]
        descended = False
        while pos < len(edges):
            ce, co = edges[pos], kids[pos]
            pos += 1
            if type(ce) is PytreeEdge:
                fr[3] = pos
                stack.append(_open(ce, co))
                descended = True
                break
            _place(fr, pos - 1, new[ce[1]] if type(ce) is ArrayEdge and ce[1] in new else co)
        if descended:
            continue
        stack.pop()
        value = _close(fr)
        if not stack:
            return value
        _place(stack[-1], stack[-1][3] - 1, value)


def _frozen_changes(edge: Any, obj: Any, new: dict[int, Any]) -> bool:
    """Does ``new`` change an array leaf reachable from ``obj`` only through immutable containers?"""
    stack = [(edge, obj)]
    while stack:
        e, o = stack.pop()
        k = type(e)
        if k is ArrayEdge:
            if e[1] in new and new[e[1]] is not o:
                return True
        elif k is PytreeEdge and e[1] is not list and e[1] is not dict:
            # (a list or dict below is a mutable owner for what it holds)
            stack.extend(zip(e[3], _open(e, o)[2], strict=True))
    return False


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
    objects = w.objects
    # Foreign states and nodes may refuse a write now (e.g. from another trace level):
    # ask them all before the first write.
    writes: list[tuple[Any, Any, Any]] = []  # (state, value, foreign impl or None)
    for spec in gd.table:
        if type(spec) is StateSpec and spec[4] in new:
            simpl = reg.state_impl(spec[1])
            st, v = objects[spec[2]], new[spec[4]]
            if simpl is not None and simpl.check_set is not None:
                simpl.check_set(st, v)
            writes.append((st, v, simpl))
    node_writes: list[tuple[Any, Any, Any, Any]] = []  # (node, impl, key, new child)
    if arrays:
        for spec in gd.table:
            if type(spec) is not NodeSpec:
                continue
            node = objects[spec[2]]
            impl = reg.node_impl(spec[1])
            for key, edge in zip(spec[3], spec[4], strict=True):
                if type(edge) is not ArrayEdge and type(edge) is not PytreeEdge:
                    continue
                if impl.is_builtin_node:
                    current = dict.__getitem__(node.__dict__, key)  # past a dict subclass's overrides
                else:
                    current = dict(impl.flatten(node)[0])[key]
                if impl.dict_node is not None and impl.dict_node.check_write is not None \
                        and _frozen_changes(edge, current, arrays):  # the node's attribute is replaced
                    impl.dict_node.check_write(node)
                node_writes.append((node, impl, key, (current, edge)))
    # Validation is over: from here on, only writes.
    for st, v, simpl in writes:
        if simpl is None:
            st.value = v
        else:
            simpl.set(st, v)
    for node, impl, key, (current, edge) in node_writes:
        replaced = _write(current, edge, arrays)
        if replaced is not current:
            if impl.is_builtin_node:
                dict.__setitem__(node.__dict__, key, replaced)
            else:
                impl.set_key(node, key, replaced)
    if arrays and type(root_edge) is PytreeEdge:
        _write(root, root_edge, arrays)


def update(node: Any, *states: Any) -> None:
    """Write ``states`` into ``node``'s graph in place (the reference implementation)."""
    w = walk(node)
    if states:
        apply_update(node, w, resolve_partial(w.graphdef.pathtable, states))
