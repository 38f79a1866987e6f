"""The flatten planner: the guards and loads that prove an object has one structure.

It walks a ``GraphDef`` in the reference walker's pre-order and emits steps (load a
child, guard its type, read a value, ...): one method per edge kind. The same plan
renders the flatten, the update (its guards, then writes) and the collect function
(objects by index and values by slot).
"""

from __future__ import annotations

import contextlib
import copy
from collections import Counter
from collections.abc import Callable, Iterator
from operator import itemgetter
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
    StateSpec,
    StaticEdge,
    treedef_type,
)
from .._sameness import VALUE_TYPES, aux_data, is_value_sig, may_be_nan
from .._weakstatic import WeakStatic
from .callback_plan import CallbackPlanning
from .classfacts import ClassFacts, defines, flatten_runs_no_user_code
from .foreign_plan import ForeignPlanning
from .naming import Constants, Item, Literal, Operand, Splice, StateValue, path_label, safe_name, static_note
from .ops import GUARD_KINDS, Step
from .planning import Declined, FlattenPlan, RunEdge, ShapeFn, StateRun, Work
from .shapes import (
    Chain,
    Shape,
    _meta_key,
    edge_refs,
    find_chains,
    find_container_chains,
    find_container_shapes,
    find_shapes,
)

_spec_type = itemgetter(1)  # a table entry's class (NodeSpec.type, StateSpec.type)

__all__ = ["Declined", "FlattenPlan", "FlattenPlanner", "StateRun", "plan_flatten", "witnessed_nodes"]


class ChainAfter(NamedTuple):
    """A split chain's second loop (a ``chain_after`` step: see
    :meth:`FlattenPlanner._split_chain`), as a work item's edge pushed under its tail's: the
    step is emitted where it is popped, past the tail's whole subtree."""

    step: Step


def _operand_local(obj: Operand) -> str:
    """The local an operand is read from (an item read in place: its container's)."""
    return obj.obj if type(obj) is Item else obj  # type: ignore[return-value]


def plan_flatten(gd: GraphDef, max_steps: int, outline_min: int = 0) -> FlattenPlan:
    """Steps that check an object has structure ``gd`` and read its values; a shape of
    subtree occurring ``outline_min`` times or more gets its own function (0: none)."""
    return FlattenPlanner(gd, max_steps, outline_min).plan()


