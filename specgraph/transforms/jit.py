"""``specgraph.jit``: ``jax.jit`` for functions of graph nodes, at raw-JAX overhead.

Per call: one (specialized) flatten of all dynamic arguments together, so sharing
across arguments is kept; a cached ``jax.jit`` of a pure function of
``(static key, GraphDef, values)``; inside the trace the graph is rebuilt from
tracers, ``fn`` runs, and the states it wrote (new value objects) are returned;
after the call those are written back into the caller's live objects with the
(specialized) update. Nothing else crosses the boundary.

Decisions: a structural change made inside ``fn`` (attribute added or deleted,
node or State replaced, list resized) is rejected with a ``ValueError``: make
structural changes outside the jitted function. Python scalars and other
statics inside the arguments are static (part of the ``GraphDef``): a new value
retraces. Graph nodes and States returned by ``fn`` come back as the caller's
live objects when they came in as arguments, and as fresh objects otherwise.
"""

from __future__ import annotations

import functools
import re
import types
from collections.abc import Callable, Sequence
from typing import Any, Generic, ParamSpec, TypeVar, overload

import jax
import numpy as np
from jax import tree_util

from .._ir import (
    ArrayEdge,
    GraphDef,
    NodeEdge,
    NodeSpec,
    PytreeEdge,
    StateEdge,
    StaticEdge,
    iter_edges,
    tuples_equal,
)
from .._model import Node
from .._statemap import StateMap
from ..generic._flatten import Walk, walk
from ..generic._unflatten import build_with, rebuild_edge
from ..runtime import dispatch
from ..sharding import Placement, constrain_tree, keep_placement, multi_device, placement_of
from ._writeback import write_back

__all__ = ["jit", "JitFunction", "trace_call", "finish_call", "Traced"]

# The wrapped function's parameters and result: a JitFunction is called like it.
_P = ParamSpec("_P")
_R = TypeVar("_R")


class _Result:
    """What the pure function returns: written state values and the output.

    ``written`` (slots) and ``out_static`` (how to rebuild the output) are static
    aux data, so they survive jit's cache without retracing.
    """

    __slots__ = ("out_static", "out_values", "written", "written_values")

    def __init__(self, written: tuple[int, ...], out_static: Any, written_values: list, out_values: list):
        self.written = written
        self.out_static = out_static
        self.written_values = written_values
        self.out_values = out_values


tree_util.register_pytree_node(
    _Result,
    lambda r: ((r.written_values, r.out_values), (r.written, r.out_static)),
    lambda aux, ch: _Result(aux[0], aux[1], list(ch[0]), list(ch[1])),
)


class _OutRoot(Node):
    """Joint root of (arguments after fn, output), flattened inside the trace."""


def _holds_no_graph_object(edge: Any) -> bool:
    """True when an output edge holds no graph node or State (a plain pytree)."""
    return not any(type(e) is NodeEdge or type(e) is StateEdge for e in iter_edges(edge))


def root_child(gd: GraphDef, key: str) -> Any:
    """The edge of the root node's child ``key``: ``args``/``kwargs`` of a call's root,
    ``a`` (the arguments after ``fn``) / ``b`` (its output) of a joint root."""
    spec: Any = gd.table[0]
    return spec.children[spec.keys.index(key)]


def num_args(gd: GraphDef) -> int:
    """How many positional arguments a call's root holds."""
    args = root_child(gd, "args")
    return len(args.children) if type(args) is PytreeEdge else 0


class Traced:
    """One run of ``fn`` on a graph rebuilt from (traced) values, inside some JAX transform.

    ``walk`` is the walk of the joint root (arguments after ``fn``, then the output):
    its first ``n`` values are the arguments' slots, the rest the output's.
    ``written`` are the argument slots holding a new value object.
    """

    __slots__ = ("n", "out", "root", "walk", "written")

    def __init__(self, root: Any, out: Any, walk: Any, written: tuple[int, ...], n: int) -> None:
        self.root = root
        self.out = out
        self.walk = walk
        self.written = written
        self.n = n

    def out_static(self) -> tuple:
        """How to rebuild the output on the caller's side (static: no values in it)."""
        after = self.walk.graphdef
        out_edge = root_child(after, "b")  # the output, beside the arguments ("a")
        if _holds_no_graph_object(out_edge):
            return ("plain", out_edge, self.n)
        return ("graph", after, self.n)


