"""Chains of links of a period: nestings of alternating classes (``A(B(A(B(...))))``).

A link is a node whose next node of its class sits below it on one way through nodes of
other classes (shapes._period_link), those read inline by the link's body: one loop in the
flatten, the update and the unflatten, as a chain of one class. Before, two such nestings
at ``outline_min=2`` were a shape per depth, each nesting the next one's: planned a
thousand deep (RecursionError, the walker served every call); at default settings ten
thousand deep were unrolled past max_steps (declined). Outlined occurrences nested past
``max(16, outline_min)`` deep are no longer outlined either (shapes._cap_nesting): any
nesting plans without recursing per level.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import hypothesis
import jax
import numpy as np
import pytest
from conftest import (
    Impl,
    assert_same_flatten,
    assert_stale_without,
    outlined_flatten_hits,
    outlined_unflatten_hits,
)
from hypothesis import strategies as hst

import specgraph as sg
from specgraph.runtime import dispatch
from specgraph.runtime.cache import CONFIG


class A(sg.Node):
    def __init__(self, c: Any, i: int = 0) -> None:
        self.p = sg.Param(np.full((2,), i, np.float32))
        self.c = c


class B(sg.Node):
    def __init__(self, c: Any, i: int = 0) -> None:
        self.q = sg.Param(np.float32(i))
        self.c = c


class C(sg.Node):
    def __init__(self, c: Any, i: int = 0) -> None:
        self.r = sg.Param(np.float32(-i))
        self.tag = "c"
        self.c = c


class D(sg.Node):
    """Its next node first, its state after (keys sort: ``a`` < ``z``)."""

    def __init__(self, c: Any, i: int = 0) -> None:
        self.a = c
        self.z = sg.Param(np.float32(i))


class M(sg.Node):
    def __init__(self, **kw: Any) -> None:
        vars(self).update(kw)


CLASSES: dict[str, tuple[type, ...]] = {"AB": (A, B), "ABC": (A, B, C), "AD": (A, D), "ABCD": (A, B, C, D)}


def alt(n: int, classes: tuple[type, ...]) -> Any:
    x: Any = None
    for i in range(n):
        x = classes[i % len(classes)](x, i)
    return x


def nodes_down(x: Any) -> list[Any]:
    out = []
    while x is not None:
        out.append(x)
        x = vars(x).get("c", vars(x).get("a"))
    return out


def _summary(gd: sg.GraphDef) -> str:
    """explain's summary (the outlined functions and loops), without the sources."""
    return sg.explain(gd).split("Generated flatten")[0]


def _check_all(impl: Any, m: Any) -> tuple[sg.GraphDef, sg.StateMap]:
    """flatten, update and unflatten through ``impl`` as the reference; compiled: each
    answered by generated code (counted)."""
    ref = sg.generic.flatten(m)
    before = sg.cache_info()
    got = impl.flatten(m)
    assert_same_flatten(got, ref)
    new = jax.tree.map(lambda v: v + 1, ref[1])
    impl.update(m, new)
    _, now = sg.generic.flatten(m)
    assert all(x is y for x, y in zip(now.values(), new.values(), strict=True))
    gd, st = sg.generic.flatten(m)
    twin = impl.unflatten(gd, st)
    assert_same_flatten(sg.generic.flatten(twin), (gd, st))
    mine = {id(x) for _, x in sg.iter_node(twin)}
    assert not mine & {id(x) for _, x in sg.iter_node(m)}  # (fresh nodes)
    if impl.compiled:
        after = sg.cache_info()
        assert after["hits"] >= before["hits"] + 1  # (impl.update flattens first too)
        assert after["update_hits"] == before["update_hits"] + 1
        assert after["unflatten_hits"] == before["unflatten_hits"] + 1
        assert not after["guard_misses"] and not after["fallbacks"]
    return gd, st


@pytest.mark.parametrize("period", sorted(CLASSES))
@pytest.mark.parametrize("count", [1, 2])
def test_alternating_nestings_are_chain_loops(impl: Any, period: str, count: int) -> None:
    m = M(**{f"x{k}": alt(1000, CLASSES[period]) for k in range(count)})
    gd, _ = _check_all(impl, m)
    if impl.compiled:
        assert _summary(gd).count("nested links of one shape") == 2 * count  # (flatten and unflatten)
        assert sg.explain(gd).count("\ndef ") <= 40  # (no function per depth)
        assert outlined_flatten_hits() >= 2 and outlined_unflatten_hits() >= 1


