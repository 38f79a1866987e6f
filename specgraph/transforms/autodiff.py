"""``grad`` / ``value_and_grad`` with respect to the states of graph-node arguments."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax

from .._filters import Filter
from .._model import Param
from .._statemap import StateMap, split_slots
from ..runtime import dispatch

__all__ = ["grad", "value_and_grad"]


def value_and_grad(
    fn: Callable[..., Any],
    *,
    wrt: Filter = Param,
    argnums: int | Sequence[int] = 0,
    has_aux: bool = False,
) -> Callable[..., Any]:
    """Differentiate ``fn`` with respect to the states selected by ``wrt``.

    The arguments at ``argnums`` are graph nodes (or pytrees of them). The
    gradient of each is a ``StateMap`` with the paths of ``split(arg, wrt)``;
    several ``argnums`` give a tuple. Inside ``fn`` the arguments are fresh
    copies whose ``wrt`` states hold tracers: writes to states made inside ``fn``
    are not carried back (compute them outside, or wrap the step in
    ``specgraph.jit`` and write them there).
    """
    single = isinstance(argnums, int)
    nums = (argnums,) if single else tuple(argnums)

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        parts = []
        diff = []
        for i in nums:
            gd, sm = dispatch.flatten(args[i])
            selected, rest = split_slots(sm._table, sm._values, (wrt, ...), sm._subset)
            parts.append((gd, rest))
            diff.append(selected)

        def pure(*selected: StateMap) -> Any:
            new_args = list(args)
            for i, (gd, rest), sel in zip(nums, parts, selected, strict=True):
                new_args[i] = dispatch.unflatten_states(gd, (sel, rest))
            return fn(*new_args, **kwargs)

        out, grads = jax.value_and_grad(pure, argnums=tuple(range(len(nums))), has_aux=has_aux)(*diff)
        return out, (grads[0] if single else grads)

    return wrapped


def grad(
    fn: Callable[..., Any],
    *,
    wrt: Filter = Param,
    argnums: int | Sequence[int] = 0,
    has_aux: bool = False,
) -> Callable[..., Any]:
    """The gradient part of :func:`value_and_grad` (with ``aux`` when ``has_aux``)."""
    vg = value_and_grad(fn, wrt=wrt, argnums=argnums, has_aux=has_aux)

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        out, g = vg(*args, **kwargs)
        if has_aux:
            return g, out[1]
        return g

    return wrapped
