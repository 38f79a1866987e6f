"""Which kind of thing a value is, decided once per type and cached.

The walker asks ``kind_of(x)`` for every value it meets. Classification is keyed
by ``type(x)``: the probe (including the costly JAX pytree probe) runs once per
type. Any registration clears the cache and bumps :data:`epoch`, which the
specializer's generated code guards on.
"""

from __future__ import annotations

import builtins
import collections
import importlib
import operator
import threading
import warnings
from collections.abc import Callable, Container, Hashable, Iterable
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
from jax import tree_util

from ._model import Node, State
from ._sameness import same as _same

__all__ = [
    "register_graph_node_type",
    "register_dict_node_type",
    "register_state_type",
    "register_unsupported_type",
    "NodeImpl",
    "DictNode",
    "Field",
    "Rebuild",
    "StateImpl",
    "StateLayout",
    "DictStateLayout",
    "state_impl",
    "is_state_type",
    "kind_of",
    "node_impl",
    "registry_epoch",
    "clear_classification_cache",
    "pytree_level",
    "pytree_children",
    "pytree_keys",
    "same_pytree_keys",
    "pytree_level_keyed",
    "keys_fixed_by_treedef",
]

# Kinds. Small ints so that the walker's dispatch is a cheap identity compare.
STATIC = 0
STATE = 1
ARRAY = 2
NODE = 3
LIST = 4
TUPLE = 5
DICT = 6
PYTREE = 7  # any other JAX-registered pytree (namedtuple, dataclass, ...)
FSTATE = 8  # a foreign state box (register_state_type): read and written through its StateImpl
UNSUPPORTED = 9  # a type specgraph refuses with an explanation (register_unsupported_type)

KIND_NAMES = {
    STATIC: "static",
    STATE: "state",
    ARRAY: "array leaf",
    NODE: "graph node",
    LIST: "list",
    TUPLE: "tuple",
    DICT: "dict",
    PYTREE: "pytree",
    FSTATE: "state",
    UNSUPPORTED: "unsupported object",
}
CONTAINER_KINDS = frozenset({LIST, TUPLE, DICT, PYTREE})


@dataclass(frozen=True, eq=False)
class NodeImpl:
    """How to take a mutable node type apart and put it back (BrainState protocol).

    ``flatten(node) -> (iterable of (key, child), metadata)``; ``metadata`` must be
    hashable and is kept in the ``GraphDef``. ``create_empty(metadata)`` makes a
    blank node that ``set_key`` fills. ``pop_key`` removes one child and
    ``clear`` removes them all.
    """

    type: type
    flatten: Callable[[Any], tuple[Iterable[tuple[Hashable, Any]], Hashable]]
    set_key: Callable[[Any, Hashable, Any], None]
    pop_key: Callable[[Any, Hashable], Any]
    create_empty: Callable[[Hashable], Any]
    clear: Callable[[Any], None]
    is_builtin_node: bool = False
    #: the declarative description when the class was registered dict-backed
    dict_node: DictNode | None = None


@dataclass(frozen=True)
class Field:
    """One bookkeeping value of a dict-backed node: ``node.__dict__[name]``, or its ``attr``.

    The node's metadata (kept in the ``GraphDef``) is the tuple of its fields' values.
    A specialized flatten compares a field by equality when ``equal`` (an object that is
    per instance but equal across instances of a class, such as NNX's ``_pytree__nodes``),
    otherwise by the rule for statics (a value type by type and ``==``, else identity).
    """

    name: str
    attr: str | None = None
    equal: bool = False


@dataclass(frozen=True)
class Rebuild:
    """How a fresh instance gets one bookkeeping attribute: ``__dict__[name]`` is the
    metadata item ``item``, or ``factory(*metadata items at items, context)``."""

    name: str
    item: int | None = None
    factory: Callable[..., Any] | None = None
    items: tuple[int, ...] = ()


