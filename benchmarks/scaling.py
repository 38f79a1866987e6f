"""Scaling sweeps: time per ``flatten`` call as the graph grows, for every system.

Usage::

    python benchmarks/scaling.py [--quick] [--sweeps mlp widebag deepchain]
                                 [--systems specgraph generic ...] [--max-n N]
                                 [--out DIR | --save] [--no-plot]
    python benchmarks/scaling.py --bar [--quick] [--one-process] [--repeats R] [--target-ms T]
                                       [--out DIR | --save]

Sweeps:

* ``mlp``       -- ``MLP(depth)`` with depth 1..10 000 ``Linear`` layers (width 8) in one list:
                   wide but shallow, depth+1 nodes, 2*depth states.
* ``widebag``   -- one node holding 1..4096 Params as attributes.
* ``deepchain`` -- a chain of 1..10 000 nested nodes (``child`` attribute): recursion depth.

``--quick`` stops the sweeps at 1000 (widebag 1024) and uses short repeats.

``mlp`` and ``widebag`` run in this process, the systems interleaved per point as in
``bench_graph.py``.  ``deepchain`` runs each system in a child process of its own, one
point after the other: a deep C++ pytree recursion (``jax.tree_util`` at ~1000 levels)
leaves the interpreter unusable, so it must not share the process with the others.
Per system, the first size that raises (or crashes the worker, or exceeds the
per-call time budget) is recorded and larger sizes of that sweep are skipped.

Output: progress on stderr, a summary table on stdout. Files only when asked:
``--out DIR`` writes ``DIR/scaling-<date>-<host>.json``, ``DIR/scaling.md`` and the
log-log plot ``DIR/scaling.png`` (per-call times on the top row of panels, the
once-per-structure codegen time on a row of its own below); ``--save`` writes them
into ``benchmarks/results/``, the tracked results (the README embeds that plot).

``--bar`` runs issue 12's bar instead of the sweeps: each row in a fresh child process
(``--one-process``: all in this one; the heap a process has built up moves per-call
times), the systems of a row side by side, min of the repeats (compiles: up to 5 cold
ones; per-call times: 20 interleaved rounds of 2 ms unless --repeats/--target-ms say
otherwise; --quick: 3 and 7), and prints one table (measured / bar / met):

* compile seconds (``sg.cache_info()["compile_seconds"]`` after the first flatten of a
  fresh cache: the flatten and update functions) of MLP-1 000, MLP-10 000 and a
  96-block transformer-like stack;
* whether MLP-10 000 and MLP-100 000 are specialized (the second flatten a hit);
* ``sg.flatten`` against ``jax.tree_util.tree_flatten`` of the same MLP as nested
  dicts, for MLP sizes from 32 to 100 000;
* a chain of 10 000 nodes: specialized, and ``specgraph.generic.flatten`` against it.

With ``--quick`` the 100 000-layer MLP (seconds to build) is left out.
``--out DIR`` / ``--save`` write ``scaling-bar.md`` and the JSON of the run.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import functools
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).resolve().parent

SWEEPS: dict[str, dict[str, Any]] = {
    "mlp": {
        "sizes": [1, 3, 10, 30, 100, 300, 1000, 3000, 10000],
        "quick_max": 1000,
        "xlabel": "Linear layers (nodes = layers + 1)",
    },
    "widebag": {"sizes": [1, 4, 16, 64, 256, 1024, 4096], "quick_max": 1024, "xlabel": "Params on one node"},
    "deepchain": {
        "sizes": [1, 3, 10, 30, 100, 300, 1000, 3000, 10000],
        "quick_max": 1000,
        "xlabel": "chain depth (nested nodes)",
    },
}
ISOLATED = {"deepchain"}  # sweeps run one child process per system
#: the systems whose flatten is ``sg.flatten``: each point on a fresh cache (past
#: ``max_variants`` structures of one root type -- the 9th size of a sweep run in one
#: process -- the type is megamorphic and the reference walker answers every call)
SG_SYSTEMS = ("specgraph", "sg_nnx", "sg_brainstate")
MLP_WIDTH = 8


def load_bench() -> ModuleType:
    """``bench_graph.py`` (timing helpers, sibling loader), imported by file path."""
    name = "specgraph_bench_bench_graph"
    mod = sys.modules.get(name)
    if mod is None:
        spec = importlib.util.spec_from_file_location(name, HERE / "bench_graph.py")
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return mod


def build(models: ModuleType, sweep: str, system: str, n: int) -> Any:
    # generic: specgraph's own model; sg_nnx / sg_brainstate: the peer's model, flattened by sg
    family = {"generic": "specgraph", "sg_nnx": "nnx", "sg_brainstate": "brainstate"}.get(system, system)
    fam = models.FAMILIES[family]
    if sweep == "mlp":
        return models.build_mlp(fam, depth=n, width=MLP_WIDTH)
    if sweep == "widebag":
        return models.build_widebag(fam, n)
    if sweep == "deepchain":
        return models.build_deepchain(fam, n)
    raise KeyError(sweep)


def flatten_fn(system: str, obj: Any) -> Callable[[], Any]:
    """The warmed-up flatten call of ``system`` on ``obj``."""
    if system in (*SG_SYSTEMS, "generic"):
        import specgraph as sg

        f = sg.generic.flatten if system == "generic" else sg.flatten
    elif system == "brainstate":
        import brainstate

        f = brainstate.graph.flatten
    elif system == "nnx":
        from flax import nnx

        f = nnx.split
    elif system in ("jax", "equinox"):
        import jax

        f = jax.tree_util.tree_flatten
    else:
        raise KeyError(system)
    call = functools.partial(f, obj)
    call()  # first call: specgraph specializes here; everyone fails here if they fail at all
    call()
    return call


def specgraph_state() -> dict[str, Any]:
    """What the specializer did for the last structure (cleared before each point)."""
    import specgraph as sg

    info = getattr(sg, "cache_info", None)
    if not callable(info):
        return {}
    ci = info()
    keys = ("compiled_variants", "declined", "declined_too_large", "fallbacks", "hits", "compile_seconds",
            "compile_failures")
    return {k: ci[k] for k in keys if isinstance(ci, dict) and k in ci}


def _clear_specgraph() -> None:
    import specgraph as sg

    clear = getattr(sg, "clear_cache", None)
    if callable(clear):
        clear()


# --------------------------------------------------------------------------------------
# in-process sweeps
# --------------------------------------------------------------------------------------


class Sweeper:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.bench = load_bench()
        self.models = self.bench.load_sibling("models")
        self.points: list[dict[str, Any]] = []
        self.stopped: dict[tuple[str, str], dict[str, Any]] = {}  # (sweep, system) -> failing point

    def sizes(self, sweep: str) -> list[int]:
        spec = SWEEPS[sweep]
        cap = self.args.max_n or (spec["quick_max"] if self.args.quick else None)
        return [n for n in spec["sizes"] if cap is None or n <= cap]

    def next_size(self, sweep: str, n: int) -> int:
        """The size after ``n`` in the full sweep (where a budget-stopped system is skipped)."""
        return next((m for m in SWEEPS[sweep]["sizes"] if m > n), n * 3)

    def record_stop(self, sweep: str, system: str, n: int, why: str) -> None:
        self.stopped[(sweep, system)] = {"n": n, "reason": why}
        _progress(f"    {system} stops at {sweep} n={n}: {why}")

    def run_point(self, sweep: str, n: int, systems: list[str]) -> None:
        bench = self.bench
        entries = []
        sg_info: dict[str, dict[str, Any]] = {}
        if any(s in SG_SYSTEMS for s in systems):
            _clear_specgraph()  # counters of this point only (each system its own root type)
        for s in systems:
            if (sweep, s) in self.stopped:
                continue
            try:
                hits = specgraph_state().get("hits", 0) if s in SG_SYSTEMS else 0
                obj = build(self.models, sweep, s, n)
                fn = flatten_fn(s, obj)
                if s in SG_SYSTEMS:
                    sg_info[s] = specgraph_state()
                    sg_info[s]["hits"] = sg_info[s].get("hits", 0) - hits  # this system's
                entries.append(bench.Timing(s, fn))
            except Exception as exc:
                self.points.append({"sweep": sweep, "n": n, "system": s, "error": bench._err(exc)})
                self.record_stop(sweep, s, n, bench._err(exc))
        bench.run_interleaved(entries, self.args.target_ms / 1e3, self.args.repeats)
        parts = []
        for e in entries:
            row: dict[str, Any] = {"sweep": sweep, "n": n, "system": e.system}
            if e.error:
                row["error"] = e.error
                self.record_stop(sweep, e.system, n, e.error)
            else:
                row.update(us_per_call=e.best * 1e6, number=e.number)
                if sg_info.get(e.system):
                    row["specgraph"] = sg_info[e.system]
                parts.append(f"{e.system}={bench._fmt_us(e.best * 1e6)}")
                if e.best > self.args.max_call_s:
                    self.record_stop(sweep, e.system, self.next_size(sweep, n), f"too slow at n={n}")
            self.points.append(row)
        _progress(f"  {sweep:>9} n={n:<6} " + ", ".join(parts))

    def run_inprocess(self, sweep: str, systems: list[str]) -> None:
        for n in self.sizes(sweep):
            self.run_point(sweep, n, systems)

    # ---------------------------------------------------------------- isolated sweeps --

    def run_isolated(self, sweep: str, systems: list[str]) -> None:
        sizes = self.sizes(sweep)
        for s in systems:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--_worker", sweep, s]
            cmd += ["--target-ms", str(self.args.target_ms), "--repeats", str(self.args.repeats)]
            cmd += ["--max-call-s", str(self.args.max_call_s), "--_sizes", *map(str, sizes)]
            _progress(f"  {sweep:>9} {s}: child process")
            started: int | None = None
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=self.args.worker_timeout)
                out, err, rc = proc.stdout, proc.stderr, proc.returncode
            except subprocess.TimeoutExpired as exc:
                out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
                err, rc = f"timeout after {self.args.worker_timeout} s", None
            finished = False
            for line in out.splitlines():
                if not line.startswith("{"):
                    continue
                msg = json.loads(line)
                if msg.get("event") == "start":
                    started = msg["n"]
                    continue
                if msg.get("event") == "end":
                    finished = True
                    continue
                started = None
                self.points.append(msg)
                if "error" in msg:
                    self.record_stop(sweep, s, msg["n"], msg["error"])
                elif msg.get("stop"):
                    self.record_stop(sweep, s, self.next_size(sweep, msg["n"]), msg["stop"])
                _progress(
                    f"  {sweep:>9} n={msg['n']:<6} {s}="
                    + (
                        self.bench._fmt_us(msg["us_per_call"])
                        if "us_per_call" in msg
                        else msg.get("error", "")
                    )
                )
            if started is not None or (not finished and (sweep, s) not in self.stopped):
                tail = [ln for ln in (err or "").splitlines() if ln.strip()]
                last = next((ln for ln in reversed(tail) if "Error" in ln), tail[-1] if tail else "")
                why = f"worker died (rc={rc}) at n={started}: {last.strip()[:160]}"
                n = started if started is not None else -1
                self.points.append({"sweep": sweep, "n": n, "system": s, "error": why})
                self.record_stop(sweep, s, n, why)


def worker(argv: Sequence[str]) -> int:
    """Child process of an isolated sweep: one system, sizes ascending, JSON lines out."""
    p = argparse.ArgumentParser()
    p.add_argument("--_worker", nargs=2, dest="worker")
    p.add_argument("--_sizes", nargs="+", type=int, dest="sizes")
    p.add_argument("--target-ms", type=float)
    p.add_argument("--repeats", type=int)
    p.add_argument("--max-call-s", type=float)
    a = p.parse_args(argv)
    sweep, system = a.worker
    bench = load_bench()
    models = bench.load_sibling("models")

    def emit(msg: dict[str, Any]) -> None:
        print(json.dumps(msg, default=repr), flush=True)

    for n in a.sizes:
        emit({"event": "start", "n": n})
        row: dict[str, Any] = {"sweep": sweep, "n": n, "system": system}
        try:
            if system in SG_SYSTEMS:
                _clear_specgraph()  # a fresh cache per size (see SG_SYSTEMS)
            fn = flatten_fn(system, build(models, sweep, system, n))
            sg_info = specgraph_state() if system in SG_SYSTEMS else {}
            t = bench.Timing(system, fn)
            bench.run_interleaved([t], a.target_ms / 1e3, a.repeats)
            if t.error:
                raise RuntimeError(t.error)
            row.update(us_per_call=t.best * 1e6, number=t.number)
            if sg_info:
                row["specgraph"] = sg_info
            if t.best > a.max_call_s:
                row["stop"] = f"too slow at n={n}"
        except Exception as exc:
            row["error"] = bench._err(exc)
        emit(row)
        if "error" in row or "stop" in row:
            break
    emit({"event": "end"})
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown: deep structures may make it fail


# --------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------


def summary(points: list[dict[str, Any]], stopped: dict, sweeps: list[str], systems: list[str], fmt) -> str:
    lines = []
    for sweep in sweeps:
        ns = sorted({p["n"] for p in points if p["sweep"] == sweep and p["n"] > 0})
        if not ns:
            continue
        by = {(p["system"], p["n"]): p for p in points if p["sweep"] == sweep}
        lines += [f"### {sweep}: µs per flatten call", "", "| system | " + " | ".join(map(str, ns)) + " |"]
        lines.append("|---|" + "---:|" * len(ns))
        for s in systems:
            cells = []
            for n in ns:
                p = by.get((s, n))
                cells.append("—" if p is None else "error" if "error" in p else fmt(p["us_per_call"]))
            lines.append(f"| {s} | " + " | ".join(cells) + " |")
        codegen = []
        for n in ns:
            info = (by.get(("specgraph", n)) or {}).get("specgraph") or {}
            secs = info.get("compile_seconds")
            codegen.append(fmt(secs * 1e6) if secs else "—")
        if any(c != "—" for c in codegen):
            lines.append("| specgraph codegen (once) | " + " | ".join(codegen) + " |")
        lines.append("")
        for s in systems:
            st = stopped.get((sweep, s))
            ok = [p["n"] for p in points if p["sweep"] == sweep and p["system"] == s and "us_per_call" in p]
            if st:
                lines.append(
                    f"- {s}: works up to {max(ok) if ok else 'none'}; stops at {st['n']}: `{st['reason']}`"
                )
        for s in (s for s in systems if s in SG_SYSTEMS):
            sg_rows = [p for p in points if p["sweep"] == sweep and p["system"] == s and p.get("specgraph")]
            declined = [p["n"] for p in sg_rows
                        if p["specgraph"].get("declined") or p["specgraph"].get("declined_too_large")]
            if declined:
                lines.append(f"- {s} left generic (declined) at n = {', '.join(map(str, declined))}")
            walked = [p["n"] for p in sg_rows if p["n"] not in declined and not p["specgraph"].get("hits")]
            if walked:
                lines.append(f"- {s}: the timed call was not served by generated code at n = "
                             f"{', '.join(map(str, walked))}")
        lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# issue 12's bar (--bar)
# --------------------------------------------------------------------------------------

#: MLP sizes whose flatten is compared with tree_flatten (--quick: up to BAR_QUICK_MAX)
BAR_MLP_SIZES = [32, 100, 1000, 3000, 10000, 30000, 100000]
BAR_QUICK_MAX = 10000
BAR_BLOCKS = 96
BAR_CHAIN = 10000


def _thousands(n: int) -> str:
    """``10000`` as ``10 000`` (how issue 12 spells sizes)."""
    return f"{n:,}".replace(",", " ")


class Bar:
    """Issue 12's bar, measured in this process: each row ``measure / measured / bar / met``."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.bench = load_bench()
        self.models = self.bench.load_sibling("models")
        self.rows: list[dict[str, Any]] = []
        self._objects: dict[tuple[str, str, int], Any] = {}
        #: cold compiles per structure (each one up to a second before outlining)
        self.compile_repeats = min(args.repeats, 3 if args.quick else 5)

    def obj(self, shape: str, family: str, n: int) -> Any:
        """The ``shape`` of size ``n`` built by ``family`` (built once per run)."""
        key = (shape, family, n)
        if key not in self._objects:
            fam = self.models.FAMILIES[family]
            t0 = time.perf_counter()
            if shape == "mlp":
                o = self.models.build_mlp(fam, depth=n, width=MLP_WIDTH)
            elif shape == "stack":
                o = self.models.build_transformer(fam, n_blocks=n, d=8, vocab=16)
            else:
                o = self.models.build_deepchain(fam, n)
            self._objects[key] = o
            _progress(f"  built {family} {shape}-{n} in {time.perf_counter() - t0:.1f} s")
        return self._objects[key]

    def first_flatten(self, obj: Any) -> dict[str, Any]:
        """A fresh cache, then two flattens: the codegen seconds the first one paid (min
        over the repeats) and whether the second was served by generated code."""
        import specgraph as sg

        best: float | None = None
        info: dict[str, Any] = {}
        for _ in range(self.compile_repeats):
            _clear_specgraph()
            sg.flatten(obj)
            sg.flatten(obj)
            ci = sg.cache_info()
            specialized = ci["compiled_variants"] > 0 and ci["hits"] > 0
            info = {"specialized": specialized, "declined_too_large": ci["declined_too_large"],
                    "declined": ci["declined"]}
            if not specialized:
                break  # declined: the same every time
            best = ci["compile_seconds"] if best is None else min(best, ci["compile_seconds"])
        info["compile_s"] = best
        return info

    def add(self, measure: str, measured: str, bar: str, met: bool, **data: Any) -> None:
        self.rows.append({"measure": measure, "measured": measured, "bar": bar, "met": met, **data})
        _progress(f"  {measure}: {measured} (bar {bar}: {'met' if met else 'not met'})")

    @staticmethod
    def _not_specialized(info: dict[str, Any]) -> str:
        if info.get("declined_too_large"):
            return "not specialized (past max_steps)"
        return "not specialized" + (" (declined)" if info.get("declined") else "")

    def compile_row(self, label: str, shape: str, n: int, bar_ms: float) -> dict[str, Any]:
        info = self.first_flatten(self.obj(shape, "specgraph", n))
        secs = info["compile_s"]
        if secs is None:
            self.add(f"compile, {label}", self._not_specialized(info), f"≤ {bar_ms:g} ms", False, **info)
        else:
            self.add(f"compile, {label}", f"{secs * 1e3:.0f} ms", f"≤ {bar_ms:g} ms", secs * 1e3 <= bar_ms,
                     **info)
        return info

    def specialized_row(self, n: int, info: dict[str, Any] | None = None) -> None:
        if info is None:
            info = self.first_flatten(self.obj("mlp", "specgraph", n))
        said = "yes" if info["specialized"] else self._not_specialized(info).replace("not specialized", "no")
        self.add(f"MLP-{_thousands(n)} specialized", said, "yes", bool(info["specialized"]), **info)

    def timed(self, entries: list[Any]) -> None:
        self.bench.run_interleaved(entries, self.args.target_ms / 1e3, self.args.repeats)
        for e in entries:
            if e.error:
                raise RuntimeError(f"{e.system}: {e.error}")

    def ratio_row(self, n: int) -> None:
        import specgraph as sg

        sgo, jo = self.obj("mlp", "specgraph", n), self.obj("mlp", "jax", n)
        _clear_specgraph()
        entries = [self.bench.Timing("specgraph", flatten_fn("specgraph", sgo)),
                   self.bench.Timing("jax", flatten_fn("jax", jo))]
        specialized = sg.cache_info()["hits"] > 0
        self.timed(entries)
        r = entries[0].best / entries[1].best
        bar = 1.1 if n == 32 else 1.3
        how = "" if specialized else " (generic walker)"
        self.add(f"flatten / tree_flatten, MLP-{_thousands(n)}", f"{r:.2f}x{how}", f"≤ {bar:g}x",
                 r <= bar, specgraph_us=entries[0].best * 1e6, jax_us=entries[1].best * 1e6,
                 specialized=specialized)

    def chain_row(self, n: int) -> None:
        obj = self.obj("chain", "specgraph", n)
        info = self.first_flatten(obj)
        _clear_specgraph()
        entries = [self.bench.Timing("specgraph", flatten_fn("specgraph", obj)),
                   self.bench.Timing("generic", flatten_fn("generic", obj))]
        self.timed(entries)
        r = entries[1].best / entries[0].best
        label = f"chain of {_thousands(n)} nodes: generic / flatten"
        measured = f"{r:.1f}x" + ("" if info["specialized"] else f", {self._not_specialized(info)}")
        self.add(label, measured, "specialized, ≥ 10x", bool(info["specialized"]) and r >= 10,
                 specgraph_us=entries[0].best * 1e6, generic_us=entries[1].best * 1e6, **info)

    def unflatten_row(self, shape: str, n: int) -> None:
        """An extra row (not in issue 12's bar): whether ``sg.unflatten`` of the structure is
        served by generated code, what compiling it cost (``compile_seconds`` grown by the
        first specialized unflatten, the statics read from the GraphDef included) and its
        call against ``specgraph.generic.unflatten``, interleaved."""
        import specgraph as sg

        obj = self.obj(shape, "specgraph", n)
        label = f"unflatten, {'MLP' if shape == 'mlp' else 'chain'}-{_thousands(n)} (extra row)"
        _clear_specgraph()
        gd, st = sg.flatten(obj)
        gd, st = sg.flatten(obj)
        before = sg.cache_info()["compile_seconds"]
        sg.unflatten(gd, st)  # the reference walker; compiled on the next call
        sg.unflatten(gd, st)
        ci = sg.cache_info()
        compiled = ci["compiled_unflattens"] > 0
        secs = ci["compile_seconds"] - before
        entries = [self.bench.Timing("specgraph", functools.partial(sg.unflatten, gd, st)),
                   self.bench.Timing("generic", functools.partial(sg.generic.unflatten, gd, st))]
        self.timed(entries)
        served = sg.cache_info()["unflatten_hits"] > ci["unflatten_hits"]
        r = entries[1].best / entries[0].best
        if compiled and served:
            measured = (f"specialized; compile {secs * 1e3:.0f} ms; {entries[0].best * 1e3:.2f} ms per call, "
                        f"generic {entries[1].best * 1e3:.2f} ms ({r:.1f}x)")
        else:
            measured = f"not specialized; {entries[0].best * 1e3:.2f} ms per call"
        self.rows.append({"measure": label, "measured": measured, "bar": "—", "met": None,
                          "specialized": compiled and served, "compile_s": secs,
                          "specgraph_us": entries[0].best * 1e6, "generic_us": entries[1].best * 1e6})
        _progress(f"  {label}: {measured}")

    def why_not(self, n: int) -> str | None:
        """Why a row of size ``n`` (layers, nodes) is not run, or ``None``."""
        if self.args.max_n is not None and n > self.args.max_n:
            return "not run (--max-n)"
        if self.args.quick and n > BAR_QUICK_MAX:
            return "not run (--quick)"
        return None

    def skip(self, measure: str, bar: str, why: str) -> None:
        self.rows.append({"measure": measure, "measured": why, "bar": bar, "met": None})

    def plan(self) -> list[tuple[str, str, int, str, tuple[Any, ...]]]:
        """The bar's rows in order: ``(measure, bar, size, method, args)``; ``size`` (layers
        or nodes) is what ``--max-n`` / ``--quick`` compare."""
        stack = f"{BAR_BLOCKS}-block transformer-like stack"
        rows: list[tuple[str, str, int, str, tuple[Any, ...]]] = [
            ("compile, MLP-1 000", "≤ 100 ms", 1000, "compile_row", ("MLP-1 000", "mlp", 1000, 100)),
            ("compile, MLP-10 000", "≤ 300 ms", 10000, "compile_row", ("MLP-10 000", "mlp", 10000, 300)),
            (f"compile, {stack}", "≤ 100 ms", 11 * BAR_BLOCKS, "compile_row",
             (stack, "stack", BAR_BLOCKS, 100)),
        ]
        rows += [(f"MLP-{_thousands(n)} specialized", "yes", n, "specialized_row", (n,))
                 for n in (10000, 100000)]
        rows += [(f"flatten / tree_flatten, MLP-{_thousands(n)}", "≤ 1.1x" if n == 32 else "≤ 1.3x", n,
                  "ratio_row", (n,)) for n in BAR_MLP_SIZES]
        rows.append((f"chain of {_thousands(BAR_CHAIN)} nodes: generic / flatten", "specialized, ≥ 10x",
                     BAR_CHAIN, "chain_row", (BAR_CHAIN,)))
        # Extra rows, not the bar's: the unflatten gets the same treatment (outlined).
        for shape, n in [("mlp", 100), ("mlp", 1000), ("mlp", 10000), ("mlp", 100000), ("chain", BAR_CHAIN)]:
            label = f"unflatten, {'MLP' if shape == 'mlp' else 'chain'}-{_thousands(n)} (extra row)"
            rows.append((label, "—", n, "unflatten_row", (shape, n)))
        return rows

    def run(self) -> None:
        """Every row, each in a fresh child process unless ``--one-process``: per-call times
        depend on the heap a process has built up (measured: the chain row's sg.flatten took
        2.5 ms alone and 7.1 ms after the rows before it, at two commits alike), so a row
        measured after others reports that history as much as the code."""
        for i, (measure, bar, n, method, args) in enumerate(self.plan()):
            why = self.why_not(n)
            if why:
                self.skip(measure, bar, why)
            elif self.args.one_process:
                getattr(self, method)(*args)
            else:
                self.rows.extend(self._child(i, measure, bar))
        self._objects.clear()

    def run_row(self, i: int) -> None:
        """In the child process: row ``i`` of :meth:`plan`, its rows as JSON lines on stdout."""
        _, _, _, method, args = self.plan()[i]
        getattr(self, method)(*args)
        for row in self.rows:
            print(json.dumps(row, default=repr), flush=True)

    def _child(self, i: int, measure: str, bar: str) -> list[dict[str, Any]]:
        a = self.args
        cmd = [sys.executable, str(Path(__file__).resolve()), "--_bar_row", str(i),
               "--repeats", str(a.repeats), "--target-ms", str(a.target_ms)]
        cmd += ["--quick"] if a.quick else []
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        if proc.returncode != 0 or not rows:
            why = f"child process failed (rc={proc.returncode}; its stderr is above)"
            _progress(f"  {measure}: {why}")
            return [{"measure": measure, "measured": why, "bar": bar, "met": False}]
        return rows

    def table(self) -> str:
        a = self.args
        where = "one process" if a.one_process else "a fresh process per row, its systems side by side"
        lines = [f"### issue 12 bar: {where}; compile: min of {self.compile_repeats} cold compiles; "
                 f"per-call times: min of {a.repeats} interleaved rounds of ≈ {a.target_ms:g} ms", "",
                 "| measure | measured | bar | met |", "|---|---:|---:|---|"]
        for r in self.rows:
            met = "—" if r["met"] is None else "yes" if r["met"] else "no"
            lines.append(f"| {r['measure']} | {r['measured']} | {r['bar']} | {met} |")
        lines += ["", "compile: `sg.cache_info()['compile_seconds']` after the first flatten of a fresh "
                  "cache (the flatten and update functions; unflatten compiles on the first unflatten). "
                  "flatten / tree_flatten: `sg.flatten` of the specgraph MLP against "
                  "`jax.tree_util.tree_flatten` of the same MLP as nested dicts "
                  f"(width {MLP_WIDTH}), interleaved. chain: `specgraph.generic.flatten` against "
                  "`sg.flatten` of one chain, interleaved. unflatten (extra rows, no bar): "
                  "`sg.unflatten(graphdef, state)` of the flattened structure against "
                  "`specgraph.generic.unflatten`, interleaved; compile: what the first specialized "
                  "unflatten added to `compile_seconds`.", ""]
        met = sum(1 for r in self.rows if r["met"])
        ran = sum(1 for r in self.rows if r["met"] is not None)
        lines.append(f"{met} of {ran} measured rows meet the bar.")
        return "\n".join(lines) + "\n"


