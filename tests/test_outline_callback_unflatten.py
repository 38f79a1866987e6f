"""Outlined unflatten of structures holding callback node types (``register_graph_node_type``).

Their ``create_empty`` and ``set_key`` are user code, run during the build: the reference
calls every ``create_empty`` (and makes every other object) in table order, then fills
every node in table order, each ``set_key`` getting children made but maybe not filled
yet. The outlined code (two phases: unflatten_plan.py, ``_phased_objects_then_fills``)
must do exactly that. Every test here records the ordered log of the user calls, with what
each ``set_key`` sees of its child (a callback node's keys so far, a ``Node``'s attributes
so far), and demands the reference's log and result; on the compiled paths the call must
have been served by generated code, and on the outlined one by outlined code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from conftest import assert_same_flatten, outlined_unflatten_hits
from hypothesis import given
from hypothesis import strategies as st

import specgraph as sg
from specgraph.runtime import dispatch

LOG: list[tuple] = []
_NUM: dict[int, int] = {}  # id(object) -> its number in the recording (by first appearance)
_ALIVE: list[Any] = []  # (so no id is reused while recording)
FAIL: dict[str, int] = {}  # "create"/"set" -> the call (1-based) of the recording that raises
_CALLS = {"create": 0, "set": 0}


class Boom(Exception):
    pass


class CB:
    """A node type registered with callbacks: its children in a dict, a metadata tuple."""

    def __init__(self, seed: float = 0.0, meta: Any = ("cb", 2), **extra: Any) -> None:
        self.meta = meta
        self.items: dict[Any, Any] = {"w": sg.Param(np.full((2,), seed, np.float32)),
                                      "b": sg.Param(np.full((1,), seed, np.float32)), "act": "relu", **extra}


def _num(x: Any) -> int:
    n = _NUM.get(id(x))
    if n is None:
        n = _NUM[id(x)] = len(_NUM)
        _ALIVE.append(x)
    return n


DEEP = [False]  # describe everything reachable from a node child (its whole graph so far)


def reachable(v: Any) -> Any:
    """Every node reachable from ``v`` now, with its names so far, in a stable order."""
    seen: dict[int, Any] = {}
    stack = [v]
    while stack:
        x = stack.pop()
        if isinstance(x, CB | sg.Node) and id(x) not in seen:
            d = x.items if isinstance(x, CB) else vars(x)
            seen[id(x)] = (_num(x), tuple(sorted(map(repr, d))))
            stack.extend(d.values())
        elif type(x) is list or type(x) is tuple:
            stack.extend(x)
        elif type(x) is dict:
            stack.extend(x.values())
    return tuple(sorted(seen.values()))


def describe(v: Any) -> Any:
    """What user code given ``v`` can see of it now (objects by number, not identity)."""
    if DEEP[0] and isinstance(v, CB | sg.Node):
        return ("graph", reachable(v))
    if isinstance(v, CB):
        return ("cb", _num(v), v.meta, tuple(sorted(map(repr, v.items))))
    if isinstance(v, sg.State):
        return ("state", _num(v), type(v).__name__, v.metadata)
    if isinstance(v, sg.Node):
        return ("node", _num(v), type(v).__name__, tuple(sorted(vars(v))))
    if type(v) is list or type(v) is tuple:
        return (type(v).__name__, tuple(describe(x) for x in v))
    if type(v) is dict:
        return ("dict", tuple((repr(k), describe(x)) for k, x in v.items()))
    return ("static", type(v).__name__, repr(v))


def _flatten(n: CB) -> tuple[Any, Any]:
    return sorted(n.items.items(), key=lambda kv: repr(kv[0])), n.meta


def _tick(kind: str) -> None:
    _CALLS[kind] += 1
    if FAIL.get(kind) == _CALLS[kind]:
        raise Boom(f"{kind} call {_CALLS[kind]} refused")


def _create(meta: Any) -> CB:
    _tick("create")
    n = CB.__new__(CB)
    n.meta, n.items = meta, {}
    LOG.append(("create", _num(n), meta))
    return n


def _set_key(n: CB, key: Any, value: Any) -> None:
    _tick("set")
    LOG.append(("set", _num(n), repr(key), describe(value)))
    n.items[key] = value


CALLBACKS = (_flatten, _set_key, lambda n, k: n.items.pop(k), _create, lambda n: n.items.clear())
sg.register_graph_node_type(CB, *CALLBACKS)


class Box(sg.Node):
    def __init__(self, **attrs: Any) -> None:
        vars(self).update(attrs)


class Linear(sg.Node):
    def __init__(self, seed: float = 0.0) -> None:
        self.w = sg.Param(np.full((2,), seed, np.float32))
        self.b = sg.Param(np.full((1,), seed, np.float32))


def record(fn: Callable[[], Any]) -> tuple[Any, list[tuple]]:
    """``fn()`` and the log of the user calls it made (an error: it, and the log so far)."""
    LOG.clear()
    _NUM.clear()
    _ALIVE.clear()
    _CALLS.update(create=0, set=0)
    try:
        out = fn()
    except Boom as e:
        out = e
    return out, list(LOG)


# -- structures ---------------------------------------------------------------------------


def mlp(n: int = 5) -> Box:
    return Box(layers=[CB(float(i)) for i in range(n)], head=Linear(9.0))


def nested() -> Box:
    """Callback nodes in callback nodes (and in lists of them), in blocks of one shape."""
    def block(i: float) -> CB:
        return CB(i, inner=CB(i + 0.5, deep=CB(i + 0.7)), pair=[CB(i + 1), CB(i + 2)])
    return Box(blocks=[block(float(i)) for i in range(3)], solo=block(7.0), other=block(8.0))


def mixed() -> Box:
    """Callback layers next to ``sg.Node`` layers, in blocks and in one list."""
    blocks = [Box(cb=CB(float(i)), lin=Linear(float(i)), both=[Linear(1.0), CB(2.0)]) for i in range(4)]
    return Box(blocks=blocks, alt=[CB(1.0), Linear(2.0), CB(3.0), Linear(4.0)],
               cbs=[CB(5.0, sub=Linear(5.5)) for _ in range(3)])


def tied() -> Box:
    m = mlp(6)
    m.layers[4].items["w"] = m.layers[1].items["w"]
    return m


def shared() -> Box:
    m = mlp(6)
    m.again = m.layers[2]
    return m


def cycle() -> Box:
    m = mlp(6)
    m.layers[3].items["up"] = m
    return m


def ragged() -> Box:
    """A list whose items stop being of one shape: an extra key, then a Node."""
    m = mlp(6)
    m.layers[3].items["extra"] = sg.Param(np.zeros(3, np.float32))
    m.layers.append(Linear(3.0))
    m.layers += [CB(7.0), CB(8.0)]
    return m


def at_root() -> list[Any]:
    """The root itself a list of callback nodes."""
    return [CB(float(i)) for i in range(4)]


def chain(n: int = 8, key: str = "next") -> Box:
    """Callback nodes nested ``n`` deep under ``key`` ('next' sorts before 'w': each link
    has a state after the rest of the chain; 'z' sorts last: none), metadata per link."""
    tail = CB(-1.0)
    node = tail
    for i in range(n):
        node = CB(float(i), meta=("cb", i % 3), **{key: node})
    return Box(pre=Linear(1.0), chain=node, post=[CB(7.0), CB(8.0)])


def node_chain(n: int = 8) -> Box:
    """``sg.Node`` links, each holding a callback node (an outlined occurrence in a link)."""
    node = Box(cb=CB(-1.0))
    for i in range(n):
        node = Box(cb=CB(float(i)), lin=Linear(float(i)), nxt=node)
    return node


def node_chain_after(n: int = 8, lean: bool = False) -> Box:
    """``sg.Node`` links (the next under ``b_nxt``), each holding a callback node before the
    next link (``a_cb``), and a Linear and a callback node after it (``c_lin``, ``z_cb``):
    the reference makes those last two, and fills them, past the tail's, last link first;
    metadata and statics per link. ``lean``: the callback node after the next link only."""
    node = Box(z=CB(-1.0))
    for i in range(n):
        after = CB(i + 0.5, meta=("after", i % 3), act=f"act{i % 4}")
        node = Box(b_nxt=node, z_cb=after) if lean else \
            Box(a_cb=CB(float(i)), b_nxt=node, c_lin=Linear(float(i)), z_cb=after)
    return node


STRUCTURES: dict[str, Callable[[], Any]] = {
    "mlp": mlp, "nested": nested, "mixed": mixed, "tied weight": tied, "shared layer": shared,
    "cycle": cycle, "not homogeneous": ragged, "root list": at_root,
    "chain": chain, "chain, none after": lambda: chain(key="z"), "node chain": node_chain,
    "node chain, callback nodes after the next link": node_chain_after,
}


def _source(gd: sg.GraphDef) -> str:
    built = dispatch._unflat.get(gd)
    assert built is not None, sg.cache_info()
    return built.source


def served(impl: Any, gd: sg.GraphDef, sm: sg.StateMap) -> tuple[Any, list[tuple]]:
    """One unflatten through ``impl``, recorded; compiled paths: served by generated code,
    the outlined one by outlined code."""
    if not impl.compiled:
        return record(lambda: sg.generic.unflatten(gd, sm))
    sg.unflatten(gd, sm)
    sg.unflatten(gd, sm)  # (compiled by the first or the second call)
    hits, outlined = sg.cache_info()["unflatten_hits"], outlined_unflatten_hits()
    got = record(lambda: sg.unflatten(gd, sm))
    assert sg.cache_info()["unflatten_hits"] == hits + 1, sg.cache_info()
    if impl.name == "outlined":
        assert outlined_unflatten_hits() == outlined + 1, _source(gd)
    return got


def same_as_reference(got: tuple[Any, list[tuple]], gd: sg.GraphDef, sm: sg.StateMap) -> None:
    """The reference's log of user calls, and a graph that flattens as the reference's."""
    out, log = got
    ref, ref_log = record(lambda: sg.generic.unflatten(gd, sm))
    assert log == ref_log
    if isinstance(ref, Exception):
        assert type(out) is type(ref) and str(out) == str(ref)
        return
    assert_same_flatten(sg.generic.flatten(out), sg.generic.flatten(ref))


# -- tests --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(STRUCTURES))
def test_unflatten_calls_user_code_as_the_reference(impl: Any, name: str) -> None:
    """Every create_empty and set_key in the reference's order, each set_key seeing its
    child as the reference's does (a callback child made, not filled yet)."""
    m = STRUCTURES[name]()
    gd, sm = sg.generic.flatten(m)
    same_as_reference(served(impl, gd, sm), gd, sm)


