"""The IR: index space, sharing, immutability, equality, hashing, statics, collapse."""

from __future__ import annotations

import dataclasses
import pickle
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_same_flatten
from graphs import (
    Bag,
    BatchStat,
    Box,
    Cell,
    FrozenCell,
    Holder,
    Pair,
    Unhashable,
    ValueHolder,
    mlp,
    rich,
    tied,
)

import specgraph as sg
from specgraph._ir import (
    ArrayEdge,
    NodeEdge,
    NodeSpec,
    PytreeEdge,
    StateEdge,
    StateSpec,
    StaticEdge,
)


def _child(gd: sg.GraphDef, key: str, index: int = 0) -> Any:
    spec = gd.table[index]
    return spec.children[spec.keys.index(key)]


# -- index space ------------------------------------------------------------------


def test_one_preorder_index_space(impl):
    root = Box(
        a=Box(p=sg.Param(1.0), q=Box(r=sg.Param(2.0))),
        b=sg.Param(3.0),
        c=[Box(s=BatchStat(4.0)), np.ones(1)],
    )
    gd, sm = impl.flatten(root)
    kinds = [(type(spec).__name__, spec.index) for spec in gd.table]
    # root, a, a.p, a.q, a.q.r, b, c[0], c[0].s
    assert kinds == [
        ("NodeSpec", 0),
        ("NodeSpec", 1),
        ("StateSpec", 2),
        ("NodeSpec", 3),
        ("StateSpec", 4),
        ("StateSpec", 5),
        ("NodeSpec", 6),
        ("StateSpec", 7),
    ]
    assert gd.root == NodeEdge(0)
    assert gd.num_nodes == 4
    assert gd.num_states == 4
    assert gd.num_leaves == 5
    assert gd.paths == (("a", "p"), ("a", "q", "r"), ("b",), ("c", 0, "s"), ("c", 1))
    assert list(sm.keys()) == list(gd.paths)
    # state slots follow the value order; the array leaf takes the last slot
    assert [spec.slot for spec in gd.table if type(spec) is StateSpec] == [0, 1, 2, 3]
    assert _child(gd, "c").children[1] == ArrayEdge(4)


def test_first_path_defines_later_paths_refer(impl):
    p = sg.Param(1.0)
    child = Box(p=p)
    root = Box(x=child, y=child, z=p)
    gd, sm = impl.flatten(root)
    assert gd.num_nodes == 2
    assert gd.num_states == 1
    assert list(sm.keys()) == [("x", "p")]
    assert _child(gd, "x") == NodeEdge(1)
    assert _child(gd, "y") == NodeEdge(1)
    assert _child(gd, "z") == StateEdge(2)
    assert gd.table[1].children == (StateEdge(2),)


def test_cycle_is_a_back_reference(impl):
    root = Box()
    child = Box(parent=root, p=sg.Param(1.0))
    root.child = child
    root.me = root
    gd, _ = impl.flatten(root)
    assert _child(gd, "me") == NodeEdge(0)
    assert _child(gd, "parent", 1) == NodeEdge(0)
    assert gd.num_nodes == 2


@pytest.mark.repeats
def test_sharing_pattern_is_structure(impl):
    p = sg.Param(1.0)
    shared = Box(x=p, y=p)
    distinct = Box(x=sg.Param(1.0), y=sg.Param(1.0))
    assert impl.flatten(shared)[0] != impl.flatten(distinct)[0]
    c = Box()
    assert impl.flatten(Box(a=c, b=c))[0] != impl.flatten(Box(a=Box(), b=Box()))[0]


# -- immutability, equality, hashing ---------------------------------------------


@pytest.mark.repeats
def test_graphdef_is_immutable(impl):
    gd, _ = impl.flatten(mlp())
    with pytest.raises(AttributeError):
        gd.root = NodeEdge(1)  # type: ignore[misc]
    with pytest.raises(AttributeError):
        gd.anything = 1  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        del gd.table
    assert isinstance(gd.table, tuple)
    with pytest.raises(TypeError):
        gd.table[0] = None  # type: ignore[index]


