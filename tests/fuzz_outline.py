"""A differential fuzz of issue 12's outlined code (codegen/shapes.py, shared.py).

Random graphs repeat a few shapes many times: ``Lin`` attributes (one outlined function,
called per occurrence), lists and tuples of ``Lin`` and of blocks (loops), dicts of blocks
under hostile keys, lists of lists, chains of nested links (a loop over the links; up to
thousands deep), chains of nested callback layers (a loop calling their registered flatten,
checked to call it as the reference does, in its order), with statics that are equal but
distinguishable (``1`` / ``1.0`` / ``True``, ``0.0`` / ``-0.0``, a ``str`` subclass, an
``IntEnum``, a namedtuple against a tuple), statics only the very object is, and now and
then hostile ones (NaN, an ``__eq__`` that lies or raises, a class whose metaclass claims
to be ``int``). ``outline_min`` is small (2 to 4, random per case), so the repeated shapes
are outlined.

Between calls one occurrence changes: a State replaced (same type, another type, other
metadata), a static of one occurrence (by an equal-but-distinguishable value), two list
items of different shapes swapped, a list made non-homogeneous, a weight tied between two
layers, a node shared by two blocks, a cycle, a chain link's class, a registration
(registry epoch), a list grown or shrunk by one; and now and then a link of the callback
chain too (its answer, a weight tied with another link's, the link met again elsewhere).

Every call is compared with the reference walker (``specgraph.generic``, or the public
path with the specializer off for the collect-based operations):

* ``flatten``: an equal GraphDef (hash, paths), the very value objects, statics and
  metadata of the same type and sign (the same objects as the structure's first flatten);
* ``unflatten``: the rebuilt graph flattens like the reference's rebuild, and every
  static, key and metadata object in it is the one of the GraphDef given, also for a
  twin GraphDef (equal, with equal but distinct static objects) served by code compiled
  from the first; the callbacks' ``create_empty``/``set_key`` calls (with what each
  ``set_key`` sees of its child: callback layers hold a ``Lin`` and a callback layer) are
  the reference's, in its order (``unflatten_cb_*``: the calls of structures holding them,
  outlined in two phases);
* ``update``: every value written where the reference writes it; a partial update (one
  part of a split) too; an update with an unknown path fails like the reference's and
  writes nothing;
* ``states`` / ``nodes`` / ``iter_leaf`` / ``split`` (filtered too): the same paths in the
  same order and the very same objects.

Pairs of structures share shapes (an MLP of n layers after one of n + 1, the same shape
with an identity static or an equal-but-distinguishable static) to attack the unit table
shared across structures: a result never carries another structure's statics.

The tally counts the calls served by generated code and, among them, by generated code
with outlined functions, loops or chains (``*_outlined``): a run where everything fell
back to the walker proves nothing. ``tests/test_fuzz_outline.py`` runs a short fuzz;
``python tests/fuzz_outline.py --cases N --seed S [--deep]`` a longer one.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import functools
import gc
import math
import random
import re
import sys
import weakref
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import _fuzzkit
import jax
import numpy as np
from _fuzzkit import Tally

import specgraph as sg
from specgraph._ir import ArrayConstant, NodeSpec, PytreeEdge, StateSpec, all_edges, iter_statics
from specgraph._weakstatic import WeakStatic
from specgraph.runtime import dispatch
from specgraph.runtime.cache import CONFIG

NAN = float("nan")


# -- what the graphs are made of ----------------------------------------------------------------


class Lin(sg.Node):
    def __init__(self, seed: float, act: Any = "relu", meta: dict[str, Any] | None = None) -> None:
        self.w = sg.Param(np.full((2,), seed, np.float32), **(meta or {}))
        self.b = sg.Param(np.full((1,), seed, np.float32))
        self.act = act

    def score(self, x: Any) -> Any:
        return x


class HLin(sg.Node):
    """Attribute names that are also names of generated code's locals and placeholders."""

    def __init__(self, seed: float, act: Any = "relu") -> None:
        vars(self).update({"attr1": sg.Param(np.full((1,), seed, np.float32)), "attr0": act, "S": "s",
                           "vals": sg.State(np.ones(1, np.float32)), "at": None, "o1": 2.5, "D": [],
                           "root": {"x'y": sg.Param(np.zeros(1, np.float32)), "at": 3}})


class Blk(sg.Node):
    def __init__(self, seed: float, act: Any = "relu", heads: int = 2) -> None:
        self.q = Lin(seed, act)
        self.k = Lin(seed + 0.5, act)
        self.scale = sg.State(np.full((1,), seed, np.float32), kind="ln")
        self.heads = [Lin(seed + 0.25 * h, act) for h in range(heads)]
        self.e = Empty()


class Empty(sg.Node):
    """A node without states (no state can witness it: shared, it must be seen anyway)."""

    def __init__(self, tag: Any = "e") -> None:
        self.tag = tag


class Link(sg.Node):
    def __init__(self, child: Any, seed: float, tag: Any = "t") -> None:
        self.child = child
        self.w = sg.Param(np.full((1,), seed, np.float32))
        self.tag = tag


class CbLin:
    """A layer registered with callbacks (``register_graph_node_type``): its registered
    flatten is user code, called per occurrence by outlined code too. Its children are the
    attributes not starting with ``_``; ``_meta`` is its metadata, ``_rev`` turns its key
    order around (the callback's answer changes for one occurrence)."""

    def __init__(self, seed: float, act: Any = "relu") -> None:
        self.w = sg.Param(np.full((2,), seed, np.float32))
        self.b = sg.Param(np.full((1,), seed, np.float32))
        self.act = act
        self._meta: Any = ("cb", 1)
        self._rev = False


#: every call of the registered flatten (the node's id), in order: a flatten served by
#: generated code must call it as the reference does (see check_flatten)
FLAT_LOG: list[int] = []


def _cb_flatten(x: CbLin) -> tuple[list[tuple[str, Any]], Any]:
    FLAT_LOG.append(id(x))
    d = vars(x)
    keys = sorted((k for k in d if not k.startswith("_")), reverse=bool(d.get("_rev")))
    return [(k, d[k]) for k in keys], (d.get("_meta"), bool(d.get("_rev")))  # (a rebuild keeps both)


#: The user calls of the callbacks (create_empty, set_key), in order, with what each set_key
#: sees of its child now (objects numbered by first appearance): an unflatten's must be the
#: reference's (see check_unflatten).
CB_LOG: list[tuple[Any, ...]] = []
_CB_NUM: dict[int, int] = {}
_CB_ALIVE: list[Any] = []


