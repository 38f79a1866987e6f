"""Runs of foreign states: an NNX module or a BrainState node holding many Variables /
States of one kind (its attributes, an ``nnx.List``'s items, a list's) is one loop in the
generated flatten and update, as a run of ``sg.Param`` is (``FlattenPlanner._state_runs``),
so a module of 4 096 Params is specialized at default settings (it was declined: past
``max_steps`` unrolled).

The loop's body is one state's code through the library's layout (type, metadata item by
item, NNX's trace level, BrainState's hooks and raw-read checks), so every mutation of one
item below is a miss answered by the reference walker, and each guard kind is load-bearing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_same_flatten, assert_stale_without, outlined_flatten_hits

import specgraph as sg

nnx = pytest.importorskip("flax.nnx")
brainstate = pytest.importorskip("brainstate")


class NBag(nnx.Module):
    pass


class BBag(brainstate.nn.Module):
    pass


def _nparam(i: int, **meta: Any) -> Any:
    return nnx.Param(jnp.full((2,), float(i)), **meta)


def _bparam(i: int, **meta: Any) -> Any:
    return brainstate.ParamState(jnp.full((2,), float(i)), **meta)


#: peer -> (node class, a state of the run's kind, a state of another kind, the other kind's name)
PEERS: dict[str, tuple[type, Callable[..., Any], Callable[[Any], Any], str]] = {
    "nnx": (NBag, _nparam, lambda v: nnx.BatchStat(v), "BatchStat"),
    "brainstate": (BBag, _bparam, lambda v: brainstate.ShortTermState(v), "ShortTermState"),
}
LAYOUTS = ["attrs", "list"]


def wide(peer: str, layout: str, n: int) -> Any:
    """A module holding ``n`` states of one kind (attributes, or a list's items: an
    ``nnx.List`` for NNX) and a static and a state of another kind beside them."""
    cls, make, other, _ = PEERS[peer]
    m = cls()
    items = [make(i) for i in range(n)]
    if layout == "attrs":
        for i, x in enumerate(items):
            setattr(m, f"p{i:05d}", x)
    else:
        m.items = nnx.List(items) if peer == "nnx" else items
    m.z_static = "relu"
    m.z_state = other(jnp.zeros(3))
    return m


def items_of(m: Any, layout: str) -> list[tuple[Any, Any]]:
    if layout == "attrs":
        return [(k, v) for k, v in sorted(vars(m).items()) if k.startswith("p")]
    return list(enumerate(m.items))


def set_item(m: Any, layout: str, key: Any, value: Any) -> None:
    if layout == "attrs":
        setattr(m, key, value)
    else:
        m.items[key] = value


def value_of(state: Any) -> Any:
    return state.get_raw_value() if hasattr(state, "get_raw_value") else state.value


def _run_label(peer: str, n: int) -> str:
    return f"a run of {n} x {'Param' if peer == 'nnx' else 'ParamState'}"


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("peer", sorted(PEERS))
def test_a_run_of_foreign_states_is_one_loop_and_matches_the_reference(impl: Any, peer: str,
                                                                       layout: str) -> None:
    m = wide(peer, layout, 100)
    ref = sg.generic.flatten(m)
    got = impl.flatten(m)
    assert_same_flatten(got, ref)
    states = [s for _, s in items_of(m, layout)]
    new = jax.tree.map(lambda v: v + 1, got[1])
    impl.update(m, new)
    _, now = sg.generic.flatten(m)
    assert all(x is y for x, y in zip(now.values(), new.values(), strict=True))
    assert [s for _, s in items_of(m, layout)] == states  # written in place, not replaced
    if impl.compiled:
        assert _run_label(peer, 100) in sg.explain(got[0])
        info = sg.cache_info()
        assert info["hits"] >= 1 and info["update_hits"] >= 1
        assert outlined_flatten_hits() > 0


@pytest.mark.parametrize("peer", sorted(PEERS))
def test_four_thousand_foreign_states_are_specialized_at_default_settings(peer: str) -> None:
    n = 4096
    m = wide(peer, "attrs", n)
    ref = sg.generic.flatten(m)
    sg.flatten(m)
    got = sg.flatten(m)
    info = sg.cache_info()
    assert info["hits"] == 1 and info["declined"] == 0 and info["declined_too_large"] == 0, info
    assert_same_flatten(got, ref)
    new = jax.tree.map(lambda v: v * 2, got[1])
    sg.update(m, new)
    assert sg.cache_info()["update_hits"] == 1
    _, now = sg.generic.flatten(m)
    assert all(x is y for x, y in zip(now.values(), new.values(), strict=True))


# -- one item mutated: a miss, and the reference's answer --------------------------------


def _mutations() -> dict[str, Callable[[Any, str, str, int], None]]:
    def retype(m: Any, peer: str, layout: str, i: int) -> None:
        k, v = items_of(m, layout)[i]
        set_item(m, layout, k, PEERS[peer][2](value_of(v)))

    def remeta(m: Any, peer: str, layout: str, i: int) -> None:
        k, v = items_of(m, layout)[i]
        if peer == "nnx":
            set_item(m, layout, k, nnx.Param(value_of(v), tag="x"))
        else:
            set_item(m, layout, k, brainstate.ParamState(value_of(v), name="x"))

    def share(m: Any, peer: str, layout: str, i: int) -> None:
        items = items_of(m, layout)
        k, _ = items[i]
        set_item(m, layout, k, items[(i + 1) % len(items)][1])  # the same state twice

    def array(m: Any, peer: str, layout: str, i: int) -> None:
        k, v = items_of(m, layout)[i]
        set_item(m, layout, k, nnx.data(value_of(v)) if peer == "nnx" else value_of(v))

    return {"type": retype, "metadata": remeta, "share": share, "array": array}


MUTATIONS = _mutations()


@pytest.mark.parametrize("at", [0, 37, 79])
@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("peer", sorted(PEERS))
def test_one_item_mutated_is_a_miss_answered_by_the_reference(peer: str, layout: str, mutation: str,
                                                              at: int) -> None:
    m = wide(peer, layout, 80)
    sg.flatten(m)
    gd, _ = sg.flatten(m)
    assert sg.cache_info()["hits"] == 1 and _run_label(peer, 80) in sg.explain(gd)
    MUTATIONS[mutation](m, peer, layout, at)
    ref = sg.generic.flatten(m)
    assert ref[0] != gd
    got = sg.flatten(m)
    assert_same_flatten(got, ref)
    assert sg.cache_info()["guard_misses"], "the stale variant must not have answered"
    assert_same_flatten(sg.flatten(m), ref)  # the new structure's own variant agrees too
    new = jax.tree.map(lambda v: v + 1, ref[1])
    sg.update(m, new)
    _, now = sg.generic.flatten(m)
    assert all(x is y for x, y in zip(now.values(), new.values(), strict=True))


#: guard kind -> the mutation it alone catches in the loop
KILLS = {"type": "type", "metadata": "metadata", "distinct": "share"}


@pytest.mark.parametrize("kind", sorted(KILLS))
@pytest.mark.parametrize("peer", sorted(PEERS))
def test_each_loop_guard_is_load_bearing(peer: str, kind: str,
                                         disable: Callable[[frozenset[str]], None]) -> None:
    """Without the guards of ``kind`` the loop answers the mutated module with the stale
    structure; with them it is a miss and the reference's answer."""
    def check(gd: sg.GraphDef) -> None:
        assert _run_label(peer, 80) in sg.explain(gd)

    assert_stale_without(kind, disable, lambda: wide(peer, "attrs", 80),
                         lambda m: MUTATIONS[KILLS[kind]](m, peer, "attrs", 40), check)


