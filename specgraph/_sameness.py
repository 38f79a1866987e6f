"""When two statics, keys, metadata or pytree aux data are the same structure.

Python's ``==`` is too coarse for a structure: ``1``, ``1.0`` and ``True`` are
equal, and so are ``0.0`` and ``-0.0``, yet a model configured with one must get
that one back. This module is the one definition of "the same", used by the
reference walker (to build the IR), by the planner (to pick a guard) and by the
generated guards (at run time):

* a **signature** (``sig``) records the types the IR compares besides ``==``:
  ``type(v)``, the sign of a float zero, and the same for the items of a tuple;
* **value types** (:data:`VALUE_TYPES`, and plain tuples of them) are those for which
  the same signature and ``==`` mean indistinguishable; any other object is only
  the same as itself (a dataclass with a ``compare=False`` field, a function, ...);
* a NaN is never the same as an equal-looking NaN (``nan != nan``): it never passes.

Everything here is iterative: deep tuples do not touch the recursion limit.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from itertools import repeat as _repeat
from operator import is_ as _is
from typing import Any

__all__ = [
    "VALUE_TYPES",
    "VALUE_TYPE_IDS",
    "ExactClass",
    "exact",
    "float_zero_sig",
    "value_sig",
    "key_sig",
    "keys_sig",
    "dict_key_sig",
    "meta_sig",
    "aux_data",
    "aux_sig",
    "collapsed_sig",
    "is_value_sig",
    "may_be_nan",
    "match_mode",
    "same",
    "same_aux",
    "same_keys",
]

class _ClassSet(frozenset):
    """A set of classes whose membership test is identity: a class's metaclass may claim
    that it equals (and hashes like) one of them."""

    def __contains__(self, t: object) -> bool:
        return id(t) in _VALUE_TYPE_IDS


#: Types whose equality, given the exact type (and the sign of a float zero), means
#: "indistinguishable": a static of one of them may be matched by value. (``in`` is by
#: identity.)
VALUE_TYPES: frozenset[type] = _ClassSet({int, float, str, bytes, bool, type(None), type(...)})
_VALUE_TYPE_IDS = frozenset(map(id, frozenset.__iter__(VALUE_TYPES)))
#: ``id(t) in VALUE_TYPE_IDS`` is ``t in VALUE_TYPES`` without a Python-level call (hot loops)
VALUE_TYPE_IDS = _VALUE_TYPE_IDS


class ExactClass:
    """A class in a sig whose metaclass defines its own ``==`` or hash: the sig holds this
    instead, equal only to the same wrapper of the very same class (a class claiming to
    equal ``int`` must not pass a guard, or make a GraphDef equal, as ``int``)."""

    __slots__ = ("cls",)

    def __init__(self, cls: type) -> None:
        self.cls = cls

    def __eq__(self, other: object) -> bool:
        return type(other) is ExactClass and other.cls is self.cls

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    def __hash__(self) -> int:
        return id(self.cls)

    def __repr__(self) -> str:
        return f"ExactClass({self.cls.__module__}.{self.cls.__qualname__})"

    def __reduce__(self) -> tuple:
        return (ExactClass, (self.cls,))


_type_eq = type.__eq__
_type_hash = type.__hash__


def exact(t: type) -> Any:
    """``t`` itself, or :class:`ExactClass` of it when its metaclass redefines ``==`` or
    hash (what a sig holds for a class)."""
    m = type(t)
    if m is type or (m.__eq__ is _type_eq and m.__hash__ is _type_hash):
        return t
    return ExactClass(t)

_copysign = math.copysign


def float_zero_sig(x: float) -> tuple:
    """The sig of a float zero: its sign matters (``-0.0 == 0.0`` in Python)."""
    return (float, _copysign(1.0, x))


def value_sig(v: Any) -> Any:
    """The sig of a hashable value: its type; for a float zero ``(float, sign)``; for a
    tuple ``(type, item sigs)``, so ``(1,)``, ``(1.0,)`` and ``(True,)`` differ."""
    t = type(v)
    if t is float:
        return float_zero_sig(v) if v == 0.0 else float
    if type(t) is not type:
        t = exact(t)
    if not isinstance(v, tuple):
        return t
    # Iterative post-order: a frame is [tuple type, items, position, item sigs].
    stack: list[list[Any]] = [[t, v, 0, []]]
    while True:
        fr = stack[-1]
        items = fr[1]
        while fr[2] < len(items):
            c = items[fr[2]]
            fr[2] += 1
            ct = type(c)
            if ct is float:
                fr[3].append(float_zero_sig(c) if c == 0.0 else float)
                continue
            if type(ct) is not type:
                ct = exact(ct)
            if isinstance(c, tuple):
                stack.append([ct, c, 0, []])
                break
            fr[3].append(ct)
        else:
            stack.pop()
            sig = (fr[0], tuple(fr[3]))
            if not stack:
                return sig
            stack[-1][3].append(sig)


def key_sig(k: Any) -> Any:
    """A key's sig: any ``str`` (subclasses too) is a plain ``str`` key."""
    return str if isinstance(k, str) else value_sig(k)


def keys_sig(keys: Any) -> tuple | None:
    """The sigs of keys, or ``None`` when all are strings (the common case)."""
    if all(isinstance(k, str) for k in keys):
        return None
    return tuple([key_sig(k) for k in keys])