@dataclass(frozen=True, eq=False)
class DictNode:
    """A foreign node class whose children are its instance ``__dict__`` entries.

    Resolved for one concrete class (see :func:`register_dict_node_type`). The
    children are the ``__dict__`` items minus the bookkeeping names, keyed by
    their path key and sorted (ints first, then strings, as NNX orders them).
    """

    cls: type
    hidden: frozenset[str]
    hidden_attr: str | None
    int_keys: bool
    fields: tuple[Field, ...] | None  # declarative bookkeeping (None: see bookkeeping)
    bookkeeping: Callable[[Any], Hashable] | None
    rebuild: tuple[Rebuild, ...] | None  # declarative fresh instance (None: see create)
    create: Callable[[type, Hashable], Any] | None
    context: Callable[[], Any] | None  # made once per unflatten, given to the rebuild factories
    static_arrays: bool
    data_keys: Callable[[type, Any], Container[str] | None] | None  # (class, metadata)
    check_write: Callable[[Any], None] | None
    token: Callable[[], Any] | None  # see StateLayout: a node written must lead to it
    token_path: tuple[str, ...]  # a ``__dict__`` key, then attributes
    native_state: Callable[[list[tuple[tuple, type, tuple, Any]]], Any] | None

    def hidden_names(self) -> Container[str]:
        """Every name that is bookkeeping, not a child (the class attribute read now)."""
        if self.hidden_attr is None:
            return self.hidden
        extra = getattr(self.cls, self.hidden_attr, ())
        if isinstance(extra, str):
            raise TypeError(
                f"{self.cls.__qualname__}.{self.hidden_attr} is the string {extra!r}: it must be a "
                f"tuple of attribute names, e.g. ({extra!r},)"
            )
        return self.hidden.union(extra) if self.hidden else frozenset(extra)

    def path_key(self, stored: str) -> Hashable:
        """The path key of a stored attribute name (``'3'`` is ``3`` for int-keyed classes)."""
        if self.int_keys and type(stored) is str and stored.isascii() and stored.isdigit() \
                and str(int(stored)) == stored:
            return int(stored)
        return stored

    def stored_key(self, key: Hashable) -> Any:
        """The attribute name a path key is stored under (inverse of :meth:`path_key`)."""
        if self.int_keys and type(key) is int:
            return str(key)
        return key

    def children(self, node: Any) -> list[tuple[Hashable, Any]]:
        """``(path key, child)`` pairs in the class's order."""
        d = node.__dict__
        hidden = self.hidden_names()
        if not self.int_keys:
            return [(k, d[k]) for k in sorted(d) if k not in hidden]
        items = [(self.path_key(k), v) for k, v in d.items() if k not in hidden]
        items.sort(key=_int_first)
        return items

    def metadata(self, node: Any) -> Hashable:
        """The node's bookkeeping, as the metadata kept in its ``NodeSpec``."""
        if self.fields is None:
            return self.bookkeeping(node) if self.bookkeeping is not None else None
        d = node.__dict__
        out = []
        for f in self.fields:
            try:
                v = d[f.name]
            except KeyError:
                raise TypeError(
                    f"the {self.cls.__qualname__} node has no {f.name!r} attribute, which its library "
                    "keeps on every instance: was it made without calling its class?"
                ) from None
            out.append(v if f.attr is None else getattr(v, f.attr))
        return tuple(out)

    def new(self, metadata: Any, context: Any = None) -> Any:
        """A fresh, empty instance with its bookkeeping rebuilt from ``metadata``."""
        if self.rebuild is None:
            if self.create is None:
                return object.__new__(self.cls)
            return self.create(self.cls, metadata)
        obj: Any = object.__new__(self.cls)
        d = obj.__dict__
        for r in self.rebuild:
            if r.factory is None:
                d[r.name] = metadata[r.item]
            else:
                d[r.name] = r.factory(*[metadata[i] for i in r.items], context)
        return obj


