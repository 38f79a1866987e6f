"""Repeated substructures of a structure: which subtrees get one outlined function per shape.

A *shape* is the canonical signature of a node's subtree: its class, its attribute
names, whether it needs a place in the distinct set, and per child the child's shape
(a state: its class and metadata; a static: its type and value, or the very object; a
list/tuple/dict: its keys and its children's shapes). Two subtrees of one shape are
guarded by exactly the same code, bound to the same constants, so one generated
function (per kind: flatten, collect, the update's writes) serves every occurrence,
and a list of occurrences of one shape becomes a loop.

Only *self-contained* subtrees are outlined: every node and state below the subtree's
root is referenced once in the whole structure (no tied weight, no node shared by two
blocks, no cycle reaches into or out of it). Sharing stays with the straight-line code
of the enclosing function, where the identity guards (``backref``) see every path. Inside
an outlined subtree there is thus nothing to dedup; what remains is the distinct set:
an outlined function appends its objects of repeated types to the call's list ``D``,
and the top function checks the whole set once (see ``witnessed_nodes``: with every
state of a repeated type in the set and every state index standing for one object, the
witness argument holds for outlined nodes as for inline ones).

Only what the straight-line planner handles without per-call state of its own is
outlined: builtin ``Node`` classes with str attribute names, plain ``State`` classes,
registered dict-backed node classes with declarative bookkeeping (NNX Modules, BrainState
Nodes: their bookkeeping fields and key sigs are part of the shape), foreign states with a
layout (NNX Variables, BrainState States: their metadata is), statics (plain tuples of
values too), and list/tuple/dict containers with str/int keys; no bare array leaves (their
writes have an order the update keeps), no callback node types (their registered flatten
is user code). What foreign classes check once per call is made by the top function: the
raw-access checks (BrainState) run first there, and the update's trace token (NNX) is
made first and passed to every outlined function, which checks each of its occurrences'
Variables against it before anything is written (``ShapeFn.checks``, a loop's ``checks``).
Likewise the unflatten's per-call contexts (NNX's TraceState, BrainState's tracer and
level): made first by the top function and passed to every outlined builder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

from .. import _registry as reg
from .._ir import ArrayConstant, GraphDef, NodeEdge, NodeSpec, PytreeEdge, StateEdge, StateSpec, StaticEdge
from .._sameness import VALUE_TYPE_IDS, VALUE_TYPES, is_value_sig, match_mode, value_sig
from .analysis import structure_memo
from .classfacts import plain_metaclass

__all__ = ["Chain", "Link", "Shape", "Shapes", "edge_refs", "find_chains", "find_shapes"]


@dataclass
class Shape:
    """One outlined shape: its occurrences (node indices, in table order) and its size."""

    sid: int
    rep: int  # the occurrence its function is planned from
    occurrences: list[int] = field(default_factory=list)
    nslots: int = 0  # value slots of one occurrence (contiguous)
    nindices: int = 0  # table entries of one occurrence (contiguous, the root first)
    type_name: str = ""


@dataclass
class Shapes:
    """The shapes of one structure that are outlined, and where they occur."""

    shapes: dict[int, Shape]  # sid -> shape (only the outlined ones)
    shape_of: dict[int, int]  # node index -> sid, for every occurrence of an outlined shape
    slot_lo: dict[int, int]  # node index -> the first value slot of its subtree
    key_of: dict[int, int] = field(default_factory=dict)  # every outlinable subtree's sid
    size: dict[int, tuple[int, int, int]] = field(default_factory=dict)  # (first slot, slots, entries)
    scan: _Scan | None = None

    def __bool__(self) -> bool:
        return bool(self.shapes)


def _static_key(edge: Any) -> Any:
    """A static: by type and value where equal means indistinguishable, else the object."""
    sig, value = edge.sig, edge.value
    if type(sig) is type and sig in VALUE_TYPES and type(value) is sig \
            and (sig is not float or value == value):
        if sig is float and value == 0.0:  # (a zero's sign has its own sig; be exact anyway)
            return ("i", id(value))
        return ("v", id(sig), value)
    if type(value) is tuple and type(sig) is tuple and is_value_sig(sig):
        # A plain tuple of values (BrainState's sizes, ``(4,)``): its guard is SAME item by
        # item, so an equal tuple of the same sig is the same guard. (A NaN item makes the
        # keys equal only when it is the very same NaN object in both: then so are the guards.)
        return _hashable(("t", sig, value), value)
    return ("i", id(value))


def _hashable(key: Any, obj: Any) -> Any:
    """``key`` when it hashes (its items compare by value), else ``obj``'s identity."""
    try:
        hash(key)
    except Exception:
        return ("i", id(obj))
    return key


