"""Hardening regressions (issue 10): objects that the fast path once answered wrongly,
kept alive, or accepted silently. Each runs through the reference walker and through
the specialized path, and demands the reference's answer.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

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


def test_deep_chain_comments_and_explain_stay_short(impl) -> None:
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
