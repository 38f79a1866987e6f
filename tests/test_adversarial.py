"""Adversarial inputs: huge nodes, hostile statics, slots and properties, value properties
on states, pytree roots with sharing, invisible attributes that come and go, aliased
containers. Every case runs through the reference walker and the public (specialized)
path and demands the same result, or the same exception type.
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Callable
from typing import Any, ClassVar

import jax
import numpy as np
import pytest
from conftest import assert_matches_reference, assert_same_flatten
from graphs import BatchStat, Box, Linear, Unhashable

import specgraph as sg


def info() -> dict[str, Any]:
    return sg.cache_info()


def outcome(fn: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return "ok", fn()
    except Exception as e:
        return "error", type(e)


def fresh_values(sm: sg.StateMap) -> sg.StateMap:
    """A StateMap of the same structure whose every value is a new object."""
    return jax.tree.map(lambda v: np.asarray(v) + np.float32(1), sm)


def assert_values_are(root: Any, sm: sg.StateMap) -> None:
    """After an update, the graph holds exactly the values of ``sm`` (by identity)."""
    _, now = sg.generic.flatten(root)
    assert list(now.keys()) == list(sm.keys())
    assert all(x is y for x, y in zip(now.values(), sm.values(), strict=True))


# -- one node with 100 000 states ---------------------------------------------------------


def test_hundred_thousand_states_are_one_loop_and_match_the_reference() -> None:
    n = 100_000
    big = Box(**{f"s{i:06d}": sg.Param(np.float32(i)) for i in range(n)})
    ref = sg.generic.flatten(big)
    assert ref[0].num_states == n

    before = info()
    pub = sg.flatten(big)
    assert_same_flatten(pub, ref)
    assert_same_flatten(sg.flatten(big), ref)
    after = info()
    # A run of sibling states of one kind is one loop: no step limit is reached.
    for k in ("declined", "declined_too_large"):
        assert after[k] == before[k]
    assert after["compiled_variants"] == before["compiled_variants"] + 1
    assert after["hits"] == before["hits"] + 1

    gd, sm = pub
    sg.unflatten(gd, sm)
    twin = sg.unflatten(gd, sm)  # compiled: the unflatten makes and stores the run by one loop each
    assert info()["compiled_unflattens"] == before["compiled_unflattens"] + 1
    assert info()["unflatten_hits"] > before["unflatten_hits"]
    assert info()["declined_too_large"] == before["declined_too_large"]
    assert twin is not big
    assert_same_flatten(sg.generic.flatten(twin), ref)
    twin2 = sg.generic.unflatten(gd, sm)

    new = fresh_values(sm)
    states = dict(vars(big))
    hits = info()["update_hits"]
    sg.update(big, new)
    assert info()["update_hits"] == hits + 1
    sg.generic.update(twin2, new)
    for g in (big, twin2):  # (checked without another walk of 100 000 states)
        d = vars(g)
        assert len(d) == n
        assert all(d[k].value is v for (k,), v in new.items())
    assert all(vars(big)[k] is s for k, s in states.items())  # the same State objects, new values


# -- unhashable statics -------------------------------------------------------------------


@pytest.mark.parametrize(
    "where, path",
    [
        (lambda bad: Box(p=sg.Param(1.0), s=bad), ("s",)),
        (lambda bad: Box(p=sg.Param(1.0), cfg={"opts": [1, bad]}), ("cfg", "opts", 1)),
        (lambda bad: Box(child=Box(t=(1, bad))), ("child", "t", 1)),
    ],
    ids=["attribute", "in_dict_list", "in_tuple_of_child"],
)
@pytest.mark.parametrize("make", [lambda: {1, 2}, Unhashable], ids=["set", "hash_none"])
def test_unhashable_static_flattens_and_hash_names_its_path(impl, where, path, make) -> None:
    m = where(make())
    gd, sm = impl.flatten(m)
    ref_gd, ref_sm = sg.generic.flatten(m)
    assert gd == ref_gd
    assert gd.paths == ref_gd.paths
    assert all(a is b for a, b in zip(sm.values(), ref_sm.values(), strict=True))
    for _ in range(2):  # not cached: it raises every time
        with pytest.raises(TypeError, match=r"static value at path " + _re_path(path)):
            hash(gd)
    assert info()["compiled_variants"] == 0  # nothing to key a specialization on
    # unflatten and update still work
    new = impl.unflatten(gd, sm)
    assert sg.generic.flatten(new)[0] == ref_gd
    impl.update(m, sm)
    assert sg.generic.flatten(m)[0] == ref_gd


def _re_path(path: tuple) -> str:
    return re.escape(repr(path))


# -- statics whose __eq__ / __hash__ misbehave ------------------------------------------------


class EqRaises:
    def __eq__(self, other: object) -> bool:
        raise RuntimeError("no eq")

    def __hash__(self) -> int:
        return 0


class EqArray:
    """``==`` returns an array (its truth value raises)."""

    def __eq__(self, other: object) -> Any:
        return np.array([True, False])

    def __hash__(self) -> int:
        return 0


class EqTruthy:
    """``==`` returns a truthy non-bool: always equal."""

    def __eq__(self, other: object) -> Any:
        return "yes"

    def __hash__(self) -> int:
        return 0


class EqNever:
    """Not even equal to itself (like NaN), identity hash."""

    def __eq__(self, other: object) -> bool:
        return False

    __hash__ = object.__hash__


class HashRaises:
    def __hash__(self) -> int:
        raise RuntimeError("no hash")


class HashTypeError:
    def __hash__(self) -> int:
        raise TypeError("no hash here")


HOSTILE_STATICS = [EqRaises, EqArray, EqTruthy, EqNever, HashRaises, HashTypeError]


def _compare_flatten(model: Any) -> None:
    """Public flatten vs reference on the same live objects: same outcome, same result."""
    ref = outcome(lambda: sg.generic.flatten(model))
    for _ in range(2):
        pub = outcome(lambda: sg.flatten(model))
        assert pub[0] == ref[0], (pub, ref)
        if ref[0] == "error":
            assert pub[1] is ref[1]
            continue
        (gd_p, sm_p), (gd_r, sm_r) = pub[1], ref[1]
        assert outcome(lambda gd_p=gd_p, gd_r=gd_r: gd_p == gd_r) in (("ok", True), ("error", RuntimeError))
        assert gd_p.paths == gd_r.paths
        assert all(a is b for a, b in zip(sm_p.values(), sm_r.values(), strict=True))
        hp, hr = outcome(lambda gd_p=gd_p: hash(gd_p)), outcome(lambda gd_r=gd_r: hash(gd_r))
        assert hp[0] == hr[0] and (hp[1] == hr[1] if hp[0] == "ok" else hp[1] is hr[1])


@pytest.mark.parametrize("cls", HOSTILE_STATICS, ids=lambda c: c.__name__)
def test_hostile_eq_and_hash_statics_agree_on_both_paths(cls: type) -> None:
    m = Box(p=sg.Param(np.ones(2, np.float32)), s=cls(), lst=[cls(), np.zeros(1, np.float32)])
    _compare_flatten(m)
    m.s = cls()  # another object of the same type where a specialization may expect the old one
    _compare_flatten(m)
    m.lst[0] = m.s
    _compare_flatten(m)

    gd, sm = sg.flatten(m)
    ref_gd, ref_sm = sg.generic.flatten(m)
    for _ in range(3):  # unflatten: public (maybe specialized) and reference agree
        pub = outcome(lambda: sg.unflatten(gd, sm))
        ref = outcome(lambda: sg.generic.unflatten(gd, sm))
        assert pub[0] == ref[0] == "ok"
        new = pub[1]
        assert new.s is ref[1].s and new.lst[0] is ref[1].lst[0]
        assert_same_flatten_loose(sg.generic.flatten(new), (ref_gd, ref_sm))

    twin = sg.generic.unflatten(ref_gd, ref_sm)
    new_sm = fresh_values(sm)
    assert outcome(lambda: sg.update(m, new_sm))[0] == "ok"
    sg.generic.update(twin, new_sm)
    assert_values_are(m, new_sm)
    assert_values_are(twin, new_sm)


def assert_same_flatten_loose(a: tuple, b: tuple) -> None:
    """Like assert_same_flatten, for GraphDefs whose statics refuse to be hashed or compared."""
    assert a[0].paths == b[0].paths
    assert a[0].table is b[0].table or outcome(lambda: a[0] == b[0]) != ("ok", False)
    assert all(x is y for x, y in zip(a[1].values(), b[1].values(), strict=True))


def test_static_whose_hash_raises_is_never_an_error_on_the_public_path() -> None:
    """Regression: the dispatcher hashed the GraphDef to count it and let RuntimeError out."""
    m = Box(p=sg.Param(1.0), s=HashRaises())
    ref = sg.generic.flatten(m)
    for _ in range(3):
        gd, sm = sg.flatten(m)
        assert gd.paths == ref[0].paths and list(sm.values()) == list(ref[1].values())
        sg.unflatten(gd, sm)
    assert info()["compiled_variants"] == 0


def test_static_whose_eq_raises_is_never_an_error_on_the_public_path() -> None:
    """Regression: comparing a new structure with a compiled one called the static's __eq__."""
    m = Box(p=sg.Param(1.0), s=EqRaises())
    sg.flatten(m)
    sg.flatten(m)  # compiled: a non-value static is guarded by identity, so no == is called
    assert info()["compiled_variants"] == 1 and info()["guard_misses"] == {} and info()["hits"] == 1
    m.s = EqRaises()
    gd, sm = sg.flatten(m)  # an equal-looking structure: comparing it with the variant's raises
    assert sg.generic.unflatten(gd, sm).s is m.s
    for _ in range(3):
        assert sg.unflatten(gd, sm).s is m.s
    sg.update(m, sm)