class _EqualClasses:
    """Bookkeeping values compared by equality (NNX's ``_pytree__nodes``, one object per
    instance), grouped by exact type and ``==`` without hashing them (a ``HashableMapping``
    sorts its items for each hash): each is compared with its type's representatives so far
    (at most :attr:`MAX`; past them, a value is a class of its own)."""

    MAX = 16

    def __init__(self) -> None:
        self.reps: dict[int, list[tuple[Any, int]]] = {}  # id(type) -> (value, class), held by the GraphDef
        self.n = 0

    def of(self, value: Any) -> Any:
        reps = self.reps.setdefault(id(type(value)), [])
        for r, k in reps:
            if r is value:
                return ("e", k)
        try:
            for r, k in reps:
                if r == value:
                    return ("e", k)
        except Exception:
            return ("i", id(value))
        if len(reps) >= self.MAX:
            return ("i", id(value))
        self.n += 1
        reps.append((value, self.n))
        return ("e", self.n)


def _field_key(f: reg.Field, value: Any, equal: _EqualClasses) -> Any:
    """One bookkeeping field of a dict-backed node, as its guard (``guard_field``) reads it:
    by type and equality for a field compared by equality (NNX's ``_pytree__nodes``), by
    sig and value for a value (``match_mode``), else the very object."""
    t = type(value)
    if f.equal:
        return equal.of(value)
    if value is None or t is bool:  # (what match_mode says of them: the very object)
        return ("i", id(value))
    sig = value_sig(value)
    mode = match_mode(value, sig)
    if mode == "is":
        return ("i", id(value))
    if t is float and (value != value or value == 0.0):
        return ("i", id(value))
    return _hashable(("v", sig, value), value)


def _node_class_ok(t: type) -> bool:
    """What :meth:`_Scan.node_class_ok` asks of a class (its metaclass read as ``type``'s)."""
    impl = reg.node_impl(t)
    if impl.is_builtin_node:
        return type(t) is type and type(t.graph_invisible_attrs) is tuple  # type: ignore[attr-defined]
    dn = impl.dict_node
    if dn is None:
        return False  # a callback node type: its registered flatten is user code
    if dn.fields is None and dn.bookkeeping is not None:
        return False  # the bookkeeping is a function (the planner declines it anyway)
    if dn.hidden_attr is not None:
        hidden = next((vars(k)[dn.hidden_attr] for k in t.__mro__ if dn.hidden_attr in vars(k)), ())
        return dn.hidden_attr == "graph_invisible_attrs" and type(hidden) is tuple
    return True


def _state_class_ok(t: type) -> bool:
    """A plain ``State`` class, or a foreign one with a layout whose class overrides none
    of what the layout relies on."""
    simpl = reg.state_impl(t)
    if simpl is None:
        return type(t) is type
    if not plain_metaclass(t):  # (NNX's VariableMeta reads as type does)
        return False
    lay = simpl.layout
    if isinstance(lay, reg.StateLayout):
        return lay.plain(t) and lay.token is not None
    return isinstance(lay, reg.DictStateLayout) and lay.plain(t)


def _node_key(spec: NodeSpec, equal: _EqualClasses, by_value: bool = True) -> Any:
    """What else than its children tells a node's guards apart: a dict-backed node's key
    sigs (NNX's int keys) and bookkeeping fields, each as its guard reads it (``by_value``),
    or only how many there are (the unflatten reads each occurrence's from its GraphDef)."""
    if spec.sig is None and spec.meta is None:
        return None
    dn = reg.node_impl(spec.type).dict_node
    if dn is None or dn.fields is None:
        return ("i", id(spec))  # (not outlined: node_ok refuses it)
    if not by_value:
        return (spec.sig, len(spec.meta))
    return (spec.sig, tuple([_field_key(f, v, equal) for f, v in zip(dn.fields, spec.meta, strict=True)]))


