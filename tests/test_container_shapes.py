"""Repeated small containers (lists, tuples, dicts of states, statics, nodes) are outlined
shapes too: one function per distinct container shape, called per occurrence, and a list
of them one loop (``FlattenPlanner._mixed``; the unflatten: one builder per shape and
``UnflattenPlanner._mixed``), so ``b.l = [[p] * k or {'a<i>': p}, ...]`` of 30 000 items is
specialized (it was declined past ``max_steps``; see shapes.py, ``find_container_shapes``).

Every occurrence is guarded as the unrolled code guards it: its type, its length or keys,
its states' types and metadata, the ties inside it (``[p] * 3`` is one Param three times:
an identity guard per later place), and its states' place in the distinct set (a Param
shared with another occurrence). Each mutation below, made to one occurrence, is a miss
answered by the reference walker, the user's objects untouched; without each guard kind
the outlined code answers the mutated structure as the old one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import hypothesis
import jax
import numpy as np
import pytest
from conftest import assert_same_flatten, outlined_flatten_hits, outlined_unflatten_hits
from hypothesis import strategies as hst

import specgraph as sg
from specgraph.runtime import dispatch


class Bag(sg.Node):
    pass


class Buffer(sg.State):
    pass


class Leaf(sg.Node):
    def __init__(self, i: int) -> None:
        self.w = sg.Param(np.float32(i))
        self.n = 3


def _p(i: int, **meta: Any) -> sg.Param:
    return sg.Param(np.full((2,), i, np.float32), **meta)


def item(i: int) -> Any:
    """The wide_cliffs ``mixed`` item: a list of one Param 1-3 times, or a dict of one."""
    return [_p(i)] * (1 + i % 3) if i % 2 else {"a" + str(i % 7): _p(i)}


def mixed(n: int) -> Bag:
    b = Bag()
    b.l = [item(i) for i in range(n)]
    b.z = 3
    return b


def _source(gd: sg.GraphDef, kind: str = "flatten") -> str:
    var = dispatch.variant_for(gd)
    assert var is not None
    return var.sources[kind]


def _values_same(a: Any, b: Any) -> bool:
    return all(x is y for x, y in zip(a.values(), b.values(), strict=True))


def test_a_list_of_small_containers_matches_the_reference(impl: Any) -> None:
    b = mixed(200)
    b.t = [(_p(1), 4, _p(2)) for _ in range(70)]  # tuples with a static between states
    b.n = [{"x": [Leaf(i)], "y": 2} for i in range(70)]  # containers holding nodes, nested
    ref = sg.generic.flatten(b)
    got = impl.flatten(b)
    assert_same_flatten(got, ref)
    new = jax.tree.map(lambda v: v + 1, got[1])
    impl.update(b, new)
    _, now = sg.generic.flatten(b)
    assert _values_same(now, new)
    assert b.l[1][0] is b.l[1][1]  # (the tie is still one Param)
    twin = impl.unflatten(*ref)
    assert_same_flatten(sg.generic.flatten(twin), ref)
    assert twin.l[5][0] is twin.l[5][1] is twin.l[5][2]
    assert twin.t[3][0] is not twin.t[4][0] and twin.n[2]["x"][0].w is not twin.n[3]["x"][0].w
    if impl.compiled:
        assert outlined_flatten_hits() > 0
        assert outlined_unflatten_hits() > 0
        text = sg.explain(ref[0])
        if impl.name == "outlined":  # (outline_min 2: every container shape; 64: the t and n lists')
            assert "l[0..199]: 200 items of 10 shapes" in text
        assert "t[0..69]: 70 items of one shape (tuple)" in text
        assert "n[0..69]: 70 items of one shape (dict)" in text


def test_thirty_thousand_small_containers_are_specialized_at_default_settings() -> None:
    n = 30_000
    b = mixed(n)
    ref = sg.generic.flatten(b)
    sg.flatten(b)
    got = sg.flatten(b)
    info = sg.cache_info()
    assert info["hits"] == 1 and info["declined"] == 0 and info["declined_too_large"] == 0
    assert_same_flatten(got, ref)
    new = jax.tree.map(lambda v: v + 1, got[1])
    sg.update(b, new)
    assert sg.cache_info()["update_hits"] == 1
    _, now = sg.generic.flatten(b)
    assert _values_same(now, new)
    src = _source(ref[0])
    assert src.count("if type(") < 200  # one function per shape, not one block per item
    sg.unflatten(*ref)
    twin = sg.unflatten(*ref)
    info = sg.cache_info()
    assert info["unflatten_hits"] == 1 and outlined_unflatten_hits() == 1
    assert_same_flatten(sg.generic.flatten(twin), ref)
    assert twin.l[29_999][0] is twin.l[29_999][1]


def test_the_unflatten_reads_each_occurrences_statics_and_metadata(impl: Any, outlined: None) -> None:
    """A builder is keyed by what its code spells (types, str keys, ties): each occurrence's
    statics and metadata come from the GraphDef being unflattened (an equal GraphDef may
    hold equal but distinct objects)."""
    b = Bag()
    b.l = [(sg.Param(np.float32(i), tag=("a", i % 2)), 4 + i % 3, [sg.State(np.float32(i))] * 2)
           for i in range(30)]
    ref = sg.generic.flatten(b)
    twin = impl.unflatten(*ref)
    assert_same_flatten(sg.generic.flatten(twin), ref)
    assert [x[1] for x in twin.l] == [4 + i % 3 for i in range(30)]
    assert all(x[2][0] is x[2][1] for x in twin.l)
    gd2, st2 = sg.generic.flatten(mixed_like(b))  # an equal GraphDef of other objects
    assert gd2 == ref[0]
    twin2 = impl.unflatten(gd2, st2)
    assert_same_flatten(sg.generic.flatten(twin2), (gd2, st2))
    if impl.name == "outlined":
        assert outlined_unflatten_hits() > 0


def mixed_like(b: Bag) -> Bag:
    """A Bag of the same structure as ``b`` (fresh states, equal statics)."""
    out = Bag()
    out.l = [(sg.Param(x[0].value, tag=("a", i % 2)), int(str(x[1])), [sg.State(x[2][0].value)] * 2)
             for i, x in enumerate(b.l)]
    return out


def test_a_tie_across_occurrences_stays_with_the_enclosing_code(impl: Any, outlined: None) -> None:
    """A state met in two occurrences (or outside) keeps those occurrences inline, guarded by
    the identity guards of the enclosing function; the others are outlined."""
    b = mixed(40)
    b.l[3] = [b.l[1][0], b.l[1][0]]
    b.l[6] = {"a6": b.l[5][0]}
    b.tied = b.l[9][0]
    ref = sg.generic.flatten(b)
    assert_same_flatten(impl.flatten(b), ref)
    twin = impl.unflatten(*ref)
    assert twin.l[3][0] is twin.l[1][0] and twin.l[6]["a6"] is twin.l[5][0] and twin.tied is twin.l[9][0]


def test_containers_of_nodes_without_states(impl: Any) -> None:
    """``[Bag(), Bag()]`` met several times: container occurrences with no value slot (their
    builder takes no position in ``vals``), and the outlined ``Bag`` shape's builder planned
    from its first occurrence, whose entry is inside such an occurrence (it is still made
    there: only the top skips every occurrence's entries). Also a holder tied to itself
    (``h.p is h``: not an outlined node) holding one, as in the hypothesis example that
    found it. Served by the compiled unflatten, outlined builders and all."""

    def holder() -> Bag:
        h = Bag()
        h.items = [Bag(), Bag()]
        h.p = h.q = h
        return h

    b = Bag()
    b.a, b.b, b.c = [Bag(), Bag()], [Bag(), Bag()], (Bag(), 3, Bag())
    b.h = [holder(), holder()]
    b.w = _p(1)
    ref = sg.generic.flatten(b)
    assert_same_flatten(impl.flatten(b), ref)
    before = sg.cache_info()["unflatten_hits"]
    twin = impl.unflatten(*ref)
    assert_same_flatten(sg.generic.flatten(twin), ref)
    assert twin.h[0].p is twin.h[0] and twin.h[1].q is twin.h[1] and twin.a[0] is not twin.a[1]
    assert type(twin.c) is tuple and twin.c[1] == 3 and type(twin.b[1]) is Bag
    if impl.compiled:
        assert sg.cache_info()["unflatten_hits"] == before + 1
    if impl.name == "outlined":
        assert outlined_unflatten_hits() == 1


# -- container shapes and statics as parameters (find_shapes' params) -------------------


class Layer(sg.Node):
    def __init__(self, i: int, name: str = "l") -> None:
        self.w = sg.Param(np.float32(i))
        self.idx = i  # (differs per layer: a parameter of the Layer family)
        self.name = name


class Block(sg.Node):
    """A node of a parametrised family holding containers whose statics differ per block."""

    def __init__(self, i: int) -> None:
        self.i = i
        self.pair = [sg.Param(np.float32(i)), sg.Param(np.float32(-i))]
        self.meta = (sg.Param(np.float32(i)), i, "s" + str(i % 2))
        self.d = {"a": sg.Param(np.float32(i)), "k": i}
        self.sub = [Layer(i), Layer(i + 1)]


def _composed(kind: str) -> Bag:
    b = Bag()
    if kind == "family_inside":  # containers of Layers of several parameter values
        b.l = [[Layer(i % 3)] for i in range(30)]
    elif kind == "in_family":  # containers inside the occurrences of a parametrised family
        b.l = [Block(i) for i in range(20)]
    elif kind == "dict_with_family":  # a dict holding a Layer and an int, both per item
        b.l = [{"a": Layer(i % 4), "n": i % 4} for i in range(32)]
    elif kind == "ints_per_item":  # every item's int differs: one family, the int its parameter
        b.l = [(sg.Param(np.float32(i)), i) for i in range(40)]
    else:  # "few_ints": a few distinct ints and strs: a few shapes, one loop
        b.l = [(sg.Param(np.float32(i)), i % 2, "x" + str(i % 3)) for i in range(36)]
    return b


def _ints(b: Bag) -> list[Any]:
    """The per-item statics of ``_composed``'s structures."""
    out: list[Any] = []
    for x in b.l:
        if type(x) is Block:
            out.append((x.i, x.meta[1:], x.d["k"], [y.idx for y in x.sub]))
        elif type(x) is dict:
            out.append((x["a"].idx, x["n"]))
        elif type(x) is list:
            out.append(x[0].idx)
        else:
            out.append(x[1:])
    return out


COMPOSED = ["family_inside", "in_family", "dict_with_family", "ints_per_item", "few_ints"]


@pytest.mark.parametrize("kind", COMPOSED)
def test_container_shapes_compose_with_statics_as_parameters(impl: Any, kind: str) -> None:
    """Container shapes are keyed by their statics' values and by their nodes' exact keys,
    so a container of a parametrised family's node is a shape per value (its node's
    function called with that value), and a container inside a family's occurrence is
    that family's code (its statics the family's parameters): flatten, update and
    unflatten stay exact, each item with its own statics."""
    b = _composed(kind)
    ref = sg.generic.flatten(b)
    got = impl.flatten(b)
    hits = sg.cache_info()["hits"]
    assert_same_flatten(got, ref)
    new = jax.tree.map(lambda v: v + 1, got[1])
    impl.update(b, new)
    _, now = sg.generic.flatten(b)
    assert _values_same(now, new)
    before = sg.cache_info()["unflatten_hits"]
    twin = impl.unflatten(*ref)
    assert_same_flatten(sg.generic.flatten(twin), ref)
    assert _ints(twin) == _ints(b)
    if impl.compiled:
        assert hits == 1 and sg.cache_info()["update_hits"] == 1
        assert sg.cache_info()["unflatten_hits"] == before + 1
    if impl.name == "outlined" and kind != "ints_per_item":
        assert outlined_flatten_hits() > 0 and outlined_unflatten_hits() > 0
        if kind in ("family_inside", "dict_with_family", "few_ints"):
            assert "items of" in sg.explain(ref[0])  # (one loop over the list's items)


@pytest.mark.parametrize("kind", COMPOSED)
@pytest.mark.parametrize("at", [0, 7])
def test_one_items_static_changed_is_a_miss(kind: str, at: int, outlined: None) -> None:
    """One item's static changed (to a value other items hold, or a new one): the
    outlined code misses, the reference answers, the objects untouched."""
    b = _composed(kind)
    sg.flatten(b)
    sg.flatten(b)
    assert sg.cache_info()["hits"] == 1
    x = b.l[at]
    if type(x) is Block:
        x.meta = (x.meta[0], 1 if at != 1 else 2, x.meta[2])
    elif type(x) is dict:
        x["n"] = 99
    elif type(x) is list:
        x[0].idx = (x[0].idx + 1) % 3
    else:
        b.l[at] = (x[0], 1 - x[1] if type(x[1]) is int and x[1] in (0, 1) else 5, *x[2:])
    want = _ints(b)
    ref = sg.generic.flatten(b)
    assert_same_flatten(sg.flatten(b), ref)
    assert sg.cache_info()["guard_misses"].get("static", 0) >= 1
    assert _ints(b) == want
    twin = sg.unflatten(*ref)
    assert_same_flatten(sg.generic.flatten(twin), ref)
    assert _ints(twin) == want


# -- one occurrence mutated: a miss, and the reference's answer ---------------------------


def _mutations() -> dict[str, Callable[[Bag, int], None]]:
    def longer(b: Bag, i: int) -> None:
        x = b.l[i]
        if type(x) is list:
            x.append(x[0])
        else:
            x["zz"] = _p(-1)

    def rename(b: Bag, i: int) -> None:
        x = b.l[i]
        if type(x) is dict:
            (k, v), = x.items()
            b.l[i] = {k + "_": v}
        else:  # (a list has no keys: a dict in its place)
            b.l[i] = {"a0": x[0]} if len(x) == 1 else x[:1] + [sg.Param(x[0].value)] * (len(x) - 1)

    def hostile_key(key: Any) -> Callable[[Bag, int], None]:
        def mutate(b: Bag, i: int) -> None:
            x = b.l[i]
            v = next(iter(x.values())) if type(x) is dict else x[0]
            b.l[i] = {key: v}
        return mutate

    def retype(b: Bag, i: int) -> None:
        x = b.l[i]
        if type(x) is dict:
            (k, v), = x.items()
            x[k] = Buffer(v.value)
        else:
            b.l[i] = [Buffer(x[0].value)] * len(x)

    def remeta(b: Bag, i: int) -> None:
        x = b.l[i]
        if type(x) is dict:
            (k, v), = x.items()
            x[k] = sg.Param(v.value, tag="x")
        else:
            b.l[i] = [sg.Param(x[0].value, tag="x")] * len(x)

    def share(b: Bag, i: int) -> None:  # a Param of another occurrence
        j = (i + 1) % len(b.l)
        other = b.l[j]
        p = next(iter(other.values())) if type(other) is dict else other[0]
        x = b.l[i]
        if type(x) is dict:
            (k, _), = x.items()
            x[k] = p
        else:
            b.l[i] = [p] * len(x)

    def untie(b: Bag, i: int) -> None:
        x = b.l[i]
        if type(x) is list and len(x) > 1:
            x[1] = sg.Param(x[0].value)
        else:
            longer(b, i)

    def to_tuple(b: Bag, i: int) -> None:
        x = b.l[i]
        b.l[i] = tuple(x) if type(x) is list else tuple(x.values())

    return {"longer": longer, "rename": rename, "key 1": hostile_key(1), "key True": hostile_key(True),
            "key 1.0": hostile_key(1.0), "type": retype, "metadata": remeta, "share": share, "untie": untie,
            "tuple": to_tuple}


MUTATIONS = _mutations()


def _snapshot(b: Bag) -> list[Any]:
    return [(type(x), list(x.items()) if type(x) is dict else list(x)) for x in b.l]


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
@pytest.mark.parametrize("at", [0, 1, 5, 39])
def test_one_occurrence_mutated_is_a_miss_answered_by_the_reference(mutation: str, at: int,
                                                                    outlined: None) -> None:
    b = mixed(40)
    sg.flatten(b)
    gd, _ = sg.flatten(b)
    assert sg.cache_info()["hits"] == 1 and "items of 10 shapes" in sg.explain(gd)
    hits = outlined_flatten_hits()
    MUTATIONS[mutation](b, at)
    before = _snapshot(b)
    ref = sg.generic.flatten(b)
    got = sg.flatten(b)
    assert_same_flatten(got, ref)
    assert ref[0] != gd
    assert sg.cache_info()["guard_misses"], "the stale variant must not have answered"
    assert outlined_flatten_hits() == hits
    assert _snapshot(b) == before  # (the objects untouched)
    new = jax.tree.map(lambda v: v + 1, ref[1])
    sg.update(b, new)
    _, now = sg.generic.flatten(b)
    assert _values_same(now, new)


KINDS = ["list", "tuple", "dict", "nested", "node", "bare"]


@hypothesis.settings(max_examples=30, deadline=None,
                     suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])
