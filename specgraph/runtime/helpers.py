"""Functions generated code calls (bound into its namespace)."""

from __future__ import annotations

from typing import Any

from jax import tree_util

from .. import _registry as reg
from ..generic._flatten import float_zero_sig, value_sig


def one_level(x: Any) -> tuple[list[Any], Any]:
    """``(children, treedef)`` of one level of a JAX pytree (as the reference walker sees it)."""
    return tree_util.tree_flatten(x, is_leaf=lambda y: y is not x)


def same_meta(meta: Any, expected: tuple, by_identity: tuple) -> bool:
    """Is ``meta`` the compiled metadata: same names, and per item the very same object
    (``by_identity``) or an equal value of the same type?"""
    if type(meta) is not tuple or len(meta) != len(expected):
        return False
    for (k, v), (ek, ev), ident in zip(meta, expected, by_identity, strict=True):
        if k != ek:
            return False
        if ident:
            if v is not ev:
                return False
        elif v is not ev and (value_sig(v) != value_sig(ev) or v != ev):
            return False
    return True


def static_sig(x: Any) -> Any:
    """The type signature the reference walker gives a (possibly collapsed) static.

    ``type(x)`` for a plain static, ``(type, child sigs)`` for a container whose
    children are all static; ``None`` when ``x`` could not be a static at all.
    """
    k = reg.kind_of(x)
    if k is reg.STATIC:
        t = type(x)
        if t is float and x == 0.0:
            return float_zero_sig(x)
        return t
    if k is reg.TUPLE:
        return (tuple, tuple(static_sig(c) for c in x))
    if k is reg.PYTREE:
        from ..generic._flatten import pytree_children

        _, _, children = pytree_children(x)
        return (type(x), tuple(static_sig(c) for c in children))
    return None
