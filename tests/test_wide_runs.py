"""Wide structures: a run of sibling states of one kind (a node's attributes, a dict's
values, a list's or tuple's items) is one loop in the generated flatten, update and
collect, not one unrolled block per state, so a node of 100 000 Params is specialized
(see ``FlattenPlanner._state_runs``).

Every item is still guarded as the unrolled code guards it: its exact type, its metadata,
its place in the distinct set, the container's length and keys, the node's attribute
names. Each mutation below, made to one item, is a miss answered by the reference walker;
without each guard kind the loop answers the mutated structure as the old one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import hypothesis
import jax
import numpy as np
import pytest
from conftest import assert_same_flatten, outlined_flatten_hits
from hypothesis import strategies as hst

import specgraph as sg
from specgraph.runtime import dispatch
from specgraph.runtime.cache import CONFIG


class Bag(sg.Node):
    pass


class Buffer(sg.State):
    pass


LAYOUTS = ["attrs", "dict", "list", "tuple"]


def _p(i: int, **meta: Any) -> sg.Param:
    return sg.Param(np.full((2,), i, np.float32), **meta)


def wide(layout: str, n: int, make: Callable[[int], Any] = _p) -> Bag:
    """A node holding ``n`` states of one kind, laid out as ``layout``, and a static and a
    state beside them."""
    b = Bag()
    items = [make(i) for i in range(n)]
    if layout == "attrs":
        for i, x in enumerate(items):
            setattr(b, f"p{i:05d}", x)
    elif layout == "dict":
        b.d = {f"k{i:05d}": x for i, x in enumerate(items)}
    elif layout == "list":
        b.d = items
    else:
        b.d = tuple(items)
    b.z_static = 3
    b.z_state = sg.State(np.zeros(3, np.float32))
    return b


def items_of(b: Bag, layout: str) -> list[tuple[Any, Any]]:
    """(key, state) of the run's items, in order."""
    if layout == "attrs":
        return [(k, v) for k, v in sorted(vars(b).items()) if k.startswith("p")]
    if layout == "dict":
        return list(b.d.items())
    return list(enumerate(b.d))


def set_item(b: Bag, layout: str, key: Any, value: Any) -> None:
    if layout == "attrs":
        setattr(b, key, value)
    elif layout == "tuple":
        b.d = (*b.d[:key], value, *b.d[key + 1:])
    else:
        b.d[key] = value


def _source(gd: sg.GraphDef, kind: str = "flatten") -> str:
    var = dispatch.variant_for(gd)
    assert var is not None
    return var.sources[kind]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_wide_run_is_one_loop_and_matches_the_reference(impl: Any, layout: str) -> None:
    b = wide(layout, 100)
    ref = sg.generic.flatten(b)
    got = impl.flatten(b)
    assert_same_flatten(got, ref)
    new = jax.tree.map(lambda v: v + 1, got[1])
    impl.update(b, new)
    _, now = sg.generic.flatten(b)
    assert all(x is y for x, y in zip(now.values(), new.values(), strict=True))
    twin = impl.unflatten(*ref)
    assert_same_flatten(sg.generic.flatten(twin), ref)
    params = sg.split(b, sg.Param, ...)[1]
    assert list(params.keys()) == [p for p in ref[1] if "z_state" not in p]
    if impl.compiled:  # (outline_min 64 and 2: 100 states of one kind are one loop)
        gd = got[0]
        assert "a run of 100 x Param" in sg.explain(gd)
        src = _source(gd)
        assert src.count("if type(") < 10  # one body, not a hundred
        assert outlined_flatten_hits() > 0


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_short_run_stays_unrolled(layout: str) -> None:
    """Below ``outline_min`` (64 by default) the states are unrolled as before."""
    b = wide(layout, CONFIG.outline_min - 1)
    sg.flatten(b)
    gd, _ = sg.flatten(b)
    assert "a run of" not in sg.explain(gd)
    assert sg.cache_info()["hits"] == 1


@pytest.mark.parametrize("layout", LAYOUTS)
def test_thirty_thousand_states_are_specialized_at_default_settings(layout: str) -> None:
    n = 30_000
    b = wide(layout, n)
    ref = sg.generic.flatten(b)
    sg.flatten(b)
    got = sg.flatten(b)
    info = sg.cache_info()
    assert info["hits"] == 1 and info["declined"] == 0 and info["declined_too_large"] == 0
    assert_same_flatten(got, ref)
    new = jax.tree.map(lambda v: v + 1, got[1])
    sg.update(b, new)
    assert sg.cache_info()["update_hits"] == 1
    _, now = sg.generic.flatten(b)
    assert all(x is y for x, y in zip(now.values(), new.values(), strict=True))


# -- one item mutated: a miss, and the reference's answer --------------------------------


