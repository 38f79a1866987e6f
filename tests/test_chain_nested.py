"""Chains whose next link sits in a container of the link (``children=[next]``,
``{"next": next}``, a tuple, nested containers): one loop in the flatten and the update,
two (``chain_after``) when the link runs user code after its next link.

A link is a ``Link`` node holding, under ``n``, a container that holds its next link
(:data:`HOLDERS`), and before and after it the items of test_chain_after's ``ITEMS``. The
reference walker reads a link's container in pre-order: what the container holds before
the next link, the whole rest of the chain, what it holds after it, then the link's
attributes after ``n``. Every behaviour test compares with the reference walker (``impl``),
the order of the user code's calls included, and counts what compiled code served.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

import hypothesis.strategies as st
import pytest
from conftest import assert_same_flatten, assert_stale_without, outlined_flatten_hits
from hypothesis import HealthCheck, given, settings
from test_chain_after import CB, ITEMS, USER, Box, Buffer, Lazy, Link, _bump, _logged, _p, _split, check_all
from test_outline_callback_unflatten import CB as UCB
from test_outline_callback_unflatten import record

import specgraph as sg
from specgraph.runtime import dispatch
from specgraph.runtime.cache import CONFIG


def _lazy_num(i: int) -> Any:
    return ITEMS["lazy"](i)


#: how a link holds its next link: (the container holding ``x`` for link ``i``, the next
#: link read back from it, whether it runs user code after the next link)
HOLDERS: dict[str, tuple[Callable[[Any, int], Any], Callable[[Any], Any], bool]] = {
    "list": (lambda x, i: [x], lambda h: h[0], False),
    "tuple": (lambda x, i: (x, 7), lambda h: h[0], False),
    "dict": (lambda x, i: {"next": x, "s": _p(i)}, lambda h: h["next"], False),
    "nested": (lambda x, i: {"a": [_p(i, 1), (x,)], "b": CB(7000 + i, w=_p(i))},
               lambda h: h["a"][1][0], True),
    "list around": (lambda x, i: [CB(8000 + i, w=_p(i)), x, _lazy_num(i)], lambda h: h[1], True),
}


def nchain(n: int, holder: str = "list", before: tuple[str, ...] = (), after: tuple[str, ...] = ("cb",),
           last: tuple[str, ...] | None = None) -> Box:
    """``n`` nested ``Link`` nodes, each holding its next link in a container of kind
    ``holder`` (attribute ``n``), the items ``before`` and ``after`` it; the innermost holds a
    ``CB`` there (no link: the chain has ``n - 1`` links). ``last``: the innermost link of the
    chain holds these after its next instead (it differs)."""
    make = HOLDERS[holder][0]
    x: Any = CB(-1, w=_p(-1))
    for i in range(n):
        kinds = last if last is not None and i == 1 else after
        items = {f"b{j}": ITEMS[k](i) for j, k in enumerate(before)}
        items["n"] = make(x, i)
        items.update({f"z{j}": ITEMS[k](i) for j, k in enumerate(kinds)})
        x = Link(**items)
    return Box(x=x, y=_p(-2))


def nlink_at(m: Box, k: int, holder: str) -> Any:
    x = m.x
    for _ in range(k):
        x = HOLDERS[holder][1](vars(x)["n"])
    return x


def _looped(gd: sg.GraphDef) -> bool:
    """A chain loop serves this structure's flatten."""
    var = dispatch.variant_for(gd)
    return var is not None and any(s.op == "chain_loop" for s in var.plan.steps)


def _unflatten_hit(gd: sg.GraphDef, sm: sg.StateMap) -> None:
    """The unflatten of ``gd`` is answered by compiled code, the reference's objects."""
    sg.unflatten(gd, sm)
    hits = sg.cache_info()["unflatten_hits"]
    got = sg.unflatten(gd, sm)
    assert sg.cache_info()["unflatten_hits"] == hits + 1
    assert_same_flatten(sg.generic.flatten(got), sg.generic.flatten(sg.generic.unflatten(gd, sm)))


