"""Outlined layers holding a custom pytree that holds a bare array (``WB(array, Param)``).

The flatten walks the array as a value leaf; the update never writes it (the walker rebuilds
an immutable container whose array changed: the generated update checks each one unchanged
and leaves a changed one to the walker). Outlined, each layer is one shape and a list of
them one loop; the update's outlined code keeps each occurrence's array and the top
function checks them all against their slots before anything is written (``check_kept_same``).
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

import hypothesis
import jax
import numpy as np
import pytest
from conftest import assert_same_flatten, outlined_flatten_hits
from hypothesis import strategies as hst

import specgraph as sg
from specgraph.runtime import dispatch
from specgraph.runtime.cache import CONFIG

WB = collections.namedtuple("WB", "w b")
WB2 = collections.namedtuple("WB2", "w b")  # the same fields, another class


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


class Layer(sg.Node):
    def __init__(self, i: int, holder: Callable[[Any, Any], Any] = WB) -> None:
        self.p = holder(np.full((3,), i, np.float32), sg.Param(np.full((2,), i, np.float32)))
        self.act = "relu"


class Block(sg.Node):
    def __init__(self, i: int) -> None:
        self.layer = Layer(i)
        self.scale = sg.Param(np.float32(i))


class Model(sg.Node):
    def __init__(self, **attrs: Any) -> None:
        vars(self).update(attrs)


def layers(n: int, holder: Callable[[Any, Any], Any] = WB) -> Model:
    return Model(layers=[Layer(i, holder) for i in range(n)], z=sg.Param(np.float32(-1)))


def _loops(gd: sg.GraphDef) -> list[str]:
    var = dispatch.variant_for(gd)
    assert var is not None
    return [x.split(": ")[1] for x in var.plan.loops]


def remap(st: sg.StateMap, new: dict[Any, Any]) -> sg.StateMap:
    """``st`` with the values of ``new`` (by path), as one StateMap (the update's fast path)."""
    it = iter([new[p] for p in st])
    return jax.tree.map(lambda _: next(it), st)


def _same_values(b: Any, new: Any) -> bool:
    _, now = sg.generic.flatten(b)
    vals = new.values() if isinstance(new, sg.StateMap) else [new[p] for p in now]
    return all(x is y for x, y in zip(now.values(), vals, strict=True))


@pytest.mark.parametrize("holder", ["nt", "pair"])
def test_layers_of_a_pytree_holding_an_array(impl: Any, holder: str) -> None:
    h: Any = WB if holder == "nt" else (lambda a, b: Pair(a, b))
    b = layers(100, h)
    ref = sg.generic.flatten(b)
    got = impl.flatten(b)
    assert_same_flatten(got, ref)
    twin = impl.unflatten(*ref)
    assert_same_flatten(sg.generic.flatten(twin), ref)
    before = sg.cache_info()["update_hits"]
    arrays = {p for p in ref[1] if len(p) == 4 and p[-1] in ("w", 0)}
    assert len(arrays) == 100
    # (the arrays: the very same objects)
    new_state = remap(ref[1], {p: (v if p in arrays else v + 1) for p, v in ref[1].items()})
    impl.update(b, new_state)
    assert _same_values(b, new_state)
    if impl.compiled:
        assert sg.cache_info()["update_hits"] == before + 1
        assert _loops(ref[0]) == ["100 x Layer"]
        assert outlined_flatten_hits() >= 2
        assert "sit in immutable containers" in sg.explain(ref[0])


def test_an_array_changed_is_a_miss_and_the_walker_rebuilds(impl: Any) -> None:
    b = layers(80)
    ref = sg.generic.flatten(b)
    impl.flatten(b)
    new = {p: v + 1 for p, v in ref[1].items()}  # every array changed too
    misses = sum(sg.cache_info()["guard_misses"].values())
    impl.update(b, remap(ref[1], new))
    assert _same_values(b, new)
    assert type(b.layers[3].p) is WB
    if impl.compiled:
        assert sg.cache_info()["guard_misses"].get("immutable_leaf", 0) == 1 + misses


@hypothesis.settings(max_examples=30, deadline=None,
                     suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])
@hypothesis.given(n=hst.integers(64, 120), data=hst.data())
def test_one_array_changed_anywhere(n: int, data: Any) -> None:
    """One occurrence's array changed (any of them): a miss, the walker's answer; every
    other update of the same structure a hit."""
    sg.clear_cache()
    b = layers(n)
    sg.flatten(b)
    gd, st = sg.flatten(b)
    assert _loops(gd) == [f"{n} x Layer"]
    k = data.draw(hst.integers(0, n - 1), label="changed")
    paths = [p for p in st if p[-1] == "w"]
    new = dict(st.items())
    for p in st:
        if p[-1] != "w":
            new[p] = st[p] + 1
    sg.update(b, remap(st, new))  # the arrays the very same: a hit
    assert sg.cache_info()["update_hits"] == 1
    new[paths[k]] = st[paths[k]] + 1
    sg.update(b, remap(st, new))
    info = sg.cache_info()
    assert info["update_hits"] == 1 and info["guard_misses"] == {"immutable_leaf": 1}
    assert _same_values(b, new)
    assert b.layers[k].p.w is new[paths[k]]


