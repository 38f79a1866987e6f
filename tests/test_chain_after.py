"""Chains whose links run user code after their next link: the flatten and the update
are two loops.

A link holds the next link under one key and, after it (a node's attributes sort after
``n``; a callback link's items come after ``next``), what runs user code: a callback node
(its registered flatten), a state whose value read is user code (a ``value`` property),
a node or a list holding one. The reference walker reads what follows a link's next link
after the whole rest of the chain, the deepest link's first; the generated flatten does
the same with a first loop over what precedes each link's next link, the tail, then a
second loop over the links kept from the first, in reverse (``chain_after``). Every
behaviour test compares with the reference walker (``impl``), the order of the user
code's calls included, and counts what compiled code served.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import hypothesis.strategies as st
import numpy as np
import pytest
from conftest import assert_same_flatten, outlined_flatten_hits
from hypothesis import HealthCheck, given, settings

import specgraph as sg
from specgraph.runtime import dispatch
from specgraph.runtime.cache import CONFIG

#: every call of user code, in order: (what, its number)
LOG: list[tuple[str, int]] = []


class CB:
    """A node of a type registered with callbacks: its items in insertion order, its
    metadata ``meta``; ``boom`` makes its flatten raise, ``reverse`` turns its keys around."""

    def __init__(self, num: int, **items: Any) -> None:
        self.num = num
        self.meta: Any = None
        self.boom = False
        self.reverse = False
        self.items: dict[Any, Any] = dict(items)


def _cb_flatten(n: CB) -> tuple[list[tuple[Any, Any]], Any]:
    LOG.append(("CB", n.num))
    if n.boom:
        raise ValueError(f"node {n.num} refuses to be flattened")
    items = list(n.items.items())
    return (items[::-1] if n.reverse else items), n.meta


def _cb_create(meta: Any) -> CB:
    n = CB(-7)
    n.meta = meta
    return n


sg.register_graph_node_type(CB, _cb_flatten, lambda n, k, v: n.items.__setitem__(k, v),
                            lambda n, k: n.items.pop(k), _cb_create, lambda n: n.items.clear())


class Other(CB):
    """Another callback class (a link's callback node replaced by one: a type miss)."""


sg.register_graph_node_type(Other, _cb_flatten, lambda n, k, v: n.items.__setitem__(k, v),
                            lambda n, k: n.items.pop(k), _cb_create, lambda n: n.items.clear())


class Lazy(sg.State):
    """A state whose value read is user code (logged)."""

    @property
    def value(self) -> Any:
        LOG.append(("Lazy", vars(self).get("num", -9)))
        return vars(self)["_v"]

    @value.setter
    def value(self, v: Any) -> None:
        vars(self)["_v"] = v


class Buffer(sg.State):
    pass


class Link(sg.Node):
    def __init__(self, **attrs: Any) -> None:
        vars(self).update(attrs)


class Box(sg.Node):
    def __init__(self, **attrs: Any) -> None:
        vars(self).update(attrs)


def _p(i: int, size: int = 2) -> sg.Param:
    return sg.Param(np.full((size,), i, np.float32))


def _lazy(i: int) -> Lazy:
    s = Lazy(np.full((1,), i, np.float32))
    vars(s)["num"] = i
    return s


#: what a link may hold besides its next link (``i``: the link's number)
ITEMS: dict[str, Callable[[int], Any]] = {
    "param": lambda i: _p(i),
    "static": lambda i: 3,
    "cb": lambda i: CB(1000 + i, w=_p(i), act="relu"),
    "lazy": _lazy,
    "box": lambda i: Box(p=_p(i, 1), q=CB(2000 + i, w=_p(i))),
    "list": lambda i: [_p(i, 3), CB(3000 + i, b=_p(i, 1))],
    "nested cb": lambda i: CB(4000 + i, inner=CB(5000 + i, w=_p(i)), s=_p(i, 1)),
    "lazy box": lambda i: Box(s=_lazy(i)),
    "other": lambda i: Other(6000 + i, w=_p(i), b=_p(i, 1)),
    "index": lambda i: i,  # (a static differing per link: a parameter of the loops)
}

#: the kinds that run user code
USER = {"cb", "lazy", "box", "list", "nested cb", "lazy box", "other"}
#: the kinds that are a CB themselves (a CB link holding one holds two of its own class: no link)
DIRECT_CB = {"cb", "nested cb"}


def chain(n: int, before: tuple[str, ...] = (), after: tuple[str, ...] = ("cb",), link: str = "node",
          last: tuple[str, ...] | None = None) -> Box:
    """``n`` nested ``link`` nodes (``Link`` nodes, or ``CB`` callback nodes), each holding
    the items ``before`` its next and ``after`` it; the innermost holds a ``CB`` (so the
    innermost ``Link`` is no link of a chain: its next is of another class). ``last``: the
    innermost link of the chain holds these after its next instead (it differs)."""
    x: Any = CB(-1, w=_p(-1))
    last_at = 1 if link == "node" else 0
    for i in range(n):
        kinds = last if last is not None and i == last_at else after
        items = {f"b{j}": ITEMS[k](i) for j, k in enumerate(before)}
        items["n" if link == "node" else "next"] = x
        items.update({f"z{j}": ITEMS[k](i) for j, k in enumerate(kinds)})
        if link == "node":
            x = Link(**items)
        else:
            x = CB(i)
            x.items.update(items)
    return Box(x=x, y=_p(-2))


def link_at(m: Box, k: int) -> Any:
    x = m.x
    for _ in range(k):
        x = vars(x)["n"] if type(x) is Link else x.items["next"]
    return x


def _after(x: Any) -> Any:
    """The first thing a link holds after its next link."""
    return vars(x)["z0"] if type(x) is Link else x.items["z0"]


def _logged(fn: Callable[[], Any]) -> tuple[Any, list[tuple[str, int]]]:
    LOG.clear()
    try:
        return fn(), list(LOG)
    finally:
        LOG.clear()


def _split(gd: sg.GraphDef) -> bool:
    """A split chain (two loops) serves this structure's flatten."""
    var = dispatch.variant_for(gd)
    return var is not None and any(s.op == "chain_after" for s in var.plan.steps)


def _min_links(impl: Any) -> int:
    return max(2, CONFIG.outline_min) if impl.compiled else 0


def _listed(sm: sg.StateMap) -> list[Any]:
    return [np.asarray(v).tolist() for v in sm.values()]


def _bump(sm: sg.StateMap, add: float) -> sg.StateMap:
    return sg.StateMap._make(sm._table, [np.asarray(v) + add for v in sm.values()])


def snapshot(m: Any) -> list[Any]:
    """Every node's children (keys and objects) and every state's value object."""
    out: list[Any] = []
    stack: list[Any] = [m]
    seen: set[int] = set()
    while stack:
        x = stack.pop()
        if id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, CB):
            out.append((id(x), [(k, id(v)) for k, v in x.items.items()]))
            stack.extend(x.items.values())
        elif isinstance(x, sg.State):
            out.append((id(x), id(vars(x).get("_v") if type(x) is Lazy else x.value)))
        elif isinstance(x, sg.Node):
            out.append((id(x), [(k, id(v)) for k, v in vars(x).items()]))
            stack.extend(vars(x).values())
        elif type(x) in (list, tuple):
            stack.extend(x)
    return out