@pytest.mark.parametrize("build", [pytest.param(mlp, marks=pytest.mark.repeats), tied, rich],
                         ids=["mlp", "tied", "rich"])
def test_equal_structures_built_separately(impl, build):
    a, b = build(), build()
    gd_a, sm_a = impl.flatten(a)
    gd_b, sm_b = impl.flatten(b)
    assert gd_a == gd_b
    assert not (gd_a != gd_b)
    assert hash(gd_a) == hash(gd_b)
    assert gd_a.paths == gd_b.paths == tuple(sm_b.keys())
    assert len({gd_a, gd_b}) == 1
    # and it is the same as the reference walker's
    assert_same_flatten((gd_a, sm_a), sg.generic.flatten(a))


@pytest.mark.repeats
def test_unequal_structures(impl):
    base = impl.flatten(mlp(3))[0]
    assert impl.flatten(mlp(4))[0] != base
    m = mlp(3)
    m.layers[1].din = 99
    assert impl.flatten(m)[0] != base
    assert base != "not a graphdef"
    assert base.__eq__(object()) is NotImplemented


class CountingHash:
    """A static that counts how often it is hashed."""

    calls = 0

    def __hash__(self) -> int:
        CountingHash.calls += 1
        return 7

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CountingHash)


def test_hash_is_computed_once():
    gd, _ = sg.generic.flatten(Box(c=CountingHash(), p=sg.Param(1.0)))
    CountingHash.calls = 0
    h = hash(gd)
    assert CountingHash.calls == 1
    assert hash(gd) == h
    assert hash(gd) == h
    assert CountingHash.calls == 1


@pytest.mark.repeats
def test_graphdef_is_static_for_jax(impl):
    gd, _ = impl.flatten(tied())
    assert jax.tree.leaves(gd) == []
    assert jax.tree.leaves({"gd": gd, "x": 1}) == [1]
    assert jax.tree.structure(gd) == jax.tree.structure(impl.flatten(tied())[0])

    traces = []

    def f(graphdef: sg.GraphDef, x: jax.Array) -> jax.Array:
        traces.append(graphdef)
        return x * graphdef.num_states

    jf = jax.jit(f, static_argnums=0)
    assert float(jf(gd, jnp.float32(2))) == 2 * gd.num_states
    assert float(jf(impl.flatten(tied())[0], jnp.float32(3))) == 3 * gd.num_states
    assert len(traces) == 1  # an equal GraphDef hits the cache
    jf(impl.flatten(mlp())[0], jnp.float32(3))
    assert len(traces) == 2


@pytest.mark.repeats
def test_accessors(impl):
    root = mlp(2)
    gd, _ = impl.flatten(root)
    assert gd.type is Box
    assert gd.num_nodes == 3
    assert gd.num_states == 4
    assert gd.paths == (
        ("layers", 0, "b"),
        ("layers", 0, "w"),
        ("layers", 1, "b"),
        ("layers", 1, "w"),
    )
    assert impl.flatten(Bag("t"))[0].type is Bag
    assert impl.flatten([Box()])[0].type is list
    assert impl.flatten({"a": Box()})[0].type is dict
    assert impl.flatten(Pair(Box(), np.ones(1)))[0].type is Pair


def test_repr_is_readable(impl):
    gd, _ = impl.flatten(Box(layer=Box(w=sg.Param(np.ones(2), tag="t")), n=3, arr=np.ones(1)))
    r = repr(gd)
    assert r.startswith("GraphDef(")
    assert "Box" in r
    assert "nodes=2" in r and "states=1" in r
    assert "'layer'" in r and "'w'" in r
    assert "Param" in r and "tag='t'" in r
    assert "StaticEdge(3)" in r
    assert "ArrayEdge" in r
    # no array data in the repr
    assert "1." not in r


def test_pickle_round_trip():
    # (rich() is left out: a builtin function static pickles by name, its type does not)
    for build in (mlp, tied):
        gd, sm = sg.generic.flatten(build())
        again = pickle.loads(pickle.dumps(gd))
        assert again == gd
        assert hash(again) == hash(gd)
        assert again.paths == gd.paths
        new = sg.unflatten(again, sm)
        assert_same_flatten(sg.generic.flatten(new), (gd, sm))


