"""The unflatten planner's shape scan taken from the flatten planner's (``shapes.find_shapes``
with the scan the flatten kept for the same GraphDef) finds what a scan of its own finds,
and the unflatten function generated from it is the same text.

Random graphs of ``fuzz_outline.build`` (repeated shapes, hostile statics and keys, chains
of links and of containers, callback nodes and chains of them, bare arrays), mutated (ties,
shared nodes, cycles, one occurrence changed); nodes holding custom JAX pytrees (namedtuples,
registered classes with and without aux data); wide runs of sibling states (attributes,
dict values, list and tuple items); callback chains whose links read a state's value by
user code; NNX and BrainState models. Where the derivation is refused (a callback node
where the scan asked outlines none; a state class changed since the flatten's scan) the
unflatten scans on its own, and finds the same."""

from __future__ import annotations

import collections
import gc
import random
import sys
import weakref
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import specgraph as sg
from specgraph._ir import NodeEdge, NodeSpec
from specgraph.codegen import analysis, pipeline, shapes
from specgraph.codegen.flatten_plan import Declined, plan_flatten
from specgraph.codegen.unflatten_plan import plan_unflatten
from specgraph.runtime.cache import CONFIG

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import fuzz_outline as fo
import models

NO_LIMIT = 10**9


def _fields(sh: shapes.Shapes) -> tuple:
    sc = sh.scan
    return (sh.shapes, sh.shape_of, sh.slot_lo, sh.key_of, list(sh.size.items()),
            (sc.user, sc.user_reads, sc.with_arrays) if sc is not None else None)


def _chains(gd: sg.GraphDef, sh: shapes.Shapes, cb: bool) -> tuple:
    """What the unflatten planner finds next with those shapes (its scan's keys, users and
    sizes read again): the chains of nodes and of containers (edges by identity)."""
    def flat(chains: dict[int, shapes.Chain]) -> list[Any]:
        return [(k, c.head, c.n, c.tail, c.links, id(c.head_edge), id(c.tail_edge),
                 [id(e) for e in c.rec_edges]) for k, c in chains.items()]
    return (flat(shapes.find_chains(gd, 2, set(), set(), sh, user=cb)),
            flat(shapes.find_container_chains(gd, 2, set(), set(), sh)))


def _unflatten_source(gd: sg.GraphDef, outline_min: int) -> str:
    try:
        plan = plan_unflatten(gd, NO_LIMIT, outline_min)
    except Declined as e:
        return f"declined: {e}"
    return pipeline.render("unflatten", plan)


def _own(gd: sg.GraphDef, outline_min: int, cb: bool) -> tuple:
    sh = shapes.find_shapes(gd, outline_min, set(), set(), foreign=True, by_value=False, callbacks=cb)
    return _fields(sh), _chains(gd, sh, cb)


def check(gd: sg.GraphDef, outline_min: int) -> dict[bool, bool]:
    """Unflatten shapes (and the chains found with them) and source with and without the
    flatten's scan: the same. Per ``callbacks`` (False, True), whether the derivation was
    taken (all False: the flatten kept no scan, it planned without outlining)."""
    facts = analysis.kept(gd)
    assert facts is not None
    facts.pop(shapes._FLATTEN_SCAN, None)
    own = {cb: _own(gd, outline_min, cb) for cb in (False, True)}
    assert shapes._FLATTEN_SCAN not in facts  # (the unflatten's scan is not kept)
    source = _unflatten_source(gd, outline_min)
    try:
        plan_flatten(gd, NO_LIMIT, outline_min)  # keeps its scan for this GraphDef
    except Declined:
        pass
    known = facts.get(shapes._FLATTEN_SCAN)
    if known is None:
        return {False: False, True: False}
    taken = {}
    for cb in (False, True):
        sc = shapes._Scan(gd, set(), set(), True, False, False, cb)
        taken[cb] = shapes._derivable(sc, known)
        if taken[cb]:  # the derivation itself, without its safety net (a scan of its own)
            sh = shapes._find_shapes(gd, outline_min, sc, known)
            assert (_fields(sh), _chains(gd, sh, cb)) == own[cb]
        assert _own(gd, outline_min, cb) == own[cb]  # (find_shapes, derived where it may)
        assert facts.get(shapes._FLATTEN_SCAN) is known
    assert _unflatten_source(gd, outline_min) == source
    return taken


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), mutations=st.integers(0, 4), outline_min=st.sampled_from([2, 3, 64]))
def test_the_derived_scan_of_random_graphs_is_the_unflattens_own(seed: int, mutations: int,
                                                                    outline_min: int) -> None:
    rng = random.Random(seed)
    saved = CONFIG.outline_min
    try:
        m = fo.build(rng, deep=False)
        for _ in range(mutations):
            fo.mutate(rng, m)  # (ties, shared nodes, cycles, class hooks, registrations, ...)
        gd, _ = sg.generic.flatten(m)
        check(gd, outline_min)
    finally:
        fo.unhook()
        CONFIG.outline_min = saved


