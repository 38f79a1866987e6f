"""The unflatten planner: the steps that build a fresh graph of one structure.

It mirrors the reference ``build``: states and empty node shells first (in table
order), then each node filled in table order, so sharing and cycles resolve the
same way. Every user object the function puts into the graph (state and
custom-node metadata, statics, custom pytree treedefs, keys other than an exact
str or int) comes from the GraphDef being unflattened, as ``S``: an equal GraphDef
may hold equal but distinct objects. The planner records where each one sits as it
reads it (:class:`StaticReads`), so nothing has to repeat its order.

Outlined (``outline_min``, see shapes.py), where the order objects are made in is not
observable (no user code runs during the build; foreign classes run their adapter's
code only: classfacts.unflatten_order_free): an occurrence of a repeated self-contained
shape is built where it is used, bottom-up, by its shape's builder (planned once, from
one occurrence, as a body of its own), a list of occurrences of one shape (or a run of
a dict-backed node's children, an ``nnx.List``'s layers) by a loop whose body builds one
item, and a chain of nested links of one shape by a loop over the links (made up front).
An outlined body reads its values from ``vals`` at its occurrence's first slot and its
statics from a tuple read per occurrence from the GraphDef (its reads are kept relative
to the entry it was planned from). Sharing and cycles never reach into an outlined
subtree: they stay in the straight-line top function, built as the reference does.

Where user code runs in the build (callback node types: ``create_empty``, ``set_key``) and
nothing else would see the order (classfacts.unflatten_order_free with ``callbacks``), the
outlined code keeps the reference's order exactly, in two phases
(:meth:`UnflattenPlanner._phased_objects_then_fills`): every object in table order, then
every node filled in table order. An occurrence's subtree is a contiguous range of the
table, so its shape's ``outlined<sid>_create`` (its objects, in table order, returned as a
tuple) and ``outlined<sid>_fill`` (its nodes, in table order) are called at its place in
each phase, and a list of occurrences is one loop per phase. A chain of nested links is
the one-phase loop where no user call sees the difference
(:meth:`UnflattenPlanner._phased_chains_only`), else loops in the same two phases
(:meth:`UnflattenPlanner._phased_chain`).

A run of sibling states of one kind (``outline_min`` or more plain states of one class, a
node's attributes, a dict's values, a list's, tuple's or custom pytree's items, none shared:
:meth:`UnflattenPlanner._find_state_runs`) is made by one loop in the top function, at its
place in table order, each state as the unrolled code makes one (the reference's user calls,
in its order), and stored from that loop's list where its parent is filled or built (its
keys one bound tuple; a callback node's ``set_key`` called per item, in order).

A foreign library's per-call context (NNX: the one TraceState every Pytree and Variable
of the call shares; BrainState: the tracer, source info and level of every State) is
made once, first, by the top function, as unrolled; a builder takes the contexts it
needs as parameters (``outlined<sid>_build(vals, at, S, ctx0)``), passed by each caller
from its own, and a loop's body sees its function's local. So the objects one call
makes share exactly the contexts the unrolled code would give them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

from .. import _registry as reg
from .._ir import ArrayConstant, GraphDef, NodeEdge, NodeSpec, PytreeEdge, StateEdge, StateSpec, StaticEdge
from .classfacts import (
    ClassFacts,
    attribute_stores_ok,
    defines,
    own_state_classes,
    unflatten_order_free,
    unflatten_runs_no_user_code,
)
from .naming import Constants, Literal, Splice, path_label, safe_name
from .ops import Step
from .planning import Declined
from .shapes import Chain, edge_refs, find_chains, find_container_chains, find_container_shapes, find_shapes

__all__ = ["ShapeBuild", "StaticReads", "UnflattenPlan", "plan_unflatten"]

Address = tuple[int, tuple[str | int, ...]]

#: The base of a read that starts at the GraphDef itself.
GRAPHDEF = -1
#: The base of a read that starts at a table entry: its first step is the entry's index,
#: mapped to the occurrence being read (an outlined body is planned from one occurrence).
TABLE = -2
#: The base of a read that starts at the container chain link being read (its edge).
LINK = -3


class StaticReads:
    """Where a plan's statics sit in its GraphDef, recorded as the planner reads them.

    A read is a base (an earlier read, :data:`GRAPHDEF`, or :data:`TABLE` and an entry's
    index) and the steps below it: an attribute name (``"children"``, ...) or an index.
    :meth:`read` follows them in a GraphDef equal to the planned one and returns its own
    objects. An outlined body's reads (``rep``: the entry it was planned from) are read
    once per occurrence, its indices shifted to the occurrence's: a wanted item of the
    enclosing reads is that occurrence's tuple (``want_one``), or the items of every
    occurrence of a loop, one flat tuple (``want_each``, ``want_chain``).
    """

    def __init__(self, rep: int = 0) -> None:
        self.rep = rep
        self._reads: list[Address] = []
        self._wanted: list[Any] = []

    def __len__(self) -> int:
        """How many objects :meth:`read` returns."""
        return len(self._wanted)

    def at(self, base: int, *steps: str | int) -> int:
        """Record the object ``steps`` below ``base``; return its read number."""
        self._reads.append((base, steps))
        return len(self._reads) - 1

    def want(self, read: int) -> None:
        """The object of ``read`` is the next item of :meth:`read`'s tuple."""
        self._wanted.append(read)

    def want_one(self, sub: StaticReads, root: int) -> None:
        """The next item: ``sub``'s tuple for the occurrence whose first entry is ``root``."""
        self._wanted.append(("one", sub, root))

    def want_each(self, sub: StaticReads, roots: list[int]) -> None:
        """The next item: ``sub``'s tuples for the occurrences at ``roots``, concatenated."""
        self._wanted.append(("each", sub, roots))

    def want_chain(self, sub: StaticReads, n: int, step: int, cut: int, step_after: int) -> None:
        """The next item: ``sub``'s tuples for ``n`` chain links, concatenated. Link ``k``'s
        entries sit ``k * step`` after the first link's, those from index ``cut`` on
        ``k * step_after`` before them (see shapes.find_chains). No entries after the rest
        of the chain (``step_after`` 0): ``cut`` means nothing (a link's ``eafter`` is then
        ``(0, 0)``), every entry is before."""
        self._wanted.append(("chain", sub, (n, step, cut if step_after else -1, step_after)))

    def want_container(self, sub: StaticReads, edge: int, root: int) -> None:
        """The next item: ``sub``'s tuple for the container occurrence that is the object of
        read ``edge`` (read as :data:`LINK`), its first entry ``root``."""
        self._wanted.append(("container", sub, (edge, root)))

    def want_containers(self, subs: list[StaticReads], edges: list[int], roots: list[int]) -> None:
        """The next item: a tuple of :meth:`want_container`'s tuples, one per occurrence."""
        self._wanted.append(("containers", subs, (edges, roots)))

    def want_links(self, sub: StaticReads, head: int, n: int, rec: int, step: int, cut: int,
                   step_after: int) -> None:
        """The next item: ``sub``'s tuples for the ``n`` links of a chain of containers,
        innermost first, concatenated. The first link's edge is the object of read ``head``,
        each next one its ``children[rec]`` (read as :data:`LINK`); table entries as in
        :meth:`want_chain`."""
        self._wanted.append(("links", sub, (head, n, rec, step, cut, step_after)))

    def read(self, gd: GraphDef) -> tuple:
        """The wanted objects of ``gd``, in the order they were wanted."""
        return self._read(gd, gd.table, 0, -1, 0)

    def _read(self, gd: GraphDef, table: tuple, delta: int, cut: int, delta_after: int,
              link: Any = None) -> tuple:
        got: list[Any] = []
        for base, steps in self._reads:
            if base == TABLE:
                i = cast(int, steps[0])
                x: Any = table[i + (delta_after if 0 <= cut <= i else delta)]
                steps = steps[1:]
            elif base == LINK:
                x = link
            else:
                x = gd if base == GRAPHDEF else got[base]
            for s in steps:
                x = getattr(x, s) if type(s) is str else x[s]
            got.append(x)
        out: list[Any] = []
        for w in self._wanted:
            if type(w) is int:
                out.append(got[w])
                continue
            kind, sub, arg = w
            if kind == "container" or kind == "containers":
                subs, edges, roots = ([sub], [arg[0]], [arg[1]]) if kind == "container" else (sub, *arg)
                each = tuple(
                    s._read(gd, table, r + (delta_after if 0 <= cut <= r else delta) - s.rep, -1, 0, got[e])
                    for s, e, r in zip(subs, edges, roots, strict=True))
                out.append(each[0] if kind == "container" else each)
                continue
            if kind == "links":
                head, n, rec, step, cut_, step_after = arg
                edges = [got[head]]
                for _ in range(n - 1):
                    edges.append(edges[-1].children[rec])
                links: list[Any] = []
                for k in range(n - 1, -1, -1):
                    links.extend(sub._read(gd, table, delta + k * step, cut_, delta - k * step_after,
                                           edges[k]))
                out.append(tuple(links))
                continue
            if kind == "chain":
                n, step, cut_, step_after = arg
                flat: list[Any] = []
                for k in range(n):
                    flat.extend(sub._read(gd, table, delta + k * step, cut_, delta - k * step_after))
                out.append(tuple(flat))
                continue
            roots = [arg] if kind == "one" else arg
            parts = [sub._read(gd, table, r + (delta_after if 0 <= cut <= r else delta) - sub.rep, -1, 0)
                     for r in roots]
            out.append(parts[0] if kind == "one" else tuple(x for p in parts for x in p))
        return tuple(out)


@dataclass
class ShapeBuild:
    """The builder of one outlined shape: ``outlined<sid>_build([vals, at][, S])`` returns a
    fresh occurrence, from its values at ``vals[at:]`` and its statics ``S`` (read from the
    GraphDef being unflattened, per occurrence)."""

    name: str
    type_name: str
    steps: list[Step]
    root: str  # the local holding the occurrence's root
    values: bool  # takes vals, at
    statics: bool  # takes S
    contexts: list[str]  # then takes these per-call contexts (ctx0, ...: a caller passes its own)
    uses: int  # occurrences of the shape in the structure
    where: list[str]  # its first few call sites
    #: two-phase (a shape holding a callback node: see _phased_objects_then_fills): ``steps``
    #: make the objects (``outlined<sid>_create``, returning the locals ``made``, the root
    #: first), ``fill`` fills the nodes (``outlined<sid>_fill(t[, S])``); ``None``: one builder
    fill: list[Step] | None = None
    made: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _StateRun:
    """A run of sibling states of one kind (see :meth:`UnflattenPlanner._find_state_runs`),
    by its first table index: ``n`` states at consecutive table entries and value slots from
    ``slot``, of class ``type``; ``keys`` their keys as the parent stores them (``None``:
    positions); ``empty``: no state of it has metadata; ``where`` its place, for explain."""

    n: int
    slot: int
    type: type
    keys: tuple | None
    empty: bool
    where: str


