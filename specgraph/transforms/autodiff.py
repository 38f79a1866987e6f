"""``grad`` / ``value_and_grad`` with respect to the states of graph-node arguments."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import jax

from .. import _registry as reg
from .._filters import Filter
from .._ir import GraphDef, StateSpec
from .._model import Param
from .._statemap import StateMap, split_values
from ..runtime import dispatch
from .jit import _fn_name

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
    return _value_and_grad(fn, wrt, argnums, has_aux, "value_and_grad")


def _value_and_grad(
    fn: Callable[..., Any], wrt: Filter, argnums: int | Sequence[int], has_aux: bool, api: str
) -> Callable[..., Any]:
    single = isinstance(argnums, int)
    nums = (argnums,) if single else tuple(argnums)  # type: ignore[arg-type]
    _check_argnums(fn, argnums, nums, api)

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        for i in nums:
            if not -len(args) <= i < len(args):
                raise TypeError(
                    f"sg.{api}({_fn_name(fn)}, argnums={argnums!r}) differentiates positional "
                    f"argument {i}, but the call passed {_count(len(args))}; argnums index the "
                    "positional arguments from 0, and the arguments to differentiate must be "
                    "passed positionally"
                )
        parts = []
        diff = []
        for i in nums:
            gd, sm = dispatch.flatten(args[i])
            selected, rest = split_values(sm._table, sm._values, (wrt, ...))
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


def _check_argnums(fn: Callable[..., Any], argnums: Any, nums: tuple, api: str) -> None:
    """Reject argnums that can never name an argument of ``fn``, at ``sg.grad`` time."""
    if not nums or not all(isinstance(i, int) and not isinstance(i, bool) for i in nums):
        raise TypeError(
            f"sg.{api}: argnums must be an int or a non-empty sequence of ints, got {argnums!r}"
        )
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # no signature to read (some builtins): checked per call
        return
    kinds = [p.kind for p in params]
    if inspect.Parameter.VAR_POSITIONAL in kinds:
        return
    arity = sum(k in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
                for k in kinds)
    for i in nums:
        if not -arity <= i < arity:
            raise TypeError(
                f"sg.{api}({_fn_name(fn)}, argnums={argnums!r}): {_fn_name(fn)} takes "
                f"{_count(arity)}, so there is no positional argument {i} to differentiate; "
                "argnums index the positional arguments from 0"
            )


def _count(n: int) -> str:
    return f"{n} positional argument{'' if n == 1 else 's'}"


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
    vg = _value_and_grad(fn, wrt, argnums, has_aux, "grad")

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        out, g = vg(*args, **kwargs)
        if has_aux:
            return g, out[1]
        return g

    return wrapped
