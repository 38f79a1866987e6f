"""The unflatten of repeated layers holding bare arrays: outlined like any other shape.

A bare array is a value of the state mapping, read from its slot where the unrolled code
reads it: in a node's dict, a list, a tuple, a dict, or a custom pytree (a namedtuple, a
registered class) built by its treedef. Layers holding one are one builder per shape and a
list of them one loop (two phases where a custom pytree's unflatten, user code, runs: the
arrays read with the other values in the objects phase are handed to the fills phase with
the objects). The result is the reference's: exact types, the very value objects at their
places (one array at two slots is one object at both, as the reference puts it), fresh
nodes and states.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

import hypothesis
import jax
import numpy as np
import pytest
from conftest import assert_same_flatten, outlined_unflatten_hits
from hypothesis import strategies as hst

import specgraph as sg
from specgraph.runtime import dispatch
from specgraph.runtime.cache import CONFIG

WB = collections.namedtuple("WB", "w b")
WB2 = collections.namedtuple("WB2", "w b")  # the same fields, another class


@jax.tree_util.register_pytree_node_class
class Pair:
    """A registered class without aux data."""

    def __init__(self, a: Any, b: Any) -> None:
        self.a, self.b = a, b

    def tree_flatten(self) -> tuple[tuple[Any, Any], None]:
        return (self.a, self.b), None

    @classmethod
    def tree_unflatten(cls, aux: Any, ch: Any) -> Pair:
        return cls(*ch)


class Inner(sg.Node):
    def __init__(self, w: Any, b: Any) -> None:
        self.w = w
        self.b = b


HOLDERS: dict[str, Callable[[Any, Any], Any]] = {
    "nt": WB,
    "pair": Pair,
    "list": lambda w, b: [w, b],
    "tuple": lambda w, b: (w, b),
    "dict": lambda w, b: {"w": w, "b": b, "'); import os #": w},
    "node": Inner,
}


class Layer(sg.Node):
    def __init__(self, i: int, holder: str = "nt", w: Any = None) -> None:
        w = np.full((3,), i, np.float32) if w is None else w
        self.p = HOLDERS[holder](w, sg.Param(np.full((2,), i, np.float32)))
        self.act = "relu"


class ArrLayer(sg.Node):
    """Bare arrays straight in the node's dict."""

    def __init__(self, i: int) -> None:
        self.w = np.full((3,), i, np.float32)
        self.b = np.full((2,), i, np.float32)
        self.k = sg.Param(np.float32(i))


class Model(sg.Node):
    def __init__(self, **attrs: Any) -> None:
        vars(self).update(attrs)


def layers(n: int, holder: str = "nt") -> Model:
    return Model(layers=[Layer(i, holder) for i in range(n)], z=sg.Param(np.float32(-1)))


def remap(st: sg.StateMap, f: Callable[[tuple, Any], Any]) -> sg.StateMap:
    """``st`` with each value replaced by ``f(path, value)``, as one StateMap."""
    it = iter([f(p, v) for p, v in st.items()])
    return jax.tree.map(lambda _: next(it), st)


def _objects(root: Any) -> list[Any]:
    return [x for _, x in sg.iter_node(root)] + [s for _, s in sg.iter_leaf(root) if isinstance(s, sg.State)]


