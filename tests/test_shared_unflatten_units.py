"""Outlined unflatten code shared across structures (codegen/shared.py, pipeline._unflatten_units).

A structure's outlined builders (``outlined<sid>_build``) and the loops of its top function
(a list of one shape, a chain of containers) are units: a later structure with the same
builder or loop binds the unit compiled for an earlier one (MLP-1 000 after MLP-999, a stack
of 96 blocks after 95), counted in ``cache_info``. The units' code reads no static: each
caller passes the tuple it read from its own GraphDef, so the result holds the given
GraphDef's very objects, and structures differing only in a static or a metadata value share.
What is in the code keeps structures apart: a dict key spelled in it (1 vs "1" vs 2; True or
1.0 are read from the GraphDef), a class, an attribute name, a builder it calls. NNX and
BrainState builders take the call's contexts as parameters: every object of one call shares
that call's. The class guards stay in each structure's own top function; a registration and
``clear_cache`` drop the units.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest
from conftest import assert_same_flatten, outlined_unflatten_hits
from hypothesis import given
from hypothesis import strategies as st

import specgraph as sg
from specgraph.runtime import dispatch
from specgraph.runtime.cache import CONFIG


class Lin(sg.Node):
    def __init__(self, seed: float, act: Any = "relu", state: type = sg.Param, **meta: Any) -> None:
        self.w = state(np.full((2, 2), seed, np.float32), **meta)
        self.b = sg.Param(np.full((2,), seed, np.float32))
        self.act = act


class Box(sg.Node):
    def __init__(self, **attrs: Any) -> None:
        vars(self).update(attrs)


class Block(sg.Node):
    def __init__(self, seed: float, act: Any = "relu", state: type = sg.Param) -> None:
        self.q = Lin(seed, act, state)
        self.k = Lin(seed + 0.5, act, state)
        self.scale = sg.State(np.float32(seed))


class Same:
    """Equal to every other ``Same`` (one hash): equal GraphDefs, distinct objects."""

    def __eq__(self, other: object) -> bool:
        return type(other) is Same

    def __hash__(self) -> int:
        return 7


def attrs(n: int, act: Any = "relu", start: int = 0, state: type = sg.Param, **meta: Any) -> Box:
    """``n`` Linears as attributes: one builder, called per occurrence."""
    return Box(**{f"l{i}": Lin(float(start + i), act, state, **meta) for i in range(n)})


def mlp(n: int, act: Any = "relu", state: type = sg.Param, head: int = 0) -> Box:
    """A list of ``n`` Linears (a loop in the top function), after ``head`` other values."""
    return Box(pre=[sg.Param(np.float32(i)) for i in range(head)], layers=[Lin(float(i), act, state)
                                                                           for i in range(n)])


def blocks(n: int, act: Any = "relu", state: type = sg.Param) -> Box:
    """A list of ``n`` blocks whose Linears are attributes: builders called in a loop."""
    return Box(blocks=[Block(float(i), act, state) for i in range(n)], tail=Lin(8.0, act, state))


def keyed(n: int, key: Any) -> Box:
    """``n`` nodes each holding a dict under ``key``: the key is spelled (an exact str/int)
    or read from the GraphDef (any other)."""
    return Box(items=[Box(d={key: sg.Param(np.float32(i))}, tag=i) for i in range(n)])


def named(n: int, names: tuple[str, str]) -> Box:
    """``n`` Boxes of two Params under ``names``: the attribute names are in the builder."""
    return Box(**{f"m{i}": Box(**{k: sg.Param(np.float32(i)) for k in names}) for i in range(n)})


def nest(n: int) -> Any:
    """A chain of ``n`` nested containers of one shape (``x = [x, Param]``): one loop."""
    x: Any = []
    for i in range(n):
        x = [x, sg.Param(np.float32(i))]
    return Box(chain=x)


class Link(sg.Node):
    def __init__(self, depth: int) -> None:
        self.w = sg.Param(np.float32(depth))
        self.next = Link(depth - 1) if depth else None


def links(n: int) -> Box:
    """A chain of ``n`` nested nodes of one class: one loop over its links."""
    return Box(head=Link(n))


def _units() -> tuple[int, int]:
    info = sg.cache_info()
    return info["outlined_units_compiled"], info["outlined_units_reused"]


def _gd(node: Any) -> tuple[sg.GraphDef, sg.StateMap]:
    """The structure specialized (flatten twice): its flatten units are compiled here."""
    sg.flatten(node)
    return sg.flatten(node)


def _statics(node: Any) -> list[Any]:
    """What an unflatten takes from its GraphDef, in ``node``'s graph (walk order): statics,
    state metadata, dict keys other than an exact str/int (those are spelled in the code)."""
    gd, _ = sg.generic.flatten(node)
    out: list[Any] = []
    stack: list[Any] = [c for spec in reversed(gd.table) for c in reversed(getattr(spec, "children", ()))]
    for spec in gd.table:
        for k, v in getattr(spec, "metadata", ()) or ():
            out += [v] if type(k) is str else [k, v]
    while stack:
        e = stack.pop()
        kind = e[0]
        if kind == "static":
            out.append(e.value)
        elif kind == "pytree":
            if e.ptype is dict:
                out.extend(k for k in e.keys if type(k) is not str and type(k) is not int)
            stack.extend(reversed(e.children))
    return out


def _unflattened(gd: sg.GraphDef, state: sg.StateMap) -> tuple[Any, tuple[int, int]]:
    """``sg.unflatten`` twice, the second by outlined code (counted); the units compiled and
    reused by its compile; the result checked against the reference, object by object
    (values, statics, metadata, dict keys: the very objects of ``gd``)."""
    before = _units()
    sg.unflatten(gd, state)  # (the reference's: then compiled, on the next call)
    hits = outlined_unflatten_hits()
    out = sg.unflatten(gd, state)
    assert outlined_unflatten_hits() == hits + 1, sg.cache_info()
    mid = _units()
    ref = sg.generic.unflatten(gd, state)
    assert_same_flatten(sg.generic.flatten(out), sg.generic.flatten(ref))
    mine, theirs = _statics(out), _statics(ref)
    assert len(mine) == len(theirs) and all(a is b for a, b in zip(mine, theirs, strict=True))
    return out, (mid[0] - before[0], mid[1] - before[1])


def _second_shares(first: Any, second: Any) -> Any:
    """The first structure's unflatten compiles its units; the second's binds every one of
    them (none compiled). Returns the second's result."""
    _unflattened(*_gd(first))
    out, (compiled, reused) = _unflattened(*_gd(second))
    assert compiled == 0 and reused > 0, (compiled, reused)
    return out