#: (holder, before the next link, after it)
LAYOUTS = {
    "a list, a callback node after": ("list", (), ("cb",)),
    "a tuple, states and a callback after": ("tuple", ("param",), ("param", "cb", "static")),
    "a dict, a lazy state after": ("dict", (), ("lazy",)),
    "nested containers, a callback in them": ("nested", ("param",), ("param",)),
    "user code around the next link in its list": ("list around", ("cb",), ("static",)),
    "a list, nested callbacks after": ("list", ("static",), ("nested cb", "lazy box")),
    "a tuple, statics differing per link": ("tuple", ("index",), ("cb", "index")),
    "a list, plain states": ("list", ("param",), ("param", "static")),
    "a dict, plain states": ("dict", (), ("param",)),
    "a tuple, user code before only": ("tuple", ("cb", "lazy"), ("param",)),
}


def _split_expected(holder: str, after: tuple[str, ...]) -> bool:
    return HOLDERS[holder][2] or bool(USER & set(after))


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_next_link_in_a_container(impl: Any, name: str) -> None:
    """70 links (a loop at the default settings too): one loop, or two with user code after
    the next link; every answer and every user call the reference's, in its order; the
    unflatten compiled."""
    holder, before, after = LAYOUTS[name]
    gd = check_all(impl, lambda: nchain(70, holder, before, after), split=_split_expected(holder, after))
    if impl.compiled:
        assert _looped(gd)
        m = nchain(70, holder, before, after)
        _unflatten_hit(*sg.flatten(m))


def test_the_call_order_is_the_references(outlined: None) -> None:
    """The order, spelled out: every link's part before its next link (in its list too),
    outermost first, the tail, then every link's part after it, innermost first."""
    m = nchain(5, "list around", ("cb",), ("cb",))
    sg.flatten(m)
    (gd, _), log = _logged(lambda: sg.flatten(m))
    assert _split(gd) and log == _logged(lambda: sg.generic.flatten(m))[1]
    links = [4, 3, 2, 1]
    want = [e for i in links for e in (("CB", 1000 + i), ("CB", 8000 + i))]
    want += [("CB", 1000), ("CB", 8000), ("CB", -1), ("Lazy", 0), ("CB", 1000)]
    for i in reversed(links):
        want += [("Lazy", i), ("CB", 1000 + i)]
    assert log == want


def test_the_last_link_differs(impl: Any) -> None:
    check_all(impl, lambda: nchain(70, "list", ("param",), ("cb",), last=("lazy", "cb")), split=True)
    check_all(impl, lambda: nchain(70, "dict", (), ("param",), last=("cb",)), split=False)


def test_two_chains_of_one_structure(impl: Any) -> None:
    """Two alike chains side by side (at ``outline_min=2`` the links at each depth would be
    one shape nesting the next's: they are the chains' loops)."""

    def make() -> Box:
        return Box(a=nchain(70, "list", (), ("cb",)).x, b=nchain(70, "list", (), ("cb",)).x)

    gd = check_all(impl, make, split=True)
    if impl.compiled:
        var = dispatch.variant_for(gd)
        assert var is not None and sum(s.op == "chain_after" for s in var.plan.steps) == 2


def _kind(m: Box, k: int, holder: str) -> None:
    """Link ``k``'s container turned into another kind (list -> tuple, ...)."""
    x = nlink_at(m, k, holder)
    h = vars(x)["n"]
    vars(x)["n"] = tuple(h) if type(h) is list else list(h) if type(h) is tuple else [h["next"], h["s"]]


def _alike_kind(m: Box, k: int, holder: str) -> None:
    """Link ``k``'s container turned into another kind read alike by item or key (list ->
    tuple, dict -> OrderedDict: other pytrees to the reference)."""
    x = nlink_at(m, k, holder)
    h = vars(x)["n"]
    alike = tuple(h) if type(h) is list else list(h) if type(h) is tuple else collections.OrderedDict(h)
    vars(x)["n"] = alike


