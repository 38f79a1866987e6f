"""Issue 12 item 3 ("no max_steps cliff"): structures the specializer used to leave to the
generic walker once they grew, each at 1 000 and 10 000.

Rows (``--rows``):

* ``cb-mlp``  -- a list of n ``Linear`` layers of a class registered with callbacks
                 (``register_graph_node_type``): w, b (Params) and a static;
* ``cb-one``  -- n ``sg.Node`` Linear layers in a list, and one callback node elsewhere;
* ``arrays``  -- n ``sg.Node`` layers holding bare numpy arrays (no State);
* ``deep``    -- a list nested n deep inside a node: ``x = [x, Param]``;
* ``cb-chain`` -- n callback-registered layers nested n deep (each the next's under ``next``);
* ``cb-after`` -- n ``sg.Node`` links nested n deep, each holding a callback-registered layer
                  after the next link (keys ``a_next``, ``z_cb``);
* ``cb-after-list`` -- the same with each next link held in a list of its link
                       (``a_next=[next]``): the next link in a container of the link;
* ``chain-list`` -- n ``sg.Node`` links nested n deep, each holding its next link in a list
                    (``a_next=[next]``) and a Param after it: no user code;
* ``pt-list`` -- n ``sg.Node`` layers each holding two Params in a list (``p = [w, b]``);
* ``nt``      -- the same, in a ``collections.namedtuple`` (``p = WB(w, b)``);
* ``pytree``  -- the same, in a class registered with ``jax.tree_util.register_pytree_node_class``;
* ``idx``     -- n ``sg.Node`` Linear layers each holding its index as a static (``idx = i``):
                 n shapes differing only in one int;
* ``period``  -- the same with ``idx = i % 3``: three shapes, alternating in the list;
* ``nt-arr``  -- n layers each holding a namedtuple of a bare array and a Param;
* ``chain-idx`` -- n ``sg.Node`` links nested n deep, each holding a Param, its depth (an int
                   static), a tag alternating between two strings and a flag (a bool, every
                   third link): links differing in statics, the chain loop's parameters;
* ``two-chains`` -- two chains of n ``sg.Node`` links (a Param and the next link) of one
                    structure in one node: alike links at each depth (``--outline-min 2``:
                    each depth was a shape nesting the next one's, planned n deep).
* ``alt-chains`` -- the same, the links of two classes alternating (``A(B(A(B(...))))``):
                    a chain of period 2 (was: ``--outline-min 2`` RecursionError in planning,
                    default settings unrolled past max_steps at 10 000).

Per row and size, in this process, side by side: whether the second ``sg.flatten`` is a
cache hit (specialized) and served by outlined code, the compile seconds of a fresh cache
(flatten + update, ``cache_info()["compile_seconds"]``: min of the cold repeats), and the
time per call of ``sg.flatten`` and ``specgraph.generic.flatten`` of the same object
(interleaved rounds, min). For the rows of :data:`UPDATE_ROWS` a table of ``sg.update``
against ``specgraph.generic.update`` (writing the row's own values back). For the rows of
:data:`UNFLATTEN_ROWS` another table: the same of ``sg.unflatten`` and
``specgraph.generic.unflatten`` of the row's GraphDef and values (compile seconds: the
unflatten's own, on top of the flatten's), and both again with the cyclic GC off
(``gc.disable()`` around those rounds only). A call that builds tens of thousands of
containers lives through young-generation collections, which promote its objects; the
promotions then trigger full collections of the whole heap (the model, the GraphDef, jax):
at 10 000 links that costs more than the build itself, and it grows with the heap, so the
"gc off" columns are the generated code's own cost.
Usage::

    python benchmarks/outline_cliffs.py [--rows cb-mlp cb-one arrays deep cb-chain cb-after
                                         cb-after-list chain-list pt-list
                                         nt pytree idx period nt-arr chain-idx two-chains
                                         alt-chains]
                                        [--sizes 1000 10000] [--repeats R] [--cold C]
                                        [--outline-min K]
"""

from __future__ import annotations

import argparse
import collections
import gc
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

import specgraph as sg
from specgraph.runtime import dispatch


class CLinear:
    """A Linear layer registered with callbacks."""

    def __init__(self, seed: float) -> None:
        self.items = {"w": sg.Param(np.full((8, 8), seed, np.float32)),
                      "b": sg.Param(np.full((8,), seed, np.float32)), "act": "relu"}