@pytest.mark.parametrize(("make", "a", "b"), [(attrs, 3, 4), (mlp, 3, 5), (blocks, 3, 4), (nest, 3, 6),
                                               (links, 4, 9)],
                         ids=["builder", "loop", "loop of builders", "chain of containers", "chain of nodes"])
def test_the_second_structure_s_unflatten_binds_the_units_of_the_first(outlined: None, make: Any, a: int,
                                                                        b: int) -> None:
    _unflattened(*_gd(make(a)))
    compiled = _units()
    gd, state = _gd(make(b))
    _, (c, r) = _unflattened(gd, state)
    assert c == 0 and r > 0
    src = dispatch._unflat[gd].source
    assert "compiled for an earlier structure, shared" in src
    assert _units()[0] == compiled[0]
    assert sg.cache_info()["outlined_units_reused"] >= r


def test_a_loop_at_another_offset_shares_its_unit(outlined: None) -> None:
    """The loop's values sit elsewhere (after 1 or 4 other values): its start is a parameter."""
    out = _second_shares(mlp(3, head=1), mlp(5, head=4))
    assert [float(x.value) for x in out.pre] == [0.0, 1.0, 2.0, 3.0]


def test_statics_differing_share_and_the_result_holds_the_given_graphdef_s(outlined: None) -> None:
    """Statics are read per occurrence from the GraphDef unflattened: a structure with other
    statics at the same positions binds the units and gets its own statics (and an equal
    GraphDef with distinct objects, its own)."""
    first, second = attrs(3, "relu"), attrs(4, Same())
    out = _second_shares(first, second)
    assert out.l2.act is second.l2.act
    twin = attrs(4, Same())  # an equal GraphDef, distinct statics
    gd2, state = sg.flatten(twin)
    assert gd2 == sg.flatten(second)[0]
    got = sg.unflatten(gd2, state)
    assert got.l3.act is twin.l3.act and got.l3.act is not second.l3.act