def _longer(m: Box, k: int, holder: str) -> None:
    x = nlink_at(m, k, holder)
    h = vars(x)["n"]
    vars(x)["n"] = [*h, 5] if type(h) is list else (*h, 5) if type(h) is tuple else {**h, "t": 5}


def _shorter(m: Box, k: int, holder: str) -> None:
    x = nlink_at(m, k, holder)
    h = vars(x)["n"]
    vars(x)["n"] = {"next": h["next"]} if type(h) is dict else h[:1]


def _renamed(m: Box, k: int, holder: str) -> None:
    x = nlink_at(m, k, holder)
    h = vars(x)["n"]
    vars(x)["n"] = {"nxt": h["next"], "s": h["s"]}


def _not_a_link(m: Box, k: int, holder: str) -> None:
    """Link ``k``'s next link replaced by a box holding the same."""
    x = nlink_at(m, k, holder)
    h = vars(x)["n"]
    nxt = HOLDERS[holder][1](h)
    if type(h) is dict:
        vars(x)["n"] = {**h, "next": Box(**vars(nxt))}
    else:
        vars(x)["n"] = type(h)([Box(**vars(nxt)), *h[1:]])


def _state_type(m: Box, k: int, holder: str) -> None:
    x = nlink_at(m, k, holder)
    vars(x)["z1"] = Buffer(vars(x)["z1"].value)


def _cb_static(m: Box, k: int, holder: str) -> None:
    nlink_at(m, k, holder).z0.items["w"] = 3


#: one link changed: (the miss kind, how)
MUTATIONS: dict[str, tuple[str, Callable[[Box, int, str], None]]] = {
    "container kind": ("type", _kind),
    "container kind read alike": ("type", _alike_kind),
    "container longer": ("container", _longer),
    "container shorter": ("container", _shorter),
    "dict key renamed": ("container", _renamed),
    "next link of another class": ("type", _not_a_link),
    "state type after": ("type", _state_type),
    "callback's state a static": ("type", _cb_static),
}


@pytest.mark.parametrize("name", sorted(MUTATIONS))
@pytest.mark.parametrize("k", [0, 1, 20, 38])
@pytest.mark.parametrize("holder", ["tuple", "dict"])
def test_each_link_mutated_is_a_miss(outlined: None, name: str, k: int, holder: str) -> None:
    """Link ``k`` (the head, the second, one in the middle, the last of the chain) changed:
    a miss of that kind, the reference's answer and user calls, nothing changed."""
    kind, mutate = MUTATIONS[name]
    if name == "dict key renamed" and holder != "dict":
        pytest.skip("a dict's only")
    m = nchain(40, holder, ("param",), ("cb", "param"))
    sg.flatten(m)
    gd, _ = sg.flatten(m)
    assert _split(gd)
    mutate(m, k, holder)
    before = snapshot_all(m)
    misses = sg.cache_info()["guard_misses"].get(kind, 0)
    hits = sg.cache_info()["hits"]
    got, log = _logged(lambda: sg.flatten(m))
    ref, ref_log = _logged(lambda: sg.generic.flatten(m))
    assert_same_flatten(got, ref)
    assert log[-len(ref_log):] == ref_log  # (the reference's answer: its calls last)
    assert sg.cache_info()["hits"] == hits
    assert sg.cache_info()["guard_misses"].get(kind, 0) == misses + 1, sg.cache_info()["guard_misses"]
    assert snapshot_all(m) == before