@pytest.fixture
def outlined() -> Iterator[None]:
    saved = dispatch.CONFIG.outline_min
    sg.configure(outline_min=2)
    try:
        yield
    finally:
        dispatch.CONFIG.outline_min = saved


class _Outlined:
    name = "outlined"
    compiled = True


def test_callback_layers_are_made_then_filled_by_loops(outlined: None) -> None:
    gd, sm = sg.generic.flatten(mlp(7))
    same_as_reference(served(_Outlined(), gd, sm), gd, sm)
    src = _source(gd)
    assert "7 of one shape: their objects" in src and "7 of one shape: filled" in src


def test_nested_shapes_have_create_and_fill_functions(outlined: None) -> None:
    gd, sm = sg.generic.flatten(nested())
    same_as_reference(served(_Outlined(), gd, sm), gd, sm)
    src = _source(gd)
    assert "_create(" in src and "_fill(" in src


def test_explain_says_where_two_phase_builders_and_loops_are(outlined: None) -> None:
    """explain names each two-phase builder's call sites and each loop's list by the parent
    node's class and key, as for the other builders (not by table entry)."""
    gd, sm = sg.generic.flatten(nested())
    same_as_reference(served(_Outlined(), gd, sm), gd, sm)
    text = sg.explain(gd, max_lines=None)
    section = text.split("Outlined unflatten")[1].split("Generated")[0]
    assert "entry" not in section
    assert "(CB): the shape occurs 5 times; called at Box.other; Box.solo" in section
    assert "a loop over Box.blocks[0..2]: 3 x CB" in section
    assert "CB.pair[0..1]: 2 x CB" in section
    gd, sm = sg.generic.flatten(mlp(7))
    same_as_reference(served(_Outlined(), gd, sm), gd, sm)
    assert "a loop over Box.layers[0..6]: 7 x CB (made, then filled" in sg.explain(gd)


