"""Outlined functions shared across structures (codegen/shared.py).

A structure whose outlined shape, or loop over a list of one shape, was compiled for an
earlier structure binds that unit instead of compiling it again (MLP-1 000 after MLP-999).
The sharing is exact: results equal the reference's through every implementation; a
static only the very object is, or one equal but distinguishable (1, True, 1.0; 0.0 and
-0.0), keeps two structures apart; a registration empties the table; the table holds what
its keys name by id(), is bounded, and ``clear_cache`` empties it; a shared unit's source
stays in linecache while in use.
"""

from __future__ import annotations

import gc
import inspect
import linecache
import weakref
from typing import Any

import numpy as np
import pytest
from conftest import assert_same_flatten
from hypothesis import given
from hypothesis import strategies as st

import specgraph as sg
from specgraph import codegen
from specgraph.codegen import shared
from specgraph.runtime import dispatch
from specgraph.runtime.cache import CONFIG


class Lin(sg.Node):
    def __init__(self, seed: float, act: Any = "relu", meta: dict[str, Any] | None = None) -> None:
        self.w = sg.Param(np.full((2, 2), seed, np.float32), **(meta or {}))
        self.b = sg.Param(np.full((2,), seed, np.float32))
        self.act = act


class Box(sg.Node):
    def __init__(self, **attrs: Any) -> None:
        vars(self).update(attrs)


class Block(sg.Node):
    def __init__(self, seed: float, act: Any = "relu") -> None:
        self.q = Lin(seed, act)
        self.k = Lin(seed + 0.5, act)
        self.scale = sg.State(np.float32(seed))


_RELU = "relu"


class Marker:
    """A static only the very object is (no value equality)."""


def attrs(n: int, act: Any = "relu", start: int = 0, meta: dict[str, Any] | None = None) -> Box:
    """``n`` Linears of one shape, as attributes: one outlined function, called per occurrence."""
    return Box(**{f"l{i}": Lin(float(start + i), act, meta) for i in range(n)})


def blocks(n: int) -> Box:
    """A list of ``n`` blocks (a loop) whose Linears are attributes: outlined inside the loop."""
    return Box(blocks=[Block(float(i)) for i in range(n)], head=Lin(9.0), tail=Lin(8.0))



def _units() -> tuple[int, int]:
    info = sg.cache_info()
    return info["outlined_units_compiled"], info["outlined_units_reused"]


def _served(node: Any) -> tuple[sg.GraphDef, sg.StateMap]:
    """Flatten twice (the second by generated code), checked against the reference."""
    sg.flatten(node)
    hits = sg.cache_info()["hits"]
    out = sg.flatten(node)
    assert sg.cache_info()["hits"] == hits + 1
    assert_same_flatten(out, sg.generic.flatten(node))
    return out


def _round_trip(impl: Any, node: Any) -> None:
    """flatten, update with new values, unflatten: each as the reference does it."""
    got = impl.flatten(node)
    assert_same_flatten(got, sg.generic.flatten(node))
    gd, state = got
    new = sg.StateMap._make(state._table, [np.asarray(v) + 1 for v in state.values()])
    impl.update(node, new)
    for (p, a), (q, b) in zip(sg.generic.flatten(node)[1].items(), new.items(), strict=True):
        assert p == q and a is b
    rebuilt = impl.unflatten(gd, new)
    assert_same_flatten(sg.generic.flatten(rebuilt), sg.generic.flatten(node))


@pytest.mark.parametrize("make", [attrs, blocks], ids=["attrs", "blocks"])
def test_two_structures_of_one_shape_agree_with_the_reference(impl: Any, make: Any) -> None:
    first, second = make(3), make(4)
    _round_trip(impl, first)
    _round_trip(impl, second)
    _round_trip(impl, first)  # the first structure again, after the second bound its units


@pytest.mark.parametrize("make", [attrs, blocks], ids=["attrs", "blocks"])
def test_the_second_structure_binds_the_units_of_the_first(outlined: None, make: Any) -> None:
    _served(make(3))
    compiled, reused = _units()
    assert compiled > 0 and reused == 0
    gd, _ = _served(make(5))
    assert _units() == (compiled, compiled)  # every unit (flatten and update) bound, none compiled
    var = dispatch.variant_for(gd)
    assert var is not None
    m = make(5)
    sg.update(m, sg.flatten(m)[1])  # the update's units serve too
    assert sg.cache_info()["update_hits"] >= 1
    sg.states(m)  # the collect: compiled once, then shared
    sg.states(make(6))
    assert _units()[0] == compiled + compiled // 2  # (flatten, update, now collect: one unit each)


