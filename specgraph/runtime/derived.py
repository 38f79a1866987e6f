"""Functions derived from a variant's flatten plan, for the operations beyond flatten.

A variant's plan holds the guards that prove an object has one structure, the local that
holds each object and the operand that holds each value. Rendered through the same
templates, with other outputs, it gives:

* selections (the ``collect`` template): the guards, then only what one operation returns:
  the State objects for ``states()``, the nodes for ``nodes()``, per value the State or
  the array leaf for ``iter_leaf()``;
* partial updates (the ``update`` template): the guards, then writes of the given slots
  only, each value read at its position in the given parts' values (a split part, or
  several parts together: see ``_partition.slot_map``).

Each is compiled on first use and kept on its variant (``Variant.derived``); a miss falls
back to the reference walker exactly as ``collect`` and ``update`` do.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Hashable
from operator import itemgetter
from typing import Any

from .. import codegen
from .._ir import NodeSpec, StateSpec
from .._partition import Partition, SlotMap, filter_key, origin, partition, slot_map
from .._statemap import StateMap
from ..codegen.ops import OPS, Step
from ..generic._flatten import Walk
from . import dispatch
from .cache import CONFIG, LOCK, Variant

__all__ = ["Selection", "filled", "select", "states_view", "update_parts"]

Path = tuple[Hashable, ...]


# -- selections ---------------------------------------------------------------------


class Selection:
    """A compiled selection of one variant and what its outputs mean.

    ``fn(root)`` returns ``(objects, values)`` or the name of the failed guard. ``paths``:
    per selected object, its path (``states``, ``nodes``), or per value slot (``leaves``,
    whose ``order(objects + values)``, when not ``None``, lists each slot's State or leaf).
    """

    __slots__ = ("fn", "order", "paths", "state_pos", "table", "template", "views")

    def __init__(self, fn: Any, table: Any) -> None:
        self.fn = fn
        self.table = table  # the variant's path table
        self.paths: tuple[Path, ...] = ()
        self.state_pos: dict[int, int] = {}  # slot -> position among the selected states
        self.order: Callable[[list[Any]], list[Any]] | None = None
        self.template: dict[Path, None] = {}  # the paths' dict (states, nodes): see filled()
        self.views: dict[tuple, tuple[Partition, list]] = {}  # filter key -> states by filter


#: the selections there are
SELECTIONS = ("states", "nodes", "leaves")
#: guard kinds a selection leaves out: what they prove (each state's metadata is the
#: structure's) changes no path and no object a selection returns
_NOT_READ = frozenset({"metadata"})


def select(node: Any, kind: str) -> tuple[Selection, list[Any], list[Any]] | Walk:
    """The outputs of selection ``kind`` for ``node`` from a matching variant, or (no
    variant matches, or the specializer is off) the reference walker's ``Walk``."""
    entry = dispatch._types.get(type(node)) if CONFIG.enabled else None
    if entry is not None:
        for var in entry.variants:
            sel = var.derived.get(kind)
            if sel is None:
                sel = _compile_selection(var, kind)
            r = sel.fn(node)
            if type(r) is tuple:
                var.stats.walk_hits += 1
                return sel, r[0], r[1]
            var.stats.misses[r] += 1
    return dispatch.walk_generic(node, entry)


def _compile_selection(var: Variant, kind: str) -> Selection:
    with LOCK:
        sel = var.derived.get(kind)
        if sel is not None:
            return sel
        plan = var.plan
        table = var.key.table
        states = [spec for spec in table if type(spec) is StateSpec]
        values: list[Any]
        if kind == "states":
            picked, values = [s.index for s in states], []
        elif kind == "nodes":
            picked, values = [s.index for s in table if type(s) is NodeSpec], []
        elif kind == "leaves":
            by_slot = sorted(states, key=lambda s: s.slot)
            leaves = [slot for slot, t in enumerate(var.table.types) if t is None]
            picked, values = [s.index for s in by_slot], leaves
        else:
            raise ValueError(f"unknown selection {kind!r}: one of {SELECTIONS}")
        try:
            if plan.outlined:
                # Outlined code holds no local per object: pick from the collect function's lists.
                fn = _picked(var.collect or dispatch._compile_collect(var), picked, values)
            else:
                built = codegen.build(
                    "collect", var.key, max_steps=CONFIG.max_steps,
                    plan=dataclasses.replace(plan, objects=[plan.objects[i] for i in picked],
                                             values=[plan.values[slot] for slot in values]),
                    disabled=dispatch._disabled_guards | _NOT_READ)
                fn = built.fn
        except Exception as e:  # never an error for the user: the reference walker serves it
            dispatch._totals["compile_failures"] += 1
            warnings.warn(f"specgraph could not specialize {kind} of a {var.key.type.__qualname__} "
                          f"({type(e).__name__}: {e})", RuntimeWarning, stacklevel=5)
            fn = dispatch._refuse
        objects = picked
        sel = Selection(fn, var.table)
        paths = var.paths
        if kind == "states":
            sel.paths = tuple(paths[s.index] for s in states)
            sel.state_pos = {s.slot: k for k, s in enumerate(states)}
            sel.template = dict.fromkeys(sel.paths)
        elif kind == "nodes":
            sel.paths = tuple(paths[s.index] for s in table if type(s) is NodeSpec)
            sel.template = dict.fromkeys(sel.paths)
        else:
            sel.paths = var.table.paths
            n_states = len(objects)
            position = [0] * len(var.table)
            for k, s in enumerate(by_slot):
                position[s.slot] = k
            for k, slot in enumerate(leaves):
                position[slot] = n_states + k
            if leaves:  # (without any, the states come in slot order already)
                sel.order = _gather(tuple(position))
        var.derived[kind] = sel
        return sel


def _picked(collect: Any, objects: list[int], values: list[int]) -> Callable[[Any], Any]:
    """A selection from a variant's collect function: the objects at the table indices
    ``objects`` and the values at the slots ``values`` (or the guard that failed)."""
    get_o = _take(tuple(objects))
    get_v = _take(tuple(values))

    def select(root: Any) -> Any:
        r = collect(root)
        if type(r) is not tuple:
            return r
        return list(get_o(r[0])), list(get_v(r[1]))

    return select


def _gather(positions: tuple[int, ...]) -> Callable[[list[Any]], list[Any]]:
    get = itemgetter(*positions)
    if len(positions) == 1:
        return lambda values: [get(values)]
    return lambda values: list(get(values))


def filled(template: dict[Path, None], paths: tuple[Path, ...], objects: Any) -> dict[Path, Any]:
    """``dict(zip(paths, objects))``, from a copy of ``template`` (``dict.fromkeys(paths)``):
    the copy takes the keys without hashing them and is sized for them already, so filling
    it only replaces values (a fresh dict would grow several times as it fills)."""
    d = template.copy()
    d.update(zip(paths, objects, strict=True))
    return d


def states_view(sel: Selection, filters: tuple) -> list[tuple[tuple[Path, ...], Any, dict]] | None:
    """Per filter, ``(paths, take, template)``: the states it matches first, for type filters
    on the structure of ``sel`` (a ``states`` selection); ``None`` for a predicate.

    Kept with the partition it was made from: a partition computed again (the classes
    changed) makes the view again."""
    key = filter_key(filters)
    if key is None:
        return None
    p = partition(sel.table, [], filters, exhaustive=False)
    cached = sel.views.get(key)
    if cached is not None and cached[0] is p:
        return cached[1]
    paths, pos = sel.paths, sel.state_pos
    view = []
    for slots in p.slots:
        mine = [pos[s] for s in slots if s in pos]  # (array leaves are no states)
        mine_paths = tuple(paths[k] for k in mine)
        view.append((mine_paths, _take(tuple(mine)), dict.fromkeys(mine_paths)))
    if len(sel.views) >= 64:
        sel.views.pop(next(iter(sel.views)))
    sel.views[key] = (p, view)
    return view


def _take(positions: tuple[int, ...]) -> Callable[[list[Any]], Any]:
    if not positions:
        return lambda objects: ()
    get = itemgetter(*positions)
    if len(positions) == 1:
        return lambda objects: (get(objects),)
    return get


# -- partial updates ----------------------------------------------------------------


def update_parts(entry: Any, node: Any, states: tuple[StateMap, ...]) -> bool | None:
    """Write parts of one structure's values (``split`` parts, ``StateMap.split`` parts,
    ``jax.tree.map`` of them) through the specialized update, with no path lookup.

    ``True``: written. ``False``: a guard refused (the reference must answer, walking).
    ``None``: these parts are not of a specialized structure of this type.
    """
    first = states[0]._table
    o = origin(first)
    base = first if o is None else o[0]
    for var in entry.variants:
        if var.table is not base:
            continue
        m = slot_map(base, tuple(s._table for s in states))
        if m is None or m.repeated:
            return None  # not parts of this table, or a path given twice: the reference says
        if len(states) == 1:
            values = states[0]._values
        else:
            values = []
            for s in states:
                values += s._values
        if m.full:
            assert m.gather is not None
            r = var.update(node, m.gather(values))
        else:
            fn = m.updates.get(var)
            if fn is None:
                fn = _compile_partial_update(var, m)
            if fn is _by_paths:
                return None  # writes these slots cannot be picked from: the reference writes
            r = fn(node, values)
        if r is None:
            var.stats.update_hits += 1
            return True
        var.stats.misses[r] += 1
        return False
    return None


def _compile_partial_update(var: Variant, m: SlotMap) -> Any:
    with LOCK:
        fn = m.updates.get(var)
        if fn is not None:
            return fn
        plan = var.plan
        if any(c.op == "check_kept_same" for c in plan.checks):
            # (outlined occurrences' unchanged-array checks read the whole update's slots)
            m.updates[var] = _by_paths
            return _by_paths
        position = {slot: k for k, slot in enumerate(m.slots)}
        checks = [_reslot(c, position) if c.op == "check_unchanged" else c
                  for c in plan.checks if c.op != "check_unchanged" or c.slot in position]
        consts = plan.consts
        if plan.outlined:
            picked = _picked_writes(plan, m.slots, position, checks)
            if picked is None:
                m.updates[var] = _by_paths
                return _by_paths
            writes, consts = picked
        else:
            writes = [_reslot(w, position) for w in plan.writes if w.slot in position]
        try:
            built = codegen.build("update", var.key, max_steps=CONFIG.max_steps,
                                  plan=dataclasses.replace(plan, checks=checks, writes=writes, consts=consts),
                                  disabled=dispatch._disabled_guards)
            fn = built.fn
        except Exception as e:  # never an error for the user: the reference serves it
            dispatch._totals["compile_failures"] += 1
            warnings.warn(f"specgraph could not specialize a partial update of a "
                          f"{var.key.type.__qualname__} ({type(e).__name__}: {e})", RuntimeWarning,
                          stacklevel=5)
            fn = _refuse_update
        m.updates[var] = fn
        return fn


#: the writes of outlined code: per occurrence, a loop's item or a chain's link (slots relative)
_OUTLINED_WRITES = frozenset({"write_shape", "write_shape_arrays", "write_each", "write_chain",
                              "write_mixed"})


def _picked_writes(plan: Any, slots: tuple[int, ...], position: dict[int, int],
                   checks: list[Step]) -> tuple[list[Step], Any] | None:
    """The writes of a partial update of an outlined structure, and the constants they bind.

    Outlined code writes by occurrence, every slot of it; a part's slots are picked instead:
    the written ones outside outlined code as their own steps (at their positions in the
    part's values), and those inside it through the objects by table index that the guards,
    rendered as the collect, return (one ``write_picked``: the States at those indices get
    the values at those positions). ``None``: outlined code writes some slot otherwise than
    into a plain State's ``value`` (the reference writes such a part, by path)."""
    fns = {f.name: f for f in plan.shape_fns}
    kinds = {id(w): _outlined_kind(w, fns) for w in plan.writes if w.op in _OUTLINED_WRITES}
    if None in kinds.values():
        return None
    consts = plan.consts.copy()
    writes: list[Step] = []
    inline: set[int] = {c.slot for c in checks if c.op == "check_unchanged"}
    at = -1
    for w in plan.writes:
        if kinds.get(id(w)) == "each":  # (the same loop over the part's items)
            inline.update(range(w.slot, w.slot + w.total))
            ks = [k for k in range(w.total) if w.slot + k in position]
            if not ks:
                continue
            first = position[w.slot + ks[0]]
            if [position[w.slot + k] for k in ks] != list(range(first, first + len(ks))):
                return None  # (not one stretch of the part's values: the reference writes it)
            items = f"map({w.obj}.__getitem__, {consts.bind(tuple(ks), 'PICK')})"
            writes.append(Step("write_each", obj=items, var=w.var, loads=w.loads, writes=w.writes, pos=w.pos,
                               slot=first, n=1, states=None, total=len(ks), kept=None))
            continue
        if w.op in _OUTLINED_WRITES:
            at = len(writes) if at < 0 else at
            continue
        inline.add(w.slot)
        if w.slot in position:
            writes.append(_reslot(w, position))
    index_of = {spec.slot: spec.index for spec in plan.graphdef.table if type(spec) is StateSpec}
    picked = [slot for slot in slots if slot not in inline]
    if not picked:
        return writes, consts
    if any(slot not in index_of for slot in picked):
        return None
    pos = tuple(position[slot] for slot in picked)
    objs = consts.bind(_take(tuple(index_of[slot] for slot in picked)), "PICK")
    vals = None if pos == tuple(range(len(pos))) else consts.bind(_take(pos), "PICK")
    writes.insert(max(at, 0), Step("write_picked", objs=objs, vals=vals, n=len(picked)))
    return writes, consts


def _outlined_kind(w: Step, fns: dict[str, Any]) -> str | None:
    """How a part of outlined write ``w``'s slots is written: ``"plain"``, it writes plain
    States' ``value`` only (in its loops and callees too), so the part's States are picked
    by table index; ``"each"``, a loop writing one state per item of a list the guards made
    (a run of foreign states: NNX Variables, BrainState States, written through their
    layout), so the part is the same loop over just its items; ``None``: neither (the
    reference writes the part, by path)."""
    if w.op == "write_each" and w.n == 1 and not w.kept and not w.states and len(w.writes) == 1 \
            and w.writes[0].slot == 0 and w.writes[0].op in ("write_slot", "write_raw_item"):
        return "each"
    if w.op == "write_value":
        return "plain"
    if w.op == "write_shape":
        inner = fns[w.fn].writes
    elif w.op == "write_mixed":  # (a loop calling one shape's function per item)
        inner = [x for name in w.fns for x in fns[name].writes]
    elif w.op == "write_each":
        inner = w.writes
    elif w.op == "write_chain":
        inner = w.writes_before + w.writes_after
    else:
        return None
    return "plain" if all(_outlined_kind(x, fns) == "plain" for x in inner) else None


def _by_paths(root: Any, vals: Any) -> str:  # (a marker: never called)
    raise AssertionError("a partial update by paths is the reference's")


def _reslot(step: Step, position: dict[int, int]) -> Step:
    """``step`` reading its value at its position among the given values, not its slot."""
    fields = {f: getattr(step, f) for f in OPS[step.op].fields}
    fields["slot"] = position[step.slot]
    return Step(step.op, **fields)


def _refuse_update(root: Any, vals: Any) -> str:
    return "error"
