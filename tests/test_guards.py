"""Guard-kill matrix: every guard kind is load-bearing.

For each kind in ``specgraph.codegen.plan.GUARD_KINDS`` there is one scenario: a
structure, and a mutation that only that guard protects against. With the guard
generated out (``_set_disabled_guards``), the specialized flatten answers the
mutated object with the stale structure, so it DIFFERS from the reference walker;
with every guard in place the same scenario agrees with it and is counted as a
miss of that kind. A new guard kind without a scenario fails
``test_every_guard_kind_has_a_scenario``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from conftest import assert_same_flatten

import specgraph as sg
from specgraph.codegen.plan import GUARD_KINDS
from specgraph.runtime import dispatch


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


def _distinct_make() -> Any:
    return Box(a=p(), b=p(), c=Box(x=p()), d=Box(x=p()))


def _distinct_mutate(node: Any) -> None:
    node.b = node.a  # two distinct States made one object


SCENARIOS: dict[str, Scenario] = {
    "epoch": Scenario(_epoch_make, _epoch_mutate, "a static's type registered as a node type"),
    "type": Scenario(_type_make, _type_mutate, "Param replaced by a BatchStat"),
    "node_keys": Scenario(_node_keys_make, _node_keys_mutate, "attribute added"),
    "container": Scenario(_container_make, _container_mutate, "list appended to"),
    "static": Scenario(_static_make, _static_mutate, "static 3 -> 4"),
    "metadata": Scenario(_metadata_make, _metadata_mutate, "Param(tag='a') -> Param(tag='b')"),
    "backref": Scenario(_backref_make, _backref_mutate, "tied Param un-tied"),
    "distinct": Scenario(_distinct_make, _distinct_mutate, "two Params made one"),
}


@pytest.fixture
def disable() -> Iterator[Callable[[frozenset[str]], None]]:
    """Generate code without some guard kinds for the test; always restored."""
    try:
        yield dispatch._set_disabled_guards
    finally:
        dispatch._set_disabled_guards(frozenset())


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
