"""An adversarial differential fuzz of the Flax NNX / BrainState interop (issue 11) and of
callback-registered node types.

Three model families, mutated between calls:

- **NNX**: an ``nnx.List`` of ``nnx.Linear``, a dict (``nnx.data``) of submodules, an
  optional ``nnx.BatchNorm``, ``nnx.Dropout`` with its own ``nnx.Rngs``, a tied Variable,
  a custom ``nnx.Variable`` subclass and Variables with metadata. Mutations: a Variable
  replaced, ``set_metadata``, a submodule added / removed, list items swapped / appended,
  dict keys turned int <-> str, a bool key beside ints (``{0: .., True: ..}``), a float key
  equal to an int key (``0.0`` for ``0``), a ``str`` subclass key, a key whose class's
  metaclass claims to equal ``int``.
- **BrainState**: ``brainstate.nn.Linear`` layers, a dict of submodules, tagged
  ``ParamState`` / ``ShortTermState``; states replaced, submodules added / removed, keys
  retyped.
- **callback nodes** (``register_graph_node_type``) inside ``sg.Node`` models: keys of
  mixed kinds, metadata changed, items reordered (an impure flatten).
- **layers** (for the outlined unflatten of NNX classes, with ``--outline-min 2``): an
  ``nnx.List`` of one block (a Param whose metadata value differs per layer: equal but
  distinguishable ones, a value equal only by value, a second Variable of a per-case type,
  a static per layer), nested lists of it, a lone block and a head. Mutations: one layer's
  metadata value or name, its Variable's type, its static, swaps, append / pop, a Variable
  tied across layers, one block at two places, a flipped ``_is_setup``, another layer class.
  Each unflatten is compared object by object with the reference's (attributes, the
  GraphDef's very metadata and statics, one TraceState per call), also for a twin GraphDef
  (a deep copy's: equal, its own metadata objects) served by the same code.

Each call is checked against the reference walker (``specgraph.generic``, or the public
function with the specializer off) and, where there is one, the peer's own function:
``flatten`` (paths and raw values of ``nnx.to_flat_state(nnx.state(m))`` /
``brainstate.graph.states(m)``), ``unflatten`` (``nnx.graphdef`` equal, tied Variables one
object), ``update`` (Variable identity kept), ``split`` / ``merge`` / ``states``. Every few
steps a training step under ``sg.jit`` (``sg.value_and_grad`` + ``nnx.Optimizer``) is
compared with the same step under ``nnx.jit`` (``nnx.value_and_grad``), and
``sg.value_and_grad`` standalone with ``nnx.value_and_grad``: losses, gradients, rng counts,
batch statistics, no tracer left in a Variable. Failing calls (a loss that writes and then
raises, an update with an unknown path) must leave the model untouched.

The counters say how many calls generated code served (``sg.cache_info()``), so a clean
run proves something. ``tests/test_fuzz_interop.py`` runs a short fuzz;
``python tests/fuzz_interop.py --cases N --seed S`` a longer one.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import random
import sys
from collections.abc import Callable, Iterator
from typing import Any

import _fuzzkit
import brainstate
import jax
import jax.numpy as jnp
import numpy as np
import optax
from _fuzzkit import Tally
from flax import nnx

import specgraph as sg
from specgraph._ir import PathTable
from specgraph._sameness import same
from specgraph.runtime import dispatch

W = 3  # every layer maps W -> W
bn = brainstate.nn


# -- hostile keys -----------------------------------------------------------------------------


class SKey(str):
    """A str subclass as a dict key (a path key like any str)."""


class _ClaimsToBeInt(type):
    """A metaclass whose classes claim to equal (and hash like) every other class."""

    def __eq__(cls, other: object) -> bool:
        return True

    def __hash__(cls) -> int:
        return hash(int)


class IntLike(int, metaclass=_ClaimsToBeInt):
    """An int key of another class, which its metaclass says equals int."""


def _retype(rng: random.Random, key: Any, taken: Any) -> Any:
    """Another key for the item at ``key``: int <-> str, a bool, a float, a str subclass,
    an IntLike; ``key`` itself when the new one would collide with another key."""
    if isinstance(key, str):
        choices = [SKey(key), str(key)] + ([int(key)] if key.isdigit() else [])
    else:
        n = int(key)
        choices = [str(n), float(n), n, IntLike(n)] + ([bool(n)] if n in (0, 1) else [])
    new = rng.choice(choices)
    if any(new == k and k is not key for k in taken):
        return key
    return new


#: statics that 34a14fc spells as literals (None, True, False, ...) and their look-alikes
STATICS: list[Any] = [None, True, False, ..., 1, 0, 1.0, 0.0, -0.0, "x", (), (None,), (True,), (1,)]


def _bump_epoch() -> None:
    """Register a throwaway node type: a new registry epoch (every variant recompiles)."""
    cls = type("Throwaway", (), {})
    sg.register_graph_node_type(cls, lambda b: ([], None), lambda b, k, v: None, lambda b, k: None,
                                lambda meta: cls(), lambda b: None)


def check_epoch(m: Any, tally: Tally) -> None:
    """After an epoch bump the recompiled variant returns the very GraphDef its dropped
    variant did (317ca40)."""
    first = _outcome(lambda: sg.flatten(m))
    if first[0] == "error":
        return
    gd0 = sg.flatten(m)[0]
    _bump_epoch()
    with served(tally, "flatten", 2):
        gds = [sg.flatten(m)[0] for _ in range(2)]
    assert all(g == gd0 for g in gds)
    assert gds[1] is gd0, "the recompiled variant made a new GraphDef"
    tally.add("epoch_bumps_same_graphdef")


# -- NNX models -------------------------------------------------------------------------------


class Tagged(nnx.Variable):
    """A custom Variable class (neither Param nor BatchStat)."""


class FModel(nnx.Module):
    def __init__(self, rng: random.Random, seed: int) -> None:
        rngs = nnx.Rngs(seed)
        self.layers = nnx.List([nnx.Linear(W, W, rngs=rngs) for _ in range(rng.randint(1, 3))])
        keys = rng.sample([0, 1, 2, "a", "b"], rng.randint(0, 2))
        if all(isinstance(k, int) for k in keys) or all(isinstance(k, str) for k in keys):
            self.extra = nnx.data({k: nnx.Linear(W, W, rngs=rngs) for k in keys})
        else:
            self.extra = nnx.data({})
        self.bn = nnx.BatchNorm(W, rngs=rngs) if rng.random() < 0.6 else None
        self.drop = nnx.Dropout(0.3, rngs=nnx.Rngs(dropout=seed + 1)) if rng.random() < 0.6 else None
        self.tied = nnx.data(self.layers[0].kernel if rng.random() < 0.5 else None)
        self.tag = Tagged(jnp.full((W,), 0.5), note=rng.choice(["a", 1, 0.0, None]))
        self.scale = nnx.Param(jnp.ones(W), unit=rng.choice(["x", 2]))
        self.flag = rng.choice(STATICS)

    def __call__(self, x: jax.Array) -> jax.Array:
        for layer in self.layers:
            x = nnx.relu(layer(x))
        if self.bn is not None:
            x = self.bn(x)
        if self.drop is not None:
            x = self.drop(x)
        for k in sorted(self.extra, key=repr):
            x = x + 0.5 * self.extra[k](x)
        if self.tied is not None:
            x = x @ self.tied[...]
        return x * self.scale[...] + self.tag[...]


def mutate_nnx(rng: random.Random, m: FModel) -> str:
    what = rng.choice(["replace", "set_metadata", "add_sub", "remove_sub", "swap", "append", "pop",
                       "retype_key", "bool_key", "tie", "static", "nodes_copy", "sneak", "setup",
                       "none"])
    if what == "static":
        m.flag = rng.choice(STATICS)
    elif what == "nodes_copy":  # bookkeeping equal by value, another object: must still hit
        vars(m)["_pytree__nodes"] = type(vars(m)["_pytree__nodes"])(dict(vars(m)["_pytree__nodes"]))
    elif what == "sneak":  # a plain value in an attribute NNX's bookkeeping does not know of
        # (a Variable or an array there is a static to NNX, a state / leaf to specgraph:
        # NNX's own setattr refuses to put one there, only this bypass can; left out)
        if "sneak" in vars(m):
            object.__delattr__(m, "sneak")
        else:
            object.__setattr__(m, "sneak", rng.choice([3, None, "s"]))
    elif what == "setup":
        ps = vars(m)["_pytree__state"]
        ps._is_setup = not ps._is_setup
    elif what == "replace":
        m.scale = nnx.Param(m.scale[...] * 1.5, **m.scale.get_metadata())
    elif what == "set_metadata":
        v = rng.choice([m.tag, m.scale])
        name = "note" if v is m.tag else "unit"
        v.set_metadata(**{name: rng.choice(["a", "b", 1, 1.0, True, 0.0, -0.0, None])})
    elif what == "add_sub":
        k = rng.choice([0, 1, 2, 3, "a", "b", "c"])
        if not any(k == e for e in m.extra):
            m.extra[k] = nnx.Linear(W, W, rngs=nnx.Rngs(rng.randrange(100)))
    elif what == "remove_sub" and m.extra:
        del m.extra[rng.choice(list(m.extra))]
    elif what == "swap" and len(m.layers) > 1:
        i, j = rng.sample(range(len(m.layers)), 2)
        m.layers[i], m.layers[j] = m.layers[j], m.layers[i]
    elif what == "append" and len(m.layers) < 4:
        m.layers.append(nnx.Linear(W, W, rngs=nnx.Rngs(rng.randrange(100))))
    elif what == "pop" and len(m.layers) > 1:
        gone = m.layers.pop()
        if m.tied is not None and m.tied is gone.kernel:
            m.tied = nnx.data(m.layers[0].kernel)
    elif what == "retype_key" and m.extra:
        _retype_in_place(rng, m.extra)
    elif what == "bool_key":
        b = rng.choice([True, False])
        if not any(b == k for k in m.extra):
            m.extra[b] = nnx.Linear(W, W, rngs=nnx.Rngs(rng.randrange(100)))
    elif what == "tie":
        m.tied = nnx.data(rng.choice([None, m.layers[-1].kernel]))
    return what


def _retype_in_place(rng: random.Random, d: dict) -> None:
    items = list(d.items())
    i = rng.randrange(len(items))
    key = _retype(rng, items[i][0], d)
    items[i] = (key, items[i][1])
    d.clear()
    d.update(items)


def nnx_flat(m: Any) -> list[tuple[tuple, Any]]:
    return [(p, v.get_raw_value() if isinstance(v, nnx.Variable) else v)
            for p, v in nnx.to_flat_state(nnx.state(m))]


def _vars_snapshot(m: Any) -> list[tuple[Any, ...]]:
    """Every Variable's object, raw value object and metadata (what no call may change
    unless it succeeds)."""
    try:
        pairs = list(nnx.to_flat_state(nnx.state(m)))
    except (TypeError, ValueError):  # keys NNX cannot sort
        return _objects_snapshot(m)
    return [(p, id(v), id(v.get_raw_value()), tuple(sorted(v.get_metadata().items(), key=repr)))
            for p, v in pairs]


def _objects_snapshot(m: FModel) -> list[Any]:
    """Every module's attributes and every Variable's raw value and metadata, by hand."""
    out: list[Any] = []
    mods = [m, *m.layers, *m.extra.values(), *(x for x in (m.bn, m.drop) if x is not None)]
    for mod in mods:
        for name, v in sorted(vars(mod).items()):
            item: Any = (name, id(v))
            if isinstance(v, nnx.Variable):
                item = (*item, id(v.get_raw_value()), tuple(sorted(v.get_metadata().items(), key=repr)))
            elif isinstance(v, dict):
                item = (*item, [(type(k), k, id(x)) for k, x in v.items()])
            out.append(item)
    return out


def _np(x: Any) -> np.ndarray:
    a = jnp.asarray(x)
    if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
        a = jax.random.key_data(a)
    return np.asarray(a)


def _same_values(a: Any, b: Any) -> None:
    va, vb = nnx_flat(a), nnx_flat(b)
    assert [p for p, _ in va] == [p for p, _ in vb], ([p for p, _ in va], [p for p, _ in vb])
    for (p, x), (_, y) in zip(va, vb, strict=True):
        np.testing.assert_allclose(_np(x), _np(y), rtol=1e-6, atol=1e-6, err_msg=str(p))


def _no_tracer(m: Any) -> None:
    for p, v in nnx_flat(m):
        for leaf in jax.tree_util.tree_leaves(v):
            assert not isinstance(leaf, jax.core.Tracer), (p, leaf)


# -- shared checks ----------------------------------------------------------------------------


@contextlib.contextmanager
def served(tally: Tally, op: str, calls: int = 1) -> Iterator[None]:
    """Count the calls of ``op`` and how many generated code answered."""
    before = sg.cache_info()
    yield
    after = sg.cache_info()
    tally.add(op + "_calls", calls)
    fields = {"flatten": ("hits",), "update": ("update_hits",), "unflatten": ("unflatten_hits",)}.get(
        op, ("hits", "walk_hits", "unflatten_hits"))
    tally.add(op + "_hits", sum(after[f] - before[f] for f in fields))


@contextlib.contextmanager
def reference() -> Iterator[None]:
    """The public functions served by the reference walker alone (specializer off)."""
    saved = dispatch.CONFIG.enabled
    sg.configure(enabled=False)
    try:
        yield
    finally:
        sg.configure(enabled=saved)


def _outcome(fn: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return "ok", fn()
    except Exception as e:
        return "error", (type(e), str(e))


def _same_flatten(a: tuple[Any, Any], b: tuple[Any, Any]) -> None:
    gd_a, sm_a = a
    gd_b, sm_b = b
    assert gd_a == gd_b and hash(gd_a) == hash(gd_b), (gd_a, gd_b)
    assert gd_a.paths == gd_b.paths, (gd_a.paths, gd_b.paths)
    assert all(x is y for x, y in zip(sm_a.values(), sm_b.values(), strict=True))
    assert all(x is y for x, y in zip(sm_a.types, sm_b.types, strict=True))
    # the key types must survive (a rebuilt dict gets the keys the GraphDef holds)
    # (a str subclass is a plain str key by design: equal GraphDefs, either object kept)
    ta = [[str if isinstance(k, str) else type(k) for k in p] for p in gd_a.paths]
    tb = [[str if isinstance(k, str) else type(k) for k in p] for p in gd_b.paths]
    assert all(x is y for pa, pb in zip(ta, tb, strict=True) for x, y in zip(pa, pb, strict=True)), (ta, tb)


def check_flatten(m: Any, tally: Tally, snapshot: Callable[[Any], Any]) -> tuple[Any, Any] | None:
    """sg.flatten (twice) against the reference; None when both fail alike."""
    ref = _outcome(lambda: sg.generic.flatten(m))
    before = snapshot(m)
    hits = sg.cache_info()["hits"]
    with served(tally, "flatten", 2):
        pub = [_outcome(lambda: sg.flatten(m)) for _ in range(2)]
    assert snapshot(m) == before, "a flatten changed the user's objects"
    if pub[1][0] == "ok":  # served by outlined code (one function per repeated shape, or a loop)
        var = dispatch.variant_for(pub[1][1][0])
        if var is not None and var.plan is not None and var.plan.outlined:
            tally.add("flatten_outlined_hits", sg.cache_info()["hits"] - hits)
    for got in pub:
        assert got[0] == ref[0], (got, ref)
        if got[0] == "error":
            assert got[1] == ref[1], (got, ref)
    if ref[0] == "error":
        tally.add("errors_alike")
        return None
    for got in pub:
        _same_flatten(got[1], ref[1])
    return pub[1][1]


def check_unflatten(gd: Any, sm: Any, tally: Tally) -> Any:
    want = sg.generic.flatten(sg.generic.unflatten(gd, sm))
    with served(tally, "unflatten", 2):
        news = [sg.unflatten(gd, sm) for _ in range(1)]
        hits = sg.cache_info()["unflatten_hits"]
        news.append(sg.unflatten(gd, sm))
    built = dispatch._unflat.get(gd)  # served by an outlined builder or loop (the second call)
    if built is not None and (built.plan.shape_fns or built.plan.loops):
        tally.add("unflatten_outlined_hits", sg.cache_info()["unflatten_hits"] - hits)
    for new in news:
        _same_flatten(sg.generic.flatten(new), want)
    return news[-1]


def check_update(m: Any, gd: Any, sm: Any, tally: Tally, snapshot: Callable[[Any], Any]) -> None:
    """New values written where the reference writes them; an unknown path leaves the
    model untouched, with the reference's error."""
    def bump(v: Any) -> Any:
        if hasattr(v, "dtype") and jnp.issubdtype(v.dtype, jnp.floating):
            return v + 1
        return jax.tree.map(lambda x: x + 1, v) if isinstance(v, dict) else v

    fresh = [bump(v) for v in sm.values()]
    new_sm = sg.StateMap(PathTable.from_paths(sm.paths, sm.types), fresh)
    with served(tally, "update"):
        got = _outcome(lambda: sg.update(m, new_sm))
    assert got[0] == "ok", got
    after = sg.generic.flatten(m)
    assert after[0] == gd
    assert all(x is y for x, y in zip(after[1].values(), fresh, strict=True))
    # a StateMap with a path the model lacks: refused alike, nothing written
    bad_paths = (*sm.paths, ("zz_no_such_attribute",))
    bad = sg.StateMap(PathTable.from_paths(bad_paths, (*sm.types, None)), [*sm.values(), jnp.zeros(1)])
    before = snapshot(m)
    errs = []
    for update in (sg.update, sg.generic.update):
        errs.append(_outcome(lambda: update(m, bad)))  # noqa: B023 - called at once
        assert snapshot(m) == before, "a failed update changed the model"
    assert errs[0][0] == errs[1][0] == "error", errs
    assert errs[0][1] == errs[1][1], errs
    tally.add("failed_updates_untouched")


