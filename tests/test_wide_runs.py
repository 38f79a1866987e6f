"""Wide structures: a run of sibling states of one kind (a node's attributes, a dict's
values, a list's or tuple's items) is one loop in the generated flatten, update and
collect, not one unrolled block per state, so a node of 100 000 Params is specialized
(see ``FlattenPlanner._state_runs``).

Every item is still guarded as the unrolled code guards it: its exact type, its metadata,
its place in the distinct set, the container's length and keys, the node's attribute
names. Each mutation below, made to one item, is a miss answered by the reference walker;
without each guard kind the loop answers the mutated structure as the old one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import hypothesis
import jax
import numpy as np
import pytest
from conftest import assert_same_flatten, assert_stale_without, outlined_flatten_hits
from hypothesis import strategies as hst

import specgraph as sg
from specgraph.runtime import dispatch
from specgraph.runtime.cache import CONFIG


class Bag(sg.Node):
    pass


class Buffer(sg.State):
    pass


LAYOUTS = ["attrs", "dict", "list", "tuple"]


def _p(i: int, **meta: Any) -> sg.Param:
    return sg.Param(np.full((2,), i, np.float32), **meta)


def wide(layout: str, n: int, make: Callable[[int], Any] = _p) -> Bag:
    """A node holding ``n`` states of one kind, laid out as ``layout``, and a static and a
    state beside them."""
    b = Bag()
    items = [make(i) for i in range(n)]
    if layout == "attrs":
        for i, x in enumerate(items):
            setattr(b, f"p{i:05d}", x)
    elif layout == "dict":
        b.d = {f"k{i:05d}": x for i, x in enumerate(items)}
    elif layout == "list":
        b.d = items
    else:
        b.d = tuple(items)
    b.z_static = 3
    b.z_state = sg.State(np.zeros(3, np.float32))
    return b


def items_of(b: Bag, layout: str) -> list[tuple[Any, Any]]:
    """(key, state) of the run's items, in order."""
    if layout == "attrs":
        return [(k, v) for k, v in sorted(vars(b).items()) if k.startswith("p")]
    if layout == "dict":
        return list(b.d.items())
    return list(enumerate(b.d))


def set_item(b: Bag, layout: str, key: Any, value: Any) -> None:
    if layout == "attrs":
        setattr(b, key, value)
    elif layout == "tuple":
        b.d = (*b.d[:key], value, *b.d[key + 1:])
    else:
        b.d[key] = value


def _source(gd: sg.GraphDef, kind: str = "flatten") -> str:
    var = dispatch.variant_for(gd)
    assert var is not None
    return var.sources[kind]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_wide_run_is_one_loop_and_matches_the_reference(impl: Any, layout: str) -> None:
    b = wide(layout, 100)
    ref = sg.generic.flatten(b)
    got = impl.flatten(b)
    assert_same_flatten(got, ref)
    new = jax.tree.map(lambda v: v + 1, got[1])
    impl.update(b, new)
    _, now = sg.generic.flatten(b)
    assert all(x is y for x, y in zip(now.values(), new.values(), strict=True))
    twin = impl.unflatten(*ref)
    assert_same_flatten(sg.generic.flatten(twin), ref)
    params = sg.split(b, sg.Param, ...)[1]
    assert list(params.keys()) == [p for p in ref[1] if "z_state" not in p]
    if impl.compiled:  # (outline_min 64 and 2: 100 states of one kind are one loop)
        gd = got[0]
        assert "a run of 100 x Param" in sg.explain(gd)
        src = _source(gd)
        assert src.count("if type(") < 10  # one body, not a hundred
        assert outlined_flatten_hits() > 0


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_short_run_stays_unrolled(layout: str) -> None:
    """Below ``outline_min`` (64 by default) the states are unrolled as before."""
    b = wide(layout, CONFIG.outline_min - 1)
    sg.flatten(b)
    gd, _ = sg.flatten(b)
    assert "a run of" not in sg.explain(gd)
    assert sg.cache_info()["hits"] == 1


