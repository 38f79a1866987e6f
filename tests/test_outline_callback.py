"""Outlined code for callback node types (``register_graph_node_type``).

A class registered with user flatten/unflatten callbacks is outlined like a ``Node``: its
registered flatten is called once per occurrence, where the unrolled code calls it, and
its answer guarded per occurrence exactly as the unrolled code guards it (the count, each
key, the metadata: ``callback_plan.py``). A callback node somewhere in a structure does
not turn outlining off for the rest of it. Every behaviour test compares with the
reference walker (``impl``), and the outlined variant must have served (``repeats``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from conftest import assert_same_flatten, outlined_hits

import specgraph as sg
from specgraph.runtime import dispatch


class CLin:
    """A Linear layer registered with callbacks: its items in a dict, its metadata a tuple."""

    calls = 0

    def __init__(self, seed: float = 0.0, meta: Any = ("lin", 2), **extra: Any) -> None:
        self.meta = meta
        self.items: dict[Any, Any] = {
            "w": sg.Param(np.full((2, 2), seed, np.float32)),
            "b": sg.Param(np.full((2,), seed, np.float32)),
            "din": 2,
            **extra,
        }
        self.reverse = False  # the callback answers its keys in the other order


def _flatten(n: CLin) -> tuple[Any, Any]:
    CLin.calls += 1
    keys = sorted(n.items, key=repr, reverse=n.reverse)
    return [(k, n.items[k]) for k in keys], n.meta


def _set_key(n: CLin, key: Any, value: Any) -> None:
    n.items[key] = value


def _create(meta: Any) -> CLin:
    n = CLin.__new__(CLin)
    n.meta, n.items, n.reverse = meta, {}, False
    return n


sg.register_graph_node_type(CLin, _flatten, _set_key, lambda n, k: n.items.pop(k), _create,
                            lambda n: n.items.clear())


class Box(sg.Node):
    def __init__(self, **attrs: Any) -> None:
        vars(self).update(attrs)


class Linear(sg.Node):
    def __init__(self, seed: float = 0.0) -> None:
        self.w = sg.Param(np.full((2, 2), seed, np.float32))
        self.b = sg.Param(np.full((2,), seed, np.float32))


class Buffer(sg.State):
    pass


def cmlp(n: int = 4, layout: str = "list") -> Box:
    layers = [CLin(float(i)) for i in range(n)]
    if layout == "nested":  # callback layers in lists in blocks, in a list; in outlined calls
        blocks = [Box(a=CLin(1.0 + i), b=[CLin(2.0), CLin(3.0 + i)]) for i in range(3)]
        return Box(layers=layers, blocks=blocks, x=Box(a=CLin(5.0), b=[CLin(), CLin()]),
                   y=Box(a=CLin(6.0), b=[CLin(), CLin()]), head=Linear(9.0))
    if layout == "list":
        return Box(layers=layers, head=Linear(9.0))
    return Box(**{f"l{i}": x for i, x in enumerate(layers)}, head=Linear(9.0))


def layer(m: Box, i: int) -> CLin:
    return m.layers[i] if "layers" in vars(m) else getattr(m, f"l{i}")


def _source(gd: sg.GraphDef, kind: str = "flatten") -> str:
    var = dispatch.variant_for(gd)
    assert var is not None
    return var.sources[kind]


def _is_outlined(src: str) -> bool:
    return "def outlined" in src or "of one shape" in src


def _served(m: Any) -> tuple[sg.GraphDef, sg.StateMap]:
    """Flatten twice (the second call by generated code), checked against the reference."""
    sg.flatten(m)
    before = sg.cache_info()["hits"]
    out = sg.flatten(m)
    assert sg.cache_info()["hits"] == before + 1, sg.cache_info()
    assert_same_flatten(out, sg.generic.flatten(m))
    return out


def _bump(sm: sg.StateMap, add: float) -> sg.StateMap:
    return sg.StateMap._make(sm._table, [np.asarray(v) + add for v in sm.values()])


def _values(m: Any) -> list[Any]:
    return [np.asarray(v) for v in sg.generic.flatten(m)[1].values()]


def _update_like_reference(impl: Any, m: Any, twin: Any, sm: sg.StateMap, add: float,
                           values: Callable[[Any], list[Any]] = _values) -> sg.StateMap:
    """Update ``m`` through ``impl`` and its twin through the reference with the same bumped
    values; their values must then be equal. Returns the values written."""
    new = _bump(sm, add)
    impl.update(m, new)
    sg.generic.update(twin, new)
    for a, b in zip(values(m), values(twin), strict=True):
        np.testing.assert_array_equal(a, b)
    return new


@pytest.mark.repeats
@pytest.mark.parametrize("layout", ["list", "attrs", "nested"])
def test_callback_layers_flatten_update_unflatten(impl: Any, layout: str) -> None:
    """Flatten, update and unflatten of a model of callback layers, against the reference."""
    m, twin = cmlp(5, layout), cmlp(5, layout)
    gd, sm = impl.flatten(m)
    assert_same_flatten((gd, sm), sg.generic.flatten(m))
    new = _bump(sm, 1.0)
    impl.update(m, new)
    calls = CLin.calls
    (sg.update if impl.compiled else sg.generic.update)(m, new)
    mine = CLin.calls - calls
    sg.generic.update(twin, new)
    calls = CLin.calls
    sg.generic.update(twin, new)
    assert mine == CLin.calls - calls  # the registered flatten: once per occurrence, as the reference
    for a, b in zip(_values(m), _values(twin), strict=True):
        np.testing.assert_array_equal(a, b)
    clone = impl.unflatten(gd, new)
    ref = sg.generic.unflatten(gd, new)
    assert_same_flatten(sg.generic.flatten(clone), sg.generic.flatten(ref))
    assert type(layer(clone, 3)) is CLin and layer(clone, 3).meta == ("lin", 2)


def test_callback_layers_are_outlined_and_called_once_per_occurrence(outlined: None) -> None:
    m = cmlp(6)
    gd, _ = _served(m)
    assert "of one shape" in _source(gd)
    before = CLin.calls
    sg.flatten(m)
    assert CLin.calls == before + 6  # as the reference walker: once per occurrence
    hits = outlined_hits()
    sg.update(m, _bump(sg.flatten(m)[1], 1.0))
    assert outlined_hits() > hits


def test_one_callback_node_does_not_turn_outlining_off(outlined: None) -> None:
    """Outlining is per subtree: a callback node elsewhere (here next to a loop over Node
    layers) leaves the rest outlined."""
    m = Box(layers=[Linear(float(i)) for i in range(6)], odd=CLin(3.0))
    gd, _ = _served(m)
    assert "of one shape" in _source(gd)
    assert outlined_hits() > 0


def _rename(n: CLin) -> None:
    n.items["w2"] = n.items.pop("w")


CB_MUTATIONS: dict[str, tuple[str, Callable[[CLin], None]]] = {
    "renamed key": ("node_keys", _rename),
    "extra key": ("node_keys", lambda n: n.items.__setitem__("zz", 1)),
    "int key for str": ("node_keys", lambda n: n.items.__setitem__(0, n.items.pop("din"))),
    "keys in another order": ("node_keys", lambda n: setattr(n, "reverse", True)),
    "metadata": ("metadata", lambda n: setattr(n, "meta", ("lin", 3))),
    "metadata type": ("metadata", lambda n: setattr(n, "meta", ("lin", 2.0))),
    "static": ("static", lambda n: n.items.__setitem__("din", 3)),
    "state type": ("type", lambda n: n.items.__setitem__("b", Buffer(n.items["b"].value))),
}


@pytest.mark.parametrize("layout", ["list", "attrs"])
@pytest.mark.parametrize("name", sorted(CB_MUTATIONS))
@pytest.mark.parametrize("i", range(4))
def test_each_callback_occurrence_mutated_is_a_miss(outlined: None, name: str, i: int, layout: str) -> None:
    """The callback's answer changes for one occurrence (another key, count, order,
    metadata, child): a miss of that kind, and the reference's answer."""
    kind, mutate = CB_MUTATIONS[name]
    m = cmlp(4, layout)
    gd, _ = _served(m)
    assert _is_outlined(_source(gd))
    mutate(layer(m, i))
    before = sg.cache_info()["guard_misses"].get(kind, 0)
    assert_same_flatten(sg.flatten(m), sg.generic.flatten(m))
    assert sg.cache_info()["guard_misses"].get(kind, 0) == before + 1, sg.cache_info()["guard_misses"]


