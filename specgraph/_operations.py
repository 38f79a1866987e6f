"""The public operations: thin layers over flatten / unflatten / update."""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar, cast, overload

from . import _registry as reg
from ._filters import Filter, to_predicates
from ._ir import GraphDef, NodeSpec, PytreeEdge, StateEdge, StateSpec, materialize
from ._model import State
from ._partition import filter_key
from ._statemap import StateMap, split_values
from .generic._flatten import Walk
from .runtime import derived, dispatch

if TYPE_CHECKING:
    from .runtime.derived import Selection

    # what derived.select returns when a generated variant answers (else a Walk)
    _Selected = tuple[Selection, list[Any], list[Any]]

__all__ = [
    "flatten",
    "unflatten",
    "split",
    "merge",
    "update",
    "states",
    "nodes",
    "iter_leaf",
    "iter_node",
    "graphdef",
    "clone",
    "pop_states",
]

Path = tuple[Hashable, ...]
_Root = TypeVar("_Root")  # the root type a GraphDef carries (for type checkers)


flatten = dispatch.flatten  # the public entry point is the dispatcher itself: no extra frame


unflatten = dispatch.unflatten  # the public entry point: no extra frame


@overload
def split(node: _Root, /) -> tuple[GraphDef[_Root], StateMap]: ...
@overload
def split(node: _Root, f1: Filter, /) -> tuple[GraphDef[_Root], StateMap]: ...
@overload
def split(node: _Root, f1: Filter, f2: Filter, /) -> tuple[GraphDef[_Root], StateMap, StateMap]: ...
@overload
def split(
    node: _Root, f1: Filter, f2: Filter, f3: Filter, /
) -> tuple[GraphDef[_Root], StateMap, StateMap, StateMap]: ...
@overload
def split(node: _Root, /, *filters: Filter) -> tuple[Any, ...]: ...
def split(node: Any, *filters: Filter) -> tuple[Any, ...]:
    """``(graphdef, state_1, ..., state_n)``: the values partitioned by ``filters``.

    Each value goes to the first filter matching it; the filters must cover all
    values (end with ``...``). With no filter: ``(graphdef, all_values)``.
    """
    gd, sm = dispatch.flatten(node)
    if not filters:
        return gd, sm
    return (gd, *split_values(sm._table, sm._values, filters))


def merge(graphdef: GraphDef[_Root], *states: Any) -> _Root:
    """Inverse of ``split``: a fresh graph from ``graphdef`` and all its state parts."""
    if not states:
        raise TypeError("merge needs at least one state mapping")
    return dispatch.unflatten_states(graphdef, states)


def update(node: Any, *states: Any) -> None:
    """Write ``states`` into the live graph in place.

    Existing ``State`` objects keep their identity and get new values; bare
    array leaves are replaced. Paths may be a subset; an unknown path is an
    error, raised before anything is written.
    """
    dispatch.update(node, states)


def graphdef(node: _Root) -> GraphDef[_Root]:
    """The ``GraphDef`` of ``node``."""
    return dispatch.flatten(node)[0]


def clone(node: _Root) -> _Root:
    """A structural copy: new nodes and states, the same value objects."""
    gd, sm = dispatch.flatten(node)
    return dispatch.unflatten(gd, sm)


def iter_leaf(node: Any) -> Iterator[tuple[Path, Any]]:
    """``(path, leaf)`` for each State (once, at its first path) and bare array leaf."""
    r = derived.select(node, "leaves")
    if type(r) is not Walk:
        sel, objects, values = cast("_Selected", r)  # mypy does not narrow on `type(r) is not`
        yield from zip(sel.paths, objects if sel.order is None else sel.order(objects + values), strict=True)
        return
    gd = r.graphdef
    types = gd.pathtable.types
    state_by_slot = {spec[4]: r.objects[spec[2]] for spec in gd.table if type(spec) is StateSpec}
    for slot, ty in enumerate(types):
        yield gd.pathtable.path(slot), (state_by_slot[slot] if ty is not None else r.values[slot])


def iter_node(node: Any) -> Iterator[tuple[Path, Any]]:
    """``(path, node)`` for each graph node, once, in pre-order."""
    r = derived.select(node, "nodes")
    if type(r) is not Walk:
        r = cast("_Selected", r)  # mypy does not narrow on `type(r) is not`
        yield from zip(r[0].paths, r[1], strict=True)
        return
    for spec in r.graphdef.table:
        if type(spec) is NodeSpec:
            yield r.path(spec[2]), r.objects[spec[2]]


def nodes(node: Any) -> dict[Path, Any]:
    """``{path: node}`` for each graph node, once, in pre-order."""
    r = derived.select(node, "nodes")
    if type(r) is not Walk:
        r = cast("_Selected", r)  # mypy does not narrow on `type(r) is not`
        return derived.filled(r[0].template, r[0].paths, r[1])
    return {r.path(spec[2]): r.objects[spec[2]] for spec in r.graphdef.table if type(spec) is NodeSpec}


