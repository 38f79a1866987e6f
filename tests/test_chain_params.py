"""Chains of nested links that differ only in int/str/bool statics (a link's depth, a tag,
a flag, a child's index) are one loop whose per-link statics are its parameters
(``shapes.find_chains``' ``params``): ``for p3, p4 in PV0`` over the links, every link's
statics guarded against its own values as exactly as an outlined family's. A chain of
10 000 links each holding its depth was past ``max_steps`` (the walker served it).

And chains alike in one node (two chains of 1 000 of one structure): their links at each
depth were one shape, each nesting the next one's, planned 1 000 deep (RecursionError; the
walker served every call and ``explain`` raised). A link of a long run is never outlined
(``shapes._long_runs``): each chain is one loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import hypothesis
import jax
import numpy as np
import pytest
from conftest import assert_same_flatten, outlined_flatten_hits
from hypothesis import strategies as hst

import specgraph as sg
from specgraph.runtime import dispatch


class Tagged(sg.Node):
    def __init__(self, idx: int) -> None:
        self.w = sg.Param(np.full((2,), idx, np.float32))
        self.idx = idx


class Link(sg.Node):
    def __init__(self, nxt: Link | None, i: int, kind: str) -> None:
        self.p = sg.Param(np.float32(i))
        self.next = nxt
        self.depth = i if kind in ("depth", "mixed") else 0
        self.tag = ("a", "bb", "a", "c")[i % 4] if kind in ("tag", "mixed") else "t"
        self.flag = i % 3 == 0 if kind in ("flag", "mixed") else True
        if kind in ("child", "mixed"):
            self.child = Tagged(i % 5)


class Box(sg.Node):
    def __init__(self, **attrs: Any) -> None:
        vars(self).update(attrs)


def chain(n: int, kind: str) -> Link | None:
    x = None
    for i in range(n):
        x = Link(x, i, kind)
    return x


def links(m: Box, name: str = "x") -> list[Link]:
    out = []
    x = getattr(m, name)
    while x is not None:
        out.append(x)
        x = x.next
    return out


KINDS = ["depth", "tag", "flag", "child", "mixed"]


def _source(gd: sg.GraphDef, kind: str = "flatten") -> str:
    var = dispatch.variant_for(gd)
    assert var is not None
    return var.sources[kind]


def _looped_with_params(gd: sg.GraphDef) -> bool:
    return "nested links of one shape, their statics" in _source(gd)


def _check_update(impl: Any, m: Any, state: sg.StateMap) -> None:
    new = jax.tree.map(lambda v: v + 1, state)
    impl.update(m, new)
    _, now = sg.generic.flatten(m)
    assert all(x is y for x, y in zip(now.values(), new.values(), strict=True))


def _check_unflatten(impl: Any, gd: sg.GraphDef, state: sg.StateMap) -> None:
    twin = impl.unflatten(gd, state)
    assert_same_flatten(sg.generic.flatten(twin), (gd, state))


@pytest.mark.repeats
@pytest.mark.parametrize("kind", KINDS)
def test_a_chain_whose_links_differ_in_statics(impl: Any, kind: str) -> None:
    """100 links (a loop at the default settings too), each its own statics: flatten,
    update and unflatten are the reference's, served by compiled code."""
    m = Box(x=chain(100, kind))
    ref = sg.generic.flatten(m)
    got = impl.flatten(m)
    assert_same_flatten(got, ref)
    _check_update(impl, m, got[1])
    _check_unflatten(impl, *sg.generic.flatten(m))
    if impl.compiled:
        now = sg.cache_info()  # (each compiled on its first call, then a hit)
        assert now["hits"] >= 1 and now["update_hits"] == 1 and now["unflatten_hits"] == 1
        assert not now["guard_misses"] and not now["fallbacks"]
        assert _looped_with_params(ref[0])
        assert "99 nested links" in _source(ref[0])


