"""The IR: a flat, immutable, hashable description of a graph's structure.

A ``GraphDef`` is a table of specs indexed by integer (graph nodes and states
share one pre-order index space) plus a root edge. The first path that reaches
an object defines it; later paths are back-references by index, so sharing and
cycles are just index equality. Edges are tagged tuples: comparing and hashing
them is done by CPython's tuple code, and two edges of different kinds can
never compare equal.
"""

from __future__ import annotations

import builtins
from collections.abc import Hashable, Iterator
from operator import is_ as _is
from operator import itemgetter
from typing import Any, Generic, TypeVar

from jax import tree_util

__all__ = [
    "ArrayConstant",
    "Edge",
    "NodeEdge",
    "StateEdge",
    "ArrayEdge",
    "StaticEdge",
    "PytreeEdge",
    "NodeSpec",
    "StateSpec",
    "GraphDef",
    "PathTable",
]

Path = tuple[Hashable, ...]


class ArrayConstant:
    """A bare array kept as a static value (BrainState's rule for arrays under its nodes).

    Arrays neither hash nor compare as a bool, so the ``GraphDef`` holds this box:
    equal only to a box of the very same array object, hashed by that identity.
    Unflatten puts the array itself back.
    """

    __slots__ = ("array",)

    def __init__(self, array: Any) -> None:
        self.array = array

    def __eq__(self, other: object) -> bool:
        return type(other) is ArrayConstant and other.array is self.array

    def __hash__(self) -> int:
        return id(self.array)

    def __repr__(self) -> str:
        shape = getattr(self.array, "shape", None)
        return f"ArrayConstant({getattr(self.array, 'dtype', '')}{list(shape) if shape is not None else ''})"


def static_value(value: Any) -> Any:
    """The object a static edge's value stands for (an ``ArrayConstant`` is its array)."""
    return value.array if type(value) is ArrayConstant else value


def _field(position: int, doc: str) -> Any:
    """A named, read-only field of an edge or spec: its item ``position`` (a C-level getter,
    so reading by name costs about what reading by index does)."""
    return property(itemgetter(position), doc=doc)


class Edge(tuple):
    """Base of the edge kinds: a tuple whose first item names the kind.

    Fields are read by name (``spec.children``); only the hottest loops (the reference
    walker's) index the tuples directly.
    """

    __slots__ = ()

    def __getnewargs__(self) -> tuple:  # pickling: rebuild through __new__
        return tuple(self[1:])


class _IndexEdge(Edge):
    """An edge that names one table entry (or value slot) by its number."""

    __slots__ = ()
    _kind = ""

    def __new__(cls, index: int) -> Any:
        return tuple.__new__(cls, (cls._kind, index))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self[1]})"


class NodeEdge(_IndexEdge):
    """A reference to the graph node with table index ``index``."""

    __slots__ = ()
    _kind = "node"
    index = _field(1, "the node's table index")


class StateEdge(_IndexEdge):
    """A reference to the state with table index ``index``."""

    __slots__ = ()
    _kind = "state"
    index = _field(1, "the state's table index")


class ArrayEdge(_IndexEdge):
    """A bare array leaf; its value lives in value slot ``slot``."""

    __slots__ = ()
    _kind = "array"
    slot = _field(1, "the value slot of the array")

    def __repr__(self) -> str:
        return f"ArrayEdge(slot={self[1]})"


class StaticEdge(Edge):
    """A static value kept in the IR.

    ``sig`` is the value's type, or for a collapsed container ``(type, child
    sigs)``, so that ``1`` and ``1.0`` (equal in Python) are different structures.
    """

    __slots__ = ()
    sig = _field(1, "what tells equal values apart (see _sameness)")
    value = _field(2, "the static value")

    def __new__(cls, sig: Any, value: Any) -> StaticEdge:
        return tuple.__new__(cls, ("static", sig, value))

    def __repr__(self) -> str:
        return f"StaticEdge({self[2]!r})"