def _int_first(item: tuple[Hashable, Any]) -> tuple[int, Any]:
    key = item[0]
    return (0, key) if type(key) is int else (1, key)


_slot_setters: dict[tuple[type, str], Any] = {}


@dataclass(frozen=True, eq=False)
class StateLayout:
    """Where a slotted foreign state keeps its parts, for generated code (NNX's Variable).

    ``value``, ``metadata`` and ``context`` name slots of ``base``: read as attributes,
    written through ``base``'s slot descriptors (past any ``__setattr__``). ``metadata``
    holds a dict: the state's metadata as its items. A new state is
    ``object.__new__(cls)`` with the context (made once per call), a copy of the
    metadata dict and the value. ``token()`` is made once per update: a state is
    written only when the attributes ``token_path`` from it lead to that very object,
    else the update misses and the reference decides (raising the library's error).
    ``plain(cls)``: whether instances of ``cls`` may be served this way (no override of
    what the layout relies on; ``overridable`` names it, guarded per call);
    ``specializable(metadata)``: whether a state with this metadata may be.
    """

    base: type
    value: str
    metadata: str
    context: str | None
    token: Callable[[], Any] | None
    token_path: tuple[str, ...]
    overridable: tuple[str, ...]
    specializable: Callable[[tuple], bool]

    def setter(self, slot: str) -> Any:
        """The slot descriptor's ``__set__`` (a store past ``__setattr__``), one object per slot."""
        key = (self.base, slot)
        found = _slot_setters.get(key)
        if found is None:
            found = _slot_setters[key] = vars(self.base)[slot].__set__
        return found

    def plain(self, cls: type) -> bool:
        own = cls.__mro__[: cls.__mro__.index(self.base)]
        return not any(name in vars(k) for k in own for name in self.overridable)


@dataclass(frozen=True, eq=False)
class DictStateLayout:
    """Where a dict-backed foreign state keeps its parts, for generated code (BrainState's State).

    The raw value is ``__dict__[value]``; every other entry but the ``bookkeeping``
    names is metadata, kept as it is stored except the names in ``convert``: ``(to
    metadata, to stored)`` (a tag set is a frozenset in the metadata). Raw reads and
    writes equal the library's own only while ``raw_reads()`` / ``raw_writes()`` hold
    (asked once per call: no trace recording, no global hook, ...) and the state's
    ``__dict__[hooks]`` is ``None`` or has a false ``hooks_flag``; a value of type
    ``invalid`` is never read raw; a raw write also sets ``__dict__[written] = True``.
    Otherwise the reference walker serves the call, through the library. A new state is
    ``object.__new__(cls)`` with its metadata, its value and each ``rebuild`` entry (a
    factory given the per-call context). ``plain(cls)``: no class below ``base``
    defines one of ``overridable``.
    """

    base: type
    value: str
    bookkeeping: frozenset[str]
    convert: dict[str, tuple[Callable[[Any], Any], Callable[[Any], Any]]]
    raw_reads: Callable[[], bool]
    raw_writes: Callable[[], bool]
    hooks: str
    hooks_flag: str
    invalid: type | None
    written: str | None
    rebuild: tuple[Rebuild, ...]
    overridable: tuple[str, ...]

    def plain(self, cls: type) -> bool:
        own = cls.__mro__[: cls.__mro__.index(self.base)]
        return not any(name in vars(k) for k in own for name in self.overridable)


