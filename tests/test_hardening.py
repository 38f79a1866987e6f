"""Hardening regressions (issue 10): objects that the fast path once answered wrongly,
kept alive, or accepted silently. Each runs through the reference walker and through
the specialized path, and demands the reference's answer.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import weakref
from collections import Counter, defaultdict
from typing import Any

import jax
import numpy as np
import pytest
from conftest import assert_same_flatten

import specgraph as sg
from specgraph.runtime import dispatch


class Box(sg.Node):
    def __init__(self, **kw: Any) -> None:
        self.__dict__.update(kw)


def warm(node: Any) -> None:
    """Compile ``node``'s structure and let generated code serve it once."""
    sg.flatten(node)
    sg.flatten(node)


# -- item 2: an instance dict replaced by a dict subclass --------------------------------


def test_counter_instance_dict_cannot_forge_a_renamed_static(impl) -> None:
    # Compiled with {w, zero=0}; then a node whose dict is a Counter holding {w, other=0}:
    # the renamed key reads as 0 through Counter.__missing__, so every key guard passed.
    warm(Box(w=sg.Param(np.ones(2)), zero=0))
    n = Box(w=sg.Param(np.ones(2)), other=0)
    n.__dict__ = Counter(n.__dict__)
    got = impl.flatten(n)
    assert_same_flatten(got, sg.generic.flatten(n))
    assert got[0].table[0][3] == ("other", "w")
    assert set(n.__dict__) == {"w", "other"}


def test_defaultdict_instance_dict_gets_no_key_inserted(impl) -> None:
    p = sg.Param(np.ones(2))
    warm(Box(w=p, one=1, arr=np.zeros(3)))
    n = Box(w=sg.Param(np.ones(2)), two=1, arr=np.zeros(3))
    n.__dict__ = defaultdict(lambda: 1, n.__dict__)
    ref = sg.generic.flatten(n)
    assert_same_flatten(impl.flatten(n), ref)
    assert set(n.__dict__) == {"w", "two", "arr"}, "a flatten inserted a key into the user's object"
    assert list(sg.states(n).keys()) == [("w",)]
    assert set(n.__dict__) == {"w", "two", "arr"}
    impl.update(n, ref[1])
    assert set(n.__dict__) == {"w", "two", "arr"}, "an update inserted a key into the user's object"


class LyingDict(dict):
    """A dict whose Python-level methods hide ``b``, answer every read with 0 and drop writes."""

    def __iter__(self) -> Any:
        return iter(["a"])

    def keys(self) -> Any:
        return ["a"]

    def __len__(self) -> int:
        return 1

    def __getitem__(self, key: Any) -> Any:
        return 0

    def __setitem__(self, key: Any, value: Any) -> None:
        pass


def test_dict_subclass_overrides_do_not_fool_either_path(impl) -> None:
    """Both paths see what attribute access sees: the dict's own storage."""
    a, b = sg.Param(np.ones(2)), np.zeros(3)
    warm(Box(a=sg.Param(np.ones(2)), b=np.zeros(3)))
    n = Box(a=a, b=b)
    n.__dict__ = LyingDict(n.__dict__)
    assert n.a is a and n.b is b
    gd, sm = impl.flatten(n)
    assert gd.paths == (("a",), ("b",))
    assert sm[("a",)] is a.value and sm[("b",)] is b
    new = np.full(3, 7.0)
    impl.update(n, {("a",): a.value, ("b",): new})
    assert n.b is new


# -- item 9: a custom node type whose flatten repeats a key ---------------------------------


class Pairs:
    """A custom node whose children are a list of (key, child) pairs, as its flatten gives them."""

    def __init__(self, *pairs: tuple[Any, Any]) -> None:
        self.pairs = list(pairs)


sg.register_graph_node_type(
    Pairs,
    lambda x: (list(x.pairs), None),
    lambda x, k, v: x.pairs.append((k, v)),
    lambda x, k: x.pairs.pop([p[0] for p in x.pairs].index(k))[1],
    lambda meta: Pairs(),
    lambda x: x.pairs.clear(),
)