@pytest.mark.parametrize("k", [1, 20, 38])
def test_a_state_shared_by_two_links_containers_is_a_distinct_miss(outlined: None, k: int) -> None:
    m = nchain(40, "dict", (), ("cb",))
    sg.flatten(m)
    assert _split(sg.flatten(m)[0])
    other = nlink_at(m, 0 if k > 1 else 30, "dict")
    vars(nlink_at(m, k, "dict"))["n"]["s"] = vars(other)["n"]["s"]
    before = sg.cache_info()["guard_misses"].get("distinct", 0)
    assert_same_flatten(sg.flatten(m), sg.generic.flatten(m))
    assert sg.cache_info()["guard_misses"].get("distinct", 0) == before + 1


@pytest.mark.parametrize(("kind", "name", "holder"), [
    ("type", "container kind read alike", "list"), ("type", "container kind read alike", "dict"),
    ("container", "container longer", "list"), ("container", "container longer", "dict"),
    ("distinct", "tie", "dict")])
@pytest.mark.parametrize("k", [1, 20, 38])
def test_the_containers_guards_are_load_bearing(outlined: None, kind: str, name: str, holder: str, k: int,
                                                disable: Callable[[frozenset[str]], None]) -> None:
    """Without the guards of its kind, the loop answers link ``k`` (not the first) whose
    container changed: the answer differs from the reference's. (A dict's key renamed
    needs no guard of its own: its keyed read fails.)"""

    def tie(m: Box, k: int, holder: str) -> None:
        vars(nlink_at(m, k, holder))["n"]["s"] = vars(nlink_at(m, 0, holder))["n"]["s"]

    mutate = tie if name == "tie" else MUTATIONS[name][1]
    assert_stale_without(kind, disable, lambda: nchain(40, holder, (), ("cb",)),
                         lambda m: mutate(m, k, holder), lambda gd: _split(gd) or pytest.fail("not split"))


@pytest.mark.parametrize("where", ["after", "in the container", "tail"])
@pytest.mark.parametrize("k", [0, 1, 35, 68])
def test_a_flatten_that_raises(impl: Any, where: str, k: int) -> None:
    """A registered flatten raises (after link ``k``'s next link, in its container, or in
    the tail): flatten and update raise the reference's error, and nothing is changed."""
    m = nchain(70, "nested", ("cb",), ("cb", "param"))
    _, sm = impl.flatten(m)
    impl.flatten(m)
    x = nlink_at(m, k, "nested")
    if where == "after":
        x.z0.boom = True
    elif where == "in the container":
        vars(x)["n"]["b"].boom = True
    else:
        nlink_at(m, 69, "nested").n["a"][1][0].boom = True
    before = snapshot_all(m)
    with pytest.raises(ValueError) as ref:
        sg.generic.flatten(m)
    new = _bump(sm, 1.0)
    calls = [lambda: sg.flatten(m), lambda: sg.update(m, new)] if impl.compiled else \
        [lambda: sg.generic.flatten(m), lambda: sg.generic.update(m, new)]
    for call in calls:
        with pytest.raises(ValueError) as got:
            call()
        assert str(got.value) == str(ref.value)
        assert snapshot_all(m) == before


def snapshot_all(m: Any) -> list[Any]:
    """Every node's children, every container's items (keys and objects) and every state's
    value object (test_chain_after's ``snapshot``, dicts opened too)."""
    out: list[Any] = []
    stack: list[Any] = [m]
    seen: set[int] = set()
    while stack:
        x = stack.pop()
        if type(x) is dict:
            out.append([(k, id(v)) for k, v in x.items()])
            stack.extend(x.values())
            continue
        if type(x) in (list, tuple):
            out.append([id(v) for v in x])
            stack.extend(x)
            continue
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
    return out