def _meta(n: CB) -> None:
    n.meta = ("cb", 3)


def _static(n: CB) -> None:
    n.items["act"] = "gelu"


def _extra_key(n: CB) -> None:
    n.items["z"] = sg.Param(np.zeros(1, np.float32))


def _odd_key(n: CB) -> None:
    n.items[("t", 1)] = n.items.pop("b")


def _int_key(n: CB) -> None:
    n.items[1] = n.items.pop("w")


def _true_key(n: CB) -> None:
    n.items[True] = n.items.pop("w")


MUTATIONS: dict[str, Callable[[CB], None]] = {
    "metadata": _meta, "static": _static, "extra key": _extra_key, "tuple key": _odd_key,
    "int key": _int_key, "True key": _true_key,
}


@pytest.mark.parametrize("name", sorted(MUTATIONS))
@pytest.mark.parametrize("i", range(4))
def test_each_occurrence_mutated(outlined: None, name: str, i: int) -> None:
    """One layer's metadata, static, keys changed: its own values and user calls, the
    others' unchanged (statics and metadata are read per occurrence from the GraphDef)."""
    m = mlp(4)
    MUTATIONS[name](m.layers[i])
    gd, sm = sg.generic.flatten(m)
    same_as_reference(served(_Outlined(), gd, sm), gd, sm)