@pytest.mark.parametrize("where", ["root", "nested"])
def test_a_custom_flatten_that_repeats_a_key_is_an_error(impl, where: str) -> None:
    ok = Pairs(("a", sg.Param(np.ones(1))), ("b", sg.Param(np.ones(1))))
    bad = Pairs(("a", sg.Param(np.ones(1))), ("b", np.zeros(1)), ("a", sg.Param(np.ones(2))))
    root_ok, root_bad = (ok, bad) if where == "root" else (Box(child=ok), Box(child=bad))
    _, sm = impl.flatten(root_ok)
    path = "()" if where == "root" else r"\('child',\)"
    for _ in range(2):  # never cached as accepted
        with pytest.raises(ValueError, match=rf"Pairs yields the key 'a' twice .* path {path}"):
            impl.flatten(root_bad)
        with pytest.raises(ValueError, match="yields the key 'a' twice"):
            sg.states(root_bad)
    values = [p[1] for p in bad.pairs]
    with pytest.raises(ValueError, match="yields the key 'a' twice"):
        impl.update(root_bad, sm)
    assert [p[1] for p in bad.pairs] == values  # untouched


# -- item 4: graph_invisible_attrs changed, the structure the same -------------------------


def test_new_invisible_names_that_hide_nothing_compile_again(impl) -> None:
    class Hiding(sg.Node):
        graph_invisible_attrs: tuple[str, ...] = ()

    n = Hiding()
    n.w = sg.Param(np.ones(2))
    n.arr = np.zeros(2)
    warm(n)
    sg.states(n)
    Hiding.graph_invisible_attrs = ("cache",)  # no instance has it: the structure is the same
    ref = sg.generic.flatten(n)
    assert_same_flatten(impl.flatten(n), ref)
    sg.flatten(n)  # one miss at most, then compiled again for the class as it is
    sg.states(n)
    sg.update(n, ref[1])
    before = sg.cache_info()
    for _ in range(3):
        assert_same_flatten(sg.flatten(n), ref)
        assert list(sg.states(n).keys()) == [("w",)]
        sg.update(n, ref[1])
    after = sg.cache_info()
    assert after["hits"] == before["hits"] + 3
    assert after["walk_hits"] == before["walk_hits"] + 3
    assert after["update_hits"] == before["update_hits"] + 3
    assert after["guard_misses"] == before["guard_misses"]
    n.cache = np.ones(5)  # and the new name is hidden by the recompiled code
    assert_same_flatten(impl.flatten(n), sg.generic.flatten(n))
    assert sg.generic.flatten(n)[0].paths == (("arr",), ("w",))


# -- item 6: generated text costs O(1) per line, however deep the structure -----------------


class Link(sg.Node):
    def __init__(self, child: Any) -> None:
        self.p = sg.Param(np.zeros(1))
        self.child = child


def deep_chain(depth: int) -> Link:
    node: Any = None
    for _ in range(depth):  # bottom-up: no recursion
        node = Link(node)
    return node


@pytest.fixture
def unrolled() -> Any:
    """Chains unrolled into straight-line code (by default they are one loop: test_outline.py)."""
    saved = dispatch.CONFIG.outline_min
    sg.configure(outline_min=0)
    try:
        yield
    finally:
        dispatch.CONFIG.outline_min = saved


def test_deep_chain_comments_and_explain_stay_short(impl, unrolled) -> None:
    depth = 400
    node = deep_chain(depth)
    assert_same_flatten(impl.flatten(node), sg.generic.flatten(node))
    sg.flatten(node)
    gd, _ = sg.flatten(node)
    var = dispatch.variant_for(gd)
    assert var is not None and sg.cache_info()["hits"] >= 1
    for kind in ("flatten", "update"):
        source = var.sources[kind]
        comments = [line.split("  # ", 1)[1] for line in source.splitlines() if "  # " in line]
        assert len(comments) > depth
        # A few trailing keys, not the whole path (which made the source quadratic in depth).
        assert max(len(c) for c in comments) < 60, max(comments, key=len)[:80]
        assert "...child.child.child.p" in comments
        assert len(source) < 600 * depth
    text = sg.explain(gd)
    assert len(text) < 100_000 and len(text.splitlines()) < 1_500
    assert "lines not shown" in text
    full = sg.explain(gd, max_lines=None)
    assert var.sources["flatten"].splitlines()[-1] in full and len(full) > 10 * len(text)


