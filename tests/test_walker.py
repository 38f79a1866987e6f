"""The walker: deep graphs, faithful unflatten, no mutation, mutations between calls."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import pytest
from conftest import assert_matches_reference, assert_same_flatten
from graphs import (
    Bag,
    BatchStat,
    Box,
    Cell,
    Pair,
    assert_unchanged,
    chain,
    mlp,
    reachable,
    rich,
    snapshot,
    tied,
)

import specgraph as sg

# -- deep chains: the walker is iterative ------------------------------------------

DEPTH = 10_000


def _chain_params(root: Box) -> list[sg.Param]:
    out = []
    cur = root
    while "p" in vars(cur):
        out.append(cur.p)
        cur = cur.child
    return out


@pytest.mark.repeats
def test_deep_chain_flatten_unflatten_update(impl):
    assert sys.getrecursionlimit() < DEPTH  # the test means something
    root = chain(DEPTH)
    params = _chain_params(root)
    gd, sm = impl.flatten(root)
    assert gd.num_nodes == DEPTH + 1
    assert gd.num_states == DEPTH
    assert len(sm) == DEPTH
    values = sm.values()
    # "child" sorts before "p": pre-order reaches the deepest Param first
    assert all(v is p.value for v, p in zip(values, reversed(params), strict=True))
    assert gd == sg.generic.flatten(root)[0]

    new = impl.unflatten(gd, sm)
    new_params = _chain_params(new)
    assert len(new_params) == DEPTH
    assert all(n is not p for n, p in zip(new_params, params, strict=True))
    assert all(n.value is p.value for n, p in zip(new_params, params, strict=True))

    bumped = jax.tree.map(lambda v: v + 1, sm)
    impl.update(root, bumped)
    after = _chain_params(root)
    assert all(a is p for a, p in zip(after, params, strict=True))  # identity kept
    assert [float(p.value) for p in after[:3]] == [1.0, 2.0, 3.0]
    assert float(after[-1].value) == DEPTH


def test_deep_chain_with_back_references(impl):
    root = chain(DEPTH)
    # every node points back at the root: a cycle per level
    cur = root
    while "child" in vars(cur):
        cur.root = root
        cur = cur.child
    gd, sm = impl.flatten(root)
    assert gd.num_nodes == DEPTH + 1
    new = impl.unflatten(gd, sm)
    assert new.child.child.root is new
    assert impl.flatten(new)[0] == gd


# -- unflatten is faithful ---------------------------------------------------------


@pytest.mark.parametrize("build", [pytest.param(mlp, marks=pytest.mark.repeats), tied, rich],
                         ids=["mlp", "tied", "rich"])
def test_unflatten_then_flatten_roundtrip(impl, build):
    root = build()
    ref = sg.generic.flatten(root)
    gd, sm = impl.flatten(root)
    assert_same_flatten((gd, sm), ref)
    new = impl.unflatten(gd, sm)
    assert new is not root
    assert_same_flatten(impl.flatten(new), ref)
    # nothing of the old graph is reused but the values
    old_ids = {id(x) for x in reachable(root) if isinstance(x, sg.Node | sg.State | Bag | list | dict)}
    for x in reachable(new):
        if isinstance(x, sg.Node | sg.State | Bag | list | dict):
            assert id(x) not in old_ids, x


def test_unflatten_reproduces_sharing_and_cycles(impl):
    root = tied()
    gd, sm = impl.flatten(root)
    new = impl.unflatten(gd, sm)
    assert new.enc.w is new.dec.w
    assert new.enc.w is not root.enc.w
    assert new.enc.b is not new.dec.b
    assert new.s1 is new.s2
    assert new.s1.parent is new
    assert type(new.s1.scale) is BatchStat


def test_unflatten_rich(impl):
    root = rich()
    gd, sm = impl.flatten(root)
    new = impl.unflatten(gd, sm)
    assert new.child is new.again
    assert new.child.up is new
    assert new.lst[0] is new.shared_a
    assert new.bag["w"] is new.child
    assert new.bag.tag == "mybag"
    assert type(new.pair) is Pair and new.pair.second == 9
    assert type(new.cell) is Cell
    assert new.tup == (1, 2.0, "three")
    assert new.fn is len
    assert dict(new.meta.metadata) == {"tag": "t", "group": 2}
    assert new.lst[1] is root.lst[1]
    assert new.dct["nested"]["q"][0] is root.dct["nested"]["q"][0]
    assert new.lst[5][0] is root.lst[5][0]


@pytest.mark.repeats
def test_clone_like_roundtrip_keeps_value_objects(impl):
    root = mlp()
    gd, sm = impl.flatten(root)
    new = impl.unflatten(gd, sm)
    for a, b in zip(root.layers, new.layers, strict=True):
        assert a is not b
        assert a.w is not b.w
        assert a.w.value is b.w.value


# -- flatten never mutates ---------------------------------------------------------


@pytest.mark.parametrize("build", [pytest.param(mlp, marks=pytest.mark.repeats), tied, rich],
                         ids=["mlp", "tied", "rich"])
def test_flatten_does_not_mutate(impl, build):
    root = build()
    snap = snapshot(root)
    impl.flatten(root)
    impl.flatten(root)
    sg.states(root)
    sg.nodes(root)
    sg.graphdef(root)
    sg.split(root, sg.Param, ...)
    list(sg.iter_leaf(root))
    sg.clone(root)
    assert_unchanged(snap)


def test_flatten_of_a_dict_with_unsorted_keys_does_not_reorder_it(impl):
    d = {"b": sg.Param(1.0), "a": sg.Param(2.0)}
    root = Box(d=d)
    impl.flatten(root)
    assert list(d) == ["b", "a"]
    _, sm = impl.flatten(root)
    assert list(sm.keys()) == [("d", "a"), ("d", "b")]


# -- mutations between calls: the result always equals the reference ---------------


def _mutations() -> list[tuple[str, Callable[[Box], Any]]]:
    def add_attr(r: Box) -> None:
        r.extra = sg.Param(np.float32(9))

    def del_attr(r: Box) -> None:
        del r.layers[0].b

    def change_static(r: Box) -> None:
        r.act = "gelu"

    def static_type(r: Box) -> None:
        r.n = float(r.n)

    def static_bool(r: Box) -> None:
        r.one = True

    def swap_state_type(r: Box) -> None:
        r.layers[0].w = BatchStat(r.layers[0].w.value)

    def metadata(r: Box) -> None:
        r.layers[0].w = sg.Param(r.layers[0].w.value, tag="x")

    def share_state(r: Box) -> None:
        r.layers[1].w = r.layers[0].w

    def share_node(r: Box) -> None:
        r.layers[1] = r.layers[0]

    def unshare_after_share(r: Box) -> None:
        r.layers[1] = r.layers[0]
        r.layers[1] = Box(**vars(r.layers[0]))

    def cycle(r: Box) -> None:
        r.layers[2].parent = r

    def list_grow(r: Box) -> None:
        r.layers.append(Box())

    def list_shrink(r: Box) -> None:
        r.layers.pop()

    def array_for_state(r: Box) -> None:
        r.layers[0].w = r.layers[0].w.value

    def state_for_array(r: Box) -> None:
        r.arr = sg.Param(r.arr)

    def node_type(r: Box) -> None:
        r.layers[0] = Bag("b", w=sg.Param(1.0))

    def dict_key(r: Box) -> None:
        r.d["c"] = r.d.pop("a")

    def dict_to_list(r: Box) -> None:
        r.d = list(r.d.values())

    def tuple_to_list(r: Box) -> None:
        r.t = list(r.t)

    def tuple_static(r: Box) -> None:
        r.t = (r.t[0], 2)

    def replace_value_only(r: Box) -> None:
        r.layers[0].w.value = np.zeros(7)
        r.arr = np.ones(5)

    def same_objects_swapped(r: Box) -> None:
        r.layers[0].w, r.layers[0].b = r.layers[0].b, r.layers[0].w

    def invisible(r: Box) -> None:
        r.layers[0].__dict__[1] = 2  # not a string attribute name: an error for both

    return [
        (f.__name__, f)
        for f in (
            add_attr,
            del_attr,
            change_static,
            static_type,
            static_bool,
            swap_state_type,
            metadata,
            share_state,
            share_node,
            unshare_after_share,
            cycle,
            list_grow,
            list_shrink,
            array_for_state,
            state_for_array,
            node_type,
            dict_key,
            dict_to_list,
            tuple_to_list,
            tuple_static,
            replace_value_only,
            same_objects_swapped,
            invisible,
        )
    ]


def _model() -> Box:
    m = mlp(3)
    m.arr = np.arange(3.0)
    m.one = 1
    m.d = {"a": sg.Param(np.float32(1)), "b": np.ones(2)}
    m.t = (sg.State(np.float32(0)), 1)
    return m


@pytest.mark.parametrize(("name", "mutate"), _mutations(), ids=[n for n, _ in _mutations()])
def test_mutation_between_flattens_matches_reference(name, mutate):
    root = _model()
    before = assert_matches_reference(root)
    mutate(root)
    try:
        ref = sg.generic.flatten(root)
    except Exception as e:  # the reference rejects it: so must the public path
        with pytest.raises(type(e)):
            sg.flatten(root)
        return
    got = sg.flatten(root)
    assert_same_flatten(got, ref)
    assert_same_flatten(sg.flatten(root), ref)
    if name not in ("replace_value_only", "same_objects_swapped"):
        assert ref[0] != before[0]
    else:
        assert ref[0] == before[0]


@pytest.mark.parametrize(("name", "mutate"), _mutations(), ids=[n for n, _ in _mutations()])
def test_mutation_between_updates_matches_reference(name, mutate):
    root, twin = _model(), _model()
    sg.flatten(root)
    sg.update(root, sg.flatten(root)[1])
    mutate(root)
    mutate(twin)
    try:
        _, sm = sg.generic.flatten(twin)
    except Exception:
        return
    new = jax.tree.map(lambda v: v + 1, sm)
    sg.generic.update(twin, new)
    sg.update(root, new)
    assert_same_flatten_values(sg.generic.flatten(root), sg.generic.flatten(twin))


def assert_same_flatten_values(a: Any, b: Any) -> None:
    assert a[0] == b[0]
    assert list(a[1].keys()) == list(b[1].keys())
    for x, y in zip(a[1].values(), b[1].values(), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