def _cb_num(x: Any) -> int:
    n = _CB_NUM.get(id(x))
    if n is None:
        n = _CB_NUM[id(x)] = len(_CB_NUM)
        _CB_ALIVE.append(x)
    return n


def _cb_sees(v: Any) -> Any:
    """What user code given ``v`` sees of it now: a node's visible names so far, ..."""
    if type(v) is CbLin or isinstance(v, sg.Node):
        return (_cb_num(v), type(v).__name__, tuple(sorted(k for k in vars(v) if not k.startswith("_"))))
    if isinstance(v, sg.State):
        return (_cb_num(v), type(v).__name__)
    if type(v) is list or type(v) is tuple:
        return (type(v).__name__, tuple(_cb_sees(x) for x in v))
    if type(v) is dict:
        return ("dict", tuple(_cb_sees(x) for x in v.values()))
    return type(v).__name__


def cb_logged(fn: Callable[[], Any]) -> tuple[Any, list[tuple[Any, ...]]]:
    """``fn()`` and the callbacks' log of it."""
    CB_LOG.clear()
    _CB_NUM.clear()
    _CB_ALIVE.clear()
    try:
        return fn(), list(CB_LOG)
    finally:
        _CB_ALIVE.clear()


def _cb_empty(meta: Any) -> CbLin:
    x = object.__new__(CbLin)
    x._meta, x._rev = meta
    CB_LOG.append(("create", _cb_num(x)))
    return x


def _cb_set_key(x: CbLin, k: str, v: Any) -> None:
    CB_LOG.append(("set", _cb_num(x), k, _cb_sees(v)))
    vars(x)[k] = v


def _cb_clear(x: CbLin) -> None:
    for k in [k for k in vars(x) if not k.startswith("_")]:
        del vars(x)[k]


sg.register_graph_node_type(CbLin, _cb_flatten, _cb_set_key, lambda x, k: vars(x).pop(k), _cb_empty,
                            _cb_clear)


class ALin(sg.Node):
    """A layer of bare arrays (no State): an attribute, in a list, in a dict."""

    def __init__(self, seed: float) -> None:
        self.w = np.full((2,), seed, np.float32)
        self.b = [np.full((1,), seed, np.float32), 2]
        self.d = {"g": np.full((1,), seed, np.float32)}


class Link2(sg.Node):
    """Another class with Link's attributes (a chain link's class changed)."""


class Box(sg.Node):
    def __init__(self, **attrs: Any) -> None:
        vars(self).update(attrs)


class Buffer(sg.State):
    pass


