"""Outlined unflatten: one builder per repeated substructure (codegen/unflatten_plan.py).

A structure that repeats one self-contained shape (a ``Linear``, a block) gets one
generated builder per shape, called per occurrence, a loop over a list of them, and a
loop over a chain of nested links of one shape. The result is exactly the reference
walker's: the same structure, the very value objects, shared objects shared, cycles
closed, and every static, metadata and key object taken from the GraphDef being
unflattened (an equal GraphDef may hold equal but distinct objects), per occurrence;
only exact ``str``/``int`` dict keys are the generated code's own equal literals, as
DESIGN allows (equal means indistinguishable for them).
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

import numpy as np
import pytest
from conftest import assert_same_flatten
from hypothesis import given
from hypothesis import strategies as st
from test_properties import build, recipes

import specgraph as sg
from specgraph._ir import ArrayConstant, iter_statics
from specgraph._weakstatic import WeakStatic
from specgraph.runtime import dispatch
from specgraph.runtime.cache import CONFIG


class Linear(sg.Node):
    def __init__(self, din: int, dout: int, seed: float = 0.0, tag: Any = "lin", size: int = 0) -> None:
        self.w = sg.Param(np.full((din, dout), seed, np.float32), kind=tag)
        self.b = sg.Param(np.full((dout,), seed, np.float32))
        self.din = din
        self.dout = dout
        self.tag = tag
        self.size = size


class Box(sg.Node):
    def __init__(self, **attrs: Any) -> None:
        vars(self).update(attrs)


class Block(sg.Node):
    def __init__(self, i: int, ff: Linear | None = None) -> None:
        self.attn = Box(q=Linear(2, 2, i), k=Linear(2, 2, i + 0.5))
        self.ff = ff if ff is not None else Linear(2, 3, i)
        self.ln = sg.State(np.float32(i), kind="ln")
        self.heads = [Linear(2, 2, i + 0.25 * h) for h in range(3)]



def _source(gd: sg.GraphDef) -> str:
    built = dispatch._unflat.get(gd)
    assert built is not None, "no compiled unflatten for this structure"
    return built.source


def _statics(gd: sg.GraphDef) -> list[Any]:
    """The static objects of ``gd``, in a fixed order (wrappers left out: they are rebuilt)."""
    return [v for _, v in iter_statics(gd) if type(v) is not WeakStatic and type(v) is not ArrayConstant]


def _metadata(root: Any) -> list[Any]:
    """Every state's metadata tuple, in the reference flatten's order."""
    return [s._metadata for _, s in sg.iter_leaf(root) if isinstance(s, sg.State)]


def unflatten_served(gd: sg.GraphDef, st_: sg.StateMap) -> Any:
    """``sg.unflatten`` until served by generated code (counted); checked against the
    reference: structure, value objects, statics and metadata objects of ``gd``."""
    sg.unflatten(gd, st_)
    before = sg.cache_info()["unflatten_hits"]
    out = sg.unflatten(gd, st_)
    assert sg.cache_info()["unflatten_hits"] == before + 1, sg.cache_info()
    ref = sg.generic.unflatten(gd, st_)
    assert_same_flatten(sg.generic.flatten(out), sg.generic.flatten(ref))
    mine, theirs = _statics(sg.generic.flatten(out)[0]), _statics(gd)
    assert len(mine) == len(theirs) and all(a is b for a, b in zip(mine, theirs, strict=True))
    got, want = _metadata(out), _metadata(ref)
    assert all(a is b for a, b in zip(got, want, strict=True))
    return out


class Counted:
    """Count the calls of a generated unflatten's builders (patched into its globals)."""

    def __init__(self, gd: sg.GraphDef) -> None:
        self.fn = dispatch._unflat[gd].fn
        self.calls: dict[str, int] = {}
        self.saved: dict[str, Any] = {}
        for name, f in list(self.fn.__globals__.items()):
            if name.startswith("outlined") and name.endswith("_build"):
                self.saved[name] = f
                self.calls[name] = 0
                self.fn.__globals__[name] = self._wrap(name, f)

    def _wrap(self, name: str, f: Any) -> Any:
        def counted(*args: Any) -> Any:
            self.calls[name] += 1
            return f(*args)

        return counted

    def restore(self) -> None:
        self.fn.__globals__.update(self.saved)


