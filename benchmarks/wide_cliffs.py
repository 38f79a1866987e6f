"""Issue 12 item 3 ("no max_steps cliff") for WIDE structures: one node holding n states.

Rows (``--rows``):

* ``attr``  -- n Param attributes ``p0 .. p{n-1}`` on one node;
* ``dict``  -- ``b.d = {"k<i>": Param}``;
* ``list``  -- ``b.l = [Param, ...]``;
* ``tuple`` -- ``b.l = (Param, ...)``;
* ``list-tail`` / ``list-head`` / ``list-mid`` -- ``b.l`` a list of n Params with one node at its end,
  at its start or in its middle (a run of states interrupted: the items around it unrolled);
* ``tuple-mid`` -- the same in a tuple, interrupted by a static in its middle;
* ``dict-mid`` -- ``b.d`` a dict of n Params with one node in the middle;
* ``mixed`` -- ``b.l`` a list of n small containers (a list of one Param repeated 1-3 times,
  or a dict of one Param): not a run of states; each container shape is an outlined function
  and the list one loop calling them (``find_container_shapes``), in the flatten and update,
  and one builder per shape and one loop in the unflatten.
* ``tuple-idx`` -- ``b.l`` a list of n ``(Param, i)`` tuples, ``i`` distinct (issue 12's "no
  cliff: any structure is specialized"): one container family whose int is a parameter, zipped
  in per item; ``list-name`` -- ``[Param, "name_<i>"]`` lists; ``dict-idx`` -- ``b.d`` a dict of
  n str-key dicts ``{"w": Param, "i": i}`` (the outer dict's values one loop too).

Per row and size, in this process, side by side: whether the second ``sg.flatten`` is a
cache hit (specialized), the compile seconds of a fresh cache (``cache_info()["compile_seconds"]``
after the first two flattens and one update: min of the cold repeats), and the time per call
of ``sg.flatten`` and ``specgraph.generic.flatten`` of the same object, and of ``sg.update``
and ``specgraph.generic.update`` (interleaved rounds, min). The unflatten columns: whether
``sg.unflatten`` of the flatten's GraphDef and StateMap is compiled and served (a hit), its
compile seconds (min of the cold repeats), and the time per call of ``sg.unflatten`` and
``specgraph.generic.unflatten`` (interleaved rounds, min, the cyclic GC off around those
rounds only: each call makes n fresh states). Usage::

    python benchmarks/wide_cliffs.py [--rows attr dict list tuple list-tail list-head list-mid
                                     tuple-mid dict-mid mixed tuple-idx list-name dict-idx]
                                     [--sizes 5000 30000 100000]
                                     [--repeats R] [--cold C] [--cpu]
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import specgraph as sg
import specgraph.generic as generic


class Bag(sg.Node):
    pass


def make(mode: str, n: int) -> Bag:
    b = Bag()
    if mode == "attr":
        for i in range(n):
            setattr(b, f"p{i}", sg.Param(np.float32(i)))
    elif mode == "dict":
        b.d = {f"k{i}": sg.Param(np.float32(i)) for i in range(n)}
    elif mode == "list":
        b.l = [sg.Param(np.float32(i)) for i in range(n)]
    elif mode == "tuple":
        b.l = tuple(sg.Param(np.float32(i)) for i in range(n))
    elif mode in ("list-tail", "list-head", "list-mid"):
        b.l = [sg.Param(np.float32(i)) for i in range(n)]
        at = {"list-tail": n, "list-head": 0, "list-mid": n // 2}[mode]
        b.l.insert(at, Bag())
    elif mode == "tuple-mid":
        b.l = tuple(sg.Param(np.float32(i)) if i != n // 2 else "static" for i in range(n + 1))
    elif mode == "dict-mid":
        b.d = {f"k{i}": sg.Param(np.float32(i)) if i != n // 2 else Bag() for i in range(n + 1)}
    elif mode == "mixed":
        b.l = [[sg.Param(np.float32(i))] * (1 + i % 3) if i % 2
               else {"a" + str(i % 7): sg.Param(np.float32(i))} for i in range(n)]
    elif mode == "tuple-idx":
        b.l = [(sg.Param(np.float32(i)), i) for i in range(n)]
    elif mode == "list-name":
        b.l = [[sg.Param(np.float32(i)), "name_" + str(i)] for i in range(n)]
    elif mode == "dict-idx":
        b.d = {"k" + str(i).zfill(6): {"w": sg.Param(np.float32(i)), "i": i} for i in range(n)}
    else:
        raise SystemExit(f"unknown row {mode!r}")
    return b


def best(fn: Callable[[], Any], repeats: int) -> float:
    """The least time of ``repeats`` calls, each's result freed after its timer stops (an
    unflatten's n fresh states are not freed inside the next call's time). ``CLOCK``: wall
    time, or with ``--cpu`` the process's CPU time (on a loaded machine a call of tens of
    milliseconds is descheduled for longer than it runs: wall-time ratios then tell little)."""
    out = float("inf")
    for _ in range(repeats):
        t = CLOCK[0]()
        r = fn()
        out = min(out, CLOCK[0]() - t)
        del r
    return out


CLOCK: list[Callable[[], float]] = [time.perf_counter]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", nargs="+", default=["attr", "dict", "list", "tuple", "mixed"])
    ap.add_argument("--sizes", nargs="+", type=int, default=[5000, 30000, 100000])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--cold", type=int, default=2)
    ap.add_argument("--cpu", action="store_true", help="time.process_time, not time.perf_counter")
    args = ap.parse_args()
    if args.cpu:
        CLOCK[0] = time.process_time
    print("| row | n | specialized | compile s | sg.flatten ms | generic ms | x "
          "| sg.update ms | generic ms | x | unflatten specialized | compile s | sg.unflatten ms "
          "| generic ms | x |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|")
    for mode in args.rows:
        for n in args.sizes:
            if mode in ("mixed", "tuple-idx", "list-name", "dict-idx") and n > 30000:
                continue
            b = make(mode, n)
            compile_s = ucompile_s = float("inf")
            for _ in range(args.cold):
                sg.clear_cache()
                gd, st = sg.flatten(b)
                sg.flatten(b)
                sg.update(b, st)
                compile_s = min(compile_s, sg.cache_info()["compile_seconds"])
                before = sg.cache_info()["compile_seconds"]
                sg.unflatten(gd, st)
                sg.unflatten(gd, st)
                ucompile_s = min(ucompile_s, sg.cache_info()["compile_seconds"] - before)
            info = sg.cache_info()
            hit = info["hits"] == 1 and info["update_hits"] == 1
            uhit = info["compiled_unflattens"] == 1 and info["unflatten_hits"] >= 1
            fs = fg = us = ug = xs = xg = float("inf")
            calls = (lambda b=b: sg.flatten(b), lambda b=b: generic.flatten(b),
                     lambda b=b, st=st: sg.update(b, st), lambda b=b, st=st: generic.update(b, st))
            ucalls = (lambda gd=gd, st=st: sg.unflatten(gd, st),
                      lambda gd=gd, st=st: generic.unflatten(gd, st))
            for _ in range(args.repeats):  # interleaved rounds
                fs, fg, us, ug = (min(t, best(f, 1)) for t, f in zip((fs, fg, us, ug), calls, strict=True))
                gc.collect()
                gc.disable()
                try:
                    xs, xg = (min(t, best(f, 1)) for t, f in zip((xs, xg), ucalls, strict=True))
                finally:
                    gc.enable()
            yes = "yes" if hit else "no"
            uyes = "yes" if uhit else "no"
            print(f"| {mode} | {n} | {yes} | {compile_s:.3f} | {fs * 1e3:.2f} | {fg * 1e3:.2f} "
                  f"| {fg / fs:.1f} | {us * 1e3:.2f} | {ug * 1e3:.2f} | {ug / us:.1f} "
                  f"| {uyes} | {ucompile_s:.3f} | {xs * 1e3:.2f} | {xg * 1e3:.2f} | {xg / xs:.1f} |",
                  flush=True)


if __name__ == "__main__":
    main()