@pytest.mark.parametrize("kind", ["create", "set"])
@pytest.mark.parametrize("at", [1, 3, 5])
@pytest.mark.parametrize("name", ["mlp", "nested", "mixed", "chain", "node chain",
                                  "node chain, callback nodes after the next link"])
def test_user_code_raising_midway(impl: Any, kind: str, at: int, name: str) -> None:
    """create_empty or set_key raising: the same error after the same calls as the
    reference's, and the values given (the user's objects) untouched."""
    m = STRUCTURES[name]()
    gd, sm = sg.generic.flatten(m)
    before = [(v, np.array(v)) for v in sm.values()]
    served(impl, gd, sm)  # (warm: compiled, or the reference's)
    FAIL[kind] = at
    try:
        got = record(lambda: sg.unflatten(gd, sm) if impl.compiled else sg.generic.unflatten(gd, sm))
        assert isinstance(got[0], Boom)
        same_as_reference(got, gd, sm)
    finally:
        FAIL.clear()
    assert all(a is b and np.array_equal(a, c) for (a, c), b in zip(before, sm.values(), strict=True))
    assert_same_flatten(sg.generic.flatten(m), (gd, sm))


def test_reregistered_after_compilation(outlined: None) -> None:
    """Registering the class again (other callbacks) after the outlined unflatten was
    compiled: the new callbacks run, as in the reference."""
    gd, sm = sg.generic.flatten(mlp(5))
    served(_Outlined(), gd, sm)

    def create2(meta: Any) -> CB:
        n = _create(meta)
        LOG.append(("create2", _num(n)))
        return n

    try:
        sg.register_graph_node_type(CB, _flatten, _set_key, CALLBACKS[2], create2, CALLBACKS[4])
        got = served(_Outlined(), gd, sm)
        assert ("create2", 1) in got[1]
        same_as_reference(got, gd, sm)
    finally:
        sg.register_graph_node_type(CB, *CALLBACKS)
    got = served(_Outlined(), gd, sm)
    assert not any(e[0] == "create2" for e in got[1])
    same_as_reference(got, gd, sm)


def test_ten_thousand_callback_layers_unflatten_outlined() -> None:
    """The default configuration: ten thousand callback layers are served by outlined code
    (no max_steps cliff), in the reference's order."""
    gd, sm = sg.generic.flatten(mlp(10_000))
    same_as_reference(served(_Outlined(), gd, sm), gd, sm)


# -- chains next to callback nodes ----------------------------------------------------------


class Link(sg.Node):
    def __init__(self, child: Any, seed: float) -> None:
        self.child = child
        self.w = sg.Param(np.full((1,), seed, np.float32))


class LinkE(sg.Node):
    """A link with a node after the next link in the table (``e`` sorts after ``child``)."""

    def __init__(self, child: Any, seed: float) -> None:
        self.child = child
        self.e = Box(p=sg.Param(np.full((1,), seed, np.float32)))


