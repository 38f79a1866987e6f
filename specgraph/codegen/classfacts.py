"""What a plan may assume about classes, read from the class dicts at compile time.

Two questions: can user code run while a generated function reads or builds a
structure (a hook, a property, a custom ``__eq__``)? And which facts about classes
(their MRO, names absent from their dicts) does the generated code rely on, to be
checked per call (:class:`ClassFacts`, the ``class`` guard)?
"""

from __future__ import annotations

import operator
import typing
from typing import Any, cast

from .. import _registry as reg
from .._ir import GraphDef, NodeSpec, PytreeEdge, StateSpec, StaticEdge
from .._sameness import ExactClass, is_value_sig
from .analysis import structure_memo
from .naming import Constants, Literal
from .ops import Step

__all__ = [
    "ClassFacts",
    "MAX_INLINE_ATTRIBUTES",
    "attribute_stores_ok",
    "defines",
    "plain_containers",
    "plain_metaclass",
    "flatten_runs_no_user_code",
    "own_state_classes",
    "unflatten_order_free",
    "unflatten_runs_no_user_code",
]

_IMMUTABLE_TYPE = 1 << 8  # Py_TPFLAGS_IMMUTABLETYPE: builtin and C types cannot change


# Hooks through which a metaclass could run code when a class's ``__mro__``, ``__dict__``
# or attributes are read: a metaclass defining none of them reads as ``type`` does.
_METACLASS_HOOKS = ("__getattribute__", "__getattr__", "__setattr__", "__delattr__", "mro")


def plain_metaclass(t: type) -> bool:
    """Reading ``t``'s ``__mro__``, ``__dict__`` and class attributes runs no metaclass code:
    its metaclass is ``type``, or a ``type`` subclass defining none of the attribute hooks
    (``ABCMeta``, NNX's and BrainState's metaclasses). Class facts about such a class
    also require its metaclass to stay that way."""
    m: type = type(t)
    if m is type:
        return True
    return isinstance(m, type) and type(m) is type and not any(
        name in vars(k) for k in m.__mro__ if k is not type and k is not object for name in _METACLASS_HOOKS)


def defines(t: type, name: str) -> bool:
    """Whether a class of ``t``'s MRO other than ``object`` has ``name`` in its own dict.

    Read from the class dicts, never through attribute access (a metaclass can lie).
    """
    return any(name in vars(k) for k in t.__mro__ if k is not object)


def _own_value_or_metadata(t: type) -> bool:
    """A state subclass defines its own ``value`` or ``_metadata`` (a property, say)."""
    return any("value" in vars(k) or "_metadata" in vars(k) for k in own_state_classes(t))


def own_state_classes(t: type) -> list[type]:
    """The classes of a state type's MRO before ``State`` (whose slots are ours)."""
    from .._model import State

    mro = t.__mro__
    return list(mro[: mro.index(State)]) if State in mro else list(mro)


# Not guarded: object and the builtins cannot change, and typing.Generic (a base of every
# State) is the standard library's.
_UNGUARDED: frozenset[type] = frozenset({object, typing.Generic})


class ClassFacts:
    """What a plan relies on about classes: their MRO, and names absent from their dicts.

    Facts are only taken for classes whose metaclass is ``type`` (nothing can lie
    about ``__mro__`` or ``__dict__``). A generated function checks them first on
    every call, before it reads anything (``T.__mro__ is not MRO0``, then
    ``'__hash__' in D0``, a dict lookup each), and answers ``'class'``/``MISS`` when
    one no longer holds; the dispatcher then compiles again from the classes as they
    are.
    """

    def __init__(self) -> None:
        self.mro: dict[type, tuple[type, ...]] = {}
        self.absent: dict[type, set[str]] = {}
        #: node class -> its ``graph_invisible_attrs`` when compiled (guarded per call as a
        #: node_keys miss; a change that leaves the structure the same must compile again)
        self.hidden: dict[Any, Any] = {}
        self._required: set[tuple] = set()  # require_absent calls already applied

    def require_absent(self, t: type, names: tuple[str, ...], classes: list[type] | None = None) -> None:
        """``names`` stay absent from the dicts of ``t``'s MRO classes (or of ``classes``)."""
        # by id: a metaclass may claim its class equals another (self.mro holds t alive)
        done = (id(t), names, None if classes is None else tuple(map(id, classes)))
        if done in self._required:  # the same facts again (a class used at many places)
            return
        if not plain_metaclass(t):
            raise ValueError(f"no class facts for {t!r}: its metaclass defines attribute hooks")
        self._required.add(done)
        if type(t) is not type:
            self.require_absent(type(t), _METACLASS_HOOKS)  # the metaclass stays plain
        self.mro[t] = t.__mro__
        for k in t.__mro__ if classes is None else classes:
            if k not in _UNGUARDED and not k.__flags__ & _IMMUTABLE_TYPE:
                self.absent.setdefault(k, set()).update(names)

    def steps(self, consts: Constants) -> list[Step]:
        """The class guards, to run before anything else."""
        out = [Step("guard_mro", cls=consts.bind(t, "T"), mro=consts.bind(mro, "MRO"))
               for t, mro in self.mro.items()]
        out += [Step("guard_class", cls_dict=consts.bind(vars(k), "D"), cls=consts.bind(k, "T"),
                     names=[Literal(n) for n in sorted(names)])
                for k, names in self.absent.items()]
        return out

    def hold(self) -> bool:
        """Whether every fact still holds (the dispatcher's staleness test)."""
        return all(t.__mro__ is mro for t, mro in self.mro.items()) and not any(
            n in vars(k) for k, names in self.absent.items() for n in names) and all(
            getattr(t, "graph_invisible_attrs", ()) == h for t, h in self.hidden.items())