def _family(name: str) -> models.Family:
    if name not in models.FAMILIES:
        pytest.skip(f"{name} is not installed")
    return models.FAMILIES[name]


@pytest.mark.parametrize("family", ["specgraph", "nnx", "brainstate"])
@pytest.mark.parametrize("build", [
    lambda f: models.build_mlp(f, 70, 4),
    lambda f: models.build_counted_mlp(f, 70, 4),
    lambda f: models.build_transformer(f, 6, 4, 8),
    lambda f: models.build_deepchain(f, 80),
    lambda f: models.build_tied(f, 4),
    lambda f: f.mlp([f.linear(4, 4, ("t", i), w=None) for i in range(3)] * 30),  # one layer 30 times
], ids=["mlp", "counted", "stack", "chain", "tied", "shared"])
def test_the_derived_scan_of_models_is_the_unflattens_own(family: str, build: Any) -> None:
    m = build(_family(family))
    gd, _ = sg.generic.flatten(m)
    assert check(gd, 3) == {False: True, True: True}  # (the flatten kept its scan, derived from)


def test_a_dispatched_unflatten_derives_its_scan_from_the_flatten(monkeypatch: pytest.MonkeyPatch) -> None:
    m = models.build_mlp(models.FAMILIES["specgraph"], 200, 4)
    gd, sm = sg.flatten(m)
    gd, sm = sg.flatten(m)
    scanned: list[int] = []
    inner = shapes._Scan.scan

    def scan(self: Any, spec: Any, rec: int = -1) -> Any:
        scanned.append(spec.index)
        return inner(self, spec, rec)

    monkeypatch.setattr(shapes._Scan, "scan", scan)
    sg.unflatten(gd, sm)
    sg.unflatten(gd, sm)
    assert sg.cache_info()["compiled_unflattens"] == 1
    # One Linear scanned for the 200 of one key, and the MLP itself: not every node.
    assert 0 < len(scanned) <= 5, scanned


class _Head(sg.Node):
    def __init__(self) -> None:
        self.w = sg.Param(np.ones(2, np.float32))

    def score(self, x: Any) -> Any:
        return x


class _Model(sg.Node):
    def __init__(self) -> None:
        self.heads = [_Head() for _ in range(4)]
        self.cb = self.heads[0].score  # a static reaching a node: the caches hold it weakly


def test_the_kept_scan_of_an_equal_graphdef_does_not_keep_the_users_objects_alive() -> None:
    m = _Model()
    sg.flatten(m)
    gd, _ = sg.flatten(m)  # compiled from a twin of gd (the bound method held weakly)
    (key,) = [k for k in analysis._memo.keys() if k == gd]
    assert key is not gd and shapes._FLATTEN_SCAN in analysis._memo[key]
    del key
    plan_flatten(gd, NO_LIMIT, 2)  # (as explain does) planned from the user's own GraphDef
    plan_unflatten(gd, NO_LIMIT, 2)
    assert analysis.kept(gd) is None  # the memo entry is the twin's: nothing of gd kept there
    alive = weakref.ref(m.heads[0])
    del m, gd, _
    gc.collect()
    assert alive() is None, "a kept scan held the user's GraphDef's statics"


# -- custom pytrees, wide runs, callback chains --------------------------------------------------


WB = collections.namedtuple("WB", "w b")


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
    """A registered class with aux data (its tag: a value, or an object compared by identity)."""

    def __init__(self, a: Any, b: Any, tag: Any = "relu") -> None:
        self.a, self.b, self.tag = a, b, tag

    def tree_flatten(self) -> tuple[tuple[Any, Any], Any]:
        return (self.a, self.b), self.tag

    @classmethod
    def tree_unflatten(cls, aux: Any, ch: Any) -> Tagged:
        return cls(*ch, tag=aux)


