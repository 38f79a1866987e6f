"""Partition metadata, ``sg.shard``, and ``vmap`` / ``scan`` / ``remat`` / ``eval_shape``
over graph nodes, on the default (single) device.

The 8-device mesh cases live in ``tests/mesh_cases.py`` (run in a subprocess by
``tests/test_mesh.py``). Every test here runs through the generic and the
specialized path (the ``mode`` fixture checks which one actually served it).
Oracles: the same computation written per model by hand (unrolled layers, separate
ensemble members) or in plain JAX.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import outlined_hits, path_variants
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import specgraph as sg
from specgraph import sharding as sgs
from specgraph.runtime.cache import CONFIG

# --------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------


class Dense(sg.Node):
    """A layer with annotated parameters and a call counter (a non-Param state it writes)."""

    def __init__(self, key: jax.Array, din: int, dout: int, w_axes: tuple = (None, "model")) -> None:
        k1, k2 = jax.random.split(key)
        self.w = sg.Param(jax.random.normal(k1, (din, dout)) / np.sqrt(din), sharding=w_axes)
        self.b = sg.Param(0.1 * jax.random.normal(k2, (dout,)), sharding=(w_axes[1],))
        self.calls = sg.State(jnp.zeros((), jnp.int32))

    def __call__(self, x: jax.Array) -> jax.Array:
        self.calls.value = self.calls.value + 1
        return jnp.tanh(x @ self.w.value + self.b.value)


class Block(sg.Node):
    """A residual MLP block: the unit stacked along a layer axis for scan."""

    def __init__(self, key: jax.Array, width: int) -> None:
        k1, k2 = jax.random.split(key)
        self.up = Dense(k1, width, 2 * width, (None, "model"))
        self.down = Dense(k2, 2 * width, width, ("model", None))

    def __call__(self, x: jax.Array) -> jax.Array:
        return x + self.down(self.up(x))


class Counter(sg.Node):
    def __init__(self) -> None:
        self.n = sg.State(jnp.zeros((), jnp.float32))


class Box(sg.Node):
    def __init__(self, **kw: Any) -> None:
        for k, v in kw.items():
            setattr(self, k, v)


def close(a: Any, b: Any, rtol: float = 1e-5, atol: float = 1e-5) -> None:
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "mode" in metafunc.fixturenames:
        metafunc.parametrize("mode", path_variants(metafunc), indirect=True)


@pytest.fixture
def mode(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run the test on one path (generic, specialized, and for a test marked ``repeats``
    outlined: ``outline_min=2``); afterwards, check that path served the flattens (and
    sg.jit's walks), the outlined one by outlined code."""
    if request.param == "generic":
        with sg.specialization(False):
            yield "generic"
        assert _served() == 0
        return
    saved = CONFIG.outline_min
    if request.param == "outlined":
        sg.configure(outline_min=2)
        sg.clear_cache()
    try:
        yield request.param
    finally:
        CONFIG.outline_min = saved
    assert _served() > 0
    if request.param == "outlined":
        assert outlined_hits() > 0, "no call was served by outlined code"


def _served() -> int:
    info = sg.cache_info()
    return info["hits"] + info["walk_hits"]


def one_device_mesh() -> Mesh:
    return Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("data", "model"))


KEYS = jax.random.split(jax.random.key(0), 4)
X = jax.random.normal(jax.random.key(1), (5, 6))

# --------------------------------------------------------------------------------------
# partition metadata
# --------------------------------------------------------------------------------------


def test_partition_specs_follow_annotations(mode: str) -> None:
    m = Box(d=Dense(KEYS[0], 6, 4), leaf=jnp.ones(3), p=sg.Param(jnp.ones(2), sharding=P("data")))
    for _ in range(2):
        specs = sg.partition_specs(m)
    assert list(specs) == list(sg.flatten(m)[1])
    assert specs[("d", "w")] == P(None, "model")
    assert specs[("d", "b")] == P("model")
    assert specs[("d", "calls")] == P()  # unannotated: replicated
    assert specs[("leaf",)] == P()  # bare array leaf: replicated
    assert specs[("p",)] == P("data")  # a PartitionSpec works as the annotation too


def test_partition_specs_are_computed_once_per_graphdef(mode: str) -> None:
    a, b = Dense(KEYS[0], 6, 4), Dense(KEYS[1], 6, 4)
    gd_a, gd_b = sg.graphdef(a), sg.graphdef(b)
    assert gd_a == gd_b
    first = sgs.specs_for(gd_a)
    assert sgs.specs_for(gd_b) is first  # equal structure: the same cached specs
    assert sg.partition_specs(b).values() == list(first)
    mesh = one_device_mesh()
    assert sgs.shardings_for(gd_a, mesh) is sgs.shardings_for(gd_b, mesh)


