"""``specgraph.value_and_grad`` / ``grad`` carry the writes made inside the loss out.

As ``nnx.value_and_grad`` does: every state ``fn`` wrote (a counter, running statistics,
a ``wrt`` state itself, a state of an argument not differentiated) gets its primal value
in the caller's object after the call, standalone and inside ``specgraph.jit``. The
oracle is the same computation written by hand in pure JAX. Every test runs with the
specializer off and with generated code serving from the first call (``served_by``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_served_by
from hypothesis import given
from hypothesis import strategies as st
from jax.interpreters import ad

import specgraph as sg


class Counter(sg.State):
    """A non-Param state written inside the loss."""


class Stats(sg.State):
    """Running statistics computed from the differentiated weights (a traced value)."""


class Layer(sg.Node):
    def __init__(self, seed: int, width: int = 3) -> None:
        rng = np.random.default_rng(seed)
        self.w = sg.Param(jnp.asarray(rng.standard_normal((width, width)), jnp.float32))
        self.calls = Counter(jnp.zeros((), jnp.int32))
        self.mean = Stats(jnp.zeros((width,), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jnp.tanh(x @ self.w.value)
        self.calls.value = self.calls.value + 1
        self.mean.value = 0.9 * self.mean.value + 0.1 * y.mean(0)
        return y


class Model(sg.Node):
    def __init__(self, seed: int = 0) -> None:
        self.a = Layer(seed)
        self.b = Layer(seed + 1)
        self.shared = self.a  # one node at two paths

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.b(self.shared(self.a(x)))


def reference(params: dict, stats: dict, x: jax.Array) -> tuple[jax.Array, dict]:
    """The pure-JAX model: the loss and the statistics it leaves (a runs twice, then b)."""
    stats = dict(stats)

    def layer(name: str, h: jax.Array) -> jax.Array:
        y = jnp.tanh(h @ params[name])
        stats[name] = 0.9 * stats[name] + 0.1 * y.mean(0)
        return y

    y = layer("b", layer("a", layer("a", x)))
    return jnp.sum(y ** 2), stats


def ref_state(m: Model) -> tuple[dict, dict]:
    return ({"a": m.a.w.value, "b": m.b.w.value}, {"a": m.a.mean.value, "b": m.b.mean.value})


def loss(m: Model, x: jax.Array) -> jax.Array:
    return jnp.sum(m(x) ** 2)


def close(a: Any, b: Any) -> None:
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def leaves(node: Any) -> list[Any]:
    return jax.tree_util.tree_leaves(sg.flatten(node)[1].values())


def assert_no_tracer(node: Any) -> None:
    for v in leaves(node):
        assert not isinstance(v, jax.core.Tracer), v


X = jnp.asarray(np.random.default_rng(9).standard_normal((5, 3)), jnp.float32)


def test_writes_inside_the_loss_are_carried_out(served_by: str) -> None:
    m = Model()
    params, stats = ref_state(m)
    for step in range(1, 4):
        value, grads = sg.value_and_grad(loss)(m, X)
        (ref_value, new_stats), ref_grads = jax.value_and_grad(reference, has_aux=True)(params, stats, X)
        close(value, ref_value)
        close(grads[("a", "w")], ref_grads["a"])
        close(grads[("b", "w")], ref_grads["b"])
        assert set(grads.keys()) == {("a", "w"), ("b", "w")}
        assert int(m.a.calls.value) == 2 * step and int(m.b.calls.value) == step
        close(m.a.mean.value, new_stats["a"])  # primal values of traced writes
        close(m.b.mean.value, new_stats["b"])
        stats = new_stats
        assert m.shared is m.a
        assert_no_tracer(m)
    # the differentiated weights were only read: the very same objects
    assert m.a.w.value is params["a"] and m.b.w.value is params["b"]
    assert_served_by(served_by)


def test_grad_carries_writes_out_too(served_by: str) -> None:
    m = Model()
    params, stats = ref_state(m)
    for _ in range(2):
        g, aux = sg.grad(lambda m, x: (loss(m, x), m.a.calls.value), has_aux=True)(m, X)
    assert int(aux) == 4  # fn saw the count written back by the first call
    assert int(m.a.calls.value) == 4
    ref_g = jax.grad(lambda p: reference(p, stats, X)[0])(params)
    close(g[("a", "w")], ref_g["a"])
    assert_no_tracer(m)
    assert_served_by(served_by)


def test_a_written_wrt_state_gets_its_primal_value(served_by: str) -> None:
    m = Model()
    w0 = m.a.w.value

    def halve_then_loss(m: Model, x: jax.Array) -> jax.Array:
        m.a.w.value = m.a.w.value * 0.5  # a differentiated state written
        return loss(m, x)

    _, g = sg.value_and_grad(halve_then_loss)(m, X)
    close(m.a.w.value, w0 * 0.5)
    params, stats = ref_state(Model())
    ref_g = jax.grad(lambda p: reference({**p, "a": p["a"] * 0.5}, stats, X)[0])(params)
    close(g[("a", "w")], ref_g["a"])
    assert_no_tracer(m)
    assert_served_by(served_by)


def test_states_of_other_arguments_and_keywords_are_written_back(served_by: str) -> None:
    """An argument not differentiated (metrics) and a keyword argument: fn sees copies
    sharing what the caller's objects share; traced writes come out as primal values."""
    m = Model()
    metrics = sg.State(jnp.zeros(()))  # a bare State argument
    log = {"last": sg.State(jnp.zeros(())), "model": m}  # shares m with argument 0

    def loss_logged(m: Model, metrics: sg.State, *, log: dict) -> jax.Array:
        assert log["model"] is m  # sharing across arguments is kept
        value = loss(m, X)
        metrics.value = metrics.value + value
        log["last"].value = value
        return value

    value, grads = sg.value_and_grad(loss_logged)(m, metrics, log=log)
    close(metrics.value, value)
    close(log["last"].value, value)
    assert int(m.a.calls.value) == 2
    for node in (m, [metrics], log):
        assert_no_tracer(node)
    params, stats = ref_state(Model())
    close(grads[("a", "w")], jax.grad(lambda p: reference(p, stats, X)[0])(params)["a"])
    assert_served_by(served_by)


