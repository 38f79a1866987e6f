"""Compile cost of a deep chain: first flatten (walk + codegen), source sizes, explain size.

Usage::

    python benchmarks/deep_compile.py [--depth 4000] [--explain-depth 2000] [--repeats 3]

The chain's nodes hold a bare array ``p`` and a ``child`` (so a 4 000-chain is 4 000
table entries, within the default ``max_steps``). Generated code must cost O(1) per
line to produce: the first flatten should grow linearly with depth, and so should the
source kept per function and the text ``explain`` returns. Prints one line per depth;
writes no file.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

import specgraph as sg
from specgraph.runtime import dispatch


class Link(sg.Node):
    def __init__(self, p: Any, child: Any) -> None:
        self.p = p
        self.child = child


class StateLink(sg.Node):
    def __init__(self, p: Any, child: Any) -> None:
        self.p = sg.Param(p)
        self.child = child


def chain(depth: int, cls: type = Link) -> Any:
    node: Any = None
    leaf = np.zeros(2, np.float32)
    for _ in range(depth):  # bottom-up: no recursion
        node = cls(leaf, node)
    return node


def measure(depth: int, repeats: int) -> dict[str, float]:
    """Best of ``repeats``: first flatten (generic walk + compile), a cached flatten, sizes."""
    first = hit = float("inf")
    sizes: dict[str, int] = {}
    for _ in range(repeats):
        sg.clear_cache()
        node = chain(depth)
        t0 = time.perf_counter()
        gd, _ = sg.flatten(node)
        first = min(first, time.perf_counter() - t0)
        t0 = time.perf_counter()
        sg.flatten(node)
        hit = min(hit, time.perf_counter() - t0)
        var = dispatch.variant_for(gd)
        assert var is not None, "the chain was not specialized"
        sizes = {k: len(v) for k, v in var.sources.items()}
    t0 = time.perf_counter()
    sg.generic.flatten(chain(depth))
    return {"first": first, "hit": hit, "walk": time.perf_counter() - t0, **sizes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--depth", type=int, nargs="+", default=[1000, 2000, 4000])
    ap.add_argument("--explain-depth", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    for depth in args.depth:
        r = measure(depth, args.repeats)
        print(f"depth {depth:>6}: first flatten {r['first'] * 1e3:8.1f} ms  (generic walk "
              f"{r['walk'] * 1e3:6.1f} ms, cached flatten {r['hit'] * 1e3:6.2f} ms)  source: flatten "
              f"{r['flatten'] / 1e3:8.1f} kB, update {r['update'] / 1e3:8.1f} kB")
    sg.clear_cache()
    node = chain(args.explain_depth, StateLink)
    gd, _ = sg.flatten(node)
    sg.flatten(node)
    t0 = time.perf_counter()
    text = sg.explain(gd)
    print(f"explain of a {args.explain_depth}-chain of Params: {len(text) / 1e3:.1f} kB, "
          f"{len(text.splitlines())} lines, {(time.perf_counter() - t0) * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
