"""Statics the caches hold only weakly: those that can reach user data.

A cached structure is keyed by a ``GraphDef``, and a ``GraphDef`` holds the statics of
the graph it came from. A static such as a bound method (``self.cb = self.head.score``),
a closure or a ``functools.partial`` over a node reaches that node, and every array it
holds: a cache keyed by the user's ``GraphDef`` would keep them alive until
``clear_cache()``. So the caches key by :func:`cache_key`, a twin of the ``GraphDef`` in
which each such static is a :class:`WeakStatic` (a weak reference, the static's hash,
its equality). The twin compares and hashes like the original while the statics live;
generated code compares a graph's static with the weakly held object (``x is R0()``).
When one of them dies, its structure can never match again: the twin is reported by
:func:`take_dead` for the caches to drop.

Statics that reach no user data (numbers, strings, classes, plain functions,
``jax.nn.relu``, enums, a frozen config of numbers, ...) stay strong, with the cheaper
identity guard. A static that reaches user data but cannot be weakly referenced (a
tuple holding a bound method) makes its structure uncacheable: the generic walker
serves it.
"""

from __future__ import annotations

import gc
import weakref
from types import BuiltinFunctionType, CodeType, FunctionType, ModuleType
from typing import Any, cast

import numpy as np
from jax import Device
from jax.sharding import AbstractMesh, Mesh, PartitionSpec, Sharding

from . import _registry as reg
from ._ir import ArrayConstant, GraphDef, NodeSpec, PytreeEdge, StateSpec, StaticEdge, fold_edge
from ._sameness import VALUE_TYPE_IDS, aux_data, is_value_sig

__all__ = ["WeakStatic", "cache_key", "reaches_user_data", "strong_graphdef", "take_dead"]

#: Objects looked at to decide that a static reaches no user data; past it, it may.
_BUDGET = 2000
_USER_KINDS = frozenset({reg.NODE, reg.STATE, reg.ARRAY})
#: Program configuration, never user data: a mesh's devices sit in a NumPy array, which
#: would otherwise count as an array (NNX keeps a Param's mesh in its metadata).
_CONFIG_TYPES = (type, ModuleType, CodeType, Mesh, AbstractMesh, Device, Sharding, PartitionSpec, np.dtype)

# Weak references to twins one of whose statics died. Only appended to and popped from
# (each atomic): the callback that appends can run anywhere, even inside take_dead.
_dead: list[weakref.ref] = []


def reaches_user_data(value: Any) -> bool:
    """Whether ``value`` may reach a graph node, a State or an array (conservative).

    Follows what the object refers to (``gc.get_referents``), without entering
    classes, modules, a function's globals or code, meshes, devices and shardings
    (program, not data, and alive anyway); gives up, answering yes, past a bounded
    number of objects.
    """
    seen: set[int] = set()
    stack = [value]
    config = _config_classes
    while stack:
        x = stack.pop()
        if id(x) in seen:
            continue
        seen.add(id(x))
        if len(seen) > _BUDGET:
            return True
        t = type(x)
        if id(t) in VALUE_TYPE_IDS:
            continue
        known = config.get(id(t))
        if known is None:
            known = _config_class(t)
        if known[1]:
            continue
        try:
            if reg.kind_of(x) in _USER_KINDS:
                return True
        except Exception:  # an object no classification understands: it may be anything
            return True
        if t is FunctionType:
            stack.extend(c.cell_contents for c in x.__closure__ or () if _cell_full(c))
            stack.extend(x.__defaults__ or ())
            stack.extend((x.__kwdefaults__ or {}).values())
            stack.extend(x.__dict__.values())
        elif t is BuiltinFunctionType:
            stack.append(x.__self__)  # a module, a type, or the object a method is bound to
        else:
            stack.extend(gc.get_referents(x))
    return False


# id(class) -> (class, whether it is one of _CONFIG_TYPES), the class held so its id stays
# its own. By class, not instance: an object whose ``__class__`` claims a config class is
# looked into (a subclass test reads the class only; it never becomes false for a class).
_config_classes: dict[int, tuple[type, bool]] = {}


def _config_class(t: type) -> tuple[type, bool]:
    known = _config_classes[id(t)] = (t, issubclass(t, _CONFIG_TYPES))
    return known


def _cell_full(cell: Any) -> bool:
    try:
        cell.cell_contents  # noqa: B018 - an empty cell raises
    except ValueError:
        return False
    return True


class WeakStatic:
    """A static as a cache holds it: weakly, with its hash, equal to what it was equal to.

    ``ref`` refers to the object the graph holds (for an ``ArrayConstant``, its array).
    Dead, it is equal to nothing but itself (its structure can never match again).
    """

    __slots__ = ("_hash", "boxed", "owner", "ref")

    def __init__(self, value: Any) -> None:
        self._hash = hash(value)
        self.boxed = type(value) is ArrayConstant
        self.owner: weakref.ref | None = None  # the twin GraphDef, set once it exists
        self.ref = weakref.ref(value.array if self.boxed else value, self._died)

    def value(self) -> Any:
        """The static it stands for (``None`` when dead)."""
        obj = self.ref()
        return ArrayConstant(obj) if self.boxed and obj is not None else obj

    def _died(self, _: weakref.ref) -> None:
        # Runs wherever the static is freed (even inside the garbage collector): only note
        # it; the dispatcher drops the twin from its caches at its next bookkeeping.
        if self.owner is not None:
            _dead.append(self.owner)

    def __eq__(self, other: object) -> bool:
        value = self.value()
        if value is None:
            return self is other
        if type(other) is WeakStatic:
            other = other.value()
            if other is None:
                return False
        return value is other or bool(value == other)

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        value = self.ref()
        return "WeakStatic(<dead>)" if value is None else f"WeakStatic({type(value).__qualname__})"