@pytest.mark.parametrize("layout", ["list", "attrs"])
@pytest.mark.parametrize("name", ["same layer twice", "same param twice"])
def test_callback_occurrences_merged_is_a_distinct_miss(outlined: None, name: str, layout: str) -> None:
    m = cmlp(4, layout)
    _served(m)
    if name == "same layer twice":
        if layout == "list":
            m.layers[2] = m.layers[1]
        else:
            m.l2 = m.l1
    else:
        layer(m, 2).items["b"] = layer(m, 1).items["b"]
    before = sg.cache_info()["guard_misses"].get("distinct", 0)
    assert_same_flatten(sg.flatten(m), sg.generic.flatten(m))
    assert sg.cache_info()["guard_misses"].get("distinct", 0) == before + 1


@pytest.mark.repeats
@pytest.mark.parametrize("share", ["tied weight", "shared layer", "cycle"])
def test_sharing_across_callback_occurrences(impl: Any, share: str) -> None:
    """Tied weights, a layer met twice, a cycle: the occurrences they touch stay inline (the
    identity guards see every path), the others outlined; every answer the reference's."""
    m = cmlp(6)
    if share == "tied weight":
        layer(m, 4).items["w"] = layer(m, 1).items["w"]
    elif share == "shared layer":
        m.again = m.layers[2]
    else:
        layer(m, 3).items["up"] = m
    gd, sm = impl.flatten(m)
    assert_same_flatten((gd, sm), sg.generic.flatten(m))
    twin = sg.generic.unflatten(gd, sm)
    _update_like_reference(impl, m, twin, sm, 2.0)


