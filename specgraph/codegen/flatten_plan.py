"""The flatten planner: the guards and loads that prove an object has one structure.

It walks a ``GraphDef`` in the reference walker's pre-order and emits steps (load a
child, guard its type, read a value, ...): one method per edge kind. The same plan
renders the flatten, the update (its guards, then writes) and the collect function
(objects by index and values by slot).
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from .. import _registry as reg
from .._ir import (
    ArrayConstant,
    ArrayEdge,
    GraphDef,
    NodeEdge,
    NodeSpec,
    PytreeEdge,
    StateEdge,
    StaticEdge,
    treedef_type,
)
from .._sameness import aux_data, is_value_sig, may_be_nan, value_sig
from .classfacts import ClassFacts, defines, flatten_runs_no_user_code
from .naming import Constants, Item, Literal, Operand, StateValue, path_label, static_note
from .ops import GUARD_KINDS, Step

__all__ = ["Declined", "FlattenPlan", "plan_flatten"]


class Declined(Exception):
    """This structure is not specialized (unsupported edge kind or too large)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class FlattenPlan:
    """What the flatten, update and collect functions of one structure do."""

    graphdef: GraphDef
    consts: Constants
    steps: list[Step]  # class guards, then guards + loads in pre-order
    values: list[Operand]  # per value slot: what the values list holds
    checks: list[Step]  # update: leaves that have no mutable owner must be left as they are
    writes: list[Step]  # update: new values into states, then into array leaves' owners
    distinct: list[tuple[str, bool]]  # (local, by id()) that must be pairwise distinct
    objects: list[str]  # local name per table index (the defining occurrence)
    epoch: int
    counts: dict[str, int]  # guard kind -> number of guards of that kind
    facts: ClassFacts  # what the class guards check
    keyed_statics: bool = False  # a KeyError outside the load blocks is a node_keys miss


class Work(NamedTuple):
    """An edge to plan: the operand holding its object, its path, and where it lives
    (``owner[key]``, for the update's writes; ``mutable`` when it can be written).

    The path is a link ``(parent_link, key)`` (``None`` at the root): a tuple per work
    item would cost O(depth) each, O(depth²) on a deep chain."""

    edge: Any
    obj: Operand
    path: Any
    owner: str | None
    key: Literal | str
    mutable: bool
    data: bool = False  # a child of a dict-backed node whose plain values may be dynamic leaves


def plan_flatten(gd: GraphDef, max_steps: int) -> FlattenPlan:
    """Steps that check an object has structure ``gd`` and read its values."""
    return FlattenPlanner(gd, max_steps).plan()


