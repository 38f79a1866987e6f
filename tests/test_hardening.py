"""Hardening regressions (issue 10): objects that the fast path once answered wrongly,
kept alive, or accepted silently. Each runs through the reference walker and through
the specialized path, and demands the reference's answer.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

import numpy as np
from conftest import assert_same_flatten

import specgraph as sg


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
