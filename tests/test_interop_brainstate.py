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
        # float32 rounding of three jitted steps, at the scale of the weights (an entry near 0
        # of a matrix whose entries reach ~8 differs by ~3e-6 for some initial weights)
        scale = float(np.max(np.abs(np.asarray(w["weight"]))))
        np.testing.assert_allclose(m.layers[i].weight.value["weight"], w["weight"], rtol=1e-5,
                                   atol=1e-6 * scale)
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


# --------------------------------------------------------------------------------------
# generated code serves BrainState models (and hands the call over where it must)
# --------------------------------------------------------------------------------------

from brainstate._state_global_hooks import GlobalHookRegistry  # noqa: E402

from specgraph._ir import StateSpec  # noqa: E402


def test_brainstate_structures_are_specialized() -> None:
    for m in (Net(), bn.Linear(3, 2), bn.Sequential(bn.Linear(2, 3), bn.ReLU(), bn.Linear(3, 1))):
        sg.flatten(m)
        hits = sg.cache_info()["hits"]
        ref = assert_matches_reference(m)
        assert sg.cache_info()["hits"] == hits + 2, type(m).__name__
        assert_same_as_brainstate(m, *ref)
        gd, sm = sg.flatten(m)
        update_hits = sg.cache_info()["update_hits"]
        sg.update(m, jax.tree.map(lambda x: x + 1, sm))
        assert sg.cache_info()["update_hits"] == update_hits + 1
        for p, st in brainstate.graph.states(m).items():
            assert st._been_writen is True, p
        gd, sm = sg.flatten(m)
        sg.unflatten(gd, sm)
        sg.unflatten(gd, sm)
        unflatten_hits = sg.cache_info()["unflatten_hits"]
        rebuilt = sg.unflatten(gd, sm)
        assert sg.cache_info()["unflatten_hits"] == unflatten_hits + 1
        reference = sg.generic.unflatten(gd, sm)
        assert_same_states(rebuilt, reference)
    assert sg.cache_info()["compile_failures"] == 0
    assert sg.cache_info()["guard_misses"] == {}


def assert_same_states(a: Any, b: Any) -> None:
    """Two rebuilt models hold States alike in every part BrainState keeps (but objects
    that must be fresh per state: the hook manager, the tag set)."""
    sa, sb = brainstate.graph.states(a), brainstate.graph.states(b)
    assert list(sa.keys()) == list(sb.keys())
    for x, y in zip(sa.values(), sb.values(), strict=True):
        assert type(x) is type(y)
        assert list(vars(x)) == list(vars(y))  # the same attributes, in the same order
        for k, v in vars(x).items():
            w = vars(y)[k]
            if k == "_hooks_manager":
                assert type(v) is type(w) and v is not w and not v.has_hooks()
            elif k == "tag" and isinstance(v, set):
                assert v == w and v is not w
            elif k == "_trace_state":
                assert type(v) is type(w) and v.is_valid() and w.is_valid()
            elif k == "_source_info":  # made per unflatten: where it happens
                assert type(v) is type(w)
            else:
                assert v is w or v == w, k


def test_tag_sets_are_guarded_by_value_and_rebuilt_fresh(impl: Any) -> None:
    m = Net()
    gd, sm = impl.flatten(m)
    tagged = [spec for spec in gd.table if type(spec) is StateSpec and dict(spec.metadata).get("tag")]
    assert [dict(spec.metadata)["tag"] for spec in tagged] == [frozenset({"fast"})]
    m.tagged.tag = {"fast"}  # an equal set, another object: the same structure
    assert impl.flatten(m)[0] == gd
    m2 = impl.unflatten(gd, sm)
    assert m2.tagged.tag == {"fast"} and type(m2.tagged.tag) is set and m2.tagged.tag is not m.tagged.tag
    m.tagged.tag = {"slow"}
    gd2, _ = impl.flatten(m)
    assert gd2 != gd
    assert_matches_reference(m)


