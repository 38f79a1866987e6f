"""Filtered operations at the speed of flatten (issue 15): cached partitions and slot maps.

Filters made of state types decide by structure, so their partition is computed once per
path table and reused; predicates run per call. Every answer here is compared with the
reference: the same operation with the specializer off, which caches nothing.
"""

from __future__ import annotations

import abc
from typing import Any

import numpy as np
import pytest
from conftest import assert_served_by
from graphs import BatchStat, Box
from hypothesis import given
from hypothesis import strategies as st
from test_properties import build, recipes

import specgraph as sg


def model() -> Box:
    w = sg.Param(np.ones(2, np.float32))
    return Box(
        layers=[Box(w=sg.Param(np.full(2, float(i), np.float32)), b=sg.Param(np.zeros(2, np.float32)),
                    n=BatchStat(np.zeros(1, np.float32))) for i in range(3)],
        tied=Box(w=w, again=w),
        count=sg.State(np.int32(0)),
        arr=np.arange(3.0),
    )


def warm(m: Any) -> None:
    for _ in range(2):
        sg.flatten(m)


def reference(fn: Any, *args: Any) -> Any:
    """What ``fn`` returns with the specializer off (nothing cached, nothing generated)."""
    with sg.specialization(False):
        return fn(*args)


def outcome(fn: Any, *args: Any) -> tuple[str, Any]:
    try:
        return "ok", fn(*args)
    except (TypeError, ValueError, KeyError) as e:
        return "error", (type(e), str(e))


def as_tuple(x: Any) -> tuple:
    return x if isinstance(x, tuple) else (x,)


def assert_same_maps(got: Any, want: Any) -> None:
    """The same parts: paths, types and the very same value objects, in order."""
    got, want = as_tuple(got), as_tuple(want)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        if isinstance(w, sg.GraphDef):
            assert g == w
            continue
        if isinstance(w, sg.StateMap):
            assert isinstance(g, sg.StateMap)
            assert g.paths == w.paths and g.types == w.types
            assert all(a is b for a, b in zip(g.values(), w.values(), strict=True))
        else:
            assert type(g) is type(w) is dict
            assert list(g) == list(w)
            assert all(g[p] is w[p] for p in w)


# -- partitions by type are cached; the answers do not change -------------------------


@pytest.mark.repeats
def test_a_type_filter_partition_is_computed_once_per_structure(served_by: str) -> None:
    m = model()
    warm(m)
    first = sg.split(m, sg.Param, ...)
    again = sg.split(m, sg.Param, ...)
    assert_same_maps(again, first)
    assert_same_maps(again, reference(sg.split, m, sg.Param, ...))
    # cached: the parts of two calls share their path tables (the key of later slot maps)
    shared = all(a._table is b._table for a, b in zip(first[1:], again[1:], strict=True))
    assert shared is (served_by != "generic")
    _, sm = sg.flatten(m)
    assert_same_maps(sm.split(sg.Param, ...), first[1:])
    assert_served_by(served_by)


@pytest.mark.repeats
def test_a_part_of_everything_is_the_table_itself(served_by: str) -> None:
    m = model()
    warm(m)
    gd, everything = sg.split(m, ...)
    assert everything._table is gd.pathtable
    _, sm = sg.flatten(m)
    (alone,) = sm.split(...)
    assert alone._table is sm._table and alone.values() == sm.values()


@pytest.mark.repeats
def test_predicates_run_per_call_on_the_values(served_by: str) -> None:
    m = model()
    warm(m)
    calls = []

    def big(path: tuple, value: Any) -> bool:
        calls.append(path)
        return float(np.sum(value)) > 1.0

    first = sg.split(m, big, ...)
    assert len(calls) == len(sg.flatten(m)[1])
    m.layers[0].w.value = np.full(2, 5.0, np.float32)  # a new value: another answer
    second = sg.split(m, big, ...)
    assert ("layers", 0, "w") in second[1] and ("layers", 0, "w") not in first[1]
    assert_same_maps(second, reference(sg.split, m, big, ...))
    assert len(calls) == 3 * len(sg.flatten(m)[1])  # (the reference asked again)