@pytest.mark.parametrize("where", ["head", "middle", "last link", "tail"])
@pytest.mark.parametrize("change", ["class", "static", "extra", "tied", "none"])
def test_one_link_mutated(impl: Any, where: str, change: str) -> None:
    """One node of the nesting changed (at the head, in the middle, in the last link, in the
    tail): a miss answered by the reference, then the new structure compiled in its turn."""
    m = M(x=alt(300, (A, B, C)), y=alt(300, (A, B, C)))
    ref = impl.flatten(m)
    ns = nodes_down(m.x)
    k = {"head": 0, "middle": 150, "last link": 290, "tail": 298}[where]
    node = ns[k]
    if change == "class":  # another class of the same attributes
        node.__class__ = type("Other", (sg.Node,), {})
    elif change == "static":
        node.extra = "s"
    elif change == "extra":
        node.extra_p = sg.Param(np.float32(7))
    elif change == "tied":
        state = next(v for v in vars(node).values() if isinstance(v, sg.State))
        ns[k + 1].__dict__[next(k_ for k_, v in vars(ns[k + 1]).items() if isinstance(v, sg.State))] = state
    else:
        node.c = None
    ref2 = sg.generic.flatten(m)
    assert ref2[0] != ref[0]
    hits = sg.cache_info()["hits"]
    assert_same_flatten(sg.flatten(m), ref2)
    if impl.compiled:
        assert sg.cache_info()["hits"] == hits  # a miss: the reference answered
        assert_same_flatten(sg.flatten(m), ref2)
        assert sg.cache_info()["hits"] == hits + 1
    gd, st = sg.generic.flatten(m)
    twin = impl.unflatten(gd, st)
    assert_same_flatten(sg.generic.flatten(twin), (gd, st))


def test_the_inline_nodes_type_guard_is_load_bearing(disable: Callable[[frozenset[str]], None]) -> None:
    """The loop guards the type of the nodes read inline between links: without the type
    guards, a middle B replaced by an A-like class of its keys answers stale."""

    class B2(sg.Node):
        pass

    def mutate(m: Any) -> None:
        ns = nodes_down(m.x)
        b = next(x for x in ns[100:] if type(x) is B)
        b.__class__ = B2

    def check(gd: sg.GraphDef) -> None:
        assert "nested links of one shape" in sg.explain(gd)

    assert_stale_without("type", disable, lambda: M(x=alt(200, (A, B))), mutate, check)


def test_the_inline_nodes_keys_guard_is_load_bearing(disable: Callable[[frozenset[str]], None]) -> None:
    def mutate(m: Any) -> None:
        ns = nodes_down(m.x)
        next(x for x in ns[100:] if type(x) is B).zz = 1

    assert_stale_without("node_keys", disable, lambda: M(x=alt(200, (A, B))), mutate)


def test_a_way_with_two_nodes_of_the_class_is_no_link(impl: Any) -> None:
    """A node with two ways down to nodes of its class (a branching) is no period link: the
    nesting is served as the reference, inline."""

    class Fork(sg.Node):
        def __init__(self, c: Any, i: int) -> None:
            self.l = B(c, i)
            self.r = B(A(None, i), i)

    x: Any = None
    for i in range(200):
        x = Fork(x, i) if i % 2 else A(x, i)
    m = M(x=x)
    _check_all(impl, m)


def test_outlined_nesting_is_capped(outlined: None) -> None:
    """Two nestings of 40 distinct classes (no period): a shape per depth (two of each),
    outlined at most 16 deep, the rest inline; no recursion per level."""
    classes = [type(f"K{i}", (sg.Node,), {}) for i in range(40)]
    x: Any = None
    y: Any = None
    for i, k in enumerate(classes):
        a, b = k(), k()
        a.p, a.c, b.p, b.c = sg.Param(np.float32(i)), x, sg.Param(np.float32(i)), y
        x, y = a, b
    m = M(x=x, y=y)
    _check_all(Impl("specialized"), m)
    gd = sg.generic.flatten(m)[0]
    var = dispatch.variant_for(gd)
    assert var is not None
    assert 1 <= len(var.plan.shape_fns) <= 16


@pytest.mark.parametrize("kind", ["list", "tuple", "dict"])
def test_alternating_nested_containers(outlined: None, kind: str) -> None:
    """Two nestings of alternating containers (``[x, p]``, ``(x, p)``, ``{'a': x, 'p': p}``)
    1 000 deep at ``outline_min=2``: container shapes nested no deeper than the cap (was:
    RecursionError)."""

    def nest(n: int) -> Any:
        x: Any = None
        for i in range(n):
            p = sg.Param(np.float32(i))
            x = ([x, p], (x, p), {"a": x, "p": p})[(i + "ltd".index(kind[0])) % 3]
        return x

    m = M(x=nest(1000), y=nest(1000))
    ref = sg.generic.flatten(m)
    sg.flatten(m)
    assert_same_flatten(sg.flatten(m), ref)
    sg.update(m, ref[1])
    sg.unflatten(*ref)
    twin = sg.unflatten(*ref)
    assert_same_flatten(sg.generic.flatten(twin), ref)
    ci = sg.cache_info()
    assert ci["hits"] == 1 and ci["update_hits"] == 1 and ci["unflatten_hits"] == 1