class PytreeEdge(Edge):
    """An inline pytree container, re-expanded per occurrence.

    ``ptype`` is ``list``, ``tuple`` or ``dict`` for the builtins, else the JAX
    ``PyTreeDef`` of the container's top level (children as leaves). ``keys`` are
    the path entries of the children, in flatten order. ``sig`` tells apart what
    ``==`` does not (see ``_sameness``): for a dict the sigs of its keys when any is
    not a ``str`` (``1``, ``1.0`` and ``True`` are one dict key to Python but three
    structures here), for a custom pytree the sig of its aux data (a treedef compares
    its aux data with ``==`` only); else ``None``.
    """

    __slots__ = ()
    ptype = _field(1, "list, tuple, dict, or a custom pytree's one-level treedef")
    keys = _field(2, "the children's path keys, in flatten order")
    children = _field(3, "the children's edges")
    sig = _field(4, "the dict's key sigs or the custom pytree's aux sig, else None")

    def __new__(
        cls, ptype: Any, keys: tuple, children: tuple[Edge, ...], sig: Any = None
    ) -> PytreeEdge:
        return tuple.__new__(cls, ("pytree", ptype, keys, children, sig))

    def __repr__(self) -> str:
        return edge_repr(self)


class NodeSpec(Edge):
    """A graph node's table entry: its type, child keys and child edges.

    ``meta`` is the custom node protocol's hashable metadata (``None`` for ``Node``).
    ``sig`` is ``None`` when every key is a ``str`` and there is no metadata, else
    the types of the keys and of the metadata (``1`` and ``True`` are equal in
    Python but are different structures).
    """

    __slots__ = ()
    type = _field(1, "the node's class")
    index = _field(2, "its table index")
    keys = _field(3, "its children's keys (attribute names for a Node)")
    children = _field(4, "its children's edges")
    meta = _field(5, "the custom node protocol's metadata (None for a Node)")
    sig = _field(6, "the key and metadata sigs, or None (all keys str, no metadata)")

    def __new__(
        cls, type_: builtins.type, index: int, keys: tuple, children: tuple[Edge, ...], meta: Hashable,
        sig: Any = None,
    ) -> NodeSpec:
        return tuple.__new__(cls, ("nodespec", type_, index, keys, children, meta, sig))

    def __repr__(self) -> str:
        return f"NodeSpec({self[1].__qualname__}, index={self[2]}, keys={self[3]!r})"


class StateSpec(Edge):
    """A state's table entry: its type, metadata, value slot and metadata types.

    ``metasig`` holds the types of the metadata values, so that ``tag=1`` and
    ``tag=True`` (equal in Python) are different structures.
    """

    __slots__ = ()
    type = _field(1, "the state's class")
    index = _field(2, "its table index")
    metadata = _field(3, "its metadata: sorted (name, value) pairs")
    slot = _field(4, "the value slot of its value")
    metasig = _field(5, "the sigs of the metadata values")

    def __new__(cls, type_: builtins.type, index: int, metadata: tuple, slot: int,
                metasig: tuple = ()) -> StateSpec:
        return tuple.__new__(cls, ("statespec", type_, index, metadata, slot, metasig))

    def __repr__(self) -> str:
        return f"StateSpec({self[1].__qualname__}, index={self[2]}, slot={self[4]})"


# -- paths ----------------------------------------------------------------------


def materialize(link: Any) -> Path:
    """Turn a path link ``(parent_link, key)`` chain into a path tuple."""
    out = []
    while link is not None:
        link, key = link
        out.append(key)
    out.reverse()
    return tuple(out)


def dotted_path(path: Path) -> str:
    """How a path prints (``StateMap``'s repr): its keys' ``str`` joined by dots,
    ``('layers', 0, 'w')`` as ``layers.0.w``. Not one-to-one: ``0`` and ``'0'`` print
    alike, and so do ``('a.b',)`` and ``('a', 'b')``."""
    return ".".join(map(str, path)) if path else "<root>"


def _links_equal(a_links: tuple, b_links: tuple) -> bool:
    """Whether two sequences of path links spell the same paths, in O(total links).

    Comparing materialized paths costs O(depth²) on a deep chain; comparing the
    nested link tuples directly would recurse once per level. Instead walk each
    pair of chains up to a pair of links already known to be equal.
    """
    if len(a_links) != len(b_links):
        return False
    known: set[tuple[int, int]] = set()  # (id(a), id(b)) of links known to be equal
    for a, b in zip(a_links, b_links, strict=True):
        pending = []
        while a is not b:
            if a is None or b is None:
                return False
            pair = (id(a), id(b))
            if pair in known:
                break
            if a[1] != b[1]:
                return False
            pending.append(pair)
            a, b = a[0], b[0]
        known.update(pending)
    return True