class Liar:
    """A predicate claiming to equal (and hashing like) sg.Param."""

    def __eq__(self, other: object) -> bool:
        return True

    def __hash__(self) -> int:
        return hash(sg.Param)

    def __call__(self, path: tuple, value: Any) -> bool:
        return path[0] == "count"


@pytest.mark.parametrize("op", ["split", "StateMap.split", "states"])
@pytest.mark.repeats
def test_a_cached_partition_serves_only_its_own_filter_list(served_by: str, op: str) -> None:
    """Each filter list keys its own partition: a list equal to a cached one only by ``==``
    (``1`` equals ``True``; an object claiming to be ``sg.Param``) gets its own answer."""
    m = model()
    warm(m)
    run = {
        "split": lambda *fs: sg.split(m, *fs),
        "StateMap.split": lambda *fs: sg.flatten(m)[1].split(*fs),
        "states": lambda *fs: sg.states(m, *fs),
    }[op]
    cases = [
        (sg.Param, ...), (BatchStat, ...), (sg.State, ...), (sg.Not(sg.Param), ...),
        (sg.Any(sg.Param, BatchStat), ...), (sg.Any(sg.Param), ...), (sg.Param, True), (True,),
        (1,), (Liar(), ...), (sg.Any(Liar()), ...), (sg.Param, BatchStat, ...), (BatchStat, sg.Param, ...),
    ]
    for _ in range(2):
        for filters in cases:
            got, want = outcome(run, *filters), reference(outcome, run, *filters)
            assert got[0] == want[0], filters
            if got[0] == "ok":
                assert_same_maps(got[1], want[1])
            else:
                assert got[1] == want[1]
    assert outcome(run, 1)[0] == "error"  # 1 is no filter, though (1,) == (True,)
    liar = as_tuple(run(Liar(), ...))
    assert list(liar[-2] if op != "states" else liar[0]) == [("count",)]


def test_abc_registration_changes_the_partition(served_by: str) -> None:
    """An ABC filter type: registering a class with it changes what it matches."""

    class Tagged(sg.State, metaclass=abc.ABCMeta):
        __slots__ = ()

    class Plain(sg.State):
        __slots__ = ()

    m = Box(a=Plain(1.0), b=Tagged(2.0))
    warm(m)
    before = sg.split(m, Tagged, ...)
    assert list(before[1]) == [("b",)]
    Tagged.register(Plain)
    after = sg.split(m, Tagged, ...)
    assert list(after[1]) == [("a",), ("b",)]
    assert_same_maps(after, reference(sg.split, m, Tagged, ...))
    assert list(sg.states(m, Tagged)) == [("a",), ("b",)]


def test_new_bases_change_the_partition(served_by: str) -> None:
    class A(sg.State):
        __slots__ = ()

    class B(sg.State):
        __slots__ = ()

    class C(A):
        __slots__ = ()

    m = Box(c=C(1.0), b=B(2.0))
    warm(m)
    assert list(sg.split(m, A, ...)[1]) == [("c",)]
    assert list(sg.flatten(m)[1].split(A, ...)[0]) == [("c",)]
    C.__bases__ = (B,)
    assert list(sg.split(m, A, ...)[1]) == []
    assert list(sg.flatten(m)[1].split(A, ...)[0]) == []
    assert list(sg.states(m, A)) == []


# -- differential: random graphs, random filters, mutations in between ---------------

FILTERS = [
    sg.Param, BatchStat, sg.State, sg.Not(sg.State), sg.Not(sg.Param), sg.Any(sg.Param, BatchStat),
    sg.All(sg.State, sg.Not(sg.Param)), False, lambda p, v: len(p) % 2 == 0,
    lambda p, v: isinstance(v, float) and v > 0,
]


def _filtered_ops(g: Any, filters: tuple) -> dict[str, Any]:
    return {
        "split": outcome(sg.split, g, *filters, ...),
        "states": outcome(sg.states, g, *filters) if filters else None,
        "StateMap.split": outcome(lambda: sg.flatten(g)[1].split(*filters, ...)),
        "StateMap.filter": outcome(lambda: sg.flatten(g)[1].filter(*filters)) if filters else None,
        "exhaustive": outcome(sg.split, g, *filters) if filters else None,
    }