@dataclass(frozen=True, eq=False)
class StateImpl:
    """How to read, write and make the instances of a foreign state class.

    ``get`` / ``set`` move the raw value (no hooks, no copies, unless the library
    demands them right now); ``check_set`` raises, before anything is written, when a
    write is not allowed (e.g. from another trace level); ``metadata`` is a sorted
    tuple of ``(name, value)`` pairs kept in the ``GraphDef``; ``create(cls, value,
    metadata, context)`` makes a new state of exactly ``cls``, valid at the current
    trace level (``context()`` is made once per unflatten). ``layout`` describes the
    state to generated code: a :class:`StateLayout` (slotted) or a :class:`DictStateLayout`
    (dict-backed); ``None``: only the reference walker serves it.
    """

    type: type
    get: Callable[[Any], Any]
    set: Callable[[Any, Any], None]
    metadata: Callable[[Any], tuple[tuple[str, Hashable], ...]]
    # builtins.type: in the class body, ``type`` names the field above
    create: Callable[[builtins.type, Any, tuple[tuple[str, Hashable], ...], Any], Any]
    check_set: Callable[[Any, Any], None] | None = None
    context: Callable[[], Any] | None = None
    layout: StateLayout | DictStateLayout | None = None


_builtin_type = type
_lock = threading.RLock()
_node_impls: dict[type, NodeImpl] = {}
_state_impls: dict[type, StateImpl] = {}
_unsupported: dict[type, str] = {}
_kind_cache: dict[type, int] = {}
_epoch = [0]


def registry_epoch() -> int:
    """A counter bumped by every registration; generated code guards on it."""
    return _epoch[0]


def epoch_cell() -> list[int]:
    """The mutable cell holding the epoch (bound into generated code)."""
    return _epoch


def register_graph_node_type(
    type: type,  # noqa: A002 - the anchors' parameter name
    flatten: Callable[[Any], tuple[Iterable[tuple[Hashable, Any]], Hashable]],
    set_key: Callable[[Any, Hashable, Any], None],
    pop_key: Callable[[Any, Hashable], Any],
    create_empty: Callable[[Hashable], Any],
    clear: Callable[[Any], None],
) -> None:
    """Register a custom mutable graph node type.

    Its instances are then graph nodes: flattened by ``flatten``, rebuilt with
    ``create_empty`` + ``set_key``. Registration clears the classification cache
    and invalidates every specialization.
    """
    if not isinstance(type, _builtin_type):
        raise TypeError(f"register_graph_node_type expects a class, got {type!r}")
    with _lock:
        _node_impls[type] = NodeImpl(type, flatten, set_key, pop_key, create_empty, clear)
        clear_classification_cache()


@dataclass(frozen=True, eq=False)
class _DictNodeRegistration:
    fields: dict[str, Any]  # DictNode's fields but cls and int_keys (resolved per class)
    int_keys: bool | Callable[[type], bool]

    def resolve(self, cls: type) -> NodeImpl:
        int_keys = self.int_keys(cls) if callable(self.int_keys) else self.int_keys
        dn = DictNode(cls=cls, int_keys=bool(int_keys), **self.fields)

        def flatten(node: Any) -> tuple[list[tuple[Hashable, Any]], Hashable]:
            return dn.children(node), dn.metadata(node)

        def set_key(node: Any, key: Hashable, value: Any) -> None:
            node.__dict__[dn.stored_key(key)] = value

        def pop_key(node: Any, key: Hashable) -> Any:
            return node.__dict__.pop(dn.stored_key(key))

        def create_empty(metadata: Hashable) -> Any:
            return dn.new(metadata, dn.context() if dn.context is not None else None)

        def clear(node: Any) -> None:
            hidden = dn.hidden_names()
            for k in [k for k in node.__dict__ if k not in hidden]:
                del node.__dict__[k]

        return NodeImpl(cls, flatten, set_key, pop_key, create_empty, clear, dict_node=dn)