# -- NNX --------------------------------------------------------------------------------------


def check_nnx_step(m: FModel, tally: Tally) -> None:
    flat = check_flatten(m, tally, _vars_snapshot)
    if flat is None:
        return
    gd, sm = flat
    peer = _outcome(lambda: nnx_flat(m))
    if peer[0] == "ok":
        assert list(sm.keys()) == [p for p, _ in peer[1]], (list(sm.keys()), [p for p, _ in peer[1]])
        assert all(a is b for a, (_, b) in zip(sm.values(), peer[1], strict=True))
        types = {p: type(v) for p, v in nnx.to_flat_state(nnx.state(m))}
        assert all(types[p] is t for p, t in zip(sm.paths, sm.types, strict=True))
        tally.add("nnx_flatten_agrees")
    else:
        tally.add("nnx_refused_structure")
    new = check_unflatten(gd, sm, tally)
    assert same(new.flag, m.flag), (new.flag, m.flag)
    if peer[0] == "ok":
        assert nnx.graphdef(new) == nnx.graphdef(m)
        assert (new.tied is None) == (m.tied is None)
        if m.tied is not None:
            owner = next(i for i, layer in enumerate(m.layers) if layer.kernel is m.tied)
            assert new.tied is new.layers[owner].kernel
        for v in nnx.to_flat_state(nnx.state(new)):  # fresh metadata dicts
            assert isinstance(v[1], nnx.Variable)
    # split / merge / states against the reference, and NNX's own
    filters = rng_filters()
    for f in filters:
        with reference():
            want = _outcome(lambda: sg.split(m, f, ...))  # noqa: B023
        with served(tally, "split"):
            got = _outcome(lambda: sg.split(m, f, ...))  # noqa: B023
        assert got[0] == want[0], (got, want)
        if got[0] == "error":
            continue
        g_gd, g_sel, g_rest = got[1]
        w_gd, w_sel, w_rest = want[1]
        assert g_gd == w_gd and g_sel.paths == w_sel.paths and g_rest.paths == w_rest.paths
        assert all(a is b for a, b in zip(g_sel.values(), w_sel.values(), strict=True))
        if peer[0] == "ok":
            theirs = [p for p, _ in nnx.to_flat_state(nnx.state(m, f))]
            assert list(g_sel.keys()) == theirs, (list(g_sel.keys()), theirs)
            with served(tally, "states"):
                st = sg.states(m, f)
            live = dict(nnx.to_flat_state(nnx.state(m, f)))
            assert list(st) == theirs and all(st[p] is live[p] for p in st)
        with served(tally, "unflatten"):
            merged = sg.merge(g_gd, g_sel, g_rest)
        _same_flatten(sg.generic.flatten(merged), sg.generic.flatten(sg.generic.unflatten(gd, sm)))
        if peer[0] == "ok":
            assert nnx.graphdef(merged) == nnx.graphdef(m)
    check_update(m, gd, sm, tally, _vars_snapshot)
    tally.add("nnx_steps_checked")


