"""The public operations: split / merge / update / states / nodes / iter_* / clone / pop_states."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import pytest
from conftest import assert_same_flatten
from graphs import Bag, BatchStat, Box, Cell, Holder, Linear, Pair, mlp, reachable, rich, tied

import specgraph as sg

# -- split / merge ----------------------------------------------------------------


def test_split_without_filters_is_flatten(impl):
    m = rich()
    gd, sm = sg.split(m)
    assert_same_flatten((gd, sm), sg.generic.flatten(m))


def test_split_and_merge(impl):
    m = tied()
    gd, params, stats = sg.split(m, sg.Param, BatchStat)
    ref_gd, ref_sm = impl.flatten(m)
    assert gd == ref_gd
    assert list(params.keys()) == [("dec", "b"), ("dec", "w"), ("enc", "b")]
    assert list(stats.keys()) == [("s1", "scale")]
    assert all(params[p] is ref_sm[p] for p in params)
    new = sg.merge(gd, params, stats)
    assert_same_flatten(sg.generic.flatten(new), (ref_gd, ref_sm))
    # the order of the parts does not matter
    again = sg.merge(gd, stats, params)
    assert_same_flatten(sg.generic.flatten(again), (ref_gd, ref_sm))
    assert again.enc.w is again.dec.w
    assert again.s1.parent is again


def test_split_matches_statemap_split(impl):
    m = rich()
    _, sm = impl.flatten(m)
    parts = sg.split(m, sg.Param, lambda p, v: p[0] == "lst", ...)[1:]
    expected = sm.split(sg.Param, lambda p, v: p[0] == "lst", ...)
    assert [list(p.keys()) for p in parts] == [list(p.keys()) for p in expected]
    assert [p.types for p in parts] == [p.types for p in expected]


def test_split_non_exhaustive_is_an_error():
    with pytest.raises(ValueError, match="exhaustive"):
        sg.split(tied(), sg.Param)


def test_merge_needs_states():
    gd = sg.graphdef(tied())
    with pytest.raises(TypeError):
        sg.merge(gd)


def test_merge_of_a_model_without_states():
    gd, sm = sg.flatten(Box(a=1, b=Box(c="x")))
    assert len(sm) == 0
    new = sg.merge(gd, sm)
    assert new.b.c == "x"
    assert sg.unflatten(gd, {}).a == 1


# -- update -----------------------------------------------------------------------


@pytest.mark.repeats
def test_update_keeps_state_identity(impl):
    m = mlp(2)
    states_before = sg.states(m)
    _, sm = impl.flatten(m)
    impl.update(m, jax.tree.map(lambda v: v + 1, sm))
    states_after = sg.states(m)
    assert list(states_after) == list(states_before)
    for p, st in states_before.items():
        assert states_after[p] is st
        np.testing.assert_array_equal(st.value, sm[p] + 1)


def test_update_replaces_array_leaves_everywhere(impl):
    inner_list = [np.zeros(1), 5]
    dct = {"a": np.zeros(2), "t": (np.zeros(3), "s")}
    m = Box(
        arr=np.zeros(1),
        lst=inner_list,
        dct=dct,
        tup=(np.zeros(1), (np.zeros(2), 1)),
        pair=Pair(np.zeros(1), 2),
        cell=Cell(x=np.zeros(1), y=sg.Param(np.zeros(1))),
        holder=Holder(np.zeros(1), "h"),
        lt=[(np.zeros(1), 1)],
        bag=Bag("b", a=np.zeros(1), t=(np.zeros(1),)),
    )
    gd, sm = impl.flatten(m)
    assert len(sm) == 13
    cell_param = m.cell.y
    new = jax.tree.map(lambda v: v + 1, sm)
    impl.update(m, new)
    _, after = sg.generic.flatten(m)
    assert sg.generic.flatten(m)[0] == gd
    for p in sm:
        np.testing.assert_array_equal(after[p], np.asarray(sm[p]) + 1)
        assert after[p] is new[p]
    # mutable containers are updated in place, immutable ones rebuilt
    assert m.lst is inner_list and m.lst[1] == 5
    assert m.dct is dct
    assert m.dct["t"][1] == "s"
    assert type(m.pair) is Pair and m.pair.second == 2
    assert type(m.cell) is Cell and m.cell.y is cell_param
    assert type(m.holder) is Holder and m.holder.items[1] == "h"
    assert type(m.tup[1]) is tuple and m.tup[1][1] == 1


def test_update_with_a_subset(impl):
    m = tied()
    _, sm = impl.flatten(m)
    w = m.enc.w
    impl.update(m, {("dec", "w"): np.full(4, 9.0)})  # "dec" sorts first: the canonical path
    assert m.enc.w is w
    np.testing.assert_array_equal(m.enc.w.value, np.full(4, 9.0))  # shared: one state
    assert m.enc.b.value is sm[("enc", "b")]


def test_update_with_nothing_is_a_no_op(impl):
    m = tied()
    before = sg.generic.flatten(m)
    impl.update(m)
    impl.update(m, {})
    assert_same_flatten(sg.generic.flatten(m), before)


def test_update_list_and_dict_roots(impl):
    lst = [np.zeros(1), Box(p=sg.Param(np.zeros(1)), a=np.zeros(1))]
    _, sm = impl.flatten(lst)
    impl.update(lst, jax.tree.map(lambda v: v + 1, sm))
    assert float(lst[0][0]) == 1 and float(lst[1].p.value[0]) == 1 and float(lst[1].a[0]) == 1
    d = {"x": np.zeros(1), "n": Box(a=(np.zeros(1),))}
    _, sm = impl.flatten(d)
    impl.update(d, jax.tree.map(lambda v: v + 1, sm))
    assert float(d["x"][0]) == 1 and float(d["n"].a[0][0]) == 1


def test_update_immutable_root_with_array_is_an_error_and_changes_nothing(impl):
    p = sg.Param(np.zeros(1))
    arr = np.zeros(1)
    root = (arr, Box(p=p))
    _, sm = impl.flatten(root)
    with pytest.raises(ValueError, match="immutable root"):
        impl.update(root, jax.tree.map(lambda v: v + 1, sm))
    assert root[0] is arr
    assert p.value is sm[(1, "p")]
    # states alone can be updated through an immutable root
    impl.update(root, {(1, "p"): np.ones(1)})
    assert float(p.value[0]) == 1


# -- states / nodes / iter_leaf / iter_node / graphdef -----------------------------


def test_states_each_shared_state_once_first_path_wins(impl):
    m = tied()
    sts = sg.states(m)
    assert list(sts) == [("dec", "b"), ("dec", "w"), ("enc", "b"), ("s1", "scale")]
    assert sts[("dec", "w")] is m.enc.w is m.dec.w
    assert len(sts) == 4  # the tied weight counted once
    assert len({id(s) for s in sts.values()}) == 4
    _, sm = impl.flatten(m)
    assert all(sts[p].value is sm[p] for p in sts)


def test_states_with_filters(impl):
    m = rich()
    params = sg.states(m, sg.Param)
    assert all(type(s) is sg.Param for s in params.values())
    assert ("meta",) in params
    stats, rest = sg.states(m, BatchStat, ...)  # a partition: first match wins
    assert list(stats) == [("again", "stat")]  # "again" sorts before "child"
    assert len(rest) == len(sg.states(m)) - 1 and ("again", "stat") not in rest
    big = sg.states(m, lambda p, v: np.size(v) > 1)
    assert ("lst", 0) in big and ("meta",) not in big  # shared_a is first reached via "lst"
    assert ("shared_a",) not in big
    combo = sg.states(m, sg.All(sg.Param, sg.Not(lambda p, v: p[0] == "bag")))
    assert ("bag", "u") not in combo and ("meta",) in combo
    assert sg.states(m, True) == sg.states(m)


def test_nodes_and_iter_node(impl):
    m = tied()
    ns = sg.nodes(m)
    assert list(ns) == [(), ("dec",), ("enc",), ("s1",)]
    assert ns[()] is m and ns[("s1",)] is m.s2
    assert list(sg.iter_node(m)) == list(ns.items())
    r = rich()
    rn = sg.nodes(r)
    assert rn[("again",)] is r.child
    assert rn[("bag",)] is r.bag
    assert len(rn) == impl.flatten(r)[0].num_nodes
    assert list(sg.nodes([Box(), Box()])) == [(0,), (1,)]


def test_iter_leaf(impl):
    m = rich()
    gd, sm = impl.flatten(m)
    leaves = list(sg.iter_leaf(m))
    assert [p for p, _ in leaves] == list(gd.paths)
    for (p, leaf), ty in zip(leaves, sm.types, strict=True):
        if ty is None:
            assert leaf is sm[p]
        else:
            assert type(leaf) is ty
            assert leaf.value is sm[p]
    ids = [id(x) for _, x in leaves if isinstance(x, sg.State)]
    assert len(ids) == len(set(ids))


def test_graphdef(impl):
    m = rich()
    assert sg.graphdef(m) == impl.flatten(m)[0]
    assert hash(sg.graphdef(m)) == hash(sg.generic.flatten(m)[0])


# -- clone ------------------------------------------------------------------------


@pytest.mark.parametrize("build", [pytest.param(mlp, marks=pytest.mark.repeats), tied, rich],
                         ids=["mlp", "tied", "rich"])
def test_clone(impl, build):
    m = build()
    ref = impl.flatten(m)
    c = sg.clone(m)
    assert type(c) is type(m)
    assert_same_flatten(sg.generic.flatten(c), ref)
    orig = {id(x) for x in reachable(m) if isinstance(x, sg.Node | sg.State | Bag)}
    assert not any(id(x) in orig for x in reachable(c) if isinstance(x, sg.Node | sg.State | Bag))


def test_clone_preserves_sharing_and_is_independent(impl):
    m = tied()
    c = sg.clone(m)
    assert c.enc.w is c.dec.w and c.enc.w is not m.enc.w
    assert c.s1 is c.s2 and c.s1.parent is c
    c.enc.w.value = np.zeros(4)
    assert m.enc.w.value.sum() == 6.0


# -- pop_states ------------------------------------------------------------------


def test_pop_states_from_attributes_and_dicts(impl):
    shared = BatchStat(np.zeros(1))
    m = Box(a=Box(s=shared, p=sg.Param(1.0)), d={"s": shared, "p": sg.Param(2.0)})
    popped = sg.pop_states(m, BatchStat)
    assert list(popped.keys()) == [("a", "s")]
    assert popped[("a", "s")] is shared.value
    assert set(vars(m.a)) == {"p"}
    assert set(m.d) == {"p"}  # removed from every holder
    assert not sg.states(m, BatchStat)
    _, sm = impl.flatten(m)
    assert list(sm.keys()) == [("a", "p"), ("d", "p")]


def repeated() -> Box:
    """Layers of one shape, a Param tied between two of them, a block list of one shape
    holding a list of its own, BatchStats and an array leaf next to them."""
    m = Box(layers=[Linear(2, 2) for _ in range(4)],
            blocks=[Box(ff=Linear(2, 3), ln=BatchStat(np.float32(i)), heads=[Linear(3, 3) for _ in range(2)])
                    for i in range(3)],
            arr=np.arange(3.0), n=4)
    m.layers[3].b = m.layers[1].b
    return m


def _ops(m: Any) -> dict[str, Any]:
    gd, params, stats, rest = sg.split(m, sg.Param, BatchStat, ...)
    return {
        "split": (gd, params, stats, rest),
        "states": sg.states(m, BatchStat, sg.Param),
        "nodes": (sg.nodes(m),),
        "leaves": list(sg.iter_leaf(m)),
        "graphdef": sg.graphdef(m),
    }


@pytest.mark.repeats
def test_every_operation_on_repeated_substructures_equals_the_reference(impl):
    """Each operation on a structure of repeated layers and blocks (outlined code in the
    outlined variant) gives the reference's answer: the same paths and objects."""
    m = repeated()
    ref = sg.generic.flatten(m)
    assert_same_flatten(impl.flatten(m), ref)
    with sg.specialization(False):
        want = _ops(m)
    for _ in range(2):  # (the second call is served by generated code)
        got = _ops(m)
    gd, *parts = got["split"]
    assert gd == want["split"][0]
    for g, w in zip(parts, want["split"][1:], strict=True):
        assert g.paths == w.paths and all(a is b for a, b in zip(g.values(), w.values(), strict=True))
    for key in ("states", "nodes"):
        for g, w in zip(got[key], want[key], strict=True):
            assert list(g) == list(w) and all(g[p] is w[p] for p in w)
    assert [p for p, _ in got["leaves"]] == [p for p, _ in want["leaves"]]
    assert all(a is b for (_, a), (_, b) in zip(got["leaves"], want["leaves"], strict=True))
    assert got["graphdef"] == want["graphdef"]
    # updates: everything, the Params only (a split part), a subset by path; then merge, clone
    twin = sg.generic.unflatten(*ref)
    params, stats, rest = parts
    full = jax.tree.map(lambda v: np.asarray(v) + 1, ref[1])
    part = jax.tree.map(lambda v: np.asarray(v) * 2, params)
    subset = {("blocks", 1, "heads", 0, "w"): np.full((3, 3), 7.0), ("layers", 1, "b"): np.zeros(2)}
    for given in ((full,), (part,), (subset,), (part, stats)):
        impl.update(m, *given)
        sg.generic.update(twin, *given)
        assert_same_flatten(sg.generic.flatten(m), sg.generic.flatten(twin))
    assert m.layers[3].b is m.layers[1].b
    merged = sg.merge(gd, params, stats, rest)
    with sg.specialization(False):
        want_merged = sg.merge(gd, params, stats, rest)
    assert_same_flatten(sg.generic.flatten(merged), sg.generic.flatten(want_merged))
    c = sg.clone(m)
    assert c.layers[3].b is c.layers[1].b and c.layers[1].b is not m.layers[1].b
    assert_same_flatten(impl.flatten(c), sg.generic.flatten(c))


