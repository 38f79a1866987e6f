"""Sharded-state cases on a 2x4 (``data``, ``model``) mesh of 8 simulated CPU devices.

JAX fixes its device count when it starts, so these run in a process of their own:
``tests/test_mesh.py`` starts ``pytest`` on this file with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (the module refuses to run
with fewer devices). Run by hand::

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m pytest tests/mesh_cases.py -p no:xdist
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import outlined_hits, path_variants
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import specgraph as sg
from specgraph import sharding as sgs
from specgraph.runtime.cache import CONFIG

if jax.device_count() < 8:  # pragma: no cover - test_mesh.py starts this file with 8 devices
    pytest.skip("needs 8 devices (XLA_FLAGS=--xla_force_host_platform_device_count=8)",
                allow_module_level=True)

MESH = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Auto, AxisType.Auto))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "mode" in metafunc.fixturenames:
        metafunc.parametrize("mode", path_variants(metafunc), indirect=True)


@pytest.fixture
def mode(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run the test on one path (generic, specialized, and for a test marked ``repeats``
    outlined: ``outline_min=2``); afterwards, check that path served the flattens (and
    sg.jit's walks), the outlined one by outlined code."""
    sg.clear_cache()
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


class Dense(sg.Node):
    def __init__(self, w: Any, b: Any, axes: tuple) -> None:
        self.w = sg.Param(jnp.asarray(w), sharding=axes)
        self.b = sg.Param(jnp.asarray(b), sharding=(axes[1],))

    @classmethod
    def seeded(cls, seed: int, din: int, dout: int, axes: tuple) -> Dense:
        """Initialized with NumPy: no JAX op runs (each eager op compiles on first use)."""
        rng = np.random.default_rng(seed)
        w = rng.standard_normal((din, dout), dtype=np.float32) / np.sqrt(din)
        return cls(w, 0.1 * rng.standard_normal((dout,), dtype=np.float32), axes)

    @classmethod
    def traced(cls, seed: jax.Array, din: int, dout: int, axes: tuple) -> Dense:
        """Initialized from a seed array with plain JAX ops: traceable, so ``sg.vmap`` can
        stack it (``jax.random`` would do, but its kernels compile slowly on 8 devices)."""
        grid = jnp.arange(din * dout, dtype=jnp.float32).reshape(din, dout)
        w = jnp.sin(1.3 * seed + 0.7 * grid) / np.sqrt(din)
        return cls(w, 0.1 * jnp.cos(seed + jnp.arange(dout, dtype=jnp.float32)), axes)

    def __call__(self, x: jax.Array) -> jax.Array:
        return x @ self.w.value + self.b.value


class MLP(sg.Node):
    def __init__(self, seed: int, width: int = 16) -> None:
        self.up = Dense.seeded(seed, 8, width, (None, "model"))  # column-parallel
        self.down = Dense.seeded(seed + 1, width, 8, ("model", None))  # row-parallel
        self.steps = sg.State(jnp.zeros((), jnp.int32))  # unannotated: replicated

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down(jnp.tanh(self.up(x)))


class DeepMLP(sg.Node):
    """Linear layers alternating column- and row-parallel weights (Megatron style)."""

    def __init__(self, depth: int = 2, width: int = 16) -> None:
        axes = [(None, "model"), ("model", None)]
        self.layers = [Dense.seeded(i, width, width, axes[i % 2]) for i in range(depth)]

    def __call__(self, x: jax.Array) -> jax.Array:
        *hidden, last = self.layers
        for lin in hidden:
            x = jnp.tanh(lin(x))
        return last(x)