def dict_key_sig(d: dict) -> tuple | None:
    """``keys_sig`` of a dict's keys in sorted order (the reference walker's order).

    Keys all of exactly ``int`` or exactly ``str`` (NNX's ``State`` of a list, any plain
    dict) need neither the sort nor a sig per key: ``(int,) * n`` / ``None``, at C speed.
    """
    if d:
        t = type(next(iter(d)))
        # Types compared by identity (a metaclass may claim to equal int, or hash alike).
        if (t is int or t is str) and all(map(_is, map(type, d), _repeat(t))):
            return (int,) * len(d) if t is int else None
    return keys_sig(sorted(d))


def meta_sig(metadata: tuple) -> tuple:
    """The sigs of a state's metadata values (see ``StateSpec.metasig``)."""
    return tuple([value_sig(v) for _, v in metadata])


def aux_data(treedef: Any) -> Any:
    """The aux data of a one-level pytree's treedef (``None`` for a namedtuple)."""
    data = treedef.node_data()
    return data[1] if data else None


def aux_sig(treedef: Any) -> Any:
    """The sig of a custom pytree's aux data, ``None`` when it has none.

    Treedefs compare their aux data with ``==`` only: ``eps=1`` and ``eps=1.0`` give
    equal treedefs. The IR keeps this sig beside the treedef to tell them apart.
    """
    aux = aux_data(treedef)
    return None if aux is None else value_sig(aux)


def collapsed_sig(t: type, child_sigs: tuple, treedef: Any = None) -> tuple:
    """The sig of a container collapsed into one static: its type, its children's sigs,
    and for a custom pytree (``treedef``) the sig of its aux data when it has some."""
    aux = None if treedef is None else aux_sig(treedef)
    t = exact(t)
    return (t, child_sigs) if aux is None else (t, child_sigs, aux)


def _tuple_equality_only(t: type) -> bool:
    """A tuple or a namedtuple with tuple equality and hash and no instance dict: it
    compares item by item, and nothing else can tell two equal ones apart."""
    return t is tuple or (
        issubclass(t, tuple) and t.__eq__ is tuple.__eq__ and t.__hash__ is tuple.__hash__
        and t.__dictoffset__ == 0
    )


def is_value_sig(sig: Any) -> bool:
    """Whether statics of this sig may be matched by sig and ``==`` (every leaf of the sig
    a value type), rather than by identity."""
    if isinstance(sig, type):  # (the common case: one class)
        return id(sig) in _VALUE_TYPE_IDS
    stack = [sig]
    while stack:
        s = stack.pop()
        if isinstance(s, type):
            if s not in VALUE_TYPES:
                return False
        elif type(s) is ExactClass or type(s[0]) is ExactClass:  # a class with its own ==
            return False
        elif s[0] is float:  # a float zero: (float, sign)
            continue
        elif len(s) != 2 or not _tuple_equality_only(s[0]):  # (type, child sigs, aux sig): a custom pytree
            return False
        else:
            stack.extend(s[1])
    return True


def may_be_nan(value: Any) -> bool:
    """Statics that can be unequal to themselves get no identity shortcut (NaN must miss)."""
    if isinstance(value, (float, complex)):
        return True
    try:
        return bool(value != value)
    except Exception:
        return True


def same(a: Any, b: Any) -> bool:
    """Whether ``a`` is indistinguishable from ``b``: the very same object; or of the same
    value type, equal (a NaN never is) and with the same float-zero sign; or plain tuples
    of the same type whose items are pairwise the same."""
    stack = [(a, b)]
    while stack:
        x, y = stack.pop()
        if x is y:
            continue
        t = type(x)
        if t is not type(y):
            return False
        if t in VALUE_TYPES:
            if x != y or (t is float and x == 0.0 and _copysign(1.0, x) != _copysign(1.0, y)):
                return False
        elif _tuple_equality_only(t) and len(x) == len(y):
            stack.extend(zip(x, y, strict=True))
        else:
            return False
    return True


def same_aux(treedef: Any, expected: Any) -> bool:
    """Whether a treedef's aux data is indistinguishable from ``expected``."""
    return same(aux_data(treedef), expected)


def same_keys(d: dict, expected: tuple[Hashable, ...]) -> bool:
    """Whether a dict's keys, sorted, are the same keys as ``expected`` one by one: the
    same key sig and equal, and the very same object unless that sig is a value sig."""
    keys = sorted(d)
    if len(keys) != len(expected):
        return False
    for k, e in zip(keys, expected, strict=True):
        if k is e:
            continue
        sig = key_sig(k)
        if sig != key_sig(e) or k != e or not is_value_sig(sig):
            return False
    return True


def match_mode(value: Any, sig: Any) -> str:
    """How a generated guard matches ``value`` (a metadata item or bookkeeping field):
    ``"is"`` the very object (a singleton, or an object that may be equal yet
    distinguishable), ``"value"`` same type and ``==`` (a scalar value type), ``"same"``
    item by item (a float zero, a tuple of values)."""
    if value is None or type(value) is bool or not is_value_sig(sig):
        return "is"
    if isinstance(sig, type) and not may_be_nan(value):
        return "value"
    return "same"