@hypothesis.given(kinds=hst.lists(hst.tuples(hst.sampled_from(KINDS),
                                             hst.integers(1, 3), hst.sampled_from(["a", "b", "1"])),
                                  min_size=2, max_size=40),
                  data=hst.data())
def test_random_lists_of_small_containers(kinds: list[tuple[str, int, str]], data: Any,
                                          outlined: None) -> None:
    sg.clear_cache()

    def build(i: int, kind: str, k: int, key: str) -> Any:
        p = _p(i)
        if kind == "list":
            return [p] * k
        if kind == "tuple":
            return (p, 7) * k
        if kind == "dict":
            return {key + str(j): p if j % 2 else _p(j) for j in range(k)}
        if kind == "nested":
            return {key: [p] * k, "s": "str"}
        if kind == "bare":  # (nodes without states: no value slot)
            return [Bag() for _ in range(k)]
        return [Leaf(i)] * 1 + [p] * (k - 1)

    b = Bag()
    b.l = [build(i, *x) for i, x in enumerate(kinds)]
    ref = sg.generic.flatten(b)
    sg.flatten(b)
    got = sg.flatten(b)
    assert_same_flatten(got, ref)
    assert sg.cache_info()["hits"] == 1
    # One occurrence replaced by another random item: a miss or a hit, the reference's answer.
    i = data.draw(hst.integers(0, len(kinds) - 1), label="at")
    kind = data.draw(hst.sampled_from(KINDS), label="kind")
    b.l[i] = build(1000, kind, data.draw(hst.integers(1, 3), label="k"), "a")
    if data.draw(hst.booleans(), label="tie"):
        j = data.draw(hst.integers(0, len(kinds) - 1), label="with")
        x = b.l[j]
        if type(x) is list and isinstance(x[-1], sg.Param):
            b.l[i] = [x[-1]]  # (a Param of another occurrence, or the same one's again)
    ref = sg.generic.flatten(b)
    assert_same_flatten(sg.flatten(b), ref)
    assert_same_flatten(sg.flatten(b), ref)
    twin = sg.unflatten(*ref)
    before = sg.cache_info()["unflatten_hits"]
    assert_same_flatten(sg.generic.flatten(sg.unflatten(*ref)), ref)
    assert sg.cache_info()["unflatten_hits"] == before + 1  # (the compiled unflatten answered)
    assert_same_flatten(sg.generic.flatten(twin), ref)
    new = jax.tree.map(lambda v: v + 1, ref[1])
    sg.update(b, new)
    _, now = sg.generic.flatten(b)
    assert _values_same(now, new)