class Trainer(sg.Node):
    def __init__(self, model: MLP, tx: optax.GradientTransformation) -> None:
        self.model = model
        self.tx = tx
        # Eagerly: the moments follow the parameters' shardings; the step count is
        # placed (replicated) so that every state is committed to the mesh.
        state = tx.init(sg.split(model, sg.Param, ...)[1])
        self.opt_state = sg.State(
            jax.tree.map(lambda a: a if a.committed else jax.device_put(a, NamedSharding(MESH, P())), state)
        )

    def step(self, x: jax.Array, y: jax.Array) -> jax.Array:
        loss, grads = sg.value_and_grad(mse)(self.model, x, y)
        params = sg.split(self.model, sg.Param, ...)[1]
        updates, self.opt_state.value = self.tx.update(grads, self.opt_state.value, params)
        sg.update(self.model, optax.apply_updates(params, updates))
        if hasattr(self.model, "steps"):
            self.model.steps.value = self.model.steps.value + 1
        return loss


def mse(m: MLP, x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean((m(x) - y) ** 2)


def batch() -> tuple[jax.Array, jax.Array]:
    x = np.random.default_rng(7).standard_normal((16, 8), dtype=np.float32)
    return jnp.asarray(x), jnp.asarray(np.sin(x))


def shardings(node: Any) -> list[Any]:
    return [leaf.sharding for leaf in jax.tree.leaves(sg.flatten(node)[1].values())]


def close(a: Any, b: Any, rtol: float = 1e-5, atol: float = 1e-5) -> None:
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)


def test_shard_places_each_state_on_its_spec(mode: str) -> None:
    for _ in range(2):
        model = sg.shard(MLP(0), MESH)
    specs = sg.partition_specs(model)
    for path, v in sg.flatten(model)[1].items():
        assert v.sharding == NamedSharding(MESH, sgs.canonical_spec(specs[path]))
    assert model.up.w.value.sharding.spec == P(None, "model")
    assert model.down.w.value.sharding.spec == P("model")
    # every device holds a quarter of a model-sharded weight
    assert model.up.w.value.addressable_shards[0].data.shape == (8, 4)
    with pytest.raises(ValueError, match=r"path \('b',\)[\s\S]*divide"):
        sg.shard(Dense.seeded(0, 8, 6, (None, "model")), MESH)


def test_adam_steps_keep_shardings_and_match_unsharded(mode: str) -> None:
    x, y = batch()
    trainer = Trainer(sg.shard(MLP(0), MESH), optax.adam(1e-2))
    plain = Trainer(MLP(0), optax.adam(1e-2))
    step = sg.jit(lambda t, x, y: t.step(x, y))
    before = shardings(trainer)
    xs = jax.device_put(x, NamedSharding(MESH, P("data")))
    losses = [float(step(trainer, xs, y)) for _ in range(5)]
    ref = [float(step(plain, x, y)) for _ in range(5)]
    close(losses, ref)
    assert losses[-1] < losses[0]
    assert shardings(trainer) == before  # every state, every optimizer moment: unchanged
    assert int(trainer.model.steps.value) == 5


@pytest.mark.repeats
def test_adam_steps_on_repeated_layers_keep_shardings_and_match_unsharded(mode: str) -> None:
    """A deeper MLP (two layers of each parallel style: outlined code, one function per
    style): Adam steps keep every state on its sharding and match the unsharded model."""
    x = jnp.asarray(np.random.default_rng(9).standard_normal((16, 16), dtype=np.float32))
    y = jnp.sin(x)
    trainer = Trainer(sg.shard(DeepMLP(4), MESH), optax.adam(1e-2))  # type: ignore[arg-type]
    plain = Trainer(DeepMLP(4), optax.adam(1e-2))  # type: ignore[arg-type]
    step = sg.jit(lambda t, x, y: t.step(x, y))
    before = shardings(trainer)
    losses = [float(step(trainer, x, y)) for _ in range(3)]
    close(losses, [float(step(plain, x, y)) for _ in range(3)])
    assert losses[-1] < losses[0]
    assert shardings(trainer) == before