# -- hashing errors -----------------------------------------------------------------


def test_unhashable_static_names_its_path(impl):
    root = Box(child=Box(cfg={1, 2}, p=sg.Param(1.0)))
    gd, _ = impl.flatten(root)
    with pytest.raises(TypeError, match=r"\('child', 'cfg'\)") as info:
        hash(gd)
    assert "set" in str(info.value)
    # still unhashable the second time (nothing half-cached)
    with pytest.raises(TypeError, match="cfg"):
        hash(gd)


def test_unhashable_object_static_names_its_path(impl):
    root = Box(items=[1, {"deep": Unhashable()}])
    gd, _ = impl.flatten(root)
    with pytest.raises(TypeError, match=r"\('items', 1, 'deep'\)"):
        hash(gd)
    # equality does not need hashing
    assert gd == impl.flatten(Box(items=[1, {"deep": Unhashable()}]))[0]


def test_unhashable_static_in_a_dict_root(impl):
    gd, _ = impl.flatten({"m": Box(), "bad": [{1}]})
    with pytest.raises(TypeError, match=r"\('bad', 0\)"):
        hash(gd)


# -- statics of equal value but different type ------------------------------------


@pytest.mark.parametrize(
    ("x", "y"),
    [
        (1, 1.0),
        (1, True),
        (1.0, True),
        (0, False),
        ((1,), (1.0,)),
        ((1, (1,)), (1, (True,))),
        (1, np.int64(1)),
    ],
    ids=repr,
)
def test_equal_statics_of_different_types_differ(impl, x, y):
    assert x == y
    gd_x, _ = impl.flatten(Box(v=x))
    gd_y, _ = impl.flatten(Box(v=y))
    assert gd_x != gd_y
    assert gd_x == impl.flatten(Box(v=x))[0]
    new = impl.unflatten(gd_y, {})
    assert type(new.v) is type(y)


def test_tuple_and_namedtuple_of_same_statics_differ(impl):
    assert impl.flatten(Box(v=(1, 2)))[0] != impl.flatten(Box(v=Pair(1, 2)))[0]


# -- static collapse ----------------------------------------------------------------


def test_tuple_of_statics_collapses(impl):
    t = (1, "a", (2.0, None), len)
    gd, sm = impl.flatten(Box(t=t))
    edge = _child(gd, "t")
    assert type(edge) is StaticEdge
    assert edge.value is t
    assert len(sm) == 0
    assert impl.unflatten(gd, sm).t is t


def test_namedtuple_of_statics_collapses(impl):
    pair = Pair(1, "b")
    gd, sm = impl.flatten(Box(pair=pair))
    edge = _child(gd, "pair")
    assert type(edge) is StaticEdge
    assert type(edge.value) is Pair
    new = impl.unflatten(gd, sm)
    assert type(new.pair) is Pair
    assert new.pair == pair


def test_list_and_dict_of_statics_do_not_collapse(impl):
    gd, _ = impl.flatten(Box(lst=[1, 2], d={"a": 1}))
    assert type(_child(gd, "lst")) is PytreeEdge
    assert _child(gd, "lst").children == (StaticEdge(int, 1), StaticEdge(int, 2))
    assert type(_child(gd, "d")) is PytreeEdge
    hash(gd)
    new = impl.unflatten(gd, {})
    assert new.lst == [1, 2] and type(new.lst) is list
    assert new.d == {"a": 1}


def test_value_hashable_pytree_of_statics_collapses(impl):
    vh = ValueHolder(1, "x")
    gd, _ = impl.flatten(Box(h=vh))
    assert type(_child(gd, "h")) is StaticEdge
    fc = FrozenCell(1, 2)
    gd2, _ = impl.flatten(Box(c=fc))
    assert type(_child(gd2, "c")) is StaticEdge


