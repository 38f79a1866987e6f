"""Chains of nested NNX modules / BrainState nodes (each link a Param and a ``child``):
the deepchain sweep of ``benchmarks/scaling.py`` on the peers' own classes.

A chain of 10 000 links is served by generated code at default settings: one loop over
the links in the flatten and update (``nested links of one shape``), one in the unflatten,
each link's body the library's layout (NNX's ``_pytree__nodes`` / ``_pytree__state``
bookkeeping and trace level, BrainState's hooks and raw-read rules). Every change of one
link (its class, its state's type or metadata, its bookkeeping, a hook, sharing, the chain
cut or grown) is a miss answered by the reference walker, at the head, in the middle and
at the last link; reads and writes inside traces follow each library's rules.

(The sweep's 117 / 121 ms at 10 000, against 8 / 2 ms at 3 000, was the reference walker:
the sweep compiled one variant per size in one process and the 9th made the root type
megamorphic. ``scaling.py`` now gives each point a fresh cache.)
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_stale_without

import specgraph as sg

nnx = pytest.importorskip("flax.nnx")
brainstate = pytest.importorskip("brainstate")

N = 10_000
SMALL = 300
PEERS = ["brainstate", "nnx"]


class NLink(nnx.Module):
    def __init__(self, p: Any, child: Any) -> None:
        self.p = p
        self.child = child


class NLinkB(nnx.Module):  # the same attributes, another class
    def __init__(self, p: Any, child: Any) -> None:
        self.p = p
        self.child = child


class BLink(brainstate.graph.Node):
    graph_invisible_attrs = ("scratch",)

    def __init__(self, p: Any, child: Any) -> None:
        self.p = p
        self.child = child


class BLinkB(brainstate.graph.Node):
    def __init__(self, p: Any, child: Any) -> None:
        self.p = p
        self.child = child


def param(peer: str, value: Any, **meta: Any) -> Any:
    return nnx.Param(value, **meta) if peer == "nnx" else brainstate.ParamState(value, **meta)


def link(peer: str, p: Any, child: Any, other: bool = False) -> Any:
    cls = {"nnx": (NLink, NLinkB), "brainstate": (BLink, BLinkB)}[peer][other]
    return cls(p, child)


def chain(peer: str, n: int, arrays: Callable[[int], Any] | None = None) -> Any:
    make = arrays or (lambda i: np.full((2,), i, np.float32))
    x = None
    for i in reversed(range(n)):
        x = link(peer, param(peer, make(i)), x)
    return x


@functools.cache
def big(peer: str) -> Any:
    """The chain of N of ``peer``, built once per process (building 10 000 NNX modules takes
    seconds). Tests change its values only, or undo what they change (``mutated``)."""
    return chain(peer, N)


def links(root: Any) -> list[Any]:
    out = []
    while root is not None:
        out.append(root)
        root = vars(root)["child"]
    return out


def assert_same(a: tuple[sg.GraphDef, sg.StateMap], b: tuple[sg.GraphDef, sg.StateMap]) -> None:
    """``assert_same_flatten`` without materializing the paths: those of a chain of n links
    are n tuples of up to n keys (10 000: 50 million keys, minutes and gigabytes). The path
    tables are compared link by link (O(n)), a few paths spelled out."""
    (gd_a, sm_a), (gd_b, sm_b) = a, b
    assert gd_a == gd_b and hash(gd_a) == hash(gd_b)
    assert gd_a.pathtable == gd_b.pathtable and sm_a._table == sm_b._table
    n = len(sm_a.values())
    for slot in sorted({0, min(1, n - 1), n // 2, n - 1}) if n else ():
        assert gd_a.pathtable.path(slot) == gd_b.pathtable.path(slot)
    va, vb = sm_a.values(), sm_b.values()
    assert len(va) == len(vb) and all(x is y for x, y in zip(va, vb, strict=True))


def raw(state: Any) -> Any:
    return state.get_raw_value() if hasattr(state, "get_raw_value") else state._value


def _looped(gd: sg.GraphDef, n: int) -> bool:
    return f"a loop over {n - 1} nested links of one shape" in sg.explain(gd)


def _check_update(impl: Any, root: Any, state: sg.StateMap) -> None:
    states = [vars(x)["p"] for x in links(root)]
    new = jax.tree.map(lambda v: v + 1, state)
    impl.update(root, new)
    _, now = sg.generic.flatten(root)
    assert all(x is y for x, y in zip(now.values(), new.values(), strict=True))
    assert [vars(x)["p"] for x in links(root)] == states  # written in place, not replaced


def _check_unflatten(impl: Any, gd: sg.GraphDef, state: sg.StateMap) -> Any:
    twin = impl.unflatten(gd, state)
    assert_same(sg.generic.flatten(twin), (gd, state))
    again = impl.unflatten(gd, state)
    assert again is not twin and vars(again)["p"] is not vars(twin)["p"]  # fresh objects every call
    return twin


# -- a chain of 10 000 at default settings -------------------------------------------------


@pytest.mark.repeats
@pytest.mark.parametrize("peer", PEERS)
def test_a_chain_of_ten_thousand_is_served_by_generated_code(impl: Any, peer: str) -> None:
    root = big(peer)
    ref = sg.generic.flatten(root)
    got = impl.flatten(root)
    assert_same(got, ref)
    assert got[0].num_nodes == N and got[0].num_states == N
    tables = got[0].pathtable  # ("child" < "p": the deepest link's state is slot 0)
    assert tables.path(0) == (*("child",) * (N - 1), "p") and tables.path(N - 1) == ("p",)
    _check_update(impl, root, got[1])
    twin = _check_unflatten(impl, *sg.generic.flatten(root))
    assert type(twin) is type(root) and len(links(twin)) == N
    if peer == "nnx":
        assert nnx.graphdef(links(twin)[-3]) == nnx.graphdef(links(root)[-3])  # NNX takes it
        assert links(twin)[N // 2].p.get_metadata() == links(root)[N // 2].p.get_metadata()
    else:
        assert links(twin)[N // 2].p._level == brainstate._state.TRACE_CONTEXT.get_trace_stack_level()
    if impl.compiled:
        info = sg.cache_info()
        assert info["hits"] >= 1 and info["update_hits"] >= 1 and info["unflatten_hits"] >= 1, info
        assert info["declined"] == 0 and info["declined_too_large"] == 0, info
        assert not info["guard_misses"] and not info["megamorphic_types"], info
        assert _looped(ref[0], N)


# -- one link changed: a miss, answered by the reference -----------------------------------


def _mutations() -> dict[str, Callable[[str, list[Any], int], Any]]:
    """name -> mutate(peer, links, k): change link ``k`` and return the (new) root.
    Objects of the chain are replaced, not changed, except a link's own dict (which
    ``mutated`` restores)."""

    def relink(ls: list[Any], k: int, new: Any) -> Any:
        if k == 0:
            return new
        vars(ls[k - 1])["child"] = new
        return ls[0]

    def cls(peer: str, ls: list[Any], k: int) -> Any:
        return relink(ls, k, link(peer, vars(ls[k])["p"], vars(ls[k])["child"], other=True))

    def metadata(peer: str, ls: list[Any], k: int) -> Any:
        v = raw(vars(ls[k])["p"])
        vars(ls[k])["p"] = nnx.Param(v, tag="x") if peer == "nnx" else brainstate.ParamState(v, name="x")
        return ls[0]

    def state_type(peer: str, ls: list[Any], k: int) -> Any:
        v = raw(vars(ls[k])["p"])
        vars(ls[k])["p"] = nnx.BatchStat(v) if peer == "nnx" else brainstate.ShortTermState(v)
        return ls[0]

    def share(peer: str, ls: list[Any], k: int) -> Any:
        vars(ls[k])["p"] = vars(ls[k - 1 if k else 1])["p"]  # one state in two links
        return ls[0]

    def length(peer: str, ls: list[Any], k: int) -> Any:
        if k == len(ls) - 1:  # the last link gets a child: one link more
            vars(ls[k])["child"] = link(peer, param(peer, np.zeros(2, np.float32)), None)
        else:  # the chain ends here
            vars(ls[k])["child"] = None
        return ls[0]

    def extra(peer: str, ls: list[Any], k: int) -> Any:
        vars(ls[k])["extra"] = 1  # past the library's bookkeeping: one more static child
        return ls[0]

    def bookkeeping(peer: str, ls: list[Any], k: int) -> Any:
        d = vars(ls[k])
        if peer == "nnx":  # NNX's per-instance record of its data attributes
            d["_pytree__nodes"] = d["_pytree__nodes"].update({"zz": True})
        else:  # a read hook on this one state: the reference reads through .value, runs it
            v = raw(d["p"])
            d["p"] = brainstate.ParamState(v)
            d["p"].register_hook("read", lambda ctx: HOOK_RUNS.append(ctx))
        return ls[0]

    def hidden(peer: str, ls: list[Any], k: int) -> Any:
        d = vars(ls[k])
        if peer == "nnx":  # NNX's hidden flag, part of its graphdef
            from specgraph.interop.nnx import _pytree_state

            d["_pytree__state"] = _pytree_state(True, False, d["_pytree__state"]._trace_state)
        else:  # an attribute the class hides from BrainState: the structure is unchanged
            d["scratch"] = np.zeros(3)
        return ls[0]

    return {"class": cls, "metadata": metadata, "state_type": state_type, "share": share,
            "length": length, "extra": extra, "bookkeeping": bookkeeping, "hidden": hidden}


MUTATIONS = _mutations()
HOOK_RUNS: list[Any] = []
#: (peer, mutation) that leave the structure as it was: a BrainState hook (the generated
#: code hands the call to the reference, which reads through .value and runs it), an
#: attribute BrainState does not see
SAME_STRUCTURE = {("brainstate", "bookkeeping"), ("brainstate", "hidden")}
WHERE = {"head": 0, "middle": 1 / 2, "last": -1}


def _at(where: str, n: int) -> int:
    f = WHERE[where]
    return n - 1 if f == -1 else int(f * n)


@pytest.fixture
def mutated() -> Iterator[Callable[[str, str, Any, int], Any]]:
    """mutate(name, peer, root, k) -> the new root; every link's dict restored afterwards
    (so the chain built once per process stays as built)."""
    saved: list[tuple[Any, dict[str, Any]]] = []

    def mutate(name: str, peer: str, root: Any, k: int) -> Any:
        ls = links(root)
        saved.extend((x, dict(vars(x))) for x in ls[max(k - 1, 0):k + 1])
        return MUTATIONS[name](peer, ls, k)

    try:
        yield mutate
    finally:
        for x, d in reversed(saved):
            vars(x).clear()
            vars(x).update(d)


def _miss_answered_by_the_reference(impl: Any, new_root: Any, gd: sg.GraphDef, same: bool = False) -> None:
    ref = sg.generic.flatten(new_root)
    assert (ref[0] == gd) is same
    hits = sg.cache_info()["hits"]
    got = impl.flatten(new_root)
    assert_same(got, ref)
    if impl.compiled:
        info = sg.cache_info()
        # (a root of another class is dispatched to its own entry: no stale variant to ask)
        assert same or info["guard_misses"] or type(new_root) not in {NLink, BLink}, "a stale answer"
        if not same:  # (impl's warm-up call missed; the second is the new variant's)
            assert info["hits"] == hits + 1
    _check_update(impl, new_root, ref[1])
    _check_unflatten(impl, *sg.generic.flatten(new_root))


@pytest.mark.parametrize(("mutation", "where"), [("bookkeeping", "head"), ("class", "middle"),
                                                  ("metadata", "last")])
@pytest.mark.parametrize("peer", PEERS)
def test_one_link_of_ten_thousand_changed_is_a_miss(peer: str, mutation: str, where: str,
                                                    mutated: Callable[..., Any]) -> None:
    """Each position once at 10 000 (each call of the reference walker takes a second or
    so there); every mutation at every position on a chain of SMALL below."""
    from conftest import Impl

    impl = Impl("specialized")
    root = big(peer)
    sg.flatten(root)
    gd, _ = sg.flatten(root)
    assert sg.cache_info()["hits"] == 1 and _looped(gd, N)
    HOOK_RUNS.clear()
    new_root = mutated(mutation, peer, root, _at(where, N))
    _miss_answered_by_the_reference(impl, new_root, gd, (peer, mutation) in SAME_STRUCTURE)
    if mutation == "bookkeeping" and peer == "brainstate":
        assert HOOK_RUNS  # the hook ran: the reference read through .value
        runs = len(HOOK_RUNS)
        sg.flatten(new_root)
        assert len(HOOK_RUNS) == runs + 1 and sg.cache_info()["guard_misses"].get("raw")


@pytest.mark.parametrize("where", sorted(WHERE))
@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
@pytest.mark.parametrize("peer", PEERS)
def test_one_link_changed_is_a_miss(impl: Any, peer: str, mutation: str, where: str,
                                    mutated: Callable[..., Any]) -> None:
    root = chain(peer, SMALL)
    gd, _ = impl.flatten(root)
    if impl.compiled:
        assert _looped(gd, SMALL)
    HOOK_RUNS.clear()
    new_root = mutated(mutation, peer, root, _at(where, SMALL))
    _miss_answered_by_the_reference(impl, new_root, gd, (peer, mutation) in SAME_STRUCTURE)
    if mutation == "bookkeeping" and peer == "brainstate":
        assert HOOK_RUNS
        runs = len(HOOK_RUNS)
        impl.flatten(new_root)
        assert len(HOOK_RUNS) > runs
        if impl.compiled:
            assert sg.cache_info()["guard_misses"].get("raw")


#: guard kind -> the mutation of one link it alone catches in the chain loop
KILLS = {"type": "class", "metadata": "metadata", "distinct": "share", "node_keys": "extra"}


@pytest.mark.parametrize("kind", sorted(KILLS))
@pytest.mark.parametrize("peer", PEERS)
def test_each_guard_of_the_chain_loop_is_load_bearing(peer: str, kind: str,
                                                      disable: Callable[[frozenset[str]], None]) -> None:
    def check(gd: sg.GraphDef) -> None:
        assert _looped(gd, 120)

    def mutate(root: Any) -> None:
        MUTATIONS[KILLS[kind]](peer, links(root), 60)

    assert_stale_without(kind, disable, lambda: chain(peer, 120), mutate, check)


def test_nnx_bookkeeping_guard_of_the_chain_loop_is_load_bearing(
        disable: Callable[[frozenset[str]], None]) -> None:
    """A link's ``_pytree__nodes`` (compared by value: every instance has its own) and its
    ``_pytree__state`` flags are the node's metadata."""
    for name in ("bookkeeping", "hidden"):
        assert_stale_without("metadata", disable, lambda: chain("nnx", 120),
                             lambda root, name=name: MUTATIONS[name]("nnx", links(root), 60),
                             lambda gd: _looped(gd, 120) or pytest.fail("not a chain loop"))