def compiled(jitted: Any, *args: Any, pinned: bool = True) -> Any:
    """The executable an ``sg.jit`` function runs for these arguments (``pinned=False``:
    the same step without the constraints that keep written states on their shardings)."""
    import importlib

    jit_mod = importlib.import_module("specgraph.transforms.jit")
    root = jit_mod._new_root(jitted._root_type, args, {})
    gd, smap = sg.flatten(root)
    placement = sgs.placement_of(smap.values(), None) if pinned else None
    return jitted._jitted.lower(((), ()), gd, placement, smap.values(), []).compile()


def compiled_text(jitted: Any, *args: Any, pinned: bool = True) -> str:
    """The optimized HLO an ``sg.jit`` function runs for these arguments."""
    return compiled(jitted, *args, pinned=pinned).as_text()


COLLECTIVES = ("all-reduce(", "all-gather(", "all-to-all(", "collective-permute(", "reduce-scatter(")


def test_kept_shardings_add_no_communication(mode: str) -> None:
    # Regression: pinning written states with shard_alike made the compiler reshard
    # (here 2 all-gathers, 3 all-to-alls and 2 all-reduces more than the step needs; 48
    # all-gathers and 150 all-to-alls on benchmarks/bench_sharded.py's MLP-16). Pinned
    # to the input shardings themselves, the step communicates no more than without pins.
    x = jnp.asarray(np.random.default_rng(8).standard_normal((16, 16), dtype=np.float32))
    y = jnp.sin(x)
    trainer = Trainer(sg.shard(DeepMLP(), MESH), optax.adam(1e-2))  # type: ignore[arg-type]
    step = sg.jit(lambda t, x, y: t.step(x, y))
    before = shardings(trainer)
    for _ in range(2):
        step(trainer, x, y)
    assert shardings(trainer) == before
    pinned = compiled_text(step, trainer, x, y)
    free = compiled_text(step, trainer, x, y, pinned=False)
    for op in COLLECTIVES:
        assert pinned.count(op) <= free.count(op), op


class Stat(sg.Node):
    def __init__(self) -> None:
        value = np.arange(32.0, dtype=np.float32).reshape(4, 8)
        self.s = sg.State(jax.device_put(value, NamedSharding(MESH, P(None, "model"))))


def test_written_state_keeps_its_input_sharding_exactly(mode: str) -> None:
    # A value the compiler would lay out replicated (a broadcast reduction) is kept on
    # the state's input sharding.
    st = Stat()
    before = st.s.value.sharding
    f = sg.jit(lambda n: setattr(n.s, "value", jnp.zeros_like(n.s.value) + n.s.value.sum()))
    for _ in range(2):
        f(st)
    assert st.s.value.sharding == before
    close(st.s.value, np.full((4, 8), 496.0 * 32))
    plain = jax.jit(lambda v: jnp.zeros_like(v) + v.sum())(st.s.value)
    assert plain.sharding != before  # what the pinning prevents


def test_committed_input_shardings_are_respected(mode: str) -> None:
    # The step runs where the caller's arrays are: every committed input (states and a
    # non-graph argument) enters the executable on its own sharding (sg.jit's compiled
    # function takes them as they are), no array is moved before the call, and a state
    # the step only reads is still the caller's very array.
    model = sg.shard(MLP(0), MESH)
    cols = NamedSharding(MESH, P(None, "model"))
    x = jax.device_put(np.asarray(batch()[0]).T.copy(), cols)  # (8, 16): columns over 'model'
    f = sg.jit(lambda m, x: m(x.T) + m.steps.value)  # reads every input (XLA drops unused ones)
    w = model.up.w.value
    with jax.transfer_guard("disallow_explicit"):  # no array is moved, not even by device_put
        for _ in range(2):
            y = f(model, x)
    close(y, MLP(0)(np.asarray(x).T))
    assert model.up.w.value is w
    args_in, _ = compiled(f, model, x).input_shardings
    leaves = [*jax.tree.leaves(sg.flatten(model)[1].values()), x]
    given = jax.tree.leaves(args_in[0])  # (kept values, donated values): the statics are not inputs
    assert len(given) == len(leaves)
    for a, s in zip(leaves, given, strict=True):
        assert s.is_equivalent_to(a.sharding, a.ndim), (s, a.sharding)
    assert given[-1].spec == P(None, "model")


