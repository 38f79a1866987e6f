"""Issue 12 ("no cliff: any structure is specialized"): every structure of the cliff
benchmarks, at one large size, in one table.

The structures are the rows of ``outline_cliffs.py`` and ``wide_cliffs.py``, two of
this script's own (:func:`_extra`) and the sweeps of ``scaling.py`` (specgraph's own model,
and the Flax NNX and BrainState models flattened by specgraph). Each runs in a child
process of its own (a fresh cache, its own recursion and memory), which reports per
operation (flatten, update, unflatten):

* whether the timed calls were answered by generated code (the ``cache_info()`` hit
  counters grew by one per call: ``yes``), or by the generic walker (``no``, with the
  reason: declined, too large, a guard miss);
* the compile seconds of the first calls (``cache_info()["compile_seconds"]``, all three
  operations together);
* the time per call of ``sg.<op>`` and of ``specgraph.generic.<op>`` on the same object,
  side by side (min of ``--repeats``), and their ratio (how many times faster).

Times are with the cyclic GC on, each call after a ``gc.collect()``. An unflatten of
10 000 nodes makes tens of thousands of objects, which trigger full collections of the
whole heap about every second call, of either path; timed in turn, one path can meet
them on every call (``outline_cliffs.py`` shows unflatten with the GC off as well).

Usage::

    python benchmarks/census.py [--size 10000] [--wide-size 30000] [--repeats 5]
                                [--only ROW ...] [--save]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUTLINE = ["cb-mlp", "cb-one", "arrays", "deep", "cb-chain", "cb-after", "pt-list", "nt", "pytree",
           "idx", "period", "nt-arr", "chain-idx", "two-chains"]
WIDE = ["attr", "dict", "list", "tuple", "list-tail", "list-head", "list-mid", "tuple-mid",
        "dict-mid", "mixed"]
SWEEPS = [f"{sweep}/{system}" for sweep in ("mlp", "widebag", "deepchain")
          for system in ("specgraph", "sg_nnx", "sg_brainstate")]
EXTRA = ["tuple-idx", "alt-nest"]
OPS = ("flatten", "update", "unflatten")
COUNTER = {"flatten": "hits", "update": "update_hits", "unflatten": "unflatten_hits"}


def _extra(row: str, n: int) -> Any:
    """Structures of no other benchmark: ``tuple-idx``, a list of n ``(Param, i)`` tuples
    (containers differing in an int static); ``alt-nest``, n nodes of two classes nested
    alternately (``A(B(A(...)))``, each holding a Param and the next)."""
    import numpy as np
    import outline_cliffs

    import specgraph as sg

    if row == "tuple-idx":
        return outline_cliffs.Model(items=[(sg.Param(np.float32(i)), i) for i in range(n)])

    class A(sg.Node):
        def __init__(self, c: Any) -> None:
            self.p = sg.Param(np.float32(1))
            self.c = c

    class B(sg.Node):
        def __init__(self, c: Any) -> None:
            self.q = sg.Param(np.float32(2))
            self.c = c

    x = None
    for i in range(n):
        x = (A if i % 2 else B)(x)
    return outline_cliffs.Model(x=x)


def build(row: str, size: int, wide_size: int) -> Any:
    """The row's object (imported in the child only)."""
    sys.path.insert(0, str(HERE))
    if row in EXTRA:
        return _extra(row, size)
    if row in OUTLINE:
        import outline_cliffs

        return outline_cliffs.ROWS[row](size)
    if row in WIDE:
        import wide_cliffs

        return wide_cliffs.make(row, wide_size)
    import scaling

    sweep, system = row.split("/")
    return scaling.build(scaling.load_bench().load_sibling("models"), sweep, system, size)