def test_bad_annotations_name_the_path() -> None:
    with pytest.raises(TypeError, match=r"path \('x',\)[\s\S]*one entry per array dimension"):
        sg.partition_specs(Box(x=sg.Param(jnp.ones(2), sharding="model")))
    with pytest.raises(TypeError, match=r"path \('x',\)[\s\S]*entry 3"):
        sg.partition_specs(Box(x=sg.Param(jnp.ones(2), sharding=(3,))))
    with pytest.raises(TypeError, match=r"'x'[\s\S]*hashable"):
        sg.partition_specs(Box(x=sg.Param(jnp.ones(2), sharding=["model"])))
    with pytest.raises(ValueError, match=r"path \('x',\)[\s\S]*no axis 'tensor'[\s\S]*'data', 'model'"):
        sg.named_shardings(Box(x=sg.Param(jnp.ones(2), sharding=("tensor",))), one_device_mesh())
    with pytest.raises(ValueError, match=r"path \('x',\)"):
        sg.shard(Box(x=sg.Param(jnp.ones(2), sharding=(None, "model"))), one_device_mesh())


@pytest.mark.repeats
def test_shard_places_every_value_in_place(mode: str) -> None:
    mesh = one_device_mesh()
    m = Box(d=Dense(KEYS[0], 6, 4), leaf=jnp.ones(3), layers=[Dense(k, 6, 4) for k in KEYS[1:]])
    for _ in range(2):
        w_state = m.d.w
        assert sg.shard(m, mesh) is m
        assert m.d.w is w_state  # the same State objects, new values
    for path, v in sg.flatten(m)[1].items():
        assert v.sharding == NamedSharding(mesh, sgs.canonical_spec(sg.partition_specs(m)[path]))
    close(m.d.w.value, Dense(KEYS[0], 6, 4).w.value)


def test_shard_inside_jit_constrains(mode: str) -> None:
    mesh = one_device_mesh()
    make = sg.jit(lambda: sg.shard(Dense(KEYS[0], 6, 4), mesh))
    for _ in range(2):
        m = make()
    close(m.w.value, Dense(KEYS[0], 6, 4).w.value)
    jaxpr = str(jax.make_jaxpr(lambda: sg.flatten(sg.shard(Dense(KEYS[0], 6, 4), mesh))[1])())
    assert "sharding_constraint" in jaxpr


class Axes(sg.State):
    """A state class keeping its annotation under another metadata key."""


def test_register_partition_metadata() -> None:
    def get(meta: tuple) -> Any:
        return dict(meta).get("axes")

    def put(meta: tuple, names: Any) -> tuple:
        return tuple(sorted({**dict(meta), "axes": names}.items()))

    sgs.register_partition_metadata(Axes, get, put)
    try:
        m = Box(a=Axes(jnp.ones((2, 3)), axes=("model", None)))
        assert sg.partition_specs(m)[("a",)] == P("model", None)
        make = sg.vmap(lambda k: Box(a=Axes(jnp.ones((2, 3)), axes=("model", None))), partition_name="data")
        ens = make(KEYS)
        assert ens.a.metadata["axes"] == ("data", "model", None)
    finally:
        del sgs._access[Axes]
        sgs._access_by_type.clear()


# --------------------------------------------------------------------------------------
# jit: in_shardings / out_shardings
# --------------------------------------------------------------------------------------


def test_jit_in_and_out_shardings(mode: str) -> None:
    mesh = one_device_mesh()
    s = NamedSharding(mesh, P("data"))
    d = Dense(KEYS[0], 6, 4)
    f = sg.jit(lambda m, x: (m(x), x.sum()), in_shardings=(None, s), out_shardings=(s, None))
    for _ in range(2):
        y, total = f(d, np.asarray(X))
    close(y, Dense(KEYS[0], 6, 4)(X))
    close(total, X.sum())
    assert y.sharding.is_equivalent_to(s, 2)  # one device: the mesh tests check the layout itself
    assert int(d.calls.value) == 2
    jaxpr = str(jax.make_jaxpr(lambda x: f._call_fn(Dense(KEYS[0], 6, 4), x))(X))
    assert jaxpr.count("sharding_constraint") == 2


