"""The specializer: generated code answers exactly as the reference walker does.

Every test compares the public (dispatched, possibly specialized) path with
``specgraph.generic`` and checks the cache counters, so that a test fails both
when the answer is wrong and when the specializer silently stops serving.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Callable
from typing import Any, ClassVar

import jax
import numpy as np
import pytest
from conftest import assert_same_flatten

import specgraph as sg
from specgraph.runtime import dispatch

# -- models -----------------------------------------------------------------------


class Box(sg.Node):
    """A plain node: keyword arguments become attributes."""

    def __init__(self, **attrs: Any) -> None:
        vars(self).update(attrs)


class OtherBox(sg.Node):
    """Same shape as Box, different type."""

    def __init__(self, **attrs: Any) -> None:
        vars(self).update(attrs)


class Linear(sg.Node):
    def __init__(self, din: int = 2, dout: int = 3) -> None:
        self.w = sg.Param(np.ones((din, dout), np.float32))
        self.b = sg.Param(np.zeros((dout,), np.float32))
        self.din = din
        self.dout = dout


class Hidden(sg.Node):
    graph_invisible_attrs = ("cache",)

    def __init__(self) -> None:
        self.p = sg.Param(np.float32(1))
        self.cache = {"anything": object()}


class BatchStat(sg.State):
    """A user State subclass."""


Pair = collections.namedtuple("Pair", ["first", "second"])


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Frozen:
    """A registered frozen dataclass of statics: collapses into one static edge."""

    x: Any
    y: Any


class Marker:
    """A fresh, identity-compared value."""

    def __init__(self, i: int = 0) -> None:
        self.i = i

    def __repr__(self) -> str:
        return f"Marker({self.i})"


def p(x: float = 1.0, **meta: Any) -> sg.Param:
    return sg.Param(np.full((2,), x, np.float32), **meta)


def mk_linear() -> Any:
    return Linear()


def mk_mlp() -> Any:
    return Box(layers=[Linear(4, 4) for _ in range(3)], act="relu", scale=1.0)


def mk_tied() -> Any:
    enc, dec = Linear(), Linear()
    dec.w = enc.w
    return Box(enc=enc, dec=dec, head=enc.w)


def mk_cycle() -> Any:
    root = Box(child=Box(x=p(2.0)), w=p())
    root.child.parent = root
    root.me = root
    return root


def mk_shared_node() -> Any:
    lin = Linear()
    return Box(xs=[lin, lin], d={"k": lin}, direct=lin)


def mk_containers() -> Any:
    return Box(
        lst=[p(), np.arange(3), 1, None, "s"],
        tup=(p(3.0), 2, "x"),
        d={"a": p(4.0), "b": [np.zeros(2), {"c": 3, "e": p(5.0)}]},
        empty_list=[],
        empty_dict={},
        empty_tuple=(),
    )


def mk_arrays() -> Any:
    return Box(a=np.ones(2), nested={"x": np.zeros(1), "y": [np.ones(3)]}, n=2)


# Statics that are not plain values (a dataclass, ...) are matched by identity, so
# twins share this one; values (ints, strings, tuples of them, namedtuples) need not.
FROZEN = Frozen(1, 2.0)


def mk_statics() -> Any:
    return Box(
        i=1, f=2.5, s="str", b=True, n=None, t=(1, "a", 2.0), nested_t=((1, 2), (3.0,)),
        fn=len, nt=Pair(1, "two"), fz=FROZEN, w=p(),
    )


def mk_metadata() -> Any:
    return Box(a=p(tag="x", lr=0.1), s=BatchStat(np.zeros(2)), plain=sg.State(3.0))


def mk_hidden() -> Any:
    return Box(h=Hidden(), w=p())


def mk_list_root() -> Any:
    return [Linear(), Linear(), p()]


def mk_dict_root() -> Any:
    return {"a": Linear(), "b": p(), "c": [np.ones(1)]}


def mk_chain() -> Any:
    root = cur = Box()
    for i in range(60):
        cur.p = p(float(i))
        cur.child = Box()
        cur = cur.child
    return root


def mk_int_keys() -> Any:
    return Box(d={3: p(), 1: p(2.0), -7: np.ones(1)}, t={(1, "a"): p(), (0, "b"): 5})


MAKERS: dict[str, Callable[[], Any]] = {
    "linear": mk_linear,
    "mlp": mk_mlp,
    "tied": mk_tied,
    "cycle": mk_cycle,
    "shared_node": mk_shared_node,
    "containers": mk_containers,
    "arrays": mk_arrays,
    "statics": mk_statics,
    "metadata": mk_metadata,
    "hidden": mk_hidden,
    "list_root": mk_list_root,
    "dict_root": mk_dict_root,
    "chain": mk_chain,
    "int_keys": mk_int_keys,
}



def info() -> dict[str, Any]:
    return sg.cache_info()


def misses() -> dict[str, int]:
    return dict(sg.cache_info()["guard_misses"])


def miss_delta(before: dict[str, int]) -> dict[str, int]:
    after = misses()
    return {k: after.get(k, 0) - before.get(k, 0) for k in set(after) | set(before)
            if after.get(k, 0) != before.get(k, 0)}


def warm(node: Any) -> None:
    """Flatten through the dispatcher until ``node``'s structure is served by generated code."""
    sg.flatten(node)
    h = info()["hits"]
    sg.flatten(node)
    assert info()["hits"] == h + 1, "the structure was not specialized"


