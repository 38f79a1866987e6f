"""Which kind of thing a value is, decided once per type and cached.

The walker asks ``kind_of(x)`` for every value it meets. Classification is keyed
by ``type(x)``: the probe (including the costly JAX pytree probe) runs once per
type. Any registration clears the cache and bumps :data:`epoch`, which the
specializer's generated code guards on.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
from jax import tree_util

from ._model import Node, State

__all__ = [
    "register_graph_node_type",
    "NodeImpl",
    "kind_of",
    "node_impl",
    "registry_epoch",
    "clear_classification_cache",
    "pytree_level",
    "pytree_children",
]

# Kinds. Small ints so that the walker's dispatch is a cheap identity compare.
STATIC = 0
STATE = 1
ARRAY = 2
NODE = 3
LIST = 4
TUPLE = 5
DICT = 6
PYTREE = 7  # any other JAX-registered pytree (namedtuple, dataclass, ...)

KIND_NAMES = {
    STATIC: "static",
    STATE: "state",
    ARRAY: "array leaf",
    NODE: "graph node",
    LIST: "list",
    TUPLE: "tuple",
    DICT: "dict",
    PYTREE: "pytree",
}
CONTAINER_KINDS = frozenset({LIST, TUPLE, DICT, PYTREE})


@dataclass(frozen=True, eq=False)
class NodeImpl:
    """How to take a mutable node type apart and put it back (BrainState protocol).

    ``flatten(node) -> (iterable of (key, child), metadata)``; ``metadata`` must be
    hashable and is kept in the ``GraphDef``. ``create_empty(metadata)`` makes a
    blank node that ``set_key`` fills. ``pop_key`` removes one child and
    ``clear`` removes them all.
    """

    type: type
    flatten: Callable[[Any], tuple[Iterable[tuple[Hashable, Any]], Hashable]]
    set_key: Callable[[Any, Hashable, Any], None]
    pop_key: Callable[[Any, Hashable], Any]
    create_empty: Callable[[Hashable], Any]
    clear: Callable[[Any], None]
    is_builtin_node: bool = False


_builtin_type = type
_lock = threading.RLock()
_node_impls: dict[type, NodeImpl] = {}
_kind_cache: dict[type, int] = {}
_epoch = [0]


def registry_epoch() -> int:
    """A counter bumped by every registration; generated code guards on it."""
    return _epoch[0]


def epoch_cell() -> list[int]:
    """The mutable cell holding the epoch (bound into generated code)."""
    return _epoch


def register_graph_node_type(
    type: type,  # noqa: A002 - the anchors' parameter name
    flatten: Callable[[Any], tuple[Iterable[tuple[Hashable, Any]], Hashable]],
    set_key: Callable[[Any, Hashable, Any], None],
    pop_key: Callable[[Any, Hashable], Any],
    create_empty: Callable[[Hashable], Any],
    clear: Callable[[Any], None],
) -> None:
    """Register a custom mutable graph node type.

    Its instances are then graph nodes: flattened by ``flatten``, rebuilt with
    ``create_empty`` + ``set_key``. Registration clears the classification cache
    and invalidates every specialization.
    """
    if not isinstance(type, _builtin_type):
        raise TypeError(f"register_graph_node_type expects a class, got {type!r}")
    with _lock:
        _node_impls[type] = NodeImpl(type, flatten, set_key, pop_key, create_empty, clear)
        clear_classification_cache()


def clear_classification_cache() -> None:
    """Forget every cached classification and bump the registry epoch."""
    with _lock:
        _kind_cache.clear()
        _impl_cache.clear()
        _epoch[0] += 1


# -- built-in Node protocol ---------------------------------------------------


def _node_set_key(node: Any, key: Hashable, value: Any) -> None:
    node.__dict__[key] = value


def _node_pop_key(node: Any, key: Hashable) -> Any:
    return node.__dict__.pop(key)


def _node_clear(node: Any) -> None:
    node.__dict__.clear()


def node_children(node: Any) -> list[tuple[Hashable, Any]]:
    """The children of a ``Node``: its attributes sorted by name, minus the invisible."""
    d = node.__dict__
    if type(d) is not dict:
        # A dict subclass put in as ``__dict__`` (defaultdict, Counter, ...): read what
        # attribute access sees, the dict's own storage, past any override of its methods.
        d = dict(dict.items(d))
    hidden = type(node).graph_invisible_attrs
    keys = sorted(d)
    if hidden:
        keys = [k for k in keys if k not in hidden]
    return [(k, d[k]) for k in keys]


def _node_flatten(node: Any) -> tuple[list[tuple[Hashable, Any]], None]:
    return node_children(node), None


def _node_create_empty(metadata: Hashable) -> Any:  # pragma: no cover - typed per class below
    raise AssertionError("Node shells are created from the node type")


_BUILTIN_NODE_IMPL = NodeImpl(
    Node, _node_flatten, _node_set_key, _node_pop_key, _node_create_empty, _node_clear, True
)
_impl_cache: dict[type, NodeImpl] = {}


def node_impl(t: type) -> NodeImpl:
    """The protocol implementation for node type ``t`` (exact registration, else MRO)."""
    impl = _impl_cache.get(t)
    if impl is not None:
        return impl
    with _lock:
        for base in t.__mro__:
            impl = _node_impls.get(base)
            if impl is not None:
                break
        else:
            if issubclass(t, Node):
                impl = _BUILTIN_NODE_IMPL
            else:
                raise TypeError(
                    f"{t.__module__}.{t.__qualname__} is not a graph node type: subclass "
                    "specgraph.Node or call specgraph.register_graph_node_type for it"
                )
        _impl_cache[t] = impl
        return impl


# -- classification -----------------------------------------------------------

_ARRAY_TYPES: tuple[type, ...] = (jax.Array, np.ndarray)


def _classify(x: Any) -> int:
    t = type(x)
    for base in t.__mro__:
        if base in _node_impls:
            return NODE
    if issubclass(t, Node):
        return NODE
    if issubclass(t, State):
        return STATE
    if isinstance(x, _ARRAY_TYPES):
        return ARRAY
    if t is list:
        return LIST
    if t is tuple:
        return TUPLE
    if t is dict:
        return DICT
    if x is None:
        return STATIC
    if not tree_util.all_leaves([x]):
        return PYTREE
    return STATIC


def kind_of(x: Any) -> int:
    """The kind of ``x`` (one of the module's kind constants), cached by type."""
    t = type(x)
    k = _kind_cache.get(t)
    if k is None:
        k = _classify(x)
        with _lock:
            _kind_cache[t] = k
    return k


def kind_cache() -> dict[type, int]:
    """The live cache dict (read directly by the walker's hot loop)."""
    return _kind_cache


# -- one level of a JAX pytree --------------------------------------------------


def pytree_level(x: Any) -> tuple[list[Any], Any]:
    """``(children, treedef)`` of one level of a non-builtin JAX pytree (generated code)."""
    return tree_util.tree_flatten(x, is_leaf=lambda y: y is not x)


def pytree_children(x: Any) -> tuple[Any, tuple, list]:
    """``(treedef, keys, children)`` of the same level, with the children's path keys
    (the reference walker's view; about twice the cost of :func:`pytree_level`)."""
    with_path, treedef = tree_util.tree_flatten_with_path(x, is_leaf=lambda y: y is not x)
    keys = tuple(_key_entry(p[0]) if p else i for i, (p, _) in enumerate(with_path))
    return treedef, keys, [c for _, c in with_path]


def _key_entry(k: Any) -> Hashable:
    """A JAX key-path entry as a plain path element."""
    for attr in ("key", "idx", "name"):
        if hasattr(k, attr):
            return getattr(k, attr)
    return k  # pragma: no cover - unknown key kinds are kept as they are
