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
values too), and list/tuple/dict containers with str/int keys, and custom JAX pytrees (a
namedtuple, a registered class: ``_pytree_key``; their flatten and unflatten are user code,
counted as a callback node's, so the update reuses what its guards loaded and the
unflatten builds them in two phases, each in its node's fill, as the reference does). A
chain of nested nodes of one link shape is a loop (``find_chains``; a link may hold its next
link in a container of its: ``children=[next]``, its ``nested``), and so is a chain of
nested containers (``x = [x, State(...)]``, any depth: ``find_container_chains``).

The flatten planner outlines more (``flatten_only=True``):

* Bare array leaves held where the update writes them back (a node's dict, a list, a
  dict, a callback node's ``set_key``). The reference writes arrays node by node in table
  order (observable when one list is reached from two places): an occurrence's nodes are
  consecutive entries, so its array writes are one run of the update's, made by a write
  function of their own called where the occurrence's root sorts among them. An array in
  a tuple (only checked unchanged), held by a dict-backed foreign node, or in a chain's
  link keeps its subtree inline.
* Bare arrays in a custom pytree (a namedtuple's field: never written, the update checks
  each unchanged, the walker rebuilds the container of a changed one). The update's
  outlined code keeps each occurrence's array, and the top function checks them against
  their slots after every guard and before any write (``check_kept_same``: one loop over
  a list's items). So an occurrence holding one is outlined only where the top function
  calls it or loops over it: no outlinable subtree holds one (``checked``), nor a chain's
  link.
* Callback node types (``register_graph_node_type``): the outlined code calls the
  registered flatten once per occurrence, where the unrolled code does, and guards its
  answer the same way (count, each key, the metadata: all in the shape's key as their
  guards compare them). A body that calls one keeps, in the update, the locals its writes
  name instead of loading again (a second call of user code: ``ShapeFn.kept``), and so
  does a chain's loop over links calling it (``chain_loop``'s ``kept``). Links running user
  code after their next link are read in two loops (``find_chains``' ``ordered``): what
  precedes the next link, link by link, then, after the rest of the chain, what follows it,
  deepest link first (``chain_after``): the reference's order of user calls.

The unflatten planner outlines bare arrays as the values they are (``arrays``: read from
their slots where the unrolled code reads them, a custom pytree's built into it by its
treedef), not in a chain's link (the flatten does not loop over those). Callback node types it outlines
(``callbacks=True``) in two phases only (unflatten_plan.py, ``_phased_objects_then_fills``):
the reference calls every ``create_empty`` in table order before any ``set_key``, and
``set_key`` gets children not yet filled, which a builder making an occurrence bottom-up
where it is used would not keep; an occurrence's ``_create`` function, then its ``_fill``
function, each called at its place in table order, do.

What foreign classes check once per call is made by the top function: the
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
from .._sameness import VALUE_TYPE_IDS, VALUE_TYPES, aux_data, is_value_sig, key_sig, match_mode, value_sig
from .analysis import kept, structure_memo
from .classfacts import plain_metaclass, plain_state_reads

__all__ = ["Chain", "Link", "Shape", "Shapes", "edge_refs", "find_chains", "find_container_chains",
           "find_container_shapes", "find_shapes"]


@dataclass
class Shape:
    """One outlined shape: its occurrences (node indices, in table order) and its size."""

    sid: int
    rep: int  # the occurrence its function is planned from
    occurrences: list[int] = field(default_factory=list)
    nslots: int = 0  # value slots of one occurrence (contiguous)
    nindices: int = 0  # table entries of one occurrence (contiguous, the root first)
    type_name: str = ""
    #: positions in the occurrences' static vectors (:meth:`Shapes.vec`) whose values
    #: differ between occurrences: its functions take them as parameters (``find_shapes``'
    #: ``params``); empty: every occurrence has the same statics, bound as constants
    params: tuple[int, ...] = ()
    #: a shape of containers (find_container_shapes): the representative occurrence's edge;
    #: ``rep`` and ``occurrences`` are then its first table entry and the occurrences' ids
    edge: Any = None


@dataclass
class Shapes:
    """The shapes of one structure that are outlined, and where they occur."""

    shapes: dict[int, Shape]  # sid -> shape (only the outlined ones)
    shape_of: dict[int, int]  # node index -> sid, for every occurrence of an outlined shape
    slot_lo: dict[int, int]  # node index -> the first value slot of its subtree
    key_of: dict[int, int] = field(default_factory=dict)  # every outlinable subtree's sid
    size: dict[int, tuple[int, int, int]] = field(default_factory=dict)  # (first slot, slots, entries)
    scan: _Scan | None = None
    #: exact sid (``key_of``) -> the values of its parameter statics, in scan order
    #: (``find_shapes``' ``params``; nested subtrees' inline at their place)
    vec_of: dict[int, tuple[Any, ...]] = field(default_factory=dict)
    #: exact sid -> its family (``find_shapes``' ``params``): find_chains keys a link's
    #: nested subtrees by it, their statics' values in the link's own vector
    fam_of: dict[int, int] = field(default_factory=dict)
    #: shapes of containers (find_container_shapes): id(edge) -> sid, for every occurrence
    cshape_of: dict[int, int] = field(default_factory=dict)
    #: id(edge) -> (first slot, slots, first entry, entries) of every keyed container
    csize: dict[int, tuple[int, int, int, int]] = field(default_factory=dict)
    #: id(edge) -> the values of a keyed container's parameter statics, in pre-order (its
    #: nodes' vectors and its nested containers' in place): find_container_shapes' ``params``
    cvec: dict[int, tuple[Any, ...]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.shapes)

    def vec(self, i: int) -> tuple[Any, ...]:
        """The parameter statics of the subtree at node ``i``, in scan order."""
        return self.vec_of.get(self.key_of[i], ())

    def cvec_of(self, edge: Any) -> tuple[Any, ...]:
        """The parameter statics of container ``edge`` (an occurrence), in pre-order."""
        return self.cvec.get(id(edge), ())

    def clayout(self, edge: Any) -> tuple[dict[Any, int], dict[Any, int]]:
        """:meth:`layout` of container ``edge``: where each parameter static it holds (its
        nested containers' and nodes' too) sits in its vector (:meth:`cvec_of`), by the
        static edge's id, and where the vector of each node (by index) and nested container
        (by ``("c", id(edge))``) it holds starts: the order find_container_shapes made it in."""
        pos: dict[Any, int] = {}
        off: dict[Any, int] = {}
        vec = self.vec
        n = 0
        for e in _preorder(edge[3], -1):
            k = type(e)
            if k is StaticEdge:
                if _is_param(e):
                    pos[id(e)] = n
                    n += 1
            elif k is PytreeEdge:
                off[("c", id(e))] = n  # (its own statics follow, in pre-order)
            elif k is NodeEdge:
                off[e[1]] = n
                m = len(vec(e[1])) if e[1] in self.key_of else 0
                if m:
                    npos, noff = self.layout(e[1])
                    pos.update((x, n + q) for x, q in npos.items())
                    off.update((x, n + q) for x, q in noff.items())
                    n += m
        return pos, off

    def layout(self, i: int, skip: int = -1) -> tuple[dict[int, int], dict[int, int]]:
        """Where each parameter static of node ``i``'s subtree sits in its vector (by the
        edge's id) and where each node below it starts: the scan's order, so
        ``vec(i)[pos[id(edge)]]`` is that edge's value and ``vec(j)`` of a node ``j`` below
        is the slice starting at ``off[j]``. ``skip``: a chain's next link, a child of ``i``
        left out (a link's vector, :attr:`Link.vec`, is its own statics' and its other
        subtrees'). A node whose vector is empty holds no parameter static: not opened."""
        pos: dict[int, int] = {}
        off: dict[int, int] = {}
        assert self.scan is not None
        table, vec = self.scan.table, self.vec
        work = [(i, 0)]
        while work:
            j, base = work.pop()
            edges: Any = table[j][4]
            if PytreeEdge in map(type, edges):
                edges = _preorder(edges, -1)
            n = base
            for e in edges:
                k = type(e)
                if k is StaticEdge:
                    if _is_param(e):
                        pos[id(e)] = n
                        n += 1
                elif k is NodeEdge and e[1] != skip:
                    off[e[1]] = n
                    m = len(vec(e[1]))
                    if m:
                        work.append((e[1], n))
                        n += m
        return pos, off


#: the static types whose values may be an outlined function's parameters: the values an
#: int/str/bool guard compares (``("v", id(type), value)`` tokens, exact type)
_PARAM_IDS = frozenset(map(id, (int, str, bool)))


def _is_param(e: Any) -> bool:
    """A static edge whose value may be a parameter (see :data:`_PARAM_IDS`)."""
    sig = e[1]
    return (sig is int or sig is str or sig is bool) and type(e[2]) is sig


def _family(key: tuple, fam_of: dict[int, int], vec_of: dict[int, tuple]) -> tuple[Any, tuple]:
    """A shape key without its parameter statics' values (its nested subtrees' by their
    families), and those values in scan order (the nested subtrees' at their place)."""
    tokens: list[Any] = []
    vec: list[Any] = []
    for t in key[-1]:
        if type(t) is tuple and len(t) == 3 and t[0] == "v" and t[1] in _PARAM_IDS:
            tokens.append(("v", t[1]))
            vec.append(t[2])
        elif type(t) is tuple and len(t) == 2 and t[0] == "N":
            tokens.append(("N", fam_of[t[1]]))
            vec.extend(vec_of[t[1]])
        else:
            tokens.append(t)
    return (*key[:-1], tuple(tokens)), tuple(vec)


def _link_like(table: Any, refs: Any, i: int) -> bool:
    """Node ``i`` holds a node of its own class met once: a link :func:`find_chains` may
    make a chain of."""
    return _next_link(table, refs, i) >= 0


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
        # A callback node type: its registered flatten is called per occurrence by the
        # outlined code, exactly where the unrolled code calls it, and its answer guarded
        # the same way (count, each key, the metadata: see callback_plan.py).
        return True
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
    or only how many there are (the unflatten reads each occurrence's from its GraphDef);
    a callback node's keys and metadata as its guards compare them (flatten), or its keys
    as the unflatten's code spells them (an exact str/int by value, any other read from S)."""
    impl = reg.node_impl(spec.type)
    if not impl.is_builtin_node and impl.dict_node is None:
        if not by_value:  # (the unflatten: an exact str/int key is spelled, any other and
            # the metadata are read per occurrence from its GraphDef)
            return ("cb", tuple([(id(type(k)), k) if type(k) is str or type(k) is int else "S"
                                 for k in spec.keys]))
        # A callback node: its keys and metadata, as its guards (guard_cb_key, guard_field)
        # compare them, so two occurrences of one key are guarded by the same code. (An
        # exact str key, no metadata: what _guard_key answers, in line; run per node.)
        keys = tuple([("s", k) if type(k) is str
                      else _guard_key(k, "str" if isinstance(k, str) else match_mode(k, key_sig(k)))
                      for k in spec.keys])
        meta = spec.meta
        return ("cb", keys,
                ("i", id(None)) if meta is None else _guard_key(meta, match_mode(meta, value_sig(meta))))
    if spec.sig is None and spec.meta is None:
        return None
    dn = impl.dict_node
    if dn is None or dn.fields is None:
        return ("i", id(spec))  # (not outlined: node_ok refuses it)
    if not by_value:
        return (spec.sig, len(spec.meta))
    return (spec.sig, tuple([_field_key(f, v, equal) for f, v in zip(dn.fields, spec.meta, strict=True)]))


def _guard_key(v: Any, mode: str) -> Any:
    """A callback node's key or metadata as its guard matches it (``mode``): an exact str
    by value (a str subclass: the very object), same exact type and ``==`` by type and
    value, ``SAME`` item by item by sig and value, else the very object."""
    if mode == "str":
        return ("s", v) if type(v) is str else ("i", id(v))
    if mode == "value":
        return _hashable(("v", id(type(v)), v), v)
    if mode == "same":
        return _hashable(("t", value_sig(v), v), v)
    return ("i", id(v))


def _pytree_key(e: Any, by_value: bool) -> Any:
    """A custom pytree's edge (a namedtuple, a registered class) as its guards read it.

    The flatten's code binds the representative occurrence's treedef and compares an
    occurrence's with ``!=`` (then, aux data present, ``SAME_AUX`` with the representative's
    aux data): two occurrences share that code when their guards answer alike. Without aux
    data (``sig is None``) a one-level treedef is its container type, kind and arity, all
    compared by identity or count: keyed by the treedef itself (its ``==`` and hash run no
    user code). With aux data: the container type, the arity and the aux data as SAME
    reads it (sig and value where that means indistinguishable, else the very object), so
    the treedef's ``==`` meets the same aux data either way. The children's path keys go in
    too, with their sig (where a keys function may name them, the flatten compares them key
    by key by the rule for statics). The unflatten (``by_value=False``) reads each
    occurrence's treedef from its GraphDef: only the arity and the path keys count there."""
    ptype, keys, kids, sig = e[1], e[2], e[3], e[4]
    if not by_value:
        return _hashable(("PT", len(kids), keys), e)
    # The path keys as the guard on them (SAME) reads them: 1 and True are two keys.
    ksig = value_sig(keys)
    keys = (ksig, keys) if is_value_sig(ksig) else ("i", id(keys))
    if sig is None:
        return _hashable(("PT", ptype, keys), e)
    aux = aux_data(ptype)
    akey = _hashable(("t", sig, aux), aux) if is_value_sig(sig) else ("i", id(aux))
    return _hashable(("PT", id(treedef_type(ptype)), ptype.num_nodes, len(kids), akey, keys), e)


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


class _Inline(tuple):
    """In a period link's scan (see :func:`_period_path`): a node on the way from the link
    to its next link (``(index,)``), read inline by the link's body, its children following it."""

    __slots__ = ()


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
                 foreign: bool = False, by_value: bool = True, flatten_only: bool = False,
                 callbacks: bool = False, arrays: bool = False) -> None:
        self.foreign = foreign  # foreign classes may be outlined (the flatten planner's)
        # bare array leaves and callback node types may be outlined (the flatten planner's)
        self.flatten_only = flatten_only
        # bare array leaves may be outlined: the flatten planner's, and the unflatten
        # planner's (``arrays``: there an array is only a value read from its slot)
        self.arrays = arrays or flatten_only
        # callback node types may be outlined (the unflatten planner's two-phase builders)
        self.callbacks = callbacks or flatten_only
        self.user: set[int] = set()  # outlinable subtrees holding a callback node (user code)
        # and a state whose value read is user code (a chain's link holding one after its
        # next link is no ordered loop's: find_chains)
        self.user_reads: set[int] = set()
        self.with_arrays: set[int] = set()  # outlinable subtrees holding a bare array leaf
        # outlinable subtrees holding a bare array in a custom pytree (the update checks it
        # unchanged, per occurrence, in the top function: none is outlined inside another)
        self.checked: set[int] = set()
        self.last_checked = False  # the subtree last scanned holds one
        self.last_user = False  # the subtree last scanned holds a callback node
        # and, a chain's link, runs user code after its next link (a callback node, or a
        # state whose value read is user code: a ``value`` property)
        self.last_user_after = False
        self.last_reads = False  # the subtree last scanned reads a state's value by user code
        self.plain_reads: dict[type, bool] = {}  # state class -> its value read runs no user code
        self.last_arrays = False  # and a bare array leaf
        self.equal = _EqualClasses()
        self.by_value = by_value  # statics and metadata by value (guarded code), or by kind only
        self.table = gd.table
        self.refs = edge_refs(gd)
        self.witnessed = witnessed
        self.shared_types = shared_types
        self.key_of: dict[int, int] = {}  # node index -> sid (outlinable subtrees only)
        self.node_key_of: dict[int, Any] = {}  # node index -> its _node_key (find_shapes')
        self.keys: list[Any] = []  # sid -> its key (find_shapes'; see split)
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
        node (its key sigs and bookkeeping go into the shape's key), ``3`` a callback node
        type (its keys and metadata do: the flatten planner's only)."""
        kind = self.node_kinds.get(t)
        if kind is None:
            impl = reg.node_impl(t)
            if not self.node_class_ok(t) or (not self.foreign and not impl.is_builtin_node):
                kind = 0
            else:
                kind = 1 if impl.is_builtin_node else 2 if impl.dict_node is not None \
                    else 3 if self.callbacks else 0
            self.node_kinds[t] = kind
        return kind

    def node_ok(self, spec: NodeSpec) -> bool:
        """A node the planner reads without per-call state: a builtin ``Node`` with str
        attribute names, or a dict-backed foreign node whose bookkeeping is declarative
        (its fields go into the shape's key, see :func:`_node_key`)."""
        kind = self.node_kind(spec.type)
        return kind >= 2 or (kind == 1 and spec.sig is None and spec.meta is None)

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

    def scan(self, spec: NodeSpec, rec: int = -1, inner: Any = None) -> tuple[tuple, tuple[int, ...]] | None:
        """The key tokens of ``spec``'s children, and where its values and table entries sit:
        ``[first slot, slots, entries]`` (the node itself and what its children hold), and
        with ``rec`` (a chain's next link, keyed ``R`` and not followed) the children after it
        again: ``[..., first slot after, slots after, first entry after, entries after]``;
        ``inner``: the next link's edge, held in the container at position ``rec``.
        ``None``: not outlined (an array leaf, a foreign class, a shared object, ...).

        Children come in pre-order, so a self-contained subtree's entries and slots are
        consecutive runs in child order: checked as they come, no sort. (Run once per node
        of the structure: edges and specs are read by index, per-class facts come from the
        scan's caches.)"""
        kind = self.node_kinds.get(spec[1])
        if kind is None:
            kind = self.node_kind(spec[1])
        if kind == 0 or (kind == 1 and (spec[6] is not None or spec[5] is not None)):
            return None
        if kind == 2 and ArrayEdge in map(type, spec[4]):
            return None  # (an array held by a dict-backed node: its writes are the layout's)
        return self.scan_children(spec[4], rec, spec[2], kind == 3, inner)

    def split(self, spec: NodeSpec, rec: int) -> tuple[tuple, tuple[int, ...], Any] | None:
        """:meth:`scan` of ``spec`` with ``rec`` (a chain's next link), taken from what
        :func:`find_shapes` found of it (its key, its size and the next link's) instead of
        scanning it again, and its node key; ``last_user`` and ``last_user_after`` set as
        the scan sets them. ``None``: not known that way (the scan answers): the node is not
        outlinable whole, holds a bare array (the scan with ``rec`` refuses what is
        outlinable whole, see ``with_arrays``) or a container (its tokens are in pre-order,
        not one per child), or the next link has no value slot (nothing tells the slots
        before it from those after it).

        Exact: outlinable whole, ``spec``'s entries are ``i``, those before the next link
        ``j``, ``j``'s, those after it, one consecutive run, and so are its slots, in child
        order; the scan with ``rec`` makes each other child's token as the whole scan made
        it, ``R`` for the next link, and tests a subset of what the whole scan tested (no
        child's entries or slots need follow the next link's)."""
        i = spec[2]
        sid = self.key_of.get(i)
        if sid is None or i in self.with_arrays or len(self.keys) <= sid:
            return None
        key = self.keys[sid]
        tokens = key[5]
        children = spec[4]
        if len(tokens) != len(children):
            return None
        j = children[rec][1]
        clo, cn, cm = self.size[j]
        if not cn:
            return None
        user = self.node_kinds.get(spec[1]) == 3
        after = False
        users, reads, plain_reads, table = self.user, self.user_reads, self.plain_reads, self.table
        for p, e in enumerate(children):
            k = type(e)
            if p == rec:
                continue
            if k is NodeEdge:
                c = e[1]
                if c in users:
                    user = True
                    if p > rec:
                        after = True
                elif p > rec and c in reads:
                    after = True
            elif k is StateEdge:
                if p > rec:
                    plain = plain_reads.get(table[e[1]][1])
                    if plain is None:
                        return None
                    if not plain:
                        after = True
            elif k is PytreeEdge:
                return None
        lo, n, m = self.size[i]
        nb = clo - lo
        na = n - nb - cn
        nea = i + m - j - cm
        self.last_user = user
        self.last_user_after = after
        return ((*tokens[:rec], "R", *tokens[rec + 1:]),
                (lo if nb else -1, nb, j - i, clo + cn if na else -1, na, j + cm if nea else 0, nea),
                key[2])

    def scan_children(self, children: tuple, rec: int, i: int, user: bool = False, inner: Any = None,
                      edges: list[Any] | None = None) -> tuple[tuple, tuple[int, ...]] | None:
        """:meth:`scan` of the children of node ``i`` (``user``: a callback node), or with
        ``i = -1`` of a container (a link of a chain of containers, see
        :func:`find_container_chains`): its entries before ``rec`` then start at its first
        one, ``[..., first entry, entries]`` (``-1, 0``: none), not at the node's own.
        ``inner``: the next link is that edge, in the container at ``rec`` (see
        :func:`_find_next`). ``edges``: the edges to scan, in pre-order, the next link
        :data:`_REC` (a period link's, see :func:`_period_edges`: the nodes on the way to it
        :class:`_Inline`)."""
        table, refs, key_of, size = self.table, self.refs, self.key_of, self.size
        by_value, state_facts = self.by_value, self.state_facts
        lo, n, last = -1, 0, i  # the running slot run and the last entry so far
        start = i  # the first entry before rec (a container's: its first child's)
        before = True  # not past rec yet
        arrays = False
        checked = False
        user_after = False
        reads = False
        out: list[int] = []
        tokens: list[Any] = []
        first_after = 0
        seq: Any = edges
        if seq is not None:
            pass
        elif inner is not None:  # (the next link in a container: marked where it sits)
            seq = [_REC if e is inner else e for e in _preorder(children, -1)]
        elif PytreeEdge in map(type, children):  # with a container or the next link, in pre-order
            seq = _preorder(children, rec)
        elif rec >= 0:  # (no container: the children in order, the next link marked)
            seq = list(children)
            seq[rec] = _REC
        else:
            seq = children
        for e in seq:
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
                    if start < 0 and before:
                        start = j
                slot = st[4]
                if n:
                    if slot != lo + n:
                        return None
                else:
                    lo = slot
                n += 1
                last = j
                plain = self.plain_reads.get(tt)
                if plain is None:
                    plain = self.plain_reads[tt] = plain_state_reads(tt)
                if not plain:
                    reads = True
                    if not before:
                        user_after = True
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
                    if start < 0 and before:
                        start = j
                if j in self.user:
                    user = True
                    if not before:
                        user_after = True
                if j in self.user_reads:  # (a state below it: read where the walk meets it)
                    reads = True
                    if not before:
                        user_after = True
                if j in self.checked:
                    return None  # (its update checks are the top function's: see FlattenPlanner._unchanged)
                if j in self.with_arrays:
                    if rec >= 0:
                        return None  # (a chain's link: its writes are states' only)
                    arrays = True
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
                if p is not list and p is not tuple and p is not dict:
                    if ArrayEdge in map(type, e[3]):
                        # An array in a custom pytree: never written, the update checks it
                        # unchanged (the flatten planner's only, not in a chain's link; the
                        # check is made per occurrence by the top function, from the locals
                        # the update's outlined code keeps).
                        if not self.arrays or rec >= 0:
                            return None
                        # (the unflatten's: only values, built into the container by its
                        # treedef's unflatten; nothing to check)
                        checked = self.flatten_only
                    tokens.append(_pytree_key(e, by_value))
                    user = True  # (its flatten and unflatten are user code, as a callback node's)
                    if not before:
                        user_after = True
                    continue
                if e[4] is not None:
                    return None
                if p is dict:
                    if not all(type(x) is str for x in e[2]):
                        return None
                    tokens.append(("P", id(p), e[2]))
                else:
                    if p is tuple and ArrayEdge in map(type, e[3]):
                        return None  # (an array in a tuple: the update checks it, writes nothing)
                    tokens.append(("P", id(p), len(e[3])))
            elif k is _Inline:
                # A node on the way to a period link's next link (a builtin Node without
                # metadata), read by the link's body: its class and keys, then its children.
                j = e[0]
                st = table[j]
                if refs[j] != 1 or j != last + 1 or self.node_kind(st[1]) != 1 or st[5] is not None \
                        or st[6] is not None:
                    return None
                last = j
                tokens.append(("I", id(st[1]), st[3], j in self.witnessed, st[1] in self.shared_types))
            elif e is _REC:
                tokens.append("R")
                if i >= 0:
                    out += (lo, n, last - i + 1)
                else:  # (a container: its first entry too)
                    out += (lo, n, start, (last - start + 1) if start >= 0 else 0)
                lo, n, last = -1, 0, -1
                before = False
            elif k is ArrayEdge and self.arrays and rec < 0:
                # A bare array (written back into its list, dict or node by the update, in
                # the reference's order: see FlattenPlanner._plan_shape), never in a chain's
                # link (the chain's writes are states' only). The unflatten's: a value read
                # from its slot, where the unrolled code reads it (not in a link either: the
                # flatten would not loop over such a chain).
                slot = e[1]
                if n:
                    if slot != lo + n:
                        return None
                else:
                    lo = slot
                n += 1
                arrays = True
                tokens.append("A")
            else:
                return None  # an array leaf (in a chain's link), or another edge
        self.last_user = user
        self.last_user_after = user_after
        self.last_reads = reads
        self.last_arrays = arrays
        self.last_checked = checked
        if rec < 0:
            return tuple(tokens), (lo, n, last - i + 1)  # (of a node only)
        return tuple(tokens), (*out, lo, n, first_after, (last - first_after + 1) if last >= 0 else 0)


    def scan_container(self, e: Any, ckey: dict[int, int],
                       csize: dict[int, tuple[int, int, int, int]]) -> Any:
        """The key of container edge ``e`` (see :func:`find_container_shapes`), with its
        ``(first slot, slots, first entry, entries)`` put in ``csize``; ``None``: none."""
        p = e[1]
        if (p is not list and p is not tuple and p is not dict) or e[4] is not None:
            return None
        keys = e[2]
        if p is dict:
            for k in keys:
                if type(k) is not str:
                    return None
        table, refs, key_of, size = self.table, self.refs, self.key_of, self.size
        state_facts = self.state_facts
        tokens: list[Any] = [("P", id(p), keys if p is dict else len(keys))]
        lo, n, first, last = -1, 0, -1, -1
        defined: dict[int, int] = {}  # a state met more than once: its position among those
        met: dict[int, int] = {}  # and the edges reaching it here
        by_value = self.by_value
        for c in e[3]:
            k = type(c)
            if k is StaticEdge:
                if not by_value:  # (the unflatten: its builder reads each occurrence's statics)
                    tokens.append(("s", c[1] is ArrayConstant))
                    continue
                sig = c[1]
                if (sig is int or sig is str or sig is bool) and type(c[2]) is sig:
                    tokens.append(("v", id(sig), c[2]))
                else:
                    tokens.append(_static_key(c))
                continue
            if k is StateEdge:
                j = c[1]
                if j in defined:
                    met[j] += 1
                    tokens.append(("B", defined[j]))
                    continue
                st = table[j]
                if type(st) is not StateSpec:
                    return None
                facts = state_facts.get(st[1])
                if facts is None:
                    facts = self.state_class(st[1])
                token, check = facts
                if token is None or (check is not None and not check(st[3])):
                    return None
                if refs[j] != 1:
                    defined[j] = len(defined)
                    met[j] = 1
                if st[3]:
                    token = ("S", id(st[1]), _meta_key(st) if by_value else _meta_names(st), token[3])
                tokens.append(token)
                clo, cn, cfirst, cm = st[4], 1, j, 1
            elif k is NodeEdge:
                j = c[1]
                sid = key_of.get(j)
                if sid is None or refs[j] != 1 or j in self.user or j in self.with_arrays:
                    return None
                clo, cn, cm = size[j]
                cfirst = j
                tokens.append(("N", sid))
            elif k is PytreeEdge:
                sid = ckey.get(id(c))
                if sid is None:
                    return None
                clo, cn, cfirst, cm = csize[id(c)]
                tokens.append(("C", sid))
            else:
                return None  # (an array leaf: its writes go by its owner, kept inline)
            if cm:
                if last >= 0 and cfirst != last + 1:
                    return None
                if first < 0:
                    first = cfirst
                last = cfirst + cm - 1
            if cn:
                if n:
                    if clo != lo + n:
                        return None
                else:
                    lo = clo
                n += cn
        for j, times in met.items():
            if refs[j] != times:
                return None  # (a state met outside too: sharing stays with the enclosing code)
        csize[id(e)] = (lo, n, first, (last - first + 1) if first >= 0 else 0)
        return tuple(tokens)


def find_shapes(gd: GraphDef, outline_min: int, witnessed: set[int], shared_types: set[type],
                foreign: bool = False, by_value: bool = True, flatten_only: bool = False,
                callbacks: bool = False, params: bool = False, arrays: bool = False) -> Shapes:
    """The shapes of ``gd`` that occur at least ``outline_min`` times (``0``: none);
    ``foreign``: of foreign classes too (the flatten planner makes their per-call checks,
    the unflatten planner their per-call contexts, and passes them in). ``by_value=False``:
    statics and metadata count by kind only, not by value (the unflatten reads each
    occurrence's from its GraphDef: its code does not depend on them), but for a state's
    metadata names and a dict-backed node's number of bookkeeping fields (its code spells
    them). ``flatten_only``: bare array leaves and callback node types too (the flatten
    planner's: see the module docstring). ``callbacks``: callback node types too, not bare
    arrays (the unflatten planner's two-phase builders: see unflatten_plan.py). ``arrays``:
    bare array leaves too, as values only (the unflatten planner's: a node's, a list's, a
    custom pytree's; not in a chain's link).
    ``params`` (with ``by_value``): subtrees differing only in the values of int/str/bool
    statics (a layer's index, a tag) are one shape whose functions take the values that
    differ as parameters, each occurrence's from its call (or its loop's tuple): guarded as
    exactly, generated once (``key_of`` stays exact: chains compare links by it)."""
    if outline_min <= 0:
        return Shapes({}, {}, {})
    sc = _Scan(gd, witnessed, shared_types, foreign, by_value, flatten_only, callbacks, arrays)
    facts = kept(gd)
    known = None
    if facts is not None and foreign and not by_value and not flatten_only:
        known = facts.get(_FLATTEN_SCAN)
        if known is not None and not _derivable(sc, known):
            known = None
    try:
        out = _find_shapes(gd, outline_min, sc, known, params)
    except _NotDerived:
        sc = _Scan(gd, witnessed, shared_types, foreign, by_value, flatten_only, callbacks, arrays)
        out = _find_shapes(gd, outline_min, sc, None, params)
    if facts is not None and foreign and by_value and flatten_only:
        facts[_FLATTEN_SCAN] = sc  # (for the unflatten planner's scan of this GraphDef)
    return out


#: Where :func:`find_shapes` keeps the flatten planner's scan of a GraphDef (``kept``).
_FLATTEN_SCAN = "flatten_scan"


class _NotDerived(Exception):
    """A node the known scan outlines but this one does not (cannot be: a safety net)."""


def _derivable(sc: _Scan, known: _Scan) -> bool:
    """Whether the unflatten's scan ``sc`` (structure only: ``by_value=False``; bare arrays
    as values with ``arrays``) may take its outcome per node from ``known``, the flatten
    planner's scan of the very same GraphDef (``flatten_only``, by value), when every class
    ``known`` read reads the same now. Then a node outlinable there is outlinable here (but,
    without ``arrays``, one holding a bare array), with as many arrays (its class's kind,
    its states' classes and ``specializable`` are read alike, and every other refusal is
    the same test of the same structure, or one this scan does not make: a node holding one
    whose custom pytree holds an array, ``checked``, is the flatten's refusal only, and
    derived it stays inline here too); and two nodes of one key
    there have one key here (every part of this key is a function of that one's: a
    static's kind of its sig, a state's metadata names of its metadata, a node's number of
    bookkeeping fields of their values, a callback node's spelled keys of its guarded keys,
    a child's sid of its sid, a custom pytree's arity and path keys of its treedef and
    path keys; the witnessed and shared sets only split keys there). A state whose value
    read is user code is one there exactly when it is here (``user_reads``: its class's
    ``plain_state_reads``, asked again).

    Refused: ``sc`` without callback node types (``callbacks=False``) where the structure
    has one: ``sc`` outlines no node holding one but a node holding a custom pytree, and
    ``known.user`` holds both. (The unflatten planner never asks so: without callbacks it
    outlines only where no callback node is, see ``unflatten_order_free``.)"""
    if known.table is not sc.table or not known.flatten_only or not known.foreign or not known.by_value:
        return False
    for t, kind in known.node_kinds.items():
        if (kind == 3 and not sc.callbacks) or sc.node_kind(t) != kind:
            return False
    for tt, (token, check) in known.state_facts.items():
        now, check_now = sc.state_class(tt)
        if (now is None) != (token is None) or check_now is not check:
            return False
    plain_reads = sc.plain_reads
    for tt, plain in known.plain_reads.items():
        now_plain = plain_reads.get(tt)
        if now_plain is None:
            now_plain = plain_reads[tt] = plain_state_reads(tt)
        if now_plain is not plain:
            return False
    return True


def _find_shapes(gd: GraphDef, outline_min: int, sc: _Scan, known: _Scan | None,
                 params: bool = False) -> Shapes:
    """:func:`find_shapes` with the scan ``sc``; ``known``: a scan it may derive from (see
    :func:`_derivable`): only one node per key of ``known`` is scanned, the others take
    that node's key and their own size from ``known``; ``params``: :func:`find_shapes`'."""
    table = gd.table
    interned: dict[Any, int] = {}
    key_of, size, node_key_of = sc.key_of, sc.size, sc.node_key_of
    counts: dict[int, list[int]] = {}
    scan, equal = sc.scan, sc.equal
    by_value, witnessed, shared_types = sc.by_value, sc.witnessed, sc.shared_types
    derived: dict[int, int] = {}  # known's sid -> sid
    f: int | None = None
    if known is not None:
        kkey, ksize, karrays, kuser = known.key_of, known.size, known.with_arrays, known.user
        kreads = known.user_reads
    for i in range(len(table) - 1, -1, -1):
        spec = table[i]
        if type(spec) is not NodeSpec:
            continue
        if known is not None:
            f = kkey.get(i)
            if f is None or (i in karrays and not sc.arrays):
                continue
            sid = derived.get(f)
            if sid is not None:
                size[i] = ksize[i]
                if i in kuser:
                    sc.user.add(i)
                if i in kreads:
                    sc.user_reads.add(i)
                if i in karrays:
                    sc.with_arrays.add(i)
                key_of[i] = sid
                counts[sid].append(i)
                continue
        got = scan(spec)
        if got is None:
            if known is not None:
                raise _NotDerived
            continue
        tokens, where = got
        if known is not None and (where != ksize[i] or sc.last_arrays != (i in karrays)
                                  or sc.last_user != (i in kuser)
                                  or sc.last_reads != (i in kreads)):
            raise _NotDerived
        size[i] = cast(tuple[int, int, int], where)  # (first slot, slots, entries): no rec
        t = spec[1]
        if sc.last_user:
            sc.user.add(i)
        if sc.last_reads:
            sc.user_reads.add(i)
        if sc.last_arrays:
            sc.with_arrays.add(i)
        if sc.last_checked:
            sc.checked.add(i)
        nk = None if spec[6] is None and spec[5] is None and sc.node_kinds.get(t) != 3 \
            else _node_key(spec, equal, by_value)
        key = (id(t), spec[3], nk, i in witnessed, t in shared_types, tokens)
        sid = interned.setdefault(key, len(interned))
        key_of[i] = sid
        node_key_of[i] = nk
        occ = counts.get(sid)
        if occ is None:
            counts[sid] = [i]
        else:
            occ.append(i)
        if f is not None:
            derived[f] = sid
    refs = sc.refs
    root = gd.root.index if type(gd.root) is NodeEdge else -1
    shapes: dict[int, Shape] = {}
    shape_of: dict[int, int] = {}
    vec_of: dict[int, tuple] = {}
    members: dict[int, list[int]] = {}  # family -> its exact sids
    if params and by_value:
        fam_of: dict[int, int] = {}
        families: dict[Any, int] = {}
        for key, sid in interned.items():  # (children's keys were made before their parents')
            if _link_like(table, refs, counts[sid][0]):
                # A node holding one of its own class (a chain's link, see find_chains):
                # its family is its exact key, its vector empty (its statics are constants
                # of every occurrence; its vector would hold the statics of every link
                # below it: quadratic in a chain's length). Merged, the links at one depth
                # of two chains differing only in a static would be a shape each (with as
                # many parameters as the links below them): no chain loop, and past the
                # recursion limit. (find_chains makes a chain's links' own family keys.)
                fkey, vec_of[sid] = (key, sid), ()
            else:
                fkey, vec_of[sid] = _family(key, fam_of, vec_of)
            fam = fam_of[sid] = families.setdefault(fkey, len(families))
            members.setdefault(fam, []).append(sid)
        counts = {fam: [i for sid in sids for i in counts[sid]] for fam, sids in members.items()}
    # Links of shapes (nodes holding the next link of a chain): their occurrences' next links.
    nxt: dict[int, int] = {}
    for occ in counts.values():
        if len(occ) >= outline_min and _next_link(table, refs, occ[0]) >= 0:  # (alike: all or none)
            for i in occ:
                nxt[i] = _next_link(table, refs, i)
    long = _long_runs(nxt, max(_NEST_MAX, outline_min)) if nxt else set()
    for sid, occ in counts.items():
        # (a node met twice is inline; a link of a long chain is the chain's loop's)
        occ = sorted(i for i in occ if i != root and refs[i] == 1 and i not in long)
        if len(occ) < outline_min:
            continue
        _, n, m = size[occ[0]]
        varying: tuple[int, ...] = ()
        if len(members.get(sid, ())) > 1:
            vecs = {vec_of[key_of[i]] for i in occ}
            if len(vecs) > 1:
                first = next(iter(vecs))
                varying = tuple(p for p in range(len(first)) if any(v[p] != first[p] for v in vecs))
        shapes[sid] = Shape(sid, occ[0], occ, n, m, table[occ[0]].type.__qualname__, varying)
        for i in occ:
            shape_of[i] = sid
    sc.keys = list(interned)  # (in sid order: each sid is the count interned before it)
    out = Shapes(shapes, shape_of, {i: size[i][0] for i in shape_of}, key_of, size, sc, vec_of,
                 fam_of if params and by_value else {})
    _cap_nesting(gd, out, max(_NEST_MAX, outline_min))
    return out


def _cap_nesting(gd: GraphDef, shapes: Shapes, cap: int) -> None:
    """Keep outlined occurrences nested at most ``cap`` deep: a shape whose occurrences hold
    outlined occurrences nested ``cap`` deep is not outlined (inline in the enclosing code,
    the occurrences below it still called), dropped from ``shapes`` in place. Planning
    recurses once per level of outlined occurrences nested in each other (a function's body
    planned in its caller's), and nothing else bounds that nesting: two nestings of a
    thousand alternating classes (``A(B(A(B(...))))``) are a shape per depth each nesting
    the next one's, planned a thousand deep (RecursionError). Alike links are a chain's
    loop instead (:func:`_long_runs`); links of a period are not (left unrolled above the
    ``cap`` innermost levels). Depths are counted bottom-up, children first, so a shape is
    judged with what is kept below it; occurrences of one shape have one depth (their keys
    hold the shapes below). Nodes and containers (find_container_shapes) alike; iterative
    (containers nest ten thousand deep)."""
    shape_of, cshape_of = shapes.shape_of, shapes.cshape_of
    if not shape_of and not cshape_of:
        return
    table = gd.table
    dropped: set[int] = set()
    depth: dict[int, int] = {}  # node index -> the depth of the outlined nesting it is (0: none)
    cdepth: dict[int, int] = {}  # id(container edge) -> the same

    def own(below: int, sid: int | None) -> int:
        if sid is None or sid in dropped:
            return below
        if below + 1 > cap:
            dropped.add(sid)
            return below
        return below + 1

    def edges_below(children: tuple, i: int) -> int:
        """The deepest outlined nesting among ``children`` (nodes defined below ``i``)."""
        deep = 0
        for c in children:
            k = type(c)
            if k is NodeEdge:
                if c[1] > i:
                    deep = max(deep, depth.get(c[1], 0))
            elif k is PytreeEdge:
                deep = max(deep, cdepth.get(id(c), 0))
        return deep

    def containers(children: tuple, i: int) -> None:
        """The depths of the containers among ``children`` (and nested in them), post-order."""
        stack: list[tuple[Any, bool]] = [(c, False) for c in children if type(c) is PytreeEdge]
        while stack:
            e, done = stack.pop()
            if done:
                cdepth[id(e)] = own(edges_below(e[3], i), cshape_of.get(id(e)))
                continue
            stack.append((e, True))
            stack.extend((c, False) for c in e[3] if type(c) is PytreeEdge)

    for i in range(len(table) - 1, -1, -1):
        spec = table[i]
        if type(spec) is not NodeSpec:
            continue
        kids = spec[4]
        if PytreeEdge in map(type, kids):
            containers(kids, i)
        depth[i] = own(edges_below(kids, i), shape_of.get(i))
    if type(gd.root) is PytreeEdge:
        containers((gd.root,), -1)
    if not dropped:
        return
    for sid in dropped:
        shape = shapes.shapes.pop(sid)
        if shape.edge is None:
            for i in shape.occurrences:
                del shape_of[i]
                shapes.slot_lo.pop(i, None)
        else:
            for e in shape.occurrences:
                del cshape_of[e]


#: Links of one chain nested as outlined shapes at most this deep (see :func:`_long_runs`).
_NEST_MAX = 16


def _next_link(table: Any, refs: Any, i: int) -> int:
    """The next link of node ``i`` as :func:`find_chains` reads it (see :func:`_find_next`;
    ``-1``: none)."""
    got = _find_next(table, refs, i)
    return got[1][1] if got is not None else -1


def _builtin(e: Any) -> bool:
    """A list, tuple or dict container edge (by identity: a custom pytree's treedef
    compares with ``==``)."""
    p = e[1]
    return p is list or p is tuple or p is dict


def _find_next(table: Any, refs: Any, i: int) -> tuple[int, Any] | None:
    """The next link of node ``i``: its one child of its own class met once, as the position
    of the child and that node's edge; or, with no such child, its one node of its own class
    met once held in its builtin containers (lists, tuples, dicts of them, nested: the next
    link in ``children=[next]``), as the position of the child container holding it and
    that node's edge. ``None``: none, or more than one."""
    spec = table[i]
    t = spec[1]
    children = spec[4]
    found: tuple[int, Any] | None = None
    nested = False
    for p, c in enumerate(children):
        k = type(c)
        if k is NodeEdge:
            if c[1] > i and table[c[1]][1] is t and refs[c[1]] == 1:
                if found is not None:
                    return None
                found = (p, c)
        elif k is PytreeEdge and _builtin(c):
            nested = True
    if found is not None or not nested:
        return found
    for p, c in enumerate(children):
        if type(c) is not PytreeEdge or not _builtin(c):
            continue
        stack = [c]
        while stack:
            e = stack.pop()
            for x in e[3]:
                k = type(x)
                if k is NodeEdge:
                    if x[1] > i and table[x[1]][1] is t and refs[x[1]] == 1:
                        if found is not None:
                            return None
                        found = (p, x)
                elif k is PytreeEdge and _builtin(x):
                    stack.append(x)
    return found


def _long_runs(nxt: dict[int, int], limit: int) -> set[int]:
    """The nodes of runs of at least ``limit`` nested links of outlined shapes (``nxt``: such
    a link -> its next link): never outlined. Two or more alike chains have alike links at
    each depth, a shape per depth each nesting the next one's: as many functions as links,
    planned recursively (past the recursion limit for chains of a thousand). Not outlined,
    each chain is one loop (``limit`` is at least find_chains' ``min_links``). Shorter runs
    (a block holding a sub-block, in a list) stay shapes, nested less than ``limit`` deep."""
    if len(nxt) < limit:
        return set()
    inner = set(nxt.values())
    out: set[int] = set()
    for head in nxt:
        if head in inner:
            continue
        run = [head]
        j = nxt[head]
        while j in nxt:
            run.append(j)
            j = nxt[j]
        if len(run) >= limit:
            out.update(run)
    return out


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
    #: find_chains' ``params``: the values of its int/str/bool statics and its other
    #: subtrees' (``Shapes.vec``), in scan order (``Shapes.layout`` with the next link skipped)
    vec: tuple[Any, ...] = ()
    #: it runs user code after its next link (a callback node, a state whose value read is
    #: user code): the flatten reads what follows its next link in a second loop, after the
    #: rest of the chain, deepest link first (``find_chains``' ``ordered``)
    user_after: bool = False
    #: its next link sits in a container of its (the child at ``rec``: ``children=[next]``,
    #: ``{"next": next}``, nested), not directly among its children (find_chains' ``nested``;
    #: the unflatten builds the containers from the link's table entry, as unrolled code)
    nested: bool = False
    #: a period link (:func:`_period_link`): the nodes on the way to its next link, read
    #: inline by its body (empty: the next link is its own child)
    inline: tuple[int, ...] = ()


@dataclass
class Chain:
    """``n`` nested links of one shape from node ``head``; ``tail`` is the node past them."""

    head: int
    n: int
    tail: int
    links: list[Link]
    #: a chain of containers (find_container_chains): the first link's edge and the edge
    #: past the last link (``head`` and ``tail`` are then -1, a link's ``nxt`` too)
    head_edge: Any = None
    tail_edge: Any = None
    rec_edges: list[Any] = field(default_factory=list)  # (the second link's edge, first)
    #: positions of the links' vectors (:attr:`Link.vec`) whose values differ between links:
    #: the loop's parameters, per link (find_chains' ``params``); the others are constants
    params: tuple[int, ...] = ()

    @property
    def split(self) -> bool:
        """Its links run user code after their next link (see :attr:`Link.user_after`)."""
        return self.links[0].user_after


def find_chains(gd: GraphDef, min_links: int, witnessed: set[int], shared_types: set[type],
                shapes: Shapes, user: bool = False, ordered: bool = False,
                params: bool = False, nested: bool = False) -> dict[int, Chain]:
    """Chains of at least ``min_links`` nested nodes of one link shape (a node whose one
    child of its own class is the next link), outside the outlined shapes: head -> chain.
    By default no link calls user code (a callback node in it). ``user``: links of callback
    node types too (the unflatten's two-phase loops, which call their ``create_empty`` and
    ``set_key`` once each, in the reference's order). ``ordered`` (the flatten's loops): a
    link that runs user code after its next link (a callback node there, a state whose value
    read is user code: a ``value`` property) is marked ``user_after``, part of its key (one
    chain's links all are, or none). The reference runs that code after the rest of the
    chain, the deepest link's first, so the flatten reads such links in two loops: what
    precedes the next link, link by link, then (after the tail) what follows it, over the
    links kept from the first loop in reverse; links without are read whole, one loop.
    (The flatten's update keeps, per link, what its writes name instead of loading the link
    again: ``chain_loop``'s ``kept``.)

    ``params`` (``shapes`` found with ``find_shapes``' ``params``): links differing only in
    the values of int/str/bool statics (their own, or their other subtrees': a depth, a tag,
    a flag) are one link shape; a chain's :attr:`Chain.params` are the positions of the
    links' vectors that differ, the loop's per-link parameters (guarded as exactly).

    ``nested``: a node with no child of its own class whose builtin
    containers hold one (``children=[next]``, ``{"next": next}``, a tuple, nested) is a link
    too, :attr:`Link.nested`: the containers on the way are part of its key (their kinds,
    lengths and keys, and where the next link sits among their items, in pre-order), so a
    link whose container changed kind or length is no link of the chain (a miss of the
    loop's guards at run time)."""
    table = gd.table
    fam_of, vec_of = shapes.fam_of, shapes.vec_of
    params = params and bool(fam_of)
    sc = shapes.scan if shapes.scan is not None else _Scan(gd, witnessed, shared_types)
    refs, split = sc.refs, sc.split
    links: dict[int, Link] = {}
    interned: dict[Any, int] = {}
    inline: dict[int, tuple[int, ...]] = {}  # a period link -> the nodes on the way to its next
    for spec in table:
        if type(spec) is not NodeSpec or spec.index in shapes.shape_of or refs[spec.index] != 1:
            continue  # (a link met twice, at its place in the chain and elsewhere, is inline:
            # the loop keeps no link in a local of its own for a back-reference to name)
        i, t = spec.index, spec.type
        found = _find_next(table, refs, i)
        if found is None:
            if not any(type(c) is NodeEdge and c.index > i and table[c.index].type is t and refs[c.index] == 1
                       for c in spec.children):  # (none of its own class among its children)
                link = _period_link(sc, table, refs, shapes, spec, witnessed, shared_types, interned)
                if link is not None:
                    links[i] = link
                    inline[i] = link.inline
            continue
        rec, nxt = found
        held = nxt if type(spec.children[rec]) is PytreeEdge else None
        if held is not None and not nested:
            continue
        # (what find_shapes found of it: not scanned again)
        known = split(spec, rec) if held is None else None
        if known is not None:
            tokens, where, node_key = known
        else:
            got = sc.scan(spec, rec, held)
            if got is None:
                continue
            tokens, where = got
            node_key = sc.node_key_of.get(i, _REC)  # (find_shapes made it, with this scan's classes)
            if node_key is _REC:
                node_key = _node_key(spec, sc.equal, sc.by_value)
        if sc.last_user and not user:
            continue  # (a link calling user code: not asked for)
        after = ordered and sc.last_user_after
        lb, nb, eb, la, na, ea, nea = where
        vec: tuple[Any, ...] = ()
        if params:
            (tokens,), vec = _family((tokens,), fam_of, vec_of)
        t = spec.type
        # (a next link in a container: where, in the tokens' pre-order, its ``R`` says)
        key = (id(t), spec.keys, node_key, rec, i in witnessed, t in shared_types, tokens, after)
        lid = interned.setdefault(key, len(interned))
        links[i] = Link(lid, rec, nxt.index, (lb, nb), (la, na), (i, eb), (ea, nea), vec, after,
                        held is not None)
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
        for x in run:  # (a period chain's nodes between links are its links' own: no chain's head)
            inner.update(x.inline)
        first = link.vec
        varying = tuple(p for p in range(len(first)) if any(x.vec[p] != first[p] for x in run)) \
            if first else ()
        chains[i] = Chain(i, len(run), j, run, params=varying)
    return chains


#: The longest period of a chain of links of several classes (``A(B(A(B(...))))``: 2).
_PERIOD_MAX = 4


def _period_path(table: Any, refs: Any, spec: NodeSpec) -> list[tuple[int, int]] | None:
    """The way from node ``spec`` down to the next node of its class, when there is exactly
    one within :data:`_PERIOD_MAX` levels through direct node children met once (each a
    builtin ``Node`` of another class): ``[(position among the children, node index), ...]``,
    the last the next link. ``None``: none, or more than one."""
    t, i = spec[1], spec[2]
    found: list[list[tuple[int, int]]] = []
    work: list[list[tuple[int, int]]] = [[]]
    while work:
        path = work.pop()
        at = path[-1][1] if path else i
        for p, c in enumerate(table[at][4]):
            if type(c) is not NodeEdge or c[1] <= at or refs[c[1]] != 1:
                continue
            ct = table[c[1]][1]
            step = [*path, (p, c[1])]
            if ct is t:
                if path:
                    found.append(step)
                    if len(found) > 1:
                        return None
            elif len(step) < _PERIOD_MAX:
                work.append(step)
    return found[0] if found else None


def _period_edges(table: Any, i: int, path: list[tuple[int, int]]) -> list[Any]:
    """The edges a period link's scan reads (:meth:`_Scan.scan_children`), in pre-order: its
    children and, in place of the child on ``path``, that node (:class:`_Inline`) followed
    by its own, and so on; the next link :data:`_REC`."""
    out: list[Any] = []
    # (a stack of (node, depth on the path, next child position); the path is short)
    stack: list[list[int]] = [[i, 0, 0]]
    while stack:
        fr = stack[-1]
        node, depth, pos = fr
        kids = table[node][4]
        if pos >= len(kids):
            stack.pop()
            continue
        fr[2] = pos + 1
        if pos == path[depth][0]:
            nxt = path[depth][1]
            if depth == len(path) - 1:
                out.append(_REC)
            else:
                out.append(_Inline((nxt,)))
                stack.append([nxt, depth + 1, 0])
            continue
        out.extend(_preorder((kids[pos],), -1))
    return out


def _period_link(sc: _Scan, table: Any, refs: Any, shapes: Shapes, spec: NodeSpec, witnessed: set[int],
                 shared_types: set[type], interned: dict[Any, int]) -> Link | None:
    """A link of a chain of period 2 or more (``A(B(A(B(...))))``, alternating classes): a
    builtin ``Node`` whose next node of its class is a grandchild (or deeper) on a single
    way through nodes of other classes (:func:`_period_path`), those nodes read inline by
    the link's body. Planned as any chain's link: the loop's body is planned from the
    head's entries, the next link wherever it sits below them (the flatten's walk stops
    there; the unflatten makes the nodes of the link's entries and fills them), so nothing
    else changes. No user code in it (no callback node, no value property: neither loop
    order nor two phases to keep), no node of the way outlined (it holds the rest of the
    chain), the statics exact (no parameters: ``vec`` empty). Without it two nestings of a
    thousand alternating classes were a shape per depth each nesting the next one's (at
    ``outline_min=2``) or unrolled code past ``max_steps`` (ten thousand deep)."""
    i, t = spec[2], spec[1]
    if sc.node_kind(t) != 1 or spec[5] is not None or spec[6] is not None:
        return None
    path = _period_path(table, refs, spec)
    if path is None:
        return None
    way = tuple(j for _, j in path[:-1])
    if any(j in shapes.shape_of for j in way):
        return None
    got = sc.scan_children(spec[4], path[0][0], i, False, edges=_period_edges(table, i, path))
    if got is None or sc.last_user or sc.last_reads:
        return None
    tokens, (lb, nb, eb, la, na, ea, nea) = got
    key = ("period", id(t), spec[3], tuple(p for p, _ in path),
           tuple(id(table[j][1]) for j in way), i in witnessed, t in shared_types, tokens)
    lid = interned.setdefault(key, len(interned))
    return Link(lid, path[0][0], path[-1][1], (lb, nb), (la, na), (i, eb), (ea, nea), (), False, inline=way)


_CONTAINERS = "containers"


def _containers(gd: GraphDef) -> list[Any]:
    """Every container edge of ``gd`` (the root's, the nodes'), in pre-order. Kept per
    GraphDef (``kept``; never mutate it): it holds the GraphDef's own edges."""
    order: list[Any] = []
    stack: list[Any] = [c for spec in reversed(gd.table) if type(spec) is NodeSpec
                        for c in reversed(spec[4]) if type(c) is PytreeEdge]  # (only containers)
    stack.append(gd.root)
    while stack:
        e = stack.pop()
        if type(e) is PytreeEdge:
            order.append(e)
            stack.extend([c for c in reversed(e[3]) if type(c) is PytreeEdge])
    return order


def _regular(run: list[Link], containers: bool = False) -> bool:
    """The links' values and entries before the rest are consecutive runs, in link order,
    and those after it consecutive runs in reverse order (what the loop splices)."""
    first, last = run[0], run[-1]
    for k, link in enumerate(run):
        back = len(run) - 1 - k
        if link.before[1] and link.before[0] != first.before[0] + k * first.before[1]:
            return False
        if link.after[1] and link.after[0] != last.after[0] + back * first.after[1]:
            return False
        if containers and link.ebefore[1] != first.ebefore[1]:
            return False
        if (link.ebefore[1] or not containers) and link.ebefore[0] != first.ebefore[0] + k * first.ebefore[1]:
            return False
        if link.eafter[1] and link.eafter[0] != last.eafter[0] + back * first.eafter[1]:
            return False
    return True


def find_container_chains(gd: GraphDef, min_links: int, witnessed: set[int], shared_types: set[type],
                          shapes: Shapes, ordered: bool = False) -> dict[int, Chain]:
    """Chains of at least ``min_links`` nested containers of one link shape: a list, tuple
    or dict (str keys) whose one child of its own type and length (keys) is the next link,
    its other children what an outlined subtree may hold (``x = [x, State(...)]`` ten
    thousand deep): ``id(first link's edge)`` -> chain. A container is not an object of the
    table (no sharing to see: each is re-read where it sits), so any nesting of them
    qualifies; the states and nodes its links hold are each referenced once."""
    sc = shapes.scan if shapes.scan is not None else _Scan(gd, witnessed, shared_types)
    facts = kept(gd)
    order = facts.get(_CONTAINERS) if facts is not None else None
    if order is None:
        order = _containers(gd)
        if facts is not None:  # (the flatten's and the unflatten's planner ask)
            facts[_CONTAINERS] = order
    links: dict[int, Link] = {}
    nxt_edge: dict[int, Any] = {}
    interned: dict[Any, int] = {}
    for e in order:
        p = e.ptype
        if (p is not list and p is not tuple and p is not dict) or e.sig is not None:
            continue
        if p is dict and not all(type(x) is str for x in e.keys):
            continue
        rec = -1
        for pos, c in enumerate(e.children):
            if type(c) is PytreeEdge and c.ptype is p and c.sig is None and c.keys == e.keys \
                    and all(type(x) is type(y) for x, y in zip(c.keys, e.keys, strict=True)):
                if rec >= 0:
                    rec = -2
                    break
                rec = pos
        if rec < 0:
            continue
        got = sc.scan_children(e.children, rec, -1)
        if got is None or sc.last_user or (ordered and sc.last_user_after):
            continue  # (``ordered``: as find_chains')
        tokens, (lb, nb, eb, neb, la, na, ea, nea) = got
        key = (id(p), e.keys if p is dict else len(e.children), rec, tokens)
        lid = interned.setdefault(key, len(interned))
        links[id(e)] = Link(lid, rec, -1, (lb, nb), (la, na), (eb, neb), (ea, nea))
        nxt_edge[id(e)] = e.children[rec]
    chains: dict[int, Chain] = {}
    inner: set[int] = set()
    for e in order:
        link = links.get(id(e))
        if link is None or id(e) in inner:
            continue
        run = [link]
        edges = [e]
        nx = nxt_edge[id(e)]
        while id(nx) in links and links[id(nx)].lid == link.lid:
            inner.add(id(nx))
            run.append(links[id(nx)])
            edges.append(nx)
            nx = nxt_edge[id(nx)]
        if len(run) < min_links or not _regular(run, containers=True):
            continue
        chains[id(e)] = Chain(-1, len(run), -1, run, head_edge=e, tail_edge=nx, rec_edges=[edges[1]])
    return chains


def _cfamily(tokens: tuple, e: Any, shapes: Shapes) -> tuple[tuple, tuple[Any, ...]]:
    """A container's key without its int/str/bool statics' values (its nodes by their
    families, its nested containers by theirs: already keyed so), and those values in
    pre-order (its nodes' and nested containers' vectors in place): :func:`_family`'s."""
    out: list[Any] = [tokens[0]]
    vec: list[Any] = []
    fam_of, vec_of, cvec = shapes.fam_of, shapes.vec_of, shapes.cvec
    for t, c in zip(tokens[1:], e[3], strict=True):
        if len(t) == 3 and t[0] == "v" and t[1] in _PARAM_IDS:
            out.append(("v", t[1]))
            vec.append(t[2])
        elif t[0] == "N":
            out.append(("F", fam_of[t[1]]))
            vec.extend(vec_of[t[1]])
        elif t[0] == "C":
            out.append(t)
            vec.extend(cvec.get(id(c), ()))
        else:
            out.append(t)
    return tuple(out), tuple(vec)


def find_container_shapes(gd: GraphDef, outline_min: int, shapes: Shapes, chains: dict[int, Chain],
                          cchains: dict[int, Chain], params: bool = False) -> None:
    """Shapes of *containers* (the flatten planner's): a list, tuple or dict (exact str keys)
    of states, statics, nodes of an outlinable shape and such containers, nested, met at
    least ``outline_min`` times, each occurrence one call of the shape's function (a list
    of them: one loop, see ``FlattenPlanner._mixed``). Added to ``shapes`` in place.

    A container has no table entry of its own: an occurrence is its edge (``id``), and its
    values and objects are the consecutive slots and entries of what it holds. Unlike a
    node's subtree, an occurrence may hold one state at several places (``[p] * 3``): every
    edge reaching that state is then in the same occurrence, its first the defining one, so
    the function's identity guard (``backref``) sees each; the shape's key says at which
    positions (``("B", k)``: the ``k``-th state defined in the occurrence). A state met
    outside the occurrence keeps it inline. A nested container is keyed by its own key
    (``("C", sid)``), found first (children before parents), so each container is read
    once. Not outlined: a container holding an array leaf, a callback node or a custom
    pytree (kept with the enclosing code), one whose subtree is planned inside an outlined
    node's function or a chain's link (its occurrences are that code's), and one holding
    no state nor node (nothing to splice; and equal edges of statics may be one object).

    ``params`` (``shapes`` found with ``find_shapes``' ``params``): containers differing
    only in the values of int/str/bool statics (their own, their nodes', their nested
    containers': ``(p, i)`` per item) are one shape whose functions take the values that
    differ (:attr:`Shape.params`, positions of :meth:`Shapes.cvec_of`) as parameters, each
    occurrence's from its call or its loop's tuple, each guarded against its own."""
    params = params and bool(shapes.fam_of)
    if outline_min <= 0:
        return
    sc = shapes.scan
    if sc is None:
        return
    table = gd.table
    blocked: set[int] = set()  # node entries planned inside a function or a chain's link
    for shape in shapes.shapes.values():
        for j in shape.occurrences:
            blocked.update(range(j, j + shape.nindices))
    for chain in (*chains.values(), *cchains.values()):
        for link in chain.links:
            (eb, neb), (ea, nea) = link.ebefore, link.eafter
            blocked.update(range(eb, eb + neb))
            blocked.update(range(ea, ea + nea))
    links: dict[int, int] = {}  # id(a container chain's link) -> the next link's position
    for chain in cchains.values():
        e = chain.head_edge
        for link in chain.links:
            links[id(e)] = link.rec
            e = e.children[link.rec]
    order: list[tuple[Any, bool]] = []  # every builtin container, parents first, and blocked
    stack: list[tuple[Any, bool]] = []
    if type(gd.root) is PytreeEdge:
        stack.append((gd.root, True))  # (the root: the top function's own)
    for spec in table:
        if type(spec) is NodeSpec:
            b = spec[2] in blocked
            stack.extend((c, b) for c in spec[4] if type(c) is PytreeEdge)
    while stack:
        e, b = stack.pop()
        rec = links.get(id(e), -1)
        b = b or rec >= 0
        order.append((e, b))
        for pos, c in enumerate(e[3]):
            if type(c) is PytreeEdge:
                stack.append((c, b and pos != rec if rec >= 0 else b))
    interned: dict[Any, int] = {}
    base = max(sc.key_of.values(), default=-1) + 1
    ckey: dict[int, int] = {}
    counts: dict[int, list[Any]] = {}
    seen_twice: set[int] = set()
    for e, b in reversed(order):  # (children first)
        got = sc.scan_container(e, ckey, shapes.csize)
        if got is None:
            continue
        if params:
            got, vec = _cfamily(got, e, shapes)
            if vec:
                shapes.cvec[id(e)] = vec
        sid = base + interned.setdefault(got, len(interned))
        if id(e) in ckey:
            seen_twice.add(id(e))
        ckey[id(e)] = sid
        if not b and e is not gd.root and shapes.csize[id(e)][3]:
            counts.setdefault(sid, []).append(e)
    for sid, occ in counts.items():
        occ = [e for e in occ if id(e) not in seen_twice]
        if len(occ) < outline_min:
            continue
        occ.reverse()  # (pre-order)
        _, n, first, m = shapes.csize[id(occ[0])]
        ptype = occ[0].ptype
        varying: tuple[int, ...] = ()
        if params:
            vecs = {shapes.cvec_of(e) for e in occ}
            if len(vecs) > 1:
                v0 = shapes.cvec_of(occ[0])
                varying = tuple(p for p in range(len(v0)) if any(v[p] != v0[p] for v in vecs))
        shapes.shapes[sid] = Shape(sid, first, [id(e) for e in occ], n, m, ptype.__qualname__, varying,
                                   edge=occ[0])
        for e in occ:
            shapes.cshape_of[id(e)] = sid
    _cap_nesting(gd, shapes, max(_NEST_MAX, outline_min))