def _mutations() -> dict[str, Callable[[Layer], None]]:
    def scalar(layer: Layer) -> None:
        layer.p = WB(1.5, layer.p.b)

    def none(layer: Layer) -> None:
        layer.p = WB(None, layer.p.b)

    def other_class(layer: Layer) -> None:
        layer.p = WB2(*layer.p)

    def param(layer: Layer) -> None:
        layer.p = WB(sg.Param(layer.p.w), layer.p.b)

    return {"scalar": scalar, "none": none, "other_class": other_class, "param": param}


MUTATIONS = _mutations()


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
@pytest.mark.parametrize("i", [0, 37, 69])
def test_one_occurrence_mutated_is_a_miss(mutation: str, i: int) -> None:
    b = layers(70)
    sg.flatten(b)
    gd, _ = sg.flatten(b)
    assert _loops(gd) == ["70 x Layer"]
    MUTATIONS[mutation](b.layers[i])
    ref = sg.generic.flatten(b)
    assert ref[0] != gd
    assert_same_flatten(sg.flatten(b), ref)
    assert sg.cache_info()["guard_misses"], "the stale variant must not have answered"
    assert_same_flatten(sg.flatten(b), ref)
    new = jax.tree.map(lambda v: v, ref[1])
    sg.update(b, new)
    assert _same_values(b, new)


def test_occurrences_called_one_by_one_and_nested(impl: Any) -> None:
    """Occurrences not in one list (each a call, its check at its own slot), and layers in
    blocks (the block holding one is not outlined: the checks stay the top function's)."""
    b = Model(a=Layer(1), blocks=[Block(i) for i in range(70)], m=sg.Param(np.float32(0)), z=Layer(2))
    ref = sg.generic.flatten(b)
    assert_same_flatten(impl.flatten(b), ref)
    arrays = [p for p in ref[1] if p[-1] == "w"]
    new = {p: (v if p in arrays else v + 1) for p, v in ref[1].items()}
    before = sg.cache_info()["update_hits"]
    impl.update(b, remap(ref[1], new))
    assert _same_values(b, new)
    if impl.compiled:
        assert sg.cache_info()["update_hits"] == before + 1
    for k in (0, 35, len(arrays) - 1):  # the first call's, a block's, the last call's array
        changed = dict(new)
        changed[arrays[k]] = new[arrays[k]] + 1
        misses = sg.cache_info()["guard_misses"].get("immutable_leaf", 0)
        impl.update(b, remap(ref[1], changed))
        assert _same_values(b, changed)
        if impl.compiled:
            assert sg.cache_info()["guard_misses"].get("immutable_leaf", 0) == misses + 1
        new = changed
        ref = sg.generic.flatten(b)
        assert_same_flatten(impl.flatten(b), ref)
    twin = impl.unflatten(*ref)
    assert_same_flatten(sg.generic.flatten(twin), ref)


def test_a_partial_update_is_the_walkers() -> None:
    """An update of the Params only (a part of the slots): the walker writes it (the checks
    read the whole update's slots)."""
    b = layers(70)
    sg.flatten(b)
    sg.flatten(b)
    _, params, _ = sg.split(b, sg.Param, ...)
    new = jax.tree.map(lambda v: v + 1, params)
    sg.update(b, new)
    assert all(b.layers[i].p.b.value is new[("layers", i, "p", "b")] for i in range(70))


def test_the_unchanged_checks_are_load_bearing(disable: Callable[[frozenset[str]], None]) -> None:
    """Without the immutable_leaf guards the compiled update answers an update changing an
    array (and leaves the array as it was, unlike the walker); with them, a miss."""
    for disabled in (frozenset({"immutable_leaf"}), frozenset()):
        disable(disabled)
        b = layers(70)
        sg.flatten(b)
        gd, st = sg.flatten(b)
        assert _loops(gd) == ["70 x Layer"]
        new = dict(st.items())
        p = ("layers", 40, "p", "w")
        new[p] = st[p] + 1
        hits = sg.cache_info()["update_hits"]
        sg.update(b, remap(st, new))
        if disabled:
            assert sg.cache_info()["update_hits"] == hits + 1
            assert b.layers[40].p.w is not new[p]
        else:
            assert sg.cache_info()["update_hits"] == hits
            assert b.layers[40].p.w is new[p]


def test_ten_thousand_layers_specialized_at_default_settings() -> None:
    assert CONFIG.outline_min > 2
    b = layers(10_000)
    ref = sg.generic.flatten(b)
    sg.flatten(b)
    got = sg.flatten(b)
    info = sg.cache_info()
    assert info["hits"] == 1 and info["declined"] == 0
    assert_same_flatten(got, ref)
    assert _loops(ref[0]) == ["10000 x Layer"]
    new = {p: (v if p[-1] == "w" else v + 1) for p, v in ref[1].items()}
    sg.update(b, remap(ref[1], new))
    assert sg.cache_info()["update_hits"] == 1
    assert _same_values(b, new)