@pytest.mark.filterwarnings("ignore:Some donated buffers were not usable")
def test_donation_with_sharded_states(mode: str) -> None:
    x, y = batch()
    trainer = Trainer(sg.shard(MLP(0), MESH), optax.sgd(0.1))
    step = sg.jit(lambda t, x, y: t.step(x, y), donate_argnums=0)
    before = shardings(trainer)
    losses = []
    for _ in range(3):
        old_w = trainer.model.up.w.value
        losses.append(step(trainer, x, y))
        assert old_w.is_deleted()  # the buffer was donated
    assert shardings(trainer) == before
    assert all(not v.is_deleted() for v in jax.tree.leaves(sg.flatten(trainer)[1].values()))
    plain = Trainer(MLP(0), optax.sgd(0.1))  # unsharded, not donated
    keep = sg.jit(lambda t, x, y: t.step(x, y))
    close(losses, [keep(plain, x, y) for _ in range(3)])
    for path, v in sg.flatten(trainer.model)[1].items():
        close(v, sg.flatten(plain.model)[1][path])


def test_in_and_out_shardings(mode: str) -> None:
    model = sg.shard(MLP(0), MESH)
    data = NamedSharding(MESH, P("data"))
    f = sg.jit(lambda m, x: (m(x), x * 2), in_shardings=(None, data), out_shardings=(data, None))
    x = np.asarray(batch()[0])
    for _ in range(2):
        y, x2 = f(model, x)
    close(y, MLP(0)(x))
    assert y.sharding == data
    assert x2.sharding.spec == P("data")  # the input was placed on its in_sharding


def ensemble_member(seed: jax.Array) -> Dense:
    return Dense.traced(seed, 8, 8, (None, "model"))


def test_vmap_ensemble_of_4_equals_separate_models(mode: str) -> None:
    keys = jnp.arange(4, dtype=jnp.float32)
    make = sg.jit(lambda k: sg.shard(sg.vmap(ensemble_member, partition_name="data")(k), MESH))
    for _ in range(2):
        ens = make(keys)
    assert ens.w.value.sharding.spec == P("data", None, "model")
    x = batch()[0]
    run = sg.jit(sg.vmap(lambda m, x: m(x), in_axes=(0, None)))
    for _ in range(2):
        y = run(ens, x)
    member = sg.jit(lambda k, x: ensemble_member(k)(x))  # each built and run on its own
    close(y, jnp.stack([member(k, x) for k in keys]))


class Block(sg.Node):
    def __init__(self, up: Dense, down: Dense) -> None:
        self.up = up
        self.down = down

    @classmethod
    def traced(cls, seed: jax.Array) -> Block:
        up = Dense.traced(seed, 8, 16, (None, "model"))
        return cls(up, Dense.traced(seed + 0.5, 16, 8, ("model", None)))

    def __call__(self, x: jax.Array) -> jax.Array:
        return x + 0.5 * self.down(jnp.tanh(self.up(x)))


def test_scan_over_12_stacked_blocks_equals_unrolled(mode: str) -> None:
    keys = jnp.arange(12, dtype=jnp.float32)
    blocks = sg.jit(lambda ks: sg.shard(sg.vmap(Block.traced)(ks), MESH))(keys)
    assert blocks.up.w.value.sharding.spec == P(None, None, "model")  # the layer axis: replicated
    x = jax.device_put(batch()[0], NamedSharding(MESH, P("data")))
    layer_scan = sg.scan(lambda b, h: b(h), in_axes=(0, sg.Carry), out_axes=sg.Carry)
    scanned = sg.jit(lambda bs, x: layer_scan(bs, x))
    one = sg.graphdef(sg.eval_shape(Block.traced, keys[0]))  # one block's structure

    @jax.jit
    def unrolled(stacked: sg.StateMap, x: jax.Array) -> jax.Array:
        # The same 12 blocks as 12 separate nodes, each built from its layer's slice.
        for i in range(12):
            x = sg.merge(one, jax.tree.map(lambda v, i=i: v[i], stacked))(x)
        return x

    for _ in range(2):
        close(scanned(blocks, x), unrolled(sg.flatten(blocks)[1], x))
    assert scanned.trace_count == 1


