"""The unflatten planner: the steps that build a fresh graph of one structure.

It mirrors the reference ``build``: states and empty node shells first (in table
order), then each node filled in table order, so sharing and cycles resolve the
same way. Every user object the function puts into the graph (state and
custom-node metadata, statics, custom pytree treedefs, keys other than an exact
str or int) comes from the GraphDef being unflattened, as ``S``: an equal GraphDef
may hold equal but distinct objects. The planner records where each one sits as it
reads it (:class:`StaticReads`), so nothing has to repeat its order.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any, cast

from .. import _registry as reg
from .._ir import ArrayConstant, GraphDef, NodeEdge, NodeSpec, PytreeEdge, StateEdge, StaticEdge
from .classfacts import ClassFacts, attribute_stores_ok, defines, unflatten_runs_no_user_code
from .naming import Constants, Literal, path_label
from .ops import Step
from .planning import Declined

__all__ = ["StaticReads", "UnflattenPlan", "plan_unflatten"]

Address = tuple[int, tuple[str | int, ...]]

#: The base of a read that starts at the GraphDef itself.
GRAPHDEF = -1


class StaticReads:
    """Where a plan's statics sit in its GraphDef, recorded as the planner reads them.

    A read is a base (an earlier read, or :data:`GRAPHDEF`) and the steps below it:
    an attribute name (``"table"``, ``"children"``, ...) or an index. :meth:`read`
    follows them in a GraphDef equal to the planned one and returns its own objects.
    """

    def __init__(self) -> None:
        self._reads: list[Address] = []
        self._wanted: list[int] = []

    def at(self, base: int, *steps: str | int) -> int:
        """Record the object ``steps`` below ``base``; return its read number."""
        self._reads.append((base, steps))
        return len(self._reads) - 1

    def want(self, read: int) -> None:
        """The object of ``read`` is the next item of :meth:`read`'s tuple."""
        self._wanted.append(read)

    def read(self, gd: GraphDef) -> tuple:
        """The wanted objects of ``gd``, in the order they were wanted."""
        got: list[Any] = []
        for base, steps in self._reads:
            x: Any = gd if base < 0 else got[base]
            for s in steps:
                x = getattr(x, s) if type(s) is str else x[s]
            got.append(x)
        return tuple([got[r] for r in self._wanted])


@dataclass
class UnflattenPlan:
    """What the unflatten function of one structure does."""

    graphdef: GraphDef
    consts: Constants
    steps: list[Step]
    root: str  # the local holding the result
    facts: ClassFacts
    statics: StaticReads  # what the function takes as S, read from the GraphDef it is given


def plan_unflatten(gd: GraphDef, max_steps: int) -> UnflattenPlan:
    """Steps that build a fresh graph of structure ``gd`` from values in slot order."""
    return UnflattenPlanner(gd, max_steps).plan()


