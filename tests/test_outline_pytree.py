"""Outlined code over nodes holding custom JAX pytrees (a namedtuple, a registered class).

A custom pytree's edge is part of a shape (codegen/shapes.py, ``_pytree_key``): its
treedef without aux data by value, with aux data its container type, arity and aux data as
``SAME_AUX`` reads it. Every occurrence is still guarded as the unrolled code guards it (its
type, its one-level treedef, its aux data), so each mutation below, made to one occurrence
at a time, is a guard miss answered by the reference walker.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

import hypothesis
import jax
import numpy as np
import pytest
from conftest import assert_same_flatten, outlined_flatten_hits, outlined_unflatten_hits
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


@jax.tree_util.register_pytree_node_class
class Tagged:
    """A registered class with aux data (its tag)."""

    def __init__(self, a: Any, b: Any, tag: Any = "relu") -> None:
        self.a, self.b, self.tag = a, b, tag

    def tree_flatten(self) -> tuple[tuple[Any, Any], Any]:
        return (self.a, self.b), self.tag

    @classmethod
    def tree_unflatten(cls, aux: Any, ch: Any) -> Tagged:
        return cls(*ch, tag=aux)


@jax.tree_util.register_pytree_node_class
class Seq:
    """A registered class without aux data whose arity varies: only its treedef tells."""

    def __init__(self, *items: Any) -> None:
        self.items = list(items)

    def tree_flatten(self) -> tuple[tuple[Any, ...], None]:
        return tuple(self.items), None

    @classmethod
    def tree_unflatten(cls, aux: Any, ch: Any) -> Seq:
        return cls(*ch)


def holder(kind: str, a: Any, b: Any) -> Any:
    return {"nt": lambda: WB(a, b), "pair": lambda: Pair(a, b), "tagged": lambda: Tagged(a, b),
            "tagged1": lambda: Tagged(a, b, 1), "seq": lambda: Seq(a, b)}[kind]()


class L(sg.Node):
    def __init__(self, i: int, kind: str, n: int = 0) -> None:
        self.p = holder(kind, sg.Param(np.float32(i)), sg.Param(np.float32(-i)))
        self.n = n


class Box(sg.Node):
    def __init__(self, **attrs: Any) -> None:
        vars(self).update(attrs)


KINDS = ["nt", "pair", "tagged", "seq"]


def model(kind: str, n: int = 6) -> Box:
    """``n`` layers of two shapes in turn (their static ``n``), then a head."""
    return Box(layers=[L(i, kind, i % 2) for i in range(n)], head=L(9, kind))


def _source(gd: sg.GraphDef, kind: str = "flatten") -> str:
    var = dispatch.variant_for(gd)
    assert var is not None
    return var.sources[kind]


def _specialized(node: Any) -> tuple[sg.GraphDef, sg.StateMap]:
    sg.flatten(node)
    before = sg.cache_info()["hits"]
    out = sg.flatten(node)
    assert sg.cache_info()["hits"] == before + 1, sg.cache_info()
    assert_same_flatten(out, sg.generic.flatten(node))
    return out


def _rebuilt_alike(a: Any, b: Any) -> None:
    """Two unflattened models hold the same classes, aux data and values."""
    for x, y in zip([*a.layers, a.head], [*b.layers, b.head], strict=True):
        assert type(x.p) is type(y.p)
        if type(x.p) is Tagged:
            assert type(x.p.tag) is type(y.p.tag) and x.p.tag == y.p.tag
        xs, ys = jax.tree_util.tree_leaves(x.p), jax.tree_util.tree_leaves(y.p)
        assert len(xs) == len(ys)
        for u, v in zip(xs, ys, strict=True):
            assert type(u) is type(v) and u.value == v.value


@pytest.mark.repeats
@pytest.mark.parametrize("kind", KINDS)
def test_flatten_update_unflatten(impl: Any, kind: str) -> None:
    """Through every path; outlined, every operation is served by outlined code."""
    m = model(kind)
    gd, st = impl.flatten(m)
    assert_same_flatten((gd, st), sg.generic.flatten(m))
    twin = impl.unflatten(gd, st)
    _rebuilt_alike(twin, sg.generic.unflatten(gd, st))
    assert_same_flatten(sg.generic.flatten(twin), sg.generic.flatten(sg.generic.unflatten(gd, st)))
    new = sg.StateMap._make(st._table, [np.float32(100 + i) for i in range(len(st))])
    impl.update(m, new)
    got = sg.generic.flatten(m)[1]
    assert all(a is b for a, b in zip(got.values(), new.values(), strict=True))
    if impl.name == "outlined":
        assert outlined_flatten_hits() > 0 and outlined_unflatten_hits() > 0
        assert "def outlined" in _source(gd) or "of one shape" in _source(gd)


def _states(p: Any) -> list[Any]:
    return jax.tree_util.tree_leaves(p, is_leaf=lambda x: isinstance(x, sg.State))


def mutate(m: Box, i: int, kind: str, mutation: str) -> None:
    """Layer ``i`` (holding a ``kind`` pytree) gets another holder of its two states."""
    layer = m.layers[i]
    a, b = _states(layer.p)
    if mutation == "none":
        b = None
    elif mutation == "tied":  # a Param of the next layer's pytree
        b = _states(m.layers[(i + 1) % len(m.layers)].p)[1]
    layer.p = {"WB2": lambda: WB2(a, b), "tuple": lambda: (a, b), "pair": lambda: Pair(a, b),
               "tag": lambda: Tagged(a, b, "gelu"), "tag float": lambda: Tagged(a, b, 1.0),
               "seq3": lambda: Seq(a, b, sg.Param(np.float32(7))),
               "none": lambda: holder(kind, a, b), "tied": lambda: holder(kind, a, b)}[mutation]()


#: (holder kind, mutation) pairs: each mutation applies to that holder
MUTATIONS = [("nt", "WB2"), ("nt", "tuple"), ("nt", "pair"), ("nt", "none"), ("nt", "tied"),
             ("pair", "tuple"), ("pair", "none"), ("pair", "tied"), ("pair", "seq3"),
             ("tagged", "tag"), ("tagged", "tag float"), ("tagged", "pair"), ("tagged", "none"),
             ("tagged1", "tag float"), ("seq", "seq3"), ("seq", "pair"), ("seq", "tied")]


@pytest.mark.parametrize("i", [0, 3, 5])
@pytest.mark.parametrize(("kind", "mutation"), MUTATIONS)
def test_each_occurrence_mutated_is_a_miss(outlined: None, kind: str, mutation: str, i: int) -> None:
    """One occurrence of the loop mutated: a guard miss, the reference's answer."""
    m = model(kind)
    gd, _ = _specialized(m)
    assert "def outlined" in _source(gd)
    mutate(m, i, kind, mutation)
    misses = sum(sg.cache_info()["guard_misses"].values())
    hits = sg.cache_info()["hits"]
    assert_same_flatten(sg.flatten(m), sg.generic.flatten(m))
    assert sum(sg.cache_info()["guard_misses"].values()) == misses + 1
    assert sg.cache_info()["hits"] == hits
    # and the update of the mutated model is the reference's too (a miss, then served)
    _, st2 = sg.generic.flatten(m)
    new = sg.StateMap._make(st2._table, [np.float32(-50 - i) for i in range(len(st2))])
    sg.update(m, new)
    assert all(a is b for a, b in zip(sg.generic.flatten(m)[1].values(), new.values(), strict=True))


