"""Flax NNX (0.12+) objects as specgraph nodes and states.

- Every ``nnx.Pytree`` (``Module``, ``Rngs``, ``Optimizer``, metrics, ``List`` ...) is a
  dict-backed node: its children are its ``__dict__`` minus the bookkeeping
  ``_pytree__state`` / ``_pytree__nodes``, which become the node's metadata (the
  mapping compared by equality, so a new instance of a model class has the same
  structure) and are rebuilt fresh, at the current trace level, on unflatten.
  ``List`` stores items under ``'0'``, ``'1'`` ...: their path keys are ints, in
  numeric order, as in ``nnx.state``. A plain value in an ``nnx.data`` attribute is a
  dynamic leaf, as in NNX.
- Every ``nnx.Variable`` is a state: the value is its raw value (no copy, no hook);
  its metadata dict is the state's metadata; writes are refused from another trace
  level with NNX's own error; a rebuilt Variable gets its own metadata dict.
- ``hijax`` Variables are refused with an explanation.

So ``specgraph.flatten(model)`` has exactly the paths of
``nnx.to_flat_state(nnx.state(model))``.
"""

from __future__ import annotations

from collections.abc import Container, Hashable
from typing import Any

from flax.nnx import pytreelib, statelib, tracers, variablelib

from .. import _registry as reg
from ..sharding import register_partition_metadata

__all__ = ["BOOKKEEPING", "BOOKKEEPING_FIELDS", "REBUILD"]

Pytree = pytreelib.Pytree
PytreeState = pytreelib.PytreeState
Variable = variablelib.Variable
_is_array_ref = variablelib.is_array_ref

#: the attributes NNX keeps on every Pytree for itself
BOOKKEEPING = ("_pytree__state", "_pytree__nodes")


def _trace_context() -> Any:
    """The current trace level, shared by everything one unflatten makes (one TraceState)."""
    return tracers.TraceState()


def _pytree_state(initializing: bool, is_setup: bool, trace_state: Any) -> Any:
    """A fresh ``PytreeState`` at the call's trace level (what ``PytreeState()`` makes)."""
    ps = _new(PytreeState)
    ps._trace_state = trace_state
    ps._initializing = initializing
    ps._is_setup = is_setup
    return ps


_new = object.__new__

#: The node's metadata: ``(_pytree__nodes, _initializing, _is_setup)``, as NNX's graphdef has them.
BOOKKEEPING_FIELDS = (
    reg.Field("_pytree__nodes", equal=True),  # per instance, equal across a class's instances
    reg.Field("_pytree__state", "_initializing"),
    reg.Field("_pytree__state", "_is_setup"),
)
REBUILD = (
    reg.Rebuild("_pytree__state", factory=_pytree_state, items=(1, 2)),
    reg.Rebuild("_pytree__nodes", item=0),  # immutable: NNX replaces it, never mutates it
)


class _DataAttributes:
    """The attribute names an NNX Pytree marks as data (``_pytree__nodes[name] is True``)."""

    __slots__ = ("nodes",)

    def __init__(self, nodes: Any) -> None:
        self.nodes = nodes

    def __contains__(self, name: object) -> bool:
        return name in self.nodes and self.nodes[name] is True


def _data_keys(cls: type, metadata: Any) -> Container[str] | None:
    if not cls._pytree__is_pytree:  # type: ignore[attr-defined]  # an NNX Pytree class's private flag
        return None  # a pytree=False class: NNX itself keeps plain values static
    return _DataAttributes(metadata[0])  # the node's _pytree__nodes


def _check_write(node: Any) -> None:
    node._check_valid_context(lambda: f"Cannot mutate '{type(node).__name__}' from different trace level")


def _native_state(items: list[tuple[tuple, type, tuple, Any]]) -> Any:
    """Gradients (or any selection) as NNX's own ``State`` of Variables, as ``nnx.grad`` returns."""
    flat = [(path, value if t is None else t._new(value, dict(meta)))  # type: ignore[attr-defined]  # a Variable class
            for path, t, meta, value in items]
    return statelib.from_flat_state(flat)


def _int_keys(cls: type) -> bool:
    return bool(getattr(cls, "_pytree__has_int_keys", False))


# -- Variables ------------------------------------------------------------------------