# -- __slots__ and properties on nodes --------------------------------------------------------


class Slotted(sg.Node):
    __slots__ = ("hidden",)  # Node has no __slots__: instances keep a __dict__ too

    def __init__(self) -> None:
        self.hidden = sg.Param(np.zeros(1, np.float32))  # a slot: not a child
        self.p = sg.Param(np.ones(1, np.float32))
        self.name = "slotted"

    @property
    def derived(self) -> sg.Param:  # a new object at every access: never a child
        return sg.Param(np.full(1, 7.0, np.float32))

    @property
    def twice(self) -> Any:
        return self.p


@pytest.mark.repeats
def test_slots_and_properties_are_not_children(impl) -> None:
    m = Box(s=Slotted(), t=Slotted())
    gd, sm = impl.flatten(m)
    assert_same_flatten((gd, sm), sg.generic.flatten(m))
    assert gd.paths == (("s", "p"), ("t", "p"))
    hits = info()["hits"]
    m.s.hidden = BatchStat(np.ones(3))  # invisible: no miss, same structure
    assert_same_flatten(impl.flatten(m), sg.generic.flatten(m))
    assert info()["guard_misses"] == {}
    if impl.name != "generic":
        assert info()["hits"] > hits

    new = impl.unflatten(gd, sm)
    assert type(new.s) is Slotted and vars(new.s).keys() == {"p", "name"}
    assert new.s.twice is new.s.p
    with pytest.raises(AttributeError):
        _ = new.s.hidden  # the slot was never part of the graph
    old_hidden = m.s.hidden
    new_sm = fresh_values(sm)
    impl.update(m, new_sm)
    assert_values_are(m, new_sm)
    assert m.s.hidden is old_hidden