class FlattenPlanner(ForeignPlanning, CallbackPlanning):
    """Plans one structure; :meth:`plan` visits every edge once, in pre-order."""

    def __init__(self, gd: GraphDef, max_steps: int, outline_min: int = 0) -> None:
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
        self.token_step: Step | None = None  # the update makes it first (outlined code is passed it)
        # Once per call, whoever asks first (an outlined function too): in the top function.
        self.pre_steps: list[Step] = []  # before the guards (after the class guards)
        self.pre_checks: list[Step] = []  # the update's, before its per-object checks
        # the update's unchanged-array checks of the body last planned (_occurrence_checks),
        # and per outlined function, its kept locals and those checks (slots relative)
        self._unchanged: list[Step] = []
        self._unchanged_of: dict[str, tuple[list[str] | None, list[Step]]] = {}
        self._raw_ready: set[Any] = set()  # dict state layouts whose per-call check is emitted
        self._hash_by_id: dict[int, bool] = {}  # id(class) -> its objects go in the set by id()
        self._setters: dict[str, Any] = {}  # callback node local -> its bound set_key (CallbackPlanning)
        # Reads cannot run user code: a node read twice gives the same children twice, so
        # its own states can vouch for it (see witnessed_nodes), and statics and values
        # are read in place. (Checked at compile time only: a hook added to a class later
        # runs user code mid-call, and user code that rewires the graph mid-call is not
        # supported.)
        self.no_user_code = flatten_runs_no_user_code(gd)
        self.witnessed = witnessed_nodes(gd.table, edge_refs(gd)) if self.no_user_code else set()
        # Only objects of a type that occurs more than once can be one object at two
        # places: the exact type guards keep every other pair apart.
        self.shared_types = {t for t, n in Counter(map(_spec_type, gd.table)).items() if n > 1}
        # nearest: operand -> table index of the node whose attribute holds it (past every
        # node for a root pytree), so array writes follow the reference update's order:
        # node by node in table order, the root pytree last (it matters when one list is
        # reachable twice).
        self.nearest: dict[Operand, int] = {"root": len(gd.table)}
        # Repeated self-contained subtrees: one function per shape (see shapes.py).
        # (With user code (a callback node type's flatten, a property) no node is witnessed
        # and values are read in order: an outlined function reads its occurrence exactly as
        # the unrolled code would, so outlining does not depend on it.)
        self.shapes = find_shapes(gd, outline_min, self.witnessed,
                                  self.shared_types, foreign=True, flatten_only=True, params=True)
        # Planning a body whose statics are parameters (an outlined function or a loop's
        # item of a shape with Shape.params): where its subtree's parameter statics and
        # nodes sit in its static vector (shapes.Shapes.layout), the parameter locals by
        # position, and the vector of the occurrence it is planned from.
        self._pctx: tuple[dict[int, int], dict[int, int], dict[int, str], tuple] | None = None
        self.shape_fns: list[ShapeFn] = []
        self._where: dict[int, list[str]] = {}  # shape -> where its first few calls are
        self._planning: Shape | None = None  # the shape whose function is being planned
        # Chains of nested nodes of one link shape: a loop (see shapes.find_chains).
        # (Links calling user code too, in the reference's order: see find_chains.)
        # (Links differing only in int/str/bool statics too: the loop's parameters, per link.)
        # (Links whose next link sits in a container of theirs too: ``children=[next]``.)
        self.chains = find_chains(gd, max(2, outline_min), self.witnessed, self.shared_types, self.shapes,
                                  user=True, ordered=True, params=True, nested=True) \
            if outline_min > 0 else {}
        # Chains of nested containers of one link shape (``x = [x, State(...)]``): a loop too.
        self.container_chains = find_container_chains(
            gd, max(2, outline_min), self.witnessed, self.shared_types, self.shapes, ordered=True
        ) if outline_min > 0 else {}
        # Repeated containers (lists, tuples, dicts of states, statics, nodes): one function
        # per shape too, outside the chains and the outlined nodes' subtrees.
        # (Containers differing only in int/str/bool statics too: one shape, the values
        # that differ its functions' parameters, per occurrence.)
        find_container_shapes(gd, outline_min, self.shapes, self.chains, self.container_chains, params=True)
        self._rec_edge: Any = None  # planning a container chain's link: the next link's edge
        self._rec = -1  # planning a chain's link: the next link's index, not planned
        self._rec_local: Operand = ""  # and the local that holds it
        # and where it came in the link's body: (steps, distinct entries, checks planned
        # before it, and the locals the work items still to plan name: see _chain's split)
        self._rec_at: tuple[int, int, int, list[str]] | None = None
        self._looped = False  # a chain loop was planned
        self._done_steps = 0  # steps planned into outlined functions and chain loops so far
        self._inline = 0  # planning a loop's body: its occurrences of outlined shapes are unrolled
        self._planned: set[int] = set()  # shapes whose functions are planned
        self._reloads: set[str] = set()  # outlined functions whose guards call user code (kept)
        self.loops: list[str] = []  # loops over lists of one shape, for explain
        # Calls of outlined functions: (the calling shape or None: the top function, how many
        # times the call runs per run of its caller (a chain's links), the called shape).
        # An occurrence in a loop's item is read inline: not a use of its function.
        self._calls: list[tuple[int | None, int, int]] = []
        self._mult = 1  # runs of the body being planned per run of its function (chains)
        self._labelled: dict[int, list[tuple[int | None, int]]] = {}  # the calls _where names
        # Runs of sibling states of one kind at least this long are loops (_state_runs).
        self.run_min = max(2, outline_min) if outline_min > 0 else 0
        self._plain_state: dict[type, bool] = {}  # class -> a plain State class (no layout)

    def plan(self) -> FlattenPlan:
        gd = self.gd
        if type(gd.root) is not NodeEdge and type(gd.root) is not PytreeEdge:
            raise Declined("the root is not a node or a container")
        self._hidden_names()
        self._run([Work(gd.root, "root", None, None, "", False)], -1)
        class_guards = self.facts.steps(self.consts)
        steps = class_guards + self.pre_steps + self.steps
        counts = dict.fromkeys(GUARD_KINDS, 0)
        counts.update(Counter(s.kind for s in steps if s.kind))
        outlined_distinct = _count(steps, 1, counts)
        uses = self._uses()
        for fn in self.shape_fns:
            sid = int(fn.name[len("outlined"):])
            fn.uses = uses[sid]
            outlined_distinct = _count(fn.steps, fn.uses, counts) or outlined_distinct
            fn.where = self._where.get(sid, [])
            listed = sum((1 if c is None else uses[c]) * m for c, m in self._labelled.get(sid, []))
            if listed < fn.uses:
                fn.where.append("...")
            outlined_distinct = outlined_distinct or bool(fn.distinct)
        counts["epoch"] = 1
        self.array_writes.sort(key=lambda w: w[:2])
        return FlattenPlan(
            graphdef=gd,
            consts=self.consts,
            steps=steps,
            values=[v for v in self.values if v is not None],
            checks=self.pre_checks + self.checks,
            writes=self.state_writes + [w[2] for w in self.array_writes],
            # one object cannot coincide
            distinct=self.distinct if len(self.distinct) > 1 or outlined_distinct else [],
            objects=[x for x in map(self.local_of.__getitem__, range(len(gd.table))) if x is not None],
            epoch=reg.registry_epoch(),
            counts=counts,
            facts=self.facts,
            keyed_statics=self.keyed_statics,
            shape_fns=self.shape_fns,
            outlined_distinct=outlined_distinct,
            outlined=bool(self.shape_fns) or self._looped,
            loops=self.loops,
            token=self.token_step,
        )

    def _run(self, stack: list[Work], skip: Any) -> None:
        """Plan the work items in pre-order (``skip``: the node whose own shape is being
        planned is expanded, not called)."""
        visit: dict[type, Callable[[Work], list[Work]]] = {
            NodeEdge: self._node, StateEdge: self._state, ArrayEdge: self._array, StaticEdge: self._static,
            PytreeEdge: self._pytree, RunEdge: self._run_loop, StateRun: self._state_run,
        }
        shape_of, cshape_of = self.shapes.shape_of, self.shapes.cshape_of
        chains = self.chains if self._planning is None else {}
        cchains = self.container_chains if self._planning is None else {}
        while stack:
            if len(self.steps) + self._done_steps > self.max_steps:
                # (Generated code, not nodes: repeated substructures are one function or loop.)
                raise Declined(f"structure too large (more than {self.max_steps} steps of generated code)")
            work = stack.pop()
            k = type(work.edge)
            if (k is NodeEdge and work.edge.index == self._rec) or work.edge is self._rec_edge:
                self._rec_local = work.obj  # a chain's next link: the loop's
                # (what the link's body planned so far precedes its next link; the locals the
                # items still on the stack are read from, defined so far, what follows needs)
                self._rec_at = (len(self.steps), len(self.distinct), len(self.checks),
                                list(dict.fromkeys(_operand_local(w.obj) for w in stack)))
                continue
            if k is ChainAfter:  # a split chain's second loop: past its tail's subtree
                self.steps.append(work.edge.step)
                continue
            if k is PytreeEdge and cchains and id(work.edge) in cchains and work.edge is not skip:
                stack.extend(self._chain(work, cchains[id(work.edge)]))
                continue
            if k is PytreeEdge and work.edge is not skip and id(work.edge) in cshape_of and not self._inline \
                    and self._rec < 0 and self._rec_edge is None \
                    and (self._planning is None or self._planning.edge is not None):
                self._call(work)
                continue
            if (k is NodeEdge or k is StateEdge) and work.edge.index in self.local_of:
                self._backref(work)
                continue
            if k is NodeEdge and work.edge.index != skip:
                if work.edge.index in shape_of and not self._inline:
                    self._call(work)
                    continue
                if work.edge.index in chains:
                    stack.extend(self._chain(work, chains[work.edge.index]))
                    continue
            # A container's children come back in order; they are planned in pre-order.
            stack.extend(reversed(visit[k](work)))

    # -- outlined shapes ----------------------------------------------------------------

    @contextlib.contextmanager
    def _own_body(self) -> Iterator[None]:
        """Plan a body of its own (an outlined function, a loop's item, a chain's link): the
        planner's per-function lists start empty, and are as they were again after it."""
        saved = (self.steps, self.values, self.local_of, self.state_writes, self.distinct, self.checks,
                 self.array_writes, self.keyed_statics, self._setters)
        # (_setters too: every outlined function names its occurrence "root", and a callback
        # node's set_key is found by the local holding it)
        self._setters = {}
        self.steps, self.state_writes, self.distinct = [], [], []
        self.values, self.local_of = {}, {}  # type: ignore[assignment]
        self.checks, self.array_writes = [], []
        self.keyed_statics = False
        try:
            yield
        finally:
            self._done_steps += len(self.steps)
            (self.steps, self.values, self.local_of, self.state_writes, self.distinct, self.checks,
             self.array_writes, self.keyed_statics, self._setters) = saved

    def _plan_shape(self, shape: Shape) -> None:
        """The functions of one shape, planned from its first occurrence as a root of its own."""
        skip, self.skip_type_guard = self.skip_type_guard, False
        self._planning = shape
        inline, self._inline = self._inline, 0
        pctx, mult = self._pctx, self._mult
        self._pctx = self._param_ctx(shape.rep, shape.params, edge=shape.edge)
        self._mult = 1
        try:
            with self._own_body():
                rep = shape.rep
                if shape.edge is not None:  # a container (its first entry: rep)
                    self._run([Work(shape.edge, "root", None, None, "", False)], shape.edge)
                    lo = self.shapes.csize[id(shape.edge)][0]
                else:
                    self._run([Work(NodeEdge(rep), "root", None, None, "", False)], rep)
                    lo = self.shapes.slot_lo[rep]
                checks = self._occurrence_checks(shape.type_name)
                # Its array writes, in the reference's order (node by node in table order):
                # the occurrence's nodes are consecutive entries, so they are one run of the
                # whole update's array writes, made where its root's entry sorts.
                arrays = [w[2] for w in sorted(self.array_writes, key=lambda w: w[:2])]
                unchanged = self._unchanged
                kept = _write_locals(self.state_writes + arrays + unchanged) \
                    if self._user_loads(self.steps) or unchanged else None
                self._unchanged_of[f"outlined{shape.sid}"] = (kept, [_rebase(c, lo) for c in unchanged])
                vals: dict[int, Any] = self.values  # type: ignore[assignment]
                fn = ShapeFn(
                    name=f"outlined{shape.sid}",
                    type_name=safe_name(shape.type_name),
                    steps=self.steps,
                    values=[vals[s] for s in sorted(vals) if vals[s] is not None],
                    objects=[self.local_of[i] for i in sorted(self.local_of) if self.local_of[i] is not None],
                    distinct=self.distinct,
                    writes=[_rebase(w, lo) for w in self.state_writes],
                    keyed_statics=self.keyed_statics,
                    uses=len(shape.occurrences),
                    where=[],
                    nslots=shape.nslots,
                    checks=checks,
                    kept=kept,
                    array_writes=[_rebase(w, lo) for w in arrays],
                    params=self._param_names(shape.params),
                )
                if kept is not None:
                    self._reloads.add(fn.name)
        finally:
            self.skip_type_guard = skip
            self._planning = None
            self._inline = inline
            self._pctx, self._mult = pctx, mult
        self.shape_fns.append(fn)

    def _chain(self, work: Work, chain: Chain) -> list[Work]:
        """A chain of nested links of one shape: a loop whose body guards and reads one link
        (planned from the first); returns the work items to push: the node past the last
        link's (a split chain's: after the marker of its second loop, see _split_chain)."""
        head = chain.head
        first, last = chain.links[0], chain.links[-1]
        self.skip_type_guard = False  # (the root's type is the dispatcher's; the tail is guarded)
        cur = self._fresh("x")
        # (A chain in a link of another: the outer link's next link, found or still to come.)
        outer = self._rec, self._rec_local, self._rec_edge, self._rec_at
        self._rec, self._rec_local, self._rec_at = first.nxt, "", None
        containers = chain.head_edge is not None  # a chain of containers (no table entry of their own)
        if containers:  # (the node whose attribute holds them: no array leaf is in a link)
            self.nearest[cur] = self.nearest.get(work.obj, len(self.gd.table))
        self._rec_edge = chain.rec_edges[0] if containers else None
        mult, self._mult = self._mult, self._mult * chain.n  # (its body runs once per link)
        # Statics that differ between links: parameters of the body, one tuple per link.
        # (In a body whose statics are parameters, a loop's item: no position of its vector
        # is in a chain, a link's family being its exact key; see find_shapes.)
        pctx = self._pctx
        params: list[str] = []
        pvals = ""
        if chain.params:
            pos, off = self.shapes.layout(head, first.nxt)
            names = {p: self._fresh("p") for p in chain.params}
            self._pctx = (pos, off, names, first.vec)
            params = [names[p] for p in chain.params]
            rows = [tuple(link.vec[p] for p in chain.params) for link in chain.links]
            pvals = self.consts.bind(tuple(r[0] for r in rows) if len(params) == 1 else tuple(rows), "PV")
        try:
            with self._own_body():
                if containers:
                    self._run([Work(chain.head_edge, cur, work.path, None, "", False)], chain.head_edge)
                else:
                    self._run([Work(NodeEdge(head), cur, work.path, None, "", False)], head)
                checks = self._occurrence_checks("chain link")
                if self._unchanged:  # (shapes.py keeps a link's arrays out of its loop)
                    raise Declined("an array in a custom pytree in a chain's link")
                body, writes, distinct = self.steps, self.state_writes, self.distinct
                keyed = self.keyed_statics
                vals: dict[int, Any] = self.values  # type: ignore[assignment]
                objs: dict[int, Any] = self.local_of
                rec, at = self._rec_local, self._rec_at
        finally:
            self._rec, self._rec_local, self._rec_edge, self._rec_at = outer
            self._mult = mult
            self._pctx = pctx
        self.keyed_statics = self.keyed_statics or keyed
        (lb, nb), (la, na) = first.before, first.after
        (eb, neb), (ea, nea) = first.ebefore, first.eafter

        def part(d: dict[int, Any], lo: int, n: int) -> list[Any]:
            return [d[i] for i in sorted(d) if lo <= i < lo + n and d[i] is not None]

        dst, dst_after = self._fresh("r"), self._fresh("r")
        n = chain.n
        before = [w for w in writes if lb <= _first_slot(w) < lb + nb]
        after = [w for w in writes if la <= _first_slot(w) < la + na]
        if chain.split:
            if at is None or containers:
                raise RuntimeError("a split chain's link was planned without its next link")
            # (the marker first: popped after the tail's whole subtree)
            return [self._split_chain(work, chain, cur, body, distinct, checks, vals, objs, rec, at,
                                      before, after, dst, dst_after, params, pvals),
                    Work(NodeEdge(chain.tail), cur, work.path, None, "", False)]
        # User code in the body (a callback link's flatten): the update's loop keeps, per
        # link, the locals its writes name, and writes through them (a reload would call
        # that code again: the reference's update calls it no more than its walk does).
        kept = _write_locals(before + after) if self._user_loads(body) else None
        self.steps.append(Step(
            "chain_loop", cur=cur, obj=work.obj, n=n, body=body, before=part(vals, lb, nb),
            after=part(vals, la, na), objs_before=part(objs, eb, neb), objs_after=part(objs, ea, nea),
            rec=rec,
            dst=dst, dst_after=dst_after, distinct=distinct, var=self._fresh("x"), checks=checks, kept=kept,
            params=params, pvals=pvals, links="", live=[]))
        self._looped = True
        # Splices: the links' values and objects before the rest of the chain, then the
        # tail's (planned as usual), then theirs after it.
        self._splice_run(self.values, lb, n * nb, Splice(dst, "v"))
        self._splice_run(self.values, last.after[0], n * na, Splice(dst_after, "v"))
        self._splice_run(self.local_of, eb, n * neb, Splice(dst, "o"))
        self._splice_run(self.local_of, last.eafter[0], n * nea, Splice(dst_after, "o"))
        if before or after:
            self.state_writes.append(Step(
                "write_chain", cur=cur, obj=work.obj if kept is None else dst, n=n,
                loads=body if kept is None else [],
                writes_before=[_rebase(w, lb) for w in before], writes_after=[_rebase(w, la) for w in after],
                rec=rec,
                slot=lb, slot_after=la, nb=nb, na=na, var=self._fresh("x"), kept=kept, obj_after="",
                kept_after=None))
        if containers:
            return [Work(chain.tail_edge, cur, work.path, None, "", False)]
        return [Work(NodeEdge(chain.tail), cur, work.path, None, "", False)]

    def _split_chain(self, work: Work, chain: Chain, cur: str, body: list[Step], distinct: list[Any],
                     checks: list[Step], vals: dict[int, Any], objs: dict[int, Any], rec: Operand,
                     at: tuple[int, int, int, list[str]], before: list[Step], after: list[Step],
                     dst: str, dst_after: str, params: list[str], pvals: str) -> Work:
        """A chain whose links run user code after their next link (``Chain.split``), read
        in the reference's order: a first loop reads what precedes each link's next link,
        link by link, keeping per link the locals what follows is read from (``links``);
        the tail is planned as usual, past it a second loop (``chain_after``, made where the
        returned marker is met: after the tail's whole subtree) reads what follows, over
        the kept locals in reverse, the deepest link first. Its values and objects come in
        that order, which is their slots' and entries' (see shapes._regular). The update
        keeps what each loop's writes name (no second load: user code), and writes from
        both lists. (Statics that differ between links: the first loop's parameters, kept
        per link with the locals for the second.)"""
        first, last = chain.links[0], chain.links[-1]
        (lb, nb), (la, na) = first.before, first.after
        (eb, neb), (ea, nea) = first.ebefore, first.eafter
        n = chain.n
        cut, dcut, ccut, live = at
        live = live + [p for p in params if p not in live]

        def part(d: dict[int, Any], lo: int, k: int) -> list[Any]:
            return [d[i] for i in sorted(d) if lo <= i < lo + k and d[i] is not None]

        links = self._fresh("lk")
        kept_before, kept_after = _write_locals(before), _write_locals(after)
        self.steps.append(Step(
            "chain_loop", cur=cur, obj=work.obj, n=n, body=body[:cut], before=part(vals, lb, nb),
            after=[], objs_before=part(objs, eb, neb), objs_after=[], rec=rec,
            dst=dst, dst_after="", distinct=distinct[:dcut], var=self._fresh("x"), checks=checks[:ccut],
            kept=kept_before, params=params, pvals=pvals, links=links, live=live))
        step = Step(
            "chain_after", links=links, live=live, n=n, body=body[cut:], after=part(vals, la, na),
            objs_after=part(objs, ea, nea), dst_after=dst_after, distinct=distinct[dcut:],
            checks=checks[ccut:], kept=kept_after)
        self._looped = True
        self._splice_run(self.values, lb, n * nb, Splice(dst, "v"))
        self._splice_run(self.values, last.after[0], n * na, Splice(dst_after, "v"))
        self._splice_run(self.local_of, eb, n * neb, Splice(dst, "o"))
        self._splice_run(self.local_of, last.eafter[0], n * nea, Splice(dst_after, "o"))
        if before or after:
            self.state_writes.append(Step(
                "write_chain", cur=cur, obj=dst, n=n, loads=[],
                writes_before=[_rebase(w, lb) for w in before], writes_after=[_rebase(w, la) for w in after],
                rec=rec, slot=lb, slot_after=last.after[0], nb=nb, na=na, var=self._fresh("x"),
                kept=kept_before, obj_after=dst_after, kept_after=kept_after))
        return Work(ChainAfter(step), cur, work.path, None, "", False)

    def _occurrence_checks(self, what: str) -> list[Step]:
        """The update's checks of one occurrence just planned in a body of its own (an
        outlined function, a loop's item, a chain's link): its trace-level checks, made in
        the body itself (the update passes the call's token in) so that every occurrence is
        checked before anything is written. shapes.py outlines nothing else needing one."""
        out = [c for c in self.checks if c.op == "guard_token"]
        self._unchanged = [c for c in self.checks if c.op == "check_unchanged"]
        if len(out) + len(self._unchanged) != len(self.checks):
            raise RuntimeError(f"an outlined {what} needs update checks")
        return out

    def _unchanged_checks(self, dst: str, kept: list[str] | None, unchanged: list[Step], slot: int,
                          n: int, stride: int) -> None:
        """The update's checks of the arrays in custom pytrees (immutable: never written,
        checked unchanged) of an outlined occurrence called, or of a loop's ``n`` items, in
        this top function: against the locals the update's outlined code kept per occurrence
        (``dst``), each at its slot (``slot``: the first occurrence's first, ``stride``: an
        item's slots), after every guard and before any write, as the unrolled code checks
        them. (shapes.py outlines no occurrence holding one inside another: see ``checked``.)"""
        if not unchanged:
            return
        if self._planning is not None or self._inline or self._mult != 1 or self._rec >= 0 \
                or self._rec_edge is not None or kept is None:
            raise Declined("an array in a custom pytree held by an outlined occurrence below another")
        for c in unchanged:
            self.checks.append(Step("check_kept_same", obj=dst, idx=kept.index(c.obj), slot=slot + c.slot,
                                    n=n, stride=stride, label=c.label))

    @staticmethod
    def _splice_run(table: Any, lo: int, count: int, splice: Splice) -> None:
        """Slots (or indices) ``lo .. lo + count - 1`` come as one spliced list."""
        if count:
            table[lo] = splice
            for i in range(lo + 1, lo + count):
                table[i] = None

    def _note_use(self, sid: int, path: Any) -> None:
        caller = self._planning.sid if self._planning is not None else None
        self._calls.append((caller, self._mult, sid))
        where = self._where.setdefault(sid, [])
        if len(where) < 3:
            label = path_label(path)
            if self._planning is not None:  # a call in an outlined function: once per its uses
                label = f"{label} in {self._planning.type_name}"
            where.append(label)
            self._labelled.setdefault(sid, []).append((caller, self._mult))

    def _uses(self) -> dict[int, int]:
        """Per outlined shape, how many times one call of the top function calls its
        function (its occurrences read inline in loops' items are not calls). Callers come
        first in the reverse of the order the functions were planned in (a function is
        planned whole, its callees in it, before its own is appended)."""
        by_callee: dict[int, list[tuple[int | None, int]]] = {}
        for caller, mult, sid in self._calls:
            by_callee.setdefault(sid, []).append((caller, mult))
        uses: dict[int, int] = {}
        for fn in reversed(self.shape_fns):
            sid = int(fn.name[len("outlined"):])
            uses[sid] = sum((1 if c is None else uses.get(c, 0)) * m for c, m in by_callee.get(sid, []))
        return uses

    def _splice(self, j: int, shape: Shape, k: int, dst: str, lo: int = -1) -> None:
        """The values and objects of ``k`` occurrences, the first at entry ``j`` (its first
        slot ``lo``; ``-1``: node ``j``'s): one splice."""
        if shape.nslots:
            if lo < 0:
                lo = self.shapes.slot_lo[j]
            self.values[lo] = Splice(dst, "v")
            for s in range(lo + 1, lo + k * shape.nslots):
                self.values[s] = None  # type: ignore[call-overload]
        if shape.nindices:
            self.local_of[j] = Splice(dst, "o")  # type: ignore[assignment]
        for i in range(j + 1, j + k * shape.nindices):
            self.local_of[i] = None  # type: ignore[assignment]

    def _shape_fn(self, sid: int) -> ShapeFn:
        """The functions of shape ``sid``, planned on first use."""
        if sid not in self._planned:
            self._planned.add(sid)
            planning = self._planning
            self._plan_shape(self.shapes.shapes[sid])
            self._planning = planning
        name = f"outlined{sid}"
        return next(f for f in self.shape_fns if f.name == name)

    def _occurrence(self, edge: Any) -> tuple[int, int, int, int]:
        """Where an occurrence's values and objects sit: (first slot, first entry, sid, entries)."""
        if type(edge) is NodeEdge:
            j = edge.index
            sid = self.shapes.shape_of[j]
            return self.shapes.slot_lo[j], j, sid, self.shapes.shapes[sid].nindices
        lo, _, first, m = self.shapes.csize[id(edge)]
        return lo, first, self.shapes.cshape_of[id(edge)], m

    def _call(self, work: Work) -> None:
        """An occurrence of an outlined shape (a node's or a container's): one call of its
        function (planned on first use)."""
        lo, j, sid, _ = self._occurrence(work.edge)
        shape = self.shapes.shapes[sid]
        fn = self._shape_fn(sid)
        dst = self._fresh("r")
        name = fn.name
        assert type(work.obj) is str
        vkey = j if shape.edge is None else ("c", id(work.edge))
        args = [self._operand_at(vkey, q) for q in shape.params]
        self.steps.append(Step("call_shape", dst=dst, fn=name, obj=work.obj, args=args))
        self._splice(j, shape, 1, dst, lo)
        kept_, unchanged = self._unchanged_of.get(name, (None, []))
        self._unchanged_checks(dst, kept_, unchanged, lo, 0, 0)
        if shape.nslots:
            # (user code in its guards: its write function takes what its update's returned)
            obj = dst if name in self._reloads else work.obj
            if fn.writes:
                self.state_writes.append(Step("write_shape", obj=obj, fn=name, slot=lo))
            if fn.array_writes:  # (where the occurrence's root sorts among the array writes)
                self.array_writes.append((j, len(self.array_writes), Step(
                    "write_shape_arrays", obj=obj, fn=name, slot=lo)))
        self._note_use(sid, work.path)

    def _loop(self, var: str, edge: Any, label: str, path: Any) -> bool:
        """A list or tuple of occurrences of one outlined shape: a loop (``False``: not one)."""
        kids = edge.children
        shape_of = self.shapes.shape_of
        if len(kids) < 2 or not all(type(c) is NodeEdge for c in kids):
            return False
        sid = shape_of.get(kids[0].index)
        if sid is None or not all(shape_of.get(c.index) == sid for c in kids):
            return False
        self.steps.append(Step("guard_len", obj=var, n=len(kids), label=label))
        self._each_loop(var, kids, label, (path, 0))
        return True

    def _mixed(self, var: str, edge: Any, label: str, path: Any) -> bool:
        """A list or tuple of occurrences of outlined shapes, containers among them (``[[p],
        {'a': q}, ...]``), or a dict (str keys) of them: one loop calling item ``i``'s function
        ``fns[idx[i]]`` (``False``: not one), a dict's values loaded first at its keys (one
        bound tuple). Only in the top function, for shapes whose update writes by a function
        of their own (no kept locals, no array writes), items at consecutive slots and entries."""
        kids = edge.children
        if self.run_min <= 0 or len(kids) < self.run_min or self._planning is not None or self._inline \
                or self._rec >= 0 or self._rec_edge is not None:
            return False
        shape_of, cshape_of = self.shapes.shape_of, self.shapes.cshape_of
        containers = False
        for c in kids:
            if type(c) is PytreeEdge and id(c) in cshape_of:
                containers = True
            elif type(c) is not NodeEdge or c.index not in shape_of:
                return False
        if not containers:  # (nodes only: a loop of one shape, or calls)
            return False
        shapes = self.shapes.shapes
        slot, entry = -1, -1
        order: dict[int, int] = {}
        idx: list[int] = []
        for c in kids:
            lo, j, sid, m = self._occurrence(c)
            n = shapes[sid].nslots
            if not n or (slot >= 0 and (lo != slot or j != entry)):
                return False
            slot, entry = lo + n, j + m
            idx.append(order.setdefault(sid, len(order)))
        first_lo, first_j, _, _ = self._occurrence(kids[0])
        fns = [self._shape_fn(sid) for sid in order]
        if any(f.kept is not None or f.array_writes or not f.writes for f in fns):
            return False  # (planned anyway: each occurrence is then one call, its parameters passed)
        names = [f.name for f in fns]
        bound = self.consts.bind(tuple(idx), "IX")
        keys = edge.keys if edge.ptype is dict else None
        # Shapes whose statics differ per occurrence (Shape.params): each item's values,
        # zipped in (one bound tuple: one value per item where every item passes one, else
        # a tuple per item), each item's function guarding its occurrence against them.
        arities = {len(shapes[sid].params) for sid in order}
        arity = arities.pop() if len(arities) == 1 else -1
        pvals = ""
        if arity:
            rows = [self._item_params(c) for c in kids]
            pvals = self.consts.bind(tuple(r[0] for r in rows) if arity == 1 else tuple(rows), "PV")
        self.steps.append(Step("guard_len", obj=var, n=len(kids), label=label))
        if keys is not None:  # a dict (str keys): its values at its keys, in the IR's order
            xs = self._fresh("xs")
            self.steps.append(Step("load_items", dst=xs, obj=var, keys=self.consts.bind(keys, "KS"),
                                   miss="container"))
            var = xs
        dst = self._fresh("r")
        self.steps.append(Step("mixed_loop", dst=dst, obj=var, var=self._fresh("x"), n=len(kids),
                               fns=names, idx=bound, pvals=pvals, arity=arity))
        self._looped = True
        self._splice_run(self.values, first_lo, slot - first_lo, Splice(dst, "v"))
        self._splice_run(self.local_of, first_j, entry - first_j, Splice(dst, "o"))
        self.state_writes.append(Step("write_mixed", obj=var, var=self._fresh("x"), pos=self._fresh("a"),
                                      slot=first_lo, fns=names, idx=bound,
                                      ns=[shapes[sid].nslots for sid in order]))
        for i, c in enumerate(kids):  # (one call per item: the uses of each shape, see _uses)
            self._note_use(self._occurrence(c)[2], (path, i if keys is None else keys[i]))
        self.loops.append(f"{label or '<root>'}[0..{len(kids) - 1}]: {len(kids)} items of "
                          + (f"{len(order)} shapes" if len(order) > 1 else "one shape")
                          + f" ({', '.join(f.type_name for f in fns)})"
                          + (", the statics that differ per item zipped in" if arity else ""))
        return True

    def _item_params(self, c: Any) -> tuple[Any, ...]:
        """The parameter values of occurrence ``c`` (a node's edge or a container's) of an
        outlined shape, in its shape's parameter order: the top function's constants."""
        if type(c) is NodeEdge:
            shape = self.shapes.shapes[self.shapes.shape_of[c.index]]
            vec = self.shapes.vec(c.index)
        else:
            shape = self.shapes.shapes[self.shapes.cshape_of[id(c)]]
            vec = self.shapes.cvec_of(c)
        return tuple(vec[q] for q in shape.params)

    def _run_loop(self, work: Work) -> list[Work]:
        """A run of children of a dict-backed node (an ``nnx.List``'s items), occurrences of
        one outlined shape: loaded as one list (a renamed key: a node_keys miss), then a loop."""
        run: RunEdge = work.edge
        var = self._fresh("xs")
        assert type(work.obj) is str
        self.steps.append(Step("load_run", dst=var, obj=work.obj, keys=self.consts.bind(run.keys, "KS")))
        label = path_label((work.path, run.path_keys[0]))
        where = f"{path_label(work.path)}[{run.path_keys[0]}..{run.path_keys[-1]}]"
        self._each_loop(var, run.children, where, (work.path, run.path_keys[0]), label)
        return []

    def _each_loop(self, var: str, kids: tuple, label: str, item_path: Any, item_label: str = "") -> None:
        """The loop over ``kids`` (held by the iterable in ``var``), occurrences of one shape."""
        sid = self.shapes.shape_of[kids[0].index]
        shape = self.shapes.shapes[sid]
        rep = kids[0].index
        item = self._fresh("x")
        pvals, fixed, varying = self._loop_params(kids, shape.params)  # (before the body's names)
        outer_inline = self._inline
        skip, self.skip_type_guard = self.skip_type_guard, False
        self._inline += 1
        pctx = self._pctx
        self._pctx = self._param_ctx(rep, shape.params, fixed)
        params = self._param_names(varying)
        try:
            with self._own_body():
                # The body: one item, unrolled (what it holds inline too, but its own lists of one shape).
                self._run([Work(NodeEdge(rep), item, item_path, None, "", False)], rep)
                checks = self._occurrence_checks(shape.type_name)
                unchanged = self._unchanged
                body, writes, distinct = self.steps, self.state_writes, self.distinct
                arrays = [w[2] for w in sorted(self.array_writes, key=lambda w: w[:2])]
                keyed = self.keyed_statics
                vals: dict[int, Any] = self.values  # type: ignore[assignment]
                objs: dict[int, Any] = self.local_of
        finally:
            self.skip_type_guard = skip
            self._inline -= 1
            self._pctx = pctx
        self.keyed_statics = self.keyed_statics or keyed
        dst = self._fresh("r")
        values = [vals[s] for s in sorted(vals) if vals[s] is not None]
        # An item's values are exactly its distinct states' values, in order (an MLP's
        # Linear): the loop keeps the states (one tuple per item) and reads values after it.
        # User code in the body (a callback node's flatten): the update's loop keeps the
        # locals its writes name, per item, and writes through them (a reload would call it again).
        kept = _write_locals(writes + arrays + unchanged) if self._user_loads(body) or unchanged else None
        keep_states = kept is None and bool(distinct) and len(distinct) == len(values) and all(
            type(v) is StateValue and v.attr == "value" and not by_id and obj == v.obj
            for v, (obj, by_id) in zip(values, distinct, strict=True))
        self.steps.append(Step(
            "each_loop", dst=dst, obj=var, var=item, n=len(kids), body=body, distinct=distinct,
            values=values, keep_states=keep_states,
            objects=[objs[i] for i in sorted(objs) if objs[i] is not None], checks=checks, kept=kept,
            params=params, pvals=pvals))
        self._looped = True
        self._splice(rep, shape, len(kids), dst)
        self._unchanged_checks(dst, kept, [_rebase(c, self.shapes.slot_lo[rep]) for c in unchanged],
                               self.shapes.slot_lo[rep], len(kids), shape.nslots)
        if writes:
            lo = self.shapes.slot_lo[rep]
            rebased = [_rebase(w, lo) for w in writes]
            # The update's writes go through the states the loop kept, when it kept them in
            # this very function (not in a loop's body: one run's list) and each item's
            # writes are exactly its kept states at its slots 0..k-1, in order.
            states = dst if (
                keep_states and outer_inline == 0 and self._planning is None
                and shape.nslots == len(distinct) == len(rebased)
                and all(w.op == "write_value" and w.slot == j and w.obj == distinct[j][0]
                        for j, w in enumerate(rebased))) else None
            self.state_writes.append(Step("write_each", obj=var if kept is None else dst, var=item,
                                          loads=body if kept is None else [], pos=self._fresh("a"),
                                          writes=rebased, slot=lo, n=shape.nslots, states=states,
                                          total=shape.nslots * len(kids), kept=kept))
        if arrays:
            # The items' array writes: one run of the update's, where the first item's entry
            # sorts (the items' nodes are consecutive entries, in item order).
            lo = self.shapes.slot_lo[rep]
            self.array_writes.append((rep, len(self.array_writes), Step(
                "write_each", obj=var if kept is None else dst, var=item, loads=body if kept is None else [],
                pos=self._fresh("a"), writes=[_rebase(w, lo) for w in arrays], slot=lo, n=shape.nslots,
                states=None, total=shape.nslots * len(kids), kept=kept)))
        where = label if item_label else f"{label}[0..{len(kids) - 1}]"
        self.loops.append(f"{where}: {len(kids)} x {shape.type_name}"
                          + (f" in {self._planning.type_name}" if self._planning is not None else "")
                          + (f", the statics that differ per item zipped in as {', '.join(params)}"
                             if params else ""))

    # -- statics as parameters (shapes.find_shapes' params) ----------------------------------

    def _param_ctx(self, rep: int, params: tuple[int, ...], fixed: dict[int, str] | None = None,
                   edge: Any = None) -> Any:
        """The parameter context of a body planned from node ``rep`` (``edge``: from that
        container occurrence) of a shape whose statics at ``params`` are parameters
        (``None``: none, every static a constant); ``fixed``: those of them one operand
        holds for the whole body (a loop's items that agree), the others a local each."""
        if not params:
            return None
        if edge is not None:
            pos, off = self.shapes.clayout(edge)
            vec = self.shapes.cvec_of(edge)
        else:
            pos, off = self.shapes.layout(rep)
            vec = self.shapes.vec(rep)
        fixed = fixed or {}
        names = {p: fixed[p] if p in fixed else self._fresh("p") for p in params}
        return pos, off, names, vec

    def _param_names(self, params: tuple[int, ...]) -> list[str]:
        """The parameter locals at ``params`` of the context just made, in their order."""
        return [self._pctx[2][p] for p in params] if params and self._pctx is not None else []

    def _operand_at(self, j: Any, q: int) -> str:
        """What holds position ``q`` of node ``j``'s static vector (``("c", id(edge))``: a
        container occurrence's) where the planner is: a parameter of the body being
        planned, or a bound constant."""
        ctx = self._pctx
        if ctx is not None:
            base = ctx[1].get(j)
            if base is not None:
                name = ctx[2].get(base + q)
                return name if name is not None else self.consts.bind(ctx[3][base + q], "C")
        if type(j) is tuple:
            return self.consts.bind(self.shapes.cvec[j[1]][q], "C")
        return self.consts.bind(self.shapes.vec(j)[q], "C")

    def _loop_params(self, kids: tuple, params: tuple[int, ...]
                     ) -> tuple[str | list[list[str]], dict[int, str], tuple[int, ...]]:
        """A loop's parameters: ``(pvals, fixed, varying)``. The shape's parameters that one
        operand holds for every item (``fixed``: a constant, or a parameter of the body the
        loop is in) are that operand in the loop's body; the others (``varying``) are the
        loop's own locals, zipped with its items from ``pvals``: one bound tuple where they
        are constants, else per item the operands holding them (a loop in a body whose own
        statics are parameters: the template spells them as a tuple)."""
        if not params:
            return "", {}, ()
        ctx = self._pctx
        if ctx is None or kids[0].index not in ctx[1]:
            vec = self.shapes.vec
            rows = [vec(k.index) for k in kids]
            first = rows[0]
            varying = tuple(q for q in params if any(r[q] != first[q] for r in rows))
            fixed = {q: self.consts.bind(first[q], "C") for q in params if q not in varying}
            if not varying:
                return "", fixed, ()
            vals = [tuple(r[q] for q in varying) for r in rows]
            return (self.consts.bind(tuple(v[0] for v in vals) if len(varying) == 1 else tuple(vals), "PV"),
                    fixed, varying)
        ops = [[self._operand_at(k.index, q) for q in params] for k in kids]
        keep = [j for j in range(len(params)) if any(r[j] != ops[0][j] for r in ops)]
        fixed = {q: ops[0][j] for j, q in enumerate(params) if j not in keep}
        return ([[r[j] for j in keep] for r in ops] if keep else ""), fixed, tuple(params[j] for j in keep)

    def _param_static(self, work: Work) -> bool:
        """A static that is a parameter of the body being planned: guarded against it."""
        ctx = self._pctx
        if ctx is None:
            return False
        pos = ctx[0].get(id(work.edge))
        name = ctx[2].get(pos) if pos is not None else None
        if name is None:
            return False
        edge = work.edge
        if name in self.consts.namespace or name in ("True", "False"):  # (one value for every item)
            label = f"{path_label(work.path)} == {name}, the same in every occurrence"
        else:
            label = f"{path_label(work.path)} == {name} (a parameter)"
        if type(edge.value) is bool:  # (True and False: the very object, as a constant's guard)
            self.steps.append(Step("guard_static_is", obj=work.obj, const=name, label=label))
        else:  # an exact int or str: its type and ==, as a constant's guard
            self.steps.append(Step("guard_static", obj=work.obj, cls=self.consts.bind(edge.sig, "T"),
                                   const=name, label=label))
        return True

    # -- runs of sibling states ------------------------------------------------------------

    def _state_runs(self, edges: tuple, keys: tuple | None) -> dict[int, int]:
        """Runs of at least ``run_min`` consecutive sibling states of one kind among ``edges``
        (``keys``: their keys as the container stores them, exact str each; ``None``:
        positions): start -> end position.

        One kind: states of one class whose metadata is guarded by the same code
        (``shapes._meta_key``): ``State`` objects, or a foreign library's read through its
        layout (NNX Variables, BrainState States: :meth:`_foreign_state`), each referenced
        once in the whole structure (no tied state: sharing stays with the unrolled code's
        identity guards), at consecutive table entries and value slots (the loop's values and
        objects are spliced as one run). Only in the top function's own code (not in an
        outlined function, a loop's body or a chain's link)."""
        if self.run_min <= 0 or len(edges) < self.run_min or self._planning is not None \
                or self._inline or self._rec >= 0 or self._rec_edge is not None:
            return {}
        table, refs, plain = self.gd.table, edge_refs(self.gd), self._plain_state
        out: dict[int, int] = {}
        start, prev, kind = -1, -1, None
        for pos in range(len(edges) + 1):
            k: Any = None
            e: Any = edges[pos] if pos < len(edges) else None
            if type(e) is StateEdge and refs[e.index] == 1 and (keys is None or type(keys[pos]) is str):
                spec = table[e.index]
                t = spec.type
                ok = plain.get(t)
                if ok is None:
                    # a foreign state (its own metaclass: NNX's VariableMeta) is read through its
                    # layout, the same code for each (_foreign_state)
                    ok = plain[t] = type(spec) is StateSpec \
                        and (type(t) is type or reg.state_impl(t) is not None)
                if ok:
                    k = (t, _meta_key(spec))
            if k is not None and start >= 0 and k == kind and e.index == prev + 1 \
                    and table[e.index].slot == table[prev].slot + 1:
                prev = e.index
                continue
            if start >= 0 and pos - start >= self.run_min:
                out[start] = pos
            start, prev, kind = (pos, e.index, k) if k is not None else (-1, -1, None)
        return out

    def _state_run(self, work: Work) -> list[Work]:
        """A run of sibling states of one kind: read as one list (or the list itself), then a
        loop whose body is one state's guards and read, unrolled (an ``each_loop``: its
        states kept, put in ``D`` at once, values read after it; the update writes through them)."""
        run: StateRun = work.edge
        kids = run.children
        assert type(work.obj) is str
        if run.keys is None:
            var = work.obj
            path_keys: tuple = tuple(range(len(kids)))
        elif run.span is not None:  # a stretch of a list or tuple: one slice (its length is guarded)
            var = self._fresh("xs")
            path_keys = run.keys
            self.steps.append(Step("load_slice", dst=var, obj=work.obj, lo=run.span[0], hi=run.span[1]))
        else:
            var = self._fresh("xs")
            path_keys = run.keys
            held = run.keys if run.stored is None else run.stored
            self.steps.append(Step("load_items", dst=var, obj=work.obj, keys=self.consts.bind(held, "KS"),
                                   miss=run.miss))
        rep = kids[0].index
        spec = self.gd.table[rep]
        item = self._fresh("x")
        skip, self.skip_type_guard = self.skip_type_guard, False
        try:
            with self._own_body():
                self._state(Work(kids[0], item, (work.path, path_keys[0]), None, "", False))
                checks = self._occurrence_checks("state")
                body, writes, distinct = self.steps, self.state_writes, self.distinct
                vals: dict[int, Any] = self.values  # type: ignore[assignment]
                objs: dict[int, Any] = self.local_of
        finally:
            self.skip_type_guard = skip
        values = [vals[s] for s in sorted(vals) if vals[s] is not None]
        keep_states = len(distinct) == len(values) == 1 and type(values[0]) is StateValue \
            and values[0].attr == "value" and not distinct[0][1] and distinct[0][0] == values[0].obj
        dst = self._fresh("r")
        n = len(kids)
        self.steps.append(Step(
            "each_loop", dst=dst, obj=var, var=item, n=n, body=body, distinct=distinct,
            values=values, keep_states=keep_states,
            objects=[objs[i] for i in sorted(objs) if objs[i] is not None], checks=checks, kept=None,
            params=[], pvals=""))
        self._looped = True
        self._splice_run(self.values, spec.slot, n, Splice(dst, "v"))
        self._splice_run(self.local_of, rep, n, Splice(dst, "o"))
        rebased = [_rebase(w, spec.slot) for w in writes]
        states = dst if keep_states and len(rebased) == 1 and rebased[0].op == "write_value" \
            and rebased[0].slot == 0 and rebased[0].obj == distinct[0][0] else None
        self.state_writes.append(Step("write_each", obj=var, var=item, loads=body, pos=self._fresh("a"),
                                      writes=rebased, slot=spec.slot, n=1, states=states, total=n, kept=None))
        self.loops.append(f"{path_label(work.path) or '<root>'}: a run of {n} x {spec.type.__qualname__}")
        return []

    # -- helpers ------------------------------------------------------------------------

    def _user_loads(self, steps: list[Step]) -> bool:
        """Whether ``steps`` call user code to load (a callback node's registered flatten, a
        custom pytree's, in a loop's body or an outlined function they call too): their
        update must not load again to write (see ShapeFn.kept)."""
        for s in steps:
            if s.op == "call_flatten" or s.op == "load_pytree" or s.op == "load_pytree_keyed" \
                    or (s.op == "call_shape" and s.fn in self._reloads) \
                    or ((s.op == "each_loop" or s.op == "chain_loop" or s.op == "chain_after")
                        and s.kept is not None):
                return True
        return False


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
                       path_keys: tuple, miss: str, owner: str, mutable: bool,
                       runs_ok: bool = False, stored: tuple | None = None,
                       runs: dict[int, int] | None = None) -> list[Work]:
        """One block loading every child of a container; their work items, in order.

        ``miss`` names the guard kind a ``KeyError`` in the block stands for. An array
        leaf is written back into ``owner[key]`` (only a ``mutable`` one). ``runs_ok``: a
        long run of sibling states of one kind (see :meth:`_state_runs`) is not loaded
        here but is one work item (a :class:`StateRun`, planned as a loop); ``stored``: the
        keys as the container stores them, where they are not ``path_keys``. ``runs``: those
        runs, found by the caller among a list's or tuple's items (each read as a slice).
        """
        items = []
        pairs = []
        sliced = runs is not None
        if runs is None:
            runs = self._state_runs(edges, path_keys if stored is None else stored) if runs_ok else {}
        skip_to = -1
        for pos, (key, edge, pk) in enumerate(zip(keys, edges, path_keys, strict=True)):
            if pos < skip_to:
                continue
            end = runs.get(pos)
            if end is not None:  # a run of sibling states of one kind: one loop (_state_run)
                run = StateRun(path_keys[pos:end], edges[pos:end], miss,
                               None if stored is None else stored[pos:end], (pos, end) if sliced else None)
                items.append(Work(run, container, path, owner, key, mutable))
                skip_to = end
                continue
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
        items = self._load_children(d, keys, children, work.path, names, "node_keys", d, True, True)
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
        static = {w.obj for w in items if type(w.edge) is StaticEdge}
        inline = {dst: Item(d, key) for dst, key in block.pairs if dst in static}
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
        if self._pctx is not None and self._param_static(work):
            return []
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
        elif _flat_value_tuple(edge.value, sig):
            # A short tuple of scalars (BrainState's sizes, ``(4,)``): item by item in line,
            # each item's exact type first (so only a value type's own ``!=`` runs). The
            # same test as SAME's, without its call: an outlined occurrence holds its own
            # equal tuple, not the compiled one, and pays it per call.
            types = [self.consts.bind(t, "T") for t in sig[1]]
            self.steps.append(Step("guard_static_tuple", obj=work.obj, const=const, types=types, label=label))
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
        if unpack and self.shapes and self._loop(var, edge, label, work.path):
            return []
        if (unpack or (ptype is dict and edge.sig is None)) and self.shapes.cshape_of \
                and self._mixed(var, edge, label, work.path):
            return []
        if builtin:
            if not unpack:
                self.steps.append(Step("guard_len", obj=var, n=len(edge.children), label=label))
        elif reg.keys_fixed_by_treedef(ptype):
            # A namedtuple, an OrderedDict, a defaultdict: its registered flatten, then a
            # guard on the treedef (which carries the child count and the aux data, compared
            # with ==), which fixes the children's path keys.
            src, td = "ch" + var, "td" + var
            self.steps.append(Step("load_pytree", obj=var, dst=src, treedef=td))
            self.steps.append(Step("guard_treedef", obj=td, expected=consts.bind(ptype, "TD"), label=label))
            if edge.sig is not None:  # aux data: equal is not enough (eps=1 is not eps=1.0)
                self.steps.append(Step("guard_aux", obj=td, expected=consts.bind(aux_data(ptype), "A"),
                                       label=label))
        else:
            # Any other JAX pytree: a keys function may name its children from instance data
            # its treedef does not hold (the reference walker's paths are what it returns).
            # One jaxlib call reads the children, their keys and the aux data: the keys are
            # compared (their count is the arity), the aux data as the treedef's == and
            # SAME_AUX compare it (the type guard above fixed the container type and kind).
            src, ok = "ch" + var, "ok" + var
            pk, aux = consts.bind(edge.keys, "PK"), consts.bind(aux_data(ptype), "A")
            self.steps.append(Step("load_pytree_keyed", obj=var, dst=src, ok=ok, expected=pk, aux=aux))
            self.steps.append(Step("guard_loaded", obj=ok, label=label))
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
        runs = self._state_runs(edge.children, None) if unpack else {}
        if runs and runs == {0: len(edge.children)}:
            # A list or tuple of states of one kind only: its length, then one loop over it.
            self.steps.append(Step("guard_len", obj=var, n=len(edge.children), label=label))
            return [Work(StateRun(None, edge.children, ""),
                         var, work.path, var, "", ptype is list)]
        if runs:
            # Runs of states of one kind among other items: its length, then each run one
            # slice and one loop, each other item loaded by its position (in the walker's order).
            self.steps.append(Step("guard_len", obj=var, n=len(edge.children), label=label))
            items = self._load_children(var, keys, edge.children, work.path, edge.keys, "", var,
                                        ptype is list, runs=runs)
            self.nearest.update((w.obj, self.nearest[var]) for w in items)
            return items
        items = self._load_children(src, keys, edge.children, work.path, edge.keys,
                                    "container" if ptype is dict else "", var, ptype is list or ptype is dict,
                                    ptype is dict and edge.sig is None)
        if unpack:
            block: Any = self.steps.pop()  # the load block just emitted becomes one unpacking
            self.steps.append(Step("unpack_seq", obj=var, dsts=[dst for dst, _ in block.pairs], label=label))
        self.nearest.update((w.obj, self.nearest[var]) for w in items)
        return items


