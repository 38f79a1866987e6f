"""``grad`` / ``value_and_grad`` with respect to the states of graph-node arguments."""

from __future__ import annotations

import functools
import inspect
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import jax

from .. import _registry as reg
from .._filters import Filter
from .._ir import GraphDef, PathTable, StateSpec
from .._model import Param
from .._partition import filter_key, partition
from .._statemap import StateMap
from ..runtime import dispatch
from ._common import root_type
from .jit import Traced, _fn_name, _new_root, trace_call, write_states

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
    ``nnx.grad`` returns); several ``argnums`` give a tuple.

    All arguments are flattened together (sharing across them is kept) and ``fn``
    runs on a graph rebuilt from their values, the ``wrt`` states of the ``argnums``
    arguments holding tracers. States ``fn`` writes (a Dropout's rng count, BatchNorm's
    statistics, any ``State`` given a new value) are written back into the caller's
    objects afterwards with their primal values, as ``nnx.value_and_grad`` does, both
    standalone and inside ``specgraph.jit`` / ``nnx.jit``. A structural change of the
    arguments inside ``fn`` is a ``ValueError``, as in ``specgraph.jit``.
    """
    return _value_and_grad(fn, wrt, argnums, has_aux, "value_and_grad")


class _ArgPart:
    """Where the states of one differentiated argument sit in the call's joint walk:
    its value slots, their paths relative to the argument, and the slots ``wrt`` takes."""

    __slots__ = ("arg_slots", "partition", "selected", "table", "take")

    def __init__(self, gd: GraphDef, index: int, wrt: Filter, values: list[Any]) -> None:
        table = gd.pathtable
        paths = table.paths
        slots = tuple(s for s, p in enumerate(paths) if len(p) >= 2 and p[0] == "args" and p[1] == index)
        rel = PathTable.from_paths(tuple(paths[s][2:] for s in slots), tuple(table.types[s] for s in slots))
        p = partition(rel, [values[s] for s in slots], (wrt, ...))
        self.arg_slots = slots
        self.partition = p
        self.selected = tuple(slots[k] for k in p.slots[0])  # joint slots, in order
        self.table = p.tables[0]  # their paths relative to the argument
        self.take = p.takes[0]


def _parts(gd: GraphDef, nums: tuple[int, ...], wrt: Filter, values: list[Any]) -> list[_ArgPart]:
    """The differentiated arguments' parts, cached per (GraphDef, argnums, filter) when
    the filter reads state types alone (a predicate may read values: asked every call)."""
    key = (nums, filter_key((wrt, ...)))
    if key[1] is None or not dispatch.CONFIG.enabled:
        return [_ArgPart(gd, i, wrt, values) for i in nums]
    memo = _part_memo.get(gd)
    if memo is None:
        memo = _part_memo[gd] = {}
    parts = memo.get(key)
    if parts is None or not all(part.partition.valid() for part in parts):
        if len(memo) >= 16:
            memo.clear()
        parts = memo[key] = [_ArgPart(gd, i, wrt, values) for i in nums]
    return parts


_part_memo: weakref.WeakKeyDictionary[GraphDef, dict[tuple, list[_ArgPart]]] = weakref.WeakKeyDictionary()


def _value_and_grad(
    fn: Callable[..., Any], wrt: Filter, argnums: int | Sequence[int], has_aux: bool, api: str
) -> Callable[..., Any]:
    single = isinstance(argnums, int)
    nums: tuple[int, ...] = (argnums,) if isinstance(argnums, int) else tuple(argnums)
    _check_argnums(fn, argnums, nums, api)
    cls = root_type("ValueAndGrad", fn)
    transform = f"specgraph.{api}"

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
        index = tuple(i % len(args) for i in nums)
        root = _new_root(cls, args, kwargs)
        walked = dispatch.collect(root)
        gd = walked.graphdef
        values = walked.values
        parts = _parts(gd, index, wrt, values)
        diff = [StateMap._make(part.table, part.take([values[s] for s in part.arg_slots])) for part in parts]
        found: list[Traced] = []

        def pure(*selected: StateMap) -> Any:
            inner = list(values)
            for part, sel in zip(parts, selected, strict=True):
                for slot, v in zip(part.selected, sel._values, strict=True):
                    inner[slot] = v
            t = trace_call(fn, gd, inner, transform=transform)
            found.append(t)
            after = t.walk.values
            written_values = [after[i] for i in t.written]
            if has_aux:
                loss, aux = t.out
                return loss, (aux, written_values)
            return t.out, (None, written_values)

        (loss, (aux, written_values)), grads = jax.value_and_grad(
            pure, argnums=tuple(range(len(parts))), has_aux=True)(*diff)
        # fn ran on copies; if it reached the caller's objects (a closure), walk them again
        fresh = dispatch.collect(root)
        write_states(root, StateMap._make(fresh.graphdef.pathtable, fresh.values), found[-1].written,
                     written_values, fresh if fresh.graphdef == gd else None)
        grads = tuple(_native(args[i], gd, part, g) for i, part, g in zip(index, parts, grads, strict=True))
        out = (loss, aux) if has_aux else loss
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


def _native(arg: Any, gd: GraphDef, part: _ArgPart, grads: StateMap) -> Any:
    """The gradient of one argument: a ``StateMap``, or the argument's library's own
    state form when it declares one (an NNX module's gradient is an ``nnx.State`` of
    Variables, as ``nnx.grad`` returns, so ``nnx.Optimizer.update`` takes it)."""
    if reg.kind_of(arg) is not reg.NODE:
        return grads
    dn = reg.node_impl(type(arg)).dict_node
    if dn is None or dn.native_state is None:
        return grads
    meta = {spec[4]: spec[3] for spec in gd.table if type(spec) is StateSpec}
    items = [(p, t, meta.get(slot, ()), v)
             for p, t, slot, v in zip(grads._table.paths, grads._table.types, part.selected,
                                      grads._values, strict=True)]
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