def test_attributes_of_one_shape_are_built_by_one_builder(outlined: None) -> None:
    m = Box(**{f"l{i}": Linear(2, 2, float(i)) for i in range(6)})
    gd, st_ = sg.flatten(m)
    sg.unflatten(gd, st_)
    sg.unflatten(gd, st_)  # (compiled on the second)
    src = _source(gd)
    assert src.count("def outlined") == 1 and src.count("= outlined0_build(vals, ") == 6
    counted = Counted(gd)
    try:
        unflatten_served(gd, st_)
    finally:
        counted.restore()
    assert list(counted.calls.values()) == [12]  # per occurrence, in each of the two served calls
    text = sg.explain(gd)
    assert "the shape occurs 6 times; called at Box.l0; Box.l1; Box.l2; ..." in text


def test_a_list_of_one_shape_is_one_loop(outlined: None) -> None:
    m = Box(layers=[Linear(2, 2, float(i)) for i in range(7)], head=Linear(3, 1))
    gd, st_ = sg.flatten(m)
    out = unflatten_served(gd, st_)
    src = _source(gd)
    assert "# 7 of one shape" in src and src.count("outlined0_build(") == 2  # def + the head
    assert src.count("NEW(Linear)") == 2  # the loop's body and the head's builder
    assert type(out.layers) is list and len({id(x) for x in out.layers}) == 7
    assert "a loop over Box.layers[0..6]: 7 x Linear" in sg.explain(gd)
    t = Box(layers=tuple(Linear(2, 2, float(i)) for i in range(3)))
    gd, st_ = sg.flatten(t)
    assert type(unflatten_served(gd, st_).layers) is tuple


def test_statics_of_other_values_share_the_builder(outlined: None) -> None:
    """The unflatten's code does not depend on static or metadata values (each occurrence's
    are read from the GraphDef): layers differing only there are one shape, one loop."""
    m = Box(layers=[Linear(2, 2, float(i), tag=f"t{i}", size=i) for i in range(5)],
            **{f"l{i}": Linear(2, 2, tag=("x", i)) for i in range(3)})
    gd, st_ = sg.flatten(m)
    out = unflatten_served(gd, st_)
    src = _source(gd)
    assert "# 5 of one shape" in src and src.count("def outlined") == 1
    assert [x.size for x in out.layers] == list(range(5)) and out.l2.tag == ("x", 2)
    assert [x.w._metadata for x in out.layers] == [(("kind", f"t{i}"),) for i in range(5)]


def test_nested_shapes_builders_in_loops(outlined: None) -> None:
    """Blocks in a list (a loop), each with builders called for its Linears and a loop
    over its heads: positions into ``vals`` counted per item."""
    m = Box(blocks=[Block(i) for i in range(4)], extra=[Block(9), Block(10)])
    gd, st_ = sg.flatten(m)
    out = unflatten_served(gd, st_)
    src = _source(gd)
    assert "def outlined" in src and "of one shape" in src
    assert out.blocks[2].heads[1].w.value is st_[("blocks", 2, "heads", 1, "w")]


def test_tied_weights_between_layers(outlined: None) -> None:
    m = Box(layers=[Linear(2, 2, float(i)) for i in range(6)])
    m.layers[3].w = m.layers[2].w  # layers 2 and 3 are built inline, the others by the loop/builder
    gd, st_ = sg.flatten(m)
    out = unflatten_served(gd, st_)
    assert "_build(" in _source(gd)
    assert out.layers[3].w is out.layers[2].w
    assert out.layers[4].w is not out.layers[5].w


def test_a_node_shared_by_two_blocks(outlined: None) -> None:
    shared = Linear(2, 3, 7.0)
    m = Box(blocks=[Block(0, shared), Block(1, shared), Block(2), Block(3)])
    gd, st_ = sg.flatten(m)
    out = unflatten_served(gd, st_)
    assert "def outlined" in _source(gd)
    assert out.blocks[0].ff is out.blocks[1].ff
    assert out.blocks[2].ff is not out.blocks[3].ff


def test_cycles_stay_in_the_top_function(outlined: None) -> None:
    m = Box(blocks=[Block(i) for i in range(4)])
    m.blocks[1].attn.up = m  # block 1 is no longer of the others' shape
    m.blocks[2].heads[0].back = m.blocks[2]
    gd, st_ = sg.flatten(m)
    out = unflatten_served(gd, st_)
    assert out.blocks[1].attn.up is out
    assert out.blocks[2].heads[0].back is out.blocks[2]
    assert "def outlined" in _source(gd)


