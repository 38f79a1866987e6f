"""Planning for foreign classes: dict-backed node classes and states with a layout.

A registered dict-backed node class (NNX Pytrees, BrainState Nodes) is read as a
specgraph ``Node`` is, plus its bookkeeping fields; a foreign state with a
``StateLayout`` (NNX Variables) is read and written through its slots. Both are
:class:`ForeignPlanning` methods of the flatten planner.
"""

from __future__ import annotations

from typing import Any

from .. import _registry as reg
from .._ir import ArrayEdge, NodeEdge
from .._sameness import match_mode, value_sig
from .naming import Literal, StateValue, path_label
from .ops import Step
from .planning import Declined, RunEdge, StateRun, Work

__all__ = ["ForeignPlanning"]


class ForeignPlanning:
    """The flatten planner's methods for foreign classes (mixed into ``FlattenPlanner``)."""

    # What the planner provides (see FlattenPlanner).
    gd: Any
    consts: Any
    steps: list[Step]
    checks: list[Step]
    state_writes: list[Step]
    values: list[Any]
    facts: Any
    local_of: dict[int, str]
    witnessed: set[int]
    nearest: dict[Any, int]
    no_user_code: bool
    keyed_statics: bool
    _token: str | None
    token_step: Step | None
    pre_steps: list[Step]
    pre_checks: list[Step]
    _raw_ready: set[Any]
    _type_guard: Any
    _add_distinct: Any
    _load_children: Any
    _inline_statics: Any
    _open_node: Any
    shapes: Any

    def _dict_node(self, work: Work, dn: reg.DictNode) -> list[Work]:
        """A foreign dict-backed node: its ``__dict__`` read as a builtin node's is, its
        bookkeeping fields guarded, its children under their stored names."""
        idx = work.edge.index
        spec = self.gd.table[idx]
        t = spec.type
        if dn.fields is None and dn.bookkeeping is not None:
            raise Declined(f"the bookkeeping of {t.__qualname__} is a function")
        if dn.hidden_attr is not None and (dn.hidden_attr != "graph_invisible_attrs"
                                           or type(self.facts.hidden.get(t)) is not tuple):
            raise Declined(f"the invisible names of {t.__qualname__} are not a tuple")
        label, d = self._open_node(work, idx, t)
        stored = [dn.stored_key(k) for k in spec.keys]
        hidden = sorted(dn.hidden) + list(dict.fromkeys(self.facts.hidden.get(t, ())))
        hidden = [h for h in dict.fromkeys(hidden) if h not in stored]
        # A bookkeeping field is read below whatever the length says (missing: a KeyError,
        # a node_keys miss), so it is counted in the length instead of tested with `in`.
        read = {f.name for f in dn.fields} if dn.fields is not None else set()
        self.steps.append(Step("guard_node_len", obj=d, n=len(stored) + sum(h in read for h in hidden),
                               hidden=[self.consts.key(h) for h in hidden if h not in read], label=label))
        if dn.fields is not None:
            # The bookkeeping, as the metadata of the spec: a renamed or missing field is a
            # KeyError, a node_keys miss; a changed one a metadata miss. An item read for
            # several fields' attributes is read once.
            self.keyed_statics = True
            shared = {f.name for f in dn.fields if f.attr is not None}
            shared = {n for n in shared if sum(f.name == n and f.attr is not None for f in dn.fields) > 1}
            held: dict[str, str] = {}
            for i, (f, value) in enumerate(zip(dn.fields, spec.meta, strict=True)):
                local = f"bk{idx}_{i}"
                if f.name in shared:
                    item = held.get(f.name)
                    if item is None:
                        item = held[f.name] = f"bk{idx}_{i}_"
                        self.steps.append(Step("load_field", dst=item, obj=d, key=self.consts.key(f.name),
                                               attr=""))
                    self.steps.append(Step("load_attr", dst=local, obj=item, attr=self.consts.attr(f.attr)))
                else:
                    self.steps.append(Step("load_field", dst=local, obj=d, key=self.consts.key(f.name),
                                           attr=self.consts.attr(f.attr) if f.attr is not None else ""))
                mode = "value" if f.equal else match_mode(value, value_sig(value))
                self.steps.append(Step("guard_field", obj=local, cls=self.consts.bind(type(value), "T"),
                                       const=self.consts.bind(value, "C"), mode=mode,
                                       label=f"{label}:{f.name}" + (f".{f.attr}" if f.attr else "")))
        keys = [self.consts.key(k) for k in stored]
        items = self._load_children(d, keys, spec.children, work.path, spec.keys, "node_keys", d, True, True,
                                    tuple(stored))
        data = dn.data_keys(t, spec.meta) if dn.data_keys is not None else None
        if data is not None:
            if dn.static_arrays:
                raise Declined(f"{t.__qualname__} declares both data attributes and static arrays")
            # (items: one per child, but a run of states is one item: matched by the edge)
            marked = {id(e) for e, k in zip(spec.children, stored, strict=True)
                      if type(e) is ArrayEdge and k in data}
            items = [w._replace(data=True) if id(w.edge) in marked else w for w in items]
        items = self._inline_statics(d, keys, items)
        if self.shapes:
            items = self._runs(d, items, spec, stored)
        if dn.check_write is not None and any(type(c) is ArrayEdge for c in spec.children):
            # The update writes into this node: only at its trace level (NNX's rule).
            if dn.token is None or not dn.token_path:
                raise Declined(f"writes into {t.__qualname__} nodes need a trace token")
            self._token_check(d, self.consts.key(dn.token_path[0]), dn.token_path[1:], dn.token, label)
        self.nearest.update((w.obj, idx) for w in items)
        return items

    def _runs(self, d: str, items: list[Work], spec: Any, stored: list[str]) -> list[Work]:
        """Runs of two or more consecutive children that are occurrences of one outlined
        shape (an ``nnx.List``'s layers): one work item each, planned as a loop, their
        loads taken out of the node's load block."""
        shape_of = self.shapes.shape_of
        out: list[Work] = []
        runs: list[list[int]] = []
        # each item's first child's position (a run of states is one item for several)
        at = [0] * len(items)
        for k in range(1, len(items)):
            prev = items[k - 1].edge
            at[k] = at[k - 1] + (len(prev.children) if type(prev) is StateRun else 1)
        i, n = 0, len(items)
        while i < n:
            sid = shape_of.get(items[i].edge.index) if type(items[i].edge) is NodeEdge else None
            j = i + 1
            if sid is not None:
                while j < n and type(items[j].edge) is NodeEdge and shape_of.get(items[j].edge.index) == sid:
                    j += 1
            if j - i >= 2:
                runs.append(list(range(i, j)))
                lo, hi = at[i], at[i] + j - i  # (node items: one child each)
                run = RunEdge(tuple(stored[lo:hi]), spec.keys[lo:hi], spec.children[lo:hi])
                out.append(Work(run, d, items[i].path[0], None, "", False))
            else:
                out.extend(items[i:j])
            i = j
        if runs:
            taken = {items[k].obj for run in runs for k in run}
            block: Any = next(s for s in reversed(self.steps) if s.op == "load_block" and s.obj == d)
            block.pairs = [p for p in block.pairs if p[0] not in taken]
            if not block.pairs:
                self.steps.remove(block)
        return out

    def _token_check(self, obj: str, key: Literal | str | None, attrs: tuple[str, ...], token: Any,
                     label: str) -> None:
        """Before the update writes into ``obj``: the attributes lead to this call's token."""
        if self._token is None:
            self._token = "tok"  # (an argument of every outlined function of the update)
            self.token_step = Step("token_now", dst=self._token, fn=self.consts.bind(token, "F"))
        self.checks.append(Step("guard_token", obj=obj, key=key if key is not None else "",
                                attrs=[self.consts.attr(a) for a in attrs], token=self._token, label=label))

    def _foreign_state(self, work: Work, simpl: reg.StateImpl) -> list[Work]:
        """A foreign state through its layout: slot reads, the metadata dict item by item,
        writes through the slot descriptor once the trace token matched."""
        spec = self.gd.table[work.edge.index]
        t = spec.type
        lay = simpl.layout
        if isinstance(lay, reg.DictStateLayout):
            return self._dict_state(work, spec, lay)
        if lay is None or not lay.plain(t) or not lay.specializable(spec.metadata):
            raise Declined(f"state type {t.__qualname__} has no layout generated code can use")
        self.facts.require_absent(t, (*lay.overridable, "__getattribute__"),
                                  classes=list(t.__mro__[: t.__mro__.index(lay.base)]))
        var = work.obj
        assert type(var) is str
        label = path_label(work.path)
        self.local_of[spec.index] = var
        self._type_guard(var, t, label)
        md = f"md{spec.index}"
        self.steps.append(Step("guard_meta_dict", dst=md, obj=var, attr=self.consts.attr(lay.metadata),
                               n=len(spec.metadata)))
        for (k, value), sig in zip(spec.metadata, spec.metasig, strict=True):
            self.steps.append(Step("guard_meta_item", obj=md, key=self.consts.key(k),
                                   cls=self.consts.bind(type(value), "T"), const=self.consts.bind(value, "C"),
                                   mode=match_mode(value, sig)))
        self._add_distinct(var, t)
        attr = self.consts.attr(lay.value)
        if self.no_user_code:
            self.values[spec.slot] = StateValue(var, attr)
        else:
            v = f"v{spec.slot}"
            self.steps.append(Step("read_value", dst=v, obj=var, attr=attr))
            self.values[spec.slot] = v
        if lay.token is not None:
            self._token_check(var, None, lay.token_path, lay.token, label)
        else:
            raise Declined(f"writes into {t.__qualname__} need a trace token")
        setter = self.consts.bind(lay.setter(lay.value), "F")
        self.state_writes.append(Step("write_slot", obj=var, setter=setter, slot=spec.slot, label=label))
        return []

    def _dict_state(self, work: Work, spec: Any, lay: reg.DictStateLayout) -> list[Work]:
        """A dict-backed foreign state: its ``__dict__`` read as a node's is (bookkeeping
        left out, metadata guarded item by item), raw only while the library allows it."""
        t = spec.type
        if not lay.plain(t):
            raise Declined(f"state type {t.__qualname__} overrides what raw reads rely on")
        self.facts.require_absent(t, lay.overridable, classes=list(t.__mro__[: t.__mro__.index(lay.base)]))
        label, d = self._open_node(work, spec.index, t)
        meta_keys = {k for k, _ in spec.metadata}
        hidden = [self.consts.key(h) for h in sorted(lay.bookkeeping) if h not in meta_keys]
        self.steps.append(Step("guard_state_dict", obj=d, n=len(spec.metadata), hidden=hidden, label=label))
        for (k, value), sig in zip(spec.metadata, spec.metasig, strict=True):
            key = self.consts.key(k)
            conv = lay.convert.get(k)
            if conv is not None:  # kept in another form: compared as the metadata holds it
                self.steps.append(Step("guard_meta_conv", obj=d, key=key, fn=self.consts.bind(conv[0], "F"),
                                       cls=self.consts.bind(type(value), "T"),
                                       const=self.consts.bind(value, "C")))
            else:
                self.steps.append(Step("guard_meta_item", obj=d, key=key,
                                       cls=self.consts.bind(type(value), "T"),
                                       const=self.consts.bind(value, "C"), mode=match_mode(value, sig)))
        self._raw_check(lay)
        self.steps.append(Step("guard_state_hooks", obj=d, key=self.consts.key(lay.hooks),
                               attr=self.consts.attr(lay.hooks_flag), label=label))
        v = f"v{spec.slot}"
        value_key = self.consts.key(lay.value)
        self.steps.append(Step("read_item", dst=v, obj=d, key=value_key))
        if lay.invalid is not None:
            invalid = self.consts.bind(lay.invalid, "T")
            self.steps.append(Step("guard_raw_value", obj=v, cls=invalid, label=label))
        self.values[spec.slot] = v
        written = self.consts.key(lay.written) if lay.written is not None else ""
        self.state_writes.append(Step("write_raw_item", obj=d, key=value_key, flag=written, slot=spec.slot,
                                      label=label))
        return []

    def _raw_check(self, lay: reg.DictStateLayout) -> None:
        """Once per call, first: the library allows raw reads (flatten) / writes (update)."""
        if lay in self._raw_ready:
            return
        self._raw_ready.add(lay)
        self.pre_steps.append(Step("guard_raw_ready", fn=self.consts.bind(lay.raw_reads, "F")))
        self.pre_checks.append(Step("guard_raw_writes", fn=self.consts.bind(lay.raw_writes, "F")))