@pytest.mark.repeats
def test_jit_sgd_steps_on_a_stack_of_annotated_layers(mode: str) -> None:
    """Annotated layers of one shape (a loop in outlined code): sg.jit steps of
    sg.value_and_grad, sg.split and an update of the Params only (a part: by slot), against
    the same steps in plain JAX; each layer's call count is written back."""
    m = Box(layers=[Dense(k, 6, 6) for k in KEYS])
    ps = [(layer.w.value, layer.b.value) for layer in m.layers]

    def loss(model: Box, x: jax.Array) -> jax.Array:
        for layer in model.layers:
            x = layer(x)
        return jnp.mean(x**2)

    @sg.jit
    def step(model: Box, x: jax.Array) -> jax.Array:
        value, grads = sg.value_and_grad(loss)(model, x)
        params = sg.split(model, sg.Param, ...)[1]
        sg.update(model, jax.tree.map(lambda p, g: p - 0.1 * g, params, grads))
        return value

    def ref_loss(ps: list, x: jax.Array) -> jax.Array:
        for w, b in ps:
            x = jnp.tanh(x @ w + b)
        return jnp.mean(x**2)

    for _ in range(3):
        want, g = jax.value_and_grad(ref_loss)(ps, X)
        close(step(m, X), want)
        ps = jax.tree.map(lambda p, g: p - 0.1 * g, ps, g)
    for layer, (w, b) in zip(m.layers, ps, strict=True):
        close(layer.w.value, w)
        close(layer.b.value, b)
        assert int(layer.calls.value) == 3
    assert step.trace_count == 1


def test_jit_shardings_errors() -> None:
    mesh = one_device_mesh()
    s = NamedSharding(mesh, P())
    d = Dense(KEYS[0], 6, 4)
    with pytest.raises(TypeError, match=r"in_shardings\[0\][\s\S]*a Dense"):
        sg.jit(lambda m: m(X), in_shardings=(s,))(d)
    with pytest.raises(TypeError, match=r"out_shardings[\s\S]*Dense[\s\S]*sg.shard"):
        sg.jit(lambda m: m, out_shardings=s)(d)
    with pytest.raises(ValueError, match=r"in_shardings\[1\] is given for a static argument"):
        sg.jit(lambda m, k: m(X) * k, static_argnums=1, in_shardings=(None, s))(d, 2)
    with pytest.raises(ValueError, match=r"in_shardings has 3 entries but the call has 1"):
        sg.jit(lambda m: m(X), in_shardings=(None, None, s))(d)
    assert int(d.calls.value) == 0  # nothing written by the failed calls


# --------------------------------------------------------------------------------------
# vmap
# --------------------------------------------------------------------------------------


def make_ensemble() -> Dense:
    return sg.vmap(lambda k: Dense(k, 6, 4), in_axes=0, partition_name="data")(KEYS)


def test_vmap_ensemble_equals_separate_models(mode: str) -> None:
    ens = make_ensemble()
    ens = make_ensemble()
    members = [Dense(k, 6, 4) for k in KEYS]
    assert isinstance(ens, Dense)
    for name in ("w", "b", "calls"):
        close(getattr(ens, name).value, jnp.stack([getattr(m, name).value for m in members]))
    # annotations gained the ensemble axis (partition_name), in the structure
    assert ens.w.metadata["sharding"] == ("data", None, "model")
    assert sg.partition_specs(ens)[("b",)] == P("data", "model")
    run = sg.vmap(lambda m, x: m(x), in_axes=(0, None))
    w_state = ens.w
    for _ in range(2):
        y = run(ens, X)
    close(y, jnp.stack([m(X) for m in members]))
    # the counter was written back per member; the State objects are the caller's
    close(ens.calls.value, [2, 2, 2, 2])
    assert ens.w is w_state and ens.w.metadata["sharding"] == ("data", None, "model")


def test_vmap_inside_sees_unstacked_annotations(mode: str) -> None:
    ens = make_ensemble()
    seen = []

    def f(m: Dense, x: jax.Array) -> jax.Array:
        seen.append(sg.partition_specs(m)[("w",)])
        return m(x)

    sg.vmap(f, in_axes=(0, None))(ens, X)
    sg.vmap(f, in_axes=(0, None))(ens, X)
    assert seen == [P(None, "model")] * 2


