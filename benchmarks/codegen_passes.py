"""Where codegen time goes: each pass of building one structure's functions, timed alone.

Usage::

    python benchmarks/codegen_passes.py [--shapes mlp1000 stack96 widebag4096 ...] [--repeats 5]

Per shape, CPU time (``time.process_time``, so a loaded machine inflates it less than
wall time) of each pass with the cyclic GC off (as ``codegen.build`` runs them), min of
the repeats, in milliseconds: the class-dict analyses, the structure-only analyses, the
flatten and unflatten planners, rendering (the update rendered after the flatten of the
same plan, as the dispatcher does: they share step texts), and ``compile()`` of each
source. ``max_steps`` is lifted, so structures past the default size are planned too.
The jinja2 templates are loaded before timing (once per process: not a per-structure
cost). Prints one table; writes no file.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import models

import specgraph as sg
from specgraph import _registry as reg
from specgraph._ir import NodeSpec
from specgraph.codegen import classfacts, flatten_plan, pipeline, unflatten_plan

_FAM = models.FAMILIES["specgraph"]
SHAPES: dict[str, Callable[[], Any]] = {
    "mlp32": lambda: models.build_mlp(_FAM, 32, 8),
    "mlp1000": lambda: models.build_mlp(_FAM, 1000, 8),
    "mlp10000": lambda: models.build_mlp(_FAM, 10000, 8),
    "stack96": lambda: models.build_transformer(_FAM, 96, 8, 16),
    "widebag4096": lambda: models.build_widebag(_FAM, 4096),
    "chain3000": lambda: models.build_deepchain(_FAM, 3000),
}
NO_LIMIT = 10**9


def _cpu(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Min CPU milliseconds of ``fn()`` over ``repeats`` runs with the GC off; its last result."""
    best, out = float("inf"), None
    for _ in range(repeats):
        gc.disable()
        try:
            t0 = time.process_time()
            out = fn()
            best = min(best, time.process_time() - t0)
        finally:
            gc.enable()
    return best * 1e3, out


def passes(obj: Any, repeats: int) -> dict[str, float]:
    gd, _ = sg.generic.flatten(obj)
    impls = {s.index: reg.node_impl(s.type) for s in gd.table if type(s) is NodeSpec}
    row: dict[str, float] = {}
    row["flatten_runs_no_user_code"], _ = _cpu(lambda: classfacts.flatten_runs_no_user_code(gd), repeats)
    row["unflatten_runs_no_user_code"], _ = _cpu(
        lambda: classfacts.unflatten_runs_no_user_code(gd, impls), repeats)
    row["plain containers (uncached)"], _ = _cpu(lambda: classfacts._plain_containers(gd), repeats)
    row["witnessed_nodes"], _ = _cpu(lambda: flatten_plan.witnessed_nodes(gd.table), repeats)
    row["plan flatten"], plan = _cpu(lambda: flatten_plan.plan_flatten(gd, NO_LIMIT), repeats)
    row["plan unflatten"], uplan = _cpu(lambda: unflatten_plan.plan_unflatten(gd, NO_LIMIT), repeats)
    sources: dict[str, str] = {}
    for kind in ("flatten", "update"):
        best = float("inf")
        for _ in range(repeats):
            fresh = flatten_plan.plan_flatten(gd, NO_LIMIT)  # no step text shared from earlier
            if kind == "update":
                pipeline.render("flatten", fresh)
            ms, sources[kind] = _cpu(lambda p=fresh, k=kind: pipeline.render(k, p), 1)
            best = min(best, ms)
        row[f"render {kind}"] = best
    row["render unflatten"], sources["unflatten"] = _cpu(lambda: pipeline.render("unflatten", uplan), repeats)
    for kind, src in sources.items():
        row[f"compile() {kind}"], _ = _cpu(lambda s=src: compile(s, "<codegen_passes>", "exec"), repeats)
    row["steps"] = len(plan.steps)
    row["source kB (flatten)"] = len(sources["flatten"]) / 1e3
    return row


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/codegen_passes.py",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=["mlp1000", "stack96", "widebag4096"])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    warm = SHAPES["mlp32"]()
    gd, sm = sg.flatten(warm)  # the templates are loaded once per process: not timed
    sg.unflatten(gd, sm)
    sg.unflatten(gd, sm)
    rows = {}
    for shape in args.shapes:
        rows[shape] = passes(SHAPES[shape](), args.repeats)
        print(f"  {shape}: done", file=sys.stderr, flush=True)
    keys = list(next(iter(rows.values())))
    print(f"CPU ms per pass, GC off, min of {args.repeats}\n")
    print("| pass | " + " | ".join(rows) + " |")
    print("|---|" + "---:|" * len(rows))
    for k in keys:
        cells = [f"{r[k]:.0f}" if k == "steps" else f"{r[k]:.1f}" for r in rows.values()]
        print(f"| {k} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