def check_all(impl: Any, make: Callable[[], Any], split: bool | None = None) -> sg.GraphDef:
    """Flatten (twice: the second served by compiled code), update, a partial update and
    unflatten of ``make()`` by ``impl``, each the reference's, the user code called as the
    reference calls it; ``split``: whether a split chain serves the compiled flatten."""
    m, twin = make(), make()
    impl.flatten(m)
    hits, uhits = sg.cache_info()["hits"], sg.cache_info()["update_hits"]
    (gd, sm), log = _logged(lambda: sg.flatten(m) if impl.compiled else sg.generic.flatten(m))
    ref, ref_log = _logged(lambda: sg.generic.flatten(m))
    assert_same_flatten((gd, sm), ref)
    assert log == ref_log
    if impl.compiled:
        assert sg.cache_info()["hits"] == hits + 1, sg.cache_info()
        if split is not None:
            assert _split(gd) == split
    new = _bump(sm, 1.0)
    _, log = _logged(lambda: sg.update(m, new) if impl.compiled else sg.generic.update(m, new))
    _, ref_log = _logged(lambda: sg.generic.update(twin, new))
    if impl.compiled:
        assert sg.cache_info()["update_hits"] == uhits + 1, sg.cache_info()
    # The registered flatten called once per node, as the walk does. (The values an update
    # reads are not part of its answer: the reference's walk reads each state's, unrolled
    # code none, a loop's body where it reads a link: the Lazy reads are left out.)
    assert [e for e in log if e[0] != "Lazy"] == [e for e in ref_log if e[0] != "Lazy"]
    got, want = sg.generic.flatten(m), sg.generic.flatten(twin)
    assert got[0] == want[0]
    assert all(a is b for a, b in zip(got[1].values(), new.values(), strict=True))
    # a partial update (every other path): by slot, as the reference writes by path
    _, even, _ = sg.split(m, lambda p, v: len(p) % 2 == 0, ...)
    part = _bump(even, 5.0)
    impl.update(m, part)
    sg.generic.update(twin, part)
    assert _listed(sg.generic.flatten(m)[1]) == _listed(sg.generic.flatten(twin)[1])
    clone = impl.unflatten(gd, new)
    assert_same_flatten(sg.generic.flatten(clone), sg.generic.flatten(sg.generic.unflatten(gd, new)))
    return gd


