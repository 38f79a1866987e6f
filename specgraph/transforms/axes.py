"""Per-state axis specifications for ``vmap`` and ``scan``: ``StateAxes`` and ``Carry``.

An axis specification (``in_axes`` / ``out_axes``) is what ``jax.vmap`` takes (an
int, ``None``, or a tuple / list / dict prefix of the arguments), extended for graph
nodes: wherever a graph node sits, a :class:`StateAxes` gives each of its states an
axis by filter (first match wins), and ``scan`` also accepts :data:`Carry`.

Every value of a flattened call (a state's value or a bare array leaf) gets one
axis, found by walking the specification along the value's path. A value reached
at several paths (a State shared by two arguments, a submodule held twice) must get
the same axis at each: one value cannot be both mapped and broadcast, and the error
names both paths.
"""

from __future__ import annotations

import weakref
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping
from typing import Any

from .._filters import Filter, to_predicate
from .._ir import ArrayEdge, GraphDef, NodeEdge, PytreeEdge, StateEdge, all_edges
from .jit import num_args

__all__ = ["Carry", "StateAxes"]

Path = tuple[Hashable, ...]


class Carry:
    """Marks what ``sg.scan`` carries from one iteration to the next.

    In ``in_axes``: an argument (the explicit carry, which ``fn`` returns at the
    ``Carry`` position of ``out_axes``) or, inside a :class:`StateAxes`, states
    whose last value flows into the next iteration and is written back after the
    scan. Use the class itself, not an instance: ``in_axes=(sg.Carry, 0)``.
    """

    def __init__(self) -> None:
        raise TypeError("use sg.Carry itself (the class) as an axis, not an instance")


class StateAxes:
    """An axis per state of a graph node, chosen by filter (first match wins).

    ``sg.StateAxes({sg.Param: 0, ...: None})``: parameters mapped along axis 0,
    everything else broadcast. Values are ints, ``None`` or ``sg.Carry`` (``scan``
    only). A filter sees the path relative to the node the ``StateAxes`` applies to.
    Every state must match some filter: end with ``...`` to cover the rest.
    """

    __slots__ = ("_preds", "axes", "filters")

    def __init__(self, filter_axes: Mapping[Filter, Any] | Iterable[tuple[Filter, Any]]) -> None:
        items = tuple(filter_axes.items() if isinstance(filter_axes, Mapping) else filter_axes)
        if not items:
            raise ValueError("StateAxes needs at least one (filter, axis) pair")
        for f, axis in items:
            if not (axis is None or axis is Carry or type(axis) is int):
                raise TypeError(
                    f"StateAxes: the axis for filter {f!r} is {axis!r}; use an int, None or sg.Carry"
                )
        self.filters: tuple[Filter, ...] = tuple(f for f, _ in items)
        self.axes: tuple[Any, ...] = tuple(a for _, a in items)
        self._preds = tuple(to_predicate(f) for f in self.filters)

    def index_for(self, rel_path: Path, value: Any, stype: type | None) -> int | None:
        """The index of the first filter matching the value, or ``None``."""
        for j, pred in enumerate(self._preds):
            if pred(rel_path, value, stype):
                return j
        return None

    def __eq__(self, other: object) -> bool:
        return type(other) is StateAxes and other.filters == self.filters and other.axes == self.axes

    def __hash__(self) -> int:
        return hash((self.filters, self.axes))

    def __repr__(self) -> str:
        inner = ", ".join(f"{f!r}: {_axis_repr(a)}" for f, a in zip(self.filters, self.axes, strict=True))
        return f"StateAxes({{{inner}}})"


def _axis_repr(a: Any) -> str:
    return "sg.Carry" if a is Carry else repr(a)


def _is_axis(spec: Any) -> bool:
    return spec is None or spec is Carry or type(spec) is int


