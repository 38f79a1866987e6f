"""``StateMap``: the dynamic half of a flattened graph.

A read-only ``Mapping[path, value]`` made of a shared ``PathTable`` (static:
paths and state types, owned by the ``GraphDef``) and a list of values in slot
order. Making one per call costs one object; it is a JAX pytree whose leaves are
the values, so ``jax.tree.map``, ``jax.jit`` and optimizers take it as it is.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Mapping
from typing import Any

from jax import tree_util

from ._filters import Filter
from ._ir import PathTable, dotted_path
from ._model import short_repr as _short
from ._partition import partition, sub_table

__all__ = ["StateMap", "merge_maps", "split_values"]

Path = tuple[Hashable, ...]


class StateMap(Mapping[Path, Any]):
    """Values of a flattened graph keyed by path, in pre-order slot order.

    Keys are path tuples. A ``str`` key is the path as the repr prints it
    (``'layers.0.w'``) and is accepted when exactly one path prints that way.
    """

    __slots__ = ("_table", "_values")

    _table: PathTable
    _values: list[Any]

    def __init__(self, table: PathTable, values: list[Any]) -> None:
        if len(values) != len(table):
            raise ValueError(f"StateMap needs {len(table)} values, got {len(values)}")
        self._table = table
        self._values = values

    @classmethod
    def _make(cls, table: PathTable, values: list[Any]) -> StateMap:
        """Unchecked constructor for the hot path."""
        sm = object.__new__(cls)
        sm._table = table
        sm._values = values
        return sm

    @classmethod
    def from_items(
        cls, items: Mapping[Path, Any], types: Mapping[Path, type | None] | None = None
    ) -> StateMap:
        """Build a ``StateMap`` from a flat ``{path: value}`` mapping."""
        paths = tuple(tuple(p) for p in items)
        tys = tuple((types or {}).get(p) for p in paths)
        return cls(PathTable.from_paths(paths, tys), list(items.values()))

    # -- Mapping ----------------------------------------------------------------
    def __getitem__(self, path: Path | str) -> Any:
        """The value at ``path``: a tuple of keys, or the path as the repr prints it
        (``'layers.0.w'``) when exactly one path prints that way."""
        try:
            return self._values[self._table.index[path]]  # type: ignore[index]
        except (KeyError, TypeError):
            pass
        if type(path) is str:
            return self._values[self._dotted_slot(path)]
        raise KeyError(self._missing(path)) from None

    def _dotted_slot(self, text: str) -> int:
        slots = self._table.dotted.get(text)
        if slots is None:
            example = f" such as {self._table.paths[0]!r}" if len(self) else ""
            raise KeyError(
                f"no path prints as {text!r}. Keys are tuples of path entries{example}; a "
                "string is the path as the repr prints it, entries joined by '.'"
            ) from None
        if len(slots) > 1:
            options = " and ".join(repr(self._table.paths[i]) for i in slots)
            raise KeyError(f"{text!r} is how {options} print: index with the tuple you mean") from None
        return slots[0]

    def _missing(self, path: object) -> object:
        """The KeyError's argument: the path, with the tuple to use when one prints alike
        (``('layers', '0', 'w')`` for ``('layers', 0, 'w')``)."""
        if type(path) is tuple:
            try:
                slots = self._table.dotted.get(dotted_path(path), ())
            except Exception:
                slots = ()
            if len(slots) == 1:
                return f"{path!r}; did you mean {self._table.paths[slots[0]]!r}?"
        return path

    def __iter__(self) -> Iterator[Path]:
        return iter(self._table.paths)

    def __len__(self) -> int:
        return len(self._values)

    def __contains__(self, path: object) -> bool:
        try:
            if path in self._table.index:
                return True
        except TypeError:
            return False
        return type(path) is str and len(self._table.dotted.get(path, ())) == 1

    def values(self) -> list[Any]:  # type: ignore[override]
        """The values in slot order (a new list)."""
        return list(self._values)

    def items(self) -> list[tuple[Path, Any]]:  # type: ignore[override]
        return list(zip(self._table.paths, self._values, strict=True))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, StateMap):
            return self._table == other._table and all(
                a is b or _eq(a, b) for a, b in zip(self._values, other._values, strict=True)
            )
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    @property
    def paths(self) -> tuple[Path, ...]:
        return self._table.paths

    @property
    def types(self) -> tuple[type | None, ...]:
        """Per value: its State type, or ``None`` for a bare array leaf."""
        return self._table.types

    # -- selection --------------------------------------------------------------
    def _subset(self, slots: list[int]) -> StateMap:
        values = self._values
        return StateMap._make(sub_table(self._table, tuple(slots)), [values[i] for i in slots])

    def filter(self, *filters: Filter) -> StateMap | tuple[StateMap, ...]:
        """Like ``split``, but the filters need not cover everything: what no filter
        matches is left out. Each value goes to the first filter matching it (as
        NNX's ``filter_state`` and BrainState's ``filter``); one map per filter."""
        if not filters:
            raise TypeError("filter() needs at least one filter")
        out = split_values(self._table, self._values, filters, exhaustive=False)
        return out[0] if len(out) == 1 else out

    def split(self, *filters: Filter) -> StateMap | tuple[StateMap, ...]:
        """Partition by filters: each value goes to the first filter matching it.

        The filters must cover everything; end with ``...`` to catch the rest.
        """
        if not filters:
            return self
        return split_values(self._table, self._values, filters)

    def merge(self, *others: Mapping[Path, Any]) -> StateMap:
        """One map holding this one's values and the others' (a path given twice is an error)."""
        return merge_maps(self, *others)

    def to_nested(self) -> dict[Hashable, Any]:
        """A nested-dict view: ``{'layers': {0: {'w': ...}}}``."""
        out: dict[Hashable, Any] = {}
        for path, value in zip(self._table.paths, self._values, strict=True):
            d = out
            for key in path[:-1]:
                d = d.setdefault(key, {})
            if path:
                d[path[-1]] = value
        return out

    def __repr__(self) -> str:
        if not self._values:
            return "StateMap({})"
        rows = []
        for path, ty, value in zip(self._table.paths, self._table.types, self._values, strict=True):
            label = ty.__name__ if ty is not None else "leaf"
            rows.append(f"  {dotted_path(path)}: {label} {_short(value)}")
        return "StateMap({\n" + "\n".join(rows) + "\n})"


def split_values(table: PathTable, values: list, filters: tuple,
                 exhaustive: bool = True) -> tuple[StateMap, ...]:
    """One ``StateMap`` per filter: the values it matches first (see ``_partition``).

    ``exhaustive``: a value that no filter matches is an error (else it is left out).
    """
    p = partition(table, values, filters, exhaustive)
    out = []
    for sub, take in zip(p.tables, p.takes, strict=True):
        sm = _new(StateMap)
        sm._table = sub
        sm._values = take(values)
        out.append(sm)
    return tuple(out)


_new = object.__new__


def merge_maps(*maps: Mapping[Path, Any]) -> StateMap:
    """Join several path mappings into one ``StateMap``; a path given twice is an error."""
    if len(maps) == 1 and isinstance(maps[0], StateMap):
        return maps[0]
    items: dict[Path, Any] = {}
    types: dict[Path, type | None] = {}
    for m in maps:
        flat = flat_items(m)
        mtypes = dict(zip(m._table.paths, m._table.types, strict=True)) if isinstance(m, StateMap) else {}
        for path, value in flat:
            if path in items:
                raise ValueError(f"path {path!r} is given twice in the states to merge")
            items[path] = value
            types[path] = mtypes.get(path)
    return StateMap.from_items(items, types)


def flat_items(m: Mapping[Any, Any]) -> list[tuple[Path, Any]]:
    """``(path, value)`` pairs of a flat path mapping or a nested dict."""
    if isinstance(m, StateMap):
        return m.items()
    if not isinstance(m, Mapping):
        raise TypeError(f"expected a StateMap or a Mapping of paths to values, got {type(m).__qualname__}")
    if all(type(k) is tuple for k in m):
        return list(m.items())
    out: list[tuple[Path, Any]] = []
    stack: list[tuple[Path, Mapping]] = [((), m)]
    while stack:
        prefix, d = stack.pop()
        for k, v in d.items():
            if isinstance(v, Mapping) and not isinstance(v, StateMap) and v:
                stack.append(((*prefix, k), v))
            else:
                out.append(((*prefix, k), v))
    return out


def _eq(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:
        return False


def _flatten_statemap(sm: StateMap) -> tuple[list[Any], PathTable]:
    return sm._values, sm._table


def _flatten_statemap_with_keys(sm: StateMap) -> tuple[list[tuple[Any, Any]], PathTable]:
    keys = [tree_util.DictKey(p) for p in sm._table.paths]
    return list(zip(keys, sm._values, strict=True)), sm._table


def _unflatten_statemap(table: PathTable, values: Any) -> StateMap:
    return StateMap._make(table, list(values))


tree_util.register_pytree_with_keys(
    StateMap, _flatten_statemap_with_keys, _unflatten_statemap, _flatten_statemap
)