def _meta_key(spec: Any) -> Any:
    """A state's metadata: where every item is a value (a sharding annotation such as
    ``(None, 'model')``), by value and sig, as the generated guard compares it (== and the
    sig); else by items, or the very tuple."""
    meta = spec.metadata
    if not meta:
        return ()
    sigs = spec.metasig
    for k, _ in meta:  # (loops, not all() of generators: run per state of a structure)
        if type(k) is not str:
            break
    else:
        for s in sigs:
            if id(s) not in VALUE_TYPE_IDS and not is_value_sig(s):
                break
        else:
            return ("s", meta, sigs)
    items = []
    for (k, v), s in zip(meta, spec.metasig, strict=True):
        t = type(v)
        if type(k) is not str or s is not t or t not in VALUE_TYPES or (t is float and (v != v or v == 0.0)):
            return ("i", id(meta))
        items.append((k, id(t), v))
    return ("m", tuple(items))


def _meta_names(spec: Any) -> Any:
    """A state's metadata as the unflatten's code depends on it: its names (a dict-backed
    state's are spelled one by one; the values are read per occurrence from the GraphDef),
    or the very tuple where a name is not an exact str."""
    names = tuple(k for k, _ in spec.metadata)
    return ("n", names) if all(type(k) is str for k in names) else ("i", id(spec.metadata))


def edge_refs(gd: GraphDef) -> list[int]:
    """Per table index, how many edges reference it (more than one: it is shared).
    Kept per GraphDef (``structure_memo``; never mutate it): the flatten and the
    unflatten planners and :func:`~specgraph.codegen.flatten_plan.witnessed_nodes` ask."""
    return structure_memo(gd, "refs", _count_refs)


def _count_refs(gd: GraphDef) -> list[int]:
    refs = [0] * len(gd.table)
    stack: list[Any] = [gd.root]  # pytree edges still to open (the root's too)
    for spec in gd.table:
        if type(spec) is NodeSpec:
            for e in spec[4]:  # (children; read by index in this loop over every edge)
                k = type(e)
                if k is NodeEdge or k is StateEdge:
                    refs[e[1]] += 1
                elif k is PytreeEdge:
                    stack.append(e)
    while stack:
        e = stack.pop()
        k = type(e)
        if k is NodeEdge or k is StateEdge:
            refs[e[1]] += 1
        elif k is PytreeEdge:
            stack.extend(e[3])
    return refs


_REC = object()  # in a chain link's scan: where the next link is (not followed)


def _preorder(children: tuple, rec: int) -> list[Any]:
    """A node's child edges and, after each container, what it holds, in pre-order; the
    child at position ``rec`` (``>= 0``) is :data:`_REC`."""
    stack = list(children)
    if rec >= 0:
        stack[rec] = _REC
    stack.reverse()
    out = []
    while stack:
        e = stack.pop()
        out.append(e)
        if type(e) is PytreeEdge:
            stack.extend(reversed(e[3]))
    return out