def _std_dict(t: type) -> bool:
    """``x.__dict__`` is CPython's own getter (no class of the MRO overrides ``__dict__``),
    and every class dict has only exact str keys (a str subclass key can make a name
    lookup in it disagree with the type's own slots)."""
    return all(type(vars(k).get("__dict__", _GETSET)) is _GETSET_TYPE
               and all(type(n) is str for n in vars(k)) for k in t.__mro__)


_GETSET_TYPE = type(type.__dict__["__dict__"])
_GETSET = type.__dict__["__dict__"]


def flatten_runs_no_user_code(gd: GraphDef) -> bool:
    """No user code can run while a generated flatten reads a graph of this structure.

    Only then may it read a node twice and trust both reads to agree (the witness
    rule). Read from the class dicts at compile time: the metaclass is ``type``; no
    ``__getattribute__``, no ``__dict__`` of a class's own, no ``graph_invisible_attrs``
    but a plain tuple of str; for states, no ``value``, ``_metadata`` or ``__getattr__``
    of a subclass's own; only list/tuple/dict containers with str/int keys; only plain
    statics. Not guarded per call: user code that runs anyway (a hook added to a class
    later, a finalizer, the ``__eq__`` of a str-subclass key left in a node's dict) and
    rewires the graph mid-call is not supported (see the README).

    The class dicts are read once per distinct class (one pass: linear in the table,
    not in the table times the MRO).
    """
    # Node and state classes whose class reads passed: by id, as a metaclass may claim its
    # class equals another (the GraphDef holds each class alive meanwhile)
    passed_nodes: set[int] = set()
    passed_states: set[int] = set()
    for spec in gd.table:
        t = spec[1]  # (its class; entries read by index in this loop over the table)
        if type(spec) is StateSpec:
            if id(t) not in passed_states:
                if not _flatten_class_ok(t, True):
                    return False
                passed_states.add(id(t))
            continue
        if id(t) not in passed_nodes:
            if not _flatten_class_ok(t, False):
                return False
            passed_nodes.add(id(t))
        for c in cast(NodeSpec, spec)[4]:  # its children
            # Only scalar statics (a type, a class compared by identity, or a float
            # zero's (float, sign)) and plain tuples of value types (matched item by item
            # by SAME, which compares exact types first): no tuple's __eq__.
            if type(c) is StaticEdge:
                sig = c[1]
                if not (isinstance(sig, type) or type(sig) is ExactClass or sig[0] is float
                        or is_value_sig(sig)):
                    return False
    return plain_containers(gd)


def plain_state_reads(t: type) -> bool:
    """Reading a state of class ``t`` (its value, its metadata) runs no user code (a
    ``value`` property would): what :func:`flatten_runs_no_user_code` asks of a state class."""
    return _flatten_class_ok(t, True)


def _flatten_class_ok(t: type, is_state: bool) -> bool:
    """The class reads of :func:`flatten_runs_no_user_code` for one class."""
    if not plain_metaclass(t) or defines(t, "__getattribute__") or not _std_dict(t):
        return False
    if is_state:
        simpl = reg.state_impl(t)
        if simpl is not None:  # a foreign state: its layout's slots are read, nothing else
            return simpl.layout is not None and simpl.layout.plain(t)
        return not defines(t, "__getattr__") and not _own_value_or_metadata(t)
    impl = reg.node_impl(t)
    if not impl.is_builtin_node and impl.dict_node is None:
        return False  # its registered flatten is user code
    hidden = next((vars(k)["graph_invisible_attrs"] for k in t.__mro__
                   if "graph_invisible_attrs" in vars(k)), ())
    return type(hidden) is tuple and all(type(h) is str for h in hidden)