#: (before the next link, after it, the link's kind)
LAYOUTS = {
    "a callback node after": ((), ("cb",), "node"),
    "states and a callback after": ((), ("param", "cb", "static", "param"), "node"),
    "a lazy state after": ((), ("lazy",), "node"),
    "a node holding one after": (("param",), ("box",), "node"),
    "a list holding one after": ((), ("list",), "node"),
    "nested callbacks after": (("static",), ("nested cb", "lazy box"), "node"),
    "a callback link, a callback after": (("param",), ("other", "param", "box"), "cb"),
    "a callback link, a lazy state after": ((), ("lazy",), "cb"),
    "statics differing per link, before and after": (("index",), ("cb", "index"), "node"),
    "a callback link, statics differing after": (("param",), ("index", "other", "index"), "cb"),
}


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_chain_with_user_code_after_the_next_link(impl: Any, name: str) -> None:
    """70 links (a loop at the default settings too): two loops, every answer and every
    user call the reference's, in its order."""
    before, after, kind = LAYOUTS[name]
    check_all(impl, lambda: chain(70, before, after, kind), split=True)


def test_states_only_after_the_next_link_stay_one_loop(impl: Any) -> None:
    """Plain states after the next link run no user code, whatever runs before it: one
    loop reads a link whole."""
    gd = check_all(impl, lambda: chain(70, ("cb", "lazy"), ("param", "static")), split=False)
    if impl.compiled:
        var = dispatch.variant_for(gd)
        assert var is not None and any(s.op == "chain_loop" for s in var.plan.steps)


def test_the_call_order_is_the_references(outlined: None) -> None:
    """The order, spelled out: every link's part before its next link, outermost first, the
    tail, then every link's part after it, innermost first."""
    m = chain(5, ("cb",), ("cb", "lazy"))
    sg.flatten(m)
    _, log = _logged(lambda: sg.flatten(m))
    assert _split(sg.flatten(m)[0])
    links = [4, 3, 2, 1, 0]
    want = [("CB", 1000 + i) for i in links] + [("CB", -1)]
    for i in reversed(links):
        want += [("CB", 1000 + i), ("Lazy", i)]
    assert log == want


def test_the_last_link_differs(impl: Any) -> None:
    """The innermost link holds something else after its next link: the tail of a chain of
    the others, read between the two loops."""
    check_all(impl, lambda: chain(70, ("param",), ("cb",), last=("lazy", "cb")), split=True)
    check_all(impl, lambda: chain(70, (), ("other", "param"), "cb", last=("param",)), split=True)


def test_a_chain_in_a_list(impl: Any) -> None:
    """The chain's head is a list's item, with user code before and after it in the list:
    the second loop runs before the list's next item is read."""

    def make() -> Any:
        return Box(layers=[CB(-3, w=_p(-3)), chain(70, ("param",), ("cb",)).x, CB(-4, w=_p(-4)), _lazy(-5)])

    check_all(impl, make, split=True)


def test_two_chains_one_after_the_other(impl: Any) -> None:
    """Two chains side by side (the second's loops after the first's)."""
    check_all(impl, lambda: Box(a=chain(70, (), ("cb",)).x, b=chain(66, ("lazy",), ("cb", "lazy")).x),
              split=True)


def _tie_all(m: Box) -> None:
    s = _p(9)
    for k in range(70):
        vars(link_at(m, k))["z1"] = s


def _tie_two(m: Box) -> None:
    vars(link_at(m, 40))["z1"] = vars(link_at(m, 10))["z1"]


def _tie_outside(m: Box) -> None:
    m.y = vars(link_at(m, 33))["z1"]