# -- inside traces ---------------------------------------------------------------------


def test_nnx_chain_update_inside_another_trace_raises_and_writes_nothing(impl: Any) -> None:
    from flax.errors import TraceContextError

    root = chain("nnx", SMALL)
    _, sm = impl.flatten(root)
    before = [raw(vars(x)["p"]) for x in links(root)]

    @jax.jit
    def f(values: sg.StateMap) -> jax.Array:
        impl.update(root, values)
        return values[(*("child",) * 5, "p")]

    with pytest.raises(TraceContextError):
        f(sm)
    assert all(raw(vars(x)["p"]) is b for x, b in zip(links(root), before, strict=True))


def test_nnx_chain_flatten_and_unflatten_inside_a_trace(impl: Any) -> None:
    """Flatten of a closure chain inside jit reads its values; the unflatten makes Variables
    of that trace, which an update inside the same trace may write."""
    root = chain("nnx", SMALL, lambda i: jnp.full((2,), float(i)))
    gd, sm = impl.flatten(root)
    deep = (*("child",) * (SMALL - 1), "p")

    @jax.jit
    def f(values: sg.StateMap) -> tuple[jax.Array, jax.Array]:
        _, inner = impl.flatten(root)
        twin = impl.unflatten(gd, values)
        impl.update(twin, jax.tree.map(lambda v: v * 3, values))
        return inner[deep], links(twin)[-1].p.get_raw_value()

    read, written = f(sm)
    np.testing.assert_array_equal(read, np.full((2,), SMALL - 1.0))
    np.testing.assert_array_equal(written, np.full((2,), 3 * (SMALL - 1.0)))
    if impl.compiled:
        info = sg.cache_info()
        assert info["hits"] >= 2 and info["unflatten_hits"] >= 1, info