def assert_unflattens_as_reference(gd: sg.GraphDef, st: sg.StateMap, compiled: bool,
                                   old: Any = None, outlined: bool = True) -> Any:
    """The public unflatten (twice: the second served by generated code when ``compiled``,
    counted, and by outlined code when ``outlined``) equals the reference's: the same
    structure, the very value objects, containers of the very same types, and no object of
    ``old`` (the graph flattened) reused."""
    sg.unflatten(gd, st)
    hits, outl = sg.cache_info()["unflatten_hits"], outlined_unflatten_hits()
    got = sg.unflatten(gd, st)
    if compiled:
        assert sg.cache_info()["unflatten_hits"] == hits + 1, dispatch._stats_for(gd).declined
        if outlined:
            assert outlined_unflatten_hits() == outl + 1
    ref = sg.generic.unflatten(gd, st)
    mine, theirs = sg.generic.flatten(got), sg.generic.flatten(ref)
    assert_same_flatten(mine, theirs)
    if mine[0] == gd:  # (values given that are no arrays are statics once flattened again)
        for x, y in zip(mine[1].values(), st.values(), strict=True):
            assert x is y
    _same_shape(got, ref)  # exact types all the way down (a namedtuple stays that class)
    if old is not None:
        ids = {id(x) for x in _objects(old)}
        assert not any(id(x) in ids for x in _objects(got))
    return got


def _same_shape(a: Any, b: Any) -> None:
    """``a`` and ``b`` are the same tree of the same types, with the very same leaf values."""
    stack = [(a, b)]
    seen: set[int] = set()
    while stack:
        x, y = stack.pop()
        assert type(x) is type(y)
        if isinstance(x, sg.Node):
            if id(x) in seen:
                continue
            seen.add(id(x))
            assert sorted(vars(x)) == sorted(vars(y))
            stack += [(vars(x)[k], vars(y)[k]) for k in vars(x)]
        elif isinstance(x, sg.State):
            assert x.value is y.value
        elif isinstance(x, list | tuple):
            assert len(x) == len(y)
            stack += list(zip(x, y, strict=True))
        elif isinstance(x, dict):
            assert list(x) == list(y)
            stack += [(x[k], y[k]) for k in x]
        elif isinstance(x, Pair):
            stack += [(x.a, y.a), (x.b, y.b)]
        elif isinstance(x, np.ndarray | jax.Array):
            assert x is y
        else:
            assert x == y


def _unflatten_plan(gd: sg.GraphDef) -> Any:
    built = dispatch._unflat.get(gd)
    assert built is not None, dispatch._stats_for(gd).declined
    return built.plan


@pytest.mark.parametrize("holder", sorted(HOLDERS))
def test_layers_holding_a_bare_array(impl: Any, holder: str) -> None:
    b = layers(100, holder)
    ref = sg.generic.flatten(b)
    hits = sg.cache_info()["hits"]
    got = impl.flatten(b)
    assert_same_flatten(got, ref)
    if impl.compiled:
        assert sg.cache_info()["hits"] == hits + 1
    new = remap(ref[1], lambda p, v: v if isinstance(v, np.ndarray) and v.shape == (3,) else v + 1)
    before = sg.cache_info()["update_hits"]
    impl.update(b, new)
    if impl.compiled:
        assert sg.cache_info()["update_hits"] == before + 1
    gd, st = sg.generic.flatten(b)
    twin = impl.unflatten(gd, st)
    assert_same_flatten(sg.generic.flatten(twin), (gd, st))
    _same_shape(twin, sg.generic.unflatten(gd, st))
    # (a tuple holding an array keeps its layer inline in the flatten, whose update checks
    # it unchanged, and so in the unflatten planned from the flatten's scan)
    looped = impl.name == "outlined" and holder != "tuple"
    if looped:
        plan = _unflatten_plan(gd)
        assert plan.loops and "100 x Layer" in plan.loops[0]
        assert outlined_unflatten_hits() >= 1
    if impl.compiled:
        assert_unflattens_as_reference(gd, st, True, old=b, outlined=looped)


def test_arrays_in_a_nodes_dict(impl: Any) -> None:
    b = Model(layers=[ArrLayer(i) for i in range(70)])
    gd, st = sg.generic.flatten(b)
    assert_same_flatten(impl.flatten(b), (gd, st))
    twin = impl.unflatten(gd, st)
    _same_shape(twin, sg.generic.unflatten(gd, st))
    if impl.compiled:
        assert_unflattens_as_reference(gd, st, True, old=b, outlined=impl.name == "outlined")


