"""BrainState models through specgraph, with BrainState's own functions as the oracle.

Paths are ``brainstate.graph.states(m)``'s (bare arrays are static, as BrainState
has them); values are read raw only while no BrainState trace records and no hook is
set, else through ``.value``; rebuilt States are valid at the current trace level.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_matches_reference

brainstate = pytest.importorskip("brainstate")

import specgraph as sg  # noqa: E402

bn = brainstate.nn


class Net(bn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = [bn.Linear(4, 4) for _ in range(3)]
        self.norm = bn.BatchNorm1d((5, 4))
        self.tied = self.layers[0].weight
        self.hidden = brainstate.HiddenState(jnp.zeros(4))
        self.tagged = brainstate.ParamState(jnp.ones(2), tag="fast")
        self.scale = jnp.full((2,), 3.0)  # a bare array: static for BrainState
        self.rate = 0.5


def assert_same_as_brainstate(m: Any, gd: sg.GraphDef, sm: sg.StateMap) -> None:
    ref = brainstate.graph.states(m)
    assert list(sm.keys()) == list(ref.keys())
    for p, st in ref.items():
        assert sm[p] is st._value
    assert sm.types == tuple(type(st) for st in ref.values())


def test_flatten_has_brainstate_paths(impl: Any) -> None:
    m = Net()
    gd, sm = impl.flatten(m)
    assert_same_as_brainstate(m, gd, sm)
    assert ("scale",) not in sm and ("norm", "epsilon") not in sm
    assert_matches_reference(m)


def test_bare_arrays_are_statics_kept_by_identity(impl: Any) -> None:
    m = Net()
    gd, _ = impl.flatten(m)
    hash(gd)  # arrays do not hash; the GraphDef still does
    assert impl.flatten(m)[0] == gd
    m.scale = jnp.full((2,), 3.0)  # equal values, another array: another static
    gd2, _ = impl.flatten(m)
    assert gd2 != gd
    m2 = impl.unflatten(gd2, impl.flatten(m)[1])
    assert m2.scale is m.scale and m2.norm.epsilon is m.norm.epsilon


def test_unflatten_builds_valid_states(impl: Any) -> None:
    m = Net()
    gd, sm = impl.flatten(m)
    m2 = impl.unflatten(gd, sm)
    assert type(m2) is Net and m2.tied is m2.layers[0].weight
    assert list(brainstate.graph.states(m2).keys()) == list(sm.keys())
    for (_p, a), b in zip(brainstate.graph.states(m).items(), brainstate.graph.states(m2).values(),
                         strict=True):
        assert type(b) is type(a) and b is not a
        assert b.value is a.value
        assert b._name == a._name and b.tag == a.tag
        assert b._trace_state.is_valid()
        assert b._hooks_manager is not a._hooks_manager
        assert b._level == 0 and b._been_writen is False
    assert m2.tagged.tag == {"fast"} and m2.tagged.tag is not m.tagged.tag
    x = jnp.ones((5, 4))
    np.testing.assert_array_equal(m2.layers[1](x), m.layers[1](x))
    # BrainState's own round trip takes the rebuilt model.
    g, st = brainstate.graph.treefy_split(m2)
    m3 = brainstate.graph.treefy_merge(g, st)
    np.testing.assert_array_equal(m3.layers[1](x), m.layers[1](x))


def test_update_keeps_state_identity(impl: Any) -> None:
    m = Net()
    before = dict(brainstate.graph.states(m))
    _, sm = impl.flatten(m)
    new = jax.tree.map(lambda x: x + 1, sm)
    impl.update(m, new)
    after = brainstate.graph.states(m)
    for p, st in after.items():
        assert st is before[p]
        assert st.value is new[p]


def test_reads_inside_transform_jit_are_recorded_not_baked(impl: Any) -> None:
    m = Net()
    impl.flatten(m)

    @brainstate.transform.jit
    def read() -> jax.Array:
        _, sm = impl.flatten(m)
        return sm[("hidden",)] + 1

    np.testing.assert_array_equal(read(), np.ones(4))
    m.hidden.value = jnp.full(4, 10.0)
    np.testing.assert_array_equal(read(), np.full(4, 11.0))  # a constant would still say 1


def test_hooks_run_when_set() -> None:
    m = Net()
    seen: list[str] = []
    m.hidden.register_hook("read", lambda ctx: seen.append("read"))
    m.hidden.register_hook("write_after", lambda ctx: seen.append("write"))
    sg.generic.flatten(m)
    assert seen == ["read"]
    sg.flatten(m)
    sg.flatten(m)
    assert seen == ["read"] * 3
    sg.update(m, {("hidden",): jnp.ones(4)})
    assert seen[-1] == "write" and m.hidden._been_writen


def test_raw_write_marks_the_state_written() -> None:
    m = Net()
    sg.update(m, {("tagged",): jnp.zeros(2)})
    assert m.tagged._been_writen is True
    np.testing.assert_array_equal(m.tagged.value, np.zeros(2))


def test_write_of_a_tracer_into_an_outside_state_is_refused() -> None:
    m = Net()
    before = m.tagged.value

    @jax.jit
    def f(x: jax.Array) -> jax.Array:
        sg.update(m, {("tagged",): x})
        return x

    with pytest.raises(brainstate._error.TraceContextError):
        f(jnp.zeros(2))
    assert m.tagged.value is before


def test_filters_take_brainstate_state_types() -> None:
    m = Net()
    _, params, rest = sg.split(m, brainstate.ParamState, ...)
    ref = brainstate.graph.states(m, brainstate.ParamState)
    assert list(params.keys()) == list(ref.keys())
    assert ("hidden",) in rest
    hidden = sg.states(m, brainstate.HiddenState)
    assert hidden == {("hidden",): m.hidden}


def test_jit_and_grad_on_a_brainstate_model() -> None:
    m = Net()
    x = jnp.ones((5, 4))

    @sg.jit
    def step(model: Net, x: jax.Array) -> jax.Array:
        def loss(model: Net) -> jax.Array:
            return jnp.sum(model.layers[2](model.layers[1](x)) ** 2)

        value, grads = sg.value_and_grad(loss, wrt=brainstate.ParamState)(model)
        for p, g in grads.items():
            st = sg.states(model)[p]
            st.value = jax.tree.map(lambda a, b: a - 0.01 * b, st.value, g)
        return value

    def reference(params: list[dict], x: jax.Array) -> jax.Array:
        for w in params:
            x = x @ w["weight"] + w["bias"]
        return jnp.sum(x**2)

    params = [dict(m.layers[i].weight.value) for i in (1, 2)]
    for _ in range(3):
        expected, g = jax.value_and_grad(reference)(params, x)
        params = jax.tree.map(lambda a, b: a - 0.01 * b, params, g)
        np.testing.assert_allclose(step(m, x), expected, rtol=1e-5)
    for i, w in zip((1, 2), params, strict=True):
        np.testing.assert_allclose(m.layers[i].weight.value["weight"], w["weight"], rtol=1e-5, atol=1e-7)
    assert step.trace_count == 1


def test_jit_writes_back_only_the_written_states_as_transform_jit_does(served_by: str) -> None:
    class Pair(bn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = brainstate.ParamState(jnp.zeros(2))
            self.b = brainstate.ParamState(jnp.ones(2))

    def f(model: Pair) -> jax.Array:
        model.a.value = model.a.value + model.b.value
        return model.b.value.sum()

    runs = {}
    for name in ("brainstate", "specgraph"):
        m = Pair()
        writes: list[str] = []
        m.a.register_hook("write_after", lambda ctx, writes=writes: writes.append("a"))
        m.b.register_hook("write_after", lambda ctx, writes=writes: writes.append("b"))
        step = brainstate.transform.jit(lambda m=m: f(m)) if name == "brainstate" else sg.jit(f)
        for _ in range(3):
            step() if name == "brainstate" else step(m)
        runs[name] = (m, writes)
    (ref, ref_writes), (ours, our_writes) = runs["brainstate"], runs["specgraph"]
    np.testing.assert_array_equal(ours.a.value, ref.a.value)
    assert "b" not in ref_writes and "b" not in our_writes  # only read: never written back
    assert our_writes == ["a"] * 3  # once per call (brainstate also runs it inside its trace)
    assert (ours.a._been_writen, ours.b._been_writen) == (ref.a._been_writen, ref.b._been_writen)