@pytest.mark.parametrize("where", ["head", "middle", "last link", "tail"])
@pytest.mark.parametrize("kind", KINDS)
def test_one_link_mutated_is_a_miss(impl: Any, kind: str, where: str) -> None:
    """One link's static changed (to another link's value, or a value of another type): a
    miss, answered like the reference; the loop's text does not depend on the values."""
    m = Box(x=chain(70, kind))
    ref = impl.flatten(m)
    ls = links(m)
    k = {"head": 0, "middle": 35, "last link": 68, "tail": 69}[where]
    other = ls[(k + 1) % len(ls)] if k != 69 else ls[1]
    if kind == "depth":
        ls[k].depth = other.depth if where != "tail" else 1.0  # (a float: 1.0 == 1, another type)
    elif kind == "tag":
        ls[k].tag = "zz" if ls[k].tag == other.tag else other.tag
    elif kind == "flag":
        ls[k].flag = not ls[k].flag
    elif kind == "child":
        ls[k].child.idx = ls[k].child.idx + 1
    else:
        ls[k].flag = 1 if ls[k].flag else 0  # (1 == True: another type, another structure)
    ref2 = sg.generic.flatten(m)
    assert ref2[0] != ref[0]
    hits = sg.cache_info()["hits"]
    got = sg.flatten(m)
    assert_same_flatten(got, ref2)
    if impl.compiled:
        assert sg.cache_info()["hits"] == hits  # a miss: the reference answered
        got = sg.flatten(m)  # the new structure, compiled in its turn
        assert_same_flatten(got, ref2)
        assert sg.cache_info()["hits"] == hits + 1
    _check_update(impl, m, ref2[1])
    _check_unflatten(impl, *sg.generic.flatten(m))


@pytest.mark.parametrize("kind", ["depth", "tag", "flag", "child"])
def test_the_static_guard_in_the_chain_loop_is_load_bearing(
        kind: str, disable: Callable[[frozenset[str]], None]) -> None:
    """Without the static guards, a link given its neighbour's static is answered with the
    stale structure; with them it is a miss and the reference's answer."""
    for disabled in (frozenset({"static"}), frozenset()):
        disable(disabled)
        sg.clear_cache()
        m = Box(x=chain(80, kind))
        sg.flatten(m)
        sg.flatten(m)
        assert _looped_with_params(sg.generic.flatten(m)[0])
        ls = links(m)
        if kind == "depth":
            ls[40].depth = ls[41].depth
        elif kind == "tag":
            ls[40].tag = "zz"
        elif kind == "flag":
            ls[40].flag = not ls[40].flag
        else:
            ls[40].child.idx += 1
        ref = sg.generic.flatten(m)
        hits = sg.cache_info()["hits"]
        got = sg.flatten(m)
        if disabled:
            assert sg.cache_info()["hits"] == hits + 1, "the stale variant must have answered"
            with pytest.raises(AssertionError):
                assert_same_flatten(got, ref)
        else:
            assert_same_flatten(got, ref)
            assert sg.cache_info()["hits"] == hits


def test_ten_thousand_links_each_with_its_depth_at_default_settings() -> None:
    """Past max_steps unrolled (declined before): one loop now, every call compiled."""
    m = Box(x=chain(10_000, "mixed"))
    ref = sg.generic.flatten(m)
    sg.flatten(m)
    got = sg.flatten(m)
    assert_same_flatten(got, ref)
    new = jax.tree.map(lambda v: v * 2, got[1])
    sg.update(m, new)
    _, now = sg.generic.flatten(m)
    assert all(x is y for x, y in zip(now.values(), new.values(), strict=True))
    sg.unflatten(*ref)
    twin = sg.unflatten(*ref)
    assert_same_flatten(sg.generic.flatten(twin), ref)
    ci = sg.cache_info()
    assert ci["hits"] == 1 and ci["update_hits"] == 1 and ci["unflatten_hits"] == 1
    assert ci["declined_too_large"] == 0
    assert _looped_with_params(ref[0])


# -- hypothesis: random lengths, random static vectors, one mutation ---------------------

_VALUES = hst.one_of(hst.integers(-2, 2), hst.sampled_from(["a", "b", ""]), hst.booleans())


@hypothesis.settings(max_examples=50, deadline=None,
                     suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])