def _weak_edge(edge: Any, reaches: dict[int, bool]) -> Any:
    """``edge`` with a static that reaches user data held weakly (``None``: it cannot be).
    ``reaches`` remembers the answer per object (one static often sits in every layer)."""
    if type(edge) is not StaticEdge:
        return edge
    v = edge.value
    r: bool | None
    if edge.sig is ArrayConstant:  # an array kept as a static (BrainState's rule) is user data
        r = True
    elif is_value_sig(edge.sig):
        return edge
    else:
        r = reaches.get(id(v))
        if r is None:
            r = reaches[id(v)] = reaches_user_data(v)
    if not r:
        return edge
    try:
        return StaticEdge(edge.sig, WeakStatic(v))
    except TypeError:  # not weakly referenceable
        return None


class _Uncacheable(Exception):
    pass


def _harmless(value: Any, reaches: dict[int, bool]) -> bool:
    """Whether a dict key, a metadata value or a pytree's aux data reaches no user data, so
    that a cache may hold it. (Generated guards bind these as constants, so they cannot
    be held weakly: a structure with one that reaches user data is never cached.)"""
    if id(type(value)) in VALUE_TYPE_IDS:
        return True
    r = reaches.get(id(value))
    if r is None:
        r = reaches[id(value)] = reaches_user_data(value)
    return not r


def cache_key(gd: GraphDef) -> GraphDef | None:
    """What a cache may hold for ``gd``: ``gd`` itself when no static reaches user data,
    else a twin holding those statics weakly; ``None`` when one of them cannot be held
    weakly, or when a dict key, state or custom-node metadata or pytree aux data reaches
    user data (the structure is not cached). ``gd`` must be hashable."""
    h = hash(gd)
    replaced: list[WeakStatic] = []
    reaches: dict[int, bool] = {}  # id -> answer, for statics gd holds (alive meanwhile)

    def leaf(e: Any) -> Any:
        w = _weak_edge(e, reaches)
        if w is None:
            raise _Uncacheable
        if w is not e:
            replaced.append(w.value)
        return w

    def build(e: Any, parts: list) -> Any:
        ptype = e.ptype
        if e.sig is not None and not all(_harmless(k, reaches) for k in e.keys):
            raise _Uncacheable  # a dict key such as a node or a bound method
        if not isinstance(ptype, type) and not _harmless(aux_data(ptype), reaches):
            raise _Uncacheable  # a custom pytree's aux data (a meta field, ...)
        if all(p is c for p, c in zip(parts, e.children, strict=True)):
            return e
        return PytreeEdge(ptype, e.keys, tuple(parts), e.sig)

    try:
        table = []
        for spec in gd.table:
            if type(spec) is not NodeSpec:  # a state: its metadata
                for _, v in cast(StateSpec, spec).metadata:
                    if id(type(v)) not in VALUE_TYPE_IDS and not _harmless(v, reaches):
                        raise _Uncacheable
            else:  # a custom node's keys and metadata; then its statics
                if spec.sig is not None:
                    for k in spec.keys:
                        if id(type(k)) not in VALUE_TYPE_IDS and not _harmless(k, reaches):
                            raise _Uncacheable
                if spec.meta is not None and not _harmless(spec.meta, reaches):
                    raise _Uncacheable
                kinds = set(map(type, spec.children))
                if StaticEdge in kinds or PytreeEdge in kinds:
                    children = tuple(fold_edge(c, leaf, build) for c in spec.children)
                    if any(a is not b for a, b in zip(children, spec.children, strict=True)):
                        spec = NodeSpec(spec.type, spec.index, spec.keys, children, spec.meta, spec.sig)
            table.append(spec)
        root = fold_edge(gd.root, leaf, build)
    except _Uncacheable:
        return None
    if not replaced:
        return gd
    twin: GraphDef[Any] = GraphDef(root, tuple(table), gd.pathtable, gd._nesting)
    object.__setattr__(twin, "_hash", h)
    owner = weakref.ref(twin)
    for w in replaced:
        w.owner = owner
    return twin


def strong_graphdef(key: GraphDef) -> GraphDef:
    """The ``GraphDef`` a twin stands for, its statics held strongly again (they must be
    alive: a guard just saw each of them in the graph being flattened)."""

    def leaf(e: Any) -> Any:
        if type(e) is StaticEdge and type(e.value) is WeakStatic:
            value = e.value.value()
            if value is None:
                raise RuntimeError("a weakly held static died while its structure was matched")
            return StaticEdge(e.sig, value)
        return e

    def build(e: Any, parts: list) -> Any:
        if all(p is c for p, c in zip(parts, e.children, strict=True)):
            return e
        return PytreeEdge(e.ptype, e.keys, tuple(parts), e.sig)

    table = []
    for spec in key.table:
        if type(spec) is NodeSpec:
            children = tuple(fold_edge(c, leaf, build) for c in spec.children)
            if any(a is not b for a, b in zip(children, spec.children, strict=True)):
                spec = NodeSpec(spec.type, spec.index, spec.keys, children, spec.meta, spec.sig)
        table.append(spec)
    gd: GraphDef[Any] = GraphDef(fold_edge(key.root, leaf, build), tuple(table), key.pathtable, key._nesting)
    object.__setattr__(gd, "_hash", key._hash)
    return gd


def take_dead() -> list[GraphDef]:
    """The twins one of whose statics died since the last call (still referenced)."""
    out = []
    while _dead:
        try:
            twin = _dead.pop()()
        except IndexError:  # another thread took the last one
            break
        if twin is not None:
            out.append(twin)
    return out