# -- item 8: no cache keeps a user node alive, not even through a static --------------------


class Head(sg.Node):
    def __init__(self) -> None:
        self.w = sg.Param(np.ones(3))
        self.arr = np.zeros(4)

    def score(self, x: Any) -> Any:
        return x


def _closure_over(node: Any) -> Any:
    return lambda x: node.score(x)


def _apply(node: Any, x: Any) -> Any:
    return node.score(x)


def with_static(kind: str) -> Box:
    m = Box(head=Head(), k=3)
    head = m.head
    if kind == "bound_method":
        m.cb = head.score
    elif kind == "closure":
        m.cb = _closure_over(head)
    elif kind == "partial":
        m.cb = functools.partial(_apply, head)
    elif kind == "tuple":  # not weakly referenceable: the structure is never cached
        m.cb = (head.score, 1)
    return m


@pytest.mark.parametrize("kind", ["bound_method", "closure", "partial", "tuple"])
def test_a_static_that_reaches_a_node_does_not_keep_it_alive(impl, kind: str) -> None:
    m = with_static(kind)
    ref = sg.generic.flatten(m)
    gd, sm = impl.flatten(m)
    assert_same_flatten((gd, sm), ref)
    impl.update(m, sm)
    clone = impl.unflatten(gd, sm)
    assert clone.cb is m.cb  # a static comes back as it is
    assert list(sg.states(m).keys()) == [("head", "w")]
    assert list(sg.states(m).keys()) == [("head", "w")]
    info = sg.cache_info()
    if kind == "tuple":
        assert info["compiled_variants"] == 0 and info["compiled_unflattens"] == 0
    else:  # the structure is cached while the node lives
        assert info["compiled_variants"] == 1 and info["walk_hits"] >= 1
        if impl.compiled:
            assert info["hits"] >= 1 and info["compiled_unflattens"] == 1 and info["unflatten_hits"] >= 1
            assert "R0() or " in dispatch.variant_for(gd).sources["flatten"]  # the weak guard
    alive = [weakref.ref(m.head), weakref.ref(m.head.w), weakref.ref(m.head.arr)]
    del m, gd, sm, ref, clone
    gc.collect()
    assert [r() for r in alive] == [None, None, None], "a cache kept the node and its arrays alive"
    info = sg.cache_info()
    assert info["compiled_variants"] == 0 and info["compiled_unflattens"] == 0  # dead structures dropped


def test_a_weakly_held_structure_makes_its_graphdef_again_when_dropped() -> None:
    m = with_static("bound_method")
    warm(m)
    hits = sg.cache_info()["hits"]
    gd, sm = sg.flatten(m)  # the first GraphDef is gone: made again from the cache key
    assert sg.cache_info()["hits"] == hits + 1
    assert_same_flatten((gd, sm), sg.generic.flatten(m))
    assert sg.generic.flatten(m)[0] == gd
    (cb,) = [e.value for e in gd.table[0].children if type(e).__name__ == "StaticEdge" and callable(e.value)]
    assert cb is m.cb
    assert sg.flatten(m)[0] is gd  # kept while the user holds it
    assert sg.unflatten(gd, sm).cb is m.cb


def test_models_made_and_dropped_do_not_make_their_type_megamorphic() -> None:
    # Each model's bound method is its own structure; a dropped model's variant goes
    # with it instead of filling the type's variant slots for good.
    for _ in range(3 * 8):
        m = with_static("bound_method")
        warm(m)
        del m
        gc.collect()
    m = with_static("bound_method")
    warm(m)
    info = sg.cache_info()
    assert info["megamorphic_types"] == [] and info["compiled_variants"] == 1
    hits = info["hits"]
    assert_same_flatten(sg.flatten(m), sg.generic.flatten(m))
    assert sg.cache_info()["hits"] == hits + 1