@pytest.mark.parametrize("keys", [(1, True), (1, 1.0), (0.0, -0.0), ("a", "b")])
def test_equal_keys_of_other_types_are_other_shapes(outlined: None, keys: tuple) -> None:
    """Keys equal to Python (1, True, 1.0) are other guards: each occurrence is served by
    code bound to its own key (a merged shape would miss on every call)."""
    layers = []
    for k in keys * 2:
        n = CLin(1.0)
        n.items[k] = sg.Param(np.zeros(1))
        layers.append(n)
    m = Box(layers=layers)
    _served(m)
    _served(m)


@pytest.mark.parametrize("layout", ["list", "attrs"])
@pytest.mark.parametrize("name", ["extra key", "metadata"])
def test_callback_guards_are_load_bearing_in_outlined_code(
        outlined: None, name: str, layout: str, disable: Callable[[frozenset[str]], None]) -> None:
    """Without the guards of its kind, the outlined code answers a mutated occurrence (the
    third) with the first occurrence's keys or metadata: it differs from the reference."""
    kind, mutate = CB_MUTATIONS[name]
    disable(frozenset({kind}))
    m = cmlp(4, layout)
    sg.flatten(m)
    gd, _ = sg.flatten(m)
    assert _is_outlined(_source(gd))
    mutate(layer(m, 2))
    hits = sg.cache_info()["hits"]
    got = sg.flatten(m)
    assert sg.cache_info()["hits"] == hits + 1
    assert got[0] != sg.generic.flatten(m)[0]


def test_ten_thousand_callback_layers_are_specialized(outlined: None) -> None:
    m = cmlp(10_000)
    gd, _ = _served(m)
    assert "10000 of one shape" in _source(gd) or "of one shape" in _source(gd)


# -- chains of nested containers (``x = [x, State(...)]``) ------------------------------------


def nest(n: int, kind: str = "list") -> Box:
    """``n`` nested containers, each holding the next and a Param (and per ``kind`` a static,
    a Linear node, the next after its own children, a tuple or a dict)."""
    x: Any = [] if kind != "dict" else {}
    for i in range(n):
        p = sg.Param(np.full((2,), i, np.float32))
        if kind == "list":
            x = [x, p]
        elif kind == "first":
            x = [p, 3, x]
        elif kind == "tuple":
            x = (x, p)
        elif kind == "dict":
            x = {"next": x, "p": p, "k": "v"}
        else:  # "node": an outlined Linear in each link
            x = [Linear(float(i)), x, p]
    return Box(x=x, after=sg.Param(np.ones(1, np.float32)))


def _nest_link(m: Box, k: int) -> Any:
    x = m.x
    for _ in range(k):
        x = x["next"] if type(x) is dict else next(c for c in x if type(c) in (list, tuple))
    return x


NEST_KINDS = ["list", "first", "tuple", "dict", "node"]