class PathTable:
    """The static side of a ``StateMap``: value paths and their state types.

    Shared by a ``GraphDef`` and every ``StateMap`` made from it, so building a
    ``StateMap`` per call costs nothing. Paths are kept as parent links and made
    into tuples on first use: a 10 000-deep chain does not pay O(depth²) unless
    someone asks for its paths.
    """

    __slots__ = ("__weakref__", "_dotted", "_hash", "_index", "_links", "_memo", "_paths", "types")

    def __init__(self, links: tuple | None, types: tuple, paths: tuple | None = None):
        self._links = links
        self._paths = paths
        self._index: dict | None = None
        self._dotted: dict | None = None
        self.types = types  # per slot: the State subclass, or None for an array leaf
        self._hash: int | None = None
        # the operations layer's partitions, parts' tables and slot maps (_partition.TableMemo)
        self._memo: Any = None

    @classmethod
    def from_paths(cls, paths: tuple[Path, ...], types: tuple) -> PathTable:
        return cls(None, types, paths)

    @property
    def paths(self) -> tuple[Path, ...]:
        p = self._paths
        if p is None:
            p = self._paths = tuple(materialize(link) for link in self._links)  # type: ignore[union-attr]
        return p

    def path(self, slot: int) -> Path:
        if self._paths is not None:
            return self._paths[slot]
        return materialize(self._links[slot])  # type: ignore[index]

    @property
    def index(self) -> dict[Path, int]:
        """``path -> slot``, built once."""
        ix = self._index
        if ix is None:
            ix = self._index = {p: i for i, p in enumerate(self.paths)}
        return ix

    @property
    def dotted(self) -> dict[str, list[int]]:
        """``dotted_path(path) -> slots`` (several when paths print alike), built once."""
        d = self._dotted
        if d is None:
            d = {}
            for i, p in enumerate(self.paths):
                d.setdefault(dotted_path(p), []).append(i)
            self._dotted = d
        return d

    def __len__(self) -> int:
        return len(self.types)

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if type(other) is not PathTable:
            return NotImplemented
        # classes by identity: a metaclass may claim its class equals another
        if len(self.types) != len(other.types) or not all(map(_is, self.types, other.types)):
            return False
        if self._links is not None and other._links is not None:
            return _links_equal(self._links, other._links)
        return self.paths == other.paths

    def __hash__(self) -> int:
        h = self._hash
        if h is None:
            h = self._hash = hash((self.types, self.paths))
        return h

    def __repr__(self) -> str:
        return f"PathTable({len(self)} paths)"

    def __reduce__(self) -> tuple:
        # Paths and types only: the caches are rebuilt on use (and the memo holds functions).
        return (PathTable.from_paths, (self.paths, self.types))


# -- GraphDef -------------------------------------------------------------------


_spec_type = itemgetter(1)  # a NodeSpec's or StateSpec's class

#: The type of a graph's root, carried by ``GraphDef[RootT]`` for type checkers only:
#: ``unflatten(flatten(model)[0], ...)`` is typed like ``model``.
RootT = TypeVar("RootT")