def _assert_same_ops(got: dict[str, Any], want: dict[str, Any]) -> None:
    for op, w in want.items():
        g = got[op]
        if w is None:
            continue
        assert g[0] == w[0], (op, g, w)
        if w[0] == "ok":
            assert_same_maps(g[1], w[1])
        else:
            assert g[1] == w[1], op


@given(recipe=recipes(), data=st.data())
def test_filtered_operations_equal_the_reference_on_mutated_graphs(recipe: Any, data: Any) -> None:
    g = build(recipe)
    for _ in range(data.draw(st.integers(1, 3), label="rounds")):
        filters = tuple(data.draw(st.lists(st.sampled_from(FILTERS), max_size=3), label="filters"))
        for _ in range(2):  # the second call is served from the caches
            _assert_same_ops(_filtered_ops(g, filters), reference(_filtered_ops, g, filters))
        # mutate: a state changes type, or an attribute goes away (another structure)
        nodes = list(reference(sg.nodes, g).values())
        node = data.draw(st.sampled_from(nodes), label="node")
        names = list(vars(node)) if isinstance(node, Box) else []
        if names:  # (through __dict__: a hostile name such as '__dict__' is just a key)
            name = data.draw(st.sampled_from(names), label="name")
            if data.draw(st.booleans(), label="retype"):
                node.__dict__[name] = data.draw(st.sampled_from([sg.Param, BatchStat, sg.State]))(1.5)
            else:
                del node.__dict__[name]


# -- update and merge by slots --------------------------------------------------------


def fresh(part: sg.StateMap, base: float) -> sg.StateMap:
    """The same part (its very table) with new value objects."""
    return sg.StateMap(part._table, [np.full(1, base + i) for i in range(len(part))])


def assert_same_graphs(a: Any, b: Any) -> None:
    (gd_a, sm_a), (gd_b, sm_b) = sg.generic.flatten(a), sg.generic.flatten(b)
    assert gd_a == gd_b and sm_a.paths == sm_b.paths
    assert all(x is y for x, y in zip(sm_a.values(), sm_b.values(), strict=True))


@pytest.mark.parametrize("which", ["params", "rest", "both", "both reversed", "params twice"])
@pytest.mark.repeats
def test_update_with_split_parts_equals_the_reference(served_by: str, which: str) -> None:
    m = model()
    warm(m)
    gd, params, rest = sg.split(m, sg.Param, ...)
    new_params, new_rest = fresh(params, 10.0), fresh(rest, 20.0)
    given = {"params": (new_params,), "rest": (new_rest,), "both": (new_params, new_rest),
             "both reversed": (new_rest, new_params), "params twice": (new_params, new_params)}[which]
    twin = reference(sg.clone, m)
    before = sg.cache_info()["update_hits"]
    got = outcome(sg.update, m, *given)
    want = outcome(sg.generic.update, twin, *given)
    assert got == want or (got[0] == want[0] == "ok")
    assert_same_graphs(m, twin)
    if which == "params twice":
        assert got[0] == "error" and "given twice" in got[1][1]
    else:
        assert got[0] == "ok"
        written = new_rest[("count",)] if which == "rest" else new_params[("layers", 1, "w")]
        assert (m.count if which == "rest" else m.layers[1].w).value is written
        served = sg.cache_info()["update_hits"] - before
        assert served == (served_by != "generic")  # generated code wrote it, or the reference
    # and merge: the same parts, any order, give the structure back with their values
    if which.startswith("both"):
        assert_same_graphs(sg.merge(gd, *given), reference(sg.merge, gd, *given))
        with pytest.raises(KeyError, match="no value for path"):
            sg.merge(gd, new_params)


