"""Adversarial cases for two outlined features: runs of sibling states (``load_items``,
FlattenPlanner._state_runs) and custom JAX pytrees in outlined shapes (shapes._pytree_key).

Each case runs through every implementation (the ``impl`` fixture) and demands the
reference's answer; on the outlined path the calls must have been served by generated
code (the hit counters), so a case that only falls back to the walker cannot pass there.
"""

from __future__ import annotations

import random
from typing import Any

import jax
import numpy as np
import pytest
from conftest import assert_same_flatten, outlined_flatten_hits, outlined_unflatten_hits

import specgraph as sg


class Bag(sg.Node):
    def __init__(self, **attrs: Any) -> None:
        vars(self).update(attrs)


def _ref(fn: Any, *args: Any) -> Any:
    """``fn(*args)`` answered by the reference walker (the specializer off)."""
    with sg.specialization(False):
        return fn(*args)


def _values(node: Any) -> list[Any]:
    return [np.asarray(v).tolist() for v in sg.generic.flatten(node)[1].values()]


# -- runs of states whose value is a property (user code) ---------------------------------

LOG: list[tuple[str, int]] = []
REFUSE: list[int] = []  # the item whose setter refuses values above 50


class Watched(sg.State):
    """A state whose ``value`` is a property: reads and writes are logged, one item's
    setter may refuse."""

    @property
    def value(self) -> Any:
        LOG.append(("get", self.i))
        return self._v

    @value.setter
    def value(self, v: Any) -> None:
        i = getattr(self, "i", None)
        if i in REFUSE and float(np.asarray(v)) > 50:
            raise RuntimeError(f"item {i} refuses {v}")
        LOG.append(("set", i))
        self._v = v


def _watched(i: int, **meta: Any) -> Watched:
    w = Watched(np.float32(i), **meta)
    w.i = i
    return w


def _watched_bag(layout: str, n: int = 6) -> Bag:
    """A run of ``n`` Watched between two Watched of other metadata (not in the run)."""
    b = Bag(a=_watched(-1, tag="first"), z=_watched(99, tag="last"), arr=np.zeros(1, np.float32))
    items = [_watched(i) for i in range(n)]
    if layout == "attrs":
        for i, x in enumerate(items):
            setattr(b, f"p{i}", x)
    elif layout == "dict":
        b.d = {f"k{i}": x for i, x in enumerate(items)}
    else:
        b.d = items
    return b


@pytest.mark.parametrize("layout", ["attrs", "dict", "list"])
def test_a_run_of_value_properties_reads_and_writes_as_the_reference(impl: Any, layout: str) -> None:
    """The flatten reads the values (user code) in the reference's order; the update calls
    the setters in its order; a setter refusing mid-run leaves the very state the
    reference's failed update leaves."""
    b, twin = _watched_bag(layout), _watched_bag(layout)
    gd, st = impl.flatten(b)
    LOG.clear()
    ref = sg.generic.flatten(twin)
    want = list(LOG)
    LOG.clear()
    hits = sg.cache_info()["hits"]
    got = sg.flatten(b) if impl.compiled else sg.generic.flatten(b)
    assert LOG == want
    assert sg.cache_info()["hits"] == hits + impl.compiled
    assert gd == ref[0] and list(got[1].keys()) == list(ref[1].keys())
    if impl.name == "outlined":
        assert "a run of 6 x Watched" in sg.explain(gd)
    new = jax.tree.map(lambda v: v + 100, st)
    LOG.clear()
    sg.generic.update(twin, new)
    want = [e for e in LOG if e[0] == "set"]
    LOG.clear()
    hits = sg.cache_info()["update_hits"]
    impl.update(b, new)
    assert [e for e in LOG if e[0] == "set"] == want
    assert sg.cache_info()["update_hits"] == hits + impl.compiled
    assert _values(b) == _values(twin)
    REFUSE[:] = [3]
    try:
        new = jax.tree.map(lambda v: v + 100, st)
        with pytest.raises(RuntimeError, match="refuses"):
            sg.generic.update(twin, new)
        with pytest.raises(RuntimeError, match="refuses"):
            impl.update(b, new)
    finally:
        REFUSE.clear()
    assert _values(b) == _values(twin)


# -- partial updates through part of a run, parts in any order ------------------------------


def _wide(layout: str, n: int = 12) -> Bag:
    items = [sg.Param(np.full((2,), i, np.float32)) for i in range(n)]
    b = Bag(head=sg.State(np.zeros(1, np.float32)), z=3)
    if layout == "attrs":
        for i, x in enumerate(items):
            setattr(b, f"p{i:02d}", x)
    elif layout == "dict":
        b.d = {f"k{i:02d}": x for i, x in enumerate(items)}
    elif layout == "list":
        b.d = items
    else:
        b.d = tuple(items)
    return b