def states(node: Any, *filters: Filter) -> dict[Path, State] | tuple[dict[Path, State], ...]:
    """``{path: State}`` of the live State objects, each shared state once.

    With filters, the states are partitioned as NNX's ``state`` and BrainState's
    ``states`` do: each goes to the first filter matching it, and those no filter
    matches are left out. One filter gives one dict, several a tuple of dicts.
    """
    if not filters or filter_key(filters) is not None:  # by type: no values needed
        r = derived.select(node, "states")
        if type(r) is not Walk:
            sel, objects, _ = cast("_Selected", r)  # mypy does not narrow on `type(r) is not`
            if not filters:
                return derived.filled(sel.template, sel.paths, objects)
            view = derived.states_view(sel, filters)
            assert view is not None
            parts = [derived.filled(template, paths, take(objects)) for paths, take, template in view]
            return parts[0] if len(parts) == 1 else tuple(parts)
        w = r
    else:  # predicates see the values
        w = dispatch.collect(node)
    found = [
        (w.path(spec[2]), w.objects[spec[2]], spec[1], w.values[spec[4]])
        for spec in w.graphdef.table
        if type(spec) is StateSpec
    ]
    if not filters:
        return {p: s for p, s, _, _ in found}
    preds = to_predicates(filters)
    out: list[dict[Path, State]] = [{} for _ in preds]
    for p, s, t, v in found:
        for selected, pred in zip(out, preds, strict=True):
            if pred(p, v, t):
                selected[p] = s
                break
    return out[0] if len(out) == 1 else tuple(out)


def pop_states(node: Any, *filters: Filter) -> StateMap | tuple[StateMap, ...]:
    """Remove the matching States from the graph and return their values.

    Each State goes to the first filter matching it (as in NNX and BrainState);
    one map per filter. A matched State is removed from every node attribute and
    dict entry that holds it. One reachable from a list, tuple or other immutable
    container cannot be removed: that is an error, raised before anything is removed.
    """
    if not filters:
        raise TypeError("pop_states needs at least one filter")
    w = dispatch.collect(node)
    gd = w.graphdef
    sm = StateMap._make(gd.pathtable, w.values)
    # Bare array leaves cannot be popped: the maps hold what was removed, States only.
    held = sm._subset([i for i, ty in enumerate(gd.pathtable.types) if ty is not None])
    parts = split_values(held._table, held._values, filters, exhaustive=False)
    chosen = {p for part in parts for p in part.paths}
    chosen_idx = {
        spec[2] for spec in gd.table if type(spec) is StateSpec and gd.pathtable.path(spec[4]) in chosen
    }
    removals: list[tuple[Any, Any, Any]] = []  # (remover, container, key)
    # Pending edges, with the live object holding them, their key there, how to remove
    # them from it (None: impossible) and their path link. A stack, not recursion:
    # containers may nest as deeply as the walker goes.
    pending: list[tuple[Any, Any, Any, Any, Any]] = []
    for spec in gd.table:
        if type(spec) is NodeSpec:
            obj = w.objects[spec[2]]
            impl = reg.node_impl(spec[1])
            link = w.links[spec[2]]
            for key, edge in zip(spec[3], spec[4], strict=True):
                if type(edge) is PytreeEdge:
                    live = obj.__dict__[key] if impl.is_builtin_node else dict(impl.flatten(obj)[0])[key]
                    pending.append((edge, live, None, None, (link, key)))
                elif type(edge) is StateEdge and edge[1] in chosen_idx:
                    removals.append((impl.pop_key, obj, key))
    if type(gd.root) is PytreeEdge:
        pending.append((gd.root, node, None, None, None))
    while pending:
        edge, container, key, remover, link = pending.pop()
        k = type(edge)
        if k is StateEdge and edge[1] in chosen_idx:
            if remover is None:
                raise ValueError(
                    f"cannot pop the state at path {materialize(link)!r}: it sits in an immutable "
                    "container or a list; move it into a node attribute or a dict"
                )
            removals.append((remover, container, key))
        elif k is PytreeEdge:
            live = container if key is None else _child(container, key)
            rem = _dict_pop if edge[1] is dict else None
            for ck, ce in zip(edge[2], edge[3], strict=True):
                if type(ce) is PytreeEdge or type(ce) is StateEdge:
                    pending.append((ce, live, ck, rem, (link, ck)))
    for remover, container, key in removals:
        remover(container, key)
    return parts[0] if len(parts) == 1 else tuple(parts)


def _dict_pop(d: dict, key: Any) -> Any:
    return d.pop(key)


def _child(container: Any, key: Any) -> Any:
    if type(container) in (list, tuple, dict):
        return container[key]
    # Another JAX pytree (namedtuple, dataclass...): its path keys are attribute
    # names or the like, not subscripts; find the child by its key entry.
    _, keys, children = reg.pytree_children(container)
    return children[keys.index(key)]