@pytest.mark.parametrize("change", ["state_hook", "global_hook", "recording"])
def test_raw_reads_only_when_brainstate_allows_them(change: str) -> None:
    m = Net()
    sg.flatten(m)
    sg.flatten(m)
    reads: list[str] = []
    handle = None
    if change == "state_hook":
        m.hidden.register_hook("read", lambda ctx: reads.append("read"))
    elif change == "global_hook":
        handle = GlobalHookRegistry.instance().register_hook("read", lambda ctx: reads.append("read"))
    before = sg.cache_info()["guard_misses"].get("raw", 0)
    try:
        if change == "recording":
            @brainstate.transform.jit
            def read() -> jax.Array:
                return sg.flatten(m)[1][("hidden",)] + 1

            np.testing.assert_array_equal(read(), np.ones(4))
            m.hidden.value = jnp.full(4, 10.0)
            np.testing.assert_array_equal(read(), np.full(4, 11.0))  # recorded, not baked in
        else:
            ref = sg.generic.flatten(m)
            n = len(reads)
            assert n >= 1  # the reference reads through .value: the hooks run
            got = sg.flatten(m)
            assert len(reads) == 2 * n  # and so does the public path
            assert got[0] == ref[0] and list(got[1].values()) == list(ref[1].values())
    finally:
        if handle is not None:
            GlobalHookRegistry.instance().unregister_hook(handle)
    assert sg.cache_info()["guard_misses"].get("raw", 0) > before


def test_a_poisoned_state_raises_brainstate_error_on_every_path() -> None:
    m = Net()
    sg.flatten(m)
    sg.flatten(m)
    m.hidden._invalidate_trace_value()
    for flatten in (sg.generic.flatten, sg.flatten):
        with pytest.raises(brainstate._error.TraceContextError, match="created inside a traced function"):
            flatten(m)


def test_specialized_update_inside_jit_refuses_the_tracer() -> None:
    m = Net()
    sg.flatten(m)
    _, sm = sg.flatten(m)
    before = {p: st._value for p, st in brainstate.graph.states(m).items()}

    @jax.jit
    def f(values: sg.StateMap) -> jax.Array:
        sg.update(m, values)  # the same structure: generated code is asked first
        return values[("hidden",)]

    misses = sg.cache_info()["guard_misses"].get("raw", 0)
    with pytest.raises(brainstate._error.TraceContextError):
        f(sm)
    assert sg.cache_info()["guard_misses"].get("raw", 0) == misses + 1
    for p, st in brainstate.graph.states(m).items():
        assert st._value is before[p] and not st._been_writen


def test_unflatten_inside_a_trace_level_makes_states_of_that_level(impl: Any) -> None:
    m = Net()
    gd, sm = impl.flatten(m)
    impl.unflatten(gd, sm)
    seen: dict[str, Any] = {}

    @brainstate.transform.jit
    def f(x: jax.Array) -> jax.Array:
        m2 = impl.unflatten(gd, sm)
        seen["levels"] = {st._level for st in brainstate.graph.states(m2).values()}
        seen["now"] = brainstate._state.TRACE_CONTEXT.get_trace_stack_level()
        return x + 1

    f(jnp.ones(2))
    assert seen["levels"] == {seen["now"]}


# --------------------------------------------------------------------------------------
# random BrainState graphs (hypothesis): sharing, cycles, containers, tags, bare arrays
# --------------------------------------------------------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as hs  # noqa: E402


class Bag(bn.Module):
    """A module whose attributes the test sets."""


STATE_TYPES = [brainstate.ParamState, brainstate.HiddenState, brainstate.ShortTermState,
               brainstate.LongTermState, brainstate.State]
ATTRS = hs.sampled_from(["a", "b", "c", "w", "z", "_p", "x10", "layers"])


