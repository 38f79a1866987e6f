"""Which value slots each filter takes: computed once per path table and filter list.

A filter list made of State types, ``...``/``True``/``False`` and ``Any``/``All``/``Not``
of them decides by state type alone, so for one path table it splits the slots the same
way every time. That partition (the slots per filter, each part's own path table, how to
take its values) is cached on the table and checked before reuse: the same registry
epoch, the same ``abc`` cache token, and the same MRO for every state type of the table
(what ``issubclass`` reads). A predicate sees paths and values: it runs per call, over
the table's paths, and the parts' tables are still reused for the same slots.

A part's table remembers the table its slots are numbered in (its origin). ``update``
and ``merge`` map parts of one table onto that table's slots by their origins, once per
combination of parts (:func:`slot_map`), instead of looking every path up.

With the specializer off (``specgraph.specialization(False)``) nothing is cached: every
call computes from scratch, the reference the cached answers are tested against.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from operator import itemgetter
from typing import Any

from . import _registry as reg
from ._filters import All, Not, to_predicates
from ._filters import Any as AnyOf
from ._ir import PathTable
from .runtime.cache import CONFIG

__all__ = ["Partition", "SlotMap", "filter_key", "origin", "partition", "slot_map", "sub_table"]

_EPOCH = reg.epoch_cell()
_cache_token = abc.get_cache_token
_COMBINATORS = (AnyOf, All, Not)
_ABC_CHECK = abc.ABCMeta.__subclasscheck__
_TYPE_CHECK = type.__subclasscheck__
#: parts' tables and slot maps kept per table for filters that are not cached (predicates)
_BOUND = 64

Take = Callable[[list[Any]], list[Any]]


class TableMemo:
    """What the operations layer keeps on a ``PathTable`` (its ``_memo``)."""

    __slots__ = ("maps", "origin", "parts", "subs")

    def __init__(self) -> None:
        self.origin: tuple[PathTable, tuple[int, ...]] | None = None  # (base table, slots there)
        self.parts: dict[tuple, Partition] = {}  # filter key -> partition
        self.subs: dict[tuple[int, ...], PathTable] = {}  # slots -> that part's table
        self.maps: dict[tuple[int, ...], SlotMap] = {}  # ids of the parts' tables -> slot map


def _memo(table: PathTable) -> TableMemo:
    m = table._memo
    if m is None:
        m = table._memo = TableMemo()
    return m


# -- filter keys ----------------------------------------------------------------------


def filter_key(filters: tuple) -> tuple | None:
    """A key naming what ``filters`` select, when that depends on state types alone.

    ``None`` for a list holding a predicate (it sees paths and values), or a type whose
    metaclass could answer ``issubclass`` or ``==`` differently over time. The key holds
    only objects whose ``==`` is identity or plain value equality (classes of a plain
    metaclass, ``...``, ``True``, ``False``, tuples of these), so an object that merely
    claims to equal ``Param`` (or ``1``, which equals ``True``) never finds its entry.
    """
    for f in filters:
        if type(f) is not type and f is not ... and f is not True and f is not False:
            return _slow_key(filters)
    return filters


def _slow_key(filters: tuple) -> tuple | None:
    out: list[Any] = []
    for f in filters:
        if f is ... or f is True or f is False:
            out.append(f)
        elif isinstance(f, type):
            if not _plain_class(f):
                return None
            out.append(f)
        elif type(f) in _COMBINATORS:
            inner = _slow_key(f.filters)
            if inner is None:
                return None
            out.append((type(f), inner))
        else:
            return None
    return tuple(out)


def _plain_class(cls: type) -> bool:
    """``issubclass(t, cls)``, ``==`` and ``hash`` of ``cls`` are the builtin ones (or
    ``abc``'s, whose answers change only with its cache token)."""
    m = type(cls)
    if m is type:
        return True
    return (
        m.__eq__ is type.__eq__
        and m.__hash__ is type.__hash__
        and (m.__subclasscheck__ is _TYPE_CHECK or m.__subclasscheck__ is _ABC_CHECK)
    )


# -- partitions -----------------------------------------------------------------------


class Partition:
    """The slots each filter of a list takes from one table, first match wins.

    ``tables[k]`` is part ``k``'s own path table and ``takes[k](values)`` its values;
    ``unmatched`` is the first slot no filter matched (``None``: every slot matched).
    """

    __slots__ = ("_epoch", "_mros", "_token", "slots", "tables", "takes", "unmatched")

    def __init__(self, table: PathTable, slots: list[tuple[int, ...]], unmatched: int | None,
                 cached: bool) -> None:
        self.slots = tuple(slots)
        self.unmatched = unmatched
        self.tables = tuple(sub_table(table, s, cached) for s in slots)
        self.takes = tuple(_taker(s, len(table)) for s in slots)
        self._epoch = _EPOCH[0]
        self._token = _cache_token()
        # by identity: a class's metaclass may claim it equals (and hashes like) another
        kinds = {id(t): t for t in table.types if t is not None}.values() if cached else ()
        self._mros = tuple((t, t.__mro__) for t in kinds)

    def valid(self) -> bool:
        """Whether ``issubclass`` still answers as when this partition was computed."""
        if self._epoch != _EPOCH[0] or self._token != _cache_token():
            return False
        for t, mro in self._mros:
            if t.__mro__ is not mro:
                return False
        return True


def partition(table: PathTable, values: list[Any], filters: tuple, exhaustive: bool = True) -> Partition:
    """The slots of ``table`` each of ``filters`` takes (first match wins).

    ``exhaustive``: a value no filter matches is a ``ValueError`` naming its path.
    """
    key = filter_key(filters) if CONFIG.enabled else None
    if key is not None:
        memo = table._memo
        if memo is not None:
            p = memo.parts.get(key)
            if p is None or not p.valid():
                p = None
        else:
            p = None
        if p is None:
            p = _by_type(table, filters)
            parts = _memo(table).parts
            if len(parts) >= _BOUND:
                parts.pop(next(iter(parts)))
            parts[key] = p
        if exhaustive and p.unmatched is not None:
            _not_exhaustive(filters, table.path(p.unmatched))
        return p
    return _per_value(table, values, filters, exhaustive)


def _by_type(table: PathTable, filters: tuple) -> Partition:
    """Filters that read only the state type: each distinct type is matched once."""
    preds = to_predicates(filters)
    # Keyed by id: a class's metaclass may claim it equals (and hashes like) another class.
    bucket_of: dict[int, int] = {}
    for t in table.types:
        if id(t) not in bucket_of:
            bucket_of[id(t)] = next((b for b, pred in enumerate(preds) if pred((), None, t)), -1)
    buckets: list[list[int]] = [[] for _ in preds]
    unmatched = None
    for i, t in enumerate(table.types):
        b = bucket_of[id(t)]
        if b >= 0:
            buckets[b].append(i)
        elif unmatched is None:
            unmatched = i
    return Partition(table, [tuple(b) for b in buckets], unmatched, True)


def _per_value(table: PathTable, values: list[Any], filters: tuple, exhaustive: bool) -> Partition:
    """The reference: every filter asked about every value, in slot order."""
    preds = to_predicates(filters)
    buckets: list[list[int]] = [[] for _ in preds]
    paths, types = table.paths, table.types
    unmatched = None
    for i, value in enumerate(values):
        for b, pred in enumerate(preds):
            if pred(paths[i], value, types[i]):
                buckets[b].append(i)
                break
        else:
            if exhaustive:
                _not_exhaustive(filters, paths[i])
            if unmatched is None:
                unmatched = i
    return Partition(table, [tuple(b) for b in buckets], unmatched, CONFIG.enabled)


def _not_exhaustive(filters: tuple, path: tuple) -> None:
    raise ValueError(
        f"filters {filters!r} are not exhaustive: nothing matched the value at path "
        f"{path!r}; add ... as the last filter to take the rest"
    )


def _empty(values: list[Any]) -> list[Any]:
    return []


def _taker(slots: tuple[int, ...], n: int) -> Take:
    """A function taking the values at ``slots`` (in order) out of a list of ``n``."""
    if not slots:
        return _empty
    first = slots[0]
    if slots == tuple(range(first, first + len(slots))):  # a run is one slice
        return itemgetter(slice(first, first + len(slots)))
    get = itemgetter(*slots)
    if len(slots) == 1:
        return lambda values: [get(values)]
    return lambda values: list(get(values))


# -- parts' tables and their origin ---------------------------------------------------


def sub_table(table: PathTable, slots: tuple[int, ...], cached: bool = True) -> PathTable:
    """The path table of ``table``'s values at ``slots``, which knows where they came from.

    All the slots in order: ``table`` itself. ``cached``: the same slots give the same
    table object next time (so what is cached per part, such as a slot map, is reused).
    """
    if len(slots) == len(table):
        return table  # slots are increasing and distinct: these are all of them, in order
    memo = table._memo if cached else None
    if memo is not None:
        found = memo.subs.get(slots)
        if found is not None:
            return found
    paths, types = table.paths, table.types
    sub = PathTable.from_paths(tuple(paths[i] for i in slots), tuple(types[i] for i in slots))
    base = origin(table)
    sub_memo = _memo(sub)
    if base is None:
        sub_memo.origin = (table, slots)
    else:
        sub_memo.origin = (base[0], tuple(base[1][i] for i in slots))
    if cached:
        subs = _memo(table).subs
        if len(subs) >= _BOUND:
            subs.pop(next(iter(subs)))
        subs[slots] = sub
    return sub


def origin(table: PathTable) -> tuple[PathTable, tuple[int, ...]] | None:
    """``(base, slots)``: ``table``'s values are ``base``'s values at ``slots``."""
    memo = table._memo
    return None if memo is None else memo.origin


# -- slot maps: several parts onto their base table -----------------------------------


class SlotMap:
    """Where the values of some parts of one base table go in it.

    ``slots`` lists, for the parts' values one after the other, their slots in the base
    table; ``full`` says they cover every slot once, and then ``gather(values)`` puts the
    concatenated values in slot order. ``repeated``: some slot is given twice.
    """

    __slots__ = ("full", "gather", "parts", "repeated", "slots", "updates")

    def __init__(self, parts: tuple[PathTable, ...], slots: tuple[int, ...], n: int) -> None:
        self.parts = parts  # held so that their ids stay theirs while this map is cached
        self.slots = slots
        self.repeated = len(set(slots)) != len(slots)
        self.full = not self.repeated and len(slots) == n
        self.gather: Take | None = None
        self.updates: dict[Any, Any] = {}  # variant -> its update of these slots (runtime.derived)
        if self.full:
            position = [0] * n
            for pos, slot in enumerate(slots):
                position[slot] = pos
            self.gather = _taker(tuple(position), n)


def slot_map(base: PathTable, tables: tuple[PathTable, ...]) -> SlotMap | None:
    """The slot map of ``tables`` (parts' tables) onto ``base``, or ``None`` when one of
    them is not a part of ``base`` itself (another structure, or an equal copy: those go
    through the paths). Cached on ``base`` unless the specializer is off."""
    key = tuple(map(id, tables))  # (a cached map holds its parts: their ids stay theirs)
    memo = base._memo
    if memo is not None and CONFIG.enabled:
        found = memo.maps.get(key)
        if found is not None:
            return found
    slots: list[int] = []
    for t in tables:
        if t is base:
            slots.extend(range(len(base)))
            continue
        o = origin(t)
        if o is None or o[0] is not base:
            return None
        slots.extend(o[1])
    sm = SlotMap(tables, tuple(slots), len(base))
    if CONFIG.enabled:
        maps = _memo(base).maps
        if len(maps) >= _BOUND:
            maps.pop(next(iter(maps)))
        maps[key] = sm
    return sm