@jax.tree_util.register_pytree_node_class
class Seq:
    """A registered class without aux data whose arity varies."""

    def __init__(self, *items: Any) -> None:
        self.items = list(items)

    def tree_flatten(self) -> tuple[tuple[Any, ...], None]:
        return tuple(self.items), None

    @classmethod
    def tree_unflatten(cls, aux: Any, ch: Any) -> Seq:
        return cls(*ch)


MARK = object()


class Box(sg.Node):
    def __init__(self, **attrs: Any) -> None:
        vars(self).update(attrs)


class Buffer(sg.State):
    pass


class Lazy(sg.State):
    """A state whose value read is user code (a ``value`` property)."""

    @property
    def value(self) -> Any:
        return vars(self)["_v"]

    @value.setter
    def value(self, v: Any) -> None:
        vars(self)["_v"] = v


def _p(i: float, cls: type = sg.Param, **meta: Any) -> Any:
    return cls(np.full((1,), i, np.float32), **meta)


def _holder(kind: str, i: int) -> Any:
    a, b = _p(i), _p(-i)
    if kind == "mixed":
        kind = ["nt", "pair", "tagged", "seq", "tagged obj"][i % 5]
    if kind == "nt":
        return WB(a, b)
    if kind == "pair":
        return Pair(a, b)
    if kind == "tagged":
        return Tagged(a, b, "relu" if i % 3 else 1)  # (two aux data: two shapes there)
    if kind == "tagged obj":
        return Tagged(a, b, MARK if i % 2 else object())  # (aux data by identity)
    if kind == "seq":
        return Seq(*[a, b][: 1 + i % 2])  # (two arities)
    if kind == "nested":  # a namedtuple of a registered class, a list and a node
        return WB(Pair(a, [b, _p(i + 0.5)]), Box(s=_p(i + 0.25), t=Tagged(_p(i), _p(i), "x")))
    raise AssertionError(kind)


def pytree_model(kind: str, n: int = 9) -> Box:
    return Box(layers=[Box(p=_holder(kind, i), n=i % 2) for i in range(n)],
               d={"a": Box(p=_holder(kind, 20)), "b": Box(p=_holder(kind, 21))},
               t=(Box(p=_holder(kind, 22)), Box(p=_holder(kind, 23))), head=Box(p=_holder(kind, 9)))


@pytest.mark.parametrize("outline_min", [2, 3])
@pytest.mark.parametrize("kind", ["nt", "pair", "tagged", "tagged obj", "seq", "nested", "mixed"])
def test_the_derived_scan_of_nodes_holding_custom_pytrees(kind: str, outline_min: int) -> None:
    gd, _ = sg.generic.flatten(pytree_model(kind))
    assert check(gd, outline_min) == {False: True, True: True}
    # (outlined with callbacks, as the unflatten planner asks here: custom pytrees are
    # user code, built in two phases, in their node's fill)
    sh = shapes.find_shapes(gd, outline_min, set(), set(), foreign=True, by_value=False, callbacks=True)
    assert sh.shapes and sh.scan is not None and all(i in sh.scan.user for i in sh.shape_of)


def _wide(layout: str, n: int, make: Any) -> Box:
    b = Box()
    items = [make(i) for i in range(n)]
    if layout == "attrs":
        for i, x in enumerate(items):
            setattr(b, f"p{i:03d}", x)
    elif layout == "dict":
        b.d = {f"k{i:03d}": x for i, x in enumerate(items)}
    elif layout == "list":
        b.d = items
    else:
        b.d = tuple(items)
    b.z_static = 3
    b.z_state = _p(-1.0, Buffer)
    return b


MAKERS = {
    "param": lambda i: _p(i),
    "meta": lambda i: _p(i, sharding=(None, "model")),
    "buffer": lambda i: _p(i, Buffer),
    "lazy": lambda i: _p(i, Lazy),  # (a value read by user code: user_reads)
    "two kinds": lambda i: _p(i) if i < 20 else _p(i, Buffer),
}