@hypothesis.given(data=hst.data(), n=hst.integers(2, 40))
def test_random_chains_and_one_mutation(outlined: None, data: Any, n: int) -> None:
    sg.clear_cache()
    same_type = data.draw(hst.booleans(), label="one type per attribute")
    if same_type:
        vecs = data.draw(hst.lists(hst.tuples(hst.integers(-2, 2), hst.sampled_from(["a", "b"]),
                                              hst.booleans()), min_size=n, max_size=n), label="statics")
    else:
        vecs = data.draw(hst.lists(hst.tuples(_VALUES, _VALUES, _VALUES), min_size=n, max_size=n),
                         label="statics")
    m = Box(x=chain(n, "plain"))
    ls = links(m)
    for x, (a, b, c) in zip(ls, vecs, strict=True):
        x.depth, x.tag, x.flag = a, b, c
    ref = sg.generic.flatten(m)
    sg.flatten(m)
    assert_same_flatten(sg.flatten(m), ref)
    assert sg.cache_info()["hits"] == 1
    if same_type and n >= 3:
        assert outlined_flatten_hits() > 0  # (a loop over the links but the last)
    k = data.draw(hst.integers(0, n - 1), label="link")
    attr = data.draw(hst.sampled_from(["depth", "tag", "flag"]), label="attr")
    setattr(ls[k], attr, data.draw(_VALUES, label="new value"))
    ref2 = sg.generic.flatten(m)
    assert_same_flatten(sg.flatten(m), ref2)
    if ref2[0] == ref[0]:  # an equal value of the same type: the same structure, a hit
        assert sg.cache_info()["hits"] == 2
    else:
        assert sg.cache_info()["hits"] == 1
    new = jax.tree.map(lambda v: v - 1, ref2[1])
    sg.update(m, new)
    _, now = sg.generic.flatten(m)
    assert all(x is y for x, y in zip(now.values(), new.values(), strict=True))
    twin = sg.unflatten(*ref2)
    assert_same_flatten(sg.generic.flatten(twin), ref2)


# -- a chain in a loop's item whose statics are the loop's parameters --------------------


class Block(sg.Node):
    def __init__(self, i: int, n: int) -> None:
        self.idx = i
        self.c = chain(n, "depth")


@pytest.mark.repeats
@pytest.mark.parametrize("n", [3, 20])
def test_chains_in_a_loop_of_blocks(impl: Any, n: int) -> None:
    """Blocks of a list, each its index (the loop's parameter) and a chain whose links hold
    their depth (the chain loop's, inside the loop's item)."""
    m = Box(a=sg.Param(np.zeros(2, np.float32)), blocks=[Block(i, n) for i in range(6)])  # (a value first)
    ref = sg.generic.flatten(m)
    got = impl.flatten(m)
    assert_same_flatten(got, ref)
    _check_update(impl, m, got[1])
    _check_unflatten(impl, *sg.generic.flatten(m))
    m.blocks[4].c.next.depth = 0  # one link of one block's chain
    ref2 = sg.generic.flatten(m)
    hits = sg.cache_info()["hits"]
    assert_same_flatten(sg.flatten(m), ref2)
    if impl.compiled:
        assert sg.cache_info()["hits"] == hits


# -- alike chains in one node: each one loop ------------------------------------------------


class Plain(sg.Node):
    def __init__(self, nxt: Plain | None, i: int) -> None:
        self.p = sg.Param(np.float32(i))
        self.next = nxt


def plain_chain(n: int) -> Plain | None:
    x = None
    for i in range(n):
        x = Plain(x, i)
    return x


@pytest.mark.repeats
@pytest.mark.parametrize("lengths", [(1000, 1000), (1000, 1000, 1000), (1000, 500), (1000, 17, 3)])
def test_alike_chains_are_chain_loops(impl: Any, lengths: tuple[int, ...]) -> None:
    """Chains of one structure in one node: the links at one depth (from the tail) are
    alike. Each chain is one loop (was: a shape per depth, nested 1 000 deep: RecursionError,
    the walker served every call, explain raised)."""
    m = Box(**{f"c{k}": plain_chain(n) for k, n in enumerate(lengths)})
    ref = sg.generic.flatten(m)
    got = impl.flatten(m)
    assert_same_flatten(got, ref)
    _check_update(impl, m, got[1])
    _check_unflatten(impl, *sg.generic.flatten(m))
    if impl.compiled:
        now = sg.cache_info()  # (each compiled on its first call, then a hit)
        assert now["hits"] >= 1 and now["update_hits"] == 1 and now["unflatten_hits"] == 1
        assert not now["guard_misses"] and not now["fallbacks"]
        src = _source(ref[0])
        least = 2 if impl.name == "outlined" else 64  # (links: a chain of n holds n - 1)
        assert src.count("nested links of one shape") == sum(n - 1 >= least for n in lengths)
        assert src.count("\ndef ") <= 8  # (no function per depth)
        assert "Generated flatten" in sg.explain(ref[0])
    m.c1.next.next.extra = 1  # one link of the second chain gains an attribute: a miss
    ref2 = sg.generic.flatten(m)
    hits = sg.cache_info()["hits"]
    assert_same_flatten(sg.flatten(m), ref2)
    if impl.compiled:
        assert sg.cache_info()["hits"] == hits


# -- chains in a chain's links --------------------------------------------------------------