def trace_call(
    fn: Callable[..., Any], gd: GraphDef, values: list[Any], static: tuple = ((), ()),
    transform: str = "specgraph.jit", user_fn: Callable[..., Any] | None = None,
) -> Traced:
    """Rebuild the arguments from ``values``, call ``fn``, and find what it wrote.

    A structural change of the arguments made inside ``fn`` is a ``ValueError``:
    only values cross a transform's boundary. Errors name ``user_fn`` (default ``fn``):
    the function the user wrote, when ``fn`` wraps it.
    """
    named = fn if user_fn is None else user_fn
    root = dispatch.unflatten_states(gd, (StateMap._make(gd.pathtable, values),))
    before_objects = walk(root).objects  # trace time only: the rebuilt nodes and States
    args, kwargs = _call_args(root, static)
    out = fn(*args, **kwargs)
    joint = _OutRoot.__new__(_OutRoot)
    joint.__dict__["a"] = root
    joint.__dict__["b"] = out
    w = walk(joint)
    # A node or State replaced by a fresh one of the same type leaves the GraphDef
    # equal: compare identities too (index i here is index i + 1 in the joint walk).
    if not _same_structure(gd, w.graphdef) or any(
        w.objects[i + 1] is not obj for i, obj in enumerate(before_objects)
    ):
        raise ValueError(
            f"{_fn_name(named)} changed the structure of its arguments inside {transform} "
            "(an attribute, node, State or container was added, removed or replaced). "
            "Structural changes are not carried out of a transformed call: make them outside "
            "the transformed function, or return the new objects"
        )
    n = gd.num_leaves
    after_values = w.values
    written = tuple(i for i in range(n) if after_values[i] is not values[i])
    for i in written:
        _check_written(named, gd, i, after_values[i], transform)
    return Traced(root, out, w, written, n)


_JAX_SCALARS = (bool, int, float, complex, np.generic, np.ndarray, jax.Array)


def _check_written(fn: Any, gd: GraphDef, slot: int, value: Any, transform: str) -> None:
    """A value written into a State inside a transform leaves it as a traced output:
    anything but arrays (and scalars) is an error naming the state, not JAX's one
    naming specgraph's internal function."""
    for keypath, leaf in tree_util.tree_flatten_with_path(value)[0]:
        if not isinstance(leaf, _JAX_SCALARS):
            path = gd.pathtable.path(slot)
            stype = gd.pathtable.types[slot]
            inside = tree_util.keystr(keypath)
            raise TypeError(
                f"{_fn_name(fn)} wrote a {type(leaf).__qualname__} into the "
                f"{stype.__qualname__ if stype is not None else 'array leaf'} at "
                f"{_arg_path(path)}{f' (at {inside} in its value)' if inside else ''} inside "
                f"{transform}. Only arrays (or pytrees of arrays and scalars) can leave a "
                "transformed function: convert it (jnp.asarray), or set it outside"
            )


def _arg_path(path: tuple) -> str:
    """A path of the joint argument root, in the caller's words."""
    if len(path) >= 2 and path[0] == "args":
        return f"path {path[2:]!r} of argument {path[1]}" if len(path) > 2 else f"argument {path[1]}"
    if len(path) >= 2 and path[0] == "kwargs":
        return (f"path {path[2:]!r} of keyword argument {path[1]!r}" if len(path) > 2
                else f"keyword argument {path[1]!r}")
    return f"path {path!r}"


def finish_call(
    root: Any, sm: StateMap, written: Sequence[int], written_values: Sequence[Any], out_static: tuple,
    out_values: list[Any], walked: Walk | None = None,
) -> Any:
    """The caller's side after a transformed call: write states back, rebuild the output.

    ``walked``: a walk of ``root`` that still describes it (no Python reached the
    caller's objects since): the written values go straight into the objects it found,
    with no guard run again. Without one, the (guarded) update writes them by path.
    """
    write_states(root, sm, written, written_values, walked)
    kind, payload, n = out_static
    if kind == "plain":
        return rebuild_edge(payload, [], [None] * n + out_values)
    return _rebuild_graph_output(root, payload, n, out_values)


def write_states(root: Any, sm: StateMap, written: Sequence[int], written_values: Sequence[Any],
                 walked: Walk | None) -> None:
    """Write the values of the slots ``written`` into the states of ``root``, whose
    current values are ``sm``: through ``walked`` (a walk still describing ``root``: no
    guard run again) when given, else by path with the (guarded) update."""
    if not written:
        return
    if walked is not None:
        write_back(root, walked, tuple(written), written_values)
    else:
        new_values = list(sm._values)
        for slot, v in zip(written, written_values, strict=True):
            new_values[slot] = v
        dispatch.update(root, (StateMap._make(sm._table, new_values),))