def rng_filters() -> list[Any]:
    return [nnx.Param, nnx.BatchStat, Tagged]


def _loss(x: jax.Array) -> Callable[[Any], jax.Array]:
    def loss_fn(model: Any) -> jax.Array:
        return jnp.mean(model(x) ** 2)

    return loss_fn


def check_nnx_training(m: FModel, rng: random.Random, tally: Tally) -> None:
    """sg.jit(step with sg.value_and_grad + nnx.Optimizer) against nnx.jit(step with
    nnx.value_and_grad); sg.value_and_grad standalone against nnx.value_and_grad; a loss
    that writes and then raises leaves the model untouched."""
    if _outcome(lambda: nnx.state(m))[0] == "error":
        tally.add("nnx_training_skipped")
        return
    twin = nnx.clone(m)
    x = jnp.asarray(np.random.default_rng(rng.randrange(1000)).standard_normal((4, W)), jnp.float32)

    # standalone value_and_grad, training mode: rng counts advance, batch stats written
    loss_a, g_a = sg.value_and_grad(_loss(x), wrt=nnx.Param)(m)
    loss_b, g_b = nnx.value_and_grad(_loss(x))(twin)
    np.testing.assert_allclose(_np(loss_a), _np(loss_b), rtol=1e-6)
    assert isinstance(g_a, nnx.State)
    _same_values(g_a, g_b)
    _same_values(m, twin)
    _no_tracer(m)
    tally.add("value_and_grad_agrees")

    # a loss that writes (rng counts, batch stats) and then raises: nothing written
    def bad_loss(model: Any) -> jax.Array:
        model(x)
        raise ValueError("boom")

    before = _vars_snapshot(m)
    vg_bad = sg.value_and_grad(bad_loss, wrt=nnx.Param)
    for vg in (vg_bad, sg.jit(vg_bad)):
        got = _outcome(lambda: vg(m))  # noqa: B023
        assert got[0] == "error" and "boom" in got[1][1], got
        assert _vars_snapshot(m) == before, "a failed value_and_grad changed the model"
    tally.add("failed_grads_untouched")

    # the training step, sg.jit against nnx.jit
    opt_a = nnx.Optimizer(m, optax.adam(1e-2), wrt=nnx.Param)
    opt_b = nnx.Optimizer(twin, optax.adam(1e-2), wrt=nnx.Param)

    def step_sg(model: Any, opt: Any, x: jax.Array) -> jax.Array:
        loss, grads = sg.value_and_grad(_loss(x), wrt=nnx.Param)(model)
        opt.update(model, grads)
        return loss

    @nnx.jit
    def step_nnx(model: Any, opt: Any, x: jax.Array) -> jax.Array:
        loss, grads = nnx.value_and_grad(_loss(x))(model)
        opt.update(model, grads)
        return loss

    jitted = sg.jit(step_sg)
    for _ in range(2):
        with served(tally, "jit"):  # the pre-call walk and the write-back
            la = jitted(m, opt_a, x)
        lb = step_nnx(twin, opt_b, x)
        np.testing.assert_allclose(_np(la), _np(lb), rtol=1e-5)
        _same_values(m, twin)
        _same_values(opt_a, opt_b)
        _no_tracer(m)
    assert jitted.trace_count == 1
    tally.add("jit_steps_agree")