class EqState(sg.State):
    """A state class whose objects all claim to be one (a distinct set of them lies)."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, sg.State)

    def __hash__(self) -> int:
        return 0


def _counting_setattr(self: Any, name: str, value: Any) -> None:
    object.__setattr__(self, name, value)


def _lying_getattribute(self: Any, name: str) -> Any:
    return object.__getattribute__(self, name)


#: (class, name, value): hooks a class gains and loses between calls
HOOKS: list[tuple[str, str, Any]] = [
    ("Lin", "__setattr__", _counting_setattr), ("Lin", "__getattribute__", _lying_getattribute),
    ("Lin", "w", None), ("Link", "tag", "class-level"), ("Blk", "__setattr__", _counting_setattr),
    ("HLin", "attr0", 0), ("Buffer", "__hash__", lambda self: 0), ("Buffer", "__eq__", lambda s, o: True),
    ("Param", "__hash__", lambda self: 1), ("Lin", "graph_invisible_attrs", ("act",)),
    ("Link", "graph_invisible_attrs", ("e",)), ("Empty", "graph_invisible_attrs", ("tag",)),
    ("Blk", "graph_invisible_attrs", ("heads",)),
]


class Tag(str):
    """A str subclass: equal to its str, hashes alike, a different structure."""


class Color(enum.IntEnum):
    ONE = 1


class Pair(NamedTuple):
    a: Any
    b: Any


class Marker:
    """A static only the very object is (identity hash)."""


class LyingEq:
    """Equal to everything, one hash: a fast path that trusts ``is`` would be fooled."""

    def __eq__(self, other: object) -> bool:
        return True

    def __hash__(self) -> int:
        return 7


class RaisingEq:
    """Hashable, but comparing it raises."""

    def __eq__(self, other: object) -> bool:
        if other is self:
            return True
        raise RuntimeError("RaisingEq.__eq__")

    def __hash__(self) -> int:
        return 11


class LieMeta(type):
    """A metaclass that says its classes are ``int``."""

    def __eq__(cls, other: object) -> bool:
        return other is int or type.__eq__(cls, other)

    def __hash__(cls) -> int:
        return hash(int)


class Liar(metaclass=LieMeta):
    def __eq__(self, other: object) -> bool:
        return other == 1

    def __hash__(self) -> int:
        return hash(1)


def _fn(x: Any) -> Any:
    return x


MARKERS = [Marker(), Marker()]
# Equal (or never equal) but distinguishable: the statics rule must keep them apart.
SAME_VALUES: list[list[Any]] = [
    [1, 1.0, True, Color.ONE], [0, 0.0, -0.0, False], [1000, 1000.0], [(1,), (1.0,), (True,)],
    [(0.0,), (-0.0,)], ["relu", Tag("relu")], [(1, 2), Pair(1, 2)], [None], MARKERS, [_fn],
    ["gelu", "x'); import os #"],
]
PLAIN = [v for group in SAME_VALUES for v in group]
HOSTILE_KEYS = ["a", "x'y", 'q"; import os #', "\n", "{{ x }}", "%s", "D", "root", "C0", "S", "vals",
                "attr0", "é", ""]
ATTR_NAMES = ["l", "D", "root", "S", "at", "vals", "attr0", "attr1", "C0", "x1", "o1", "NEW", "EPOCH"]


def fresh(v: Any) -> Any:
    """An equal, distinguishable-alike value that is another object where Python allows."""
    if type(v) is float:
        return v * 1.0  # a new float object (keeps -0.0 and NaN)
    if type(v) is str and len(v) > 1:
        return "".join(list(v))
    if type(v) is Tag:
        return Tag("".join(list(v)))
    if type(v) is int and not -5 <= v <= 256:
        return int(str(v))
    if type(v) is tuple and v:
        return tuple(fresh(i) for i in v)
    if type(v) is Pair:
        return Pair(fresh(v.a), fresh(v.b))
    return v


def variant(rng: random.Random, v: Any) -> Any:
    """Another value equal to ``v`` (or the same, or a new copy), else any plain value."""
    for group in SAME_VALUES:
        if any(v is g or (type(v) is type(g) and v == g) for g in group):
            return fresh(rng.choice(group))
    return fresh(rng.choice(PLAIN))


SCALAR = [v for v in PLAIN if not isinstance(v, tuple)]


def plain(rng: random.Random) -> Any:
    """A plain static; rarely a tuple (a tuple static anywhere keeps a whole structure
    unrolled: its ``__eq__`` is not trusted to run no user code)."""
    return fresh(rng.choice(PLAIN if rng.random() < 0.1 else SCALAR))


RAISED = [False]  # a RaisingEq was used in this case (an exception in generated code is then fair)


def hostile(rng: random.Random) -> Any:
    x = rng.choice([float("nan"), LyingEq(), RaisingEq(), Liar(), Marker()])
    RAISED[0] = RAISED[0] or type(x) is RaisingEq
    return x


def chain(n: int, rng: random.Random, tag: Any) -> Link:
    """``n`` nested links; in some chains each link also holds a Lin (outlined code in the
    chain loop's body)."""
    with_lin = rng.random() < 0.4
    c: Any = None
    for i in range(n):
        c = Link(c, float(i), tag)
        c.e = Empty()
        if with_lin:
            c.lin = Lin(float(i), "relu")
    return c


def cb_chain(n: int, rng: random.Random) -> CbLin:
    """``n`` nested callback layers, each the next's under one key: before the layer's
    other keys (``a_next``: all of them read after the rest of the chain by the
    reference), among them (``next``: ``w`` after it), or last (``zn``); in some chains
    each link also holds a callback layer before its next one (``an``, before ``b``)."""
    key = rng.choice(["a_next", "next", "zn"])
    inner = rng.random() < 0.3
    c = CbLin(-1.0)
    for i in range(n):
        x = CbLin(float(i))
        vars(x)[key] = c
        if inner:
            x.an = CbLin(i + 0.5)
        c = x
    return c


def cb_links(m: Box) -> list[CbLin]:
    out = []
    c = vars(m).get("cbchain")
    seen = set()
    while type(c) is CbLin and id(c) not in seen:
        seen.add(id(c))
        out.append(c)
        c = next((v for k, v in sorted(vars(c).items()) if type(v) is CbLin and k != "an"), None)
    return out


def _side(rng: random.Random) -> random.Random:
    """A generator of its own, seeded from ``rng``'s state without drawing from it (the
    callback chains leave the rest of a case as it was). (Seeded from the state's ints
    only: the state tuple holds ``None``, whose hash is its address before Python 3.12,
    which made the cases differ from one process to the next.)"""
    return random.Random(hash(rng.getstate()[1]))


def build(rng: random.Random, deep: bool) -> Box:
    act = plain(rng)
    m = Box()
    names = rng.sample(ATTR_NAMES, rng.randint(2, 6))
    for i, name in enumerate(names):
        vars(m)[name] = Lin(float(i), act if rng.random() < 0.8 else plain(rng))
    m.layers = [Lin(float(i), act) for i in range(rng.randint(2, 9))]
    blocks = [Blk(float(i), act, rng.randint(1, 3)) for i in range(rng.randint(2, 4))]
    m.blocks = blocks if rng.random() < 0.6 else tuple(blocks)
    keys = rng.sample(HOSTILE_KEYS, rng.randint(2, 4))
    m.d = {k: Blk(float(i), act, 2) for i, k in enumerate(keys)}
    m.nested = [[Lin(float(i + j), act) for j in range(rng.randint(2, 3))] for i in range(rng.randint(2, 3))]
    depth = rng.choice([2, 3, 5, 17, 60, 200] + ([3000, 10000] if deep else [1200]))
    m.chain = chain(depth, rng, fresh(rng.choice(["t", Tag("tt"), 3.5, -0.0, 7])))
    m.h = [HLin(float(i), act) for i in range(rng.randint(2, 4))]
    int_keys = rng.sample([-1000, -3, 0, 5, 1000, 1001, 10**20], rng.randint(2, 4))
    m.ints = {i: Lin(float(i % 7), act) for i in int_keys}
    m.deep = [Lin(0.5, act)]
    for _ in range(rng.choice([1, 2, 30, 400])):  # a list in a list in a list ...
        m.deep = [m.deep, Lin(0.25, act)]
    m.nest = []  # a chain of nested containers holding states (a loop over the links)
    for i in range(rng.choice([1, 2, 5, 50, 300] + ([10000] if deep else []))):
        m.nest = [m.nest, sg.Param(np.full((1,), i, np.float32))] if rng.random() < 0.97 or i < 2 \
            else (m.nest, sg.Param(np.ones(1, np.float32)))  # (now and then a tuple: two chains)
    m.arr = np.ones(1, np.float32)
    m.k = plain(rng)
    if rng.random() < 0.5:  # callback layers: a list of them (a loop), attributes (calls)
        m.cbs = [CbLin(float(i), act) for i in range(rng.randint(2, 6))]
        m.cb0, m.cb1 = CbLin(1.5, act), CbLin(2.5, act)
        if rng.random() < 0.7:  # callback layers holding a Lin and a callback layer: each
            # set_key sees its child made, not filled yet (the unflatten's two phases)
            m.cbnest = [CbLin(float(i), act) for i in range(rng.randint(2, 4))]
            for i, x in enumerate(m.cbnest):
                x.sub, x.inner = Lin(float(i), act), CbLin(i + 0.5, act)
    if rng.random() < 0.3:  # one callback node elsewhere: the rest stays outlined
        m.cb = CbLin(9.0, act)
    if rng.random() < 0.5:  # layers of bare arrays: a list of them, attributes
        m.alayers = [ALin(float(i)) for i in range(rng.randint(2, 6))]
        m.aa, m.ab = ALin(1.5), ALin(2.5)
        if rng.random() < 0.3:
            cb = CbLin(3.0, act)
            cb.arr = np.ones(2, np.float32)  # held by a callback node: written back with set_key
            m.cbs2 = [cb, CbLin(4.0, act)]
            m.cbs2[1].arr = np.zeros(2, np.float32)
    if rng.random() < 0.3:
        m.meta = Lin(7.0, act, {"kind": plain(rng)})
    side = _side(rng)
    if side.random() < 0.7:  # a chain of nested callback layers (a loop calling the flatten)
        m.cbchain = cb_chain(side.choice([2, 3, 17, 60, 200] + ([3000] if deep else [1200])), side)
    return m


# -- mutations, one occurrence at a time ----------------------------------------------------------


def lins(m: Box) -> list[Lin]:
    """Every Lin reachable by the model's plain structure (not through ties)."""
    out = [v for v in dict.values(vars(m)) if type(v) is Lin]
    out += [x for x in m.layers if type(x) is Lin]
    for b in (*m.blocks, *m.d.values()):
        if type(b) is Blk:
            out += [x for x in (b.q, b.k, *b.heads) if type(x) is Lin]
    out += [x for row in m.nested for x in row if type(x) is Lin]
    out += [x for x in m.ints.values() if type(x) is Lin]
    return out


def cblins(m: Box) -> list[CbLin]:
    d = vars(m)
    out = [x for x in d.get("cbs", []) if type(x) is CbLin]
    for x in d.get("cbnest", []):
        if type(x) is CbLin:
            out.append(x)
            if type(vars(x).get("inner")) is CbLin:
                out.append(x.inner)
    return out + [d[k] for k in ("cb0", "cb1", "cb") if type(d.get(k)) is CbLin]


def mutate_cb(rng: random.Random, x: CbLin) -> None:
    """One callback layer changed: its answer (a key, the count, the order, the metadata)
    or what it holds."""
    how = rng.choice(["rename", "extra", "meta", "rev", "state", "state_type", "static"])
    d = vars(x)
    if how == "rename" and "w" in d:
        d["w2"] = d.pop("w")
    elif how == "extra":
        d[rng.choice(["a", "zz", "w3"])] = rng.choice([1, sg.Param(np.ones(1, np.float32))])
    elif how == "meta":
        x._meta = rng.choice([("cb", 1), ("cb", 1.0), ("cb", True), ("cb", 2), None, MARKERS[0]])
    elif how == "rev":
        x._rev = not x._rev
    elif how == "state" and isinstance(d.get("w"), sg.State):
        x.w = sg.Param(np.asarray(x.w.value) + 1)
    elif how == "state_type" and isinstance(d.get("b"), sg.State):
        x.b = Buffer(x.b.value) if type(x.b) is sg.Param else sg.Param(x.b.value)
    elif how == "static":
        x.act = variant(rng, d.get("act"))


def links(m: Box) -> list[Any]:
    out = []
    c = vars(m).get("chain")
    seen = set()
    while isinstance(c, Link | Link2) and id(c) not in seen:
        seen.add(id(c))
        out.append(c)
        c = vars(c).get("child")
    return out


class Fresh:
    """A class registered as a graph node type (a registry epoch bump)."""


EPOCH_TYPES: list[type] = []


def mutate(rng: random.Random, m: Box) -> str:
    what = rng.choice(["state", "state_type", "meta", "static", "static_hostile", "swap", "nonhomog",
                       "tie", "share_node", "cycle", "chain_class", "chain_static", "epoch", "grow",
                       "shrink", "nested_grow", "dict_key", "none", "restore", "reaching", "eq_state",
                       "class_hook", "dup_item", "reconfigure", "chains", "share_empty",
                       "dict_order", "heads", "dict_type", "cb", "cb", "cb_share", "nest", "arr", "arr"])
    ls = lins(m)
    occ = rng.choice(ls) if ls else None
    if what == "state" and occ is not None:
        occ.w = sg.Param(np.asarray(occ.w.value) + 1, **occ.w.metadata)
    elif what == "state_type" and occ is not None:
        occ.b = Buffer(occ.b.value) if type(occ.b) is sg.Param else sg.Param(occ.b.value)
    elif what == "meta" and occ is not None:
        old = occ.w.metadata.get("kind", 0.0)
        occ.w = sg.Param(occ.w.value, kind=variant(rng, old))
    elif what == "static" and occ is not None:
        occ.act = variant(rng, occ.act)
    elif what == "static_hostile" and occ is not None and rng.random() < 0.5:
        occ.act = hostile(rng)
    elif what == "swap":
        seq = rng.choice([m.layers, m.nested])
        if len(seq) >= 2:
            i, j = rng.sample(range(len(seq)), 2)
            seq[i], seq[j] = seq[j], seq[i]
            if seq is m.layers and rng.random() < 0.5:  # items of different shapes
                seq[i] = Lin(9.0, plain(rng), {"kind": 1})
    elif what == "nonhomog":
        if m.layers:
            i = rng.randrange(len(m.layers))
            m.layers[i] = rng.choice([Blk(3.0), Lin(1.0, hostile(rng)), Box(w=sg.Param(np.ones(2))), 5])
    elif what == "tie" and len(ls) >= 2:
        a, b = rng.sample(ls, 2)
        a.w = b.w
    elif what == "share_node":
        bs = [b for b in (*m.blocks, *m.d.values()) if type(b) is Blk]
        if len(bs) >= 2:
            a, b = rng.sample(bs, 2)
            a.q = b.k
    elif what == "cycle":
        target = rng.choice([m, *(ls[:1]), *links(m)[:2]])
        if occ is not None:
            occ.back = target
    elif what == "chain_class":
        ch = links(m)
        if ch:
            link = rng.choice(ch)
            link.__class__ = Link2 if type(link) is Link else Link
    elif what == "chain_static":
        ch = links(m)
        if ch:
            link = rng.choice(ch)
            link.tag = variant(rng, link.tag)
    elif what == "epoch" and len(EPOCH_TYPES) < 64:
        t = type(f"Fresh{len(EPOCH_TYPES)}", (Fresh,), {})
        EPOCH_TYPES.append(t)
        sg.register_graph_node_type(t, lambda x: ([], None), lambda x, k, v: None, lambda x, k: None,
                                    lambda meta: t(), lambda x: None)
    elif what == "grow":
        seq = m.layers
        seq.insert(rng.randrange(len(seq) + 1), Lin(float(len(seq)), seq[0].act if seq and type(seq[0]) is Lin
                                                    else plain(rng)))
    elif what == "shrink" and m.layers:
        m.layers.pop(rng.randrange(len(m.layers)))
    elif what == "nested_grow":
        row = rng.choice(m.nested)
        row.append(Lin(2.0, row[0].act if row and type(row[0]) is Lin else plain(rng)))
    elif what == "dict_key":
        items = list(m.d.items())
        i = rng.randrange(len(items))
        new = fresh(rng.choice(HOSTILE_KEYS))
        if all(new != k for k, _ in items):
            items[i] = (new, items[i][1])
            m.d = dict(items)
    elif what == "reaching" and occ is not None:  # a static that reaches a node
        occ.act = rng.choice(ls).score
    elif what == "eq_state" and occ is not None:
        occ.w = EqState(occ.w.value)
    elif what == "class_hook":
        cname, name, value = rng.choice(HOOKS)
        cls = globals()[cname] if cname != "Param" else sg.Param
        if name in vars(cls):
            delattr(cls, name)
        else:
            setattr(cls, name, value)
    elif what == "share_empty":  # a stateless node shared by two blocks or two chain links
        bs = [b for b in (*m.blocks, *m.d.values()) if type(b) is Blk] + links(m)
        if len(bs) >= 2:
            a, b = rng.sample(bs, 2)
            a.e = vars(b).get("e", Empty())
    elif what == "dup_item" and len(m.layers) >= 2:  # one node twice in a list
        i, j = rng.sample(range(len(m.layers)), 2)
        m.layers[i] = m.layers[j]
    elif what == "reconfigure":  # new structures compile with another outline_min
        sg.configure(outline_min=rng.randint(2, 5))
    elif what == "chains":  # a list of chains (items of one shape when their depths agree)
        d = rng.randint(2, 5)
        m.chains = [chain(d, rng, "t") for _ in range(rng.randint(2, 4))]
    elif what == "dict_order":  # the same keys in another order
        m.d = dict(reversed(list(m.d.items())))
    elif what == "heads":  # one block's list of heads: one longer, shorter, or a tuple
        bs = [b for b in (*m.blocks, *m.d.values()) if type(b) is Blk]
        if bs:
            b = rng.choice(bs)
            how = rng.choice(["grow", "shrink", "tuple"])
            if how == "grow":
                b.heads = [*b.heads, Lin(4.0, "relu")]
            elif how == "shrink" and b.heads:
                b.heads = list(b.heads)[:-1]
            else:
                b.heads = tuple(b.heads) if type(b.heads) is list else list(b.heads)
    elif what == "dict_type" and occ is not None:  # one occurrence's __dict__ a dict subclass
        occ.__dict__ = collections.OrderedDict(dict.items(vars(occ))) if type(vars(occ)) is dict \
            else dict(dict.items(vars(occ)))
    elif what == "nest":  # one link of the nested containers changed
        links_ = []
        x = vars(m).get("nest")
        while type(x) is list and len(x) == 2:
            links_.append(x)
            x = x[0]
        if links_:
            link = rng.choice(links_)
            how = rng.choice(["state_type", "longer", "tie", "static", "shorter"])
            if how == "state_type" and isinstance(link[1], sg.State):
                link[1] = Buffer(link[1].value)
            elif how == "longer":
                link.append(plain(rng))
            elif how == "tie":
                link[1] = rng.choice(links_)[1]
            elif how == "static":
                link[1] = plain(rng)
            else:
                link[0] = []
    elif what == "arr" and "alayers" in vars(m):  # one array layer changed, or a list shared
        al = [*m.alayers, m.aa, m.ab]
        x = rng.choice(al)
        # (a list reached from two places is written twice: test_outline_callback.py checks
        # that against the reference on a twin built alike; a rebuilt twin has two lists)
        how = rng.choice(["state", "number", "longer", "dict"])
        if how == "state":
            x.w = sg.Param(x.w)
        elif how == "number" and type(x.b) is list and x.b:
            x.b[0] = 1.5
        elif how == "longer" and type(x.b) is list:
            x.b.append(np.ones(1, np.float32))
        else:
            x.d = {"h": np.ones(1, np.float32)}
    elif what == "cb" and cblins(m):  # one callback layer's answer or contents
        mutate_cb(rng, rng.choice(cblins(m)))
    elif what == "cb_share" and len(cblins(m)) >= 2:  # a weight tied, or one layer twice
        a, b = rng.sample(cblins(m), 2)
        if rng.random() < 0.5 and "w" in vars(b):
            a.w = b.w
        elif "cbs" in vars(m):
            m.cbs[rng.randrange(len(m.cbs))] = a
    elif what == "restore" and occ is not None:  # undo a hostile static (serve again)
        occ.act = plain(rng)
    side = _side(rng)
    chained = cb_links(m)
    if chained and side.random() < 0.4:  # and one link of the callback chain changed
        x = side.choice(chained)
        if side.random() < 0.8:
            mutate_cb(side, x)
        else:  # a weight tied with another link's, or the link met again elsewhere
            y = side.choice(chained)
            if side.random() < 0.5 and "w" in vars(y):
                x.w = y.w
            else:
                m.again = x
        return what + "+cbchain"
    return what


# -- the differential checks --------------------------------------------------------------------------


def _outcome(fn: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return "ok", fn()
    except Exception as e:
        return "error", (type(e), str(e))


def _objects(root: Any) -> list[Any]:
    """Every node, container and state reachable from ``root`` (iteratively: deep chains)."""
    seen: dict[int, Any] = {}
    stack = [root]
    while stack:
        x = stack.pop()
        if id(x) in seen:
            continue
        if isinstance(x, sg.Node | Fresh | CbLin):
            seen[id(x)] = x
            stack.extend(dict.values(vars(x)))
        elif isinstance(x, sg.State):
            seen[id(x)] = x
        elif type(x) in (list, tuple):
            seen[id(x)] = x
            stack.extend(x)
        elif type(x) is dict:
            seen[id(x)] = x
            stack.extend(x.values())
    return list(seen.values())


def snapshot(root: Any) -> list[tuple[Any, ...]]:
    """What a failed call must not change: each object's class and contents (by identity)."""
    out: list[tuple[Any, ...]] = []
    for x in _objects(root):
        if isinstance(x, sg.State):
            out.append((id(x), type(x), x._metadata, id(x.value)))
        elif isinstance(x, sg.Node | Fresh | CbLin):
            out.append((id(x), type(x), type(vars(x)), [(k, id(v)) for k, v in dict.items(vars(x))]))
        elif type(x) is dict:
            out.append((id(x), [(k, id(v)) for k, v in x.items()]))
        else:
            out.append((id(x), [id(v) for v in x]))
    return out


def _sig(x: Any) -> Any:
    """What must survive: the type, the sign of zeros, NaN-ness, item by item."""
    if isinstance(x, float):
        return (type(x), math.copysign(1.0, x), x != x)
    if isinstance(x, tuple):
        return (type(x), tuple(_sig(i) for i in x))
    return type(x)


def _statics(gd: sg.GraphDef) -> list[tuple[Any, Any]]:
    return [(p, v) for p, v in iter_statics(gd) if type(v) is not WeakStatic and type(v) is not ArrayConstant]


def _metadata(gd: sg.GraphDef) -> list[Any]:
    """Every metadata value of the table, in table order, and every dict key object."""
    out: list[Any] = []
    for spec in gd.table:
        if type(spec) is StateSpec:
            out += [v for _, v in spec.metadata]
        elif type(spec) is NodeSpec:
            out += [k for k in spec.keys if type(k) is not str]
    for e in all_edges(gd):
        if type(e) is PytreeEdge and e.ptype is dict:
            # (an exact str / int key may be spliced into generated code as its repr, per
            # DESIGN: equal means indistinguishable, so it is compared by value below)
            out += [k if type(k) is not str and type(k) is not int else _ByValue(k) for k in e.keys]
    return out


class _ByValue:
    """A key compared by exact type and value, not identity."""

    def __init__(self, k: Any) -> None:
        self.k = k

    def __eq__(self, other: object) -> bool:
        return type(other) is _ByValue and type(other.k) is type(self.k) and other.k == self.k

    def __hash__(self) -> int:
        return hash(self.k)


def same_gd(a: sg.GraphDef, b: sg.GraphDef, identity: bool) -> None:
    """Equal GraphDefs; statics and metadata alike in type and sign (the very objects if
    ``identity``)."""
    assert a == b and hash(a) == hash(b), (a, b)
    assert a.paths == b.paths
    sa, sb = _statics(a), _statics(b)
    assert [p for p, _ in sa] == [p for p, _ in sb]
    for (p, x), (_, y) in zip(sa, sb, strict=True):
        assert _sig(x) == _sig(y), (p, x, y)
        assert not identity or x is y, f"static at {p}: {x!r} is not the GraphDef's own object"
    ma, mb = _metadata(a), _metadata(b)
    assert len(ma) == len(mb)
    for x, y in zip(ma, mb, strict=True):
        if type(x) is _ByValue:
            assert x == y, (x.k, y)
            continue
        assert _sig(x) == _sig(y), (x, y)
        assert not identity or x is y, f"metadata {x!r} is not the GraphDef's own object"


def same_flatten(a: tuple[Any, Any], b: tuple[Any, Any], identity: bool) -> None:
    same_gd(a[0], b[0], identity)
    assert all(x is y for x, y in zip(a[1].values(), b[1].values(), strict=True))


_OUTLINED = re.compile(r"outlined\d+_\w+\(|of one shape")


def _outlined(src: str | None) -> bool:
    return src is not None and _OUTLINED.search(src) is not None


@contextlib.contextmanager
def served(tally: Tally, op: str, counter: str, source: Callable[[], str | None]) -> Iterator[None]:
    """Count one call of ``op``, whether generated code served it, and whether that code is
    outlined (an outlined function, a loop over one shape, a chain loop)."""
    before = sg.cache_info()[counter]
    yield
    hit = sg.cache_info()[counter] - before
    tally.add(op + "_calls")
    if hit:
        tally.add(op + "_served")
        with contextlib.suppress(Exception):
            if _outlined(source()):
                tally.add(op + "_outlined")


def _var_source(gd: sg.GraphDef, kind: str) -> Callable[[], str | None]:
    def get() -> str | None:
        var = dispatch.variant_for(gd)
        return None if var is None else var.sources.get(kind)
    return get


def _unflat_source(gd: sg.GraphDef) -> Callable[[], str | None]:
    def get() -> str | None:
        built = dispatch._unflat.get(gd)
        return None if built is None else built.source
    return get


@contextlib.contextmanager
def specializer_off() -> Iterator[None]:
    saved = CONFIG.enabled
    CONFIG.enabled = False
    try:
        yield
    finally:
        CONFIG.enabled = saved


def twin(root: Any) -> Any:
    """A copy of ``root`` with the same values and equal but distinct statics, keys and
    metadata where Python allows (sharing and cycles kept)."""
    memo: dict[int, Any] = {}
    todo: list[tuple[Any, Any]] = []

    def copy(x: Any) -> Any:
        if id(x) in memo:
            return memo[id(x)]
        if isinstance(x, sg.State):
            new: Any = type(x)(x.value, **{k: fresh(v) for k, v in x.metadata.items()})
        elif isinstance(x, sg.Node | Fresh | CbLin):
            new = object.__new__(type(x))
        elif type(x) is list:
            new = []
        elif type(x) is dict:
            new = {}
        elif type(x) is tuple:  # a tuple of nodes: built after its children (no cycle through it)
            return tuple(copy(i) for i in x)
        elif isinstance(x, np.ndarray):
            return x
        else:
            return fresh(x)
        memo[id(x)] = new
        todo.append((x, new))
        return new

    out = copy(root)
    while todo:
        x, new = todo.pop()
        if isinstance(x, sg.Node | Fresh | CbLin):
            for k, v in dict.items(vars(x)):
                vars(new)[k] = copy(v)
        elif type(x) is list:
            new.extend(copy(i) for i in x)
        elif type(x) is dict:
            for k, v in x.items():
                new[fresh(k)] = copy(v)
    return out


def _cb_chain_looped(gd: Any) -> bool:
    """A chain loop whose body calls the registered flatten serves ``gd``'s structure."""
    var = dispatch.variant_for(gd)
    return var is not None and any(s.op == "chain_loop" and any(b.op == "call_flatten" for b in s.body)
                                   for s in var.plan.steps)


def check_flatten(m: Any, tally: Tally) -> tuple[Any, Any] | None:
    FLAT_LOG.clear()
    ref = _outcome(lambda: sg.generic.flatten(m))
    ref_log = list(FLAT_LOG)
    before = snapshot(m)
    pub = []
    for _ in range(2):
        gd0 = ref[1][0] if ref[0] == "ok" else None
        src = _var_source(gd0, "flatten") if gd0 is not None else (lambda: None)
        hits = sg.cache_info()["hits"]
        FLAT_LOG.clear()
        with served(tally, "flatten", "hits", src):
            pub.append(_outcome(lambda: sg.flatten(m)))
        if sg.cache_info()["hits"] > hits:  # generated code: the reference's flatten calls
            assert FLAT_LOG == ref_log, "the registered flatten not called as the reference calls it"
            if gd0 is not None and _cb_chain_looped(gd0):
                tally.add("flatten_cbchain_outlined")
    FLAT_LOG.clear()
    assert snapshot(m) == before, "a flatten changed the user's objects"
    for got in pub:
        assert got[0] == ref[0], (got, ref)
        if got[0] == "error":
            assert got[1] == ref[1], (got, ref)
    if ref[0] == "error":
        tally.add("flatten_errors_alike")
        return None
    for got in pub:
        same_flatten(got[1], ref[1], identity=False)
    same_gd(pub[0][1][0], pub[1][1][0], identity=False)
    return pub[1][1]


def _state_metadata(root: Any) -> list[Any]:
    """Every state's metadata tuple, in the reference flatten's order."""
    with specializer_off():
        return [x._metadata for _, x in sg.iter_leaf(root) if isinstance(x, sg.State)]


def check_unflatten(m: Any, gd: Any, sm: Any, tally: Tally) -> None:
    want, want_log = cb_logged(lambda: sg.generic.unflatten(gd, sm))
    want_flat = sg.generic.flatten(want)
    cb = any(spec.type is CbLin for spec in gd.table)  # (user code in the build: two phases)
    for _ in range(2):
        with served(tally, "unflatten", "unflatten_hits", _unflat_source(gd)):
            new, log = cb_logged(lambda: sg.unflatten(gd, sm))
        assert log == want_log, "create_empty/set_key calls not in the reference's order"
        if cb:  # (of a structure with callback nodes: counted on their own too)
            with served(tally, "unflatten_cb", "unflatten_hits", _unflat_source(gd)):
                new, log = cb_logged(lambda: sg.unflatten(gd, sm))
            assert log == want_log, "create_empty/set_key calls not in the reference's order"
        got_flat = sg.generic.flatten(new)
        same_flatten(got_flat, want_flat, identity=False)
        same_gd(got_flat[0], gd, identity=True)  # statics, keys, metadata: gd's own objects
        mine = _state_metadata(new)
        assert all(a is b for a, b in zip(mine, _state_metadata(want), strict=True)), "metadata tuples"
    # merge of the parts of a split, and clone: rebuilt alike
    _, params, rest = sg.split(m, sg.Param, ...)
    with served(tally, "merge", "unflatten_hits", _unflat_source(gd)):
        merged = sg.merge(gd, params, rest)
    same_flatten(sg.generic.flatten(merged), want_flat, identity=False)
    same_gd(sg.generic.flatten(merged)[0], gd, identity=True)
    same_flatten(sg.generic.flatten(sg.clone(m)), want_flat, identity=False)
    # a twin: an equal GraphDef with equal but distinct objects, served by the code of gd
    if len(links(m)) > 1500:
        return
    t = twin(m)
    gd2, sm2 = sg.generic.flatten(t)
    if gd2 != gd:  # (a lying static may make the twin another structure)
        tally.add("twin_unequal")
        return
    with served(tally, "unflatten_twin", "unflatten_hits", _unflat_source(gd)):
        new2 = sg.unflatten(gd2, sm2)
    same_gd(sg.generic.flatten(new2)[0], gd2, identity=True)
    with served(tally, "flatten_twin", "hits", _var_source(gd, "flatten")):
        got2 = sg.flatten(t)
    same_flatten(got2, (gd2, sm2), identity=False)


def check_update(m: Any, gd: Any, sm: Any, tally: Tally) -> None:
    fresh_vals = [np.asarray(v) + np.float32(1) for v in sm.values()]
    new_sm = jax.tree.unflatten(jax.tree.structure(sm), fresh_vals)
    hits = sg.cache_info()["update_hits"]
    FLAT_LOG.clear()
    with served(tally, "update", "update_hits", _var_source(gd, "update")):
        got = _outcome(lambda: sg.update(m, new_sm))
    assert got[0] == "ok", got
    if sg.cache_info()["update_hits"] > hits:  # generated code: no more flatten calls than the walk's
        assert len(FLAT_LOG) == sum(spec.type is CbLin for spec in gd.table), len(FLAT_LOG)
        if _cb_chain_looped(gd):
            tally.add("update_cbchain_outlined")
    FLAT_LOG.clear()
    after = sg.generic.flatten(m)
    assert after[0] == gd
    assert all(x is y for x, y in zip(after[1].values(), fresh_vals, strict=True))

    # a partial update (the Params of a split): the reference on a rebuilt twin
    ref_m = sg.generic.unflatten(*after)
    _, params, _rest = sg.split(m, sg.Param, ...)
    bumped = jax.tree.map(lambda v: np.asarray(v) + np.float32(2), params)
    with served(tally, "update_part", "update_hits", _var_source(gd, "update")):
        got = _outcome(lambda: sg.update(m, bumped))
    ref = _outcome(lambda: sg.generic.update(ref_m, bumped))
    assert got[0] == ref[0], (got, ref)
    mine, theirs = sg.generic.flatten(m), sg.generic.flatten(ref_m)
    assert list(mine[1].keys()) == list(theirs[1].keys())
    assert all(x is y for x, y in zip(mine[1].values(), theirs[1].values(), strict=True))

    # an unknown path: refused alike, nothing written
    from specgraph._ir import PathTable
    sm_now = mine[1]
    bad = sg.StateMap(PathTable.from_paths((*sm_now.paths, ("zz_no_such",)), (*sm_now.types, None)),
                      [*sm_now.values(), np.zeros(1)])
    before = snapshot(m)
    errs = []
    for update in (sg.update, sg.generic.update):
        errs.append(_outcome(lambda: update(m, bad)))  # noqa: B023 - called at once
        assert snapshot(m) == before, "a failed update changed the model"
    assert errs[0][0] == errs[1][0] == "error", errs
    assert errs[0][1] == errs[1][1], errs
    tally.add("failed_updates_untouched")


def _collect_ops(m: Any) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for name, fn in (("states", lambda: sg.states(m)), ("states_buffer", lambda: sg.states(m, Buffer)),
                     ("nodes", lambda: sg.nodes(m)), ("iter_leaf", lambda: list(sg.iter_leaf(m))),
                     ("split", lambda: sg.split(m, sg.Param, ...)),
                     ("split_buffer", lambda: sg.split(m, Buffer, sg.Param, ...))):
        out.append((name, _outcome(fn)))
    return out


def _same_collected(name: str, a: Any, b: Any) -> None:
    if name.startswith("split"):
        assert a[0] == b[0]
        for x, y in zip(a[1:], b[1:], strict=True):
            assert list(x.keys()) == list(y.keys()), name
            assert all(p is q for p, q in zip(x.values(), y.values(), strict=True)), name
        return
    items_a = list(a.items()) if isinstance(a, dict) else a
    items_b = list(b.items()) if isinstance(b, dict) else b
    assert [p for p, _ in items_a] == [p for p, _ in items_b], name
    assert all(x is y for (_, x), (_, y) in zip(items_a, items_b, strict=True)), name


def check_collect(m: Any, gd: Any, tally: Tally) -> None:
    with specializer_off():
        ref = _collect_ops(m)
    for _ in range(2):
        with served(tally, "collect", "walk_hits", _var_source(gd, "collect")):
            got = _collect_ops(m)
    for (name, a), (_, b) in zip(got, ref, strict=True):
        assert a[0] == b[0], (name, a, b)
        if a[0] == "ok":
            _same_collected(name, a[1], b[1])
        else:
            assert a[1] == b[1], (name, a, b)


def check_step(m: Any, tally: Tally) -> None:
    flat = check_flatten(m, tally)
    if flat is None:
        return
    gd, sm = flat
    check_unflatten(m, gd, sm, tally)
    check_collect(m, gd, tally)
    check_update(m, gd, sm, tally)
    tally.add("steps_checked")


# -- pairs of structures sharing shapes (the unit table across structures) ---------------------------


def check_foreign_part(m: Any, part: Any, tally: Tally) -> None:
    """An update of ``m`` with a part split from another structure: the reference's outcome
    (on a rebuilt twin), and nothing written on an error."""
    twin_m = sg.generic.unflatten(*sg.generic.flatten(m))
    before = snapshot(m)
    got = _outcome(lambda: sg.update(m, part))
    ref = _outcome(lambda: sg.generic.update(twin_m, part))
    assert got[0] == ref[0], (got, ref)
    if got[0] == "error":
        assert got[1] == ref[1], (got, ref)
        assert snapshot(m) == before, "a failed update changed the model"
        tally.add("foreign_parts_refused")
        return
    mine, theirs = sg.generic.flatten(m), sg.generic.flatten(twin_m)
    assert list(mine[1].keys()) == list(theirs[1].keys())
    assert all(x is y for x, y in zip(mine[1].values(), theirs[1].values(), strict=True))
    tally.add("foreign_parts_written")


def check_pairs(rng: random.Random, tally: Tally) -> None:
    """Structures of one outlined shape, one after the other: MLP-n after MLP-(n+1), the same
    shape with another identity static, an equal-but-distinguishable static, other
    metadata. Each result carries its own structure's statics."""
    n = rng.randint(3, 9)
    a, b = plain(rng), variant(rng, plain(rng))
    meta_a, meta_b = plain(rng), plain(rng)
    models = [
        Box(**{f"l{i}": Lin(float(i), a, {"kind": meta_a}) for i in range(n + 1)}, seq=[Lin(0.0, a)] * 0),
        Box(**{f"l{i}": Lin(float(i), b, {"kind": meta_b}) for i in range(n)}),
        Box(**{f"l{i}": Lin(float(i), fresh(a), {"kind": fresh(meta_a)}) for i in range(n)}),
        Box(layers=[Lin(float(i), a) for i in range(n + 1)]),
        Box(layers=[Lin(float(i), b) for i in range(n)]),
        Box(blocks=[Blk(float(i), a) for i in range(n)], head=Lin(1.0, b)),
        Box(blocks=[Blk(float(i), b) for i in range(n - 1)], head=Lin(1.0, a)),
        Box(chain=chain(n + 2, rng, a)),
        Box(chain=chain(n + 1, rng, b)),
    ]
    rng.shuffle(models)
    part = None
    for m in models:
        if part is not None:
            check_foreign_part(m, part, tally)
        flat = check_flatten(m, tally)
        if flat is None:
            continue
        gd, sm = flat
        same_gd(gd, sg.generic.flatten(m)[0], identity=False)
        # the specialized flatten answers with the GraphDef of this structure: its statics
        # are this model's own objects when it is the structure's first flatten
        check_unflatten(m, gd, sm, tally)
        check_collect(m, gd, tally)
        check_update(m, gd, sm, tally)
        part = sg.split(m, sg.Param, ...)[1]
        tally.add("pairs_checked")


# -- the run ----------------------------------------------------------------------------------------------


def unhook() -> None:
    for cname, name, _ in HOOKS:
        cls = globals()[cname] if cname != "Param" else sg.Param
        if name in vars(cls):
            delattr(cls, name)


def run_case(seed: int, steps: int, deep: bool, tally: Tally) -> None:
    try:
        _run_case(seed, steps, deep, tally)
    finally:
        unhook()


def _run_case(seed: int, steps: int, deep: bool, tally: Tally) -> None:
    rng = random.Random(seed)
    RAISED[0] = False
    sg.configure(outline_min=rng.randint(2, 4))
    sg.clear_cache()
    m = build(rng, deep)
    check_step(m, tally)
    for _ in range(steps):
        stale = _outcome(functools.partial(sg.flatten, m))
        tally.add("mutation_" + mutate(rng, m))
        if stale[0] == "ok":  # the values of the structure before the mutation, bumped
            check_foreign_part(m, jax.tree.map(lambda v: np.asarray(v) + np.float32(3), stale[1][1]), tally)
        del stale  # (its GraphDef may hold a static that reaches a node: the leak check below)
        check_step(m, tally)
    check_pairs(rng, tally)
    # nothing the model held stays alive once it is dropped, whatever the caches (the
    # shared-unit table included) saw
    alive = [weakref.ref(x) for x in _objects(m) if isinstance(x, sg.Node | sg.State)]
    del m
    gc.collect()
    leaked = sum(r() is not None for r in alive)
    tally.add("leaked_objects", leaked)
    assert leaked == 0, f"seed {seed}: a cache kept {leaked} of the model's objects alive"


def fuzz(cases: int, seed: int, steps: int = 6, deep: bool = False) -> collections.Counter[str]:
    """Run ``cases`` random models of ``steps`` mutations each; the tally of what ran."""
    tally = Tally()
    saved = (CONFIG.outline_min, CONFIG.max_variants)
    sg.configure(max_variants=64)
    limit = sys.getrecursionlimit()
    try:
        for case in range(cases):
            run_case(seed * 1_000_003 + case, steps, deep, tally)
            info = sg.cache_info()
            tally.add("units_reused", info["outlined_units_reused"])
            tally.add("guard_misses", sum(info["guard_misses"].values()))
            # an exception inside generated code (a guard that could not be evaluated): only a
            # hostile static (a raising __eq__) may cause one; else the code is broken and
            # silently hands every call to the walker
            if not RAISED[0]:
                tally.add("error_misses", info["guard_misses"].get("error", 0))
    finally:
        CONFIG.outline_min, CONFIG.max_variants = saved
        sys.setrecursionlimit(limit)
        sg.clear_cache()
    return tally.counts


def main(argv: list[str] | None = None) -> int:
    return _fuzzkit.main(
        __doc__ or "", fuzz, argv, cases=40, steps=6,
        extra=lambda p: p.add_argument("--deep", action="store_true", help="chains of 3 000 and 10 000"),
        extra_args=lambda a: (a.deep,))


if __name__ == "__main__":
    sys.exit(main())
