"""Partition annotations on states, and placing a graph's states on a device mesh.

A state says how it is laid out across a mesh with its ``sharding`` metadata:
``sg.Param(w, sharding=("data", "model"))`` names one mesh axis (or ``None``, or a
tuple of axes) per array dimension, as a ``PartitionSpec`` does. Metadata is part of
the ``GraphDef``, so everything derived from it here (the specs, the
``NamedSharding`` per value for a given mesh) is computed once per structure and
cached; a call costs one flatten and a dict lookup.

Distribution itself stays JAX's job: ``sg.shard`` places values with
``jax.device_put`` (or constrains them with ``with_sharding_constraint`` inside a
trace), and ``sg.jit`` keeps each written-back state on its input sharding.

Other state classes (Flax NNX Variables, say) keep their annotation elsewhere in
their metadata: :func:`register_partition_metadata` says where, per state type.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Hashable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ._ir import GraphDef, StateSpec
from ._model import State
from ._sameness import meta_sig
from ._statemap import StateMap
from .runtime import dispatch

__all__ = [
    "SHARDING_KEY",
    "partition_specs",
    "named_shardings",
    "shard",
    "register_partition_metadata",
]

#: The metadata key of specgraph's own states that holds the partition annotation.
SHARDING_KEY = "sharding"

Metadata = tuple[tuple[str, Hashable], ...]
Names = tuple[Any, ...]  # one entry per dimension: None, a mesh axis name, or a tuple of names


# -- where a state type keeps its annotation -------------------------------------------


class _MetadataAccess:
    """How to read and rewrite the partition annotation in one state type's metadata."""

    __slots__ = ("get", "set")

    def __init__(self, get: Callable[[Metadata], Any], set: Callable[[Metadata, Any], Metadata]) -> None:  # noqa: A002
        self.get = get
        self.set = set


def _get_key(metadata: Metadata) -> Any:
    for k, v in metadata:
        if k == SHARDING_KEY:
            return v
    return None


def _set_key(metadata: Metadata, spec: Any) -> Metadata:
    items = dict(metadata)
    items[SHARDING_KEY] = spec
    return tuple(sorted(items.items()))


_access: dict[type, _MetadataAccess] = {State: _MetadataAccess(_get_key, _set_key)}
_access_by_type: dict[type, _MetadataAccess | None] = {}
_lock = threading.Lock()


def register_partition_metadata(
    state_type: type,
    get: Callable[[Metadata], Any],
    set: Callable[[Metadata, Any], Metadata],  # noqa: A002 - pairs with get
) -> None:
    """Say where states of ``state_type`` (and subclasses) keep their partition annotation.

    ``get(metadata)`` returns the annotation (``None``, a tuple of per-dimension
    mesh axes, or a ``PartitionSpec``) from the state's metadata tuple (the sorted
    ``(key, value)`` pairs its ``StateSpec`` holds); ``set(metadata, annotation)``
    returns the metadata with the annotation replaced (transforms that add or remove
    an array axis rewrite it). specgraph's own ``State`` reads the ``sharding`` key.
    """
    with _lock:
        _access[state_type] = _MetadataAccess(get, set)
        _access_by_type.clear()
    _specs_cache.clear()
    _named_cache.clear()
    _annotated_cache.clear()


def _access_for(stype: type) -> _MetadataAccess | None:
    acc = _access_by_type.get(stype, _MISSING)
    if acc is _MISSING:
        acc = None
        for base in stype.__mro__:
            acc = _access.get(base)
            if acc is not None:
                break
        with _lock:
            _access_by_type[stype] = acc
    return acc


_MISSING: Any = object()


def annotation_of(spec: StateSpec) -> Names | None:
    """A state's partition annotation as a tuple of per-dimension names, or ``None``."""
    acc = _access_for(spec[1])
    if acc is None:
        return None
    raw = acc.get(spec[3])
    return None if raw is None else tuple(raw)