def test_identity_hashable_pytree_is_never_collapsed(impl):
    """Seed regression: collapsing by identity hash would bake live objects into the IR."""
    h1, h2 = Holder(1, "s"), Holder(1, "s")
    gd1, sm1 = impl.flatten(Box(h=h1))
    gd2, _ = impl.flatten(Box(h=h2))
    edge = _child(gd1, "h")
    assert type(edge) is PytreeEdge
    assert gd1 == gd2  # separate instances, equal structure
    assert hash(gd1) == hash(gd2)
    new = impl.unflatten(gd1, sm1)
    assert type(new.h) is Holder
    assert new.h is not h1
    assert new.h.items == [1, "s"]
    # the same for a registered dataclass with eq=True (its __hash__ is None)
    gd3, _ = impl.flatten(Box(c=Cell(1, 2)))
    assert type(_child(gd3, "c")) is PytreeEdge


@pytest.mark.parametrize("make", [np.ones, jnp.ones], ids=["numpy", "jax"])
def test_pytree_holding_an_array_is_never_baked_into_the_ir(impl, make):
    """Seed regression: a pytree holding an array must never end up in the GraphDef."""
    factories = [
        lambda a: Holder(a, 1),
        lambda a: ValueHolder(a, 1),
        lambda a: (a, 1),
        lambda a: Pair(a, 1),
        lambda a: FrozenCell(a, 1),
    ]
    for factory in factories:
        arr = make(2)
        gd, sm = impl.flatten(Box(h=factory(arr)))
        edge = _child(gd, "h")
        assert type(edge) is PytreeEdge
        assert edge.children[0] == ArrayEdge(0)
        assert list(sm.keys()) == [("h", 0 if type(edge.keys[0]) is int else edge.keys[0])]
        assert sm.values()[0] is arr
        # a different array (even of another shape) gives an equal GraphDef
        assert impl.flatten(Box(h=factory(make(5))))[0] == gd
        hash(gd)


def test_state_in_a_tuple_is_not_collapsed(impl):
    p = sg.Param(1.0)
    gd, sm = impl.flatten(Box(t=(p, 1)))
    assert type(_child(gd, "t")) is PytreeEdge
    assert sm[("t", 0)] == 1.0
    new = impl.unflatten(gd, sm)
    assert new.t[0] is not p and new.t[0].value == 1.0


def test_node_in_a_tuple_is_not_collapsed(impl):
    c = Box()
    gd, _ = impl.flatten(Box(t=(c, 1)))
    edge = _child(gd, "t")
    assert type(edge) is PytreeEdge
    assert edge.children[0] == NodeEdge(1)
    assert type(gd.table[1]) is NodeSpec


def test_collapsed_tuple_root(impl):
    gd, sm = impl.flatten((1, 2))
    assert type(gd.root) is StaticEdge
    assert gd.type is tuple
    assert impl.unflatten(gd, sm) == (1, 2)


def test_graphdef_passes_through_jit_as_a_plain_argument(impl):
    gd, sm = impl.flatten(tied())
    traces = []

    @jax.jit
    def f(graphdef: sg.GraphDef, state: sg.StateMap) -> sg.StateMap:
        traces.append(1)
        assert isinstance(graphdef, sg.GraphDef)  # static: not traced
        return jax.tree.map(lambda v: v * graphdef.num_states, state)

    out = f(gd, sm)
    np.testing.assert_array_equal(out[("dec", "w")], np.arange(4.0) * 4)
    f(impl.flatten(tied())[0], sm)
    assert len(traces) == 1


# -- equal-but-differently-typed keys and metadata ------------------------------------
#
# {1: x} and {True: x}, or Param(v, tag=1) and Param(v, tag=True), unflatten into
# different objects, so their GraphDefs must differ; otherwise a cache keyed by
# GraphDef (the specialized unflatten) answers for one with the other's keys/metadata.


def _warm_unflatten(gd: sg.GraphDef, sm: sg.StateMap) -> None:
    for _ in range(5):
        sg.unflatten(gd, sm)


def test_dict_key_type_survives_a_cached_unflatten():
    p = sg.Param(1.0)
    _warm_unflatten(*sg.flatten(Box(d={1: p})))
    gd_b, sm_b = sg.generic.flatten(Box(d={True: p}))
    new = sg.unflatten(gd_b, sm_b)
    assert [type(k) for k in new.d] == [bool]


