"""The reference flatten: an iterative pre-order walk that builds the IR.

It is the semantics of specgraph; the specializer only ever reproduces what
this walker returns. It is iterative (an explicit stack of frames), so a chain of
10 000 nodes never touches the recursion limit.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from .. import _registry as reg
from .._ir import (
    ArrayConstant,
    ArrayEdge,
    GraphDef,
    NodeEdge,
    NodeSpec,
    PathTable,
    PytreeEdge,
    StateEdge,
    StateSpec,
    StaticEdge,
    materialize,
)
from .._sameness import aux_sig, collapsed_sig, exact, float_zero_sig, keys_sig, meta_sig, value_sig

__all__ = ["walk", "Walk"]

_STATIC, _STATE, _ARRAY, _NODE = reg.STATIC, reg.STATE, reg.ARRAY, reg.NODE
_LIST, _TUPLE, _DICT, _PYTREE = reg.LIST, reg.TUPLE, reg.DICT, reg.PYTREE
_FSTATE, _UNSUPPORTED = reg.FSTATE, reg.UNSUPPORTED
_object_hash = object.__hash__
_tnew = tuple.__new__

# Edges that only carry an index are immutable and equal for equal indices: share them.
_NODE_EDGES: list[NodeEdge] = []
_STATE_EDGES: list[StateEdge] = []
_ARRAY_EDGES: list[ArrayEdge] = []
_edge_lock = threading.Lock()
_EDGE_TYPES = {id(_NODE_EDGES): NodeEdge, id(_STATE_EDGES): StateEdge, id(_ARRAY_EDGES): ArrayEdge}


def _edge_cache(cache: list, index: int) -> Any:
    """Grow one of the shared edge caches up to ``index`` and return that edge."""
    cls = _EDGE_TYPES[id(cache)]
    with _edge_lock:  # threads may grow a cache at once; each index is appended once
        while len(cache) <= index:
            cache.append(cls(len(cache)))
    return cache[index]


class Walk:
    """What one flatten found: the IR, the values, and the live objects by index."""

    __slots__ = ("graphdef", "links", "objects", "paths", "values")

    def __init__(
        self, graphdef: GraphDef, values: list[Any], objects: list[Any], links: Any, paths: Any = None
    ) -> None:
        self.graphdef = graphdef
        self.values = values  # per value slot: a state's .value or an array leaf
        self.objects = objects  # per table index: the node or State object
        self.links = links  # per table index: the path link of the defining occurrence
        self.paths = paths  # per table index: the path, when already materialized

    def path(self, index: int) -> tuple:
        """The path of the object with table index ``index``."""
        if self.paths is not None:
            return self.paths[index]
        return materialize(self.links[index])


def _sorted_dict_keys(d: dict, link: Any) -> list:
    try:
        return sorted(d)
    except TypeError:
        raise TypeError(
            f"cannot sort the keys of the dict at path {materialize(link)!r} "
            f"({[type(k).__qualname__ for k in d]}): dict keys must be mutually orderable, "
            "as in JAX"
        ) from None


def _node_items(node: Any, t: type, link: Any) -> tuple[list, Any, Any]:
    """``(children, metadata, impl)`` of a graph node."""
    impl = reg.node_impl(t)
    if impl.is_builtin_node:
        # t is a Node subclass here (is_builtin_node), typed as a plain type
        if isinstance(t.graph_invisible_attrs, str):  # type: ignore[attr-defined]
            raise TypeError(
                f"{t.__qualname__}.graph_invisible_attrs is the string "
                f"{t.graph_invisible_attrs!r}: "  # type: ignore[attr-defined]
                f"it must be a tuple of attribute names, e.g. ({t.graph_invisible_attrs!r},)"  # type: ignore[attr-defined]
            )
        try:
            return reg.node_children(node), None, impl
        except TypeError:
            raise TypeError(
                f"cannot sort the attribute names of the {t.__qualname__} node at path "
                f"{materialize(link)!r}: node attribute names must be strings"
            ) from None
    items, meta = impl.flatten(node)
    items = list(items)
    if impl.dict_node is None:  # (a dict-backed class's keys are distinct by construction)
        _check_unique_keys(items, t, link)
    return items, meta, impl


def _check_unique_keys(items: list, t: type, link: Any) -> None:
    """A custom node's flatten must yield each key once: a repeated key would give two
    paths to one place, and unflatten / update would keep only one of its children."""
    seen: set = set()
    unhashable: list = []
    for key, _ in items:
        try:
            repeated = key in seen
            seen.add(key)
        except TypeError:  # an unhashable key (the GraphDef's hash will name it)
            repeated = any(key == k for k in unhashable)
            unhashable.append(key)
        if repeated:
            raise ValueError(
                f"the flatten registered for {t.__qualname__} yields the key {key!r} twice for "
                f"the node at path {materialize(link)!r}: each child key must be unique (fix "
                f"the flatten passed to register_graph_node_type)"
            )


def walk(root: Any) -> Walk:
    """Flatten ``root`` (a graph node, or a pytree of them) into the IR."""
    kinds = reg.kind_cache()
    kind_of = reg.kind_of
    rk = kind_of(root)
    if rk is not _NODE and rk not in reg.CONTAINER_KINDS:
        raise TypeError(
            f"flatten expects a graph node (a specgraph.Node or a registered node type) or a "
            f"pytree of them as the root, got {type(root).__qualname__} "
            f"({reg.KIND_NAMES[rk]}); wrap it in a Node"
        )

    table: list[Any] = []  # by index; NodeSpec filled when its frame closes
    objects: list[Any] = []  # by index
    seen: dict[int, int] = {}  # id(obj) -> index
    values: list[Any] = []
    links: list[Any] = []  # by value slot
    ilinks: list[Any] = []  # by index
    stypes: list[Any] = []
    # ids of the containers open since the nearest node frame: a container met again
    # there is a cycle of containers alone (an error); one met again below a node is
    # not (that node is a back-reference the second time round, so it terminates).
    active: set[int] = set()

    # A frame: [is_node, obj, items, pos, edges, link, tag, extra, static_arrays, data_keys]
    #   node frame:   tag = index, extra = metadata
    #   pytree frame: tag = ptype (list/tuple/dict/treedef), extra = keys
    #   static_arrays: bare arrays here are statics (a dict-backed node class's rule,
    #     inherited by the containers below it); data_keys: (stored names, path key ->
    #     stored name) of a node frame whose plain values are dynamic leaves, or None
    # A node frame that saved the open-container set appends it (index 10).
    stack: list[list[Any]] = []
    root_edge: Any = None
    nesting = 1  # an upper bound on how deeply the containers nest: the deepest stack at one
    node_edges, state_edges, array_edges = _NODE_EDGES, _STATE_EDGES, _ARRAY_EDGES

    def open_container(x: Any, k: int, link: Any, static_arrays: bool) -> list[Any]:
        keys: Sequence[Any]  # a dict's sorted keys (a list) or a pytree's (a tuple)
        if k is _LIST:
            items = list(enumerate(x))
            return [False, x, items, 0, [], link, list, None, static_arrays, None]
        if k is _TUPLE:
            return [False, x, list(enumerate(x)), 0, [], link, tuple, None, static_arrays, None]
        if k is _DICT:
            keys = _sorted_dict_keys(x, link)
            return [False, x, [(key, x[key]) for key in keys], 0, [], link, dict, tuple(keys),
                    static_arrays, None]
        treedef, keys, children = reg.pytree_children(x)
        return [False, x, list(zip(keys, children, strict=True)), 0, [], link, treedef, keys,
                static_arrays, None]

    def open_node(x: Any, t: type, link: Any) -> list[Any]:
        idx = len(table)
        seen[id(x)] = idx
        table.append(None)
        objects.append(x)
        ilinks.append(link)
        items, meta, impl = _node_items(x, t, link)
        dn = impl.dict_node
        if dn is None:
            return [True, x, items, 0, [], link, idx, meta, False, None]
        data = dn.data_keys(t, meta) if dn.data_keys is not None else None
        return [True, x, items, 0, [], link, idx, meta, dn.static_arrays,
                None if data is None else (data, dn.stored_key)]

    if rk is _NODE:
        stack.append(open_node(root, type(root), None))
        root_edge = NodeEdge(0)
    else:
        active.add(id(root))
        stack.append(open_container(root, rk, None, False))

    while stack:
        fr = stack[-1]
        items = fr[2]
        edges = fr[4]
        plink = fr[5]
        pos = fr[3]
        static_arrays = fr[8]
        data_keys = fr[9]
        n_items = len(items)
        descended = False
        while pos < n_items:
            key, val = items[pos]
            pos += 1
            t = type(val)
            k = kinds.get(t)
            if k is None:
                k = kind_of(val)
            if k is _STATIC and data_keys is not None and val is not None \
                    and data_keys[1](key) in data_keys[0]:
                k = _ARRAY  # a plain value the node class declares dynamic (NNX data attribute)
            elif k is _ARRAY and static_arrays:
                edges.append(_tnew(StaticEdge, ("static", ArrayConstant, ArrayConstant(val))))
                continue
            if k is _STATIC:
                if t is float and val == 0.0:  # -0.0 == 0.0, yet they are different statics
                    edges.append(_tnew(StaticEdge, ("static", float_zero_sig(val), val)))
                else:  # (a class whose metaclass redefines ==: compared by identity)
                    edges.append(_tnew(StaticEdge, ("static", t if type(t) is type else exact(t), val)))
            elif k is _STATE or k is _FSTATE:
                idx = seen.get(id(val))
                if idx is None:
                    idx = len(table)
                    seen[id(val)] = idx
                    slot = len(values)
                    if k is _STATE:
                        meta, value = val._metadata, val.value
                    else:  # a foreign library's state: its adapter reads it
                        simpl = reg.state_impl(t)
                        meta, value = simpl.metadata(val), simpl.get(val)  # type: ignore[union-attr]
                    msig = meta_sig(meta) if meta else ()
                    table.append(_tnew(StateSpec, ("statespec", t, idx, meta, slot, msig)))
                    objects.append(val)
                    values.append(value)
                    link = (plink, key)
                    links.append(link)
                    ilinks.append(link)
                    stypes.append(t)
                edges.append(state_edges[idx] if idx < len(state_edges) else _edge_cache(state_edges, idx))
            elif k is _ARRAY:
                slot = len(values)
                edges.append(array_edges[slot] if slot < len(array_edges) else _edge_cache(array_edges, slot))
                values.append(val)
                links.append((plink, key))
                stypes.append(None)
            elif k is _NODE:
                idx = seen.get(id(val))
                if idx is None:
                    child = open_node(val, t, (plink, key))
                    idx = child[6]
                    edges.append(node_edges[idx] if idx < len(node_edges) else _edge_cache(node_edges, idx))
                    fr[3] = pos
                    if active:
                        child.append(active)  # restored when the node's frame closes
                        active = set()
                    stack.append(child)
                    descended = True
                    break
                edges.append(node_edges[idx] if idx < len(node_edges) else _edge_cache(node_edges, idx))
            elif k is _UNSUPPORTED:
                raise TypeError(
                    f"the {t.__qualname__} at path {materialize((plink, key))!r} cannot be served by "
                    f"specgraph: {reg.unsupported_reason(t)}"
                )
            else:
                vid = id(val)
                if vid in active:
                    raise ValueError(
                        f"the {t.__qualname__} at path {materialize((plink, key))!r} contains "
                        "itself: pytree containers cannot form cycles (hold the cycle through "
                        "a graph node instead)"
                    )
                active.add(vid)
                fr[3] = pos
                stack.append(open_container(val, k, (plink, key), static_arrays))
                if len(stack) > nesting:
                    nesting = len(stack)
                descended = True
                break
        if descended:
            continue

        # The frame is complete.
        stack.pop()
        if fr[0]:
            if len(fr) > 10:
                active = fr[10]
            keys = tuple([kv[0] for kv in items])
            meta = fr[7]
            sig = None
            if meta is not None:
                sig = (keys_sig(keys), value_sig(meta))
            elif not all(isinstance(k, str) for k in keys):
                sig = (keys_sig(keys), None)
            table[fr[6]] = _tnew(NodeSpec, ("nodespec", type(fr[1]), fr[6], keys, tuple(edges), meta, sig))
            continue
        x = fr[1]
        active.discard(id(x))
        children = tuple(fr[4])
        ptype = fr[6]
        keys = fr[7] if fr[7] is not None else tuple(range(len(children)))
        treedef = None if isinstance(ptype, type) else ptype  # a custom pytree's
        edge: Any = None
        if all(type(c) is StaticEdge for c in children):
            h = type(x).__hash__
            if h is not None and h is not _object_hash:
                try:
                    hash(x)
                except Exception:
                    pass
                else:
                    edge = StaticEdge(collapsed_sig(type(x), tuple(c[1] for c in children), treedef), x)
        if edge is None:
            # What tells equal containers apart: a dict's key types, a custom pytree's aux data.
            sig = keys_sig(keys) if ptype is dict else None if treedef is None else aux_sig(treedef)
            edge = PytreeEdge(ptype, keys, children, sig)
        if stack:
            stack[-1][4].append(edge)
        else:
            root_edge = edge

    pathtable = PathTable(tuple(links), tuple(stypes))
    return Walk(GraphDef(root_edge, tuple(table), pathtable, nesting), values, objects, ilinks)
