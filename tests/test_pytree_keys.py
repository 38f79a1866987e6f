"""Custom pytrees whose keys function names their children from instance data.

A class registered with ``jax.tree_util.register_pytree_with_keys`` may return path keys
that its treedef (type, arity, aux data) does not hold: renaming them changes the
reference walker's paths and nothing the treedef guard reads. The generated flatten,
update and collect check those keys (``PT_LEVEL``: its children, their keys and its aux
data in one jaxlib call, then ``guard_loaded``); JAX's namedtuples, ``OrderedDict`` and
``defaultdict`` have keys fixed by their treedef and keep the treedef guard alone.
"""

from __future__ import annotations

import collections
import dataclasses
import typing
from collections.abc import Iterator
from typing import Any

import hypothesis
import jax
import numpy as np
import pytest
from conftest import assert_same_flatten, outlined_flatten_hits, outlined_unflatten_hits
from hypothesis import strategies as hst
from jax.tree_util import DictKey, GetAttrKey

import specgraph as sg
from specgraph import _registry as reg
from specgraph.runtime import dispatch
from specgraph.runtime.cache import CONFIG


class Named:
    """Children named by an attribute its treedef does not hold (aux data ``None``)."""

    def __init__(self, names: tuple[Any, ...], vals: tuple[Any, ...]) -> None:
        self.names, self.vals = names, vals


jax.tree_util.register_pytree_with_keys(
    Named,
    lambda x: (tuple((DictKey(n), v) for n, v in zip(x.names, x.vals, strict=True)), None),
    lambda _, ch: Named(tuple(f"k{i}" for i in range(len(ch))), tuple(ch)),
    lambda x: (tuple(x.vals), None),
)


class Attrs:
    """Keys from an attribute, with aux data (a tag) and its keys function alone (no flatten)."""

    def __init__(self, names: tuple[str, ...], vals: tuple[Any, ...], tag: str = "t") -> None:
        self.names, self.vals, self.tag = names, vals, tag


jax.tree_util.register_pytree_with_keys(
    Attrs,
    lambda x: (tuple((GetAttrKey(n), v) for n, v in zip(x.names, x.vals, strict=True)), x.tag),
    lambda tag, ch: Attrs(tuple(f"a{i}" for i in range(len(ch))), tuple(ch), tag),
)


class Ly(sg.Node):
    def __init__(self, p: Any) -> None:
        self.p = p


class Box(sg.Node):
    def __init__(self, **attrs: Any) -> None:
        vars(self).update(attrs)


def P(i: float) -> sg.Param:
    return sg.Param(np.float32(i))


def model(cls: type = Named, n: int = 4) -> Box:
    return Box(layers=[Ly(cls(("a", "b"), (P(i), P(-i)))) for i in range(n)],
               head=Ly(cls(("a", "b"), (P(9), P(8)))))


def typed_paths(gd: sg.GraphDef) -> list[tuple[Any, ...]]:
    """The paths with each key's type (``1`` and ``True`` are equal keys, yet two paths)."""
    return [tuple((type(k), k) for k in p) for p in gd.paths]


def same_as_reference(got: tuple[sg.GraphDef, sg.StateMap], node: Any) -> None:
    ref = sg.generic.flatten(node)
    assert_same_flatten(got, ref)
    assert typed_paths(got[0]) == typed_paths(ref[0])


def misses() -> int:
    return sum(sg.cache_info()["guard_misses"].values())


RENAMES = [("x", "y"), (1, 2), ("b", "a"), ("a", 1)]