class _Scan:
    """Shape keys of a structure's nodes, made bottom-up (see :func:`find_shapes`)."""

    def __init__(self, gd: GraphDef, witnessed: set[int], shared_types: set[type],
                 foreign: bool = False, by_value: bool = True) -> None:
        self.foreign = foreign  # foreign classes may be outlined (the flatten planner's)
        self.equal = _EqualClasses()
        self.by_value = by_value  # statics and metadata by value (guarded code), or by kind only
        self.table = gd.table
        self.refs = edge_refs(gd)
        self.witnessed = witnessed
        self.shared_types = shared_types
        self.key_of: dict[int, int] = {}  # node index -> sid (outlinable subtrees only)
        self.size: dict[int, tuple[int, int, int]] = {}  # node index -> (first slot, slots, entries)
        self.ok: dict[type, bool] = {}  # class -> whether outlined code may read it
        # Per class, read once per scan (the registry and the class dicts do not change
        # while one structure is planned): a node class's kind (see node_kind), a state
        # class's token prefix or None, and its layout's specializable(metadata) if any.
        self.node_kinds: dict[type, int] = {}
        self.state_facts: dict[type, tuple[tuple | None, Any]] = {}

    def node_class_ok(self, t: type) -> bool:
        ok = self.ok.get(t)
        if ok is None:
            ok = self.ok[t] = plain_metaclass(t) and _node_class_ok(t)
        return ok

    def node_kind(self, t: type) -> int:
        """What :meth:`node_ok` asks of node class ``t``: ``0`` never outlined, ``1`` a
        node without per-node metadata (a builtin ``Node``), ``2`` a dict-backed foreign
        node (its key sigs and bookkeeping go into the shape's key)."""
        kind = self.node_kinds.get(t)
        if kind is None:
            impl = reg.node_impl(t)
            if not self.node_class_ok(t) or (not self.foreign and not impl.is_builtin_node):
                kind = 0
            else:
                kind = 1 if impl.dict_node is None else 2
            self.node_kinds[t] = kind
        return kind

    def node_ok(self, spec: NodeSpec) -> bool:
        """A node the planner reads without per-call state: a builtin ``Node`` with str
        attribute names, or a dict-backed foreign node whose bookkeeping is declarative
        (its fields go into the shape's key, see :func:`_node_key`)."""
        kind = self.node_kind(spec.type)
        return kind == 2 or (kind == 1 and spec.sig is None and spec.meta is None)

    def state_class(self, tt: type) -> tuple[tuple | None, Any]:
        """Per state class: its token for a state without metadata (``None``: never
        outlined) and, for a foreign state with a slotted layout, its
        ``specializable(metadata)``."""
        facts = self.state_facts.get(tt)
        if facts is None:
            simpl = reg.state_impl(tt)
            good = self.foreign or simpl is None
            if good:
                known = self.ok.get(tt)
                if known is None:
                    known = self.ok[tt] = _state_class_ok(tt)
                good = known
            check = simpl.layout.specializable \
                if good and simpl is not None and isinstance(simpl.layout, reg.StateLayout) else None
            token = ("S", id(tt), (), tt in self.shared_types) if good else None
            facts = self.state_facts[tt] = (token, check)
        return facts

    def state_ok(self, st: StateSpec) -> bool:
        """A state the planner reads without per-call state: a plain ``State`` class, or a
        foreign state with a layout generated code uses (its per-call checks, the trace
        token and the raw-access checks, are made by the top function and passed in)."""
        token, check = self.state_class(st.type)
        return token is not None and (check is None or bool(check(st.metadata)))

    def scan(self, spec: NodeSpec, rec: int = -1) -> tuple[tuple, tuple[int, ...]] | None:
        """The key tokens of ``spec``'s children, and where its values and table entries sit:
        ``[first slot, slots, entries]`` (the node itself and what its children hold), and
        with ``rec`` (a chain's next link, keyed ``R`` and not followed) the children after it
        again: ``[..., first slot after, slots after, first entry after, entries after]``.
        ``None``: not outlined (an array leaf, a foreign class, a shared object, ...).

        Children come in pre-order, so a self-contained subtree's entries and slots are
        consecutive runs in child order: checked as they come, no sort. (Run once per node
        of the structure: edges and specs are read by index, per-class facts come from the
        scan's caches.)"""
        kind = self.node_kinds.get(spec[1])
        if kind is None:
            kind = self.node_kind(spec[1])
        if kind != 2 and (kind == 0 or spec[6] is not None or spec[5] is not None):
            return None
        table, refs, key_of, size = self.table, self.refs, self.key_of, self.size
        by_value, state_facts = self.by_value, self.state_facts
        i = spec[2]
        lo, n, last = -1, 0, i  # the running slot run and the last entry so far
        out: list[int] = []
        tokens: list[Any] = []
        first_after = 0
        edges: Any = spec[4]  # the children; with a container or the next link, in pre-order
        if rec >= 0 or PytreeEdge in map(type, edges):
            edges = _preorder(edges, rec)
        for e in edges:
            k = type(e)
            if k is StateEdge:
                j = e[1]
                st = table[j]
                if refs[j] != 1 or (last >= 0 and j != last + 1) or type(st) is not StateSpec:
                    return None
                tt = st[1]
                facts = state_facts.get(tt)
                if facts is None:
                    facts = self.state_class(tt)
                token, check = facts
                if token is None or (check is not None and not check(st[3])):
                    return None
                if last < 0:
                    first_after = j
                slot = st[4]
                if n:
                    if slot != lo + n:
                        return None
                else:
                    lo = slot
                n += 1
                last = j
                if st[3]:  # its metadata
                    token = ("S", id(tt), _meta_key(st) if by_value else _meta_names(st), token[3])
                tokens.append(token)
            elif k is StaticEdge:
                if by_value:
                    sig = e[1]
                    # (the common scalars inline: what _static_key answers for them)
                    if (sig is int or sig is str or sig is bool) and type(e[2]) is sig:
                        tokens.append(("v", id(sig), e[2]))
                    else:
                        tokens.append(_static_key(e))
                else:
                    tokens.append(("s", e[1] is ArrayConstant))
            elif k is NodeEdge:
                j = e[1]
                sid = key_of.get(j)
                if sid is None or refs[j] != 1 or (last >= 0 and j != last + 1):
                    return None
                if last < 0:
                    first_after = j
                clo, cn, cm = size[j]
                if cn:
                    if n:
                        if clo != lo + n:
                            return None
                    else:
                        lo = clo
                    n += cn
                last = j + cm - 1
                tokens.append(("N", sid))
            elif k is PytreeEdge:
                p = e[1]
                if (p is not list and p is not tuple and p is not dict) or e[4] is not None:
                    return None
                if p is dict:
                    if not all(type(x) is str for x in e[2]):
                        return None
                    tokens.append(("P", id(p), e[2]))
                else:
                    tokens.append(("P", id(p), len(e[3])))
            elif e is _REC:
                tokens.append("R")
                out += (lo, n, last - i + 1)
                lo, n, last = -1, 0, -1
            else:
                return None  # an array leaf
        if rec < 0:
            return tuple(tokens), (lo, n, last - i + 1)
        return tuple(tokens), (*out, lo, n, first_after, (last - first_after + 1) if last >= 0 else 0)


