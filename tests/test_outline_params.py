"""Subtrees that differ only in the values of int/str/bool statics (a layer's index, a
name, a flag) are one shape: its function takes the values that differ as parameters,
each call passes its occurrence's, and a loop zips its items with theirs
(``shapes.find_shapes``' ``params``). A model of 10 000 layers each holding its index is
then one loop, not 10 000 shapes (it was past ``max_steps``: left to the walker).

Every occurrence is still guarded against its own values (exact type, then ``==``): each
mutation below, made to one occurrence, is a miss answered by the reference walker, and
without the static guards the generated code answers it with the stale structure.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import hypothesis
import jax
import numpy as np
import pytest
from conftest import assert_same_flatten, assert_stale_without, outlined_flatten_hits
from hypothesis import strategies as hst

import specgraph as sg
from specgraph.runtime import dispatch


class Tagged(sg.Node):
    def __init__(self, seed: float, idx: int, name: str = "relu", flag: bool = False) -> None:
        self.w = sg.Param(np.full((2, 2), seed, np.float32))
        self.b = sg.Param(np.full((2,), seed, np.float32))
        self.idx = idx
        self.name = name
        self.flag = flag


class Box(sg.Node):
    def __init__(self, **attrs: Any) -> None:
        vars(self).update(attrs)


class Block(sg.Node):
    """A block whose statics and its children's differ per block."""

    def __init__(self, i: int) -> None:
        self.attn = Box(q=Tagged(i, 2 * i, f"q{i % 3}"), k=Tagged(i + 0.5, 2 * i + 1, "k", i % 2 == 0))
        self.stage = [Tagged(i, 100 * i + j) for j in range(3)]
        self.depth = i
        self.ln = sg.State(np.float32(i), kind="ln")


def _layers(n: int) -> list[Tagged]:
    return [Tagged(float(i), i, ("relu", "gelu", "tanh")[i % 3], i % 2 == 1) for i in range(n)]


def model(layout: str, n: int = 6) -> Box:
    """``list``: a loop zipping its items with their statics; ``attrs``: one function called
    per occurrence with its statics; ``blocks``/``block-attrs``: the statics of nested
    subtrees (a loop inside the outlined function, calls inside it) passed on."""
    if layout == "list":
        return Box(layers=_layers(n), act="relu")
    if layout == "attrs":
        return Box(**{f"l{i}": x for i, x in enumerate(_layers(n))})
    if layout == "blocks":
        return Box(blocks=[Block(i) for i in range(n)])
    return Box(**{f"b{i}": Block(i) for i in range(n)})


LAYOUTS = ["list", "attrs", "blocks", "block-attrs"]


def occurrences(m: Box, layout: str) -> list[Tagged]:
    """The Tagged layers of ``m``, one per occurrence of the outer shape (a block's q)."""
    if layout == "list":
        return list(m.layers)
    if layout == "attrs":
        return [getattr(m, f"l{i}") for i in range(len(vars(m)))]
    blocks = m.blocks if layout == "blocks" else [getattr(m, f"b{i}") for i in range(len(vars(m)))]
    return [b.attn.q for b in blocks]


def _source(gd: sg.GraphDef, kind: str = "flatten") -> str:
    var = dispatch.variant_for(gd)
    assert var is not None
    return var.sources[kind]


@pytest.mark.repeats
@pytest.mark.parametrize("layout", LAYOUTS)
def test_statics_as_parameters_match_the_reference(impl: Any, layout: str) -> None:
    m = model(layout)
    ref = sg.generic.flatten(m)
    hits = outlined_flatten_hits()
    got = impl.flatten(m)
    assert_same_flatten(got, ref)
    new = jax.tree.map(lambda v: v + 1, got[1])
    impl.update(m, new)
    _, now = sg.generic.flatten(m)
    assert all(x is y for x, y in zip(now.values(), new.values(), strict=True))
    twin = impl.unflatten(*ref)
    assert_same_flatten(sg.generic.flatten(twin), ref)
    assert [p for p, _ in sg.iter_leaf(m)] == list(ref[1].keys())
    if impl.name == "outlined":
        assert outlined_flatten_hits() > hits
        src = _source(got[0])
        assert "(a parameter)" in src
        assert src.count("def ") <= 4  # one function per shape, not one per distinct statics
        text = sg.explain(got[0])
        assert "are its parameters" in text or "zipped in as" in text


def _retype(x: Tagged, others: list[Tagged]) -> None:
    x.idx = float(x.idx)  # an equal float: another type


def _to_bool(x: Tagged, others: list[Tagged]) -> None:
    x.flag = int(x.flag)  # False -> 0, True -> 1: equal, another type


