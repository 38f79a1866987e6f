"""Plans: the flat list of small steps a generated function performs.

A planner walks a ``GraphDef`` in the same pre-order as the reference walker
and emits steps (load a child, guard its type, read a value, ...). All user data
(keys, static values, types, metadata) goes through :class:`Constants`: it
reaches the source either as a bound name or, for an exact ``str``/``int``, as
its ``repr``. The templates only ever see step fields and those safe spellings.
"""

from __future__ import annotations

import builtins
import copy
import keyword
import re
import typing
from collections import Counter
from collections.abc import Hashable
from dataclasses import dataclass, field
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
    StateSpec,
    StaticEdge,
    treedef_type,
)
from .._sameness import aux_data, is_value_sig, may_be_nan

__all__ = ["Declined", "Constants", "Step", "FlattenPlan", "UnflattenPlan", "plan_flatten", "plan_unflatten"]

# Guard kinds: each names one reason a specialized function can refuse an object.
GUARD_KINDS = (
    "epoch", "class", "type", "node_keys", "container", "static", "metadata", "backref", "distinct",
)

GUARD_WORDS = {
    "epoch": "the node-type registry has not changed since compilation (registry epoch)",
    "class": "no class gained a hook the code relies on it lacking (__hash__, __setattr__, ...) or new bases",
    "type": "every node, state and container has exactly the type it had (type(x) is T), every node's "
            "instance dict is exactly a dict",
    "node_keys": "every node has exactly its attribute names (count, plus the keyed reads)",
    "container": "every list/tuple has its length and every dict its keys",
    "static": "every static value has the same type and compares equal",
    "metadata": "every state has the same metadata",
    "backref": "every shared node/state is still the very same object at each of its paths",
    "distinct": "objects of a repeated type (states; nodes no own state vouches for) are distinct",
}