def test_vmap_state_axes_broadcast_and_errors(mode: str) -> None:
    ens = make_ensemble()
    shared = Counter()
    axes = sg.StateAxes({sg.Param: 0, ...: None})
    for _ in range(2):
        y = sg.vmap(lambda m, x: x @ m.w.value + m.b.value, in_axes=(axes, None))(ens, X)
    close(y, jnp.stack([X @ ens.w.value[i] + ens.b.value[i] for i in range(4)]))
    # writing a broadcast state with a value that varies along the batch: the error names it
    def leak(m: Dense, c: Counter) -> jax.Array:
        c.n.value = m.w.value.sum()
        return m.w.value

    with pytest.raises(ValueError, match=r"in_axes None[\s\S]*argument 1 at \('n',\)"):
        sg.vmap(leak, in_axes=(0, None))(ens, shared)
    close(shared.n.value, 0.0)
    # writing it with a value that does not vary is fine
    def bump(c: Counter, m: Dense) -> jax.Array:
        c.n.value = c.n.value + 1.0
        return m.w.value.sum()

    for _ in range(2):
        sums = sg.vmap(bump, in_axes=(None, 0))(shared, ens)
    close(sums, ens.w.value.sum(axis=(1, 2)))
    close(shared.n.value, 2.0)


def test_vmap_axes_and_outputs(mode: str) -> None:
    ens = make_ensemble()
    moved = Box(w=sg.Param(jnp.moveaxis(ens.w.value, 0, 2)))
    for _ in range(2):
        out = sg.vmap(lambda b, x: x @ b.w.value, in_axes=(2, None), out_axes=1)(moved, X)
    assert out.shape == (5, 4, 4)
    close(out, jnp.stack([X @ ens.w.value[i] for i in range(4)], axis=1))
    # a node returned as it came in is the caller's live object; kwargs map over axis 0
    f = sg.vmap(lambda m, *, x: (m, x * 2), in_axes=(0,))
    m_out, x2 = f(ens, x=jnp.ones((4, 3)))
    assert m_out is ens
    close(x2, 2 * jnp.ones((4, 3)))
    # an out_axes prefix with StateAxes for a fresh node, per state
    made = sg.vmap(
        lambda k: Dense(k, 6, 4), out_axes=sg.StateAxes({sg.Param: 1, ...: 0})
    )(KEYS)
    assert made.w.value.shape == (6, 4, 4) and made.calls.value.shape == (4,)
    close(jnp.moveaxis(made.w.value, 1, 0), ens.w.value)
    assert made.w.metadata["sharding"] == (None, None, "model")


def test_vmap_spec_errors() -> None:
    with pytest.raises(TypeError, match=r"sg.Carry is for sg.scan"):
        sg.vmap(lambda m: m, in_axes=sg.Carry)
    with pytest.raises(ValueError, match=r"in_axes has 1 entries but the call has 2"):
        sg.vmap(lambda a, b: a, in_axes=(0,))(jnp.ones(2), jnp.ones(2))
    ens = make_ensemble()
    with pytest.raises(ValueError, match=r"no filter[\s\S]*\('calls',\)"):
        sg.vmap(lambda m: m.w.value, in_axes=(sg.StateAxes({sg.Param: 0}),))(ens)


# --------------------------------------------------------------------------------------
# scan
# --------------------------------------------------------------------------------------

WIDTH, DEPTH = 4, 12
LAYER_KEYS = jax.random.split(jax.random.key(2), DEPTH)


def stacked_blocks() -> Block:
    return sg.vmap(lambda k: Block(k, WIDTH))(LAYER_KEYS)


def unrolled(x: jax.Array) -> jax.Array:
    for k in LAYER_KEYS:
        x = Block(k, WIDTH)(x)
    return x


def forward(blocks: Block, x: jax.Array) -> jax.Array:
    return sg.scan(lambda b, h: b(h), in_axes=(0, sg.Carry), out_axes=sg.Carry)(blocks, x)


def test_scan_over_stacked_blocks_equals_unrolled(mode: str) -> None:
    blocks = stacked_blocks()
    x = jax.random.normal(jax.random.key(3), (3, WIDTH))
    for _ in range(2):
        y = forward(blocks, x)
    close(y, unrolled(x))
    close(blocks.up.calls.value, [2] * DEPTH)  # every layer's counter, stacked back
    jitted = sg.jit(forward)
    for _ in range(2):
        close(jitted(blocks, x), unrolled(x))
    assert jitted.trace_count == 1
    close(blocks.down.calls.value, [4] * DEPTH)