def test_pop_states_several_filters():
    m = mlp(2)
    m.stat = BatchStat(1.0)
    params, stats = sg.pop_states(m, sg.Param, BatchStat)
    assert len(params) == 4 and len(stats) == 1
    assert sg.states(m) == {}
    assert sg.graphdef(m).num_states == 0


def test_pop_states_inside_pytrees():
    m = Box(pair=Pair({"x": sg.Param(1.0), "y": 2}, 3), cell=Cell(x={"z": sg.Param(2.0)}, y=1))
    popped = sg.pop_states(m, sg.Param)
    assert list(popped.keys()) == [("cell", "x", "z"), ("pair", "first", "x")]
    assert m.pair.first == {"y": 2}
    assert m.cell.x == {}


def test_pop_states_from_a_list_is_an_error_and_removes_nothing():
    p, q = sg.Param(1.0), sg.Param(2.0)
    m = Box(a=p, lst=[q])
    with pytest.raises(ValueError, match=r"\('lst', 0\)"):
        sg.pop_states(m, sg.Param)
    assert m.a is p and m.lst == [q]


def test_pop_states_needs_a_filter():
    with pytest.raises(TypeError):
        sg.pop_states(mlp())


def test_pop_nothing():
    m = mlp(1)
    before = sg.generic.flatten(m)
    popped = sg.pop_states(m, BatchStat)
    assert len(popped) == 0
    assert_same_flatten(sg.generic.flatten(m), before)