def marked(sm: sg.StateMap) -> sg.StateMap:
    """A StateMap of the same path table holding fresh values: a Marker per State, a new
    array per bare array leaf (a non-array there would change the structure)."""
    fresh = [Marker(i) if t is not None else np.full((1,), i) for i, t in enumerate(sm.types)]
    leaves, treedef = jax.tree.flatten(sm)
    assert len(leaves) == len(fresh)
    return jax.tree.unflatten(treedef, fresh)


# -- 1. specialization happens, answers match the reference ------------------------------


@pytest.mark.parametrize("name", MAKERS)
def test_second_flatten_is_a_hit_and_matches_reference(name: str) -> None:
    node = MAKERS[name]()
    ref = sg.generic.flatten(node)
    assert info()["compiled_variants"] == 0
    first = sg.flatten(node)
    assert_same_flatten(first, ref)
    assert info()["compiled_variants"] == 1
    assert info()["hits"] == 0
    for n in (1, 2):
        again = sg.flatten(node)
        assert info()["hits"] == n
        assert_same_flatten(again, ref)
    assert info()["guard_misses"] == {}
    assert info()["generic_flattens"] == 1


@pytest.mark.parametrize("name", MAKERS)
def test_hit_on_a_twin_object_of_the_same_structure(name: str) -> None:
    warm(MAKERS[name]())
    twin = MAKERS[name]()
    h = info()["hits"]
    assert_same_flatten(sg.flatten(twin), sg.generic.flatten(twin))
    assert info()["hits"] == h + 1


@pytest.mark.parametrize("name", MAKERS)
def test_update_hit_matches_reference_update(name: str) -> None:
    a, b = MAKERS[name](), MAKERS[name]()
    _, sm = sg.flatten(a)
    warm(a)
    live_states = sg.states(a)
    new = marked(sm)
    before = info()["update_hits"]
    sg.update(a, new)
    assert info()["update_hits"] == before + 1
    sg.generic.update(b, new)
    got, want = sg.generic.flatten(a), sg.generic.flatten(b)
    assert_same_flatten(got, want)
    assert got[1].values() == new.values()
    # States keep their identity: update writes values, it does not replace boxes.
    after = sg.states(a)
    assert list(after) == list(live_states)
    assert all(after[k] is live_states[k] for k in live_states)


@pytest.mark.parametrize("root", ["node", "list"])
def test_update_of_array_in_a_tuple_matches_reference(root: str) -> None:
    """The tuple has no mutable owner slot for the leaf: the reference rebuilds the tuple."""
    def make() -> Any:
        t = (np.ones(1), p(), (np.zeros(1), 3))
        return Box(t=t) if root == "node" else [t, p()]

    a, b = make(), make()
    _, sm = sg.flatten(a)
    warm(a)
    for vals in (sm, marked(sm), marked(sm)):  # unchanged leaves, then new ones
        sg.update(a, vals)
        sg.generic.update(b, vals)
        assert_same_flatten(sg.generic.flatten(a), sg.generic.flatten(b))
        assert_same_flatten(sg.flatten(a), sg.generic.flatten(a))


def test_update_with_partial_and_nested_states_is_correct() -> None:
    a, b = mk_mlp(), mk_mlp()
    _, sm = sg.flatten(a)
    warm(a)
    params, _ = sm.split(sg.Param, ...)
    new_params = marked(params)
    sg.update(a, new_params)
    sg.generic.update(b, new_params)
    assert_same_flatten(sg.generic.flatten(a), sg.generic.flatten(b))
    nested = marked(sm).to_nested()
    sg.update(a, nested)
    sg.generic.update(b, nested)
    assert_same_flatten(sg.generic.flatten(a), sg.generic.flatten(b))