def bar_row(argv: Sequence[str]) -> int:
    """Child process of ``--bar``: one row, JSON lines out."""
    p = argparse.ArgumentParser()
    p.add_argument("--_bar_row", type=int, dest="row")
    p.add_argument("--repeats", type=int)
    p.add_argument("--target-ms", type=float)
    p.add_argument("--quick", action="store_true")
    a = p.parse_args(argv)
    a.max_n, a.one_process = None, True
    Bar(a).run_row(a.row)
    return 0


def run_bar(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    bar = Bar(args)
    _progress(f"issue 12 bar{' (quick)' if args.quick else ''}")
    bar.run()
    elapsed = round(time.perf_counter() - t0, 1)
    table = bar.table()
    print(table)
    where = bar.bench.output_dir(args)
    if where is None:
        _progress(f"done in {elapsed} s; no file written (--out DIR or --save writes the JSON and "
                  "scaling-bar.md)")
        return 0
    where.mkdir(parents=True, exist_ok=True)
    out = {**bar.bench.environment(), "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in
                                                   vars(args).items()},
           "mlp_width": MLP_WIDTH, "rows": bar.rows, "elapsed_s": elapsed}
    jpath = where / f"scaling-bar-{_dt.date.today().isoformat()}-{socket.gethostname()}.json"
    jpath.write_text(json.dumps(out, indent=1, default=repr) + "\n")
    (where / "scaling-bar.md").write_text(table)
    _progress(f"done in {elapsed} s; wrote {jpath}, {where / 'scaling-bar.md'}")
    return 0