def test_a_list_that_is_not_homogeneous(outlined: None) -> None:
    layers = [Linear(2, 2, float(i)) for i in range(6)]
    odd = Linear(2, 5)
    odd.extra = 1
    layers.insert(3, odd)
    m = Box(layers=layers)
    gd, st_ = sg.flatten(m)
    sg.unflatten(gd, st_)
    sg.unflatten(gd, st_)
    assert "of one shape" not in _source(gd)
    counted = Counted(gd)
    try:
        unflatten_served(gd, st_)
    finally:
        counted.restore()
    # one builder, per Linear in each of the two served calls; the odd one inline
    assert sorted(counted.calls.values()) == [12]


def test_statics_equal_but_distinct_come_from_the_given_graphdef(outlined: None) -> None:
    """Two equal GraphDefs whose statics and metadata are equal but distinct objects: each
    unflatten holds its own GraphDef's objects, occurrence by occurrence."""

    def big(i: int) -> int:
        return int("1" * 30) + i % 2  # a fresh int object each call

    def text(i: int) -> str:
        return "".join(["ta", "g", str(i % 2)])  # a fresh str each call

    def model() -> Box:
        return Box(layers=[Linear(2, 2, float(i), tag=text(i), size=big(i)) for i in range(4)],
                   same=[Linear(2, 2, tag=text(0), size=big(0)) for i in range(3)],  # a loop
                   more=Box(**{f"l{i}": Linear(2, 2, tag=(text(i), big(i)), size=big(i)) for i in range(3)}))

    a, b = model(), model()
    gd_a, st_a = sg.generic.flatten(a)
    gd_b, st_b = sg.generic.flatten(b)
    assert gd_a == gd_b and gd_a is not gd_b
    assert _statics(gd_a)[0] is not _statics(gd_b)[0]
    unflatten_served(gd_a, st_a)
    out = unflatten_served(gd_b, st_b)  # one compiled function, gd_b's objects
    assert out.layers[1].size is b.layers[1].size and out.layers[1].size is not a.layers[1].size
    assert out.more.l2.tag is b.more.l2.tag
    assert out.same[2].size is b.same[2].size and out.same[2].size is not b.same[1].size
    assert "# 3 of one shape" in _source(gd_a)
    assert out.layers[3].w._metadata is gd_b.table[out_index(gd_b, ("layers", 3, "w"))].metadata


def test_a_list_in_a_loops_item_is_built_once_with_its_own_statics(outlined: None) -> None:
    """A list of one shape inside each item of a loop (heads in blocks), each head holding
    a static of its own value: every head is built once, by the inner loop, and keeps its
    own static. (Regression: a loop body that also unrolled the inner list's items built
    the heads twice and wrote the first head's static into the inner loop's last head.)"""

    def model() -> Box:
        return Box(blocks=[Box(heads=[Box(w=sg.Param(float(j)), act=float(3 * i + j)) for j in range(3)],
                               z=float(i)) for i in range(3)])

    m = model()
    gd, st_ = sg.generic.flatten(m)
    out = unflatten_served(gd, st_)
    want = [[float(3 * i + j) for j in range(3)] for i in range(3)]
    assert [[h.act for h in b.heads] for b in out.blocks] == want
    gd2, st2 = sg.generic.flatten(model())  # equal, with distinct statics: its own objects
    out2 = unflatten_served(gd2, st2)
    assert out2.blocks[1].heads[2].act == 5.0


def out_index(gd: sg.GraphDef, path: tuple) -> int:
    """The table index of the state at ``path``."""
    slot = list(gd.paths).index(path)
    return next(s.index for s in gd.table if isinstance(s, sg._ir.StateSpec) and s.slot == slot)


def test_chain_of_ten_thousand_nested_nodes(outlined: None) -> None:
    node = Box(p=sg.Param(np.float32(0)), tag="end")
    for i in range(1, 10_000):
        node = Box(child=node, p=sg.Param(np.float32(i)), tag="".join(["li", "nk"]))
    gd, st_ = sg.flatten(node)
    out = unflatten_served(gd, st_)
    src = _source(gd)
    assert "9999 nested links of one shape" in src and len(src.splitlines()) < 60
    x = out
    for _ in range(9_999):
        x = x.child
    assert x.tag == "end" and x.p.value is st_[("child",) * 9_999 + ("p",)]