@pytest.mark.parametrize("name", MAKERS)
def test_unflatten_hit_rebuilds_an_equal_graph(name: str) -> None:
    node = MAKERS[name]()
    gd, sm = sg.flatten(node)
    generic = sg.generic.unflatten(gd, sm)
    first = sg.unflatten(gd, sm)
    h = info()["unflatten_hits"]
    second = sg.unflatten(gd, sm)
    assert info()["unflatten_hits"] == h + 1
    assert info()["compiled_unflattens"] == 1
    for rebuilt in (generic, first, second):
        assert_same_flatten(sg.generic.flatten(rebuilt), (gd, sm))
        assert type(rebuilt) is type(node)
        assert rebuilt is not node


def test_unflatten_preserves_sharing_and_cycles() -> None:
    node = Box(enc=Linear(), dec=Linear(), child=Box())
    node.dec.w = node.enc.w
    node.child.parent = node
    node.child.enc = node.enc
    gd, sm = sg.flatten(node)
    sg.unflatten(gd, sm)
    u = sg.unflatten(gd, sm)
    assert info()["unflatten_hits"] == 1
    assert u.dec.w is u.enc.w
    assert u.child.parent is u
    assert u.child.enc is u.enc
    assert u.enc.w is not node.enc.w
    assert u.enc.w.value is node.enc.w.value
    assert type(u.enc.w) is sg.Param
    assert u.enc.din == 2


class Audited(sg.Node):
    """A node whose ``__setattr__`` records every write (the reference never calls it)."""

    writes: ClassVar[list[str]] = []

    def __setattr__(self, name: str, value: Any) -> None:
        Audited.writes.append(name)
        super().__setattr__(name, value)


class WithProperty(sg.Node):
    @property
    def shadow(self) -> str:
        return "the property"


def _fill_nodes() -> Box:
    audited = Audited()
    vars(audited).update(w=sg.Param(np.ones(2)), k=3)
    prop = WithProperty()
    vars(prop).update(shadow=sg.Param(np.ones(1)), plain=1, __class__=5)  # dict entries a descriptor hides
    late = Box(zeta=1, alpha=sg.Param(2.0), mid=[np.ones(1)])  # inserted out of order
    return Box(audited=audited, prop=prop, late=late)


def test_unflatten_fills_nodes_exactly_as_the_reference() -> None:
    """The attribute of every new node equals the reference's, in the same order, and no
    class hook runs: attribute stores only where they are plain ``__dict__`` writes."""
    node = _fill_nodes()
    gd, sm = sg.flatten(node)
    Audited.writes.clear()
    ref = sg.generic.unflatten(gd, sm)
    sg.unflatten(gd, sm)
    got = sg.unflatten(gd, sm)
    assert info()["unflatten_hits"] == 1
    assert Audited.writes == []
    for a, b in ((ref.audited, got.audited), (ref.prop, got.prop), (ref.late, got.late), (ref, got)):
        assert type(a) is type(b)
        assert list(vars(a)) == list(vars(b))
    assert list(vars(got.late)) == ["alpha", "mid", "zeta"]
    assert vars(got.prop)["__class__"] == 5 and type(got.prop) is WithProperty
    assert type(vars(got.prop)["shadow"]) is sg.Param and got.prop.shadow == "the property"
    assert_same_flatten(sg.generic.flatten(got), sg.generic.flatten(ref))


def test_unflatten_keeps_metadata_and_state_types() -> None:
    node = mk_metadata()
    gd, sm = sg.flatten(node)
    sg.unflatten(gd, sm)
    u = sg.unflatten(gd, sm)
    assert info()["unflatten_hits"] == 1
    assert dict(u.a.metadata) == {"tag": "x", "lr": 0.1}
    assert type(u.s) is BatchStat
    assert type(u.plain) is sg.State


@pytest.mark.parametrize("form", ["statemap", "nested", "flat_mapping", "split_parts"])
def test_unflatten_accepts_every_state_form_on_the_specialized_path(form: str) -> None:
    node = mk_tied()
    gd, sm = sg.flatten(node)
    sg.unflatten(gd, sm)  # specialize
    if form == "statemap":
        u = sg.unflatten(gd, sm)
    elif form == "nested":
        u = sg.unflatten(gd, sm.to_nested())
    elif form == "flat_mapping":
        u = sg.unflatten(gd, dict(sm.items()))
    else:
        _, params, rest = sg.split(node, sg.Param, ...)
        u = sg.merge(gd, params, rest)
    assert info()["unflatten_hits"] == 1
    assert_same_flatten(sg.generic.flatten(u), (gd, sm))
    assert u.dec.w is u.enc.w is u.head