def plot(
    points: list[dict[str, Any]], stopped: dict, sweeps: list[str], systems: list[str], path: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Per-call times on the top row; codegen (paid once per structure, in ms) on a row of
    # its own below, x shared per sweep: the two are different quantities and scales.
    fig, axes = plt.subplots(2, len(sweeps), figsize=(6 * len(sweeps), 8), squeeze=False, sharex="col",
                             gridspec_kw={"height_ratios": [3, 2]})
    colors = {
        s: f"C{i}" for i, s in enumerate(("specgraph", "generic", "brainstate", "nnx", "jax", "equinox"))
    }
    # specgraph on a peer's model: the peer's colour, dashed (the peer's own line is solid)
    colors.update(sg_nnx=colors["nnx"], sg_brainstate=colors["brainstate"])
    styles = {"sg_nnx": "^--", "sg_brainstate": "^--"}
    names = {"sg_nnx": "specgraph on the nnx model", "sg_brainstate": "specgraph on the brainstate model"}
    for ax, cax, sweep in zip(axes[0], axes[1], sweeps, strict=True):
        for s in systems:
            pts = sorted(
                (p["n"], p["us_per_call"])
                for p in points
                if p["sweep"] == sweep and p["system"] == s and "us_per_call" in p
            )
            st = stopped.get((sweep, s))
            name = names.get(s, s)
            label = name if not st else f"{name} (stops at {st['n']}: {st['reason'].split(':')[0]})"
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, styles.get(s, "o-"), color=colors.get(s), label=label, markersize=4)
                if st and st["n"] > 0:
                    ax.plot([st["n"]], [ys[-1]], "x", color=colors.get(s), markersize=10, mew=2)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_ylabel("µs per flatten call")
        ax.set_title(sweep)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        sg_points = [p for p in points
                     if p["sweep"] == sweep and p["system"] == "specgraph" and "us_per_call" in p]
        cg = sorted((p["n"], p["specgraph"]["compile_seconds"] * 1e3) for p in sg_points
                    if (p.get("specgraph") or {}).get("compile_seconds"))
        generic = sorted(p["n"] for p in sg_points if not (p.get("specgraph") or {}).get("compile_seconds"))
        if cg:
            xs, ys = zip(*cg, strict=True)
            cax.plot(xs, ys, "s-", color=colors["specgraph"], markersize=4, label="specgraph codegen")
            cax.set_yscale("log")
        if generic:  # sizes served by the generic walker: no codegen to plot
            cax.plot(generic, [cg[0][1] if cg else 1.0] * len(generic), "x", color="0.4", markersize=7,
                     linestyle="none", label="not specialized (no codegen)")
        cax.set_xscale("log")
        cax.set_xlabel(SWEEPS[sweep]["xlabel"])
        cax.set_ylabel("ms, once per structure")
        cax.set_title(f"{sweep}: codegen (flatten + update functions)", fontsize=9)
        cax.grid(True, which="both", alpha=0.3)
        if cg or generic:
            cax.legend(fontsize=7)
    fig.suptitle("specgraph scaling: flatten time vs size (x = where a system stops)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None, prog: str = "python benchmarks/scaling.py") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--_worker" in argv:
        return worker(argv)
    if "--_bar_row" in argv:
        return bar_row(argv)
    bench = load_bench()
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="sizes up to 1000, short repeats")
    p.add_argument("--sweeps", nargs="+", choices=list(SWEEPS), default=list(SWEEPS))
    p.add_argument("--systems", nargs="+", default=None, help="subset of the installed systems")
    p.add_argument("--max-n", type=int, default=None, help="largest size of every sweep (or --bar row)")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--target-ms", type=float, default=None, help="duration of one repeat")
    p.add_argument("--max-call-s", type=float, default=None, help="stop a system once a call takes longer")
    p.add_argument("--worker-timeout", type=float, default=None, help="seconds per isolated child process")
    bench.add_output_options(p, "the JSON, scaling.md and scaling.png")
    p.add_argument("--no-plot", action="store_true", help="with --out/--save: no scaling.png")
    p.add_argument("--bar", action="store_true",
                   help="print issue 12's bar table (measured / bar / met) instead of the sweeps")
    p.add_argument("--one-process", action="store_true",
                   help="with --bar: every row in this process, one after the other (default: a child "
                        "process per row)")
    args = p.parse_args(argv)
    if args.bar:
        # Many short interleaved rounds: on a loaded machine a few long ones left the min
        # of a 7 µs call off by 2x (jax 17 µs in one run, 7.3 in the next).
        args.repeats = args.repeats or (7 if args.quick else 20)
        args.target_ms = args.target_ms or 2.0
        return run_bar(args)
    args.repeats = args.repeats or (3 if args.quick else 5)
    args.target_ms = args.target_ms or (2.0 if args.quick else 10.0)
    args.max_call_s = args.max_call_s or (0.5 if args.quick else 3.0)
    args.worker_timeout = args.worker_timeout or (120.0 if args.quick else 900.0)

    t0 = time.perf_counter()
    sw = Sweeper(args)
    installed = sw.bench.available_systems(sw.models)
    systems = [s for s in installed if args.systems is None or s in args.systems]
    _progress(f"systems: {' '.join(systems)}; sweeps: {' '.join(args.sweeps)}")
    for sweep in args.sweeps:
        _progress(f"[{time.perf_counter() - t0:6.1f}s] sweep {sweep}: sizes {sw.sizes(sweep)}")
        if sweep in ISOLATED:
            sw.run_isolated(sweep, systems)
        else:
            sw.run_inprocess(sweep, systems)
    elapsed = round(time.perf_counter() - t0, 1)

    table = summary(sw.points, sw.stopped, args.sweeps, systems, sw.bench._fmt_us)
    print(table)
    env = sw.bench.environment()
    out = {
        **env,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "mlp_width": MLP_WIDTH,
        "systems": systems,
        "points": sw.points,
        "stopped": [{"sweep": k[0], "system": k[1], **v} for k, v in sw.stopped.items()],
        "elapsed_s": elapsed,
    }
    where = bench.output_dir(args)
    if where is None:
        _progress(f"done in {elapsed} s; no file written (--out DIR or --save writes the JSON and the plot)")
        return 0
    where.mkdir(parents=True, exist_ok=True)
    jpath = where / f"scaling-{_dt.date.today().isoformat()}-{socket.gethostname()}.json"
    jpath.write_text(json.dumps(out, indent=1, default=repr) + "\n")
    (where / "scaling.md").write_text(table)
    if not args.no_plot and importlib.util.find_spec("matplotlib") is None:
        _progress("matplotlib is not installed (pip install -e '.[bench]'): no scaling.png")
        args.no_plot = True
    if not args.no_plot:
        plot(sw.points, sw.stopped, args.sweeps, systems, where / "scaling.png")
    _progress(
        f"done in {elapsed} s; wrote {jpath}, {where / 'scaling.md'}"
        + ("" if args.no_plot else f", {where / 'scaling.png'}")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