# -- a State whose value is a property ------------------------------------------------------


class Cell(sg.State):
    """The value lives in ``_cell``; reads and writes go through a property."""

    log: ClassVar[list[str]] = []

    @property  # type: ignore[override]
    def value(self) -> Any:
        Cell.log.append("get")
        return self._cell[0]

    @value.setter
    def value(self, v: Any) -> None:
        Cell.log.append("set")
        self._cell = [v]


def test_state_value_property_is_read_and_written_through(impl) -> None:
    a = Cell(np.ones(2, np.float32), unit="m")
    m = Box(a=a, b=Cell(np.zeros(1, np.float32)), again=a, p=sg.Param(np.ones(1)))
    assert "value" not in vars(a)
    ref = sg.generic.flatten(m)
    Cell.log.clear()
    gd, sm = impl.flatten(m)
    assert_same_flatten((gd, sm), ref)
    assert "get" in Cell.log and "set" not in Cell.log
    assert sm[("a",)] is a._cell[0]

    Cell.log.clear()
    new = impl.unflatten(gd, sm)
    assert "set" in Cell.log
    assert type(new.a) is Cell and new.a is new.again and new.a.metadata == {"unit": "m"}
    assert "value" not in vars(new.a) and new.a._cell[0] is a._cell[0]
    assert_same_flatten(sg.generic.flatten(new), ref)

    Cell.log.clear()
    new_sm = fresh_values(sm)
    impl.update(m, new_sm)
    assert "set" in Cell.log
    assert m.a is a and "value" not in vars(a) and a._cell[0] is new_sm[("a",)]
    assert_values_are(m, new_sm)


