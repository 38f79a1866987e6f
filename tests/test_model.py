"""The object model (Node, State, Param, custom node types, pytrees) and the registry."""

from __future__ import annotations

import copy
import enum
import pickle
import weakref
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_matches_reference, assert_same_flatten
from graphs import Bag, BatchStat, Box, Cell, Counter, Hidden, Holder, Linear, Pair

import specgraph as sg
from specgraph import _registry as reg
from specgraph._ir import ArrayEdge, NodeEdge, NodeSpec, PytreeEdge, StateEdge, StateSpec, StaticEdge


class Color(enum.Enum):
    RED = 1
    BLUE = 2


def _spec(gd: sg.GraphDef, index: int = 0) -> Any:
    return gd.table[index]


# -- Node ---------------------------------------------------------------------------


def test_node_children_are_attributes_sorted_by_name(impl):
    n = Box()
    n.zeta = sg.Param(3.0)
    n.alpha = sg.Param(1.0)
    n.mid = sg.Param(2.0)
    gd, sm = impl.flatten(n)
    assert _spec(gd).keys == ("alpha", "mid", "zeta")
    assert list(sm.keys()) == [("alpha",), ("mid",), ("zeta",)]
    assert sm.values() == [1.0, 2.0, 3.0]


def test_insertion_order_does_not_matter(impl):
    a = Box(x=sg.Param(1.0), y=sg.Param(2.0))
    b = Box(y=sg.Param(2.0), x=sg.Param(1.0))
    assert impl.flatten(a)[0] == impl.flatten(b)[0]
    assert impl.flatten(a)[1].paths == impl.flatten(b)[1].paths


def test_graph_invisible_attrs_are_skipped(impl):
    h = Hidden()
    gd, sm = impl.flatten(h)
    assert _spec(gd).keys == ("p",)
    assert list(sm.keys()) == [("p",)]
    # changing an invisible attribute does not change the structure
    h.cache = {"other": 1, "set": {1, 2}}
    assert impl.flatten(h)[0] == gd
    new = impl.unflatten(gd, sm)
    assert type(new) is Hidden
    assert "cache" not in vars(new)
    assert new.p.value == 1.0


def test_unflatten_does_not_call_user_init(impl):
    lin = Linear(2, 3)
    gd, sm = impl.flatten(lin)
    new = impl.unflatten(gd, sm)
    assert type(new) is Linear
    assert new.din == 2 and new.dout == 3
    assert new.w is not lin.w
    assert new.w.value is lin.w.value


def test_node_type_is_part_of_the_structure(impl):
    class Other(sg.Node):
        pass

    a = Box(p=sg.Param(1.0))
    b = Other()
    b.p = sg.Param(1.0)
    assert impl.flatten(a)[0] != impl.flatten(b)[0]
    assert impl.flatten(b)[0].type is Other


# -- State / Param -----------------------------------------------------------------


def test_state_value_and_metadata():
    s = sg.State(np.float32(1), tag="x", group=3)
    assert s.value == 1
    assert dict(s.metadata) == {"tag": "x", "group": 3}
    with pytest.raises(TypeError):
        s.metadata["tag"] = "y"  # type: ignore[index]
    s.value = 5
    assert s.value == 5
    assert "State" in repr(s) and "tag='x'" in repr(s)
    assert "float32[3]" in repr(sg.Param(np.zeros(3, np.float32)))


def test_param_and_user_subclasses_are_states():
    assert issubclass(sg.Param, sg.State)
    assert reg.kind_of(sg.Param(1)) == reg.STATE
    assert reg.kind_of(BatchStat(1)) == reg.STATE


def test_states_are_slotted_boxes_and_subclasses_may_add_attributes(impl):
    p = sg.Param(np.float32(1))
    assert not hasattr(p, "__dict__")  # a slotted box: cheap to build on every unflatten
    with pytest.raises(AttributeError):
        p.note = "x"  # type: ignore[attr-defined]

    class Noted(sg.State):  # no __slots__: instances get a __dict__ as usual
        pass

    n = Noted(np.float32(2), tag="t")
    n.note = "kept"
    box = Box(n=n, p=p)
    gd, sm = impl.flatten(box)
    new = impl.unflatten(gd, sm)
    assert type(new.n) is Noted and dict(new.n.metadata) == {"tag": "t"}
    assert new.n.value == 2 and new.p.value == 1
    copied = copy.deepcopy(box)
    again = pickle.loads(pickle.dumps(sg.Param(3.0, tag="x")))
    assert copied.n.note == "kept" and copied.p.value == 1
    assert again.value == 3.0 and dict(again.metadata) == {"tag": "x"}
    assert weakref.ref(p)() is p