def register_dict_node_type(
    type: type,  # noqa: A002 - the same spelling as register_graph_node_type
    *,
    hidden: Iterable[str] = (),
    hidden_attr: str | None = None,
    int_keys: bool | Callable[[type], bool] = False,
    bookkeeping: tuple[Field, ...] | Callable[[Any], Hashable] | None = None,
    create: tuple[Rebuild, ...] | Callable[[type, Hashable], Any] | None = None,
    context: Callable[[], Any] | None = None,
    static_arrays: bool = False,
    data_keys: Callable[[type, Any], Container[str] | None] | None = None,
    check_write: Callable[[Any], None] | None = None,
    token: Callable[[], Any] | None = None,
    token_path: tuple[str, ...] = (),
    native_state: Callable[[list[tuple[tuple, type, tuple, Any]]], Any] | None = None,
) -> None:
    """Register a node class (and its subclasses) whose children live in ``__dict__``.

    Declarative, so the specializer can keep its ``__dict__`` reads and stores:

    - ``hidden``: bookkeeping attribute names, never children; ``hidden_attr``: a
      class attribute listing more of them (read on every flatten).
    - ``int_keys``: stored names that spell an int (``'3'``) have int path keys, and
      ints sort before strings (NNX's ``List``); a bool or a function of the class.
    - ``bookkeeping``: the node's bookkeeping as hashable metadata kept in the
      ``GraphDef``: a tuple of :class:`Field` (what generated code can spell out), or a
      function of the node (served by the reference walker only).
    - ``create``: how a fresh empty instance is made: a tuple of :class:`Rebuild` (each
      bookkeeping attribute from the metadata, or a factory of metadata items and the
      per-call ``context()``), or a function ``(cls, metadata)``; default
      ``object.__new__(cls)``.
    - ``static_arrays``: bare arrays under these nodes are static (BrainState's rule)
      instead of dynamic leaves.
    - ``data_keys(cls, metadata)``: stored names whose plain (non-array, non-None) values
      are dynamic leaves all the same (NNX's ``nnx.data(...)`` attributes), from the
      node's class and metadata (so generated code knows them from the structure).
    - ``check_write(node)``: raise if the node may not be written now (trace level);
      ``token`` / ``token_path``: the same rule for generated code (see ``StateLayout``).
    - ``native_state(items)``: present ``(path, state type, metadata, value)`` items in
      the library's own state form (the gradients ``value_and_grad`` returns).
    """
    if not isinstance(type, _builtin_type):
        raise TypeError(f"register_dict_node_type expects a class, got {type!r}")
    declared_fields = bookkeeping if isinstance(bookkeeping, tuple) else None
    declared_rebuild = create if isinstance(create, tuple) else None
    fields = {
        "hidden": frozenset(hidden),
        "hidden_attr": hidden_attr,
        "fields": declared_fields,
        "bookkeeping": None if declared_fields is not None else bookkeeping,
        "rebuild": declared_rebuild,
        "create": None if declared_rebuild is not None else create,
        "context": context,
        "static_arrays": bool(static_arrays),
        "data_keys": data_keys,
        "check_write": check_write,
        "token": token,
        "token_path": tuple(token_path),
        "native_state": native_state,
    }
    reg = _DictNodeRegistration(fields, int_keys)
    with _lock:
        _node_impls[type] = reg  # type: ignore[assignment]
        clear_classification_cache()


def register_state_type(
    type: type,  # noqa: A002 - the same spelling as register_graph_node_type
    *,
    get: Callable[[Any], Any],
    set: Callable[[Any, Any], None],  # noqa: A002 - names the operation
    metadata: Callable[[Any], tuple[tuple[str, Hashable], ...]],
    create: Callable[[type, Any, tuple[tuple[str, Hashable], ...], Any], Any],
    check_set: Callable[[Any, Any], None] | None = None,
    context: Callable[[], Any] | None = None,
    layout: StateLayout | DictStateLayout | None = None,
) -> None:
    """Register a foreign state class (and its subclasses): see :class:`StateImpl`.

    Its instances are then states: identity objects whose raw value goes into the
    ``StateMap`` and whose metadata goes into the ``GraphDef``.
    """
    if not isinstance(type, _builtin_type):
        raise TypeError(f"register_state_type expects a class, got {type!r}")
    with _lock:
        _state_impls[type] = StateImpl(type, get, set, metadata, create, check_set, context, layout)
        clear_classification_cache()


