"""A chain of n nested NNX / BrainState modules (the ``deepchain`` sweep's models): where the
time of specgraph's generated flatten / update / unflatten goes, against its floors.

Usage::

    python benchmarks/foreign_chain.py [--sizes 1000 3000 10000 30000] [--peers nnx brainstate]
                                       [--repeats 7] [--own] [--own-max 10000]

Per size and peer, in this process (GC off while timing, min of ``--repeats``, each
operation's rounds interleaved with the others'), CPU time of this thread
(``time.thread_time``: another process on the machine does not count; its cache traffic
does) and wall time:

* ``sg.flatten`` / ``sg.update`` / ``sg.unflatten`` after warm-up (each asserted served by
  generated code: its hit counter grew by the rounds), and ``specgraph.generic``'s;
* ``walk``: the least any flatten of this chain does, a plain loop following ``child`` and
  reading each link's raw value (``_raw_value`` / ``__dict__['_value']``) into a list: the
  cost of touching the peer's objects at all (memory, not Python work, once they leave the
  caches);
* ``make``: the least any unflatten does, each link and its state made as specgraph's
  unflatten makes them (``object.__new__`` plus the peer's bookkeeping objects: NNX's
  ``PytreeState`` and a ``Variable`` with its own metadata dict; BrainState's
  ``HookManager`` per state), in a plain loop.

``--own`` adds the peer's own ``nnx.graph.flatten`` / ``brainstate.graph.flatten`` on the same
chain, each size in a child process with a raised recursion limit (both recurse once per
link; they may crash the interpreter).
"""

from __future__ import annotations

import argparse
import gc
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import specgraph as sg


def build(peer: str, n: int) -> Any:
    if peer == "nnx":
        from flax import nnx

        class NnxLink(nnx.Module):
            def __init__(self, p: Any, child: Any) -> None:
                self.p = nnx.Param(p)
                self.child = child

        cls: Any = NnxLink
    else:
        import brainstate

        class BsLink(brainstate.graph.Node):
            def __init__(self, p: Any, child: Any) -> None:
                self.p = brainstate.ParamState(p)
                self.child = child

        cls = BsLink
    x = None
    for i in reversed(range(n)):
        x = cls(np.full((4,), i, np.float32), x)
    return x


def walk_fn(peer: str) -> Callable[[Any], list]:
    if peer == "nnx":
        def walk(x: Any) -> list:
            out = []
            while x is not None:
                d = x.__dict__
                out.append(d["p"]._raw_value)
                x = d["child"]
            return out
    else:
        def walk(x: Any) -> list:
            out = []
            while x is not None:
                d = x.__dict__
                out.append(d["p"].__dict__["_value"])
                x = d["child"]
            return out
    return walk


def make_fn(peer: str, root: Any) -> Callable[[list], Any]:
    """Build a chain of ``len(values)`` links bare: the unflatten's unavoidable allocations."""
    link = type(root)
    new = object.__new__
    if peer == "nnx":
        from flax.nnx import pytreelib, tracers, variablelib

        param = type(root.p)
        nodes = root._pytree__nodes
        set_raw = vars(variablelib.Variable)["_raw_value"].__set__
        set_meta = vars(variablelib.Variable)["_var_metadata"].__set__
        set_trace = vars(variablelib.Variable)["_trace_state"].__set__
        meta = dict(root.p._var_metadata)
        PytreeState = pytreelib.PytreeState

        def make(values: list) -> Any:
            ts = tracers.TraceState()
            child = None
            for v in values:
                ps = new(PytreeState)
                ps._trace_state = ts
                ps._initializing = False
                ps._is_setup = False
                p = new(param)
                set_trace(p, ts)
                set_meta(p, dict(meta))
                set_raw(p, v)
                x = new(link)
                d = x.__dict__
                d["_pytree__state"] = ps
                d["_pytree__nodes"] = nodes
                d["child"] = child
                d["p"] = p
                child = x
            return child
    else:
        from brainstate import _state as bst
        from jax.extend import source_info_util

        state = type(root.p)

        def make(values: list) -> Any:
            tracer, info = bst.StateJaxTracer(), source_info_util.current()
            level = bst.TRACE_CONTEXT.get_trace_stack_level()
            child = None
            for v in values:
                p = new(state)
                d = p.__dict__
                d["_name"] = None
                d["tag"] = None
                d["_value"] = v
                d["_level"] = level
                d["_trace_state"] = tracer
                d["_source_info"] = info
                d["_hooks_manager"] = bst.HookManager()
                d["_been_writen"] = False
                x = new(link)
                d = x.__dict__
                d["child"] = child
                d["p"] = p
                child = x
            return child
    return make