def _check_names(raw: Any, where: str) -> None:
    if raw is None or isinstance(raw, PartitionSpec):
        return
    if not isinstance(raw, tuple):
        raise TypeError(
            f"the sharding annotation of {where} is {raw!r} ({type(raw).__qualname__}); give a tuple "
            "with one entry per array dimension (a mesh axis name, a tuple of names, or None), "
            "e.g. sharding=('model', None), or a jax.sharding.PartitionSpec"
        )
    for entry in raw:
        if entry is None or isinstance(entry, str):
            continue
        if isinstance(entry, tuple) and all(isinstance(a, str) for a in entry):
            continue
        raise TypeError(
            f"the sharding annotation of {where} has the entry {entry!r}; each entry is a mesh "
            "axis name, a tuple of axis names, or None"
        )


# -- specs and shardings, once per GraphDef --------------------------------------------

_specs_cache: weakref.WeakKeyDictionary[GraphDef, tuple[PartitionSpec, ...]] = weakref.WeakKeyDictionary()
_named_cache: weakref.WeakKeyDictionary[GraphDef, dict[Mesh, tuple[NamedSharding, ...]]] = (
    weakref.WeakKeyDictionary()
)
_REPLICATED = PartitionSpec()


def specs_for(gd: GraphDef) -> tuple[PartitionSpec, ...]:
    """One ``PartitionSpec`` per value slot of ``gd`` (replicated where unannotated)."""
    specs = _specs_cache.get(gd)
    if specs is not None:
        return specs
    out = [_REPLICATED] * gd.num_leaves
    table = gd.pathtable
    for spec in gd.table:
        if type(spec) is not StateSpec:
            continue
        acc = _access_for(spec[1])
        if acc is None:
            continue
        raw = acc.get(spec[3])
        if raw is None:
            continue
        _check_names(raw, f"the {spec[1].__qualname__} at path {table.path(spec[4])!r}")
        out[spec[4]] = raw if isinstance(raw, PartitionSpec) else PartitionSpec(*raw)
    specs = tuple(out)
    _specs_cache[gd] = specs
    return specs


def shardings_for(gd: GraphDef, mesh: Mesh) -> tuple[NamedSharding, ...]:
    """One ``NamedSharding`` on ``mesh`` per value slot of ``gd`` (cached per structure and mesh)."""
    per_mesh = _named_cache.get(gd)
    if per_mesh is None:
        per_mesh = _named_cache[gd] = {}
    named = per_mesh.get(mesh)
    if named is not None:
        return named
    if not isinstance(mesh, Mesh):
        raise TypeError(f"expected a jax.sharding.Mesh, got {type(mesh).__qualname__}")
    axes = set(mesh.axis_names)
    made: dict[PartitionSpec, NamedSharding] = {}
    out = []
    for slot, spec in enumerate(specs_for(gd)):
        ns = made.get(spec)
        if ns is None:
            used: set[Any] = set()
            for entry in spec:
                names = entry if isinstance(entry, tuple) else (entry,)
                for name in names:
                    if name is None:
                        continue
                    if name not in axes:
                        raise ValueError(
                            f"the state at path {gd.pathtable.path(slot)!r} is annotated sharding="
                            f"{tuple(spec)!r}, but the mesh has no axis {name!r} (its axes: "
                            f"{tuple(mesh.axis_names)!r}); rename the annotation or use a mesh "
                            "with that axis"
                        )
                    if name in used:
                        raise ValueError(
                            f"the state at path {gd.pathtable.path(slot)!r} is annotated sharding="
                            f"{tuple(spec)!r}, which splits two dimensions over the mesh axis "
                            f"{name!r}; name each mesh axis at most once"
                        )
                    used.add(name)
            ns = made[spec] = NamedSharding(mesh, canonical_spec(spec))
        out.append(ns)
    named = tuple(out)
    per_mesh[mesh] = named
    return named


def canonical_spec(spec: PartitionSpec) -> PartitionSpec:
    """``spec`` without trailing ``None`` entries: the form JAX gives its outputs.

    ``P('model', None)`` and ``P('model')`` place an array the same way but compare
    unequal; using JAX's form makes a state's sharding equal before and after a step.
    """
    entries = tuple(spec)
    end = len(entries)
    while end and entries[end - 1] is None:
        end -= 1
    return spec if end == len(entries) else PartitionSpec(*entries[:end])


# -- public -----------------------------------------------------------------------------