def register_unsupported_type(type: type, reason: str) -> None:  # noqa: A002
    """Refuse instances of ``type`` (and subclasses) anywhere in a graph, with ``reason``."""
    with _lock:
        _unsupported[type] = reason
        clear_classification_cache()


def unsupported_reason(t: type) -> str:
    for base in t.__mro__:
        reason = _unsupported.get(base)
        if reason is not None:
            return reason
    return f"{t.__qualname__} is not supported"  # pragma: no cover - only asked for UNSUPPORTED kinds


def clear_classification_cache() -> None:
    """Forget every cached classification and bump the registry epoch."""
    with _lock:
        _kind_cache.clear()
        _impl_cache.clear()
        _state_impl_cache.clear()
        _epoch[0] += 1


# -- built-in Node protocol ---------------------------------------------------


def _node_set_key(node: Any, key: Hashable, value: Any) -> None:
    node.__dict__[key] = value


def _node_pop_key(node: Any, key: Hashable) -> Any:
    return node.__dict__.pop(key)


def _node_clear(node: Any) -> None:
    node.__dict__.clear()


def node_children(node: Any) -> list[tuple[Hashable, Any]]:
    """The children of a ``Node``: its attributes sorted by name, minus the invisible."""
    d = node.__dict__
    if type(d) is not dict:
        # A dict subclass put in as ``__dict__`` (defaultdict, Counter, ...): read what
        # attribute access sees, the dict's own storage, past any override of its methods.
        d = dict(dict.items(d))
    hidden = type(node).graph_invisible_attrs
    keys = sorted(d)
    if hidden:
        keys = [k for k in keys if k not in hidden]
    return [(k, d[k]) for k in keys]


def _node_flatten(node: Any) -> tuple[list[tuple[Hashable, Any]], None]:
    return node_children(node), None


def _node_create_empty(metadata: Hashable) -> Any:  # pragma: no cover - typed per class below
    raise AssertionError("Node shells are created from the node type")


_BUILTIN_NODE_IMPL = NodeImpl(
    Node, _node_flatten, _node_set_key, _node_pop_key, _node_create_empty, _node_clear, True
)
_impl_cache: dict[type, NodeImpl] = {}
_state_impl_cache: dict[type, StateImpl | None] = {}


def node_impl(t: type) -> NodeImpl:
    """The protocol implementation for node type ``t`` (exact registration, else MRO)."""
    impl = _impl_cache.get(t)
    if impl is not None:
        return impl
    with _lock:
        for base in t.__mro__:
            impl = _node_impls.get(base)
            if impl is not None:
                if type(impl) is _DictNodeRegistration:
                    impl = impl.resolve(t)
                break
        else:
            if issubclass(t, Node):
                impl = _BUILTIN_NODE_IMPL
            else:
                raise TypeError(
                    f"{t.__module__}.{t.__qualname__} is not a graph node type: subclass "
                    "specgraph.Node or call specgraph.register_graph_node_type for it"
                )
        _impl_cache[t] = impl
        return impl


def state_impl(t: type) -> StateImpl | None:
    """The foreign-state implementation for state type ``t``; ``None`` for a ``specgraph.State``."""
    try:
        return _state_impl_cache[t]
    except KeyError:
        pass
    found = None
    if not issubclass(t, State):
        _load_adapters(t)
        for base in t.__mro__:
            found = _state_impls.get(base)
            if found is not None:
                break
        else:
            raise TypeError(f"{t.__module__}.{t.__qualname__} is not a state type")
    with _lock:
        _state_impl_cache[t] = found
    return found


def is_state_type(t: type) -> bool:
    """Whether ``t`` is a state class: a ``specgraph.State`` or a registered foreign one."""
    if issubclass(t, State):
        return True
    _load_adapters(t)
    return any(base in _state_impls for base in t.__mro__)


# -- lazily loaded adapters for other graph libraries ---------------------------