class Name(str):
    pass


#: name -> what it does to one occurrence (the others given)
MUTATIONS: dict[str, Callable[[Tagged, list[Tagged]], None]] = {
    "another value": lambda x, others: setattr(x, "idx", 10**6),
    "a neighbour's value": lambda x, others: setattr(x, "idx", others[0].idx),
    "another name": lambda x, others: setattr(x, "name", "swish"),
    "a neighbour's name": lambda x, others: setattr(x, "name", next(
        (o.name for o in others if o.name != x.name), "other")),
    "flag flipped": lambda x, others: setattr(x, "flag", not x.flag),
    "float for int": _retype,
    "int for bool": _to_bool,
    "str subclass": lambda x, others: setattr(x, "name", Name(x.name)),
}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", sorted(MUTATIONS))
@pytest.mark.parametrize("i", [0, 3, 5])
def test_each_occurrence_mutated_is_a_static_miss(outlined: None, layout: str, name: str, i: int) -> None:
    m = model(layout)
    sg.flatten(m)
    gd, _ = sg.flatten(m)
    assert sg.cache_info()["hits"] == 1 and "(a parameter)" in _source(gd)
    occ = occurrences(m, layout)
    MUTATIONS[name](occ[i], occ[:i] + occ[i + 1:])
    before = sg.cache_info()["guard_misses"].get("static", 0)
    ref = sg.generic.flatten(m)
    assert ref[0] != gd
    assert_same_flatten(sg.flatten(m), ref)
    assert sg.cache_info()["guard_misses"].get("static", 0) == before + 1
    assert_same_flatten(sg.flatten(m), ref)  # the new structure's own variant


def test_swapped_occurrences_are_a_miss(outlined: None) -> None:
    """Two layers swapped: every static in its place is another occurrence's value."""
    m = model("list")
    gd, _ = (sg.flatten(m), sg.flatten(m))[1]
    m.layers[1], m.layers[4] = m.layers[4], m.layers[1]
    ref = sg.generic.flatten(m)
    assert ref[0] != gd
    misses = sum(sg.cache_info()["guard_misses"].values())
    assert_same_flatten(sg.flatten(m), ref)
    assert sum(sg.cache_info()["guard_misses"].values()) == misses + 1


@pytest.mark.parametrize("layout", ["blocks", "block-attrs"])
def test_explain_tells_a_parameter_from_a_value_every_occurrence_shares(outlined: None, layout: str) -> None:
    """A stage layer's name is one of the shape's parameters (another name in a block's q)
    but every block's loop over its stage passes the same one: a constant, labelled so."""
    m = model(layout)
    gd, _ = (sg.flatten(m), sg.flatten(m))[1]
    src = _source(gd)
    shared = [line for line in src.splitlines() if "the same in every occurrence" in line]
    params = [line for line in src.splitlines() if "(a parameter)" in line]
    assert shared and params
    assert all(".name ==" in line or ".flag ==" in line for line in shared)
    assert not any(line.split("# ")[-1].split(" == ")[1].startswith("p") for line in shared)
    assert all(line.split("# ")[-1].split(" == ")[1].startswith("p") for line in params)


def test_ten_thousand_indexed_layers_are_one_loop_at_default_settings() -> None:
    """Each layer's index was a shape of its own: past max_steps at 10 000 (the walker)."""
    sg.clear_cache()
    m = Box(layers=[Tagged(float(i), i) for i in range(10_000)])
    ref = sg.generic.flatten(m)
    sg.flatten(m)
    got = sg.flatten(m)
    info = sg.cache_info()
    assert info["hits"] == 1 and info["declined_too_large"] == 0
    assert_same_flatten(got, ref)
    text = sg.explain(got[0])
    assert "a loop over layers[0..9999]: 10000 x Tagged" in text
    assert _source(got[0]).count("if ") < 30
    new = jax.tree.map(lambda v: v * 2, got[1])
    sg.update(m, new)
    assert sg.cache_info()["update_hits"] == 1
    _, now = sg.generic.flatten(m)
    assert all(x is y for x, y in zip(now.values(), new.values(), strict=True))


def test_the_code_does_not_depend_on_the_values() -> None:
    """100 and 1 000 layers, indexed or all alike: one loop of the same text."""
    def loop_text(m: Box) -> str:
        sg.clear_cache()
        sg.flatten(m)
        gd, _ = sg.flatten(m)
        body = _source(gd).split("def flatten_Box")[0]
        return body.replace("1000 of", "N of").replace("100 of", "N of").replace("all of", "N of")

    a = loop_text(Box(layers=[Tagged(0.0, i) for i in range(100)]))
    b = loop_text(Box(layers=[Tagged(0.0, 7 * i) for i in range(1000)]))
    assert a == b and "(a parameter)" in a