def resolve(spec: Any, rel: Path, value: Any, stype: type | None, where: str) -> tuple[Any, tuple[int, ...]]:
    """The axis of one value, and its position in the normalized specification.

    ``rel`` is the value's path below the place ``spec`` applies to; ``where``
    names that place in errors (``in_axes[1]``, ``out_axes``).
    """
    pos: list[int] = []
    depth = 0
    while True:
        if _is_axis(spec):
            return spec, tuple(pos)
        if type(spec) is StateAxes:
            j = spec.index_for(rel[depth:], value, stype)
            if j is None:
                raise ValueError(
                    f"{where}: no filter of {spec!r} matches the value at path {rel!r}; add ... as "
                    "the last filter to give the rest an axis"
                )
            pos.append(j)
            return spec.axes[j], tuple(pos)
        if depth >= len(rel):
            raise ValueError(
                f"{where}: the axis specification {spec!r} goes deeper than the value at path {rel!r}; "
                "give an int, None or sg.StateAxes at that level"
            )
        key = rel[depth]
        if isinstance(spec, (tuple, list)):
            if type(key) is not int or not 0 <= key < len(spec):
                raise ValueError(
                    f"{where}: the axis specification {spec!r} has no entry {key!r} for the value at "
                    f"path {rel!r}; it must be a prefix of the value's structure"
                )
            pos.append(key)
            spec = spec[key]
        elif isinstance(spec, dict):
            if key not in spec:
                raise ValueError(
                    f"{where}: the axis specification {spec!r} has no key {key!r} for the value at "
                    f"path {rel!r}; it must be a prefix of the value's structure"
                )
            pos.append(list(spec).index(key))
            spec = spec[key]
        else:
            raise TypeError(
                f"{where}: unsupported axis specification {spec!r}; use an int, None, sg.StateAxes "
                "(sg.Carry for scan), or a tuple / list / dict of those"
            )
        depth += 1


def check_spec(spec: Any, where: str, allow_carry: bool) -> None:
    """Reject what no value could use: a bad leaf, or ``Carry`` where it means nothing."""
    stack = [spec]
    while stack:
        s = stack.pop()
        if s is Carry and not allow_carry:
            raise TypeError(f"{where}: sg.Carry is for sg.scan; vmap takes ints, None and sg.StateAxes")
        if _is_axis(s):
            continue
        if type(s) is StateAxes:
            if not allow_carry and any(a is Carry for a in s.axes):
                raise TypeError(f"{where}: sg.Carry is for sg.scan; vmap takes ints, None and sg.StateAxes")
            continue
        if isinstance(s, (tuple, list)):
            stack.extend(s)
        elif isinstance(s, dict):
            stack.extend(s.values())
        else:
            raise TypeError(
                f"{where}: unsupported axis specification {s!r}; use an int, None, sg.StateAxes "
                "(sg.Carry for scan), or a tuple / list / dict of those"
            )


def check_options(options: Any, transform: str, allow_carry: bool) -> None:
    """Check a transform's ``in_axes`` and ``out_axes``; a list ``in_axes`` (one entry per argument,
    as ``jax.vmap`` reads it) becomes a tuple."""
    check_spec(options.in_axes, f"{transform} in_axes", allow_carry)
    check_spec(options.out_axes, f"{transform} out_axes", allow_carry)
    if isinstance(options.in_axes, list):
        options.in_axes = tuple(options.in_axes)


def normalize(spec: Any) -> Any:
    """The JAX prefix standing for ``spec`` over the values grouped by :func:`group`."""
    if _is_axis(spec):
        return spec
    if type(spec) is StateAxes:
        return tuple(spec.axes)
    if isinstance(spec, dict):
        return tuple(normalize(c) for c in spec.values())
    return tuple(normalize(c) for c in spec)


def input_axes(
    gd: GraphDef, values: list[Any], in_axes: Any, kwargs_axis: Any, transform: str
) -> list[Any]:
    """The axis of every value slot of a call flattened as ``{args, kwargs}``.

    A tuple ``in_axes`` has one entry per positional argument; anything else applies
    to every positional argument. Keyword arguments take ``kwargs_axis``.
    """
    table = gd.pathtable
    paths, types = table.paths, table.types
    per_arg = isinstance(in_axes, tuple)
    nargs = num_args(gd)
    if per_arg and len(in_axes) != nargs:
        raise ValueError(
            f"{transform}: in_axes has {len(in_axes)} entries but the call has {nargs} positional "
            "arguments; give one entry per positional argument"
        )
    out = []
    for slot, path in enumerate(paths):
        if path[0] == "kwargs":
            out.append(kwargs_axis)
            continue
        i = path[1]
        spec = in_axes[i] if per_arg else in_axes
        where = f"{transform} in_axes[{i}]" if per_arg else f"{transform} in_axes"
        axis, _ = resolve(spec, path[2:], values[slot], types[slot], where)
        out.append(axis)
    for slot, others in other_paths(gd).items():
        for path in others:
            if path[0] == "kwargs":
                axis = kwargs_axis
            else:
                i = path[1]
                where = f"{transform} in_axes[{i}]" if per_arg else f"{transform} in_axes"
                spec = in_axes[i] if per_arg else in_axes
                axis, _ = resolve(spec, path[2:], values[slot], types[slot], where)
            if axis is not out[slot] and not (type(axis) is int and axis == out[slot]):
                raise ValueError(
                    f"{transform}: one value is reached at {_words(paths[slot])} and at {_words(path)} "
                    f"(a shared State, node or array), and in_axes gives it the axis {_axis_repr(out[slot])} "
                    f"there but {_axis_repr(axis)} here; a value has one axis: give both places the same "
                    "axis (sg.StateAxes can choose per state), or pass the shared object once"
                )
    return out


