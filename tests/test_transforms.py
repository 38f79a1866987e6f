"""``specgraph.jit``, ``specgraph.value_and_grad`` and ``specgraph.grad``.

Reference for every numeric check: the hand-written pure JAX version of the same
computation on the equivalent nested dict of arrays (``jax.jit`` +
``jax.value_and_grad``). Retracing is observed through ``JitFunction.trace_count``;
which states a call wrote is observed on the caller's side (a state only read keeps
its very value object; a NumPy value only read stays a NumPy array).
"""

from __future__ import annotations

import itertools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import specgraph as sg

# --------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------


class Weight(sg.Param):
    """A Param subclass, to filter on."""


class Bias(sg.Param):
    """Another Param subclass."""


class Linear(sg.Node):
    def __init__(self, din: int, dout: int, seed: int, dtype: Any = jnp.float32) -> None:
        rng = np.random.default_rng(seed)
        self.din = din
        self.dout = dout
        self.w = Weight(jnp.asarray(rng.standard_normal((din, dout)) / np.sqrt(din), dtype=dtype))
        self.b = Bias(jnp.asarray(0.1 * rng.standard_normal((dout,)), dtype=dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        return x @ self.w.value + self.b.value


class MLP(sg.Node):
    def __init__(self, sizes: list[int], seed: int = 0, dtype: Any = jnp.float32) -> None:
        self.layers = [
            Linear(a, b, seed * 100 + i, dtype) for i, (a, b) in enumerate(itertools.pairwise(sizes))
        ]
        self.steps = sg.State(jnp.zeros((), jnp.int32))  # a non-Param state

    def __call__(self, x: jax.Array) -> jax.Array:
        *hidden, last = self.layers
        for layer in hidden:
            x = jnp.tanh(layer(x))
        return last(x)


class Box(sg.Node):
    """A bag of attributes."""

    def __init__(self, **kw: Any) -> None:
        for k, v in kw.items():
            setattr(self, k, v)


class Optimizer(sg.Node):
    """An optax optimizer as a graph node (as in examples/train_mlp.py)."""

    def __init__(self, model: sg.Node, tx: optax.GradientTransformation) -> None:
        self.model = model
        self.tx = tx
        self.opt_state = sg.State(tx.init(self.params()))

    def params(self) -> sg.StateMap:
        return sg.split(self.model, sg.Param, ...)[1]

    def update(self, grads: sg.StateMap) -> None:
        params = self.params()
        updates, self.opt_state.value = self.tx.update(grads, self.opt_state.value, params)
        sg.update(self.model, optax.apply_updates(params, updates))


def to_dict(model: MLP) -> dict[str, Any]:
    """The equivalent nested dict of arrays (the very same array objects)."""
    return {"layers": [{"b": lin.b.value, "w": lin.w.value} for lin in model.layers]}


def dict_forward(params: dict[str, Any], x: jax.Array) -> jax.Array:
    *hidden, last = params["layers"]
    for p in hidden:
        x = jnp.tanh(x @ p["w"] + p["b"])
    return x @ last["w"] + last["b"]


def dict_at(tree: dict[str, Any], path: tuple) -> Any:
    for k in path:
        tree = tree[k]
    return tree


def mse(model: MLP, x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean((model(x) - y) ** 2)


def dict_mse(params: dict[str, Any], x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean((dict_forward(params, x) - y) ** 2)


def data(n: int = 16, din: int = 4, dout: int = 2, seed: int = 0) -> tuple[jax.Array, jax.Array]:
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (n, din)).astype(np.float32)
    y = np.sin(2 * x[:, :dout]) + 0.5 * x[:, -dout:] ** 2
    return jnp.asarray(x), jnp.asarray(y.astype(np.float32))


SIZES = [4, 8, 8, 2]


def close(a: Any, b: Any, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)


def assert_grads_match(grads: sg.StateMap, ref: dict[str, Any], **tol: float) -> None:
    assert len(grads) > 0
    for path, g in grads.items():
        close(g, dict_at(ref, path), **tol)


# --------------------------------------------------------------------------------------
# equality with hand-written pure JAX
# --------------------------------------------------------------------------------------


def test_training_loop_matches_pure_jax_loss_curve() -> None:
    x, y = data()
    model = MLP(SIZES)
    params = to_dict(model)
    tx = optax.adam(1e-2)
    opt = Optimizer(model, tx)
    opt_state = tx.init(params)

    @sg.jit
    def sg_step(opt: Optimizer, x: jax.Array, y: jax.Array) -> jax.Array:
        loss, grads = sg.value_and_grad(mse)(opt.model, x, y)
        opt.update(grads)
        opt.model.steps.value = opt.model.steps.value + 1
        return loss

    @jax.jit
    def jax_step(params: Any, opt_state: Any, x: jax.Array, y: jax.Array) -> tuple[Any, Any, jax.Array]:
        loss, grads = jax.value_and_grad(dict_mse)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    w0 = model.layers[0].w
    sg_losses, jax_losses = [], []
    for _ in range(25):
        sg_losses.append(float(sg_step(opt, x, y)))
        params, opt_state, loss = jax_step(params, opt_state, x, y)
        jax_losses.append(float(loss))

    close(sg_losses, jax_losses)
    assert sg_losses[-1] < 0.5 * sg_losses[0]  # it trains
    assert sg_step.trace_count == 1
    assert model.layers[0].w is w0  # the caller's State objects, updated in place
    assert int(model.steps.value) == 25
    for i, lin in enumerate(model.layers):
        close(lin.w.value, params["layers"][i]["w"])
        close(lin.b.value, params["layers"][i]["b"])
    # the optimizer state is the same pytree of moments
    sg_mu = opt.opt_state.value[0].mu
    ref_mu = opt_state[0].mu
    assert isinstance(sg_mu, sg.StateMap)
    for path, v in sg_mu.items():
        close(v, dict_at(ref_mu, path))


def test_jit_forward_matches_jax_jit() -> None:
    x, _ = data()
    model = MLP(SIZES)
    out = sg.jit(lambda m, x: m(x))(model, x)
    ref = jax.jit(dict_forward)(to_dict(model), x)
    close(out, ref)


def test_value_and_grad_matches_jax() -> None:
    x, y = data()
    model = MLP(SIZES)
    loss, grads = sg.value_and_grad(mse)(model, x, y)
    ref_loss, ref_grads = jax.value_and_grad(dict_mse)(to_dict(model), x, y)
    close(loss, ref_loss)
    assert isinstance(grads, sg.StateMap)
    assert grads.paths == sg.split(model, sg.Param, ...)[1].paths
    assert_grads_match(grads, ref_grads)
    g = sg.grad(mse)(model, x, y)
    assert g.paths == grads.paths
    assert_grads_match(g, ref_grads)


def test_value_and_grad_has_aux() -> None:
    x, y = data()
    model = MLP(SIZES)

    def loss_aux(m: MLP, x: jax.Array, y: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        pred = m(x)
        return jnp.mean((pred - y) ** 2), {"pred": pred}

    def dict_loss_aux(p: Any, x: jax.Array, y: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        pred = dict_forward(p, x)
        return jnp.mean((pred - y) ** 2), {"pred": pred}

    (loss, aux), grads = sg.value_and_grad(loss_aux, has_aux=True)(model, x, y)
    (ref_loss, ref_aux), ref_grads = jax.value_and_grad(dict_loss_aux, has_aux=True)(to_dict(model), x, y)
    close(loss, ref_loss)
    close(aux["pred"], ref_aux["pred"])
    assert_grads_match(grads, ref_grads)

    g, aux2 = sg.grad(loss_aux, has_aux=True)(model, x, y)
    assert_grads_match(g, ref_grads)
    close(aux2["pred"], ref_aux["pred"])


def test_value_and_grad_argnums_tuple() -> None:
    x, y = data()
    enc, dec = MLP([4, 8], seed=1), MLP([8, 2], seed=2)

    def loss(enc: MLP, scale: jax.Array, dec: MLP) -> jax.Array:
        return jnp.mean((dec(jnp.tanh(enc(x)) * scale) - y) ** 2)

    def dict_loss(enc: Any, scale: jax.Array, dec: Any) -> jax.Array:
        return jnp.mean((dict_forward(dec, jnp.tanh(dict_forward(enc, x)) * scale) - y) ** 2)

    scale = jnp.float32(1.5)
    val, (g_enc, g_dec) = sg.value_and_grad(loss, argnums=(0, 2))(enc, scale, dec)
    ref_val, (r_enc, r_dec) = jax.value_and_grad(dict_loss, argnums=(0, 2))(to_dict(enc), scale, to_dict(dec))
    close(val, ref_val)
    assert_grads_match(g_enc, r_enc)
    assert_grads_match(g_dec, r_dec)

    # a single non-zero argnum gives a single StateMap
    g = sg.grad(loss, argnums=2)(enc, scale, dec)
    assert isinstance(g, sg.StateMap)
    assert_grads_match(g, r_dec)


def test_value_and_grad_wrt_filters() -> None:
    x, y = data()
    model = MLP(SIZES)
    _, ref = jax.value_and_grad(dict_mse)(to_dict(model), x, y)

    gw = sg.grad(mse, wrt=Weight)(model, x, y)
    assert set(gw.paths) == {("layers", i, "w") for i in range(3)}
    assert all(t is Weight for t in gw.types)
    assert_grads_match(gw, ref)

    gb = sg.grad(mse, wrt=Bias)(model, x, y)
    assert set(gb.paths) == {("layers", i, "b") for i in range(3)}
    assert_grads_match(gb, ref)

    # a predicate filter: only the last layer
    last = sg.grad(mse, wrt=sg.All(sg.Param, lambda path, value: path[1] == 2))(model, x, y)
    assert set(last.paths) == {("layers", 2, "b"), ("layers", 2, "w")}
    assert_grads_match(last, ref)

    # non-Param states (model.steps) are never differentiated by default
    assert ("steps",) not in sg.grad(mse)(model, x, y)


def test_grad_of_tied_weight_is_summed_once() -> None:
    a = jnp.arange(1.0, 4.0)
    tied = sg.Param(a)
    enc, dec = Box(w=tied), Box(w=tied)
    root = Box(enc=enc, dec=dec)
    g = sg.grad(lambda r: jnp.sum(r.enc.w.value * r.dec.w.value * r.enc.w.value))(root)
    assert len(g) == 1  # one State, one gradient
    (path,) = g.paths
    assert path in (("dec", "w"), ("enc", "w"))
    close(g[path], jax.grad(lambda v: jnp.sum(v * v * v))(a))


def test_grads_apply_with_update() -> None:
    x, y = data()
    model = MLP(SIZES)
    loss0, grads = sg.value_and_grad(mse)(model, x, y)
    params = sg.split(model, sg.Param, ...)[1]
    sg.update(model, jax.tree.map(lambda p, g: p - 0.1 * g, params, grads))
    assert float(mse(model, x, y)) < float(loss0)


# --------------------------------------------------------------------------------------
# jit: what crosses the boundary
# --------------------------------------------------------------------------------------


def test_output_pytrees_of_arrays() -> None:
    x, _ = data()
    model = MLP(SIZES)

    @sg.jit
    def f(m: MLP, x: jax.Array) -> Any:
        h = m(x)
        return {"out": h, "pair": (h.sum(), [h.mean(), None]), "n": 3}

    out = f(model, x)
    assert set(out) == {"n", "out", "pair"}
    assert isinstance(out["out"], jax.Array)
    assert isinstance(out["pair"], tuple) and isinstance(out["pair"][1], list)
    assert out["pair"][1][1] is None
    assert out["n"] == 3
    ref = dict_forward(to_dict(model), x)
    close(out["out"], ref)
    close(out["pair"][0], ref.sum(), rtol=1e-4)
    close(out["pair"][1][0], ref.mean(), rtol=1e-4)
    assert sg.jit(lambda m: None)(model) is None


def test_returning_model_or_subnode_gives_live_objects() -> None:
    model = MLP(SIZES)
    layer1, w0, steps = model.layers[1], model.layers[0].w, model.steps

    @sg.jit
    def f(m: MLP) -> Any:
        m.steps.value = m.steps.value + 1
        return m, m.layers[1], m.layers[0].w, [m.steps], m.layers[1](jnp.ones((1, 8)))

    m, l1, w, sts, y = f(model)
    assert m is model
    assert l1 is layer1
    assert w is w0
    assert sts[0] is steps
    assert int(steps.value) == 1
    assert isinstance(y, jax.Array) and y.shape == (1, 8)

    # a bare State argument, written and returned
    s = sg.State(jnp.float32(2.0))
    out = sg.jit(lambda s: (setattr(s, "value", s.value * 3), s)[1])(s)
    assert out is s
    assert float(s.value) == 6.0


def test_fresh_objects_returned_hold_arguments_states_live() -> None:
    model = MLP(SIZES)
    w0 = model.layers[0].w

    @sg.jit
    def f(m: MLP) -> Any:
        return Box(w=m.layers[0].w, fresh=sg.State(m.layers[0].w.value * 2))

    box = f(model)
    assert isinstance(box, Box)
    assert box.w is w0  # came in as an argument: the caller's object
    assert isinstance(box.fresh, sg.State) and box.fresh is not w0
    assert isinstance(box.fresh.value, jax.Array)  # a concrete array, not a tracer
    close(box.fresh.value, w0.value * 2)


def test_written_states_reach_caller_with_identity_kept() -> None:
    x, _ = data()
    model = MLP(SIZES)
    before = sg.states(model)
    values = {p: s.value for p, s in before.items()}

    @sg.jit
    def f(m: MLP, x: jax.Array) -> jax.Array:
        m.steps.value = m.steps.value + 1
        m.layers[2].b.value = m.layers[2].b.value * 2
        return m(x)

    f(model, x)
    f(model, x)
    after = sg.states(model)
    assert list(after) == list(before)
    for p in before:
        assert after[p] is before[p]  # the same State objects
    assert int(model.steps.value) == 2
    close(model.layers[2].b.value, values[("layers", 2, "b")] * 4)
    # read-only states: the very same value objects, untouched
    written = {("steps",), ("layers", 2, "b")}
    for p, s in after.items():
        if p not in written:
            assert s.value is values[p], p


def test_read_only_states_produce_no_outputs() -> None:
    # Side channel: a NumPy value only read stays the very NumPy array (a written-back
    # value would come back as a jax.Array); a written one becomes a jax.Array.
    ro = np.arange(3.0, dtype=np.float32)
    rw = np.ones(3, dtype=np.float32)
    box = Box(ro=sg.State(ro), rw=sg.State(rw), same=sg.State(np.zeros(3, np.float32)), leaf=np.ones(2))

    @sg.jit
    def f(b: Box) -> jax.Array:
        b.rw.value = b.rw.value + b.ro.value
        b.same.value = b.same.value  # re-assigning the value it holds is not a write
        return b.ro.value.sum() + b.leaf.sum()

    close(f(box), 5.0)
    assert box.ro.value is ro
    assert box.same.value is not None and isinstance(box.same.value, np.ndarray)
    assert isinstance(box.leaf, np.ndarray)
    assert isinstance(box.rw.value, jax.Array)
    close(box.rw.value, [1.0, 2.0, 3.0])


def test_bare_array_leaves_written_in_nodes() -> None:
    box = Box(a=np.ones(3, np.float32), p=sg.Param(jnp.ones(3)))

    @sg.jit
    def f(b: Box) -> None:
        b.a = b.a * 2

    f(box)
    assert isinstance(box.a, jax.Array)
    close(box.a, [2.0, 2.0, 2.0])


def test_sharing_across_arguments() -> None:
    model = MLP(SIZES)
    w = model.layers[0].w
    other = Box(w=w, layer=model.layers[0])

    @sg.jit
    def f(m: MLP, o: Box) -> Any:
        # the same objects, seen through two arguments
        assert o.w is m.layers[0].w
        assert o.layer is m.layers[0]
        m.layers[0].w.value = m.layers[0].w.value + 1
        return o.w.value  # the value written through the other argument

    old = w.value
    out = f(model, other)
    close(out, old + 1)
    assert other.w is w and model.layers[0].w is w
    close(w.value, old + 1)

    # the same node passed twice
    g = sg.jit(lambda a, b: (a is b, a.steps.value + b.steps.value))
    same, _ = g(model, model)
    assert same is True
    same, _ = g(model, MLP(SIZES))
    assert same is False
    assert g.trace_count == 2  # the sharing pattern is part of the structure


def test_kwargs_are_dynamic_arguments() -> None:
    x, _ = data()
    model = MLP(SIZES)
    f = sg.jit(lambda m, *, x, scale: m(x) * scale)
    close(f(model, x=x, scale=jnp.float32(2.0)), dict_forward(to_dict(model), x) * 2)
    close(f(model, x=x, scale=jnp.float32(3.0)), dict_forward(to_dict(model), x) * 3)
    assert f.trace_count == 1


# --------------------------------------------------------------------------------------
# jit: retracing
# --------------------------------------------------------------------------------------


def _sum_all(m: Any) -> jax.Array:
    return sum(jnp.sum(v) for v in jax.tree.leaves(sg.flatten(m)[1]))


def test_equal_structures_reuse_the_compiled_function() -> None:
    f = sg.jit(_sum_all)
    a, b = MLP(SIZES, seed=0), MLP(SIZES, seed=1)
    ra, rb = f(a), f(b)
    assert f.trace_count == 1
    close(ra, _sum_all(a), rtol=1e-4)
    close(rb, _sum_all(b), rtol=1e-4)
    # new values written outside: no retrace, the new values are used
    a.layers[0].w.value = a.layers[0].w.value + 1
    close(f(a), _sum_all(a), rtol=1e-4)
    assert f.trace_count == 1


def test_retrace_on_shape_or_dtype_change() -> None:
    f = sg.jit(_sum_all)
    f(MLP(SIZES))
    assert f.trace_count == 1
    f(MLP([4, 8, 3]))  # another structure
    assert f.trace_count == 2
    m = MLP(SIZES)
    m.layers[0].b.value = jnp.zeros(9)  # same structure, another shape
    f(m)
    assert f.trace_count == 3
    f(MLP(SIZES, dtype=jnp.bfloat16))  # another dtype
    assert f.trace_count == 4
    f(MLP(SIZES))
    assert f.trace_count == 4


def test_retrace_when_structure_changes_between_calls() -> None:
    x = jnp.ones((2, 4))
    model = MLP([4, 4, 4])

    @sg.jit
    def f(m: MLP, x: jax.Array) -> jax.Array:
        y = m(x)
        return y * getattr(m, "scale", 1) + sum(s.value for s in getattr(m, "extra", []))

    base = f(model, x)
    # a static attribute added, then changed: retraced, never a stale result
    model.scale = 2
    close(f(model, x), base * 2)
    model.scale = 3
    close(f(model, x), base * 3)
    assert f.trace_count == 3
    # a list of States added, then grown
    model.extra = [sg.State(jnp.float32(1.0))]
    close(f(model, x), base * 3 + 1)
    model.extra.append(sg.State(jnp.float32(10.0)))
    close(f(model, x), base * 3 + 11)
    assert f.trace_count == 5
    # a layer appended: the forward pass changes
    model.layers.append(Linear(4, 4, seed=7))
    ref = dict_forward(to_dict(model), x) * 3 + 11
    close(f(model, x), ref)
    assert f.trace_count == 6
    # back to a structure seen before: the cached trace is reused
    model.layers.pop()
    close(f(model, x), base * 3 + 11)
    assert f.trace_count == 6


def test_python_scalars_in_arguments_are_static() -> None:
    model = MLP(SIZES)
    f = sg.jit(lambda m, k: m.layers[0].b.value * k)
    b = model.layers[0].b.value
    close(f(model, 2), b * 2)
    close(f(model, 2), b * 2)
    assert f.trace_count == 1
    close(f(model, 3), b * 3)
    assert f.trace_count == 2


def test_state_written_with_new_shape_retraces_next_call() -> None:
    box = Box(buf=sg.State(jnp.zeros(2)))

    @sg.jit
    def grow(b: Box) -> int:
        b.buf.value = jnp.concatenate([b.buf.value, jnp.ones(1)])
        return b.buf.value.shape[0]

    assert grow(box) == 3
    assert grow(box) == 4
    assert box.buf.value.shape == (4,)
    assert grow.trace_count == 2


# --------------------------------------------------------------------------------------
# jit: structural changes inside fn are rejected
# --------------------------------------------------------------------------------------


def _add_attr(m: MLP) -> None:
    m.extra = sg.State(jnp.ones(1))


def _del_attr(m: MLP) -> None:
    del m.steps


def _replace_state(m: MLP) -> None:
    m.layers[0].w = Weight(m.layers[0].w.value * 2)


def _replace_node(m: MLP) -> None:
    old = m.layers[1]
    new = Linear.__new__(Linear)
    new.__dict__.update(din=old.din, dout=old.dout, w=Weight(old.w.value), b=Bias(old.b.value))
    m.layers[1] = new


def _swap_nodes(m: MLP) -> None:
    m.layers[0], m.layers[1] = m.layers[1], m.layers[0]


def _grow_list(m: MLP) -> None:
    m.layers.append(Linear(2, 2, seed=3))


def _change_static(m: MLP) -> None:
    m.layers[0].din = 5


def _state_to_array(m: MLP) -> None:
    m.steps = m.steps.value


@pytest.mark.parametrize(
    "change",
    [
        _add_attr,
        _del_attr,
        _replace_state,
        _replace_node,
        _swap_nodes,
        _grow_list,
        _change_static,
        _state_to_array,
    ],
)
def test_structural_change_inside_fn_is_rejected(change: Any) -> None:
    model = MLP([4, 8, 8, 2])
    keys = list(vars(model))
    layers = list(model.layers)
    states = sg.states(model)
    values = {p: s.value for p, s in states.items()}

    @sg.jit
    def f(m: MLP) -> None:
        m.steps.value = m.steps.value + 1  # a write as well: it must not leak out either
        change(m)

    with pytest.raises(ValueError, match="changed the structure"):
        f(model)
    # the caller's objects are unchanged: same keys, nodes, States, value objects
    assert list(vars(model)) == keys
    assert model.layers == layers
    assert sg.states(model) == states
    for p, s in sg.states(model).items():
        assert s.value is values[p]
    assert model.layers[0].din == 4


def test_structural_change_outside_fn_is_fine() -> None:
    model = MLP(SIZES)
    f = sg.jit(_sum_all)
    f(model)
    _add_attr(model)
    close(f(model), _sum_all(model), rtol=1e-4)
    assert f.trace_count == 2


# --------------------------------------------------------------------------------------
# jit: static and donated arguments
# --------------------------------------------------------------------------------------


def test_static_argnums() -> None:
    model = MLP(SIZES)
    b = model.layers[0].b.value
    calls: list[Any] = []

    @sg.jit
    def plain(m: MLP) -> jax.Array:
        return m.layers[0].b.value

    def fn(m: MLP, mode: str, k: jax.Array) -> jax.Array:
        calls.append(mode)
        b = m.layers[0].b.value
        return b * k if mode == "scale" else b + k

    f = sg.jit(fn, static_argnums=(1,))
    close(f(model, "scale", jnp.float32(2.0)), b * 2)
    close(f(model, "scale", jnp.float32(5.0)), b * 5)  # a dynamic array argument: no retrace
    assert f.trace_count == 1
    close(f(model, "shift", jnp.float32(2.0)), b + 2)  # a new static value retraces
    assert f.trace_count == 2
    close(f(model, "scale", jnp.float32(3.0)), b * 3)  # seen before: reused
    assert f.trace_count == 2
    assert calls == ["scale", "shift"]  # fn only runs when tracing

    g = sg.jit(lambda m, k: m.layers[0].b.value * k, static_argnums=-1)
    g(model, 2)
    g(model, 2)
    g(model, 4)
    assert g.trace_count == 2
    close(plain(model), b)


def test_static_argnames() -> None:
    model = MLP(SIZES)
    b = model.layers[0].b.value
    f = sg.jit(
        lambda m, *, shape, act: act(jnp.broadcast_to(m.layers[0].b.value, shape)),
        static_argnames=("shape", "act"),
    )
    out = f(model, shape=(2, 8), act=jnp.tanh)
    assert out.shape == (2, 8)
    close(out[1], jnp.tanh(b))
    f(model, shape=(2, 8), act=jnp.tanh)
    assert f.trace_count == 1
    assert f(model, shape=(3, 8), act=jnp.tanh).shape == (3, 8)
    assert f.trace_count == 2
    close(f(model, shape=(3, 8), act=jnp.sin)[0], jnp.sin(b))
    assert f.trace_count == 3
    # a single name as a string
    h = sg.jit(lambda m, n: m.layers[0].b.value[:n], static_argnames="n")
    assert h(model, n=3).shape == (3,)
    assert h(model, n=5).shape == (5,)
    assert h.trace_count == 2


def test_static_argnums_with_a_graph_argument() -> None:
    model = MLP(SIZES)
    box = Box(p=sg.Param(jnp.ones(3)))
    f = sg.jit(lambda static_n, b: b.p.value * static_n, static_argnums=0)
    close(f(2, box), [2.0] * 3)
    close(f(2, box), [2.0] * 3)
    assert f.trace_count == 1
    assert isinstance(model, MLP)


@pytest.mark.filterwarnings("ignore:Some donated buffers were not usable")
def test_donate_argnums() -> None:
    x, y = data()
    model = MLP(SIZES)
    ref_params = to_dict(MLP(SIZES))  # equal values, other array objects (not donated)
    ro = Box(s=sg.State(jnp.float32(0.5)))  # not donated: only read
    ro_value = ro.s.value

    @sg.jit
    def ref_step(p: Any, x: jax.Array, y: jax.Array, lr: jax.Array) -> tuple[Any, jax.Array]:
        loss, g = jax.value_and_grad(dict_mse)(p, x, y)
        return jax.tree.map(lambda a, b: a - lr * b, p, g), loss

    def step(m: MLP, r: Box, x: jax.Array, y: jax.Array) -> jax.Array:
        loss, g = sg.value_and_grad(mse)(m, x, y)
        params = sg.split(m, sg.Param, ...)[1]
        sg.update(m, jax.tree.map(lambda p, g: p - r.s.value * g, params, g))
        return loss

    f = sg.jit(step, donate_argnums=0)
    states = sg.states(model)
    for _ in range(3):
        loss = f(model, ro, x, y)
        ref_params, ref_loss = ref_step(ref_params, x, y, jnp.float32(0.5))
        close(loss, ref_loss)
    assert f.trace_count == 1
    # the caller's states still hold valid (live, not deleted) arrays
    assert sg.states(model) == states
    for s in sg.states(model).values():
        assert isinstance(s.value, jax.Array) and not s.value.is_deleted()
        np.asarray(s.value)
    for i, lin in enumerate(model.layers):
        close(lin.w.value, ref_params["layers"][i]["w"])
    assert ro.s.value is ro_value and not ro_value.is_deleted()
    # and they can be used again, jitted or not
    close(mse(model, x, y), dict_mse(ref_params, x, y))


@pytest.mark.filterwarnings("ignore:Some donated buffers were not usable")
def test_donate_argnums_with_shared_state_and_static() -> None:
    shared = sg.Param(jnp.ones(3))
    a, b = Box(p=shared), Box(p=shared)
    f = sg.jit(lambda k, a, b: a.p.value.sum() * k + b.p.value.sum(), static_argnums=0, donate_argnums=(2,))
    close(f(2, a, b), 9.0)
    close(f(2, a, b), 9.0)
    assert a.p is shared and b.p is shared
    assert not shared.value.is_deleted()
    close(shared.value, [1.0, 1.0, 1.0])


# --------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------


class Unhashable:
    __hash__ = None  # type: ignore[assignment]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Unhashable)


def test_errors_are_clear() -> None:
    with pytest.raises(TypeError, match="expects a callable"):
        sg.jit(3)
    with pytest.raises(TypeError, match="donate_argnames"):
        sg.jit(lambda m: m, donate_argnames="m")
    with pytest.raises(TypeError, match="one entry per positional argument"):
        sg.jit(lambda m: m, in_shardings=jax.sharding.PartitionSpec())

    # an unhashable static inside an argument: the error names its path
    box = Box(p=sg.Param(jnp.ones(2)), cfg={"opt": Unhashable()})
    with pytest.raises((TypeError, ValueError), match=r"unhashable[\s\S]*'cfg', 'opt'"):
        sg.jit(lambda b: b.p.value)(box)

    # an unhashable static argument
    f = sg.jit(lambda b, k: b.p.value, static_argnums=1)
    with pytest.raises((TypeError, ValueError), match="hash"):
        f(Box(p=sg.Param(jnp.ones(2))), [1, 2])


def test_decorator_forms() -> None:
    @sg.jit(static_argnames="k")
    def f(b: Box, k: int) -> jax.Array:
        return b.p.value * k

    box = Box(p=sg.Param(jnp.ones(2)))
    close(f(box, k=3), [3.0, 3.0])
    assert isinstance(f, sg.transforms.JitFunction)
    assert f.__name__ == "f"


# --------------------------------------------------------------------------------------
# composition
# --------------------------------------------------------------------------------------


def test_jit_of_value_and_grad_step() -> None:
    x, y = data()
    model = MLP(SIZES)
    params = to_dict(model)

    @sg.jit
    def sg_step(m: MLP, x: jax.Array, y: jax.Array) -> tuple[jax.Array, sg.StateMap]:
        (loss, _pred), grads = sg.value_and_grad(
            lambda m: (lambda p: (jnp.mean((p - y) ** 2), p))(m(x)), has_aux=True
        )(m)
        params = sg.split(m, sg.Param, ...)[1]
        sg.update(m, jax.tree.map(lambda p, g: p - 0.1 * g, params, grads))
        return loss, grads

    @jax.jit
    def jax_step(p: Any, x: jax.Array, y: jax.Array) -> tuple[Any, jax.Array, Any]:
        loss, g = jax.value_and_grad(dict_mse)(p, x, y)
        return jax.tree.map(lambda a, b: a - 0.1 * b, p, g), loss, g

    for _ in range(5):
        loss, grads = sg_step(model, x, y)
        params, ref_loss, ref_grads = jax_step(params, x, y)
        close(loss, ref_loss)
        assert isinstance(grads, sg.StateMap)
        assert_grads_match(grads, ref_grads)
    assert sg_step.trace_count == 1
    for i, lin in enumerate(model.layers):
        close(lin.w.value, params["layers"][i]["w"])


def test_grad_inside_jit_with_argnums_and_filter() -> None:
    x, y = data()
    model = MLP(SIZES)
    scale = Box(s=sg.Param(jnp.float32(1.0)))

    @sg.jit
    def f(scale: Box, m: MLP) -> Any:
        return sg.grad(lambda sc, m: jnp.mean((m(x) * sc.s.value - y) ** 2), argnums=(0, 1), wrt=Weight)(
            scale, m
        )

    g_scale, g_model = f(scale, model)
    assert len(g_scale) == 0  # scale.s is a Param, not a Weight
    _, ref = jax.value_and_grad(dict_mse)(to_dict(model), x, y)
    assert set(g_model.paths) == {("layers", i, "w") for i in range(3)}
    assert_grads_match(g_model, ref, rtol=1e-4)


# --------------------------------------------------------------------------------------
# methods: sg.jit binds self as jax.jit does
# --------------------------------------------------------------------------------------


class Accumulator(sg.Node):
    def __init__(self) -> None:
        self.w = sg.Param(jnp.full((2,), 2.0))
        self.calls = sg.State(jnp.zeros((), jnp.int32))

    @sg.jit
    def step(self, x: jax.Array) -> jax.Array:
        self.calls.value = self.calls.value + 1
        return self.w.value * x

    @sg.jit(static_argnums=2)
    def scaled(self, x: jax.Array, k: int) -> jax.Array:
        return self.w.value * x * k


def test_jit_on_a_node_method_binds_self(served_by: str) -> None:
    from conftest import assert_served_by

    a, b = Accumulator(), Accumulator()
    traces = Accumulator.step.trace_count
    for _ in range(3):
        close(a.step(jnp.ones(2)), [2.0, 2.0])
    close(b.step(jnp.ones(2) * 3), [6.0, 6.0])
    assert int(a.calls.value) == 3 and int(b.calls.value) == 1  # written back into each self
    assert Accumulator.step(b, jnp.ones(2)).shape == (2,)  # through the class: self given
    assert int(b.calls.value) == 2
    assert isinstance(Accumulator.__dict__["step"], sg.transforms.JitFunction)
    assert Accumulator.step is Accumulator.__dict__["step"]
    assert a.step.__self__ is a
    close(a.scaled(jnp.ones(2), 5), [10.0, 10.0])  # static_argnums count self as argument 0
    close(a.scaled(jnp.ones(2), 7), [14.0, 14.0])
    assert Accumulator.step.trace_count <= traces + 1  # one structure: the instances share a trace
    assert_served_by(served_by)


class Affine:
    """A plain class (not a graph node): its instances are statics inside sg.jit."""

    def __init__(self, scale: float) -> None:
        self.scale = scale

    @sg.jit
    def apply(self, m: Box) -> jax.Array:
        m.p.value = m.p.value * self.scale
        return m.p.value


def test_jit_on_a_plain_class_method_binds_self(served_by: str) -> None:
    from conftest import assert_served_by

    box = Box(p=sg.Param(jnp.ones(2)))
    double, triple = Affine(2.0), Affine(3.0)
    traces = Affine.apply.trace_count
    close(double.apply(box), [2.0, 2.0])
    close(double.apply(box), [4.0, 4.0])
    close(triple.apply(box), [12.0, 12.0])
    close(box.p.value, [12.0, 12.0])
    assert Affine.apply.trace_count == traces + 2  # self is static: one trace per instance
    assert_served_by(served_by)


# --------------------------------------------------------------------------------------
# jit: the write-back reuses the pre-call walk
# --------------------------------------------------------------------------------------


def test_write_back_runs_no_update_after_the_first_call(served_by: str) -> None:
    from conftest import assert_served_by

    x, _ = data()
    model = MLP(SIZES)
    f = sg.jit(lambda m, x: (m.steps.__setattr__("value", m.steps.value + 1), m(x))[1])
    f(model, x)
    updates = (sg.cache_info()["update_hits"], sg.cache_info()["generic_updates"])
    for _ in range(3):
        f(model, x)
    # the states the pre-call walk found are written: no update (no guard) runs again
    assert (sg.cache_info()["update_hits"], sg.cache_info()["generic_updates"]) == updates
    assert int(model.steps.value) == 4
    assert f.trace_count == 1
    assert_served_by(served_by)


def test_write_back_of_states_and_array_leaves_together(served_by: str) -> None:
    # Array leaves need their owner (a node's attribute, a list item, a tuple rebuilt):
    # they go through the update's writer on the same walk, the States beside them.
    inner = (np.ones(2, np.float32), np.zeros(1, np.float32))
    box = Box(a=np.ones(3, np.float32), items=[np.ones(2, np.float32)], pair=inner,
              p=sg.Param(jnp.ones(3)), q=sg.State(jnp.zeros(())), ro=sg.State(jnp.ones(2)))
    ro_value = box.ro.value

    @sg.jit
    def f(b: Box) -> None:
        b.a = b.a * 2
        b.items[0] = b.items[0] + 1
        b.pair = (b.pair[0] * 3, b.pair[1])
        b.p.value = b.p.value + b.ro.value.sum()
        b.q.value = b.q.value + 1

    for _ in range(3):
        f(box)
    close(box.a, np.full(3, 8.0))
    close(box.items[0], np.full(2, 4.0))
    close(box.pair[0], np.full(2, 27.0))
    assert isinstance(box.pair[1], np.ndarray)  # only read: the very array
    close(box.p.value, np.full(3, 7.0))
    close(box.q.value, 3.0)
    assert box.ro.value is ro_value
    assert f.trace_count == 1


def test_write_back_only_writes_the_written_states(served_by: str) -> None:
    class Counting(sg.State):
        """A State whose writes are counted (its value a property over its __dict__)."""

        @property  # type: ignore[override]
        def value(self) -> Any:
            return self.__dict__["v"]

        @value.setter
        def value(self, v: Any) -> None:
            self.__dict__["writes"] = self.__dict__.get("writes", 0) + 1
            self.__dict__["v"] = v

    box = Box(w=sg.Param(jnp.ones(2)), read=Counting(jnp.ones(2)), written=Counting(jnp.zeros(2)))
    box.read.writes = box.written.writes = 0

    @sg.jit
    def f(b: Box) -> jax.Array:
        b.written.value = b.written.value + b.read.value
        return b.w.value

    for _ in range(3):
        f(box)
    assert box.read.writes == 0  # only read: never written back, on any call
    assert box.written.writes == 3
    close(box.written.value, np.full(2, 3.0))


def test_a_closure_that_restructures_the_caller_while_tracing_is_written_by_path(served_by: str) -> None:
    # fn's Python runs once (the trace) and may reach the caller's objects through a
    # closure: the walk made before the call is stale then, so the write-back walks
    # again and writes into what is at the path now (as the guarded update did).
    model = MLP(SIZES)
    old_steps = model.steps
    fresh = sg.State(jnp.full((), 10, jnp.int32))

    @sg.jit
    def f(m: MLP) -> None:
        m.steps.value = m.steps.value + 1
        model.steps = fresh  # the caller's model, not the argument

    f(model)
    assert model.steps is fresh
    assert int(fresh.value) == 1  # the written value, at the path it was written to
    assert int(old_steps.value) == 0
    f(model)  # no trace now: the walk before the call holds fresh
    assert int(fresh.value) == 2 and int(old_steps.value) == 0 and f.trace_count == 1