def test_inside_jit_no_jvp_tracer_is_left_and_results_match(served_by: str) -> None:
    m, ref = Model(), Model()
    seen: list[Any] = []

    @sg.jit
    def step(m: Model, x: jax.Array) -> jax.Array:
        value, grads = sg.value_and_grad(loss)(m, x)
        seen.extend(leaves(m))  # the states of the traced copy right after the call
        for path, g in grads.items():
            st_ = m.a.w if path == ("a", "w") else m.b.w
            st_.value = st_.value - 0.1 * g
        return value

    for _ in range(3):
        value = step(m, X)
        ref_value, ref_grads = sg.value_and_grad(loss)(ref, X)
        ref.a.w.value = ref.a.w.value - 0.1 * ref_grads[("a", "w")]
        ref.b.w.value = ref.b.w.value - 0.1 * ref_grads[("b", "w")]
        close(value, ref_value)
    assert step.trace_count == 1
    assert seen and not any(isinstance(v, ad.JVPTracer) for v in seen)
    for a, b in zip(leaves(m), leaves(ref), strict=True):
        close(a, b)
    assert int(m.a.calls.value) == 6
    assert_no_tracer(m)
    assert_no_tracer(ref)
    assert_served_by(served_by)


def test_structural_change_inside_the_loss_is_an_error_and_writes_nothing(served_by: str) -> None:
    m = Model()

    def grows(m: Model, x: jax.Array) -> jax.Array:
        m.b.calls.value = m.b.calls.value + 1
        m.extra = sg.State(jnp.ones(()))
        return loss(m, x)

    with pytest.raises(ValueError, match="changed the structure"):
        sg.value_and_grad(grows)(m, X)
    assert not hasattr(m, "extra")
    assert int(m.b.calls.value) == 0


def test_a_non_array_write_names_the_state(served_by: str) -> None:
    m = Model()

    def writes_text(m: Model, x: jax.Array) -> jax.Array:
        value = loss(m, x)
        m.b.calls.value = "many"
        return value

    with pytest.raises(TypeError, match=r"'b', 'calls'.*specgraph.value_and_grad"):
        sg.value_and_grad(writes_text)(m, X)
    assert int(m.b.calls.value) == 0


@given(st.lists(st.sampled_from(["a", "b", "shared", "wa", "wb"]), min_size=1, max_size=6))
def test_random_write_sequences_match_pure_jax(ops: list[str]) -> None:
    """A random sequence of layer calls and writes into the differentiated weights: the
    caller's states after the call and the gradients equal the pure-JAX reference."""
    m = Model()
    params, stats = ref_state(m)
    counts = {"a": 0, "b": 0}

    def run(m: Model, x: jax.Array) -> jax.Array:
        for op in ops:
            if op == "wa":
                m.a.w.value = m.a.w.value * 0.9
            elif op == "wb":
                m.b.w.value = m.b.w.value + 0.1
            else:
                x = getattr(m, op)(x)
        return jnp.sum(x ** 2)

    def ref_run(p: dict, s: dict) -> tuple[jax.Array, tuple[dict, dict]]:
        p, s, x = dict(p), dict(s), X
        for op in ops:
            if op == "wa":
                p["a"] = p["a"] * 0.9
            elif op == "wb":
                p["b"] = p["b"] + 0.1
            else:
                name = "a" if op == "shared" else op
                y = jnp.tanh(x @ p[name])
                s[name] = 0.9 * s[name] + 0.1 * y.mean(0)
                x = y
        return jnp.sum(x ** 2), (p, s)

    for op in ops:
        if op in ("a", "b", "shared"):
            counts["a" if op == "shared" else op] += 1
    value, grads = sg.value_and_grad(run)(m, X)
    (ref_value, (new_p, new_s)), ref_g = jax.value_and_grad(ref_run, has_aux=True)(params, stats)
    close(value, ref_value)
    for name in ("a", "b"):
        layer = getattr(m, name)
        close(grads[(name, "w")], ref_g[name])
        close(layer.w.value, new_p[name])
        close(layer.mean.value, new_s[name])
        assert int(layer.calls.value) == counts[name]
        if f"w{name}" not in ops:
            assert layer.w.value is params[name]  # only read: the same object
    assert_no_tracer(m)