def run_nnx_case(seed: int, steps: int, tally: Tally) -> None:
    rng = random.Random(seed)
    m = FModel(rng, seed % 1000)
    check_nnx_step(m, tally)
    check_nnx_training(m, rng, tally)
    for i in range(steps):
        tally.add("nnx_mutation_" + mutate_nnx(rng, m))
        check_nnx_step(m, tally)
        if rng.random() < 0.15:
            check_epoch(m, tally)
        if i == steps - 1:
            check_nnx_training(m, rng, tally)


# -- BrainState -------------------------------------------------------------------------------


class BModel(bn.Module):
    def __init__(self, rng: random.Random) -> None:
        super().__init__()
        self.layers = [bn.Linear(W, W) for _ in range(rng.randint(1, 2))]
        self.subs = {k: bn.Linear(W, W) for k in rng.sample([0, 1, "a"], rng.randint(0, 1))}
        self.p = brainstate.ParamState(jnp.ones(W), tag=rng.choice(["fast", "slow"]))
        self.h = brainstate.ShortTermState(jnp.zeros(W))
        self.rate = rng.choice([0.5, 1, "r"])


def mutate_bst(rng: random.Random, m: BModel) -> str:
    what = rng.choice(["replace", "add_sub", "remove_sub", "retype_key", "tag", "static", "none"])
    if what == "replace":
        m.p = brainstate.ParamState(m.p.value * 2, tag="fast")
    elif what == "add_sub":
        k = rng.choice([0, 1, 2, "a", "b"])
        if not any(k == e for e in m.subs):
            m.subs[k] = bn.Linear(W, W)
    elif what == "remove_sub" and m.subs:
        del m.subs[rng.choice(list(m.subs))]
    elif what == "retype_key" and m.subs:
        _retype_in_place(rng, m.subs)
    elif what == "tag":
        m.p.tag = rng.choice(["fast", "slow", None])
    elif what == "static":
        m.rate = rng.choice([0.5, 1, 1.0, True, "r"])
    return what