MUTATIONS = {
    "state type": lambda b: setattr(b.q, "w", sg.State(b.q.w.value)),
    "static": lambda b: setattr(b.k, "act", "tanh"),
    "renamed key": lambda b: (setattr(b, "r", b.scale), delattr(b, "scale")),
    "same param twice": lambda b: setattr(b.k, "b", b.q.b),
}


@pytest.mark.parametrize("name", sorted(MUTATIONS))
@pytest.mark.parametrize("i", [0, 2, 4])
def test_each_item_of_a_shared_loop_mutated_is_a_miss(outlined: None, name: str, i: int) -> None:
    """The loop (and the Linear function in it) compiled for a list of 3 blocks serves a
    list of 5: each item, mutated, is a guard miss and the reference's answer."""
    _served(blocks(3))
    m = blocks(5)
    _served(m)
    assert _units()[1] == _units()[0]  # all bound, none compiled for the list of 5
    MUTATIONS[name](m.blocks[i])
    misses = sum(sg.cache_info()["guard_misses"].values())
    assert_same_flatten(sg.flatten(m), sg.generic.flatten(m))
    assert sum(sg.cache_info()["guard_misses"].values()) > misses


def test_explain_shows_a_shared_unit_once_and_says_it_is_shared(outlined: None) -> None:
    _served(attrs(3))
    gd, _ = _served(attrs(4))
    var = dispatch.variant_for(gd)
    assert var is not None
    for kind in ("flatten", "update"):
        src = var.sources[kind]
        assert src.count("def outlined") == (2 if kind == "update" else 1)  # (update: flatten + write)
        assert "compiled for an earlier structure, shared" in src
        assert src.count("outlined0_flatten(") == 1 + 4  # the def and the four calls
    text = sg.explain(gd)
    assert "outlined0_* (Lin): used 4 times" in text
    assert "its flatten, update code compiled once for an earlier structure of this shape, shared" in text


def test_a_static_only_the_very_object_is_keeps_two_structures_apart(outlined: None) -> None:
    one, two = Marker(), Marker()
    _served(attrs(3, one))
    compiled, _ = _units()
    assert compiled > 0
    m = attrs(3, two, start=10)  # the same shape but for the static object
    _served(m)
    assert _units() == (2 * compiled, 0)
    m.l1.act = one  # the first structure's object: its guard must see it
    hits = sg.cache_info()["hits"]
    assert_same_flatten(sg.flatten(m), sg.generic.flatten(m))
    sg.flatten(m)
    assert sg.cache_info()["hits"] > hits  # served, by the first structure's variant


_DISTINGUISHABLE = [(1, True), (1, 1.0), (0.0, -0.0), (1.0, True), ("1", 1), (b"a", "a")]


@pytest.mark.parametrize(("a", "b"), _DISTINGUISHABLE)
def test_equal_but_distinguishable_statics_keep_two_structures_apart(outlined: None, a: Any, b: Any) -> None:
    _served(attrs(3, a))
    compiled, _ = _units()
    assert compiled > 0
    m = attrs(3, b)
    _served(m)
    assert _units() == (2 * compiled, 0)
    m.l2.act = a
    assert_same_flatten(sg.flatten(m), sg.generic.flatten(m))


@pytest.mark.parametrize(("a", "b"), [p for p in _DISTINGUISHABLE if 0.0 not in p])  # (a zero: not outlined)
def test_metadata_keeps_two_structures_apart_as_statics_do(outlined: None, a: Any, b: Any) -> None:
    _served(attrs(3, meta={"tag": a}))
    compiled, _ = _units()
    assert compiled > 0
    m = attrs(3, meta={"tag": b})
    _served(m)
    assert _units() == (2 * compiled, 0)
    m.l2.w = sg.Param(m.l2.w.value, tag=a)
    assert_same_flatten(sg.flatten(m), sg.generic.flatten(m))