@pytest.mark.parametrize(("a", "b"), [(1, True), (True, 1.0), ("relu", b"relu"), (None, 0)])
def test_statics_equal_or_not_share_and_stay_exact(outlined: None, a: Any, b: Any) -> None:
    out = _second_shares(blocks(2, a), blocks(3, b))
    assert type(out.blocks[2].q.act) is type(b) and type(out.tail.act) is type(b)


@pytest.mark.parametrize(("a", "b"), [(1, True), ("x", b"x"), (2.5, 2)])
def test_metadata_values_share_and_stay_exact(outlined: None, a: Any, b: Any) -> None:
    out = _second_shares(attrs(3, tag=a), attrs(4, tag=b))
    assert type(out.l3.w.metadata["tag"]) is type(b)


@pytest.mark.parametrize(("a", "b"), [("1", "k"), ("k", "K")])
def test_dict_keys_spelled_in_the_code_keep_two_structures_apart(outlined: None, a: str, b: str) -> None:
    """A dict's str key is spelled in the builder's code (a Literal, by type and value). (A
    dict under any other key, 1, True, 1.0, is not outlined: it stays in the top function.)"""
    _unflattened(*_gd(keyed(3, a)))
    out, (c, r) = _unflattened(*_gd(keyed(4, b)))
    assert c > 0 and r == 0
    assert list(out.items[3].d) == [b]


class OtherParam(sg.Param):
    pass


@pytest.mark.parametrize("state", [sg.State, OtherParam], ids=["State", "a Param subclass"])
def test_a_state_class_keeps_two_structures_apart(outlined: None, state: type) -> None:
    _unflattened(*_gd(mlp(3)))
    _, (c, r) = _unflattened(*_gd(mlp(4, state=state)))
    assert c > 0 and r == 0
    out, _ = _unflattened(*_gd(mlp(5, state=state)))
    assert type(out.layers[4].w) is state


def test_attribute_names_keep_two_structures_apart(outlined: None) -> None:
    _unflattened(*_gd(named(3, ("a", "b"))))
    out, (c, r) = _unflattened(*_gd(named(4, ("c", "d"))))
    assert c > 0 and r == 0
    assert sorted(vars(out.m3)) == ["c", "d"]


def test_a_callee_differing_keeps_its_caller_apart(outlined: None) -> None:
    """The Block builders' own steps agree (they call the Linear builder twice); the
    Linears differ in their state class: the Block builders are not shared either."""
    _unflattened(*_gd(blocks(3)))
    out, (c, r) = _unflattened(*_gd(blocks(4, state=sg.State)))
    assert c > 0 and r == 0
    assert type(out.blocks[3].k.w) is sg.State


class Hooked(sg.Param):
    pass


def test_the_class_guards_still_run_per_structure(outlined: None) -> None:
    """The second structure binds the first's units; a class gaining a __setattr__ (which
    would see the build order) makes its unflatten the reference's, counted as a miss."""
    _second_shares(mlp(3, state=Hooked), mlp(4, state=Hooked))
    gd, state = sg.flatten(mlp(4, state=Hooked))
    seen: list[str] = []

    def setattr_(self: Any, name: str, value: Any) -> None:
        seen.append(name)
        object.__setattr__(self, name, value)

    Hooked.__setattr__ = setattr_  # type: ignore[method-assign,assignment]
    try:
        misses = sum(sg.cache_info()["guard_misses"].values())
        out = sg.unflatten(gd, state)
        assert sum(sg.cache_info()["guard_misses"].values()) == misses + 1
        ref_seen = list(seen)
        seen.clear()
        ref = sg.generic.unflatten(gd, state)
        assert seen == ref_seen
        assert_same_flatten(sg.generic.flatten(out), sg.generic.flatten(ref))
    finally:
        del Hooked.__setattr__


