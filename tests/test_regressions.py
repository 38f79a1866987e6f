"""Regressions found by reviewing the specializer against the reference walker.

Each test runs the public path after a warm-up (so generated code answers when
the structure allows it) and demands the reference walker's result.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
from conftest import assert_same_flatten

import specgraph as sg


class Box(sg.Node):
    def __init__(self, **kw: Any) -> None:
        self.__dict__.update(kw)


class MyStr(str):
    pass


def warm(node: Any) -> None:
    sg.flatten(node)
    sg.flatten(node)


def test_str_subclass_dict_key_is_a_str_key(impl) -> None:
    m = Box(d={"a": np.ones(1)})
    warm(m)
    m.d = {MyStr("a"): np.ones(1)}
    assert_same_flatten(impl.flatten(m), sg.generic.flatten(m))


def test_int_attribute_name_swapped_for_bool_stays_correct(impl) -> None:
    m = Box()
    m.__dict__[1] = np.ones(1)
    m.__dict__[2] = np.ones(1)
    warm(m)
    del m.__dict__[1]
    m.__dict__[True] = np.ones(1)
    assert_same_flatten(impl.flatten(m), sg.generic.flatten(m))


def test_invisible_name_listed_twice_hides_nothing_else(impl) -> None:
    class Twice(sg.Node):
        graph_invisible_attrs = ("h", "h")

    n = Twice()
    n.x = np.ones(1)
    warm(n)
    n.h = 1
    n.z = np.ones(2)
    gd, sm = impl.flatten(n)
    assert list(sm) == [("x",), ("z",)]
    assert_same_flatten((gd, sm), sg.generic.flatten(n))


def test_invisible_attrs_as_a_bare_string_is_a_clear_error(impl) -> None:
    class Oops(sg.Node):
        graph_invisible_attrs = "cache"  # type: ignore[assignment]

    n = Oops()
    n.c = 1
    with pytest.raises(TypeError, match=r"must be a tuple of attribute names, e.g. \('cache',\)"):
        impl.flatten(n)


def test_update_of_a_tuple_root_with_unchanged_arrays(impl) -> None:
    m = Box(p=sg.Param(np.zeros(1)))
    root = (m, np.ones(2))
    _, sm = sg.flatten(root)
    warm(root)
    impl.update(root, sm)  # nothing in the tuple changes: fine on both paths
    new = sm.values()
    new[sm.paths.index((1,))] = np.zeros(2)
    with pytest.raises(ValueError, match="immutable root pytree"):
        impl.update(root, sg.StateMap(sm._table, new))


def test_update_writes_into_a_list_held_by_a_tuple_root(impl) -> None:
    lst = [np.ones(1)]
    root = (Box(p=sg.Param(np.zeros(1))), lst)
    _, sm = sg.flatten(root)
    warm(root)
    new = sm.values()
    fresh = np.full(1, 5.0)
    new[sm.paths.index((1, 0))] = fresh
    impl.update(root, sg.StateMap(sm._table, new))
    assert lst[0] is fresh


def test_update_keeps_an_unchanged_tuple_the_same_object(impl) -> None:
    t0 = (np.ones(1), 3)
    m = Box(t=t0, p=sg.Param(np.zeros(1)))
    _, sm = sg.flatten(m)
    warm(m)
    impl.update(m, sm)
    assert m.t is t0


@dataclasses.dataclass(frozen=True)
class Config:
    size: int
    label: str = dataclasses.field(compare=False)


def test_equal_but_distinct_statics_come_back_as_given(impl) -> None:
    m = Box(p=sg.Param(np.zeros(1)), cfg=Config(1, "first"))
    warm(m)
    sg.unflatten(*sg.flatten(m))
    sg.unflatten(*sg.flatten(m))
    m.cfg = Config(1, "second")
    gd, sm = impl.flatten(m)
    assert_same_flatten((gd, sm), sg.generic.flatten(m))
    assert impl.unflatten(gd, sm).cfg.label == "second"
    assert sg.clone(m).cfg.label == "second"


def test_a_class_named_like_a_generated_function() -> None:
    Foo = type("Foo", (sg.Node,), {})
    Shadow = type("unflatten_Foo", (sg.Node,), {})
    m = Foo()
    m.child = Shadow()
    m.p = sg.Param(np.zeros(1))
    warm(m)
    gd, sm = sg.flatten(m)
    assert sg.cache_info()["guard_misses"] == {}
    for _ in range(3):
        out = sg.unflatten(gd, sm)
    assert type(out.child) is Shadow


def test_explain_works_on_an_unhashable_graphdef() -> None:
    gd, _ = sg.generic.flatten(Box(p=sg.Param(np.zeros(1)), bad={1, 2}))
    text = sg.explain(gd)
    assert "Generated flatten:" in text and "Counters: none yet" in text


def test_partial_update_uses_the_specialized_walk_and_matches_the_reference() -> None:
    def make() -> Box:
        return Box(a=sg.Param(np.zeros(2)), b=sg.State(np.ones(2)), c=np.full(1, 3.0))

    live, twin = make(), make()
    warm(live)
    _, params, _ = sg.split(live, sg.Param, ...)
    new = sg.StateMap(params._table, [np.full(2, 7.0)])
    walks = sg.cache_info()["walk_hits"]
    sg.update(live, new)
    sg.generic.update(twin, new)
    assert sg.cache_info()["walk_hits"] == walks + 1
    assert live.a.value is twin.a.value is new[("a",)]
    assert sg.generic.flatten(live)[0] == sg.generic.flatten(twin)[0]
    np.testing.assert_array_equal(live.b.value, twin.b.value)
    np.testing.assert_array_equal(live.c, twin.c)


def test_deeply_nested_pytree_round_trips(impl) -> None:
    """Nesting deeper than the recursion limit: flatten and unflatten are both iterative."""
    depth = 1200
    x: Any = [np.ones(1)]
    for _ in range(depth):
        x = [x, (1, "a")]
    node = Box(deep=x, p=sg.Param(np.zeros(1)))
    gd, sm = impl.flatten(node)
    out = impl.unflatten(gd, sm)
    y, n = out.deep, 0
    while isinstance(y, list) and len(y) == 2:
        assert y[1] == (1, "a")
        y, n = y[0], n + 1
    assert n == depth and y[0] is sm[("deep",) + (0,) * (depth + 1)]


def test_deeply_nested_pytree_updates(impl) -> None:
    depth = 1200
    x: Any = [np.ones(1)]
    for _ in range(depth):
        x = [x, (1, np.ones(1))]
    node = Box(deep=x, p=sg.Param(np.zeros(1)))
    _, sm = sg.generic.flatten(node)
    values = sm.values()
    bottom = sm.paths.index(("deep",) + (0,) * (depth + 1))
    in_tuple = sm.paths.index(("deep", 1, 1))  # an array held by a tuple: the tuple is rebuilt
    values[bottom], values[in_tuple] = np.full(1, 5.0), np.full(1, 6.0)
    impl.update(node, sg.StateMap(sm._table, values))
    after = sg.generic.flatten(node)[1]
    assert after[sm.paths[bottom]] is values[bottom]
    assert after[sm.paths[in_tuple]] is values[in_tuple]


@pytest.mark.parametrize("name", ["S", "s0", "vals"])
def test_a_class_named_like_a_generated_local(name: str) -> None:
    cls = type(name, (sg.Node,), {})
    m = cls()
    m.p = sg.Param(np.zeros(1))
    m.k = 3
    warm(m)
    gd, sm = sg.flatten(m)
    for _ in range(3):
        out = sg.unflatten(gd, sm)
    assert type(out) is cls and out.k == 3


def test_namedtuple_subclass_with_an_instance_dict_is_matched_by_identity(impl) -> None:
    import collections

    class Tagged(collections.namedtuple("Tagged", "a b")):  # a __dict__: equal yet distinguishable
        pass

    first, second = Tagged(1, 2), Tagged(1, 2)
    first.tag, second.tag = "first", "second"
    m = Box(p=sg.Param(np.zeros(1)), t=first)
    warm(m)
    m.t = second
    gd, sm = impl.flatten(m)
    assert_same_flatten((gd, sm), sg.generic.flatten(m))
    assert impl.unflatten(gd, sm).t.tag == "second"


def test_complex_negative_zero_static(impl) -> None:
    m = Box(p=sg.Param(np.zeros(1)), z=0j)
    warm(m)
    m.z = complex(0.0, -0.0)
    gd, sm = impl.flatten(m)
    assert str(impl.unflatten(gd, sm).z) == str(complex(0.0, -0.0))


@dataclasses.dataclass(frozen=True)
class Tag:
    name: str
    note: str = dataclasses.field(compare=False)


def test_equal_but_distinct_state_metadata_comes_back_as_given(impl) -> None:
    m = Box(p=sg.Param(np.zeros(1), tag=Tag("a", "first"), lr=(1, 2)))
    warm(m)
    sg.unflatten(*sg.flatten(m))
    sg.unflatten(*sg.flatten(m))
    m.p = sg.Param(np.zeros(1), tag=Tag("a", "second"), lr=(1, 2))
    gd, sm = impl.flatten(m)
    assert_same_flatten((gd, sm), sg.generic.flatten(m))
    assert impl.unflatten(gd, sm).p.metadata["tag"].note == "second"
    m.p = sg.Param(np.zeros(1), tag=m.p.metadata["tag"], lr=(1, True))  # (1, True) != (1, 2)'s types
    assert_same_flatten(impl.flatten(m), sg.generic.flatten(m))