def _constrain_args(args: tuple, in_shardings: Sequence[Any], static_argnums: tuple[int, ...]) -> tuple:
    if len(in_shardings) > len(args):
        raise ValueError(
            f"in_shardings has {len(in_shardings)} entries but the call has {len(args)} positional "
            "arguments; give one entry per positional argument (None where there is nothing to place)"
        )
    out = list(args)
    for i, s in enumerate(in_shardings):
        if s is None:
            continue
        if i in static_argnums or i - len(args) in static_argnums:
            raise ValueError(f"in_shardings[{i}] is given for a static argument; use None there")
        out[i] = constrain_tree(args[i], s, f"in_shardings[{i}]")
    return tuple(out)


class JitFunction(Generic[_P, _R]):
    """A jitted function of graph nodes; call it like the original."""

    def __init__(
        self,
        fn: Callable[_P, _R],
        static_argnums: int | Sequence[int] = (),
        static_argnames: str | Sequence[str] = (),
        donate_argnums: int | Sequence[int] = (),
        **jax_jit_kwargs: Any,
    ) -> None:
        self.fn = fn
        self.static_argnums = _as_tuple(static_argnums)
        names = [static_argnames] if isinstance(static_argnames, str) else static_argnames
        self.static_argnames = tuple(names)
        self.donate_argnums = _as_tuple(donate_argnums)
        self.in_shardings = jax_jit_kwargs.pop("in_shardings", None)
        self.out_shardings = jax_jit_kwargs.pop("out_shardings", None)
        if self.in_shardings is not None and not isinstance(self.in_shardings, (tuple, list)):
            raise TypeError(
                "specgraph.jit's in_shardings is a tuple with one entry per positional argument "
                "(a sharding or pytree prefix of shardings for a non-graph argument, None for the "
                f"rest), got {type(self.in_shardings).__qualname__}"
            )
        for bad in ("static_argnums", "donate_argnums", "donate_argnames"):
            if bad in jax_jit_kwargs:
                raise TypeError(f"specgraph.jit does not support the jax.jit argument {bad!r}")
        self.trace_count = 0
        # A root type of its own: the dispatcher keys variants by type(root), so each
        # jitted function gets its own variants instead of sharing a megamorphic one.
        name = getattr(fn, "__name__", "fn")
        self._root_type = type(f"JitArgs[{name}]", (_ArgsRoot,), {"__module__": __name__})
        self._placement: Placement | None = None  # the last call's (multi-device only)
        donate = (4,) if self.donate_argnums else ()
        self._jitted = jax.jit(self._pure, static_argnums=(0, 1, 2), donate_argnums=donate, **jax_jit_kwargs)
        self._donated: dict[GraphDef, tuple[int, ...]] = {}
        functools.update_wrapper(self, fn, updated=())  # not fn.__dict__: a wrapped transform has its own fn

    # -- the traced side ------------------------------------------------------------
    def _pure(
        self, static: tuple, gd: GraphDef, placement: Placement | None, kept: list[Any], donated: list[Any]
    ) -> _Result:
        self.trace_count += 1
        values = _merge_donated(self._donated_slots(gd), kept, donated)
        t = trace_call(self._call_fn, gd, values, static, user_fn=self.fn)
        n = gd.num_leaves
        donated_slots = set(self._donated_slots(gd))
        after_values = t.walk.values
        # Written: a new value object. Donated arguments' buffers die with the call,
        # so all their values come back.
        written = t.written
        if donated_slots:
            written = tuple(i for i in range(n) if after_values[i] is not values[i] or i in donated_slots)
        written_values = [after_values[i] for i in written]
        if placement is not None:  # a written state keeps its input sharding exactly
            placed = placement.shardings
            written_values = [keep_placement(values[i], after_values[i], placed[i]) for i in written]
        return _Result(written, t.out_static(), written_values, after_values[n:])

    def _call_fn(self, *args: Any, **kwargs: Any) -> Any:
        """``fn`` with the ``in_shardings`` / ``out_shardings`` constraints around it."""
        if self.in_shardings is None and self.out_shardings is None:
            return self.fn(*args, **kwargs)
        if self.in_shardings is not None:
            args = _constrain_args(args, self.in_shardings, self.static_argnums)
        out = self.fn(*args, **kwargs)
        return constrain_tree(out, self.out_shardings, "out_shardings")

    def _donated_slots(self, gd: GraphDef) -> tuple[int, ...]:
        """The value slots that belong to donated arguments (cached per GraphDef)."""
        slots = self._donated.get(gd)
        if slots is None:
            nargs = num_args(gd)
            donate = {i % nargs for i in self.donate_argnums} if nargs else set()
            slots = tuple(
                i for i, p in enumerate(gd.paths) if len(p) >= 2 and p[0] == "args" and p[1] in donate
            )
            self._donated[gd] = slots
        return slots

    # -- the caller's side ----------------------------------------------------------
    def __get__(self, obj: Any, objtype: type | None = None) -> Any:
        """Bind ``self`` when used as a method, as ``jax.jit`` does: ``m.step(x)`` calls
        ``step(m, x)``, so ``m`` is an argument like any other (its states are traced and
        written back; ``static_argnums`` count it as argument 0)."""
        if obj is None:
            return self
        return types.MethodType(self, obj)

    def __call__(self, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        static_pos = self.static_argnums
        static_names = self.static_argnames
        if static_pos or static_names:
            n = len(args)
            is_static = [i in static_pos or i - n in static_pos for i in range(n)]
            dyn_args = tuple(None if s else a for s, a in zip(is_static, args, strict=True))
            static = (
                tuple((i, args[i]) for i in range(n) if is_static[i]),
                tuple(sorted((k, v) for k, v in kwargs.items() if k in static_names)),
            )
            dyn_kwargs = {k: v for k, v in kwargs.items() if k not in static_names}
        else:
            dyn_args, static, dyn_kwargs = args, ((), ()), kwargs
        root = _new_root(self._root_type, dyn_args, dyn_kwargs)
        walked: Walk | None = dispatch.collect(root)  # the states too: written back, no guard again
        assert walked is not None
        gd = walked.graphdef
        sm = StateMap._make(gd.pathtable, walked.values)
        values = sm._values
        if self.donate_argnums:
            donated_slots = self._donated_slots(gd)
            dset = set(donated_slots)
            kept = [None if i in dset else v for i, v in enumerate(values)]
            donated = [values[i] for i in donated_slots]
        else:
            kept, donated = values, []
        placement = None
        if multi_device():  # where the values sit: the written ones are kept there
            placement = self._placement = placement_of(values, self._placement)
        traces = self.trace_count
        try:
            res = self._jitted(static, gd, placement, kept, donated)
        except (TypeError, ValueError) as e:
            hash(gd)  # an unhashable static argument: raise the TypeError that names its path
            _name_values(e, gd, self._donated_slots(gd) if self.donate_argnums else ())
            raise
        if self.trace_count != traces:
            # fn's Python ran and may have reached the caller's objects (a closure): walk
            # again; a structure that changed is written by path (the update's rules).
            fresh = dispatch.collect(root)
            walked = fresh if fresh.graphdef == gd else None
        return finish_call(root, sm, res.written, res.written_values, res.out_static, res.out_values, walked)


_INTERNAL_ARG = re.compile(r"\b(kept|donated)\[(\d+)\]")


def _name_values(e: Exception, gd: GraphDef, donated_slots: tuple[int, ...]) -> None:
    """JAX names the compiled function's inputs (``argument kept[3] of JitFunction._pure``
    in an error about devices or shardings, say): add a note saying whose values they are."""
    seen: dict[str, str] = {}
    for m in _INTERNAL_ARG.finditer(str(e)):
        i = int(m.group(2))
        slot = i if m.group(1) == "kept" else (donated_slots[i] if i < len(donated_slots) else None)
        if slot is not None and slot < gd.num_leaves:
            seen.setdefault(m.group(0), _arg_path(gd.pathtable.path(slot)))
    if seen:
        e.add_note("specgraph.jit: " + "; ".join(f"{k} is the value at {v}" for k, v in seen.items()))


class _ArgsRoot(Node):
    """Root node holding a call's dynamic ``args`` (tuple) and ``kwargs`` (dict)."""


def _new_root(cls: type, args: tuple, kwargs: dict) -> Any:
    root: Any = object.__new__(cls)
    d = root.__dict__
    d["args"] = args
    d["kwargs"] = kwargs
    return root


def _call_args(root: Any, static: tuple) -> tuple[list[Any], dict[str, Any]]:
    args = list(root.__dict__["args"])
    for i, v in static[0]:
        args[i] = v
    kwargs = dict(root.__dict__["kwargs"])
    kwargs.update(static[1])
    return args, kwargs


def _merge_donated(slots: tuple[int, ...], kept: list[Any], donated: list[Any]) -> list[Any]:
    values = list(kept)
    for slot, v in zip(slots, donated, strict=True):
        values[slot] = v
    return values


def _same_structure(before: GraphDef, after_joint: GraphDef) -> bool:
    """Did ``fn`` leave the arguments' structure as it was?

    The joint walk (root ``_OutRoot`` with children ``a``: the arguments, ``b``:
    the output) indexes the arguments' objects first, shifted by one for the
    joint root; compare the argument part spec by spec.
    """
    n = len(before.table)
    if len(after_joint.table) < n + 1:
        return False
    for spec_b, spec_a in zip(before.table, after_joint.table[1 : n + 1], strict=True):
        if type(spec_b) is not type(spec_a) or spec_b[1] is not spec_a[1]:
            return False
        if type(spec_b) is NodeSpec:
            if spec_b[3] != spec_a[3] or spec_b[5] != spec_a[5]:
                return False
            if not all(_same_edge(x, y) for x, y in zip(spec_b[4], spec_a[4], strict=True)):
                return False
        elif spec_b[3] != spec_a[3] or spec_b[4] != spec_a[4]:
            return False
    return True


def _same_edge(b: Any, a: Any) -> bool:
    """Edge equality with the joint walk's index shift (+1) for nodes and states.

    Iterative: argument pytrees may nest as deeply as the walker goes.
    """
    pending = [(b, a)]
    while pending:
        b, a = pending.pop()
        kb = type(b)
        if kb is not type(a):
            return False
        if kb is NodeEdge or kb is StateEdge:
            if a[1] != b[1] + 1:
                return False
        elif kb is ArrayEdge or kb is StaticEdge:
            if not tuples_equal(a, b):  # a collapsed static may be a deep tuple
                return False
        elif kb is PytreeEdge:
            if not (b[1] == a[1] and b[2] == a[2] and b[4] == a[4] and len(b[3]) == len(a[3])):
                return False
            pending.extend(zip(b[3], a[3], strict=True))
        else:
            return False
    return True


def _rebuild_graph_output(root: Any, joint: GraphDef, n: int, out_values: list[Any]) -> Any:
    """Rebuild an output holding graph nodes/States: input objects come back live."""
    w = walk(root)  # the caller's objects by index (index i here is i + 1 in the joint walk)
    known = {i + 1: obj for i, obj in enumerate(w.objects)}
    values = list(w.values) + list(out_values)
    if len(w.values) != n:  # pragma: no cover - the structure was checked in the trace
        raise RuntimeError("argument structure changed during the call")
    return build_with(joint, values, known, edge=root_child(joint, "b"))


def _as_tuple(x: int | Sequence[int]) -> tuple[int, ...]:
    return (x,) if isinstance(x, int) else tuple(x)


def _fn_name(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


@overload
def jit(
    fn: Callable[_P, _R],
    *,
    static_argnums: int | Sequence[int] = (),
    static_argnames: str | Sequence[str] = (),
    donate_argnums: int | Sequence[int] = (),
    **jax_jit_kwargs: Any,
) -> JitFunction[_P, _R]: ...
@overload
def jit(
    fn: None = None,
    *,
    static_argnums: int | Sequence[int] = (),
    static_argnames: str | Sequence[str] = (),
    donate_argnums: int | Sequence[int] = (),
    **jax_jit_kwargs: Any,
) -> Callable[[Callable[_P, _R]], JitFunction[_P, _R]]: ...
def jit(
    fn: Callable[..., Any] | None = None,
    *,
    static_argnums: int | Sequence[int] = (),
    static_argnames: str | Sequence[str] = (),
    donate_argnums: int | Sequence[int] = (),
    **jax_jit_kwargs: Any,
) -> Any:
    """``jax.jit`` for functions whose arguments are (or contain) graph nodes.

    States that ``fn`` writes are written back into the caller's State objects
    after the call; states only read produce no outputs. Usable as a decorator,
    with or without arguments.
    """
    if fn is None:
        return functools.partial(
            jit, static_argnums=static_argnums, static_argnames=static_argnames,
            donate_argnums=donate_argnums, **jax_jit_kwargs,
        )
    if not callable(fn):
        raise TypeError(f"specgraph.jit expects a callable, got {type(fn).__qualname__}")
    return JitFunction(fn, static_argnums, static_argnames, donate_argnums, **jax_jit_kwargs)