def partition_specs(node: Any) -> StateMap:
    """The ``PartitionSpec`` of every value of ``node``, keyed by path.

    Annotated states give their annotation; unannotated states and bare array leaves
    are replicated (``PartitionSpec()``). Usable as ``in_shardings``-style prefixes
    or with ``jax.lax.with_sharding_constraint`` on a ``StateMap`` of the same paths.
    """
    gd, sm = dispatch.flatten(node)
    return StateMap._make(sm._table, list(specs_for(gd)))


def named_shardings(node: Any, mesh: Mesh) -> StateMap:
    """The ``NamedSharding`` on ``mesh`` of every value of ``node``, keyed by path."""
    gd, sm = dispatch.flatten(node)
    named = shardings_for(gd, mesh)
    _check_fit(gd, sm._values, mesh, divisible=False)
    return StateMap._make(sm._table, list(named))


def shard(node: Any, mesh: Mesh) -> Any:
    """Place every value of ``node`` on its ``NamedSharding`` of ``mesh``, in place.

    Concrete arrays are moved with one ``jax.device_put``; inside a trace (under
    ``sg.jit``, say, to create a model directly on its shards) the values are
    constrained with ``with_sharding_constraint`` instead; ``jax.ShapeDtypeStruct``
    values (from :func:`specgraph.eval_shape`) get the sharding attached, which
    plans a layout before anything is allocated. Returns ``node``.
    """
    gd, sm = dispatch.flatten(node)
    shardings = shardings_for(gd, mesh)
    values = sm._values
    _check_fit(gd, values, mesh, divisible=True)  # alike for arrays, tracers and plans
    new = list(values)
    eager: list[int] = []
    for slot, v in enumerate(values):
        leaves = jax.tree_util.tree_leaves(v)
        if any(isinstance(x, jax.ShapeDtypeStruct) for x in leaves):
            new[slot] = _attach(v, shardings[slot], gd, slot)
        elif any(isinstance(x, jax.core.Tracer) for x in leaves):
            new[slot] = _constrain_value(v, shardings[slot], gd, slot)
        else:
            eager.append(slot)
    if eager:
        try:
            placed = jax.device_put([values[i] for i in eager], [shardings[i] for i in eager])
        except (ValueError, TypeError):
            for i in eager:  # find the value at fault and name its path
                _place_one(values[i], shardings[i], gd, i)
            raise
        for i, v in zip(eager, placed, strict=True):
            new[i] = v
    dispatch.update(node, (StateMap._make(sm._table, new),))
    return node


def _check_fit(gd: GraphDef, values: list[Any], mesh: Mesh, divisible: bool) -> None:
    """Every annotated value has a dimension per annotation entry (and, with ``divisible``,
    each dimension splits evenly over its mesh axes); else a ``ValueError`` naming its path.

    ``jax.device_put`` checks this for concrete arrays, but not in the annotation's own
    words, nor trailing ``None`` entries (dropped from the ``NamedSharding``); a
    ``with_sharding_constraint`` in a trace pads an uneven split and a plan checks nothing,
    so without this a plan or a model created under ``sg.jit`` would accept what placing
    the real arrays refuses.
    """
    sizes = dict(zip(mesh.axis_names, mesh.devices.shape, strict=True))
    for slot, spec in enumerate(specs_for(gd)):
        if not len(spec):
            continue
        for x in jax.tree_util.tree_leaves(values[slot]):
            shape = getattr(x, "shape", None)
            if shape is None:
                shape = np.shape(x)
            if len(spec) > len(shape):
                raise ValueError(
                    f"cannot shard {_where(gd, slot)} of shape {tuple(shape)} with sharding="
                    f"{tuple(spec)!r}: the annotation has {len(spec)} entries for a value of "
                    f"{len(shape)} dimensions; give at most one entry per dimension"
                )
            if not divisible:
                continue
            for dim, (size, entry) in enumerate(zip(shape, spec, strict=False)):
                names = entry if isinstance(entry, tuple) else (entry,)
                parts = 1
                for name in names:
                    if name is not None:
                        parts *= sizes[name]
                if size % parts:
                    raise ValueError(
                        f"cannot shard {_where(gd, slot)} of shape {tuple(shape)} with sharding="
                        f"{tuple(spec)!r}: dimension {dim} (size {size}) does not divide over "
                        f"{entry!r} ({parts} devices); change the annotation or the shape"
                    )


def _where(gd: GraphDef, slot: int) -> str:
    return f"the value at path {gd.pathtable.path(slot)!r}"