@pytest.mark.parametrize("layout", LAYOUTS)
def test_thirty_thousand_states_are_specialized_at_default_settings(layout: str) -> None:
    n = 30_000
    b = wide(layout, n)
    ref = sg.generic.flatten(b)
    sg.flatten(b)
    got = sg.flatten(b)
    info = sg.cache_info()
    assert info["hits"] == 1 and info["declined"] == 0 and info["declined_too_large"] == 0
    assert_same_flatten(got, ref)
    new = jax.tree.map(lambda v: v + 1, got[1])
    sg.update(b, new)
    assert sg.cache_info()["update_hits"] == 1
    _, now = sg.generic.flatten(b)
    assert all(x is y for x, y in zip(now.values(), new.values(), strict=True))


# -- one item mutated: a miss, and the reference's answer --------------------------------


def _mutations() -> dict[str, Callable[[Bag, str, int], None]]:
    def retype(b: Bag, layout: str, i: int) -> None:
        k, v = items_of(b, layout)[i]
        set_item(b, layout, k, Buffer(v.value))

    def remeta(b: Bag, layout: str, i: int) -> None:
        k, v = items_of(b, layout)[i]
        set_item(b, layout, k, sg.Param(v.value, tag="x"))

    def rename(b: Bag, layout: str, i: int) -> None:
        k, v = items_of(b, layout)[i]
        if layout == "attrs":
            delattr(b, k)
            setattr(b, k + "_", v)  # (sorts right after the old name: same position)
        elif layout == "dict":
            b.d = {(kk + "_" if kk == k else kk): vv for kk, vv in b.d.items()}
        else:
            set_item(b, layout, k, sg.Param(v.value))  # (a list has no keys: a fresh state)

    def remove(b: Bag, layout: str, i: int) -> None:
        k, _ = items_of(b, layout)[i]
        if layout == "attrs":
            delattr(b, k)
        elif layout == "dict":
            del b.d[k]
        elif layout == "list":
            del b.d[k]
        else:
            b.d = b.d[:k] + b.d[k + 1:]

    def add(b: Bag, layout: str, i: int) -> None:
        if layout == "attrs":
            setattr(b, f"p{i:05d}x", _p(-1))
        elif layout == "dict":
            b.d[f"new{i}"] = _p(-1)
        elif layout == "list":
            b.d.insert(i, _p(-1))
        else:
            b.d = (*b.d[:i], _p(-1), *b.d[i:])

    def share(b: Bag, layout: str, i: int) -> None:
        items = items_of(b, layout)
        k, _ = items[i]
        set_item(b, layout, k, items[(i + 1) % len(items)][1])  # the same Param twice

    return {"type": retype, "metadata": remeta, "rename": rename, "remove": remove, "add": add,
            "share": share}


MUTATIONS = _mutations()


@hypothesis.settings(max_examples=40, deadline=None,
                     suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])
@hypothesis.given(layout=hst.sampled_from(LAYOUTS), n=hst.integers(64, 140), data=hst.data(),
                  mutation=hst.sampled_from(sorted(MUTATIONS)))
def test_one_item_mutated_is_a_miss_answered_by_the_reference(layout: str, n: int, data: Any,
                                                               mutation: str) -> None:
    sg.clear_cache()
    b = wide(layout, n)
    sg.flatten(b)
    gd, st = sg.flatten(b)
    assert sg.cache_info()["hits"] == 1 and "a run of" in sg.explain(gd)
    i = data.draw(hst.integers(0, n - 1), label="item")
    MUTATIONS[mutation](b, layout, i)
    ref = sg.generic.flatten(b)
    del st
    got = sg.flatten(b)
    assert_same_flatten(got, ref)
    if ref[0] != gd:
        assert sg.cache_info()["guard_misses"], "the stale variant must not have answered"
    # Served again from the same cache: the variant of the new structure agrees too.
    assert_same_flatten(sg.flatten(b), ref)
    new = jax.tree.map(lambda v: v + 1, ref[1])
    sg.update(b, new)
    _, now = sg.generic.flatten(b)
    assert all(x is y for x, y in zip(now.values(), new.values(), strict=True))