def test_eval_shape_then_shard_then_init_places_as_shard_after_init(mode: str) -> None:
    def make() -> MLP:
        return MLP(0)  # NumPy-initialized: eval_shape traces it without computing anything

    for _ in range(2):
        abstract = sg.shard(sg.eval_shape(make), MESH)  # nothing allocated
        real = sg.shard(make(), MESH)
        created = sg.jit(lambda: sg.shard(make(), MESH))()  # allocated directly on the shards
    plan = sg.flatten(abstract)[1]
    for path, v in sg.flatten(real)[1].items():
        assert isinstance(plan[path], jax.ShapeDtypeStruct)
        assert plan[path].sharding == v.sharding
        assert sg.flatten(created)[1][path].sharding == v.sharding
        close(sg.flatten(created)[1][path], v)


def test_explicit_axes_mesh_keeps_shardings(mode: str) -> None:
    mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Explicit, AxisType.Explicit))
    node = sg.shard(Dense.seeded(0, 8, 8, (None, "model")), mesh)
    before = shardings(node)
    f = sg.jit(lambda d: setattr(d.b, "value", jnp.zeros_like(d.b.value) + d.w.value.sum()))
    for _ in range(2):
        f(node)
    assert shardings(node) == before


# -- Flax NNX: the Variables' own partition metadata ---------------------------------------


def nnx_mlp(seed: int, annotated: bool = True) -> Any:
    """An NNX MLP annotated both ways NNX offers: ``nnx.with_partitioning`` initializers
    (``eager_sharding=False``: made on one device, placed by ``sg.shard``) and a Param
    given ``out_sharding`` and its mesh (NNX places it when it is made). A BatchNorm adds
    unannotated Params and BatchStats. Initialized with NumPy, as ``Dense.seeded``.
    ``annotated=False``: the same model with no annotation, all on one device."""
    nnx = pytest.importorskip("flax.nnx")

    def part(offset: int, axes: tuple) -> Any:
        def init(key: Any, shape: tuple, dtype: Any = jnp.float32) -> jax.Array:
            rng = np.random.default_rng(seed + offset)
            return jnp.asarray(rng.standard_normal(shape, dtype=np.float32) / np.sqrt(shape[0]), dtype)

        return nnx.with_partitioning(init, axes, eager_sharding=False) if annotated else init

    class Model(nnx.Module):
        def __init__(self, rngs: Any) -> None:
            self.up = nnx.Linear(8, 16, kernel_init=part(0, (None, "model")), bias_init=part(1, ("model",)),
                                 rngs=rngs)
            self.norm = nnx.BatchNorm(16, rngs=rngs)
            self.down = nnx.Linear(16, 8, kernel_init=part(2, ("model", None)), use_bias=False, rngs=rngs)
            self.gain = nnx.Param(jnp.ones(8), out_sharding=("model",), mesh=MESH) if annotated else (
                nnx.Param(jnp.ones(8)))

        def __call__(self, x: jax.Array) -> jax.Array:
            return self.down(jnp.tanh(self.norm(self.up(x)))) * self.gain

    return Model(nnx.Rngs(seed))


def nnx_flat(tree: Any) -> dict[tuple, Any]:
    from flax import nnx

    return {path: v.get_value() if isinstance(v, nnx.Variable) else v for path, v in nnx.to_flat_state(tree)}


