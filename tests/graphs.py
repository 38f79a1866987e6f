"""Test object graphs shared by the test modules (module level, so they pickle)."""

from __future__ import annotations

import collections
import dataclasses
from typing import Any

import jax
import numpy as np

import specgraph as sg


class Box(sg.Node):
    """A plain graph node: keyword arguments become attributes."""

    def __init__(self, **attrs: Any) -> None:
        for k, v in attrs.items():
            setattr(self, k, v)


class Linear(sg.Node):
    """A node whose ``__init__`` needs arguments (unflatten must not call it)."""

    def __init__(self, din: int, dout: int) -> None:
        self.w = sg.Param(np.ones((din, dout), np.float32))
        self.b = sg.Param(np.zeros((dout,), np.float32))
        self.din = din
        self.dout = dout


class Hidden(sg.Node):
    """A node with an invisible attribute."""

    graph_invisible_attrs = ("cache",)

    def __init__(self) -> None:
        self.p = sg.Param(1.0)
        self.cache = {"anything": object()}


class BatchStat(sg.State):
    """A user State subclass."""


class Counter(sg.State):
    """A user State subclass with an ``__init__`` that needs an extra argument."""

    def __init__(self, value: Any, required: str) -> None:
        super().__init__(value, required=required)


# -- a custom mutable node type (BrainState protocol) ---------------------------


class Bag:
    """A dict-like mutable graph node that is not a ``specgraph.Node``."""

    def __init__(self, tag: str = "bag", **items: Any) -> None:
        self.tag = tag
        self.data: dict[Any, Any] = dict(items)

    def __getitem__(self, key: Any) -> Any:
        return self.data[key]

    def __setitem__(self, key: Any, value: Any) -> None:
        self.data[key] = value


def _bag_flatten(bag: Bag) -> tuple[list[tuple[Any, Any]], str]:
    return sorted(bag.data.items()), bag.tag


def _bag_set_key(bag: Bag, key: Any, value: Any) -> None:
    bag.data[key] = value


def _bag_pop_key(bag: Bag, key: Any) -> Any:
    return bag.data.pop(key)


def _bag_create_empty(tag: str) -> Bag:
    return Bag(tag)


def _bag_clear(bag: Bag) -> None:
    bag.data.clear()


sg.register_graph_node_type(Bag, _bag_flatten, _bag_set_key, _bag_pop_key, _bag_create_empty, _bag_clear)


# -- JAX pytrees ------------------------------------------------------------------

Pair = collections.namedtuple("Pair", ["first", "second"])


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Cell:
    """A registered dataclass pytree (identity hashable: eq=True sets __hash__ to None)."""

    x: Any
    y: Any
    label: str = dataclasses.field(default="cell", metadata={"static": True})


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class FrozenCell:
    """A registered frozen dataclass: defines its own value hash."""

    x: Any
    y: Any


class Holder:
    """A registered pytree class with identity hashing (no ``__eq__``/``__hash__``)."""

    def __init__(self, *items: Any) -> None:
        self.items = list(items)


jax.tree_util.register_pytree_node(Holder, lambda h: (tuple(h.items), None), lambda _, ch: Holder(*ch))


class ValueHolder:
    """A registered pytree class with a value ``__eq__`` and ``__hash__``."""

    def __init__(self, *items: Any) -> None:
        self.items = tuple(items)

    def __eq__(self, other: object) -> bool:
        return type(other) is ValueHolder and other.items == self.items

    def __hash__(self) -> int:
        return hash(self.items)


jax.tree_util.register_pytree_node(
    ValueHolder, lambda h: (h.items, None), lambda _, ch: ValueHolder(*ch)
)


class Unhashable:
    """A static whose ``__hash__`` is ``None``."""

    def __eq__(self, other: object) -> bool:
        return type(other) is Unhashable

    __hash__ = None  # type: ignore[assignment]


# -- builders -----------------------------------------------------------------


def mlp(depth: int = 3, width: int = 4) -> Box:
    return Box(layers=[Linear(width, width) for _ in range(depth)], act="relu", n=depth)


