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
(``specgraph.generic.unflatten``), for MLPs of ``--sizes`` layers, nodes of ``--attrs``
Linear attributes (one builder call each), transformer-like stacks of ``--blocks`` blocks
and chains of ``--chains`` nested nodes (no unrolled function past ``--unrolled-max``):

    python benchmarks/outline_crossover.py --unflatten --sizes 8 16 32 64 100 1000 10000 100000 \
        --blocks 2 4 12 --chains 10000

Foreign classes (``--foreign``, a second table): MLPs of real ``nnx.Linear`` layers in an
``nnx.List`` and of ``brainstate.nn.Linear`` layers in a list (width 8), through the public
API. Compile milliseconds are ``sg.cache_info()["compile_seconds"]`` after the first
``sg.flatten`` of a fresh cache (flatten + update), fully unrolled (``outline_min=0``, with
``max_steps`` lifted so that it compiles at all) against the default (``outline_min=64``);
``specialized`` says whether the default's second flatten is served by generated code.
Per call (default configuration, interleaved, min of repeats): ``sg.flatten`` against
``jax.tree_util.tree_flatten`` of the same arrays as nested dicts and the library's own
flatten (``nnx.split`` / ``brainstate.graph.flatten``), ``sg.update`` against the library's
(``nnx.update`` / ``brainstate.graph.update_states``). ``--specialized-only`` sizes are
only checked for specialization (flatten).

    python benchmarks/outline_crossover.py --foreign [--nnx 32 1000] [--brainstate 32 1000]
        [--specialized-only 10000]

``--partial``: a partial update instead (a part of a split written through the update):
MLPs of ``--sizes`` layers holding w, b (Params) and n (a State), ``sg.update(m, part)`` with
the part from ``sg.split(m, sg.Param, ...)``. The partial-update functions of ``outline_min=0``
and ``outline_min=2`` (two classes of one structure, compiled through the public API) are
called side by side as ``sg.update`` calls them, interleaved, min of repeats:

    python benchmarks/outline_crossover.py --partial --sizes 100 1000

``--foreign --unflatten``: the unflatten of those models. Compile milliseconds through the
public API (``sg.cache_info()["compile_seconds"]`` over the first ``sg.unflatten`` calls of a
fresh cache): fully unrolled (``outline_min=0``, ``max_steps`` lifted; not past
``--unrolled-max``) against the default configuration; ``specialized`` says whether the
default's next ``sg.unflatten`` is counted as an unflatten hit, and ``outlined`` whether its
code has an outlined builder or loop. Per call (interleaved, min of repeats): the unrolled
and outlined functions built side by side from one GraphDef (``codegen.build``, called as
``sg.unflatten`` calls them), ``sg.unflatten`` itself, the library's own (``nnx.merge`` /
``brainstate.graph.unflatten``) and the reference walker. ``--specialized-only`` sizes are
only checked for specialization (and their compile time).

    python benchmarks/outline_crossover.py --foreign --unflatten [--nnx 1000 3000 10000]
        [--brainstate 1000] [--unrolled-max 1000] [--specialized-only]
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import sys
import time
import timeit
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import models
import numpy as np

import specgraph as sg
from specgraph import codegen


def _load_bench_graph() -> Any:
    """``bench_graph.py`` by path (its interleaved timing helpers)."""
    name = "specgraph_bench_bench_graph"
    mod = sys.modules.get(name)
    if mod is None:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("bench_graph.py"))
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return mod


_BG = _load_bench_graph()


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


class Attrs(sg.Node):
    def __init__(self, **layers: Any) -> None:
        vars(self).update(layers)


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
    if kind == "mlp":
        node = models.build_mlp(fam, depth=size, width=8)
    elif kind == "transformer":
        node = models.build_transformer(fam, n_blocks=size)
    elif kind == "attrs":  # the layers as attributes: one builder call each, no loop
        node = Attrs(**{f"l{i:06d}": fam.linear(8, 8, ("attrs", i)) for i in range(size)})
    else:
        node = models.build_deepchain(fam, size)
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
    for n in args.attrs:
        print(unflatten_row("attrs", n, args.repeats, args.unrolled_max), flush=True)
    for n in args.blocks:
        print(unflatten_row("transformer", n, args.repeats, args.unrolled_max), flush=True)
    for n in args.chains:
        print(unflatten_row("chain", n, args.repeats, args.unrolled_max), flush=True)
    return 0