def _place_one(value: Any, sharding: NamedSharding, gd: GraphDef, slot: int) -> Any:
    try:
        return jax.device_put(value, sharding)
    except (ValueError, TypeError) as e:
        raise type(e)(
            f"cannot place {_where(gd, slot)} on {sharding.spec!r}: {e}. Fix the state's sharding "
            "annotation (one entry per dimension, each dimension divisible by its mesh axes)"
        ) from None


def _attach(value: Any, sharding: NamedSharding, gd: GraphDef, slot: int) -> Any:
    def one(x: Any) -> Any:
        if not isinstance(x, jax.ShapeDtypeStruct):
            return x
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding, weak_type=x.weak_type)

    return jax.tree_util.tree_map(one, value)


def _constrain_value(value: Any, sharding: NamedSharding, gd: GraphDef, slot: int) -> Any:
    try:
        return jax.tree_util.tree_map(lambda x: constrain(x, sharding), value)
    except (ValueError, TypeError) as e:
        raise type(e)(f"cannot constrain {_where(gd, slot)} to {sharding.spec!r}: {e}") from None


# -- inside traces: constraints and keeping shardings ------------------------------------


def _explicit(mesh: Any) -> bool:
    """Whether a mesh has axes of the ``Explicit`` type (sharding in types)."""
    types = getattr(mesh, "axis_types", ())
    return any(getattr(t, "name", "") == "Explicit" for t in types)


def constrain(x: Any, sharding: Any) -> Any:
    """``with_sharding_constraint`` (``reshard`` on a mesh with ``Explicit`` axes)."""
    if isinstance(sharding, NamedSharding) and _explicit(sharding.mesh):
        return jax.sharding.reshard(x, sharding)
    return jax.lax.with_sharding_constraint(x, sharding)


def constrain_tree(tree: Any, shardings: Any, what: str) -> Any:
    """Constrain ``tree`` by a pytree prefix of shardings (``None``: leave that part alone)."""
    if shardings is None:
        return tree

    def one(s: Any, sub: Any) -> Any:
        if s is None:
            return sub
        leaves = jax.tree_util.tree_leaves(sub)
        if any(not _is_arraylike(x) for x in leaves):
            bad = next(x for x in leaves if not _is_arraylike(x))
            raise TypeError(
                f"{what} gives the sharding {s!r} for a part holding a {type(bad).__qualname__}; "
                "shardings apply to arrays only: give None there, and place graph states "
                "with their sharding annotation (sg.shard)"
            )
        return jax.tree_util.tree_map(lambda x: constrain(x, s), sub)

    try:
        return jax.tree_util.tree_map(one, shardings, tree, is_leaf=lambda s: s is None)
    except ValueError as e:
        if "prefix" not in str(e) and "structure" not in str(e).lower():
            raise
        raise ValueError(f"{what} must be a pytree prefix of the value it applies to: {e}") from None


def _is_arraylike(x: Any) -> bool:
    return isinstance(x, jax.Array) or (hasattr(x, "shape") and hasattr(x, "dtype"))


_multi: list[bool] = []


def multi_device() -> bool:
    """Whether more than one device exists (only then can a sharding drift)."""
    if not _multi:
        _multi.append(jax.device_count() > 1)
    return _multi[0]


class Placement:
    """Where a call's values live: per value slot, the sharding of a committed array (or a
    tuple of them for a pytree value, ``None`` for what is not committed).

    A static argument of ``sg.jit``'s compiled function, so that the step can pin every
    written state to its input sharding (``jax.jit``'s ``out_shardings`` need them before
    the output is known). Hashed once; a call whose arrays sit where the previous call's
    did reuses the previous object.
    """

    __slots__ = ("_hash", "_key", "shardings")

    def __init__(self, shardings: tuple) -> None:
        self.shardings = shardings
        # Equal when the layouts are: jax.jit spells an output's NamedSharding without
        # trailing None entries unless it is its first input's (P('data', None) comes back
        # as P('data')); the state sits where it sat, and the next call must not retrace.
        self._key = tuple(_layout_key(s) for s in shardings)
        self._hash = hash(self._key)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return self is other or (
            type(other) is Placement and self._hash == other._hash and self._key == other._key
        )