def test_grad_through_scan_equals_unrolled(mode: str) -> None:
    blocks = stacked_blocks()
    x = jax.random.normal(jax.random.key(3), (3, WIDTH))
    layers = [Block(k, WIDTH) for k in LAYER_KEYS]

    def loss_unrolled(ls: list[Block]) -> jax.Array:
        h = x
        for b in ls:
            h = b(h)
        return jnp.sum(h**2)

    g = sg.grad(lambda b: jnp.sum(forward(b, x) ** 2))(blocks)
    g = sg.grad(lambda b: jnp.sum(forward(b, x) ** 2))(blocks)
    g_ref = sg.grad(loss_unrolled)(layers)
    for path, v in g.items():
        close(v, jnp.stack([g_ref[(i, *path)] for i in range(DEPTH)]), rtol=1e-4)


def test_scan_carry_forms(mode: str) -> None:
    blocks = stacked_blocks()
    x = jax.random.normal(jax.random.key(3), (3, WIDTH))
    counter = Counter()

    # an explicit carry holding a node and an array; ys stacked along axis 1
    def step(carry: tuple[Counter, jax.Array], b: Block) -> tuple[tuple[Counter, jax.Array], jax.Array]:
        c, h = carry
        c.n.value = c.n.value + 1.0
        h = b(h)
        return (c, h), h.sum(axis=1)

    for i in range(2):
        (c_out, h), ys = sg.scan(step, in_axes=(sg.Carry, 0), out_axes=(sg.Carry, 1))((counter, x), blocks)
        assert c_out is counter
        close(counter.n.value, DEPTH * (i + 1))
    close(h, unrolled(x))
    assert ys.shape == (3, DEPTH)
    h_ref = x
    for j, k in enumerate(LAYER_KEYS):
        h_ref = Block(k, WIDTH)(h_ref)
        close(ys[:, j], h_ref.sum(axis=1))

    # a per-state carry: the counter's state flows through the iterations, Params are scanned
    box = Box(blocks=blocks, count=sg.State(jnp.zeros((), jnp.float32)))
    axes = sg.StateAxes({sg.Param: 0, (lambda p, v: p == ("count",)): sg.Carry, ...: 0})

    def counted(bx: Box, h: jax.Array) -> jax.Array:
        bx.count.value = bx.count.value * 2 + 1
        return bx.blocks(h)

    for _ in range(2):
        y = sg.scan(counted, in_axes=(axes, sg.Carry), out_axes=sg.Carry)(box, x)
    close(y, unrolled(x))
    close(box.count.value, 2.0 ** (2 * DEPTH) - 1)


def test_scan_reverse_and_length(mode: str) -> None:
    blocks = stacked_blocks()
    x = jax.random.normal(jax.random.key(3), (3, WIDTH))
    for _ in range(2):
        y = sg.scan(lambda b, h: b(h), in_axes=(0, sg.Carry), out_axes=sg.Carry, reverse=True)(blocks, x)
    h = x
    for k in LAYER_KEYS[::-1]:
        h = Block(k, WIDTH)(h)
    close(y, h)

    def count(c: jax.Array) -> tuple[jax.Array, jax.Array]:
        return c + 1, c

    c, ys = sg.scan(count, in_axes=(sg.Carry,), out_axes=(sg.Carry, 0), length=5)(jnp.int32(0))
    assert int(c) == 5
    close(ys, np.arange(5))


def test_scan_errors() -> None:
    blocks = stacked_blocks()
    x = jax.random.normal(jax.random.key(3), (3, WIDTH))
    bcast = sg.StateAxes({sg.Param: 0, ...: None})
    with pytest.raises(ValueError, match=r"broadcast state[\s\S]*argument 0 at \('down', 'calls'\)"):
        sg.scan(lambda b, h: b(h), in_axes=(bcast, sg.Carry), out_axes=sg.Carry)(blocks, x)
    with pytest.raises(ValueError, match="structure differs"):
        sg.scan(lambda b, h: (h, h), in_axes=(0, sg.Carry), out_axes=sg.Carry)(blocks, x)
    with pytest.raises(TypeError, match=r"carry[\s\S]*\[0\] argument 1 at \(\)"):
        sg.scan(lambda b, h: h.astype(jnp.int32), in_axes=(0, sg.Carry), out_axes=sg.Carry)(blocks, x)
    with pytest.raises(TypeError, match=r"needs sg.Carry in out_axes"):
        sg.scan(lambda b, h: h, in_axes=(0, sg.Carry), out_axes=0)
    with pytest.raises(TypeError, match=r"one argument as sg.Carry"):
        sg.scan(lambda a, b: a, in_axes=(sg.Carry, sg.Carry), out_axes=sg.Carry)
    with pytest.raises(ValueError, match="give length="):
        sg.scan(lambda h: (h, h), in_axes=(sg.Carry,))(x)
    # nothing was written back by the failed calls
    close(blocks.up.calls.value, [0] * DEPTH)