def _get(v: Any) -> Any:
    return v._raw_value


_plain_setter = Variable.set_raw_value
_store = object.__setattr__
_set_raw = vars(Variable)["_raw_value"].__set__
_set_metadata = vars(Variable)["_var_metadata"].__set__
_set_trace_state = vars(Variable)["_trace_state"].__set__


def _check_set(v: Any, value: Any) -> None:
    v._check_can_update()  # NNX's own TraceContextError from another trace level


def _set(v: Any, value: Any) -> None:
    raw = v._raw_value
    if _is_array_ref(raw) and (_is_array_ref(value) or hasattr(value, "shape")):
        v[...] = value[...]  # a Ref-backed Variable keeps its Ref (as nnx.update does)
    elif type(v).set_raw_value is _plain_setter:
        _set_raw(v, value)  # the trace level was checked in _check_set
    else:
        v.set_raw_value(value, _unsafe_bypass_check=True)


def _metadata(v: Any) -> tuple[tuple[str, Hashable], ...]:
    return tuple(sorted(v._var_metadata.items()))


def _new_variable(cls: type, value: Any, metadata: tuple[tuple[str, Hashable], ...], trace_state: Any) -> Any:
    """What ``cls._new(value, dict(metadata))`` makes, at the call's (shared) trace state."""
    v: Any = _new(cls)
    _set_trace_state(v, trace_state)
    _set_metadata(v, dict(metadata))  # its own metadata dict
    _set_raw(v, value)
    return v


def _trace_token() -> Any:
    """The current JAX trace, as the object a valid TraceState's ``_jax_trace._trace_ref`` is."""
    return tracers.current_jax_trace()._trace_ref


def _specializable(metadata: tuple[tuple[str, Hashable], ...]) -> bool:
    meta = dict(metadata)
    return meta.get("ref") is False and meta.get("hijax") is False  # a Ref-backed one: the reference


def _layout() -> reg.StateLayout | None:
    """Variable's slots for generated code; ``None`` if this JAX lacks what the write check reads."""
    try:
        token = _trace_token()
        if tracers.TraceState()._jax_trace._trace_ref is not token:
            return None
    except Exception:
        return None
    return reg.StateLayout(
        base=Variable,
        value="_raw_value",
        metadata="_var_metadata",
        context="_trace_state",
        token=_trace_token,
        token_path=("_trace_state", "_jax_trace", "_trace_ref"),
        overridable=("_raw_value", "_var_metadata", "_trace_state", "set_raw_value", "_check_can_update",
                     "__getattribute__"),
        specializable=_specializable,
    )


_LAYOUT = _layout()


reg.register_dict_node_type(
    Pytree,
    hidden=BOOKKEEPING,
    int_keys=_int_keys,
    bookkeeping=BOOKKEEPING_FIELDS,
    create=REBUILD,
    context=_trace_context,
    data_keys=_data_keys,
    check_write=_check_write,
    token=_trace_token if _LAYOUT is not None else None,
    token_path=("_pytree__state", "_trace_state", "_jax_trace", "_trace_ref"),
    native_state=_native_state,
)
reg.register_state_type(
    Variable, get=_get, set=_set, metadata=_metadata, create=_new_variable, check_set=_check_set,
    context=_trace_context, layout=_LAYOUT,
)
reg.register_unsupported_type(
    variablelib.HijaxVariable,
    "it is a hijax Variable (hijax=True), whose value lives in JAX's hijax machinery; "
    "create the Variable with hijax=False (the default) to use it with specgraph",
)


# -- partition annotations: NNX keeps them under ``out_sharding`` ------------------------
# (``nnx.with_partitioning``, ``nnx.Param(..., out_sharding=...)``). Logical axis names
# (``sharding_rules`` / ``nnx.logical_axis_rules``) are not translated: the names must be
# mesh axes.


def _out_sharding(metadata: tuple[tuple[str, Hashable], ...]) -> Any:
    for key, value in metadata:
        if key == "out_sharding":
            return value or None
    return None


def _with_out_sharding(metadata: tuple[tuple[str, Hashable], ...], spec: Any) -> tuple:
    items = dict(metadata)
    items["out_sharding"] = spec
    return tuple(sorted(items.items()))


register_partition_metadata(Variable, _out_sharding, _with_out_sharding)
