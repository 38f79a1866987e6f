"""Configuration, compiled variants and their counters."""

from __future__ import annotations

import os
import threading
import weakref
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .._ir import GraphDef, PathTable
from .._weakstatic import strong_graphdef

__all__ = ["Config", "CONFIG", "StructureStats", "Variant", "WeakVariant", "TypeEntry", "UnflattenEntry",
           "LOCK"]

LOCK = threading.RLock()


_OFF = ("0", "false", "no", "off")


@dataclass
class Config:
    """Knobs of the specializer (process-wide)."""

    enabled: bool = os.environ.get("SPECGRAPH_SPECIALIZE", "1").strip().lower() not in _OFF
    #: generic flattens of one structure before it is specialized
    threshold: int = 1
    #: specialized structures per root type before the type is megamorphic
    max_variants: int = 8
    #: largest plan (in steps) that is compiled; bigger structures stay generic
    max_steps: int = 20_000
    #: a shape of subtree met at least this many times in one structure gets one generated
    #: function, called per occurrence (a loop over a list of them, a chain of that many
    #: nested links a loop too); rarer shapes are unrolled inline. 0: everything unrolled.
    #: Unrolled code is the fastest per call (no per-item allocation: MLP-32 stays within
    #: the 1.1x of tree_flatten it had), outlined code compiles in time independent of
    #: the count (benchmarks/outline_crossover.py): 64 keeps MLP-32 and the 12-block
    #: transformer unrolled and bounds the unrolled compile of a repeated shape. The
    #: outlined update (MLP of Linear(8), thread time) is 1.24x the unrolled one at 64
    #: layers, 1.14x at 128 and 256, and faster between 256 and 384 (0.93x at 384, 0.9x at 512).
    outline_min: int = 64


CONFIG = Config()


@dataclass
class StructureStats:
    """Counters for one structure (one GraphDef)."""

    hits: int = 0
    update_hits: int = 0
    walk_hits: int = 0  # hits of the specialized collect (states(), nodes(), iter_*)
    unflatten_hits: int = 0
    misses: Counter[str] = field(default_factory=Counter)
    fallbacks: int = 0
    compile_seconds: float = 0.0
    declined: str | None = None
    #: the cache key the counters were made under (the first GraphDef of this structure)
    key: Any = field(default=None, repr=False, compare=False)

    def absorb(self, other: StructureStats) -> None:
        """Add ``other``'s counters to these."""
        self.hits += other.hits
        self.update_hits += other.update_hits
        self.walk_hits += other.walk_hits
        self.unflatten_hits += other.unflatten_hits
        self.misses.update(other.misses)
        self.fallbacks += other.fallbacks
        self.compile_seconds += other.compile_seconds

    def as_dict(self) -> dict[str, Any]:
        return {
            "hits": self.hits,
            "update_hits": self.update_hits,
            "walk_hits": self.walk_hits,
            "unflatten_hits": self.unflatten_hits,
            "guard_misses": dict(self.misses),
            "fallbacks": self.fallbacks,
            "compile_seconds": self.compile_seconds,
            "declined": self.declined,
        }


class Variant:
    """One specialized structure of a root type: its flatten, update and collect functions.

    ``key`` is what the caches hold for the structure (see ``_weakstatic.cache_key``);
    ``graphdef`` is what a hit returns. They are one object unless a static reaches user
    data: then see :class:`WeakVariant`.
    """

    __slots__ = ("_paths", "collect", "derived", "flatten", "graphdef", "key", "links", "plan", "sources",
                 "stats", "table", "update")

    def __init__(self, key: GraphDef, graphdef: GraphDef, flatten: Any, update: Any, stats: StructureStats,
                 sources: dict[str, str], plan: Any, links: tuple) -> None:
        self.key = key
        self._hold(graphdef)
        self.table: PathTable = graphdef.pathtable
        self.flatten = flatten
        self.update = update
        self.collect: Any = None  # compiled on first use (states(), nodes(), iter_*)
        self.derived: dict[str, Any] = {}  # selections compiled on first use (runtime.derived)
        self.stats = stats
        self.sources = sources
        self.plan = plan
        self.links = links  # per table index: path link of the defining occurrence
        self._paths: tuple | None = None

    @property
    def paths(self) -> tuple:
        """Per table index: the path of the defining occurrence (made once)."""
        p = self._paths
        if p is None:
            from .._ir import materialize

            p = self._paths = tuple(materialize(link) for link in self.links)
        return p

    def _hold(self, graphdef: GraphDef) -> None:
        self.graphdef = graphdef


class WeakVariant(Variant):
    """A variant whose structure has statics held weakly (a bound method, a closure over a
    node, ...): it keeps the ``GraphDef`` it returns only while someone else does, and
    makes it again from ``key`` when needed (the guards just saw every static alive)."""

    __slots__ = ("_ref",)

    def _hold(self, graphdef: GraphDef) -> None:
        self._ref = weakref.ref(graphdef)

    @property
    def graphdef(self) -> GraphDef:  # type: ignore[override]
        gd = self._ref()
        if gd is None:
            gd = strong_graphdef(self.key)
            self._ref = weakref.ref(gd)
        return gd


class TypeEntry:
    """Per root type: its variants, most recently hit first."""

    __slots__ = ("declined", "megamorphic", "seen", "variants")

    def __init__(self) -> None:
        self.variants: tuple[Variant, ...] = ()
        self.megamorphic = False
        self.seen: dict[GraphDef, int] = {}  # structures counted toward the threshold (bounded)
        self.declined: dict[GraphDef, str] = {}  # structures we will not compile (bounded)


class UnflattenEntry:
    """What a GraphDef carries for the unflatten dispatcher (its ``_rt`` slot).

    Decided under registry ``epoch``: the specialized function (``None``: the generic
    walker serves this structure), the structure's counters, and this GraphDef's own
    statics, in the order the function takes them.
    """

    __slots__ = ("epoch", "fn", "statics", "stats")

    def __init__(self, epoch: int, fn: Any, stats: StructureStats, statics: tuple) -> None:
        self.epoch = epoch
        self.fn = fn
        self.stats = stats
        self.statics = statics