@pytest.mark.parametrize("holder", ["nt", "pair", "list", "node"])
def test_one_array_shared_by_every_occurrence(outlined: None, holder: str) -> None:
    """One array object at every layer's slot (the walker gives it a slot per place): the
    unflatten puts the very object of each slot at its place."""
    w = np.arange(3, dtype=np.float32)
    b = Model(layers=[Layer(i, holder, w=w) for i in range(40)])
    gd, st = sg.generic.flatten(b)
    got = assert_unflattens_as_reference(gd, st, True, old=b)
    held = [sg.generic.flatten(layer)[1] for layer in got.layers]
    assert all(any(v is w for v in s.values()) for s in held)
    # and the values given, whatever they are: one new array for all, or a distinct one each
    for f in (lambda p, v: v + 1 if v is w else v, lambda p, v: np.zeros(3) if v is w else v):
        assert_unflattens_as_reference(gd, remap(st, f), True)


@pytest.mark.parametrize("value", [1.5, None, "text", (1, 2)], ids=["float", "none", "str", "tuple"])
def test_values_that_are_no_arrays(outlined: None, value: Any) -> None:
    """The state mapping given holds something else at an array's slot: put there, as the
    reference does (the structure is the GraphDef's; values are not checked)."""
    b = layers(30, "nt")
    gd, st = sg.generic.flatten(b)
    slots = [k for k, (p, v) in enumerate(st.items()) if p[-1] == "w"]
    vals = list(st.values())
    for k in slots:
        vals[k] = value
    it = iter(vals)
    given = jax.tree.map(lambda _: next(it), st)
    got = assert_unflattens_as_reference(gd, given, True)
    assert all(layer.p.w is value for layer in got.layers)


def _mutations() -> dict[str, Callable[[Layer], None]]:
    def scalar(layer: Layer) -> None:
        layer.p = WB(1.5, layer.p.b)

    def none(layer: Layer) -> None:
        layer.p = WB(None, layer.p.b)

    def other_class(layer: Layer) -> None:
        layer.p = WB2(*layer.p)

    def param(layer: Layer) -> None:
        layer.p = WB(sg.Param(layer.p.w), layer.p.b)

    def two_arrays(layer: Layer) -> None:
        layer.p = WB([layer.p.w, layer.p.w + 1], layer.p.b)

    def dropped(layer: Layer) -> None:
        del layer.p

    return {"scalar": scalar, "none": none, "other_class": other_class, "param": param,
            "two_arrays": two_arrays, "dropped": dropped}


MUTATIONS = _mutations()


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
@pytest.mark.parametrize("i", [0, 37, 69])
def test_one_occurrence_mutated(outlined: None, mutation: str, i: int) -> None:
    """One layer's array became something else (at the head, in the middle, last): a new
    structure, flattened, updated and unflattened by its own generated code as the reference;
    the old structure's unflatten still answers as before."""
    b = layers(70)
    old_gd, old_st = sg.generic.flatten(b)
    assert_unflattens_as_reference(old_gd, old_st, True)
    MUTATIONS[mutation](b.layers[i])
    ref = sg.generic.flatten(b)
    assert ref[0] != old_gd
    sg.flatten(b)
    hits = sg.cache_info()["hits"]
    assert_same_flatten(sg.flatten(b), ref)
    assert sg.cache_info()["hits"] == hits + 1
    sg.update(b, ref[1])
    assert sg.cache_info()["update_hits"] >= 1
    assert_unflattens_as_reference(*ref, True, old=b)
    assert_unflattens_as_reference(old_gd, old_st, True)


def test_blocks_nested_deep(outlined: None) -> None:
    """Layers holding arrays inside blocks nested 30 deep, 8 of each: builders calling
    builders."""

    def block(d: int) -> Any:
        if d == 0:
            return Model(layer=Layer(d, "pair"), arr=np.full((1,), d, np.float32))
        return Model(inner=block(d - 1), arr=np.full((1,), d, np.float32), k=sg.Param(np.float32(d)))

    b = Model(blocks=[block(30) for _ in range(8)])
    gd, st = sg.generic.flatten(b)
    assert_unflattens_as_reference(gd, st, True, old=b)