class Declined(Exception):
    """This structure is not specialized (unsupported edge kind or too large)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Constants:
    """Names for user data bound in the generated function's namespace.

    Types get a readable name derived from ``__name__`` (sanitized, never a
    builtin or a name the templates use); everything else a numbered one.
    """

    def __init__(self) -> None:
        self.namespace: dict[str, Any] = {}
        #: placeholder attribute name in the source -> the real name, bound into the code
        #: object's ``co_names`` after compilation (see ``emit.compile_source``)
        self.attributes: dict[str, str] = {}
        self._by_id: dict[int, str] = {}
        self._counts: dict[str, int] = {}
        self._attr_of: dict[str, str] = {}

    def _fresh(self, prefix: str) -> str:
        while True:  # skip names a readable type name already took (a class named ``M0``)
            n = self._counts.get(prefix, 0)
            self._counts[prefix] = n + 1
            name = f"{prefix}{n}"
            if name not in self.namespace:
                return name

    def bind(self, value: Any, prefix: str) -> str:
        name = self._by_id.get(id(value))
        if name is not None and self.namespace[name] is value:
            return name
        if isinstance(value, type):
            name = _type_name(value, self.namespace)
        else:
            name = self._fresh(prefix)
        self.namespace[name] = value
        self._by_id[id(value)] = name
        return name

    def attr(self, name: str) -> str:
        """A placeholder attribute name standing for ``name`` (an exact str) in the source.

        The real name never enters the text: it replaces the placeholder in the
        compiled code's names, as a constant would.
        """
        placeholder = self._attr_of.get(name)
        if placeholder is None:
            placeholder = self._attr_of[name] = f"attr{len(self._attr_of)}"
            self.attributes[placeholder] = name
        return placeholder

    def key(self, k: Hashable) -> str:
        """A safe spelling of a key: ``repr`` of an exact str/int, else a bound name."""
        if type(k) is str or type(k) is int:
            return repr(k)
        return self.bind(k, "K")


_BUILTIN_NAMES = frozenset(dir(builtins))
# Names the templates and the runtime namespace use; a type never takes one.
_RESERVED = frozenset(
    {"root", "vals", "S", "EPOCH", "KIND", "ARRAY", "NEW", "ONE_LEVEL", "KEY_SIG", "META_SIG", "SAME",
     "SAME_AUX", "SAME_KEYS", "MISS", "__builtins__"}
)
# The generated functions are named ``<kind>_<type>``: no bound type may take such a name.
_FUNCTION_PREFIXES = ("flatten_", "update_", "unflatten_", "walk_")
_LOCAL_NAME = re.compile(r"^(x|dx|droot|v|o|a|c|d|s|ch|chx|td|tdx|chroot|tdroot|attr)[0-9]*$")


def _type_name(t: type, taken: dict[str, Any]) -> str:
    """A readable, collision-free, identifier-safe name for a bound type."""
    raw = getattr(t, "__name__", "T")
    if getattr(builtins, raw, None) is t:
        return raw  # list, dict, str, ... bind to themselves
    base = re.sub(r"[^0-9A-Za-z_]", "_", raw) or "T"
    if base[0].isdigit() or keyword.iskeyword(base) or base in _BUILTIN_NAMES or base in _RESERVED \
            or _LOCAL_NAME.match(base) or base.startswith(_FUNCTION_PREFIXES):
        base = "T_" + base
    name = base
    n = 1
    while name in taken and taken[name] is not t:
        n += 1
        name = f"{base}_{n}"
    return name


def static_note(value: Any) -> str:
    """A comment-safe ``== value`` note for simple statics (reprs with no newline)."""
    if type(value) in (str, int, float, bool, type(None)):
        r = repr(value)
        return " == " + (r if len(r) <= 40 else r[:37] + "...")
    return ""


def path_label(path: tuple) -> str:
    """A comment-safe rendering of a path (no user text that could end the line)."""
    out = []
    for k in path:
        if type(k) is str:
            out.append("." + k if k.isidentifier() and k.isascii() else "[" + repr(k) + "]")
        elif type(k) is int:
            out.append(f"[{k}]")
        else:
            out.append("[?]")
    s = "".join(out)
    return s[1:] if s.startswith(".") else (s or "<root>")


@dataclass
class Step:
    """One line (or a few) of generated code. ``op`` picks the template branch."""

    op: str
    dst: str = ""
    src: str = ""
    arg: str = ""
    arg2: str = ""
    n: int = 0
    kind: str = ""  # guard kind for guards
    names: list[str] = field(default_factory=list)
    pairs: list[tuple[str, str]] = field(default_factory=list)
    miss: str = ""  # for load blocks: the guard kind a KeyError stands for
    comment: str = ""


@dataclass
class FlattenPlan:
    graphdef: GraphDef
    consts: Constants
    steps: list[Step]  # guards + loads, in pre-order
    values: list[str]  # local name per value slot
    writes: list[Step]  # update: assignments of new values (states, then array leaves)
    distinct: list[str]  # expressions that must be pairwise distinct
    objects: list[str]  # local name per table index (the defining occurrence)
    epoch: int
    counts: dict[str, int]  # guard kind -> number of guards of that kind
    facts: ClassFacts = field(default_factory=lambda: ClassFacts())  # what the class guards check
    keyed_statics: bool = False  # a KeyError outside the load blocks is a node_keys miss


GRAPHDEF = -1  # the base of every read: the pair (table, root) of a GraphDef


class StaticReads:
    """Where a plan's statics sit in its GraphDef, recorded as the planner reads them.

    An equal GraphDef may hold equal but distinct objects (``1`` and ``1.0`` are told
    apart by sigs, but an object matched by ``==`` is not), and an unflatten must put
    the given GraphDef's own objects into the graph. :meth:`read` finds them there.
    A read is a base (an earlier read, or :data:`GRAPHDEF`) and indices below it.
    """

    def __init__(self) -> None:
        self._at: list[tuple[int, tuple[int, ...]]] = []
        self._wanted: list[int] = []

    def at(self, base: int, *indices: int) -> int:
        """Record the object at ``indices`` below ``base``; return its read number."""
        self._at.append((base, indices))
        return len(self._at) - 1

    def want(self, ref: int) -> None:
        """The object of read ``ref`` is the next item of :meth:`read`'s tuple."""
        self._wanted.append(ref)

    def read(self, gd: GraphDef) -> tuple:
        """The wanted objects of ``gd`` (a GraphDef equal to the planned one), in order."""
        top = (gd.table, gd.root)
        got: list[Any] = []
        for base, indices in self._at:
            x = top if base < 0 else got[base]
            for i in indices:
                x = x[i]
            got.append(x)
        return tuple([got[r] for r in self._wanted])


@dataclass
class UnflattenPlan:
    graphdef: GraphDef
    consts: Constants
    steps: list[Step]
    root: str
    facts: ClassFacts = field(default_factory=lambda: ClassFacts())
    statics: StaticReads = field(default_factory=StaticReads)


_IMMUTABLE_TYPE = 1 << 8  # Py_TPFLAGS_IMMUTABLETYPE: builtin and C types cannot change


def _defines(t: type, name: str) -> bool:
    """Whether a class of ``t``'s MRO other than ``object`` has ``name`` in its own dict.

    Read from the class dicts, never through attribute access (a metaclass can lie).
    """
    return any(name in vars(k) for k in t.__mro__ if k is not object)