#: a state shared across links after their next link: (how)
TIES: dict[str, Callable[[Box], None]] = {
    "every link's": _tie_all,
    "two links'": _tie_two,
    "a link's and the root's": _tie_outside,
}


@pytest.mark.parametrize("name", sorted(TIES))
def test_a_tied_state_after_the_next_link(impl: Any, name: str) -> None:
    """A state held after the next link by several links, or by a link and the root: the
    identity guards see every path; every answer the reference's."""

    def make() -> Box:
        m = chain(70, (), ("cb", "param"))
        TIES[name](m)
        return m

    check_all(impl, make)


@pytest.mark.parametrize(("where", "k"), [("after", 0), ("after", 1), ("after", 35), ("after", 69),
                                          ("tail", 70), ("link", 0), ("link", 35), ("link", 69)])
def test_a_flatten_that_raises(impl: Any, where: str, k: int) -> None:
    """A registered flatten raises (after link ``k``'s next link, in the tail, or a callback
    link's own, past the first loop's start): flatten and update raise the reference's
    error, and nothing is changed."""
    m = chain(70, ("cb",), ("other", "param"), "cb" if where == "link" else "node")
    _, sm = impl.flatten(m)
    impl.flatten(m)
    x = link_at(m, k)
    (_after(x) if where == "after" else x).boom = True
    before = snapshot(m)
    with pytest.raises(ValueError) as ref:
        sg.generic.flatten(m)
    new = _bump(sm, 1.0)
    calls = [lambda: sg.flatten(m), lambda: sg.update(m, new)] if impl.compiled else \
        [lambda: sg.generic.flatten(m), lambda: sg.generic.update(m, new)]
    for call in calls:
        with pytest.raises(ValueError) as got:
            call()
        assert str(got.value) == str(ref.value)
        assert snapshot(m) == before


def _rename(x: Any) -> None:
    x.items["w2"] = x.items.pop("w")


#: one link's part after its next link changed: (the miss kind, how)
MUTATIONS: dict[str, tuple[str, Callable[[Any], None]]] = {
    "renamed key": ("node_keys", lambda x: _rename(_after(x))),
    "extra key": ("node_keys", lambda x: _after(x).items.__setitem__("zz", 1)),
    "keys in another order": ("node_keys", lambda x: setattr(_after(x), "reverse", True)),
    "metadata": ("metadata", lambda x: setattr(_after(x), "meta", ("m", 1))),
    "static": ("static", lambda x: _after(x).items.__setitem__("act", "tanh")),
    "state type": ("type", lambda x: _after(x).items.__setitem__("w", Buffer(_after(x).items["w"].value))),
    "node type": ("type", lambda x: vars(x).__setitem__("z0", Other(7, **_after(x).items))),
    "attribute added": ("node_keys", lambda x: vars(x).__setitem__("zz", 1)),
    "state after replaced": ("type", lambda x: vars(x).__setitem__("z1", Buffer(vars(x)["z1"].value))),
}


@pytest.mark.parametrize("name", sorted(MUTATIONS))
@pytest.mark.parametrize("k", [0, 1, 20, 39])
def test_each_link_mutated_after_its_next_is_a_miss(outlined: None, name: str, k: int) -> None:
    """Link ``k`` (the first, the second, one in the middle, the last) changed after its
    next link: a miss of that kind, the reference's answer and user calls, nothing changed."""
    kind, mutate = MUTATIONS[name]
    m = chain(40, ("param",), ("cb", "param"))
    sg.flatten(m)
    gd, _ = sg.flatten(m)
    assert _split(gd)
    mutate(link_at(m, k))
    before = snapshot(m)
    misses = sg.cache_info()["guard_misses"].get(kind, 0)
    got = sg.flatten(m)
    ref = sg.generic.flatten(m)
    assert_same_flatten(got, ref)
    assert sg.cache_info()["guard_misses"].get(kind, 0) == misses + 1, sg.cache_info()["guard_misses"]
    assert snapshot(m) == before


@pytest.mark.parametrize("k", [1, 20, 39])
def test_a_state_after_shared_with_another_link_is_a_distinct_miss(outlined: None, k: int) -> None:
    m = chain(40, (), ("cb", "param"))
    sg.flatten(m)
    assert _split(sg.flatten(m)[0])
    vars(link_at(m, k))["z1"] = vars(link_at(m, 0 if k > 1 else 30))["z1"]
    before = sg.cache_info()["guard_misses"].get("distinct", 0)
    assert_same_flatten(sg.flatten(m), sg.generic.flatten(m))
    assert sg.cache_info()["guard_misses"].get("distinct", 0) == before + 1