def _mutations() -> dict[str, Callable[[Bag, str, int], None]]:
    def retype(b: Bag, layout: str, i: int) -> None:
        k, v = items_of(b, layout)[i]
        set_item(b, layout, k, Buffer(v.value))

    def remeta(b: Bag, layout: str, i: int) -> None:
        k, v = items_of(b, layout)[i]
        set_item(b, layout, k, sg.Param(v.value, tag="x"))

    def rename(b: Bag, layout: str, i: int) -> None:
        k, v = items_of(b, layout)[i]
        if layout == "attrs":
            delattr(b, k)
            setattr(b, k + "_", v)  # (sorts right after the old name: same position)
        elif layout == "dict":
            b.d = {(kk + "_" if kk == k else kk): vv for kk, vv in b.d.items()}
        else:
            set_item(b, layout, k, sg.Param(v.value))  # (a list has no keys: a fresh state)

    def remove(b: Bag, layout: str, i: int) -> None:
        k, _ = items_of(b, layout)[i]
        if layout == "attrs":
            delattr(b, k)
        elif layout == "dict":
            del b.d[k]
        elif layout == "list":
            del b.d[k]
        else:
            b.d = b.d[:k] + b.d[k + 1:]

    def add(b: Bag, layout: str, i: int) -> None:
        if layout == "attrs":
            setattr(b, f"p{i:05d}x", _p(-1))
        elif layout == "dict":
            b.d[f"new{i}"] = _p(-1)
        elif layout == "list":
            b.d.insert(i, _p(-1))
        else:
            b.d = (*b.d[:i], _p(-1), *b.d[i:])

    def share(b: Bag, layout: str, i: int) -> None:
        items = items_of(b, layout)
        k, _ = items[i]
        set_item(b, layout, k, items[(i + 1) % len(items)][1])  # the same Param twice

    return {"type": retype, "metadata": remeta, "rename": rename, "remove": remove, "add": add,
            "share": share}


MUTATIONS = _mutations()


@hypothesis.settings(max_examples=40, deadline=None,
                     suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])
@hypothesis.given(layout=hst.sampled_from(LAYOUTS), n=hst.integers(64, 140), data=hst.data(),
                  mutation=hst.sampled_from(sorted(MUTATIONS)))
def test_one_item_mutated_is_a_miss_answered_by_the_reference(layout: str, n: int, data: Any,
                                                               mutation: str) -> None:
    sg.clear_cache()
    b = wide(layout, n)
    sg.flatten(b)
    gd, st = sg.flatten(b)
    assert sg.cache_info()["hits"] == 1 and "a run of" in sg.explain(gd)
    i = data.draw(hst.integers(0, n - 1), label="item")
    MUTATIONS[mutation](b, layout, i)
    ref = sg.generic.flatten(b)
    del st
    got = sg.flatten(b)
    assert_same_flatten(got, ref)
    if ref[0] != gd:
        assert sg.cache_info()["guard_misses"], "the stale variant must not have answered"
    # Served again from the same cache: the variant of the new structure agrees too.
    assert_same_flatten(sg.flatten(b), ref)
    new = jax.tree.map(lambda v: v + 1, ref[1])
    sg.update(b, new)
    _, now = sg.generic.flatten(b)
    assert all(x is y for x, y in zip(now.values(), new.values(), strict=True))


def test_a_shared_state_in_a_run_stays_exact(impl: Any) -> None:
    """A state met twice breaks the run where it sits (its identity guard is unrolled);
    the rest are loops."""
    b = wide("dict", 200)
    b.d["k00150"] = b.d["k00020"]
    b.tied = b.d["k00070"]
    ref = sg.generic.flatten(b)
    assert_same_flatten(impl.flatten(b), ref)
    twin = impl.unflatten(*ref)
    assert twin.d["k00150"] is twin.d["k00020"] and twin.tied is twin.d["k00070"]
    if impl.compiled:
        assert "a run of 79 x Param" in sg.explain(ref[0])  # (k00071..k00149)


# -- every guard of the loop is load-bearing ---------------------------------------------


@pytest.fixture
def disable() -> Iterator[Callable[[frozenset[str]], None]]:
    try:
        yield dispatch._set_disabled_guards
    finally:
        dispatch._set_disabled_guards(frozenset())


#: guard kind -> (layouts, mutation) it alone catches in the loop
KILLS = {
    "type": (LAYOUTS, "type"),
    "metadata": (LAYOUTS, "metadata"),
    "distinct": (LAYOUTS, "share"),
    "container": (["dict", "list", "tuple"], "add"),
    "node_keys": (["attrs"], "add"),
}


@pytest.mark.parametrize("kind, layout", [(k, lay) for k, (lays, _) in KILLS.items() for lay in lays])
def test_each_loop_guard_is_load_bearing(kind: str, layout: str,
                                         disable: Callable[[frozenset[str]], None]) -> None:
    """Without the guards of ``kind`` the loop answers the mutated structure with the stale
    one (it differs from the reference); with them it is a miss and the reference's answer."""
    for disabled in (frozenset({kind}), frozenset()):
        disable(disabled)
        b = wide(layout, 80)
        sg.flatten(b)
        gd, _ = sg.flatten(b)
        assert "a run of 80 x Param" in sg.explain(gd)
        MUTATIONS[KILLS[kind][1]](b, layout, 40)
        ref = sg.generic.flatten(b)
        hits = sg.cache_info()["hits"]
        if disabled:
            try:
                got = sg.flatten(b)
            except Exception:
                continue  # (answered wrongly: an error where the reference answers)
            assert sg.cache_info()["hits"] == hits + 1, "the stale variant must have answered"
            with pytest.raises(AssertionError):
                assert_same_flatten(got, ref)
        else:
            assert_same_flatten(sg.flatten(b), ref)
            assert sg.cache_info()["hits"] == hits
