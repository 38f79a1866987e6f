"""Chains of nested callback nodes (``register_graph_node_type``): the flatten is a loop.

A link is a node of a callback class holding the next link under a key (``next``); its
registered flatten is called once per link by the loop, in the reference walker's order
(a link calling user code after its next link is read in two loops: what precedes the
next link link by link, then, past the rest of the chain, what follows it, the deepest
link first, as the reference reads it; tests/test_chain_after.py), and its answer
guarded on every link as the unrolled code guards it (count,
each key, the metadata). The update keeps, per link, what its writes name instead of
calling the flatten again (``chain_loop``'s ``kept``). Every behaviour test compares with
the reference walker (``impl``), call logs included.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from conftest import assert_same_flatten, outlined_flatten_hits

import specgraph as sg
from specgraph.runtime import dispatch

#: every call of a registered flatten, in order: (class name, the node's number)
LOG: list[tuple[str, int]] = []


class CL:
    """A callback layer: its items in a dict (sorted by repr: ``next`` sorts after ``din``,
    before ``w``), its metadata ``meta``; ``reverse`` turns its key order around, ``boom``
    makes its flatten raise."""

    def __init__(self, num: int, meta: Any = None, **extra: Any) -> None:
        self.num = num
        self.meta = meta
        self.reverse = False
        self.boom = False
        self.items: dict[Any, Any] = {
            "w": sg.Param(np.full((2,), num, np.float32)),
            "b": sg.Param(np.full((1,), num, np.float32)),
            "din": 2,
            **extra,
        }


def _flatten(n: Any) -> tuple[Any, Any]:
    LOG.append((type(n).__name__, n.num))
    if n.boom:
        raise ValueError(f"link {n.num} refuses to be flattened")
    keys = sorted(n.items, key=repr, reverse=n.reverse)
    return [(k, n.items[k]) for k in keys], n.meta


def _set_key(n: Any, key: Any, value: Any) -> None:
    n.items[key] = value


def _create(meta: Any) -> CL:
    n = CL.__new__(CL)
    n.num, n.meta, n.items, n.reverse, n.boom = -7, meta, {}, False, False
    return n


sg.register_graph_node_type(CL, _flatten, _set_key, lambda n, k: n.items.pop(k), _create,
                            lambda n: n.items.clear())


class Inner(CL):
    """Another callback class (held by a link, after its next link or before it)."""


sg.register_graph_node_type(Inner, _flatten, _set_key, lambda n, k: n.items.pop(k),
                            lambda meta: Inner(-8, meta), lambda n: n.items.clear())


class Box(sg.Node):
    def __init__(self, **attrs: Any) -> None:
        vars(self).update(attrs)


class Buffer(sg.State):
    pass


class Lazy(sg.State):
    """A state whose value read is user code (a ``value`` property), logged with the
    flatten calls: the reference reads it where the walk meets it."""

    @property
    def value(self) -> Any:
        LOG.append(("Lazy", -1))
        return vars(self)["_v"]

    @value.setter
    def value(self, v: Any) -> None:
        vars(self)["_v"] = v


#: how a link holds the next: its key, and what else it holds (``after``: entries sorting
#: after the key, so read after the rest of the chain by the reference)
KINDS: dict[str, tuple[str, Callable[[int], dict[str, Any]]]] = {
    "next": ("next", lambda i: {}),  # w sorts after next
    "z_next": ("z_next", lambda i: {}),  # nothing after the next link
    "a_next": ("a_next", lambda i: {}),  # everything after it
    "after": ("next", lambda i: {"z": sg.Param(np.full((3,), i, np.float32)), "zz": (1, "x")}),
    "before": ("z_next", lambda i: {"c": [sg.Param(np.ones(1, np.float32)), 3], "d": {"e": 1.5}}),
    "meta": ("next", lambda i: {}),  # one metadata on every link (not None)
    "inner before": ("z_next", lambda i: {"i": Inner(1000 + i)}),
}

#: looped at outline_min=2 (the others: not a chain, each answer still the reference's)
LOOPED = ["next", "z_next", "a_next", "after", "before", "meta", "inner before", "inner after",
          "lazy after, in a node", "lazy after, deeper"]
UNROLLED = ["meta per link", "array"]


def cchain(n: int, kind: str = "next") -> Box:
    """``n`` nested callback links (``kind``), the innermost holding a last CL (no key)."""
    x = CL(-1)
    key, extra = KINDS.get(kind, ("next", lambda i: {}))
    for i in range(n):
        meta = ("lin", 2) if kind == "meta" else ("lin", i) if kind == "meta per link" else None
        c = CL(i, meta, **extra(i))
        if kind == "inner after":  # a callback node after the next link: read after the chain
            c.items["zi"] = Inner(1000 + i)
        elif kind == "array":  # a bare array held by a link (written back by set_key)
            c.items["a"] = np.full((2,), i, np.float32)
        elif kind == "lazy after, in a node":  # user code (a value read) after the next link
            c.items["z"] = Box(s=Lazy(np.full((1,), i, np.float32)))
        elif kind == "lazy after, deeper":
            c.items["z"] = Box(b=Box(s=Lazy(np.full((1,), i, np.float32))))
        c.items[key] = x
        x = c
    return Box(x=x, after=sg.Param(np.ones(1, np.float32)))


def link(m: Box, k: int) -> CL:
    x = m.x
    for _ in range(k):
        x = next(v for v in x.items.values() if type(v) is CL)
    return x


def _logged(fn: Callable[[], Any]) -> tuple[Any, list[tuple[str, int]]]:
    LOG.clear()
    try:
        return fn(), list(LOG)
    finally:
        LOG.clear()


def _flat(impl: Any, m: Any) -> tuple[sg.GraphDef, sg.StateMap]:
    """One flatten by ``impl`` (compiled: one call of the public flatten)."""
    return sg.flatten(m) if impl.compiled else sg.generic.flatten(m)


def _update(impl: Any, m: Any, *states: Any) -> None:
    """One update by ``impl`` (compiled: one call of the public update)."""
    (sg.update if impl.compiled else sg.generic.update)(m, *states)


def _source(gd: sg.GraphDef, kind: str = "flatten") -> str:
    var = dispatch.variant_for(gd)
    assert var is not None
    return var.sources[kind]


def _looped(gd: sg.GraphDef) -> bool:
    """A chain loop whose body calls the registered flatten serves this structure."""
    var = dispatch.variant_for(gd)
    return var is not None and any(s.op == "chain_loop" and any(b.op == "call_flatten" for b in s.body)
                                   for s in var.plan.steps)


def _listed(sm: sg.StateMap) -> list[Any]:
    return [np.asarray(v).tolist() for v in sm.values()]


def _bump(sm: sg.StateMap, add: float) -> sg.StateMap:
    return sg.StateMap._make(sm._table, [np.asarray(v) + add for v in sm.values()])


def snapshot(m: Box) -> list[Any]:
    """What a failed call must leave as it was: every link's items (keys and value
    objects) and every state's value object."""
    out: list[Any] = []
    stack: list[Any] = [m]
    seen: set[int] = set()
    while stack:
        x = stack.pop()
        if id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, CL):
            out.append((id(x), [(k, id(v)) for k, v in x.items.items()]))
            stack.extend(x.items.values())
        elif isinstance(x, sg.State):
            out.append((id(x), id(x.value)))
        elif isinstance(x, sg.Node):
            out.append((id(x), [(k, id(v)) for k, v in vars(x).items()]))
            stack.extend(vars(x).values())
        elif type(x) in (list, tuple):
            stack.extend(x)
        elif type(x) is dict:
            stack.extend(x.values())
    return out