# -- seed regressions: inconsistent aliasing ------------------------------------


def _aliased() -> Box:
    w = sg.Param(np.zeros(2))
    return Box(a=Box(w=w), b=Box(w=w))


def test_alias_path_is_rejected_by_update(impl):
    m = _aliased()
    with pytest.raises(KeyError, match=r"\('b', 'w'\)"):
        impl.update(m, {("b", "w"): np.ones(2)})
    assert float(m.a.w.value.sum()) == 0


def test_alias_path_is_rejected_by_unflatten_and_merge(impl):
    m = _aliased()
    gd, sm = impl.flatten(m)
    assert list(sm.keys()) == [("a", "w")]
    with pytest.raises(KeyError, match=r"\('b', 'w'\)"):
        impl.unflatten(gd, {("a", "w"): np.ones(2), ("b", "w"): np.ones(2)})
    with pytest.raises(KeyError, match=r"\('b', 'w'\)"):
        sg.merge(gd, {("b", "w"): np.ones(2)})
    with pytest.raises(KeyError):
        sg.merge(gd, sm, {("b", "w"): np.ones(2)})


def test_same_path_twice_across_maps_is_rejected(impl):
    m = _aliased()
    gd, sm = impl.flatten(m)
    with pytest.raises(ValueError, match="twice"):
        sg.merge(gd, sm, sm)
    with pytest.raises(ValueError, match="twice"):
        sg.merge(gd, sm, {("a", "w"): np.ones(2)})
    w = m.a.w.value
    with pytest.raises(ValueError, match="twice"):
        sg.update(m, sm, {("a", "w"): np.ones(2)})
    assert m.a.w.value is w


def test_linear_end_to_end(impl):
    lin = Linear(3, 2)
    gd, params = sg.split(lin, sg.Param)
    grads = jax.tree.map(lambda v: v * 0 + 0.5, params)
    new_params = jax.tree.map(lambda p, g: p - g, params, grads)
    sg.update(lin, new_params)
    np.testing.assert_allclose(lin.w.value, np.full((3, 2), 0.5))
    rebuilt: Any = sg.merge(gd, new_params)
    np.testing.assert_allclose(rebuilt.b.value, np.full(2, -0.5))
