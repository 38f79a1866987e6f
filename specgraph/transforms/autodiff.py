"""``grad`` / ``value_and_grad`` with respect to the states of graph-node arguments."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax

from .. import _registry as reg
from .._filters import Filter
from .._ir import GraphDef, StateSpec
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
    gradient of each is a ``StateMap`` with the paths of ``split(arg, wrt)``
    (for a Flax NNX module, an ``nnx.State`` of Variables with those paths, as
    ``nnx.grad`` returns); several ``argnums`` give a tuple. Inside ``fn`` the arguments are fresh
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
        grads = tuple(_native(args[i], gd, g) for i, (gd, _), g in zip(nums, parts, grads, strict=True))
        return out, (grads[0] if single else grads)

    return wrapped


def _native(arg: Any, gd: GraphDef, grads: StateMap) -> Any:
    """The gradient of one argument: a ``StateMap``, or the argument's library's own
    state form when it declares one (an NNX module's gradient is an ``nnx.State`` of
    Variables, as ``nnx.grad`` returns, so ``nnx.Optimizer.update`` takes it)."""
    if reg.kind_of(arg) is not reg.NODE:
        return grads
    dn = reg.node_impl(type(arg)).dict_node
    if dn is None or dn.native_state is None:
        return grads
    meta = {spec[4]: spec[3] for spec in gd.table if type(spec) is StateSpec}
    slots = gd.pathtable.index
    items = [(p, t, meta.get(slots[p], ()), v)
             for p, t, v in zip(grads._table.paths, grads._table.types, grads._values, strict=True)]
    return dn.native_state(items)


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