def _own_value_or_metadata(t: type) -> bool:
    """A state subclass defines its own ``value`` or ``_metadata`` (a property, say)."""
    return any("value" in vars(k) or "_metadata" in vars(k) for k in _own_state_classes(t))


def _own_state_classes(t: type) -> list[type]:
    """The classes of a state type's MRO before ``State`` (whose slots are ours)."""
    from .._model import State

    mro = t.__mro__
    return list(mro[: mro.index(State)]) if State in mro else list(mro)


# Not guarded: object and the builtins cannot change, and typing.Generic (a base of every
# State) is the standard library's.
_UNGUARDED: frozenset[type] = frozenset({object, typing.Generic})  # type: ignore[arg-type]


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
        self.hidden: dict[type, Any] = {}

    def require_absent(self, t: type, names: tuple[str, ...], classes: list[type] | None = None) -> None:
        """``names`` stay absent from the dicts of ``t``'s MRO classes (or of ``classes``)."""
        if type(t) is not type:
            raise ValueError(f"no class facts for {t!r}: its metaclass is not type")
        self.mro[t] = t.__mro__
        for k in t.__mro__ if classes is None else classes:
            if k not in _UNGUARDED and not k.__flags__ & _IMMUTABLE_TYPE:
                self.absent.setdefault(k, set()).update(names)

    def steps(self, consts: Constants) -> list[Step]:
        out = [Step("guard_mro", kind="class", src=consts.bind(t, "T"), arg=consts.bind(mro, "MRO"))
               for t, mro in self.mro.items()]
        out += [Step("guard_class", kind="class", src=consts.bind(vars(k), "D"), arg=consts.bind(k, "T"),
                     names=[repr(n) for n in sorted(names)])
                for k, names in self.absent.items()]
        return out

    def hold(self) -> bool:
        """Whether every fact still holds (the dispatcher's staleness test)."""
        return all(t.__mro__ is mro for t, mro in self.mro.items()) and not any(
            n in vars(k) for k, names in self.absent.items() for n in names) and all(
            t.graph_invisible_attrs == h for t, h in self.hidden.items())


def _std_dict(t: type) -> bool:
    """``x.__dict__`` is CPython's own getter (no class of the MRO overrides ``__dict__``),
    and every class dict has only exact str keys (a str subclass key can make a name
    lookup in it disagree with the type's own slots)."""
    return all(type(vars(k).get("__dict__", _GETSET)) is _GETSET_TYPE
               and all(type(n) is str for n in vars(k)) for k in t.__mro__)


_GETSET_TYPE = type(type.__dict__["__dict__"])
_GETSET = type.__dict__["__dict__"]


def _plain_types(gd: GraphDef) -> bool:
    """No user code can run while a generated flatten reads a graph of this structure.

    Only then may it read a node twice and trust both reads to agree (the witness
    rule). Read from the class dicts at compile time: the metaclass is ``type``; no
    ``__getattribute__``, no ``__dict__`` of a class's own, no ``graph_invisible_attrs``
    but a plain tuple of str; for states, no ``value``, ``_metadata`` or ``__getattr__``
    of a subclass's own; only list/tuple/dict containers with str/int keys; only plain
    statics. Not guarded per call: user code that runs anyway (a hook added to a class
    later, a finalizer, the ``__eq__`` of a str-subclass key left in a node's dict) and
    rewires the graph mid-call is not supported (see the README).
    """
    for spec in gd.table:
        t = spec[1]
        if type(t) is not type or _defines(t, "__getattribute__") or not _std_dict(t):
            return False
        if type(spec) is StateSpec:
            if _defines(t, "__getattr__") or _own_value_or_metadata(t):
                return False
        else:
            hidden = next((vars(k)["graph_invisible_attrs"] for k in t.__mro__
                           if "graph_invisible_attrs" in vars(k)), ())
            if type(hidden) is not tuple or not all(type(h) is str for h in hidden):
                return False
            for c in spec[4]:
                if type(c) is StaticEdge and not (isinstance(c[1], type) or c[1][0] is float):
                    return False
    return _plain_containers(gd)


def _plain_containers(gd: GraphDef) -> bool:
    """Only list, tuple and dict containers, with exact str or int keys."""
    edges = [c for spec in gd.table if type(spec) is NodeSpec for c in spec[4]]
    edges.append(gd.root)
    while edges:
        e = edges.pop()
        if type(e) is PytreeEdge:
            if e[1] not in (list, tuple, dict):
                return False
            if e[1] is dict and not all(type(k) is str or type(k) is int for k in e[2]):
                return False
            edges.extend(e[3])
    return True