def _served(m: Any) -> tuple[sg.GraphDef, sg.StateMap]:
    """Flatten twice (the second call by generated code), checked against the reference
    (its answer and its flatten calls, in order)."""
    sg.flatten(m)
    before = sg.cache_info()["hits"]
    out, log = _logged(lambda: sg.flatten(m))
    assert sg.cache_info()["hits"] == before + 1, sg.cache_info()
    ref, ref_log = _logged(lambda: sg.generic.flatten(m))
    assert_same_flatten(out, ref)
    assert log == ref_log
    return out


@pytest.mark.repeats
@pytest.mark.parametrize("kind", LOOPED)
def test_callback_chain_flatten_update_unflatten(impl: Any, kind: str) -> None:
    """Flatten, update, a partial update and unflatten of a chain of callback links, with
    the registered flatten called as the reference calls it, in its order."""
    m, twin = cchain(40, kind), cchain(40, kind)
    impl.flatten(m)
    (gd, sm), log = _logged(lambda: _flat(impl, m))
    ref, ref_log = _logged(lambda: sg.generic.flatten(m))
    assert_same_flatten((gd, sm), ref)
    assert log == ref_log
    if impl.compiled and impl.name == "outlined":
        assert _looped(gd)
    new = _bump(sm, 1.0)
    _, log = _logged(lambda: _update(impl, m, new))
    _, ref_log = _logged(lambda: sg.generic.update(twin, new))
    if impl.name == "specialized" and "lazy" in kind:
        # (unrolled, at the default outline_min: the update reads no state's value, the
        # reference's walk reads each: only the flatten calls compare)
        ref_log = [e for e in ref_log if e[0] != "Lazy"]
    assert log == ref_log  # (no second call of the flatten to write)
    got, want = sg.generic.flatten(m), sg.generic.flatten(twin)
    assert got[0] == want[0]
    assert all(a is b for a, b in zip(got[1].values(), new.values(), strict=True))
    # a partial update (every other state): by slot, as the reference writes by path
    _, even, _ = sg.split(m, lambda p, v: len(p) % 2 == 0, ...)
    part = _bump(even, 5.0)
    impl.update(m, part)
    sg.generic.update(twin, part)
    got, want = sg.generic.flatten(m), sg.generic.flatten(twin)
    assert _listed(got[1]) == _listed(want[1])
    clone = impl.unflatten(gd, new)
    assert_same_flatten(sg.generic.flatten(clone), sg.generic.flatten(sg.generic.unflatten(gd, new)))


