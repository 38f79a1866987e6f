"""``specgraph.scan``: ``jax.lax.scan`` over functions of graph nodes (semantics: :func:`scan`)."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from types import SimpleNamespace
from typing import Any

import jax
import jax.numpy as jnp
from jax import tree_util

from .._model import Node
from ..generic._flatten import Walk, walk
from ._common import (
    GraphTransform,
    describe,
    flatten_call,
    fn_name,
    keep_input_placement,
    move_axis,
    out_part,
    sliced_view,
    stacked_view,
)
from .axes import Carry, check_options, input_axes, resolve
from .jit import finish_call, trace_call

__all__ = ["scan", "ScanFunction"]


class _Ys:
    """The per-iteration outputs of the body, with what the caller needs to place them (static)."""

    __slots__ = ("info", "values")

    def __init__(self, info: tuple, values: list[Any]) -> None:
        self.info = info
        self.values = values


tree_util.register_pytree_node(_Ys, lambda y: ((y.values,), y.info), lambda info, ch: _Ys(info, list(ch[0])))


class ScanFunction(GraphTransform):
    """A scanned function of graph nodes; call it like the original."""

    kind = "Scan"

    def _check(self, o: SimpleNamespace) -> None:
        check_options(o, "specgraph.scan", allow_carry=True)
        in_axes = o.in_axes
        carry_args = [i for i, a in enumerate(in_axes) if a is Carry] if isinstance(in_axes, tuple) else []
        if o.in_axes is Carry:
            raise TypeError(
                "specgraph.scan: in_axes=sg.Carry would carry every argument; give a tuple with "
                "sg.Carry at the argument to carry, e.g. in_axes=(sg.Carry, 0)"
            )
        if len(carry_args) > 1:
            raise TypeError("specgraph.scan: in_axes may mark one argument as sg.Carry")
        if o.out_axes is Carry:
            out_carry: Any = "all"
        elif isinstance(o.out_axes, tuple) and sum(a is Carry for a in o.out_axes) == 1:
            out_carry = next(i for i, a in enumerate(o.out_axes) if a is Carry)
        elif isinstance(o.out_axes, tuple) and any(a is Carry for a in o.out_axes):
            raise TypeError("specgraph.scan: out_axes may hold sg.Carry once")
        else:
            out_carry = None
        if bool(carry_args) != (out_carry is not None):
            raise TypeError(
                "specgraph.scan: an argument marked sg.Carry in in_axes needs sg.Carry in out_axes "
                "(the position where fn returns the new carry), and the other way round"
            )
        self._carry_arg = carry_args[0] if carry_args else None
        self._out_carry = out_carry

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._carry_arg is not None and self._carry_arg < len(args):
            args = _scalars_as_arrays(args, self._carry_arg)
        root, gd, sm = flatten_call(self._root_type, args, kwargs)
        values = sm._values
        paths = gd.pathtable.paths
        axes = input_axes(gd, values, self.options.in_axes, None, "specgraph.scan")
        carry_slots = [s for s, a in enumerate(axes) if a is Carry]
        scan_slots = [s for s, a in enumerate(axes) if type(a) is int]
        xs = [move_axis(values[s], axes[s], 0) for s in scan_slots]
        length = self.options.length
        if length is None and not scan_slots:
            raise ValueError(
                "specgraph.scan: nothing is scanned (no value has an int axis); give length="
            )
        inner = sliced_view(gd, values, axes)
        carry_arg, out_carry, fn = self._carry_arg, self._out_carry, self.fn

        def body(carry: list[Any], x: list[Any]) -> tuple[list[Any], _Ys]:
            vals = list(values)  # broadcast values are used as they are (closed over)
            for s, v in zip(carry_slots, carry, strict=True):
                vals[s] = v
            for s, v in zip(scan_slots, x, strict=True):
                vals[s] = v
            t = trace_call(fn, inner, vals, transform="specgraph.scan")
            after = t.walk.values
            n = t.n
            bad = [describe(paths[s]) for s in t.written if axes[s] is None]
            if bad:
                raise ValueError(
                    f"specgraph.scan: {fn_name(fn)} wrote the broadcast state(s) of "
                    f"{'; '.join(bad)} (in_axes None: one value for every iteration). "
                    "Carry it (sg.StateAxes({...: sg.Carry})) or scan it (an int axis)"
                )
            new_carry = {s: after[s] for s in carry_slots}
            joint = t.walk.graphdef
            out_values = after[n:]
            rels, types = out_part(joint, n, out_values)
            carry_out: list[tuple[int, int]] = []  # (output slot, carried argument slot)
            if carry_arg is not None:
                c_out = t.out if out_carry == "all" else _carry_of(t.out, out_carry, fn)
                c_in = t.root.__dict__["args"][carry_arg]
                w_out = _walk_carry(c_out)
                own = _carry_slots(gd, carry_arg, c_in, w_out, fn)
                for j, s in enumerate(own):
                    new_carry[s] = w_out.values[j]
                own_index = w_out.graphdef.pathtable.index
                prefix = () if out_carry == "all" else (out_carry,)
                for k, rel in enumerate(rels):
                    if rel[: len(prefix)] == prefix:
                        carry_out.append((k, own[own_index[("c", *rel[len(prefix) :])]]))
            in_carry = {k for k, _ in carry_out}
            ys_out = [k for k in range(len(out_values)) if k not in in_carry]
            ys_axes = []
            out_spec = self.options.out_axes
            for k in ys_out:
                axis, _ = resolve(out_spec, rels[k], out_values[k], types[k], "specgraph.scan out_axes")
                if type(axis) is not int:
                    raise ValueError(
                        f"specgraph.scan out_axes: the output at path {rels[k]!r} gets the axis "
                        f"{axis!r}; per-iteration outputs are stacked along an int axis"
                    )
                ys_axes.append(axis)
            written_scanned = tuple(s for s in t.written if type(axes[s]) is int)
            written_carried = tuple(s for s in t.written if axes[s] is Carry)
            info = (written_scanned, written_carried, t.out_static(), tuple(carry_out), tuple(ys_out),
                    tuple(ys_axes))
            ys = [after[s] for s in written_scanned] + [out_values[k] for k in ys_out]
            return [new_carry[s] for s in carry_slots], _Ys(info, ys)

        try:
            final, ys = jax.lax.scan(
                body, [values[s] for s in carry_slots], xs, length=length, reverse=self.options.reverse,
                unroll=self.options.unroll,
            )
        except TypeError as e:
            if "carry" in str(e):
                e.add_note(
                    "specgraph.scan: the carry is a list of these values, in order: "
                    + "; ".join(f"[{i}] {describe(paths[s])}" for i, s in enumerate(carry_slots))
                )
            raise
        written_scanned, written_carried, out_static, carry_out, ys_out, ys_axes = ys.info
        final_by_slot = dict(zip(carry_slots, final, strict=True))
        stacked = ys.values
        written = list(written_carried) + list(written_scanned)
        scanned_values = stacked[: len(written_scanned)]
        written_values = [final_by_slot[s] for s in written_carried] + [
            move_axis(v, 0, axes[s]) for s, v in zip(written_scanned, scanned_values, strict=True)
        ]
        kind, payload, n = out_static
        num_out = len(carry_out) + len(ys_out)
        out_values: list[Any] = [None] * num_out
        for k, s in carry_out:
            out_values[k] = final_by_slot[s]
        per_iter = stacked[len(written_scanned):]
        out_axes_list: list[Any] = [None] * num_out
        for k, axis, v in zip(ys_out, ys_axes, per_iter, strict=True):
            out_values[k] = move_axis(v, 0, axis)
            out_axes_list[k] = axis
        if kind == "graph":
            name = self.options.partition_name
            out_static = (kind, stacked_view(payload, n, out_values, out_axes_list, name), n)
        written_values = keep_input_placement(values, written, written_values)
        return finish_call(root, sm, written, written_values, out_static, out_values)


_PY_SCALARS = (bool, int, float, complex)


def _scalars_as_arrays(args: tuple, i: int) -> tuple:
    """``args`` with the Python scalars of the explicit carry (argument ``i``) made arrays.

    A Python scalar in an argument is static (part of the structure), but a carry's
    value changes from one iteration to the next: ``lax.scan(f, 0.0, xs)`` makes an
    initial ``0.0`` a (weakly typed) array, and so does ``sg.scan``. Scalars held by
    graph nodes inside the carry stay static.
    """
    carry = args[i]
    if type(carry) in _PY_SCALARS:
        carry = jnp.asarray(carry)
    elif isinstance(carry, (tuple, list, dict)):
        leaves = tree_util.tree_leaves(carry)
        if not any(type(x) in _PY_SCALARS for x in leaves):
            return args
        carry = tree_util.tree_map(lambda x: jnp.asarray(x) if type(x) in _PY_SCALARS else x, carry)
    else:
        return args
    return (*args[:i], carry, *args[i + 1 :])


def _carry_of(out: Any, pos: int, fn: Any) -> Any:
    if not isinstance(out, tuple) or pos >= len(out):
        raise ValueError(
            f"specgraph.scan: out_axes puts the carry at position {pos}, so {fn_name(fn)} must return "
            f"a tuple with the new carry there; it returned {type(out).__qualname__}"
        )
    return out[pos]


class _CarryBox(Node):
    """Holds a carry under the key ``c``, so that a bare array or pytree can be walked."""


def _walk_carry(carry: Any) -> Walk:
    box = _CarryBox.__new__(_CarryBox)
    box.__dict__["c"] = carry
    return walk(box)


def _carry_slots(gd: Any, arg: int, c_in: Any, w_out: Walk, fn: Any) -> list[int]:
    """The call's slots of the explicit carry's own values, checking ``fn`` kept its structure."""
    w_in = _walk_carry(c_in)
    if w_out.graphdef != w_in.graphdef:
        raise ValueError(
            f"specgraph.scan: {fn_name(fn)} returned a carry whose structure differs from the carry "
            f"it was given ({w_in.graphdef.num_leaves} values, got {w_out.graphdef.num_leaves}, or "
            "different types or keys); return the same structure, with the same shapes and dtypes"
        )
    index = gd.pathtable.index
    out = []
    for q in w_in.graphdef.paths:
        path: tuple[Hashable, ...] = ("args", arg, *q[1:])
        s = index.get(path)
        if s is None:
            raise ValueError(
                f"specgraph.scan: the carry's value at {q[1:]!r} is shared with another argument (it "
                "is reached from an earlier argument first); the carry must own its states"
            )
        out.append(s)
    return out


def scan(
    fn: Callable[..., Any] | None = None,
    *,
    in_axes: Any = (Carry, 0),
    out_axes: Any = (Carry, 0),
    length: int | None = None,
    reverse: bool = False,
    unroll: int | bool = 1,
    partition_name: Any = None,
) -> Any:
    """``jax.lax.scan`` for functions of graph nodes.

    The default ``in_axes=(sg.Carry, 0)``, ``out_axes=(sg.Carry, 0)`` is
    ``lax.scan``'s ``f(carry, x) -> (carry, y)``; scan over layers is
    ``sg.scan(lambda block, x: block(x), in_axes=(0, sg.Carry), out_axes=sg.Carry)``.
    ``length``, ``reverse`` and ``unroll`` are ``lax.scan``'s; ``partition_name`` as in
    :func:`specgraph.vmap`. Usable as a decorator, with or without arguments.

    The standard use is scan over layers: a node whose states are stacked along a
    leading layer axis (made with ``sg.vmap`` over an init function) is applied one
    layer at a time, with the activations as the carry. The body is traced and compiled
    once, whatever the number of layers.

    Axis semantics, per value (a state's value or a bare array leaf), from ``in_axes``:

    * an int: the value is scanned along that axis (iteration ``i`` sees slice ``i``); a
      state ``fn`` writes is stacked back along the same axis and written back;
    * ``sg.Carry``: carried. For a whole argument, it is the explicit carry: ``fn``
      returns its new value at the ``sg.Carry`` position of ``out_axes``, with the same
      structure, and ``scan`` returns the last one there. Inside a ``sg.StateAxes``,
      the state's value at the end of one iteration is its value at the start of the
      next, and the last one is written back;
    * ``None``: broadcast: every iteration sees the whole value; writing it is an error.

    Keyword arguments are broadcast. ``out_axes`` is ``sg.Carry`` (``fn`` returns the
    carry only) or a tuple holding ``sg.Carry`` once and, elsewhere, the axes along which
    per-iteration outputs are stacked (ints, or ``sg.StateAxes`` for nodes created
    inside ``fn``). Partition annotations follow the axes, as in ``sg.vmap``.
    """
    return ScanFunction.wrap(scan, fn, locals())