def test_a_shared_state_in_a_run_stays_exact(impl: Any) -> None:
    """A state met twice breaks the run where it sits (its identity guard is unrolled);
    the rest are loops."""
    b = wide("dict", 200)
    b.d["k00150"] = b.d["k00020"]
    b.tied = b.d["k00070"]
    ref = sg.generic.flatten(b)
    assert_same_flatten(impl.flatten(b), ref)
    twin = impl.unflatten(*ref)
    assert twin.d["k00150"] is twin.d["k00020"] and twin.tied is twin.d["k00070"]
    if impl.compiled:
        assert "a run of 79 x Param" in sg.explain(ref[0])  # (k00071..k00149)


# -- every guard of the loop is load-bearing ---------------------------------------------


#: guard kind -> (layouts, mutation) it alone catches in the loop
KILLS = {
    "type": (LAYOUTS, "type"),
    "metadata": (LAYOUTS, "metadata"),
    "distinct": (LAYOUTS, "share"),
    "container": (["dict", "list", "tuple"], "add"),
    "node_keys": (["attrs"], "add"),
}


@pytest.mark.parametrize("kind, layout", [(k, lay) for k, (lays, _) in KILLS.items() for lay in lays])
def test_each_loop_guard_is_load_bearing(kind: str, layout: str,
                                         disable: Callable[[frozenset[str]], None]) -> None:
    """Without the guards of ``kind`` the loop answers the mutated structure with the stale
    one (it differs from the reference); with them it is a miss and the reference's answer."""
    def check(gd: sg.GraphDef) -> None:
        assert "a run of 80 x Param" in sg.explain(gd)

    assert_stale_without(kind, disable, lambda: wide(layout, 80),
                         lambda b: MUTATIONS[KILLS[kind][1]](b, layout, 40), check)


# -- the unflatten: a run of sibling states is one loop too ------------------------------


def _unflatten_loops(gd: sg.GraphDef) -> list[str]:
    """The loops of the compiled unflatten of ``gd`` (empty: none compiled)."""
    built = dispatch._unflat.get(gd)
    return [] if built is None else list(built.plan.loops)


def _unflatten_source(gd: sg.GraphDef) -> str:
    text = sg.explain(gd)
    return text[text.index("Generated unflatten"):]


def test_a_wide_run_unflattens_as_one_loop(impl: Any) -> None:
    """Every layout at once (a node's attributes, a dict's values, a list's and a tuple's
    items), with metadata on some runs: the twin is the reference's, state by state."""
    b = wide("attrs", 90)
    b.d = {f"k{i:03d}": _p(i, tag=i % 3) for i in range(80)}
    b.l = [_p(i) for i in range(70)]
    b.t = tuple(Buffer(np.float32(i)) for i in range(66))
    ref = sg.generic.flatten(b)
    twin = impl.unflatten(*ref)
    assert_same_flatten(sg.generic.flatten(twin), ref)
    assert vars(twin).keys() == vars(b).keys() and list(twin.d) == list(b.d)
    assert type(twin.l) is list and type(twin.t) is tuple
    assert [p.metadata for p in twin.d.values()] == [p.metadata for p in b.d.values()]
    again = impl.unflatten(*ref)
    assert all(x is not y for x, y in zip(twin.l, again.l, strict=True))  # fresh states every call
    if impl.compiled:
        loops = _unflatten_loops(ref[0])
        assert sorted(x.split(": ")[1] for x in loops) == [
            "a run of 66 x Buffer", "a run of 70 x Param", "a run of 80 x Param", "a run of 90 x Param"]
        assert sg.cache_info()["unflatten_hits"] >= 2
        assert _unflatten_source(ref[0]).count("NEW(Param)") == 3  # three loops, no unrolled Param