def test_a_registration_drops_the_units(outlined: None) -> None:
    _unflattened(*_gd(attrs(3)))

    class Bag:
        pass

    sg.register_graph_node_type(Bag, lambda b: ([], None), lambda b, k, v: None, lambda b, k: None,
                                lambda aux: Bag(), lambda b: None)
    _, (c, r) = _unflattened(*_gd(attrs(4)))
    assert c > 0 and r == 0


def test_clear_cache_drops_the_units(outlined: None) -> None:
    _unflattened(*_gd(blocks(3)))
    sg.clear_cache()
    assert sg.cache_info()["outlined_units"] == 0
    _, (c, r) = _unflattened(*_gd(blocks(4)))
    assert c > 0 and r == 0


def test_a_shared_unit_shows_once_in_the_source_and_is_exact(outlined: None) -> None:
    _unflattened(*_gd(blocks(3)))
    gd, state = _gd(blocks(5))
    _unflattened(gd, state)
    src = dispatch._unflat[gd].source
    assert src.count("# 5 of one shape") == 1  # the loop's call, in the top function
    assert src.count("def unflatten_Box(vals, S):") == 1
    assert "S[" not in src


_STATICS = [1, True, 1.0, 0.0, -0.0, "a", b"a", None, Same(), Same(), 10**30]


@given(st.sampled_from(_STATICS), st.sampled_from(_STATICS), st.integers(2, 4), st.integers(2, 4),
       st.sampled_from(["attrs", "mlp", "blocks"]))
def test_any_two_structures_unflattened_in_turn_agree_with_the_reference(a: Any, b: Any, n: int, k: int,
                                                                          layout: str) -> None:
    make = {"attrs": attrs, "mlp": mlp, "blocks": blocks}[layout]
    saved = CONFIG.outline_min
    sg.configure(outline_min=2)
    sg.clear_cache()
    try:
        for node in (make(n, a), make(k, b), make(n, b)):
            _unflattened(*_gd(node))
        if n != k:  # (else equal structures may be one: compiled once)
            assert _units()[1] > 0
    finally:
        CONFIG.outline_min = saved
        sg.clear_cache()


@pytest.mark.parametrize("pair", ["mlp 5 -> 7", "nested -> nested and one more block"])
def test_two_phase_units_of_callback_structures_are_shared_in_the_reference_s_order(outlined: None,
                                                                                   pair: str) -> None:
    """Callback node types (two phases: every object made, then every node filled, in table
    order): the second structure binds the first's _create/_fill builders and loops, and
    calls create_empty and set_key exactly as the reference does."""
    import copy

    from test_outline_callback_unflatten import mlp as cb_mlp
    from test_outline_callback_unflatten import nested, same_as_reference, served

    class _Outlined:
        name = "outlined"
        compiled = True

    if pair.startswith("mlp"):
        first, second = cb_mlp(5), cb_mlp(7)
    else:
        first, second = nested(), nested()
        second.extra = copy.deepcopy(second.solo)
    for node, shares in ((first, False), (second, True)):
        gd, sm = sg.generic.flatten(node)
        before = _units()
        same_as_reference(served(_Outlined(), gd, sm), gd, sm)
        c, r = _units()[0] - before[0], _units()[1] - before[1]
        assert (c == 0 and r > 0) if shares else (c > 0 and r == 0), (c, r)


def _dis_globals(code: Any) -> set[str]:
    import dis

    names: set[str] = set()
    stack = [c for c in code.co_consts if type(c) is type(code)]
    while stack:
        co = stack.pop()
        names.update(i.argval for i in dis.get_instructions(co) if i.opname == "LOAD_GLOBAL")
        stack.extend(c for c in co.co_consts if type(c) is type(code))
    return names