@hypothesis.settings(max_examples=25, deadline=None)
@hypothesis.given(hst.lists(hst.sampled_from(["nt", "nt2", "pair", "tag", "tag2", "tag1.0", "tag1", "seq",
                                              "seq3", "tuple"]), min_size=2, max_size=8))
def test_mixed_holders_match_the_reference(kinds: list[str]) -> None:
    """Layers holding any mix of pytrees (namedtuple classes of equal fields, aux data equal
    yet distinguishable: ``1`` and ``1.0``): each structure flattens, updates and unflattens
    as the reference does, outlined, and each layer keeps its own class and aux data."""
    saved = CONFIG.outline_min
    sg.configure(outline_min=2)
    sg.clear_cache()
    try:
        def make(k: str, i: int) -> Any:
            a, b = sg.Param(np.float32(i)), sg.Param(np.float32(-i))
            return {"nt": lambda: WB(a, b), "nt2": lambda: WB2(a, b), "pair": lambda: Pair(a, b),
                    "tag": lambda: Tagged(a, b), "tag2": lambda: Tagged(a, b, "gelu"),
                    "tag1.0": lambda: Tagged(a, b, 1.0), "tag1": lambda: Tagged(a, b, 1),
                    "seq": lambda: Seq(a, b), "seq3": lambda: Seq(a, b, sg.Param(np.float32(3))),
                    "tuple": lambda: (a, b)}[k]()
        layers = []
        for i, k in enumerate(kinds):
            layer = L(i, "nt")
            layer.p = make(k, i)
            layers.append(layer)
        m = Box(layers=layers, more=[L(i, "nt") for i in range(3)])
        gd, st = _specialized(m)
        twin = sg.unflatten(gd, st)
        twin = sg.unflatten(gd, st)
        ref = sg.generic.unflatten(gd, st)
        for x, y in zip(twin.layers, ref.layers, strict=True):
            assert type(x.p) is type(y.p)
            if type(x.p) is Tagged:
                assert type(x.p.tag) is type(y.p.tag) and x.p.tag == y.p.tag
        assert_same_flatten(sg.generic.flatten(twin), sg.generic.flatten(ref))
        # a structure built again from other objects is served by the same code
        m2 = Box(layers=[L(0, "nt") for _ in kinds], more=[L(i, "nt") for i in range(3)])
        for layer, k in zip(m2.layers, kinds, strict=True):
            layer.p = make(k, 0)
        if sg.generic.flatten(m2)[0] == gd:
            hits = sg.cache_info()["hits"]
            assert_same_flatten(sg.flatten(m2), sg.generic.flatten(m2))
            assert sg.cache_info()["hits"] == hits + 1
    finally:
        CONFIG.outline_min = saved
        sg.clear_cache()


