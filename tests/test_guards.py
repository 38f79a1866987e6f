"""Guard-kill matrix: every guard kind is load-bearing.

For each kind in ``specgraph.codegen.GUARD_KINDS`` there is one scenario: a
structure, and a mutation that only that guard protects against. With the guard
generated out (``_set_disabled_guards``), the specialized flatten answers the
mutated object with the stale structure, so it DIFFERS from the reference walker;
with every guard in place the same scenario agrees with it and is counted as a
miss of that kind. A new guard kind without a scenario fails
``test_every_guard_kind_has_a_scenario``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from conftest import assert_same_flatten

import specgraph as sg
from specgraph.codegen import GUARD_KINDS


class Box(sg.Node):
    def __init__(self, **attrs: Any) -> None:
        vars(self).update(attrs)


class Twin(sg.Node):
    """Same attributes as Box, another type."""

    def __init__(self, **attrs: Any) -> None:
        vars(self).update(attrs)


class BatchStat(sg.State):
    pass


def p(x: float = 1.0, **meta: Any) -> sg.Param:
    return sg.Param(np.full((2,), x, np.float32), **meta)


@dataclass
class Scenario:
    """``make()`` builds a fresh structure; ``mutate(node)`` changes what one guard checks."""

    make: Callable[[], Any]
    mutate: Callable[[Any], None]
    note: str


# -- one scenario per guard kind ---------------------------------------------------------


def _epoch_make() -> Any:
    class LateType:  # a plain object (a static) until registered; a fresh class per run
        def __init__(self) -> None:
            self.items: dict[str, Any] = {"q": p(3.0)}

    return Box(w=p(), late=LateType(), n=1)


def _epoch_mutate(node: Any) -> None:
    late_type = type(node.late)
    sg.register_graph_node_type(
        late_type,
        lambda x: (sorted(x.items.items()), None),
        lambda x, k, v: x.items.__setitem__(k, v),
        lambda x, k: x.items.pop(k),
        lambda meta: late_type(),
        lambda x: x.items.clear(),
    )


def _type_make() -> Any:
    return Box(w=p(), v=p(2.0), child=Box(b=p()))


def _type_mutate(node: Any) -> None:
    node.v = BatchStat(node.v.value)  # same value, same (no) metadata, another State type


def _node_keys_make() -> Any:
    return Box(w=p(), n=1)


def _node_keys_mutate(node: Any) -> None:
    node.extra = p()  # one more attribute: only the key count notices


def _container_make() -> Any:
    return Box(layers=[p(), p()], d={"a": p()})


def _container_mutate(node: Any) -> None:
    node.layers.append(p())  # a longer list: only the length check notices


def _static_make() -> Any:
    return Box(w=p(), n=3, act="relu")


def _static_mutate(node: Any) -> None:
    node.n = 4


def _metadata_make() -> Any:
    return Box(w=p(tag="a"), v=p())


def _metadata_mutate(node: Any) -> None:
    node.w = p(tag="b")  # same type, other metadata


def _backref_make() -> Any:
    w = p()
    return Box(enc=Box(w=w), dec=Box(w=w))


def _backref_mutate(node: Any) -> None:
    node.dec.w = p()  # untied: a fresh Param where the shared one was


def _class_make() -> Any:
    class Tagged(sg.State):  # a fresh class per run: the mutation changes the class itself
        pass

    return Box(a=Tagged(np.ones(2)), b=Tagged(np.ones(2)))


def _class_mutate(node: Any) -> None:
    counter = iter(range(1 << 30))
    type(node.a).__hash__ = lambda self: next(counter)  # type: ignore[method-assign]
    node.b = node.a  # merged, but the distinct set now sees two different hashes


def _distinct_make() -> Any:
    return Box(a=p(), b=p(), c=Box(x=p()), d=Box(x=p()))


def _distinct_mutate(node: Any) -> None:
    node.b = node.a  # two distinct States made one object


SCENARIOS: dict[str, Scenario] = {
    "epoch": Scenario(_epoch_make, _epoch_mutate, "a static's type registered as a node type"),
    "class": Scenario(_class_make, _class_mutate, "a State class given a __hash__, two states made one"),
    "type": Scenario(_type_make, _type_mutate, "Param replaced by a BatchStat"),
    "node_keys": Scenario(_node_keys_make, _node_keys_mutate, "attribute added"),
    "container": Scenario(_container_make, _container_mutate, "list appended to"),
    "static": Scenario(_static_make, _static_mutate, "static 3 -> 4"),
    "metadata": Scenario(_metadata_make, _metadata_mutate, "Param(tag='a') -> Param(tag='b')"),
    "backref": Scenario(_backref_make, _backref_mutate, "tied Param un-tied"),
    "distinct": Scenario(_distinct_make, _distinct_mutate, "two Params made one"),
}


def _same(a: tuple[sg.GraphDef, sg.StateMap], b: tuple[sg.GraphDef, sg.StateMap]) -> bool:
    try:
        assert_same_flatten(a, b)
    except AssertionError:
        return False
    return True


def _compile(node: Any) -> None:
    """Flatten through the dispatcher until generated code serves ``node``."""
    sg.flatten(node)
    hits = sg.cache_info()["hits"]
    assert_same_flatten(sg.flatten(node), sg.generic.flatten(node))
    assert sg.cache_info()["hits"] == hits + 1


def test_every_guard_kind_has_a_scenario() -> None:
    assert set(SCENARIOS) == set(GUARD_KINDS)


@pytest.mark.parametrize("kind", GUARD_KINDS)
def test_guard_is_load_bearing(kind: str, disable: Callable[[frozenset[str]], None]) -> None:
    """Without the guard, the specialized flatten answers the mutated object wrongly."""
    sc = SCENARIOS[kind]
    disable(frozenset({kind}))
    node = sc.make()
    _compile(node)
    sc.mutate(node)
    ref = sg.generic.flatten(node)
    hits = sg.cache_info()["hits"]
    got = sg.flatten(node)
    assert sg.cache_info()["hits"] == hits + 1, "the stale variant must have answered"
    assert not _same(got, ref), f"{kind}: {sc.note} went unnoticed, yet the answer is right"
    assert got[0] != ref[0]


@pytest.mark.parametrize("kind", GUARD_KINDS)
def test_guard_catches_its_scenario(kind: str, disable: Callable[[frozenset[str]], None]) -> None:
    """With every guard in place the same scenario is a miss of that kind and agrees."""
    sc = SCENARIOS[kind]
    disable(frozenset())
    node = sc.make()
    _compile(node)
    sc.mutate(node)
    ref = sg.generic.flatten(node)
    before = dict(sg.cache_info()["guard_misses"])
    hits = sg.cache_info()["hits"]
    assert_same_flatten(sg.flatten(node), ref)
    after = sg.cache_info()["guard_misses"]
    assert after.get(kind, 0) == before.get(kind, 0) + 1
    assert sum(after.values()) == sum(before.values()) + 1
    assert sg.cache_info()["hits"] == hits


@pytest.mark.parametrize("kind", GUARD_KINDS)
def test_other_guards_do_not_cover_for_it(kind: str, disable: Callable[[frozenset[str]], None]) -> None:
    """Disabling every OTHER kind leaves the scenario caught: the guard works on its own."""
    sc = SCENARIOS[kind]
    disable(frozenset(GUARD_KINDS) - {kind})
    node = sc.make()
    _compile(node)
    sc.mutate(node)
    ref = sg.generic.flatten(node)
    before = dict(sg.cache_info()["guard_misses"])
    assert_same_flatten(sg.flatten(node), ref)
    assert sg.cache_info()["guard_misses"].get(kind, 0) == before.get(kind, 0) + 1


def _array_to_static(node: Any) -> None:
    node.arr = 3


UPDATE_SCENARIOS = {
    "type": Scenario(lambda: Box(w=p(), arr=np.ones(2)), _array_to_static, "array leaf replaced by a static"),
    "distinct": SCENARIOS["distinct"],
}


@pytest.mark.parametrize("kind", sorted(UPDATE_SCENARIOS))
def test_update_guard_is_load_bearing(kind: str, disable: Callable[[frozenset[str]], None]) -> None:
    """update's guards too: the old StateMap no longer fits, the reference refuses it, and a
    variant without the guard writes it anyway; with the guard the refusal is the same."""
    sc = UPDATE_SCENARIOS[kind]
    for disabled in (frozenset({kind}), frozenset()):
        disable(disabled)
        a, b = sc.make(), sc.make()
        _, sm = sg.flatten(a)
        _compile(a)
        sc.mutate(a)
        sc.mutate(b)
        with pytest.raises(KeyError):
            sg.generic.update(b, sm)
        hits = sg.cache_info()["update_hits"]
        if disabled:
            sg.update(a, sm)  # accepted silently
            assert sg.cache_info()["update_hits"] == hits + 1
        else:
            with pytest.raises(KeyError):
                sg.update(a, sm)
            assert sg.cache_info()["update_hits"] == hits
            assert sg.cache_info()["guard_misses"] == {kind: 1}


# -- node types registered with callbacks: their flatten's answer is guarded --------------


class FlipBag:
    """A callback node type whose flatten is not pure: the key order follows ``flip``."""

    def __init__(self, flip: bool = False, tag: str = "t", **items: Any) -> None:
        self.flip = flip
        self.tag = tag
        self.data = dict(items)


def _flip_flatten(b: FlipBag) -> tuple[list[tuple[str, Any]], str]:
    items = sorted(b.data.items())
    return (items[::-1] if b.flip else items), b.tag


sg.register_graph_node_type(
    FlipBag, _flip_flatten, lambda b, k, v: b.data.__setitem__(k, v), lambda b, k: b.data.pop(k),
    lambda tag: FlipBag(tag=tag), lambda b: b.data.clear(),
)


def _cb_make() -> Any:
    return Box(w=p(), bag=FlipBag(a=p(2.0), b=np.ones(2), n=3))


def _cb_pair_make() -> Any:
    return Box(w=p(), bag=FlipBag(a=p(2.0), b=p(3.0)))


def _cb_rename(node: Any) -> None:
    node.bag.data["c"] = node.bag.data.pop("b")  # same count, a key renamed


def _cb_append(node: Any) -> None:
    node.bag.data["z"] = p(5.0)  # one more child, after the planned ones


def _cb_flip(node: Any) -> None:
    node.bag.flip = True  # the same keys, in another order


def _cb_tag(node: Any) -> None:
    node.bag.tag = "u"


CALLBACK_SCENARIOS: dict[str, tuple[str, Scenario]] = {
    "renamed": ("node_keys", Scenario(_cb_make, _cb_rename, "a callback node's key renamed")),
    "appended": ("node_keys", Scenario(_cb_make, _cb_append, "a callback node gained a last key")),
    "reordered": ("node_keys", Scenario(_cb_pair_make, _cb_flip, "keys in another order")),
    "metadata": ("metadata", Scenario(_cb_make, _cb_tag, "a callback node's metadata changed")),
}


@pytest.mark.parametrize("name", sorted(CALLBACK_SCENARIOS))
def test_callback_node_guard_is_load_bearing(name: str, disable: Callable[[frozenset[str]], None]) -> None:
    """Generated code trusts a callback node's flatten only as far as its guards check:
    without the kind, the stale answer is given; with it alone, the miss is caught."""
    kind, sc = CALLBACK_SCENARIOS[name]
    for disabled in (frozenset({kind}), frozenset(GUARD_KINDS) - {kind}):
        disable(disabled)
        node = sc.make()
        _compile(node)
        sc.mutate(node)
        ref = sg.generic.flatten(node)
        before = dict(sg.cache_info()["guard_misses"])
        hits = sg.cache_info()["hits"]
        got = sg.flatten(node)
        if kind in disabled:
            assert sg.cache_info()["hits"] == hits + 1, "the stale variant must have answered"
            assert not _same(got, ref), f"{name}: {sc.note} went unnoticed, yet the answer is right"
        else:
            assert_same_flatten(got, ref)
            assert sg.cache_info()["guard_misses"].get(kind, 0) == before.get(kind, 0) + 1
            assert sg.cache_info()["hits"] == hits


# -- which nodes the distinct set may leave out ------------------------------------------
#
# A node whose own state (held under some key by no other node of its type) is in the
# distinct set need not be in it itself (``plan._nodes_witnessed_by_states``). These
# structures are the ones where that reasoning must NOT drop a node.


def _mutual_make() -> Any:
    """Two Boxes that hold the same two states and point at each other."""
    s, t = p(), p()
    i, j = Box(a=s, z=t), Box(a=s, z=t)
    i.m, j.m = j, i
    return i


def _mutual_mutate(root: Any) -> None:
    root.m = root  # the pair becomes one Box pointing at itself; every identity guard still holds


def _stateless_make() -> Any:
    return Box(items=[Box(k=1), Box(k=1)])


def _stateless_mutate(root: Any) -> None:
    root.items[1] = root.items[0]  # nodes with no state: nothing but the set tells them apart


def _witnessed_make() -> Any:
    return Box(layers=[Box(w=p(), b=p()) for _ in range(3)])


def _witnessed_mutate(root: Any) -> None:
    root.layers[2] = root.layers[0]  # the layer itself is not in the set; its states are


MERGES = {
    "mutual": (_mutual_make, _mutual_mutate),
    "stateless": (_stateless_make, _stateless_mutate),
    "witnessed": (_witnessed_make, _witnessed_mutate),
}


@pytest.mark.parametrize("name", sorted(MERGES))
def test_merged_nodes_are_caught(name: str) -> None:
    make, mutate = MERGES[name]
    node = make()
    _compile(node)
    mutate(node)
    ref = sg.generic.flatten(node)
    hits = sg.cache_info()["hits"]
    assert_same_flatten(sg.flatten(node), ref)
    assert sg.cache_info()["hits"] == hits
    assert sg.cache_info()["guard_misses"] == {"distinct": 1}


def test_witnessed_nodes_are_left_out_of_the_distinct_set() -> None:
    from specgraph.codegen import plan_flatten

    gd, _ = sg.generic.flatten(_witnessed_make())
    plan = plan_flatten(gd, 10_000)
    assert len(plan.distinct) == gd.num_states + 1  # the six states and the root (no state of its own)
    gd, _ = sg.generic.flatten(_mutual_make())
    assert len(plan_flatten(gd, 10_000).distinct) == gd.num_states + gd.num_nodes


def test_a_naive_witness_rule_would_be_wrong(monkeypatch: pytest.MonkeyPatch) -> None:
    """The mutual pair is why a node needs a state no other node of its type holds there:
    "has a state of its own" alone lets the merged pair through."""
    from specgraph._ir import NodeSpec, StateEdge
    from specgraph.codegen import flatten_plan

    def naive(table: tuple, refs: list[int] | None = None) -> set[int]:
        return {s[2] for s in table if type(s) is NodeSpec and any(type(c) is StateEdge for c in s[4])}

    monkeypatch.setattr(flatten_plan, "witnessed_nodes", naive)
    node = _mutual_make()
    _compile(node)
    _mutual_mutate(node)
    ref = sg.generic.flatten(node)
    assert not _same(sg.flatten(node), ref)


# -- the unflatten's class guard: attribute stores assume the default __setattr__ -------


def _watched_graph() -> tuple[type, Any]:
    cls = type("Watched", (sg.Node,), {})
    inner = cls()
    vars(inner).update(w=p(), k=1)
    return cls, Box(inner=inner, w=p())


@pytest.mark.parametrize("disabled", [frozenset({"class"}), frozenset()], ids=["off", "on"])
def test_unflatten_class_guard_is_load_bearing(disabled: frozenset[str],
                                                 disable: Callable[[frozenset[str]], None]) -> None:
    """A class given its own ``__setattr__`` after compilation: the reference still fills
    new nodes through ``__dict__``; generated attribute stores would call it."""
    disable(disabled)
    cls, root = _watched_graph()
    gd, sm = sg.flatten(root)
    for _ in range(2):
        sg.unflatten(gd, sm)
    assert sg.cache_info()["unflatten_hits"] == 1
    calls: list[str] = []

    def watch(self: Any, name: str, value: Any) -> None:
        calls.append(name)  # and drops the value

    cls.__setattr__ = watch  # type: ignore[method-assign,assignment]
    ref = sg.generic.unflatten(gd, sm)
    assert calls == [] and sorted(vars(ref.inner)) == ["k", "w"]
    got = sg.unflatten(gd, sm)
    if disabled:
        assert calls == ["k", "w"] and vars(got.inner) == {}
    else:
        assert calls == []
        assert_same_flatten(sg.generic.flatten(got), sg.generic.flatten(ref))
        assert sg.cache_info()["guard_misses"] == {"class": 1}


def test_objects_of_a_type_that_occurs_once_are_left_out_of_the_distinct_set() -> None:
    """Exact type guards keep them apart from everything else: no set needed for them."""
    from specgraph.codegen import plan_flatten

    class Root(sg.Node):
        pass

    root = Root()
    vars(root).update(stat=BatchStat(np.ones(1)), a=p(), b=p(), child=Box(x=1))
    gd, _ = sg.generic.flatten(root)
    plan = plan_flatten(gd, 10_000)
    assert sorted(obj for obj, _ in plan.distinct) == sorted(
        plan.objects[i] for i, spec in enumerate(gd.table) if spec.type is sg.Param)
    root.child = Box(x=p())
    plan = plan_flatten(sg.generic.flatten(root)[0], 10_000)
    assert len(plan.distinct) == 3  # three Params; the lone Box and BatchStat stay out
    single = Root()
    vars(single).update(a=p())
    assert plan_flatten(sg.generic.flatten(single)[0], 10_000).distinct == []