@pytest.mark.parametrize("kind", UNROLLED)
def test_callback_chains_not_looped_are_the_reference(impl: Any, kind: str) -> None:
    """Links with metadata of their own, a bare array: not a loop; every answer, and the
    order of the user code's calls, the reference's."""
    m, twin = cchain(12, kind), cchain(12, kind)
    impl.flatten(m)
    (gd, sm), log = _logged(lambda: _flat(impl, m))
    ref, ref_log = _logged(lambda: sg.generic.flatten(m))
    assert_same_flatten((gd, sm), ref)
    assert log == ref_log
    if impl.compiled:
        assert not _looped(gd)
    new = _bump(sm, 1.0)
    impl.update(m, new)
    sg.generic.update(twin, new)
    got, want = sg.generic.flatten(m), sg.generic.flatten(twin)
    assert got[0] == want[0]
    assert _listed(got[1]) == _listed(want[1])


def test_callback_chain_update_writes_through_what_the_loop_kept(outlined: None) -> None:
    m = cchain(30)
    gd, sm = _served(m)
    assert "nested links of one shape" in _source(gd)
    src = _source(gd, "update")
    assert "the locals the loop kept per link" in src
    assert src.count("its registered flatten") == _source(gd).count("its registered flatten")
    hits = outlined_flatten_hits()
    new = _bump(sm, 3.0)
    _, log = _logged(lambda: sg.update(m, new))
    assert sg.cache_info()["update_hits"] == 1 and outlined_flatten_hits() == hits + 1
    assert len(log) == 31  # once per link and the innermost node, as the reference's walk
    assert all(a is b for a, b in zip(sg.generic.flatten(m)[1].values(), new.values(), strict=True))


@pytest.mark.parametrize("n", [1_000, 10_000])
def test_deep_callback_chains_are_one_loop_at_default_settings(n: int) -> None:
    """At the default settings: specialized, served by the chain loop (flatten and
    update), the registered flatten called once per link in the reference's order."""
    m = cchain(n)
    gd, sm = _served(m)
    src = _source(gd)
    assert f"range({n}):  # {n} nested links of one shape" in src and len(src.splitlines()) < 150
    assert _looped(gd)
    hits = outlined_flatten_hits()
    for _ in range(3):
        sg.flatten(m)
    assert outlined_flatten_hits() == hits + 3
    new = _bump(sm, 1.0)
    _, log = _logged(lambda: sg.update(m, new))
    assert sg.cache_info()["update_hits"] == 1 and outlined_flatten_hits() == hits + 4
    assert len(log) == n + 1
    assert all(a is b for a, b in zip(sg.generic.flatten(m)[1].values(), new.values(), strict=True))


def _rename(n: CL) -> None:
    n.items["w2"] = n.items.pop("w")


#: one link's answer or contents changed: (the miss kind, how)
MUTATIONS: dict[str, tuple[str, Callable[[CL], None]]] = {
    "renamed key": ("node_keys", _rename),
    "extra key": ("node_keys", lambda n: n.items.__setitem__("zz", 1)),
    "key dropped": ("node_keys", lambda n: n.items.pop("din")),
    "int key for str": ("node_keys", lambda n: n.items.__setitem__(0, n.items.pop("din"))),
    "keys in another order": ("node_keys", lambda n: setattr(n, "reverse", True)),
    "metadata": ("metadata", lambda n: setattr(n, "meta", ("lin", 3))),
    "metadata type": ("metadata", lambda n: setattr(n, "meta", 0)),
    "static": ("static", lambda n: n.items.__setitem__("din", 3)),
    "state type": ("type", lambda n: n.items.__setitem__("b", Buffer(n.items["b"].value))),
    "link type": ("type", lambda n: n.items.__setitem__("next", Inner(5, None, **n.items["next"].items))),
}