@pytest.mark.parametrize("next_key", ["child", "z_next"])
def test_chain_links_read_their_own_statics(outlined: None, next_key: str) -> None:
    """Each link's statics (its tag) are its own, whether entries follow the rest of the
    chain in a link (the next link under ``child``, before ``p``) or none do (under
    ``z_next``, after every other key: each link read the first link's statics then)."""
    node = Box(p=sg.Param(np.float32(0)), tag="end")
    for i in range(1, 50):
        node = Box(**{next_key: node}, p=sg.Param(np.float32(i)), tag=f"link{i}")
    gd, st_ = sg.flatten(node)
    out = unflatten_served(gd, st_)
    assert "49 nested links of one shape" in _source(gd)
    tags = []
    while hasattr(out, next_key):
        tags.append(out.tag)
        out = getattr(out, next_key)
    assert tags == [f"link{i}" for i in range(49, 0, -1)] and out.tag == "end"


def test_ten_thousand_layers_with_the_default_outline_min() -> None:
    m = Box(layers=[Linear(2, 2, float(i)) for i in range(10_000)])
    gd, st_ = sg.flatten(m)
    unflatten_served(gd, st_)
    assert sg.cache_info()["compiled_unflattens"] == 1
    assert len(_source(gd).splitlines()) < 80


def test_max_steps_bounds_the_generated_code(outlined: None) -> None:
    saved = CONFIG.max_steps
    try:
        sg.configure(max_steps=200)
        m = Box(layers=[Linear(2, 2, float(i)) for i in range(1000)])  # one loop: small code
        gd, st_ = sg.flatten(m)
        unflatten_served(gd, st_)
        # no repeated shape, no run of sibling states of one kind (metadata every other one)
        wide = Box(**{f"p{i}": sg.Param(np.float32(i), **({"tag": i} if i % 2 else {})) for i in range(300)})
        gd, st_ = sg.flatten(wide)
        sg.unflatten(gd, st_)
        sg.unflatten(gd, st_)
        assert "too large" in (dispatch.structure_stats(gd).declined or "")
    finally:
        CONFIG.max_steps = saved


def test_a_class_guard_covers_the_builders(outlined: None) -> None:
    """Attribute stores in a builder rely on its class gaining no descriptor: the top
    function's class guards check the classes only builders make."""
    m = Box(**{f"l{i}": Linear(2, 2, float(i)) for i in range(3)})
    gd, st_ = sg.flatten(m)
    unflatten_served(gd, st_)
    seen = []
    Linear.din = property(lambda self: 0, lambda self, v: seen.append(v))  # type: ignore[assignment]
    try:
        out = sg.unflatten(gd, st_)
        assert vars(out.l1)["din"] == 2 and not seen  # the reference stored into the dict
        assert sg.cache_info()["guard_misses"].get("class", 0) == 1
    finally:
        del Linear.din


@given(recipe=recipes(), k=st.integers(2, 4), tie=st.booleans(), cycle=st.booleans(),
       data=st.data())
def test_random_graphs_generic_vs_outlined(recipe: dict[str, Any], k: int, tie: bool, cycle: bool,
                                           data: st.DataObject) -> None:
    saved = CONFIG.outline_min
    sg.configure(outline_min=2)
    sg.clear_cache()
    try:
        items = [build(recipe) for _ in range(k)]
        root = Box(items=items, pair=Box(a=build(recipe), b=build(recipe)))
        if tie:
            states = [s for _, s in sg.iter_leaf(root) if isinstance(s, sg.State)]
            nodes = [n for _, n in sg.iter_node(root) if isinstance(n, sg.Node) and n is not root]
            if nodes:
                holder = data.draw(st.sampled_from(nodes))
                if isinstance(holder, Box):
                    holder.tied = data.draw(st.sampled_from(states or nodes))
        if cycle:
            root.pair.a = Box(back=root, inner=root.pair.a)
        gd, st_ = sg.generic.flatten(root)
        unflatten_served(gd, st_)
    finally:
        CONFIG.outline_min = saved
        sg.clear_cache()


