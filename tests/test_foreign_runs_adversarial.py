"""Adversarial cases of runs of foreign states (NNX Variables, BrainState States as one
loop: tests/test_foreign_runs.py), from a breaker's session: a state run beside a run of
one outlined shape (the planner once sliced the node's children by item position), a
partial update of a run (once left to the reference), and the loop's per-item checks (one
item mutated after the compile, ties into and out of the run, NNX's trace rule, BrainState's
hooks), every case against the reference walker with compiled hits counted."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_same_flatten

import specgraph as sg

nnx = pytest.importorskip("flax.nnx")
brainstate = pytest.importorskip("brainstate")


class NBag(nnx.Module):
    pass


class BBag(brainstate.nn.Module):
    pass


class MyVar(nnx.Variable):
    pass


class MyState(brainstate.State):
    pass


def _state(peer: str, i: float, **meta: Any) -> Any:
    cls = nnx.Param if peer == "nnx" else brainstate.ParamState
    return cls(jnp.full((2,), float(i)), **meta)


def _bag(peer: str) -> Any:
    return NBag() if peer == "nnx" else BBag()


def _raw(s: Any) -> Any:
    return s.get_raw_value() if hasattr(s, "get_raw_value") else s.value


N = 80
LAYOUTS = {"nnx": ["attrs", "nnxlist", "list", "dict"], "brainstate": ["attrs", "list", "dict"]}
CASES = [(p, lay) for p in ("nnx", "brainstate") for lay in LAYOUTS[p]]


def build(peer: str, layout: str) -> Any:
    """A run of N states (attributes, an nnx.List's / a list's items, a dict's values), a
    state outside it and one in a sub-module (targets for ties)."""
    m = _bag(peer)
    items = [_state(peer, i) for i in range(N)]
    if layout == "attrs":
        for i, x in enumerate(items):
            setattr(m, f"p{i:03d}", x)
    elif layout == "nnxlist":
        m.items = nnx.List(items)
    elif layout == "list":
        m.items = nnx.data(items) if peer == "nnx" else items
    else:
        d = {f"k{i:03d}": x for i, x in enumerate(items)}
        m.items = nnx.data(d) if peer == "nnx" else d
    m.q_static = "relu"
    m.r_outside = _state(peer, 1000)
    sub = _bag(peer)
    sub.w = _state(peer, 2000)
    m.s_sub = sub
    return m


def _keys(layout: str) -> list[Any]:
    if layout == "attrs":
        return [f"p{i:03d}" for i in range(N)]
    if layout == "dict":
        return [f"k{i:03d}" for i in range(N)]
    return list(range(N))


def _get(m: Any, layout: str, k: Any) -> Any:
    return getattr(m, k) if layout == "attrs" else m.items[k]


def _put(m: Any, layout: str, k: Any, v: Any) -> None:
    if layout == "attrs":
        setattr(m, k, v)
    else:
        m.items[k] = v


def _mutations(peer: str) -> dict[str, Callable[[Any, str, list, int], None]]:
    other = nnx.BatchStat if peer == "nnx" else brainstate.ShortTermState
    sub = MyVar if peer == "nnx" else MyState
    meta = {"tag": "x"} if peer == "nnx" else {"name": "x"}

    def swap(m: Any, lay: str, ks: list, i: int) -> None:
        j = i + 1 if i + 1 < N else i - 1
        a, b = _get(m, lay, ks[i]), _get(m, lay, ks[j])
        _put(m, lay, ks[i], b)
        _put(m, lay, ks[j], a)

    def meta_in_place(m: Any, lay: str, ks: list, i: int) -> None:
        s = _get(m, lay, ks[i])
        if peer == "nnx":
            s.set_metadata(tag="y")
        else:
            s._name = "renamed"

    return {
        "swap": swap,  # same structure, other value objects: a hit that must return them
        "fresh": lambda m, lay, ks, i: _put(m, lay, ks[i], _state(peer, -i)),
        "other_kind": lambda m, lay, ks, i: _put(m, lay, ks[i], other(_raw(_get(m, lay, ks[i])))),
        "subclass": lambda m, lay, ks, i: _put(m, lay, ks[i], sub(_raw(_get(m, lay, ks[i])))),
        "metadata": lambda m, lay, ks, i: _put(m, lay, ks[i], _state(peer, i, **meta)),
        "meta_in_place": meta_in_place,
        "tie_to_outside": lambda m, lay, ks, i: _put(m, lay, ks[i], m.r_outside),
        "outside_tied_in": lambda m, lay, ks, i: setattr(m, "r_outside", _get(m, lay, ks[i])),
        "tie_to_sub": lambda m, lay, ks, i: _put(m, lay, ks[i], m.s_sub.w),
        "sub_tied_in": lambda m, lay, ks, i: setattr(m.s_sub, "w", _get(m, lay, ks[i])),
        "tie_inside": lambda m, lay, ks, i: _put(m, lay, ks[i], _get(m, lay, ks[(i + 5) % N])),
        "not_a_state": lambda m, lay, ks, i: _put(m, lay, ks[i], 1.5),
    }


MUTATION_NAMES = sorted(_mutations("nnx"))


@pytest.mark.parametrize("at", [0, 41, N - 1])
@pytest.mark.parametrize("mutation", MUTATION_NAMES)
@pytest.mark.parametrize(("peer", "layout"), CASES)
def test_one_item_changed_after_the_compile(peer: str, layout: str, mutation: str, at: int) -> None:
    """Compiled (a hit), one thing changed: flatten, update and unflatten answer as the reference."""
    m = build(peer, layout)
    sg.flatten(m)
    sg.flatten(m)
    assert sg.cache_info()["hits"] == 1
    _mutations(peer)[mutation](m, layout, _keys(layout), at)
    ref = sg.generic.flatten(m)
    hits = sg.cache_info()["hits"]
    assert_same_flatten(sg.flatten(m), ref)
    if mutation in ("swap", "fresh"):
        assert sg.cache_info()["hits"] == hits + 1  # the same structure: the loop answered
    else:
        assert sg.cache_info()["hits"] == hits  # the stale variant must not answer
    assert_same_flatten(sg.flatten(m), ref)
    new = jax.tree.map(lambda v: v + 1, ref[1])
    sg.update(m, new)
    _, now = sg.generic.flatten(m)
    assert all(x is y for x, y in zip(now.values(), new.values(), strict=True))
    sg.unflatten(*ref)
    twin = sg.unflatten(*ref)
    assert_same_flatten(sg.generic.flatten(twin), ref)


@pytest.mark.parametrize("peer", ["nnx", "brainstate"])
def test_a_state_run_then_a_run_of_one_outlined_shape_is_specialized(peer: str) -> None:
    """A module's run of states followed by children of one outlined shape: specialized, and
    explained (frun2: ForeignPlanning._runs slices the node's keys and children by the work
    item's index, which a state run shifts -> KeyError, declined, sg.explain raises)."""
    sg.configure(outline_min=2)
    sg.clear_cache()
    try:
        m = _bag(peer)
        m.a0 = _state(peer, 0)
        m.a1 = _state(peer, 1)
        for j in range(2):
            b = _bag(peer)
            b.w = _state(peer, 10 + j)
            b.c = (nnx.BatchStat if peer == "nnx" else brainstate.ShortTermState)(jnp.zeros(1))
            setattr(m, f"b{j}", b)
        ref = sg.generic.flatten(m)
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # "could not specialize" is a failure here
            sg.flatten(m)
            assert_same_flatten(sg.flatten(m), ref)
        assert sg.cache_info()["hits"] == 1
        assert "a run of" in sg.explain(ref[0])
    finally:
        sg.configure(outline_min=64)
        sg.clear_cache()


@pytest.mark.parametrize("peer", ["nnx", "brainstate"])
def test_a_partial_update_of_a_foreign_run_is_compiled(peer: str) -> None:
    """``sg.update(m, params)`` with one part of a split: written by generated code (frun2:
    derived._picked_writes takes only plain-State writes in a loop, so the reference writes
    the part by paths; it was compiled while the run was unrolled)."""
    m = _bag(peer)
    cls = nnx.Param if peer == "nnx" else brainstate.ParamState
    for i in range(N):
        setattr(m, f"p{i:03d}", _state(peer, i))
    m.zz = (nnx.BatchStat if peer == "nnx" else brainstate.ShortTermState)(jnp.zeros(2))
    sg.flatten(m)
    sg.flatten(m)
    _, params, _rest = sg.split(m, cls, ...)
    new = jax.tree.map(lambda v: v + 1, params)
    before = sg.cache_info()["update_hits"]
    sg.update(m, new)
    now = sg.states(m, cls)
    assert all(_raw(now[p]) is v for p, v in new.items())
    assert sg.cache_info()["update_hits"] == before + 1


@pytest.mark.parametrize("at", [0, 37, N - 1])
def test_nnx_one_variable_of_another_trace_in_the_run(at: int) -> None:
    """A module made inside a trace whose run holds one Variable made outside: the update
    raises NNX's error as the reference does (the loop checks every item's trace)."""
    outcomes = {}
    paths = (("ref", sg.generic.flatten, sg.generic.update), ("sg", sg.flatten, sg.update))
    for name, flatten, update in paths:
        sg.clear_cache()
        warm = build("nnx", "attrs")
        flatten(warm)
        flatten(warm)
        outer = nnx.Param(jnp.full((2,), -5.0))
        seen: dict[str, str] = {}

        @jax.jit
        def f(vals: Any, seen: dict = seen, flatten: Any = flatten, update: Any = update,
              outer: Any = outer) -> Any:
            m = build("nnx", "attrs")
            setattr(m, f"p{at:03d}", outer)
            _, sm = flatten(m)
            try:
                update(m, jax.tree.map(lambda v: v * 0 + 7, sm))
                seen["update"] = "ok"
            except Exception as e:
                seen["update"] = type(e).__name__
            return 0

        f(sg.generic.flatten(warm)[1])
        assert not isinstance(outer.get_raw_value(), jax.core.Tracer)  # nothing leaked out
        outcomes[name] = seen["update"]
    assert outcomes["sg"] == outcomes["ref"] == "TraceContextError"
    assert sg.cache_info()["hits"] >= 1


@pytest.mark.parametrize("hook", ["read", "write_before", "write_after"])
@pytest.mark.parametrize("at", [0, N - 1])
def test_brainstate_hook_registered_on_one_item_after_the_compile(hook: str, at: int) -> None:
    logs: dict[str, list] = {"ref": [], "sg": []}
    mods = {}
    for name in ("ref", "sg"):
        m = build("brainstate", "attrs")
        sg.flatten(m)
        sg.flatten(m)
        getattr(m, f"p{at:03d}").register_hook(hook, lambda ctx, log=logs[name]: log.append(1))
        mods[name] = m
    ref = sg.generic.flatten(mods["ref"])
    got = sg.flatten(mods["sg"])
    assert got[0] == ref[0]
    new = jax.tree.map(lambda v: v + 1, ref[1])
    sg.generic.update(mods["ref"], new)
    sg.update(mods["sg"], new)
    assert len(logs["ref"]) == len(logs["sg"]) > 0
    assert sg.cache_info()["guard_misses"].get("raw", 0) >= 1


METAS: dict[str, Callable[[int], dict[str, Any]]] = {
    "per_item_str": lambda i: {"tag": f"t{i % 3}"},
    "bool_or_int": lambda i: {"x": True if i % 2 else 1},
    "signed_zero": lambda i: {"x": 0.0 if i % 2 else -0.0},
    "equal_tuples": lambda i: {"x": (1, f"a{i - i}")},  # equal, distinct objects
    "keyset_differs": lambda i: {"a": 1} if i < 40 else {"b": 1},
}


@pytest.mark.parametrize("meta", sorted(METAS))
@pytest.mark.parametrize("peer", ["nnx", "brainstate"])
def test_metadata_variants_match_the_reference(peer: str, meta: str) -> None:
    def make() -> Any:
        m = _bag(peer)
        for i in range(N):
            setattr(m, f"p{i:03d}", _state(peer, i, **METAS[meta](i)))
        return m

    m = make()
    ref = sg.generic.flatten(m)
    sg.flatten(m)
    assert_same_flatten(sg.flatten(m), ref)
    assert sg.cache_info()["hits"] == 1
    new = jax.tree.map(lambda v: v + 1, ref[1])
    sg.update(m, new)
    assert sg.cache_info()["update_hits"] == 1
    _, now = sg.generic.flatten(m)
    assert all(x is y for x, y in zip(now.values(), new.values(), strict=True))
    gd, sm = sg.generic.flatten(m)
    sg.unflatten(gd, sm)
    twin = sg.unflatten(gd, sm)
    assert sg.cache_info()["unflatten_hits"] == 1
    assert_same_flatten(sg.generic.flatten(twin), (gd, sm))
    ref_twin = sg.generic.unflatten(gd, sm)
    for k in (f"p{i:03d}" for i in range(N)):
        a, b = getattr(twin, k), getattr(ref_twin, k)
        assert type(a) is type(b)
        if peer == "nnx":
            assert a.get_metadata() == b.get_metadata()
        else:
            assert (a.name, getattr(a, "tag", None)) == (b.name, getattr(b, "tag", None))
    if peer == "nnx":
        assert nnx.graphdef(twin) == nnx.graphdef(m)
    np.testing.assert_array_equal(_raw(twin.p005), _raw(m.p005))


@pytest.mark.parametrize("layout", ["attrs", "list"])
@pytest.mark.parametrize("peer", ["nnx", "brainstate"])
def test_a_partial_update_of_some_items_of_a_run_is_compiled(peer: str, layout: str) -> None:
    """A part holding every third item of the run (and a state outside it): the compiled
    loop over just those items writes them; the others keep their values."""
    m = build(peer, layout)
    sg.flatten(m)
    sg.flatten(m)

    def third(path: tuple, value: Any) -> bool:
        last = path[-1]
        i = int(last[1:]) if isinstance(last, str) and last[1:].isdigit() else last
        return isinstance(i, int) and i % 3 == 0

    _, part, _rest = sg.split(m, third, ...)
    assert 20 < len(part) < N
    new = jax.tree.map(lambda v: v + 1, part)
    before = dict(sg.generic.flatten(m)[1].items())
    hits = sg.cache_info()["update_hits"]
    sg.update(m, new)
    assert sg.cache_info()["update_hits"] == hits + 1
    after = sg.generic.flatten(m)[1]
    for p, v in after.items():
        assert v is (new[p] if p in new else before[p]), p