def test_nnx_update_inside_another_trace_raises_and_writes_nothing(impl: Any) -> None:
    """NNX's rule, checked per item of the loop: a Variable made outside a trace is not
    written from inside it (the reference raises; nothing is written)."""
    from flax.errors import TraceContextError

    m = wide("nnx", "attrs", 80)
    _, sm = impl.flatten(m)
    before = [value_of(s) for _, s in items_of(m, "attrs")]

    @jax.jit
    def f(values: sg.StateMap) -> jax.Array:
        impl.update(m, values)
        return values[("p00000",)]

    with pytest.raises(TraceContextError):
        f(sm)
    assert all(value_of(s) is b for (_, s), b in zip(items_of(m, "attrs"), before, strict=True))


def test_brainstate_update_inside_another_trace_raises_and_writes_nothing(impl: Any) -> None:
    m = wide("brainstate", "attrs", 80)
    _, sm = impl.flatten(m)
    before = [value_of(s) for _, s in items_of(m, "attrs")]

    @jax.jit
    def f(x: jax.Array) -> jax.Array:
        impl.update(m, {**sm, ("p00040",): x})
        return x

    with pytest.raises(brainstate._error.TraceContextError):
        f(jnp.zeros(2))
    assert all(value_of(s) is b for (_, s), b in zip(items_of(m, "attrs"), before, strict=True))


