"""Flax NNX models through specgraph, with NNX's own functions as the oracle.

Paths are ``nnx.to_flat_state(nnx.state(m))``'s, values the Variables' raw value
objects; unflatten builds modules NNX accepts (equal ``nnx.graphdef``); update keeps
Variable identity; ``specgraph.jit`` runs NNX's training step as ``nnx.jit`` does.
Every structural test runs through the reference walker and the public path.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_matches_reference, assert_served_by

nnx = pytest.importorskip("flax.nnx")
optax = pytest.importorskip("optax")

from flax.errors import TraceContextError  # noqa: E402
from jax.interpreters import ad  # noqa: E402

import specgraph as sg  # noqa: E402

# --------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------


class Block(nnx.Module):
    def __init__(self, din: int, dout: int, rngs: nnx.Rngs) -> None:
        self.linear = nnx.Linear(din, dout, rngs=rngs)
        self.bn = nnx.BatchNorm(dout, rngs=rngs)
        self.dropout = nnx.Dropout(0.2, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.dropout(nnx.relu(self.bn(self.linear(x))))


class Net(nnx.Module):
    """Dropout with its own Rngs, BatchNorm, an nnx.List longer than 10, a tied Variable,
    a shared submodule, a dict and a list holding data, plain statics."""

    def __init__(self, rngs: nnx.Rngs, width: int = 8, depth: int = 12) -> None:
        self.inp = Block(4, width, rngs)
        self.layers = nnx.List([nnx.Linear(width, width, rngs=rngs) for _ in range(depth)])
        self.out = nnx.Linear(width, 3, rngs=rngs)
        self.tied = self.layers[0].kernel  # one Variable at two paths
        self.shared = self.layers[1]  # one module at two paths
        self.extra = nnx.data({"scale": nnx.Param(jnp.ones(width)), "pair": [jnp.zeros(2), 7]})
        self.count = nnx.data(3)  # a plain value NNX keeps as a leaf
        self.name = "net"
        self.activation = "relu"

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.inp(x)
        for layer in self.layers:
            x = nnx.relu(layer(x)) * self.extra["scale"][...]
        return self.out(x)


def leaf_of(x: Any) -> Any:
    """What NNX's flat state holds, as specgraph's StateMap value: a Variable's raw value."""
    return x.get_raw_value() if isinstance(x, nnx.Variable) else x


def nnx_flat(m: Any) -> list[tuple[tuple, Any]]:
    return [(p, leaf_of(v)) for p, v in nnx.to_flat_state(nnx.state(m))]


def variables(m: Any) -> dict[tuple, Any]:
    return {p: v for p, v in nnx.to_flat_state(nnx.state(m)) if isinstance(v, nnx.Variable)}


def assert_same_as_nnx(m: Any, gd: sg.GraphDef, sm: sg.StateMap) -> None:
    ref = nnx_flat(m)
    assert list(sm.keys()) == [p for p, _ in ref]
    assert gd.paths == tuple(p for p, _ in ref)
    for (_, v), got in zip(ref, sm.values(), strict=True):
        assert got is v
    types = dict(zip(sm.paths, sm.types, strict=True))
    for p, v in nnx.to_flat_state(nnx.state(m)):
        assert types[p] is (type(v) if isinstance(v, nnx.Variable) else None)


# --------------------------------------------------------------------------------------
# import and registration
# --------------------------------------------------------------------------------------