class GraphDef(Generic[RootT]):
    """The static structure of a graph: immutable, hashable, comparable by value.

    ``table[i]`` is the spec (``NodeSpec`` or ``StateSpec``) of the object with
    pre-order index ``i``; ``root`` is the root's edge. Registered with JAX as a
    static pytree so it can be passed through ``jax.jit`` as a static argument.
    """

    __slots__ = (
        "__weakref__", "_hash", "_nesting", "_rt", "num_nodes", "num_states", "pathtable", "root", "table",
    )

    root: Edge
    table: tuple[NodeSpec | StateSpec, ...]
    pathtable: PathTable
    num_nodes: int
    num_states: int
    _hash: int | None
    _nesting: int | None
    _rt: Any  # the unflatten dispatcher's entry (runtime.cache.UnflattenEntry), or None

    def __init__(self, root: Edge, table: tuple, pathtable: PathTable, nesting: int | None = None) -> None:
        """``nesting``: an upper bound on how deeply inline pytrees nest, when the builder
        knows one for free (the walker's stack depth); it picks how to hash."""
        sa = object.__setattr__
        sa(self, "_nesting", nesting)
        sa(self, "root", root)
        sa(self, "table", table)
        sa(self, "pathtable", pathtable)
        n_nodes = sum(1 for spec in table if type(spec) is NodeSpec)
        sa(self, "num_nodes", n_nodes)
        sa(self, "num_states", len(table) - n_nodes)
        sa(self, "_hash", None)
        sa(self, "_rt", None)  # the unflatten dispatcher's entry, once decided

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("GraphDef is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("GraphDef is immutable")

    def __reduce__(self) -> tuple:
        return (_rebuild_graphdef, (self.root, self.table, self.pathtable.paths, self.pathtable.types))

    @property
    def type(self) -> type:
        """The type of the root object."""
        root = self.root
        if type(root) is NodeEdge:
            return self.table[root[1]][1]
        if type(root) is PytreeEdge:
            p = root[1]
            return p if isinstance(p, type) else treedef_type(p)
        return type(root[2])

    @property
    def paths(self) -> tuple[Path, ...]:
        """The paths of the values, in value-slot (pre-order) order."""
        return self.pathtable.paths

    @property
    def num_leaves(self) -> int:
        """How many values a ``StateMap`` of this structure holds (states + array leaves)."""
        return len(self.pathtable)

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if type(other) is not GraphDef:
            return NotImplemented
        if self._hash is not None and other._hash is not None and self._hash != other._hash:
            return False
        try:  # CPython's tuple comparison: fast, and it stops cleanly at the recursion limit
            equal = self.root == other.root and self.table == other.table
        except RecursionError:  # pytrees nested deeper than that: compare without recursing
            equal = _structures_equal(self.root, self.table, other.root, other.table)
        # ``==`` of two classes is their metaclass's: one may claim to equal another class
        # (and hash alike). Node and state classes are the same only when they are one class.
        return equal and all(map(_is, map(_spec_type, self.table), map(_spec_type, other.table)))

    def __hash__(self) -> int:
        h = self._hash
        if h is None:
            try:
                h = _structure_hash(self.root, self.table, self._nesting)
            except TypeError:
                self._raise_unhashable()
            object.__setattr__(self, "_hash", h)
        return h  # type: ignore[return-value]

    def _raise_unhashable(self) -> None:
        for path, value in iter_statics(self):
            try:
                hash(value)
            except TypeError as e:
                raise TypeError(
                    f"GraphDef is unhashable: the static value at path {path!r} "
                    f"({type(value).__qualname__}) is unhashable ({e}). Make it hashable, "
                    "wrap it in a State, or keep it in graph_invisible_attrs"
                ) from None
        for spec in self.table:
            try:
                hash(spec[3] if type(spec) is StateSpec else spec[5])
            except TypeError as e:
                if type(spec) is StateSpec:
                    path = self.pathtable.path(spec[4])
                    where = f"the metadata of the {spec[1].__qualname__} at path {path!r}"
                else:
                    where = f"the custom-node metadata of the {spec[1].__qualname__} node {spec[2]}"
                raise TypeError(
                    f"GraphDef is unhashable: {where} is unhashable ({e}). Metadata must be "
                    "hashable: use tuples and frozensets instead of lists and sets"
                ) from None
        raise TypeError("GraphDef is unhashable")  # pragma: no cover - every part was checked

    def __repr__(self) -> str:
        lines = [f"GraphDef(type={self.type.__qualname__}, nodes={self.num_nodes}, "
                 f"states={self.num_states}, leaves={self.num_leaves},"]
        lines.append(f"  root={edge_repr(self.root)},")
        for spec in self.table:
            if type(spec) is NodeSpec:
                lines.append(f"  [{spec[2]}] {spec[1].__qualname__} {{")
                for k, e in zip(spec[3], spec[4], strict=True):
                    lines.append(f"      {k!r}: {edge_repr(e)},")
                lines.append("  }")
            else:
                meta = "".join(f", {k}={v!r}" for k, v in spec[3])
                lines.append(f"  [{spec[2]}] {spec[1].__qualname__}(slot={spec[4]}{meta})")
        lines.append(")")
        return "\n".join(lines)


def _rebuild_graphdef(root: Edge, table: tuple, paths: tuple, types: tuple) -> GraphDef:
    return GraphDef(root, table, PathTable.from_paths(paths, types))


def treedef_type(treedef: Any) -> type:
    """The container type of a one-level pytree's treedef."""
    node_data = treedef.node_data()
    return node_data[0] if node_data else type(None)


def fold_edge(edge: Any, leaf: Any, build: Any) -> Any:
    """Fold an edge bottom-up: ``leaf(e)`` for every non-container edge, left to right in
    pre-order, and ``build(container_edge, child_results)`` once a container's children
    are done. Iterative, so nesting deeper than the recursion limit is fine.
    """
    if type(edge) is not PytreeEdge:
        return leaf(edge)
    # Each frame: [edge, position of the next child, results so far].
    stack: list[list[Any]] = [[edge, 0, []]]
    while True:
        fr = stack[-1]
        e, pos, done = fr
        kids = e[3]
        while pos < len(kids):
            child = kids[pos]
            pos += 1
            if type(child) is PytreeEdge:
                fr[1] = pos
                stack.append([child, 0, []])
                break
            done.append(leaf(child))
        else:
            stack.pop()
            value = build(e, done)
            if not stack:
                return value
            stack[-1][2].append(value)


def iter_edges(*edges: Edge) -> Iterator[Edge]:
    """Each of ``edges`` and every edge inside a container below it, depth-first in order.

    Node and state edges are yielded, not followed. Iterative.
    """
    stack = list(reversed(edges))
    while stack:
        e = stack.pop()
        yield e
        if type(e) is PytreeEdge:
            stack.extend(reversed(e[3]))


def all_edges(gd: GraphDef) -> Iterator[Edge]:
    """Every edge of ``gd`` once: each node's children in table order, then the root."""
    return iter_edges(*[c for spec in gd.table if type(spec) is NodeSpec for c in spec[4]], gd.root)


_FLAT_EDGES = frozenset({NodeEdge, StateEdge, ArrayEdge})


def _plain_tuple(x: Any) -> bool:
    """Whether ``x`` compares and hashes as a tuple does, item by item (edges, specs,
    sigs, tuples and plain namedtuples), so it may be taken apart without changing ``==``."""
    t = type(x)
    return t is tuple or (isinstance(x, tuple) and t.__eq__ is tuple.__eq__ and t.__hash__ is tuple.__hash__)


def tuples_equal(a: Any, b: Any) -> bool:
    """``a == b`` for nested tuples, without recursing: the same answer as CPython's
    tuple comparison (identity first, then ``==`` on what is not a plain tuple)."""
    stack = [(a, b)]
    while stack:
        x, y = stack.pop()
        if x is y:
            continue
        if type(x) not in _FLAT_EDGES and _plain_tuple(x) and _plain_tuple(y):
            if len(x) != len(y):
                return False
            stack.extend(reversed(list(zip(x, y, strict=True))))  # left to right, as tuples do
        elif not x == y:
            return False
    return True


def _edges_equal(a: Any, b: Any) -> bool:
    """``a == b`` for two edges, with nested inline pytrees unrolled into a loop."""
    stack = [(a, b)]
    while stack:
        x, y = stack.pop()
        if x is y:
            continue
        if type(x) is PytreeEdge and type(y) is PytreeEdge:
            if x[1] != y[1] or x[2] != y[2] or x[4] != y[4] or len(x[3]) != len(y[3]):
                return False
            stack.extend(zip(x[3], y[3], strict=True))
            continue
        try:
            same = x == y
        except RecursionError:  # a static holding a deep tuple
            same = tuples_equal(x, y)
        if not same:
            return False
    return True


def _structures_equal(root_a: Edge, table_a: tuple, root_b: Edge, table_b: tuple) -> bool:
    """``(root_a, table_a) == (root_b, table_b)`` without recursing into nested pytrees."""
    if len(table_a) != len(table_b) or not _edges_equal(root_a, root_b):
        return False
    for x, y in zip(table_a, table_b, strict=True):
        if type(x) is NodeSpec and type(y) is NodeSpec:
            if x[:4] != y[:4] or x[5:] != y[5:] or len(x[4]) != len(y[4]):
                return False
            if not all(map(_edges_equal, x[4], y[4])):
                return False
        elif not _edges_equal(x, y):
            return False
    return True


def _pytree_hash(edge: Any) -> int:
    """The hash of an edge, nested inline pytrees folded bottom-up instead of recursing."""
    return fold_edge(edge, hash, _fold_pytree_hash)


def _fold_pytree_hash(e: Any, kid_hashes: list[int]) -> int:
    return hash((e[0], e[1], e[2], tuple(kid_hashes), e[4]))


def pytree_nesting(root: Edge, table: tuple) -> int:
    """How deeply inline pytrees nest in a structure (``[[x]]`` under a node: 2)."""
    deepest = 0
    pending = [(root, 1)] + [
        (c, 1) for spec in table if type(spec) is NodeSpec for c in spec[4] if type(c) is PytreeEdge
    ]
    while pending:
        edge, depth = pending.pop()
        if type(edge) is PytreeEdge:
            deepest = max(deepest, depth)
            pending.extend((c, depth + 1) for c in edge[3] if type(c) is PytreeEdge)
    return deepest


#: Inline pytrees nested deeper than this are hashed by ``_pytree_hash``: CPython's tuple
#: hash recurses on the C stack once per level, with no limit (10 000 nested lists crash
#: a thread with a 512 KiB stack).
_C_HASH_NESTING = 100


def _structure_hash(root: Edge, table: tuple, nesting: int | None) -> int:
    """The hash of a GraphDef's ``(root, table)``, consistent with its ``==``.

    By CPython unless inline pytrees nest deeper than ``_C_HASH_NESTING``. Which of
    the two depends on the structure alone (equal GraphDefs hash alike): ``nesting``
    is the builder's upper bound on it, measured here when that bound is too high.
    """
    if nesting is None or nesting > _C_HASH_NESTING:
        nesting = pytree_nesting(root, table)
    if nesting <= _C_HASH_NESTING:
        return hash((root, table))
    parts: list[Any] = list(table)
    for i, spec in enumerate(table):
        if type(spec) is NodeSpec and any(type(c) is PytreeEdge for c in spec[4]):
            kids = tuple([_pytree_hash(c) for c in spec[4]])
            parts[i] = hash((spec[0], spec[1], spec[2], spec[3], kids, spec[5], spec[6]))
    return hash((_pytree_hash(root), tuple(parts)))


def edge_repr(edge: Any) -> str:
    """``repr`` of an edge, nested pytrees included, built without recursing and in
    time linear in the length of the text."""
    out: list[str] = []
    stack: list[Any] = [edge]  # edges to print, or closing text
    while stack:
        e = stack.pop()
        if type(e) is str:
            out.append(e)
        elif type(e) is not PytreeEdge:
            try:
                out.append(repr(e))
            except RecursionError:  # a static nested deeper than repr goes (a deep tuple)
                out.append(f"StaticEdge(<a {type(e[2]).__qualname__} nested too deeply to print>)")
        else:
            name = e[1].__name__ if isinstance(e[1], type) else str(e[1])
            out.append(f"PytreeEdge({name}, keys={e[2]!r}, children=(")
            kids = e[3]
            stack.append(",))" if len(kids) == 1 else "))")
            for i in range(len(kids) - 1, -1, -1):
                stack.append(kids[i])
                if i:
                    stack.append(", ")
    return "".join(out)


def iter_statics(gd: GraphDef) -> Iterator[tuple[Path, Any]]:
    """Every static value in the structure with a readable path to it (for errors)."""
    node_paths: dict[int, Path] = {}
    pending: list[tuple[Edge, Path]] = [(gd.root, ())]
    while pending:
        edge, path = pending.pop()
        k = type(edge)
        if k is StaticEdge:
            yield path, edge[2]
        elif k is PytreeEdge:
            for key, child in zip(edge[2], edge[3], strict=True):
                pending.append((child, (*path, key)))
        elif k is NodeEdge and edge[1] not in node_paths:
            node_paths[edge[1]] = path
            spec = gd.table[edge[1]]
            for key, child in zip(spec[3], spec[4], strict=True):
                pending.append((child, (*path, key)))


tree_util.register_static(GraphDef)