def _children(n_modules: int, n_states: int) -> hs.SearchStrategy[Any]:
    leaf = hs.one_of(
        hs.tuples(hs.just("module"), hs.integers(0, n_modules - 1)),
        hs.tuples(hs.just("state"), hs.integers(0, n_states - 1)),
        hs.tuples(hs.just("array"), hs.integers(1, 3)),
        hs.tuples(hs.just("static"), hs.one_of(hs.integers(-2, 2), hs.text(max_size=2), hs.none())),
    )
    return hs.one_of(
        leaf,
        hs.tuples(hs.just("list"), hs.lists(leaf, max_size=3)),
        hs.tuples(hs.just("tuple"), hs.lists(leaf, max_size=3)),
        hs.tuples(hs.just("dict"), hs.dictionaries(hs.sampled_from(["k", "j", "0"]), leaf, max_size=2)),
    )


@hs.composite
def brainstate_graphs(draw: Any) -> Any:
    n_modules = draw(hs.integers(1, 4))
    n_states = draw(hs.integers(1, 5))
    states = []
    for i in range(n_states):
        kind = draw(hs.sampled_from(STATE_TYPES))
        meta = draw(hs.sampled_from([{}, {"tag": "t"}, {"name": "s"}, {"tag": "u", "name": "n"}]))
        value = draw(hs.sampled_from(["array", "dict"]))
        v = jnp.full((2,), float(i))
        if value == "dict" and kind is not brainstate.HiddenState:  # HiddenState holds an array
            v = {"w": v, "b": jnp.zeros(1)}
        states.append(kind(v, **meta))
    modules = [Bag() for _ in range(n_modules)]

    def make(spec: Any) -> Any:
        kind = spec[0]
        if kind == "module":
            return modules[spec[1]]
        if kind == "state":
            return states[spec[1]]
        if kind == "array":
            return jnp.zeros((spec[1],))
        if kind == "static":
            return spec[1]
        if kind == "list":
            return [make(s) for s in spec[1]]
        if kind == "tuple":
            return tuple(make(s) for s in spec[1])
        return {k: make(s) for k, s in spec[1].items()}

    for m in modules:
        attrs = draw(hs.dictionaries(ATTRS, _children(n_modules, n_states), min_size=1, max_size=5))
        for name, spec in attrs.items():
            setattr(m, name, make(spec))
    return modules[0]


fixture_ok = settings(
    suppress_health_check=[*settings.default.suppress_health_check, HealthCheck.function_scoped_fixture],
    deadline=None,
)


@fixture_ok
@given(brainstate_graphs())
def test_random_brainstate_graphs_match_brainstate(impl: Any, m: Any) -> None:
    gd, sm = impl.flatten(m)
    assert_same_as_brainstate(m, gd, sm)
    assert list(brainstate.graph.flatten(m)[1].to_flat()) == list(sm.keys())
    assert_matches_reference(m)
    m2 = impl.unflatten(gd, sm)
    assert_same_states(m2, sg.generic.unflatten(gd, sm))
    assert list(brainstate.graph.states(m2).keys()) == list(sm.keys())
    g, parts = brainstate.graph.treefy_split(m2)  # BrainState's own round trip takes it
    assert list(brainstate.graph.states(brainstate.graph.treefy_merge(g, parts)).keys()) == list(sm.keys())
    before = dict(brainstate.graph.states(m))
    new = jax.tree.map(lambda x: x + 1, sm)
    impl.update(m, new)
    for p, state in brainstate.graph.states(m).items():
        assert state is before[p] and state._value is new[p] and state._been_writen


def test_explain_on_a_brainstate_structure() -> None:
    m = Net()
    sg.flatten(m)
    gd, _ = sg.flatten(m)
    text = sg.explain(gd, max_lines=None)
    assert "Status: specialized" in text and "unflatten not specialized" not in text
    assert "ParamState x" in text and "HiddenState x" in text
    assert "read and written raw only while their library allows it" in text
    assert sg.cache_info()["hits"] == 1