# --------------------------------------------------------------------------------------
# remat
# --------------------------------------------------------------------------------------


def test_remat_gradients_and_writes(mode: str) -> None:
    block = Block(KEYS[0], WIDTH)
    ref = Block(KEYS[0], WIDTH)
    x = jax.random.normal(jax.random.key(3), (3, WIDTH))

    def loss(b: Block) -> jax.Array:
        return jnp.sum(sg.remat(lambda b, h: b(b(h)))(b, x) ** 2)

    for _ in range(2):
        g = sg.grad(loss)(block)
    g_ref = sg.grad(lambda b: jnp.sum(b(b(x)) ** 2))(ref)
    for path, v in g.items():
        close(v, g_ref[path], rtol=1e-4)
    y = sg.remat(lambda b, h: b(h))(block, x)
    close(y, Block(KEYS[0], WIDTH)(x))
    # written back: the grad calls' writes (two calls of b in each) and remat's one
    close(block.up.calls.value, 5)
    jaxpr = str(jax.make_jaxpr(lambda x: sg.grad(loss)(Block(KEYS[0], WIDTH)))(x))
    assert "checkpoint" in jaxpr or "remat" in jaxpr


# --------------------------------------------------------------------------------------
# eval_shape
# --------------------------------------------------------------------------------------


def test_eval_shape_builds_the_structure_only(mode: str) -> None:
    for _ in range(2):
        abstract = sg.eval_shape(lambda k: Block(k, WIDTH), KEYS[0])
    real = Block(KEYS[0], WIDTH)
    assert sg.graphdef(abstract) == sg.graphdef(real)  # same structure, metadata included
    for path, v in sg.flatten(abstract)[1].items():
        r = sg.flatten(real)[1][path]
        assert isinstance(v, jax.ShapeDtypeStruct)
        assert (v.shape, v.dtype) == (r.shape, r.dtype)
    # arguments are left alone; nodes returned come back as fresh abstract copies
    d = Dense(KEYS[0], 6, 4)
    w = d.w.value
    out_node, y = sg.eval_shape(lambda m, x: (m, m(x)), d, X)
    assert d.w.value is w and int(d.calls.value) == 0
    assert out_node is not d and isinstance(out_node.w.value, jax.ShapeDtypeStruct)
    assert out_node.calls.value.shape == ()
    assert y.shape == (5, 4)


def test_eval_shape_then_shard_plans_the_real_placement(mode: str) -> None:
    mesh = one_device_mesh()
    abstract = sg.eval_shape(lambda: make_ensemble())
    sg.shard(abstract, mesh)
    real = sg.shard(make_ensemble(), mesh)
    plan = sg.flatten(abstract)[1]
    for path, v in sg.flatten(real)[1].items():
        assert plan[path].sharding == v.sharding
        assert plan[path].shape == v.shape


# --------------------------------------------------------------------------------------
# composition
# --------------------------------------------------------------------------------------


def test_transforms_of_transforms(mode: str) -> None:
    # Regression: a transform wrapping another copied the inner one's __dict__ (its
    # ``fn`` included) over its own, so sg.jit(sg.vmap(f)) ran f unmapped.
    ens = make_ensemble()
    run = sg.jit(sg.vmap(lambda m, x: m(x), in_axes=(0, None)))
    for _ in range(2):
        close(run(ens, X), jnp.stack([Dense(k, 6, 4)(X) for k in KEYS]))
    assert run.fn.in_axes == (0, None)
    twice = sg.jit(sg.jit(lambda m, x: m(x)))
    d = Dense(KEYS[0], 6, 4)
    for _ in range(2):
        close(twice(d, X), Dense(KEYS[0], 6, 4)(X))
    assert twice.trace_count == 1 and twice.fn.trace_count == 1
    close(d.calls.value, 2)
    rematted = sg.remat(sg.scan(lambda b, h: b(h), in_axes=(0, sg.Carry), out_axes=sg.Carry))
    close(rematted(stacked_blocks(), jnp.ones((3, WIDTH))), unrolled(jnp.ones((3, WIDTH))))


# --------------------------------------------------------------------------------------
# NNX Variables' own annotations (out_sharding)
# --------------------------------------------------------------------------------------