def best_pair(spec: Any, ref: Any, repeats: int) -> tuple[float, float]:
    """The least time of ``repeats`` calls of each, interleaved (a noisy spell hits both
    alike), each call after a full collection: an unflatten of 10 000 nodes triggers one
    about every second call, and interleaved calls alias with that period (one path met
    it on every call: BrainState widebag 10 000 read 0.3x the walker, its calls without
    one 1.2-1.5x faster)."""
    out = [float("inf"), float("inf")]
    for _ in range(repeats):
        for i, fn in enumerate((spec, ref)):
            gc.collect()
            t0 = time.perf_counter()
            fn()
            out[i] = min(out[i], time.perf_counter() - t0)
    return out[0], out[1]


def child(row: str, size: int, wide_size: int, repeats: int) -> dict[str, Any]:
    """Measure one row in this process."""
    import warnings

    import specgraph as sg

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 200_000))
    obj = build(row, size, wide_size)
    sg.clear_cache()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gd, values = sg.flatten(obj)
        sg.flatten(obj)
        sg.update(obj, values)
        sg.update(obj, values)
        sg.unflatten(gd, values)
        sg.unflatten(gd, values)
    info = sg.cache_info()
    out: dict[str, Any] = {"row": row, "compile_s": info["compile_seconds"],
                           "warnings": sorted({str(w.message)[:100] for w in caught})[:2]}
    calls = {"flatten": (lambda: sg.flatten(obj), lambda: sg.generic.flatten(obj)),
             "update": (lambda: sg.update(obj, values), lambda: sg.generic.update(obj, values)),
             "unflatten": (lambda: sg.unflatten(gd, values), lambda: sg.generic.unflatten(gd, values))}
    for op, (spec, ref) in calls.items():
        before = sg.cache_info()
        t_spec, t_ref = best_pair(spec, ref, repeats)
        after = sg.cache_info()
        hit = after[COUNTER[op]] - before[COUNTER[op]] == repeats
        why = ""
        if not hit:
            named = ("unflatten_declined",) if op == "unflatten" else ("declined", "declined_too_large")
            why = ", ".join(k for k in (*named, "compile_failures") if after[k]) \
                or ",".join(sorted(after["guard_misses"])) or "fallback"
        out[op] = {"specialized": hit, "why": why, "spec_ms": t_spec * 1e3, "ref_ms": t_ref * 1e3}
    return out


def run_row(row: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", row, "--size", str(args.size),
           "--wide-size", str(args.wide_size), "--repeats", str(args.repeats)]
    env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return {"row": row, "error": tail[:160]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cell(r: dict[str, Any], op: str) -> str:
    m = r[op]
    ratio = m["ref_ms"] / m["spec_ms"] if m["spec_ms"] else float("inf")
    tag = "yes" if m["specialized"] else f"**no** ({m['why']})"
    return f"{tag}: {m['spec_ms']:.3g} / {m['ref_ms']:.3g} ms ({ratio:.1f}x)"


def table(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [f"Census at n = {args.size} (wide rows: {args.wide_size}); per op: generated code "
             "answered? sg / generic per call (min of {}), generic / sg.".format(args.repeats), "",
             "| structure | compile s | flatten | update | unflatten |", "|---|---|---|---|---|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['row']} | error: {r['error']} | | | |")
            continue
        lines.append(f"| {r['row']} | {r['compile_s']:.2f} | " + " | ".join(cell(r, op) for op in OPS) + " |")
    done = [r for r in results if "error" not in r]
    n_yes = sum(r[op]["specialized"] for r in done for op in OPS)
    lines += ["", f"{n_yes} of {3 * len(results)} operations specialized."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=10_000)
    ap.add_argument("--wide-size", type=int, default=30_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--only", nargs="+", default=None)
    ap.add_argument("--save", action="store_true", help="write benchmarks/results/census.md")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.size, args.wide_size, args.repeats)))
        return
    rows = args.only or OUTLINE + WIDE + EXTRA + SWEEPS
    results = []
    for row in rows:
        r = run_row(row, args)
        results.append(r)
        print(r["row"], "error: " + r["error"] if "error" in r else " | ".join(cell(r, op) for op in OPS),
              flush=True)
    text = table(results, args)
    print(text)
    if args.save:
        (HERE / "results" / "census.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
