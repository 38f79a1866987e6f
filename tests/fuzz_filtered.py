"""A differential fuzz of issue 15's caches: partitions by type, slot maps, specialized walks.

Two twins of one random graph are built from one seed (the same classes, keys, statics and
value objects; distinct nodes and states). Twin ``a`` is served by the public path with the
specializer on (threshold 1: generated code and cached partitions / slot maps from the
second call on); twin ``b`` by the same operations with the specializer off (nothing
cached, nothing generated), the reference. Each step applies one operation to both and
demands the same answer: ``split`` / ``StateMap.split`` / ``filter`` parts (paths, types,
the very same value objects), ``states`` (same paths in order, corresponding State
objects), ``nodes`` / ``iter_leaf`` / ``iter_node``, ``update`` with parts (the same
objects written where the reference writes them, or the same error and nothing written),
``merge`` / ``clone`` (rebuilt graphs flatten alike), ``pop_states``. Between steps both
twins (and the shared classes) change alike: a state replaced by one of another type or
metadata, ties made and broken, attributes added and removed, an ``abc`` registration,
new ``__bases__`` for a state class.

Graphs: nodes holding Params, States, State subclasses (one an ``abc`` class, one whose
bases change), shared states, lists / dicts / tuples of nodes, cycles, array leaves, dict
keys such as ``-0.0``, NaN, tuples and strings with quotes and newlines. Filters: types,
``...``, ``True``/``False``, ``Any``/``All``/``Not``, predicates, subclasses,
abc-registered classes, and a filter object whose ``__eq__``/``__hash__`` claim it is
``Param``. Parts used for updates and merges also come from the other twin (an equal, not
the same, table), from an earlier structure, from two different splits, or rebuilt by the
user as dicts with an entry replaced or deleted.

The tally counts how many calls generated code or the caches served, per operation, so a
clean run proves something. ``tests/test_fuzz_filtered.py`` runs a short fuzz; ``python
tests/fuzz_filtered.py --cases N --seed S`` a longer one.
"""

from __future__ import annotations

import abc
import collections
import random
import sys
from collections.abc import Callable
from typing import Any

import _fuzzkit
import jax
import numpy as np

import specgraph as sg
from specgraph import _partition
from specgraph.generic._flatten import walk

# -- classes (shared by both twins) ---------------------------------------------------------


class Box(sg.Node):
    pass


class Other(sg.Node):
    pass


class Stat(sg.State):
    """A user State subclass."""


class SubParam(sg.Param):
    """A subclass of Param (a Param filter takes it)."""


class Tagged(sg.State, metaclass=abc.ABCMeta):
    """An abc State class: other state classes join it by ``Tagged.register``."""


class BaseA(sg.State):
    pass


class BaseB(sg.State):
    pass


class Moving(BaseA):
    """A state class whose ``__bases__`` the fuzz swaps between BaseA and BaseB."""


class LyingMeta(type):
    """A metaclass claiming its classes equal Param (and hashing alike)."""

    def __eq__(cls, other: object) -> bool:
        return True

    def __hash__(cls) -> int:
        return hash(sg.Param)


class Liar(sg.State, metaclass=LyingMeta):
    """Equal to every class, hashes as Param: it must never find Param's partition."""

    __slots__ = ()


class LyingFilter:
    """A predicate object that claims to equal Param (and hashes as Param)."""

    def __init__(self, tag: int) -> None:
        self.tag = tag

    def __call__(self, path: tuple, value: Any) -> bool:
        return len(path) % 2 == self.tag

    def __eq__(self, other: object) -> bool:
        return True

    def __hash__(self) -> int:
        return hash(sg.Param)


STATE_TYPES: list[type] = [sg.State, sg.Param, Stat, SubParam, Tagged, Moving, BaseA, BaseB, Liar]
_registered: list[type] = []  # classes created and registered with Tagged during the fuzz

NAN = float("nan")
KEY_FAMILIES: list[list[Any]] = [
    ["a", "b'\"c", "line\nbreak", "'); import os #", "{{ x }}", ""],
    [0.0, -0.0, 1.5, -2.0],
    [(0,), (0.0, "x"), (1, 2), (-0.0,)],
    [0, 1, 2, 7],
    [NAN],
]


# -- building twins -------------------------------------------------------------------------