def test_the_globals_a_unit_reads_are_what_dis_says() -> None:
    """pipeline._loaded_globals reads the bytecode itself: the names dis decodes, for
    generated sources and for code with more than 256 names (extended arguments)."""
    from specgraph import codegen
    from specgraph.codegen import pipeline

    many = "\n".join(f"    x = g{i}.a{i} + y" for i in range(600))
    sources = [f"def f(y):\n{many}\n    return lambda: (h, x, [k for k in q])\n"]
    for node in (blocks(3), mlp(4), nest(4), links(5), attrs(3)):
        gd, _ = sg.generic.flatten(node)
        for kind in ("flatten", "unflatten"):
            for outline_min in (0, 2):
                sources.append(codegen.build(kind, gd, max_steps=10_000, outline_min=outline_min).source)
    for src in sources:
        code = compile(src, "<test>", "exec")
        want = _dis_globals(code)
        assert want and pipeline._loaded_globals(code) == want


def _named_class(name: str, chain: bool) -> type:
    """A node class called ``name``: a Linear, or (``chain``) a link of a chain of nodes."""

    def init(self: Any, i: int) -> None:
        self.w = sg.Param(np.float32(i))
        if chain:
            self.next = cls(i - 1) if i else None
        else:
            self.b = sg.Param(np.float32(i))

    cls = type(name, (sg.Node,), {"__init__": init})
    return cls


def _loop_fn_name(chain: bool) -> str:
    """The name of the unit the top function calls for its loop (``each<i>_build``)."""
    cls = _named_class("Neutral", chain)
    gd, state = _gd(Box(h=cls(4)) if chain else Box(ls=[cls(i) for i in range(4)]))
    _unflattened(gd, state)
    (name,) = set(re.findall(r"\b(each[0-9]+_build)\(", dispatch._unflat[gd].source))
    sg.clear_cache()
    return name


@pytest.mark.parametrize("name", ["n", "head", "tail", "_", "at0", "loop unit"])
@pytest.mark.parametrize("chain", [False, True], ids=["list", "chain of nodes"])
def test_a_class_named_like_a_loop_unit_s_parameter_or_function(outlined: None, name: str,
                                                                 chain: bool) -> None:
    """A loop's unit takes its count, a chain's head and tail, its counters' starts as
    parameters, and the top function calls it as ``each<i>_build``: a bound class never
    takes one of those names (else the unit read the parameter as the class, or the top
    function the unit as the class, and the unflatten raised)."""
    if name == "loop unit":
        name = _loop_fn_name(chain)
    cls = _named_class(name, chain)
    make = (lambda n: Box(h=cls(n))) if chain else (lambda n: Box(ls=[cls(i) for i in range(n)]))
    out = _second_shares(make(3), make(4))
    first = out.h if chain else out.ls[3]
    assert type(first) is cls and float(first.w.value) == (4.0 if chain else 3.0)


@pytest.mark.parametrize("make", [attrs, mlp, links], ids=["builder", "loop", "chain of nodes"])
def test_explain_tells_a_structure_s_own_units_from_shared_ones_and_counts_no_reuse(
        outlined: None, make: Any) -> None:
    """``explain`` rebuilds the unflatten to show it: the units it binds again are the
    structure's own (not "compiled for an earlier structure"), and binding them is not a
    reuse in ``cache_info``. A second structure's explain does say its units are shared."""
    gd, state = _gd(make(4))
    _unflattened(gd, state)
    before = _units()
    text = sg.explain(gd, max_lines=None)
    assert "_build(" in text  # (its unflatten units are shown)
    assert "compiled for an earlier structure" not in text
    assert _units() == before
    gd2, state2 = _gd(make(6))
    _unflattened(gd2, state2)
    before = _units()
    text = sg.explain(gd2, max_lines=None)
    assert "compiled for an earlier structure, shared" in text
    assert _units() == before
