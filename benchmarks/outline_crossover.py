"""Where outlining pays: unrolled straight-line code against one function per repeated shape.

For MLPs of ``N`` ``Linear`` layers (and transformer-like stacks of ``N`` blocks), both
forms of the generated flatten are compiled from one ``GraphDef`` (``outline_min=0``:
everything unrolled; ``outline_min=2``: every repeated shape outlined) and called side by
side on the same model, interleaved, min of several repeats; compile time is the build
of flatten + update. Prints one row per size; ``sg.configure(outline_min=...)``'s default
is the smallest count where the outlined call is within a few percent of the unrolled
one while compile time already drops.

    python benchmarks/outline_crossover.py [--sizes 2 4 8 16 32 64] [--repeats 15]

``--unflatten`` measures the unflatten instead: its compile (planning, rendering,
``compile()``, and reading the statics from the GraphDef) and its call, unrolled
(``outline_min=0``) against outlined (``outline_min=2``) against the reference walker
(``specgraph.generic.unflatten``), for MLPs of ``--sizes`` layers and chains of
``--chains`` nested nodes (an unrolled function past ``--unrolled-max`` nodes is not built):

    python benchmarks/outline_crossover.py --unflatten --sizes 8 16 32 64 100 1000 10000 100000 --chains 10000
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import timeit
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import models

import specgraph as sg
from specgraph import codegen


def _build(gd: sg.GraphDef, outline_min: int) -> tuple[Any, Any, float]:
    t0 = time.perf_counter()
    f = codegen.build("flatten", gd, max_steps=10**9, outline_min=outline_min)
    u = codegen.build("update", gd, max_steps=10**9, outline_min=outline_min, plan=f.plan)
    return f.fn, u.fn, time.perf_counter() - t0


def _time(fn: Any, args: tuple, repeats: int) -> float:
    n = max(1, int(0.02 / max(1e-7, min(timeit.repeat(lambda: fn(*args), number=1, repeat=3)))))
    return min(timeit.repeat(lambda: fn(*args), number=n, repeat=repeats)) / n


def row(kind: str, size: int, repeats: int) -> str:
    fam = models.FAMILIES["specgraph"]
    node = models.build_mlp(fam, depth=size, width=8) if kind == "mlp" else \
        models.build_transformer(fam, n_blocks=size)
    gd, state = sg.generic.flatten(node)
    hash(gd)
    vals = list(state.values())
    unrolled, u_unrolled, c_unrolled = _build(gd, 0)
    outlined, u_outlined, c_outlined = _build(gd, 2)
    assert type(unrolled(node)) is list and type(outlined(node)) is list
    assert u_unrolled(node, vals) is None and u_outlined(node, vals) is None
    t_u = t_o = w_u = w_o = float("inf")
    for _ in range(3):  # interleaved: the machine's noise hits both alike
        t_u = min(t_u, _time(unrolled, (node,), repeats))
        t_o = min(t_o, _time(outlined, (node,), repeats))
        w_u = min(w_u, _time(u_unrolled, (node, vals), repeats))
        w_o = min(w_o, _time(u_outlined, (node, vals), repeats))
    return (f"| {kind}-{size} | {c_unrolled * 1e3:.1f} | {c_outlined * 1e3:.1f} | {t_u * 1e6:.2f} | "
            f"{t_o * 1e6:.2f} | {t_o / t_u:.2f} | {w_u * 1e6:.2f} | {w_o * 1e6:.2f} | {w_o / w_u:.2f} |")


def _build_unflatten(gd: sg.GraphDef, outline_min: int) -> tuple[Any, tuple, float]:
    t0 = time.perf_counter()
    b = codegen.build("unflatten", gd, max_steps=10**9, outline_min=outline_min)
    statics = b.plan.statics.read(gd)
    return b.fn, statics, time.perf_counter() - t0


def _time_call(fn: Any, repeats: int) -> float:
    n = max(1, int(0.02 / max(1e-7, min(timeit.repeat(fn, number=1, repeat=3)))))
    return min(timeit.repeat(fn, number=n, repeat=repeats)) / n


def unflatten_row(kind: str, size: int, repeats: int, unrolled_max: int) -> str:
    fam = models.FAMILIES["specgraph"]
    node = models.build_mlp(fam, depth=size, width=8) if kind == "mlp" else models.build_deepchain(fam, size)
    gd, st = sg.generic.flatten(node)
    hash(gd)
    vals = st._values
    fns = {}
    compile_ms = {}
    if size <= unrolled_max:
        fn, statics, secs = _build_unflatten(gd, 0)
        fns["unrolled"] = (lambda fn=fn, statics=statics: fn(vals, statics))
        compile_ms["unrolled"] = secs * 1e3
    fn, statics, secs = _build_unflatten(gd, 2)
    fns["outlined"] = (lambda fn=fn, statics=statics: fn(vals, statics))
    compile_ms["outlined"] = secs * 1e3
    fns["generic"] = lambda: sg.generic.unflatten(gd, st)
    for f in fns.values():  # each builds the very structure, from the very values
        out = sg.generic.flatten(f())
        assert out[0] == gd and all(a is b for a, b in zip(out[1]._values, vals, strict=True))
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(3):  # interleaved: the machine's noise hits all alike
        for k, f in fns.items():
            best[k] = min(best[k], _time_call(f, repeats))
    u = best.get("unrolled")
    cu = f"{compile_ms['unrolled']:.1f}" if u is not None else "not built"
    tu = f"{u * 1e6:.1f}" if u is not None else "—"
    ratio = f"{best['outlined'] / u:.2f}" if u is not None else "—"
    return (f"| {kind}-{size} | {cu} | {compile_ms['outlined']:.1f} | {tu} | {best['outlined'] * 1e6:.1f} | "
            f"{best['generic'] * 1e6:.1f} | {ratio} | {best['generic'] / best['outlined']:.1f} |")


def main_unflatten(args: argparse.Namespace) -> int:
    print("| structure | compile unrolled (ms) | compile outlined (ms) | unflatten unrolled (us) | "
          "unflatten outlined (us) | generic (us) | outlined / unrolled | generic / outlined |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for n in args.sizes:
        print(unflatten_row("mlp", n, args.repeats, args.unrolled_max), flush=True)
    for n in args.chains:
        print(unflatten_row("chain", n, args.repeats, args.unrolled_max), flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2, 4, 8, 16, 32, 64, 256])
    ap.add_argument("--blocks", type=int, nargs="+", default=[2, 4, 12])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--unflatten", action="store_true", help="measure the unflatten (see above)")
    ap.add_argument("--chains", type=int, nargs="*", default=[10000], help="--unflatten: chain lengths")
    ap.add_argument("--unrolled-max", type=int, default=10000,
                    help="--unflatten: largest size whose unrolled function is built")
    args = ap.parse_args(argv)
    codegen.build("flatten", sg.generic.flatten(models.build_mlp(models.FAMILIES["specgraph"], 2, 8))[0],
                  max_steps=10**9)  # load the templates before timing anything
    gc.collect()
    if args.unflatten:
        return main_unflatten(args)
    print("| structure | compile unrolled (ms) | compile outlined (ms) | flatten unrolled (us) | "
          "flatten outlined (us) | outlined / unrolled | update unrolled (us) | update outlined (us) | "
          "outlined / unrolled |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in args.sizes:
        print(row("mlp", n, args.repeats), flush=True)
    for n in args.blocks:
        print(row("transformer", n, args.repeats), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
