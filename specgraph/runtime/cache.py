"""Configuration, compiled variants and their counters."""

from __future__ import annotations

import os
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .._ir import GraphDef, PathTable

__all__ = ["Config", "CONFIG", "StructureStats", "Variant", "TypeEntry", "UnflattenEntry", "LOCK"]

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
    """One specialized structure of a root type: its flatten, update and collect functions."""

    __slots__ = ("_paths", "collect", "flatten", "graphdef", "links", "plan", "sources", "stats", "table",
                 "update")

    def __init__(self, graphdef: GraphDef, flatten: Any, update: Any, stats: StructureStats,
                 sources: dict[str, str], plan: Any, links: tuple) -> None:
        self.graphdef = graphdef
        self.table: PathTable = graphdef.pathtable
        self.flatten = flatten
        self.update = update
        self.collect: Any = None  # compiled on first use (states(), nodes(), iter_*)
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