def _words(path: Path) -> str:
    if path and path[0] == "args":
        return f"argument {path[1]} at {path[2:]!r}"
    return f"keyword argument {path[1]!r} at {path[2:]!r}"


_other_paths: weakref.WeakKeyDictionary[GraphDef, dict[int, list[Path]]] = weakref.WeakKeyDictionary()
_PATH_BUDGET = 64  # paths enumerated per table entry before giving up (a lattice of shared nodes)


def other_paths(gd: GraphDef) -> dict[int, list[Path]]:
    """``{slot: paths}``: the paths, besides its first, at which a value of ``gd`` is reached.

    Empty (and found in one pass over the edges) unless a node, State or array is
    referenced twice. Cached per structure. Paths through a cycle stop where they
    would repeat a node; past a budget of paths (shared nodes nested many levels
    deep reach a value at exponentially many) the check gives up and answers ``{}``.
    """
    out = _other_paths.get(gd)
    if out is not None:
        return out
    refs = Counter((type(e), e[1]) for e in all_edges(gd) if type(e) in (NodeEdge, StateEdge, ArrayEdge))
    out = {}
    if any(n > 1 for n in refs.values()):
        table, first = gd.table, gd.pathtable.paths
        budget = _PATH_BUDGET * (len(table) + 1)
        stack: list[tuple[Any, Path, frozenset[int]]] = [(gd.root, (), frozenset())]
        while stack:
            budget -= 1
            if budget < 0:
                out = {}
                break
            e, path, above = stack.pop()
            kind = type(e)
            if kind is NodeEdge:
                if e[1] in above:
                    continue
                spec = table[e[1]]
                inside = above | {e[1]}
                stack.extend((c, (*path, k), inside) for k, c in zip(spec[3], spec[4], strict=True))
            elif kind is PytreeEdge:
                stack.extend((c, (*path, k), above) for k, c in zip(e[2], e[3], strict=True))
            elif kind is StateEdge or kind is ArrayEdge:
                slot = table[e[1]][4] if kind is StateEdge else e[1]
                if path != first[slot]:
                    out.setdefault(slot, []).append(path)
    _other_paths[gd] = out
    return out


def group(spec: Any, rels: list[Path], values: list[Any], types: list[Any], where: str) -> tuple[Any, list]:
    """Values of an output grouped to match ``normalize(spec)``; also each one's (axis, position)."""
    buckets: dict[tuple[int, ...], list[Any]] = {}
    placed = []
    for rel, v, t in zip(rels, values, types, strict=True):
        axis, pos = resolve(spec, rel, v, t, where)
        buckets.setdefault(pos, []).append(v)
        placed.append((axis, pos))
    return _assemble(spec, buckets, ()), placed


def _assemble(spec: Any, buckets: dict, pos: tuple[int, ...]) -> Any:
    if _is_axis(spec):
        return buckets.get(pos, [])
    if type(spec) is StateAxes:
        return tuple(buckets.get((*pos, j), []) for j in range(len(spec.axes)))
    children = spec.values() if isinstance(spec, dict) else spec
    return tuple(_assemble(c, buckets, (*pos, j)) for j, c in enumerate(children))


def ungroup(grouped: Any, placed: list[tuple[Any, tuple[int, ...]]]) -> list[Any]:
    """Inverse of :func:`group`: the values back in slot order."""
    taken: dict[tuple[int, ...], int] = {}
    out = []
    for _, pos in placed:
        bucket = grouped
        for j in pos:
            bucket = bucket[j]
        k = taken.get(pos, 0)
        taken[pos] = k + 1
        out.append(bucket[k])
    return out