def test_equal_values_that_are_other_objects_share(outlined: None) -> None:
    big, other = int("1" * 30), int("1" * 30)
    text = "".join(["re", "lu"])
    assert big is not other and text is not _RELU
    _served(attrs(3, big, meta={"act": _RELU, "eps": 2.5}))
    compiled, _ = _units()
    assert compiled > 0
    _served(attrs(4, other, meta={"act": text, "eps": float("2.5")}))
    assert _units() == (compiled, compiled)


def test_a_registration_empties_the_table(outlined: None) -> None:
    _served(attrs(3))
    compiled, _ = _units()

    class Bag:
        pass

    sg.register_graph_node_type(Bag, lambda b: ([], None), lambda b, k, v: None, lambda b, k: None,
                                lambda aux: Bag(), lambda b: None)
    assert sg.cache_info()["outlined_units_compiled"] == compiled  # (emptied on the next lookup)
    _served(attrs(4))
    assert _units() == (2 * compiled, 0)
    assert sg.cache_info()["outlined_units"] == compiled


def test_clear_cache_empties_the_table(outlined: None) -> None:
    _served(attrs(3))
    assert sg.cache_info()["outlined_units"] > 0
    sg.clear_cache()
    info = sg.cache_info()
    assert info["outlined_units"] == info["outlined_units_compiled"] == info["outlined_units_reused"] == 0
    _served(attrs(4))
    assert _units()[1] == 0


def _gd(node: Any) -> sg.GraphDef:
    return sg.generic.flatten(node)[0]


def test_the_table_holds_what_its_keys_name_by_id_until_it_drops_them(outlined: None) -> None:
    """A key names a static object by id(): the entry keeps it alive (its id cannot be
    reused while the entry lives); dropped, a new object (at the same address or not) gets
    a unit of its own."""
    marker = Marker()
    ref = weakref.ref(marker)
    built = codegen.build("flatten", _gd(attrs(3, marker)), max_steps=10_000, outline_min=2)
    old_id = id(marker)
    del built, marker
    gc.collect()
    assert ref() is not None  # held by the table's entry
    shared.clear()
    gc.collect()
    assert ref() is None
    fresh = Marker()  # may well sit where the dead one did
    node = attrs(3, fresh)
    built = codegen.build("flatten", _gd(node), max_steps=10_000, outline_min=2)
    assert shared.info()["outlined_units_reused"] == 0
    assert type(built.fn(node)) is list
    node.l0.act = Marker()
    assert built.fn(node) == "static"
    assert id(fresh) == old_id or id(fresh) != old_id  # (either way: the unit is its own)


class Holder(sg.Node):
    """A node holding an array; its bound method is a static that reaches user data."""

    def __init__(self) -> None:
        self.w = sg.Param(np.ones((3,), np.float32))

    def score(self, x: Any) -> Any:
        return x


def test_the_table_keeps_no_user_data_of_a_structure_gone(outlined: None) -> None:
    """The table's entries hold program objects only: a static of the structure that
    reaches user data (a bound method of a node with an array) is freed once the
    structure is gone, while the units compiled for it stay and serve the next one."""
    holder = Holder()
    ref, array_ref = weakref.ref(holder), weakref.ref(holder.w)
    node = attrs(3)
    node.cb = holder.score  # beside the outlined Linears, held weakly by the cache key
    _served(node)
    assert sg.cache_info()["outlined_units"] > 0
    del node, holder
    gc.collect()
    assert ref() is None and array_ref() is None
    assert sg.cache_info()["outlined_units"] > 0
    _served(attrs(4))
    assert _units()[1] > 0  # the units of the structure gone, bound again


def test_the_table_is_bounded(outlined: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shared, "MAX_UNITS", 3)
    for act in range(5):
        _served(attrs(2, act))
    assert sg.cache_info()["outlined_units"] == 3
    _served(attrs(3, 4))  # the newest stay
    assert _units()[1] == 2


def test_a_shared_unit_stays_in_linecache_while_in_use(outlined: None) -> None:
    first = codegen.build("flatten", _gd(attrs(3)), max_steps=10_000, outline_min=2)
    second = codegen.build("flatten", _gd(attrs(4)), max_steps=10_000, outline_min=2)
    unit_fn = second.fn.__globals__["outlined0_flatten"]
    assert unit_fn is first.fn.__globals__["outlined0_flatten"]
    filename = unit_fn.__code__.co_filename
    shared.clear()  # the table lets go of it (as when the LRU drops it)
    del first
    gc.collect()
    assert filename in linecache.cache
    assert "def outlined" in inspect.getsource(unit_fn)
    del second, unit_fn
    gc.collect()
    assert filename not in linecache.cache


