"""What ``vmap``, ``scan``, ``remat`` and ``eval_shape`` share: the call's root, its
flatten, and the bookkeeping of partition annotations when an axis is added or removed.

Every transform here works like ``sg.jit``: the dynamic arguments are flattened
together (sharing across them is kept), ``fn`` runs on a graph rebuilt from the
transformed values (:func:`trace_call`), and what it wrote is written back into
the caller's objects afterwards (:func:`finish_call`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable, Mapping, Sequence
from types import SimpleNamespace
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from .._ir import GraphDef
from .._statemap import StateMap
from ..runtime import dispatch
from ..sharding import annotated_slots, rewrite_annotations, with_axis, without_axis
from .jit import _ArgsRoot, _new_root

Path = tuple[Hashable, ...]


_root_types: dict[tuple[str, Any], type] = {}
_ROOT_TYPES_BOUND = 512


def root_type(kind: str, fn: Callable[..., Any]) -> type:
    """A root type per transform kind and function code, so flattens specialize apart.

    Keyed by the code object, not the function: ``sg.vmap(lambda m: ...)(model)``
    written inline makes a new function on every call but reuses its code, and must
    reuse the specialized flatten too (a new type per call would never be specialized
    and would pile up in the dispatcher).
    """
    code = getattr(fn, "__code__", None)
    key = (kind, code if code is not None else type(fn))
    cls = _root_types.get(key)
    if cls is None:
        if len(_root_types) >= _ROOT_TYPES_BOUND:
            _root_types.clear()
        name = getattr(fn, "__name__", "fn")
        cls = _root_types[key] = type(f"{kind}Args[{name}]", (_ArgsRoot,), {"__module__": __name__})
    return cls


class GraphTransform:
    """The callable a transform returns: ``fn`` with the transform's options.

    The options are spelled once, as the keyword signature of the transform function
    (``sg.vmap``, ``sg.scan``, ``sg.remat``), which hands them over with :meth:`wrap`.
    """

    kind: ClassVar[str]  # names the call's root type: ``VmapArgs[fn]``

    def __init__(self, fn: Callable[..., Any], options: Mapping[str, Any]) -> None:
        self.fn = fn
        self.options = SimpleNamespace(**options)
        self._check(self.options)
        self._root_type = root_type(self.kind, fn)
        # not fn.__dict__: a wrapped transform has its own fn (the subclasses define __call__)
        functools.update_wrapper(self, fn, updated=())  # type: ignore[arg-type]

    def _check(self, options: SimpleNamespace) -> None:
        """Validate the options, normalising them in place (subclasses)."""

    def __getattr__(self, name: str) -> Any:
        """An option read as an attribute: ``f.in_axes``."""
        try:
            return vars(vars(self)["options"])[name]
        except KeyError:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}") from None

    @classmethod
    def wrap(cls, transform: Callable[..., Any], fn: Any, options: Mapping[str, Any]) -> Any:
        """What ``transform(fn, **options)`` returns; with ``fn=None``, a decorator taking it."""
        options = {k: v for k, v in options.items() if k != "fn"}
        if fn is None:
            return functools.partial(transform, **options)
        if not callable(fn):
            raise TypeError(f"specgraph.{transform.__name__} expects a callable, got {type(fn).__qualname__}")
        return cls(fn, options)


def describe(path: Path) -> str:
    """A call path (``('args', 0, 'w')``) in words: ``argument 0 at ('w',)``."""
    if path and path[0] == "args":
        return f"argument {path[1]} at {path[2:]!r}"
    if path and path[0] == "kwargs":
        return f"keyword argument {path[1]!r} at {path[2:]!r}"
    return repr(path)


def flatten_call(cls: type, args: tuple, kwargs: dict) -> tuple[Any, GraphDef, StateMap]:
    root = _new_root(cls, args, kwargs)
    gd, sm = dispatch.flatten(root)
    return root, gd, sm


def fn_name(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


def ndim_of(v: Any) -> int | None:
    shape = getattr(v, "shape", None)
    return None if shape is None else len(shape)


def sliced_view(gd: GraphDef, values: list[Any], axes: list[Any]) -> GraphDef:
    """``gd`` as ``fn`` sees it: annotated states mapped along an axis lose that axis's entry."""
    annotated = annotated_slots(gd)
    if not annotated:
        return gd
    new = {}
    for slot, names in annotated.items():
        axis = axes[slot]
        nd = ndim_of(values[slot])
        if type(axis) is int and nd:
            new[slot] = without_axis(names, axis, nd)
    return rewrite_annotations(gd, new)


def stacked_view(joint: GraphDef, n: int, out_values: list[Any], out_axes: list[Any], name: Any) -> GraphDef:
    """The output's fresh annotated states gain an entry (``name``) for their new axis."""
    annotated = annotated_slots(joint)
    if not annotated:
        return joint
    new = {}
    for slot, names in annotated.items():
        if slot < n:
            continue
        axis = out_axes[slot - n]
        nd = ndim_of(out_values[slot - n])
        if type(axis) is int and nd:
            new[slot] = with_axis(names, axis, nd, name)
    return rewrite_annotations(joint, new)


def out_part(joint: GraphDef, n: int, out_values: list[Any]) -> tuple[list[Path], list[Any]]:
    """Paths below the output (the joint root's ``b`` child) and state types of its slots."""
    table = joint.pathtable
    rels = [table.path(s)[1:] for s in range(n, n + len(out_values))]
    return rels, list(table.types[n:])


def move_axis(value: Any, src: int, dst: int) -> Any:
    """``jnp.moveaxis`` on every array leaf of a value (a no-op when ``src == dst``)."""
    if src == dst:
        return value
    return jax.tree_util.tree_map(lambda x: jnp.moveaxis(x, src, dst), value)


def keep_input_placement(values: list[Any], written: Sequence[int], written_values: list[Any]) -> list[Any]:
    """Written values put back on their input shardings, outside a trace (as ``sg.jit`` does).

    Run eagerly, ``jax.vmap`` and ``lax.scan`` give their outputs the layout the
    compiler picked (a scanned state stacked back loses its ``data`` axis, say). Under
    a trace the values are tracers and nothing is done here (``sg.jit`` pins them).
    """
    out: list[Any] | None = None
    for k, slot in enumerate(written):
        new = written_values[k]
        old = values[slot]
        if isinstance(new, jax.Array) and isinstance(old, jax.Array):
            back = _back(old, new)
        else:
            try:
                back = jax.tree_util.tree_map(_back, old, new)
            except (ValueError, TypeError):  # another structure: nothing to keep
                continue
        if back is not new:
            if out is None:
                out = list(written_values)
            out[k] = back
    return written_values if out is None else out


def _back(old: Any, new: Any) -> Any:
    if (isinstance(new, jax.Array) and isinstance(old, jax.Array) and not isinstance(new, jax.core.Tracer)
            and not isinstance(old, jax.core.Tracer) and old.committed and new.shape == old.shape
            and new.sharding != old.sharding):
        return jax.device_put(new, old.sharding)
    return new