class UnflattenPlanner:
    """Plans one structure: objects first, then each node filled, then the root's value."""

    def __init__(self, gd: GraphDef, max_steps: int) -> None:
        if len(gd.table) * 2 > max_steps:
            raise Declined(f"structure too large (more than {max_steps} steps)")
        self.gd = gd
        self.max_steps = max_steps
        self.consts = Constants()
        self.steps: list[Step] = []
        self.facts = ClassFacts()
        self.reads = StaticReads()
        self.static_names: list[str] = []
        self.objects = [f"o{spec.index}" for spec in gd.table]
        self.slots = [f"v{i}" for i in range(gd.num_leaves)]
        self.impls = {spec.index: reg.node_impl(spec.type) for spec in gd.table if type(spec) is NodeSpec}
        self._counter = 0
        self._contexts: dict[Any, str] = {}  # context factory -> its local
        # Per class (by id: the GraphDef holds each alive) and per key tuple, read once.
        self._plain_new: dict[int, bool] = {}
        self._stores_ok: dict[tuple[int, tuple], bool] = {}
        self._labels: dict[tuple, list[str]] = {}

    def plan(self) -> UnflattenPlan:
        gd = self.gd
        if self.slots:
            self.steps.append(Step("unpack_values", dsts=self.slots))
        for spec in gd.table:
            if type(spec) is NodeSpec:
                self._new_node(spec)
            else:
                self._new_state(spec)
        # Attribute stores only where no user code can run during the call (so the class
        # guards, checked first, still hold at every store): see attribute_stores_ok.
        attrs_ok = unflatten_runs_no_user_code(gd, self.impls)
        for spec in gd.table:
            if type(spec) is NodeSpec:
                if len(self.steps) > self.max_steps:
                    raise Declined(f"structure too large (more than {self.max_steps} steps)")
                self._fill_node(spec, attrs_ok)
        root = self._value(gd.root, GRAPHDEF, ("root",))
        head = self.facts.steps(self.consts)  # the class guards go first
        if self.static_names:
            head.append(Step("unpack_statics", dsts=self.static_names))
        return UnflattenPlan(graphdef=gd, consts=self.consts, steps=head + self.steps, root=root,
                             facts=self.facts, statics=self.reads)

    # -- what the function takes from its GraphDef --------------------------------------

    def _own(self, read: int) -> str:
        """The local that will hold the object of ``read`` (unpacked from ``S``)."""
        name = f"s{len(self.static_names)}"
        self.static_names.append(name)
        self.reads.want(read)
        return name

    def _key(self, k: Hashable, base: int, *at: str | int) -> Literal | str:
        """An exact str/int key is spelled; any other is read from ``S`` (it sits at ``at``)."""
        if type(k) is str or type(k) is int:
            return Literal(k)
        return self._own(self.reads.at(base, *at))

    # -- objects ------------------------------------------------------------------------

    def _new_node(self, spec: NodeSpec) -> None:
        impl = self.impls[spec.index]
        dst = self.objects[spec.index]
        if impl.is_builtin_node:
            self.steps.append(Step("new_object", dst=dst, cls=self.consts.bind(spec.type, "T")))
        elif impl.dict_node is not None and impl.dict_node.create is None:
            self._new_dict_node(spec, impl.dict_node, dst)
        else:
            meta = self._own(self.reads.at(GRAPHDEF, "table", spec.index, "meta"))
            self.steps.append(Step("new_custom", dst=dst, factory=self.consts.bind(impl.create_empty, "F"),
                                   meta=meta))

    def _context(self, factory: Any) -> str:
        """The local holding a foreign library's per-call context (made once, at the top)."""
        name = self._contexts.get(factory)
        if name is None:
            name = self._contexts[factory] = f"ctx{len(self._contexts)}"
            self.steps.insert(0, Step("new_context", dst=name, factory=self.consts.bind(factory, "F")))
        return name

    def _new_dict_node(self, spec: NodeSpec, dn: reg.DictNode, dst: str) -> None:
        """What ``DictNode.new`` does: ``object.__new__(cls)``, then each bookkeeping
        attribute from the metadata or from its factory (with the call's context)."""
        self.steps.append(Step("new_object", dst=dst, cls=self.consts.bind(spec.type, "T")))
        if dn.rebuild is None:
            return
        i = spec.index
        pairs: list[tuple[Literal | str, str]] = []
        for r in dn.rebuild:
            if r.factory is None:
                # factory None: the bookkeeping attribute is metadata item ``item`` (an int)
                value = self._own(self.reads.at(GRAPHDEF, "table", i, "meta", cast(int, r.item)))
            else:
                args = [self._own(self.reads.at(GRAPHDEF, "table", i, "meta", j)) for j in r.items]
                args.append(self._context(dn.context) if dn.context is not None else "None")
                self._counter += 1
                value = f"f{self._counter}"
                self.steps.append(Step("call", dst=value, fn=self.consts.bind(r.factory, "F"), args=args))
            pairs.append((Literal(r.name), value))
        self.steps.append(Step("fill_dict", obj=dst, pairs=pairs))

    def _new_foreign_state(self, spec: Any, simpl: reg.StateImpl) -> None:
        """What the layout's ``create`` does: ``object.__new__(cls)``, then the context,
        a copy of the metadata dict and the value, through the base class's slots."""
        t = spec.type
        lay = simpl.layout
        if isinstance(lay, reg.DictStateLayout):
            self._new_dict_state(spec, simpl, lay)
            return
        if lay is None or not lay.plain(t) or not lay.specializable(spec.metadata):
            raise Declined(f"state type {t.__qualname__} has no layout generated code can use")
        self.facts.require_absent(t, lay.overridable, classes=list(t.__mro__[: t.__mro__.index(lay.base)]))
        dst = self.objects[spec.index]
        self.steps.append(Step("new_object", dst=dst, cls=self.consts.bind(t, "T")))
        if lay.context is not None:
            ctx = self._context(simpl.context) if simpl.context is not None else "None"
            self.steps.append(Step("set_slot", obj=dst, setter=self.consts.bind(lay.setter(lay.context), "F"),
                                   value=ctx))
        meta = self._own(self.reads.at(GRAPHDEF, "table", spec.index, "metadata"))
        self._counter += 1
        md = f"md{self._counter}"
        self.steps.append(Step("call", dst=md, fn=self.consts.bind(dict, "T"), args=[meta]))
        self.steps.append(Step("set_slot", obj=dst, setter=self.consts.bind(lay.setter(lay.metadata), "F"),
                               value=md))
        self.steps.append(Step("set_slot", obj=dst, setter=self.consts.bind(lay.setter(lay.value), "F"),
                               value=self.slots[spec.slot]))

    def _new_dict_state(self, spec: Any, simpl: reg.StateImpl, lay: reg.DictStateLayout) -> None:
        """What a dict-backed state's ``create`` does: ``object.__new__(cls)``, its metadata
        (converted back to the stored form where the layout says), its value, and its
        bookkeeping from the layout's factories (given the call's context)."""
        t = spec.type
        if not lay.plain(t):
            raise Declined(f"state type {t.__qualname__} overrides what raw reads rely on")
        self.facts.require_absent(t, lay.overridable, classes=list(t.__mro__[: t.__mro__.index(lay.base)]))
        dst = self.objects[spec.index]
        self.steps.append(Step("new_object", dst=dst, cls=self.consts.bind(t, "T")))
        pairs: list[tuple[Literal | str, str]] = []
        for j, (k, _) in enumerate(spec.metadata):
            key = self._key(k, GRAPHDEF, "table", spec.index, "metadata", j, 0)
            value = self._own(self.reads.at(GRAPHDEF, "table", spec.index, "metadata", j, 1))
            conv = lay.convert.get(k)
            if conv is not None:
                self._counter += 1
                stored = f"f{self._counter}"
                self.steps.append(Step("call", dst=stored, fn=self.consts.bind(conv[1], "F"), args=[value]))
                value = stored
            pairs.append((key, value))
        pairs.append((Literal(lay.value), self.slots[spec.slot]))
        ctx = self._context(simpl.context) if simpl.context is not None else "None"
        for r in lay.rebuild:
            self._counter += 1
            made = f"f{self._counter}"
            self.steps.append(Step("call", dst=made, fn=self.consts.bind(r.factory, "F"), args=[ctx]))
            pairs.append((Literal(r.name), made))
        self.steps.append(Step("fill_dict", obj=dst, pairs=pairs))

    def _new_state(self, spec: Any) -> None:
        t = spec.type
        simpl = reg.state_impl(t)
        if simpl is not None:
            self._new_foreign_state(spec, simpl)
            return
        plain_new = self._plain_new.get(id(t))
        if plain_new is None:  # read once per class (the GraphDef holds every class alive)
            plain_new = self._plain_new[id(t)] = type(t) is type and not defines(t, "__new__")
        if plain_new:
            op = "new_object"  # what cls.__new__(cls) does, while no class gains a __new__
            self.facts.require_absent(t, ("__new__",))
        else:
            op = "new_via_type"
        dst = self.objects[spec.index]
        self.steps.append(Step(op, dst=dst, cls=self.consts.bind(t, "T")))
        if spec.metadata:
            meta = self._own(self.reads.at(GRAPHDEF, "table", spec.index, "metadata"))
        else:
            meta = self.consts.bind(spec.metadata, "M")
        self.steps.append(Step("set_state", obj=dst, meta=meta, value=self.slots[spec.slot]))

    def _fill_node(self, spec: NodeSpec, attrs_ok: bool) -> None:
        i = spec.index
        values = [self._value(c, GRAPHDEF, ("table", i, "children", j)) for j, c in enumerate(spec.children)]
        obj = self.objects[i]
        impl = self.impls[i]
        if attrs_ok and impl.is_builtin_node and self._attribute_stores_ok(spec.type, spec.keys):
            # (No guard for __dict__: a class's __dict__ cannot be assigned after creation.)
            self.facts.require_absent(spec.type, ("__getattribute__", "__setattr__", *spec.keys))
            pairs: list[tuple[Literal | str, str]] = [
                (self.consts.attr(k), v) for k, v in zip(spec.keys, values, strict=True)]
            self.steps.append(Step("fill_attrs", obj=obj, pairs=pairs, labels=self._key_labels(spec.keys)))
            return
        if impl.dict_node is not None and impl.dict_node.create is None:
            # Children under their stored names (an int path key is stored as its str).
            stored = [impl.dict_node.stored_key(k) for k in spec.keys]
            if not all(type(k) is str for k in stored):
                raise Declined(f"non-string attribute names on a {spec.type.__qualname__} node")
            pairs = [(Literal(k), v) for k, v in zip(stored, values, strict=True)]
            self.steps.append(Step("fill_dict", obj=obj, pairs=pairs))
            return
        keys = [self._key(k, GRAPHDEF, "table", i, "keys", j) for j, k in enumerate(spec.keys)]
        if impl.is_builtin_node:
            self.steps.append(Step("fill_dict", obj=obj, pairs=list(zip(keys, values, strict=True))))
        else:
            setter = self.consts.bind(impl.set_key, "F")
            for k, v in zip(keys, values, strict=True):
                self.steps.append(Step("set_key", obj=obj, setter=setter, key=k, value=v))

    def _attribute_stores_ok(self, t: type, keys: tuple) -> bool:
        """:func:`attribute_stores_ok`, read once per class and key tuple (keys all exact
        str: a str subclass key could compare equal to another tuple's)."""
        if not all(type(k) is str for k in keys):
            return attribute_stores_ok(t, keys)
        memo = (id(t), keys)
        ok = self._stores_ok.get(memo)
        if ok is None:
            ok = self._stores_ok[memo] = attribute_stores_ok(t, keys)
        return ok

    def _key_labels(self, keys: tuple) -> list[str]:
        """The comment label of each attribute ``keys`` name (one rendering per key tuple)."""
        if not all(type(k) is str for k in keys):
            return [path_label((None, k)) for k in keys]
        labels = self._labels.get(keys)
        if labels is None:
            labels = self._labels[keys] = [path_label((None, k)) for k in keys]
        return labels

    # -- values -------------------------------------------------------------------------

    def _value(self, edge: Any, base: int, at: tuple[str | int, ...]) -> str:
        """A local holding the value of ``edge``, which sits at ``at`` below ``base`` in
        the GraphDef (emitting the builds of containers). Iterative, bottom-up."""
        if type(edge) is not PytreeEdge:
            return self._leaf(edge, base, at)
        # Frames: [edge, its read, position of the next child, child locals so far].
        stack: list[list[Any]] = [[edge, self.reads.at(base, *at), 0, []]]
        while True:
            fr = stack[-1]
            e, read, pos, parts = fr
            kids = e.children
            while pos < len(kids):
                child = kids[pos]
                pos += 1
                if type(child) is PytreeEdge:
                    fr[2] = pos
                    stack.append([child, self.reads.at(read, "children", pos - 1), 0, []])
                    break
                parts.append(self._leaf(child, read, ("children", pos - 1)))
            else:
                stack.pop()
                name = self._build(e, read, parts)
                if not stack:
                    return name
                stack[-1][3].append(name)

    def _leaf(self, edge: Any, base: int, at: tuple[str | int, ...]) -> str:
        k = type(edge)
        if k is StaticEdge:
            if edge.sig is ArrayConstant:  # a bare array kept as a static: the array itself
                return self._own(self.reads.at(base, *at, "value", "array"))
            return self._own(self.reads.at(base, *at, "value"))
        if k is NodeEdge or k is StateEdge:
            return self.objects[edge.index]
        return self.slots[edge.slot]  # ArrayEdge

    def _build(self, edge: PytreeEdge, read: int, items: list[str]) -> str:
        ptype = edge.ptype
        self._counter += 1
        dst = f"c{self._counter}"
        if ptype is list:
            self.steps.append(Step("build_list", dst=dst, items=items))
        elif ptype is tuple:
            self.steps.append(Step("build_tuple", dst=dst, items=items))
        elif ptype is dict:
            keys = [self._key(k, read, "keys", j) for j, k in enumerate(edge.keys)]
            self.steps.append(Step("build_dict", dst=dst, pairs=list(zip(keys, items, strict=True))))
        else:
            treedef = self._own(self.reads.at(read, "ptype"))
            self.steps.append(Step("build_pytree", dst=dst, treedef=treedef, items=items))
        return dst