def test_thirty_thousand_states_unflatten_specialized_in_each_layout() -> None:
    """At default settings: 30 000 states in each layout, at once, one compiled unflatten."""
    n = 30_000
    b = wide("attrs", n)
    b.d = {f"k{i:05d}": _p(i) for i in range(n)}
    b.l = [_p(i) for i in range(n)]
    b.t = tuple(_p(i) for i in range(n))
    ref = sg.generic.flatten(b)
    assert ref[0].num_states == 4 * n + 1
    sg.unflatten(*ref)
    twin = sg.unflatten(*ref)
    info = sg.cache_info()
    assert info["compiled_unflattens"] == 1 and info["unflatten_hits"] == 1
    assert len(_unflatten_loops(ref[0])) == 4
    assert_same_flatten(sg.generic.flatten(twin), ref)


class Logged(sg.State):
    """A state class whose construction and attribute stores are logged (user code the
    reference runs per state, in table order)."""

    __slots__ = ()

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        LOG.append(("new", cls.__name__))
        return super().__new__(cls)

    def __setattr__(self, name: str, value: Any) -> None:
        LOG.append(("set", name, value if name == "_metadata" else float(np.asarray(value).ravel()[0])))
        super().__setattr__(name, value)


LOG: list[tuple[Any, ...]] = []


class CbBag:
    """A callback node type: its registered set_key is user code, logged."""

    def __init__(self, kids: dict[Any, Any] | None = None) -> None:
        self.kids = dict(kids or {})


def _cb_set_key(node: CbBag, key: Any, value: Any) -> None:
    LOG.append(("set_key", key, type(value).__name__, float(np.asarray(value.value).ravel()[0])))
    node.kids[key] = value


def _cb_empty(meta: Any) -> CbBag:
    LOG.append(("create_empty", meta))
    return CbBag()


sg.register_graph_node_type(CbBag, lambda n: (list(n.kids.items()), "cb"), _cb_set_key,
                            lambda n, k: n.kids.pop(k), _cb_empty, lambda n: n.kids.clear())


def _logged(i: int) -> Logged:
    return Logged(np.full((2,), i, np.float32), **({"tag": "a"} if i % 2 else {}))


def _logged_tree(n: int) -> Bag:
    """Runs of logged states in every layout (metadata alternating: runs of one kind are
    cut), one under a callback node whose set_key logs, and a tie between two of them."""
    b = Bag()
    for i in range(n):
        setattr(b, f"a{i:04d}", Logged(np.full((2,), i, np.float32)))
    b.d = {f"k{i:04d}": Logged(np.full((2,), 1000 + i, np.float32), tag="b") for i in range(n)}
    b.l = [Logged(np.full((2,), 2000 + i, np.float32)) for i in range(n)]
    b.t = tuple(Logged(np.full((2,), 3000 + i, np.float32)) for i in range(n))
    b.cb = CbBag({**{f"c{i:04d}": Logged(np.full((2,), 4000 + i, np.float32)) for i in range(n)},
                  **{i: Logged(np.full((2,), 5000 + i, np.float32)) for i in range(n)}})
    b.mixed = [_logged(i) for i in range(n)]
    b.tie = b.l[-1]
    return b


def _check_same_calls(impl: Any, gd: sg.GraphDef, sm: sg.StateMap) -> Any:
    """The unflatten by ``impl`` makes the user calls the reference makes, in its order, and
    a twin equal to the reference's (ties included). Returns the twin."""
    LOG.clear()
    ref_twin = sg.generic.unflatten(gd, sm)
    want = list(LOG)
    LOG.clear()
    twin = impl.unflatten(gd, sm)
    got = list(LOG)
    if not impl.compiled:
        assert got == want
    else:  # (impl.unflatten calls twice: the first may be the walker's, the second compiled)
        assert got[len(got) - len(want):] == want and len(got) == 2 * len(want)
    assert_same_flatten(sg.generic.flatten(twin), sg.generic.flatten(ref_twin))
    assert twin.tie is twin.l[-1]
    return twin