@pytest.mark.parametrize("holder", ["list", "dict"])
@pytest.mark.parametrize("cb", [True, False])
def test_ten_thousand_links_at_default_settings(holder: str, cb: bool) -> None:
    """At the default settings: specialized, loops (two with user code after the next link;
    flatten and update), the user code called once per node in the reference's order."""
    after = ("cb",) if cb else ("param",)
    m, twin = nchain(10_000, holder, ("param",), after), nchain(10_000, holder, ("param",), after)
    sg.flatten(m)
    (gd, sm), log = _logged(lambda: sg.flatten(m))
    ref, ref_log = _logged(lambda: sg.generic.flatten(m))
    # (equal GraphDefs have equal paths: not materialized here)
    assert gd == ref[0] and hash(gd) == hash(ref[0])
    assert len(sm) == len(ref[1]) and all(a is b for a, b in zip(sm.values(), ref[1].values(), strict=True))
    assert log == ref_log and len(log) == (10_001 if cb else 1)
    assert sg.cache_info()["hits"] == 1 and _looped(gd) and _split(gd) == cb
    var = dispatch.variant_for(gd)
    assert var is not None and len(var.sources["flatten"].splitlines()) < 200
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
@given(holder=st.sampled_from(sorted(HOLDERS)),
       before=st.lists(st.sampled_from(KIND_NAMES), max_size=3),
       after=st.lists(st.sampled_from(KIND_NAMES), max_size=3),
       n=st.integers(2, 9) | st.integers(64, 70),
       last=st.none() | st.lists(st.sampled_from(KIND_NAMES), max_size=2))
def test_random_layouts(impl: Any, holder: str, before: list[str], after: list[str], n: int,
                        last: list[str] | None) -> None:
    """Random layouts: the container, what a link holds before and after it, how many
    links, a last link that differs. Every answer and user call the reference's; a loop
    wherever the chain is long enough, split wherever a link runs user code after its next."""
    sg.clear_cache()
    lst = tuple(last) if last is not None else None
    gd = check_all(impl, lambda: nchain(n, holder, tuple(before), tuple(after), lst))
    if impl.compiled:
        # (a last link that differs only in an int static may still be a link of the chain,
        # its static a parameter: between the two counts, either)
        most = n - 1
        least = most - (lst is not None and lst != tuple(after))
        least_ok, most_ok = least >= max(2, CONFIG.outline_min), most >= max(2, CONFIG.outline_min)
        if least_ok == most_ok:
            assert _looped(gd) == least_ok, (holder, before, after, n, last)
        if _looped(gd):
            assert _split(gd) == _split_expected(holder, tuple(after)), (holder, before, after, n, last)


#: a dict key that would run code if it were spliced into generated source
HOSTILE = "'); import os; os.system('echo PWNED') #"


def _links_of(n: int, make: Callable[[Any, int], dict[str, Any]]) -> Box:
    x: Any = CB(-1, w=_p(-1))
    for i in range(n):
        x = Link(**make(x, i))
    return Box(x=x, y=_p(-2))


def _with_root_backref() -> Box:
    m = nchain(70, "list", (), ("cb",))
    vars(nlink_at(m, 3, "list"))["n"].append(m)  # (link 3's list: no link of the chain)
    return m


#: the breaker's cases: (how, a loop serves the flatten)
ODD: dict[str, tuple[Callable[[], Box], bool]] = {
    "hostile dict keys": (lambda: _links_of(70, lambda x, i: {"n": {HOSTILE: x, "s\n'": _p(i)},
                                                              "z": CB(i, w=_p(i))}), True),
    "the next link four containers deep": (
        lambda: _links_of(70, lambda x, i: {"n": {"a": [(_p(i), {"b": (x,)}), 3]}, "z": _p(i)}), True),
    "a direct next link, a node of its class in a list": (
        lambda: _links_of(70, lambda x, i: {"a": x, "n": [Link(p=_p(i))], "z": CB(i, w=_p(i))}), True),
    "two nodes of its class in its list: no link": (
        lambda: _links_of(70, lambda x, i: {"n": [x, Link(p=_p(i))], "z": CB(i, w=_p(i))}), False),
    "lists and tuples alternating: no link of one shape": (
        lambda: _links_of(70, lambda x, i: {"n": [x] if i % 2 else (x,), "z": CB(i, w=_p(i))}), False),
    "a back-reference to the root in one link's list": (_with_root_backref, True),
    "three chains in a list": (
        lambda: Box(layers=[nchain(70, "list", ("param",), ("cb",)).x for _ in range(3)]), True),
}


