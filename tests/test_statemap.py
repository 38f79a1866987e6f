"""StateMap: a Mapping of paths to values, a JAX pytree, filter / split / nested view."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_same_flatten
from graphs import BatchStat, Box, Linear, mlp, rich, tied

import specgraph as sg
from specgraph._ir import PathTable
from specgraph._statemap import merge_maps


def _model() -> Box:
    return Box(
        layers=[Linear(2, 2), Linear(2, 2)],
        bn=Box(mean=BatchStat(np.zeros(2, np.float32)), scale=sg.Param(np.ones(2, np.float32))),
        arr=np.arange(3.0),
        d={"k": sg.State(np.float32(7))},
    )


PATHS = [
    ("arr",),
    ("bn", "mean"),
    ("bn", "scale"),
    ("d", "k"),
    ("layers", 0, "b"),
    ("layers", 0, "w"),
    ("layers", 1, "b"),
    ("layers", 1, "w"),
]


# -- Mapping ------------------------------------------------------------------------


@pytest.mark.repeats
def test_mapping_interface(impl):
    m = _model()
    gd, sm = impl.flatten(m)
    assert isinstance(sm, Mapping)
    assert list(sm) == PATHS
    assert list(sm.keys()) == PATHS
    assert len(sm) == 8
    assert sm[("layers", 1, "w")] is m.layers[1].w.value
    assert sm[("arr",)] is m.arr
    assert ("bn", "mean") in sm
    assert ("bn",) not in sm
    assert ["bn", "mean"] not in sm  # unhashable: simply not there
    with pytest.raises(KeyError):
        _ = sm[("nope",)]
    with pytest.raises(KeyError):
        _ = sm[["arr"]]  # type: ignore[index]
    assert sm.get(("nope",), 5) == 5
    items = sm.items()
    assert [p for p, _ in items] == PATHS
    assert all(v is sm[p] for p, v in items)
    assert sm.paths == tuple(PATHS) == gd.paths
    assert sm.types == (None, BatchStat, sg.Param, sg.State, sg.Param, sg.Param, sg.Param, sg.Param)
    vals = sm.values()
    vals.append(1)  # a new list: the map is not affected
    assert len(sm) == 8


@pytest.mark.repeats
def test_statemap_is_read_only(impl):
    _, sm = impl.flatten(_model())
    with pytest.raises(TypeError):
        sm[("arr",)] = 1  # type: ignore[index]
    with pytest.raises(AttributeError):
        sm.other = 1  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        hash(sm)


@pytest.mark.repeats
def test_construction_shares_the_pathtable(impl):
    m = _model()
    gd, sm = impl.flatten(m)
    assert sm._table is gd.pathtable
    gd2, sm2 = impl.flatten(m)
    assert sm2._table is gd2.pathtable
    assert sm2._values is not sm._values  # values are per call


def test_constructor_checks_length():
    table = PathTable.from_paths((("a",), ("b",)), (None, None))
    assert list(sg.StateMap(table, [1, 2]).items()) == [(("a",), 1), (("b",), 2)]
    with pytest.raises(ValueError, match="2 values"):
        sg.StateMap(table, [1])


def test_from_items():
    sm = sg.StateMap.from_items({("a", 0): 1, ("b",): 2}, {("a", 0): sg.Param})
    assert list(sm.keys()) == [("a", 0), ("b",)]
    assert sm.types == (sg.Param, None)


@pytest.mark.repeats
def test_equality(impl):
    m = _model()
    _, a = impl.flatten(m)
    _, b = impl.flatten(m)
    assert a == b
    m.layers[0].w.value = np.full((2, 2), 5.0, np.float32)
    _, d = impl.flatten(m)
    assert d != a
    assert a != {p: v for p, v in a.items()}


# -- JAX pytree ----------------------------------------------------------------------


@pytest.mark.repeats
def test_leaves_are_the_values(impl):
    _, sm = impl.flatten(_model())
    leaves = jax.tree.leaves(sm)
    assert len(leaves) == len(sm)
    assert all(x is y for x, y in zip(leaves, sm.values(), strict=True))
    with_path, _ = jax.tree_util.tree_flatten_with_path(sm)
    assert [kp[0].key for kp, _ in with_path] == PATHS


@pytest.mark.repeats
def test_tree_map_keeps_paths(impl):
    _, sm = impl.flatten(_model())
    doubled = jax.tree.map(lambda v: v * 2, sm)
    assert type(doubled) is sg.StateMap
    assert list(doubled.keys()) == PATHS
    assert doubled.types == sm.types
    np.testing.assert_array_equal(doubled[("arr",)], np.arange(3.0) * 2)
    assert jax.tree.structure(doubled) == jax.tree.structure(sm)


@pytest.mark.repeats
def test_jit_does_not_retrace_equal_structures(impl):
    traces: list[Any] = []

    @jax.jit
    def step(sm: sg.StateMap) -> sg.StateMap:
        traces.append(1)
        return jax.tree.map(lambda v: v + 1, sm)

    _, a = impl.flatten(_model())
    out = step(a)
    assert type(out) is sg.StateMap
    assert list(out.keys()) == PATHS
    np.testing.assert_array_equal(out[("bn", "scale")], np.full(2, 2.0))
    _, b = impl.flatten(_model())  # separately built, equal structure
    step(b)
    step(out)
    assert len(traces) == 1
    _, c = impl.flatten(mlp(2))
    step(c)
    assert len(traces) == 2


@pytest.mark.repeats
def test_jit_roundtrip_through_update(impl):
    m = _model()
    gd, sm = impl.flatten(m)

    @jax.jit
    def step(sm: sg.StateMap) -> sg.StateMap:
        return jax.tree.map(lambda v: v * 0 + 3, sm)

    impl.update(m, step(sm))
    assert float(m.d["k"].value) == 3
    np.testing.assert_array_equal(m.arr, np.full(3, 3.0))
    new_gd, _ = impl.flatten(m)
    assert new_gd == gd


# -- filter / split -------------------------------------------------------------------


@pytest.mark.repeats
def test_filter_by_type(impl):
    _, sm = impl.flatten(_model())
    params = sm.filter(sg.Param)
    assert list(params.keys()) == [("bn", "scale"), *PATHS[4:]]
    states = sm.filter(sg.State)
    assert list(states.keys()) == PATHS[1:]  # not the bare array
    stats, rest = sm.filter(BatchStat, sg.Not(BatchStat))
    assert list(stats.keys()) == [("bn", "mean")]
    assert list(rest.keys()) == [p for p in PATHS if p != ("bn", "mean")]
    assert stats[("bn", "mean")] is sm[("bn", "mean")]
    # filters partition (first match wins) but need not cover everything
    a, b = sm.filter(sg.Param, ...)
    assert len(a) == 5 and len(b) == 3


@pytest.mark.repeats
def test_filter_by_predicate(impl):
    _, sm = impl.flatten(_model())
    layer0 = sm.filter(lambda path, value: path[:2] == ("layers", 0))
    assert list(layer0.keys()) == [("layers", 0, "b"), ("layers", 0, "w")]
    vectors = sm.filter(lambda path, value: np.ndim(value) == 1)
    assert ("arr",) in vectors and ("layers", 0, "b") in vectors and ("d", "k") not in vectors
    assert len(sm.filter(False)) == 0
    assert len(sm.filter(True)) == 8
    with pytest.raises(TypeError):
        sm.filter()


@pytest.mark.repeats
def test_filter_combinators(impl):
    _, sm = impl.flatten(_model())
    in_layers = sg.All(sg.Param, lambda p, v: p[0] == "layers")
    assert len(sm.filter(in_layers)) == 4
    either = sg.Any(BatchStat, lambda p, v: p == ("arr",))
    assert list(sm.filter(either).keys()) == [("arr",), ("bn", "mean")]
    assert list(sm.filter(sg.Not(sg.State)).keys()) == [("arr",)]
    assert repr(sg.Not(sg.Param)) == f"Not({sg.Param!r})"
    assert sg.Any(sg.Param) == sg.Any(sg.Param)
    assert hash(sg.All(sg.Param, BatchStat)) == hash(sg.All(sg.Param, BatchStat))
    assert sg.Any(sg.Param) != sg.All(sg.Param)


@pytest.mark.repeats
def test_split_partitions_first_match_wins(impl):
    _, sm = impl.flatten(_model())
    params, stats, rest = sm.split(sg.Param, BatchStat, ...)
    assert len(params) + len(stats) + len(rest) == len(sm)
    assert list(stats.keys()) == [("bn", "mean")]
    assert list(rest.keys()) == [("arr",), ("d", "k")]
    # a Param matches State before Param: the first filter takes it
    first, second, rest = sm.split(sg.State, sg.Param, ...)
    assert len(first) == 7
    assert len(second) == 0
    assert list(rest.keys()) == [("arr",)]
    assert sm.split() is sm


@pytest.mark.repeats
def test_split_non_exhaustive_raises(impl):
    _, sm = impl.flatten(_model())
    with pytest.raises(ValueError, match=r"not exhaustive.*\('arr',\)"):
        sm.split(sg.Param, BatchStat)


def test_bad_filter():
    _, sm = sg.flatten(_model())
    with pytest.raises(TypeError, match="State subclass"):
        sm.filter(int)
    with pytest.raises(TypeError, match="unsupported filter"):
        sm.filter(3)


# -- nested view, merge, repr ----------------------------------------------------


@pytest.mark.repeats
def test_to_nested(impl):
    m = _model()
    _, sm = impl.flatten(m)
    nested = sm.to_nested()
    assert set(nested) == {"arr", "bn", "d", "layers"}
    assert nested["layers"][1]["w"] is m.layers[1].w.value
    assert nested["bn"]["mean"] is m.bn.mean.value
    assert nested["arr"] is m.arr
    assert nested["d"]["k"] is m.d["k"].value
    assert sg.StateMap.from_items({}).to_nested() == {}


def test_merge_maps():
    _, sm = sg.flatten(_model())
    a, b = sm.split(sg.Param, ...)
    merged = merge_maps(a, b)
    assert set(merged.keys()) == set(sm.keys())
    assert all(merged[p] is sm[p] for p in sm)
    assert merged.types == tuple(sm.types[sm.paths.index(p)] for p in merged.paths)
    assert merge_maps(sm) is sm
    with pytest.raises(ValueError, match="twice"):
        merge_maps(a, a)
    nested = merge_maps({"x": {"y": 1}}, {("z",): 2})
    assert dict(nested.items()) == {("x", "y"): 1, ("z",): 2}


@pytest.mark.repeats
def test_repr(impl):
    _, sm = impl.flatten(_model())
    r = repr(sm)
    assert r.startswith("StateMap({")
    assert "layers.0.w: Param float32[2, 2]" in r
    assert "bn.mean: BatchStat float32[2]" in r
    assert "arr: leaf float64[3]" in r
    assert repr(sg.StateMap.from_items({})) == "StateMap({})"
    # long non-array values are shortened
    _, sm2 = impl.flatten(Box(s=sg.State("x" * 200)))
    assert len(repr(sm2)) < 120


# -- the accepted input forms --------------------------------------------------------


def _forms(sm: sg.StateMap) -> dict[str, Any]:
    return {
        "statemap": sm,
        "flat": dict(sm.items()),
        "nested": sm.to_nested(),
        "rebuilt": sg.StateMap.from_items(dict(sm.items())),
        "jitted": jax.jit(lambda s: s)(sm),
    }


@pytest.mark.repeats
@pytest.mark.parametrize("form", ["statemap", "flat", "nested", "rebuilt", "jitted"])
def test_unflatten_accepts_every_form(impl, form):
    m = _model()
    gd, sm = impl.flatten(m)
    state = _forms(sm)[form]
    new = impl.unflatten(gd, state)
    got = sg.generic.flatten(new)
    assert got[0] == gd
    if form != "jitted":
        assert_same_flatten(got, (gd, sm))
    else:
        np.testing.assert_array_equal(new.layers[0].w.value, m.layers[0].w.value)


@pytest.mark.parametrize("form", ["statemap", "flat", "nested", "rebuilt"])
def test_merge_accepts_every_form(form):
    m = _model()
    gd, params, rest = sg.split(m, sg.Param, ...)
    new = sg.merge(gd, _forms(params)[form], _forms(rest)[form])
    assert_same_flatten(sg.generic.flatten(new), sg.generic.flatten(m))


@pytest.mark.repeats
@pytest.mark.parametrize("form", ["statemap", "flat", "nested", "rebuilt", "jitted"])
def test_update_accepts_every_form(impl, form):
    m = _model()
    _, sm = impl.flatten(m)
    new_vals = jax.tree.map(lambda v: jnp.asarray(v) + 10, sm)
    state = _forms(new_vals)[form]
    old_w = m.layers[0].w
    impl.update(m, state)
    assert m.layers[0].w is old_w
    np.testing.assert_array_equal(m.layers[0].w.value, np.full((2, 2), 11.0))
    np.testing.assert_array_equal(m.arr, np.arange(3.0) + 10)
    assert float(m.d["k"].value) == 17


def test_nested_form_keeps_dict_valued_states_whole(impl):
    m = Box(s=sg.State({"a": np.ones(1), "b": np.zeros(1)}), p=sg.Param(np.ones(2)))
    gd, sm = impl.flatten(m)
    assert list(sm.keys()) == [("p",), ("s",)]
    new = impl.unflatten(gd, sm.to_nested())
    assert set(new.s.value) == {"a", "b"}
    impl.update(m, {"s": {"a": 1, "b": 2}})
    assert m.s.value == {"a": 1, "b": 2}


@pytest.mark.parametrize("build", [tied, rich], ids=["tied", "rich"])
def test_partial_update_with_a_filtered_map(impl, build):
    m = build()
    _, sm = impl.flatten(m)
    params = sm.filter(sg.Param)
    bumped = jax.tree.map(lambda v: v + 1, params)
    before = {p: v for p, v in sm.items()}
    impl.update(m, bumped)
    _, after = sg.generic.flatten(m)
    for p in sm:
        if p in params:
            np.testing.assert_array_equal(after[p], np.asarray(before[p]) + 1)
        else:
            assert after[p] is before[p]


def test_statemap_merge_method_joins_split_parts() -> None:
    import numpy as np

    class Pair(sg.Node):
        pass

    node = Pair()
    node.p = sg.Param(np.ones(1))
    node.q = sg.State(np.zeros(1))
    gd, params, rest = sg.split(node, sg.Param, ...)
    merged = params.merge(rest)
    assert set(merged) == {("p",), ("q",)}
    assert merged[("p",)] is node.p.value
    assert sg.unflatten(gd, merged).q.value is node.q.value
    with pytest.raises(ValueError, match="given twice"):
        params.merge(params)