def test_metadata_type_survives_a_cached_unflatten():
    _warm_unflatten(*sg.flatten(Box(p=sg.Param(1.0, tag=1))))
    gd_b, sm_b = sg.generic.flatten(Box(p=sg.Param(1.0, tag=True)))
    new = sg.unflatten(gd_b, sm_b)
    assert type(new.p.metadata["tag"]) is bool


@pytest.mark.parametrize(
    ("a", "b"),
    [({1: 0}, {True: 0}), ({(1,): 0}, {(True,): 0}), ({1.0: 0}, {1: 0}), ({(0, "s"): 0}, {(False, "s"): 0}),
     ({0.0: 0}, {-0.0: 0}), ({(0.0,): 0}, {(-0.0,): 0})],
    ids=["int-bool", "tuple-int-bool", "float-int", "tuple-in-tuple", "zero-sign", "tuple-zero-sign"],
)
def test_dict_key_types_are_structure(impl, a, b):
    p = sg.Param(1.0)
    gd_a = impl.flatten(Box(d={k: p for k in a}))[0]
    gd_b, sm_b = impl.flatten(Box(d={k: p for k in b}))
    assert gd_a != gd_b
    new = impl.unflatten(gd_b, sm_b)
    assert [repr(k) for k in new.d] == [repr(k) for k in b]


@pytest.mark.parametrize(
    ("a", "b"),
    [(1, True), ((1,), (True,)), (2.0, 2), ((0, (1.0,)), (0, (1,))), (0.0, -0.0), ((0.0,), (-0.0,))],
    ids=repr,
)
def test_metadata_types_are_structure(impl, a, b):
    gd_a = impl.flatten(Box(p=sg.Param(1.0, tag=a)))[0]
    gd_b, sm_b = impl.flatten(Box(p=sg.Param(1.0, tag=b)))
    assert gd_a != gd_b
    new = impl.unflatten(gd_b, sm_b)
    assert repr(new.p.metadata["tag"]) == repr(b)


# The custom node protocol has the same gap: its node metadata and its keys are
# compared with ``==`` in the NodeSpec.


def test_custom_node_metadata_type_survives_a_cached_unflatten():
    _warm_unflatten(*sg.flatten(Bag(1, x=sg.Param(1.0))))
    gd_b, sm_b = sg.generic.flatten(Bag(True, x=sg.Param(1.0)))
    assert type(sg.unflatten(gd_b, sm_b).tag) is bool


def test_custom_node_key_type_survives_a_cached_unflatten():
    a, b = Bag("t"), Bag("t")
    a[1] = sg.Param(1.0)
    b[True] = sg.Param(1.0)
    _warm_unflatten(*sg.flatten(a))
    gd_b, sm_b = sg.generic.flatten(b)
    assert [type(k) for k in sg.unflatten(gd_b, sm_b).data] == [bool]


def test_custom_node_metadata_zero_sign_is_structure(impl):
    gd_a, sm_a = impl.flatten(Bag(0.0, x=sg.Param(1.0)))
    impl.unflatten(gd_a, sm_a)
    gd_b, sm_b = impl.flatten(Bag(-0.0, x=sg.Param(1.0)))
    assert gd_a != gd_b
    assert str(impl.unflatten(gd_b, sm_b).tag) == "-0.0"


# Pytree aux data (a register_dataclass meta field, custom aux data) is compared with ``==``
# by JAX's treedefs: it follows the statics rule too.


@dataclasses.dataclass(frozen=True)
class Tag:
    """Equal by ``value`` alone; ``note`` tells two equal tags apart."""

    value: int
    note: str = dataclasses.field(default="", compare=False)


class Scaled:
    """A custom pytree whose aux data is one user object."""

    def __init__(self, x: Any, eps: Any) -> None:
        self.x = x
        self.eps = eps


jax.tree_util.register_pytree_node(Scaled, lambda s: ((s.x,), s.eps), lambda eps, ch: Scaled(ch[0], eps))


def _aux_of(node: Any) -> Any:
    return node.c.label if type(node.c) is Cell else node.c.eps