def _bst_snapshot(m: Any) -> list[tuple[Any, ...]]:
    try:
        return [(p, id(st), id(st.__dict__.get("_value"))) for p, st in brainstate.graph.states(m).items()]
    except ValueError:  # keys BrainState cannot sort: the objects by hand
        mods = [m, *m.layers, *m.subs.values()]
        return [(type(k), k, id(v), [(a, id(b), id(getattr(b, "_value", None))) for a, b in vars(v).items()])
                for k, v in [(None, m), *enumerate(mods), *m.subs.items()]]


def check_bst_step(m: BModel, tally: Tally) -> None:
    flat = check_flatten(m, tally, _bst_snapshot)
    if flat is None:
        return
    gd, sm = flat
    peer = _outcome(lambda: brainstate.graph.states(m))
    if peer[0] == "ok":
        ref = peer[1]
        assert list(sm.keys()) == list(ref.keys()), (list(sm.keys()), list(ref.keys()))
        assert all(sm[p] is st._value for p, st in ref.items())
        assert sm.types == tuple(type(st) for st in ref.values())
        _, bst_state = brainstate.graph.flatten(m)
        assert sorted(map(repr, sm.keys())) == sorted(map(repr, bst_state.to_flat().keys()))
        tally.add("bst_flatten_agrees")
    else:
        tally.add("bst_refused_structure")
    new = check_unflatten(gd, sm, tally)
    if peer[0] == "ok":
        assert list(brainstate.graph.states(new).keys()) == list(peer[1].keys())
    with reference():
        want = sg.states(m, brainstate.ParamState)
    with served(tally, "states"):
        got = sg.states(m, brainstate.ParamState)
    assert list(got) == list(want) and all(got[p] is want[p] for p in want)
    if peer[0] == "ok":
        theirs = brainstate.graph.states(m, brainstate.ParamState)
        assert list(got) == list(theirs.keys()) and all(got[p] is theirs[p] for p in got)
    check_update(m, gd, sm, tally, _bst_snapshot)
    tally.add("bst_steps_checked")


