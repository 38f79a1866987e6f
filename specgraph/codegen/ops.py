"""The op set: every step a plan can hold, the fields it carries, and its guard kind.

A plan is a list of :class:`Step`; a template spells each step by its op. The set is
closed: a step of an op not in :data:`OPS`, or with other fields than its op names,
is refused when it is made, and each template's chain of ops ends in a branch that
raises (``unknown_op``), so no step can silently render as nothing.

Adding an op is local: one entry here, one branch in the template that spells it
(``_steps.j2`` for the flatten/update/collect bodies, ``unflatten.py.j2``, or the
update's writes in ``update.py.j2``).

Field vocabulary (what the plan fills in; the templates spell it):
  ``obj``      an operand: a local name, or an :class:`~.naming.Item` (``d[key]``) read in place
  ``dst``      the local name a step assigns
  ``cls``      a bound type's name; ``const``/``expected`` a bound constant's name
  ``key``      a key: a :class:`~.naming.Literal` (exact str/int) or a bound name
  ``pairs``    ``(name, key)`` or ``(key, value)`` pairs, as the op says
  ``label``    a comment-safe path (see ``naming.path_label``)
  ``current``  the local holding the value a write replaces (written only when it changes)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

__all__ = ["GUARD_KINDS", "GUARD_WORDS", "OPS", "Op", "Step", "UnknownOp"]

# Guard kinds: each names one reason a specialized function can refuse an object.
GUARD_KINDS = (
    "epoch", "class", "type", "node_keys", "container", "static", "metadata", "backref", "distinct",
)

GUARD_WORDS = {
    "epoch": "the node-type registry has not changed since compilation (registry epoch)",
    "class": "no class gained a hook the code relies on it lacking (__hash__, __setattr__, ...) or new bases",
    "type": "every node, state and container has exactly the type it had (type(x) is T)",
    "node_keys": "every node has exactly its attribute names (count, plus the keyed reads) in exactly a "
                 "dict, and the registered flatten of a custom node type returns exactly its keys, in order",
    "container": "every list/tuple has its length, every dict its keys, and every custom pytree its "
                 "treedef, aux data and (when a keys function may name them) its children's path keys",
    "static": "every static value has the same type and compares equal",
    "metadata": "every state, and every custom node's registered flatten, has the same metadata",
    "backref": "every shared node/state is still the very same object at each of its paths",
    "distinct": "objects of a repeated type (states; nodes no own state vouches for) are distinct",
}


class UnknownOp(ValueError):
    """A step names an op outside :data:`OPS`, or fields its op does not have."""


@dataclass(frozen=True)
class Op:
    """One op: where it renders, the fields it carries, and the kind a failure returns.

    ``body``: ``"flatten"`` (the guard/load body of flatten, update and collect),
    ``"write"`` (the update's writes) or ``"unflatten"``. ``guard``: the miss kind the
    step returns when its check fails (``None``: not a guard; a load block's ``miss``
    field names what a ``KeyError`` in it stands for). ``in_update``: an update performs
    it (reads of values it does not).
    """

    body: str
    fields: tuple[str, ...]
    guard: str | None = None
    in_update: bool = True



_F, _W, _U = "flatten", "write", "unflatten"

OPS: dict[str, Op] = {
    # -- class facts: first in every function (flatten and unflatten) ----------------
    "guard_mro": Op(_F, ("cls", "mro"), "class"),
    "guard_class": Op(_F, ("cls_dict", "cls", "names"), "class"),
    # -- loads ---------------------------------------------------------------------
    "load_dict": Op(_F, ("dst", "obj")),
    "load_block": Op(_F, ("obj", "pairs", "miss")),  # pairs: (dst, key); miss "": no try
    "unpack_seq": Op(_F, ("obj", "dsts", "label"), "container"),
    "load_pytree": Op(_F, ("obj", "dst", "treedef")),
    "read_value": Op(_F, ("dst", "obj", "attr"), in_update=False),  # attr: "value", or a placeholder
    "load_field": Op(_F, ("dst", "obj", "key", "attr")),  # a bookkeeping field: obj[key](.attr)
    "load_attr": Op(_F, ("dst", "obj", "attr")),  # dst = obj.attr (attr: a placeholder)
    # dst = [obj[k] for k in keys] (keys: a bound tuple); a KeyError is a node_keys miss
    "load_run": Op(_F, ("dst", "obj", "keys")),
    # dst = [obj[k] for k in keys] (keys: a bound tuple of str); a KeyError is a miss of kind miss
    # (a run of sibling states: a node's attributes, a dict's values)
    "load_items": Op(_F, ("dst", "obj", "keys", "miss")),
    # dst = obj[lo:hi] (a stretch of an exact list or tuple whose length is guarded: a run of states)
    "load_slice": Op(_F, ("dst", "obj", "lo", "hi")),
    # -- outlined shapes (see shapes.py): fn names the shape's functions ----------------
    # dst = the shape's function of obj (args: its parameters' operands); a str: its miss
    "call_shape": Op(_F, ("dst", "fn", "obj", "args")),
    # dst = a loop's unit (shared.py) of the list obj, of n items; a str: its miss
    "call_loop": Op(_F, ("dst", "fn", "obj", "n")),
    # per item (var) of obj, a list of n occurrences of outlined shapes (nodes', containers'):
    # fns[idx[i]] is item i's shape (fns: their names; idx: a bound tuple); dst gets the values
    # (and objects) of all items in order
    # pvals: "" or a bound tuple of the items' parameters (arity 1: one value per item,
    # passed as is; -1: a tuple per item, unpacked into the call)
    "mixed_loop": Op(_F, ("dst", "obj", "var", "n", "fns", "idx", "pvals", "arity")),
    # per item (var) of obj, a list of one shape: body guards and reads it (unrolled); dst gets
    # the values (and objects) of all items in order; keep_states: the items' values are
    # exactly their distinct states' values, so dst keeps the states (an update reads none)
    # checks: the update's trace checks of one item (rendered in the update only)
    # kept: the body calls user code (a callback node's flatten): the update's loop keeps, per
    # item, these locals (what its writes name) in dst, and writes through them (no reload)
    # params: the body's parameter locals (shapes.Shape.params), per item from pvals (a bound
    # tuple, or per item the operands holding them), zipped with obj
    "each_loop": Op(_F, ("dst", "obj", "var", "n", "body", "values", "objects", "distinct", "keep_states",
                         "checks", "kept", "params", "pvals")),
    # n nested links of one shape from obj: body guards and reads the link in cur (its next
    # link in rec); before/after: its values before/after the rest of the chain (objects too)
    # kept: the body calls user code (a callback link's flatten): the update's loop keeps, per
    # link, these locals (what its writes name) in dst, and writes through them (no reload)
    # params: the body's parameter locals (shapes.Chain.params), per link from pvals (a bound
    # tuple of n values, or of n tuples with more than one)
    # links: a split chain's (links running user code after their next link, shapes.Link's
    # user_after): body reads what precedes the next link only, and the list links gets per
    # link the locals live (what follows is read from, its parameters too: chain_after's loop);
    # "": not split
    "chain_loop": Op(_F, ("cur", "obj", "n", "body", "before", "after", "objs_before", "objs_after", "rec",
                          "dst", "dst_after", "distinct", "var", "checks", "kept", "params", "pvals", "links",
                          "live")),
    # a split chain's second loop, past its tail: per link of chain_loop's list links, the
    # deepest first, its locals live unpacked, body reads what follows its next link; dst_after
    # gets its values after (objects too), kept: the update's, as chain_loop's
    "chain_after": Op(_F, ("links", "live", "n", "body", "after", "objs_after", "dst_after", "distinct",
                           "checks", "kept")),
    # the update's loads past a chain (a loop's item, a link holding one: what follows the
    # chain is loaded from its tail): cur from obj through n links, each's loads, rec the next
    "walk_chain": Op(_F, ("cur", "obj", "n", "loads", "rec", "var")),
    # -- guards --------------------------------------------------------------------
    "guard_type": Op(_F, ("obj", "cls", "label"), "type"),
    "guard_array": Op(_F, ("obj", "label"), "type"),
    "guard_hidden": Op(_F, ("cls", "expected"), "node_keys"),
    "guard_node_len": Op(_F, ("obj", "n", "hidden", "label"), "node_keys"),
    "guard_len": Op(_F, ("obj", "n", "label"), "container"),
    "guard_keysig": Op(_F, ("obj", "expected", "label"), "container"),
    "guard_keys_same": Op(_F, ("obj", "expected", "label"), "container"),
    "guard_treedef": Op(_F, ("obj", "expected", "label"), "container"),
    "guard_aux": Op(_F, ("obj", "expected", "label"), "container"),
    # dst, ok = the children of a custom pytree whose keys its treedef does not fix, and
    # whether their path keys (a keys function may read instance data) are expected and its
    # aux data is aux (then guard_loaded on ok)
    "load_pytree_keyed": Op(_F, ("obj", "dst", "ok", "expected", "aux")),
    "guard_loaded": Op(_F, ("obj", "label"), "container"),
    "guard_static": Op(_F, ("obj", "cls", "const", "label"), "static"),
    "guard_static_nan": Op(_F, ("obj", "cls", "const", "label"), "static"),
    "guard_static_is": Op(_F, ("obj", "const", "label"), "static"),
    "guard_static_weak": Op(_F, ("obj", "ref", "label"), "static"),
    "guard_static_same": Op(_F, ("obj", "const", "label"), "static"),
    # a plain tuple of scalars, item by item in line (types: each item's bound type)
    "guard_static_tuple": Op(_F, ("obj", "const", "types", "label"), "static"),
    "guard_no_meta": Op(_F, ("obj",), "metadata"),
    "guard_meta": Op(_F, ("obj", "expected", "sig"), "metadata"),
    "guard_meta_same": Op(_F, ("obj", "expected"), "metadata"),
    "guard_is": Op(_F, ("obj", "expected", "label"), "backref"),
    # -- foreign classes (registered dict-backed nodes, states with a layout) ----------
    "guard_field": Op(_F, ("obj", "cls", "const", "mode", "label"), "metadata"),  # mode: is/value/same
    "guard_meta_dict": Op(_F, ("dst", "obj", "attr", "n"), "metadata"),  # dst = obj.attr, a dict of n
    "guard_meta_item": Op(_F, ("obj", "key", "cls", "const", "mode"), "metadata"),  # obj[key]
    "guard_data_leaf": Op(_F, ("obj", "label"), "type"),  # an array or a non-None plain value
    # dict-backed foreign states: obj is the state's __dict__ (bookkeeping left out of its length)
    "guard_state_dict": Op(_F, ("obj", "n", "hidden", "label"), "metadata"),
    "guard_meta_conv": Op(_F, ("obj", "key", "fn", "cls", "const"), "metadata"),  # fn(obj[key]) matches
    "guard_raw_ready": Op(_F, ("fn",), "raw"),  # once per call: fn() allows raw reads
    "guard_state_hooks": Op(_F, ("obj", "key", "attr", "label"), "raw"),  # obj[key] is None or not .attr
    "read_item": Op(_F, ("dst", "obj", "key"), in_update=False),  # dst = obj[key]: a raw value
    "guard_raw_value": Op(_F, ("obj", "cls", "label"), "raw", in_update=False),  # not a poisoned value
    # -- callback node types (register_graph_node_type): see callback_plan.py ----------
    "call_flatten": Op(_F, ("dst", "meta", "fn", "obj", "label")),  # dst, meta = fn(obj); dst a tuple
    "guard_cb_len": Op(_F, ("obj", "n", "label"), "node_keys"),  # len(items) == n
    "load_cb_items": Op(_F, ("obj", "pairs")),  # pairs: (key local, child local) = obj[i]
    "guard_cb_key": Op(_F, ("obj", "cls", "const", "mode", "label"), "node_keys"),  # mode: is/value/same/str
    # -- the update's writes (after every guard passed) ----------------------------
    "check_unchanged": Op(_W, ("obj", "slot", "label"), "immutable_leaf"),
    # the arrays in custom pytrees of outlined occurrences: per occurrence the update's outlined
    # code kept its locals (obj: a tuple, n 0; or a loop's list of n tuples, one per item, stride
    # slots apart); the one at idx must be vals[slot] (of item k: vals[slot + k * stride])
    "check_kept_same": Op(_W, ("obj", "idx", "slot", "n", "stride", "label"), "immutable_leaf"),
    "write_value": Op(_W, ("obj", "slot", "label")),
    "write_item": Op(_W, ("obj", "key", "slot", "label")),
    "write_slot": Op(_W, ("obj", "setter", "slot", "label")),  # setter(obj, value): past __setattr__
    "write_set_key": Op(_W, ("obj", "setter", "key", "current", "slot", "label")),  # when not current
    # the shape's writes into obj, from vals[slot] (a shape with ``kept``: obj is what its
    # update's function returned, the locals its writes name)
    "write_shape": Op(_W, ("obj", "fn", "slot")),
    # the shape's array writes (its _write_arrays), where the occurrence sorts among the
    # update's array writes (the reference's order: node by node in table order)
    "write_shape_arrays": Op(_W, ("obj", "fn", "slot")),
    # per item of obj: its loads, then its writes from vals[pos + i]; pos counts from slot by n.
    # states: the loop's list of kept states, written in order from vals[slot:slot + total]
    # kept: obj is the loop's list of kept locals (each_loop's kept), unpacked per item, no loads
    "write_each": Op(_W, ("obj", "var", "loads", "writes", "pos", "slot", "n", "states", "total", "kept")),
    # per item (var) of obj (a mixed_loop's list): its shape's write function (fns[idx[i]]),
    # from vals[pos]; pos counts from slot by that shape's slots (ns, ints per fns)
    "write_mixed": Op(_W, ("obj", "var", "pos", "slot", "fns", "idx", "ns")),
    # a chain's writes: per link, its loads then its writes (before: from vals[b + i], after:
    # from vals[af + i]); b counts up from slot by nb, af down from slot_after by na
    # kept: obj is the loop's list of kept locals (chain_loop's kept), unpacked per link, no loads
    # kept_after (a split chain's; else None): the writes after the rest of the chain are a
    # second loop, over obj_after (chain_after's kept locals, the deepest link first), from
    # vals[af + i], af counting up from slot_after (the deepest link's first slot after) by na
    "write_chain": Op(_W, ("cur", "obj", "n", "loads", "writes_before", "writes_after", "rec", "slot",
                           "slot_after", "nb", "na", "var", "kept", "obj_after", "kept_after")),
    # a partial update's writes into states of outlined code: objs(o_) (o_: the objects by
    # table index, from the guards rendered as a collect) get .value from vals, or vals(vals); n of them
    "write_picked": Op(_W, ("objs", "vals", "n")),
    "token_now": Op(_W, ("dst", "fn")),  # the call's trace token, made once first (FlattenPlan.token)
    # obj[key].attrs... (or obj.attrs...) must be the token: writes at the object's trace level
    "guard_token": Op(_W, ("obj", "key", "attrs", "token", "label"), "trace"),
    "guard_raw_writes": Op(_W, ("fn",), "raw"),  # once per update: fn() allows raw writes
    "write_raw_item": Op(_W, ("obj", "key", "flag", "slot", "label")),  # obj[key] = value; obj[flag] = True
    # -- unflatten -----------------------------------------------------------------
    "unpack_statics": Op(_U, ("dsts",)),
    "unpack_values": Op(_U, ("dsts",)),
    "new_object": Op(_U, ("dst", "cls")),
    "new_via_type": Op(_U, ("dst", "cls")),
    "new_custom": Op(_U, ("dst", "factory", "meta")),
    "set_state": Op(_U, ("obj", "meta", "value")),
    # items: locals, or a Splice (the list of a run of sibling states: its items in place)
    "build_list": Op(_U, ("dst", "items")),
    "build_tuple": Op(_U, ("dst", "items")),
    # pairs: (key, value name), or (a bound tuple of keys, a Splice): a run's keys to its items
    "build_dict": Op(_U, ("dst", "pairs")),
    "build_pytree": Op(_U, ("dst", "treedef", "items")),
    "fill_dict": Op(_U, ("obj", "pairs")),  # pairs: (key, value name), through obj.__dict__
    # obj.__dict__ gets keys (a bound tuple of str) to the items of the list in src, in order
    "fill_run": Op(_U, ("obj", "keys", "src")),
    "fill_attrs": Op(_U, ("obj", "pairs", "labels")),  # pairs: (attribute placeholder, value name)
    "set_key": Op(_U, ("obj", "setter", "key", "value")),
    # a run of sibling states (unflatten_plan._find_state_runs): dst = a list of n fresh states
    # of class cls, made in table order as new_object/new_via_type (new) and set_state make one,
    # from the values vals[start:stop] and the metadata tuple metas (None: each gets meta);
    # var, value, md: the loop's locals
    "new_state_run": Op(_U, ("dst", "new", "cls", "start", "stop", "metas", "meta", "var", "value", "md",
                             "n")),
    # per key of keys (a bound tuple) and item of the list src, in order: setter(obj, key, item)
    # (var, value: the loop's locals, the key and the item)
    "set_key_run": Op(_U, ("obj", "setter", "keys", "src", "var", "value")),
    "new_context": Op(_U, ("dst", "factory")),  # a foreign library's per-call context
    "call": Op(_U, ("dst", "fn", "args")),  # dst = fn(*args): a foreign factory
    "set_slot": Op(_U, ("obj", "setter", "value")),  # setter(obj, value): past __setattr__
    # -- unflatten, outlined (see unflatten_plan.py): a position is (base local or '', offset) --
    # dsts = the values at base + offs (run: they are vals[base:base + len(dsts)], one slice)
    "take_values": Op(_U, ("dsts", "base", "offs", "run")),
    # dst = fn([vals, at][, statics][, *contexts]): contexts, the caller's locals of the call's contexts
    "call_build": Op(_U, ("dst", "fn", "at", "statics", "contexts")),
    # dst = a list (a tuple: tuple=True) of occurrences of container shapes: item i built by
    # fns[idx[i]](vals, a, statics[i]) (idx: a bound tuple), a counting from at by ns[idx[i]]
    "build_mixed": Op(_U, ("dst", "at", "statics", "fns", "idx", "ns", "var", "tuple", "keys")),
    "iter_values": Op(_U, ("dst", "start", "stop", "reverse")),  # dst = iter(vals[start:stop]) (reversed)
    "iter_statics": Op(_U, ("dst", "src")),  # dst = iter(src)
    # dst = a list of n items (a tuple: tuple=True), each built by body into item; per item the
    # targets take the next of the sources (iterators, zipped), and each counter
    # (local, start position, step) moves by its step
    "build_each": Op(_U, ("dst", "n", "targets", "sources", "counters", "body", "item", "tuple")),
    # n nested links of class cls from head (made): links = [head, n - 1 new, tail]; per link
    # cur and nxt are a link and the next, body fills cur; targets, sources, counters as above
    "build_chain": Op(_U, ("links", "head", "cls", "tail", "n", "cur", "nxt", "targets", "sources",
                           "counters", "body")),
    # n nested containers of one link shape, innermost first: prev = tail, then per link body
    # builds item from its values and prev (the link inside it), and prev = item; targets,
    # sources, counters as above
    "build_cchain": Op(_U, ("tail", "n", "prev", "item", "targets", "sources", "counters", "body")),
    # -- unflatten in two phases (a shape holding a callback node): see unflatten_plan.py --
    # dst = fn_create([vals, at][, statics][, *contexts]), the occurrence's objects; root = dst[0]
    "call_create": Op(_U, ("dst", "root", "fn", "at", "statics", "contexts")),
    "call_fill": Op(_U, ("fn", "src", "statics")),  # fn_fill(src[, statics]): fills what src made
    # dst = a list of n tuples, each the locals made (the item's objects) by body; targets,
    # sources, counters as in build_each
    "create_each": Op(_U, ("dst", "n", "targets", "sources", "counters", "body", "made")),
    # per tuple of src (create_each's), unpacked into made, and the targets from the sources:
    # body fills that item's nodes
    "fill_each": Op(_U, ("src", "made", "n", "targets", "sources", "body")),
    "made_roots": Op(_U, ("dst", "src", "tuple")),  # dst = the first of each tuple of src (a tuple: tuple)
    # dst = fn(*args): a loop of the top function (build_*, create_each, fill_each) compiled as a unit
    # of its own (codegen/shared.py); n, what: the loop's item count and kind, in a comment
    "call_each": Op(_U, ("dst", "fn", "args", "n", "what")),
    "iter_statics_back": Op(_U, ("dst", "src")),  # dst = reversed(src)
    "chain_head": Op(_U, ("dst", "src")),  # dst = src[0][0]: a chain's head (create_each's first object)
    # a chain's links (src: create_each's, the objects before the rest of the chain, link
    # by link; dst_after: the objects after it, last link first, or None) filled in table
    # order: links = each link's next (the tail last); per link its tuples unpacked into
    # made and objs_after, nxt its next, the targets from the sources; body fills it
    "fill_chain": Op(_U, ("src", "dst_after", "made", "objs_after", "links", "tail", "nxt", "n", "targets",
                          "sources", "body")),
}


_FIELD_SETS = {op.fields: frozenset(op.fields) for op in OPS.values()}


class Step:
    """One step of a plan: an op of :data:`OPS` and exactly that op's fields."""

    def __init__(self, op: str, **fields: Any) -> None:
        spec = OPS.get(op)
        if spec is None:
            raise UnknownOp(f"unknown codegen op {op!r} (the op set is specgraph.codegen.ops.OPS)")
        if fields.keys() != _FIELD_SETS[spec.fields]:
            raise UnknownOp(f"op {op!r} takes the fields {spec.fields}, got {tuple(fields)}")
        self.__dict__.update(fields)
        self.op = op
        #: the guard kind this step returns on a miss (``None``: it checks nothing)
        self.kind = spec.guard

    if TYPE_CHECKING:
        # The op's fields are instance attributes set from ``fields`` above.
        def __getattr__(self, name: str) -> Any: ...

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.__dict__.items() if k not in ("op", "kind"))
        return f"Step({self.op!r}, {fields})"


def unknown_op(step: Any) -> str:
    """A template's last branch: no step renders as nothing."""
    raise UnknownOp(f"no template branch spells the op {getattr(step, 'op', step)!r}")