@pytest.mark.parametrize(("first", "second"), [("nt", "nt2"), ("tag", "tag2"), ("tag1", "tag1.0")])
def test_units_are_not_shared_across_classes_or_aux_data(outlined: None, first: str, second: str) -> None:
    """A structure whose layers hold another namedtuple class of the same fields, or a
    registered class with other aux data (``1.0`` after ``1``), gets code guarding its own:
    its flatten is served (a shared unit reading the first structure's treedef or aux data
    would miss on every call), and answers the reference's structure."""
    def make(k: str, a: Any, b: Any) -> Any:
        return {"nt": lambda: WB(a, b), "nt2": lambda: WB2(a, b), "tag": lambda: Tagged(a, b),
                "tag2": lambda: Tagged(a, b, "gelu"), "tag1": lambda: Tagged(a, b, 1),
                "tag1.0": lambda: Tagged(a, b, 1.0)}[k]()

    def build(k: str, n: int) -> Box:
        m = model("nt", n)
        for layer in [*m.layers, m.head]:
            layer.p = make(k, *layer.p)
        return m
    _specialized(build(first, 5))
    m = build(second, 5)
    gd, _ = _specialized(m)
    twin = sg.unflatten(gd, sg.flatten(m)[1])
    twin = sg.unflatten(gd, sg.flatten(m)[1])
    assert all(type(x.p) is type(y.p) for x, y in zip(twin.layers, m.layers, strict=True))
    if second.startswith("tag"):
        assert all(type(x.p.tag) is type(y.p.tag) for x, y in zip(twin.layers, m.layers, strict=True))


def test_units_without_aux_data_are_shared_by_value(outlined: None) -> None:
    """A namedtuple's treedef carries no aux data: a structure of another length binds the
    compiled units of the first (its treedef keyed by value, not by the very object)."""
    _specialized(model("nt", 5))
    before = sg.cache_info()["outlined_units_reused"]
    _specialized(model("nt", 7))
    assert sg.cache_info()["outlined_units_reused"] > before


@pytest.mark.parametrize(("kind", "mutation", "guard"), [
    ("seq", "seq3", "container"),  # the treedef's arity: its == only
    ("tagged", "tag", "container"),  # its aux data: the treedef's == and SAME_AUX
    ("tagged1", "tag float", "container"),  # aux data equal yet distinguishable: SAME_AUX only
    ("nt", "WB2", "type container"),  # the container's class: its type guard and its treedef's
])
def test_treedef_guards_are_load_bearing(outlined: None, kind: str, mutation: str, guard: str,
                                         disable: Callable[[frozenset[str]], None]) -> None:
    """Without the guards of one kind (the container's: its treedef and aux data; its type)
    the outlined code answers a mutated occurrence with the stale structure."""
    disable(frozenset(guard.split()))
    m = model(kind)
    gd, _ = _specialized(m)
    assert "def outlined" in _source(gd)
    mutate(m, 3, kind, mutation)
    got = sg.flatten(m)
    with pytest.raises(AssertionError):
        assert_same_flatten(got, sg.generic.flatten(m))