def test_clone_through_the_specialized_path() -> None:
    node = mk_cycle()
    warm(node)
    sg.clone(node)
    c = sg.clone(node)
    assert info()["unflatten_hits"] >= 1
    assert c.child.parent is c and c.me is c
    assert_same_flatten(sg.generic.flatten(c), sg.generic.flatten(node))


def test_custom_pytrees_match_reference() -> None:
    node = Box(pair=Pair(np.ones(2), p()), fz=Frozen(np.ones(1), 2), w=p())
    for _ in range(3):
        assert_same_flatten(sg.flatten(node), sg.generic.flatten(node))
    gd, sm = sg.flatten(node)
    for _ in range(3):
        assert_same_flatten(sg.generic.flatten(sg.unflatten(gd, sm)), (gd, sm))
    node.pair = Pair(np.ones(2), 3)  # same treedef, a static child where a State was
    assert_same_flatten(sg.flatten(node), sg.generic.flatten(node))
    node.pair = (np.ones(2), 3)  # a plain tuple where the namedtuple was
    assert_same_flatten(sg.flatten(node), sg.generic.flatten(node))


class Bag:
    """A custom mutable node type (registered in the test that uses it)."""

    def __init__(self, **items: Any) -> None:
        self.data = dict(items)


def _register_bag() -> None:
    sg.register_graph_node_type(
        Bag, lambda b: (sorted(b.data.items()), None), lambda b, k, v: b.data.__setitem__(k, v),
        lambda b, k: b.data.pop(k), lambda meta: Bag(), lambda b: b.data.clear(),
    )


def test_callback_node_types_are_served_by_generated_code() -> None:
    """A node type registered with callbacks is specialized: generated code calls its
    flatten (and set_key / create_empty) and answers as the generic walker does."""
    _register_bag()
    node = Box(bag=Bag(u=p(), v=np.ones(2)), w=p())
    for _ in range(3):
        assert_same_flatten(sg.flatten(node), sg.generic.flatten(node))
    assert info()["hits"] == 2
    assert info()["declined"] == 0
    gd, sm = sg.flatten(node)
    for _ in range(3):
        assert_same_flatten(sg.generic.flatten(sg.unflatten(gd, sm)), (gd, sm))
    assert info()["unflatten_hits"] >= 1
    new = sg.StateMap(gd.pathtable, [np.full(2, 7.0), np.full(2, 8.0), np.full(2, 9.0)])
    sg.update(node, new)
    assert info()["update_hits"] == 1
    assert_same_flatten(sg.flatten(node), sg.generic.flatten(node))
    np.testing.assert_array_equal(node.bag.data["v"], [8.0, 8.0])


def test_declined_structures_stay_correct() -> None:
    """A structure the specializer declines (non-string attribute names on a Node): the
    generic walker serves it."""
    node = Box()
    vars(node).update({1: p(), 2: p(2.0)})
    for _ in range(3):
        assert_same_flatten(sg.flatten(node), sg.generic.flatten(node))
    assert info()["hits"] == 0
    assert info()["declined"] == 1
    gd, sm = sg.flatten(node)
    for _ in range(3):
        assert_same_flatten(sg.generic.flatten(sg.unflatten(gd, sm)), (gd, sm))


def test_alternating_structures_of_one_type_are_both_specialized() -> None:
    a = Box(w=p(), n=1)
    b = Box(w=p(), n=2, extra=p())
    warm(a)
    warm(b)
    h = info()["hits"]
    for i in range(6):
        node = (a, b)[i % 2]
        assert_same_flatten(sg.flatten(node), sg.generic.flatten(node))
    assert info()["hits"] == h + 6
    assert info()["compiled_variants"] == 2


# -- 2. structural changes between calls: guard misses, generic answer -------------------


def _stat_box() -> Box:
    return Box(
        w=p(), v=p(2.0), n=1, s="a", flag=True, arr=np.ones(2), lst=[p(), 2], d={"k": p(), "j": 1},
        meta=p(tag="t"), child=Linear(), other=Linear(), tied=None, t=(1, 2),
    )


def _tied_box() -> Box:
    b = _stat_box()
    b.tied = b.w
    return b


def _add_attr(b: Box) -> None:
    b.extra = 5


def _add_state_attr(b: Box) -> None:
    b.extra = p()


def _del_attr(b: Box) -> None:
    del b.n