class _Counted(sg.Node):
    def __init__(self, seed: float) -> None:
        self.w = sg.Param(np.full((8, 8), seed, np.float32))
        self.b = sg.Param(np.full((8,), seed, np.float32))
        self.n = sg.State(np.zeros((), np.int32))


class _CountedMLP(sg.Node):
    def __init__(self, n: int) -> None:
        self.layers = [_Counted(float(i)) for i in range(n)]


class _CountedMLPOutlined(_CountedMLP):
    """The same structure under another class: its own cache entry, compiled outlined."""


def partial_row(size: int, repeats: int) -> str:
    from specgraph._partition import slot_map
    from specgraph.runtime import dispatch
    from specgraph.runtime.cache import CONFIG

    saved = (CONFIG.outline_min, CONFIG.max_steps)
    fns: dict[str, Any] = {}
    try:
        for om, cls in ((0, _CountedMLP), (2, _CountedMLPOutlined)):
            sg.configure(outline_min=om, max_steps=10**9)
            m = cls(size)
            sg.flatten(m)
            sg.flatten(m)
            _, part, _ = sg.split(m, sg.Param, ...)
            hits = sg.cache_info()["update_hits"]
            sg.update(m, part)
            sg.update(m, part)
            assert sg.cache_info()["update_hits"] == hits + 2, "not served by generated code"
            var = dispatch._types[cls].variants[0]
            sm = slot_map(var.table, (part._table,))
            assert sm is not None and not sm.full
            fn = sm.updates[var]
            assert fn(m, part._values) is None
            fns["unrolled" if om == 0 else "outlined"] = (lambda fn=fn, m=m, v=part._values: fn(m, v))
    finally:
        sg.configure(outline_min=saved[0], max_steps=saved[1])
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(3):  # interleaved: the machine's noise hits both alike
        for k, f in fns.items():
            best[k] = min(best[k], _time_call(f, repeats))
    u, o = best["unrolled"], best["outlined"]
    return f"| mlp-{size} | {u * 1e6:.2f} | {o * 1e6:.2f} | {o / u:.2f} |"


def main_partial(args: argparse.Namespace) -> int:
    print("| structure | partial update unrolled (us) | partial update outlined (us) | outlined / unrolled |")
    print("|---|---:|---:|---:|")
    for n in args.sizes:
        print(partial_row(n, args.repeats), flush=True)
    return 0


def _nnx_mlp(n: int) -> Any:
    from flax import nnx

    class NnxMLP(nnx.Module):
        def __init__(self, n: int, rngs: nnx.Rngs) -> None:
            self.layers = nnx.List([nnx.Linear(8, 8, rngs=rngs) for _ in range(n)])

    return NnxMLP(n, nnx.Rngs(0))


def _bst_mlp(n: int) -> Any:
    import brainstate

    class BstMLP(brainstate.nn.Module):
        def __init__(self, n: int) -> None:
            super().__init__()
            self.layers = [brainstate.nn.Linear(8, 8) for _ in range(n)]

    return BstMLP(n)


def _first_flatten(node: Any, outline_min: int, max_steps: int) -> tuple[float, bool]:
    """Compile seconds of the first flatten of a fresh cache, and whether the next is a hit."""
    sg.clear_cache()
    sg.configure(outline_min=outline_min, max_steps=max_steps)
    sg.flatten(node)
    seconds = sg.cache_info()["compile_seconds"]
    hits = sg.cache_info()["hits"]
    sg.flatten(node)
    return seconds, sg.cache_info()["hits"] > hits