def test_import_specgraph_imports_neither_flax_nor_brainstate() -> None:
    code = (
        "import sys, specgraph\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('flax', 'brainstate'))\n"
        "assert not bad, bad\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_adapter_loads_when_an_nnx_object_shows_up() -> None:
    code = (
        "import sys, specgraph as sg\n"
        "assert 'specgraph.interop.nnx' not in sys.modules\n"
        "from flax import nnx\n"
        "m = nnx.Linear(2, 3, rngs=nnx.Rngs(0))\n"
        "assert 'specgraph.interop.nnx' not in sys.modules\n"
        "gd, sm = sg.flatten(m)\n"
        "assert 'specgraph.interop.nnx' in sys.modules\n"
        "assert 'specgraph.interop.brainstate' not in sys.modules\n"
        "print(sorted(sm.keys()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[('bias',), ('kernel',)]"


def test_a_type_filter_alone_loads_the_adapter() -> None:
    code = (
        "import specgraph as sg\n"
        "from flax import nnx\n"
        "sm = sg.StateMap.from_items({('a',): 1, ('b',): 2}, {('a',): nnx.Param, ('b',): nnx.BatchStat})\n"
        "print(list(sm.filter(nnx.Param).keys()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[('a',)]"


# --------------------------------------------------------------------------------------
# flatten: NNX's paths and raw values
# --------------------------------------------------------------------------------------


def test_flatten_has_nnx_paths_and_raw_values(impl: Any) -> None:
    m = Net(nnx.Rngs(0))
    gd, sm = impl.flatten(m)
    assert_same_as_nnx(m, gd, sm)
    assert_matches_reference(m)


def test_list_items_have_int_paths_in_numeric_order(impl: Any) -> None:
    m = Net(nnx.Rngs(0), depth=12)
    _, sm = impl.flatten(m)
    layer_indices = [p[1] for p in sm.keys() if p[0] == "layers"]
    assert layer_indices == sorted(layer_indices)
    assert set(layer_indices) == set(range(12))
    assert all(type(i) is int for i in layer_indices)
    assert ("layers", 10, "kernel") in sm


def test_tied_variable_and_shared_module_appear_once(impl: Any) -> None:
    m = Net(nnx.Rngs(0))
    gd, sm = impl.flatten(m)
    assert ("tied",) not in sm  # the first pre-order path wins: layers.0.kernel
    assert not any(p[0] == "shared" for p in sm.keys())
    assert sm[("layers", 0, "kernel")] is m.tied.get_raw_value()
    assert gd.num_states == len(variables(m))


def test_data_scalar_is_a_leaf_static_string_is_not(impl: Any) -> None:
    m = Net(nnx.Rngs(0))
    _, sm = impl.flatten(m)
    assert sm[("count",)] == 3
    assert ("name",) not in sm
    m.name = "other"
    gd2, _ = impl.flatten(m)
    assert gd2 != impl.flatten(Net(nnx.Rngs(0)))[0]


def test_new_instance_of_the_same_class_has_an_equal_graphdef(impl: Any) -> None:
    a, b = Net(nnx.Rngs(0)), Net(nnx.Rngs(1))
    assert a._pytree__nodes is not b._pytree__nodes  # per instance, equal by value
    gd_a, _ = impl.flatten(a)
    gd_b, sm_b = impl.flatten(b)
    assert gd_a == gd_b and hash(gd_a) == hash(gd_b)
    assert_same_as_nnx(b, gd_b, sm_b)


def test_set_metadata_changes_the_structure(impl: Any) -> None:
    m = Net(nnx.Rngs(0))
    gd, _ = impl.flatten(m)
    m.out.kernel.set_metadata(sharding_hint="rows")
    gd2, sm2 = impl.flatten(m)
    assert gd2 != gd
    assert_same_as_nnx(m, gd2, sm2)


def test_optimizer_and_metrics_paths(impl: Any) -> None:
    m = Net(nnx.Rngs(0))
    opt = nnx.Optimizer(m, optax.adam(1e-3), wrt=nnx.Param)
    metrics = nnx.MultiMetric(loss=nnx.metrics.Average("loss"), acc=nnx.metrics.Accuracy())
    for obj in (opt, metrics):
        gd, sm = impl.flatten(obj)
        assert_same_as_nnx(obj, gd, sm)


def test_rngs_and_standalone_rngs(impl: Any) -> None:
    rngs = nnx.Rngs(0, dropout=1)
    gd, sm = impl.flatten(rngs)
    assert_same_as_nnx(rngs, gd, sm)
    key = sm[("dropout", "key")]
    assert jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)


def test_nnx_objects_inside_plain_containers_and_specgraph_nodes(impl: Any) -> None:
    class Holder(sg.Node):
        def __init__(self) -> None:
            self.model = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
            self.p = sg.Param(jnp.zeros(1))
            self.loose = [nnx.Param(jnp.ones(3))]

    h = Holder()
    gd, sm = impl.flatten(h)
    assert list(sm.keys()) == [("loose", 0), ("model", "bias"), ("model", "kernel"), ("p",)]
    assert sm.types == (nnx.Param, nnx.Param, nnx.Param, sg.Param)
    h2 = impl.unflatten(gd, sm)
    assert type(h2.model) is nnx.Linear and type(h2.loose[0]) is nnx.Param
    assert h2.model(jnp.ones((1, 2))).shape == (1, 2)


# --------------------------------------------------------------------------------------
# unflatten: valid modules
# --------------------------------------------------------------------------------------


def test_unflatten_builds_a_module_nnx_accepts(impl: Any) -> None:
    m = Net(nnx.Rngs(0))
    gd, sm = impl.flatten(m)
    m2 = impl.unflatten(gd, sm)
    assert type(m2) is Net
    assert nnx.graphdef(m2) == nnx.graphdef(m)
    assert [p for p, _ in nnx_flat(m2)] == [p for p, _ in nnx_flat(m)]
    for (_, a), (_, b) in zip(nnx_flat(m2), nnx_flat(m), strict=True):
        assert a is b  # the same value objects, in new Variables
    assert m2.tied is m2.layers[0].kernel and m2.shared is m2.layers[1]
    x = jnp.ones((2, 4))
    m.eval()
    m2.eval()
    np.testing.assert_array_equal(m2(x), m(x))
    # NNX's own round trip takes it.
    g, st = nnx.split(m2)
    m3 = nnx.merge(g, st)
    np.testing.assert_array_equal(m3(x), m(x))


def test_unflatten_gives_each_variable_its_own_metadata_and_bookkeeping(impl: Any) -> None:
    m = Net(nnx.Rngs(0))
    gd, sm = impl.flatten(m)
    m2, m3 = impl.unflatten(gd, sm), impl.unflatten(gd, sm)
    v1, v2, v3 = m.out.kernel, m2.out.kernel, m3.out.kernel
    assert v2 is not v1 and v3 is not v2
    assert v2._var_metadata == v1._var_metadata
    assert v2._var_metadata is not v1._var_metadata and v2._var_metadata is not v3._var_metadata
    v2.set_metadata(note="only here")
    assert not v3.has_metadata("note") and not v1.has_metadata("note")
    assert m2._pytree__state is not m3._pytree__state
    assert m2.inp._pytree__state is not m2._pytree__state
    assert m2._pytree__nodes == m._pytree__nodes
    m2.new_attribute = 1  # NNX's own bookkeeping works on a rebuilt module
    assert "new_attribute" in m2._pytree__nodes and "new_attribute" not in m3._pytree__nodes


def test_unflatten_inside_a_trace_gives_variables_of_that_trace(impl: Any) -> None:
    m = nnx.Linear(3, 3, rngs=nnx.Rngs(0))
    gd, sm = impl.flatten(m)

    @jax.jit
    def f(values: sg.StateMap) -> jax.Array:
        m2 = impl.unflatten(gd, values)
        m2.kernel[...] = m2.kernel[...] * 2  # allowed: created at this trace level
        m2.extra = 1  # a module attribute too
        return m2.kernel[...]

    np.testing.assert_allclose(f(sm), 2 * np.asarray(m.kernel[...]))


def test_merge_of_split_parts(impl: Any) -> None:
    m = Net(nnx.Rngs(0))
    if impl.name == "generic":
        gd, sm = sg.generic.flatten(m)
        params, rest = sm.split(nnx.Param, ...)
    else:
        gd, params, rest = sg.split(m, nnx.Param, ...)
    m2 = sg.merge(gd, params, rest)
    assert nnx.graphdef(m2) == nnx.graphdef(m)


# --------------------------------------------------------------------------------------
# update: Variable identity kept
# --------------------------------------------------------------------------------------


def test_update_keeps_variable_identity(impl: Any) -> None:
    m = Net(nnx.Rngs(0))
    before = variables(m)
    _gd, sm = impl.flatten(m)
    doubled = jax.tree.map(lambda x: x * 2 if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating) else x, sm)
    impl.update(m, doubled)
    after = variables(m)
    assert after.keys() == before.keys()
    for p, v in after.items():
        assert v is before[p]
        assert v.get_raw_value() is doubled[p]
    assert m.count is doubled[("count",)]
    assert m.extra["pair"][0] is doubled[("extra", "pair", 0)]


def test_partial_update_by_int_path(impl: Any) -> None:
    m = Net(nnx.Rngs(0))
    new = jnp.full((8, 8), 5.0)
    impl.update(m, {("layers", 10, "kernel"): new})
    assert m.layers[10].kernel.get_raw_value() is new


def test_update_of_a_closure_module_inside_jit_raises_nnx_trace_error(impl: Any) -> None:
    m = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
    _gd, sm = impl.flatten(m)
    kernel, bias = m.kernel.get_raw_value(), m.bias.get_raw_value()

    @jax.jit
    def f(values: sg.StateMap) -> jax.Array:
        impl.update(m, values)  # m lives outside this trace
        return values[("kernel",)]

    with pytest.raises(TraceContextError):
        f(sm)
    assert m.kernel.get_raw_value() is kernel and m.bias.get_raw_value() is bias  # nothing written


def test_update_array_attribute_of_a_closure_module_inside_jit_raises(impl: Any) -> None:
    class WithArray(nnx.Module):
        def __init__(self) -> None:
            self.a = jnp.zeros(2)

    m = WithArray()
    before = m.a
    _, sm = impl.flatten(m)

    @jax.jit
    def f(values: sg.StateMap) -> jax.Array:
        impl.update(m, values)
        return values[("a",)]

    with pytest.raises(TraceContextError):
        f(sm)
    assert m.a is before


def test_ref_backed_variable_keeps_its_ref(impl: Any) -> None:
    class WithRef(nnx.Module):
        def __init__(self) -> None:
            self.v = nnx.Variable(jnp.zeros(3), ref=True)

    m = WithRef()
    ref = m.v.get_raw_value()
    _gd, sm = impl.flatten(m)
    assert sm[("v",)] is ref
    impl.update(m, {("v",): jnp.ones(3)})
    assert m.v.get_raw_value() is ref  # written into the Ref, as nnx.update does
    np.testing.assert_array_equal(m.v[...], np.ones(3))


def test_hijax_variable_is_refused_with_its_path(impl: Any) -> None:
    class WithHijax(nnx.Module):
        def __init__(self) -> None:
            self.v = nnx.Variable(jnp.zeros(3), hijax=True)

    try:
        m = WithHijax()
    except Exception:  # pragma: no cover - hijax not available in this JAX
        pytest.skip("hijax Variables cannot be made here")
    with pytest.raises(TypeError, match=r"path \('v',\).*hijax=False"):
        impl.flatten(m)


# --------------------------------------------------------------------------------------
# filters
# --------------------------------------------------------------------------------------


def test_filters_take_nnx_variable_types() -> None:
    m = Net(nnx.Rngs(0))
    _gd, params, stats, rest = sg.split(m, nnx.Param, nnx.BatchStat, ...)
    assert list(params.keys()) == [p for p, v in nnx.to_flat_state(nnx.state(m, nnx.Param))]
    assert list(stats.keys()) == [p for p, v in nnx.to_flat_state(nnx.state(m, nnx.BatchStat))]
    assert set(rest.keys()) >= {("count",), ("inp", "dropout", "rngs", "count")}
    st = sg.states(m, nnx.RngState)
    assert all(isinstance(v, nnx.RngState) for v in st.values())
    assert st[("inp", "dropout", "rngs", "key")] is m.inp.dropout.rngs.key
    not_params = sg.split(m, sg.Not(nnx.Param), ...)[1]
    assert set(not_params.keys()).isdisjoint(params.keys())
    with pytest.raises(TypeError, match="registered state class"):
        sg.split(m, int, ...)


# --------------------------------------------------------------------------------------
# specgraph.jit and value_and_grad on NNX's standard training step
# --------------------------------------------------------------------------------------


class Classifier(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.l1 = nnx.Linear(4, 16, rngs=rngs)
        self.bn = nnx.BatchNorm(16, rngs=rngs)
        self.dropout = nnx.Dropout(0.2, rngs=rngs)
        self.l2 = nnx.Linear(16, 16, rngs=rngs)
        self.l3 = nnx.Linear(16, 3, rngs=rngs)
        self.tied = self.l2.kernel

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.dropout(nnx.relu(self.bn(self.l1(x))))
        x = nnx.relu(x @ self.tied[...] + self.l2.bias[...])
        return self.l3(x)


def make_training() -> tuple[Any, Any, Any]:
    model = Classifier(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    metrics = nnx.MultiMetric(loss=nnx.metrics.Average("loss"), accuracy=nnx.metrics.Accuracy())
    return model, optimizer, metrics


def train_step(model: Any, optimizer: Any, metrics: Any, x: jax.Array, y: jax.Array) -> jax.Array:
    def loss_fn(model: Any) -> tuple[jax.Array, jax.Array]:
        logits = model(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), logits

    (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    metrics.update(loss=loss, logits=logits, labels=y)
    optimizer.update(model, grads)
    return loss


def pure_values(obj: Any) -> list[tuple[tuple, np.ndarray]]:
    out = []
    for p, v in nnx_flat(obj):
        a = jnp.asarray(v)
        if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            a = jax.random.key_data(a)
        out.append((p, np.asarray(a)))
    return out


def assert_same_values(a: Any, b: Any) -> None:
    va, vb = pure_values(a), pure_values(b)
    assert [p for p, _ in va] == [p for p, _ in vb]
    for (p, x), (_, y) in zip(va, vb, strict=True):
        np.testing.assert_array_equal(x, y, err_msg=str(p))


def test_jit_is_a_drop_in_for_nnx_jit_on_the_training_step(served_by: str) -> None:
    rng = np.random.default_rng(0)
    xs = jnp.asarray(rng.standard_normal((6, 8, 4)), jnp.float32)
    ys = jnp.asarray(rng.integers(0, 3, (6, 8)))
    ours, theirs = make_training(), make_training()
    step_nnx, step_sg = nnx.jit(train_step), sg.jit(train_step)
    for i in range(6):
        loss_nnx = step_nnx(*theirs, xs[i], ys[i])
        loss_sg = step_sg(*ours, xs[i], ys[i])
        assert float(loss_sg) == float(loss_nnx)
        for a, b in zip(ours, theirs, strict=True):
            assert_same_values(a, b)  # params, Adam state, batch stats, rng counts, metrics
    assert step_sg.trace_count == 1
    model = ours[0]
    assert model.tied is model.l2.kernel
    assert ours[2].compute()["accuracy"] == theirs[2].compute()["accuracy"]
    assert int(ours[1].step[...]) == 6
    assert int(model.dropout.rngs.count[...]) == int(theirs[0].dropout.rngs.count[...]) > 0
    assert_served_by(served_by)


def test_jit_step_on_a_new_training_of_the_same_structure_reuses_the_trace(served_by: str) -> None:
    """A second model and metrics of the same classes (their NNX bookkeeping equal by
    value, other objects) run the compiled step with no new trace and give what nnx.jit
    gives. (A new nnx.Optimizer holds a new optax transformation: another static.)"""
    x, y = jnp.ones((8, 4)), jnp.array([0, 1, 2, 0, 1, 2, 0, 1])

    def step(model: Any, metrics: Any) -> jax.Array:
        logits = model(x)  # Dropout's rng count and BatchNorm's statistics are written
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        metrics.update(loss=loss, logits=logits, labels=y)
        return loss

    step_nnx, step_sg = nnx.jit(step), sg.jit(step)
    for _ in range(2):
        ours, theirs = make_training()[::2], make_training()[::2]
        for _ in range(2):
            assert float(step_sg(*ours)) == float(step_nnx(*theirs))
        for a, b in zip(ours, theirs, strict=True):
            assert_same_values(a, b)
    assert step_sg.trace_count == 1
    assert_served_by(served_by)
    if served_by != "generic":
        assert sg.cache_info()["guard_misses"] == {}


def test_jit_keeps_variable_identity_and_module_identity() -> None:
    model, optimizer, metrics = make_training()
    before = variables(model)
    raw_before = {p: v.get_raw_value() for p, v in before.items()}
    step = sg.jit(train_step)
    step(model, optimizer, metrics, jnp.ones((8, 4)), jnp.zeros((8,), jnp.int32))
    after = variables(model)
    assert all(after[p] is v for p, v in before.items())
    assert all(after[p].get_raw_value() is not raw_before[p]
               for p, v in before.items() if isinstance(v, nnx.Param))


def assert_no_tracer(obj: Any, kind: type = jax.core.Tracer) -> None:
    for p, v in nnx_flat(obj):
        for leaf in jax.tree_util.tree_leaves(v):
            assert not isinstance(leaf, kind), (p, leaf)


def test_value_and_grad_wrt_param_feeds_nnx_optimizer(served_by: str) -> None:
    """Training mode: Dropout's rng count advances and BatchNorm's statistics are
    written inside the loss; sg.value_and_grad carries them out as nnx.value_and_grad."""
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((8, 4)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 3, (8,)))
    (m_sg, opt_sg, _), (m_nnx, opt_nnx, _) = make_training(), make_training()

    def loss_fn(model: Any) -> tuple[jax.Array, jax.Array]:
        logits = model(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), logits

    for _ in range(3):
        (loss_a, logits_a), grads_a = sg.value_and_grad(loss_fn, wrt=nnx.Param, has_aux=True)(m_sg)
        (loss_b, logits_b), grads_b = nnx.value_and_grad(loss_fn, has_aux=True)(m_nnx)
        assert isinstance(grads_a, nnx.State)
        assert_same_values(grads_a, grads_b)
        np.testing.assert_array_equal(logits_a, logits_b)
        assert_same_values(m_sg, m_nnx)  # rng counts and batch stats, before the update
        assert_no_tracer(m_sg)
        opt_sg.update(m_sg, grads_a)
        opt_nnx.update(m_nnx, grads_b)
        assert float(loss_a) == float(loss_b)
    assert int(m_sg.dropout.rngs.count[...]) == int(m_nnx.dropout.rngs.count[...]) == 3
    assert m_sg.tied is m_sg.l2.kernel
    assert_same_values(m_sg, m_nnx)
    assert_same_values(opt_sg, opt_nnx)
    assert_served_by(served_by)


@pytest.mark.parametrize("outer", ["sg.jit", "nnx.jit"])
def test_jit_of_sg_value_and_grad_with_nnx_optimizer(served_by: str, outer: str) -> None:
    """Training mode, sg.value_and_grad nested in sg.jit or nnx.jit: the same as
    nnx.value_and_grad in nnx.jit, step by step; no JVP tracer is left in a Variable."""
    (m_sg, opt_sg, _), (m_nnx, opt_nnx, _) = make_training(), make_training()
    x, y = jnp.ones((8, 4)), jnp.array([0, 1, 2, 0, 1, 2, 0, 1])

    def loss_fn(model: Any) -> jax.Array:
        return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

    def step_sg(model: Any, optimizer: Any) -> jax.Array:
        loss, grads = sg.value_and_grad(loss_fn, wrt=nnx.Param)(model)
        assert_no_tracer(model, ad.JVPTracer)  # only the outer jit's tracers
        optimizer.update(model, grads)
        return loss

    @nnx.jit
    def step_nnx(model: Any, optimizer: Any) -> jax.Array:
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    jitted = sg.jit(step_sg) if outer == "sg.jit" else nnx.jit(step_sg)
    for _ in range(3):
        assert float(jitted(m_sg, opt_sg)) == float(step_nnx(m_nnx, opt_nnx))
        assert_same_values(m_sg, m_nnx)
        assert_no_tracer(m_sg)
    assert int(m_sg.dropout.rngs.count[...]) == 3
    assert_same_values(opt_sg, opt_nnx)
    if outer == "sg.jit":
        assert jitted.trace_count == 1
    assert_served_by(served_by)


class WithArray(nnx.Module):
    """A Variable and a bare array attribute (NNX keeps arrays as data)."""

    def __init__(self) -> None:
        self.w = nnx.Param(jnp.ones(2))
        self.a = jnp.zeros(2)


@pytest.mark.parametrize("with_array", [False, True])
def test_jit_inside_an_outer_jit_on_a_closure_module_raises_nnx_trace_error(
        served_by: str, with_array: bool) -> None:
    m = WithArray()
    w0, a0 = m.w.get_raw_value(), m.a

    @sg.jit
    def step(model: Any, x: jax.Array) -> jax.Array:
        model.w[...] = model.w[...] + x
        if with_array:
            model.a = model.a + x
        return model.w[...].sum()

    # The second outer function reuses step's trace: the write-back then runs on the
    # walk made before the call, and must still refuse Variables of another trace level.
    for outer in (jax.jit(lambda x: step(m, x)), jax.jit(lambda x: step(m, x) * 2)):
        with pytest.raises(TraceContextError):
            outer(jnp.ones(2))
        assert m.w.get_raw_value() is w0 and m.a is a0  # nothing written, no tracer stored
    assert step.trace_count == 1
    step(m, jnp.ones(2))  # at the top level the same write is fine
    np.testing.assert_array_equal(m.w[...], np.full(2, 2.0))
    np.testing.assert_array_equal(m.a, np.full(2, 1.0 if with_array else 0.0))


def test_jit_write_back_goes_through_a_setter_a_variable_class_gains(served_by: str) -> None:
    class Weight(nnx.Param):
        pass

    class Holder(nnx.Module):
        def __init__(self) -> None:
            self.w = Weight(jnp.ones(2))
            self.p = nnx.Param(jnp.ones(2))

    h = Holder()
    step = sg.jit(lambda h: (h.w.__setitem__(..., h.w[...] * 2), h.p.__setitem__(..., h.p[...] + 1))[0])
    step(h)
    step(h)
    seen: list[Any] = []

    def set_raw_value(self: Any, value: Any, **kw: Any) -> None:
        seen.append(value)
        nnx.Param.set_raw_value(self, value, **kw)

    Weight.set_raw_value = set_raw_value  # after the write-back was planned
    try:
        step(h)
    finally:
        del Weight.set_raw_value
    assert len(seen) == 1 and seen[0] is h.w.get_raw_value()
    np.testing.assert_array_equal(h.w[...], np.full(2, 8.0))
    np.testing.assert_array_equal(h.p[...], np.full(2, 4.0))
    assert step.trace_count == 1


# --------------------------------------------------------------------------------------
# random NNX graphs (hypothesis): sharing, cycles, Lists, data containers, statics
# --------------------------------------------------------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


class Bag(nnx.Module):
    """A module whose attributes the test sets."""


ATTR_NAMES = st.sampled_from(["a", "b", "c", "w", "z", "_p", "x10", "layers"])
VARIABLE_TYPES = [nnx.Param, nnx.BatchStat, nnx.Variable, nnx.Cache]


def _child_specs(n_modules: int, n_vars: int) -> st.SearchStrategy[Any]:
    leaf = st.one_of(
        st.tuples(st.just("module"), st.integers(0, n_modules - 1)),
        st.tuples(st.just("var"), st.integers(0, n_vars - 1)),
        st.tuples(st.just("array"), st.integers(1, 3)),
        st.tuples(st.just("static"), st.one_of(st.integers(-2, 2), st.text(max_size=2), st.none())),
    )
    return st.one_of(
        leaf,
        st.tuples(st.just("list"), st.lists(leaf, max_size=3)),
        st.tuples(st.just("dict"), st.dictionaries(st.sampled_from(["k", "j", "0"]), leaf, max_size=2)),
        st.tuples(st.just("nnxlist"), st.lists(leaf, max_size=12)),
        st.tuples(st.just("data"), st.integers(-2, 2)),
    )


@st.composite
def nnx_graphs(draw: Any) -> Any:
    n_modules = draw(st.integers(1, 4))
    n_vars = draw(st.integers(1, 5))
    variables_ = [
        draw(st.sampled_from(VARIABLE_TYPES))(jnp.full((2,), float(i)), **draw(
            st.sampled_from([{}, {"tag": "t"}, {"axis": 1}])))
        for i in range(n_vars)
    ]
    modules = [Bag() for _ in range(n_modules)]

    def make(spec: Any) -> Any:
        kind = spec[0]
        if kind == "module":
            return modules[spec[1]]
        if kind == "var":
            return variables_[spec[1]]
        if kind == "array":
            return jnp.zeros((spec[1],))
        if kind == "static":
            return spec[1]
        if kind == "list":
            return nnx.data([make(s) for s in spec[1]])
        if kind == "dict":
            return nnx.data({k: make(s) for k, s in spec[1].items()})
        if kind == "nnxlist":
            return nnx.List([make(s) for s in spec[1]])
        return nnx.data(spec[1])

    for m in modules:
        attrs = draw(st.dictionaries(ATTR_NAMES, _child_specs(n_modules, n_vars), min_size=1, max_size=5))
        for name, spec in attrs.items():
            value = make(spec)
            try:
                setattr(m, name, value)
            except ValueError:  # NNX refuses this value here (e.g. data under a static name)
                pass
    return modules[0]


fixture_ok = settings(
    suppress_health_check=[*settings.default.suppress_health_check, HealthCheck.function_scoped_fixture],
    deadline=None,
)


@fixture_ok
@given(nnx_graphs())
def test_random_nnx_graphs_match_nnx(impl: Any, m: Any) -> None:
    gd, sm = impl.flatten(m)
    assert_same_as_nnx(m, gd, sm)
    assert_matches_reference(m)
    m2 = impl.unflatten(gd, sm)
    assert nnx.graphdef(m2) == nnx.graphdef(m)
    assert [p for p, _ in nnx_flat(m2)] == list(sm.keys())
    before = variables(m)
    new = jax.tree.map(lambda x: x + 1 if isinstance(x, jax.Array) else x, sm)
    impl.update(m, new)
    for p, v in variables(m).items():
        assert v is before[p] and v.get_raw_value() is new[p]


def test_example_train_nnx_agrees_with_nnx_jit() -> None:
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "examples" / "train_nnx.py"
    spec = importlib.util.spec_from_file_location("train_nnx_example", path)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    # --check-nnx makes it stop with an error as soon as a loss differs from nnx.jit's.
    out = example.main(["--steps", "20", "--log-every", "10", "--check-nnx"])
    assert out["trace_count"] == 1
    (_, first_loss, _), (_, last_loss, _) = out["history"]
    assert last_loss < first_loss


# --------------------------------------------------------------------------------------
# the specialized path serves NNX objects (and misses where it must)
# --------------------------------------------------------------------------------------


def test_nnx_structures_are_specialized() -> None:
    objects = [Net(nnx.Rngs(0)), *make_training()]
    for obj in objects:
        sg.flatten(obj)
        hits = sg.cache_info()["hits"]
        assert_matches_reference(obj)
        assert sg.cache_info()["hits"] == hits + 2, type(obj).__name__
        _, sm = sg.flatten(obj)
        update_hits = sg.cache_info()["update_hits"]
        sg.update(obj, sm)
        assert sg.cache_info()["update_hits"] == update_hits + 1, type(obj).__name__
        gd, sm = sg.flatten(obj)
        sg.unflatten(gd, sm)
        sg.unflatten(gd, sm)
        unflatten_hits = sg.cache_info()["unflatten_hits"]
        rebuilt = sg.unflatten(gd, sm)
        assert sg.cache_info()["unflatten_hits"] == unflatten_hits + 1, type(obj).__name__
        assert nnx.graphdef(rebuilt) == nnx.graphdef(obj)
        assert_same_as_nnx(rebuilt, *sg.generic.flatten(rebuilt))
    assert sg.cache_info()["compile_failures"] == 0


def test_a_new_instance_of_the_class_hits_the_compiled_code() -> None:
    a, b = Net(nnx.Rngs(0)), Net(nnx.Rngs(1))
    sg.flatten(a)
    sg.flatten(a)
    hits = sg.cache_info()["hits"]
    assert_matches_reference(b)  # equal bookkeeping, other objects: guarded by equality
    assert sg.cache_info()["hits"] == hits + 2
    assert sg.cache_info()["guard_misses"] == {}


@pytest.mark.parametrize("change", ["set_metadata", "new_attribute", "data_flag", "initializing"])
def test_changes_are_misses_of_their_kind(change: str) -> None:
    m = Net(nnx.Rngs(0))
    sg.flatten(m)
    sg.flatten(m)
    if change == "set_metadata":
        m.out.kernel.set_metadata(hint="rows")
        kind = "metadata"
    elif change == "new_attribute":
        object.__setattr__(m.out, "extra", 1)  # past NNX's bookkeeping: only the key count changed
        kind = "node_keys"
    elif change == "data_flag":
        m.inp.linear.flag = nnx.data(5)  # a new data attribute: _pytree__nodes changed too
        kind = "node_keys"
    else:
        m.layers[3]._pytree__state._initializing = True
        kind = "metadata"
    before = dict(sg.cache_info()["guard_misses"])
    assert_matches_reference(m)
    assert sg.cache_info()["guard_misses"].get(kind, 0) > before.get(kind, 0)


def test_variable_classes_gaining_an_override_miss() -> None:
    class Weight(nnx.Param):
        pass

    class Holder(nnx.Module):
        def __init__(self) -> None:
            self.w = Weight(jnp.ones(2))

    h = Holder()
    sg.flatten(h)
    sg.flatten(h)
    Weight.set_raw_value = lambda self, value, **kw: None  # an override the layout relies on lacking
    try:
        before = sg.cache_info()["guard_misses"].get("class", 0)
        assert_matches_reference(h)
        assert sg.cache_info()["guard_misses"].get("class", 0) > before
    finally:
        del Weight.set_raw_value


def test_explain_and_cache_info_on_nnx_structures() -> None:
    m = Net(nnx.Rngs(0))
    gd = sg.generic.flatten(m)[0]
    before = sg.explain(gd)  # before any compilation: what it would get
    assert "Structure of Net" in before and "not specialized yet" in before
    sg.flatten(m)
    sg.flatten(m)
    sg.flatten(m)
    text = sg.explain(gd, max_lines=None)
    assert "Status: specialized" in text
    assert "Param x" in text and "BatchStat x" in text and "Linear x" in text
    assert "made at the current trace level" in text  # the trace-token checks of the update
    assert "flatten hits=2" in text
    info = sg.cache_info()
    assert info["hits"] == 2 and info["compiled_variants"] == 1 and info["compile_failures"] == 0


def test_jit_on_a_ref_backed_variable_matches_nnx_jit(served_by: str) -> None:
    class WithRef(nnx.Module):
        def __init__(self) -> None:
            self.v = nnx.Variable(jnp.zeros(3), ref=True)
            self.p = nnx.Param(jnp.ones(3))

    def step(m: Any) -> jax.Array:
        m.v[...] = m.v[...] + m.p[...]
        return m.v[...].sum()

    ours, theirs = WithRef(), WithRef()
    ref = ours.v.get_raw_value()
    step_sg, step_nnx = sg.jit(step), nnx.jit(step)
    for _ in range(3):
        assert float(step_sg(ours)) == float(step_nnx(theirs))
    assert ours.v.get_raw_value() is ref  # written into its Ref, as nnx does
    np.testing.assert_array_equal(ours.v[...], theirs.v[...])
    assert step_sg.trace_count == 1
    # A Ref-backed Variable has no raw layout: its structure is declined, the
    # generic walker serves it (and says so in explain).
    info = sg.cache_info()
    assert info["compiled_variants"] == 0
    assert info["declined"] >= (1 if served_by != "generic" else 0)
    text = sg.explain(sg.generic.flatten(ours)[0])
    assert "has no layout generated code can use" in text or served_by == "generic"


def test_jit_retraces_when_a_variable_gets_new_metadata(served_by: str) -> None:
    """set_metadata changes the structure: sg.jit traces again and the function sees the
    new metadata, as nnx.jit does (a stale trace would scale by the old factor)."""

    def step(m: Any) -> jax.Array:
        return m.kernel[...].sum() * m.kernel.get_metadata("scale", 1.0)

    ours, theirs = nnx.Linear(2, 2, rngs=nnx.Rngs(0)), nnx.Linear(2, 2, rngs=nnx.Rngs(0))
    step_sg, step_nnx = sg.jit(step), nnx.jit(step)
    assert float(step_sg(ours)) == float(step_nnx(theirs))
    assert float(step_sg(ours)) == float(step_nnx(theirs))
    for m in (ours, theirs):
        m.kernel.set_metadata(scale=3.0)
    assert float(step_sg(ours)) == float(step_nnx(theirs)) != float(step(nnx.Linear(2, 2, rngs=nnx.Rngs(0))))
    assert step_sg.trace_count == 2
    assert ours.kernel.get_metadata("scale") == 3.0
    assert_served_by(served_by)