# Top-level package of a class's module -> (module prefix it must start with, adapter).
_PENDING_ADAPTERS: dict[str, tuple[str, str]] = {
    "flax": ("flax.nnx", "specgraph.interop.nnx"),
    "brainstate": ("brainstate", "specgraph.interop.brainstate"),
}


def _load_adapters(t: type) -> None:
    """Import the adapter of each graph library in ``t``'s MRO, once (they register themselves).

    Runs on a classification-cache miss only, so ``import specgraph`` never imports
    flax or brainstate: an adapter loads when an object of its library shows up.
    """
    if not _PENDING_ADAPTERS:
        return
    for base in t.__mro__:
        module = getattr(base, "__module__", None)
        if type(module) is not str:
            continue
        top = module.partition(".")[0]
        pending = _PENDING_ADAPTERS.get(top)
        if pending is None or not (module == pending[0] or module.startswith(pending[0] + ".")):
            continue
        with _lock:
            if _PENDING_ADAPTERS.pop(top, None) is None:
                continue  # another thread loaded it
        try:
            importlib.import_module(pending[1])
        except Exception as e:  # an unexpected library version: serve its objects as plain objects
            warnings.warn(
                f"specgraph could not load its adapter for {pending[0]} ({type(e).__name__}: {e}); "
                f"{pending[0]} objects are treated as plain Python objects",
                RuntimeWarning,
                stacklevel=3,
            )


# -- classification -----------------------------------------------------------

_ARRAY_TYPES: tuple[type, ...] = (jax.Array, np.ndarray)


def _classify(x: Any) -> int:
    t = type(x)
    _load_adapters(t)
    for base in t.__mro__:
        if base in _node_impls:
            return NODE
        if base in _state_impls:
            return FSTATE
        if base in _unsupported:
            return UNSUPPORTED
    if issubclass(t, Node):
        return NODE
    if issubclass(t, State):
        return STATE
    if isinstance(x, _ARRAY_TYPES):
        return ARRAY
    if t is list:
        return LIST
    if t is tuple:
        return TUPLE
    if t is dict:
        return DICT
    if x is None:
        return STATIC
    if not tree_util.all_leaves([x]):
        return PYTREE
    return STATIC


def kind_of(x: Any) -> int:
    """The kind of ``x`` (one of the module's kind constants), cached by type."""
    t = type(x)
    k = _kind_cache.get(t)
    if k is None:
        k = _classify(x)
        with _lock:
            _kind_cache[t] = k
    return k


def kind_cache() -> dict[type, int]:
    """The live cache dict (read directly by the walker's hot loop)."""
    return _kind_cache


# -- one level of a JAX pytree --------------------------------------------------


def pytree_level(x: Any) -> tuple[list[Any], Any]:
    """``(children, treedef)`` of one level of a non-builtin JAX pytree (generated code)."""
    return tree_util.tree_flatten(x, is_leaf=lambda y: y is not x)


def pytree_children(x: Any) -> tuple[Any, tuple, list]:
    """``(treedef, keys, children)`` of the same level, with the children's path keys
    (the reference walker's view; about twice the cost of :func:`pytree_level`)."""
    with_path, treedef = tree_util.tree_flatten_with_path(x, is_leaf=lambda y: y is not x)
    keys = tuple(_key_entry(p[0]) if p else i for i, (p, _) in enumerate(with_path))
    return treedef, keys, [c for _, c in with_path]


_one_level_with_keys = tree_util.default_registry.flatten_one_level_with_keys
# JAX's key entries, read as _key_entry reads them, by exact type (C++ classes: no subclasses).
_KEY_READS: dict[type, Callable[[Any], Any]] = {
    tree_util.DictKey: operator.attrgetter("key"),
    tree_util.GetAttrKey: operator.attrgetter("name"),
    tree_util.SequenceKey: operator.attrgetter("idx"),
    tree_util.FlattenedIndexKey: operator.attrgetter("key"),
}
# Keys of these exact types are the same key when equal (their == runs no user code).
_PLAIN_KEY_TYPES = frozenset({str, int, bool})