def test_state_metadata_goes_into_the_graphdef(impl):
    a = Box(p=sg.Param(1.0, tag="a"))
    b = Box(p=sg.Param(1.0, tag="b"))
    c = Box(p=sg.Param(2.0, tag="a"))
    gd_a, gd_b, gd_c = (impl.flatten(x)[0] for x in (a, b, c))
    assert gd_a != gd_b
    assert gd_a == gd_c  # values are not structure
    spec = gd_a.table[1]
    assert type(spec) is StateSpec
    assert spec.metadata == (("tag", "a"),)
    new = impl.unflatten(gd_a, impl.flatten(a)[1])
    assert dict(new.p.metadata) == {"tag": "a"}


def test_state_type_is_part_of_the_structure_and_restored(impl):
    a = Box(p=sg.Param(1.0), s=BatchStat(2.0), c=Counter(3, required="r"), plain=sg.State(4))
    gd, sm = impl.flatten(a)
    assert sm.types == (Counter, sg.Param, sg.State, BatchStat)  # c, p, plain, s
    new = impl.unflatten(gd, sm)
    assert type(new.p) is sg.Param
    assert type(new.s) is BatchStat
    assert type(new.c) is Counter  # built without calling Counter.__init__
    assert dict(new.c.metadata) == {"required": "r"}
    assert type(new.plain) is sg.State
    b = Box(p=BatchStat(1.0), s=BatchStat(2.0), c=Counter(3, required="r"), plain=sg.State(4))
    assert impl.flatten(b)[0] != gd


# -- array leaves and statics ---------------------------------------------------------


@pytest.mark.parametrize("make", [np.ones, jnp.ones], ids=["numpy", "jax"])
def test_bare_arrays_are_dynamic_leaves(impl, make):
    arr = make(3)
    n = Box(a=arr, p=sg.Param(make(2)))
    gd, sm = impl.flatten(n)
    assert _spec(gd).children[0] == ArrayEdge(0)
    assert sm[("a",)] is arr
    assert sm.types == (None, sg.Param)
    # the array's value (and even its shape) is not structure
    other = Box(a=make(7) * 2, p=sg.Param(make(2)))
    assert impl.flatten(other)[0] == gd
    # the array object is nowhere in the GraphDef
    assert all(arr is not x for x in _walk_ir(gd))


def _walk_ir(gd: sg.GraphDef) -> list[Any]:
    """Every object held by the IR (edges, specs and the values inside them)."""
    out: list[Any] = []
    stack: list[Any] = [gd.root, *gd.table]
    while stack:
        x = stack.pop()
        out.append(x)
        if isinstance(x, tuple):
            stack.extend(x)
    return out


@pytest.mark.parametrize(
    "value",
    [1, 2.5, "s", None, True, len, Color.RED, b"bytes", (1, "a"), frozenset({1}), 3 + 4j],
    ids=repr,
)
def test_everything_else_is_static(impl, value):
    n = Box(v=value, p=sg.Param(1.0))
    gd, sm = impl.flatten(n)
    edge = _spec(gd).children[_spec(gd).keys.index("v")]
    assert type(edge) is StaticEdge
    assert edge.value is value or edge.value == value
    assert list(sm.keys()) == [("p",)]
    new = impl.unflatten(gd, sm)
    assert new.v is value or new.v == value
    hash(gd)


def test_changing_a_static_changes_the_structure(impl):
    a = impl.flatten(Box(v=1, f=len))[0]
    assert impl.flatten(Box(v=2, f=len))[0] != a
    assert impl.flatten(Box(v=1, f=abs))[0] != a
    assert impl.flatten(Box(v=1, f=len))[0] == a