class FlattenPlanner:
    """Plans one structure; :meth:`plan` visits every edge once, in pre-order."""

    def __init__(self, gd: GraphDef, max_steps: int) -> None:
        self.gd = gd
        self.max_steps = max_steps
        self.consts = Constants()
        self.steps: list[Step] = []
        self.values: list[Operand] = [""] * gd.num_leaves
        self.checks: list[Step] = []
        self.state_writes: list[Step] = []
        self.array_writes: list[tuple[int, int, Step]] = []  # (owning node index, order, step)
        self.distinct: list[tuple[str, bool]] = []
        self.local_of: dict[int, str] = {}  # table index -> local of the defining object
        self.facts = ClassFacts()
        self.keyed_statics = False  # some static guard reads its node's dict itself
        self.skip_type_guard = True  # the dispatcher picked this variant by type(root)
        self._counter = 0
        self._token: str | None = None  # the local holding the update's trace token, once made
        # Reads cannot run user code: a node read twice gives the same children twice, so
        # its own states can vouch for it (see witnessed_nodes), and statics and values
        # are read in place. (Checked at compile time only: a hook added to a class later
        # runs user code mid-call, and user code that rewires the graph mid-call is not
        # supported.)
        self.no_user_code = flatten_runs_no_user_code(gd)
        self.witnessed = witnessed_nodes(gd.table) if self.no_user_code else set()
        # Only objects of a type that occurs more than once can be one object at two
        # places: the exact type guards keep every other pair apart.
        self.shared_types = {t for t, n in Counter(spec.type for spec in gd.table).items() if n > 1}
        # nearest: operand -> table index of the node whose attribute holds it (past every
        # node for a root pytree), so array writes follow the reference update's order:
        # node by node in table order, the root pytree last (it matters when one list is
        # reachable twice).
        self.nearest: dict[Operand, int] = {"root": len(gd.table)}

    def plan(self) -> FlattenPlan:
        gd = self.gd
        if type(gd.root) is not NodeEdge and type(gd.root) is not PytreeEdge:
            raise Declined("the root is not a node or a container")
        self._hidden_names()
        stack = [Work(gd.root, "root", None, None, "", False)]
        visit: dict[type, Callable[[Work], list[Work]]] = {
            NodeEdge: self._node, StateEdge: self._state, ArrayEdge: self._array, StaticEdge: self._static,
            PytreeEdge: self._pytree,
        }
        while stack:
            if len(self.steps) > self.max_steps:
                raise Declined(f"structure too large (more than {self.max_steps} steps)")
            work = stack.pop()
            k = type(work.edge)
            if (k is NodeEdge or k is StateEdge) and work.edge.index in self.local_of:
                self._backref(work)
                continue
            # A container's children come back in order; they are planned in pre-order.
            stack.extend(reversed(visit[k](work)))
        class_guards = self.facts.steps(self.consts)
        steps = class_guards + self.steps
        counts = dict.fromkeys(GUARD_KINDS, 0)
        counts.update(Counter(s.kind for s in steps if s.kind))
        counts["epoch"] = 1
        self.array_writes.sort(key=lambda w: w[:2])
        return FlattenPlan(
            graphdef=gd,
            consts=self.consts,
            steps=steps,
            values=self.values,
            checks=self.checks,
            writes=self.state_writes + [w[2] for w in self.array_writes],
            distinct=self.distinct if len(self.distinct) > 1 else [],  # one object cannot coincide
            objects=[self.local_of[i] for i in range(len(gd.table))],
            epoch=reg.registry_epoch(),
            counts=counts,
            facts=self.facts,
            keyed_statics=self.keyed_statics,
        )

    # -- helpers ------------------------------------------------------------------------

    def _fresh(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}{self._counter}"

    def _type_guard(self, obj: str, t: type, label: str) -> None:
        if self.skip_type_guard:
            self.skip_type_guard = False
        else:
            self.steps.append(Step("guard_type", obj=obj, cls=self.consts.bind(t, "T"), label=label))

    def _hidden_names(self) -> None:
        """The invisible names of each node class, checked before anything is read.

        Read at compile time: a class that changes them later has another structure.
        """
        seen: set[type] = set()
        for spec in self.gd.table:
            t = spec.type
            if type(spec) is not NodeSpec or t in seen:
                continue
            impl = reg.node_impl(t)
            dn = impl.dict_node
            if impl.is_builtin_node or (dn is not None and dn.hidden_attr == "graph_invisible_attrs"):
                seen.add(t)
                snapshot = self.facts.hidden[t] = copy.copy(t.graph_invisible_attrs)
                self.steps.append(Step("guard_hidden", cls=self.consts.bind(t, "T"),
                                       expected=self.consts.bind(snapshot, "H")))

    def _add_distinct(self, obj: str, t: type) -> None:
        """Put the object in the distinct set: itself when its hash is the identity
        (guarded), else its id()."""
        if t not in self.shared_types:
            return
        if type(t) is not type or defines(t, "__hash__"):
            self.distinct.append((obj, True))
        else:
            self.facts.require_absent(t, ("__hash__",))
            self.distinct.append((obj, False))

    def _load_children(self, container: str, keys: list[Literal | str], edges: tuple, path: Any,
                       path_keys: tuple, miss: str, owner: str, mutable: bool) -> list[Work]:
        """One block loading every child of a container; their work items, in order.

        ``miss`` names the guard kind a ``KeyError`` in the block stands for. An array
        leaf is written back into ``owner[key]`` (only a ``mutable`` one).
        """
        items = []
        pairs = []
        for key, edge, pk in zip(keys, edges, path_keys, strict=True):
            local = self._fresh("x")
            pairs.append((local, key))
            items.append(Work(edge, local, (path, pk), owner, key, mutable))
        if pairs:
            self.steps.append(Step("load_block", obj=container, pairs=pairs, miss=miss))
        return items

    # -- one method per edge kind -----------------------------------------------------

    def _backref(self, work: Work) -> None:
        """A later path to an object: it must be the very object defined earlier."""
        self.steps.append(Step("guard_is", obj=work.obj, expected=self.local_of[work.edge.index],
                               label=path_label(work.path)))

    def _node(self, work: Work) -> list[Work]:
        idx = work.edge.index
        spec = self.gd.table[idx]
        t = spec.type
        impl = reg.node_impl(t)
        if impl.dict_node is not None:
            return self._dict_node(work, impl.dict_node)
        if not impl.is_builtin_node:
            raise Declined(f"custom node type {t.__qualname__}")
        if spec.sig is not None:
            raise Declined(f"non-string attribute names on a {t.__qualname__} node")
        if isinstance(t.graph_invisible_attrs, str):
            raise Declined("graph_invisible_attrs is a string")  # the walker says how to fix it
        var = work.obj
        assert type(var) is str  # a node is always loaded into a local
        label = path_label(work.path)
        self.local_of[idx] = var
        self._type_guard(var, t, label)
        if idx not in self.witnessed:
            self._add_distinct(var, t)
        d = "d" + var
        self.steps.append(Step("load_dict", dst=d, obj=var))
        names, children = spec.keys, spec.children
        # Each invisible name present in the dict is subtracted once (a name listed
        # twice must not hide an extra attribute). The dict must be exactly a dict (the
        # guard checks it first): a subclass may override len or [], or have a __missing__
        # that answers a renamed key (and inserts it into the user's object).
        hidden = [h for h in dict.fromkeys(t.graph_invisible_attrs) if h not in names]
        self.steps.append(Step("guard_node_len", obj=d, n=len(names),
                               hidden=[self.consts.key(h) for h in hidden], label=label))
        # All children are loaded at once (a renamed key is a KeyError: a node_keys miss).
        keys = [self.consts.key(k) for k in names]
        items = self._load_children(d, keys, children, work.path, names, "node_keys", d, True)
        if self.no_user_code and any(type(c) is StaticEdge for c in children):
            # A static is read where it is guarded (no local to store and load again); a
            # renamed key there is a KeyError, a node_keys miss like in the block.
            self.keyed_statics = True
            block: Any = self.steps[-1]
            inline = {w.obj: Item(d, key) for w, key in zip(items, keys, strict=True)
                      if type(w.edge) is StaticEdge}
            block.pairs = [pair for pair in block.pairs if pair[0] not in inline]
            if not block.pairs:
                self.steps.pop()
            items = [w._replace(obj=inline[w.obj]) if w.obj in inline else w for w in items]
        self.nearest.update((w.obj, idx) for w in items)
        return items

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
        var = work.obj
        assert type(var) is str  # a node is always loaded into a local
        label = path_label(work.path)
        self.local_of[idx] = var
        self._type_guard(var, t, label)
        if idx not in self.witnessed:
            self._add_distinct(var, t)
        d = "d" + var
        self.steps.append(Step("load_dict", dst=d, obj=var))
        self.steps.append(Step("guard_type", obj=d, cls=self.consts.bind(dict, "T"), label=label))
        stored = [dn.stored_key(k) for k in spec.keys]
        hidden = sorted(dn.hidden) + list(dict.fromkeys(self.facts.hidden.get(t, ())))
        hidden = [h for h in dict.fromkeys(hidden) if h not in stored]
        self.steps.append(Step("guard_node_len", obj=d, n=len(stored),
                               hidden=[self.consts.key(h) for h in hidden], label=label))
        if dn.fields is not None:
            # The bookkeeping, as the metadata of the spec: a renamed or missing field is a
            # KeyError, a node_keys miss; a changed one a metadata miss.
            self.keyed_statics = True
            for i, (f, value) in enumerate(zip(dn.fields, spec.meta, strict=True)):
                local = f"bk{idx}_{i}"
                self.steps.append(Step("load_field", dst=local, obj=d, key=self.consts.key(f.name),
                                       attr=self.consts.attr(f.attr) if f.attr is not None else ""))
                mode = "value" if f.equal else _match_mode(value, value_sig(value))
                self.steps.append(Step("guard_field", obj=local, cls=self.consts.bind(type(value), "T"),
                                       const=self.consts.bind(value, "C"), mode=mode,
                                       label=f"{label}:{f.name}" + (f".{f.attr}" if f.attr else "")))
        keys = [self.consts.key(k) for k in stored]
        items = self._load_children(d, keys, spec.children, work.path, spec.keys, "node_keys", d, True)
        data = dn.data_keys(t, spec.meta) if dn.data_keys is not None else None
        if data is not None:
            if dn.static_arrays:
                raise Declined(f"{t.__qualname__} declares both data attributes and static arrays")
            items = [w._replace(data=True) if type(w.edge) is ArrayEdge and k in data else w
                     for w, k in zip(items, stored, strict=True)]
        if self.no_user_code and any(type(c) is StaticEdge for c in spec.children):
            self.keyed_statics = True
            block = self.steps[-1]
            inline = {w.obj: Item(d, key) for w, key in zip(items, keys, strict=True)
                      if type(w.edge) is StaticEdge}
            block.pairs = [pair for pair in block.pairs if pair[0] not in inline]
            if not block.pairs:
                self.steps.pop()
            items = [w._replace(obj=inline[w.obj]) if w.obj in inline else w for w in items]
        if dn.check_write is not None and any(type(c) is ArrayEdge for c in spec.children):
            # The update writes into this node: only at its trace level (NNX's rule).
            if dn.token is None or not dn.token_path:
                raise Declined(f"writes into {t.__qualname__} nodes need a trace token")
            self._token_check(d, self.consts.key(dn.token_path[0]), dn.token_path[1:], dn.token, label)
        self.nearest.update((w.obj, idx) for w in items)
        return items

    def _token_check(self, obj: str, key: Literal | str | None, attrs: tuple[str, ...], token: Any,
                     label: str) -> None:
        """Before the update writes into ``obj``: the attributes lead to this call's token."""
        if self._token is None:
            self._token = "tok"
            self.checks.insert(0, Step("token_now", dst=self._token, fn=self.consts.bind(token, "F")))
        self.checks.append(Step("guard_token", obj=obj, key=key if key is not None else "",
                                attrs=[self.consts.attr(a) for a in attrs], token=self._token, label=label))

    def _foreign_state(self, work: Work, simpl: reg.StateImpl) -> list[Work]:
        """A foreign state through its layout: slot reads, the metadata dict item by item,
        writes through the slot descriptor once the trace token matched."""
        spec = self.gd.table[work.edge.index]
        t = spec.type
        lay = simpl.layout
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
                                   mode=_match_mode(value, sig)))
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

    def _state(self, work: Work) -> list[Work]:
        spec = self.gd.table[work.edge.index]
        simpl = reg.state_impl(spec.type)
        if simpl is not None:
            return self._foreign_state(work, simpl)
        var = work.obj
        assert type(var) is str
        label = path_label(work.path)
        self.local_of[spec.index] = var
        self._type_guard(var, spec.type, label)
        meta = spec.metadata
        if meta and all(is_value_sig(s) for s in spec.metasig):
            self.steps.append(Step("guard_meta", obj=var, expected=self.consts.bind(meta, "M"),
                                   sig=self.consts.bind(spec.metasig, "MS")))
        elif meta:
            # Metadata holding objects that may be equal yet distinguishable: those items
            # must be the very same objects (the others equal, of the same type).
            self.steps.append(Step("guard_meta_same", obj=var, expected=self.consts.bind(meta, "M")))
        else:
            self.steps.append(Step("guard_no_meta", obj=var))
        self._add_distinct(var, spec.type)
        if self.no_user_code:  # a slot read, no user code: read it where the values list is built
            self.values[spec.slot] = StateValue(var, "value")
        else:  # a property may run user code: read it in the reference walker's order
            v = f"v{spec.slot}"
            self.steps.append(Step("read_value", dst=v, obj=var, attr="value"))
            self.values[spec.slot] = v
        self.state_writes.append(Step("write_value", obj=var, slot=spec.slot, label=label))
        return []

    def _array(self, work: Work) -> list[Work]:
        slot = work.edge.slot
        label = path_label(work.path)
        if work.data:  # an array, or a plain non-None value its node class declares dynamic
            self.steps.append(Step("guard_data_leaf", obj=work.obj, label=label))
        else:
            self.steps.append(Step("guard_array", obj=work.obj, label=label))
        self.values[slot] = work.obj
        if work.owner is None or not work.mutable:
            # No mutable owner to write into: update may only leave it as it is.
            self.checks.append(Step("check_unchanged", obj=work.obj, slot=slot, label=label))
        else:
            step = Step("write_item", obj=work.owner, key=work.key, slot=slot, label=label)
            self.array_writes.append((self.nearest[work.obj], len(self.array_writes), step))
        return []

    def _static(self, work: Work) -> list[Work]:
        edge = work.edge
        sig = edge.sig
        if sig is ArrayConstant:  # a bare array kept as a static: the very same array
            const = self.consts.bind(edge.value.array, "C")
            self.steps.append(Step("guard_static_is", obj=work.obj, const=const, label=path_label(work.path)))
            return []
        const = self.consts.bind(edge.value, "C")
        label = path_label(work.path) + static_note(edge.value)
        if not is_value_sig(sig):
            # An object that may be equal yet distinguishable (a dataclass with a
            # compare=False field, ...): only the very same object is the same static.
            self.steps.append(Step("guard_static_is", obj=work.obj, const=const, label=label))
        elif isinstance(sig, type):
            op = "guard_static_nan" if may_be_nan(edge.value) else "guard_static"
            cls = self.consts.bind(sig, "T")
            self.steps.append(Step(op, obj=work.obj, cls=cls, const=const, label=label))
        else:  # a float zero (its sign) or a tuple of values: item by item
            self.steps.append(Step("guard_static_same", obj=work.obj, const=const, label=label))
        return []

    def _pytree(self, work: Work) -> list[Work]:
        edge = work.edge
        ptype = edge.ptype
        var = work.obj
        assert type(var) is str
        label = path_label(work.path)
        builtin = ptype is list or ptype is tuple or ptype is dict
        self._type_guard(var, ptype if builtin else treedef_type(ptype), label)
        consts = self.consts
        src = var
        # A non-empty list or tuple is unpacked in one step, which checks its length.
        unpack = (ptype is list or ptype is tuple) and bool(edge.children)
        if builtin:
            if not unpack:
                self.steps.append(Step("guard_len", obj=var, n=len(edge.children), label=label))
        else:
            # Any other JAX pytree: its registered flatten, then a guard on the treedef
            # (which carries the child count and the aux data, compared with ==).
            src, td = "ch" + var, "td" + var
            self.steps.append(Step("load_pytree", obj=var, dst=src, treedef=td))
            self.steps.append(Step("guard_treedef", obj=td, expected=consts.bind(ptype, "TD"), label=label))
            if edge.sig is not None:  # aux data: equal is not enough (eps=1 is not eps=1.0)
                self.steps.append(Step("guard_aux", obj=td, expected=consts.bind(aux_data(ptype), "A"),
                                       label=label))
        if ptype is dict and edge.sig is not None:
            # Non-str keys: 1, 1.0 and True are one key to a dict but not to the IR.
            if all(is_value_sig(s) for s in edge.sig):
                self.steps.append(Step("guard_keysig", obj=var, expected=consts.bind(edge.sig, "KS"),
                                       label=label))
            else:  # a key that may be equal yet distinguishable: the very same key object
                self.steps.append(Step("guard_keys_same", obj=var, expected=consts.bind(edge.keys, "KEYS"),
                                       label=label))
        if ptype is dict:
            keys = [consts.key(k) for k in edge.keys]
        else:
            keys = [Literal(i) for i in range(len(edge.children))]
        items = self._load_children(src, keys, edge.children, work.path, edge.keys,
                                    "container" if ptype is dict else "", var, ptype is list or ptype is dict)
        if unpack:
            block: Any = self.steps.pop()  # the load block just emitted becomes one unpacking
            self.steps.append(Step("unpack_seq", obj=var, dsts=[dst for dst, _ in block.pairs], label=label))
        self.nearest.update((w.obj, self.nearest[var]) for w in items)
        return items