def _del_state_attr(b: Box) -> None:
    del b.v


def _add_child_attr(b: Box) -> None:
    b.child.extra = "x"


def _state_type(b: Box) -> None:
    b.v = BatchStat(b.v.value)


def _state_to_plain_state(b: Box) -> None:
    b.w = sg.State(b.w.value)


def _node_type(b: Box) -> None:
    b.child = OtherBox(**vars(b.child))


def _node_to_state(b: Box) -> None:
    b.child = p()


def _list_grow(b: Box) -> None:
    b.lst.append(3)


def _list_shrink(b: Box) -> None:
    b.lst.pop()


def _list_to_tuple(b: Box) -> None:
    b.lst = tuple(b.lst)


def _dict_add(b: Box) -> None:
    b.d["z"] = 0


def _dict_del(b: Box) -> None:
    del b.d["j"]


def _tuple_grow(b: Box) -> None:
    b.t = (1, 2, 3)


def _static_value(b: Box) -> None:
    b.n = 2


def _static_int_to_float(b: Box) -> None:
    b.n = 1.0


def _static_str(b: Box) -> None:
    b.s = "b"


def _static_bool_to_int(b: Box) -> None:
    b.flag = 1


def _static_nan(b: Box) -> None:
    b.n = math.nan


def _static_in_collapsed_tuple(b: Box) -> None:
    b.t = (1, 2.0)


def _static_in_child(b: Box) -> None:
    b.child.din = 99


def _static_to_array(b: Box) -> None:
    b.n = np.ones(1)


def _static_to_state(b: Box) -> None:
    b.n = p()


def _metadata_replaced(b: Box) -> None:
    b.meta = p(tag="other")


def _metadata_added(b: Box) -> None:
    b.w = p(tag="new")


def _metadata_mutated(b: Box) -> None:
    b.meta._metadata = (("tag", "mutated"),)


def _states_merged(b: Box) -> None:
    b.v = b.w


def _nodes_merged(b: Box) -> None:
    b.other = b.child


def _state_in_list_aliases(b: Box) -> None:
    b.lst[0] = b.d["k"]


def _untie(b: Box) -> None:
    b.tied = p()


def _retie_elsewhere(b: Box) -> None:
    b.tied = b.v


def _array_to_static(b: Box) -> None:
    b.arr = 3


def _array_to_state(b: Box) -> None:
    b.arr = p()


def _array_to_list(b: Box) -> None:
    b.arr = [np.ones(1)]


MUTATIONS: list[tuple[str, Callable[[], Box], Callable[[Box], None], str]] = [
    ("attr_added", _stat_box, _add_attr, "node_keys"),
    ("state_attr_added", _stat_box, _add_state_attr, "node_keys"),
    ("attr_deleted", _stat_box, _del_attr, "node_keys"),
    ("state_attr_deleted", _stat_box, _del_state_attr, "node_keys"),
    ("child_attr_added", _stat_box, _add_child_attr, "node_keys"),
    ("state_type", _stat_box, _state_type, "type"),
    ("state_to_base_state", _stat_box, _state_to_plain_state, "type"),
    ("node_type", _stat_box, _node_type, "type"),
    ("node_to_state", _stat_box, _node_to_state, "type"),
    ("list_to_tuple", _stat_box, _list_to_tuple, "type"),
    ("list_grow", _stat_box, _list_grow, "container"),
    ("list_shrink", _stat_box, _list_shrink, "container"),
    ("dict_key_added", _stat_box, _dict_add, "container"),
    ("dict_key_deleted", _stat_box, _dict_del, "container"),
    ("tuple_grow", _stat_box, _tuple_grow, "static"),  # an all-static tuple is one static edge
    ("static_value", _stat_box, _static_value, "static"),
    ("static_1_to_1.0", _stat_box, _static_int_to_float, "static"),
    ("static_a_to_b", _stat_box, _static_str, "static"),
    ("static_True_to_1", _stat_box, _static_bool_to_int, "static"),
    ("static_nan", _stat_box, _static_nan, "static"),
    ("static_in_collapsed_tuple", _stat_box, _static_in_collapsed_tuple, "static"),
    ("static_in_child", _stat_box, _static_in_child, "static"),
    ("static_to_array", _stat_box, _static_to_array, "static"),
    ("static_to_state", _stat_box, _static_to_state, "static"),
    ("metadata_replaced", _stat_box, _metadata_replaced, "metadata"),
    ("metadata_added", _stat_box, _metadata_added, "metadata"),
    ("metadata_mutated", _stat_box, _metadata_mutated, "metadata"),
    ("states_made_one", _stat_box, _states_merged, "distinct"),
    ("nodes_made_one", _stat_box, _nodes_merged, "distinct"),
    ("state_in_list_aliased", _stat_box, _state_in_list_aliases, "distinct"),
    ("untied", _tied_box, _untie, "backref"),
    ("retied_elsewhere", _tied_box, _retie_elsewhere, "backref"),
    ("array_to_static", _stat_box, _array_to_static, "type"),
    ("array_to_state", _stat_box, _array_to_state, "type"),
    ("array_to_list", _stat_box, _array_to_list, "type"),
]