@pytest.mark.parametrize("kind", ["nt", "pair"])
def test_ten_thousand_layers_are_specialized(kind: str) -> None:
    """With the default settings: 10 000 layers holding a namedtuple or a registered class
    are specialized and outlined (flatten, update, unflatten)."""
    m = Box(layers=[L(i, kind) for i in range(10_000)])
    gd, st = _specialized(m)
    assert len(_source(gd).splitlines()) < 200
    sg.update(m, st)
    assert sg.cache_info()["update_hits"] == 1
    sg.unflatten(gd, st)
    twin = sg.unflatten(gd, st)
    assert sg.cache_info()["unflatten_hits"] == 1
    assert outlined_unflatten_hits() == 1 and outlined_flatten_hits() >= 2
    assert type(twin.layers[9_999].p) is type(m.layers[0].p)
    assert_same_flatten(sg.generic.flatten(twin), sg.generic.flatten(sg.generic.unflatten(gd, st)))


LOG: list[Any] = []


@jax.tree_util.register_pytree_node_class
class Logged:
    """A registered class whose unflatten logs what it sees: its tag, which layer's it is
    (its Param's value) and whether the node it holds is filled yet (the reference makes
    every object, then fills nodes in table order)."""

    def __init__(self, a: Any, b: Any, tag: int = 0) -> None:
        self.a, self.b, self.tag = a, b, tag

    def tree_flatten(self) -> tuple[tuple[Any, Any], int]:
        return (self.a, self.b), self.tag

    @classmethod
    def tree_unflatten(cls, aux: int, ch: Any) -> Logged:
        LOG.append((aux, float(ch[1].value), sorted(vars(ch[0]))))
        return cls(*ch, tag=aux)


class Link(sg.Node):
    def __init__(self, i: int, nxt: Any = None, tag: int = 0, attr: str = "h") -> None:
        # (``h`` sorts before ``next``, ``p`` after it)
        setattr(self, attr, Logged(Box(w=sg.Param(np.float32(i))), sg.Param(np.float32(-i)), tag))
        if nxt is not None:
            self.next = nxt


def _chain(n: int, attr: str) -> Link:
    x = None
    for i in range(n):
        x = Link(i, x, attr=attr)
    assert x is not None
    return x


@pytest.mark.repeats
@pytest.mark.parametrize("layout", ["list", "chain h", "chain p"])
def test_pytree_unflatten_runs_in_the_reference_order(impl: Any, layout: str) -> None:
    """A registered pytree holding a node: its ``tree_unflatten`` (user code) is called as
    often, in the same order and seeing the same (made, not yet filled) children as the
    reference's, in a list of layers (two-phase outlined builders) and in a chain of links
    (looped by the flatten only)."""
    m = Box(layers=[Link(i, tag=i % 3) for i in range(6)]) if layout == "list" \
        else Box(x=_chain(6, layout[-1]))
    gd, st = impl.flatten(m)
    assert_same_flatten((gd, st), sg.generic.flatten(m))
    LOG.clear()
    sg.generic.unflatten(gd, st)
    ref = list(LOG)
    impl.unflatten(gd, st)  # (warm-up and served call: the log of the last one)
    LOG.clear()
    hits = sg.cache_info()["unflatten_hits"]
    twin = sg.unflatten(gd, st) if impl.compiled else sg.generic.unflatten(gd, st)
    assert sg.cache_info()["unflatten_hits"] == hits + impl.compiled
    assert LOG == ref
    assert_same_flatten(sg.generic.flatten(twin), sg.generic.flatten(sg.generic.unflatten(gd, st)))
    new = sg.StateMap._make(st._table, [np.float32(100 + i) for i in range(len(st))])
    impl.update(m, new)
    assert all(a is b for a, b in zip(sg.generic.flatten(m)[1].values(), new.values(), strict=True))