@hypothesis.settings(max_examples=25, deadline=None,
                     suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture,
                                            hypothesis.HealthCheck.too_slow])
@hypothesis.given(pattern=hst.lists(hst.sampled_from("ABCD"), min_size=1, max_size=4),
                  n=hst.integers(1, 120), count=hst.integers(1, 3), om=hst.sampled_from([2, 3, 64]),
                  mutate=hst.one_of(hst.none(), hst.integers(0, 119)), data=hst.data())
def test_random_nestings(pattern: list[str], n: int, count: int, om: int, mutate: int | None,
                         data: Any) -> None:
    """Random periods (a pattern of classes repeated), lengths, counts and settings, one
    node maybe mutated: every call as the reference, compiled ones counted."""
    classes = tuple({"A": A, "B": B, "C": C, "D": D}[c] for c in pattern)
    saved = CONFIG.outline_min
    sg.configure(outline_min=om)
    sg.clear_cache()
    try:
        m = M(**{f"x{k}": alt(n, classes) for k in range(count)}, z=[alt(3, classes) for _ in range(3)])
        ref = sg.generic.flatten(m)
        sg.flatten(m)
        assert_same_flatten(sg.flatten(m), ref)
        assert sg.cache_info()["hits"] == 1
        sg.update(m, ref[1])
        assert sg.cache_info()["update_hits"] == 1
        sg.unflatten(*ref)
        twin = sg.unflatten(*ref)
        assert sg.cache_info()["unflatten_hits"] == 1
        assert_same_flatten(sg.generic.flatten(twin), ref)
        if mutate is not None and mutate < n:
            node = nodes_down(m.x0)[n - 1 - mutate]
            node.extra = data.draw(hst.sampled_from([1, "s", None]), label="extra")
            ref2 = sg.generic.flatten(m)
            assert_same_flatten(sg.flatten(m), ref2)
            assert sg.cache_info()["hits"] == 1  # (a miss)
            sg.unflatten(*ref2)
            twin = sg.unflatten(*ref2)
            assert_same_flatten(sg.generic.flatten(twin), ref2)
    finally:
        CONFIG.outline_min = saved
        sg.clear_cache()


@pytest.mark.parametrize("period", ["AB", "ABC"])
def test_ten_thousand_deep_at_default_settings(period: str) -> None:
    assert CONFIG.outline_min > 2
    m = M(x=alt(10_000, CLASSES[period]), y=alt(10_000, CLASSES[period]))
    ref = sg.generic.flatten(m)
    sg.flatten(m)
    assert_same_flatten(sg.flatten(m), ref)
    new = jax.tree.map(lambda v: v * 2, ref[1])
    sg.update(m, new)
    _, now = sg.generic.flatten(m)
    assert all(x is y for x, y in zip(now.values(), new.values(), strict=True))
    sg.unflatten(*ref)
    twin = sg.unflatten(*ref)
    assert_same_flatten(sg.generic.flatten(twin), ref)
    ci = sg.cache_info()
    assert ci["hits"] == 1 and ci["update_hits"] == 1 and ci["unflatten_hits"] == 1
    assert ci["declined"] == 0 and not ci["guard_misses"]


# -- hostile nestings (found breaking it before landing: each answered as the reference) --


class Lin(sg.Node):
    def __init__(self, i: int) -> None:
        self.w = sg.Param(np.float32(i))
        self.k = i


class Rich(sg.Node):
    """A node on the way holding a node, a list of states and a hostile dict key."""

    def __init__(self, c: Any, i: int = 0) -> None:
        self.c = c
        self.lin = Lin(i)
        self.ps = [sg.Param(np.float32(i)), sg.Param(np.float32(-i))]
        self.d = {"'); import os #": sg.Param(np.float32(i))}


def _hostile(kind: str) -> Any:
    if kind == "shared node":  # a node in the middle reached from elsewhere too
        m = M(x=alt(300, (A, B)), y=alt(300, (A, B)))
        m.extra = nodes_down(m.x)[150]
    elif kind == "cycle":  # a node in the middle holding the root
        m = M(x=alt(300, (A, B)))
        nodes_down(m.x)[151].back = m
    elif kind == "rich way node":
        m = M(x=alt(400, (A, Rich)), y=alt(400, (A, Rich)))
    else:  # "tied across links": a state of one link held by another
        m = M(x=alt(300, (A, B)))
        ns = nodes_down(m.x)
        p = next(v for v in vars(ns[200]).values() if isinstance(v, sg.State))
        setattr(ns[100], "p" if type(ns[100]) is A else "q", p)
    return m


@pytest.mark.parametrize("kind", ["shared node", "cycle", "rich way node", "tied across links"])
def test_hostile_nestings(impl: Any, kind: str) -> None:
    _check_all(impl, _hostile(kind))
