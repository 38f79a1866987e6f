"""Container shapes take int/str/bool statics as parameters (issue 12, "no cliff").

Small containers repeated in a structure are outlined shapes (test_container_shapes.py),
and a container shape was keyed by its statics' exact values: 5 000 ``(Param, i)`` tuples
with distinct ``i`` were 5 000 shapes, declined past ``max_steps``. Containers differing
only in the values of int, str and bool statics (their own, their nodes', their nested
containers') are now one *family*, as node shapes are (test_outline_params.py): the values
that differ are the shape's functions' parameters, each occurrence's passed by its call or
zipped in by the loop over a list (or a dict) of them, and every occurrence is guarded
against its own values (a changed static is a ``static`` miss, answered by the walker).
The unflatten's builders read each occurrence's statics from the GraphDef.

Every behaviour runs through ``impl`` (walker, specialized, outlined), with hits counted:
the compiled path must have answered, not a fallback.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import hypothesis
import jax
import numpy as np
import pytest
from conftest import assert_same_flatten, assert_stale_without, outlined_flatten_hits, outlined_unflatten_hits
from hypothesis import strategies as hst

import specgraph as sg
from specgraph.runtime import dispatch


class Bag(sg.Node):
    def __init__(self, **attrs: Any) -> None:
        vars(self).update(attrs)


class Holder(sg.Node):
    """A node holding containers whose statics differ per node (statics in containers in an
    outlined node's occurrences)."""

    def __init__(self, i: int) -> None:
        self.t = (sg.Param(np.float32(i)), i)
        self.l = [sg.Param(np.float32(-i)), "h" + str(i), i % 2 == 0]
        self.d = {"w": sg.Param(np.float32(i)), "k": i * 3}


def _p(i: int) -> sg.Param:
    return sg.Param(np.float32(i))


HOSTILE = ["'); import os #", "\n#", "\\", "{{ x }}", "\x00", "é", "", " ", '"""', "a" * 300]


def item(kind: str, i: int) -> Any:
    """One occurrence of family ``kind`` whose statics differ with ``i``."""
    if kind == "tuple":
        return (_p(i), i)
    if kind == "list":
        return [_p(i), "name_" + str(i)]
    if kind == "dict":
        return {"w": _p(i), "i": i, "f": i % 2 == 0}
    if kind == "nested":  # a nested container whose statics differ too
        return [(_p(i), i), "s" + str(i % 5)]
    if kind == "holder":
        return Holder(i)
    raise AssertionError(kind)


def model(kind: str, n: int) -> Bag:
    """``n`` occurrences of one family (``mixed``: four families interleaved; ``dicts``: a
    dict of str-key dicts, a static per entry; ``holders``: nodes holding such containers)."""
    if kind == "mixed":
        fams = ["tuple", "list", "dict", "nested"]
        return Bag(items=[item(fams[i % 4], i) for i in range(n)], z=3)
    if kind == "dicts":
        return Bag(items={"k" + str(i).zfill(6): {"w": _p(i), "i": i} for i in range(n)})
    if kind == "holders":
        return Bag(items=[Holder(i) for i in range(n)])
    return Bag(items=[item(kind, i) for i in range(n)])


KINDS = ["tuple", "list", "dict", "nested", "mixed", "dicts", "holders"]


def _values_same(a: Any, b: Any) -> bool:
    return all(x is y for x, y in zip(a.values(), b.values(), strict=True))


def _check_all(impl: Any, b: Bag) -> None:
    """flatten, update and unflatten of ``b`` through ``impl`` equal the walker's; the
    compiled path answered each (hits counted)."""
    ref = sg.generic.flatten(b)
    got = impl.flatten(b)
    assert_same_flatten(got, ref)
    info = sg.cache_info()
    if impl.compiled:
        assert info["hits"] == 1 and info["declined"] == 0, info
        assert outlined_flatten_hits() == 1  # (a loop or an outlined function answered)
    new = jax.tree.map(lambda v: v + 1, got[1])
    impl.update(b, new)
    assert _values_same(sg.generic.flatten(b)[1], new)
    if impl.compiled:
        assert sg.cache_info()["update_hits"] == 1
    before = sg.cache_info()["unflatten_hits"]
    ref = sg.generic.flatten(b)
    twin = impl.unflatten(*ref)
    assert_same_flatten(sg.generic.flatten(twin), ref)
    if impl.compiled:
        assert sg.cache_info()["unflatten_hits"] == before + 1
        assert outlined_unflatten_hits() == 1


@pytest.mark.repeats
@pytest.mark.parametrize("kind", KINDS)
def test_families_are_specialized(impl: Any, kind: str) -> None:
    """1 000 occurrences of families whose statics differ per occurrence: specialized
    (flatten, update, unflatten), equal to the walker, the statics zipped in."""
    b = model(kind, 1000)
    _check_all(impl, b)
    if impl.compiled:
        text = sg.explain(sg.generic.flatten(b)[0])
        assert "the statics that differ per item zipped in" in text  # (one loop)


@pytest.mark.parametrize("kind", ["tuple", "list", "dicts", "mixed"])
@pytest.mark.parametrize("n", [5000, 30000])
def test_large(impl: Any, kind: str, n: int) -> None:
    """5 000 and 30 000 occurrences at default settings (they were declined past
    ``max_steps``): specialized, equal to the walker."""
    if n == 30000 and (kind in ("list", "mixed") or impl.name == "outlined"):
        pytest.skip("(the same code as 5 000 and as specialized at this size; kept short)")
    _check_all(impl, model(kind, n))


def test_issue_reproduction() -> None:
    """The issue's case: 5 000 ``(Param, i)`` tuples, default settings, nothing declined."""
    m = Bag(items=[(sg.Param(np.float32(i)), i) for i in range(5000)])
    gd, sm = sg.flatten(m)
    sg.flatten(m)
    sg.update(m, sm)
    sg.unflatten(gd, sm)
    sg.unflatten(gd, sm)
    info = sg.cache_info()
    assert (info["hits"], info["update_hits"], info["unflatten_hits"]) == (1, 1, 1), info
    assert info["declined"] == 0 and info["declined_too_large"] == 0 and info["unflatten_declined"] == 0, info


def test_no_user_data_in_sources() -> None:
    """Statics and keys reach generated code as bound constants (a parameter tuple), never
    as text: the hostile strings and the per-item values appear in no source."""
    b = Bag(items={"k" + h + str(i): {"w": _p(i), "s": h + str(i), "f": i % 2 == 0}
                   for i, h in enumerate(HOSTILE * 10)},
            more=[[_p(i), "zz" + h + "9876"] for i, h in enumerate(HOSTILE * 8)])
    ref = sg.generic.flatten(b)
    sg.flatten(b)
    assert_same_flatten(sg.flatten(b), ref)
    assert sg.cache_info()["hits"] == 1
    var = dispatch.variant_for(ref[0])
    assert var is not None
    for src in var.sources.values():
        assert "zz" not in src and "9876" not in src and "import os" not in src
    twin = sg.unflatten(*ref)
    assert_same_flatten(sg.generic.flatten(sg.unflatten(*ref)), ref)
    assert_same_flatten(sg.generic.flatten(twin), ref)
    assert sg.cache_info()["unflatten_hits"] == 1


# -- one occurrence's static changed: a miss, the walker's answer ---------------------------


def _mutations(kind: str) -> list[Callable[[Any], Any]]:
    """Ways to change one occurrence's static (``x`` -> the new occurrence)."""
    if kind == "tuple":
        return [lambda x: (x[0], x[1] + 1),  # another value (one a neighbour holds)
                lambda x: (x[0], 10 ** 9),  # a new value
                lambda x: (x[0], bool(x[1] % 2)),  # an int -> a bool (True is not 1)
                lambda x: (x[0], float(x[1])),  # an int -> a float
                lambda x: (x[0], str(x[1]))]  # an int -> a str
    if kind == "list":
        return [lambda x: [x[0], x[1] + "!"], lambda x: [x[0], type("S", (str,), {})(x[1])],
                lambda x: [x[0], 5]]
    if kind == "dict":
        return [lambda x: {**x, "f": not x["f"]}, lambda x: {**x, "f": int(x["f"])},
                lambda x: {**x, "i": x["i"] - 1}]
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["tuple", "list", "dict"])
@pytest.mark.parametrize("where", ["head", "middle", "last"])
def test_one_static_changed_is_a_miss(kind: str, where: str) -> None:
    """One occurrence's static changed at the head, the middle, the end of a list of 200:
    a static miss, the walker's answer; the unflatten of the new structure is its own."""
    for mutate in _mutations(kind):
        sg.clear_cache()
        b = model(kind, 200)
        sg.flatten(b)
        sg.flatten(b)
        assert sg.cache_info()["hits"] == 1
        at = {"head": 0, "middle": 100, "last": 199}[where]
        b.items[at] = mutate(b.items[at])
        ref = sg.generic.flatten(b)
        got = sg.flatten(b)
        assert_same_flatten(got, ref)
        info = sg.cache_info()
        assert info["hits"] == 1 and info["guard_misses"].get("static", 0) >= 1, info
        twin = sg.unflatten(*ref)
        assert_same_flatten(sg.generic.flatten(twin), ref)