def _layout_key(s: Any) -> Any:
    if isinstance(s, tuple):
        return tuple(_layout_key(x) for x in s)
    if isinstance(s, NamedSharding):
        return (NamedSharding, s.mesh, canonical_spec(s.spec), s.memory_kind)
    return s


def _placed(x: Any) -> Any:
    return x.sharding if getattr(x, "committed", False) else None


def placement_of(values: list[Any], last: Placement | None) -> Placement:
    """The :class:`Placement` of ``values`` (``last`` when nothing moved)."""
    out = []
    for v in values:
        if isinstance(v, jax.Array):
            out.append(_placed(v))
        else:
            out.append(tuple([_placed(x) for x in jax.tree_util.tree_leaves(v)]) or None)
    shardings = tuple(out)
    if last is not None and last.shardings == shardings:  # element identity: a quick compare
        return last
    return Placement(shardings)


def keep_placement(old: Any, new: Any, placed: Any) -> Any:
    """``new`` (a written state's value, traced) constrained to ``placed``, its input sharding.

    Without this the compiler's propagation may pick another layout for a new value (a
    reduction broadcast back, say), and a state would drift between steps. The
    constraint is what ``jax.jit(out_shardings=<the input shardings>)`` would do.
    """
    if placed is None or old is new:
        return new
    if not isinstance(placed, tuple):
        return constrain(new, placed) if _same_shape(old, new) else new
    old_leaves = jax.tree_util.tree_leaves(old)
    new_leaves, tree = jax.tree_util.tree_flatten(new)
    if len(old_leaves) != len(placed) or len(new_leaves) != len(placed):
        return new  # the value's structure changed: nothing to keep
    out = [
        constrain(b, s) if s is not None and a is not b and _same_shape(a, b) else b
        for a, b, s in zip(old_leaves, new_leaves, placed, strict=True)
    ]
    return jax.tree_util.tree_unflatten(tree, out)


def _same_shape(a: Any, b: Any) -> bool:
    shape = getattr(b, "shape", None)
    return shape is not None and shape == getattr(a, "shape", None)


# -- axis bookkeeping for transforms that add or remove an array axis ------------------


def without_axis(names: Names, axis: int, ndim: int) -> Names:
    """The annotation of one slice along ``axis`` of an array of rank ``ndim``."""
    axis = axis % ndim if ndim else axis
    if axis >= len(names):
        return names
    return names[:axis] + names[axis + 1 :]


def with_axis(names: Names, axis: int, ndim: int, name: Any) -> Names:
    """The annotation after stacking along ``axis`` (``ndim``: the stacked rank)."""
    axis = axis % ndim if ndim else axis
    if name is None and axis >= len(names):
        return names
    padded = names + (None,) * max(0, axis - len(names))
    return (*padded[:axis], name, *padded[axis:])


def rewrite_annotations(gd: GraphDef, new_names: dict[int, Names]) -> GraphDef:
    """``gd`` with the partition annotations of some states replaced (by value slot).

    The metadata is structure: a transform that stacks or slices states along an
    axis returns states whose annotation has that axis added or removed.
    """
    if not new_names:
        return gd
    table = list(gd.table)
    for i, spec in enumerate(table):
        if type(spec) is StateSpec and spec[4] in new_names:
            acc = _access_for(spec[1])
            if acc is None:
                continue
            raw = acc.get(spec[3])
            names = new_names[spec[4]]
            value: Any = PartitionSpec(*names) if isinstance(raw, PartitionSpec) else names
            meta = acc.set(spec[3], value)
            table[i] = StateSpec(spec[1], spec[2], meta, spec[4], meta_sig(meta) if meta else ())
    return GraphDef(gd.root, tuple(table), gd.pathtable)


_annotated_cache: weakref.WeakKeyDictionary[GraphDef, dict[int, Names]] = weakref.WeakKeyDictionary()


def annotated_slots(gd: GraphDef) -> dict[int, Names]:
    """``{slot: annotation}`` of the annotated states of ``gd`` (cached per structure)."""
    out = _annotated_cache.get(gd)
    if out is None:
        out = {}
        for spec in gd.table:
            if type(spec) is StateSpec:
                names = annotation_of(spec)
                if names is not None:
                    out[spec[4]] = names
        _annotated_cache[gd] = out
    return out