def test_foreign_classes_are_outlined_with_the_calls_contexts_passed_in(outlined: None) -> None:
    """NNX modules and Variables (and BrainState ones) are built by outlined builders and
    loops too: the top function makes the per-call context, once, and passes it in (the
    builders take it as a parameter; a loop sees the function's local). Still exact."""
    nnx = pytest.importorskip("flax.nnx")

    class Stack(nnx.Module):
        def __init__(self, rngs: Any) -> None:
            self.layers = nnx.List([nnx.Linear(2, 2, rngs=rngs) for _ in range(4)])
            self.a = nnx.Linear(2, 2, rngs=rngs)
            self.b = 1  # (a static between: a and c are no run, one builder call each)
            self.c = nnx.Linear(2, 2, rngs=rngs)

    m = Stack(nnx.Rngs(0))
    gd, st_ = sg.flatten(m)
    out = unflatten_served(gd, st_)
    src = _source(gd)
    assert "# 4 of one shape" in src and src.count("_build(vals, at, S, ctx0):") == 1
    top = src[src.index("def unflatten_"):]
    assert top.count("ctx0 = ") == 1  # made once, passed to each call
    assert len(re.findall(r"outlined\d+_build\(vals, \d+, s\d+, ctx0\)", top)) == 2
    assert nnx.graphdef(out) == nnx.graphdef(m)
    bst = pytest.importorskip("brainstate")

    class BLayer(bst.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = bst.ParamState(np.ones(2, np.float32))

    class BNet(bst.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = [BLayer() for _ in range(4)]

    b = BNet()
    gd, st_ = sg.flatten(b)
    unflatten_served(gd, st_)
    assert "# 4 of one shape" in _source(gd) and _source(gd).count("ctx0 = ") == 1


# -- hooks a class gains after compilation: outlined code builds in another order ---------


class Tap(sg.Param):  # type: ignore[type-arg]
    """A Param class that gains a ``__setattr__`` (or a ``value`` property) after compilation."""

    __slots__ = ()


class Cell(sg.Node):
    def __init__(self, i: int, foreign: Any = None) -> None:
        self.t = Tap(np.float32(i))
        if foreign is not None:
            self.f = foreign


class DictCell(Cell):
    """Filled through ``__dict__`` (a class attribute named like a key: no attribute stores)."""

    t = None


class DictBox(Box):
    cells = None  # (as DictCell)


class OwnHook(sg.Node):
    """A node class with a ``__getattribute__`` of its own: outlined code would run it out
    of order, so its structures are built in table order (unrolled)."""

    log: ClassVar[list[int]] = []

    def __init__(self, i: int = 0, cells: int = 0) -> None:
        self.t = sg.Param(np.float32(i))
        if cells:
            self.cells = [OwnHook(i) for i in range(cells)]

    def __getattribute__(self, name: str) -> Any:
        if name == "__dict__":
            OwnHook.log.append(id(self))
        return object.__getattribute__(self, name)


def _hooked_model(kind: str) -> Any:
    """A list of one shape, then a ``Tap`` after it (the reference makes that one last)."""
    if kind == "builtin":
        return Box(cells=[Cell(i) for i in range(3)], z=Tap(np.float32(9)))
    if kind == "builtin through __dict__":
        return DictBox(cells=[DictCell(i) for i in range(3)], z=Tap(np.float32(9)))
    nnx = pytest.importorskip("flax.nnx")
    if kind == "builtin nodes of NNX Params":
        return Box(cells=[Cell(i, nnx.Param(np.ones(2, np.float32))) for i in range(3)], z=Tap(np.float32(9)))

    class Holder(nnx.Module):
        def __init__(self, i: int) -> None:
            self.p = nnx.Param(np.ones(2, np.float32))
            self.t = nnx.data(Tap(np.float32(i)))

    class Top(nnx.Module):
        def __init__(self) -> None:
            self.cells = nnx.List([Holder(i) for i in range(3)])
            self.z = nnx.data(Tap(np.float32(9)))

    return Top()


def _hook(hook: str, log: list[Any], nodes: list[type]) -> Any:
    """Install ``hook`` (logging what it sees; a node hook on each of ``nodes``); return its undo."""
    if hook == "state __setattr__":
        def __setattr__(self: Any, name: str, value: Any) -> None:
            log.append((name, float(value) if name == "value" else None))
            object.__setattr__(self, name, value)

        Tap.__setattr__ = __setattr__  # type: ignore[method-assign,assignment]
        return lambda: delattr(Tap, "__setattr__")
    if hook == "state value property":
        slot = vars(sg.State)["value"]

        def put(self: Any, value: Any) -> None:
            log.append(("value", float(value)))
            slot.__set__(self, value)

        Tap.value = property(slot.__get__, put)  # type: ignore[assignment]
        return lambda: delattr(Tap, "value")

    def __getattribute__(self: Any, name: str) -> Any:
        if name == "__dict__":
            log.append(type(self).__name__)
        return object.__getattribute__(self, name)

    for t in nodes:
        t.__getattribute__ = __getattribute__  # type: ignore[method-assign]
    return lambda: [delattr(t, "__getattribute__") for t in nodes]


@pytest.mark.parametrize("kind", ["builtin", "builtin through __dict__", "builtin nodes of NNX Params",
                                  "NNX"])
@pytest.mark.parametrize("hook", ["state __setattr__", "state value property", "node __getattribute__"])
def test_a_hook_gained_after_compilation_runs_in_the_reference_order(outlined: None, kind: str,
                                                                     hook: str) -> None:
    """An outlined unflatten builds a repeated subtree where it is used, not in table order:
    that is unobservable only while the build runs no user code, read at compile time.
    A ``__setattr__`` or ``value`` property a State class gains afterwards (or a
    ``__getattribute__`` on a node class filled through ``__dict__``) would run in another
    order than the reference's: a class miss, answered by the reference."""
    m = _hooked_model(kind)
    gd, st_ = sg.flatten(m)
    unflatten_served(gd, st_)
    built = dispatch._unflat[gd]
    assert built.plan.shape_fns or built.plan.loops  # outlined
    log: list[Any] = []
    undo = _hook(hook, log, list({type(x): None for _, x in sg.iter_node(m) if type(x) not in (list, dict)}))
    try:
        out = sg.unflatten(gd, st_)
        got = list(log)
        log.clear()
        ref = sg.generic.unflatten(gd, st_)
        want = list(log)
    finally:
        undo()
    assert want and got == want
    assert_same_flatten(sg.generic.flatten(out), sg.generic.flatten(ref))


def test_a_node_class_with_its_own_getattribute_is_built_in_table_order(outlined: None) -> None:
    m = OwnHook(9, cells=3)
    gd, st_ = sg.flatten(m)
    unflatten_served(gd, st_)
    built = dispatch._unflat[gd]
    assert not built.plan.shape_fns and not built.plan.loops  # unrolled: the reference's order
    orders = []
    for unflatten in (sg.unflatten, sg.generic.unflatten):
        OwnHook.log.clear()
        out = unflatten(gd, st_)
        where = {id(out): "root", **{id(c): i for i, c in enumerate(out.cells)}}
        orders.append([where[x] for x in OwnHook.log if x in where])
    assert orders[0] == orders[1] == ["root", 0, 1, 2]


# -- chains of nested containers (``x = [x, State(...)]``, any depth) ---------------------


class Tag:
    """A static equal to any other Tag of the same name, but not the same object."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __eq__(self, other: object) -> bool:
        return type(other) is Tag and other.name == self.name

    def __hash__(self) -> int:
        return hash(("Tag", self.name))


def _nest(n: int, kinds: str = "l", tag: Any = None) -> Box:
    """``n`` nested containers, link ``i`` (innermost first) of kind ``kinds[i % len]``
    (l: list, t: tuple, d: dict; L: a list holding the next link last, a Param and a
    Linear before it; T: a tuple with a Linear both sides of the next link), each holding
    a Param, a static that differs per depth and a static ``tag``."""
    x: Any = []
    for i in range(n):
        p = sg.Param(np.full((2,), i, np.float32))
        k = kinds[i % len(kinds)]
        items = (x, p, i, tag if tag is not None else ("t", i % 3))
        if k == "L":
            x = [p, Linear(2, 2, i), i, items[3], x]
        elif k == "T":
            x = (Linear(1, 2, i), i, x, p, Linear(2, 1, -i))
        else:
            x = list(items) if k == "l" else items if k == "t" else \
                dict(zip(("next", "p", "i", "tag"), items, strict=True))
    return Box(x=x, after=sg.Param(np.ones(1, np.float32)), depth=n)


def _chain_src(gd: sg.GraphDef) -> str:
    return _source(gd) if dispatch._unflat.get(gd) is not None else ""


@pytest.mark.repeats
@pytest.mark.parametrize("n", [3, 50])
@pytest.mark.parametrize("kinds", ["l", "t", "d", "L", "T"])
def test_nested_containers_unflatten_as_the_reference(impl: Any, n: int, kinds: str) -> None:
    _same_nest_unflatten(impl, n, kinds)


@pytest.mark.parametrize("n", [3, 50])
@pytest.mark.parametrize("kinds", ["lt", "ltd", "dl", "lL"])
def test_mixed_nested_containers_are_no_chain(impl: Any, n: int, kinds: str) -> None:
    _same_nest_unflatten(impl, n, kinds)


def _same_nest_unflatten(impl: Any, n: int, kinds: str) -> None:
    m = _nest(n, kinds)
    gd, sm = sg.generic.flatten(m)
    assert_same_flatten(impl.flatten(m), (gd, sm))
    for _ in range(2):
        got = impl.unflatten(gd, sm)
        want = sg.generic.unflatten(gd, sm)
        assert_same_flatten(sg.generic.flatten(got), sg.generic.flatten(want))
        values = sg.generic.flatten(got)[1]
        assert all(a is b for a, b in zip(values.values(), sm.values(), strict=True))
    if impl.name == "outlined":
        src = _chain_src(gd)
        # One chain only where the links are of one shape (one kind): mixed kinds stay unrolled.
        assert ("nested containers of one shape" in src) == (len(kinds) == 1), src


@pytest.mark.parametrize("kind", ["l", "t", "d"])
def test_ten_thousand_nested_containers_unflatten_in_one_loop(outlined: None, kind: str) -> None:
    from conftest import outlined_hits

    m = _nest(10_000, kind)
    gd, sm = sg.flatten(m)
    sg.unflatten(gd, sm)  # (the first call compiles)
    before = outlined_hits()
    got = sg.unflatten(gd, sm)
    assert outlined_hits() == before + 1
    src = _source(gd)
    assert "9999 nested containers of one shape" in src and len(src.splitlines()) < 80, src
    assert_same_flatten(sg.generic.flatten(got), sg.generic.flatten(sg.generic.unflatten(gd, sm)))
    x = got.x
    for i in reversed(range(10_000)):  # each link's own type, static and value
        assert type(x) is {"l": list, "t": tuple, "d": dict}[kind]
        nxt, p, j, _ = (x["next"], x["p"], x["i"], x["tag"]) if kind == "d" else x
        assert j == i and type(p) is sg.Param and p.value[0] == i
        x = nxt
    assert x == []


@pytest.mark.parametrize("kind", ["l", "t", "d"])
def test_nested_container_statics_come_from_the_graphdef_given(outlined: None, kind: str) -> None:
    gd1, sm1 = sg.flatten(_nest(60, kind, Tag("a")))
    gd2, sm2 = sg.flatten(_nest(60, kind, Tag("a")))
    assert gd1 == gd2 and gd1 is not gd2
    sg.unflatten(gd1, sm1)
    got = sg.unflatten(gd2, sm2)  # served by gd1's code: an equal GraphDef
    assert "nested containers of one shape" in _source(gd2)
    mine, theirs = _tags(gd2), _tags(sg.generic.flatten(got)[0])
    assert len(mine) == len(theirs) == 60
    assert all(a is b for a, b in zip(mine, theirs, strict=True))
    assert all(a is not b for a, b in zip(mine, _tags(gd1), strict=True))


def _tags(gd: sg.GraphDef) -> list[Tag]:
    return [s for _, s in iter_statics(gd) if type(s) is Tag]


def test_nested_containers_statics_differ_per_depth(outlined: None) -> None:
    # A link whose static differs per depth: read per link, not the first link's everywhere.
    m = _nest(40)
    _nest_link_static = 17
    x = m.x
    for _ in range(40 - 1 - _nest_link_static):
        x = x[0]
    x[3] = Tag("odd one")
    gd, sm = sg.flatten(m)
    sg.unflatten(gd, sm)
    got = sg.unflatten(gd, sm)
    assert "nested containers of one shape" in _source(gd)
    assert_same_flatten(sg.generic.flatten(got), sg.generic.flatten(sg.generic.unflatten(gd, sm)))
    assert len(_tags(sg.generic.flatten(got)[0])) == 1
