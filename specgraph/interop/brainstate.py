"""BrainState (0.5+) objects as specgraph nodes and states.

- Every ``brainstate.graph.Node`` is a dict-backed node: its children are its sorted
  ``__dict__`` minus ``graph_invisible_attrs``; bare arrays under it are static, as
  BrainState has them (so paths are those of ``brainstate.graph.states``).
- Every ``brainstate.State`` is a state. Its value is read and written raw only
  while no BrainState trace is recording, no hook is registered (on the state or
  globally), no value check is switched on and JAX is not tracing; otherwise through
  ``.value``, so reads inside ``brainstate.transform.jit`` are recorded (never baked
  in as constants) and hooks run. Its metadata is ``_name``, ``tag`` and the keyword
  metadata; a rebuilt State gets the current trace level, a fresh trace tracer and
  hook manager, like ``TreefyState.to_state``.

Generated code follows the same rules (``DictStateLayout``): it reads and writes
``_value`` only when the per-call checks and each state's hook guard pass, and hands
the call to the reference walker otherwise.
"""

from __future__ import annotations

import operator
from collections.abc import Hashable
from typing import Any

from brainstate import _state as bst
from brainstate.graph import Node
from jax.extend import source_info_util

from .. import _registry as reg

__all__ = ["BOOKKEEPING"]

State = bst.State
TRACE_CONTEXT = bst.TRACE_CONTEXT
HookManager = bst.HookManager
StateJaxTracer = bst.StateJaxTracer
GlobalHookRegistry = bst.GlobalHookRegistry
_Invalidated = bst._InvalidatedTraceValue

#: the attributes BrainState keeps on every State for itself (not metadata)
BOOKKEEPING = frozenset(
    {"_value", "_level", "_source_info", "_hooks_manager", "_trace_state", "_been_writen"}
)

try:  # whether JAX is tracing right now (a write from inside a trace goes through .value)
    from jax._src.core import trace_ctx as _trace_ctx

    def _jax_top_level() -> bool:
        return _trace_ctx.is_top_level()
except Exception:  # pragma: no cover - another JAX layout: always take the checked path
    def _jax_top_level() -> bool:
        return False


_plain_types: dict[type, bool] = {}
# What a State subclass must not redefine for raw reads and writes to equal .value's.
_VALUE_PATH = ("value", "_read_value", "_write_value", "check_if_deleted", "_check_invalidated",
               "_check_value_tree", "__setattr__", "_setattr")


def _plain(t: type) -> bool:
    ok = _plain_types.get(t)
    if ok is None:
        ok = _plain_types[t] = not any(
            name in vars(k) for k in t.__mro__[: t.__mro__.index(State)] for name in _VALUE_PATH
        )
    return ok


def _no_hooks(d: dict) -> bool:
    hooks = d.get("_hooks_manager")
    return (hooks is None or not hooks._has_hooks) and not GlobalHookRegistry.instance()._has_hooks


def _get(st: Any) -> Any:
    d = st.__dict__
    if not TRACE_CONTEXT.state_stack and _plain(type(st)) and _no_hooks(d):
        v = d["_value"]
        if type(v) is not _Invalidated:
            return v
    return st.value  # recorded by a recording trace, hooks run, a poisoned state explains itself


def _set(st: Any, value: Any) -> None:
    d = st.__dict__
    if (not TRACE_CONTEXT.state_stack and not TRACE_CONTEXT.tree_check[-1]
            and not TRACE_CONTEXT.jax_tracer_check[-1] and _plain(type(st)) and _no_hooks(d)
            and _jax_top_level()):
        d["_value"] = value
        d["_been_writen"] = True
    else:
        st.value = value


def _metadata(st: Any) -> tuple[tuple[str, Hashable], ...]:
    items = []
    for k, v in st.__dict__.items():
        if k in BOOKKEEPING:
            continue
        if k == "tag" and type(v) is set:
            v = frozenset(v)
        items.append((k, v))
    items.sort(key=_first)
    return tuple(items)


def _first(item: tuple[str, Any]) -> str:
    return item[0]


def _context() -> tuple[Any, Any, int]:
    """What every State one unflatten makes shares: the trace tracer, source info and level."""
    return StateJaxTracer(), source_info_util.current(), TRACE_CONTEXT.get_trace_stack_level()


def _create(cls: type, value: Any, metadata: tuple[tuple[str, Hashable], ...],
            context: tuple[Any, Any, int] | None = None) -> Any:
    tracer, source_info, level = context if context is not None else _context()
    st: Any = object.__new__(cls)
    d = st.__dict__
    for k, v in metadata:
        d[k] = set(v) if k == "tag" and type(v) is frozenset else v
    d["_value"] = value
    d["_level"] = level
    d["_trace_state"] = tracer
    d["_source_info"] = source_info
    d["_hooks_manager"] = HookManager()  # its own: hooks are per state
    d["_been_writen"] = False
    return st


# -- the same rules for generated code ---------------------------------------------------


def _raw_reads() -> bool:
    """Once per call: no BrainState trace records reads and no hook is registered globally."""
    return not TRACE_CONTEXT.state_stack and not GlobalHookRegistry.instance()._has_hooks


def _raw_writes() -> bool:
    """Once per call: what ``_set`` asks before writing raw (the per-state part is guarded)."""
    return (not TRACE_CONTEXT.state_stack and not TRACE_CONTEXT.tree_check[-1]
            and not TRACE_CONTEXT.jax_tracer_check[-1] and not GlobalHookRegistry.instance()._has_hooks
            and _jax_top_level())


def _tag_metadata(tag: Any) -> Any:
    return frozenset(tag) if type(tag) is set else tag


def _tag_stored(tag: Any) -> Any:
    return set(tag) if type(tag) is frozenset else tag


def _new_hooks(context: Any) -> Any:
    return HookManager()  # its own: hooks are per state


def _not_written(context: Any) -> bool:
    return False


_LAYOUT = reg.DictStateLayout(
    base=State,
    value="_value",
    bookkeeping=BOOKKEEPING,
    convert={"tag": (_tag_metadata, _tag_stored)},
    raw_reads=_raw_reads,
    raw_writes=_raw_writes,
    hooks="_hooks_manager",
    hooks_flag="_has_hooks",
    invalid=_Invalidated,
    written="_been_writen",
    rebuild=(  # what _create makes, from the context (tracer, source info, level)
        reg.Rebuild("_level", factory=operator.itemgetter(2)),
        reg.Rebuild("_trace_state", factory=operator.itemgetter(0)),
        reg.Rebuild("_source_info", factory=operator.itemgetter(1)),
        reg.Rebuild("_hooks_manager", factory=_new_hooks),
        reg.Rebuild("_been_writen", factory=_not_written),
    ),
    overridable=(*_VALUE_PATH, "__getattribute__"),
)

reg.register_dict_node_type(Node, hidden_attr="graph_invisible_attrs", static_arrays=True)
reg.register_state_type(State, get=_get, set=_set, metadata=_metadata, create=_create, context=_context,
                        layout=_LAYOUT)