# -- hypothesis: random statics per occurrence, one occurrence mutated ------------------

_VALUES = hst.one_of(hst.integers(-3, 3), hst.sampled_from(["a", "b", ""]), hst.booleans())


@hypothesis.settings(max_examples=60, deadline=None,
                     suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])
@hypothesis.given(data=hst.data(), n=hst.integers(2, 9), layout=hst.sampled_from(["list", "attrs"]))
def test_random_statics_and_one_mutation(outlined: None, data: Any, n: int, layout: str) -> None:
    sg.clear_cache()
    statics = data.draw(hst.lists(hst.tuples(_VALUES, _VALUES), min_size=n, max_size=n), label="statics")
    layers = [Tagged(float(i), 0) for i in range(n)]
    for x, (a, c) in zip(layers, statics, strict=True):
        x.idx, x.name = a, c
    m = Box(layers=layers) if layout == "list" else Box(**{f"l{i}": x for i, x in enumerate(layers)})
    ref = sg.generic.flatten(m)
    sg.flatten(m)
    assert_same_flatten(sg.flatten(m), ref)
    assert sg.cache_info()["hits"] == 1
    i = data.draw(hst.integers(0, n - 1), label="occurrence")
    attr = data.draw(hst.sampled_from(["idx", "name"]), label="attr")
    setattr(layers[i], attr, data.draw(_VALUES, label="new value"))
    ref2 = sg.generic.flatten(m)
    assert_same_flatten(sg.flatten(m), ref2)
    if ref2[0] == ref[0]:  # an equal value of the same type: the same structure, a hit
        assert sg.cache_info()["hits"] == 2
    new = jax.tree.map(lambda v: v - 1, ref2[1])
    sg.update(m, new)
    _, now = sg.generic.flatten(m)
    assert all(x is y for x, y in zip(now.values(), new.values(), strict=True))


# -- the static guards are load-bearing in the parameterized code ------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_static_guard_is_load_bearing(outlined: None, layout: str,
                                          disable: Callable[[frozenset[str]], None]) -> None:
    """Without the static guards an occurrence given another occurrence's index is answered
    with the stale structure; with them it is a miss and the reference's answer."""
    def mutate(m: Any) -> None:
        occ = occurrences(m, layout)
        occ[3].idx = occ[1].idx

    assert_stale_without("static", disable, lambda: model(layout), mutate)


# -- chains whose links differ from another chain's only in a static ---------------------


class Link(sg.Node):
    def __init__(self, nxt: Link | None, idx: int, tag: str) -> None:
        self.w = sg.Param(np.ones((1,), np.float32))
        self.head = Tagged(float(idx), idx, tag)
        self.nxt = nxt
        self.tag = tag


def _chain(n: int, idx: int, tag: str) -> Link | None:
    x = None
    for _ in range(n):
        x = Link(x, idx, tag)
    return x


@pytest.mark.repeats
def test_two_chains_differing_in_a_static_are_chain_loops(impl: Any) -> None:
    """Each chain's links are alike; the two chains differ in their links' statics. The
    links at one depth of the two chains were one family: a shape per depth, each with the
    statics of the links below it as parameters, nested 1 000 deep (past the recursion
    limit: the walker answered). A link's family is its exact key: each chain is a loop."""
    m = Box(c1=_chain(1000, 0, "a"), c2=_chain(1000, 1, "b"))
    ref = sg.generic.flatten(m)
    impl.flatten(m)
    hits, served = outlined_flatten_hits(), sg.cache_info()["hits"]
    got = impl.flatten(m)  # (two calls, both answered by the compiled code)
    assert_same_flatten(got, ref)
    if impl.name != "generic":
        assert sg.cache_info()["hits"] == served + 2
        assert _source(got[0]).count("def ") <= 4
    if impl.name == "outlined":
        assert outlined_flatten_hits() > hits
    new = jax.tree.map(lambda v: v + 1, got[1])
    impl.update(m, new)
    _, now = sg.generic.flatten(m)
    assert all(x is y for x, y in zip(now.values(), new.values(), strict=True))
    c2 = m.c2
    assert c2 is not None and c2.nxt is not None
    c2.nxt.head.idx = 0  # one link of the second chain given the first chain's index
    ref2 = sg.generic.flatten(m)
    assert ref2[0] != ref[0]
    assert_same_flatten(impl.flatten(m), ref2)