@pytest.mark.repeats
@pytest.mark.parametrize("layout", ["attrs", "dict", "list", "tuple"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_parts_of_a_run_update_as_the_reference(impl: Any, layout: str, seed: int) -> None:
    """Three split parts cutting a run anywhere, given back in any order (one, two or all
    three): the written values are the reference's; compiled, every update is served."""
    rng = random.Random(seed)
    b, twin = _wide(layout), _wide(layout)
    gd, st = impl.flatten(b)
    paths = list(st.keys())
    group = {p: rng.randrange(3) for p in paths}
    filters = [lambda path, v, g=g: group[path] == g for g in range(2)]
    parts = sg.split(b, *filters, ...)[1:] if impl.compiled else _ref(sg.split, b, *filters, ...)[1:]
    parts = [jax.tree.map(lambda v: v * 3 + 1, p) for p in parts]
    order = list(range(3))
    rng.shuffle(order)
    chosen = [parts[i] for i in order][: rng.randrange(1, 4)]
    hits = sg.cache_info()["update_hits"]
    impl.update(b, *chosen)
    assert sg.cache_info()["update_hits"] == hits + impl.compiled
    _ref(sg.update, twin, *chosen)
    assert _values(b) == _values(twin)
    if impl.name == "outlined":
        assert "a run of 12 x Param" in sg.explain(gd)


# -- custom pytrees: aux data equal yet distinguishable ------------------------------------


class Key(str):
    """A str subclass: equal to its str, not indistinguishable from it."""


@jax.tree_util.register_pytree_node_class
class Tag:
    def __init__(self, a: Any, b: Any, tag: Any) -> None:
        self.a, self.b, self.tag = a, b, tag

    def tree_flatten(self) -> tuple[tuple[Any, Any], Any]:
        return (self.a, self.b), self.tag

    @classmethod
    def tree_unflatten(cls, aux: Any, ch: Any) -> Tag:
        return cls(*ch, tag=aux)


AUX = {"1": 1, "True": True, "1.0": 1.0, "0.0": 0.0, "-0.0": -0.0, "str": "a", "Key": Key("a"),
       "(1,)": (1,), "(True,)": (True,)}
PAIRS = [("1", "True"), ("True", "1"), ("1", "1.0"), ("0.0", "-0.0"), ("-0.0", "0.0"), ("str", "Key"),
         ("Key", "str"), ("(1,)", "(True,)")]


def _tagged_model(tags: list[Any]) -> Bag:
    return Bag(layers=[Bag(p=Tag(sg.Param(np.float32(i)), sg.Param(np.float32(-i)), t), n=0)
                       for i, t in enumerate(tags)])


@pytest.mark.repeats
@pytest.mark.parametrize(("first", "second"), PAIRS)
def test_aux_data_equal_yet_distinguishable(impl: Any, first: str, second: str) -> None:
    """Layers whose aux data are equal but of another type (or sign, or str subclass):
    mixed, each rebuilt layer keeps its own aux data; one mutated after compiling, the
    flatten is the reference's (a miss, not the stale structure)."""
    tags = [AUX[first] if i % 2 == 0 else AUX[second] for i in range(6)]
    m = _tagged_model(tags)
    gd, st = impl.flatten(m)
    assert_same_flatten((gd, st), sg.generic.flatten(m))
    twin = impl.unflatten(gd, st)
    for layer, t in zip(twin.layers, tags, strict=True):
        assert type(layer.p.tag) is type(t) and layer.p.tag == t
        if type(t) is float:
            assert np.copysign(1.0, layer.p.tag) == np.copysign(1.0, t)
    m = _tagged_model([AUX[first]] * 6)
    impl.flatten(m)
    m.layers[3].p = Tag(m.layers[3].p.a, m.layers[3].p.b, AUX[second])
    ref = sg.generic.flatten(m)
    hits = sg.cache_info()["hits"]
    got = sg.flatten(m) if impl.compiled else sg.generic.flatten(m)
    assert_same_flatten(got, ref)
    assert sg.cache_info()["hits"] == hits  # (the stale variant did not answer)
    twin = impl.unflatten(*ref)
    assert type(twin.layers[3].p.tag) is type(AUX[second])


# -- custom pytrees next to callback nodes: user calls in the reference's order -------------

CALLS: list[tuple] = []


@jax.tree_util.register_pytree_node_class
class Logged:
    """A registered pytree logging its flatten and unflatten calls (with its tag)."""

    def __init__(self, a: Any, b: Any, tag: int = 0) -> None:
        self.a, self.b, self.tag = a, b, tag

    def tree_flatten(self) -> tuple[tuple[Any, Any], int]:
        CALLS.append(("flatten", self.tag))
        return (self.a, self.b), self.tag

    @classmethod
    def tree_unflatten(cls, aux: int, ch: Any) -> Logged:
        CALLS.append(("unflatten", aux, type(ch[0]).__name__, type(ch[1]).__name__))
        return cls(*ch, tag=aux)


class CB:
    """A node type registered with callbacks (user code), holding a dict of children."""

    def __init__(self, **items: Any) -> None:
        self.items = dict(items)


def _cb_flatten(n: CB) -> tuple[Any, Any]:
    CALLS.append(("cb flatten", sorted(n.items)))
    return sorted(n.items.items()), None


def _cb_set(n: CB, k: Any, v: Any) -> None:
    CALLS.append(("cb set", k, type(v).__name__))
    n.items[k] = v


def _cb_create(meta: Any) -> CB:
    CALLS.append(("cb create",))
    return CB()


sg.register_graph_node_type(CB, _cb_flatten, _cb_set, lambda n, k: n.items.pop(k), _cb_create,
                            lambda n: n.items.clear())


def _p(i: float) -> sg.Param:
    return sg.Param(np.float32(i))


def _layers(make: Any) -> Any:
    return lambda: Bag(layers=[make(i) for i in range(5)])


STRUCTURES = {
    "node holds pytree": _layers(lambda i: Bag(p=Logged(Bag(w=_p(i)), _p(-i), i % 3), n=0)),
    "callback holds pytree of node": _layers(lambda i: CB(p=Logged(Bag(w=_p(i)), _p(-i), i % 2))),
    "pytree of callback": _layers(lambda i: Bag(p=Logged(CB(w=_p(i)), _p(i), 1), q=CB(v=_p(2)))),
    "pytree in pytree": _layers(lambda i: Bag(p=Logged(Logged(CB(w=_p(i)), Bag(u=_p(1)), 2), CB(v=_p(3)), 3)
                                              )),
}


def _record(fn: Any) -> tuple[Any, list[tuple]]:
    CALLS.clear()
    out = fn()
    return out, list(CALLS)


@pytest.mark.repeats
@pytest.mark.parametrize("name", sorted(STRUCTURES))
def test_pytrees_and_callback_nodes_call_user_code_as_the_reference(impl: Any, name: str) -> None:
    """Flatten, update, a partial update, states() and unflatten make the user calls the
    reference makes, in its order; compiled, each is served by generated code."""
    m = STRUCTURES[name]()
    gd, st = impl.flatten(m)
    sg.unflatten(gd, st)
    half = [lambda path, v: hash(path) % 2 == 0, ...]
    part = jax.tree.map(lambda v: v + 1, sg.split(m, *half)[1])
    new = jax.tree.map(lambda v: v * 2, st)
    before = dict(sg.cache_info())
    ops = [
        ("flatten", lambda: sg.generic.flatten(m), lambda: sg.flatten(m) if impl.compiled
         else sg.generic.flatten(m)),
        ("update", lambda: sg.generic.update(m, new), lambda: sg.update(m, new) if impl.compiled
         else sg.generic.update(m, new)),
        ("partial", lambda: _ref(sg.update, m, part), lambda: sg.update(m, part) if impl.compiled
         else _ref(sg.update, m, part)),
        ("states", lambda: _ref(sg.states, m, *half), lambda: sg.states(m, *half) if impl.compiled
         else _ref(sg.states, m, *half)),
        ("unflatten", lambda: sg.generic.unflatten(gd, st), lambda: impl.unflatten(gd, st)),
    ]
    for op, reference, served in ops:
        want = _record(reference)
        got = _record(lambda: sg.unflatten(gd, st)) if op == "unflatten" and impl.compiled \
            else _record(served)
        assert got[1] == want[1], op
        if op == "unflatten":
            assert_same_flatten(sg.generic.flatten(got[0]), sg.generic.flatten(want[0]))
    after = sg.cache_info()
    if impl.compiled:
        assert after["hits"] > before["hits"] and after["update_hits"] >= before["update_hits"] + 2
        assert after["walk_hits"] > before["walk_hits"] and after["unflatten_hits"] > before["unflatten_hits"]
    if impl.name == "outlined":
        assert outlined_flatten_hits() > 0 and outlined_unflatten_hits() > 0