@pytest.mark.repeats
@pytest.mark.parametrize("cls", [Named, Attrs])
@pytest.mark.parametrize("names", RENAMES, ids=str)
@pytest.mark.parametrize("i", [0, 3])
def test_renamed_keys_flatten_update_collect(impl: Any, cls: type, names: tuple[Any, ...], i: int) -> None:
    """One occurrence's keys renamed (treedef unchanged): the compiled flatten misses (the
    reference answers), then the renamed structure is compiled and served; its update,
    partial update and split are the reference's."""
    m = model(cls)
    same_as_reference(impl.flatten(m), m)
    if cls is Attrs and not all(type(n) is str for n in names):  # (GetAttrKey: str names only)
        names = ("x", "y")
    m.layers[i].p.names = names
    before, missed = sg.cache_info()["hits"], misses()
    same_as_reference(sg.flatten(m) if impl.compiled else sg.generic.flatten(m), m)
    if impl.compiled:
        assert sg.cache_info()["hits"] == before and misses() == missed + 1
        assert sg.cache_info()["guard_misses"]["container"] >= 1
    gd, st = impl.flatten(m)  # now compiled for the renamed structure
    same_as_reference((gd, st), m)
    if impl.compiled:
        before = sg.cache_info()["hits"]
        same_as_reference(sg.flatten(m), m)
        assert sg.cache_info()["hits"] == before + 1
        var = dispatch.variant_for(gd)
        assert var is not None and "PT_LEVEL" in var.sources["flatten"]
    # update: values by the renamed paths
    twin = model(cls)
    twin.layers[i].p.names = names
    new = jax.tree.map(lambda v: v + 1, st)
    impl.update(m, new)
    sg.generic.update(twin, new)
    assert [float(v) for v in sg.generic.flatten(m)[1].values()] == \
        [float(v) for v in sg.generic.flatten(twin)[1].values()]
    # collect and a partial update: the states under the renamed keys only
    def renamed(path: tuple[Any, ...], _: Any) -> bool:
        return path[1] == i and any(path[-1] == n and type(path[-1]) is type(n) for n in names)
    _, part, rest = sg.split(m, renamed, ...) if impl.compiled else _reference_split(m, renamed)
    rpart, rrest = _reference_split(m, renamed)[1:]
    assert list(part.keys()) == list(rpart.keys()) and list(rest.keys()) == list(rrest.keys())
    assert all(a is b for a, b in zip(part.values(), rpart.values(), strict=True))
    assert len(part) == 2
    impl.update(m, jax.tree.map(lambda v: v * 0 + 50, part))
    vals = {p: float(v) for p, v in sg.generic.flatten(m)[1].items()}
    assert [vals[p] for p in rpart] == [50.0, 50.0]
    if impl.name == "outlined":
        assert outlined_flatten_hits() > 0


def _reference_split(node: Any, *filters: Any) -> Any:
    with sg.specialization(False):
        return sg.split(node, *filters, ...) if len(filters) == 1 else sg.split(node, *filters)


@pytest.mark.repeats
@pytest.mark.parametrize("cls", [Named, Attrs])
def test_unflatten_of_renamed_keys(impl: Any, cls: type) -> None:
    """The unflatten takes the keys from the GraphDef it is given: a GraphDef of renamed
    keys rebuilds as the reference rebuilds it (the class's unflatten names the children)."""
    m = model(cls)
    impl.flatten(m)
    m.layers[2].p.names = ("x", "y")
    gd, st = sg.generic.flatten(m)
    before = sg.cache_info()["unflatten_hits"]
    twin = impl.unflatten(gd, st)
    ref = sg.generic.unflatten(gd, st)
    assert_same_flatten(sg.generic.flatten(twin), sg.generic.flatten(ref))
    assert [type(x.p) for x in twin.layers] == [cls] * 4
    if impl.compiled:
        assert sg.cache_info()["unflatten_hits"] == before + 1
    if impl.name == "outlined":
        assert outlined_unflatten_hits() > 0


