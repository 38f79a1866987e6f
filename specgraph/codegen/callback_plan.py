"""Planning for node types registered with callbacks (``register_graph_node_type``).

Generated code calls the registered ``flatten`` (bound as a constant of the function's
namespace) exactly where the reference walker does, once per defining occurrence, and
proves that its answer has the planned structure before reading a child:

* its items have the planned count (a ``node_keys`` guard), and each key, in order, is
  the same key as planned (``node_keys``; the sameness rules of ``_sameness``: a scalar
  key by exact type and ``==``, a tuple of values item by item, any other object by
  identity);
* its metadata is the same as planned (a ``metadata`` guard, the same rules).

A callback need not be pure: it may yield its keys in another order, or other metadata,
from one call to the next. That is a guard miss, and the reference walker answers (and
records the new order, which may be specialized in turn). The update writes an array
leaf held directly by such a node back with the registered ``set_key`` when its value
changed, as the reference update does; what lies in a list or dict below it is written
in place.
"""

from __future__ import annotations

from typing import Any

from .. import _registry as reg
from .._ir import ArrayEdge, NodeSpec
from .._sameness import key_sig, match_mode, value_sig
from .naming import Literal, path_label
from .ops import Step
from .planning import Work

__all__ = ["CallbackPlanning"]


class CallbackPlanning:
    """The flatten planner's methods for callback node types (mixed into ``FlattenPlanner``)."""

    # What the planner provides (see FlattenPlanner).
    gd: Any
    consts: Any
    steps: list[Step]
    array_writes: list[tuple[int, int, Step]]
    nearest: dict[Any, int]
    local_of: dict[int, str]
    witnessed: set[int]
    _fresh: Any
    _type_guard: Any
    _add_distinct: Any
    _setters: dict[str, tuple[str, reg.NodeImpl]]  # node local -> (bound set_key, impl)

    def _callback_node(self, work: Work, impl: reg.NodeImpl) -> list[Work]:
        """A node of a callback type: its registered flatten called, its answer guarded."""
        idx = work.edge.index
        spec: NodeSpec = self.gd.table[idx]
        var = work.obj
        assert type(var) is str  # a node is always loaded into a local
        label = path_label(work.path)
        self.local_of[idx] = var
        self._type_guard(var, spec.type, label)
        if idx not in self.witnessed:
            self._add_distinct(var, spec.type)
        items, meta = f"ch_{idx}", f"md_{idx}"
        self.steps.append(Step("call_flatten", dst=items, meta=meta,
                               fn=self.consts.bind(impl.flatten, "F"), obj=var, label=label))
        self.steps.append(Step("guard_cb_len", obj=items, n=len(spec.keys), label=label))
        pairs = []
        out = []
        for i, (k, edge) in enumerate(zip(spec.keys, spec.children, strict=True)):
            key_local, child = f"bk_{idx}_{i}", self._fresh("x")
            pairs.append((key_local, child))
            out.append(Work(edge, child, (work.path, k), var, self.consts.key(k), True))
        if pairs:
            self.steps.append(Step("load_cb_items", obj=items, pairs=pairs))
        for (key_local, _), k in zip(pairs, spec.keys, strict=True):
            self.steps.append(Step("guard_cb_key", obj=key_local, cls=self.consts.bind(type(k), "T"),
                                   const=self.consts.bind(k, "K"), mode=_key_mode(k),
                                   label=label))
        m = spec.meta
        self.steps.append(Step("guard_field", obj=meta, cls=self.consts.bind(type(m), "T"),
                               const=self.consts.bind(m, "C"), mode=match_mode(m, value_sig(m)),
                               label=f"{label}: the metadata of its registered flatten"))
        if any(type(c) is ArrayEdge for c in spec.children):
            self._setters[var] = (self.consts.bind(impl.set_key, "F"), impl)
        self.nearest.update((w.obj, idx) for w in out)
        return out

    def _callback_write(self, work: Work, slot: int, label: str) -> bool:
        """The update's write of an array leaf held directly by a callback node (through
        its registered ``set_key``, only when the value changed); False for any other."""
        found = self._setters.get(work.owner) if work.owner is not None else None
        if found is None:
            return False
        key: Literal | str = work.key
        step = Step("write_set_key", obj=work.owner, setter=found[0], key=key, current=work.obj,
                    slot=slot, label=label)
        self.array_writes.append((self.nearest[work.obj], len(self.array_writes), step))
        return True


def _key_mode(k: Any) -> str:
    """How a key's guard matches: a ``str`` (subclasses too: one path key, as the walker
    and ``key_sig`` have it) by ``str``'s own ``!=`` (no subclass's ``__eq__`` asked), any
    other key by the sameness rules."""
    return "str" if isinstance(k, str) else match_mode(k, key_sig(k))