def plain_containers(gd: GraphDef, custom: bool = False) -> bool:
    """Only list, tuple and dict containers, with exact str or int keys (``custom``: and
    custom pytrees, a namedtuple or a registered class, whose ``unflatten`` is user code).

    The structure alone answers (no class is read): computed once per GraphDef and
    shared by the flatten and the unflatten planners.
    """
    if custom:
        return structure_memo(gd, "plain_or_custom_containers", _plain_or_custom_containers)
    return structure_memo(gd, "plain_containers", _plain_containers)


def _plain_or_custom_containers(gd: GraphDef) -> bool:
    return _plain_containers(gd, True)


def _plain_containers(gd: GraphDef, custom: bool = False) -> bool:
    # The containers only (every other edge is skipped unopened): the root's, the nodes'.
    stack: list[Any] = [c for spec in gd.table if type(spec) is NodeSpec for c in spec[4]
                        if type(c) is PytreeEdge]
    stack.append(gd.root)
    while stack:
        e = stack.pop()
        if type(e) is PytreeEdge:
            if e.ptype is not list and e.ptype is not tuple and e.ptype is not dict and not custom:
                return False
            if e.ptype is dict and not all(type(k) is str or type(k) is int for k in e.keys):
                return False
            stack.extend(e[3])
    return True


def unflatten_runs_no_user_code(gd: GraphDef, impls: dict[int, Any]) -> bool:
    """No user code runs while building this structure (read at compile time).

    No custom node type (``create_empty``/``set_key``), no custom pytree
    (``unflatten``), no user dict keys to hash, no state type with its own
    ``__new__``, ``__setattr__``, ``value`` or ``_metadata``. Each distinct class is
    read once.
    """
    for t, is_node, i in _classes(gd):  # (each distinct class once)
        if is_node and not impls[i].is_builtin_node:
            return False
        if type(t) is not type or not _std_dict(t):
            return False
        if not is_node and (defines(t, "__new__") or defines(t, "__setattr__") or _own_value_or_metadata(t)):
            return False
    return plain_containers(gd)


def _classes(gd: GraphDef) -> list[tuple[type, bool, int]]:
    """Each distinct (class, is a node) of the table once, with the index it first sits at,
    in table order. Kept per GraphDef (``structure_memo``; equal GraphDefs have the very same
    classes; never mutate it)."""
    return structure_memo(gd, "classes", _distinct_classes)


def _distinct_classes(gd: GraphDef) -> list[tuple[type, bool, int]]:
    seen: set[tuple[int, bool]] = set()
    out: list[tuple[type, bool, int]] = []
    for spec in gd.table:
        t = spec[1]
        k = (id(t), type(spec) is NodeSpec)
        if k not in seen:
            seen.add(k)
            out.append((t, k[1], spec[2]))
    return out


def _state_names_str(gd: GraphDef) -> bool:
    """Every state's metadata names are exact str (``structure_memo``)."""
    return structure_memo(gd, "state_names_str", _all_state_names_str)


def _all_state_names_str(gd: GraphDef) -> bool:
    for spec in gd.table:
        if type(spec) is StateSpec:
            for k, _ in spec[3]:
                if type(k) is not str:
                    return False
    return True