@pytest.mark.repeats
@pytest.mark.parametrize("kind", NEST_KINDS)
def test_nested_containers_flatten_update_unflatten(impl: Any, kind: str) -> None:
    m, twin = nest(40, kind), nest(40, kind)
    gd, sm = impl.flatten(m)
    assert_same_flatten((gd, sm), sg.generic.flatten(m))
    new = _update_like_reference(impl, m, twin, sm, 1.0)
    clone = impl.unflatten(gd, new)
    assert_same_flatten(sg.generic.flatten(clone), sg.generic.flatten(sg.generic.unflatten(gd, new)))
    if impl.compiled:
        assert_same_flatten(sg.flatten(m), sg.generic.flatten(m))
        assert list(sg.states(m).keys()) == list(sm.keys())


@pytest.mark.parametrize("kind", ["list", "tuple", "dict"])
def test_ten_thousand_nested_containers_are_one_loop(outlined: None, kind: str) -> None:
    m = nest(10_000, kind)
    gd, sm = _served(m)
    src = _source(gd)
    assert "nested links of one shape" in src and len(src.splitlines()) < 120
    new = _bump(sm, 2.0)
    sg.update(m, new)
    assert sg.cache_info()["update_hits"] == 1
    assert all(a is b for a, b in zip(sg.generic.flatten(m)[1].values(), new.values(), strict=True))


def _set_link(m: Box, k: int, make: Callable[[Any], Any]) -> None:
    """Replace link ``k`` (``k >= 1``) by ``make(link)`` in its parent."""
    parent, link = _nest_link(m, k - 1), _nest_link(m, k)
    if type(parent) is dict:
        parent["next"] = make(link)
    elif type(parent) is list:
        parent[parent.index(link)] = make(link)
    else:
        raise AssertionError("a tuple parent")


NEST_MUTATIONS: dict[str, tuple[str, Callable[[Box, int], None]]] = {
    "state type": ("type", lambda m, k: _nest_link(m, k).__setitem__(
        1, Buffer(_nest_link(m, k)[1].value))),
    "link longer": ("container", lambda m, k: _nest_link(m, k).append(1)),
    "link a tuple": ("type", lambda m, k: _set_link(m, k, tuple)),
    "shorter chain": ("container", lambda m, k: _set_link(m, k, lambda link: [[], link[1]])),
    "state twice": ("distinct", lambda m, k: _nest_link(m, k).__setitem__(1, _nest_link(m, k + 1)[1])),
    "a link skipped": ("container", lambda m, k: _set_link(m, k, lambda link: link[0])),
}


@pytest.mark.parametrize("name", sorted(NEST_MUTATIONS))
@pytest.mark.parametrize("k", [1, 17, 38])
def test_each_nested_container_mutated_is_a_miss(outlined: None, name: str, k: int) -> None:
    kind, mutate = NEST_MUTATIONS[name]
    m = nest(40)
    gd, _ = _served(m)
    assert "nested links of one shape" in _source(gd)
    mutate(m, k)
    before = sg.cache_info()["guard_misses"].get(kind, 0)
    assert_same_flatten(sg.flatten(m), sg.generic.flatten(m))
    assert sg.cache_info()["guard_misses"].get(kind, 0) == before + 1, sg.cache_info()["guard_misses"]


@pytest.mark.parametrize("name", ["link longer", "state type", "state twice"])
def test_nested_container_guards_are_load_bearing(outlined: None, name: str,
                                                  disable: Callable[[frozenset[str]], None]) -> None:
    kind, mutate = NEST_MUTATIONS[name]
    disable(frozenset({kind}))
    m = nest(40)
    sg.flatten(m)
    gd, _ = sg.flatten(m)
    assert "nested links of one shape" in _source(gd)
    mutate(m, 17)
    hits = sg.cache_info()["hits"]
    got = sg.flatten(m)
    assert sg.cache_info()["hits"] == hits + 1
    assert got[0] != sg.generic.flatten(m)[0]


@pytest.mark.repeats
def test_a_nested_container_state_tied_elsewhere(impl: Any) -> None:
    """A link's state also held outside the chain: that link is not in the loop (its state
    is referenced twice); the answer is the reference's."""
    m = nest(30)
    m.tied = _nest_link(m, 12)[1]
    gd, sm = impl.flatten(m)
    assert_same_flatten((gd, sm), sg.generic.flatten(m))
    twin = sg.generic.unflatten(gd, sm)
    _update_like_reference(impl, m, twin, sm, 1.0)