@pytest.mark.parametrize(("make", "mutate", "kind"), [m[1:] for m in MUTATIONS],
                         ids=[m[0] for m in MUTATIONS])
def test_structural_change_is_a_guard_miss_of_its_kind(make: Any, mutate: Any, kind: str) -> None:
    node = make()
    old = sg.generic.flatten(node)
    warm(node)
    mutate(node)
    ref = sg.generic.flatten(node)
    assert ref[0] != old[0], "the scenario must change the structure"
    before, h = misses(), info()["hits"]
    assert_same_flatten(sg.flatten(node), ref)
    assert miss_delta(before) == {kind: 1}
    assert info()["hits"] == h
    # The new structure is specialized in turn (a NaN static never can be: NaN != NaN).
    before = misses()
    assert_same_flatten(sg.flatten(node), ref)
    if kind == "static" and mutate is _static_nan:
        assert info()["hits"] == h
    else:
        assert info()["hits"] == h + 1
        assert info()["compiled_variants"] == 2


# Mutations after which the old StateMap still names exactly the new structure's values.
SAME_PATHS = [m for m in MUTATIONS if m[0] in {
    "attr_added", "attr_deleted", "child_attr_added", "node_type", "list_to_tuple", "list_grow",
    "list_shrink", "dict_key_added", "dict_key_deleted", "tuple_grow", "static_value", "static_1_to_1.0",
    "static_a_to_b", "static_True_to_1", "static_nan", "static_in_collapsed_tuple", "static_in_child",
    "metadata_replaced", "metadata_added", "metadata_mutated",
}]


@pytest.mark.parametrize(("make", "mutate", "kind"), [m[1:] for m in SAME_PATHS],
                         ids=[m[0] for m in SAME_PATHS])
def test_structural_change_between_update_calls(make: Any, mutate: Any, kind: str) -> None:
    """update with a StateMap of the old structure: the old variant's guards refuse the new one."""
    a, b = make(), make()
    _, sm = sg.flatten(a)
    warm(a)
    mutate(a)
    mutate(b)
    new = sg.generic.flatten(a)[1]
    assert (new.paths, new.types) == (sm.paths, sm.types)
    vals = marked(sm)
    before, uh = misses(), info()["update_hits"]
    sg.update(a, vals)
    sg.generic.update(b, vals)
    assert info()["update_hits"] == uh
    assert miss_delta(before) == {kind: 1}
    assert_same_flatten(sg.generic.flatten(a), sg.generic.flatten(b))


def test_nan_static_is_never_accepted() -> None:
    node = Box(w=p(), x=math.nan)
    ref = sg.generic.flatten(node)
    for _ in range(4):
        assert_same_flatten(sg.flatten(node), ref)
    assert info()["hits"] == 0
    assert info()["guard_misses"] == {"static": 3}
    assert info()["fallbacks"] == 3
    assert info()["compiled_variants"] == 1


def test_nan_static_inside_collapsed_tuple_is_not_misread() -> None:
    nan = math.nan
    node = Box(w=p(), t=(1, nan))
    ref = sg.generic.flatten(node)
    for _ in range(3):
        assert_same_flatten(sg.flatten(node), ref)
    node.t = (1, float("nan"))  # a different NaN object: not equal to the first
    ref2 = sg.generic.flatten(node)
    assert_same_flatten(sg.flatten(node), ref2)
    assert ref2[0] != ref[0]


@pytest.mark.parametrize("mutation", ["rename_attr", "rename_dict_key"])
def test_same_size_key_change_misses_and_stays_correct(mutation: str) -> None:
    node = _stat_box()
    warm(node)
    if mutation == "rename_attr":
        node.renamed = vars(node).pop("v")
    else:
        node.d["other"] = node.d.pop("j")
    ref = sg.generic.flatten(node)
    h, before = info()["hits"], misses()
    assert_same_flatten(sg.flatten(node), ref)
    assert info()["hits"] == h
    assert sum(miss_delta(before).values()) == 1


