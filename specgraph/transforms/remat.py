"""``specgraph.remat`` and ``specgraph.eval_shape`` over functions of graph nodes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

from ..generic._unflatten import build_with, rebuild_edge
from ._common import GraphTransform, flatten_call, keep_input_placement
from .jit import _ArgsRoot, _Result, finish_call, root_child, trace_call

__all__ = ["remat", "RematFunction", "eval_shape"]

_EvalShapeArgs = type("EvalShapeArgs", (_ArgsRoot,), {"__module__": __name__})  # one root type for all calls


class RematFunction(GraphTransform):
    """A function of graph nodes whose activations are recomputed on the backward pass."""

    kind = "Remat"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        root, gd, sm = flatten_call(self._root_type, args, kwargs)
        fn = self.fn

        def pure(vals: list[Any]) -> _Result:
            t = trace_call(fn, gd, vals, transform="specgraph.remat")
            after = t.walk.values
            return _Result(t.written, t.out_static(), [after[i] for i in t.written], after[t.n :])

        o = self.options
        res = jax.checkpoint(pure, prevent_cse=o.prevent_cse, policy=o.policy)(sm._values)
        written_values = keep_input_placement(sm._values, res.written, res.written_values)
        return finish_call(root, sm, res.written, written_values, res.out_static, res.out_values)


def remat(
    fn: Callable[..., Any] | None = None,
    *,
    prevent_cse: bool = True,
    policy: Callable[..., bool] | None = None,
) -> Any:
    """``jax.checkpoint`` for functions of graph nodes: trade compute for memory.

    Under differentiation, what ``fn`` computes is not stored for the backward pass
    but recomputed (``policy`` picks what may be saved, as in ``jax.checkpoint``).
    States ``fn`` writes are written back, as with ``sg.jit``. Usable as a
    decorator, with or without arguments.
    """
    return RematFunction.wrap(remat, fn, locals())


def eval_shape(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """What ``fn(*args, **kwargs)`` returns, with ``jax.ShapeDtypeStruct`` for every array.

    Nothing is computed or allocated: use it to build a model's structure (its
    states hold shapes, dtypes and partition annotations) and plan its layout with
    ``sg.shard`` / ``sg.named_shardings`` before a real init. Graph nodes in the
    result are fresh objects, including ones that came in as arguments; the
    arguments themselves are left untouched (nothing is written back).
    """
    _, gd, sm = flatten_call(_EvalShapeArgs, args, kwargs)

    def pure(vals: list[Any]) -> _Result:
        t = trace_call(fn, gd, vals, transform="specgraph.eval_shape")
        return _Result((), t.out_static(), [], list(t.walk.values))

    res = jax.eval_shape(pure, sm._values)
    kind, payload, _ = res.out_static
    shapes = res.out_values  # every value of the joint walk: the arguments' after fn, then the output's
    if kind == "plain":
        return rebuild_edge(payload, [], shapes)
    return build_with(payload, shapes, {}, root_child(payload, "b"))