@pytest.mark.parametrize("where", [0, 57, 119])
def test_static_in_a_holders_container_changed_is_a_miss(where: int) -> None:
    """Statics inside containers inside an outlined node family: one changed is a miss."""
    for attr in ("t", "l", "d"):
        sg.clear_cache()
        b = model("holders", 120)
        sg.flatten(b)
        sg.flatten(b)
        h = b.items[where]
        if attr == "t":
            h.t = (h.t[0], h.t[1] + 1)
        elif attr == "l":
            h.l = [h.l[0], h.l[1], not h.l[2]]
        else:
            h.d["k"] = True if h.d["k"] == 1 else 1
        ref = sg.generic.flatten(b)
        assert_same_flatten(sg.flatten(b), ref)
        assert sg.cache_info()["guard_misses"].get("static", 0) >= 1


def test_dict_of_dicts_key_changes_are_misses() -> None:
    """The outer dict of a mixed loop: a renamed key, an added key, a removed key: misses."""
    for change in ("rename", "add", "remove", "order"):
        sg.clear_cache()
        b = model("dicts", 100)
        sg.flatten(b)
        sg.flatten(b)
        d = b.items
        if change == "rename":
            d["zz"] = d.pop("k000050")
        elif change == "add":
            d["zz"] = {"w": _p(1), "i": 1}
        elif change == "remove":
            del d["k000099"]
        else:  # another insertion order, same keys: the same structure (keys are sorted)
            b.items = dict(reversed(list(d.items())))
        ref = sg.generic.flatten(b)
        assert_same_flatten(sg.flatten(b), ref)
        info = sg.cache_info()
        if change == "order":
            assert info["hits"] == 2, info
        else:
            assert info["hits"] == 1 and info["guard_misses"].get("container", 0) >= 1, info