def timed(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, tuple[float, float]]:
    """name -> (min CPU seconds, min wall seconds) per call, rounds interleaved, GC off."""
    best = {k: [float("inf"), float("inf")] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            gc.collect()
            gc.disable()
            try:
                c0, w0 = time.thread_time(), time.perf_counter()
                f()
                c1, w1 = time.thread_time(), time.perf_counter()
            finally:
                gc.enable()
            best[k][0] = min(best[k][0], c1 - c0)
            best[k][1] = min(best[k][1], w1 - w0)
    return {k: (c, w) for k, (c, w) in best.items()}


def own(peer: str, n: int, repeats: int) -> str:
    """The peer's own graph flatten of the chain, in a child process."""
    fn = "nnx.graph.flatten" if peer == "nnx" else "brainstate.graph.flatten"
    code = "\n".join([
        "import sys, threading",
        "sys.setrecursionlimit(1_000_000)",
        "threading.stack_size(1 << 29)  # both recurse once per link",
        "import foreign_chain as fc",
        "import flax.nnx as nnx" if peer == "nnx" else "import brainstate",
        "def main():",
        f"    root = fc.build({peer!r}, {n})",
        f"    f = lambda: {fn}(root)",
        "    f()",
        f"    r = fc.timed({{'own': f}}, {repeats})['own']",
        "    print(f'{r[0] * 1e3:.2f} {r[1] * 1e3:.2f}')",
        "t = threading.Thread(target=main)",
        "t.start()",
        "t.join()",
    ])
    try:
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900,
                           cwd=str(Path(__file__).parent))
    except subprocess.TimeoutExpired:
        return "timeout"
    if p.returncode != 0 or not p.stdout.strip():
        last = (p.stderr.strip().splitlines() or ["?"])[-1]
        return f"failed (rc={p.returncode}: {last[:80]})"
    cpu, wall = p.stdout.split()
    return f"{cpu} ms cpu / {wall} ms wall"


def point(peer: str, n: int, repeats: int, with_own: bool) -> None:
    sg.clear_cache()
    root = build(peer, n)
    gd, sm = sg.flatten(root)
    sg.flatten(root)
    sg.update(root, sm)
    sg.unflatten(gd, sm)
    sg.unflatten(gd, sm)
    vals = list(sm.values())
    walk, make = walk_fn(peer), make_fn(peer, root)
    c0 = sg.cache_info()
    t = timed({
        "flatten": lambda: sg.flatten(root), "update": lambda: sg.update(root, sm),
        "unflatten": lambda: sg.unflatten(gd, sm), "walk": lambda: walk(root), "make": lambda: make(vals),
        "g_flatten": lambda: sg.generic.flatten(root), "g_update": lambda: sg.generic.update(root, sm),
        "g_unflatten": lambda: sg.generic.unflatten(gd, sm),
    }, repeats)
    c1 = sg.cache_info()
    for k in ("hits", "update_hits", "unflatten_hits"):
        assert c1[k] - c0[k] == repeats, (peer, n, k, c1[k] - c0[k])  # every timed call: generated code
    for op, floor in (("flatten", "walk"), ("update", "walk"), ("unflatten", "make")):
        s, g, f = t[op][0], t["g_" + op][0], t[floor][0]
        print(f"| {peer} | {n} | {op} | {s * 1e3:.2f} | {s / n * 1e6:.2f} | {g * 1e3:.1f} | {g / s:.1f}x "
              f"| {floor} {f * 1e3:.2f} | {s / f:.1f}x | {t[op][1] * 1e3:.2f} |", flush=True)
    if with_own:
        print(f"| {peer} | {n} | own graph.flatten | {own(peer, n, min(repeats, 3))} |", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", nargs="+", type=int, default=[1000, 3000, 10000, 30000])
    ap.add_argument("--peers", nargs="+", default=["nnx", "brainstate"])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--own", action="store_true", help="the peer's own graph flatten, in a child process")
    ap.add_argument("--own-max", type=int, default=10000, help="--own only up to this size (BrainState's "
                    "own flatten grows faster than the chain: seconds at 3 000)")
    a = ap.parse_args(argv)
    print("| peer | n | op | specgraph cpu ms | µs/link | generic cpu ms | generic / specgraph "
          "| floor cpu ms | specgraph / floor | specgraph wall ms |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for peer in a.peers:
        for n in a.sizes:
            point(peer, n, a.repeats, a.own and n <= a.own_max)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