# -- custom node types ---------------------------------------------------------------


def test_custom_node_type_flatten(impl):
    p = sg.Param(np.float32(1))
    bag = Bag("t1", b=p, a=np.ones(2), s=3)
    gd, sm = impl.flatten(bag)
    spec = _spec(gd)
    assert type(spec) is NodeSpec
    assert spec.type is Bag
    assert spec.meta == "t1"
    assert spec.keys == ("a", "b", "s")
    assert gd.type is Bag
    assert list(sm.keys()) == [("a",), ("b",)]
    assert sm[("b",)] is p.value
    # the node metadata is structure
    assert impl.flatten(Bag("t2", b=sg.Param(1), a=np.ones(2), s=3))[0] != gd


def test_custom_node_type_unflatten_and_sharing(impl):
    shared = sg.Param(np.float32(2))
    inner = Bag("inner", w=shared)
    root = Box(bag=inner, again=inner, direct=shared)
    inner["up"] = root
    ref = assert_matches_reference(root) if impl.compiled else impl.flatten(root)
    gd, sm = ref
    new = impl.unflatten(gd, sm)
    assert type(new.bag) is Bag
    assert new.bag.tag == "inner"
    assert new.bag is new.again
    assert new.bag["up"] is new
    assert new.bag["w"] is new.direct
    assert new.direct.value is shared.value
    assert_same_flatten(impl.flatten(new), (gd, sm))


def test_custom_node_type_update(impl):
    p = sg.Param(np.float32(1))
    arr = np.ones(2)
    bag = Bag("t", p=p, a=arr, lst=[np.zeros(1)])
    _, sm = impl.flatten(bag)
    new_vals = jax.tree.map(lambda v: v + 1, sm)
    impl.update(bag, new_vals)
    assert bag["p"] is p
    assert p.value == 2
    assert bag["a"] is not arr
    np.testing.assert_array_equal(bag["a"], arr + 1)
    np.testing.assert_array_equal(bag["lst"][0], np.ones(1))


def test_custom_node_type_pop_states():
    p = sg.Param(np.float32(1))
    s = BatchStat(np.float32(2))
    bag = Bag("t", p=p, s=s)
    popped = sg.pop_states(bag, BatchStat)
    assert list(popped.keys()) == [("s",)]
    assert set(bag.data) == {"p"}


def test_non_node_subclass_of_registered_type_is_a_node(impl):
    class SubBag(Bag):
        pass

    sb = SubBag("sub", p=sg.Param(1.0))
    gd, sm = impl.flatten(sb)
    assert _spec(gd).type is SubBag
    assert list(sm.keys()) == [("p",)]


# -- JAX pytrees are inline containers ---------------------------------------------


def test_namedtuple_is_inline(impl):
    p = sg.Param(1.0)
    arr = np.ones(2)
    n = Box(pair=Pair(p, arr))
    gd, sm = impl.flatten(n)
    edge = _spec(gd).children[0]
    assert type(edge) is PytreeEdge
    assert edge.keys == ("first", "second")
    assert list(sm.keys()) == [("pair", "first"), ("pair", "second")]
    new = impl.unflatten(gd, sm)
    assert type(new.pair) is Pair
    assert new.pair.second is arr
    assert type(new.pair.first) is sg.Param


def test_registered_dataclass_is_inline(impl):
    n = Box(cell=Cell(x=sg.Param(1.0), y=np.zeros(3), label="L"))
    gd, sm = impl.flatten(n)
    edge = _spec(gd).children[0]
    assert type(edge) is PytreeEdge
    assert list(sm.keys()) == [("cell", "x"), ("cell", "y")]
    new = impl.unflatten(gd, sm)
    assert type(new.cell) is Cell
    assert new.cell.label == "L"
    # the dataclass' static field is structure (it sits in the treedef)
    other = Box(cell=Cell(x=sg.Param(1.0), y=np.zeros(3), label="M"))
    assert impl.flatten(other)[0] != gd