@pytest.mark.parametrize("name", sorted(ODD))
def test_odd_layouts(impl: Any, name: str) -> None:
    """Every answer and user call the reference's, hits counted; nothing of a hostile key
    runs; a loop where the links are of one shape."""
    make, looped = ODD[name]
    gd = check_all(impl, make)
    if impl.compiled and CONFIG.outline_min <= 60:
        assert _looped(gd) == looped


def test_the_next_link_moved_in_its_tuple(outlined: None) -> None:
    """Link 10's tuple holds its next link at another place: a type miss (the item read
    there is no link), the reference's answer, nothing changed."""
    m = nchain(30, "tuple", (), ("cb",))
    sg.flatten(m)
    assert _looped(sg.flatten(m)[0])
    x = nlink_at(m, 10, "tuple")
    vars(x)["n"] = (7, vars(x)["n"][0])
    before, misses = snapshot_all(m), sg.cache_info()["guard_misses"].get("type", 0)
    assert_same_flatten(sg.flatten(m), sg.generic.flatten(m))
    assert sg.cache_info()["guard_misses"].get("type", 0) == misses + 1
    assert snapshot_all(m) == before


@pytest.mark.parametrize("holder", ["list", "nested"])
@pytest.mark.parametrize("cb", [True, False])
def test_ten_thousand_links_unflatten(holder: str, cb: bool) -> None:
    """At the default settings the unflatten of 10 000 links is compiled (loops), the
    reference's objects, every user call the reference's, in its order."""
    after = ("cb",) if cb else ("param",)
    gd, sm = sg.generic.flatten(nchain(10_000, holder, ("param",), after))
    sg.unflatten(gd, sm)
    hits = sg.cache_info()["unflatten_hits"]
    got, log = _logged(lambda: sg.unflatten(gd, sm))
    assert sg.cache_info()["unflatten_hits"] == hits + 1
    ref, ref_log = _logged(lambda: sg.generic.unflatten(gd, sm))
    assert log == ref_log
    a, b = sg.generic.flatten(got), sg.generic.flatten(ref)
    assert a[0] == b[0] and all(x is y for x, y in zip(a[1].values(), b[1].values(), strict=True))


def _ucb_chain(n: int, holder: str) -> Box:
    """Links holding logged callback nodes (their create_empty and set_key calls recorded,
    test_outline_callback_unflatten's) before their container, in it after the next link,
    and after it."""
    x: Any = UCB(-1.0)
    for i in range(n):
        held: Any = [x, UCB(float(i) + 0.5)] if holder == "list" else {"next": x, "u": UCB(float(i) + 0.5)}
        x = Link(a=UCB(float(i)), n=held, p=_p(i), z=UCB(float(i) + 0.25, meta=("m", i)))
    return Box(x=x, y=_p(-2))


@pytest.mark.parametrize("holder", ["list", "dict"])
@pytest.mark.parametrize("n", [70, 10_000])
def test_unflatten_calls_user_code_as_the_reference(holder: str, n: int) -> None:
    """The unflatten (compiled: hits counted) makes and fills every callback node as the
    reference does: the same create_empty / set_key calls, with what they are given, in
    the same order."""
    gd, sm = sg.generic.flatten(_ucb_chain(n, holder))
    sg.unflatten(gd, sm)
    hits = sg.cache_info()["unflatten_hits"]
    got, log = record(lambda: sg.unflatten(gd, sm))
    assert sg.cache_info()["unflatten_hits"] == hits + 1
    ref, ref_log = record(lambda: sg.generic.unflatten(gd, sm))
    assert log == ref_log
    a, b = sg.generic.flatten(got), sg.generic.flatten(ref)
    assert a[0] == b[0] and all(x is y for x, y in zip(a[1].values(), b[1].values(), strict=True))