def test_a_slot_map_serves_only_the_table_it_maps_onto(served_by: str) -> None:
    """Parts of one structure given to another with as many values: the paths decide (a
    KeyError naming the path), never the slot numbers."""
    one = Box(a=sg.Param(np.zeros(1)), b=sg.State(np.ones(1)))
    other = Box(x=sg.Param(np.zeros(1)), y=sg.State(np.ones(1)))
    for m in (one, other):
        warm(m)
    gd1, p1, r1 = sg.split(one, sg.Param, ...)
    gd2, p2, _ = sg.split(other, sg.Param, ...)
    for parts in [(p1,), (r1,), (p1, r1)]:
        got = outcome(sg.update, other, *parts)
        assert got == reference(outcome, sg.generic.update, reference(sg.clone, other), *parts)
        assert got[0] == "error" and "is not a state or array leaf" in got[1][1]
        assert outcome(sg.merge, gd2, *parts) == reference(outcome, sg.merge, gd2, *parts)
    assert sg.generic.flatten(other)[1][("x",)] is p2[("x",)]  # nothing was written
    # another graph of the same structure takes them, as does an equal GraphDef made apart
    same = Box(a=sg.Param(np.zeros(1)), b=sg.State(np.ones(1)))
    sg.update(same, fresh(p1, 5.0))
    assert float(same.a.value[0]) == 5.0 and float(same.b.value[0]) == 1.0
    apart, _ = sg.generic.flatten(one)
    assert apart.pathtable is not gd1.pathtable
    assert_same_graphs(sg.merge(apart, r1, p1), one)


# -- states, nodes, iter_leaf, iter_node on the specialized walk ----------------------


def _walk_ops(g: Any) -> dict[str, Any]:
    return {
        "states": outcome(sg.states, g),
        "states by type": outcome(sg.states, g, sg.Param, BatchStat),
        "states not exhaustive": outcome(sg.states, g, sg.Not(sg.State), BatchStat),
        "nodes": outcome(sg.nodes, g),
        "iter_leaf": outcome(lambda: list(sg.iter_leaf(g))),
        "iter_node": outcome(lambda: list(sg.iter_node(g))),
    }


def _assert_same_walk_ops(got: dict[str, Any], want: dict[str, Any]) -> None:
    for op, w in want.items():
        g = got[op]
        assert g[0] == w[0], (op, g, w)
        if w[0] != "ok":
            assert g[1] == w[1]
        elif type(w[1]) is list:
            assert [p for p, _ in g[1]] == [p for p, _ in w[1]], op
            assert all(a is b for (_, a), (_, b) in zip(g[1], w[1], strict=True)), op
        else:
            assert_same_maps(g[1], w[1])


@pytest.mark.repeats
def test_walk_operations_are_served_by_generated_code(served_by: str) -> None:
    m = model()
    warm(m)
    for _ in range(2):
        _assert_same_walk_ops(_walk_ops(m), reference(_walk_ops, m))
    assert list(sg.iter_leaf(m))[-1] == (("tied", "again"), m.tied.w)  # the tied weight once
    assert [p for p, _ in sg.iter_leaf(m)] == list(sg.flatten(m)[1].paths)
    assert list(sg.nodes(m))[:2] == [(), ("layers", 0)]
    assert_served_by(served_by)


def test_iter_leaf_interleaves_states_and_array_leaves(served_by: str) -> None:
    a, b = np.zeros(1), np.ones(1)
    m = Box(x=[a, sg.Param(2.0)], y=(b, sg.State(3.0)), z=sg.Param(4.0))
    warm(m)
    got = list(sg.iter_leaf(m))
    assert [p for p, _ in got] == [("x", 0), ("x", 1), ("y", 0), ("y", 1), ("z",)]
    assert got[0][1] is a and got[1][1] is m.x[1] and got[2][1] is b and got[4][1] is m.z
    _assert_same_walk_ops(_walk_ops(m), reference(_walk_ops, m))
    only_leaves = Box(x=[a])  # no State at all: every value is a leaf
    warm(only_leaves)
    assert list(sg.iter_leaf(only_leaves)) == [(("x", 0), a)]