def plan_flatten(gd: GraphDef, max_steps: int) -> FlattenPlan:
    """Steps that check an object has structure ``gd`` and read its values."""
    consts = Constants()
    steps: list[Step] = []
    writes_states: list[Step] = []
    writes_arrays: list[tuple[int, int, Step]] = []  # (owning node index, order, step)
    values: list[str] = [""] * gd.num_leaves
    distinct: list[str] = []
    counts = dict.fromkeys(GUARD_KINDS, 0)
    local_of: dict[int, str] = {}  # table index -> local name of the defining object
    writes_check: list[Step] = []
    hidden_checked: set[type] = set()
    table = gd.table
    counter = [0]

    def fresh(prefix: str) -> str:
        counter[0] += 1
        return f"{prefix}{counter[0]}"

    def guard(op: str, kind: str, **kw: Any) -> None:
        counts[kind] += 1
        steps.append(Step(op, kind=kind, **kw))

    def type_guard(var: str, t: type, comment: str = "") -> None:
        guard("guard_type", "type", src=var, arg=consts.bind(t, "T"), comment=comment)

    # Work items: (edge, var holding the object, path, owner)
    #   owner = (container_var, key_spelling, mutable) where the object lives, for writes.
    # nearest: var -> table index of the node whose attribute holds it (past every node for
    # a root pytree), so array writes follow the reference update's order: node by node in
    # table order, the root pytree last (it matters when one list is reachable twice).
    nearest: dict[str, int] = {"root": len(table)}
    counts["epoch"] = 1
    stack: list[tuple[Any, str, tuple, tuple[str, str, bool] | None]] = []
    root = gd.root
    rk = type(root)
    if rk is NodeEdge or rk is PytreeEdge:
        stack.append((root, "root", (), None))
    else:
        raise Declined("the root is not a node or a container")
    skip_type_guard = True  # the dispatcher picked this variant by type(root)
    facts = ClassFacts()
    witnessed: set[int] = set()
    plain = _plain_types(gd)
    keyed_statics = False  # some static guard reads its node's dict itself (see below)
    if plain:
        # Reads cannot run user code, so a node read twice gives the same children
        # twice: its own states can vouch for it (see _nodes_witnessed_by_states).
        # (Checked at compile time only: a hook added to a class later runs user code
        # mid-call, and user code that rewires the graph mid-call is not supported.)
        witnessed = _nodes_witnessed_by_states(table)
    # The invisible names of each node class, checked before anything is read.
    for spec in table:
        t = spec[1]
        if type(spec) is NodeSpec and t not in hidden_checked and reg.node_impl(t).is_builtin_node:
            # Read at compile time: a class that changes them later has another structure.
            hidden_checked.add(t)
            snapshot = facts.hidden[t] = copy.copy(t.graph_invisible_attrs)
            guard("guard_hidden", "node_keys", src=consts.bind(t, "T"), arg=consts.bind(snapshot, "H"))

    # Only objects of a type that occurs more than once can be one object at two places:
    # the exact type guards keep every other pair apart.
    shared_types = {t for t, n in Counter(spec[1] for spec in table).items() if n > 1}

    def add_distinct(var: str, t: type) -> None:
        """Put the object in the distinct set: itself when its hash is the identity
        (guarded), else its id()."""
        if t not in shared_types:
            return
        if type(t) is not type or _defines(t, "__hash__"):
            distinct.append(f"id({var})")
        else:
            facts.require_absent(t, ("__hash__",))
            distinct.append(var)

    while stack:
        if len(steps) > max_steps:
            raise Declined(f"structure too large (more than {max_steps} steps)")
        edge, var, path, owner = stack.pop()
        k = type(edge)
        label = path_label(path)
        if (k is NodeEdge or k is StateEdge) and edge[1] in local_of:
            # A later path to an object: it must be the very object defined earlier.
            guard("guard_is", "backref", src=var, arg=local_of[edge[1]], comment=label)
            continue
        if k is NodeEdge:
            idx = edge[1]
            spec = table[idx]
            t = spec[1]
            impl = reg.node_impl(t)
            if not impl.is_builtin_node:
                raise Declined(f"custom node type {t.__qualname__}")
            if spec[6] is not None:
                raise Declined(f"non-string attribute names on a {t.__qualname__} node")
            local_of[idx] = var
            if not skip_type_guard:
                type_guard(var, t, label)
            skip_type_guard = False
            if idx not in witnessed:
                add_distinct(var, t)
            d = "d" + var
            steps.append(Step("load_dict", dst=d, src=var))
            # Exactly a dict: a subclass may override len/[] or have a __missing__ that
            # answers a renamed key (and inserts it into the user's object).
            type_guard(d, dict, label)
            if isinstance(t.graph_invisible_attrs, str):
                raise Declined("graph_invisible_attrs is a string")  # the walker says how to fix it
            # Each invisible name present in the dict is subtracted once (a name listed
            # twice must not hide an extra attribute).
            hidden = [h for h in dict.fromkeys(t.graph_invisible_attrs) if h not in spec[3]]
            guard(
                "guard_node_len",
                "node_keys",
                src=d,
                n=len(spec[3]),
                names=[consts.key(h) for h in hidden],
                comment=label,
            )
            # All children are loaded at once (a renamed key is a KeyError: a node_keys
            # miss); they are then guarded in pre-order, so push them in reverse.
            spelled = [consts.key(k) for k in spec[3]]
            items = _load_children(d, spec[3], spec[4], spelled, path, steps, fresh, "node_keys",
                                   mutable=True)
            if plain and any(type(c) is StaticEdge for c in spec[4]):
                # A static is read where it is guarded (no local to store and load again);
                # a renamed key there is a KeyError, a node_keys miss like in the block.
                keyed_statics = True
                block = steps[-1]
                inline = {item[1]: f"{d}[{sp}]" for item, sp in zip(items, spelled, strict=True)
                          if type(item[0]) is StaticEdge}
                block.pairs = [pair for pair in block.pairs if pair[0] not in inline]
                if not block.pairs:
                    steps.pop()
                items = [(c, inline.get(v, v), p, o) for c, v, p, o in items]
            nearest.update((item[1], idx) for item in items)
            stack.extend(reversed(items))
        elif k is StateEdge:
            idx = edge[1]
            spec = table[idx]
            t = spec[1]
            if reg.state_impl(t) is not None:
                raise Declined(f"foreign state type {t.__qualname__}")
            local_of[idx] = var
            type_guard(var, t, label)
            if spec[3] and all(is_value_sig(s) for s in spec[5]):
                guard("guard_meta", "metadata", src=var, arg=consts.bind(spec[3], "M"),
                      arg2=consts.bind(spec[5], "MS"))
            elif spec[3]:
                # Metadata holding objects that may be equal yet distinguishable: those
                # items must be the very same objects (the others equal, of the same type).
                guard("guard_meta_same", "metadata", src=var, arg=consts.bind(spec[3], "M"))
            else:
                guard("guard_no_meta", "metadata", src=var)
            add_distinct(var, t)
            if plain:  # a slot read, no user code: read it where the values list is built
                values[spec[4]] = f"{var}.value"
            else:  # a property may run user code: read it in the reference walker's order
                v = f"v{spec[4]}"
                steps.append(Step("read_value", dst=v, src=var))
                values[spec[4]] = v
            writes_states.append(Step("write_value", dst=var, n=spec[4], comment=label))
        elif k is ArrayEdge:
            slot = edge[1]
            guard("guard_array", "type", src=var, comment=label)
            values[slot] = var
            if owner is None or not owner[2]:
                # No mutable owner to write into: update may only leave it as it is.
                writes_check.append(Step("check_unchanged", src=var, n=slot, comment=label))
            else:
                step = Step("write_item", dst=owner[0], arg=owner[1], n=slot, comment=label)
                writes_arrays.append((nearest[var], len(writes_arrays), step))
        elif k is StaticEdge:
            sig = edge[1]
            if sig is ArrayConstant:
                raise Declined("an array kept as a static")
            cname = consts.bind(edge[2], "C")
            note = label + static_note(edge[2])
            if not is_value_sig(sig):
                # An object that may be equal yet distinguishable (a dataclass with a
                # compare=False field, ...): only the very same object is the same static.
                guard("guard_static_is", "static", src=var, arg2=cname, comment=note)
            elif isinstance(sig, type):
                op = "guard_static_nan" if may_be_nan(edge[2]) else "guard_static"
                guard(op, "static", src=var, arg=consts.bind(sig, "T"), arg2=cname, comment=note)
            else:
                # A float zero (its sign) or a tuple of values: item by item.
                guard("guard_static_same", "static", src=var, arg2=cname, comment=note)
        elif k is PytreeEdge:
            ptype = edge[1]
            builtin = ptype in (list, tuple, dict)
            if not skip_type_guard:
                type_guard(var, ptype if builtin else treedef_type(ptype), label)
            skip_type_guard = False
            src = var
            # A non-empty list or tuple is unpacked in one step, which checks its length.
            unpack = (ptype is list or ptype is tuple) and bool(edge[3])
            if builtin:
                if not unpack:
                    guard("guard_len", "container", src=var, n=len(edge[3]), comment=label)
            else:
                # Any other JAX pytree: its registered flatten, then a guard on the treedef
                # (which carries the aux data and the child count).
                src = "ch" + var
                steps.append(Step("load_pytree", dst=src, arg="td" + var, src=var))
                guard("guard_treedef", "container", src="td" + var, arg=consts.bind(ptype, "TD"),
                      comment=label)
                if edge[4] is not None:  # aux data: equal is not enough (eps=1 is not eps=1.0)
                    guard("guard_aux", "container", src="td" + var, arg=consts.bind(aux_data(ptype), "A"),
                          comment=label)
            if ptype is dict and edge[4] is not None:
                # Non-str keys: 1, 1.0 and True are one key to a dict but not to the IR.
                if all(is_value_sig(s) for s in edge[4]):
                    guard("guard_keysig", "container", src=var, arg=consts.bind(edge[4], "KS"), comment=label)
                else:  # a key that may be equal yet distinguishable: the very same key object
                    guard("guard_keys_same", "container", src=var, arg=consts.bind(edge[2], "KEYS"),
                          comment=label)
            if ptype is dict:
                spelled = [consts.key(k) for k in edge[2]]
            else:
                spelled = [repr(i) for i in range(len(edge[3]))]
            items = _load_children(src, edge[2], edge[3], spelled, path, steps, fresh,
                                   "container" if ptype is dict else "",
                                   mutable=ptype is list or ptype is dict, owner=var)
            if unpack:
                block = steps.pop()  # the load block just emitted becomes one unpacking
                guard("unpack_seq", "container", src=var, pairs=block.pairs, comment=label)
            nearest.update((item[1], nearest[var]) for item in items)
            stack.extend(reversed(items))
        else:  # pragma: no cover - the IR has no other edge kinds
            raise Declined(f"unknown edge {edge!r}")

    if len(distinct) < 2:
        distinct = []  # nothing can coincide
    guards = facts.steps(consts)
    steps[0:0] = guards
    counts["class"] = len(guards)
    return FlattenPlan(
        keyed_statics=keyed_statics,
        facts=facts,
        objects=[local_of[i] for i in range(len(table))],
        graphdef=gd,
        consts=consts,
        steps=steps,
        values=values,
        writes=writes_check + writes_states + [w[2] for w in sorted(writes_arrays, key=lambda w: w[:2])],
        distinct=distinct,
        epoch=reg.registry_epoch(),
        counts=counts,
    )