@dataclass
class UnflattenPlan:
    """What the unflatten function of one structure does."""

    graphdef: GraphDef
    consts: Constants
    steps: list[Step]
    root: str  # the local holding the result
    facts: ClassFacts
    statics: StaticReads  # what the function takes as S, read from the GraphDef it is given
    shape_fns: list[ShapeBuild] = field(default_factory=list)  # outlined builders
    loops: list[str] = field(default_factory=list)  # loops over lists of one shape, chains (explain)
    epoch: int = -1  # the registry epoch it was planned in (its units' keys: codegen/shared.py)


def plan_unflatten(gd: GraphDef, max_steps: int, outline_min: int = 0) -> UnflattenPlan:
    """Steps that build a fresh graph of structure ``gd`` from values in slot order; a shape
    of subtree met ``outline_min`` times or more is built by one function (0: none)."""
    if outline_min > 0:
        try:
            return UnflattenPlanner(gd, max_steps, outline_min).plan()
        except _TooDeep:
            pass
    return UnflattenPlanner(gd, max_steps, 0).plan()


class _TooDeep(Exception):
    """Outlined shapes nested deeper than :data:`MAX_NESTING`: planned unrolled instead."""


#: Outlined builders calling builders this deep (planning recurses once per level).
MAX_NESTING = 40


@dataclass
class _Body:
    """One function body being planned: the top function, a builder, a loop's item or link."""

    reads: StaticReads
    regions: list[tuple[int, int, str]]  # (first slot, slots, base local: '' for absolute)
    names: dict[int, str]  # table index -> its local, where it is not o<index>
    steps: list[Step] = field(default_factory=list)
    statics: list[str] = field(default_factory=list)  # the locals of the wanted reads, in order
    direct: dict[int, str] = field(default_factory=dict)  # value slot -> local, read by this body
    consumers: bool = False  # an outlined call or loop reads vals at a position of this body
    #: the body of the function whose locals this one's code sees (a loop's item or link:
    #: the enclosing function's; None: this body is a function's own)
    scope: _Body | None = None
    #: a function body's per-call contexts: factory -> its local (the top function makes
    #: them first; a builder takes them as parameters, in ``params`` order)
    contexts: dict[Any, str] = field(default_factory=dict)
    params: list[Any] = field(default_factory=list)
    #: a container shape's builder (find_container_shapes): the edge of the occurrence it
    #: is planned from; None: any other body
    container: Any = None
    #: the locals of the bare arrays it reads (their values, read first with the others):
    #: two-phase, the fills find them among what the objects phase made (see _phased_fn)
    arrays: list[str] = field(default_factory=list)


def _kept_arrays(body: _Body, made: list[str]) -> list[str]:
    """The locals of the bare arrays a two-phase body reads (read with its other values, in
    the objects phase) that its fills use: returned with what the objects phase made, so
    the fills phase (another function, or another loop) finds them."""
    return list(dict.fromkeys(a for a in body.arrays if a not in made))