@pytest.mark.parametrize("name", sorted(MUTATIONS))
@pytest.mark.parametrize("k", [0, 1, 17, 38])
def test_each_callback_link_mutated_is_a_miss(outlined: None, name: str, k: int) -> None:
    """The answer of link ``k`` changes: a miss of that kind, the reference's answer, the
    user's objects untouched."""
    kind, mutate = MUTATIONS[name]
    m = cchain(40)
    gd, _ = _served(m)
    assert _looped(gd)
    mutate(link(m, k))
    before = snapshot(m)
    misses = sg.cache_info()["guard_misses"].get(kind, 0)
    assert_same_flatten(sg.flatten(m), sg.generic.flatten(m))
    assert sg.cache_info()["guard_misses"].get(kind, 0) == misses + 1, sg.cache_info()["guard_misses"]
    assert snapshot(m) == before


@pytest.mark.parametrize("k", [0, 1, 17, 39])
def test_a_link_whose_flatten_raises(impl: Any, k: int) -> None:
    """The registered flatten raises at link ``k``: flatten and update raise the reference's
    error, and nothing is changed."""
    m = cchain(40)
    _, sm = impl.flatten(m)
    impl.flatten(m)
    link(m, k).boom = True
    before = snapshot(m)
    with pytest.raises(ValueError) as ref:
        sg.generic.flatten(m)
    for call in (lambda: impl.flatten(m), lambda: impl.update(m, _bump(sm, 1.0))):
        with pytest.raises(ValueError) as got:
            call()
        assert str(got.value) == str(ref.value)
        assert snapshot(m) == before


#: sharing across links: (how, the links it touches)
SHARING: dict[str, Callable[[Box], Any]] = {
    "tied weight": lambda m: link(m, 20).items.__setitem__("w", link(m, 5).items["w"]),
    "a link met twice": lambda m: setattr(m, "again", link(m, 12)),
    "a cycle back to the head": lambda m: link(m, 39).items.__setitem__("up", m.x),
    "a cycle into the chain": lambda m: link(m, 39).items.__setitem__("up", link(m, 3)),
    "a state shared by every link": lambda m: [link(m, k).items.__setitem__("s", m.after) for k in range(40)],
}


@pytest.mark.parametrize("name", sorted(SHARING))
def test_sharing_across_callback_links(impl: Any, name: str) -> None:
    """A tied weight, a link met twice, a cycle, a state every link shares: the links they
    touch stay inline (the identity guards see every path); every answer the reference's."""
    m, twin = cchain(40), cchain(40)
    SHARING[name](m)
    SHARING[name](twin)
    impl.flatten(m)
    (gd, sm), log = _logged(lambda: _flat(impl, m))
    ref, ref_log = _logged(lambda: sg.generic.flatten(m))
    assert_same_flatten((gd, sm), ref)
    assert log == ref_log
    if impl.name == "outlined":  # (the runs of links nothing else reaches are loops)
        assert _looped(gd) == (name != "a state shared by every link")
    new = _bump(sm, 2.0)
    impl.update(m, new)
    sg.generic.update(twin, new)
    got, want = sg.generic.flatten(m), sg.generic.flatten(twin)
    assert got[0] == want[0]
    assert _listed(got[1]) == _listed(want[1])


@pytest.mark.parametrize("k", [1, 17, 38])
def test_a_state_of_two_links_is_a_distinct_miss(outlined: None, k: int) -> None:
    m = cchain(40)
    _served(m)
    link(m, k).items["b"] = link(m, 0 if k > 1 else 30).items["b"]
    before = sg.cache_info()["guard_misses"].get("distinct", 0)
    assert_same_flatten(sg.flatten(m), sg.generic.flatten(m))
    assert sg.cache_info()["guard_misses"].get("distinct", 0) == before + 1


@pytest.mark.parametrize("name", ["extra key", "metadata", "static", "state type", "same state"])
@pytest.mark.parametrize("k", [1, 17])
def test_callback_link_guards_are_load_bearing(outlined: None, name: str, k: int,
                                               disable: Callable[[frozenset[str]], None]) -> None:
    """Without the guards of its kind, the loop answers link ``k`` (not the first) mutated
    with the first link's keys or metadata: it differs from the reference."""
    kind, mutate = MUTATIONS[name] if name != "same state" else \
        ("distinct", lambda n: n.items.__setitem__("b", link(m, 30).items["b"]))
    disable(frozenset({kind}))
    m = cchain(40)
    sg.flatten(m)
    gd, _ = sg.flatten(m)
    assert _looped(gd)
    mutate(link(m, k))
    hits = sg.cache_info()["hits"]
    got = sg.flatten(m)
    assert sg.cache_info()["hits"] == hits + 1
    assert got[0] != sg.generic.flatten(m)[0]
