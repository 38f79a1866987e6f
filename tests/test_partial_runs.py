"""Partial runs: a long stretch of sibling states of one kind inside a list, a tuple, a dict
or a node's attributes whose other items are of another kind (a node, a static, an array, a
state of another class, a tied state) is one loop in the flatten, update and unflatten; the
items around it are unrolled, in the reference walker's order and slot numbering.

Each case runs through every ``impl``; on the compiled paths the calls are counted as hits
(``sg.cache_info``) and the loops are named by ``explain``. Mutations that break a run are
misses answered as the reference answers; without each guard kind the stale loop answers.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import hypothesis
import jax
import numpy as np
import pytest
from conftest import assert_same_flatten, assert_stale_without
from hypothesis import strategies as hst

import specgraph as sg
from specgraph.runtime import dispatch
from specgraph.runtime.cache import CONFIG


class Bag(sg.Node):
    pass


class Buffer(sg.State):
    pass


LAYOUTS = ["list", "tuple", "dict", "attrs"]
OTHERS = ["node", "static", "array", "buffer", "tied", "meta"]


def _p(i: int) -> sg.Param:
    return sg.Param(np.full((2,), i, np.float32))


def _other(kind: str, i: int, tied: sg.Param) -> Any:
    if kind == "node":
        n = Bag()
        n.w = sg.Param(np.float32(-i))
        return n
    if kind == "static":
        return f"static{i}"
    if kind == "array":
        return np.full((3,), i, np.float32)
    if kind == "buffer":
        return Buffer(np.float32(i))
    if kind == "tied":
        return tied  # the same Param as the node's attribute ``a_tied``
    assert kind == "meta"
    return sg.Param(np.float32(i), tag="m")  # a Param of other metadata
    # (one kind of run: one class, all with metadata or all without)


def lay_out(b: Bag, layout: str, items: list[Any]) -> None:
    if layout == "list":
        b.l = items
    elif layout == "tuple":
        b.l = tuple(items)
    elif layout == "dict":
        b.l = {f"k{i:05d}": x for i, x in enumerate(items)}
    else:
        for i, x in enumerate(items):
            setattr(b, f"p{i:05d}", x)


def interrupted(layout: str, n: int, at: list[int], kind: str) -> Bag:
    """``n`` Params with an item of ``kind`` inserted before each position in ``at`` (0: at the
    start, ``n``: at the end), beside a tied Param and a static."""
    b = Bag()
    b.a_tied = sg.Param(np.float32(7))
    b.b_sep = "sep"  # (between a_tied and the attributes p00000...: not a run with them)
    items: list[Any] = []
    for i in range(n + 1):
        items.extend(_other(kind, i, b.a_tied) for _ in range(at.count(i)))
        if i < n:
            items.append(_p(i))
    lay_out(b, layout, items)
    b.z_static = 3
    return b


def _flat_loops(gd: sg.GraphDef) -> list[str]:
    var = dispatch.variant_for(gd)
    assert var is not None
    return sorted(x.split(": ")[1] for x in var.plan.loops)


def _unflat_loops(gd: sg.GraphDef) -> list[str]:
    built = dispatch._unflat.get(gd)
    return [] if built is None else sorted(x.split(": ")[1] for x in built.plan.loops)


def _runs(n: int, at: list[int], run_min: int) -> list[str]:
    cuts = [0, *sorted(at), n]
    return sorted(f"a run of {b - a} x Param" for a, b in itertools.pairwise(cuts) if b - a >= run_min)


def check_all(impl: Any, b: Bag) -> tuple[sg.GraphDef, sg.StateMap]:
    """Flatten, update and unflatten of ``b`` through ``impl``, each the reference's; on the
    compiled paths each a hit (the update: unless an array sits in a tuple, which the
    reference replaces, the generated update only leaves as it is)."""
    ref = sg.generic.flatten(b)
    info0 = sg.cache_info()
    assert_same_flatten(impl.flatten(b), ref)
    new = jax.tree.map(lambda v: v + 1, ref[1])
    impl.update(b, new)
    _, now = sg.generic.flatten(b)
    assert all(x is y for x, y in zip(now.values(), new.values(), strict=True))
    twin = impl.unflatten(*ref)
    assert_same_flatten(sg.generic.flatten(twin), ref)
    assert type(twin.a_tied) is sg.Param
    if impl.compiled:
        info = sg.cache_info()
        frozen = type(b.__dict__.get("l")) is tuple and any(type(x) is np.ndarray for x in b.l)
        assert info["hits"] > info0["hits"] and (info["update_hits"] > info0["update_hits"]) != frozen
        assert info["unflatten_hits"] > info0["unflatten_hits"]
        assert set(info["guard_misses"]) <= ({"immutable_leaf"} if frozen else set())
    return ref


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("kind", OTHERS)
@pytest.mark.parametrize("where", ["start", "middle", "end", "all"])
def test_a_run_interrupted_is_a_loop_and_the_reference(impl: Any, layout: str, kind: str, where: str) -> None:
    n = 200
    at = {"start": [0], "middle": [100], "end": [n], "all": [0, 100, n]}[where]
    b = interrupted(layout, n, at, kind)
    ref = check_all(impl, b)
    if impl.compiled:
        run_min = max(2, CONFIG.outline_min)
        want = _runs(n, at, run_min)
        assert _flat_loops(ref[0]) == want
        assert _unflat_loops(ref[0]) == want


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_tie_from_inside_a_run_to_outside(impl: Any, layout: str) -> None:
    """A Param of the stretch also held elsewhere (before the container in the walker's
    order, and after it) breaks the run there: it keeps its identity guard, unrolled."""
    b = interrupted(layout, 200, [], "node")
    items = list(b.l.values()) if layout == "dict" else list(b.l) if layout != "attrs" else \
        [v for k, v in sorted(vars(b).items()) if k.startswith("p")]
    b.a_first = items[60]  # (sorts before the container: its first path)
    b.z_last = items[130]  # (after it)
    ref = check_all(impl, b)
    twin = impl.unflatten(*ref)
    got = list(twin.l.values()) if layout == "dict" else list(twin.l) if layout != "attrs" else \
        [v for k, v in sorted(vars(twin).items()) if k.startswith("p")]
    assert twin.a_first is got[60] and twin.z_last is got[130]
    if impl.compiled and CONFIG.outline_min == 64:
        assert _flat_loops(ref[0]) == ["a run of 69 x Param", "a run of 69 x Param"]  # 61..129, 131..199


# -- mutations breaking a run: a miss, the reference's answer -----------------------------


def _replace(kind: str) -> Callable[[Bag, str, int], None]:
    def mutate(b: Bag, layout: str, i: int) -> None:
        x = _other(kind, i, b.a_tied) if kind != "share" else None
        if layout == "list":
            b.l[i] = x if kind != "share" else b.l[i + 1]
        elif layout == "tuple":
            b.l = (*b.l[:i], x if kind != "share" else b.l[i + 1], *b.l[i + 1:])
        elif layout == "dict":
            k = f"k{i:05d}"
            b.l[k] = x if kind != "share" else b.l[f"k{i + 1:05d}"]
        else:
            setattr(b, f"p{i:05d}", x if kind != "share" else getattr(b, f"p{i + 1:05d}"))
    return mutate


MUTATIONS = {k: _replace(k) for k in [*OTHERS, "share"]}


@hypothesis.settings(max_examples=40, deadline=None,
                     suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])
@hypothesis.given(layout=hst.sampled_from(LAYOUTS), data=hst.data(),
                  kind=hst.sampled_from(OTHERS), mutation=hst.sampled_from(sorted(MUTATIONS)))
def test_an_item_replaced_by_another_kind_is_a_miss(layout: str, data: Any, kind: str, mutation: str) -> None:
    sg.clear_cache()
    n = 160
    b = interrupted(layout, n, [data.draw(hst.integers(0, n), label="at")], kind)
    sg.flatten(b)
    gd, _ = sg.flatten(b)
    assert sg.cache_info()["hits"] == 1 and _flat_loops(gd)
    i = data.draw(hst.integers(0, n - 1), label="item")
    MUTATIONS[mutation](b, layout, i)
    ref = sg.generic.flatten(b)
    hypothesis.assume(ref[0] != gd)  # (the inserted item replaced by one of its kind: no change)
    assert_same_flatten(sg.flatten(b), ref)
    assert sg.cache_info()["guard_misses"], "the stale variant must not have answered"
    assert_same_flatten(sg.flatten(b), ref)  # the new structure's own variant
    new = jax.tree.map(lambda v: v + 1, ref[1])
    sg.update(b, new)
    _, now = sg.generic.flatten(b)
    assert all(x is y for x, y in zip(now.values(), new.values(), strict=True))


# -- the guards of a partial run are load-bearing -----------------------------------------


def _insert(b: Bag, layout: str, i: int) -> None:
    if layout == "list":
        b.l.insert(i, _p(-1))
    else:
        b.l = (*b.l[:i], _p(-1), *b.l[i:])


#: guard kind -> the mutation of one item of the run it alone catches
KILLS: dict[str, Callable[[Bag, str, int], None]] = {
    "type": MUTATIONS["buffer"],
    "metadata": MUTATIONS["meta"],
    "distinct": MUTATIONS["share"],
    "container": _insert,
}


@pytest.mark.parametrize("layout", ["list", "tuple"])
@pytest.mark.parametrize("kind", sorted(KILLS))
def test_each_guard_of_a_partial_run_is_load_bearing(kind: str, layout: str,
                                                      disable: Callable[[frozenset[str]], None]) -> None:
    """Without the guards of ``kind`` the loops answer the mutated list with the stale
    structure; with them it is a miss and the reference's answer."""

    def check(gd: sg.GraphDef) -> None:
        assert _flat_loops(gd) == ["a run of 80 x Param", "a run of 80 x Param"]

    assert_stale_without(kind, disable, lambda: interrupted(layout, 160, [80], "node"),
                         lambda b: KILLS[kind](b, layout, 120), check)