def test_registered_pytree_class_is_inline(impl):
    n = Box(h=Holder(sg.Param(1.0), np.ones(1), "static"))
    gd, sm = impl.flatten(n)
    assert type(_spec(gd).children[0]) is PytreeEdge
    assert list(sm.keys()) == [("h", 0), ("h", 1)]
    new = impl.unflatten(gd, sm)
    assert type(new.h) is Holder
    assert new.h.items[2] == "static"


def test_pytrees_are_not_shared_but_states_inside_are(impl):
    p = sg.Param(np.float32(1))
    lst = [p, np.ones(1)]
    pair = Pair(p, 2)
    n = Box(a=lst, b=lst, c=pair, d=pair)
    gd, sm = impl.flatten(n)
    # the list is expanded twice: its array leaf appears at both paths
    assert list(sm.keys()) == [("a", 0), ("a", 1), ("b", 1)]
    new = impl.unflatten(gd, sm)
    assert new.a is not new.b
    assert new.c is not new.d
    assert new.a[0] is new.b[0] is new.c.first is new.d.first


def test_pytree_root(impl):
    p = sg.Param(1.0)
    for root in ([Box(p=p), np.ones(1)], {"m": Box(p=p)}, (Box(p=p), 1), Pair(Box(p=p), 3)):
        gd, sm = impl.flatten(root)
        assert gd.type is type(root)
        new = impl.unflatten(gd, sm)
        assert type(new) is type(root)
        assert_same_flatten(impl.flatten(new), (gd, sm))


# -- the registry --------------------------------------------------------------------


def test_classification_is_cached_by_type():
    reg.kind_of(Box())
    reg.kind_of(Pair(1, 2))
    cache = reg.kind_cache()
    assert cache[Box] == reg.NODE
    assert cache[Pair] == reg.PYTREE
    assert reg.kind_of(np.ones(1)) == reg.ARRAY
    assert reg.kind_of(jnp.ones(1)) == reg.ARRAY
    assert reg.kind_of([]) == reg.LIST
    assert reg.kind_of(()) == reg.TUPLE
    assert reg.kind_of({}) == reg.DICT
    assert reg.kind_of(None) == reg.STATIC
    assert reg.kind_of("s") == reg.STATIC


def test_registration_clears_the_cache_and_bumps_the_epoch():
    class Fresh:
        pass

    reg.kind_of(Fresh())
    assert reg.kind_cache()[Fresh] == reg.STATIC
    before = reg.registry_epoch()
    sg.register_graph_node_type(
        Fresh, lambda x: ([], None), lambda *a: None, lambda *a: None, lambda m: Fresh(), lambda x: None
    )
    assert reg.registry_epoch() > before
    assert Fresh not in reg.kind_cache()
    assert reg.kind_of(Fresh()) == reg.NODE
    e = reg.registry_epoch()
    reg.clear_classification_cache()
    assert reg.registry_epoch() == e + 1
    assert len(reg.kind_cache()) == 0


def test_registering_a_type_changes_how_it_flattens(impl):
    class Later:
        def __init__(self) -> None:
            self.items: dict[str, Any] = {}

    obj = Later()
    obj.items["p"] = sg.Param(1.0)
    root = Box(x=obj)
    gd, sm = impl.flatten(root)
    assert type(_spec(gd).children[0]) is StaticEdge
    assert len(sm) == 0
    sg.register_graph_node_type(
        Later,
        lambda x: (sorted(x.items.items()), None),
        lambda x, k, v: x.items.__setitem__(k, v),
        lambda x, k: x.items.pop(k),
        lambda meta: Later(),
        lambda x: x.items.clear(),
    )
    gd2, sm2 = impl.flatten(root)
    assert type(_spec(gd2).children[0]) is NodeEdge
    assert list(sm2.keys()) == [("x", "p")]
    assert gd2 != gd


def test_register_rejects_non_types():
    with pytest.raises(TypeError):
        sg.register_graph_node_type(
            Bag("x"), lambda x: ([], None), lambda *a: None, lambda *a: None, lambda m: None, lambda x: None
        )


def test_state_edges_in_the_graphdef(impl):
    p = sg.Param(1.0)
    gd, _ = impl.flatten(Box(a=p, b=p))
    assert _spec(gd).children == (StateEdge(1), StateEdge(1))
