"""A graph node's readable repr: the tree of its children, as specgraph sees them.

Children are what ``flatten`` walks (a node's attributes sorted by name, minus the
invisible ones; container items; a custom node's keys), states print as their type
with the dtype and shape of their value, arrays as ``dtype[shape]``, statics as a
short ``repr``. A node or state met again (shared, or a cycle back to an ancestor)
prints as ``<Type: same as path>`` with the path where it was first printed.

The walk is iterative, so a 10 000-deep chain prints. The output stops after
``max_lines`` lines (and so does the work: a DAG of shared lists cannot blow it up),
with a last line saying so. A container that contains itself prints as such.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

from . import _registry as reg
from ._ir import dotted_path
from ._model import short_repr

__all__ = ["tree_repr"]

_INDENT = "  "
_KEY_CHARS = 60


def tree_repr(root: Any, max_lines: int | None = 1000) -> str:
    """The tree of ``root``'s children, one child per line, cut after ``max_lines`` lines."""
    lines: list[str] = []
    seen: dict[int, str] = {}  # id of a node or state printed already -> where
    open_containers: set[int] = set()  # containers being printed: one met again is a cycle
    # Tasks, popped from the end: ("close", text, depth, container id) or
    # ("item", label, obj, depth, path).
    tasks: list[tuple] = [("item", "", root, 0, ())]
    while tasks:
        if max_lines is not None and len(lines) >= max_lines:
            lines.append(
                f"... (cut at {max_lines} lines: set repr_max_lines on the class, None for no limit; "
                "sg.nodes and sg.states list everything)"
            )
            break
        task = tasks.pop()
        if task[0] == "close":
            _, text, depth, cid = task
            open_containers.discard(cid)
            lines.append(_INDENT * depth + text)
            continue
        _, label, obj, depth, path = task
        end = "" if depth == 0 else ","
        if id(obj) in open_containers:
            lines.append(f"{_INDENT * depth}{label}<{type(obj).__name__}: contains itself>{end}")
            continue
        head, children, closing = _describe(obj, path, seen)
        lines.append(_INDENT * depth + label + head + ("" if children else end))
        if children:
            cid = id(obj) if reg.kind_of(obj) in reg.CONTAINER_KINDS else 0
            if cid:
                open_containers.add(cid)
            tasks.append(("close", closing + end, depth, cid))
            for key, child, child_label in reversed(children):
                tasks.append(("item", child_label, child, depth + 1, (*path, key)))
    return "\n".join(lines)


def _describe(obj: Any, path: tuple, seen: dict[int, str]) -> tuple[str, list, str]:
    """``(head, children, closing)``: the text before the children, the children as
    ``(key, child, label)``, and the text after them. No children: one line."""
    try:
        kind = reg.kind_of(obj)
    except Exception:
        kind = reg.STATIC
    t = type(obj)
    name = t.__name__
    if kind in (reg.NODE, reg.STATE, reg.FSTATE):
        where = seen.get(id(obj))
        if where is not None:
            return f"<{name}: same as {where}>", [], ""
        seen[id(obj)] = dotted_path(path) if path else "the root"
    try:
        if kind == reg.NODE:
            items = _node_items(obj)
            if not items:
                return f"{name}()", [], ""
            return f"{name}(", [(k, v, f"{_key(k)}=") for k, v in items], ")"
        if kind == reg.STATE:
            meta = "".join(f", {k}={_short(v)}" for k, v in obj._metadata)
            return f"{name}({short_repr(obj.value)}{meta})", [], ""
        if kind == reg.FSTATE:
            impl = reg.state_impl(t)
            if impl is None:
                return f"{name}(...)", [], ""
            meta = "".join(f", {k}={_short(v)}" for k, v in impl.metadata(obj))
            return f"{name}({short_repr(impl.get(obj))}{meta})", [], ""
        if kind in reg.CONTAINER_KINDS:
            return _container(obj, kind)
    except Exception as e:  # a repr must not raise: say what could not be read
        return f"<{name}: unreadable ({type(e).__name__})>", [], ""
    return _short(obj) if kind != reg.ARRAY else short_repr(obj), [], ""


def _node_items(node: Any) -> list[tuple[Hashable, Any]]:
    impl = reg.node_impl(type(node))
    if impl.is_builtin_node:
        return reg.node_children(node)
    return list(impl.flatten(node)[0])


def _container(obj: Any, kind: int) -> tuple[str, list, str]:
    keys: Sequence[Any]  # sorted (a list) or a pytree's (a tuple)
    if kind == reg.LIST:
        opening, closing, items = "[", "]", list(enumerate(obj))
    elif kind == reg.TUPLE:
        opening, closing, items = "(", ")", list(enumerate(obj))
    elif kind == reg.DICT:
        try:
            keys = sorted(obj)
        except TypeError:
            keys = list(obj)
        opening, closing, items = "{", "}", [(k, obj[k]) for k in keys]
    else:
        _, keys, children = reg.pytree_children(obj)
        opening, closing, items = f"{type(obj).__name__}(", ")", list(zip(keys, children, strict=True))
    if not items:
        return short_repr(obj), [], ""
    if all(_is_static(v) for _, v in items):  # (64, 64), {'act': 'relu'}: one short line
        return short_repr(obj), [], ""
    if kind == reg.DICT:
        return opening, [(k, v, f"{_short(k)}: ") for k, v in items], closing
    if kind == reg.PYTREE:
        return opening, [(k, v, f"{_key(k)}=") for k, v in items], closing
    return opening, [(k, v, "") for k, v in items], closing


def _is_static(x: Any) -> bool:
    try:
        return reg.kind_of(x) == reg.STATIC
    except Exception:
        return True


def _key(k: Hashable) -> str:
    return k if type(k) is str and len(k) <= _KEY_CHARS else _short(k)


def _short(x: Any) -> str:
    try:
        r = repr(x)
    except Exception:
        return f"<{type(x).__qualname__}>"
    return r if len(r) <= _KEY_CHARS else r[: _KEY_CHARS - 3] + "..."