def tied() -> Box:
    """Two nodes sharing one Param, a shared child node and a cycle to the root."""
    w = sg.Param(np.arange(4.0, dtype=np.float32))
    enc = Box(w=w, b=sg.Param(np.float32(0)))
    dec = Box(w=w, b=sg.Param(np.float32(1)))
    shared = Box(scale=BatchStat(np.float32(2)))
    root = Box(enc=enc, dec=dec, s1=shared, s2=shared)
    shared.parent = root
    return root


def rich() -> Box:
    """Every edge kind: nodes, states, arrays in containers, pytrees, statics, custom nodes."""
    shared = sg.Param(np.ones(3, np.float32))
    child = Box(p=sg.Param(np.float32(5)), stat=BatchStat(np.zeros(2, np.float32)))
    root = Box(
        child=child,
        again=child,
        shared_a=shared,
        lst=[shared, np.arange(2), 3, "x", None, (np.ones(1), 7)],
        dct={"k": sg.State(1.5), "arr": np.zeros(2), "nested": {"q": [np.ones(2)]}},
        tup=(1, 2.0, "three"),
        pair=Pair(np.ones(2), 9),
        cell=Cell(x=sg.Param(np.ones(1)), y=np.zeros(1)),
        bag=Bag("mybag", u=sg.Param(np.float32(3)), v=np.ones(2), w=child),
        fn=len,
        meta=sg.Param(np.float32(0), tag="t", group=2),
    )
    child.up = root
    return root


def chain(n: int) -> Box:
    root = cur = Box()
    for i in range(n):
        cur.p = sg.Param(np.float32(i))
        nxt = Box()
        cur.child = nxt
        cur = nxt
    return root


def reachable(root: Any) -> list[Any]:
    """Every node, State and mutable container reachable from ``root`` (iterative)."""
    seen: dict[int, Any] = {}
    stack = [root]
    while stack:
        x = stack.pop()
        if id(x) in seen:
            continue
        if isinstance(x, sg.Node):
            seen[id(x)] = x
            stack.extend(vars(x).values())
        elif isinstance(x, Bag):
            seen[id(x)] = x
            stack.extend(x.data.values())
        elif isinstance(x, sg.State):
            seen[id(x)] = x
        elif isinstance(x, list | tuple):
            seen[id(x)] = x
            stack.extend(x)
        elif isinstance(x, dict):
            seen[id(x)] = x
            stack.extend(x.values())
        elif isinstance(x, Cell | Holder):
            seen[id(x)] = x
            stack.extend(jax.tree_util.tree_flatten(x, is_leaf=lambda y, x=x: y is not x)[0])
    return list(seen.values())


def snapshot(root: Any) -> list[tuple[Any, Any]]:
    """A shallow copy of the content of every reachable mutable object."""
    out = []
    for x in reachable(root):
        if isinstance(x, sg.Node):
            out.append((x, dict(vars(x))))
        elif isinstance(x, Bag):
            out.append((x, (x.tag, dict(x.data))))
        elif isinstance(x, sg.State):
            out.append((x, (x.value, x._metadata)))
        elif isinstance(x, list):
            out.append((x, list(x)))
        elif isinstance(x, dict):
            out.append((x, dict(x)))
        elif isinstance(x, Cell):
            out.append((x, (x.x, x.y, x.label)))
    return out


def assert_unchanged(snap: list[tuple[Any, Any]]) -> None:
    """Every object still holds the very same contents (by identity) as in ``snap``."""
    for obj, before in snap:
        now = snapshot_one(obj)
        assert _same(now, before), f"{obj!r} changed: {before!r} -> {now!r}"


def snapshot_one(x: Any) -> Any:
    if isinstance(x, sg.Node):
        return dict(vars(x))
    if isinstance(x, Bag):
        return (x.tag, dict(x.data))
    if isinstance(x, sg.State):
        return (x.value, x._metadata)
    if isinstance(x, list):
        return list(x)
    if isinstance(x, dict):
        return dict(x)
    if isinstance(x, Cell):
        return (x.x, x.y, x.label)
    raise AssertionError(type(x))


def _same(a: Any, b: Any) -> bool:
    """Structural identity: containers compared item by item with ``is``."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(a[k] is b[k] for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(
            (x is y) or (isinstance(x, dict | tuple) and _same(x, y)) for x, y in zip(a, b, strict=True)
        )
    return a is b