# -- the guards are load-bearing -------------------------------------------------------------


def test_static_parameter_guard_is_load_bearing(disable: Callable[[frozenset[str]], None]) -> None:
    """Without the static guards, a tuple whose int was changed to a neighbour's is
    answered with the old GraphDef; with them it is a miss."""
    def mutate(b: Bag) -> None:
        b.items[70] = (b.items[70][0], 71)

    assert_stale_without("static", disable, lambda: model("tuple", 100), mutate)


def test_bool_parameter_guard_is_load_bearing(disable: Callable[[frozenset[str]], None]) -> None:
    """A bool parameter (guarded by identity): its flip, stale without the guard."""
    def mutate(b: Bag) -> None:
        b.items[31] = {**b.items[31], "f": not b.items[31]["f"]}

    assert_stale_without("static", disable, lambda: model("dict", 100), mutate)


def test_int_is_not_bool_guard_is_load_bearing(disable: Callable[[frozenset[str]], None]) -> None:
    """``1`` -> ``True`` (equal, another type): stale without the static guard."""
    def mutate(b: Bag) -> None:
        b.items[1] = (b.items[1][0], True)

    assert_stale_without("static", disable, lambda: model("tuple", 100), mutate)


def test_dict_length_guard_is_load_bearing(disable: Callable[[frozenset[str]], None]) -> None:
    """The mixed loop over a dict reads its values at the compiled keys: an added key is
    seen by its length guard only (stale without the container guards)."""
    def mutate(b: Bag) -> None:
        b.items["k999999"] = {"w": _p(1), "i": 1}

    assert_stale_without("container", disable, lambda: model("dicts", 100), mutate)


# -- adversarial -------------------------------------------------------------------------------


class Odd(str):
    pass


