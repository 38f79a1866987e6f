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


def test_a_type_filter_partition_is_computed_once_per_structure(served_by: str) -> None:
    m = model()
    warm(m)
    first = sg.split(m, sg.Param, ...)
    again = sg.split(m, sg.Param, ...)
    assert_same_maps(again, first)
    assert_same_maps(again, reference(sg.split, m, sg.Param, ...))
    # cached: the parts of two calls share their path tables (the key of later slot maps)
    shared = all(a._table is b._table for a, b in zip(first[1:], again[1:], strict=True))
    assert shared is (served_by == "specialized")
    _, sm = sg.flatten(m)
    assert_same_maps(sm.split(sg.Param, ...), first[1:])
    assert_served_by(served_by)


def test_a_part_of_everything_is_the_table_itself(served_by: str) -> None:
    m = model()
    warm(m)
    gd, everything = sg.split(m, ...)
    assert everything._table is gd.pathtable
    _, sm = sg.flatten(m)
    (alone,) = sm.split(...)
    assert alone._table is sm._table and alone.values() == sm.values()


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
