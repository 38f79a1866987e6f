"""What the first specialized ``sg.unflatten`` of a structure pays, part by part.

Usage::

    python benchmarks/unflatten_compile.py [--shapes mlp1000 mlp10000 stack96 nnx-mlp1000 ...]
                                           [--repeats 5]

Per structure, as the dispatcher meets it (the flatten compiled first, as for a structure
the user flattened; then the one ``sg.unflatten`` the reference walker serves), CPU time
(``time.process_time``), min of the repeats, in milliseconds, of:

* ``first unflatten``: the call that compiles (``sg.unflatten`` end to end, measured on a
  cache and structure facts of its own, apart from the parts below);
* ``cache_key``: the GraphDef's cache key as the dispatcher gets it (``unflatten_key``: the
  flatten's, or ``_weakstatic.cache_key``, which asks which statics reach user data);
* ``plan``: ``plan_unflatten`` (the collector paused, as ``codegen.build`` runs it);
* ``render+compile``: ``codegen.build`` given that plan (what is left of the build);
* ``statics read``: the plan's statics read from the GraphDef (``UnflattenEntry.statics``);
* ``compile_seconds``: what the first call added to ``sg.cache_info()["compile_seconds"]``
  (the build only: plan and render+compile, wall time).

Every repeat starts from a clear cache and forgets the per-GraphDef structure facts
(``codegen/analysis.py``), then flattens twice (the flatten planner fills some of those
facts, as it does for a user's structure). Prints one table; writes no file.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import models

import specgraph as sg
from specgraph.codegen import analysis, pipeline, unflatten_plan
from specgraph.runtime import dispatch
from specgraph.runtime.cache import CONFIG

_FAM = models.FAMILIES["specgraph"]


def _nnx() -> models.Family:
    return models.FAMILIES["nnx"]


SHAPES: dict[str, Callable[[], Any]] = {
    "mlp1000": lambda: models.build_mlp(_FAM, 1000, 8),
    "mlp10000": lambda: models.build_mlp(_FAM, 10000, 8),
    "stack96": lambda: models.build_transformer(_FAM, 96, 8, 16),
    "nnx-mlp1000": lambda: models.build_mlp(_nnx(), 1000, 8),
    "nnx-mlp10000": lambda: models.build_mlp(_nnx(), 10000, 8),
    "chain10000": lambda: models.build_deepchain(_FAM, 10000),
}
DEFAULT = ["mlp1000", "mlp10000", "stack96", "nnx-mlp1000", "nnx-mlp10000"]


def _fresh(obj: Any) -> tuple[Any, Any]:
    """A clear cache, no structure facts kept; the flatten compiled and the one unflatten
    the reference walker serves done: what the next ``sg.unflatten`` meets."""
    sg.clear_cache()
    with analysis._lock:
        analysis._memo.clear()
    sg.flatten(obj)
    gd, st = sg.flatten(obj)
    before = sg.cache_info()["unflatten_hits"]
    sg.unflatten(gd, st)
    assert sg.cache_info()["compiled_unflattens"] == 0 and sg.cache_info()["unflatten_hits"] == before
    return gd, st


def parts(obj: Any, repeats: int) -> dict[str, float]:
    row: dict[str, float] = {}
    best: dict[str, float] = {}

    def keep(name: str, ms: float) -> None:
        best[name] = min(best.get(name, float("inf")), ms)

    for _ in range(repeats):
        gd, st = _fresh(obj)
        c0 = sg.cache_info()["compile_seconds"]
        t0 = time.process_time()
        sg.unflatten(gd, st)
        keep("first unflatten", (time.process_time() - t0) * 1e3)
        ci = sg.cache_info()
        assert ci["compiled_unflattens"] == 1, "not specialized"
        keep("compile_seconds", (ci["compile_seconds"] - c0) * 1e3)
        del gd, st
        gd, st = _fresh(obj)
        t0 = time.process_time()
        key = dispatch.unflatten_key(gd)
        t1 = time.process_time()
        with pipeline.gc_paused():
            plan = unflatten_plan.plan_unflatten(key, CONFIG.max_steps, CONFIG.outline_min)
        t2 = time.process_time()
        built = pipeline.build("unflatten", key, max_steps=CONFIG.max_steps, plan=plan,
                               disabled=dispatch._disabled_guards, outline_min=CONFIG.outline_min)
        t3 = time.process_time()
        built.plan.statics.read(gd)
        t4 = time.process_time()
        keep("cache_key", (t1 - t0) * 1e3)
        keep("plan", (t2 - t1) * 1e3)
        keep("render+compile", (t3 - t2) * 1e3)
        keep("statics read", (t4 - t3) * 1e3)
        del gd, st, key, plan, built
    for k in ("first unflatten", "cache_key", "plan", "render+compile", "statics read", "compile_seconds"):
        row[k] = best[k]
    return row


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/unflatten_compile.py",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=DEFAULT)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    warm = models.build_mlp(_FAM, 32, 8)  # the templates are loaded once per process: not timed
    gd, st = sg.flatten(warm)
    sg.unflatten(gd, st)
    sg.unflatten(gd, st)
    rows = {}
    for shape in args.shapes:
        rows[shape] = parts(SHAPES[shape](), args.repeats)
        print(f"  {shape}: done", file=sys.stderr, flush=True)
    keys = list(next(iter(rows.values())))
    print(f"first specialized sg.unflatten, CPU ms (compile_seconds: wall), min of {args.repeats}\n")
    print("| part | " + " | ".join(rows) + " |")
    print("|---|" + "---:|" * len(rows))
    for k in keys:
        print(f"| {k} | " + " | ".join(f"{r[k]:.1f}" for r in rows.values()) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