def foreign_row(lib: str, size: int, repeats: int, timed: bool = True) -> str:
    import jax

    node = _nnx_mlp(size) if lib == "nnx" else _bst_mlp(size)
    from specgraph.runtime.cache import CONFIG

    saved = (CONFIG.outline_min, CONFIG.max_steps)
    try:
        c_unrolled, _ok_unrolled = _first_flatten(node, 0, 10**9) if timed else (float("nan"), False)
        c_default, ok_default = _first_flatten(node, saved[0], saved[1])
        unrolled_default = _first_flatten(node, 0, saved[1])[1] if timed else False
        _first_flatten(node, saved[0], saved[1])
        if not timed:
            return f"| {lib}-{size} | | {c_default * 1e3:.0f} | {ok_default} | | | | | |"
        _gd, sm = sg.flatten(node)
        tree = sm.to_nested()  # the same arrays as nested dicts
        if lib == "nnx":
            from flax import nnx

            peer_flatten: Any = lambda: nnx.split(node)  # noqa: E731
            nstate = nnx.state(node)
            peer_update: Any = lambda: nnx.update(node, nstate)  # noqa: E731
        else:
            import brainstate

            peer_flatten = lambda: brainstate.graph.flatten(node)  # noqa: E731
            bstates = brainstate.graph.states(node)
            peer_update = lambda: brainstate.graph.update_states(node, bstates)  # noqa: E731
        entries = [_BG.Timing("sg.flatten", lambda: sg.flatten(node)),
                   _BG.Timing("tree_flatten", lambda: jax.tree_util.tree_flatten(tree)),
                   _BG.Timing("peer flatten", peer_flatten),
                   _BG.Timing("sg.update", lambda: sg.update(node, sm)),
                   _BG.Timing("peer update", peer_update)]
        _BG.run_interleaved(entries, 0.02, repeats)
        us = [e.us if e.us is not None else float("nan") for e in entries]
        return (f"| {lib}-{size} | {c_unrolled * 1e3:.0f} (unrolled specialized at default max_steps: "
                f"{unrolled_default}) | {c_default * 1e3:.0f} | {ok_default} | {us[0]:.1f} | {us[1]:.1f} "
                f"(x{us[1] / us[0]:.2f}) | {us[2]:.0f} (x{us[2] / us[0]:.0f}) | {us[3]:.1f} | "
                f"{us[4]:.0f} (x{us[4] / us[3]:.0f}) |")
    finally:
        sg.configure(outline_min=saved[0], max_steps=saved[1])
        sg.clear_cache()


def _first_unflattens(gd: sg.GraphDef, st: sg.StateMap, outline_min: int,
                      max_steps: int) -> tuple[float, bool, bool]:
    """Compile seconds over the first unflattens of a fresh cache (the GraphDef is compiled
    once it was seen ``threshold`` times), whether the next is an unflatten hit, and whether
    its code is outlined (a builder or a loop)."""
    from specgraph.runtime import dispatch
    from specgraph.runtime.cache import CONFIG

    sg.clear_cache()
    sg.configure(outline_min=outline_min, max_steps=max_steps)
    for _ in range(CONFIG.threshold + 1):
        sg.unflatten(gd, st)
    seconds = sg.cache_info()["compile_seconds"]
    hits = sg.cache_info()["unflatten_hits"]
    sg.unflatten(gd, st)
    built = dispatch._unflat.get(gd)
    outlined = built is not None and bool(built.plan.shape_fns or built.plan.loops)
    return seconds, sg.cache_info()["unflatten_hits"] > hits, outlined


def foreign_unflatten_row(lib: str, size: int, repeats: int, unrolled_max: int, timed: bool = True) -> str:
    from specgraph.runtime.cache import CONFIG

    node = _nnx_mlp(size) if lib == "nnx" else _bst_mlp(size)
    saved = (CONFIG.outline_min, CONFIG.max_steps)
    try:
        sg.clear_cache()
        gd, st = sg.generic.flatten(node)
        hash(gd)
        unrolled_ok = timed and size <= unrolled_max
        c_unrolled = _first_unflattens(gd, st, 0, 10**9)[0] if unrolled_ok else float("nan")
        c_default, ok_default, outlined = _first_unflattens(gd, st, saved[0], saved[1])
        cu = f"{c_unrolled * 1e3:.0f}" if unrolled_ok else "not built"
        head = f"| {lib}-{size} | {cu} | {c_default * 1e3:.1f} | {ok_default} | {outlined} |"
        if not timed:
            return head + " | | | | | |"
        vals = st._values
        fns: dict[str, Any] = {}
        if unrolled_ok:
            fn_u, statics_u, _ = _build_unflatten(gd, 0)
            fns["unrolled"] = lambda: fn_u(vals, statics_u)
        fn_o, statics_o, _ = _build_unflatten(gd, saved[0])
        fns["outlined"] = lambda: fn_o(vals, statics_o)
        fns["sg.unflatten"] = lambda: sg.unflatten(gd, st)
        if lib == "nnx":
            from flax import nnx

            ngd, nstate = nnx.split(node)
            fns["library"] = lambda: nnx.merge(ngd, nstate)
        else:
            import brainstate

            bgd, bstate = brainstate.graph.flatten(node)
            fns["library"] = lambda: brainstate.graph.unflatten(bgd, bstate)
        fns["generic"] = lambda: sg.generic.unflatten(gd, st)
        for name in ("unrolled", "outlined", "sg.unflatten"):  # the very structure and values
            if name in fns:
                out = sg.generic.flatten(fns[name]())
                assert out[0] == gd and all(a is b for a, b in zip(out[1]._values, vals, strict=True))
        entries = [_BG.Timing(k, f) for k, f in fns.items()]
        _BG.run_interleaved(entries, 0.02, repeats)
        us = {e.system: e.us for e in entries}
        o = us["outlined"]
        u = us.get("unrolled")
        return (head + f" {u:.0f} |" if u is not None else head + " — |") + (
            f" {o:.0f} (x{o / u:.2f}) |" if u is not None else f" {o:.0f} |") + (
            f" {us['sg.unflatten']:.0f} | {us['library']:.0f} (x{us['library'] / o:.1f}) | "
            f"{us['generic']:.0f} (x{us['generic'] / o:.1f}) |")
    finally:
        sg.configure(outline_min=saved[0], max_steps=saved[1])
        sg.clear_cache()