def test_nnx_annotations_give_specs_shardings_and_placement(mode: str) -> None:
    from flax import nnx

    model = nnx_mlp(0)
    assert model.gain.get_raw_value().sharding.spec == P("model")  # placed by NNX itself
    for _ in range(2):
        specs = sg.partition_specs(model)
        named = sg.named_shardings(model, MESH)
    assert dict(specs.items()) == nnx_flat(nnx.get_partition_spec(nnx.state(model)))
    ref = nnx_flat(nnx.get_named_sharding(nnx.state(model), MESH))
    assert list(named) == list(ref)
    for path, ns in named.items():  # equal up to trailing None entries (JAX's form: sgs.canonical_spec)
        assert ns.is_equivalent_to(ref[path], 2) and ns.spec == sgs.canonical_spec(ref[path].spec)
    assert specs[("up", "kernel")] == P(None, "model") and specs[("norm", "mean")] == P()
    # a plan made without allocating places as sharding the real model does
    plan = sg.flatten(sg.shard(sg.eval_shape(lambda: nnx_mlp(0)), MESH))[1]
    sg.shard(model, MESH)
    for path, v in sg.flatten(model)[1].items():
        assert v.sharding == NamedSharding(MESH, sgs.canonical_spec(specs[path])), path
        assert isinstance(plan[path], jax.ShapeDtypeStruct) and plan[path].sharding == v.sharding
    assert model.up.kernel.get_raw_value().addressable_shards[0].data.shape == (8, 4)


def test_nnx_adam_steps_under_sg_jit_keep_shardings_and_match_unsharded(mode: str) -> None:
    import optax
    from flax import nnx

    def train_step(m: Any, opt: Any, x: jax.Array, y: jax.Array) -> jax.Array:
        loss, grads = nnx.value_and_grad(mse)(m, x, y)
        opt.update(m, grads)
        return loss

    x, y = batch()
    model = sg.shard(nnx_mlp(0), MESH)
    # the optimizer's moments carry their Params' out_sharding: sg.shard places them all
    optimizer = sg.shard(nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param), MESH)
    assert optimizer.opt_state[0].mu["down"]["kernel"].get_raw_value().sharding.spec == P("model")
    before = shardings((model, optimizer))
    step = sg.jit(train_step)
    losses = [float(step(model, optimizer, jax.device_put(x, NamedSharding(MESH, P("data"))), y))
              for _ in range(5)]
    assert shardings((model, optimizer)) == before
    assert int(optimizer.step.get_raw_value()) == 5
    plain = nnx_mlp(0, annotated=False)  # NNX's own jit on the unsharded model is the oracle
    plain_opt = nnx.Optimizer(plain, optax.adam(1e-2), wrt=nnx.Param)
    nnx_step = nnx.jit(train_step)
    ref = [float(nnx_step(plain, plain_opt, x, y)) for _ in range(5)]
    close(losses, ref)
    assert losses[-1] < losses[0]


# -- found by tests/fuzz_scaleout.py -------------------------------------------------------


def test_an_uneven_split_is_refused_alike_for_arrays_plans_and_traces(mode: str) -> None:
    # Regression: placing real arrays refused a dimension that does not divide over its
    # mesh axes, but a plan (eval_shape then sg.shard) accepted it, and sg.shard inside
    # sg.jit padded it and returned the state replicated: the plan promised a placement
    # that the real init refuses, and the traced init placed it elsewhere.
    def make() -> Any:
        box = MLP.__new__(MLP)
        box.heads = {"{{ x }}": sg.Param(jnp.ones((3, 8)), sharding=("data", "model"))}
        return box

    words = r"\('heads', '\{\{ x \}\}'\)[\s\S]*dimension 0 \(size 3\) does not divide over 'data'"
    for _ in range(2):
        real = make()
        before = real.heads["{{ x }}"].value
        with pytest.raises(ValueError, match=words):
            sg.shard(real, MESH)
        assert real.heads["{{ x }}"].value is before
        with pytest.raises(ValueError, match=words):
            sg.shard(sg.eval_shape(make), MESH)
        with pytest.raises(ValueError, match=words):
            sg.jit(lambda: sg.shard(make(), MESH))()