def pytree_keys(x: Any) -> tuple:
    """The children's path keys of one level of a custom pytree, as :func:`pytree_children`
    gives them (its registered keys function, called once). Not for a namedtuple of JAX's
    namedtuple kind: JAX's one-level-with-keys names its first field for every child."""
    out = []
    for k, _ in _one_level_with_keys(x)[0]:
        read = _KEY_READS.get(type(k))
        out.append(read(k) if read is not None else _key_entry(k))
    return tuple(out)


def same_pytree_keys(x: Any, expected: tuple) -> bool:
    """Whether :func:`pytree_keys` of ``x`` are ``expected``, key by key by the rule for
    statics (``_sameness.same``: 1 and True are two keys): a generated guard's test."""
    kc = _one_level_with_keys(x)[0]
    if len(kc) != len(expected):
        return False
    reads = _KEY_READS
    for (k, _), e in zip(kc, expected, strict=True):
        read = reads.get(type(k))
        v = read(k) if read is not None else _key_entry(k)
        if v is e:
            continue
        t = type(v)
        if t is type(e) and t in _PLAIN_KEY_TYPES:
            if v != e:
                return False
        elif not _same(v, e):
            return False
    return True


def pytree_level_keyed(x: Any, expected: tuple, aux: Any) -> tuple[list[Any], bool]:
    """``(children, ok)`` of one level of a custom pytree whose keys are not fixed by its
    treedef (generated code, after ``x``'s type guard): ``ok`` is false when their path keys
    are not ``expected`` (compared as :func:`same_pytree_keys` does; their count is the
    arity) or its aux data is not ``aux`` (compared as the treedef guard and ``SAME_AUX``
    compare it: ``==`` and the rule for statics). One jaxlib call reads the children, their
    keys and the aux data: the registered keys function, as the reference walker's read
    calls it."""
    kc, a = _one_level_with_keys(x)
    if aux is None:
        if a is not None:
            return [c for _, c in kc], False
    elif a != aux or not _same(a, aux):
        return [c for _, c in kc], False
    if len(kc) != len(expected):
        return [c for _, c in kc], False
    reads = _KEY_READS
    children = []
    for (k, c), e in zip(kc, expected, strict=True):
        read = reads.get(type(k))
        v = read(k) if read is not None else _key_entry(k)
        if v is not e:
            t = type(v)
            if t is type(e) and t in _PLAIN_KEY_TYPES:
                if v != e:
                    return [c for _, c in kc], False
            elif not _same(v, e):
                return [c for _, c in kc], False
        children.append(c)
    return children, True


def keys_fixed_by_treedef(treedef: Any) -> bool:
    """Whether a custom pytree's path keys are a function of its one-level treedef (type,
    arity, aux data), which the generated code guards already: a namedtuple of JAX's
    namedtuple kind (its fields' names, from its class), an ``OrderedDict`` or a
    ``defaultdict`` (its keys, in the aux data). Any other registered class may have a keys
    function reading instance data the treedef does not hold; JAX does not say whether it
    has one, so its keys are guarded."""
    data = treedef.node_data()
    if not data:
        return False
    t = data[0]
    if t is collections.OrderedDict or t is collections.defaultdict:
        return True
    if not (isinstance(t, type) and issubclass(t, tuple) and hasattr(t, "_fields")):
        return False
    # JAX's namedtuple kind, not a namedtuple class registered as a custom node.
    return data[1] is None and repr(treedef).startswith(f"PyTreeDef(CustomNode(namedtuple[{t.__name__}],")


def _key_entry(k: Any) -> Hashable:
    """A JAX key-path entry as a plain path element."""
    for attr in ("key", "idx", "name"):
        if hasattr(k, attr):
            return getattr(k, attr)
    return k  # pragma: no cover - unknown key kinds are kept as they are