# -- pytree roots with sharing across them ----------------------------------------------------


class Model(sg.Node):
    def __init__(self) -> None:
        self.layers = [Linear(2, 2), Linear(2, 2)]
        self.head = sg.Param(np.ones(2, np.float32))
        self.act = "relu"


class Optimizer(sg.Node):
    def __init__(self, model: Model) -> None:
        self.model = model  # a node shared with the other root item
        self.head = model.head  # a state shared with it
        self.mu = [BatchStat(np.zeros(2, np.float32)) for _ in model.layers]
        self.step = sg.State(np.zeros((), np.int32))


def _roots() -> dict[str, Callable[[], Any]]:
    def tup() -> Any:
        m = Model()
        return (m, Optimizer(m))

    def lst() -> Any:
        m = Model()
        return [m, {"opt": Optimizer(m), "lr": np.full(1, 0.1, np.float32)}]

    def opt_first() -> Any:
        m = Model()
        return {"a_opt": Optimizer(m), "b_model": m}

    return {"tuple": tup, "list_with_dict": lst, "dict_opt_first": opt_first}


@pytest.mark.repeats
@pytest.mark.parametrize("kind", list(_roots()))
def test_pytree_roots_with_sharing_across_items(impl, kind: str) -> None:
    root = _roots()[kind]()
    ref = sg.generic.flatten(root)
    gd, sm = impl.flatten(root)
    assert_same_flatten((gd, sm), ref)
    assert gd.num_nodes == 4 and gd.num_states == 8
    if impl.name != "generic":
        assert info()["hits"] >= 1

    new = impl.unflatten(gd, sm)
    assert type(new) is type(root)
    m, opt = (new[0], new[1]) if kind == "tuple" else (new[0], new[1]["opt"]) if kind == "list_with_dict" \
        else (new["b_model"], new["a_opt"])
    assert opt.model is m and opt.head is m.head
    assert_same_flatten(sg.generic.flatten(new), ref)

    twin = sg.generic.unflatten(*ref)
    states = sg.states(root)
    new_sm = fresh_values(sm)
    before = info()["update_hits"]
    impl.update(root, new_sm)
    sg.generic.update(twin, new_sm)
    assert_values_are(root, new_sm)
    assert_values_are(twin, new_sm)
    assert all(a is b for a, b in zip(sg.states(root).values(), states.values(), strict=True))
    if impl.name != "generic":
        assert info()["update_hits"] == before + 1
    assert_matches_reference(root)


# -- invisible attributes that come and go -------------------------------------------------------


class Cached(sg.Node):
    graph_invisible_attrs = ("cache", "_jit")

    def __init__(self, with_cache: bool) -> None:
        self.p = sg.Param(np.ones(2, np.float32))
        self.q = sg.Param(np.zeros(2, np.float32))
        if with_cache:
            self.cache = {"anything": object()}


@pytest.mark.parametrize("with_cache", [True, False], ids=["present_first", "absent_first"])
def test_invisible_attributes_appearing_and_disappearing_stay_on_the_fast_path(with_cache: bool) -> None:
    m = Box(c=Cached(with_cache), other=Cached(not with_cache))
    assert_matches_reference(m)
    hits = info()["hits"]
    c = m.c
    for mutate in (
        lambda: c.__dict__.pop("cache", None),
        lambda: setattr(c, "cache", [np.ones(3)]),  # an array in an invisible attribute: no leaf
        lambda: setattr(c, "_jit", object()),
        lambda: setattr(m.other, "cache", sg.Param(1.0)),
        lambda: delattr(c, "_jit"),
    ):
        mutate()
        assert_matches_reference(m)
        assert info()["guard_misses"] == {}, info()["guard_misses"]
        assert info()["hits"] == hits + 2
        hits += 2
    new_sm = fresh_values(sg.flatten(m)[1])
    cache = c.cache
    sg.update(m, new_sm)
    assert info()["update_hits"] == 1
    assert c.cache is cache
    assert_values_are(m, new_sm)


def test_invisible_attribute_swapped_for_a_visible_one_is_a_miss() -> None:
    """Same __dict__ size, one visible attribute fewer: the key guard must not be fooled."""
    c = Cached(False)
    m = Box(c=c)
    assert_matches_reference(m)
    del c.q
    c.cache = sg.Param(5.0)
    ref = assert_matches_reference(m)
    assert ref[0].paths == (("c", "p"),)
    assert info()["guard_misses"].get("node_keys", 0) >= 1