# -- bare array leaves (no State) -------------------------------------------------------------


class ArrLin(sg.Node):
    """A layer holding bare arrays: as attributes, in a list, in a dict."""

    def __init__(self, seed: float = 0.0) -> None:
        self.w = np.full((2, 2), seed, np.float32)
        self.b = [np.full((2,), seed, np.float32), 3]
        self.d = {"g": np.full((1,), seed, np.float32)}


def amodel(n: int = 4, layout: str = "list") -> Box:
    if layout == "list":
        return Box(layers=[ArrLin(float(i)) for i in range(n)], top=np.zeros(1, np.float32))
    if layout == "attrs":
        return Box(**{f"l{i}": ArrLin(float(i)) for i in range(n)}, top=np.zeros(1, np.float32))
    if layout == "callback":  # a callback layer holding bare arrays (written back by set_key)
        layers = []
        for i in range(n):
            c = CLin(float(i))
            c.items["a"] = np.full((2,), i, np.float32)
            c.items["lst"] = [np.full((1,), i, np.float32)]
            layers.append(c)
        return Box(layers=layers, x=layers[0].__class__(5.0), top=np.zeros(1, np.float32))
    # "mixed": states and arrays in one layer, in a list and as attributes
    out = Box(layers=[ArrLin(float(i)) for i in range(n)], a=ArrLin(7.0), b=ArrLin(8.0))
    for lay in [*out.layers, out.a, out.b]:
        lay.p = sg.Param(np.ones(1, np.float32))
    return out


def _arrays_of(m: Any) -> list[Any]:
    return list(sg.generic.flatten(m)[1].values())