@pytest.mark.parametrize(("mutation", "kind"),
                         [("rename_attr", "node_keys"), ("rename_dict_key", "container")])
def test_same_size_key_change_is_attributed_to_its_guard(mutation: str, kind: str) -> None:
    node = _stat_box()
    warm(node)
    if mutation == "rename_attr":
        node.renamed = vars(node).pop("v")
    else:
        node.d["other"] = node.d.pop("j")
    before = misses()
    sg.flatten(node)
    assert miss_delta(before) == {kind: 1}


def test_registration_after_compilation_is_an_epoch_miss_then_recompiles() -> None:
    class LateNode:  # a static (plain object) until it is registered as a node type
        def __init__(self) -> None:
            self.items: dict[str, Any] = {}

    late = LateNode()
    node = Box(w=p(), late=late)
    old = sg.generic.flatten(node)
    warm(node)
    sg.register_graph_node_type(
        LateNode,
        lambda n: (sorted(n.items.items()), None),
        lambda n, k, v: n.items.__setitem__(k, v),
        lambda n, k: n.items.pop(k),
        lambda meta: LateNode(),
        lambda n: n.items.clear(),
    )
    ref = sg.generic.flatten(node)
    assert ref[0] != old[0]
    before, h = misses(), info()["hits"]
    assert_same_flatten(sg.flatten(node), ref)
    assert miss_delta(before) == {"epoch": 1}
    assert info()["hits"] == h
    # Custom node types stay generic, but a structure without one is re-specialized.
    plain = Box(w=p(), late=None)
    warm(plain)


def test_registration_invalidates_and_respecializes_unaffected_structures() -> None:
    node = mk_tied()
    warm(node)

    class Unrelated:
        pass

    sg.register_graph_node_type(Unrelated, lambda n: ([], None), lambda n, k, v: None,
                                lambda n, k: None, lambda m: Unrelated(), lambda n: None)
    before, h = misses(), info()["hits"]
    assert_same_flatten(sg.flatten(node), sg.generic.flatten(node))
    assert miss_delta(before) == {"epoch": 1}
    assert_same_flatten(sg.flatten(node), sg.generic.flatten(node))
    assert info()["hits"] == h + 1, "a stale variant must be replaced, not kept missing forever"
    assert info()["compiled_variants"] == 1


def test_a_structure_compiled_again_after_a_registration_returns_the_same_graphdef() -> None:
    # The re-specialized structure answers with the very GraphDef (and path table) its
    # dropped variant did: StateMaps made before update by identity, and sg.jit's jax.jit
    # cache (keyed by the GraphDef) is met without comparing the structure whole.
    node = mk_tied()
    warm(node)
    gd, sm = sg.flatten(node)

    class Unrelated:
        pass

    sg.register_graph_node_type(Unrelated, lambda n: ([], None), lambda n, k, v: None,
                                lambda n, k: None, lambda m: Unrelated(), lambda n: None)
    sg.flatten(node)  # an epoch miss: the reference answers and the structure compiles again
    before, h = info()["update_hits"], info()["hits"]
    gd2, sm2 = sg.flatten(node)
    assert info()["hits"] == h + 1
    assert gd2 is gd and sm2._table is sm._table
    assert_same_flatten((gd2, sm2), sg.generic.flatten(node))
    sg.update(node, sm)
    assert info()["update_hits"] == before + 1
    variant = dispatch.variant_for(gd)
    assert variant is not None and variant.graphdef is gd and variant.table is sm._table


def test_registration_invalidates_specialized_unflatten() -> None:
    class Late(sg.Node):
        pass

    node = Box(x=Late())
    node.x.w = p()
    gd, sm = sg.flatten(node)
    sg.unflatten(gd, sm)
    sg.unflatten(gd, sm)
    assert info()["unflatten_hits"] == 1
    made: list[Any] = []

    def create_empty(meta: Any) -> Late:
        obj = object.__new__(Late)
        made.append(obj)
        return obj

    sg.register_graph_node_type(
        Late, lambda n: (sorted(vars(n).items()), None), lambda n, k, v: vars(n).__setitem__(k, v),
        lambda n, k: vars(n).pop(k), create_empty, lambda n: vars(n).clear(),
    )
    for _ in range(3):
        n_made = len(made)
        u = sg.unflatten(gd, sm)
        assert len(made) == n_made + 1, "unflatten must rebuild Late through its new protocol"
        assert u.x is made[-1]
        assert_same_flatten(sg.generic.flatten(u), sg.generic.flatten(sg.generic.unflatten(gd, sm)))