def _empty_clinear(meta: Any) -> CLinear:
    """An empty ``CLinear`` (its items set by ``set_key``): no arrays made and thrown away."""
    n = CLinear.__new__(CLinear)
    n.items = {}
    return n


sg.register_graph_node_type(
    CLinear, lambda n: (list(n.items.items()), None), lambda n, k, v: n.items.__setitem__(k, v),
    lambda n, k: n.items.pop(k), _empty_clinear, lambda n: n.items.clear())


class Linear(sg.Node):
    def __init__(self, seed: float) -> None:
        self.w = sg.Param(np.full((8, 8), seed, np.float32))
        self.b = sg.Param(np.full((8,), seed, np.float32))
        self.act = "relu"


class IdxLinear(Linear):
    """A ``Linear`` holding a static of its own (a layer index, a tag)."""

    def __init__(self, seed: float, idx: int) -> None:
        super().__init__(seed)
        self.idx = idx


class ArrLinear(sg.Node):
    def __init__(self, seed: float) -> None:
        self.w = np.full((8, 8), seed, np.float32)
        self.b = np.full((8,), seed, np.float32)
        self.act = "relu"


WB = collections.namedtuple("WB", "w b")


@jax.tree_util.register_pytree_node_class
class Pair:
    """A registered pytree of two children, no aux data."""

    def __init__(self, a: Any, b: Any) -> None:
        self.a, self.b = a, b

    def tree_flatten(self) -> tuple[tuple[Any, Any], None]:
        return (self.a, self.b), None

    @classmethod
    def tree_unflatten(cls, aux: Any, ch: Any) -> Pair:
        return cls(*ch)


class PtLinear(sg.Node):
    """Two Params held in a list, a namedtuple or a registered pytree (``holder``)."""

    def __init__(self, seed: float, holder: Callable[[Any, Any], Any]) -> None:
        self.p = holder(sg.Param(np.full((8, 8), seed, np.float32)),
                        sg.Param(np.full((8,), seed, np.float32)))
        self.act = "relu"


class Model(sg.Node):
    def __init__(self, **attrs: Any) -> None:
        vars(self).update(attrs)


def _deep(n: int) -> Model:
    x: Any = []
    for i in range(n):
        x = [x, sg.Param(np.full((2,), i, np.float32))]
    return Model(x=x)


def _cb_chain(n: int) -> Model:
    x = CLinear(-1.0)
    for i in range(n):
        c = CLinear(float(i))
        c.items["next"] = x
        x = c
    return Model(x=x)


def _cb_after(n: int) -> Model:
    x: Any = CLinear(-1.0)
    for i in range(n):
        x = Model(a_next=x, z_cb=CLinear(float(i)))
    return Model(x=x)


def _cb_after_list(n: int) -> Model:
    x: Any = CLinear(-1.0)
    for i in range(n):
        x = Model(a_next=[x], z_cb=CLinear(float(i)))
    return Model(x=x)


def _chain_list(n: int) -> Model:
    x: Any = Model(p=sg.Param(np.full((4,), -1, np.float32)))
    for i in range(n):
        x = Model(a_next=[x], z_p=sg.Param(np.full((4,), i, np.float32)))
    return Model(x=x)


class IdxLink(sg.Node):
    def __init__(self, nxt: Any, i: int) -> None:
        self.p = sg.Param(np.full((4,), i, np.float32))
        self.depth = i
        self.tag = ("even", "odd")[i % 2]
        self.flag = i % 3 == 0
        self.next = nxt


class PlainLink(sg.Node):
    def __init__(self, nxt: Any, i: int) -> None:
        self.p = sg.Param(np.full((4,), i, np.float32))
        self.next = nxt


class OtherLink(sg.Node):
    def __init__(self, nxt: Any, i: int) -> None:
        self.q = sg.Param(np.full((4,), -i, np.float32))
        self.next = nxt


def _alternating(n: int) -> Any:
    x = None
    for i in range(n):
        x = (PlainLink, OtherLink)[i % 2](x, i)
    return x


def _chain_of(cls: Any, n: int) -> Any:
    x = None
    for i in range(n):
        x = cls(x, i)
    return x