def run_bst_case(seed: int, steps: int, tally: Tally) -> None:
    rng = random.Random(seed)
    m = BModel(rng)
    check_bst_step(m, tally)
    for _ in range(steps):
        tally.add("bst_mutation_" + mutate_bst(rng, m))
        check_bst_step(m, tally)
        if rng.random() < 0.15:
            check_epoch(m, tally)


# -- callback-registered node types -------------------------------------------------------------


class CBag:
    """A callback node: items in insertion order (an impure order when reordered)."""

    def __init__(self, meta: Any = ("m", 1)) -> None:
        self.meta = meta
        self.items: dict[Any, Any] = {}


def _cb_flatten(b: CBag) -> tuple[Any, Any]:
    return list(b.items.items()), b.meta


sg.register_graph_node_type(
    CBag, _cb_flatten, lambda b, k, v: b.items.__setitem__(k, v), lambda b, k: b.items.pop(k),
    lambda meta: CBag(meta), lambda b: b.items.clear(),
)


class Holder(sg.Node):
    pass


def build_cb(rng: random.Random) -> Holder:
    h = Holder()
    h.bag = CBag(rng.choice([("m", 1), ("m", 1.0), ("m", True), None, 0.0]))
    for k in rng.sample([0, 1, 2, "a", "b"], rng.randint(1, 3)):
        h.bag.items[k] = rng.choice([sg.Param(np.ones(2, np.float32)), np.zeros(1, np.float32), 7, "s"])
    h.w = sg.Param(np.ones(1, np.float32))
    h.flag = rng.choice(STATICS)
    return h