class Recipe:
    """Draws a graph once, builds it any number of times with the same value objects."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.values: list[Any] = [np.full(2, float(i), np.float32) for i in range(64)]


def _value(rng: random.Random, values: list[Any]) -> Any:
    return values[rng.randrange(len(values))]


def _state(rng: random.Random, values: list[Any], types: list[type]) -> Any:
    ty = rng.choice(types)
    meta = {"tag": rng.choice([0, 1, "x", (1, 2)])} if rng.random() < 0.3 else {}
    return ty(_value(rng, values), **meta)


def build(seed: int, values: list[Any]) -> Any:
    """A random graph from ``seed`` (the same seed builds a twin)."""
    rng = random.Random(seed)
    types = STATE_TYPES + _registered
    nodes: list[Any] = [rng.choice([Box, Box, Other])() for _ in range(rng.randint(1, 5))]
    states = [_state(rng, values, types) for _ in range(rng.randint(1, 8))]
    for node in nodes:
        for k in range(rng.randint(0, 5)):
            setattr(node, f"a{k}", _child(rng, nodes, states, values, 0))
    root_kind = rng.choice(["node"] * 6 + ["list", "dict", "tuple"])
    if root_kind == "list":
        return [nodes[0], nodes[-1], rng.choice(states), _value(rng, values)]
    if root_kind == "tuple":  # an immutable root: its array leaf cannot be updated
        return (nodes[0], _value(rng, values), rng.choice(states))
    if root_kind == "dict":
        return {"root": nodes[0], "s": rng.choice(states)}
    return nodes[0]


def _child(rng: random.Random, nodes: list, states: list, values: list, depth: int) -> Any:
    kind = rng.choice(["state"] * 5 + ["node", "array", "static", "list", "dict", "tuple"])
    if depth > 2 and kind in ("list", "dict", "tuple"):
        kind = "state"
    if kind == "state" and states:  # drawn from a pool: shared / tied states
        return rng.choice(states)
    if kind == "state":
        return _state(rng, values, STATE_TYPES)
    if kind == "node":  # may be a cycle
        return rng.choice(nodes)
    if kind == "array":
        return _value(rng, values)
    if kind == "static":
        return rng.choice([0, 1.5, "s", None, (1, "t"), -0.0])
    if kind == "list":
        return [_child(rng, nodes, states, values, depth + 1) for _ in range(rng.randint(0, 3))]
    if kind == "tuple":
        return tuple(_child(rng, nodes, states, values, depth + 1) for _ in range(rng.randint(0, 3)))
    family = rng.choice(KEY_FAMILIES)
    keys = rng.sample(family, rng.randint(1, len(family)))
    return {k: _child(rng, nodes, states, values, depth + 1) for k in keys}


# -- mutations (applied alike to both twins) --------------------------------------------


def mutate(rng: random.Random, a: Any, b: Any, values: list[Any]) -> str:
    """One change, drawn by ``rng``, made to both twins (or to the shared classes)."""
    what = rng.choice(["retype", "meta", "tie", "untie", "add", "remove", "register", "bases",
                       "value", "array", "reclass", "none"])
    if what == "register":
        new = type(f"Reg{len(_registered)}", (sg.State,), {})
        Tagged.register(new)
        _registered.append(new)
        if rng.random() < 0.5:
            Tagged.register(rng.choice([Stat, BaseB]))
        return what
    if what == "bases":
        Moving.__bases__ = (BaseB,) if Moving.__bases__ == (BaseA,) else (BaseA,)
        return what
    wa, wb = walk(a), walk(b)
    nodes_a = [o for o in wa.objects if isinstance(o, sg.Node)]
    nodes_b = [o for o in wb.objects if isinstance(o, sg.Node)]
    states_a = [o for o in wa.objects if isinstance(o, sg.State)]
    states_b = [o for o in wb.objects if isinstance(o, sg.State)]
    if not nodes_a:
        return "none"
    i = rng.randrange(len(nodes_a))
    na, nb = nodes_a[i], nodes_b[i]
    names = sorted(vars(na))
    seed = rng.randrange(1 << 30)
    if what in ("retype", "meta") and names:
        name = rng.choice(names)
        old = getattr(na, name)
        if isinstance(old, sg.State):
            r1, r2 = random.Random(seed), random.Random(seed)
            types = STATE_TYPES + _registered
            if what == "meta":
                types = [type(old)]
            setattr(na, name, _state(r1, values, types))
            setattr(nb, name, _state(r2, values, types))
    elif what == "tie" and states_a:
        k = rng.randrange(len(states_a))
        name = f"t{rng.randrange(3)}"
        setattr(na, name, states_a[k])
        setattr(nb, name, states_b[k])
    elif what == "untie" and names:
        name = rng.choice(names)
        old_a, old_b = getattr(na, name), getattr(nb, name)
        if isinstance(old_a, sg.State):
            setattr(na, name, type(old_a)(old_a.value, **old_a.metadata))
            setattr(nb, name, type(old_b)(old_b.value, **old_b.metadata))
    elif what == "add":
        name = f"n{rng.randrange(4)}"
        r1, r2 = random.Random(seed), random.Random(seed)
        setattr(na, name, _child(r1, nodes_a, states_a, values, 1))
        setattr(nb, name, _child(r2, nodes_b, states_b, values, 1))
    elif what == "remove" and names:
        name = rng.choice(names)
        delattr(na, name)
        delattr(nb, name)
    elif what == "reclass" and states_a:  # a state's class assigned in place
        k = rng.randrange(len(states_a))
        cls = rng.choice([sg.State, sg.Param, Liar])  # (slotted alike: assignable among them)
        if any(type(states_a[k]) is c for c in (sg.State, sg.Param, Liar)):  # (not `in`: Liar ==)
            states_a[k].__class__ = cls
            states_b[k].__class__ = cls
    elif what == "value" and states_a:
        k = rng.randrange(len(states_a))
        v = _value(rng, values)
        states_a[k].value = v
        states_b[k].value = v
    elif what == "array" and names:
        name = rng.choice(names)
        v = _value(rng, values)
        setattr(na, name, v)
        setattr(nb, name, v)
    return what


# -- filters ---------------------------------------------------------------------------


def _path_pred(path: tuple, value: Any) -> bool:
    return len(path) % 2 == 0


def _value_pred(path: tuple, value: Any) -> bool:
    return float(np.sum(value)) > 20.0


def _type_filter(rng: random.Random, depth: int = 0) -> Any:
    r = rng.random()
    if r < 0.6 or depth > 1:
        return rng.choice(STATE_TYPES + _registered[-2:])
    if r < 0.7:
        return sg.Not(_type_filter(rng, depth + 1))
    comb = rng.choice([sg.Any, sg.All])
    return comb(*(_type_filter(rng, depth + 1) for _ in range(rng.randint(1, 3))))


def _filter(rng: random.Random) -> Any:
    r = rng.random()
    if r < 0.7:
        return _type_filter(rng)
    if r < 0.8:
        return rng.choice([_path_pred, _value_pred, LyingFilter(0), LyingFilter(1)])
    if r < 0.85:
        return False
    if r < 0.9:
        return sg.Any(_type_filter(rng), _path_pred)
    return rng.choice([..., True])


def filters(rng: random.Random, pool: list[tuple] | None = None) -> tuple:
    """A filter list: often one of ``pool`` (so cached partitions get reused), else new."""
    if pool and rng.random() < 0.7:
        return rng.choice(pool)
    fs = [_filter(rng) for _ in range(rng.randint(1, 3))]
    if rng.random() < 0.8:
        fs.append(rng.choice([..., True]))
    return tuple(fs)


# -- outcomes and comparison ------------------------------------------------------------


def outcome(fn: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return "ok", fn()
    except (TypeError, ValueError, KeyError) as e:
        return "error", type(e)


def reference(fn: Callable[[], Any]) -> tuple[str, Any]:
    with sg.specialization(False):
        return outcome(fn)


class Twins:
    """``a`` (specialized) and ``b`` (reference), and the map from ``a``'s objects to ``b``'s."""

    def __init__(self, a: Any, b: Any) -> None:
        self.a, self.b = a, b

    def corr(self) -> dict[int, Any]:
        wa, wb = walk(self.a), walk(self.b)
        assert wa.graphdef == wb.graphdef
        return {id(x): y for x, y in zip(wa.objects, wb.objects, strict=True)}


def same_map(g: Any, w: Any) -> None:
    assert isinstance(g, sg.StateMap) and isinstance(w, sg.StateMap)
    assert g.paths == w.paths, (g.paths, w.paths)
    assert g.types == w.types
    assert all(x is y for x, y in zip(g.values(), w.values(), strict=True))


def same_maps(g: Any, w: Any) -> None:
    g, w = _as_tuple(g), _as_tuple(w)
    assert len(g) == len(w)
    for x, y in zip(g, w, strict=True):
        if isinstance(y, sg.GraphDef):
            assert x == y and hash(x) == hash(y)
        else:
            same_map(x, y)


def same_objects(g: dict, w: dict, corr: dict[int, Any]) -> None:
    assert type(g) is type(w) is dict
    assert list(g) == list(w), (list(g), list(w))
    for p in w:
        assert corr[id(g[p])] is w[p], p


def _as_tuple(x: Any) -> tuple:
    return x if isinstance(x, tuple) else (x,)


def same_graph(x: Any, y: Any) -> None:
    """Two graphs flatten alike: equal GraphDefs, the very same values."""
    gx, sx = sg.generic.flatten(x)
    gy, sy = sg.generic.flatten(y)
    assert gx == gy
    # (== of a GraphDef compares classes by ==: the Liar class claims to equal any class)
    assert [type(o) for o in walk(x).objects] == [type(o) for o in walk(y).objects]
    assert all(type(o) is type(q) for o, q in zip(walk(x).objects, walk(y).objects, strict=True))
    assert all(p is q for p, q in zip(sx.values(), sy.values(), strict=True))


def agree(got: tuple[str, Any], want: tuple[str, Any]) -> bool:
    """Same kind of outcome (and the same error type); ``True`` when both returned."""
    assert got[0] == want[0], (got, want)
    if got[0] == "error":
        assert got[1] is want[1], (got, want)
        return False
    return True


# -- the fuzz ---------------------------------------------------------------------------


class Tally(_fuzzkit.Tally):
    def __init__(self) -> None:
        super().__init__()
        self._info: dict[str, Any] = {}

    def start(self) -> None:
        self._info = sg.cache_info()

    def served(self, op: str) -> None:
        """Count one call of ``op`` and whether generated code served it."""
        now = sg.cache_info()
        n = sum(now[k] - self._info[k] for k in ("hits", "walk_hits", "update_hits", "unflatten_hits"))
        self.add(op + "_calls")
        self.add(op + "_served", int(n > 0))


_counters = collections.Counter[str]()
TRACE: list[tuple[str, Any]] = []  # the current case's steps (printed with a failure)


def _counting(name: str, fn: Any) -> Any:
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        _counters[name] += 1
        return fn(*args, **kwargs)

    return wrapped


def step(rng: random.Random, t: Twins, tally: Tally, keep: dict[str, Any]) -> None:
    """One operation on both twins, compared."""
    op = rng.choice(["split", "smsplit", "filter", "states", "walks", "update", "merge", "clone",
                     "pop"])
    fs = filters(rng, keep.setdefault("pool", []))
    if len(keep["pool"]) < 4:
        keep["pool"].append(fs)
    a, b = t.a, t.b
    TRACE.append((op, fs))
    if op == "split":
        tally.start()
        computed = _counters["partitions_computed"]
        got = outcome(lambda: sg.split(a, *fs))
        tally.served("split")
        if _partition.filter_key(fs) is not None and got[0] == "ok":
            tally.add("split_by_type")
            tally.add("split_partition_reused", int(_counters["partitions_computed"] == computed))
        want = reference(lambda: sg.split(b, *fs))
        if agree(got, want):
            same_maps(got[1], want[1])
            keep.setdefault("parts", []).append((got[1], want[1]))
    elif op in ("smsplit", "filter"):
        sa, sb = sg.flatten(a)[1], reference(lambda: sg.flatten(b))[1][1]
        meth = "split" if op == "smsplit" else "filter"
        got = outcome(lambda: getattr(sa, meth)(*fs))
        want = reference(lambda: getattr(sb, meth)(*fs))
        tally.add(op + "_calls")
        if agree(got, want):
            same_maps(got[1], want[1])
    elif op == "states":
        fs = fs if rng.random() < 0.8 else ()
        if fs and rng.random() < 0.5 and fs[-1] in (..., True):
            fs = fs[:-1] or fs  # states need not be exhaustive
        tally.start()
        got = outcome(lambda: sg.states(a, *fs))
        tally.served("states")
        want = reference(lambda: sg.states(b, *fs))
        if agree(got, want):
            corr = t.corr()
            for g, w in zip(_as_tuple(got[1]), _as_tuple(want[1]), strict=True):
                same_objects(g, w, corr)
    elif op == "walks":
        corr = t.corr()
        for name, fn in (("nodes", lambda g: sg.nodes(g)), ("iter_leaf", lambda g: list(sg.iter_leaf(g))),
                         ("iter_node", lambda g: list(sg.iter_node(g)))):
            tally.start()
            got = fn(a)
            tally.served(name)
            want = reference(lambda: fn(b))[1]  # noqa: B023 - called at once
            if name == "nodes":
                same_objects(got, want, corr)
                continue
            assert [p for p, _ in got] == [p for p, _ in want]
            for (_, x), (_, y) in zip(got, want, strict=True):
                assert x is y or corr.get(id(x)) is y
    elif op == "update":
        _update_step(rng, t, tally, keep, fs)
    elif op == "merge":
        _merge_step(rng, t, tally, keep, fs)
    elif op == "clone":
        tally.start()
        got = sg.clone(a)
        tally.served("clone")
        want = reference(lambda: sg.clone(b))[1]
        same_graph(got, want)
        same_graph(got, a)
    elif op == "pop":
        fs = tuple(f for f in fs if f is not ... and f is not True) or (sg.Param,)
        tally.start()
        got = outcome(lambda: sg.pop_states(a, *fs))
        tally.served("pop_states")
        want = reference(lambda: sg.pop_states(b, *fs))
        if agree(got, want):
            same_maps(got[1], want[1])
    same_graph(a, b)  # the twins stay alike (an update or pop wrote both alike)


def _fresh(values: dict[int, Any]) -> Callable[[Any], Any]:
    """New value objects, one per old value object (the same one for both twins' parts)."""

    def new(v: Any) -> Any:
        out = values.get(id(v))
        if out is None:
            out = values[id(v)] = (np.asarray(v) + np.float32(1), v)
        return out[0]

    return new


def _parts_pair(rng: random.Random, t: Twins, keep: dict[str, Any], fs: tuple, tally: Tally
                ) -> tuple[tuple, tuple] | None:
    """Parts for an update or merge: ``(a's parts, b's parts)`` with the same values."""
    source = rng.choice(["split", "split", "split", "smsplit", "other_twin", "stale", "two_splits",
                         "dict_edit", "nested", "tree_map"])
    if source == "stale" and keep.get("parts"):
        pa, pb = rng.choice(keep["parts"])
        return pa[1:], pb[1:]
    got = outcome(lambda: sg.split(t.a, *fs))
    want = reference(lambda: sg.split(t.b, *fs))
    if not agree(got, want):
        return None
    pa, pb = got[1][1:], want[1][1:]
    if source == "smsplit":
        got2 = outcome(lambda: sg.flatten(t.a)[1].split(*fs))
        if got2[0] == "ok":
            pa = _as_tuple(got2[1])
    elif source == "other_twin":  # parts of the reference twin's split: equal, not the same table
        pa = pb
    elif source == "two_splits":
        fs2 = filters(rng)
        got2 = outcome(lambda: sg.split(t.a, *fs2))
        want2 = reference(lambda: sg.split(t.b, *fs2))
        if agree(got2, want2) and len(pa) > 1:
            k = rng.randrange(len(pa))
            j = rng.randrange(len(got2[1]) - 1)
            pa = (*pa[:k], got2[1][1 + j], *pa[k + 1:])
            pb = (*pb[:k], want2[1][1 + j], *pb[k + 1:])
    elif source == "dict_edit" and pa:
        k = rng.randrange(len(pa))
        da, db = dict(pa[k]), dict(pb[k])
        if da and rng.random() < 0.5:
            p = rng.choice(list(da))
            del da[p], db[p]
        elif da:
            p = rng.choice(list(da))
            v = np.zeros(2, np.float32)
            da[p] = db[p] = v
        pa = (*pa[:k], da, *pa[k + 1:])
        pb = (*pb[:k], db, *pb[k + 1:])
    elif source == "nested" and pa:
        k = rng.randrange(len(pa))
        pa = (*pa[:k], pa[k].to_nested(), *pa[k + 1:])
        pb = (*pb[:k], pb[k].to_nested(), *pb[k + 1:])
    tally.add("parts_" + source)
    return pa, pb


def _update_step(rng: random.Random, t: Twins, tally: Tally, keep: dict[str, Any], fs: tuple) -> None:
    pair = _parts_pair(rng, t, keep, fs, tally)
    if pair is None:
        return
    pa, pb = pair
    if pa and rng.random() < 0.6:  # a subset of the parts, in another order
        idx = rng.sample(range(len(pa)), rng.randint(1, len(pa)))
        pa, pb = tuple(pa[i] for i in idx), tuple(pb[i] for i in idx)
    new = _fresh({})
    pa = tuple(jax.tree.map(new, p) if isinstance(p, sg.StateMap) else _map_dict(new, p) for p in pa)
    pb = tuple(jax.tree.map(new, p) if isinstance(p, sg.StateMap) else _map_dict(new, p) for p in pb)
    before = sg.generic.flatten(t.a)
    tally.start()
    got = outcome(lambda: sg.update(t.a, *pa))
    tally.served("update")
    want = reference(lambda: sg.update(t.b, *pb))
    if not agree(got, want):
        after = sg.generic.flatten(t.a)  # nothing written on an error
        assert after[0] == before[0]
        assert all(x is y for x, y in zip(after[1].values(), before[1].values(), strict=True))
        tally.add("update_errors_alike")


def _map_dict(new: Callable[[Any], Any], d: dict) -> dict:
    out = {}
    for k, v in d.items():
        out[k] = _map_dict(new, v) if type(v) is dict else new(v)
    return out


def _merge_step(rng: random.Random, t: Twins, tally: Tally, keep: dict[str, Any], fs: tuple) -> None:
    pair = _parts_pair(rng, t, keep, fs, tally)
    if pair is None:
        return
    pa, pb = pair
    if len(pa) > 1 and rng.random() < 0.3:
        k = rng.randrange(len(pa))
        pa, pb = (*pa[k:], *pa[:k]), (*pb[k:], *pb[:k])  # another order
    gd_a, gd_b = sg.graphdef(t.a), reference(lambda: sg.graphdef(t.b))[1]
    if rng.random() < 0.2:
        gd_a = gd_b  # an equal GraphDef, not the same
    for _ in range(2):  # the second call may be served by generated code
        tally.start()
        got = outcome(lambda: sg.merge(gd_a, *pa))
        tally.served("merge")
        want = reference(lambda: sg.merge(gd_b, *pb))
        if agree(got, want):
            same_graph(got[1], want[1])
        else:
            tally.add("merge_errors_alike")


def run_case(seed: int, steps: int, tally: Tally, trace: bool = False) -> None:
    rng = random.Random(seed)
    TRACE.clear()
    values = [np.full(2, float(i), np.float32) for i in range(24)]
    gseed = rng.randrange(1 << 30)
    t = Twins(build(gseed, values), build(gseed, values))
    keep: dict[str, Any] = {}
    for _ in range(steps):
        if rng.random() < 0.3:
            TRACE.append(("mutation", mutate(rng, t.a, t.b, values)))
            tally.add("mutation_" + TRACE[-1][1])
            keep["parts"] = keep.get("parts", [])[-3:]
        step(rng, t, tally, keep)
        tally.add("steps_checked")


def fuzz(cases: int, seed: int, steps: int = 12) -> collections.Counter[str]:
    """Run ``cases`` random twins of ``steps`` operations each; the tally of what ran."""
    tally = Tally()
    saved = (sg.runtime.cache.CONFIG.threshold, sg.runtime.cache.CONFIG.max_variants)
    by_type, slot_maps = _partition._by_type, _partition.SlotMap
    _partition._by_type = _counting("partitions_computed", by_type)
    _partition.SlotMap = _counting("slot_maps_made", slot_maps)  # type: ignore[misc]
    _counters.clear()
    sg.configure(threshold=1, max_variants=64)
    sg.clear_cache()
    bases = Moving.__bases__
    try:
        for case in range(cases):
            try:
                run_case(seed * 1_000_003 + case, steps, tally)
            except AssertionError as e:
                steps_done = "\n  ".join(map(repr, TRACE))
                raise AssertionError(f"case seed {seed * 1_000_003 + case}: {e}\n  {steps_done}") from e
            if case % 16 == 15:
                sg.clear_cache()
    finally:
        _partition._by_type, _partition.SlotMap = by_type, slot_maps  # type: ignore[misc]
        Moving.__bases__ = bases
        sg.configure(threshold=saved[0], max_variants=saved[1])
        sg.clear_cache()
    tally.counts.update(_counters)
    return tally.counts


def main(argv: list[str] | None = None) -> int:
    return _fuzzkit.main(__doc__ or "", fuzz, argv, cases=200, steps=12)


if __name__ == "__main__":
    sys.exit(main())
