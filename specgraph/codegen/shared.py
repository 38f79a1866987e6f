"""Outlined code shared across structures: compiled units kept per process.

An outlined shape's functions (see ``shapes.py``), and each loop of a top function over a
list of one shape, are compiled on their own, in a namespace of the prelude and the
constants they name, and kept here under a *canonical key*: what the unit's code and its
constants depend on, read from the planned steps themselves. A later structure with that
shape or that loop (MLP-1 000 after MLP-999, a stack of 96 blocks after one of 95: their
loops differ in length only) binds the compiled unit instead of rendering and compiling
it again. (It is still planned: planning one occurrence is cheap, and it records the class
facts and guard counts of the enclosing function.)

The key (:func:`unit_key`) is exact by construction:

* each step's op, and every field of it, in order;
* a bound constant by what it is: an exact ``int``/``str``/``bytes``, a ``float`` other
  than a zero or a NaN, by type and value (equal means indistinguishable; the guards that
  read them compare type and ``==``, an ``is`` is only their fast path), a tuple item by
  item, anything else (classes, statics only the very object is, metadata objects) by
  identity: the entry holds those objects, so their ids cannot be reused while it lives;
* a one-level ``PyTreeDef`` without aux data by value (its ``==`` is the container type,
  kind and arity, compared without user code); one with aux data by identity;
* an attribute placeholder by the real name it stands for;
* a local by its first appearance (the planner's counter differs from structure to
  structure; renaming locals one-to-one changes nothing);
* a call of another outlined function by that function's own key;
* what the unit is rendered from: the views of the plan the top template reads (the
  guards of disabled kinds, a test switch, already left out) and its flags (update,
  collect, ...), and the registry epoch: a registration empties the table.

The unflatten's units (``pipeline._unflatten_units``) are its outlined builders and the
loops of its top function (a list of one shape, a chain of containers), keyed alike, with
the same argument. Their code reads no static: a builder unpacks the tuple ``S`` its caller
read from the caller's own GraphDef, for the caller's own plan of that builder, whose steps
the key says are these: the same items at the same positions, whatever the structure and
wherever its occurrences sit (the read offsets are the caller's, not the unit's). So
structures differing only in a static or a metadata value share a builder, and the result
holds the given GraphDef's very objects. What is in the code keeps them apart: a dict key
spelled (an exact str), a class, an attribute name, a callee. A loop's unit takes what it
reads of its top function as parameters (``vals``, its iterators, its counters' starts, its
item count, the call's contexts): where its values sit and how many items it has are not in
its code. A builder takes the call's contexts (NNX's TraceState, BrainState's tracer) as
parameters too; each call's top function makes its own. The class guards are not in a
unit: each structure's top function, compiled for it, checks them first.

The table is a bounded LRU (:data:`MAX_UNITS`); ``clear_cache`` empties it and
``cache_info`` reports it. A unit's source stays in ``linecache`` while any of its
functions lives (a variant that uses it, or this table).

What an entry keeps alive, strongly and on purpose: the objects its key names by id()
(``Unit.keep``), and the constants its functions bind as globals. None of them is user
data. A static that can reach a node, a state or an array is held weakly by its
structure's cache key (``_weakstatic``), one ``WeakStatic`` per occurrence, so no shape
holding one is ever outlined; a structure whose dict keys, metadata or aux data reach
user data is not compiled at all. What stays is program: classes, functions, enum
members, small configuration objects, at most :data:`MAX_UNITS` entries' worth, until the
LRU drops them or ``clear_cache``. Weak entries would buy nothing: the compiled functions
compare with the very objects (``x is C0``), so no weak reference could see one die
while its unit lives, short of a weak dereference in every guard on every call; and the
table is for the structure that comes after another one is gone (a sweep of sizes, a
model built again), which a strong entry serves.
"""

from __future__ import annotations

import itertools
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from jax.tree_util import PyTreeDef

from .._sameness import aux_data
from .naming import Item, Literal, Splice, StateValue
from .ops import Step

__all__ = ["MAX_UNITS", "Unit", "callee_token", "clear", "info", "lookup", "store", "unit_key"]

#: units kept (least recently used dropped first)
MAX_UNITS = 256

_LOCAL = re.compile(
    r"^(x|dx|droot|v|o|a|c|d|s|ch|chx|td|tdx|chroot|tdroot|okx|okroot|md|bk|tok|ctx|f|m|h|r|q|p)[0-9_]*$")
_CALLEE = re.compile(r"^outlined[0-9]+$")


@dataclass
class Unit:
    """One compiled unit: the functions of one outlined shape for one kind."""

    fns: dict[str, Any]  # "flatten" / "collect" / "write" -> the function
    source: str
    filename: str
    keep: list[Any] = field(default_factory=list, repr=False)  # what the key names by id()
    uses: int = 0  # structures that bound it after the first
    origin: int = 0  # hash of the structure it was compiled for (explain tells its own apart)


_lock = threading.Lock()
_units: OrderedDict[Any, Unit] = OrderedDict()
_epoch = [-1]
_counts = {"built": 0, "reused": 0}