def unflatten_order_free(gd: GraphDef, impls: dict[int, Any], no_user_code: bool | None = None,
                         callbacks: bool = False) -> bool:
    """The order a generated unflatten makes this structure's objects in is not observable
    (read at compile time): then outlined code may build a repeated subtree where it is
    used, bottom-up, instead of in table order as the reference does.

    :func:`unflatten_runs_no_user_code` (``no_user_code``: its answer, if known) and no
    node class with a ``__getattribute__`` of its own (run where a node's ``__dict__`` is
    filled), or, for foreign classes, what their generated
    code runs is the library adapter's own: a dict-backed node class (NNX Pytrees,
    BrainState Nodes) made by ``object.__new__`` with its bookkeeping from the metadata or
    from factories of the adapter (``specgraph.*`` functions or ``operator`` callables: no
    user code), written through a plain ``__dict__`` (no ``__getattribute__`` of its own,
    guarded per call by the planner); a foreign state with a layout (NNX Variables, BrainState
    States), made by ``object.__new__`` and slot or ``__dict__`` stores of its own copy of
    the metadata, whose names are exact str (hashed by the copy: no user ``__hash__``).
    Each distinct class is read once. What it reads is guarded per call by the planner
    where outlined code relies on it (a ``__getattribute__``, a state's ``__setattr__``,
    ``value`` or ``_metadata`` gained later would run in another order than the reference's).

    ``callbacks``: the same, but callback node types (``register_graph_node_type``) are
    allowed and their classes not read: their ``create_empty``/``set_key`` are user code,
    which the two-phase builders call in the reference's order (see unflatten_plan.py).
    """
    if callbacks:
        no_user_code = False
    if no_user_code is None:
        no_user_code = unflatten_runs_no_user_code(gd, impls)
    if no_user_code:
        return not any(is_node and defines(t, "__getattribute__") for t, is_node, _ in _classes(gd))
    if not _state_names_str(gd):
        return False
    for t, is_node, i in _classes(gd):  # (each distinct class once)
        if callbacks and is_node and _callback_node(impls[i]):
            continue  # (its class is never read: only its callbacks run)
        if not plain_metaclass(t) or not _std_dict(t) or defines(t, "__getattribute__"):
            return False
        if is_node:
            impl = impls[i]
            if not impl.is_builtin_node and not _adapter_dict_node(impl.dict_node):
                return False
        else:
            simpl = reg.state_impl(t)
            if simpl is None:
                if type(t) is not type or defines(t, "__new__") or defines(t, "__setattr__") \
                        or _own_value_or_metadata(t):
                    return False
            elif simpl.layout is None or not simpl.layout.plain(t) or not all(
                    _adapter_code(r.factory) for r in getattr(simpl.layout, "rebuild", ())):
                return False
    # Two phases (``callbacks``) build each container where the reference does, in its
    # node's fill in table order: a custom pytree's ``unflatten`` (user code) runs there too.
    return plain_containers(gd, custom=callbacks)


def _callback_node(impl: Any) -> bool:
    """A node class registered with callbacks (``register_graph_node_type``)."""
    return not impl.is_builtin_node and impl.dict_node is None


def _adapter_dict_node(dn: Any) -> bool:
    """A dict-backed node class whose fresh instance is ``object.__new__`` and bookkeeping
    from its metadata or the adapter's factories (see :func:`unflatten_order_free`)."""
    if dn is None or dn.create is not None or (dn.rebuild is None and dn.bookkeeping is not None):
        return False
    return all(r.factory is None or _adapter_code(r.factory) for r in dn.rebuild or ())


def _adapter_code(fn: Any) -> bool:
    """``fn`` is specgraph's own (a library adapter's) or an ``operator`` callable."""
    module = getattr(type(fn), "__module__", None) if type(fn) is operator.itemgetter \
        else getattr(fn, "__module__", None)
    return type(module) is str and (module == "operator" or module.startswith("specgraph."))


def attribute_stores_ok(t: type, keys: tuple) -> bool:
    """Whether ``o.<key> = value`` on a fresh ``t`` does exactly ``o.__dict__[key] = value``.

    Attribute stores keep a new node's attributes in CPython's compact per-instance
    values (no dict is materialized), the largest single saving of the unflatten.
    They equal the reference's ``node.__dict__.update`` while no class of ``t``'s MRO
    defines ``__setattr__`` (so ``object.__setattr__`` runs), ``__getattribute__`` (the
    reference's ``__dict__`` read goes through it) or any of the keys (so no data
    descriptor, slot or ``__class__`` takes the store): all read from the class dicts
    here, and guarded per call (ClassFacts) for the classes that can change.
    """
    return len(keys) <= MAX_INLINE_ATTRIBUTES and not defines(t, "__setattr__") \
        and not defines(t, "__getattribute__") and all(
        type(k) is str and not any(k in vars(c) for c in t.__mro__) for k in keys)


# CPython keeps at most 30 names in a class's shared instance keys (for all its instances
# together); past that, attribute stores fall back to a dict and cost more than filling the
# dict directly (measured: 128 attributes, 4.3 us against 3.2 us). A per-node bound is the
# part of that rule a plan can see.
# CPython keeps at most 30 names in a class's shared instance keys (for all its instances
# together); past that, attribute stores fall back to a dict and cost more than filling the
# dict directly (measured: 128 attributes, 4.3 us against 3.2 us). A per-node bound is the
# part of that rule a plan can see.
MAX_INLINE_ATTRIBUTES = 30