def _nodes_witnessed_by_states(table: tuple) -> set[int]:
    """Node indices that need no place in the distinct set: their states vouch for them.

    Every state of a type that occurs more than once is in the distinct set, the
    exact type guards keep a state of a type that occurs once apart from every other,
    and every later path to a state is an identity guard: once the guards pass, each
    state index stands for exactly one object. Node ``i`` holds, under some key
    ``k``, the state with index ``s``, and no other node of its type holds state ``s``
    under ``k``. If one object ``X`` sat
    at the positions of ``i`` and of another node ``j`` of the same type, the guards
    of ``j`` would read ``X.k`` again, and ``X.k`` is state ``s``; ``j`` would need
    state ``s`` under ``k``, which it does not have. So ``X`` cannot. A pair of nodes
    with no such witness on either side keeps both in the set (two nodes sharing all
    their states may still have been merged into one object).
    """
    owners: dict[tuple[type, str, int], list[int]] = {}
    for spec in table:
        if type(spec) is NodeSpec:
            for k, child in zip(spec[3], spec[4], strict=True):
                # Only exact str keys: equality between str subclasses need not be transitive.
                if type(child) is StateEdge and type(k) is str:
                    owners.setdefault((spec[1], k, child[1]), []).append(spec[2])
    return {found[0] for found in owners.values() if len(found) == 1}


