"""``specgraph.vmap``: ``jax.vmap`` over functions of graph nodes (semantics: :func:`vmap`)."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import jax

from ._common import (
    GraphTransform,
    describe,
    flatten_call,
    fn_name,
    keep_input_placement,
    out_part,
    sliced_view,
    stacked_view,
)
from .axes import check_options, group, input_axes, normalize, ungroup
from .jit import finish_call, trace_call

__all__ = ["vmap", "VmapFunction"]


class VmapFunction(GraphTransform):
    """A vectorized function of graph nodes; call it like the original."""

    kind = "Vmap"

    def _check(self, o: SimpleNamespace) -> None:
        check_options(o, "specgraph.vmap", allow_carry=False)
        self._norm_out = normalize(o.out_axes)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        root, gd, sm = flatten_call(self._root_type, args, kwargs)
        values = sm._values
        axes = input_axes(gd, values, self.options.in_axes, 0, "specgraph.vmap")
        inner = sliced_view(gd, values, axes)
        seen: dict[str, Any] = {}  # filled while jax.vmap traces ``pure`` (it traces on every call)

        def pure(vals: list[Any]) -> tuple[list[Any], Any]:
            t = trace_call(self.fn, inner, vals, transform="specgraph.vmap")
            after = t.walk.values
            n = t.n
            joint = t.walk.graphdef
            out_values = after[n:]
            rels, types = out_part(joint, n, out_values)
            grouped, placed = group(self.options.out_axes, rels, out_values, types, "specgraph.vmap out_axes")
            seen["call"] = (t.written, t.out_static(), placed)
            return list(after[:n]), grouped

        try:
            full, grouped = jax.vmap(
                pure,
                in_axes=(axes,),
                out_axes=(axes, self._norm_out),
                axis_name=self.options.axis_name,
                axis_size=self.options.axis_size,
                spmd_axis_name=self.options.spmd_axis_name,
            )(values)
        except ValueError as e:
            if "call" in seen:
                written = seen["call"][0]
                broadcast_written = [describe(gd.pathtable.path(s)) for s in written if axes[s] is None]
                if broadcast_written and "out_axes" in str(e):
                    raise ValueError(
                        f"specgraph.vmap: {fn_name(self.fn)} wrote a value varying along the mapped axis "
                        f"into a state given in_axes None (one value for the whole batch), of "
                        f"{'; '.join(broadcast_written)}. Map that state (an int axis, or "
                        "sg.StateAxes) or do not write it inside the function"
                    ) from e
            raise
        written, out_static, placed = seen["call"]
        out_values = ungroup(grouped, placed)
        kind, payload, n = out_static
        if kind == "graph":
            out_static = (kind, stacked_view(payload, n, out_values, [a for a, _ in placed],
                                             self.options.partition_name), n)
        written_values = keep_input_placement(values, written, [full[i] for i in written])
        return finish_call(root, sm, written, written_values, out_static, out_values)


def vmap(
    fn: Callable[..., Any] | None = None,
    *,
    in_axes: Any = 0,
    out_axes: Any = 0,
    axis_name: Any = None,
    axis_size: int | None = None,
    spmd_axis_name: Any = None,
    partition_name: Any = None,
) -> Any:
    """``jax.vmap`` for functions whose arguments or results are (or hold) graph nodes.

    ``in_axes`` / ``out_axes`` take what ``jax.vmap`` takes, plus ``sg.StateAxes``
    for per-state axes of a node. ``partition_name`` is the mesh axis recorded in the
    partition annotations of stacked output states for the new axis (NNX calls it
    ``transform_metadata={nnx.PARTITION_NAME: ...}``). Usable as a decorator, with or
    without arguments.

    Axis semantics, per value (a state's value or a bare array leaf):

    * ``in_axes`` gives each value the axis it is mapped along (``None``: one value for
      the whole batch). A graph node takes an int / ``None`` for all its states, or a
      :class:`~specgraph.StateAxes` choosing per state by filter. Keyword arguments are
      mapped along axis 0, as ``jax.vmap`` does. A value reached at several paths (a
      State shared by two arguments) must get the same axis at each: otherwise the
      ``ValueError`` names both paths.
    * A state ``fn`` writes is written back along its own input axis. A broadcast state
      (axis ``None``) may only be written with a value that does not vary along the
      mapped axis; otherwise the error names it.
    * ``out_axes`` places the output's values, with the same forms. Graph nodes created
      inside ``fn`` come out with their states stacked: ``vmap`` over an init function
      makes an ensemble. Nodes and States that came in as arguments come out as the
      caller's live objects.
    * Partition annotations follow the axes: inside ``fn`` a mapped state's annotation
      loses the mapped axis's entry; a stacked output state's gains ``partition_name``
      (``None``: not partitioned along the new axis) at its out axis.
    """
    return VmapFunction.wrap(vmap, fn, locals())
