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
from typing import Any

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
from .._sameness import aux_data, is_value_sig, may_be_nan
from .._weakstatic import WeakStatic
from .callback_plan import CallbackPlanning
from .classfacts import ClassFacts, defines, flatten_runs_no_user_code
from .foreign_plan import ForeignPlanning
from .naming import Constants, Item, Literal, Operand, StateValue, path_label, static_note
from .ops import GUARD_KINDS, Step
from .planning import Declined, FlattenPlan, Work

__all__ = ["Declined", "FlattenPlan", "FlattenPlanner", "plan_flatten", "witnessed_nodes"]


def plan_flatten(gd: GraphDef, max_steps: int) -> FlattenPlan:
    """Steps that check an object has structure ``gd`` and read its values."""
    return FlattenPlanner(gd, max_steps).plan()


class FlattenPlanner(ForeignPlanning, CallbackPlanning):
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
        self._raw_ready: set[Any] = set()  # dict state layouts whose per-call check is emitted
        self._hash_by_id: dict[int, bool] = {}  # id(class) -> its objects go in the set by id()
        self._setters: dict[str, Any] = {}  # callback node local -> its bound set_key (CallbackPlanning)
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
        by_id = self._hash_by_id.get(id(t))
        if by_id is None:  # read once per class (the planner holds every class alive)
            by_id = self._hash_by_id[id(t)] = type(t) is not type or defines(t, "__hash__")
        if by_id:
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
            return self._callback_node(work, impl)
        if spec.sig is not None:
            raise Declined(f"non-string attribute names on a {t.__qualname__} node")
        if isinstance(t.graph_invisible_attrs, str):
            raise Declined("graph_invisible_attrs is a string")  # the walker says how to fix it
        label, d = self._open_node(work, idx, t)
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
        items = self._inline_statics(d, keys, items)
        self.nearest.update((w.obj, idx) for w in items)
        return items

    def _open_node(self, work: Work, idx: int, t: type) -> tuple[str, str]:
        """A node's first steps: its type guard, its place in the distinct set, its dict
        loaded. Returns its path label and the local holding its dict."""
        var = work.obj
        assert type(var) is str  # a node is always loaded into a local
        label = path_label(work.path)
        self.local_of[idx] = var
        self._type_guard(var, t, label)
        if idx not in self.witnessed:
            self._add_distinct(var, t)
        d = "d" + var
        self.steps.append(Step("load_dict", dst=d, obj=var))
        return label, d

    def _inline_statics(self, d: str, keys: list[Literal | str], items: list[Work]) -> list[Work]:
        """Where no user code can run, a node's statics are read where they are guarded
        (no local to store and load again): they leave the load block just emitted, and
        a renamed key there is a KeyError, a node_keys miss like in the block."""
        if not self.no_user_code or not any(type(w.edge) is StaticEdge for w in items):
            return items
        self.keyed_statics = True
        block: Any = self.steps[-1]
        inline = {w.obj: Item(d, key) for w, key in zip(items, keys, strict=True)
                  if type(w.edge) is StaticEdge}
        block.pairs = [pair for pair in block.pairs if pair[0] not in inline]
        if not block.pairs:
            self.steps.pop()
        return [w._replace(obj=inline[w.obj]) if w.obj in inline else w for w in items]

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
        if self._callback_write(work, slot, label):
            pass  # held by a callback node: written back through its set_key
        elif work.owner is None or not work.mutable:
            # No mutable owner to write into: update may only leave it as it is.
            self.checks.append(Step("check_unchanged", obj=work.obj, slot=slot, label=label))
        else:
            step = Step("write_item", obj=work.owner, key=work.key, slot=slot, label=label)
            self.array_writes.append((self.nearest[work.obj], len(self.array_writes), step))
        return []

    def _static(self, work: Work) -> list[Work]:
        edge = work.edge
        sig = edge.sig
        if type(edge.value) is WeakStatic:
            # A static that reaches user data (a bound method, an array kept as a static,
            # ...), held weakly by the cache key this plan is made from: the very object,
            # or a miss (dead: None).
            ref = self.consts.bind(edge.value.ref, "R")
            self.steps.append(Step("guard_static_weak", obj=work.obj, ref=ref, label=path_label(work.path)))
            return []
        if sig is ArrayConstant:  # a bare array kept as a static: the very same array
            const = self.consts.bind(edge.value.array, "C")
            self.steps.append(Step("guard_static_is", obj=work.obj, const=const, label=path_label(work.path)))
            return []
        const = self.consts.bind(edge.value, "C")
        label = path_label(work.path) + static_note(edge.value)
        if not is_value_sig(sig) or edge.value is None or type(edge.value) is bool or edge.value is ...:
            # An object that may be equal yet distinguishable (a dataclass with a
            # compare=False field, ...): only the very same object is the same static.
            # None, True, False and ... are the only objects of their types: the very
            # object is the same guard as type and ==, in one test.
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