@pytest.fixture(params=["plan", "kind"])
def no_key_guard(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Code generated without the key check: planned as if every treedef fixed its
    children's keys (the treedef guard alone, no PT_LEVEL), or with PT_LEVEL's guard
    (guard_loaded, kind 'container') left out."""
    if request.param == "plan":
        monkeypatch.setattr(reg, "keys_fixed_by_treedef", lambda td: True)
        sg.clear_cache()
    else:
        dispatch._set_disabled_guards(frozenset({"container"}))
    try:
        yield request.param
    finally:
        dispatch._set_disabled_guards(frozenset())
        sg.clear_cache()


@pytest.mark.parametrize("outline_min", [0, 2])
@pytest.mark.parametrize("op", ["flatten", "split", "update"])
def test_key_guard_is_load_bearing(no_key_guard: str, outline_min: int, op: str) -> None:
    """Without the key check the compiled code answers a renamed occurrence with the
    stale paths (flatten, split), or refuses the renamed paths of a partial update that the
    reference writes (update)."""
    saved = CONFIG.outline_min
    sg.configure(outline_min=outline_min)
    try:
        m = model()
        sg.flatten(m)
        gd, _ = sg.flatten(m)
        assert sg.cache_info()["hits"] == 1
        var = dispatch.variant_for(gd)
        assert var is not None and ("PT_LEVEL" in var.sources["flatten"]) is (no_key_guard == "kind")
        assert ("def outlined" in var.sources["flatten"]) == (outline_min == 2)
        m.layers[0].p.names = ("x", "y")
        with pytest.raises(AssertionError):
            if op == "flatten":
                same_as_reference(sg.flatten(m), m)
            elif op == "split":
                got = sg.split(m, lambda p, _: p[-1] == "x", ...)[1]
                assert list(got.keys()) == list(_reference_split(m, lambda p, _: p[-1] == "x")[1].keys())
            else:  # a partial update of the renamed layer's states, by their paths
                twin = model_renamed()
                part = sg.generic.flatten(twin)[1].filter(lambda p, _: p[1] == 0)
                new = jax.tree.map(lambda v: v * 0 + 5, part)
                sg.generic.update(twin, new)
                assert _raises(lambda: sg.update(m, new)) is None  # (stale: a KeyError, no such path)
                assert _values(m) == _values(twin)
    finally:
        CONFIG.outline_min = saved


def model_renamed() -> Box:
    m = model()
    m.layers[0].p.names = ("x", "y")
    return m


def _values(node: Any) -> list[float]:
    return [float(v) for v in sg.generic.flatten(node)[1].values()]


def _raises(fn: Any) -> str | None:
    try:
        fn()
    except Exception as e:  # the kind of error, for comparison
        return type(e).__name__
    return None


WB = collections.namedtuple("WB", "w b")
Reg = collections.namedtuple("Reg", "w b")  # a namedtuple class registered as a custom node
jax.tree_util.register_pytree_node(Reg, lambda x: (tuple(x), None), lambda _, ch: Reg(*ch))


class TN(typing.NamedTuple):
    w: Any
    b: Any


class Plain:
    def __init__(self, a: Any, b: Any) -> None:
        self.a, self.b = a, b


jax.tree_util.register_pytree_node(Plain, lambda x: ((x.a, x.b), None), lambda _, ch: Plain(*ch))


@dataclasses.dataclass
class DC:
    w: Any
    b: Any


jax.tree_util.register_dataclass(DC, data_fields=["w", "b"], meta_fields=[])

SAMPLES = {
    "namedtuple": (WB(1, 2), True), "typing.NamedTuple": (TN(1, 2), True),
    "OrderedDict": (collections.OrderedDict(b=1, a=2), True),
    "defaultdict": (collections.defaultdict(int, {"b": 1, "a": 2}), True),
    "registered namedtuple": (Reg(1, 2), False), "no keys function": (Plain(1, 2), False),
    "dataclass": (DC(1, 2), False), "keys function": (Named(("a", 1), (1, 2)), False),
    "keys function, aux": (Attrs(("a", "b"), (1, 2)), False),
    "Partial": (jax.tree_util.Partial(print, 1), False),
}


@pytest.mark.parametrize("name", list(SAMPLES))
def test_which_keys_are_guarded(name: str) -> None:
    """JAX's namedtuples (their class's fields), OrderedDict and defaultdict (their keys, in
    the aux data) have keys fixed by the treedef; any other registered class may have a keys
    function, which JAX does not tell: guarded. The guard's read is the reference's."""
    x, fixed = SAMPLES[name]
    td, keys, _ = reg.pytree_children(x)
    assert reg.keys_fixed_by_treedef(td) is fixed
    if not fixed:
        assert reg.pytree_keys(x) == keys
        assert reg.same_pytree_keys(x, keys)
        assert not reg.same_pytree_keys(x, keys[:-1])
        assert not reg.same_pytree_keys(x, (*keys[:-1], "zz"))


@pytest.mark.parametrize(("make", "guarded"), [
    (lambda a, b: WB(a, b), False), (lambda a, b: TN(a, b), False),
    (lambda a, b: collections.OrderedDict(w=a, b=b), False), (lambda a, b: Reg(a, b), True),
    (lambda a, b: Plain(a, b), True), (lambda a, b: DC(a, b), True),
    (lambda a, b: Named(("w", "b"), (a, b)), True),
], ids=["namedtuple", "NamedTuple", "OrderedDict", "registered namedtuple", "no keys function", "dataclass",
        "keys function"])
def test_generated_code_guards_keys_only_where_they_may_move(impl: Any, make: Any, guarded: bool) -> None:
    """The generated flatten holds a key guard exactly for the classes that need one."""
    m = Box(layers=[Ly(make(P(i), P(-i))) for i in range(3)])
    gd, st = impl.flatten(m)
    same_as_reference((gd, st), m)
    if impl.compiled:
        var = dispatch.variant_for(gd)
        assert var is not None and ("PT_LEVEL" in var.sources["flatten"]) is guarded


def test_keys_are_compared_with_their_types() -> None:
    """1 and True are equal keys, yet two paths: SAME, not ==."""
    assert reg.same_pytree_keys(Named((1, "a"), (0, 0)), (1, "a"))
    assert not reg.same_pytree_keys(Named((True, "a"), (0, 0)), (1, "a"))
    assert not reg.same_pytree_keys(Named((1.0, "a"), (0, 0)), (1, "a"))
    assert not reg.same_pytree_keys(Named((-0.0, "a"), (0, 0)), (0.0, "a"))


KEYS = hst.lists(hst.sampled_from(["a", "b", "x", 0, 1, True, 2.5, 0.0, -0.0, ("t", 1)]),
                 min_size=2, max_size=2, unique_by=lambda k: (type(k), k))


@hypothesis.settings(max_examples=30, deadline=None)
@hypothesis.given(first=hst.lists(KEYS, min_size=3, max_size=5),
                  renames=hst.lists(hst.tuples(hst.integers(0, 4), KEYS), min_size=1, max_size=4),
                  outline_min=hst.sampled_from([0, 2]))
def test_random_renames_match_the_reference(first: list[list[Any]], renames: list[tuple[int, list[Any]]],
                                            outline_min: int) -> None:
    """Layers named by random keys (equal yet distinguishable ones among them), renamed
    one at a time between flattens: each flatten is the reference's, paths and key types."""
    saved = CONFIG.outline_min
    sg.configure(outline_min=outline_min)
    sg.clear_cache()
    try:
        m = Box(layers=[Ly(Named(tuple(k), (P(i), P(-i)))) for i, k in enumerate(first)])
        for j, keys in renames:
            if len({(type(k), k) for k in keys}) != len(set(keys)):
                continue  # (keys equal yet of two types: the reference's paths would collide)
            same_as_reference(sg.flatten(m), m)
            same_as_reference(sg.flatten(m), m)
            m.layers[j % len(m.layers)].p.names = tuple(keys)
            same_as_reference(sg.flatten(m), m)
    finally:
        CONFIG.outline_min = saved
        sg.clear_cache()