@pytest.mark.parametrize("make", list(MAKERS))
@pytest.mark.parametrize("layout", ["attrs", "dict", "list", "tuple"])
def test_the_derived_scan_of_wide_runs_of_states(layout: str, make: str) -> None:
    m = Box(bags=[_wide(layout, 40, MAKERS[make]) for _ in range(3)], one=_wide(layout, 40, MAKERS[make]))
    gd, _ = sg.generic.flatten(m)
    assert check(gd, 2) == {False: True, True: True}
    if make == "lazy":
        facts = analysis.kept(gd)
        assert facts is not None and facts[shapes._FLATTEN_SCAN].user_reads


class CL:
    """A callback layer: its items in a dict, sorted by key."""

    def __init__(self, num: int, **items: Any) -> None:
        self.num = num
        self.items: dict[str, Any] = {"w": _p(num), "b": _p(num + 0.5), "din": 2, **items}


sg.register_graph_node_type(
    CL, lambda n: ([(k, n.items[k]) for k in sorted(n.items)], None),
    lambda n, k, v: n.items.__setitem__(k, v), lambda n, k: n.items.pop(k),
    lambda meta: CL.__new__(CL), lambda n: n.items.clear())
# (create_empty leaves ``items`` unset: set_key of such an object fails; not called here)

#: what each link holds besides the next one (under ``key``)
CHAINS: dict[str, tuple[str, Any]] = {
    "next": ("next", lambda i: {}),
    "a_next": ("a_next", lambda i: {}),
    "after": ("next", lambda i: {"z": _p(i), "zz": (1, "x")}),
    "before": ("z_next", lambda i: {"c": [_p(i), 3], "d": {"e": 1.5}}),
    "inner cb": ("z_next", lambda i: {"i": CL(1000 + i)}),
    "lazy after, in a node": ("next", lambda i: {"z": Box(s=_p(i, Lazy))}),
    "lazy before, deeper": ("z_next", lambda i: {"a": Box(b=Box(s=_p(i, Lazy)))}),
    "pytree": ("next", lambda i: {"t": WB(_p(i), Pair(_p(i), _p(-i)))}),
    "array": ("next", lambda i: {"arr": np.full((2,), i, np.float32)}),
}


@pytest.mark.parametrize("n", [3, 40])
@pytest.mark.parametrize("kind", list(CHAINS))
def test_the_derived_scan_of_callback_chains(kind: str, n: int) -> None:
    key, extra = CHAINS[kind]
    x: Any = CL(-1)
    for i in range(n):
        c = CL(i, **extra(i))
        c.items[key] = x
        x = c
    m = Box(x=x, after=_p(1.0), others=[CL(i) for i in range(4)])
    gd, _ = sg.generic.flatten(m)
    # (without callbacks the derivation is refused: a callback node is in the structure)
    assert check(gd, 2) == {False: False, True: True}


def test_no_derivation_without_callbacks_where_a_callback_node_is() -> None:
    """The flatten's scan outlines callback nodes and nodes holding custom pytrees alike
    (``user``); a scan without callback node types outlines the latter only: refused. Taken
    anyway, the derivation meets a callback node it cannot outline: the safety net."""
    m = Box(cbs=[CL(i) for i in range(4)], pts=[Box(p=_holder("nt", i)) for i in range(4)])
    gd, _ = sg.generic.flatten(m)
    assert check(gd, 2) == {False: False, True: True}
    facts = analysis.kept(gd)
    assert facts is not None
    known = facts[shapes._FLATTEN_SCAN]
    assert not shapes._derivable(shapes._Scan(gd, set(), set(), True, False, False, False), known)
    with pytest.raises(shapes._NotDerived):
        shapes._find_shapes(gd, 2, shapes._Scan(gd, set(), set(), True, False, False, False), known)
    # Custom pytrees alone (no callback node): derived without callbacks too.
    gd, _ = sg.generic.flatten(Box(pts=[Box(p=_holder("mixed", i)) for i in range(6)]))
    assert check(gd, 2) == {False: True, True: True}


class Later(sg.State):
    """A plain state class that gets a ``value`` property after the flatten's scan."""