def test_a_run_makes_the_reference_calls_in_its_order(impl: Any) -> None:
    b = _logged_tree(70)
    gd, sm = sg.generic.flatten(b)
    _check_same_calls(impl, gd, sm)
    if impl.compiled:
        loops = _unflatten_loops(gd)
        assert sg.cache_info()["unflatten_hits"] >= 1
        # attrs, the dict, the list (but the tie), the tuple, the callback node's (str and int
        # keys); none in the list of alternating metadata
        assert sorted(x.split(": ")[1] for x in loops if "a run of" in x) == [
            "a run of 140 x Logged", "a run of 69 x Logged", *["a run of 70 x Logged"] * 3], loops
        assert "set_key_run" not in _unflatten_source(gd)  # (op names never reach the text)


def test_a_loop_in_another_order_is_caught(impl: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The suite fails when a run's loop stores its states under other keys (reversed): the
    call log and the twin differ from the reference's."""
    if not impl.compiled:
        pytest.skip("the walker has no loop")
    from specgraph.codegen import unflatten_plan

    real = unflatten_plan.UnflattenPlanner._find_state_runs

    def reversed_keys(self: Any) -> dict[int, Any]:
        runs = real(self)
        return {i: dataclasses.replace(r, keys=None if r.keys is None else r.keys[::-1])
                for i, r in runs.items()}

    monkeypatch.setattr(unflatten_plan.UnflattenPlanner, "_find_state_runs", reversed_keys)
    b = _logged_tree(70)
    gd, sm = sg.generic.flatten(b)
    with pytest.raises(AssertionError):
        _check_same_calls(impl, gd, sm)


def test_a_tie_counted_once_is_caught(impl: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The suite fails when a tied state joins a run (made once per place, not shared)."""
    if not impl.compiled:
        pytest.skip("the walker has no loop")
    from specgraph.codegen import unflatten_plan

    monkeypatch.setattr(unflatten_plan, "edge_refs", lambda gd: [1] * len(gd.table))
    b = _logged_tree(70)
    gd, sm = sg.generic.flatten(b)
    with pytest.raises((AssertionError, NameError)):  # (the tie's second place: never made)
        _check_same_calls(impl, gd, sm)


@hypothesis.settings(max_examples=25, deadline=None,
                     suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])
@hypothesis.given(layout=hst.sampled_from(LAYOUTS), n=hst.integers(64, 130), data=hst.data())
def test_runs_with_ties_and_metadata_unflatten_as_the_reference(impl: Any, layout: str, n: int,
                                                               data: Any) -> None:
    sg.clear_cache()
    meta = data.draw(hst.lists(hst.sampled_from([None, "x", "y"]), min_size=n, max_size=n), label="meta")
    b = wide(layout, n, lambda i: _p(i) if meta[i] is None else _p(i, tag=meta[i]))
    ties = data.draw(hst.lists(hst.tuples(hst.integers(0, n - 1), hst.integers(0, n - 1)), max_size=4),
                     label="ties")
    items = items_of(b, layout)
    for dst, src in ties:
        set_item(b, layout, items[dst][0], items[src][1])
        items = items_of(b, layout)
    b.extra = [items[src][1] for _, src in ties]  # (ties across containers too)
    ref = sg.generic.flatten(b)
    twin = impl.unflatten(*ref)
    assert_same_flatten(sg.generic.flatten(twin), ref)
    ref_twin = sg.generic.unflatten(*ref)
    mine, theirs = items_of(twin, layout), items_of(ref_twin, layout)
    for (k1, x), (k2, y) in zip(mine, theirs, strict=True):
        assert k1 == k2 and type(x) is type(y) and x._metadata is y._metadata and x.value is y.value
    same = [[i for i, (_, y) in enumerate(mine) if y is x] for _, x in mine]
    assert same == [[i for i, (_, y) in enumerate(theirs) if y is x] for _, x in theirs]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("mutation", ["missing", "extra", "wrong type"])
def test_a_bad_state_mapping_is_the_reference_error(impl: Any, layout: str, mutation: str) -> None:
    """A state mapping missing a path, with one path too many or not a mapping at all: the
    reference's error (type and message), and no object given is touched."""
    b = wide(layout, 80)
    gd, sm = sg.generic.flatten(b)
    impl.unflatten(gd, sm)  # (compiled, where it is)
    before = dict(vars(b))
    bad: Any = dict(sm)
    if mutation == "missing":
        del bad[next(iter(sm))]
    elif mutation == "extra":
        bad[("nope", 1)] = np.zeros(2)
    else:
        bad = list(sm.values())
    kept = dict(bad) if isinstance(bad, dict) else list(bad)
    with pytest.raises(Exception) as want:
        sg.generic.unflatten(gd, bad)
    with pytest.raises(type(want.value)) as got:
        impl.unflatten(gd, bad)
    assert str(got.value) == str(want.value)
    assert dict(vars(b)) == before and all(vars(b)[k] is v for k, v in before.items())
    if isinstance(bad, dict):
        assert bad.keys() == kept.keys() and all(bad[k] is v for k, v in kept.items())
    else:
        assert all(x is y for x, y in zip(bad, kept, strict=True))


@jax.tree_util.register_pytree_node_class
class Items:
    """A custom JAX pytree: its items are children (its unflatten is user code, called once)."""

    def __init__(self, xs: list[Any]) -> None:
        self.xs = list(xs)

    def tree_flatten(self) -> tuple[list[Any], None]:
        return self.xs, None

    @classmethod
    def tree_unflatten(cls, aux: None, kids: list[Any]) -> Items:
        return cls(kids)


@pytest.mark.parametrize("where", ["root list", "root dict", "custom pytree"])
def test_a_run_at_the_root_or_in_a_custom_pytree(impl: Any, where: str) -> None:
    xs = [_p(i) for i in range(75)]
    if where == "root list":
        obj: Any = xs
    elif where == "root dict":
        obj = {f"k{i:02d}": x for i, x in enumerate(xs)}
    else:
        obj = Bag()
        obj.items = Items(xs)
        obj.w = _p(-1)
    ref = sg.generic.flatten(obj)
    twin = impl.unflatten(*ref)
    assert_same_flatten(sg.generic.flatten(twin), ref)
    if impl.compiled:
        assert [x.split(": ")[1] for x in _unflatten_loops(ref[0])] == ["a run of 75 x Param"]


def test_a_run_class_gaining_new_is_a_class_miss(disable: Callable[[frozenset[str]], None]) -> None:
    """The loop makes its states as ``NEW(cls)`` while the class has no ``__new__``: one it
    gains after the compile is called as the reference calls it (the class guard misses).
    Without the class guards the loop skips it (the suite would see it)."""
    for disabled in (frozenset({"class"}), frozenset()):
        disable(disabled)

        class Fresh(sg.Param):
            __slots__ = ()

        b = wide("list", 70, lambda i: Fresh(np.float32(i)))
        gd, sm = sg.generic.flatten(b)
        sg.unflatten(gd, sm)
        sg.unflatten(gd, sm)
        assert [x.split(": ")[1].endswith("Fresh") for x in _unflatten_loops(gd)] == [True]
        made: list[int] = []

        def new(cls: type, *a: Any, made: list[int] = made, **k: Any) -> Any:
            made.append(1)
            return object.__new__(cls)

        Fresh.__new__ = new  # type: ignore[method-assign, assignment]
        twin = sg.unflatten(gd, sm)
        assert_same_flatten(sg.generic.flatten(twin), (gd, sm))
        assert len(made) == (0 if disabled else 70)