# -- every guard of an outlined container is load-bearing ---------------------------------


@pytest.fixture
def disable() -> Iterator[Callable[[frozenset[str]], None]]:
    try:
        yield dispatch._set_disabled_guards
    finally:
        dispatch._set_disabled_guards(frozenset())


#: guard kind -> (occurrence, mutation) it alone catches in an outlined container
KILLS = {
    "type": (1, "tuple"),  # a list of 2 made a tuple
    "container": (0, "longer"),  # a dict given a second key
    "metadata": (0, "metadata"),
    "backref": (1, "untie"),  # [p, p] made [p, q]
    "distinct": (0, "share"),  # a Param of another occurrence
}


@pytest.mark.parametrize("kind", sorted(KILLS))
def test_each_container_guard_is_load_bearing(kind: str, disable: Callable[[frozenset[str]], None],
                                              outlined: None) -> None:
    """Without the guards of ``kind`` the outlined code answers the mutated structure with
    the stale one (it differs from the reference); with them it is a miss and the
    reference's answer."""
    at, mutation = KILLS[kind]
    for disabled in (frozenset({kind}), frozenset()):
        disable(disabled)
        b = mixed(40)
        sg.flatten(b)
        gd, _ = sg.flatten(b)
        assert "items of 10 shapes" in sg.explain(gd)
        MUTATIONS[mutation](b, at)
        ref = sg.generic.flatten(b)
        hits = sg.cache_info()["hits"]
        if disabled:
            got = sg.flatten(b)
            assert sg.cache_info()["hits"] == hits + 1, "the stale variant must have answered"
            with pytest.raises(AssertionError):
                assert_same_flatten(got, ref)
        else:
            assert_same_flatten(sg.flatten(b), ref)
            assert sg.cache_info()["hits"] == hits