def test_a_metadata_change_leaves_the_walks_served(served_by: str) -> None:
    """states / nodes / iter_leaf return no metadata: their generated code leaves its guards
    out, so a state replaced by one of other metadata is still answered by it (flatten, whose
    GraphDef holds the metadata, misses), and the answers equal the reference."""
    m = Box(w=sg.Param(np.zeros(1), tag="a"), n=BatchStat(np.ones(1)), sub=Box(v=sg.Param(np.ones(1))))
    warm(m)
    _assert_same_walk_ops(_walk_ops(m), reference(_walk_ops, m))
    m.w = sg.Param(np.zeros(1), tag="b")
    before = sg.cache_info()
    _assert_same_walk_ops(_walk_ops(m), reference(_walk_ops, m))
    after = sg.cache_info()
    assert after["walk_hits"] - before["walk_hits"] == 6 * (served_by != "generic")
    assert after["guard_misses"] == before["guard_misses"]
    assert sg.states(m)[("w",)] is m.w
    sg.flatten(m)
    assert sg.cache_info()["guard_misses"].get("metadata", 0) == (served_by != "generic")


@given(recipe=recipes(), data=st.data())
def test_updates_merges_and_walks_equal_the_reference_on_mutated_graphs(recipe: Any, data: Any) -> None:
    g = build(recipe)
    for _ in range(data.draw(st.integers(1, 3), label="rounds")):
        filters = tuple(data.draw(st.lists(st.sampled_from(FILTERS), max_size=2), label="filters"))
        for _ in range(2):
            _assert_same_walk_ops(_walk_ops(g), reference(_walk_ops, g))
        split = outcome(sg.split, g, *filters, ...)
        if split[0] != "ok":
            continue
        gd, *parts = split[1]
        new = [fresh(p, 10.0 * k) for k, p in enumerate(parts)]
        given = tuple(data.draw(st.permutations(new), label="order"))
        assert_same_graphs(sg.merge(gd, *given), reference(sg.merge, gd, *given))
        if data.draw(st.booleans(), label="mutate first"):
            nodes = list(reference(sg.nodes, g).values())
            node = data.draw(st.sampled_from(nodes), label="node")
            names = list(vars(node)) if isinstance(node, Box) else []
            if names:
                del node.__dict__[data.draw(st.sampled_from(names), label="name")]
        chosen = given[: data.draw(st.integers(0, len(given)), label="how many")]
        twin = reference(sg.clone, g)
        got = outcome(sg.update, g, *chosen)
        want = outcome(sg.generic.update, twin, *chosen)
        assert got[0] == want[0], (got, want)
        if got[0] == "error":
            assert got[1] == want[1]
        assert_same_graphs(g, twin)
        if filters and data.draw(st.booleans(), label="pop"):  # pop: another structure again
            _assert_same_pops(outcome(sg.pop_states, g, *filters),
                              reference(outcome, sg.pop_states, twin, *filters))
            assert_same_graphs(g, twin)


# -- the same for Flax NNX and BrainState models -------------------------------------


def _peer_ops(m: Any, param: type, other: type) -> dict[str, Any]:
    ops = {
        "split": outcome(sg.split, m, param, ...),
        "split two": outcome(sg.split, m, other, param, ...),
        "states": outcome(sg.states, m, param),
        "states two": outcome(sg.states, m, param, other),
        "StateMap.split": outcome(lambda: sg.flatten(m)[1].split(param, ...)),
    }
    walks = _walk_ops(m)
    return {**ops, **{k: walks[k] for k in ("states", "nodes", "iter_leaf")}}


def _check_peer(served_by: str, m: Any, param: type, other: type) -> None:
    """The peer's model through every filtered operation, against the reference; the
    specialized variant is served by generated code (the peer's states have layouts)."""
    warm(m)
    for _ in range(2):
        got, want = _peer_ops(m, param, other), reference(_peer_ops, m, param, other)
        _assert_same_walk_ops({k: got[k] for k in ("states", "nodes", "iter_leaf")},
                              {k: want[k] for k in ("states", "nodes", "iter_leaf")})
        _assert_same_ops({k: v for k, v in got.items() if k not in ("states", "nodes", "iter_leaf")},
                         {k: v for k, v in want.items() if k not in ("states", "nodes", "iter_leaf")})
    gd, params, rest = sg.split(m, param, ...)
    assert len(params) and len(rest)
    new_params, new_rest = fresh(params, 10.0), fresh(rest, 20.0)
    twin = reference(sg.clone, m)
    before = sg.cache_info()["update_hits"]
    sg.update(m, new_params)
    sg.generic.update(twin, new_params)
    assert_same_graphs(m, twin)
    assert sg.cache_info()["update_hits"] - before == (served_by != "generic")
    sg.update(m, new_rest, new_params)
    sg.generic.update(twin, new_rest, new_params)
    assert_same_graphs(m, twin)
    merged = sg.merge(gd, new_rest, new_params)
    assert type(merged) is type(m)
    assert_same_graphs(merged, reference(sg.merge, gd, new_rest, new_params))
    assert_served_by(served_by)


