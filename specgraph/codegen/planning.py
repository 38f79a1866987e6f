"""What the planners share and produce: the flatten plan, its work items, and ``Declined``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .._ir import GraphDef
from .classfacts import ClassFacts
from .naming import Constants, Literal, Operand
from .ops import Step

__all__ = ["Declined", "FlattenPlan", "RunEdge", "ShapeFn", "StateRun", "Work"]


class Declined(Exception):
    """This structure is not specialized (unsupported edge kind or too large)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class ShapeFn:
    """The functions of one outlined shape (see shapes.py), planned from one occurrence.

    The flatten function takes an object and the call's distinct list ``D`` and returns
    the occurrence's values (the collect function: its objects and values), or the name
    of the guard that failed; the write function takes an object whose guards passed,
    ``vals`` and the position ``at`` of its first value, and writes its states.
    """

    name: str  # outlined<sid>: the functions are <name>_flatten, _collect, _write
    type_name: str
    steps: list[Step]
    values: list[Operand]  # in slot order
    objects: list[Any]  # locals and splices, in table order
    distinct: list[tuple[str, bool]]  # appended to D
    writes: list[Step]  # slots relative to the occurrence's first slot
    keyed_statics: bool
    uses: int  # occurrences in the structure
    where: list[str]  # the paths of the first few occurrences
    nslots: int
    #: the kinds whose unit was compiled for an earlier structure and is shared (codegen/shared.py)
    shared: list[str] = field(default_factory=list)
    checks: list[Step] = field(default_factory=list)  # the update's trace checks of one occurrence
    #: its guards call user code (a callback node's flatten): the update's function returns
    #: these locals (what its writes name) and the write function takes them, loading nothing
    #: again (a reload would call the user code twice)
    kept: list[str] | None = None
    #: its bare arrays' writes (slots relative), in the reference's order: its own write
    #: function, called where the occurrence sorts among the update's array writes
    array_writes: list[Step] = field(default_factory=list)
    #: its parameters, after ``D``: the statics whose values differ between its
    #: occurrences (``Shape.params``), guarded against what each call passes
    params: list[str] = field(default_factory=list)


@dataclass
class FlattenPlan:
    """What the flatten, update and collect functions of one structure do."""

    graphdef: GraphDef
    consts: Constants
    steps: list[Step]  # class guards, then guards + loads in pre-order
    values: list[Operand]  # per value slot: what the values list holds
    checks: list[Step]  # update: leaves that have no mutable owner must be left as they are
    writes: list[Step]  # update: new values into states, then into array leaves' owners
    distinct: list[tuple[str, bool]]  # (local, by id()) that must be pairwise distinct
    objects: list[str]  # local name per table index (the defining occurrence)
    epoch: int
    counts: dict[str, int]  # guard kind -> number of guards of that kind
    facts: ClassFacts  # what the class guards check
    keyed_statics: bool = False  # a KeyError outside the load blocks is a node_keys miss
    shape_fns: list[ShapeFn] = field(default_factory=list)  # outlined shapes, callees first
    outlined_distinct: bool = False  # some outlined function or chain loop appends to D
    #: outlined calls or chain loops: objects and values are spliced lists, not one local each
    outlined: bool = False
    loops: list[str] = field(default_factory=list)  # loops over lists of one shape, for explain
    #: the update's trace token, made first (before the guards: outlined code checks against it)
    token: Step | None = None


class RunEdge(NamedTuple):
    """A run of children of one dict-backed node (an ``nnx.List``'s items): node edges of
    one outlined shape, stored under ``keys`` (their path keys: ``path_keys``), planned as
    one loop (a work item's edge; its operand is the node's ``__dict__``)."""

    keys: tuple[str, ...]
    path_keys: tuple
    children: tuple


class StateRun(NamedTuple):
    """A run of sibling states of one kind (list items, dict values, node attributes: see
    :meth:`FlattenPlanner._state_runs`), planned as one loop (a work item's edge; its operand
    is the container, or the node's ``__dict__``). ``keys``: their keys, read as one list
    (``None``: the run is the whole list or tuple, iterated as it is); ``miss``: the guard
    kind a renamed key stands for; ``stored``: the keys as the container stores them, where
    they differ (an ``nnx.List``'s int keys are str attribute names); ``span``: the run is
    the items ``lo`` to ``hi`` of a list or tuple (its length guarded first) whose other
    items are not states of its kind, read as one slice (``keys``: their positions)."""

    keys: tuple | None
    children: tuple
    miss: str
    stored: tuple | None = None
    span: tuple[int, int] | None = None


class Work(NamedTuple):
    """An edge to plan: the operand holding its object, its path, and where it lives
    (``owner[key]``, for the update's writes; ``mutable`` when it can be written).

    The path is a link ``(parent_link, key)`` (``None`` at the root): a tuple per work
    item would cost O(depth) each, O(depth²) on a deep chain."""

    edge: Any
    obj: Operand
    path: Any
    owner: str | None
    key: Literal | str
    mutable: bool
    data: bool = False  # a child of a dict-backed node whose plain values may be dynamic leaves