def _adversarial(case: str) -> Bag:
    n = 100
    if case == "bool_vs_int":  # True and 1 at one place: two families, interleaved
        return Bag(items=[(_p(i), True if i % 2 else 1) for i in range(n)])
    if case == "zero_nan":  # floats are not parameters: -0.0, 0.0, NaN stay exact
        vals = [-0.0, 0.0, float("nan"), 1.0]
        return Bag(items=[(_p(i), vals[i % 4]) for i in range(n)])
    if case == "str_subclass":  # an Odd('a') is not a str: its own structure
        return Bag(items=[[_p(i), Odd("a") if i % 3 == 0 else "a"] for i in range(n)])
    if case == "ties_across":  # one Param in two occurrences: kept inline
        ps = [_p(i) for i in range(n // 2)]
        return Bag(items=[(ps[i // 2], i) for i in range(n)])
    if case == "ties_inside":  # [p, i, p]: one Param twice in each occurrence
        return Bag(items=[[p, i, p] for i, p in enumerate(map(_p, range(n)))])
    if case == "hostile_keys":
        return Bag(items={h + str(i): {h or "e": _p(i), "s": h + str(i)} for i, h in enumerate(HOSTILE * 10)})
    if case == "interleaved":  # families interleaved irregularly, nested ones too
        fams = ["tuple", "list", "dict", "nested", "tuple", "tuple"]
        return Bag(items=[item(fams[(i * 7) % 6], i) for i in range(n)])
    if case == "same_values":  # every occurrence equal: no parameter, constants
        return Bag(items=[(_p(i), 5, "x") for i in range(n)])
    if case == "pairs":  # two families of one parameter each, alternating: fns[idx[i]] and a value
        return Bag(items=[(_p(i), i) if i % 2 else [_p(i), "s" + str(i)] for i in range(n)])
    if case == "big_ints":
        return Bag(items=[(_p(i), 2 ** 70 + i, -i) for i in range(n)])
    raise AssertionError(case)


ADVERSARIAL = ["bool_vs_int", "zero_nan", "str_subclass", "ties_across", "ties_inside", "hostile_keys",
               "interleaved", "same_values", "big_ints", "pairs"]


@pytest.mark.parametrize("case", ADVERSARIAL)
def test_adversarial(impl: Any, case: str) -> None:
    """Hostile cases, through every path: equal to the walker, the compiled path answering
    (a NaN static never passes a guard: the walker answers it, counted as a miss)."""
    b = _adversarial(case)
    ref = sg.generic.flatten(b)
    got = impl.flatten(b)
    assert_same_flatten(got, ref)
    if impl.compiled:
        info = sg.cache_info()
        if case == "zero_nan":
            assert info["hits"] == 0 and info["guard_misses"].get("static", 0) == 1, info
        else:
            assert info["hits"] == 1, info
    new = jax.tree.map(lambda v: v + 1, got[1])
    impl.update(b, new)
    assert _values_same(sg.generic.flatten(b)[1], new)
    ref = sg.generic.flatten(b)
    before = sg.cache_info()["unflatten_hits"]
    twin = impl.unflatten(*ref)
    assert_same_flatten(sg.generic.flatten(twin), ref)
    if impl.compiled:
        assert sg.cache_info()["unflatten_hits"] == before + 1


@pytest.mark.parametrize("case", ["bool_vs_int", "str_subclass", "interleaved", "big_ints", "hostile_keys",
                                  "pairs"])
@pytest.mark.parametrize("outline_min", [64, 2])
def test_adversarial_swaps_are_misses(case: str, outline_min: int) -> None:
    """Each adversarial structure, two occurrences' statics swapped across families (True
    where 1 was, a str where an Odd was, ...): never answered as the old structure (unrolled
    at the default ``outline_min``, the families outlined at 2)."""
    saved = dispatch.CONFIG.outline_min
    sg.configure(outline_min=outline_min)
    try:
        _swap(case)
    finally:
        dispatch.CONFIG.outline_min = saved


def _swap(case: str) -> None:
    b = _adversarial(case)
    sg.flatten(b)
    sg.flatten(b)
    assert sg.cache_info()["hits"] == 1
    items = b.items
    if type(items) is dict:
        keys = sorted(items)
        a, c = items[keys[3]], items[keys[4]]
        a["s"], c["s"] = c["s"], a["s"]
    else:  # the first two items of one container type whose statics differ: swapped
        j, k = next((j, k) for j in range(len(items)) for k in range(j + 1, len(items))
                    if type(items[j]) is type(items[k]) and type(items[j]) in (list, tuple)
                    and len(items[j]) == len(items[k])
                    and [(type(x), x) for x in items[j][1:]] != [(type(x), x) for x in items[k][1:]])
        x, y = items[j], items[k]
        items[j], items[k] = type(x)([x[0], *y[1:]]), type(y)([y[0], *x[1:]])
    ref = sg.generic.flatten(b)
    assert_same_flatten(sg.flatten(b), ref)
    assert sg.cache_info()["guard_misses"].get("static", 0) >= 1


# -- hypothesis: random lists of such containers --------------------------------------------


_VALUES = hst.one_of(hst.integers(-3, 3), hst.booleans(), hst.sampled_from(["a", "b", *HOSTILE[:4]]),
                     hst.sampled_from([0.0, -0.0, 1.0]))
_FAMS = ["tuple", "list", "dict", "nested", "holder"]


def _random_item(fam: str, i: int, v: Any) -> Any:
    if fam == "tuple":
        return (_p(i), v)
    if fam == "list":
        return [_p(i), v, "k"]
    if fam == "dict":
        return {"w": _p(i), "v": v}
    if fam == "nested":
        return [(_p(i), v), v]
    h = Holder(i)
    h.t = (h.t[0], v)
    return h


@hypothesis.settings(max_examples=40, deadline=None,
                     suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])
@hypothesis.given(spec=hst.lists(hst.tuples(hst.sampled_from(_FAMS), _VALUES), min_size=2, max_size=40),
                  data=hst.data())
def test_random_lists(spec: list[tuple[str, Any]], data: Any, outlined: None) -> None:
    """Random lists of such containers (random families and statics, every repeated shape
    outlined): equal to the walker, the compiled code answering; then one item's static
    replaced by a random value: the walker's answer, a hit only where nothing changed."""
    sg.clear_cache()
    b = Bag(items=[_random_item(f, i, v) for i, (f, v) in enumerate(spec)])
    ref = sg.generic.flatten(b)
    sg.flatten(b)
    got = sg.flatten(b)
    assert_same_flatten(got, ref)
    assert sg.cache_info()["hits"] == 1
    new = jax.tree.map(lambda v: v + 1, got[1])
    sg.update(b, new)
    assert _values_same(sg.generic.flatten(b)[1], new)
    at = data.draw(hst.integers(0, len(spec) - 1), label="at")
    v = data.draw(_VALUES, label="value")
    b.items[at] = _random_item(spec[at][0], 1000, v)
    old = ref[0]
    ref = sg.generic.flatten(b)
    hits = sg.cache_info()["hits"]
    assert_same_flatten(sg.flatten(b), ref)
    if ref[0] == old:
        assert sg.cache_info()["hits"] == hits + 1
    else:
        assert sg.cache_info()["hits"] == hits
    twin = sg.unflatten(*ref)
    assert_same_flatten(sg.generic.flatten(sg.unflatten(*ref)), ref)
    assert_same_flatten(sg.generic.flatten(twin), ref)


#: one occurrence holding a Param and another State: a split by class picks part of each
PARTS: dict[str, Callable[[int], Any]] = {
    "tuple": lambda i: (_p(i), sg.State(np.float32(i)), i),
    "pair": lambda i: (_p(i), sg.State(np.float32(i))),
    "same-static": lambda i: (_p(i), sg.State(np.float32(i)), 0),
    "list": lambda i: [_p(i), sg.State(np.float32(i)), "n_" + str(i)],
    "dict": lambda i: {"w": _p(i), "s": sg.State(np.float32(i)), "i": i},
}


@pytest.mark.parametrize("outline_min", [64, 2])
@pytest.mark.parametrize("kind", list(PARTS))
def test_a_partial_update_of_a_family_loop_is_compiled(kind: str, outline_min: int) -> None:
    """``sg.update(m, params)`` with one part of a split (the optimizer's step) of a list of
    such containers: compiled, and exactly the walker's writes. (A list of one family is
    written by one loop calling its shape's function per item; the partial update kept that
    loop but never rendered the functions: a NameError after the Params were written.)"""
    sg.configure(outline_min=outline_min)
    try:
        outcome = {}
        for name, update in (("ref", sg.generic.update), ("sg", sg.update)):
            sg.clear_cache()
            m = Bag(items=[PARTS[kind](i) for i in range(100)])
            sg.flatten(m)
            sg.flatten(m)
            _, params, rest = sg.split(m, sg.Param, ...)
            new = jax.tree.map(lambda v: v + 1, params)
            before = sg.cache_info()["update_hits"]
            update(m, new)
            hits = sg.cache_info()["update_hits"] - before
            now = sg.generic.flatten(m)[1]
            assert all(now[p] is v for p, v in new.items())
            assert all(now[p] is v for p, v in rest.items())  # (the other states untouched)
            outcome[name] = (hits, [float(v) for v in now.values()])
        assert outcome["ref"][0] == 0 and outcome["sg"][0] == 1
        assert outcome["sg"][1] == outcome["ref"][1]
    finally:
        sg.configure(outline_min=64)
        sg.clear_cache()