def _load_children(
    container: str, keys: tuple, children: tuple, spelled: list[str], path: tuple, steps: list[Step],
    fresh: Any, miss: str, mutable: bool, owner: str | None = None,
) -> list[tuple[Any, str, tuple, tuple[str, str, bool]]]:
    """Emit one block loading every child of a container; return their work items.

    ``miss`` names the guard kind a ``KeyError`` in the block stands for. The
    work item's owner says where an array leaf would be written back (only into
    a mutable container).
    """
    items = []
    pairs = []
    for key, child, sp in zip(keys, children, spelled, strict=True):
        var = fresh("x")
        pairs.append((var, sp))
        items.append((child, var, (*path, key), (owner or container, sp, mutable)))
    if pairs:
        steps.append(Step("load_block", src=container, pairs=pairs, miss=miss))
    return items


def plan_unflatten(gd: GraphDef, max_steps: int) -> UnflattenPlan:
    """Steps that build a fresh graph of structure ``gd`` from values in slot order.

    Mirrors the reference ``build``: states and empty node shells first (in
    table order), then each node filled in table order, so sharing and cycles
    resolve the same way.
    """
    consts = Constants()
    steps: list[Step] = []
    table = gd.table
    if len(table) * 2 > max_steps:
        raise Declined(f"structure too large (more than {max_steps} steps)")
    names = [f"o{spec[2]}" for spec in table]
    slot_names = [f"v{i}" for i in range(gd.num_leaves)]
    if slot_names:
        steps.append(Step("unpack", names=slot_names))
    impls: dict[int, Any] = {}
    facts = ClassFacts()
    # Every user object the function puts into the graph (state and custom-node metadata,
    # statics, custom pytree treedefs, keys other than an exact str or int) comes from the
    # GraphDef being unflattened, as S: an equal GraphDef may hold equal but distinct
    # objects. ``reads`` records where each one sits, as it is read here.
    reads = StaticReads()
    static_names: list[str] = []

    def own(ref: int) -> str:
        name = f"s{len(static_names)}"
        static_names.append(name)
        reads.want(ref)
        return name

    def key(k: Hashable, base: int, *at: int) -> str:
        """An exact str/int key is spelled; any other is read from S (it sits at ``at``)."""
        return consts.key(k) if type(k) is str or type(k) is int else own(reads.at(base, *at))

    for spec in table:
        t = spec[1]
        i = spec[2]
        if type(spec) is NodeSpec:
            impl = reg.node_impl(t)
            impls[i] = impl
            if impl.is_builtin_node:
                steps.append(Step("new_object", dst=names[i], arg=consts.bind(t, "T")))
            else:
                steps.append(Step("new_custom", dst=names[i], src=consts.bind(impl.create_empty, "F"),
                                  arg=own(reads.at(GRAPHDEF, 0, i, 5))))
        else:
            if reg.state_impl(t) is not None:
                raise Declined(f"foreign state type {t.__qualname__}")
            if type(t) is type and not _defines(t, "__new__"):
                op = "new_object"  # what cls.__new__(cls) does, while no class gains a __new__
                facts.require_absent(t, ("__new__",))
            else:
                op = "new_via_type"
            steps.append(Step(op, dst=names[i], arg=consts.bind(t, "T")))
            meta = own(reads.at(GRAPHDEF, 0, i, 3)) if spec[3] else consts.bind(spec[3], "M")
            steps.append(Step("set_state", dst=names[i], arg=meta, src=slot_names[spec[4]]))
    counter = [0]

    def leaf(edge: Any, base: int, at: tuple) -> str:
        k = type(edge)
        if k is StaticEdge:
            if edge[1] is ArrayConstant:
                raise Declined("an array kept as a static")
            return own(reads.at(base, *at, 2))
        if k is NodeEdge or k is StateEdge:
            return names[edge[1]]
        return slot_names[edge[1]]  # ArrayEdge

    def build(edge: Any, ref: int, parts: list[str]) -> str:
        ptype = edge[1]
        counter[0] += 1
        name = f"c{counter[0]}"
        if ptype is list:
            steps.append(Step("build_list", dst=name, names=parts))
        elif ptype is tuple:
            steps.append(Step("build_tuple", dst=name, names=parts))
        elif ptype is dict:
            keys = [key(k, ref, 2, j) for j, k in enumerate(edge[2])]
            steps.append(Step("build_dict", dst=name, names=[f"{k}: {p}" for k, p in
                                                             zip(keys, parts, strict=True)]))
        else:
            steps.append(Step("build_pytree", dst=name, src=own(reads.at(ref, 1)), names=parts))
        return name

    def expr(edge: Any, base: int, at: tuple) -> str:
        """A local or constant name holding the value of ``edge``, which sits at ``at``
        below ``base`` in the GraphDef (emitting builds). Iterative, bottom-up."""
        if type(edge) is not PytreeEdge:
            return leaf(edge, base, at)
        # Frames: [edge, its read ref, position of the next child, child names so far].
        stack: list[list[Any]] = [[edge, reads.at(base, *at), 0, []]]
        while True:
            fr = stack[-1]
            e, ref, pos, parts = fr
            kids = e[3]
            while pos < len(kids):
                child = kids[pos]
                pos += 1
                if type(child) is PytreeEdge:
                    fr[2] = pos
                    stack.append([child, reads.at(ref, 3, pos - 1), 0, []])
                    break
                parts.append(leaf(child, ref, (3, pos - 1)))
            else:
                stack.pop()
                name = build(e, ref, parts)
                if not stack:
                    return name
                stack[-1][3].append(name)

    # Attribute stores only where no user code can run during the call (so the class
    # guards, checked first, still hold at every store): see _attribute_stores_ok.
    attrs_ok = _plain_unflatten(gd, impls)

    for spec in table:
        if type(spec) is not NodeSpec:
            continue
        if len(steps) > max_steps:
            raise Declined(f"structure too large (more than {max_steps} steps)")
        i = spec[2]
        parts = [expr(c, GRAPHDEF, (0, i, 4, j)) for j, c in enumerate(spec[4])]
        keys = [key(k, GRAPHDEF, 0, i, 3, j) for j, k in enumerate(spec[3])]
        impl = impls[i]
        if attrs_ok and impl.is_builtin_node and _attribute_stores_ok(spec[1], spec[3]):
            # (No guard for __dict__: a class's __dict__ cannot be assigned after creation.)
            facts.require_absent(spec[1], ("__getattribute__", "__setattr__", *spec[3]))
            steps.append(Step("fill_attrs", dst=names[i],
                              pairs=[(consts.attr(k), p) for k, p in zip(spec[3], parts, strict=True)],
                              names=[path_label((k,)) for k in spec[3]]))
        elif impl.is_builtin_node:
            stores = [f"[{k}] = {p}" for k, p in zip(keys, parts, strict=True)]
            steps.append(Step("fill_node", dst=names[i], names=stores))
        else:
            setter = consts.bind(impl.set_key, "F")
            for k, p in zip(keys, parts, strict=True):
                steps.append(Step("set_key", dst=names[i], src=setter, arg=k, arg2=p))
    root = expr(gd.root, GRAPHDEF, (1,))
    if static_names:
        steps.insert(0, Step("unpack_statics", names=static_names))
    steps[0:0] = facts.steps(consts)  # the class guards go first
    return UnflattenPlan(graphdef=gd, consts=consts, steps=steps, root=root, facts=facts, statics=reads)


