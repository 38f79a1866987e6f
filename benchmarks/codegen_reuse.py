"""Codegen of a structure after another of the same repeated shape: outlined units shared or not.

Usage::

    python benchmarks/codegen_reuse.py [--repeats 7] [--outline-min 64]

Per pair ``first -> second`` (MLP-32 -> MLP-31, MLP-999 -> MLP-1000, a 95-block stack ->
96 blocks, and the same with every Linear an attribute of its own: 100 -> 101 calls of one
outlined function): a fresh cache, two flattens of ``first``, two of ``second``; the
compile seconds the second structure paid (``sg.cache_info()["compile_seconds"]``, flatten
and update), min of the repeats, with the outlined units shared across structures (as
``codegen/shared.py`` does) and with sharing off (every structure compiles its own units:
``shared.lookup`` patched to miss), interleaved in one process. Last columns: the same for
the second structure's unflatten (after the first's): its outlined builders and the loops of
its top function are units shared across structures too. Prints one table; writes no file.
These are extra rows, not issue 12's bar rows.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import models

import specgraph as sg
from specgraph.codegen import shared

_FAM = models.FAMILIES["specgraph"]


class _Attrs(sg.Node):
    """Linears as attributes of one node (not a list): one outlined function, called per occurrence."""

    def __init__(self, n: int) -> None:
        for i in range(n):
            setattr(self, f"l{i}", _FAM.linear(8, 8, ("attrs", i)))


PAIRS: dict[str, tuple[Callable[[], Any], Callable[[], Any]]] = {
    "MLP-32 -> MLP-31": (lambda: models.build_mlp(_FAM, 32, 8), lambda: models.build_mlp(_FAM, 31, 8)),
    "MLP-999 -> MLP-1000": (lambda: models.build_mlp(_FAM, 999, 8), lambda: models.build_mlp(_FAM, 1000, 8)),
    "stack-95 -> stack-96": (lambda: models.build_transformer(_FAM, 95, 8, 16),
                             lambda: models.build_transformer(_FAM, 96, 8, 16)),
    "100 -> 101 Linear attributes": (lambda: _Attrs(100), lambda: _Attrs(101)),
}


def _second(first: Any, second: Any, share: bool) -> tuple[float, int, int, float, int, int]:
    """Compile seconds the second structure paid; units compiled and reused for it; and
    the compile seconds of its unflatten, after the first structure's, and the units
    compiled and reused for that."""
    lookup = shared.lookup
    if not share:
        shared.lookup = lambda key: None  # type: ignore[assignment]
    try:
        sg.clear_cache()
        sg.flatten(first)
        sg.flatten(first)
        a = sg.cache_info()
        sg.flatten(second)
        sg.flatten(second)
        b = sg.cache_info()
        assert b["hits"] == 2, b
        for obj in (first, second):  # the unflattens, in the same order
            gd, state = sg.flatten(obj)
            c = sg.cache_info()
            sg.unflatten(gd, state)
            sg.unflatten(gd, state)
        d = sg.cache_info()
        assert d["compiled_unflattens"] == 2 and d["unflatten_hits"] == 2, d
    finally:
        shared.lookup = lookup
    return (b["compile_seconds"] - a["compile_seconds"],
            b["outlined_units_compiled"] - a["outlined_units_compiled"],
            b["outlined_units_reused"] - a["outlined_units_reused"],
            d["compile_seconds"] - c["compile_seconds"],
            d["outlined_units_compiled"] - c["outlined_units_compiled"],
            d["outlined_units_reused"] - c["outlined_units_reused"])


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/codegen_reuse.py",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--outline-min", type=int, default=None,
                   help="sg.configure(outline_min=...) (default: as is)")
    args = p.parse_args(argv)
    if args.outline_min is not None:
        sg.configure(outline_min=args.outline_min)
    sg.flatten(models.build_mlp(_FAM, 2, 8))  # templates loaded: not timed
    print(f"compile ms of the second structure (flatten + update), min of {args.repeats}; "
          f"outline_min={sg.runtime.cache.CONFIG.outline_min}\n")
    print("| structures | shared | not shared | units compiled / reused (shared) | unflatten, shared "
          "| unflatten, not shared | unflatten units compiled / reused (shared) |")
    print("|---|---:|---:|---|---:|---:|---|")
    for label, (make_first, make_second) in PAIRS.items():
        first, second = make_first(), make_second()
        best = {True: float("inf"), False: float("inf")}
        unflat = {True: float("inf"), False: float("inf")}
        units = uunits = (0, 0)
        for _ in range(args.repeats):
            for share in (False, True):
                secs, compiled, reused, usecs, ucompiled, ureused = _second(first, second, share)
                best[share] = min(best[share], secs)
                unflat[share] = min(unflat[share], usecs)
                if share:
                    units, uunits = (compiled, reused), (ucompiled, ureused)
        print(f"| {label} | {best[True] * 1e3:.1f} | {best[False] * 1e3:.1f} | {units[0]} / {units[1]} "
              f"| {unflat[True] * 1e3:.1f} | {unflat[False] * 1e3:.1f} | {uunits[0]} / {uunits[1]} |",
              flush=True)
    sg.clear_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