def with_chain(n: int, kind: str) -> Box:
    """Callback layers, and a chain of ``n`` nested links next to them: of Links ending in a
    callback node (``tail``), of LinkEs ending in None (``after``) or in a callback node that
    sees the whole graph (``after-cb``: the links' nodes after the rest of the chain must be
    filled after it, as the reference does), or a nest of lists (``nest``; of Boxes,
    ``nest-node``: not looped)."""
    m = mlp(4)
    if kind in ("nest", "nest-node"):
        x: Any = []
        for i in range(n):
            p = sg.Param(np.full((1,), i, np.float32))
            x = [x, p if kind == "nest" else Box(p=p)]
        m.nest = x
        m.layers[0].items["back"] = m  # (its set_key sees the whole graph, the nest's nodes too)
        return m
    c: Any = CB(5.0, back=m) if kind in ("tail", "after-cb") else None
    for i in range(n):
        c = Link(c, float(i)) if kind == "tail" else LinkE(c, float(i))
    m.chain = c
    return m


@pytest.mark.parametrize("kind", ["tail", "after", "after-cb", "nest", "nest-node"])
@pytest.mark.parametrize("n", [3, 40])
def test_chains_next_to_callback_nodes(outlined: None, kind: str, n: int) -> None:
    """A chain's one-phase loop makes and fills its links out of table order: used only where
    no user call sees it (each set_key here sees the whole graph reachable from its child),
    else a chain of nodes is loops in two phases (the reference's order)."""
    gd, sm = sg.generic.flatten(with_chain(n, kind))
    DEEP[0] = True
    try:
        same_as_reference(served(_Outlined(), gd, sm), gd, sm)
    finally:
        DEEP[0] = False
    src = _source(gd)
    looped = "nested links" in src or "nested containers of one shape" in src
    assert looped == (kind != "nest-node"), src
    assert ("nested links: filled" in src) == (kind == "after-cb"), src


def test_ten_thousand_links_next_to_callback_nodes() -> None:
    """The default configuration: a chain of 10 000 links and a nest of 10 000 lists next
    to callback layers are loops (no max_steps cliff), in the reference's order."""
    for kind in ("tail", "nest"):
        gd, sm = sg.generic.flatten(with_chain(10_000, kind))
        same_as_reference(served(_Outlined(), gd, sm), gd, sm)


def test_nnx_modules_next_to_callback_nodes(outlined: None) -> None:
    """NNX Modules (foreign, their per-call context passed to the two-phase builders) next
    to callback layers: outlined, the reference's user calls and graph."""
    nnx = pytest.importorskip("flax.nnx")

    class Net(nnx.Module):
        def __init__(self, rngs: Any) -> None:
            self.layers = nnx.List([nnx.Linear(2, 2, rngs=rngs) for _ in range(3)])
            self.cbs = [CB(float(i)) for i in range(3)]
            self.l2 = nnx.Linear(2, 2, rngs=rngs)
            self.l3 = nnx.Linear(2, 2, rngs=rngs)

    gd, sm = sg.generic.flatten(Net(nnx.Rngs(0)))
    same_as_reference(served(_Outlined(), gd, sm), gd, sm)
    assert "_create(" in _source(gd)


@pytest.mark.parametrize("name", ["chain", "chain, none after", "node chain",
                                  "node chain, callback nodes after the next link"])
def test_chains_are_loops_in_the_reference_order(outlined: None, name: str) -> None:
    """A chain of nested links holding callback nodes: one loop making the links (each
    link's objects in table order), one making the states after the rest of the chain
    (last link first), one filling the links; the reference's log of user calls."""
    gd, sm = sg.generic.flatten(STRUCTURES[name]())
    same_as_reference(served(_Outlined(), gd, sm), gd, sm)
    assert "8 nested links: filled, each in table order" in _source(gd)