def test_statics_that_reach_no_user_data_keep_the_identity_guard() -> None:
    m = Box(w=sg.Param(np.ones(2)), act=jax.nn.relu, fn=_apply, kind=type, nums=(1, 2.0))
    warm(m)
    gd, _ = sg.flatten(m)
    source = dispatch.variant_for(gd).sources["flatten"]
    assert "R0" not in source and " is not C0" in source
    assert_same_flatten(sg.flatten(m), sg.generic.flatten(m))


def test_an_array_kept_as_a_static_is_held_weakly(impl) -> None:
    # BrainState's rule: a bare array under one of its nodes is a static (ArrayConstant).
    bst = pytest.importorskip("brainstate")

    class Norm(bst.graph.Node):
        def __init__(self) -> None:
            self.w = sg.Param(np.ones(3))
            self.eps = np.full((), 1e-5)

    m = Norm()
    gd, sm = impl.flatten(m)
    assert_same_flatten((gd, sm), sg.generic.flatten(m))
    assert impl.unflatten(gd, sm).eps is m.eps
    if impl.compiled:
        assert sg.cache_info()["hits"] >= 1
        assert "R0() or " in dispatch.variant_for(gd).sources["flatten"]
    alive = weakref.ref(m.eps)
    del m, gd, sm
    gc.collect()
    assert alive() is None


# Found by tests/fuzz_hardening.py: the same holds for the other static parts of a structure.
# Generated guards bind dict keys, metadata and aux data as constants, so a structure with
# one that reaches user data is left to the generic walker.


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Scaled:
    x: Any
    eps: Any = dataclasses.field(metadata={"static": True})  # aux data


class Tagged:
    """A custom graph node type whose metadata is its ``tag``."""

    def __init__(self, tag: Any) -> None:
        self.tag = tag
        self.data: dict[str, Any] = {}


sg.register_graph_node_type(Tagged, lambda t: (sorted(t.data.items()), t.tag),
                            lambda t, k, v: t.data.__setitem__(k, v), lambda t, k: t.data.pop(k),
                            Tagged, lambda t: t.data.clear())


def with_reaching_part(kind: str) -> Box:
    m = Box(head=Head(), k=3)
    cb = m.head.score
    if kind == "state_metadata":
        m.p = sg.Param(np.ones(2), init=cb)
    elif kind == "dict_key":
        m.d = {cb: sg.State(np.ones(2))}
    elif kind == "node_as_dict_key":
        m.d = {m.head: 1}
    elif kind == "pytree_aux_data":
        m.c = Scaled(sg.Param(np.ones(2)), cb)
    elif kind == "custom_node_metadata":
        m.t = Tagged(cb)
        m.t.data["p"] = sg.Param(np.ones(2))
    return m


@pytest.mark.parametrize("kind", ["state_metadata", "dict_key", "node_as_dict_key", "pytree_aux_data",
                                  "custom_node_metadata"])
def test_a_key_metadata_or_aux_that_reaches_a_node_does_not_keep_it_alive(impl, kind: str) -> None:
    m = with_reaching_part(kind)
    ref = sg.generic.flatten(m)
    gd, sm = impl.flatten(m)
    assert_same_flatten((gd, sm), ref)
    impl.update(m, sm)
    rebuilt = impl.unflatten(gd, sm)
    assert_same_flatten(sg.generic.flatten(rebuilt), sg.generic.flatten(sg.generic.unflatten(gd, sm)))
    with sg.specialization(False):
        want = list(sg.states(m))
    assert list(sg.states(m)) == want
    info = sg.cache_info()
    assert info["compiled_variants"] == 0 and info["compiled_unflattens"] == 0  # the generic walker serves
    alive = [weakref.ref(m.head), weakref.ref(m.head.w), weakref.ref(m.head.arr)]
    del m, gd, sm, ref, rebuilt, want  # (a path holds its dict key)
    gc.collect()
    assert [r() for r in alive] == [None, None, None], "a cache kept the node and its arrays alive"