@pytest.mark.parametrize("name", ["extra key", "metadata", "static", "state type", "node type",
                                  "attribute added", "same state"])
@pytest.mark.parametrize("k", [1, 20, 39])
def test_guards_after_the_next_link_are_load_bearing(outlined: None, name: str, k: int,
                                                     disable: Callable[[frozenset[str]], None]) -> None:
    """Without the guards of its kind, the second loop answers link ``k`` (not the first)
    mutated after its next link: the answer differs from the reference's."""
    kind, mutate = MUTATIONS[name] if name != "same state" else \
        ("distinct", lambda x: vars(x).__setitem__("z1", vars(link_at(m, 0))["z1"]))
    disable(frozenset({kind}))
    m = chain(40, ("param",), ("cb", "param"))
    sg.flatten(m)
    gd, _ = sg.flatten(m)
    assert _split(gd)
    mutate(link_at(m, k))
    hits = sg.cache_info()["hits"]
    got = sg.flatten(m)
    assert sg.cache_info()["hits"] == hits + 1
    ref = sg.generic.flatten(m)
    assert got[0] != ref[0] or list(got[1].keys()) != list(ref[1].keys()) \
        or any(a is not b for a, b in zip(got[1].values(), ref[1].values(), strict=False))


@pytest.mark.parametrize("n", [1_000, 10_000])
def test_ten_thousand_links_at_default_settings(n: int) -> None:
    """At the default settings: specialized, two loops (flatten and update), the user code
    called once per node in the reference's order; the update calls it no more than the
    reference's walk."""
    m, twin = chain(n, ("param",), ("cb",)), chain(n, ("param",), ("cb",))
    sg.flatten(m)
    (gd, sm), log = _logged(lambda: sg.flatten(m))
    ref, ref_log = _logged(lambda: sg.generic.flatten(m))
    # (equal GraphDefs have equal paths: not materialized here, 20 000 tuples of up to
    # 10 000 keys each)
    assert gd == ref[0] and hash(gd) == hash(ref[0])
    assert len(sm) == len(ref[1]) and all(a is b for a, b in zip(sm.values(), ref[1].values(), strict=True))
    assert log == ref_log and len(log) == n + 1
    assert sg.cache_info()["hits"] == 1 and _split(gd)
    var = dispatch.variant_for(gd)
    assert var is not None and len(var.sources["flatten"].splitlines()) < 150
    hits = outlined_flatten_hits()
    new = _bump(sm, 1.0)
    _, log = _logged(lambda: sg.update(m, new))
    _, ref_log = _logged(lambda: sg.generic.update(twin, new))
    assert log == ref_log
    assert sg.cache_info()["update_hits"] == 1 and outlined_flatten_hits() == hits + 1
    assert all(a is b for a, b in zip(sg.generic.flatten(m)[1].values(), new.values(), strict=True))


KIND_NAMES = sorted(ITEMS)


@settings(max_examples=15, deadline=None,
          suppress_health_check=[*settings.default.suppress_health_check,
                                 HealthCheck.function_scoped_fixture])
@given(before=st.lists(st.sampled_from(KIND_NAMES), max_size=3),
       after=st.lists(st.sampled_from(KIND_NAMES), min_size=1, max_size=3),
       link=st.sampled_from(["node", "cb"]), n=st.integers(2, 9) | st.integers(64, 70),
       last=st.none() | st.lists(st.sampled_from(KIND_NAMES), max_size=2))
def test_random_layouts(impl: Any, before: list[str], after: list[str], link: str, n: int,
                        last: list[str] | None) -> None:
    """Random layouts: what a link holds before and after its next link, its kind, how many
    links, a last link that differs. Every answer and user call the reference's; a split
    chain wherever a link runs user code after its next link and the chain is long enough."""
    sg.clear_cache()
    lst = tuple(last) if last is not None else None
    gd = check_all(impl, lambda: chain(n, tuple(before), tuple(after), link, lst))
    if impl.compiled:
        links = n - (link == "node") - (lst is not None and lst != tuple(after))
        # (a callback link holding a callback node itself is no link: the last link's
        # kinds only make it the tail, counted above when it differs)
        kinds = set(before) | set(after)
        expected = links >= _min_links(impl) and bool(USER & set(after)) \
            and not (link == "cb" and DIRECT_CB & kinds)
        assert _split(gd) == expected, (before, after, link, n, last)