_STATICS = [1, True, 1.0, 0.0, -0.0, "a", b"a", None, Marker(), Marker(), 10**30]


@given(st.sampled_from(_STATICS), st.sampled_from(_STATICS), st.integers(2, 4), st.integers(2, 4))
def test_any_two_structures_built_in_turn_agree_with_the_reference(a: Any, b: Any, n: int, k: int) -> None:
    saved = CONFIG.outline_min
    sg.configure(outline_min=2)
    sg.clear_cache()
    try:
        first, second = attrs(n, a), attrs(k, b)
        _served(first)
        _served(second)
        second.l0.act = a  # the first one's static in the second structure
        assert_same_flatten(sg.flatten(second), sg.generic.flatten(second))
        first.l1.act = b
        assert_same_flatten(sg.flatten(first), sg.generic.flatten(first))
    finally:
        CONFIG.outline_min = saved
        sg.clear_cache()


def test_a_loop_reading_a_local_of_the_top_function_stays_inline(outlined: None) -> None:
    """A loop's body is planned closed (its list and D in, what it made out); were it to read
    a local of the top function, it would not become a unit (it stays inline) rather than
    fail each call on an unbound name."""
    from specgraph.codegen import flatten_plan, pipeline
    from specgraph.codegen.ops import Step

    gd = _gd(blocks(3))
    plan = flatten_plan.plan_flatten(gd, 10_000, 2)
    loop = next(s for s in plan.steps if s.op == "each_loop")
    units = pipeline.Units()
    pipeline.render("flatten", plan, frozenset(), units)
    assert any(name.startswith("each_loop") for name in units.fns)  # closed: a unit
    loop.body.append(Step("guard_is", obj=loop.var, expected="droot", label="x"))  # the top's dict
    units = pipeline.Units()
    source = pipeline.render("flatten", plan, frozenset(), units)
    assert not any(name.startswith("each_loop") for name in units.fns)
    assert f"for {loop.var} in {loop.obj}:" in source


def _tree_size(key: Any, cap: int) -> int:
    """The items of ``key`` counted as hashing and comparing it visit them (a tuple named
    twice counted twice), up to ``cap``."""
    n, stack = 0, [key]
    while stack and n < cap:
        x = stack.pop()
        n += 1
        if type(x) is tuple:
            stack.extend(x)
    return n


class OtherBox(Box):
    """Another class: a node of it holding a ``Box`` is no chain's link."""


def _nested(n: int) -> Any:
    x: Any = Box(w=sg.Param(np.zeros(2, np.float32)))
    for i in range(n):  # (classes alternating: nested shapes, not a chain's links, a loop)
        x = (OtherBox if i % 2 == 0 else Box)(w=sg.Param(np.full((2,), i, np.float32)),
                                               b=sg.Param(np.ones(1, np.float32)), next=x)
    return x


@pytest.mark.parametrize("kind", ["flatten", "unflatten"])
def test_a_unit_key_names_its_callees_by_a_token(kind: str) -> None:
    """Shapes nesting shapes 16 deep (two nestings of 16 and 18 nodes of alternating
    classes, outlined; of one class they are chains, a loop each): every unit key stays
    small. A key once held its callees' whole keys, once per place naming them: its size,
    and the time to hash and compare it, doubled per level (seconds here, 30 minutes at 30
    levels)."""
    saved = CONFIG.outline_min
    sg.configure(outline_min=2)
    sg.clear_cache()
    try:
        m = Box(a=_nested(16), b=_nested(18))
        gd, sm = sg.flatten(m)
        if kind == "unflatten":
            sg.unflatten(gd, sm)
            sg.unflatten(gd, sm)
        assert shared.info()["outlined_units"] > 10
        sizes = [_tree_size(k, 100_000) for k in list(shared._units)]
        assert max(sizes) < 5_000, sorted(sizes)[-3:]
        assert_same_flatten(sg.flatten(m), sg.generic.flatten(m))
    finally:
        CONFIG.outline_min = saved
        sg.clear_cache()