def test_keys_metadata_and_aux_of_plain_values_are_still_specialized() -> None:
    m = Box(p=sg.Param(np.ones(2), init="zeros", scale=(1, 2.0)), d={1: sg.State(np.ones(1)), 2.5: 3},
            c=Scaled(sg.Param(np.ones(2)), 1e-5), u=Box(f=_apply, g=jax.nn.relu))
    warm(m)
    gd, sm = sg.flatten(m)
    sg.unflatten(gd, sm)
    new = sg.unflatten(gd, sm)
    info = sg.cache_info()
    assert info["hits"] == 2 and info["unflatten_hits"] == 1, info
    assert_same_flatten((gd, sm), sg.generic.flatten(m))
    assert_same_flatten(sg.generic.flatten(new), sg.generic.flatten(sg.generic.unflatten(gd, sm)))


def test_a_mesh_in_metadata_is_configuration_not_user_data(impl) -> None:
    # NNX keeps a Param's mesh in its metadata; a mesh's devices sit in a NumPy array,
    # which must not make the structure uncacheable (the sharded NNX models went generic).
    mesh = jax.make_mesh((1,), ("model",))
    m = Box(p=sg.Param(np.ones(2), mesh=mesh, sharding=("model",)), k=mesh)
    gd, sm = impl.flatten(m)
    assert_same_flatten((gd, sm), sg.generic.flatten(m))
    assert impl.unflatten(gd, sm).p.metadata["mesh"] is mesh
    if impl.compiled:
        info = sg.cache_info()
        assert info["hits"] >= 1 and info["unflatten_hits"] >= 1, info
        assert "R0" not in dispatch.variant_for(gd).sources["flatten"]  # held strongly


class _ClaimsToBeInt(type):
    """A metaclass whose classes claim to equal (and hash like) every other class."""

    def __eq__(cls, other: object) -> bool:
        return True

    def __hash__(cls) -> int:
        return hash(int)


class _IntLike(int, metaclass=_ClaimsToBeInt):
    pass


def test_the_key_signature_compares_key_classes_by_identity() -> None:
    # dict_key_sig answers all-int / all-str dicts without a sort: a class equal to int by
    # its metaclass's == (and hashing alike) must still give its own sig, as the sort does.
    from specgraph._sameness import ExactClass, dict_key_sig, keys_sig

    d = {1: 0, _IntLike(2): 1}
    sig = dict_key_sig(d)
    # (== on purpose: the sig must not compare equal to int)
    assert sig is not None and sig[0] is int and sig[1] == ExactClass(_IntLike) and sig[1] != int  # noqa: E721
    assert sig == keys_sig(sorted(d))
    assert dict_key_sig({3: 0, 1: 1}) == (int, int) and dict_key_sig({"b": 0, "a": 1}) is None


class _Holder(sg.Node):
    pass


class _Keyed:
    """A callback node type whose keys the test chooses."""

    def __init__(self) -> None:
        self.items: dict[Any, Any] = {}


sg.register_graph_node_type(
    _Keyed, lambda k: (list(k.items.items()), None), lambda k, key, v: k.items.__setitem__(key, v),
    lambda k, key: k.items.pop(key), lambda meta: _Keyed(), lambda k: k.items.clear(),
)


def _key_types(d: dict) -> list[type]:
    return [type(k) for k in d]