def mutate_cb(rng: random.Random, h: Holder) -> str:
    what = rng.choice(["retype_key", "reorder", "meta", "add", "remove", "static", "none"])
    items = h.bag.items
    if what == "static":
        h.flag = rng.choice(STATICS)
    elif what == "retype_key" and items:
        key = rng.choice(list(items))
        new = _retype(rng, key, items)
        if new is not key:
            items[new] = items.pop(key)
    elif what == "reorder" and len(items) > 1:
        pairs = list(items.items())
        rng.shuffle(pairs)
        items.clear()
        items.update(pairs)
    elif what == "meta":
        h.bag.meta = rng.choice([("m", 1), ("m", 1.0), ("m", True), None, 0.0, -0.0, ("m", IntLike(1))])
    elif what == "add":
        k = rng.choice([3, "c", True, SKey("d"), 2.0, IntLike(4)])
        if not any(k == e for e in items):
            items[k] = sg.Param(np.ones(2, np.float32))
    elif what == "remove" and items:
        del items[rng.choice(list(items))]
    return what


def _cb_snapshot(h: Holder) -> Any:
    return (id(h.w), id(h.w.value), [(k, type(k), id(v)) for k, v in h.bag.items.items()], h.bag.meta,
            id(h.flag))


def check_cb_step(h: Holder, tally: Tally) -> None:
    flat = check_flatten(h, tally, _cb_snapshot)
    if flat is None:
        return
    gd, sm = flat
    new = check_unflatten(gd, sm, tally)
    assert same(new.flag, h.flag), (new.flag, h.flag)

    def kinds(d: dict) -> list[type]:
        return [str if isinstance(k, str) else type(k) for k in d]

    got, want = kinds(new.bag.items), kinds(sg.generic.unflatten(gd, sm).bag.items)
    assert all(a is b for a, b in zip(got, want, strict=True)), (got, want)
    check_update(h, gd, sm, tally, _cb_snapshot)
    tally.add("cb_steps_checked")


def run_cb_case(seed: int, steps: int, tally: Tally) -> None:
    rng = random.Random(seed)
    h = build_cb(rng)
    check_cb_step(h, tally)
    for _ in range(steps):
        tally.add("cb_mutation_" + mutate_cb(rng, h))
        check_cb_step(h, tally)
        if rng.random() < 0.15:
            check_epoch(h, tally)


# -- layers: long lists of one (mostly) repeated NNX / BrainState block -------------------------


class Block(nnx.Module):
    """One layer of a ``layers`` model: a Variable with metadata of its own per layer, a
    second Variable of a per-case type, a static of its own per layer."""

    def __init__(self, rng: random.Random, i: int, second: type) -> None:
        self.w = nnx.Param(jnp.full((W,), float(i)), note=_meta_value(rng))
        self.s = second(jnp.zeros((1,)) + i)
        self.i = rng.choice([i, float(i), str(i), None])


class Note:
    """A metadata value equal by value: a deep copy is equal but another object."""

    def __init__(self, x: Any) -> None:
        self.x = x

    def __eq__(self, other: object) -> bool:
        return type(other) is Note and other.x == self.x

    def __hash__(self) -> int:
        return hash(self.x)


def _meta_value(rng: random.Random) -> Any:
    """A metadata value: equal but distinguishable ones, a tuple, one equal by value only."""
    return rng.choice([1, 1.0, True, 0.0, -0.0, "a", SKey("a"), (1, "x"), None, frozenset({2}),
                       Note(rng.randrange(3))])


class LModel(nnx.Module):
    """Lists of one block shape (a loop), nested lists, a lone block and a Linear head (one
    builder call each), for the outlined unflatten of NNX classes."""

    def __init__(self, rng: random.Random) -> None:
        second = rng.choice([nnx.Param, nnx.BatchStat, Tagged])
        self.second = second
        self.layers = nnx.List([Block(rng, i, second) for i in range(rng.randint(2, 9))])
        self.grid = nnx.List([nnx.List([Block(rng, 10 * r + c, second) for c in range(2)])
                              for r in range(rng.randint(0, 3))])
        self.lone = Block(rng, 99, second)
        self.head = nnx.Linear(W, 1, rngs=nnx.Rngs(rng.randrange(100)))