# -- aliased containers (regressions) -------------------------------------------------------------


def test_container_cycle_through_a_node_is_not_an_error(impl) -> None:
    """A list holding a node that holds the list: the node is a back-reference the second time."""
    inner = Box(p=sg.Param(np.ones(1, np.float32)))
    lst = [inner, np.zeros(2, np.float32)]
    inner.back = lst
    m = Box(layers=lst)
    gd, sm = impl.flatten(m)
    assert_same_flatten((gd, sm), sg.generic.flatten(m))
    assert gd.paths == (("layers", 0, "back", 1), ("layers", 0, "p"), ("layers", 1))
    new = impl.unflatten(gd, sm)
    assert new.layers[0].back[0] is new.layers[0]
    twin = copy.deepcopy(m)
    new_sm = fresh_values(sm)
    impl.update(m, new_sm)
    sg.generic.update(twin, new_sm)
    assert_same_flatten(sg.generic.flatten(m), sg.generic.flatten(twin))
    assert m.layers is lst and lst[0] is inner
    # a cycle of containers alone is still an error
    bad: list = [1]
    bad.append(bad)
    with pytest.raises(ValueError, match="contains itself"):
        impl.flatten(Box(bad=bad))


def _aliased_list() -> tuple[Box, list]:
    lst = [np.zeros(1, np.float32)]
    return Box(a=lst, b=Box(x=lst), c=lst), lst


def test_update_of_a_list_reachable_at_two_paths_matches_the_reference() -> None:
    """Regression: generated update wrote array leaves in pre-order, the reference node by node."""
    m, lst = _aliased_list()
    twin, twin_lst = _aliased_list()
    sg.flatten(m)
    gd, sm = sg.flatten(m)
    assert gd.paths == (("a", 0), ("b", "x", 0), ("c", 0))
    new = fresh_values(sm)
    sg.update(m, new)
    assert info()["update_hits"] == 1
    sg.generic.update(twin, new)
    assert lst[0] is twin_lst[0]
    assert lst[0] is new[("b", "x", 0)]  # the reference writes node by node: the child last

    rlst = [np.zeros(1, np.float32)]
    root = [Box(x=rlst), rlst]
    twin_root = copy.deepcopy(root)
    sg.flatten(root)
    _, sm = sg.flatten(root)
    new = fresh_values(sm)
    sg.update(root, new)
    sg.generic.update(twin_root, new)
    assert rlst[0] is twin_root[1][0] is new[(1, 0)]  # the root pytree is written last


# -- function statics (regression) ------------------------------------------------------------------


def _act(x: Any) -> Any:
    return x


class _CodeProperty:
    """A callable static whose ``__code__`` attribute raises."""

    __code__ = property(lambda self: 1 / 0)

    def __call__(self) -> None:
        pass

    def __eq__(self, other: object) -> bool:
        return type(other) is _CodeProperty

    def __hash__(self) -> int:
        return 1


@pytest.mark.filterwarnings("error")  # a compile failure is a RuntimeWarning: make it fail here
@pytest.mark.parametrize(
    "static",
    [lambda x: x, _act, functools.partial(_act), _CodeProperty(), Box.__init__, len],
    ids=["lambda", "def", "partial", "code_property", "method", "builtin"],
)
def test_function_statics_are_specialized(static: Any) -> None:
    """Regression: binding the type of a function static (FunctionType) broke compilation."""
    m = Box(p=sg.Param(np.ones(1, np.float32)), act=static, acts=[static, static])
    ref = assert_matches_reference(m)
    assert info()["hits"] >= 1 and info()["compile_failures"] == 0
    gd, sm = ref
    for _ in range(3):
        new = sg.unflatten(gd, sm)
        assert new.act is static and new.acts == [static, static]
    assert info()["unflatten_hits"] >= 1
    sg.update(m, fresh_values(sm))
    assert info()["update_hits"] == 1


# -- known limitation ----------------------------------------------------------------------------------


def test_graph_invisible_attrs_changed_on_the_class_after_specialization() -> None:
    cls = type("Late", (sg.Node,), {})
    m = Box(c=cls())
    m.c.p = sg.Param(1.0)
    m.c.cache = sg.Param(2.0)
    assert_matches_reference(m)
    cls.graph_invisible_attrs = ("cache",)
    assert_matches_reference(m)