@pytest.mark.parametrize("where", ["dict", "callback node", "static tuple"])
def test_a_key_whose_class_claims_to_equal_int_is_its_own_structure(impl: Any, where: str) -> None:
    # The sig of a key, static or metadata records its class; a class whose metaclass
    # claims to equal int (and hashes like it) used to pass the generated KEY_SIG guard
    # and make an equal GraphDef, so the compiled code of the int-keyed structure served
    # it and the rebuilt dict had int keys (found by tests/fuzz_interop.py).
    def model(key: Any) -> _Holder:
        h = _Holder()
        w = sg.Param(np.ones(1, np.float32))
        if where == "dict":
            h.d = {1: sg.Param(np.zeros(1, np.float32)), key: w}
        elif where == "callback node":
            h.d = _Keyed()
            h.d.items.update({1: sg.Param(np.zeros(1, np.float32)), key: w})
        else:
            h.d = w
            h.t = (0, key)
        return h

    plain, hostile = model(2), model(_IntLike(2))
    gd_plain, _ = impl.flatten(plain)
    impl.flatten(plain)
    gd, sm = impl.flatten(hostile)
    assert gd != gd_plain
    assert_same_flatten((gd, sm), sg.generic.flatten(hostile))
    new = impl.unflatten(gd, sm)
    if where == "static tuple":
        assert type(new.t[1]) is _IntLike
    else:
        got = new.d if where == "dict" else new.d.items
        assert _key_types(got) == _key_types(hostile.d if where == "dict" else hostile.d.items)
        assert _IntLike in [type(k) for k in got]


def test_value_types_are_matched_by_identity() -> None:
    from specgraph._sameness import VALUE_TYPES, is_value_sig, match_mode, value_sig

    assert int in VALUE_TYPES and _IntLike not in VALUE_TYPES
    assert not is_value_sig(value_sig(_IntLike(3))) and not is_value_sig(value_sig((1, _IntLike(3))))
    assert value_sig(_IntLike(3)) != int  # noqa: E721 - the sig's ==, on purpose
    assert value_sig(_IntLike(3)) == value_sig(_IntLike(4))
    assert match_mode(_IntLike(3), value_sig(_IntLike(3))) == "is"


def test_the_unflatten_takes_the_flattens_cache_key_for_the_graphdef_it_returned(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The flatten found the structure's cache key to be its GraphDef (no static reaching
    # user data): the unflatten of that very GraphDef does not walk its statics again.
    m = Box(a=Head(), b=Head(), k=3, act=jax.nn.relu)
    warm(m)
    gd, sm = sg.flatten(m)
    asked: list[Any] = []
    inner = dispatch.cache_key
    monkeypatch.setattr(dispatch, "cache_key", lambda g: asked.append(g) or inner(g))
    for _ in range(3):
        out = sg.unflatten(gd, sm)
        assert_same_flatten(sg.generic.flatten(out), sg.generic.flatten(sg.generic.unflatten(gd, sm)))
    info = sg.cache_info()
    assert info["compiled_unflattens"] == 1 and info["unflatten_hits"] == 2
    assert asked == []
    assert [k for k in dispatch._unflat] == [gd] and next(iter(dispatch._unflat)) is gd


def test_the_unflatten_of_an_equal_graphdef_the_flatten_never_returned_asks_its_cache_key(
        monkeypatch: pytest.MonkeyPatch) -> None:
    m = Box(a=Head(), b=Head(), k=3, act=jax.nn.relu)
    warm(m)
    gd, _ = sg.flatten(m)
    twin, sm = sg.generic.flatten(Box(a=Head(), b=Head(), k=3, act=jax.nn.relu))
    assert twin == gd and twin is not gd
    asked: list[Any] = []
    inner = dispatch.cache_key
    monkeypatch.setattr(dispatch, "cache_key", lambda g: asked.append(g) or inner(g))
    sg.unflatten(twin, sm)
    sg.unflatten(twin, sm)
    assert sg.cache_info()["compiled_unflattens"] == 1
    assert asked and all(g is twin for g in asked)


def test_the_unflatten_of_a_weakly_held_structure_asks_its_own_cache_key(
        monkeypatch: pytest.MonkeyPatch) -> None:
    m = with_static("bound_method")
    warm(m)
    gd, sm = sg.flatten(m)
    asked: list[Any] = []
    inner = dispatch.cache_key
    monkeypatch.setattr(dispatch, "cache_key", lambda g: asked.append(g) or inner(g))
    sg.unflatten(gd, sm)
    sg.unflatten(gd, sm)
    assert sg.cache_info()["compiled_unflattens"] == 1
    assert asked and all(g is gd for g in asked)
    (key,) = dispatch._unflat
    assert key is not gd and key == gd  # a twin holding the bound method weakly