def test_brainstate_chain_reads_inside_transform_jit_are_recorded_not_baked(impl: Any) -> None:
    root = chain("brainstate", SMALL, lambda i: jnp.full((2,), float(i)))
    impl.flatten(root)
    deep = (*("child",) * 150, "p")

    @brainstate.transform.jit
    def read() -> jax.Array:
        _, sm = impl.flatten(root)
        return sm[deep] + 1

    np.testing.assert_array_equal(read(), np.full((2,), 151.0))
    links(root)[150].p.value = jnp.full((2,), 10.0)
    np.testing.assert_array_equal(read(), np.full((2,), 11.0))  # a constant would still say 151


def test_brainstate_chain_update_inside_jit_refuses_the_tracer(impl: Any) -> None:
    root = chain("brainstate", SMALL, lambda i: jnp.full((2,), float(i)))
    _, sm = impl.flatten(root)
    before = [raw(vars(x)["p"]) for x in links(root)]

    @jax.jit
    def f(values: sg.StateMap) -> jax.Array:
        impl.update(root, values)
        return values[("p",)]

    with pytest.raises(brainstate._error.TraceContextError):
        f(sm)
    for x, b in zip(links(root), before, strict=True):
        assert raw(vars(x)["p"]) is b and not vars(x)["p"]._been_writen


def test_brainstate_chain_unflatten_inside_transform_jit_makes_states_of_that_level(impl: Any) -> None:
    root = chain("brainstate", SMALL)
    gd, sm = impl.flatten(root)
    impl.unflatten(gd, sm)
    seen: dict[str, Any] = {}

    @brainstate.transform.jit
    def f(x: jax.Array) -> jax.Array:
        twin = impl.unflatten(gd, sm)
        seen["levels"] = {vars(y)["p"]._level for y in links(twin)}
        seen["now"] = brainstate._state.TRACE_CONTEXT.get_trace_stack_level()
        return x + 1

    f(jnp.ones(2))
    assert seen["levels"] == {seen["now"]}
