"""Property-based tests on random graphs: sharing, cycles, every edge kind, hostile keys."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_matches_reference, assert_same_flatten
from graphs import Bag, BatchStat, Box, Pair
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import specgraph as sg
from specgraph.runtime.cache import CONFIG

# ``impl`` is function scoped but holds no per-example state.
fixture_ok = settings(
    suppress_health_check=[*settings.default.suppress_health_check, HealthCheck.function_scoped_fixture]
)

HOSTILE = ["'); import os #", '"', "'", "\n", "a b", "{x}", "\\", "__dict__", "__class__", "0", "", "é"]
NAMES = st.one_of(
    st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=5),
    st.sampled_from(HOSTILE),
)
STATICS = st.one_of(
    st.integers(-2, 2),
    st.floats(-2, 2, allow_nan=False),
    st.booleans(),
    st.none(),
    st.text(max_size=3),
    st.tuples(st.integers(0, 2), st.text(max_size=2)),
    st.sampled_from([len, abs, "'); import os #"]),
)
STATE_TYPES = [sg.State, sg.Param, BatchStat]
# equal-valued keys of different types: 1, 1.0 and True are one dict key to Python
NUMERIC_KEYS = st.one_of(st.integers(0, 2), st.booleans(), st.sampled_from([0.0, 1.0, 2.5]))
TUPLE_KEYS = st.tuples(st.integers(0, 1), st.booleans())


def _typed(gd: sg.GraphDef) -> list[type]:
    """The type of every atom in the IR, in a fixed order.

    ``GraphDef`` equality compares with ``==``; this also tells ``1`` from
    ``True`` wherever they sit (dict keys, metadata, statics).
    """
    out: list[type] = []
    stack: list[Any] = [gd.root, *gd.table]
    while stack:
        x = stack.pop()
        out.append(type(x))
        if isinstance(x, tuple):
            stack.extend(x)
    return out


def assert_same_typed(a: tuple[sg.GraphDef, sg.StateMap], b: tuple[sg.GraphDef, sg.StateMap]) -> None:
    assert_same_flatten(a, b)
    assert _typed(a[0]) == _typed(b[0])


def _value_specs(n_nodes: int, n_states: int) -> st.SearchStrategy[Any]:
    leaves = [
        st.tuples(st.just("node"), st.integers(0, n_nodes - 1)),
        st.tuples(st.just("array"), st.integers(0, 3), st.booleans()),
        st.tuples(st.just("static"), STATICS),
    ]
    if n_states:
        leaves.append(st.tuples(st.just("state"), st.integers(0, n_states - 1)))
    return st.recursive(
        st.one_of(*leaves),
        lambda kids: st.one_of(
            st.tuples(st.just("list"), st.lists(kids, max_size=3)),
            st.tuples(st.just("tuple"), st.lists(kids, max_size=3)),
            st.tuples(st.just("dict"), st.dictionaries(NAMES, kids, max_size=3)),
            st.tuples(st.just("dict"), st.dictionaries(st.integers(0, 3), kids, max_size=3)),
            st.tuples(st.just("dict"), st.dictionaries(NUMERIC_KEYS, kids, max_size=3)),
            st.tuples(st.just("dict"), st.dictionaries(TUPLE_KEYS, kids, max_size=2)),
            st.tuples(st.just("pair"), st.lists(kids, min_size=2, max_size=2)),
        ),
        max_leaves=6,
    )


def _array(size: int, use_jax: bool) -> Any:
    return jnp.arange(size, dtype=jnp.float32) if use_jax else np.arange(size, dtype=np.float32)


def _retype(v: Any) -> Any:
    """An equal value of another type where there is one (1 <-> True, 2.0 -> 2)."""
    if type(v) is bool:
        return int(v)
    if type(v) is int and v in (0, 1):
        return bool(v)
    if type(v) is float and v.is_integer():
        return int(v)
    if type(v) is tuple:
        return tuple(_retype(x) for x in v)
    return v


def _build(spec: Any, nodes: list[Any], states: list[Any], rt: Any = lambda v: v) -> Any:
    """Materialize a value spec; containers are always fresh objects (never shared).

    ``rt`` maps every static and dict key (``_retype`` builds an equal-valued twin).
    """
    kind = spec[0]
    if kind == "node":
        return nodes[spec[1]]
    if kind == "state":
        return states[spec[1]]
    if kind == "array":
        return _array(spec[1], spec[2])
    if kind == "static":
        return rt(spec[1])
    if kind == "list":
        return [_build(s, nodes, states, rt) for s in spec[1]]
    if kind == "tuple":
        return tuple(_build(s, nodes, states, rt) for s in spec[1])
    if kind == "dict":
        return {rt(k): _build(s, nodes, states, rt) for k, s in spec[1].items()}
    if kind == "pair":
        return Pair(*(_build(s, nodes, states, rt) for s in spec[1]))
    raise AssertionError(kind)


def _set(node: Any, name: Any, value: Any) -> None:
    if isinstance(node, Bag):
        node[name] = value
    else:
        node.__dict__[name] = value  # bypass descriptors: any string is a valid key


@st.composite
def recipes(draw: st.DrawFn) -> dict[str, Any]:
    """A random graph as plain data: build it (or an equal-valued twin) with ``build``."""
    n_nodes = draw(st.integers(1, 5))
    n_states = draw(st.integers(0, 4))
    # None: a Box; else a Bag with that (custom node) metadata
    tags = st.sampled_from(["t", "u", 0, 1])
    kinds = [None if draw(st.booleans()) or i == 0 else draw(tags) for i in range(n_nodes)]
    states = []
    for _ in range(n_states):
        ty = draw(st.sampled_from(STATE_TYPES))
        meta = draw(st.dictionaries(st.sampled_from(["tag", "group"]), STATICS, max_size=1))
        if draw(st.booleans()):
            value: Any = ("array", draw(st.integers(0, 3)), draw(st.booleans()))
        else:
            value = ("float", draw(st.floats(-1, 1)))
        states.append((ty, meta, value))
    specs = _value_specs(n_nodes, n_states)
    attrs = [draw(st.dictionaries(NAMES, specs, max_size=4)) for _ in range(n_nodes)]
    shape = draw(st.sampled_from(["node", "node", "list", "dict"]))
    recipe = {"kinds": kinds, "states": states, "attrs": attrs, "shape": shape, "repeat": None}
    if draw(st.booleans()):
        # A repeated substructure (what outlined code serves): a list of fresh copies of one
        # subgraph of Boxes and states, under the root; each copy may hold the root's first
        # state too (shared across occurrences), and a list of its own copies
        sub = draw(recipes_of_boxes())
        recipe["repeat"] = (sub, draw(st.integers(2, 4)), n_states > 0 and draw(st.booleans()))
    return recipe


@st.composite
def recipes_of_boxes(draw: st.DrawFn, depth: int = 0) -> dict[str, Any]:
    """A subgraph of Box nodes and states (no custom node type: outlined code reads it)."""
    n_nodes = draw(st.integers(1, 3))
    n_states = draw(st.integers(1, 3))
    states = []
    for _ in range(n_states):
        ty = draw(st.sampled_from(STATE_TYPES))
        meta = draw(st.dictionaries(st.just("tag"), st.sampled_from([1, "a", (None, "m")]), max_size=1))
        states.append((ty, meta, ("float", draw(st.floats(-1, 1)))))
    leaves = st.one_of(st.tuples(st.just("node"), st.integers(0, n_nodes - 1)),
                       st.tuples(st.just("state"), st.integers(0, n_states - 1)),
                       st.tuples(st.just("static"), st.sampled_from([1, 2.5, "x", None, True])))
    keys = st.sampled_from(["a", "b"])
    specs = st.one_of(leaves, st.tuples(st.just("list"), st.lists(leaves, max_size=2)),
                      st.tuples(st.just("dict"), st.dictionaries(keys, leaves, max_size=2)))
    names = st.sampled_from(["p", "q", "r", "s"])
    attrs = [draw(st.dictionaries(names, specs, max_size=3)) for _ in range(n_nodes)]
    inner = draw(recipes_of_boxes(depth + 1)) if depth == 0 and draw(st.booleans()) else None
    return {"states": states, "attrs": attrs, "inner": (inner, draw(st.integers(2, 3))) if inner else None}


def _build_boxes(sub: dict[str, Any], shared: Any) -> Box:
    """A fresh copy of a subgraph of ``recipes_of_boxes`` (``shared``: a state every copy holds)."""
    nodes = [Box() for _ in sub["attrs"]]
    states = [ty(value[1], **meta) for ty, meta, value in sub["states"]]
    for node, attrs in zip(nodes, sub["attrs"], strict=True):
        for name, spec in attrs.items():
            _set(node, name, _build(spec, nodes, states))
    if shared is not None:
        _set(nodes[0], "tied", shared)
    if sub["inner"] is not None:
        inner, k = sub["inner"]
        _set(nodes[0], "items", [_build_boxes(inner, None) for _ in range(k)])
    return nodes[0]


def build(recipe: dict[str, Any], retype: bool = False) -> Any:
    rt = _retype if retype else (lambda v: v)
    nodes: list[Any] = [Box() if k is None else Bag(rt(k)) for k in recipe["kinds"]]
    states = []
    for ty, meta, value in recipe["states"]:
        v = _array(value[1], value[2]) if value[0] == "array" else value[1]
        states.append(ty(v, **{k: rt(m) for k, m in meta.items()}))
    for node, attrs in zip(nodes, recipe["attrs"], strict=True):
        for name, spec in attrs.items():
            _set(node, name, _build(spec, nodes, states, rt))
    root = nodes[0]
    if recipe["repeat"] is not None:
        sub, k, tied = recipe["repeat"]
        _set(root, "repeated", [_build_boxes(sub, states[0] if tied else None) for _ in range(k)])
    if recipe["shape"] == "list":
        return [root, nodes[-1], _array(1, False)]
    if recipe["shape"] == "dict":
        return {"root": root, "last": nodes[-1]}
    return root


def graphs() -> st.SearchStrategy[Any]:
    return recipes().map(build)


@st.composite
def graphs_and_mutation(draw: st.DrawFn) -> tuple[Any, Any]:
    g = draw(graphs())
    nodes = [n for _, n in sg.nodes(g).items()]
    target = draw(st.sampled_from(nodes))
    states = list(sg.states(g).values())
    spec = draw(_value_specs(len(nodes), len(states)))
    name = draw(st.one_of(NAMES, st.sampled_from(sorted(_keys(target)) or [""])))

    def mutate() -> None:
        _set(target, name, _build(spec, nodes, states))

    return g, mutate


def _keys(node: Any) -> list[Any]:
    return list(node.data) if isinstance(node, Bag) else list(vars(node))


# -- properties -------------------------------------------------------------------


@given(graphs())
def test_public_flatten_equals_reference(g):
    ref = assert_matches_reference(g)
    assert_same_typed(sg.flatten(g), ref)


@fixture_ok
@given(g=graphs())
def test_unflatten_then_flatten(impl, g):
    ref = sg.generic.flatten(g)
    gd, sm = impl.flatten(g)
    assert_same_flatten((gd, sm), ref)
    hash(gd)
    new = impl.unflatten(gd, sm)
    assert_same_typed(impl.flatten(new), ref)
    assert_same_typed(sg.generic.flatten(new), ref)
    # the rebuilt graph has the same nodes/states pattern but new objects
    assert len(sg.nodes(new)) == gd.num_nodes
    old_states = {id(s) for s in sg.states(g).values()}
    assert not any(id(s) in old_states for s in sg.states(new).values())


@fixture_ok
@given(g=graphs(), data=st.data())
def test_update_then_flatten_gives_the_new_values(impl, g, data):
    gd, sm = sg.generic.flatten(g)
    new_values = [np.full(1, float(i)) for i in range(len(sm))]
    subset = data.draw(st.sets(st.integers(0, max(len(sm) - 1, 0)), max_size=len(sm)), label="slots")
    if data.draw(st.booleans(), label="full"):
        given_map: Any = sg.StateMap(gd.pathtable, new_values)
        expected = dict(enumerate(new_values))
    else:
        paths = gd.paths
        given_map = {paths[i]: new_values[i] for i in subset if i < len(sm)}
        expected = {i: new_values[i] for i in subset if i < len(sm)}
    states_before = sg.states(g)
    impl.update(g, given_map)
    gd2, sm2 = sg.generic.flatten(g)
    assert gd2 == gd
    values = sm2.values()
    old = sm.values()
    for i in range(len(sm)):
        assert values[i] is expected.get(i, old[i])
    after = sg.states(g)
    assert all(after[p] is s for p, s in states_before.items())
    assert_matches_reference(g)


@pytest.mark.parametrize("outline_min", [64, 2], ids=["unrolled", "outlined"])
@given(gm=graphs_and_mutation())
def test_mutation_between_flattens(outline_min, gm):
    """Any node mutated between two flattens (an occurrence of a repeated substructure too:
    a list of them stops being homogeneous, a state is shared across them, ...)."""
    g, mutate = gm
    saved = CONFIG.outline_min
    try:
        CONFIG.outline_min = outline_min
        _mutation_between_flattens(g, mutate)
    finally:
        CONFIG.outline_min = saved


def _mutation_between_flattens(g: Any, mutate: Any) -> None:
    assert_matches_reference(g)
    mutate()
    try:
        ref = sg.generic.flatten(g)
    except (TypeError, ValueError) as e:
        try:
            sg.flatten(g)
        except type(e):
            return
        raise AssertionError("the public flatten accepted what the reference rejects") from e
    assert_same_typed(sg.flatten(g), ref)
    assert_same_typed(sg.flatten(g), ref)


@given(recipe=recipes())
def test_equal_valued_twins_stay_apart(recipe):
    """Twins equal up to the types of equal values (1 / 1.0 / True) never share answers."""
    g, twin = build(recipe), build(recipe, retype=True)
    ref_g = assert_matches_reference(g)
    ref_t = sg.generic.flatten(twin)
    assert_same_typed(sg.flatten(twin), ref_t)
    assert_same_typed(sg.flatten(twin), ref_t)
    for _ in range(3):
        sg.unflatten(*ref_g)
    assert_same_typed(sg.generic.flatten(sg.unflatten(*ref_t)), ref_t)
    assert_same_typed(sg.generic.flatten(sg.unflatten(*ref_t)), ref_t)


@given(g=graphs())
def test_clone_equals_original(g):
    ref = sg.generic.flatten(g)
    c = sg.clone(g)
    assert_same_flatten(sg.generic.flatten(c), ref)
    assert_matches_reference(c)


@given(g=graphs(), data=st.data())
def test_split_merge_roundtrip(g, data):
    filters = data.draw(
        st.lists(st.sampled_from([sg.Param, BatchStat, sg.State, sg.Not(sg.State)]), max_size=3)
    )
    gd, *parts = sg.split(g, *filters, ...)
    assert sum(len(p) for p in parts) == gd.num_leaves
    new = sg.merge(gd, *parts[::-1])
    assert_same_flatten(sg.generic.flatten(new), sg.generic.flatten(g))
