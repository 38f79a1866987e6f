"""Where specgraph's unflatten time goes, against the cost of the objects it must build.

``sg.unflatten`` of MLP-32 must return 33 fresh nodes and 64 fresh ``Param`` boxes;
``jax.tree_util.tree_unflatten`` of the nested dict builds 33 dicts and a list. This
script times, side by side in one process (interleaved, min of repeats):

* ``tree_unflatten``          -- the pytree baseline;
* ``sg.unflatten``            -- the public call (dispatch + generated function);
* generated, no dispatch      -- the generated function called directly;
* generated, no class guards  -- the same function compiled without its class guards;
* objects only                -- ``object.__new__`` of every node and state of the
  structure, in order, and nothing else (freed on return, as a dropped result is).

The last line is a floor for any pure-Python unflatten that returns real objects: it
does no stores, no unpacking and no checks. Run: ``python benchmarks/unflatten_floor.py``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_graph  # noqa: E402
import jax  # noqa: E402
import models  # noqa: E402

import specgraph as sg  # noqa: E402
from specgraph import codegen  # noqa: E402
from specgraph.runtime import dispatch  # noqa: E402


def objects_only(gd: sg.GraphDef) -> Any:
    """A function creating every object of ``gd``'s table with ``object.__new__``.

    Built from a template-free list of calls: ``map`` over the types in table order
    (the per-object cost is what is measured, not the bytecode around it).
    """
    types = tuple(spec.type for spec in gd.table)
    new = object.__new__

    def build() -> Any:
        return list(map(new, types))

    return build


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="mlp32", choices=list(models.SHAPES))
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--target-ms", type=float, default=20.0)
    args = ap.parse_args(argv)

    node = models.build(args.shape, "specgraph")
    tree = models.build(args.shape, "jax")
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    gd, sm = sg.flatten(node)
    sg.flatten(node)
    for _ in range(3):
        sg.unflatten(gd, sm)
    rt = gd._rt
    if rt is None or rt.fn is None:
        sys.exit(f"{args.shape}: unflatten is not specialized here")
    fn, statics, values = rt.fn, rt.statics, sm._values

    unguarded = codegen.build("unflatten", gd, max_steps=dispatch.CONFIG.max_steps,
                              disabled=frozenset({"class"})).fn
    floor = objects_only(gd)

    entries = [
        bench_graph.Timing("jax.tree_util.tree_unflatten",
                           lambda: jax.tree_util.tree_unflatten(treedef, leaves)),
        bench_graph.Timing("sg.unflatten", lambda: sg.unflatten(gd, sm)),
        bench_graph.Timing("generated, no dispatch", lambda: fn(values, statics)),
        bench_graph.Timing("generated, no class guards", lambda: unguarded(values, statics)),
        bench_graph.Timing(f"objects only ({len(gd.table)} x object.__new__)", floor),
    ]
    bench_graph.run_interleaved(entries, args.target_ms / 1e3, args.repeats)
    base = entries[0].best
    print(f"{args.shape}: {gd.num_nodes} nodes, {gd.num_states} states; "
          f"min of {args.repeats} repeats, Python {sys.version.split()[0]}")
    print()
    print("| what | µs per call | x tree_unflatten |")
    print("|---|---:|---:|")
    for e in entries:
        print(f"| {e.system} | {e.best * 1e6:.2f} | {e.best / base:.2f}x |")
    print()
    print(f"A bar of 3x tree_unflatten is {3 * base * 1e6:.2f} µs.")


if __name__ == "__main__":
    main()