def _flat_value_tuple(value: Any, sig: Any) -> bool:
    """A plain tuple of at most 8 scalars of value types, none a float zero or a NaN."""
    return type(value) is tuple and type(sig) is tuple and len(sig) == 2 and sig[0] is tuple \
        and len(value) <= 8 and all(isinstance(s, type) and s in VALUE_TYPES for s in sig[1]) \
        and not any(type(v) is float and (v != v or v == 0.0) for v in value)


def witnessed_nodes(table: tuple, refs: list[int] | None = None) -> set[int]:
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

    ``refs`` (edges per table index, see ``shapes.edge_refs``): a state only one edge
    references has one holder, which it witnesses without a look at any other node.
    """
    owners: dict[tuple[type, str, int], list[int]] = {}
    out: set[int] = set()
    for spec in table:
        if type(spec) is NodeSpec:
            i = spec[2]
            for k, child in zip(spec[3], spec[4], strict=True):  # (keys, children)
                # Only exact str keys: equality between str subclasses need not be transitive.
                if type(child) is StateEdge and type(k) is str:
                    if refs is not None and refs[child[1]] == 1:
                        out.add(i)
                    else:
                        owners.setdefault((spec.type, k, child[1]), []).append(i)
    out.update(found[0] for found in owners.values() if len(found) == 1)
    return out


def _write_locals(writes: list[Step]) -> list[str]:
    """The locals ``writes`` name (their objects, and the current leaf a ``set_key`` write
    compares), in order, once each: what an update keeps to write without loading again."""
    out: dict[str, None] = {}
    for w in writes:
        out[w.obj] = None  # (a chain's writes: its start, or the list its loop kept)
        cur = getattr(w, "current", None)
        if type(cur) is str:
            out[cur] = None
    return list(out)


def _rebase(step: Step, lo: int) -> Step:
    """A write of an outlined function: its slot counted from the occurrence's first."""
    fields = {f: getattr(step, f) for f in step.__dict__ if f not in ("op", "kind")}
    fields["slot"] -= lo
    if step.op == "write_chain":  # (a chain in the occurrence: its values after the rest too)
        fields["slot_after"] -= lo
    return Step(step.op, **fields)


def _first_slot(w: Step) -> int:
    """Where the values a write step writes begin (a chain's: before the rest of it, or
    after it where its links hold none before)."""
    return w.slot_after if w.op == "write_chain" and not w.nb else w.slot


def _count(steps: list[Step], times: int, counts: dict[str, int]) -> bool:
    """Add the guards of ``steps`` (run ``times`` times, loops' bodies as often as they
    run) to ``counts``; whether a loop body appends to the distinct list."""
    appends = False
    for s in steps:
        if s.kind:
            counts[s.kind] += times
        if s.op == "chain_loop" or s.op == "each_loop" or s.op == "chain_after":
            appends = _count(s.body, times * s.n, counts) or bool(s.distinct) or appends
    return appends