class UnflattenPlanner:
    """Plans one structure: objects first, then each node filled, then the root's value."""

    def __init__(self, gd: GraphDef, max_steps: int, outline_min: int = 0) -> None:
        self.gd = gd
        self.max_steps = max_steps
        self.epoch = reg.registry_epoch()
        self.consts = Constants()
        self.facts = ClassFacts()
        self.impls = {spec.index: reg.node_impl(spec.type) for spec in gd.table if type(spec) is NodeSpec}
        # Attribute stores only where no user code can run during the call (so the class
        # guards, checked first, still hold at every store): see attribute_stores_ok. Then
        # the order objects are made in is not observable either, nor where foreign classes
        # run only their adapter's code (unflatten_order_free): an outlined subtree is built
        # bottom-up where it is used.
        self.attrs_ok = unflatten_runs_no_user_code(gd, self.impls)
        order_free = outline_min > 0 and unflatten_order_free(gd, self.impls, self.attrs_ok)
        # User code runs in the build (callback node types) but nothing else would see the
        # order: outlined in two phases, in the reference's order (_phased_objects_then_fills).
        self.phased = outline_min > 0 and not order_free \
            and unflatten_order_free(gd, self.impls, False, callbacks=True)
        outline = outline_min if order_free or self.phased else 0
        self._outline = outline
        # Shapes by structure only: statics and metadata are read per occurrence anyway.
        # Foreign classes too: their per-call contexts are passed in (see _context).
        self.shapes = find_shapes(gd, outline, set(), set(), foreign=True, by_value=False,
                                  callbacks=self.phased, arrays=True)
        self._run_at: dict[int, PytreeEdge] = {}  # phased: first occurrence -> its list's edge
        self._run_made: dict[int, str] = {}  # phased: id(a run's edge) -> the list of its items' objects
        if self.phased:
            self._find_runs()
        # In two phases (callback node types in the build), chains of links calling user code
        # too: their loops make the links (each's objects in table order), what comes after
        # the rest of the chain, then fill the links (_phased_chain); chains of links calling
        # none keep the one-phase loop where no user call sees its order (_phased_chains_only).
        # (Links holding their next link in a container of theirs too: a link's containers are
        # built from its own table entry, each link's, the next link's object where it sits.)
        self.chains = find_chains(gd, max(2, outline), set(), set(), self.shapes, user=self.phased,
                                  nested=True) \
            if outline else {}
        # phased: the heads of the chains looped in two phases (links calling user code, or a
        # callback node filled between the links and their nodes after the rest)
        self._cb_chains: set[int] = set()
        if self.phased:
            self._split_cb_chains()
        self._declarative_links_only()
        # Chains of nested containers of one link shape (``x = [x, State(...)]``): a loop
        # building the innermost link first (see _links).
        self.cchains = find_container_chains(gd, max(2, outline), set(), set(), self.shapes) \
            if outline else {}
        if self.phased:
            self._phased_chains_only()
        # Runs of sibling states of one kind (see _find_state_runs): made by one loop each in
        # the top function, where the reference makes them (table order), and stored from
        # that loop's list where their parent is filled or built.
        self.run_min = max(2, outline_min) if outline_min > 0 else 0
        self._state_runs: dict[int, _StateRun] = self._find_state_runs() if self.run_min else {}
        self._state_lists: dict[int, str] = {}  # a run's first table index -> the top's list of its states
        # Repeated small containers (one phase only): one builder per shape, built where used.
        if outline and not self.phased:
            find_container_shapes(gd, outline, self.shapes, self.chains, self.cchains)
        self._cfns: dict[int, ShapeBuild] = {}
        self._rec_edge: Any = None  # planning a container chain's link: the next link's edge
        self._rec_local = ""  # and the local holding its value
        self.body = _Body(StaticReads(), [(0, gd.num_leaves, "")], {})
        self._top_body = self.body
        self._top = True
        self._nesting = 0
        self._done_steps = 0  # steps planned into bodies other than the current one
        self._nstatics = 0
        self._counter = 0
        self.shape_fns: list[ShapeBuild] = []
        self._fns: dict[int, ShapeBuild] = {}
        self._fn_reads: dict[int, StaticReads] = {}
        self._fn_params: dict[int, list[Any]] = {}  # sid -> the context factories its builder takes
        self.loops: list[str] = []
        self._site: tuple[NodeSpec, int] | None = None  # where the value being planned goes (explain)
        self._sites: dict[int, Any] | None = None  # the two-phase walk's labels (:meth:`_label_of`)
        # Per class (by id: the GraphDef holds each alive) and per key tuple, read once.
        self._plain_new: dict[int, bool] = {}
        self._stores_ok: dict[tuple[int, tuple], bool] = {}
        self._labels: dict[tuple, list[str]] = {}

    def _split_cb_chains(self) -> None:
        """The chains whose links hold a callback node (``_cb_chains``): looped by
        :meth:`_phased_chain`, in the reference's order. The others are left to
        :meth:`_phased_chains_only` and the one-phase loop."""
        table, impls = self.gd.table, self.impls

        def user(lo: int, n: int) -> bool:
            return any(type(table[j]) is NodeSpec and not impls[j].is_builtin_node
                       and impls[j].dict_node is None for j in range(lo, lo + n))

        for head, ch in self.chains.items():
            first = ch.links[0]
            if user(*first.ebefore) or user(*first.eafter):
                self._cb_chains.add(head)

    def _declarative_links_only(self) -> None:
        """Chains only of links whose class's fresh instance is ``object.__new__(cls)``, with
        its bookkeeping (NNX Pytrees) made from each link's metadata by the loop's body: a
        class whose ``create`` is a function of its own is never outlined (shapes.py) nor
        looped here."""
        impls = self.impls
        for head in list(self.chains):
            if head in self._cb_chains:  # (made by their create_empty, in two phases)
                continue
            impl = impls[head]
            if not impl.is_builtin_node and (impl.dict_node is None or impl.dict_node.create is not None):
                del self.chains[head]

    @property
    def steps(self) -> list[Step]:
        return self.body.steps

    @property
    def reads(self) -> StaticReads:
        return self.body.reads

    def plan(self) -> UnflattenPlan:
        gd = self.gd
        root_index = gd.root.index if type(gd.root) is NodeEdge else -1
        self._objects_then_fills([(0, len(gd.table))], root_index)
        self._site = None
        root = self._value(gd.root, GRAPHDEF, ("root",))
        body = self.body
        head = self.facts.steps(self.consts)  # the class guards go first
        if body.statics:
            head.append(Step("unpack_statics", dsts=body.statics))
        steps = body.steps
        ctx = sum(1 for s in steps[: len(body.contexts)] if s.op == "new_context")
        if len(body.direct) == gd.num_leaves and not body.consumers:
            if body.direct:
                steps.insert(ctx, Step("unpack_values", dsts=[body.direct[i] for i in range(gd.num_leaves)]))
        else:
            steps[ctx:ctx] = self._take(body)
        return UnflattenPlan(graphdef=gd, consts=self.consts, steps=head + steps, root=root,
                             facts=self.facts, statics=body.reads, shape_fns=self.shape_fns, loops=self.loops,
                             epoch=self.epoch)

    # -- bodies: the top function's, a builder's, a loop item's ----------------------------

    def _check_size(self) -> None:
        if len(self.body.steps) + self._done_steps > self.max_steps:
            # (Generated code, not nodes: repeated substructures are one function or loop.)
            raise Declined(f"structure too large (more than {self.max_steps} steps of generated code)")

    def _cchain_entries(self) -> dict[int, int]:
        """Where a container chain's entries begin in the table, mapped to where they end:
        at the top, its loop makes them link by link, so the table walk skips them."""
        skip: dict[int, int] = {}
        if self._top:
            for cc in self.cchains.values():
                l0, ln = cc.links[0], cc.links[-1]
                if l0.ebefore[1]:
                    skip[l0.ebefore[0]] = l0.ebefore[0] + cc.n * l0.ebefore[1]
                if l0.eafter[1]:
                    skip[ln.eafter[0]] = ln.eafter[0] + cc.n * l0.eafter[1]
        return skip

    def _objects_then_fills(self, ranges: list[tuple[int, int]], root: int) -> None:
        """The states and empty nodes of the entries in ``ranges`` (in table order), then
        each node filled (in table order), as the reference builds. An occurrence of an
        outlined shape (but ``root``) is skipped: it is built where it is used. At the top,
        a chain is its head's object, then one loop that makes and fills its links."""
        if self.phased:
            self._phased_objects_then_fills(ranges, root)
            return
        table = self.gd.table
        shape_of, shapes = self.shapes.shape_of, self.shapes.shapes
        chains = self.chains if self._top else {}
        names = self.body.names
        skip = self._cchain_entries()
        csize, cshape_of = self.shapes.csize, self.shapes.cshape_of
        # Container occurrences are built by their builders, where used, so their entries
        # are skipped: in a builder's body, those nested in its container (one may hold
        # another of the very same entries: ``{'a': [p], 's': 1}``); at the top, all; in any
        # other body (an outlined node's, a chain's link, a loop's item), none: no occurrence
        # is inside one (see find_container_shapes), though its entries may be inside an
        # occurrence (a node shape planned from its first occurrence, ``[Box(), Box()]``'s).
        inner: Any = cshape_of if self._top else ()
        if self.body.container is not None:
            inner = []
            stack = list(self.body.container.children)
            while stack:
                e = stack.pop()
                if type(e) is PytreeEdge:
                    if id(e) in cshape_of:
                        inner.append(id(e))
                    stack.extend(e.children)
        for cid in inner:
            at, end = csize[cid][2], csize[cid][2] + csize[cid][3]
            if skip.get(at, -1) < end:
                skip[at] = end
        fills: list[int] = []
        for lo, hi in ranges:
            i = lo
            while i < hi:
                j = skip.get(i)
                if j is not None:
                    i = j
                    continue
                if i != root and i in shape_of:
                    i += shapes[shape_of[i]].nindices
                    continue
                spec = table[i]
                if type(spec) is NodeSpec:
                    ch = chains.get(i)
                    if i not in names:
                        self._new_node(spec, bookkeeping=ch is None)  # (a chain's loop makes its links')
                    fills.append(i)
                    if ch is not None:
                        first, last = ch.links[0], ch.links[-1]
                        if last.eafter[1]:
                            skip[last.eafter[0]] = last.eafter[0] + ch.n * first.eafter[1]
                        i += ch.n * first.ebefore[1]
                        continue
                elif self._top and i in self._state_runs:  # a run of sibling states: one loop
                    self._new_state_run(self._state_runs[i], i)
                    i += self._state_runs[i].n
                    self._check_size()
                    continue
                else:
                    self._new_state(spec)
                i += 1
                self._check_size()
        for i in fills:
            ch = chains.get(i)
            if ch is not None:
                self._chain(ch)
            else:
                self._fill_node(cast(NodeSpec, table[i]))
            self._check_size()

    @contextlib.contextmanager
    def _in(self, body: _Body) -> Iterator[None]:
        """Plan into ``body`` (its own steps, reads and locals), then back."""
        saved = self.body, self._top, self._site
        self._nesting += 1
        if self._nesting > MAX_NESTING:
            raise _TooDeep()
        self.body, self._top = body, False
        try:
            yield
        finally:
            self._nesting -= 1
            self.body, self._top, self._site = saved
            self._done_steps += len(body.steps)

    @staticmethod
    def _take(body: _Body) -> list[Step]:
        """The steps reading a body's own values, per region of its slots: one slice
        unpacked when they are all the region's slots, else one read each."""
        out = []
        for lo, n, base in body.regions:
            slots = sorted(s for s in body.direct if lo <= s < lo + n)
            if not slots:
                continue
            run = not body.consumers and len(slots) == n > 1
            out.append(Step("take_values", dsts=[body.direct[s] for s in slots], base=base,
                            offs=[s - lo for s in slots], run=run))
        return out

    def _site_label(self) -> str:
        """Where the value being planned goes, for explain: its node's class and key."""
        if self._site is None:
            return "<root>"
        spec, j = self._site
        return path_label(((None, safe_name(spec.type.__qualname__)), spec.keys[j]))

    def _label_of(self, at: int | PytreeEdge) -> str:
        """Where table entry ``at`` (or the container edge ``at``) sits, for explain: its
        parent node's class and the keys below it, as :meth:`_site_label` says it. (The
        two-phase walk goes in table order, not down from the root: it asks the table.)"""
        sites = self._sites
        if sites is None:
            sites = self._sites = {}
            for spec in self.gd.table:
                if type(spec) is NodeSpec:
                    base = (None, safe_name(spec.type.__qualname__))
                    stack: list[tuple[Any, Any]] = (
                        [((base, k), e) for k, e in zip(spec.keys, spec.children, strict=False)])
                    while stack:
                        link, e = stack.pop()
                        if type(e) is NodeEdge:
                            sites[e.index] = link
                        elif type(e) is PytreeEdge:
                            sites[id(e)] = link
                            stack.extend(((link, k), c) for k, c in zip(e.keys, e.children, strict=False))
        link = sites.get(at if type(at) is int else id(at))
        return "<root>" if link is None else path_label(link)

    def _fresh(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}{self._counter}"

    def _slot(self, slot: int) -> str:
        """The local holding value ``slot`` (read by the current body)."""
        name = self.body.direct.get(slot)
        if name is None:
            name = self.body.direct[slot] = f"v{slot}"
        return name

    def _pos(self, slot: int) -> tuple[str, int]:
        """Where value ``slot`` sits in ``vals`` for the current body: (base local, offset)."""
        self.body.consumers = True
        for lo, n, base in self.body.regions:
            if lo <= slot < lo + n:
                return (base, slot - lo)
        raise RuntimeError(f"value slot {slot} is outside the body being planned")

    def _obj(self, index: int) -> str:
        return self.body.names.get(index) or f"o{index}"

    def _node_value(self, index: int) -> str:
        """The local holding node ``index`` where it is used: an occurrence of an outlined
        shape is built here, by its builder."""
        name = self.body.names.get(index)
        if name is not None:
            return name
        sid = self.shapes.shape_of.get(index)
        if sid is None:
            return f"o{index}"
        fn = self._shape_fn(sid)
        at = self._pos(self.shapes.slot_lo[index]) if fn.values else None
        statics = None
        if fn.statics:
            statics = self._static_local()
            self.reads.want_one(self._fn_reads[sid], index)
        ctxs = [self._context(f) for f in self._fn_params[sid]]
        dst = self._fresh("o_")
        self.steps.append(Step("call_build", dst=dst, fn=fn.name, at=at, statics=statics, contexts=ctxs))
        if len(fn.where) < 3:
            fn.where.append(self._site_label())
        return dst

    def _shape_fn(self, sid: int) -> ShapeBuild:
        """The builder of shape ``sid``, planned from its first occurrence on first use."""
        fn = self._fns.get(sid)
        if fn is not None:
            return fn
        shape = self.shapes.shapes[sid]
        rep = shape.rep
        lo = self.shapes.slot_lo[rep]
        body = _Body(StaticReads(rep), [(lo, shape.nslots, "at")], {})
        with self._in(body):
            self._objects_then_fills([(rep, rep + shape.nindices)], rep)
        steps = []
        if body.statics:
            steps.append(Step("unpack_statics", dsts=body.statics))
        steps += self._take(body)
        fn = ShapeBuild(name=f"outlined{sid}", type_name=safe_name(shape.type_name), steps=steps + body.steps,
                        root=f"o{rep}", values=shape.nslots > 0, statics=bool(body.statics),
                        contexts=[body.contexts[f] for f in body.params], uses=len(shape.occurrences),
                        where=[])
        self._fn_reads[sid] = body.reads
        self._fn_params[sid] = body.params
        self._fns[sid] = fn
        self.shape_fns.append(fn)
        return fn

    # -- what the function takes from its GraphDef --------------------------------------

    def _static_local(self) -> str:
        """A fresh local for the next wanted item of the current body's reads."""
        name = f"s{self._nstatics}"
        self._nstatics += 1
        self.body.statics.append(name)
        return name

    def _own(self, read: int) -> str:
        """The local that will hold the object of ``read`` (unpacked from ``S``)."""
        name = self._static_local()
        self.reads.want(read)
        return name

    def _spec(self, index: int) -> int:
        """A read of table entry ``index`` (of the occurrence being built)."""
        return self.reads.at(TABLE, index)

    def _key(self, k: Hashable, base: int, *at: str | int) -> Literal | str:
        """An exact str/int key is spelled; any other is read from ``S`` (it sits at ``at``)."""
        if type(k) is str or type(k) is int:
            return Literal(k)
        return self._own(self.reads.at(base, *at))

    # -- objects ------------------------------------------------------------------------

    def _new_node(self, spec: NodeSpec, bookkeeping: bool = True) -> None:
        """A fresh node of ``spec``'s class (a dict-backed one's bookkeeping too, unless
        ``bookkeeping`` is false: a chain's head, whose loop makes every link's)."""
        impl = self.impls[spec.index]
        dst = self._obj(spec.index)
        if impl.is_builtin_node:
            self.steps.append(Step("new_object", dst=dst, cls=self.consts.bind(spec.type, "T")))
        elif impl.dict_node is not None and impl.dict_node.create is None:
            self._new_dict_node(spec, impl.dict_node, dst)
            if bookkeeping:
                self._bookkeeping(spec, impl.dict_node, dst)
        else:
            meta = self._own(self.reads.at(self._spec(spec.index), "meta"))
            self.steps.append(Step("new_custom", dst=dst, factory=self.consts.bind(impl.create_empty, "F"),
                                   meta=meta))

    def _context(self, factory: Any) -> str:
        """The local holding a foreign library's per-call context where the current body's
        code runs. The top function makes each once, first (as the unrolled code does); a
        builder takes the ones it (or what it calls) uses as parameters, which every caller
        passes from its own (so one call's objects all share the top function's contexts);
        a loop's item or link sees its enclosing function's."""
        fb = self.body.scope or self.body
        name = fb.contexts.get(factory)
        if name is None:
            name = fb.contexts[factory] = f"ctx{len(fb.contexts)}"
            if fb is self._top_body:
                fb.steps.insert(0, Step("new_context", dst=name, factory=self.consts.bind(factory, "F")))
            else:
                fb.params.append(factory)
        return name

    def _new_dict_node(self, spec: NodeSpec, dn: reg.DictNode, dst: str) -> None:
        """What ``DictNode.new`` does first: ``object.__new__(cls)`` (then :meth:`_bookkeeping`)."""
        self.steps.append(Step("new_object", dst=dst, cls=self.consts.bind(spec.type, "T")))
        if self.shapes or self.chains or self.cchains:  # the build order is free while no class gains one
            self.facts.require_absent(spec.type, ("__getattribute__",))  # (see unflatten_order_free)

    def _bookkeeping(self, spec: NodeSpec, dn: reg.DictNode, dst: str) -> None:
        """What ``DictNode.new`` does then: each bookkeeping attribute of the fresh node in
        ``dst`` from the metadata or from its factory (with the call's context)."""
        if dn.rebuild is None:
            return
        i = spec.index
        pairs: list[tuple[Literal | str, str]] = []
        for r in dn.rebuild:
            if r.factory is None:
                # factory None: the bookkeeping attribute is metadata item ``item`` (an int)
                value = self._own(self.reads.at(self._spec(i), "meta", cast(int, r.item)))
            else:
                args = [self._own(self.reads.at(self._spec(i), "meta", j)) for j in r.items]
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
        dst = self._obj(spec.index)
        self.steps.append(Step("new_object", dst=dst, cls=self.consts.bind(t, "T")))
        if lay.context is not None:
            ctx = self._context(simpl.context) if simpl.context is not None else "None"
            self.steps.append(Step("set_slot", obj=dst, setter=self.consts.bind(lay.setter(lay.context), "F"),
                                   value=ctx))
        meta = self._own(self.reads.at(self._spec(spec.index), "metadata"))
        self._counter += 1
        md = f"md{self._counter}"
        self.steps.append(Step("call", dst=md, fn=self.consts.bind(dict, "T"), args=[meta]))
        self.steps.append(Step("set_slot", obj=dst, setter=self.consts.bind(lay.setter(lay.metadata), "F"),
                               value=md))
        self.steps.append(Step("set_slot", obj=dst, setter=self.consts.bind(lay.setter(lay.value), "F"),
                               value=self._slot(spec.slot)))

    def _new_dict_state(self, spec: Any, simpl: reg.StateImpl, lay: reg.DictStateLayout) -> None:
        """What a dict-backed state's ``create`` does: ``object.__new__(cls)``, its metadata
        (converted back to the stored form where the layout says), its value, and its
        bookkeeping from the layout's factories (given the call's context)."""
        t = spec.type
        if not lay.plain(t):
            raise Declined(f"state type {t.__qualname__} overrides what raw reads rely on")
        self.facts.require_absent(t, lay.overridable, classes=list(t.__mro__[: t.__mro__.index(lay.base)]))
        dst = self._obj(spec.index)
        self.steps.append(Step("new_object", dst=dst, cls=self.consts.bind(t, "T")))
        pairs: list[tuple[Literal | str, str]] = []
        for j, (k, _) in enumerate(spec.metadata):
            key = self._key(k, self._spec(spec.index), "metadata", j, 0)
            value = self._own(self.reads.at(self._spec(spec.index), "metadata", j, 1))
            conv = lay.convert.get(k)
            if conv is not None:
                self._counter += 1
                stored = f"f{self._counter}"
                self.steps.append(Step("call", dst=stored, fn=self.consts.bind(conv[1], "F"), args=[value]))
                value = stored
            pairs.append((key, value))
        pairs.append((Literal(lay.value), self._slot(spec.slot)))
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
        op = self._state_new_op(t)
        dst = self._obj(spec.index)
        self.steps.append(Step(op, dst=dst, cls=self.consts.bind(t, "T")))
        if spec.metadata:
            meta = self._own(self.reads.at(self._spec(spec.index), "metadata"))
        else:
            meta = self.consts.bind(spec.metadata, "M")
        self.steps.append(Step("set_state", obj=dst, meta=meta, value=self._slot(spec.slot)))

    def _state_new_op(self, t: type) -> str:
        """How a fresh plain state of class ``t`` is made (``new_object`` / ``new_via_type``),
        with the class facts the unflatten's code relies on for it."""
        plain_new = self._plain_new.get(id(t))
        if plain_new is None:  # read once per class (the GraphDef holds every class alive)
            plain_new = self._plain_new[id(t)] = type(t) is type and not defines(t, "__new__")
        if plain_new:
            op = "new_object"  # what cls.__new__(cls) does, while no class gains a __new__
            self.facts.require_absent(t, ("__new__",))
        else:
            op = "new_via_type"
        if self.shapes or self.chains or self.cchains:
            # Outlined: states are made where their subtree is used, not in table order,
            # which the stores below keep unobservable while they run no user code (read
            # at compile time): no class gains a __setattr__, nor a value/_metadata of its own.
            self.facts.require_absent(t, ("__setattr__",))
            self.facts.require_absent(t, ("_metadata", "value"), classes=own_state_classes(t))
        return op

    # -- runs of sibling states ------------------------------------------------------------

    def _find_state_runs(self) -> dict[int, _StateRun]:
        """Runs of at least ``run_min`` consecutive sibling states of one kind, by their first
        table index: a node's children, a dict's values, a list's, tuple's or custom pytree's
        items. One kind: plain ``State`` objects (no foreign layout) of one class, all with
        metadata or all without, each referenced once in the whole structure (a tied state
        stays unrolled, made and stored as the reference does), at consecutive table entries
        and value slots, under keys bound as one tuple (exact ``str``; a dict's and a callback
        node's keys an exact ``int`` too). The reference makes them one after the other (table
        order) and stores them one after the other: so does the loop, in the top function only
        (what an outlined builder, a loop's item or a chain's link makes stays unrolled)."""
        gd = self.gd
        table, impls, refs = gd.table, self.impls, edge_refs(gd)
        plain: dict[int, bool] = {}
        out: dict[int, _StateRun] = {}

        def str_key(k: Any) -> bool:
            return type(k) is str

        def scalar_key(k: Any) -> bool:
            return type(k) is str or type(k) is int

        def scan(kids: tuple, keys: tuple | None, ok_key: Callable[[Any], bool], link: Any) -> None:
            if len(kids) < self.run_min:
                return
            start, prev = -1, -1
            kind: Any = None
            for pos in range(len(kids) + 1):
                e: Any = kids[pos] if pos < len(kids) else None
                k: Any = None
                if type(e) is StateEdge and refs[e.index] == 1 and (keys is None or ok_key(keys[pos])):
                    spec = table[e.index]
                    t = spec.type
                    ok = plain.get(id(t))
                    if ok is None:
                        simpl = reg.state_impl(t) if type(spec) is StateSpec else None
                        ok = plain[id(t)] = type(spec) is StateSpec and (
                            (type(t) is type and simpl is None)
                            or (simpl is not None and simpl.layout is not None))
                    if ok:
                        k = (id(t), not spec.metadata) if reg.state_impl(t) is None \
                            else self._foreign_kind(spec)
                if k is not None and k == kind and e.index == prev + 1 \
                        and cast(Any, table[e.index]).slot == cast(Any, table[prev]).slot + 1:
                    prev = e.index
                    continue
                if start >= 0 and pos - start >= self.run_min:
                    first = kids[start].index
                    head: Any = table[first]
                    where = path_label((link, keys[start] if keys is not None else start))
                    out[first] = _StateRun(pos - start, head.slot, head.type,
                                           None if keys is None else tuple(keys[start:pos]), kind[1], where)
                start, prev, kind = (pos, e.index, k) if k is not None else (-1, -1, None)

        stack: list[tuple[Any, Any]] = []
        for spec in table:
            if type(spec) is not NodeSpec:
                continue
            impl = impls[spec.index]
            base = (None, safe_name(spec.type.__qualname__))
            if impl.is_builtin_node:
                scan(spec.children, spec.keys, str_key, base)
            elif impl.dict_node is not None and impl.dict_node.create is None:
                scan(spec.children, tuple(map(impl.dict_node.stored_key, spec.keys)), str_key, base)
            else:
                scan(spec.children, spec.keys, scalar_key, base)
            stack.extend(((base, k), e) for k, e in zip(spec.keys, spec.children, strict=True)
                         if type(e) is PytreeEdge)
        if type(gd.root) is PytreeEdge:
            stack.append((None, gd.root))
        while stack:
            link, e = stack.pop()
            if e.ptype is dict:
                scan(e.children, e.keys, scalar_key, link)
            else:
                scan(e.children, None, str_key, link)
            stack.extend(((link, k), c) for k, c in zip(e.keys, e.children, strict=False)
                         if type(c) is PytreeEdge)
        return out

    @staticmethod
    def _foreign_kind(spec: Any) -> tuple[Any, ...]:
        """What foreign states of one run share: the code :meth:`_new_foreign_state` plans
        for the first serves each (its class; its metadata's names, spelled in the code of a
        dict-backed state; whether its layout may serve that metadata at all)."""
        t = spec.type
        lay = cast(Any, reg.state_impl(t)).layout
        names = tuple((type(k), k) for k, _ in spec.metadata)
        ok = isinstance(lay, reg.DictStateLayout) or lay.specializable(spec.metadata)
        return (id(t), "foreign", names, ok)

    def _new_state_run(self, run: _StateRun, first: int) -> str:
        """The loop making the states of ``run`` (from table index ``first``) in table order,
        each as :meth:`_new_state` makes one, into a list (its local, returned)."""
        t = run.type
        if reg.state_impl(t) is not None:
            return self._foreign_state_run(run, first)
        op = self._state_new_op(t)
        start = self._pos(run.slot)
        metas = meta = None
        if run.empty:
            meta = self.consts.bind((), "M")
        else:  # each state's metadata, read from the GraphDef being unflattened (one tuple)
            sub = StaticReads(first)
            sub.want(sub.at(TABLE, first, "metadata"))
            metas = self._static_local()
            self.reads.want_each(sub, list(range(first, first + run.n)))
        dst = self._fresh("r")
        self.steps.append(Step("new_state_run", dst=dst, new=op, cls=self.consts.bind(t, "T"), start=start,
                               stop=(start[0], start[1] + run.n), metas=metas, meta=meta,
                               var=self._fresh("x"), value=self._fresh("x"), md=self._fresh("md"), n=run.n))
        self._state_lists[first] = dst
        self.loops.append(f"{run.where}: a run of {run.n} x {safe_name(t.__qualname__)}")
        return dst

    def _foreign_state_run(self, run: _StateRun, first: int) -> str:
        """A run of foreign states (NNX Variables, BrainState States): one loop whose body
        is the code :meth:`_new_foreign_state` plans for the first (its context from the
        enclosing function, its metadata read per item from the GraphDef being unflattened),
        building each in table order into a list (its local, returned)."""
        kids = tuple(StateEdge(i) for i in range(first, first + run.n))
        pos = self._pos(run.slot)
        counter = self._fresh("a")
        body = _Body(StaticReads(first), [(run.slot, 1, counter)], {}, scope=self.body.scope or self.body)
        with self._in(body):
            self._new_state(self.gd.table[first])
        setup, sources, targets, counters, item_steps, _ = self._loop_feeds(
            body, body.steps, kids, counter, pos, run.slot, 1)
        dst = self._fresh("r")
        self.steps.extend(setup)
        self.steps.append(Step("build_each", dst=dst, n=run.n, targets=targets, sources=sources,
                               counters=counters, body=item_steps, item=f"o{first}", tuple=False))
        self._state_lists[first] = dst
        self.loops.append(f"{run.where}: a run of {run.n} x {safe_name(run.type.__qualname__)}")
        return dst

    def _state_run_at(self, edge: Any) -> tuple[_StateRun, str] | None:
        """Where ``edge`` (a child of the node or container being filled or built) begins a
        run made by the top function's loop: the run and the loop's list."""
        if type(edge) is not StateEdge or self.body is not self._top_body:
            return None
        lst = self._state_lists.get(edge.index)
        if lst is None:
            return None
        return self._state_runs[edge.index], lst

    def _fill_node(self, spec: NodeSpec) -> None:
        i = spec.index
        base = self._spec(i)
        impl = self.impls[i]
        dict_node = impl.dict_node is not None and impl.dict_node.create is None
        values = []
        # first child -> (past its run, the list of its objects, their keys as stored, None:
        # the node's): a run of one shape (a loop building them) or of sibling states (the top
        # function's loop made them)
        runs: dict[int, tuple[int, str, tuple | None]] = {}
        kids = spec.children
        j = 0
        while j < len(kids):
            self._site = (spec, j)
            made = self._state_run_at(kids[j])
            if made is not None:  # a run of sibling states: stored from its loop's list
                srun, lst = made
                runs[j] = (j + srun.n, lst, srun.keys)
                values += [""] * srun.n
                j += srun.n
                continue
            n = self._run_length(kids, j) if dict_node and self.shapes.shape_of and not self.phased else 0
            if n >= 2:  # a run of one shape (an nnx.List's layers): a loop, stored from its list
                runs[j] = (j + n, self._loop(kids[j:j + n], False, path_label((None, spec.keys[j + n - 1]))),
                           None)
                values += [""] * n
                j += n
                continue
            values.append(self._value(kids[j], base, ("children", j)))
            j += 1
        obj = self._obj(i)
        if self.attrs_ok and impl.is_builtin_node and self._attribute_stores_ok(spec.type, spec.keys):
            # (No guard for __dict__: a class's __dict__ cannot be assigned after creation.)
            # A run is stored as the reference stores every child (its __dict__ updated):
            # only the attributes stored one by one rely on the class's facts.
            single = tuple(k for j, k in enumerate(spec.keys) if values[j])
            if single:
                self.facts.require_absent(spec.type, ("__getattribute__", "__setattr__", *single))
            self._fill_segments(obj, list(spec.keys), values, runs, lambda pairs, keys: Step(
                "fill_attrs", obj=obj, pairs=[(self.consts.attr(k), v) for k, v in pairs],
                labels=self._key_labels(tuple(keys))))
            return
        if dict_node:
            assert impl.dict_node is not None
            # Children under their stored names (an int path key is stored as its str).
            stored = [impl.dict_node.stored_key(k) for k in spec.keys]
            if not all(type(k) is str for k in stored):
                raise Declined(f"non-string attribute names on a {spec.type.__qualname__} node")
            self._fill_segments(obj, stored, values, runs, lambda pairs, keys: Step(
                "fill_dict", obj=obj, pairs=[(Literal(k), v) for k, v in pairs]))
            return
        # (a run's keys are exact str/int: Literals, read from no S)
        keys = [self._key(k, self._spec(i), "keys", j) for j, k in enumerate(spec.keys)]
        if impl.is_builtin_node:
            if self.shapes or self.chains or self.cchains:  # outlined: out of table order (see _new_state)
                self.facts.require_absent(spec.type, ("__getattribute__",))
            self._fill_segments(obj, keys, values, runs, lambda pairs, _: Step(
                "fill_dict", obj=obj, pairs=pairs))
        else:
            setter = self.consts.bind(impl.set_key, "F")
            j = 0
            while j < len(keys):
                run = runs.get(j)
                if run is None:
                    self.steps.append(Step("set_key", obj=obj, setter=setter, key=keys[j],
                                           value=values[j]))
                    j += 1
                    continue
                end, lst, run_keys = run
                assert run_keys is not None
                self.steps.append(Step("set_key_run", obj=obj, setter=setter,
                                       keys=self.consts.bind(run_keys, "KS"), src=lst,
                                       var=self._fresh("x"), value=self._fresh("x")))
                j = end

    def _fill_segments(self, obj: str, keys: list[Any], values: list[str],
                       runs: dict[int, tuple[int, str, tuple | None]],
                       one: Callable[[list[tuple[Any, str]], list[Any]], Step]) -> None:
        """A node's children stored in order: each stretch of single children by ``one``
        (given its (key, value) pairs and keys), each run by a ``fill_run`` of its list under
        its keys (exact str, bound as one tuple: the run's, or ``keys``' own)."""
        pairs: list[tuple[Any, str]] = []
        seg: list[Any] = []
        j = 0
        while j < len(keys):
            run = runs.get(j)
            if run is None:
                pairs.append((keys[j], values[j]))
                seg.append(keys[j])
                j += 1
                continue
            if pairs:
                self.steps.append(one(pairs, seg))
                pairs, seg = [], []
            end, lst, run_keys = run
            if run_keys is None:
                run_keys = tuple(k.value if type(k) is Literal else k for k in keys[j:end])
            self.steps.append(Step("fill_run", obj=obj, keys=self.consts.bind(run_keys, "KS"), src=lst))
            j = end
        if pairs:
            self.steps.append(one(pairs, seg))

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
        read = self.reads.at(base, *at)
        if id(edge) in self.shapes.cshape_of and edge is not self.body.container:
            return self._container_value(edge, read)
        looped = self._mixed(edge, read) if self.shapes.cshape_of else None
        if looped is not None:
            return looped
        looped = self._links(edge, read) if self._top and self.cchains else None
        if looped is None:
            looped = self._each(edge)
        if looped is not None:
            return looped
        # Frames: [edge, its read, position of the next child, child locals so far].
        stack: list[list[Any]] = [[edge, read, 0, []]]
        while True:
            fr = stack[-1]
            e, read, pos, parts = fr
            kids = e.children
            while pos < len(kids):
                child = kids[pos]
                pos += 1
                made = self._state_run_at(child)
                if made is not None:  # a run of sibling states: spliced from its loop's list
                    parts.append(Splice(made[1], "o"))
                    pos += made[0].n - 1
                    continue
                if type(child) is PytreeEdge:
                    if child is self._rec_edge:  # a container chain's next link: the loop's
                        parts.append(self._rec_local)
                        continue
                    if id(child) in self.shapes.cshape_of:
                        parts.append(self._container_value(child, self.reads.at(read, "children", pos - 1)))
                        continue
                    looped = self._mixed(child, self.reads.at(read, "children", pos - 1)) \
                        if self.shapes.cshape_of else None
                    if looped is not None:
                        parts.append(looped)
                        continue
                    if self._top and id(child) in self.cchains:
                        looped = self._links(child, self.reads.at(read, "children", pos - 1))
                    if looped is None:
                        looped = self._each(child)
                    if looped is not None:
                        parts.append(looped)
                        continue
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
        if k is NodeEdge:
            return self._node_value(edge.index)
        if k is StateEdge:
            return self._obj(edge.index)
        name = self._slot(edge.slot)  # ArrayEdge
        self.body.arrays.append(name)
        return name

    # -- containers of an outlined shape (shapes.find_container_shapes) ----------------------

    def _container_fn(self, sid: int) -> ShapeBuild:
        """The builder of container shape ``sid``, planned from its first occurrence on first
        use: its entries made (states, nodes not outlined: in table order, then filled), then
        the container built. It takes ``vals, at`` when the shape has values (a loop calls
        builders of several shapes alike: each has, see :meth:`_mixed`; one holding only nodes
        without states, ``[Box(), Box()]``, has none, and no position) and always ``S``; its
        own statics are read below the occurrence's edge (LINK)."""
        fn = self._cfns.get(sid)
        if fn is not None:
            return fn
        shape = self.shapes.shapes[sid]
        edge = shape.edge
        lo, n, first, m = self.shapes.csize[id(edge)]
        body = _Body(StaticReads(first), [(lo, n, "at")], {}, container=edge)
        with self._in(body):
            self._objects_then_fills([(first, first + m)], -1)
            root = self._value(edge, self.reads.at(LINK), ())
        steps = []
        if body.statics:
            steps.append(Step("unpack_statics", dsts=body.statics))
        steps += self._take(body)
        fn = ShapeBuild(name=f"outlined{sid}", type_name=safe_name(shape.type_name), steps=steps + body.steps,
                        root=root, values=n > 0, statics=True,
                        contexts=[body.contexts[f] for f in body.params], uses=len(shape.occurrences),
                        where=[])
        self._fn_reads[sid] = body.reads
        self._fn_params[sid] = body.params
        self._cfns[sid] = fn
        self.shape_fns.append(fn)
        return fn

    def _container_value(self, edge: PytreeEdge, read: int) -> str:
        """An occurrence of a container shape (the object of ``read``): its builder's call."""
        sid = self.shapes.cshape_of[id(edge)]
        fn = self._container_fn(sid)
        lo, _, first, _ = self.shapes.csize[id(edge)]
        statics = self._static_local()
        self.reads.want_container(self._fn_reads[sid], read, first)
        ctxs = [self._context(f) for f in self._fn_params[sid]]
        dst = self._fresh("o_")
        self.steps.append(Step("call_build", dst=dst, fn=fn.name, at=self._pos(lo) if fn.values else None,
                               statics=statics, contexts=ctxs))
        if len(fn.where) < 3:
            fn.where.append(self._site_label())
        return dst

    def _mixed(self, edge: PytreeEdge, read: int) -> str | None:
        """A list or tuple of at least ``outline_min`` occurrences of container shapes (the
        object of ``read``), at consecutive slots: one loop calling item ``i``'s builder
        ``fns[idx[i]]`` with its position and its statics (``None``: not one). Builders
        taking no per-call context only."""
        ptype, kids = edge.ptype, edge.children
        cshape_of, csize = self.shapes.cshape_of, self.shapes.csize
        if (ptype is not list and ptype is not tuple and (ptype is not dict or edge.sig is not None)) \
                or len(kids) < max(2, self._outline) or self.phased:
            return None
        slot = -1
        order: dict[int, int] = {}
        idx: list[int] = []
        for c in kids:
            sid = cshape_of.get(id(c))
            if sid is None or type(c) is not PytreeEdge:
                return None
            lo, n, _, _ = csize[id(c)]
            if not n or (slot >= 0 and lo != slot):
                return None
            slot = lo + n
            idx.append(order.setdefault(sid, len(order)))
        fns = [self._container_fn(sid) for sid in order]
        if any(self._fn_params[sid] for sid in order):
            return None
        first_lo = csize[id(kids[0])][0]
        mine = self._static_local()
        self.reads.want_containers([self._fn_reads[cshape_of[id(c)]] for c in kids],
                                   [self.reads.at(read, "children", j) for j in range(len(kids))],
                                   [csize[id(c)][2] for c in kids])
        dst = self._fresh("r")
        self.steps.append(Step("build_mixed", dst=dst, at=self._pos(first_lo), statics=mine,
                               fns=[f.name for f in fns], idx=self.consts.bind(tuple(idx), "IX"),
                               ns=[self.shapes.shapes[sid].nslots for sid in order], var=self._fresh("x"),
                               tuple=ptype is tuple,
                               # (a dict of str keys: its keys bound as one tuple, in the IR's order)
                               keys=self.consts.bind(edge.keys, "KS") if ptype is dict else ""))
        for f in fns:
            if len(f.where) < 3:
                f.where.append(self._site_label())
        site = self._site_label()
        self.loops.append(f"{site}[0..{len(kids) - 1}]: {len(kids)} items of "
                          + (f"{len(order)} shapes" if len(order) > 1 else "one shape"))
        return dst

    # -- loops: a list of one outlined shape, a chain of nested links -----------------------

    def _each(self, edge: PytreeEdge) -> str | None:
        """A list or tuple of occurrences of one outlined shape, one after the other in the
        table and in the values: a loop whose body builds one item (``None``: not one)."""
        if self.phased:
            return self._phased_roots(edge)
        ptype = edge.ptype
        kids = edge.children
        if not self.shapes.shape_of or (ptype is not list and ptype is not tuple) or len(kids) < 2 \
                or self._run_length(kids, 0) != len(kids):
            return None
        return self._loop(kids, ptype is tuple, None)

    def _run_length(self, kids: tuple, start: int) -> int:
        """How many of ``kids`` from ``start`` on are occurrences of one outlined shape, one
        after the other in the table and in the values (0: the first is none)."""
        shape_of = self.shapes.shape_of
        c = kids[start]
        if type(c) is not NodeEdge:
            return 0
        rep = c.index
        sid = shape_of.get(rep)
        if sid is None:
            return 0
        shape = self.shapes.shapes[sid]
        m, k = shape.nindices, shape.nslots
        slot_lo = self.shapes.slot_lo
        lo = slot_lo[rep]
        n = 1
        for c in kids[start + 1:]:
            if type(c) is not NodeEdge or c.index != rep + n * m or shape_of.get(c.index) != sid \
                    or (k and slot_lo[c.index] != lo + n * k):
                break
            n += 1
        return n

    def _loop_feeds(self, body: _Body, item_steps: list[Step], kids: tuple, counter: str,
                    pos: tuple[str, int], lo: int, k: int) -> tuple[list[Step], list[str], list[str],
                                                                    list[tuple[str, tuple[str, int], int]],
                                                                    list[Step], str | None]:
        """What a loop over ``kids`` (items planned as ``body``) feeds each turn: its values k
        at a time (or a counter where an outlined call in the item takes positions) and its
        statics read per item. Returns the setup steps, sources, targets, counters, the item's
        steps and the statics local (``None``: no statics)."""
        n = len(kids)
        setup: list[Step] = []
        sources: list[str] = []
        targets: list[str] = []
        counters: list[tuple[str, tuple[str, int], int]] = []
        if body.consumers:  # an outlined call or loop in the item: positions from a counter
            counters.append((counter, pos, k))
            item_steps = self._take(body) + item_steps
        elif body.direct:  # the item's values, k at a time
            it = self._fresh("q")
            setup.append(Step("iter_values", dst=it, start=pos, stop=(pos[0], pos[1] + n * k), reverse=False))
            sources += [it] * k
            targets += [body.direct[s] for s in range(lo, lo + k)]
        mine = None
        if body.statics:
            mine = self._static_local()
            self.reads.want_each(body.reads, [c.index for c in kids])
            it = self._fresh("q")
            setup.append(Step("iter_statics", dst=it, src=mine))
            sources += [it] * len(body.statics)
            targets += body.statics
        return setup, sources, targets, counters, item_steps, mine

    def _loop(self, kids: tuple, as_tuple: bool, last: str | None) -> str:
        """The loop building ``kids`` (a run of :meth:`_run_length`), into a list (a tuple:
        ``as_tuple``). Explain names it by its site and ``..last`` (``None``: ``[0..n-1]``)."""
        shape_of = self.shapes.shape_of
        rep = kids[0].index
        sid = shape_of[rep]
        shape = self.shapes.shapes[sid]
        m, k = shape.nindices, shape.nslots
        lo = self.shapes.slot_lo[rep]
        site = self._site_label()
        pos = self._pos(lo) if k else ("", 0)
        counter = self._fresh("a")
        body = _Body(StaticReads(rep), [(lo, k, counter)], {}, scope=self.body.scope or self.body)
        with self._in(body):
            self._objects_then_fills([(rep, rep + m)], rep)
        n = len(kids)
        setup, sources, targets, counters, item_steps, _ = self._loop_feeds(
            body, body.steps, kids, counter, pos, lo, k)
        dst = self._fresh("r")
        self.steps.extend(setup)
        self.steps.append(Step("build_each", dst=dst, n=n, targets=targets, sources=sources,
                               counters=counters,
                               body=item_steps, item=f"o{rep}", tuple=as_tuple))
        span = f"[0..{n - 1}]" if last is None else ".." + last
        self.loops.append(f"{site}{span}: {n} x {shape.type_name}")
        return dst

    def _chain(self, ch: Chain) -> None:
        """The head of a chain of nested links of one shape (its object already made): one
        loop that makes the other links, then fills each (its body planned from the head)."""
        table = self.gd.table
        first, last = ch.links[0], ch.links[-1]
        n = ch.n
        head = first.ebefore[0]
        t = table[head].type
        (lb, nb), (la, na) = first.before, first.after
        (eb, neb), (ea, nea) = first.ebefore, first.eafter
        tail = self._node_value(ch.tail)
        cur, nxt = self._fresh("x"), self._fresh("x")
        cb, ca = self._fresh("a"), self._fresh("a")
        body = _Body(StaticReads(head), [(lb, nb, cb), (la, na, ca)], {head: cur, first.nxt: nxt},
                     scope=self.body.scope or self.body)
        with self._in(body):
            dn = self.impls[head].dict_node
            if dn is not None:  # each link's bookkeeping (NNX), from its own metadata, first
                self._bookkeeping(cast(NodeSpec, table[head]), dn, cur)
            self._objects_then_fills([(eb, eb + neb), (ea, ea + nea)], head)
        setup: list[Step] = []
        sources: list[str] = []
        targets: list[str] = []
        counters: list[tuple[str, tuple[str, int], int]] = []
        link_steps = body.steps
        if body.consumers:  # an outlined call or loop in the link: positions from counters
            counters += [(cb, ("", lb), nb), (ca, ("", la), -na)]
            link_steps = self._take(body) + link_steps
        else:
            if nb:
                it = self._fresh("q")
                setup.append(Step("iter_values", dst=it, start=("", lb), stop=("", lb + n * nb),
                                  reverse=False))
                sources += [it] * nb
                targets += [body.direct[s] for s in range(lb, lb + nb)]
            if na:  # the links' values after the rest of the chain: last link first
                it = self._fresh("q")
                start = last.after[0]
                setup.append(Step("iter_values", dst=it, start=("", start), stop=("", start + n * na),
                                  reverse=True))
                sources += [it] * na
                targets += [body.direct[s] for s in reversed(range(la, la + na))]
        if body.statics:
            mine = self._static_local()
            self.reads.want_chain(body.reads, n, neb, ea, nea)
            it = self._fresh("q")
            setup.append(Step("iter_statics", dst=it, src=mine))
            sources += [it] * len(body.statics)
            targets += body.statics
        self.steps.extend(setup)
        self.steps.append(Step("build_chain", links=self._fresh("r"), head=self._obj(head),
                               cls=self.consts.bind(t, "T"), tail=tail, n=n, cur=cur, nxt=nxt,
                               targets=targets,
                               sources=sources, counters=counters, body=link_steps))
        self.loops.append(f"{n} nested links of one shape ({safe_name(t.__qualname__)}), "
                          f"from {self._obj(head)}")

    def _links(self, edge: PytreeEdge, read: int) -> str | None:
        """A chain of nested containers from ``edge`` (its ``read``): one loop building the
        links innermost first, each from its own values and statics (read per link from the
        GraphDef) and the link inside it (``None``: no chain starts here)."""
        ch = self.cchains.get(id(edge))
        if ch is None:
            return None
        first, last = ch.links[0], ch.links[-1]
        n, rec = ch.n, first.rec
        (lb, nb), (la, na) = first.before, first.after
        (eb, neb), (ea, nea) = first.ebefore, first.eafter
        tail_edge = ch.tail_edge
        if type(tail_edge) is PytreeEdge and not tail_edge.children \
                and tail_edge.ptype in (list, tuple, dict):
            tail = self._build(tail_edge, -1, [])  # (empty: nothing of it to read)
        else:
            tail = self._value(tail_edge, read, ("children", rec) * n)
        prev = self._fresh("x")
        cb, ca = self._fresh("a"), self._fresh("a")
        body = _Body(StaticReads(eb), [(lb, nb, cb), (la, na, ca)], {}, scope=self.body.scope or self.body)
        saved = self._rec_edge, self._rec_local
        self._rec_edge, self._rec_local = ch.rec_edges[0], prev
        try:
            with self._in(body):
                self._objects_then_fills([(eb, eb + neb), (ea, ea + nea)], -1)
                item = self._value(edge, LINK, ())
        finally:
            self._rec_edge, self._rec_local = saved
        setup: list[Step] = []
        sources: list[str] = []
        targets: list[str] = []
        counters: list[tuple[str, tuple[str, int], int]] = []
        link_steps = body.steps
        if body.consumers:  # an outlined call or loop in the link: positions from counters
            counters += [(cb, ("", lb + (n - 1) * nb), -nb), (ca, ("", last.after[0]), na)]
            link_steps = self._take(body) + link_steps
        else:
            if nb:  # the links' values before the rest of the chain: innermost link first
                it = self._fresh("q")
                setup.append(Step("iter_values", dst=it, start=("", lb), stop=("", lb + n * nb),
                                  reverse=True))
                sources += [it] * nb
                targets += [body.direct[s] for s in reversed(range(lb, lb + nb))]
            if na:
                it = self._fresh("q")
                start = last.after[0]
                setup.append(Step("iter_values", dst=it, start=("", start), stop=("", start + n * na),
                                  reverse=False))
                sources += [it] * na
                targets += [body.direct[s] for s in range(la, la + na)]
        if body.statics:
            mine = self._static_local()
            self.reads.want_links(body.reads, read, n, rec, neb, ea if nea else -1, nea)
            it = self._fresh("q")
            setup.append(Step("iter_statics", dst=it, src=mine))
            sources += [it] * len(body.statics)
            targets += body.statics
        self.steps.extend(setup)
        self.steps.append(Step("build_cchain", tail=tail, n=n, prev=prev, item=item, targets=targets,
                               sources=sources, counters=counters, body=link_steps))
        self.loops.append(f"{self._site_label()}: {n} nested {edge.ptype.__name__}s of one shape")
        return prev

    def _build(self, edge: PytreeEdge, read: int, items: list[Any]) -> str:
        """The container of ``edge`` from its items' locals (a :class:`Splice`: the list of a
        run of sibling states, its items in place)."""
        ptype = edge.ptype
        self._counter += 1
        dst = f"c{self._counter}"
        if ptype is list:
            self.steps.append(Step("build_list", dst=dst, items=items))
        elif ptype is tuple:
            self.steps.append(Step("build_tuple", dst=dst, items=items))
        elif ptype is dict:
            pairs: list[tuple[Any, Any]] = []
            j = 0
            for x in items:
                if type(x) is Splice:  # a run: its keys (exact str/int) bound as one tuple
                    run = self._state_runs[edge.children[j].index]
                    pairs.append((self.consts.bind(run.keys, "KS"), x))
                    j += run.n
                else:
                    pairs.append((self._key(edge.keys[j], read, "keys", j), x))
                    j += 1
            self.steps.append(Step("build_dict", dst=dst, pairs=pairs))
        else:
            treedef = self._own(self.reads.at(read, "ptype"))
            self.steps.append(Step("build_pytree", dst=dst, treedef=treedef, items=items))
        return dst

    # -- two phases: structures with callback node types ------------------------------------

    def _find_runs(self) -> None:
        """The lists and tuples whose items are occurrences of one outlined shape, one after
        the other in the table and in the values (what :meth:`_each` loops over): by the
        table index of their first item."""
        if not self.shapes.shape_of:
            return
        stack: list[Any] = [c for spec in self.gd.table if type(spec) is NodeSpec
                            for c in spec.children if type(c) is PytreeEdge]
        stack.append(self.gd.root)
        while stack:
            e = stack.pop()
            if type(e) is not PytreeEdge:
                continue
            kids = e.children
            if (e.ptype is list or e.ptype is tuple) and len(kids) >= 2 \
                    and self._run_length(kids, 0) == len(kids):
                self._run_at[kids[0].index] = e
                continue
            stack.extend(kids)

    def _phased_objects_then_fills(self, ranges: list[tuple[int, int]], root: int,
                                   marks: list[tuple[int, int, int]] | None = None) -> tuple[list[str], int]:
        """Where user code runs in the build (``create_empty``, ``set_key`` of callback node
        types), in the reference's order exactly: first every object of the entries in
        ``ranges`` in table order, then every node filled in table order. An occurrence of an
        outlined shape (but ``root``) is a contiguous range of the table (its subtree:
        self-contained, in pre-order), so its shape's ``_create`` function, called at its
        place among the objects, makes its objects in table order and returns them (with
        what its own outlined calls made), and its ``_fill`` function, called at its place
        among the fills, fills its nodes in table order. A list of occurrences (consecutive
        in the table) is a loop making each in turn, then a loop filling each in turn.

        Returns the locals the objects phase made (the ``root`` entry's first, when it is
        one) and where the fills begin in the current body's steps; ``marks`` gets, per
        range but the first, where its objects begin (in the steps, and in what was made)
        and where its fills begin (in the steps).
        At the top, a chain of nested links is loops (:meth:`_phased_chain`)."""
        table = self.gd.table
        shape_of, shapes = self.shapes.shape_of, self.shapes.shapes
        chains = self.chains if self._top else {}
        names = self.body.names
        skip = self._cchain_entries()
        # a cb chain's entries after the rest: where they end, what makes them (and returns
        # what fills them, None: nothing)
        after: dict[int, tuple[int, Callable[[], tuple[Any, ...] | None]]] = {}
        made: list[str] = []
        fills: list[tuple[Any, ...]] = []
        ranges_at: list[tuple[int, int, int]] = []  # per range but the first: steps, made, fills
        for r, (lo, hi) in enumerate(ranges):
            if r:
                ranges_at.append((len(self.steps), len(made), len(fills)))
            i = lo
            while i < hi:
                j = skip.get(i)
                if j is not None:
                    i = j
                    continue
                got = after.pop(i, None)
                if got is not None:
                    fill_after = got[1]()
                    if fill_after is not None:
                        fills.append(fill_after)
                    i = got[0]
                    continue
                ch = chains.get(i)
                if ch is not None and i in self._cb_chains:  # (links calling user code: own loops)
                    fill, past, make_after = self._phased_chain(ch)
                    fills.append(fill)
                    if make_after is not None:
                        after[past[0]] = (past[1], make_after)
                    i += ch.n * ch.links[0].ebefore[1]
                    self._check_size()
                    continue
                if i != root and i in shape_of:
                    m = shapes[shape_of[i]].nindices
                    run = self._run_at.get(i)
                    if run is not None:
                        fills.append(self._phased_create_run(run, made))
                        i += len(run.children) * m
                    else:
                        fills.append(self._phased_create_one(i, made))
                        i += m
                    self._check_size()
                    continue
                spec = table[i]
                if type(spec) is NodeSpec:
                    ch = chains.get(i)
                    if i not in names:
                        self._new_node(spec, bookkeeping=ch is None)  # (a chain's loop makes its links')
                        made.append(self._obj(i))
                    fills.append(("node", spec))
                    if ch is not None:  # (its links' entries: made by its loop, when filled)
                        first, last = ch.links[0], ch.links[-1]
                        if last.eafter[1]:
                            skip[last.eafter[0]] = last.eafter[0] + ch.n * first.eafter[1]
                        i += ch.n * first.ebefore[1]
                        continue
                elif self._top and i in self._state_runs:  # a run of sibling states: one loop
                    made.append(self._new_state_run(self._state_runs[i], i))
                    i += self._state_runs[i].n
                    self._check_size()
                    continue
                else:
                    self._new_state(spec)
                    made.append(self._obj(i))
                i += 1
                self._check_size()
        split = len(self.steps)
        fill_at: list[int] = []  # where each fill's steps begin
        for f in fills:
            fill_at.append(len(self.steps))
            if f[0] == "node":
                ch = chains.get(f[1].index)
                if ch is not None:
                    self._chain(ch)
                else:
                    self._fill_node(f[1])
            elif f[0] == "chain":  # (a cb chain's fill loop: _phased_chain)
                f[1]()
            elif f[0] == "one":
                _, fn, handle, statics = f
                self.steps.append(Step("call_fill", fn=fn, src=handle, statics=statics))
            else:
                _, dst, item_made, n, fill_steps, mine, targets = f
                sources: list[str] = []
                if mine is not None:
                    it = self._fresh("q")
                    self.steps.append(Step("iter_statics", dst=it, src=mine))
                    sources = [it] * len(targets)
                self.steps.append(Step("fill_each", src=dst, made=item_made, n=n, targets=targets,
                                       sources=sources, body=fill_steps))
            self._check_size()
        fill_at.append(len(self.steps))
        if marks is not None:
            marks += [(at, m, fill_at[k]) for at, m, k in ranges_at]
        return made, split

    def _phased_chains_only(self) -> None:
        """The chains whose loops keep every user call seeing what the reference's order
        shows it. A chain's loop makes its links and their entries when its head is filled
        (made objects are seen by no one until filled into a node: builtin and adapter code
        only, no link holds a callback node) and fills link by link, each with the nodes of
        its entries: as the reference for the entries before the next link; a link's nodes
        after it are filled before the chain's tail (the reference: after), so a chain with
        such nodes is looped only where no callback node sits in its tail (then no user code
        runs between the two orders' fills); where one does, the chain is looped in two
        phases (:meth:`_phased_chain`, the reference's order). A container chain's loop
        fills innermost first where it is used: looped only when its links hold states
        alone (nothing to fill)."""
        table, impls = self.gd.table, self.impls

        def nodes(lo: int, n: int) -> bool:
            return any(type(table[j]) is NodeSpec for j in range(lo, lo + n))

        def user(lo: int, hi: int) -> bool:
            return any(type(table[j]) is NodeSpec and not impls[j].is_builtin_node
                       and impls[j].dict_node is None for j in range(lo, hi))

        for head, ch in list(self.chains.items()):
            if head in self._cb_chains:  # (their own loops: _phased_chain)
                continue
            last = ch.links[-1]
            if nodes(*last.eafter) and user(last.ebefore[0] + last.ebefore[1], last.eafter[0]):
                self._cb_chains.add(head)
        for key, cc in list(self.cchains.items()):
            if any(nodes(*ln.ebefore) or nodes(*ln.eafter) for ln in cc.links):
                del self.cchains[key]

    def _phased_chain(self, ch: Chain) -> tuple[tuple[Any, ...], tuple[int, int],
                                                Callable[[], tuple[Any, ...] | None] | None]:
        """A chain of nested links of one shape (callback node types among them, or in what
        the reference fills between the links and the nodes after the rest of the chain), in
        the reference's order: here (the head's place in the table) one loop making each
        link's object and the entries before the rest of the chain, link by link; where the
        entries after the rest begin (past the tail's, last link first) one loop making
        those; at the head's place among the fills one loop filling each link (its node,
        then the nodes before the next link), and past the tail's fills one loop filling
        the nodes after the rest (last link first: table order). One body planned from the
        head link.

        Returns what the fills phase does for it, where the entries after the rest sit
        (first, past) and what makes them there (``None``: none), which returns what fills
        them (``None``: states only)."""
        first, last = ch.links[0], ch.links[-1]
        n = ch.n
        head = first.ebefore[0]
        (lb, nb), (la, na) = first.before, first.after
        (eb, neb), (ea, nea) = first.ebefore, first.eafter
        nxt = self._fresh("x")
        cb, ca = self._fresh("a"), self._fresh("a")
        body = _Body(StaticReads(head), [(lb, nb, cb), (la, na, ca)], {first.nxt: nxt},
                     scope=self.body.scope or self.body)
        marks: list[tuple[int, int, int]] = []
        with self._in(body):
            made, split = self._phased_objects_then_fills([(eb, eb + neb), (ea, ea + nea)], head, marks)
        steps_b, n_b, fill_a_at = marks[0]
        create_b, create_a = body.steps[:steps_b], body.steps[steps_b:split]
        fill, fill_a = body.steps[split:fill_a_at], body.steps[fill_a_at:]
        made_b, made_a = made[:n_b], made[n_b:]
        counters_b: list[tuple[str, tuple[str, int], int]] = []
        counters_a: list[tuple[str, tuple[str, int], int]] = []
        if body.consumers:  # an outlined call or loop in a link: positions from counters
            take = self._take(body)
            create_b = [st for st in take if st.base == cb] + create_b
            create_a = [st for st in take if st.base == ca] + create_a
            counters_b.append((cb, ("", lb), nb))
            counters_a.append((ca, ("", last.after[0]), na))  # (last link first)
        statics = list(body.statics)
        mine = None
        if statics:
            mine = self._static_local()
            self.reads.want_chain(body.reads, n, neb, ea, nea)
        # The links' objects and the entries before the rest, link by link.
        sources: list[str] = []
        targets: list[str] = []
        if nb and not counters_b:
            it = self._fresh("q")
            self.steps.append(Step("iter_values", dst=it, start=("", lb), stop=("", lb + n * nb),
                                   reverse=False))
            sources += [it] * nb
            targets += [body.direct[s] for s in range(lb, lb + nb)]
        if mine is not None:
            it = self._fresh("q")
            self.steps.append(Step("iter_statics", dst=it, src=mine))
            sources += [it] * len(statics)
            targets += statics
        links_b = self._fresh("r")
        self.steps.append(Step("create_each", dst=links_b, n=n, targets=targets, sources=sources,
                               counters=counters_b, body=create_b, made=made_b))
        head_obj = self._fresh("o_")
        self.steps.append(Step("chain_head", dst=head_obj, src=links_b))
        self.body.names[head] = head_obj
        links_a = self._fresh("r") if nea else None

        def make_after() -> tuple[Any, ...] | None:
            """The entries after the rest of the chain: the last link's first (table order).
            Returns what fills their nodes (``None``: none)."""
            sources: list[str] = []
            targets: list[str] = []
            if na and not counters_a:
                it = self._fresh("q")
                start = last.after[0]
                self.steps.append(Step("iter_values", dst=it, start=("", start), stop=("", start + n * na),
                                       reverse=False))
                sources += [it] * na
                targets += [body.direct[s] for s in range(la, la + na)]
            if mine is not None:  # (each link's statics, last link first: the tuple reversed)
                it = self._fresh("q")
                self.steps.append(Step("iter_statics_back", dst=it, src=mine))
                sources += [it] * len(statics)
                targets += statics[::-1]
            self.steps.append(Step("create_each", dst=links_a, n=n, targets=targets, sources=sources,
                                   counters=counters_a, body=create_a, made=made_a))
            return ("chain", fill_after) if fill_a else None

        def fill_after() -> None:
            """The nodes after the rest of the chain, past the tail's: the last link's first
            (as create_each made them), each link's statics (the tuple reversed)."""
            sources: list[str] = []
            if mine is not None:
                it = self._fresh("q")
                self.steps.append(Step("iter_statics_back", dst=it, src=mine))
                sources = [it] * len(statics)
            self.steps.append(Step("fill_each", src=links_a, made=made_a, n=n, targets=statics[::-1],
                                   sources=sources, body=fill_a))

        def fill_links() -> None:
            sources: list[str] = []
            if mine is not None:
                it = self._fresh("q")
                self.steps.append(Step("iter_statics", dst=it, src=mine))
                sources = [it] * len(statics)
            self.steps.append(Step("fill_chain", src=links_b, dst_after=links_a, made=made_b,
                                   objs_after=made_a, links=self._fresh("r"), tail=self._node_value(ch.tail),
                                   nxt=nxt, n=n, targets=statics, sources=sources, body=fill))

        type_name = safe_name(self.gd.table[head].type.__qualname__)
        self.loops.append(f"{n} nested links of one shape ({type_name}), made, then filled, "
                          "each in table order")
        past = (last.eafter[0], last.eafter[0] + n * nea)
        return ("chain", fill_links), past, (make_after if nea else None)

    def _phased_create_one(self, index: int, made: list[str]) -> tuple[Any, ...]:
        """The call making the objects of the occurrence at ``index`` (its root's local is
        where its parent's fill finds it); what the fills phase calls for it."""
        sid = self.shapes.shape_of[index]
        fn = self._phased_fn(sid)
        at = self._pos(self.shapes.slot_lo[index]) if fn.values else None
        statics = None
        if fn.statics:
            statics = self._static_local()
            self.reads.want_one(self._fn_reads[sid], index)
        ctxs = [self._context(f) for f in self._fn_params[sid]]
        handle, root = self._fresh("t"), self._fresh("o_")
        self.steps.append(Step("call_create", dst=handle, root=root, fn=fn.name, at=at, statics=statics,
                               contexts=ctxs))
        self.body.names[index] = root
        made += [handle, root]
        if len(fn.where) < 3:
            fn.where.append(self._label_of(index))
        return ("one", fn.name, handle, statics)

    def _phased_fn(self, sid: int) -> ShapeBuild:
        """The two functions of shape ``sid`` (see :meth:`_phased_objects_then_fills`),
        planned from its first occurrence on first use."""
        fn = self._fns.get(sid)
        if fn is not None:
            return fn
        shape = self.shapes.shapes[sid]
        rep = shape.rep
        lo = self.shapes.slot_lo[rep]
        body = _Body(StaticReads(rep), [(lo, shape.nslots, "at")], {})
        with self._in(body):
            made, split = self._phased_objects_then_fills([(rep, rep + shape.nindices)], rep)
        made += _kept_arrays(body, made)
        head = [Step("unpack_statics", dsts=body.statics)] if body.statics else []
        fn = ShapeBuild(name=f"outlined{sid}", type_name=safe_name(shape.type_name),
                        steps=head + self._take(body) + body.steps[:split], root=made[0],
                        values=shape.nslots > 0, statics=bool(body.statics),
                        contexts=[body.contexts[f] for f in body.params], uses=len(shape.occurrences),
                        where=[], fill=list(head) + body.steps[split:], made=made)
        self._fn_reads[sid] = body.reads
        self._fn_params[sid] = body.params
        self._fns[sid] = fn
        self.shape_fns.append(fn)
        return fn

    def _phased_create_run(self, edge: PytreeEdge, made: list[str]) -> tuple[Any, ...]:
        """The loop making the objects of a list's items (each a :meth:`_run_length` run's
        occurrence), item by item, each's in table order, into a list of their locals; what
        the fills phase loops over for it (its body planned from the first item)."""
        kids = edge.children
        rep = kids[0].index
        shape = self.shapes.shapes[self.shapes.shape_of[rep]]
        k = shape.nslots
        lo = self.shapes.slot_lo[rep]
        pos = self._pos(lo) if k else ("", 0)
        counter = self._fresh("a")
        body = _Body(StaticReads(rep), [(lo, k, counter)], {}, scope=self.body.scope or self.body)
        with self._in(body):
            item_made, split = self._phased_objects_then_fills([(rep, rep + shape.nindices)], rep)
        item_made += _kept_arrays(body, item_made)
        n = len(kids)
        setup, sources, targets, counters, create, mine = self._loop_feeds(
            body, body.steps[:split], kids, counter, pos, lo, k)
        dst = self._fresh("r")
        self.steps.extend(setup)
        self.steps.append(Step("create_each", dst=dst, n=n, targets=targets, sources=sources,
                               counters=counters, body=create, made=item_made))
        self._run_made[id(edge)] = dst
        made.append(dst)
        self.loops.append(f"{self._label_of(edge)}[0..{n - 1}]: {n} x {safe_name(shape.type_name)} "
                          "(made, then filled, each in table order)")
        return ("run", dst, item_made, n, body.steps[split:], mine, list(body.statics))

    def _phased_roots(self, edge: PytreeEdge) -> str | None:
        """The value of a list made by :meth:`_phased_create_run`: its items' roots (``None``:
        ``edge`` is no such list)."""
        src = self._run_made.get(id(edge))
        if src is None:
            return None
        dst = self._fresh("c")
        self.steps.append(Step("made_roots", dst=dst, src=src, tuple=edge.ptype is tuple))
        return dst