class Sub(sg.Node):
    def __init__(self, nxt: Sub | None, i: int) -> None:
        self.q = sg.Param(np.float32(i))
        self.k = i
        self.nxt = nxt


class Outer(sg.Node):
    def __init__(self, nxt: Outer | None, i: int, m: int) -> None:
        s = None
        for j in range(m):
            s = Sub(s, j)
        self.sub = s  # (after the next link: its values after the rest of the chain)
        self.a = sg.Param(np.float32(-i))  # (before it)
        self.depth = i
        self.next = nxt


@pytest.mark.repeats
@pytest.mark.parametrize(("n", "m"), [(30, 20), (70, 70), (30, 5)])
def test_chains_in_the_links_of_a_chain(impl: Any, n: int, m: int) -> None:
    """Each link of a chain holds a chain of its own (its links' depths differing): the
    inner loop in the outer loop's body, its writes among the outer link's."""
    x = None
    for i in range(n):
        x = Outer(x, i, m)
    box = Box(b=sg.Param(np.ones(3, np.float32)), x=x)
    ref = sg.generic.flatten(box)
    got = impl.flatten(box)
    assert_same_flatten(got, ref)
    _check_update(impl, box, got[1])
    _check_unflatten(impl, *sg.generic.flatten(box))
    if impl.compiled:
        ci = sg.cache_info()
        assert ci["hits"] >= 1 and ci["update_hits"] == 1 and ci["unflatten_hits"] == 1
    inner = box.x.next.sub.nxt
    inner.k = inner.k + 1  # one link of one inner chain
    ref2 = sg.generic.flatten(box)
    hits = sg.cache_info()["hits"]
    assert_same_flatten(sg.flatten(box), ref2)
    if impl.compiled:
        assert sg.cache_info()["hits"] == hits


# -- the collect (states, nodes, iter_leaf, split) and a partial update -------------------


def test_collect_and_partial_update_of_a_chain_with_params(outlined: None) -> None:
    m = Box(x=chain(60, "mixed"), s=sg.State(np.zeros(2, np.float32)))
    gd, st = sg.generic.flatten(m)
    sg.flatten(m)
    sg.flatten(m)
    assert _looped_with_params(gd)
    walks = sg.cache_info()["walk_hits"]
    assert list(sg.states(m).keys()) == list(st.keys())
    assert [p for p, _ in sg.iter_leaf(m)] == list(st.keys())
    assert all(v.value is st[p] for p, v in sg.iter_leaf(m))  # (the states themselves)
    assert len(list(sg.nodes(m))) == gd.num_nodes
    assert sg.cache_info()["walk_hits"] > walks
    _, params, rest = sg.split(m, sg.Param, ...)
    assert len(params) == 120 and len(rest) == 1
    before = sg.cache_info()["update_hits"]
    new = sg.StateMap._make(params._table, [np.full_like(v, 3) for v in params.values()])
    sg.update(m, new)
    assert sg.cache_info()["update_hits"] == before + 1
    now = sg.generic.flatten(m)[1]
    assert all(now[p] is v for p, v in new.items())
    assert not np.any(now[("s",)])


# -- statics in a link's containers ------------------------------------------------------


class Held(sg.Node):
    def __init__(self, nxt: Held | None, i: int) -> None:
        self.a = [i, "x" if i % 2 else "y", sg.Param(np.float32(i))]
        self.d = {"k": i % 3 == 0, "z": sg.State(np.zeros(1, np.float32))}
        self.next = nxt


@pytest.mark.repeats
@pytest.mark.parametrize("where", [0, 1, 50, 98])
def test_statics_in_a_links_containers(impl: Any, where: int) -> None:
    """A link's list and dict holding its statics (an int, a str, a bool): parameters of
    the chain loop too; one of them changed in one link is a miss."""
    x = None
    for i in range(100):
        x = Held(x, i)
    m = Box(x=x)
    ref = sg.generic.flatten(m)
    got = impl.flatten(m)
    assert_same_flatten(got, ref)
    _check_update(impl, m, got[1])
    _check_unflatten(impl, *sg.generic.flatten(m))
    if impl.compiled:
        assert _looped_with_params(ref[0])
    link = m.x
    for _ in range(where):
        link = link.next
    link.a[0] = -1
    ref2 = sg.generic.flatten(m)
    hits = sg.cache_info()["hits"]
    assert_same_flatten(sg.flatten(m), ref2)
    if impl.compiled:
        assert sg.cache_info()["hits"] == hits