def mutate_layers(rng: random.Random, m: LModel) -> str:
    what = rng.choice(["metadata", "metadata_key", "replace_type", "static", "swap", "append", "pop",
                       "tie", "share", "setup", "other_block", "none"])
    layers = m.layers
    k = rng.randrange(len(layers))
    if type(layers[k]) is not Block and what in ("metadata", "metadata_key", "replace_type", "static"):
        layers[k] = Block(rng, k, m.second)  # (another shape's layer: a Block again)
        return "other_block"
    if what == "metadata":  # per-occurrence metadata values: the same shape
        layers[k].w.set_metadata(note=_meta_value(rng))
    elif what == "metadata_key":  # another metadata name: another shape
        layers[k].w.set_metadata(extra=_meta_value(rng))
    elif what == "replace_type":
        old = layers[k].s
        t = rng.choice([nnx.Param, nnx.BatchStat, Tagged])
        layers[k].s = t(old.get_raw_value())
    elif what == "static":
        layers[k].i = rng.choice([k, float(k), True, None, "s"])
    elif what == "swap" and len(layers) > 1:
        i, j = rng.sample(range(len(layers)), 2)
        layers[i], layers[j] = layers[j], layers[i]
    elif what == "append" and len(layers) < 12:
        layers.append(Block(rng, len(layers), m.second))
    elif what == "pop" and len(layers) > 2:
        layers.pop()
    elif what == "tie" and len(layers) > 1:
        i, j = rng.sample(range(len(layers)), 2)
        if type(layers[i]) is Block and type(layers[j]) is Block:
            layers[j].w = layers[i].w
    elif what == "share" and len(layers) > 1:  # one block at two places
        i, j = rng.sample(range(len(layers)), 2)
        layers[j] = layers[i]
    elif what == "setup":
        ps = vars(layers[k])["_pytree__state"]  # (on every place a shared block sits)
        ps._is_setup = not ps._is_setup
    elif what == "other_block":
        layers[k] = nnx.Linear(W, W, rngs=nnx.Rngs(k))
    return what


def check_layers_step(m: LModel, seed: int, tally: Tally) -> None:
    flat = check_flatten(m, tally, _vars_snapshot)
    if flat is None:
        return
    gd, sm = flat
    new = check_unflatten(gd, sm, tally)
    _same_foreign_internals(new, sg.generic.unflatten(gd, sm))
    assert nnx.graphdef(new) == nnx.graphdef(m)
    _same_values(new, m)
    # the rebuilt model is NNX's own: mutated, split, flattened again, as the reference's
    if type(new.layers[0]) is Block:
        new.layers[0].w[...] = new.layers[0].w[...] + 1
    assert_flat = check_flatten(new, tally, _vars_snapshot)
    assert assert_flat is not None
    # a twin GraphDef (equal, its own metadata and static objects) served by the same code
    twin_gd = sg.generic.flatten(copy.deepcopy(m))[0]  # equal, its own metadata objects
    if twin_gd == gd and dispatch._unflat.get(gd) is not None:
        hits = sg.cache_info()["unflatten_hits"]
        with served(tally, "unflatten"):
            out = sg.unflatten(twin_gd, sm)
        if sg.cache_info()["unflatten_hits"] > hits:
            tally.add("layers_twin_graphdef_served")
        _same_foreign_internals(out, sg.generic.unflatten(twin_gd, sm))
    check_update(m, gd, sm, tally, _vars_snapshot)
    tally.add("layers_steps_checked")


def _same_foreign_internals(out: Any, ref: Any) -> None:
    """What test_outline_foreign checks of an outlined unflatten: per object the reference's
    attributes (statics and metadata the GraphDef's very objects), one TraceState per call."""
    from test_outline_foreign import _same_internals

    _same_internals(out, ref)


def run_layers_case(seed: int, steps: int, tally: Tally) -> None:
    rng = random.Random(seed)
    m = LModel(rng)
    check_layers_step(m, seed, tally)
    for _ in range(steps):
        tally.add("layers_mutation_" + mutate_layers(rng, m))
        check_layers_step(m, seed, tally)
        if rng.random() < 0.15:
            check_epoch(m, tally)


# -- driver -----------------------------------------------------------------------------------


def fuzz(cases: int, seed: int, steps: int = 6, families: str = "nnx,bst,cb",
         outline_min: int | None = None) -> collections.Counter[str]:
    """Run ``cases`` random models per family, ``steps`` mutations each; the tally.
    ``outline_min``: the specializer's (2: every repeated substructure outlined)."""
    tally = Tally()
    runners = {"nnx": run_nnx_case, "bst": run_bst_case, "cb": run_cb_case, "layers": run_layers_case}
    sg.clear_cache()
    saved = (dispatch.CONFIG.threshold, sg.runtime.cache.CONFIG.max_variants, dispatch.CONFIG.outline_min)
    sg.configure(threshold=1, max_variants=64, outline_min=outline_min)  # served from the first call on
    try:
        for case in range(cases):
            for fam in families.split(","):
                runners[fam](seed * 1_000_003 + case, steps, tally)
            if case % 8 == 7:
                tally.add("guard_misses", sum(sg.cache_info()["guard_misses"].values()))
                sg.clear_cache()
        tally.add("guard_misses", sum(sg.cache_info()["guard_misses"].values()))
    finally:
        sg.configure(threshold=saved[0], max_variants=saved[1], outline_min=saved[2])
        sg.clear_cache()
    return tally.counts


def main(argv: list[str] | None = None) -> int:
    def options(p: Any) -> None:
        p.add_argument("--families", default="nnx,bst,cb")
        p.add_argument("--outline-min", type=int, default=None,
                       help="the specializer's outline_min (2: every repeated substructure outlined)")

    return _fuzzkit.main(__doc__ or "", fuzz, argv, cases=30, steps=6, extra=options,
                         extra_args=lambda a: (a.families, a.outline_min))


if __name__ == "__main__":
    sys.exit(main())