def same_layout(a: Any, b: Any) -> bool:
    """The same placement: equal, or NamedShardings that differ in trailing ``None`` entries only."""
    return a == b or (isinstance(a, NamedSharding) and isinstance(b, NamedSharding) and a.mesh == b.mesh
                      and sgs.canonical_spec(a.spec) == sgs.canonical_spec(b.spec))


@pytest.mark.filterwarnings("ignore:Some donated buffers were not usable")
def test_a_long_form_spec_coming_back_short_does_not_retrace(mode: str) -> None:
    # Regression: a state the caller placed on P('data', None) came back from a step on
    # P('data') (jax.jit spells an output's sharding without trailing Nones unless it is
    # its first input's), so the next call saw a new placement and retraced. Placements
    # now compare by layout. (Relabelling the outputs onto the long form instead cost a
    # device_put per state and call: 3x the step time on 8 such states.)
    for donate in ((), (1,)):
        box = Stat()
        box.s.value = jax.device_put(box.s.value, NamedSharding(MESH, P("data", None)))
        box.r = sg.State(jax.device_put(np.ones((4, 8), np.float32), NamedSharding(MESH, P(None, None))))
        f = sg.jit(lambda x, n: setattr(n.s, "value", n.s.value * x + n.r.value), donate_argnums=donate)
        before = shardings(box)
        for _ in range(3):
            f(jnp.float32(2.0), box)
            assert all(same_layout(a, b) for a, b in zip(shardings(box), before, strict=True))
        assert f.trace_count == 1
        close(box.s.value, np.arange(32.0).reshape(4, 8) * 8 + 7)


def test_a_jit_error_about_an_input_names_its_path(mode: str) -> None:
    # Regression: JAX names sg.jit's inputs by its internal function's arguments
    # ("argument kept[1] of JitFunction._pure"); a note now says whose values they are.
    node = sg.shard(Dense.seeded(0, 8, 8, (None, "model")), MESH)
    node.b.value = jax.device_put(np.ones(8, np.float32), jax.devices()[3])  # one device, not the mesh
    f = sg.jit(lambda d: setattr(d.w, "value", d.w.value + d.b.value))
    for _ in range(2):
        with pytest.raises(ValueError, match="incompatible devices") as info:
            f(node)
        assert "kept[0] is the value at path ('b',) of argument 0" in "\n".join(info.value.__notes__)


def test_eager_vmap_scan_and_remat_keep_written_states_on_their_shardings(mode: str) -> None:
    # Regression: run outside sg.jit, a written state came back on the layout the compiler
    # picked: a scanned stack lost its 'data' axis (P('data', None, 'model') became
    # P(None, None, 'model')), as sg.jit would not let it.
    ens = sg.jit(lambda k: sg.shard(sg.vmap(ensemble_member, partition_name="data")(k), MESH))(
        jnp.arange(4, dtype=jnp.float32))
    want = shardings(ens)
    assert ens.w.value.sharding.spec == P("data", None, "model")
    w0 = np.asarray(ens.w.value)

    def halve(d: Dense, h: jax.Array) -> jax.Array:
        d.w.value = d.w.value * 0.5
        return h + d.b.value.sum()

    for _ in range(2):
        sg.scan(halve, in_axes=(0, sg.Carry), out_axes=sg.Carry)(ens, jnp.zeros(()))
        assert shardings(ens) == want
        sg.vmap(lambda d: setattr(d.w, "value", d.w.value * 2.0))(ens)
        assert shardings(ens) == want
        sg.remat(lambda d: setattr(d.b, "value", d.b.value + 1.0))(ens)
        assert shardings(ens) == want
    close(ens.w.value, w0)