def test_a_state_class_changed_since_the_flatten_scanned_is_scanned_again() -> None:
    m = Box(bs=[Box(s=_p(i, Later), t=_p(i)) for i in range(4)])
    gd, _ = sg.generic.flatten(m)
    plan_flatten(gd, NO_LIMIT, 2)
    facts = analysis.kept(gd)
    assert facts is not None
    known = facts[shapes._FLATTEN_SCAN]
    assert shapes._derivable(shapes._Scan(gd, set(), set(), True, False, False, True), known)
    Later.value = property(lambda self: vars(self)["value"])  # type: ignore[assignment]
    try:
        assert not shapes._derivable(shapes._Scan(gd, set(), set(), True, False, False, True), known)
        got = _own(gd, 2, True)  # (the flatten's scan is kept: refused, scanned again)
        assert facts.get(shapes._FLATTEN_SCAN) is known
        facts.pop(shapes._FLATTEN_SCAN)
        own = _own(gd, 2, True)
        assert got == own and own[0][5][1]  # (and the states' reads are user code now)
    finally:
        del Later.value


# -- a chain's link split from what find_shapes found (find_chains scans it no second time) ----


def check_split(gd: sg.GraphDef, outline_min: int) -> int:
    """For the flatten's scan and the unflatten's (with and without callbacks), every node
    and every node child as the next link: ``_Scan.split`` answers what a scan with that
    ``rec`` answers (tokens, slots and entries, the user flags, the node key), or nothing;
    and the chains found are those found scanning every link. How many splits answered."""
    answered = 0
    for kw in ({"flatten_only": True}, {"by_value": False, "callbacks": False},
               {"by_value": False, "callbacks": True}):
        sh = shapes.find_shapes(gd, outline_min, set(), set(), foreign=True, **kw)
        sc = sh.scan
        if sc is None:
            continue
        for spec in gd.table:
            if type(spec) is not NodeSpec:
                continue
            for rec, c in enumerate(spec.children):
                if type(c) is not NodeEdge:
                    continue
                got = sc.split(spec, rec)
                if got is None:
                    continue
                flags = (sc.last_user, sc.last_user_after)
                assert sc.scan(spec, rec) == got[:2]
                assert (sc.last_user, sc.last_user_after) == flags
                nk = sc.node_key_of.get(spec.index, shapes._REC)
                if nk is shapes._REC:
                    nk = shapes._node_key(spec, sc.equal, sc.by_value)
                assert got[2] == nk
                answered += 1
        user = kw.get("callbacks", True)
        for ordered in ((False, True) if user else (False,)):
            with_split = _chains_of(gd, sh, user, ordered)
            split = shapes._Scan.split
            try:
                shapes._Scan.split = lambda self, spec, rec: None  # type: ignore[method-assign]
                assert _chains_of(gd, sh, user, ordered) == with_split
            finally:
                shapes._Scan.split = split  # type: ignore[method-assign]
    return answered


def _chains_of(gd: sg.GraphDef, sh: shapes.Shapes, user: bool, ordered: bool) -> list[Any]:
    return [(k, c.head, c.n, c.tail, c.links)
            for k, c in shapes.find_chains(gd, 2, set(), set(), sh, user=user, ordered=ordered).items()]


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), mutations=st.integers(0, 3), outline_min=st.sampled_from([2, 64]))
def test_split_links_of_random_graphs_are_their_scans(seed: int, mutations: int, outline_min: int) -> None:
    rng = random.Random(seed)
    try:
        m = fo.build(rng, deep=False)
        for _ in range(mutations):
            fo.mutate(rng, m)
        gd, _ = sg.generic.flatten(m)
        check_split(gd, outline_min)
    finally:
        fo.unhook()


@pytest.mark.parametrize("kind", list(CHAINS))
def test_split_links_of_callback_chains_are_their_scans(kind: str) -> None:
    key, extra = CHAINS[kind]
    x: Any = CL(-1)
    for i in range(30):
        c = CL(i, **extra(i))
        c.items[key] = x
        x = c
    gd, _ = sg.generic.flatten(Box(x=x, after=_p(1.0), lazy=Box(s=_p(2.0, Lazy))))
    n = check_split(gd, 2)
    if kind not in ("before", "pytree", "array"):  # (each link, in the flatten's scan and the
        assert n >= 30 * 2  # unflatten's with callbacks)
    else:  # (a link holding a container, a custom pytree, an array: scanned)
        assert n < 30


@pytest.mark.parametrize("family", ["specgraph", "nnx", "brainstate"])
def test_split_links_of_node_chains_are_their_scans(family: str) -> None:
    gd, _ = sg.generic.flatten(models.build_deepchain(_family(family), 40))
    check_split(gd, 2)
    gd, _ = sg.generic.flatten(pytree_model("nested"))
    check_split(gd, 2)
