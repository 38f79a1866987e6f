"""Node types registered with callbacks (``register_graph_node_type``): generated code
against the reference walker, side by side in one process (min of repeats).

The model: a ``Node`` holding a list of 32 ``Bag`` nodes (a dict-like class registered
with the callback protocol, BrainState's), each with two ``Param`` states and a bare
array. Flatten and update (every value written back, arrays through ``set_key``) are
timed through ``specgraph.generic`` and through the public, specialized path.
Run: ``python benchmarks/bench_callback_nodes.py [--layers 32] [--repeat 7]``.
"""

from __future__ import annotations

import argparse
import timeit
from collections.abc import Callable
from typing import Any

import numpy as np

import specgraph as sg


class Bag:
    """A mutable node whose children live in a dict (not a ``specgraph.Node``)."""

    def __init__(self, tag: str = "bag", **items: Any) -> None:
        self.tag = tag
        self.data: dict[str, Any] = dict(items)


sg.register_graph_node_type(
    Bag, lambda b: (sorted(b.data.items()), b.tag), lambda b, k, v: b.data.__setitem__(k, v),
    lambda b, k: b.data.pop(k), lambda tag: Bag(tag), lambda b: b.data.clear(),
)


class Model(sg.Node):
    def __init__(self, layers: int) -> None:
        self.layers = [Bag("linear", w=sg.Param(np.ones((4, 4))), b=sg.Param(np.ones(4)), a=np.zeros(2))
                       for _ in range(layers)]


def best(fn: Callable[[], Any], repeat: int, number: int = 200) -> float:
    """Microseconds per call: the min over ``repeat`` runs of ``number`` calls."""
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    model = Model(args.layers)
    for _ in range(3):
        _, sm = sg.flatten(model)
        sg.update(model, sm)
    info = sg.cache_info()
    assert info["hits"] > 0 and info["update_hits"] > 0, "generated code must serve this model"
    rows = [
        ("flatten", lambda: sg.generic.flatten(model), lambda: sg.flatten(model)),
        ("update", lambda: sg.generic.update(model, sm), lambda: sg.update(model, sm)),
    ]
    print(f"{args.layers} Bag nodes registered with callbacks ({2 * args.layers} Params, "
          f"{args.layers} arrays); us per call, min of {args.repeat}")
    for name, generic, specialized in rows:
        g, s = best(generic, args.repeat), best(specialized, args.repeat)
        print(f"{name:8s} generic {g:8.1f}  specialized {s:8.1f}  ratio {g / s:5.1f}x")


if __name__ == "__main__":
    main()