class _Canon:
    """The canonical form of one outlined function's plan (see the module docstring)."""

    def __init__(self, namespace: dict[str, Any], attributes: dict[str, str],
                 callees: dict[str, Any]) -> None:
        self.namespace = namespace
        self.attributes = attributes
        self.callees = callees
        self.locals: dict[str, int] = {}
        self.keep: list[Any] = []

    def const(self, obj: Any) -> Any:
        t = type(obj)
        if t is int or t is str or t is bytes:
            return ("v", t, obj)
        if t is float and obj == obj and obj != 0.0:
            return ("v", t, obj)
        if t is tuple:
            return ("t", tuple(self.const(x) for x in obj))
        if obj is None or obj is True or obj is False or obj is ...:
            return ("v", t, obj)
        if t is PyTreeDef and obj.num_nodes == obj.num_leaves + 1 and aux_data(obj) is None:
            # A one-level treedef without aux data (a namedtuple's, a registered class's
            # with aux None): its == compares the container type, kind and arity only, by
            # identity and count, and no user code runs: keyed by value (it holds its type).
            self.keep.append(obj)
            return ("td", obj)
        self.keep.append(obj)
        return ("i", id(obj))

    def name(self, s: str) -> Any:
        if s in self.namespace:
            return ("c", self.const(self.namespace[s]))
        if s in self.attributes:
            return ("a", self.attributes[s])
        if _CALLEE.match(s):
            return ("f", self.callees[s])
        if _LOCAL.match(s):
            n = self.locals.setdefault(s, len(self.locals))
            return ("l", n)
        return ("s", s)

    def __call__(self, x: Any, field_name: str = "") -> Any:
        t = type(x)
        if t is str:
            return ("s", x) if field_name == "label" else self.name(x)
        if t is Step:
            return ("S", x.op, tuple((k, self(v, k)) for k, v in x.__dict__.items()
                                     if k != "op" and k != "kind"))
        if t is list or t is tuple:
            return (t.__name__, tuple(self(y, field_name) for y in x))
        if t is Literal:
            return ("L", type(x.value), x.value)
        if t is SimpleNamespace:  # a step as a unit renders it
            return ("N", tuple((k, self(v, k)) for k, v in sorted(vars(x).items())))
        if t is Item or t is StateValue or t is Splice:
            return (t.__name__, tuple(self(y) for y in x))
        if x is None or t is bool or t is int:
            return ("v", t, x)
        return ("o", self.const(x))


def unit_key(flags: dict[str, Any], epoch: int, view: Any, namespace: dict[str, Any],
             attributes: dict[str, str], callees: dict[str, Any]) -> tuple[Any, list[Any]]:
    """The canonical key of the unit of one outlined function: ``view``, as the templates
    read it (its guards of the disabled kinds already left out), rendered with ``flags``,
    planned with the constants ``namespace`` / ``attributes``; ``callees``: the keys of the
    outlined functions it calls, by name. Also returns the objects the key names by id().

    Every field of the view is in the key but its name (the unit defines its functions
    under the name it was first rendered with) and its count of uses (not in its text)."""
    c = _Canon(namespace, attributes, callees)
    body = tuple((k, c(v, "label" if k == "type_name" else k)) for k, v in sorted(vars(view).items())
                 if k != "name" and k != "uses")
    return (tuple(sorted(flags.items())), epoch, body), c.keep


#: a unit key -> its token (callee_token); a token is never given to another key
_tokens: dict[Any, int] = {}
_token_numbers = itertools.count()


def callee_token(key: Any) -> tuple[str, int]:
    """The unit key ``key`` as the keys of the functions calling it name it: a token, one
    per distinct key, never reused. (Naming the callee's whole key instead nested each
    caller's key around every callee's, once per place that names it: a shape nesting
    another shape nesting another ... made keys whose hash and comparison cost doubled per
    level of nesting: two chains of 16 and 18 nested links, outlined, took seconds to
    compile, of 30 minutes.) Bounded: past ``4 * MAX_UNITS`` keys the table starts again
    (a key met again gets a new token: its callers' units are then built again, never
    mistaken for another's)."""
    with _lock:
        n = _tokens.get(key)
        if n is None:
            if len(_tokens) >= 4 * MAX_UNITS:
                _tokens.clear()
            n = _tokens[key] = next(_token_numbers)
        return ("k", n)


def lookup(key: Any, count: bool = True) -> Unit | None:
    """The unit of ``key`` (counted as reused unless ``count`` is false: ``explain``
    rebuilding a structure's code binds its units again without using them), or ``None``."""
    with _lock:
        if _epoch[0] != key[1]:  # a registration since: nothing here is current
            _units.clear()
            _epoch[0] = key[1]
            return None
        unit = _units.get(key)
        if unit is not None and count:
            _units.move_to_end(key)
            unit.uses += 1
            _counts["reused"] += 1
        return unit


def store(key: Any, unit: Unit) -> None:
    with _lock:
        if _epoch[0] != key[1]:
            _units.clear()
            _epoch[0] = key[1]
        _units[key] = unit
        _counts["built"] += 1
        while len(_units) > MAX_UNITS:
            _units.popitem(last=False)


def clear() -> None:
    """Drop every unit and zero the counters (``clear_cache``)."""
    with _lock:
        _units.clear()
        _tokens.clear()
        _counts["built"] = _counts["reused"] = 0


def info() -> dict[str, int]:
    """Units held, compiled and reused (``cache_info``)."""
    with _lock:
        return {"outlined_units": len(_units), "outlined_units_compiled": _counts["built"],
                "outlined_units_reused": _counts["reused"]}
