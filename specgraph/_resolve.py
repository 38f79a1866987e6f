"""Match user-supplied states (StateMap, flat mapping or nested dict) to value slots."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

from ._ir import PathTable
from ._partition import slot_map
from ._statemap import StateMap

Path = tuple[Hashable, ...]
_MISSING = object()


def _partial(table: PathTable, states: tuple[Any, ...]) -> dict[int, Any]:
    """``{slot: value}`` for every path given; an unknown or repeated path is an error."""
    index = table.index
    out: dict[int, Any] = {}
    for m in states:
        if isinstance(m, StateMap):
            pairs: Any = zip(m._table.paths, m._values, strict=True)
        elif isinstance(m, Mapping):
            if all(type(k) is tuple for k in m):
                pairs = m.items()
            else:
                pairs = _nested_pairs(table, m)
        else:
            raise TypeError(
                f"states must be StateMaps, mappings of path tuples to values, or nested "
                f"dicts; got {type(m).__qualname__}"
            )
        for path, value in pairs:
            slot = index.get(path, None) if _hashable(path) else None
            if slot is None:
                raise KeyError(
                    f"path {path!r} is not a state or array leaf of this graph "
                    f"(known paths start with {list(table.paths[:3])!r}); remove it or "
                    "flatten the matching graph"
                )
            if slot in out:
                raise ValueError(f"path {path!r} is given twice in the states")
            out[slot] = value
    return out


def _hashable(x: Any) -> bool:
    try:
        hash(x)
    except TypeError:
        return False
    return True


def _nested_pairs(table: PathTable, nested: Mapping) -> list[tuple[Path, Any]]:
    """Read a nested dict guided by the known paths (so dict-valued states stay whole)."""
    index = table.index
    prefixes: set[Path] = set()
    for p in table.paths:
        for i in range(len(p)):
            prefixes.add(p[:i])
    out: list[tuple[Path, Any]] = []
    stack: list[tuple[Path, Mapping]] = [((), nested)]
    while stack:
        prefix, d = stack.pop()
        for k, v in d.items():
            path = (*prefix, k)
            if path in index:
                out.append((path, v))
            elif path in prefixes and isinstance(v, Mapping):
                stack.append((path, v))
            else:
                raise KeyError(
                    f"path {path!r} of the nested states is not a state or array leaf of "
                    "this graph; remove it or flatten the matching graph"
                )
    return out


def _by_slots(table: PathTable, states: tuple[Any, ...]) -> tuple[Any, list[Any]] | None:
    """``(slot map, concatenated values)`` when ``states`` are StateMaps whose tables are
    ``table`` or parts of it (``split``, ``StateMap.split``), each slot at most once."""
    for s in states:
        if type(s) is not StateMap:
            return None
    m = slot_map(table, tuple(s._table for s in states))
    if m is None or m.repeated:
        return None
    if len(states) == 1:
        return m, states[0]._values
    values: list[Any] = []
    for s in states:
        values += s._values
    return m, values


def resolve_all(table: PathTable, states: tuple[Any, ...]) -> list[Any]:
    """Values for every slot of ``table`` in slot order; missing paths are a ``KeyError``."""
    if len(states) == 1:
        s = states[0]
        if type(s) is StateMap and (s._table is table or s._table == table):
            return s._values
    found = _by_slots(table, states)
    if found is not None and found[0].full:
        return found[0].gather(found[1])
    given = _partial(table, states)
    if len(given) != len(table):
        for slot in range(len(table)):
            if slot not in given:
                raise KeyError(
                    f"no value for path {table.path(slot)!r}: the states hold "
                    f"{len(given)} of the graph's {len(table)} values; pass the missing ones "
                    "(e.g. merge every StateMap that split returned)"
                )
    return [given[slot] for slot in range(len(table))]


def resolve_partial(table: PathTable, states: tuple[Any, ...]) -> dict[int, Any] | list[Any]:
    """Values for the given paths (a list when it covers every slot in order)."""
    if len(states) == 1:
        s = states[0]
        if type(s) is StateMap and (s._table is table or s._table == table):
            return s._values
    found = _by_slots(table, states)
    if found is not None:
        return dict(zip(found[0].slots, found[1], strict=True))
    return _partial(table, states)