def test_state_value_change_is_a_hit_with_the_new_value() -> None:
    node = _stat_box()
    warm(node)
    new = Marker()
    node.w.value = new
    node.child.b.value = np.zeros(7)
    h = info()["hits"]
    got = sg.flatten(node)
    assert info()["hits"] == h + 1
    assert misses() == {}
    assert_same_flatten(got, sg.generic.flatten(node))
    assert got[1][("w",)] is new


def test_array_leaf_replaced_by_another_array_is_a_hit() -> None:
    node = _stat_box()
    warm(node)
    node.arr = jax.numpy.zeros(5)  # another array type and shape: still an array leaf
    ref = sg.generic.flatten(node)  # (also classifies the new array type)
    h = info()["hits"]
    got = sg.flatten(node)
    assert info()["hits"] == h + 1
    assert_same_flatten(got, ref)
    assert got[1][("arr",)] is node.arr


@pytest.mark.parametrize("what", ["child_node", "state", "list", "dict", "equal_static"])
def test_fresh_twin_of_the_same_structure_is_a_hit(what: str) -> None:
    node = _stat_box()
    warm(node)
    if what == "child_node":
        node.child = Linear()
    elif what == "state":
        node.meta = p(9.0, tag="t")
    elif what == "list":
        node.lst = [p(), 2]
    elif what == "dict":
        node.d = {"j": 1, "k": p()}
    else:
        node.s = "".join(["a"])  # an equal str
        node.t = (1, 2)
    h = info()["hits"]
    assert_same_flatten(sg.flatten(node), sg.generic.flatten(node))
    assert info()["hits"] == h + 1
    assert misses() == {}


def test_mutated_cycle_broken_and_restored() -> None:
    node = mk_cycle()
    warm(node)
    node.child.parent = Box()  # was a back-reference to the root
    before = misses()
    assert_same_flatten(sg.flatten(node), sg.generic.flatten(node))
    assert miss_delta(before) == {"backref": 1}
    node.child.parent = node
    h = info()["hits"]
    assert_same_flatten(sg.flatten(node), sg.generic.flatten(node))
    assert info()["hits"] == h + 1


def test_update_writes_nothing_when_a_guard_misses_late() -> None:
    """A variant refusing late (distinct is checked last) must not have written anything."""
    a, b = _stat_box(), _stat_box()
    _, sm = sg.flatten(a)
    warm(a)
    # Same paths and types, but two nodes made one: the (late) distinct guard refuses.
    a.other = a.child
    b.other = b.child
    vals = marked(sm)
    try:
        sg.generic.update(b, vals)
    except Exception as e:  # the reference may reject it (aliased paths): then so must we
        with pytest.raises(type(e)):
            sg.update(a, vals)
    else:
        sg.update(a, vals)
        assert_same_flatten(sg.generic.flatten(a), sg.generic.flatten(b))


@pytest.mark.parametrize("n", [1, 30, 31, 200])
def test_unflatten_of_wide_nodes_matches_the_reference(n: int) -> None:
    """Up to 30 attributes a node is filled by attribute stores, past that through its dict."""
    node = Box(**{f"a{i:03d}": (sg.Param(np.full(1, i)) if i % 3 else i) for i in range(n)})
    gd, sm = sg.flatten(node)
    ref = sg.generic.unflatten(gd, sm)
    sg.unflatten(gd, sm)
    got = sg.unflatten(gd, sm)
    assert info()["unflatten_hits"] == 1
    assert list(vars(got)) == list(vars(ref)) == sorted(vars(node))
    assert_same_flatten(sg.generic.flatten(got), (gd, sm))
    assert ("attr0" in sg.explain(gd)) == (n <= 30)


@pytest.mark.parametrize("op", ["flatten", "update"])
def test_a_renamed_static_attribute_is_a_node_keys_miss(op: str) -> None:
    """Statics are guarded straight from the node's dict: a KeyError there is a node_keys miss."""
    node = Box(w=sg.Param(np.ones(2)), k=3)
    _, sm = sg.flatten(node)
    sg.flatten(node)
    vars(node)["j"] = vars(node).pop("k")
    if op == "flatten":
        assert_same_flatten(sg.flatten(node), sg.generic.flatten(node))
    else:
        new = jax.tree.map(lambda v: v + 1, sm)
        sg.update(node, new)  # the reference accepts it: statics are not in the StateMap
        assert node.w.value is new[("w",)]
    assert info()["guard_misses"] == {"node_keys": 1}