@pytest.mark.parametrize("key", ["next", "z"])
def test_ten_thousand_nested_callback_nodes_unflatten_outlined(key: str) -> None:
    """The default configuration: a chain of ten thousand callback nodes is served by
    outlined code (a loop: no max_steps cliff), in the reference's order."""
    gd, sm = sg.generic.flatten(chain(10_000, key))
    same_as_reference(served(_Outlined(), gd, sm), gd, sm)
    src = _source(gd)
    assert "10000 nested links: filled" in src and len(src.splitlines()) < 150


@pytest.mark.parametrize("name", ["n", "t", "_", "src", "at0", "at1", "reversed"])
def test_a_chain_link_class_named_like_the_loops_names(outlined: None, name: str) -> None:
    """A chain's links of a class named like what its loops' units take (count, counters'
    starts) or its fill loop reads (``t``, ``reversed``): bound under another name, the
    reference's log of user calls and graph."""
    cls = type(name, (sg.Node,), {"__init__": lambda self, **kw: vars(self).update(kw)})
    node: Any = cls(cb=CB(-1.0))
    for i in range(8):
        node = cls(cb=CB(float(i)), lin=Linear(float(i)), nxt=node)
    gd, sm = sg.generic.flatten(node)
    same_as_reference(served(_Outlined(), gd, sm), gd, sm)
    assert "8 nested links: filled, each in table order" in _source(gd)


def test_nodes_after_the_next_link_are_filled_past_the_tail(outlined: None) -> None:
    """Links holding callback nodes after the next link: made by a loop past the tail's
    objects and filled by a loop past the tail's fills, last link first (the reference's
    table order; filled with the links, their set_key calls would come before the tail's)."""
    gd, sm = sg.generic.flatten(node_chain_after())
    got = served(_Outlined(), gd, sm)
    same_as_reference(got, gd, sm)
    log = got[1]
    creates = [(e[1], e[2]) for e in log if e[0] == "create"]
    k = next(k for k, (_, meta) in enumerate(creates) if meta[0] == "after")
    tail = creates[k - 1][0]  # (the last made before the links' nodes after the rest)
    after = {num for num, meta in creates if meta[0] == "after"}
    sets = [e[1] for e in log if e[0] == "set"]
    last_tail = max(j for j, num in enumerate(sets) if num == tail)
    assert last_tail < min(j for j, num in enumerate(sets) if num in after)
    # (made, each link's metadata its own, the last link, innermost, first)
    assert [meta for _, meta in creates if meta[0] == "after"] == [("after", i % 3) for i in range(8)]
    src = _source(gd)
    assert "8 nested links: filled, each in table order" in src
    assert "of one shape: filled" in src, src


def test_ten_thousand_links_with_callback_nodes_after_the_next_link() -> None:
    """The default configuration: ten thousand links holding callback nodes after the next
    link (made and filled past the tail's) are served by outlined code (loops: no max_steps
    cliff), in the reference's order."""
    gd, sm = sg.generic.flatten(node_chain_after(10_000, lean=True))
    same_as_reference(served(_Outlined(), gd, sm), gd, sm)
    src = _source(gd)
    assert "10000 nested links: filled" in src and len(src.splitlines()) < 250, src


@given(order=st.permutations(["nxt", "cb", "lin", "cb2"]), n=st.integers(3, 7),
       tail_cb=st.booleans())
def test_any_link_layout_in_the_reference_order(order: list[str], n: int, tail_cb: bool) -> None:
    """Links holding callback nodes and a Linear before or after the next link, in any key
    order (per link its own metadata and statics), a callback node or none in the tail:
    outlined, the reference's log of user calls and graph."""
    keys = {role: f"{chr(97 + p)}_{role}" for p, role in enumerate(order)}
    node: Any = Box(t=CB(-1.0)) if tail_cb else None
    for i in range(n):
        node = Box(**{keys["nxt"]: node, keys["cb"]: CB(float(i), meta=("cb", i % 2)),
                      keys["lin"]: Linear(float(i)), keys["cb2"]: CB(i + 0.5, act=f"act{i % 3}")})
    gd, sm = sg.generic.flatten(Box(pre=CB(9.0), chain=node))
    saved = dispatch.CONFIG.outline_min
    sg.configure(outline_min=2)
    try:
        same_as_reference(served(_Outlined(), gd, sm), gd, sm)
        assert "nested links" in _source(gd)
    finally:
        dispatch.CONFIG.outline_min = saved