def test_a_chain_of_links_holding_arrays(outlined: None) -> None:
    """Links holding a bare array are no chain loop's (as in the flatten): a chain of 500
    is planned unrolled and answers as the reference."""
    x: Any = None
    for i in range(500):
        x = Model(arr=np.full((1,), i, np.float32), nxt=x, p=sg.Param(np.float32(i)))
    b = Model(x=x)
    gd, st = sg.generic.flatten(b)
    assert_unflattens_as_reference(gd, st, True, old=b, outlined=False)


_KINDS = ("nt", "pair", "list", "tuple", "dict", "node", "arr", "param")


@hypothesis.settings(max_examples=40, deadline=None,
                     suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture,
                                            hypothesis.HealthCheck.too_slow])
@hypothesis.given(kinds=hst.lists(hst.sampled_from(_KINDS), min_size=1, max_size=4),
                  n=hst.integers(2, 30), nest=hst.integers(0, 3),
                  odd=hst.lists(hst.tuples(hst.integers(0, 29), hst.sampled_from(_KINDS)), max_size=3),
                  share=hst.booleans())
def test_random_layers_holding_arrays(kinds: list[str], n: int, nest: int, odd: list[tuple[int, str]],
                                      share: bool) -> None:
    """Lists of layers holding arrays in random holders, nested in lists and blocks, some
    layers of another recipe, an array shared by all: the compiled unflatten (served,
    counted) is the reference's."""
    shared = np.ones((2,), np.float32)

    def leaf(kind: str, i: int) -> Any:
        w = shared if share else np.full((2,), i, np.float32)
        if kind == "arr":
            return w
        if kind == "param":
            return sg.Param(np.float32(i))
        return HOLDERS[kind](w, sg.Param(np.float32(i)))

    def layer(i: int, ks: list[str]) -> Any:
        return Model(**{f"f{j}": leaf(k, i) for j, k in enumerate(ks)})

    items = [layer(i, kinds) for i in range(n)]
    for at, kind in odd:
        if at < n:
            items[at] = layer(at, [kind])
    x: Any = items
    for d in range(nest):
        x = [Model(body=x, d=sg.Param(np.float32(d))), np.zeros((1,), np.float32)] if d % 2 else Model(body=x)
    root = Model(x=x, y=[layer(i, kinds) for i in range(3)])
    saved = CONFIG.outline_min
    sg.configure(outline_min=2)
    sg.clear_cache()
    try:
        gd, st = sg.generic.flatten(root)
        sg.flatten(root)
        assert_same_flatten(sg.flatten(root), (gd, st))
        assert_unflattens_as_reference(gd, st, True, old=root, outlined=False)
        if "tuple" not in kinds:  # (see test_layers_holding_a_bare_array)
            assert outlined_unflatten_hits() >= 1  # (y's three layers at least)
    finally:
        CONFIG.outline_min = saved
        sg.clear_cache()


@pytest.mark.parametrize("holder", ["nt", "node-dict"])
def test_ten_thousand_layers_at_default_settings(holder: str) -> None:
    assert CONFIG.outline_min > 2
    b = Model(layers=[ArrLayer(i) for i in range(10_000)]) if holder == "node-dict" else layers(10_000)
    ref = sg.generic.flatten(b)
    sg.flatten(b)
    assert_same_flatten(sg.flatten(b), ref)
    sg.update(b, ref[1])
    info = sg.cache_info()
    assert info["hits"] == 1 and info["update_hits"] == 1 and info["declined"] == 0
    assert_unflattens_as_reference(*ref, True, old=b)
    assert "10000 x" in " ".join(_unflatten_plan(ref[0]).loops)