def test_nnx_models_through_the_filtered_operations(served_by: str) -> None:
    nnx = pytest.importorskip("flax.nnx")

    class Layer(nnx.Module):
        def __init__(self, i: int) -> None:
            self.w = nnx.Param(np.full(2, float(i), np.float32))
            self.b = nnx.Param(np.zeros(2, np.float32))
            self.n = nnx.BatchStat(np.zeros(1, np.float32))

    class Net(nnx.Module):
        def __init__(self) -> None:
            self.first, self.second = Layer(1), Layer(2)
            self.count = nnx.Variable(np.int32(0))

    _check_peer(served_by, Net(), nnx.Param, nnx.BatchStat)


def test_brainstate_models_through_the_filtered_operations(served_by: str) -> None:
    brainstate = pytest.importorskip("brainstate")

    class Layer(brainstate.graph.Node):
        def __init__(self, i: int) -> None:
            self.w = brainstate.ParamState(np.full(2, float(i), np.float32))
            self.b = brainstate.ParamState(np.zeros(2, np.float32))
            self.h = brainstate.ShortTermState(np.zeros(1, np.float32))

    class Net(brainstate.graph.Node):
        def __init__(self) -> None:
            self.first, self.second = Layer(1), Layer(2)
            self.tied = self.first.w

    _check_peer(served_by, Net(), brainstate.ParamState, brainstate.ShortTermState)


# -- pop_states on the specialized walk ------------------------------------------------


def _assert_same_pops(got: tuple[str, Any], want: tuple[str, Any]) -> None:
    assert got[0] == want[0], (got, want)
    if want[0] == "ok":
        assert_same_maps(got[1], want[1])
    else:
        assert got[1] == want[1]


POPS = [(BatchStat,), (sg.Param, BatchStat), (sg.State,), (lambda p, v: p[0] == "count",)]


@pytest.mark.parametrize("filters", POPS)
@pytest.mark.repeats
def test_pop_states_equals_the_reference_on_the_specialized_walk(served_by: str, filters: tuple) -> None:
    m = model()
    warm(m)
    twin = reference(sg.clone, m)
    before = sg.cache_info()["walk_hits"]
    got = outcome(sg.pop_states, m, *filters)
    assert sg.cache_info()["walk_hits"] - before == (served_by != "generic")
    _assert_same_pops(got, reference(outcome, sg.pop_states, twin, *filters))
    assert got[0] == "ok"
    assert_same_graphs(m, twin)  # the same states removed from the same holders
    assert all(not part for part in as_tuple(sg.states(m, *filters)))
    # the structure changed: the next operations see the new one, not the cached variant
    _assert_same_walk_ops(_walk_ops(m), reference(_walk_ops, m))


def test_pop_states_from_a_list_is_refused_by_both_paths_and_removes_nothing(served_by: str) -> None:
    m = Box(a=sg.Param(np.zeros(1)), lst=[sg.Param(np.ones(1))], b=BatchStat(np.ones(1)))
    warm(m)
    twin = reference(sg.clone, m)
    got = outcome(sg.pop_states, m, sg.Param)
    _assert_same_pops(got, reference(outcome, sg.pop_states, twin, sg.Param))
    assert got[0] == "error" and "('lst', 0)" in got[1][1]
    assert_same_graphs(m, twin)
    assert_same_graphs(m, reference(sg.clone, m))
    assert list(sg.generic.flatten(m)[1]) == [("a",), ("b",), ("lst", 0)]


# -- guard-kill: the caches' validity checks are load-bearing --------------------------
#
# With one check taken out, the specialized path answers a changed structure or filter
# list from a stale cache and DIFFERS from the reference; the reference (specializer off)
# caches nothing, so taking the check out changes none of its answers.