def test_nnx_out_sharding_is_the_partition_annotation(mode: str) -> None:
    nnx = pytest.importorskip("flax.nnx")
    mesh = one_device_mesh()

    class Model(nnx.Module):
        def __init__(self) -> None:
            self.w = nnx.Param(jnp.ones((6, 4)), out_sharding=(None, "model"), mesh=mesh)
            self.b = nnx.Param(jnp.zeros(4), out_sharding=("model",), mesh=mesh)
            self.count = nnx.BatchStat(jnp.zeros(()))

    model = Model()
    for _ in range(2):
        specs = sg.partition_specs(model)
    ref = dict(nnx.to_flat_state(nnx.get_partition_spec(nnx.state(model))))
    assert list(specs) == list(ref)
    for path, spec in specs.items():
        assert spec == ref[path].get_value()
    assert specs[("w",)] == P(None, "model")
    sg.shard(model, mesh)
    assert model.w.get_raw_value().sharding == NamedSharding(mesh, P(None, "model"))
    # a stacked NNX Variable's annotation gains the new axis, in NNX's own metadata key
    ens = sg.vmap(lambda k: Model(), partition_name="data")(KEYS)
    ens = sg.vmap(lambda k: Model(), partition_name="data")(KEYS)
    assert ens.w.get_metadata("out_sharding") == ("data", None, "model")
    assert ens.count.get_raw_value().shape == (4,)


# --------------------------------------------------------------------------------------
# annotated states on the fast path
# --------------------------------------------------------------------------------------


def test_metadata_guard_costs_nothing_for_the_compiled_metadata(monkeypatch: pytest.MonkeyPatch) -> None:
    # Regression: the specialized flatten computed the type signature of every state's
    # metadata on every call, so annotated models (sharding=...) flattened ~10x slower.
    # The metadata tuple the code was compiled against is now accepted by identity.
    from specgraph import _sameness

    calls = []
    real = _sameness.meta_sig

    def counting(metadata: tuple) -> tuple:
        calls.append(metadata)
        return real(metadata)

    monkeypatch.setattr(_sameness, "meta_sig", counting)
    sg.clear_cache()
    model = Box(layers=[Dense(k, 6, 4) for k in KEYS])
    ref = sg.generic.flatten(model)
    sg.flatten(model)  # the reference walker, then the specialized code is compiled
    calls.clear()
    hits = sg.cache_info()["hits"]
    for _ in range(3):
        gd, sm = sg.flatten(model)
    assert sg.cache_info()["hits"] == hits + 3
    assert gd == ref[0] and sm.values() == ref[1].values()
    assert calls == []  # no signature computed: the states hold the compiled metadata tuples
    # another model of the same structure: equal metadata, other tuples: still a hit
    other = Box(layers=[Dense(k, 6, 4) for k in KEYS])
    assert sg.flatten(other)[0] == gd
    assert sg.cache_info()["hits"] == hits + 4
    # and a metadata value of another type is still told apart (1 == True)
    tagged = Box(p=sg.Param(jnp.ones(2), tag=1))
    sg.flatten(tagged)
    sg.flatten(tagged)
    assert sg.flatten(Box(p=sg.Param(jnp.ones(2), tag=True)))[0] == sg.generic.flatten(
        Box(p=sg.Param(jnp.ones(2), tag=True)))[0]


# --------------------------------------------------------------------------------------
# found by tests/fuzz_scaleout.py
# --------------------------------------------------------------------------------------


def test_annotation_longer_than_the_value_or_naming_an_axis_twice_is_an_error_naming_the_path(
        mode: str) -> None:
    # Regression: ('data', None, None) on a 2-d value was accepted (the trailing Nones are
    # dropped from the NamedSharding) where jax.device_put refuses P('data', None, None), and
    # ('model', 'model') raised JAX's DuplicateSpecError, naming no path.
    mesh = one_device_mesh()

    def make(axes: Any) -> Box:
        return Box(heads={"x')\n": Box(w=sg.Param(jnp.ones((4, 8)), sharding=axes))}, b=sg.Param(jnp.ones(3)))

    for axes, words in ((("data", None, None), "3 entries for a value of 2 dimensions"),
                        (P("data", None, None), "3 entries for a value of 2 dimensions"),
                        (("model", "model"), "over the mesh axis 'model'")):
        path = re.escape(repr(("heads", "x')\n", "w")))
        for _ in range(2):
            box = make(axes)
            before = [v for v in sg.flatten(box)[1].values()]
            with pytest.raises(ValueError, match=f"{path}[\\s\\S]*{words}"):
                sg.shard(box, mesh)
            assert all(a is b for a, b in zip(before, sg.flatten(box)[1].values(), strict=True))
            with pytest.raises(ValueError, match=f"{path}[\\s\\S]*{words}"):
                sg.named_shardings(box, mesh)
            with pytest.raises(ValueError, match=f"{path}[\\s\\S]*{words}"):  # a plan: alike
                sg.shard(sg.eval_shape(lambda: make(axes)), mesh)  # noqa: B023
            with pytest.raises(ValueError, match=f"{path}[\\s\\S]*{words}"):  # inside a trace: alike
                sg.jit(lambda: sg.shard(make(axes), mesh))()  # noqa: B023 - called at once
    ok = sg.shard(make(("data",)), mesh)  # shorter than the value: the rest replicated
    assert ok.heads["x')\n"].w.value.sharding.spec == P("data")


