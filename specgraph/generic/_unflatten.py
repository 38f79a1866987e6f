"""The reference unflatten: linear passes over the IR table.

Pass 1 makes every state, pass 2 every empty node shell, pass 3 fills the
shells. Because every object exists before any is filled, sharing and cycles
resolve by index lookup with no recursion over nodes.
"""

from __future__ import annotations

from typing import Any

from .. import _registry as reg
from .._ir import ArrayConstant, GraphDef, NodeEdge, NodeSpec, StateEdge, StaticEdge, fold_edge
from .._model import _new_state
from .._resolve import resolve_all

__all__ = ["unflatten", "build", "build_with", "rebuild_edge"]


def _leaf(edge: Any, objs: list[Any], values: list[Any]) -> Any:
    k = type(edge)
    if k is StaticEdge:
        v = edge[2]
        return v.array if type(v) is ArrayConstant else v
    if k is NodeEdge or k is StateEdge:
        return objs[edge[1]]
    return values[edge[1]]  # ArrayEdge


def _container(edge: Any, children: list[Any]) -> Any:
    ptype = edge[1]
    if ptype is list:
        return children
    if ptype is tuple:
        return tuple(children)
    if ptype is dict:
        return dict(zip(edge[2], children, strict=True))
    return ptype.unflatten(children)


def rebuild_edge(edge: Any, objs: list[Any], values: list[Any]) -> Any:
    """The value an edge stands for, given the objects by index and values by slot."""
    return fold_edge(edge, lambda e: _leaf(e, objs, values), _container)


def build(gd: GraphDef, values: list[Any]) -> Any:
    """Make the object graph of ``gd`` from values in slot order."""
    return build_with(gd, values, {}, gd.root)


def _context(made: dict[Any, Any], factory: Any) -> Any:
    """The call's context from ``factory`` (``None`` without one), made once per call."""
    if factory is None:
        return None
    if factory not in made:
        made[factory] = factory()
    return made[factory]


def build_with(gd: GraphDef, values: list[Any], known: dict[int, Any], edge: Any) -> Any:
    """Like ``build``, but the objects in ``known`` (by index) are used as they are.

    Known objects are neither created nor filled; the value of ``edge`` is returned.
    """
    table = gd.table
    contexts: dict[Any, Any] = {}  # a foreign library's per-call context, made once
    objs: list[Any] = [None] * len(table)
    impls: list[Any] = [None] * len(table)
    # Pass 1 + 2: states and empty node shells.
    for spec in table:
        if spec[2] in known:
            objs[spec[2]] = known[spec[2]]
        elif type(spec) is NodeSpec:
            t = spec[1]
            try:
                impl = reg.node_impl(t)
            except TypeError as e:
                raise TypeError(f"cannot unflatten node {spec[2]}: {e}") from None
            impls[spec[2]] = impl
            if impl.is_builtin_node:
                objs[spec[2]] = object.__new__(t)
            elif impl.dict_node is not None:
                dn = impl.dict_node
                objs[spec[2]] = dn.new(spec[5], _context(contexts, dn.context))
            else:
                objs[spec[2]] = impl.create_empty(spec[5])
        else:
            simpl = reg.state_impl(spec[1])
            if simpl is None:
                objs[spec[2]] = _new_state(spec[1], values[spec[4]], spec[3])
            else:
                objs[spec[2]] = simpl.create(spec[1], values[spec[4]], spec[3],
                                             _context(contexts, simpl.context))
    # Pass 3: fill.
    for spec in table:
        if type(spec) is not NodeSpec or spec[2] in known:
            continue
        node = objs[spec[2]]
        children = [rebuild_edge(c, objs, values) for c in spec[4]]
        impl = impls[spec[2]]
        if impl.is_builtin_node:
            node.__dict__.update(zip(spec[3], children, strict=True))
        elif impl.dict_node is not None:
            d = node.__dict__
            stored = impl.dict_node.stored_key
            for key, child in zip(spec[3], children, strict=True):
                d[stored(key)] = child
        else:
            set_key = impl.set_key
            for key, child in zip(spec[3], children, strict=True):
                set_key(node, key, child)
    return rebuild_edge(edge, objs, values)


def unflatten(graphdef: GraphDef, state: Any) -> Any:
    """Rebuild a fresh object graph from a ``GraphDef`` and its states.

    ``state`` is a ``StateMap``, a mapping of path tuples to values, or a nested
    dict of the same shape. A missing path is a ``KeyError`` naming it; an extra
    path is an error too.
    """
    if not isinstance(graphdef, GraphDef):
        raise TypeError(f"unflatten expects a GraphDef first, got {type(graphdef).__qualname__}")
    values = resolve_all(graphdef.pathtable, (state,))
    return build(graphdef, values)