def _abc_scenario() -> tuple[Any, type, Any]:
    class Tagged(sg.State, metaclass=abc.ABCMeta):
        __slots__ = ()

    class Plain(sg.State):
        __slots__ = ()

    return Box(a=Plain(np.zeros(1)), b=Tagged(np.ones(1))), Tagged, lambda: Tagged.register(Plain)


def _bases_scenario() -> tuple[Any, type, Any]:
    class A(sg.State):
        __slots__ = ()

    class B(sg.State):
        __slots__ = ()

    class C(A):
        __slots__ = ()

    def rebase() -> None:
        C.__bases__ = (B,)

    return Box(c=C(np.zeros(1)), b=B(np.ones(1)), a=A(np.ones(1))), A, rebase


def _by_type_ops(m: Any, ty: type) -> dict[str, Any]:
    return {
        "split": outcome(sg.split, m, ty, ...),
        "StateMap.split": outcome(lambda: sg.flatten(m)[1].split(ty, ...)),
        "states": outcome(sg.states, m, ty),
    }


def _assert_ops_agree(got: dict[str, Any], want: dict[str, Any]) -> bool:
    try:
        _assert_same_ops(got, want)
    except AssertionError:
        return False
    return True


@pytest.mark.parametrize("killed", [True, False])
@pytest.mark.parametrize("scenario", [_abc_scenario, _bases_scenario])
def test_the_partition_validity_check_is_load_bearing(
    served_by: str, scenario: Any, killed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from specgraph._partition import Partition

    if killed:
        monkeypatch.setattr(Partition, "valid", lambda self: True)
    m, ty, change_classes = scenario()
    warm(m)
    for _ in range(2):  # computed, then served from the caches
        assert _assert_ops_agree(_by_type_ops(m, ty), reference(_by_type_ops, m, ty))
    change_classes()  # what issubclass answers changes; the structure does not
    agree = _assert_ops_agree(_by_type_ops(m, ty), reference(_by_type_ops, m, ty))
    assert agree is not (killed and served_by != "generic")


@pytest.mark.parametrize("killed", [True, False])
@pytest.mark.repeats
def test_the_identity_filter_key_is_load_bearing(
    served_by: str, killed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keyed by ``==`` (the identity key taken out), a filter list claiming to equal a
    cached one (``Liar``) gets that one's partition."""
    from specgraph import _partition

    if killed:
        monkeypatch.setattr(_partition, "filter_key", lambda filters: filters)
    m = model()
    warm(m)
    sg.split(m, sg.Param, ...)  # cached
    got = outcome(sg.split, m, Liar(), ...)
    right = list(got[1][1]) == [("count",)]  # what Liar selects: not Param's partition
    assert right is _assert_ops_agree({"split": got}, {"split": reference(outcome, sg.split, m, Liar(), ...)})
    assert right is not (killed and served_by != "generic")


@pytest.fixture
def disable_guards() -> Any:
    from specgraph.runtime import dispatch

    try:
        yield dispatch._set_disabled_guards
    finally:
        dispatch._set_disabled_guards(frozenset())


@pytest.mark.parametrize("killed", [True, False])
def test_an_update_by_slots_is_guarded_like_the_full_update(
    served_by: str, killed: bool, disable_guards: Any
) -> None:
    """Two parameters made one after the split: the part's slot map still maps both, and
    without the ``distinct`` guard the partial update writes both into one state; with it
    the update refuses as the reference does."""
    disable_guards(frozenset({"distinct"}) if killed else frozenset())
    w = sg.Param(np.zeros(1))
    m = Box(a=sg.Param(np.zeros(1)), b=sg.Param(np.ones(1)), c=w, d=w, n=BatchStat(np.zeros(1)))
    warm(m)
    _, params, _ = sg.split(m, sg.Param, ...)
    new = fresh(params, 5.0)
    sg.update(m, new)  # the slot map and its partial update exist now
    twin = reference(sg.clone, m)
    m.b = m.a
    twin.b = twin.a
    before = sg.cache_info()["update_hits"]
    got = outcome(sg.update, m, fresh(params, 7.0))
    want = reference(outcome, sg.generic.update, twin, fresh(params, 7.0))
    assert want[0] == "error" and "('b',)" in want[1][1]
    stale = killed and served_by != "generic"
    assert (got == want) is not stale
    assert (sg.cache_info()["update_hits"] - before == 1) is stale
    if not stale:
        assert_same_graphs(m, twin)


class _ClaimsEqualityMeta(type):
    """A metaclass whose classes claim to equal every class and hash like ``sg.Param``."""

    def __eq__(cls, other: object) -> bool:
        return True

    def __hash__(cls) -> int:
        return hash(sg.Param)


class LyingParam(sg.State, metaclass=_ClaimsEqualityMeta):
    __slots__ = ()


def test_a_state_class_claiming_equality_is_another_structure(served_by: str) -> None:
    """A GraphDef holding a class whose metaclass claims it equals ``Param`` is another
    structure: found by the fuzz (tests/fuzz_filtered.py), the compiled merge of the Param
    structure built a ``Param`` from the other GraphDef, where the reference builds a
    ``LyingParam``."""
    with_param = Box(w=sg.Param(np.ones(2)), n=BatchStat(np.zeros(1)))
    for _ in range(3):  # the unflatten of this structure is compiled and served
        gd, sm = sg.flatten(with_param)
        assert type(sg.merge(gd, sm).w) is sg.Param
    lying = Box(w=LyingParam(np.ones(2)), n=BatchStat(np.zeros(1)))
    gd_lying, sm_lying = sg.split(lying)
    assert gd_lying != gd
    for _ in range(2):
        assert type(sg.merge(gd_lying, sm_lying).w) is LyingParam
        assert type(sg.unflatten(gd_lying, sm_lying).w) is LyingParam
        assert type(sg.clone(lying).w) is LyingParam
    want = reference(sg.merge, gd_lying, *sg.split(lying, sg.Param, ...)[1:])
    got = sg.merge(gd_lying, *sg.split(lying, sg.Param, ...)[1:])
    assert type(got.w) is type(want.w) is LyingParam
    assert_served_by(served_by)


@pytest.mark.parametrize("op", ["split", "StateMap.split", "states", "pop_states"])
def test_a_state_class_claiming_equality_gets_its_own_partition(served_by: str, op: str) -> None:
    """Found by the fuzz: the partition by type matched each distinct class once, keyed
    by the class in a dict, so a ``LyingParam`` in the structure (equal to ``Param`` and
    hashing like it) went wherever ``Param`` went."""
    def run(m: Any) -> Any:
        if op == "split":
            return sg.split(m, sg.Param, ...)
        if op == "StateMap.split":
            return sg.flatten(m)[1].split(sg.Param, ...)
        if op == "states":
            return sg.states(m, sg.Param, ...)
        return sg.pop_states(m, sg.Param)

    def make() -> Box:
        return Box(a=sg.Param(np.ones(2)), b=LyingParam(np.zeros(2)), c=sg.Param(np.zeros(1)))

    m, twin = make(), make()
    warm(m)
    for _ in range(2):  # computed, then served from the cache
        got = as_tuple(run(m))
        want = as_tuple(reference(run, twin))
        first = got[1] if op == "split" else got[0]
        assert list(first) == [("a",), ("c",)]
        assert [list(x) for x in got if not isinstance(x, sg.GraphDef)] == \
            [list(x) for x in want if not isinstance(x, sg.GraphDef)]
        if op == "pop_states":
            assert vars(m).keys() == vars(twin).keys() == {"b"}
            break
    if op != "pop_states":
        assert_served_by(served_by)


def test_a_state_class_claiming_equality_makes_another_path_table(served_by: str) -> None:
    """Path tables compare their classes by identity too: a StateMap of a ``LyingParam``
    is not equal to one of a ``Param`` holding the same values at the same paths."""
    value = np.ones(2)
    with_param, lying = Box(w=sg.Param(value)), Box(w=LyingParam(value))
    warm(with_param)
    warm(lying)
    sm_param, sm_lying = sg.flatten(with_param)[1], sg.flatten(lying)[1]
    assert sm_param._table != sm_lying._table and sm_param != sm_lying
    assert reference(lambda: sg.flatten(with_param)[1] != sg.flatten(lying)[1])
    assert_served_by(served_by)