def main_foreign_unflatten(args: argparse.Namespace) -> int:
    print("| structure | compile unrolled (ms) | compile default (ms) | specialized | outlined | "
          "unrolled (us) | outlined (us, / unrolled) | sg.unflatten (us) | library (us, / outlined) | "
          "generic (us, / outlined) |")
    print("|---|---:|---:|---|---|---:|---:|---:|---:|---:|")
    for lib, sizes in (("nnx", args.nnx), ("brainstate", args.brainstate)):
        for n in sizes:
            print(foreign_unflatten_row(lib, n, args.repeats, args.unrolled_max), flush=True)
    for n in args.specialized_only:
        print(foreign_unflatten_row("nnx", n, args.repeats, args.unrolled_max, timed=False), flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="*", default=[2, 4, 8, 16, 32, 64, 256])
    ap.add_argument("--blocks", type=int, nargs="*", default=[2, 4, 12])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--unflatten", action="store_true", help="measure the unflatten (see above)")
    ap.add_argument("--chains", type=int, nargs="*", default=[10000], help="--unflatten: chain lengths")
    ap.add_argument("--attrs", type=int, nargs="*", default=[],
                    help="--unflatten: a node holding that many Linear attributes (builder calls)")
    ap.add_argument("--unrolled-max", type=int, default=10000,
                    help="--unflatten: largest size whose unrolled function is built")
    ap.add_argument("--partial", action="store_true", help="measure a partial update (see above)")
    ap.add_argument("--foreign", action="store_true", help="the NNX / BrainState table instead")
    ap.add_argument("--nnx", type=int, nargs="*", default=[32, 1000])
    ap.add_argument("--brainstate", type=int, nargs="*", default=[32, 1000])
    ap.add_argument("--specialized-only", type=int, nargs="*", default=[10_000])
    args = ap.parse_args(argv)
    codegen.build("flatten", sg.generic.flatten(models.build_mlp(models.FAMILIES["specgraph"], 2, 8))[0],
                  max_steps=10**9)  # load the templates before timing anything
    gc.collect()
    if args.partial:
        return main_partial(args)
    if args.foreign:
        for warm in (_nnx_mlp(2), _bst_mlp(2)):  # the adapters loaded, their first compiles made
            sg.flatten(warm)
            sg.flatten(warm)
            sg.unflatten(*sg.flatten(warm))
            sg.unflatten(*sg.flatten(warm))
        if args.unflatten:
            return main_foreign_unflatten(args)
        print("| structure | compile unrolled (ms) | compile default (ms) | specialized | sg.flatten (us) | "
              "tree_flatten (us) | library flatten (us) | sg.update (us) | library update (us) |")
        print("|---|---:|---:|---|---:|---:|---:|---:|---:|")
        for lib, sizes in (("nnx", args.nnx), ("brainstate", args.brainstate)):
            for n in sizes:
                print(foreign_row(lib, n, args.repeats), flush=True)
        for n in args.specialized_only:
            print(foreign_row("nnx", n, args.repeats, timed=False), flush=True)
        return 0
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