def find_shapes(gd: GraphDef, outline_min: int, witnessed: set[int], shared_types: set[type],
                foreign: bool = False, by_value: bool = True) -> Shapes:
    """The shapes of ``gd`` that occur at least ``outline_min`` times (``0``: none);
    ``foreign``: of foreign classes too (the flatten planner makes their per-call checks,
    the unflatten planner their per-call contexts, and passes them in). ``by_value=False``:
    statics and metadata count by kind only, not by value (the unflatten reads each
    occurrence's from its GraphDef: its code does not depend on them), but for a state's
    metadata names and a dict-backed node's number of bookkeeping fields (its code spells
    them)."""
    if outline_min <= 0:
        return Shapes({}, {}, {})
    table = gd.table
    sc = _Scan(gd, witnessed, shared_types, foreign, by_value)
    interned: dict[Any, int] = {}
    key_of, size = sc.key_of, sc.size
    counts: dict[int, list[int]] = {}
    scan, equal = sc.scan, sc.equal
    for i in range(len(table) - 1, -1, -1):
        spec = table[i]
        if type(spec) is not NodeSpec:
            continue
        got = scan(spec)
        if got is None:
            continue
        tokens, where = got
        size[i] = cast(tuple[int, int, int], where)  # (first slot, slots, entries): no rec
        t = spec[1]
        nk = None if spec[6] is None and spec[5] is None else _node_key(spec, equal, by_value)
        key = (id(t), spec[3], nk, i in witnessed, t in shared_types, tokens)
        sid = interned.setdefault(key, len(interned))
        key_of[i] = sid
        occ = counts.get(sid)
        if occ is None:
            counts[sid] = [i]
        else:
            occ.append(i)
    refs = sc.refs
    root = gd.root.index if type(gd.root) is NodeEdge else -1
    shapes: dict[int, Shape] = {}
    shape_of: dict[int, int] = {}
    for sid, occ in counts.items():
        occ = [i for i in occ if i != root and refs[i] == 1]  # (a node met twice is inline)
        if len(occ) < outline_min:
            continue
        occ.reverse()
        _, n, m = size[occ[0]]
        shapes[sid] = Shape(sid, occ[0], occ, n, m, table[occ[0]].type.__qualname__)
        for i in occ:
            shape_of[i] = sid
    return Shapes(shapes, shape_of, {i: size[i][0] for i in shape_of}, key_of, size, sc)