ROWS: dict[str, Callable[[int], Any]] = {
    "cb-mlp": lambda n: Model(layers=[CLinear(float(i)) for i in range(n)]),
    "cb-one": lambda n: Model(layers=[Linear(float(i)) for i in range(n)], odd=CLinear(1.0)),
    "arrays": lambda n: Model(layers=[ArrLinear(float(i)) for i in range(n)]),
    "deep": _deep,
    "cb-chain": _cb_chain,
    "cb-after": _cb_after,
    "cb-after-list": _cb_after_list,
    "chain-list": _chain_list,
    "pt-list": lambda n: Model(layers=[PtLinear(float(i), lambda a, b: [a, b]) for i in range(n)]),
    "nt": lambda n: Model(layers=[PtLinear(float(i), WB) for i in range(n)]),
    "pytree": lambda n: Model(layers=[PtLinear(float(i), Pair) for i in range(n)]),
    "idx": lambda n: Model(layers=[IdxLinear(float(i), i) for i in range(n)]),
    "period": lambda n: Model(layers=[IdxLinear(float(i), i % 3) for i in range(n)]),
    "nt-arr": lambda n: Model(layers=[PtLinear(float(i), lambda a, b: WB(a.value, b)) for i in range(n)]),
    "chain-idx": lambda n: Model(x=_chain_of(IdxLink, n)),
    "two-chains": lambda n: Model(a=_chain_of(PlainLink, n), b=_chain_of(PlainLink, n)),
    "alt-chains": lambda n: Model(a=_alternating(n), b=_alternating(n)),
}


#: Rows whose unflatten is measured too.
UNFLATTEN_ROWS = ("cb-mlp", "cb-one", "arrays", "deep", "cb-chain", "cb-after", "cb-after-list", "chain-list",
                  "pt-list", "nt", "pytree", "idx", "period", "nt-arr", "chain-idx", "two-chains",
                  "alt-chains")

#: Rows whose update is measured too.
UPDATE_ROWS = ("deep", "cb-chain", "cb-after", "cb-after-list", "chain-list", "chain-idx", "two-chains",
               "alt-chains")


def _outlined() -> bool:
    return any(v.plan.outlined for e in dispatch._types.values() for v in e.variants)


def _per_call(fn: Callable[[], Any], target: float = 0.002) -> float:
    """Seconds per call of ``fn``, over one round of about ``target`` seconds."""
    n = 1
    while True:
        t = time.perf_counter()
        for _ in range(n):
            fn()
        dt = time.perf_counter() - t
        if dt >= target:
            return dt / n
        n *= 2


def run(row: str, n: int, repeats: int, cold: int) -> dict[str, Any]:
    m = ROWS[row](n)
    compile_s = []
    for _ in range(cold):
        sg.clear_cache()
        sg.flatten(m)
        compile_s.append(sg.cache_info()["compile_seconds"])
    hits = sg.cache_info()["hits"]
    sg.flatten(m)
    specialized = sg.cache_info()["hits"] == hits + 1
    outlined = _outlined()
    spec, gen = [], []
    for _ in range(repeats):  # interleaved rounds
        spec.append(_per_call(lambda: sg.flatten(m)))
        gen.append(_per_call(lambda: sg.generic.flatten(m)))
    return {"row": row, "n": n, "specialized": specialized, "outlined": outlined,
            "compile_s": min(compile_s), "specgraph_us": min(spec) * 1e6, "generic_us": min(gen) * 1e6}


def run_update(row: str, n: int, repeats: int) -> dict[str, Any]:
    m = ROWS[row](n)
    sg.clear_cache()
    _, sm = sg.flatten(m)
    sg.flatten(m)
    sg.update(m, sm)
    hits = sg.cache_info()["update_hits"]
    sg.update(m, sm)
    specialized = sg.cache_info()["update_hits"] == hits + 1
    spec, gen = [], []
    for _ in range(repeats):  # interleaved rounds
        spec.append(_per_call(lambda: sg.update(m, sm)))
        gen.append(_per_call(lambda: sg.generic.update(m, sm)))
    return {"row": row, "n": n, "specialized": specialized, "outlined": _outlined(),
            "specgraph_us": min(spec) * 1e6, "generic_us": min(gen) * 1e6}