def _match_mode(value: Any, sig: Any) -> str:
    """How a generated guard matches ``value`` (a metadata item or bookkeeping field):
    ``"is"`` the very object (a singleton, or an object that may be equal yet
    distinguishable), ``"value"`` same type and ``==`` (a scalar value type), ``"same"``
    item by item (a float zero, a tuple of values)."""
    if value is None or type(value) is bool or not is_value_sig(sig):
        return "is"
    if isinstance(sig, type) and not may_be_nan(value):
        return "value"
    return "same"


def witnessed_nodes(table: tuple) -> set[int]:
    """Node indices that need no place in the distinct set: their states vouch for them.

    Every state of a type that occurs more than once is in the distinct set, the
    exact type guards keep a state of a type that occurs once apart from every other,
    and every later path to a state is an identity guard: once the guards pass, each
    state index stands for exactly one object. Node ``i`` holds, under some key
    ``k``, the state with index ``s``, and no other node of its type holds state ``s``
    under ``k``. If one object ``X`` sat at the positions of ``i`` and of another node
    ``j`` of the same type, the guards of ``j`` would read ``X.k`` again, and ``X.k``
    is state ``s``; ``j`` would need state ``s`` under ``k``, which it does not have.
    So ``X`` cannot. A pair of nodes with no such witness on either side keeps both in
    the set (two nodes sharing all their states may still have been merged into one
    object).
    """
    owners: dict[tuple[type, str, int], list[int]] = {}
    for spec in table:
        if type(spec) is NodeSpec:
            for k, child in zip(spec.keys, spec.children, strict=True):
                # Only exact str keys: equality between str subclasses need not be transitive.
                if type(child) is StateEdge and type(k) is str:
                    owners.setdefault((spec.type, k, child.index), []).append(spec.index)
    return {found[0] for found in owners.values() if len(found) == 1}