@dataclass
class Link:
    """One link of a chain: where its values and objects sit before and after the rest."""

    lid: int
    rec: int  # the position of the next link among the node's children
    nxt: int  # the next link's table index
    before: tuple[int, int]  # (first slot, count) of the values before the rest of the chain
    after: tuple[int, int]  # and after it
    ebefore: tuple[int, int]  # (first index, count): the node itself and the entries before
    eafter: tuple[int, int]


@dataclass
class Chain:
    """``n`` nested links of one shape from node ``head``; ``tail`` is the node past them."""

    head: int
    n: int
    tail: int
    links: list[Link]


def find_chains(gd: GraphDef, min_links: int, witnessed: set[int], shared_types: set[type],
                shapes: Shapes) -> dict[int, Chain]:
    """Chains of at least ``min_links`` nested nodes of one link shape (a node whose one
    child of its own class is the next link), outside the outlined shapes: head -> chain."""
    table = gd.table
    sc = shapes.scan if shapes.scan is not None else _Scan(gd, witnessed, shared_types)
    refs = sc.refs
    links: dict[int, Link] = {}
    interned: dict[Any, int] = {}
    for spec in table:
        if type(spec) is not NodeSpec or spec.index in shapes.shape_of or refs[spec.index] != 1:
            continue  # (a link met twice, at its place in the chain and elsewhere, is inline:
            # the loop keeps no link in a local of its own for a back-reference to name)
        i, t = spec.index, spec.type
        rec = -1
        for p, c in enumerate(spec.children):
            if type(c) is NodeEdge and c.index > i and table[c.index].type is t and refs[c.index] == 1:
                if rec >= 0:
                    rec = -2
                    break
                rec = p
        if rec < 0:
            continue
        got = sc.scan(spec, rec)
        if got is None:
            continue
        tokens, (lb, nb, eb, la, na, ea, nea) = got
        node_key = _node_key(spec, sc.equal, sc.by_value)
        key = (id(t), spec.keys, node_key, rec, i in witnessed, t in shared_types, tokens)
        lid = interned.setdefault(key, len(interned))
        links[i] = Link(lid, rec, spec.children[rec].index, (lb, nb), (la, na), (i, eb), (ea, nea))
    chains: dict[int, Chain] = {}
    inner: set[int] = set()
    for i, link in links.items():  # (in table order: a head before its links)
        if i in inner:
            continue
        run = [link]
        j = link.nxt
        while j in links and links[j].lid == link.lid:
            inner.add(j)
            run.append(links[j])
            j = links[j].nxt
        if len(run) < min_links or not _regular(run):
            continue
        chains[i] = Chain(i, len(run), j, run)
    return chains


def _regular(run: list[Link]) -> bool:
    """The links' values and entries before the rest are consecutive runs, in link order,
    and those after it consecutive runs in reverse order (what the loop splices)."""
    first, last = run[0], run[-1]
    for k, link in enumerate(run):
        back = len(run) - 1 - k
        if link.before[1] and link.before[0] != first.before[0] + k * first.before[1]:
            return False
        if link.after[1] and link.after[0] != last.after[0] + back * first.after[1]:
            return False
        if link.ebefore[0] != first.ebefore[0] + k * first.ebefore[1]:
            return False
        if link.eafter[1] and link.eafter[0] != last.eafter[0] + back * first.eafter[1]:
            return False
    return True
