"""Names in generated code: bound constants, safe spellings, and the operands plans carry.

User data (keys, static values, types, metadata) never enters the source text. It is
bound in the function's namespace under a name chosen here, or, for an exact
``str``/``int``, carried as a :class:`Literal` that the templates spell with ``repr``.
Type names that do reach the text (function names, file names, docstrings, bound
names) pass through :func:`safe_name` first.
"""

from __future__ import annotations

import builtins
import keyword
import re
from collections.abc import Hashable
from typing import Any, NamedTuple

from .prelude import PARAMETERS, PRELUDE

__all__ = ["Constants", "Item", "Literal", "Splice", "StateValue", "path_label", "safe_name", "static_note"]


class Literal(NamedTuple):
    """An exact ``str`` or ``int`` constant: the templates spell it as its ``repr``."""

    value: str | int


class Item(NamedTuple):
    """An operand read in place: ``obj[key]`` (a static guarded straight from its node's dict)."""

    obj: str
    key: Literal | str


class StateValue(NamedTuple):
    """An operand read in place: ``obj.value`` (a state's value, where the values list is built),
    or ``obj.<attr>`` for a foreign state (``attr`` a placeholder for its raw value's slot)."""

    obj: str
    attr: str = "value"


class Splice(NamedTuple):
    """The values (``part`` ``"v"``) or objects (``"o"``) an outlined call or loop returned,
    spliced into the enclosing function's list at the place of their first slot/index."""

    name: str
    part: str


Operand = str | Item | StateValue | Splice


def safe_name(raw: str, limit: int | None = 60) -> str:
    """``raw`` (a type's name: user data) reduced to ASCII letters, digits and ``_``."""
    out = "".join(c if (c.isascii() and c.isalnum()) or c == "_" else "_" for c in raw)
    return out if limit is None else out[:limit]


_BUILTIN_NAMES = frozenset(dir(builtins))
# The generated functions are named ``<kind>_<type>``: no bound type may take such a name.
# (An unflatten loop's unit is ``each<i>_build``.)
FUNCTION_PREFIXES = ("flatten_", "update_", "unflatten_", "collect_", "outlined", "each")
# Locals the planners make: a bound type never takes one of these shapes.
_LOCAL_NAME = re.compile(
    r"^(x|dx|droot|v|o|a|c|d|s|ch|chx|td|tdx|chroot|tdroot|okx|okroot|attr|md|bk|tok|ctx|f|m|h|r|q|at)[0-9_]*$")
_RESERVED = PRELUDE | PARAMETERS


def _type_name(t: type, taken: dict[str, Any]) -> str:
    """A readable, collision-free, identifier-safe name for a bound type."""
    raw = getattr(t, "__name__", "T")
    if getattr(builtins, raw, None) is t:
        return raw  # list, dict, str, ... bind to themselves
    base = safe_name(raw, None) or "T"
    if base[0].isdigit() or keyword.iskeyword(base) or base in _BUILTIN_NAMES or base in _RESERVED \
            or _LOCAL_NAME.match(base) or base.startswith(FUNCTION_PREFIXES):
        base = "T_" + base
    name = base
    n = 1
    while name in taken and taken[name] is not t:
        n += 1
        name = f"{base}_{n}"
    return name


#: the builtin singletons spelled as source literals by :meth:`Constants.bind`
_SINGLETONS = {id(None): "None", id(True): "True", id(False): "False", id(...): "..."}


class Constants:
    """Names for user data bound in the generated function's namespace.

    Types get a readable name derived from ``__name__`` (sanitized, never a
    builtin or a name the templates use); everything else a numbered one.
    """

    def __init__(self) -> None:
        self.namespace: dict[str, Any] = {}
        #: placeholder attribute name in the source -> the real name, bound into the code
        #: object's ``co_names`` after compilation (see ``build``)
        self.attributes: dict[str, str] = {}
        self._by_id: dict[int, str] = {}
        self._counts: dict[str, int] = {}
        self._attr_of: dict[str, str] = {}

    def copy(self) -> Constants:
        """These bindings, in a copy that binds more without changing this one."""
        c = Constants()
        c.namespace = dict(self.namespace)
        c.attributes = dict(self.attributes)
        c._by_id = dict(self._by_id)
        c._counts = dict(self._counts)
        c._attr_of = dict(self._attr_of)
        return c

    def _fresh(self, prefix: str) -> str:
        while True:  # skip names a readable type name already took (a class named ``M0``)
            n = self._counts.get(prefix, 0)
            self._counts[prefix] = n + 1
            name = f"{prefix}{n}"
            if name not in self.namespace:
                return name

    def bind(self, value: Any, prefix: str) -> str:
        """The name ``value`` is bound to (the same name for the same object).

        ``None``, ``True``, ``False`` and ``...`` are spelled as themselves: a constant in
        the code object (LOAD_CONST) instead of a global lookup, and no user data (each is
        the only object of its kind)."""
        if value is None or value is True or value is False or value is ...:
            return _SINGLETONS[id(value)]
        name = self._by_id.get(id(value))
        if name is not None and self.namespace[name] is value:
            return name
        if isinstance(value, type):
            name = _type_name(value, self.namespace)
        else:
            name = self._fresh(prefix)
        self.namespace[name] = value
        self._by_id[id(value)] = name
        return name

    def attr(self, name: str) -> str:
        """A placeholder attribute name standing for ``name`` (an exact str) in the source.

        The real name never enters the text: it replaces the placeholder in the
        compiled code's names, as a constant would.
        """
        placeholder = self._attr_of.get(name)
        if placeholder is None:
            placeholder = self._attr_of[name] = f"attr{len(self._attr_of)}"
            self.attributes[placeholder] = name
        return placeholder

    def key(self, k: Hashable) -> Literal | str:
        """A key as the templates take it: a :class:`Literal` (exact str/int), else a bound name."""
        if type(k) is str or type(k) is int:
            return Literal(k)
        return self.bind(k, "K")


def static_note(value: Any) -> str:
    """A comment-safe ``== value`` note for simple statics (reprs with no newline)."""
    if type(value) in (str, int, float, bool, type(None)):
        r = repr(value)
        return " == " + (r if len(r) <= 40 else r[:37] + "...")
    return ""


# A guard's comment names at most this many trailing keys of its path, each cut to
# _LABEL_KEY_CHARS: O(1) text per generated line, however deep the structure (a full path
# per line made a 4 000-chain's source quadratic). The load lines above a guard give the
# rest: each local is read from its parent's local.
_LABEL_KEYS = 4
_LABEL_KEY_CHARS = 40


def path_label(link: Any) -> str:
    """A short, comment-safe rendering of the path ``link`` ends (no user text that
    could end the line): its last few keys, after ``...`` when there are more.

    ``link`` is ``None`` (the root) or ``(parent_link, key)``.
    """
    out: list[str] = []
    while link is not None and len(out) < _LABEL_KEYS:
        link, k = link
        if type(k) is str:
            seg = "." + k if k.isidentifier() and k.isascii() else "[" + repr(k) + "]"
        elif type(k) is int:
            seg = f"[{k}]"
        else:
            seg = "[?]"
        out.append(seg if len(seg) <= _LABEL_KEY_CHARS else seg[: _LABEL_KEY_CHARS - 3] + "...")
    s = "".join(reversed(out))
    s = s[1:] if s.startswith(".") else s
    return ("..." + s) if link is not None else (s or "<root>")