@pytest.mark.parametrize("kind", ["dataclass", "custom"])
@pytest.mark.parametrize(("a", "b"), [(1, 1.0), (1, True), (0.0, -0.0), ((1,), (1.0,))], ids=repr)
def test_pytree_aux_data_types_are_structure(impl, kind, a, b) -> None:
    def make(aux: Any) -> Box:
        c = Cell(sg.Param(1.0), np.ones(1), aux) if kind == "dataclass" else Scaled(sg.Param(1.0), aux)
        return Box(c=c)

    gd_a, sm_a = impl.flatten(make(a))
    impl.unflatten(gd_a, sm_a)
    node_b = make(b)
    gd_b, sm_b = impl.flatten(node_b)
    assert gd_a != gd_b
    assert_same_flatten((gd_b, sm_b), sg.generic.flatten(node_b))
    assert repr(_aux_of(impl.unflatten(gd_b, sm_b))) == repr(b)


@pytest.mark.parametrize("kind", ["dataclass", "custom"])
def test_pytree_aux_data_equal_but_distinct_is_the_given_object(impl, kind) -> None:
    """Equal aux objects make one structure, but each GraphDef keeps (and rebuilds) its own."""
    def make(aux: Any) -> Box:
        c = Cell(sg.Param(1.0), np.ones(1), aux) if kind == "dataclass" else Scaled(sg.Param(1.0), aux)
        return Box(c=c)

    first, second = Tag(1, "first"), Tag(1, "second")
    gd_1, sm_1 = impl.flatten(make(first))
    impl.unflatten(gd_1, sm_1)
    gd_2, sm_2 = impl.flatten(make(second))
    assert gd_1 == gd_2
    assert _aux_of(sg.generic.unflatten(gd_2, sm_2)) is second  # the flatten kept the second
    assert _aux_of(impl.unflatten(gd_2, sm_2)) is second


def test_flax_struct_static_field_follows_the_statics_rule(impl) -> None:
    struct = pytest.importorskip("flax.struct")

    @struct.dataclass
    class Norm:
        scale: Any
        eps: Any = struct.field(pytree_node=False)

    gd_a, sm_a = impl.flatten(Box(n=Norm(sg.Param(1.0), 1)))
    impl.unflatten(gd_a, sm_a)
    node_b = Box(n=Norm(sg.Param(1.0), 1.0))
    gd_b, sm_b = impl.flatten(node_b)
    assert gd_a != gd_b
    assert_same_flatten((gd_b, sm_b), sg.generic.flatten(node_b))
    assert type(impl.unflatten(gd_b, sm_b).n.eps) is float


@dataclasses.dataclass(frozen=True, order=True)
class OrderedKey:
    """A dict key equal (and ordered) by ``value`` alone."""

    value: int
    note: str = dataclasses.field(default="", compare=False)


def test_dict_key_equal_but_distinct_is_the_given_object(impl) -> None:
    k1, k2 = OrderedKey(1, "first"), OrderedKey(1, "second")
    gd_1, sm_1 = impl.flatten(Box(d={k1: sg.Param(1.0)}))
    impl.unflatten(gd_1, sm_1)
    gd_2, sm_2 = impl.flatten(Box(d={k2: sg.Param(1.0)}))
    assert gd_1 == gd_2
    assert next(iter(sg.generic.unflatten(gd_2, sm_2).d)) is k2
    assert next(iter(impl.unflatten(gd_2, sm_2).d)) is k2


def test_negative_zero_static_is_its_own_structure(impl) -> None:
    """-0.0 == 0.0 in Python, but a model configured with -0.0 must get -0.0 back."""
    pos, neg = Box(p=sg.Param(1.0), x=0.0), Box(p=sg.Param(1.0), x=-0.0)
    gd_pos, _ = impl.flatten(pos)
    gd_neg, sm_neg = impl.flatten(neg)
    assert gd_pos != gd_neg
    assert_same_flatten((gd_neg, sm_neg), sg.generic.flatten(neg))
    _warm_unflatten(gd_neg, sm_neg)
    rebuilt = sg.unflatten(gd_neg, sm_neg)
    assert str(rebuilt.x) == "-0.0"
