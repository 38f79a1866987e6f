"""``specgraph.jit``'s write-back: new state values into the caller's walked objects.

The pre-call walk already proved the structure (and found every State object), and
no Python touched the caller's objects while the compiled function ran, so the
write-back runs no guard again. What it still runs is every library's write rule
(NNX's trace level, BrainState's ``.value`` path): all checks first, then all writes,
so a refused write changes nothing. Only the states the function wrote are written,
as ``brainstate.transform.jit`` does. Per (GraphDef, written slots) a plan is made
once; NNX Variables are then checked and stored in C-level batches.
"""

from __future__ import annotations

import collections
import itertools
import operator
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from .. import _registry as reg
from .._ir import GraphDef, StateSpec
from ..generic._flatten import Walk
from ..generic._update import apply_update

__all__ = ["write_back"]

_MRO = operator.attrgetter("__mro__")


def _pick(indices: Sequence[int]) -> Callable[[Sequence[Any]], tuple]:
    """``seq -> tuple(seq[i] for i in indices)`` at C speed (always a tuple)."""
    if not indices:
        return _nothing
    if len(indices) == 1:
        i = indices[0]
        return lambda seq: (seq[i],)
    return operator.itemgetter(*indices)


def _nothing(seq: Sequence[Any]) -> tuple:
    return ()


def _impl(t: type) -> reg.StateImpl:
    simpl = reg.state_impl(t)
    assert simpl is not None  # a foreign state class
    return simpl


class _LayoutGroup:
    """The written states served by one ``StateLayout``: checked and stored in batches."""

    __slots__ = ("class_dicts", "class_names", "impls", "layout", "mros", "objects", "positions",
                 "read_token", "store", "token", "types")

    def __init__(self, layout: reg.StateLayout, entries: list[tuple[int, int, type]]) -> None:
        self.layout = layout
        self.objects = _pick([index for _, index, _ in entries])
        self.positions = _pick([pos for pos, _, _ in entries])
        self.impls = [_impl(t) for _, _, t in entries]
        assert layout.token is not None
        self.token = layout.token
        self.read_token = operator.attrgetter(".".join(layout.token_path))
        self.store = layout.setter(layout.value)
        # StateLayout.plain as C-level tests run per call: every class keeps its MRO and
        # no class below the layout's base gains an override of what the layout relies on.
        types = list(dict.fromkeys(t for _, _, t in entries))
        self.types = types
        self.mros = [t.__mro__ for t in types]
        pairs = [(vars(k), name) for t in types for k in t.__mro__[: t.__mro__.index(layout.base)]
                 for name in (*layout.overridable, "__getattribute__")]
        self.class_dicts = [d for d, _ in pairs]
        self.class_names = [n for _, n in pairs]

    def plain(self) -> bool:
        return all(map(operator.is_, map(_MRO, self.types), self.mros)) and not any(
            map(operator.contains, self.class_dicts, self.class_names))


class _Plan:
    """How the written slots of one GraphDef go back: specgraph States (``.value``),
    layout groups, other foreign states (their ``StateImpl``), array leaves (the update)."""

    __slots__ = ("arrays", "groups", "native", "native_pos", "other")

    def __init__(self, gd: GraphDef, written: Sequence[int]) -> None:
        spec_of = {spec.slot: spec for spec in gd.table if type(spec) is StateSpec}
        native: list[tuple[int, int]] = []
        by_layout: dict[reg.StateLayout, list[tuple[int, int, type]]] = {}
        self.other: list[tuple[int, int, reg.StateImpl]] = []
        self.arrays: list[tuple[int, int]] = []  # (position, slot)
        for pos, slot in enumerate(written):
            spec = spec_of.get(slot)
            if spec is None:
                self.arrays.append((pos, slot))
                continue
            simpl = reg.state_impl(spec.type)
            if simpl is None:
                native.append((pos, spec.index))
                continue
            lay = simpl.layout
            if type(lay) is reg.StateLayout and lay.token is not None and simpl.check_set is not None \
                    and lay.plain(spec.type) and lay.specializable(spec.metadata):
                by_layout.setdefault(lay, []).append((pos, spec.index, spec.type))
            else:
                self.other.append((pos, spec.index, simpl))
        self.native = _pick([i for _, i in native])
        self.native_pos = _pick([p for p, _ in native])
        self.groups = [_LayoutGroup(lay, entries) for lay, entries in by_layout.items()]

    def run(self, root: Any, walked: Walk, values: Sequence[Any]) -> None:
        objects = walked.objects
        slow: list[tuple[Any, Any, reg.StateImpl]] = []
        fast: list[tuple[Any, tuple, tuple]] = []
        for g in self.groups:
            states, vals = g.objects(objects), g.positions(values)
            token = g.token()
            try:
                ok = g.plain() and all(map(operator.is_, map(g.read_token, states), itertools.repeat(token)))
            except AttributeError:
                ok = False
            if ok:
                fast.append((g.store, states, vals))
            else:  # made at another trace level, or a class changed: the library decides
                slow.extend(zip(states, vals, g.impls, strict=True))
        for pos, index, simpl in self.other:
            slow.append((objects[index], values[pos], simpl))
        for st, v, simpl in slow:
            if simpl.check_set is not None:
                simpl.check_set(st, v)
        if self.arrays:  # validated (the owners' write rules) and written by the update
            apply_update(root, walked, {slot: values[pos] for pos, slot in self.arrays})
        # Every check passed: write the states.
        for st, v in zip(self.native(objects), self.native_pos(values), strict=True):
            st.value = v
        for store, states, vals in fast:
            collections.deque(map(store, states, vals), maxlen=0)
        for st, v, simpl in slow:
            simpl.set(st, v)


# GraphDef -> {written slots -> plan}
_plans: weakref.WeakKeyDictionary[GraphDef, dict[tuple[int, ...], _Plan]] = weakref.WeakKeyDictionary()


def write_back(root: Any, walked: Walk, written: tuple[int, ...], values: Sequence[Any]) -> None:
    """Write ``values`` (for the value slots ``written``) into the graph ``walked`` found
    in ``root``: the library write checks first, then the writes."""
    gd = walked.graphdef
    plans = _plans.get(gd)
    if plans is None:
        plans = _plans[gd] = {}
    plan = plans.get(written)
    if plan is None:
        if len(plans) >= 16:
            plans.clear()
        plan = plans[written] = _Plan(gd, written)
    plan.run(root, walked, values)