def run_unflatten(row: str, n: int, repeats: int, cold: int) -> dict[str, Any]:
    m = ROWS[row](n)
    compile_s = []
    for _ in range(cold):
        sg.clear_cache()
        gd, sm = sg.flatten(m)
        flat_s = sg.cache_info()["compile_seconds"]
        sg.unflatten(gd, sm)
        sg.unflatten(gd, sm)  # (compiled by the first or second call)
        compile_s.append(sg.cache_info()["compile_seconds"] - flat_s)
    built = dispatch._unflat.get(gd)
    plan = built.plan if built is not None else None
    hits = sg.cache_info()["unflatten_hits"]
    sg.unflatten(gd, sm)
    specialized = sg.cache_info()["unflatten_hits"] == hits + 1
    outlined = plan is not None and bool(plan.shape_fns or plan.loops)
    spec, gen, spec_off, gen_off = [], [], [], []
    for _ in range(repeats):  # interleaved rounds
        spec.append(_per_call(lambda: sg.unflatten(gd, sm)))
        gen.append(_per_call(lambda: sg.generic.unflatten(gd, sm)))
        gc.disable()  # the same with the cyclic GC off: what the collections cost (see main)
        try:
            spec_off.append(_per_call(lambda: sg.unflatten(gd, sm)))
            gen_off.append(_per_call(lambda: sg.generic.unflatten(gd, sm)))
        finally:
            gc.enable()
    return {"row": row, "n": n, "specialized": specialized, "outlined": outlined,
            "compile_s": min(compile_s), "specgraph_us": min(spec) * 1e6, "generic_us": min(gen) * 1e6,
            "specgraph_nogc_us": min(spec_off) * 1e6, "generic_nogc_us": min(gen_off) * 1e6}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    ap.add_argument("--sizes", nargs="+", type=int, default=[1000, 10000])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--cold", type=int, default=3)
    ap.add_argument("--outline-min", type=int, default=None,
                    help="sg.configure(outline_min=K) first (the default settings otherwise)")
    args = ap.parse_args(argv)
    if args.outline_min is not None:
        sg.configure(outline_min=args.outline_min)
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 50_000))
    print(f"{'row':13} {'n':>6} {'spec':>5} {'outl':>5} {'compile s':>10} {'sg.flatten us':>14} "
          f"{'generic us':>11} {'generic/sg':>10}")
    for row in args.rows:
        for n in args.sizes:
            r = run(row, n, args.repeats, args.cold)
            ratio = r["generic_us"] / r["specgraph_us"]
            print(f"{row:13} {n:>6} {r['specialized']!s:>5} {r['outlined']!s:>5} {r['compile_s']:>10.3f} "
                  f"{r['specgraph_us']:>14.1f} {r['generic_us']:>11.1f} {ratio:>10.2f}", flush=True)
    rows = [row for row in args.rows if row in UPDATE_ROWS]
    if rows:
        print(f"\n{'update':13} {'n':>6} {'spec':>5} {'outl':>5} {'':>10} {'sg.update us':>14} "
              f"{'generic us':>11} {'generic/sg':>10}")
    for row in rows:
        for n in args.sizes:
            r = run_update(row, n, args.repeats)
            ratio = r["generic_us"] / r["specgraph_us"]
            print(f"{row:13} {n:>6} {r['specialized']!s:>5} {r['outlined']!s:>5} {'':>10} "
                  f"{r['specgraph_us']:>14.1f} {r['generic_us']:>11.1f} {ratio:>10.2f}", flush=True)
    rows = [row for row in args.rows if row in UNFLATTEN_ROWS]
    if rows:
        print(f"\n{'unflatten':13} {'n':>6} {'spec':>5} {'outl':>5} {'compile s':>10} {'sg.unflat us':>14} "
              f"{'generic us':>11} {'generic/sg':>10} {'sg gc off':>10} {'generic gc off':>14}")
    for row in rows:
        for n in args.sizes:
            r = run_unflatten(row, n, args.repeats, args.cold)
            ratio = r["generic_us"] / r["specgraph_us"]
            print(f"{row:13} {n:>6} {r['specialized']!s:>5} {r['outlined']!s:>5} {r['compile_s']:>10.3f} "
                  f"{r['specgraph_us']:>14.1f} {r['generic_us']:>11.1f} {ratio:>10.2f} "
                  f"{r['specgraph_nogc_us']:>10.1f} {r['generic_nogc_us']:>14.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