@pytest.mark.repeats
@pytest.mark.parametrize("layout", ["list", "attrs", "callback", "mixed"])
def test_bare_arrays_flatten_update_unflatten(impl: Any, layout: str) -> None:
    m, twin = amodel(5, layout), amodel(5, layout)
    gd, sm = impl.flatten(m)
    assert_same_flatten((gd, sm), sg.generic.flatten(m))
    new = _bump(sm, 1.0)
    impl.update(m, new)
    sg.generic.update(twin, new)
    mine, theirs = sg.generic.flatten(m), sg.generic.flatten(twin)
    assert mine[0] == theirs[0]
    for a, b in zip(mine[1].values(), theirs[1].values(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert all(a is b for a, b in zip(_arrays_of(m), new.values(), strict=True))
    clone = impl.unflatten(gd, new)
    assert_same_flatten(sg.generic.flatten(clone), sg.generic.flatten(sg.generic.unflatten(gd, new)))


def test_bare_arrays_are_outlined(outlined: None) -> None:
    for layout in ("list", "attrs", "callback"):
        sg.clear_cache()
        m = amodel(4, layout)
        gd, sm = _served(m)
        assert _is_outlined(_source(gd)), layout
        assert "_write_arrays" in _source(gd, "update") or "for " in _source(gd, "update"), layout
        hits = outlined_hits()
        sg.update(m, _bump(sm, 1.0))
        assert outlined_hits() == hits + 1


@pytest.mark.repeats
@pytest.mark.parametrize("layout", ["list", "attrs"])
@pytest.mark.parametrize("where", ["two occurrences", "occurrence and root", "three"])
def test_a_list_of_arrays_reached_from_two_occurrences(impl: Any, layout: str, where: str) -> None:
    """Containers are not objects of the structure: one list reached from two places is
    written twice, the later write winning, in the reference's order (node by node in
    table order): the outlined writes keep it."""
    m, twin = amodel(4, layout), amodel(4, layout)
    for root in (m, twin):
        lay = root.layers if layout == "list" else [getattr(root, f"l{i}") for i in range(4)]
        if where == "two occurrences":
            lay[3].b = lay[1].b
        elif where == "occurrence and root":
            root.shared = lay[2].b
        else:
            lay[0].b = lay[2].b
            root.z = lay[2].b
            lay[3].d = lay[1].d
    gd, sm = impl.flatten(m)
    assert_same_flatten((gd, sm), sg.generic.flatten(m))
    _update_like_reference(impl, m, twin, sm, 1.0, _arrays_of)


ARR_MUTATIONS: dict[str, tuple[str, Callable[[Any], None]]] = {
    "array a state": ("type", lambda x: setattr(x, "w", sg.Param(x.w))),
    "array a number": ("type", lambda x: x.b.__setitem__(0, 1.5)),
    "list longer": ("container", lambda x: x.b.append(np.ones(1))),
    "dict key": ("container", lambda x: setattr(x, "d", {"h": x.d["g"]})),
    "list a tuple": ("type", lambda x: setattr(x, "b", tuple(x.b))),
}


@pytest.mark.parametrize("layout", ["list", "attrs"])
@pytest.mark.parametrize("name", sorted(ARR_MUTATIONS))
@pytest.mark.parametrize("i", [0, 2, 3])
def test_each_array_occurrence_mutated_is_a_miss(outlined: None, name: str, i: int, layout: str) -> None:
    kind, mutate = ARR_MUTATIONS[name]
    m = amodel(4, layout)
    gd, _ = _served(m)
    assert _is_outlined(_source(gd))
    mutate(m.layers[i] if layout == "list" else getattr(m, f"l{i}"))
    before = sg.cache_info()["guard_misses"].get(kind, 0)
    assert_same_flatten(sg.flatten(m), sg.generic.flatten(m))
    assert sg.cache_info()["guard_misses"].get(kind, 0) == before + 1, sg.cache_info()["guard_misses"]


@pytest.mark.parametrize("layout", ["list", "attrs"])
def test_array_type_guard_is_load_bearing(outlined: None, layout: str,
                                          disable: Callable[[frozenset[str]], None]) -> None:
    disable(frozenset({"type"}))
    m = amodel(4, layout)
    sg.flatten(m)
    gd, _ = sg.flatten(m)
    assert _is_outlined(_source(gd))
    ARR_MUTATIONS["array a state"][1](m.layers[2] if layout == "list" else m.l2)
    hits = sg.cache_info()["hits"]
    got = sg.flatten(m)
    assert sg.cache_info()["hits"] == hits + 1
    assert got[0] != sg.generic.flatten(m)[0]


def test_arrays_in_a_tuple_stay_exact(impl: Any) -> None:
    """An array in a tuple has no owner to write into (the update only checks it is left
    as it is): such a layer is not outlined, and the answers are the reference's."""
    def make() -> Box:
        return Box(layers=[Box(t=(np.ones(1), 2), p=sg.Param(np.ones(1))) for _ in range(3)])

    m, twin = make(), make()
    gd, sm = impl.flatten(m)
    assert_same_flatten((gd, sm), sg.generic.flatten(m))
    new = _bump(sm, 1.0)
    outcome = []
    for fn, root in ((impl.update, m), (sg.generic.update, twin)):
        try:
            fn(root, new)
            outcome.append(None)
        except Exception as e:
            outcome.append((type(e), str(e)))
    assert outcome[0] == outcome[1]
    for a, b in zip(_arrays_of(m), _arrays_of(twin), strict=True):
        np.testing.assert_array_equal(a, b)


class CArr:
    """Another callback class, holding a bare array (written back with its own set_key)."""

    def __init__(self, i: float) -> None:
        self.items: dict[str, Any] = {"a": np.full((2,), i, np.float32)}


def _carr_set(n: CArr, k: str, v: Any) -> None:
    if type(n) is not CArr:  # (another class's node: the wrong set_key was called)
        raise TypeError(f"CArr's set_key called on a {type(n).__name__}")
    n.items[k] = v


sg.register_graph_node_type(CArr, lambda n: (list(n.items.items()), None), _carr_set,
                            lambda n, k: n.items.pop(k), lambda meta: CArr(0.0), lambda n: n.items.clear())


@pytest.mark.repeats
def test_nested_callback_classes_with_arrays(impl: Any) -> None:
    """A callback layer holding another callback class's node before its own bare array:
    each array is written back by its own class's set_key."""
    def make() -> Box:
        out = []
        for i in range(4):
            c = CLin(float(i))
            c.items["inner"] = CArr(float(i))
            c.items["own"] = np.full((1,), i, np.float32)
            out.append(c)
        return Box(a=out[0], b=out[1], c=out[2], d=out[3])

    m, twin = make(), make()
    gd, sm = impl.flatten(m)
    assert_same_flatten((gd, sm), sg.generic.flatten(m))
    _update_like_reference(impl, m, twin, sm, 1.0, _arrays_of)
    assert all(type(x) is np.ndarray for x in _arrays_of(m))