def test_brainstate_hook_on_one_item_is_run(impl: Any) -> None:
    """A read hook set on one state of the run after compiling: the loop hands the call to
    the reference, which runs the hook."""
    m = wide("brainstate", "attrs", 80)
    impl.flatten(m)
    seen: list[str] = []
    m.p00050.register_hook("read", lambda ctx: seen.append("read"))
    ref_values = sg.generic.flatten(m)[1].values()
    assert seen == ["read"]
    _, sm = impl.flatten(m)
    assert seen[-1] == "read" and len(seen) >= 2
    assert all(x is y for x, y in zip(sm.values(), ref_values, strict=True))


@pytest.mark.parametrize("peer", sorted(PEERS))
def test_a_tied_state_breaks_the_run_and_stays_exact(impl: Any, peer: str) -> None:
    m = wide(peer, "attrs", 200)
    m.tied = m.p00070
    ref = sg.generic.flatten(m)
    assert_same_flatten(impl.flatten(m), ref)
    twin = impl.unflatten(*ref)
    assert twin.tied is twin.p00070
    np.testing.assert_array_equal(value_of(twin.p00199), value_of(m.p00199))


# -- the unflatten: a run of foreign states is one loop too ------------------------------


def _unflatten_loops(gd: sg.GraphDef) -> list[str]:
    from specgraph.runtime import dispatch

    built = dispatch._unflat.get(gd)
    return [] if built is None else list(built.plan.loops)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("peer", sorted(PEERS))
def test_a_run_of_foreign_states_unflattens_as_one_loop(impl: Any, peer: str, layout: str) -> None:
    """Each item made as the reference makes it, its own metadata read from the GraphDef
    (tags differ from item to item); fresh states every call."""
    make = PEERS[peer][1]
    m = wide(peer, layout, 90)
    for k, _ in items_of(m, layout):
        i = int(k[1:]) if isinstance(k, str) else k
        extra = {"tag": f"t{i % 3}"} if peer == "nnx" else {"name": f"n{i % 3}"}
        set_item(m, layout, k, make(i, **extra))
    ref = sg.generic.flatten(m)
    twin = impl.unflatten(*ref)
    assert_same_flatten(sg.generic.flatten(twin), ref)
    got = [s for _, s in items_of(twin, layout)]
    want = [s for _, s in items_of(m, layout)]
    assert [type(s) for s in got] == [type(s) for s in want]
    if peer == "nnx":
        assert [s.get_metadata() for s in got] == [s.get_metadata() for s in want]
        assert nnx.graphdef(twin) == nnx.graphdef(m)
    else:
        assert [s.name for s in got] == [s.name for s in want]
    again = impl.unflatten(*ref)
    assert all(x is not y for x, y in zip(got, [s for _, s in items_of(again, layout)], strict=True))
    if impl.compiled:
        assert _run_label(peer, 90) in " ".join(_unflatten_loops(ref[0]))
        assert sg.cache_info()["unflatten_hits"] >= 2


@pytest.mark.parametrize("peer", sorted(PEERS))
def test_four_thousand_foreign_states_unflatten_specialized_at_default_settings(peer: str) -> None:
    m = wide(peer, "attrs", 4096)
    ref = sg.generic.flatten(m)
    sg.unflatten(*ref)
    twin = sg.unflatten(*ref)
    info = sg.cache_info()
    assert info["compiled_unflattens"] == 1 and info["unflatten_hits"] == 1, info
    assert len(_unflatten_loops(ref[0])) == 1
    assert_same_flatten(sg.generic.flatten(twin), ref)


def test_nnx_unflatten_inside_a_trace_makes_variables_of_that_trace(impl: Any) -> None:
    """The loop's Variables take the call's context (made once, in the trace): an update of
    the twin inside the same trace is allowed (NNX would refuse Variables of another)."""
    m = wide("nnx", "attrs", 80)
    gd, sm = impl.flatten(m)

    @jax.jit
    def f(values: sg.StateMap) -> jax.Array:
        twin = impl.unflatten(gd, values)
        impl.update(twin, jax.tree.map(lambda v: v * 3, values))
        return twin.p00079.get_raw_value()

    np.testing.assert_array_equal(f(sm), np.full((2,), 79.0 * 3))