def test_a_value_shared_between_a_mapped_and_a_broadcast_position_is_an_error(mode: str) -> None:
    # Regression: the first path's axis won silently. With in_axes=(None, 0) the shared
    # state was broadcast (JAX then said "vmap must have at least one non-None value in
    # in_axes", naming nothing); with (0, None) it was mapped where the caller said None.
    shared = sg.Param(jnp.arange(4.0))
    a, b = Box(s=shared), Box(s=shared, t=sg.Param(jnp.arange(4.0)))
    for in_axes, there, here in (((None, 0), "None", "0"), ((0, None), "0", "None")):
        for _ in range(2):
            with pytest.raises(ValueError, match=r"argument 0 at \('s',\) and at argument 1 at \('s',\)"
                                                 f"[\\s\\S]*axis {there} there but {here} here"):
                sg.vmap(lambda a, b: a.s.value + b.t.value, in_axes=in_axes)(a, b)
            assert a.s is shared and b.s is shared
    with pytest.raises(ValueError,
                       match=r"argument 0 at \('s',\) and at argument 1 at \('s',\)[\s\S]*0 there but None"):
        sg.scan(lambda a, b, h: h + a.s.value[0], in_axes=(0, None, sg.Carry), out_axes=sg.Carry)(b, a, 0.0)
    # the same axis at both places (or tied within one argument) is fine
    for _ in range(2):
        close(sg.vmap(lambda a, b: a.s.value + b.s.value, in_axes=(0, 0))(a, b), 2 * jnp.arange(4.0))
        close(sg.vmap(lambda a, b: a.s.value * b.s.value, in_axes=(0, sg.StateAxes({...: 0})))(a, b),
              jnp.arange(4.0) ** 2)
    tied = Box(p=shared, q=shared)
    close(sg.vmap(lambda t: t.p.value + t.q.value)(tied), 2 * jnp.arange(4.0))
    held_twice = Box(x=a, y=[a])  # a shared node: its state is reached at two paths too
    with pytest.raises(ValueError, match=r"\('x', 's'\) and at argument 0 at \('y', 0, 's'\)"):
        sg.vmap(lambda h: h.x.s.value, in_axes=(sg.StateAxes({_under_x: 0, ...: None}),))(held_twice)


def _under_x(path: tuple, value: Any) -> bool:
    return path[:1] == ("x",)


def test_scan_takes_a_python_scalar_as_the_initial_carry(mode: str) -> None:
    # Regression: a Python scalar in an argument is static, so lax.scan's usual
    # scan(f, 0.0, xs) failed with "returned a carry whose structure differs (0 values,
    # got 1 ...)". The carry's scalars are arrays, as lax.scan makes them; node statics stay.
    ens = sg.vmap(lambda k: Dense(k, 6, 6))(KEYS)

    def body(d: Dense, h: Any) -> Any:
        return h + d.w.value.sum()

    total = ens.w.value.sum()
    for init in (0.0, 1, (0.0, jnp.zeros(())), {"h": 2.0}):
        for _ in range(2):
            if isinstance(init, tuple):
                out = sg.scan(lambda d, c: (body(d, c[0]), c[1] + 1), in_axes=(0, sg.Carry),
                              out_axes=sg.Carry)(ens, init)
                close(out[0], total)
                close(out[1], 4.0)
            elif isinstance(init, dict):
                out = sg.scan(lambda d, c: {"h": body(d, c["h"])}, in_axes=(0, sg.Carry),
                              out_axes=sg.Carry)(ens, init)
                close(out["h"], total + 2.0)
            else:
                close(sg.scan(body, in_axes=(0, sg.Carry), out_axes=sg.Carry)(ens, init), total + init)