def _plain_unflatten(gd: GraphDef, impls: dict[int, Any]) -> bool:
    """No user code runs while building this structure (read at compile time).

    No custom node type (``create_empty``/``set_key``), no custom pytree
    (``unflatten``), no user dict keys to hash, no state type with its own
    ``__new__``, ``__setattr__``, ``value`` or ``_metadata``.
    """
    for spec in gd.table:
        t = spec[1]
        if type(t) is not type:
            return False
        if type(spec) is NodeSpec:
            if not impls[spec[2]].is_builtin_node or not _std_dict(t):
                return False
        elif not _std_dict(t) or _defines(t, "__new__") or _defines(t, "__setattr__") \
                or _own_value_or_metadata(t):
            return False
    return _plain_containers(gd)


def _attribute_stores_ok(t: type, keys: tuple) -> bool:
    """Whether ``o.<key> = value`` on a fresh ``t`` does exactly ``o.__dict__[key] = value``.

    Attribute stores keep a new node's attributes in CPython's compact per-instance
    values (no dict is materialized), the largest single saving of the unflatten.
    They equal the reference's ``node.__dict__.update`` while no class of ``t``'s MRO
    defines ``__setattr__`` (so ``object.__setattr__`` runs), ``__getattribute__`` (the
    reference's ``__dict__`` read goes through it) or any of the keys (so no data
    descriptor, slot or ``__class__`` takes the store): all read from the class dicts
    here, and guarded per call (ClassFacts) for the classes that can change.
    """
    return len(keys) <= _MAX_INLINE_ATTRIBUTES and not _defines(t, "__setattr__") \
        and not _defines(t, "__getattribute__") and all(
        type(k) is str and not any(k in vars(c) for c in t.__mro__) for k in keys)


# CPython keeps at most 30 names in a class's shared instance keys (for all its instances
# together); past that, attribute stores fall back to a dict and cost more than filling the
# dict directly (measured: 128 attributes, 4.3 us against 3.2 us). A per-node bound is the
# part of that rule a plan can see.
_MAX_INLINE_ATTRIBUTES = 30
