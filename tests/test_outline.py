"""Outlined code: one generated function per repeated substructure (codegen/shapes.py).

A structure that repeats one shape (a ``Linear``, a block) gets one function per shape,
called per occurrence, and a loop over a list of them. Every occurrence is still fully
guarded: each mutation below, made to one occurrence at a time, is a guard miss and the
reference walker's answer. Sharing across occurrences (tied weights, a node shared by two
blocks) stays exact, and each guard the outlined code relies on is load-bearing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import hypothesis
import numpy as np
import pytest
from conftest import assert_same_flatten
from hypothesis import strategies as hst

import specgraph as sg
from specgraph.codegen import GUARD_KINDS
from specgraph.runtime import dispatch
from specgraph.runtime.cache import CONFIG


class Linear(sg.Node):
    def __init__(self, din: int, dout: int, seed: float = 0.0) -> None:
        self.w = sg.Param(np.full((din, dout), seed, np.float32))
        self.b = sg.Param(np.full((dout,), seed, np.float32))
        self.din = din
        self.dout = dout


class Head(Linear):
    """Another class: never one shape with the layers (a Linear(2, 1) would be, its din and
    dout parameters of the layers' function)."""


class Other(sg.Node):
    def __init__(self, **attrs: Any) -> None:
        vars(self).update(attrs)


class Box(sg.Node):
    def __init__(self, **attrs: Any) -> None:
        vars(self).update(attrs)


class Block(sg.Node):
    def __init__(self, i: int, ff: Linear | None = None) -> None:
        self.attn = Box(q=Linear(2, 2, i), k=Linear(2, 2, i + 0.5))
        self.ff = ff if ff is not None else Linear(2, 3, i)
        self.ln = sg.State(np.float32(i), kind="ln")


class Buffer(sg.State):
    pass


def mlp(n: int = 6) -> Box:
    return Box(layers=[Linear(2, 2, float(i)) for i in range(n)], head=Head(2, 1, 9.0), act="relu")



def _specialized(node: Any) -> tuple[sg.GraphDef, sg.StateMap]:
    """Flatten twice (the second call by generated code), checked against the reference."""
    sg.flatten(node)
    before = sg.cache_info()["hits"]
    out = sg.flatten(node)
    assert sg.cache_info()["hits"] == before + 1, sg.cache_info()
    assert_same_flatten(out, sg.generic.flatten(node))
    return out


def _is_outlined(src: str) -> bool:
    """Generated code with an outlined function or a loop over occurrences of one shape."""
    return "def outlined" in src or "of one shape" in src


def _source(gd: sg.GraphDef, kind: str = "flatten") -> str:
    var = dispatch.variant_for(gd)
    assert var is not None
    return var.sources[kind]


def test_a_list_of_one_shape_is_a_loop(outlined: None) -> None:
    m = mlp(6)
    gd, _ = _specialized(m)
    src = _source(gd)
    assert "# 6 of one shape" in src  # the six Linear(2, 2) layers; the head is unrolled
    assert "def outlined" not in src  # the loop's body is unrolled: no call per layer
    assert src.count("if type(") < 20  # one body, not six
    assert "a loop over layers[0..5]: 6 x Linear" in sg.explain(gd)


def test_attributes_of_one_shape_call_one_function(outlined: None) -> None:
    m = Box(**{f"l{i}": Linear(2, 2, float(i)) for i in range(6)})
    gd, _ = _specialized(m)
    src = _source(gd)
    assert src.count("def outlined") == 1 and src.count("outlined0_flatten(") == 7  # 1 def + 6 calls
    text = sg.explain(gd)
    assert "outlined0_* (Linear): used 6 times, at l0; l1; l2; ..." in text


def test_update_collect_and_selections_through_outlined_code(outlined: None) -> None:
    m = mlp(5)
    gd, st = _specialized(m)
    new = sg.StateMap._make(st._table, [np.asarray(v) + 1 for v in st.values()])
    ref = sg.generic.unflatten(*sg.generic.flatten(m))
    sg.generic.update(ref, new)
    before = sg.cache_info()["update_hits"]
    sg.update(m, new)
    assert sg.cache_info()["update_hits"] == before + 1
    assert _is_outlined(_source(gd, "update"))
    mine, theirs = sg.generic.flatten(m)[1], sg.generic.flatten(ref)[1]
    for (p, a), (q, b) in zip(mine.items(), theirs.items(), strict=True):
        assert p == q and np.array_equal(a, b)
    # states / nodes / iter_leaf / split served by the outlined collect
    walks = sg.cache_info()["walk_hits"]
    assert list(sg.states(m).keys()) == list(sg.generic.flatten(m)[1].keys())
    assert [p for p, _ in sg.iter_leaf(m)] == list(sg.generic.flatten(m)[1].keys())
    assert set(sg.nodes(m)) == {(), ("head",), *(("layers", i) for i in range(5))}
    assert sg.cache_info()["walk_hits"] > walks
    _, params, rest = sg.split(m, sg.Param, ...)
    assert len(params) == 12 and len(rest) == 0
    # a partial update (one part of a split) goes by slot through generated code, and is right
    before = sg.cache_info()["update_hits"]
    sg.update(m, sg.StateMap._make(params._table, [np.zeros_like(v) for v in params.values()]))
    assert sg.cache_info()["update_hits"] == before + 1
    assert all(not np.any(np.asarray(v)) for v in sg.generic.flatten(m)[1].values())


def _update_matches_reference(m: Any) -> str:
    """Update ``m`` with a fresh value per slot through generated code: each state gets
    exactly its slot's value object, as the reference's update gives it; the update source."""
    gd, st = _specialized(m)
    new = sg.StateMap._make(st._table, [np.asarray(v) + 1 + i for i, v in enumerate(st.values())])
    before = sg.cache_info()["update_hits"]
    sg.update(m, new)
    assert sg.cache_info()["update_hits"] == before + 1
    after = sg.generic.flatten(m)[1]
    assert list(after.keys()) == list(new.keys())
    for (p, a), b in zip(after.items(), new.values(), strict=True):
        assert a is b, p
    return _source(gd, "update")


def test_update_writes_through_the_states_the_loop_kept(outlined: None) -> None:
    # an MLP's layers: the guard loop keeps each item's states, the writes zip them with vals
    src = _update_matches_reference(mlp(6))
    assert "_0.value = " in src and " in zip(" in src and "[y.value for y in" not in src
    # a list of one shape inside a loop's body: its states are one run's, so the writes walk
    nested = Box(groups=[Box(layers=[Linear(2, 2, float(3 * g + i)) for i in range(3)]) for g in range(3)])
    src = _update_matches_reference(nested)
    assert " in zip(" not in src
    # an item holding more than its states (a static array leaf, a non-state value): no zip
    mixed = Box(layers=[Other(w=sg.Param(np.full(2, float(i), np.float32)), b=np.ones(2, np.float32))
                        for i in range(4)])
    _update_matches_reference(mixed)
    # items of one state (appended one by one) and of six (one tuple each, written six per turn)
    one = Box(layers=[Other(w=sg.Param(np.full(2, float(i), np.float32))) for i in range(3)])
    assert ".append(x" in _update_matches_reference(one)
    wide = Box(layers=[Other(**{f"p{k}": sg.Param(np.full(2, 6.0 * i + k, np.float32)) for k in range(6)})
                       for i in range(3)])
    src = _update_matches_reference(wide)
    assert "_5.value = " in src and ".append(" not in src


# -- each occurrence mutated, one at a time --------------------------------------------


class Layers:
    """The layers of a model, in a list or as attributes ``l0``, ``l1``, ...: ``L[i]``."""

    def __init__(self, m: Box) -> None:
        self.m = m

    def __getitem__(self, i: int) -> Any:
        return self.m.layers[i] if "layers" in vars(self.m) else getattr(self.m, f"l{i}")

    def __setitem__(self, i: int, v: Any) -> None:
        if "layers" in vars(self.m):
            self.m.layers[i] = v
        else:
            setattr(self.m, f"l{i}", v)


def model(layout: str, n: int = 4) -> Box:
    if layout == "list":
        return mlp(n)
    return Box(**{f"l{i}": Linear(2, 2, float(i)) for i in range(n)}, head=Head(2, 1, 9.0))


def _rename(layer: Linear) -> None:
    vars(layer)["w2"] = vars(layer).pop("w")


def _swap_type(m: Layers, i: int) -> None:
    m[i] = Other(**vars(m[i]))


MUTATIONS: dict[str, tuple[str, Callable[[Layers, int], None]]] = {
    "state type": ("type", lambda m, i: setattr(m[i], "b", Buffer(m[i].b.value))),
    "node type": ("type", _swap_type),
    "renamed key": ("node_keys", lambda m, i: _rename(m[i])),
    "extra attribute": ("node_keys", lambda m, i: setattr(m[i], "extra", 1)),
    "static": ("static", lambda m, i: setattr(m[i], "din", 3)),
    "static type": ("static", lambda m, i: setattr(m[i], "din", 2.0)),
    "metadata": ("metadata", lambda m, i: setattr(m[i].w, "_metadata", (("tag", "x"),))),
    "same layer twice": ("distinct", lambda m, i: m.__setitem__(i, m[(i + 1) % 4])),
    "same param twice": ("distinct", lambda m, i: setattr(m[i], "b", m[(i + 1) % 4].b)),
}


@pytest.mark.parametrize("layout", ["list", "attrs"])
@pytest.mark.parametrize("name", sorted(MUTATIONS))
@pytest.mark.parametrize("i", range(4))
def test_each_occurrence_mutated_is_a_miss(outlined: None, name: str, i: int, layout: str) -> None:
    """Each occurrence of a loop over a list (``list``) and of calls of one function
    (``attrs``), mutated one at a time."""
    kind, mutate = MUTATIONS[name]
    m = model(layout)
    gd, _ = _specialized(m)
    assert ("def outlined" in _source(gd)) == (layout == "attrs") and _is_outlined(_source(gd))
    mutate(Layers(m), i)
    before = sg.cache_info()["guard_misses"].get(kind, 0)
    assert_same_flatten(sg.flatten(m), sg.generic.flatten(m))
    assert sg.cache_info()["guard_misses"].get(kind, 0) == before + 1, sg.cache_info()["guard_misses"]


@pytest.mark.parametrize("change", ["longer", "shorter", "another shape", "another type", "a tuple"])
def test_a_list_that_stops_being_homogeneous(outlined: None, change: str) -> None:
    m = mlp(4)
    _specialized(m)
    if change == "longer":
        m.layers.append(Linear(2, 2))
    elif change == "shorter":
        m.layers.pop()
    elif change == "another shape":
        m.layers[2] = Linear(2, 5)
    elif change == "another type":
        m.layers[2] = Box(w=m.layers[2].w)
    else:
        m.layers = tuple(m.layers)
    hits = sg.cache_info()["hits"]
    assert_same_flatten(sg.flatten(m), sg.generic.flatten(m))
    assert sg.cache_info()["hits"] == hits  # the reference answered


def test_annotated_states_of_equal_metadata_share_a_shape(outlined: None) -> None:
    """Sharding annotations: each layer's metadata is an equal tuple of its own; the guard
    compares by value and sig, so the layers are one shape, and each occurrence's metadata
    is still guarded (another annotation, or 1 where 1.0 was, is a miss)."""

    def layer(i: int) -> Box:
        return Box(w=sg.Param(np.full(2, float(i), np.float32), sharding=(None, "model"), scale=1.0),
                   b=sg.Param(np.zeros(2, np.float32), sharding=("model",)))

    for i, change in [(1, (("scale", 1.0), ("sharding", ("model", None)))),
                      (2, (("scale", 1), ("sharding", (None, "model"))))]:
        sg.clear_cache()
        m = Box(layers=[layer(i) for i in range(4)])
        gd, _ = _specialized(m)
        assert "# 4 of one shape" in _source(gd)
        m.layers[i].w._metadata = change
        misses = sg.cache_info()["guard_misses"].get("metadata", 0)
        assert_same_flatten(sg.flatten(m), sg.generic.flatten(m))
        assert sg.cache_info()["guard_misses"].get("metadata", 0) == misses + 1


# -- sharing across occurrences ---------------------------------------------------------


def test_tied_weights_between_layers(outlined: None) -> None:
    m = mlp(6)
    m.layers[3].w = m.layers[2].w  # tied: layers 2 and 3 stay unrolled, the others are outlined
    gd, st = _specialized(m)
    assert _is_outlined(_source(gd))
    clone = sg.unflatten(gd, st)
    assert clone.layers[3].w is clone.layers[2].w
    new = sg.StateMap._make(st._table, [np.asarray(v) * 2 for v in st.values()])
    sg.update(m, new)
    assert m.layers[3].w is m.layers[2].w
    assert np.array_equal(m.layers[2].w.value, new[("layers", 2, "w")])
    # untying, or tying two other layers, is a miss each
    m.layers[3].w = sg.Param(m.layers[3].w.value)
    assert_same_flatten(sg.flatten(m), sg.generic.flatten(m))
    m2 = mlp(6)
    _specialized(m2)
    m2.layers[5].w = m2.layers[4].w  # two outlined occurrences share a Param now
    misses = sg.cache_info()["guard_misses"].get("distinct", 0)
    assert_same_flatten(sg.flatten(m2), sg.generic.flatten(m2))
    assert sg.cache_info()["guard_misses"].get("distinct", 0) == misses + 1


def test_a_node_shared_by_two_blocks(outlined: None) -> None:
    shared = Linear(2, 3, 7.0)
    m = Box(blocks=[Block(0, shared), Block(1, shared), Block(2), Block(3)])
    gd, st = _specialized(m)
    src = _source(gd)
    assert "def outlined" in src
    clone = sg.unflatten(gd, st)
    assert clone.blocks[0].ff is clone.blocks[1].ff
    assert clone.blocks[2].ff is not clone.blocks[3].ff
    # sharing the ff of two outlined blocks is a miss, answered by the reference
    m.blocks[3].ff = m.blocks[2].ff
    misses = sg.cache_info()["guard_misses"].get("distinct", 0)
    assert_same_flatten(sg.flatten(m), sg.generic.flatten(m))
    assert sg.cache_info()["guard_misses"].get("distinct", 0) == misses + 1


def test_a_cycle_through_repeated_shapes(outlined: None) -> None:
    m = Box(blocks=[Block(i) for i in range(4)])
    m.blocks[1].attn.up = m  # a cycle: block 1 is no longer of the others' shape
    gd, st = _specialized(m)
    clone = sg.unflatten(gd, st)
    assert clone.blocks[1].attn.up is clone


# -- every guard the outlined code relies on is load-bearing -----------------------------


KILLED: dict[str, str] = {
    "type": "state type",
    "node_keys": "extra attribute",
    "static": "static",
    "metadata": "metadata",
    "distinct": "same param twice",
}


@pytest.mark.parametrize("layout", ["list", "attrs"])
@pytest.mark.parametrize("kind", sorted(KILLED))
def test_outlined_guard_is_load_bearing(outlined: None, kind: str, layout: str,
                                        disable: Callable[[frozenset[str]], None]) -> None:
    """Without guards of ``kind`` the outlined code answers a mutated occurrence with the
    stale structure: it differs from the reference (with them, the tests above agree)."""
    disable(frozenset({kind}))
    m = model(layout)
    sg.flatten(m)
    gd, _ = sg.flatten(m)
    assert _is_outlined(_source(gd))
    MUTATIONS[KILLED[kind]][1](Layers(m), 2)
    got = sg.flatten(m)
    ref = sg.generic.flatten(m)
    with pytest.raises(AssertionError):
        assert_same_flatten(got, ref)


def test_loop_length_guard_is_load_bearing(outlined: None, disable: Callable[[frozenset[str]], None]) -> None:
    """The loop over a list of one shape runs over whatever the list holds: only its length
    guard (a container guard) keeps a longer list from being answered as the old one."""
    disable(frozenset({"container"}))
    m = mlp(4)
    sg.flatten(m)
    sg.flatten(m)
    m.layers.append(Linear(2, 2))
    got = sg.flatten(m)
    with pytest.raises(AssertionError):
        assert_same_flatten(got, sg.generic.flatten(m))


# Every guard kind, with the mutated object inside a loop over a list of one shape (``list``)
# or inside an outlined function called per occurrence (``attrs``): per kind, an item of one
# shape (``make``), repeated three times, and a mutation of the middle one. ``backref`` and
# ``epoch`` guards are never inside outlined code (outlined subtrees share nothing; the
# epoch is checked once per call): their scenarios put the mutation next to the outlined
# items, in the function that calls them.


class LateType:
    """A plain object (a static, reaching no user data: one static object for every
    occurrence) until its class is registered as a node type."""

    def __init__(self) -> None:
        self.items: dict[str, Any] = {"q": 1.5}


def _register_late(cls: type) -> None:
    sg.register_graph_node_type(
        cls, lambda x: (sorted(x.items.items()), None), lambda x, k, v: x.items.__setitem__(k, v),
        lambda x, k: x.items.pop(k), lambda meta: cls(), lambda x: x.items.clear())


def _p(x: float = 1.0, **meta: Any) -> sg.Param:
    return sg.Param(np.full((2,), x, np.float32), **meta)


def _kill_scenarios() -> dict[str, tuple[Callable[[], Any], Callable[[Box, Any], None]]]:
    """kind -> (make an item, mutate(root, middle item)); fresh classes per call."""

    class Late(LateType):
        pass

    class Tagged(sg.State):
        pass

    late = Late()  # one static object: every item has the same shape
    counter = iter(range(1 << 30))

    def class_mutate(root: Box, item: Any) -> None:
        Tagged.__hash__ = lambda self: next(counter)  # type: ignore[method-assign]
        item.b = item.a  # merged, but the distinct set sees two different hashes

    def backref_mutate(root: Box, item: Any) -> None:
        root.dec.w = _p()  # untied, next to the outlined items

    return {
        "epoch": (lambda: Box(w=_p(), late=late), lambda root, item: _register_late(Late)),
        "class": (lambda: Box(a=Tagged(np.ones(2)), b=Tagged(np.ones(2))), class_mutate),
        "type": (lambda: Box(w=_p(), v=_p(2.0)), lambda root, item: setattr(item, "v", Buffer(item.v.value))),
        "node_keys": (lambda: Box(w=_p(), n=1), lambda root, item: setattr(item, "extra", _p())),
        "container": (lambda: Box(layers=[_p(), _p()], d={"a": _p()}),
                      lambda root, item: item.layers.append(_p())),
        "static": (lambda: Box(w=_p(), n=3), lambda root, item: setattr(item, "n", 4)),
        "metadata": (lambda: Box(w=_p(tag="a"), v=_p()), lambda root, item: setattr(item, "w", _p(tag="b"))),
        "backref": (lambda: Box(w=_p()), backref_mutate),
        "distinct": (lambda: Box(a=_p(), b=_p()), lambda root, item: setattr(item, "b", item.a)),
    }


def _kill_model(kind: str, layout: str) -> tuple[Box, Callable[[], None]]:
    make, mutate = _kill_scenarios()[kind]
    items = [make() for _ in range(3)]
    m = Box(items=items) if layout == "list" else Box(**{f"i{k}": x for k, x in enumerate(items)})
    if kind == "backref":
        w = _p()
        m.enc, m.dec = Box(w=w), Box(w=w)
    return m, lambda: mutate(m, items[1])


@pytest.mark.parametrize("layout", ["list", "attrs"])
@pytest.mark.parametrize("kind", GUARD_KINDS)
def test_every_guard_kind_is_load_bearing_in_outlined_code(
        outlined: None, kind: str, layout: str, disable: Callable[[frozenset[str]], None]) -> None:
    """Without the guards of ``kind`` the outlined variant answers the mutated structure as
    the old one (it differs from the reference); with them it is a miss of that kind, and
    the reference's answer."""
    for disabled in (frozenset({kind}), frozenset()):
        disable(disabled)
        sg.clear_cache()
        m, mutate = _kill_model(kind, layout)
        gd, _ = _specialized(m)
        src = _source(gd)
        assert ("def outlined" in src) if layout == "attrs" else ("# 3 of one shape" in src), src
        mutate()
        ref = sg.generic.flatten(m)
        hits, misses = sg.cache_info()["hits"], sg.cache_info()["guard_misses"].get(kind, 0)
        got = sg.flatten(m)
        if disabled:
            assert sg.cache_info()["hits"] == hits + 1, "the stale variant must have answered"
            assert got[0] != ref[0]
        else:
            assert_same_flatten(got, ref)
            assert sg.cache_info()["guard_misses"].get(kind, 0) == misses + 1


def _not_first(path: tuple, value: Any) -> bool:
    return path[:2] != ("items", 0) and path[0] != "i0"


@pytest.mark.parametrize("layout", ["list", "attrs"])
@pytest.mark.parametrize("kind", ["type", "distinct"])
def test_outlined_update_guard_is_load_bearing(
        outlined: None, kind: str, layout: str, disable: Callable[[frozenset[str]], None]) -> None:
    """The update's guards in outlined code: the old StateMap no longer fits the mutated
    structure, the reference refuses it, a variant without the guard writes it anyway, and
    with the guard the refusal is the same; a part of a split alike."""
    for disabled in (frozenset({kind}), frozenset()):
        for partial in (False, True):
            disable(disabled)
            sg.clear_cache()
            m, mutate = _kill_model(kind, layout)
            twin, mutate_twin = _kill_model(kind, layout)
            _specialized(m)
            # partial: the values of every item but the first (a part of a split)
            _, sm = sg.split(m, _not_first, ...)[:2] if partial else sg.flatten(m)
            assert len(sm) == (4 if partial else 6)
            sg.update(m, sm)  # (the partial update is compiled now)
            if kind == "type":  # a node where a Param was (its path is gone), looking like one
                for root in (m, twin):
                    (root.items[1] if layout == "list" else root.i1).v = Box(value=_p(), _metadata=())
            else:
                mutate()
                mutate_twin()
            with pytest.raises(KeyError):
                sg.generic.update(twin, sm)
            hits = sg.cache_info()["update_hits"]
            if disabled:
                sg.update(m, sm)  # accepted silently
                assert sg.cache_info()["update_hits"] == hits + 1
            else:
                with pytest.raises(KeyError):
                    sg.update(m, sm)
                assert sg.cache_info()["update_hits"] == hits
                assert sg.cache_info()["guard_misses"] == {kind: 1}


@pytest.mark.parametrize("name", ["state type", "extra attribute", "same param twice"])
def test_chain_guards_are_load_bearing(outlined: None, name: str,
                                       disable: Callable[[frozenset[str]], None]) -> None:
    kind, mutate = CHAIN_MUTATIONS[name]
    disable(frozenset({kind}))
    m = chain(100)
    _specialized(m)
    mutate(m)
    hits = sg.cache_info()["hits"]
    got = sg.flatten(m)
    assert sg.cache_info()["hits"] == hits + 1
    assert got[0] != sg.generic.flatten(m)[0]


def test_outline_min_zero_unrolls_everything() -> None:
    saved = CONFIG.outline_min
    try:
        sg.configure(outline_min=0)
        m = mlp(12)
        gd, _ = _specialized(m)
        assert not _is_outlined(_source(gd))
        sg.configure(outline_min=12)
        sg.clear_cache()
        gd, _ = _specialized(m)
        assert _is_outlined(_source(gd))
        sg.configure(outline_min=13)
        sg.clear_cache()
        gd, _ = _specialized(m)
        assert not _is_outlined(_source(gd))
    finally:
        CONFIG.outline_min = saved


# -- no cliff: chains and long lists -------------------------------------------------------


def chain(n: int) -> Box:
    """``n`` nested Boxes, each with a Param ``p`` and the next as ``child``; the last has
    only ``p`` (built bottom-up: no recursion)."""
    node = Box(p=sg.Param(np.float32(n)))
    for i in reversed(range(n - 1)):
        node = Box(child=node, p=sg.Param(np.float32(i)))
    return node


def _link(root: Box, k: int) -> Box:
    for _ in range(k):
        root = root.child
    return root


def test_chain_of_ten_thousand_nodes_is_one_loop(outlined: None) -> None:
    m = chain(10_000)
    gd, st = _specialized(m)
    src = _source(gd)
    assert "range(9999)" in src and len(src.splitlines()) < 100
    assert "a loop over 9999 nested links of one shape" in sg.explain(gd)
    new = sg.StateMap._make(st._table, [np.float32(-i) for i in range(len(st))])
    sg.update(m, new)
    assert sg.cache_info()["update_hits"] == 1
    assert all(a is b for a, b in zip(sg.generic.flatten(m)[1].values(), new.values(), strict=True))
    assert list(sg.states(m).keys()) == list(st.keys())
    assert sg.cache_info()["walk_hits"] >= 1
    clone = sg.unflatten(gd, st)
    assert _link(clone, 9_999).p.value == st[("child",) * 9_999 + ("p",)]


@pytest.mark.parametrize("build", ["chain", "blocks"])
def test_partial_updates_write_by_slot_as_the_reference(outlined: None, build: str) -> None:
    """Parts of a split (every other state, by a predicate; several parts in another
    order) written through the outlined update: by slot, as the reference writes by path."""
    def make() -> Box:
        return chain(40) if build == "chain" else Box(blocks=[Block(i) for i in range(4)], top=Linear(2, 2))

    m = make()
    twin = sg.generic.unflatten(*sg.generic.flatten(m))  # the very same values
    _specialized(m)
    _, even, odd = sg.split(m, lambda p, v: len(p) % 2 == 0, ...)
    assert len(even) and len(odd)
    for k, given in enumerate([(even,), (odd,), (odd, even)]):
        new = tuple(jax_map(part, 10.0 * (k + 1)) for part in given)
        before = sg.cache_info()["update_hits"]
        sg.update(m, *new)
        assert sg.cache_info()["update_hits"] == before + 1
        sg.generic.update(twin, *new)
        mine, theirs = sg.generic.flatten(m), sg.generic.flatten(twin)
        assert mine[0] == theirs[0]
        assert all(a is b for a, b in zip(mine[1].values(), theirs[1].values(), strict=True))


class Counted(sg.Node):
    """A Linear with a counter: w, b (Params) and n (a State), so that a part of a split
    picks some of an item's states and leaves others."""

    def __init__(self, seed: float) -> None:
        self.w = sg.Param(np.full((2, 2), seed, np.float32))
        self.b = sg.Param(np.full((2,), seed, np.float32))
        self.n = sg.State(np.int32(seed))


@hypothesis.settings(max_examples=30, deadline=None)
@hypothesis.given(n=hst.integers(2, 13),
                  picks=hst.sets(hst.tuples(hst.integers(0, 12), hst.sampled_from("wbn")), min_size=1))
def test_a_part_of_any_size_is_written_through_the_outlined_loop(n: int, picks: set[tuple[int, str]]) -> None:
    """A part of a split of a list of one shape, of any number of states (the picked writes
    go four per loop turn, the first n % 4 before the loop): written as the reference writes."""
    saved = CONFIG.outline_min
    sg.configure(outline_min=2)
    sg.clear_cache()
    try:
        m = Box(layers=[Counted(float(i)) for i in range(n)])
        twin = sg.generic.unflatten(*sg.generic.flatten(m))
        _specialized(m)
        _, part, _ = sg.split(m, lambda p, v: (p[1], p[2]) in picks, ...)
        if not len(part):
            return
        new = jax_map(part, 100.0)
        before = sg.cache_info()["update_hits"]
        sg.update(m, new)
        assert sg.cache_info()["update_hits"] == before + 1
        sg.generic.update(twin, new)
        mine, theirs = sg.generic.flatten(m), sg.generic.flatten(twin)
        assert mine[0] == theirs[0]
        assert all(a is b for a, b in zip(mine[1].values(), theirs[1].values(), strict=True))
    finally:
        CONFIG.outline_min = saved
        sg.clear_cache()


def jax_map(part: sg.StateMap, add: float) -> sg.StateMap:
    """The part with a new value object per path (the same table)."""
    return sg.StateMap._make(part._table, [np.asarray(v) + add for v in part.values()])


CHAIN_MUTATIONS: dict[str, tuple[str, Callable[[Box], None]]] = {
    "state type": ("type", lambda m: setattr(_link(m, 50), "p", Buffer(_link(m, 50).p.value))),
    "node type": ("type", lambda m: setattr(_link(m, 49), "child", Other(**vars(_link(m, 50))))),
    "extra attribute": ("node_keys", lambda m: setattr(_link(m, 50), "extra", 1)),
    "longer": ("node_keys", lambda m: setattr(_link(m, 99), "child", Box(p=sg.Param(np.float32(0))))),
    "shorter": ("node_keys", lambda m: delattr(_link(m, 97), "child")),
    "same param twice": ("distinct", lambda m: setattr(_link(m, 50), "p", _link(m, 10).p)),
    "a link skipped": ("node_keys", lambda m: setattr(_link(m, 50), "child", _link(m, 51).child)),
    "a cycle": ("node_keys", lambda m: setattr(_link(m, 50), "child", _link(m, 10))),
}


@pytest.mark.parametrize("name", sorted(CHAIN_MUTATIONS))
def test_each_chain_link_mutated_is_a_miss(outlined: None, name: str) -> None:
    kind, mutate = CHAIN_MUTATIONS[name]
    m = chain(100)
    gd, _ = _specialized(m)
    assert "range(99)" in _source(gd)
    mutate(m)
    hits = sg.cache_info()["hits"]
    assert_same_flatten(sg.flatten(m), sg.generic.flatten(m))
    assert sg.cache_info()["hits"] == hits
    assert sg.cache_info()["guard_misses"].get(kind, 0) >= 1, sg.cache_info()["guard_misses"]


def test_chain_distinct_guard_is_load_bearing(outlined: None,
                                              disable: Callable[[frozenset[str]], None]) -> None:
    disable(frozenset({"distinct"}))
    m = chain(100)
    sg.flatten(m)
    sg.flatten(m)
    _link(m, 50).p = _link(m, 10).p
    with pytest.raises(AssertionError):
        assert_same_flatten(sg.flatten(m), sg.generic.flatten(m))


SHARED_HEADS: dict[str, Callable[[Box], Box]] = {
    # the first link of the looped run (the third node) is also the list's second item
    "reached again": lambda m: Box(d=[m, _link(m, 2)]),
    # the last link's child is the looped run's first link: a cycle back into the chain
    "a cycle back": lambda m: (setattr(_link(m, 9), "child", _link(m, 2)), m)[1],
}


@pytest.mark.parametrize("name", sorted(SHARED_HEADS))
def test_a_chain_link_reached_twice_is_served(impl: Any, name: str) -> None:
    """A link of a chain that is also reached from elsewhere is planned inline (its object
    in a local for the back-reference), not as the first link of the loop: the generated
    flatten once named the loop's object splice in the back-reference guard (NameError at
    every call: a miss of kind 'error', every call handed to the walker)."""
    saved = CONFIG.outline_min
    sg.configure(outline_min=2)
    try:
        m = SHARED_HEADS[name](chain(10))
        gd, st = impl.flatten(m)
        assert_same_flatten((gd, st), sg.generic.flatten(m))
        if impl.compiled:
            hits = sg.cache_info()["hits"]
            assert_same_flatten(sg.flatten(m), (gd, st))
            assert sg.cache_info()["hits"] == hits + 1, sg.cache_info()
            assert "error" not in sg.cache_info()["guard_misses"]
            assert "nested links of one shape" in _source(gd)
        clone = impl.unflatten(gd, st)
        assert_same_flatten(sg.generic.flatten(clone), (gd, st))
        new = sg.StateMap._make(st._table, [np.float32(-i) for i in range(len(st))])
        impl.update(m, new)
        assert all(a is b for a, b in zip(sg.generic.flatten(m)[1].values(), new.values(), strict=True))
    finally:
        CONFIG.outline_min = saved


#: every read of a Lazy state's value, in order (the reference reads each where its walk
#: meets it)
READS: list[int] = []


class Lazy(sg.State):
    """A state whose value read is user code (a ``value`` property): logged."""

    @property
    def value(self) -> Any:
        READS.append(vars(self)["tag"])
        return vars(self)["_v"]

    @value.setter
    def value(self, v: Any) -> None:
        vars(self)["_v"] = v


def _lazy(i: int) -> Lazy:
    s = Lazy(np.float32(i))
    vars(s)["tag"] = i
    return s


#: chains whose links hold a Lazy state after the next link (read by the reference after
#: the rest of the chain, deepest link first)
LAZY_CHAINS: dict[str, Callable[[int], Any]] = {
    "nodes": lambda i: Box(child=None, z=_lazy(i)),
    "lists": lambda i: [None, _lazy(i)],
    "dicts": lambda i: {"a": None, "b": _lazy(i)},
}


@pytest.mark.parametrize("kind", sorted(LAZY_CHAINS))
def test_chain_links_reading_values_by_user_code_after_the_next_are_the_reference(
        impl: Any, kind: str) -> None:
    """A chain's loop reads a link whole before the next one: with a state whose value read
    is user code after the next link it would read those values in reverse order of the
    reference's walk. Not a loop: the reads, and the answer, the reference's."""
    saved = CONFIG.outline_min
    sg.configure(outline_min=2)
    try:
        m = Box(p=sg.Param(np.float32(0)), x=None)
        x: Any = sg.Param(np.float32(-1))
        for i in range(12):
            link = LAZY_CHAINS[kind](i)
            if kind == "nodes":
                link.child = x
            else:
                link[0 if kind == "lists" else "a"] = x
            x = link
        m.x = x
        impl.flatten(m)
        READS.clear()
        got = sg.flatten(m) if impl.compiled else sg.generic.flatten(m)  # (one call)
        reads = list(READS)
        READS.clear()
        want = sg.generic.flatten(m)
        assert_same_flatten(got, want)
        assert reads == READS
        if impl.compiled:
            assert sg.cache_info()["hits"] >= 1 and not sg.cache_info()["guard_misses"]
        new = sg.StateMap._make(want[1]._table, [np.float32(-i) for i in range(len(want[1]))])
        impl.update(m, new)
        assert all(a is b for a, b in zip(sg.generic.flatten(m)[1].values(), new.values(), strict=True))
    finally:
        CONFIG.outline_min = saved


def test_ten_thousand_layers_are_specialized() -> None:
    """With the default outline_min: MLP-10 000 is one loop over one Linear function."""
    m = mlp(10_000)
    gd, st = _specialized(m)
    assert len(_source(gd).splitlines()) < 200
    sg.update(m, st)
    assert sg.cache_info()["update_hits"] == 1