# -- random lists of mixed items with long stretches of Params ----------------------------


@hypothesis.settings(max_examples=25, deadline=None,
                     suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])
@hypothesis.given(layout=hst.sampled_from(LAYOUTS),
                  parts=hst.lists(hst.one_of(hst.integers(0, 150), hst.sampled_from(OTHERS)),
                                  min_size=1, max_size=8))
def test_random_mixed_items(impl: Any, layout: str, parts: list[Any]) -> None:
    sg.clear_cache()
    b = Bag()
    b.a_tied = sg.Param(np.float32(7))
    b.b_sep = "sep"
    items: list[Any] = []
    for j, part in enumerate(parts):
        if type(part) is int:
            items.extend(_p(i) for i in range(part))
        else:
            items.append(_other(part, j, b.a_tied))
    lay_out(b, layout, items)
    if layout == "attrs" and not items:
        return
    ref = check_all(impl, b)
    if impl.compiled:
        run_min = max(2, CONFIG.outline_min)
        longest = max((p for p in parts if type(p) is int), default=0)
        assert bool(_flat_loops(ref[0])) >= (longest >= run_min + 2)


# -- 30 000 at default settings ------------------------------------------------------------


@pytest.mark.parametrize("layout, kind, at", [
    ("list", "node", [15_000]), ("list", "buffer", [30_000]), ("tuple", "static", [0]),
    ("list", "tied", [0, 29_000]), ("dict", "array", [10_000]),
])
def test_thirty_thousand_interrupted_compiled_at_default_settings(layout: str, kind: str,
                                                                  at: list[int]) -> None:
    n = 30_000
    b = interrupted(layout, n, at, kind)
    ref = sg.generic.flatten(b)
    sg.flatten(b)
    got = sg.flatten(b)
    info = sg.cache_info()
    assert info["hits"] == 1 and info["declined"] == 0 and info["declined_too_large"] == 0
    assert_same_flatten(got, ref)
    assert _flat_loops(ref[0]) == _runs(n, at, CONFIG.outline_min)
    new = jax.tree.map(lambda v: v + 1, got[1])
    sg.update(b, new)
    assert sg.cache_info()["update_hits"] == 1
    _, now = sg.generic.flatten(b)
    assert all(x is y for x, y in zip(now.values(), new.values(), strict=True))
    sg.unflatten(*ref)
    twin = sg.unflatten(*ref)
    assert sg.cache_info()["unflatten_hits"] == 1
    assert_same_flatten(sg.generic.flatten(twin), ref)
