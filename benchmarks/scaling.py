"""Scaling sweeps: time per ``flatten`` call as the graph grows, for every system.

Usage::

    python benchmarks/scaling.py [--quick] [--sweeps mlp widebag deepchain]
                                 [--systems specgraph generic ...] [--max-n N]
                                 [--out DIR | --save] [--no-plot]

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
log-log plot ``DIR/scaling.png``; ``--save`` writes them into ``benchmarks/results/``,
the tracked results (the README embeds that plot).
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
    fam = models.FAMILIES["specgraph" if system == "generic" else system]
    if sweep == "mlp":
        return models.build_mlp(fam, depth=n, width=MLP_WIDTH)
    if sweep == "widebag":
        return models.build_widebag(fam, n)
    if sweep == "deepchain":
        return models.build_deepchain(fam, n)
    raise KeyError(sweep)


def flatten_fn(system: str, obj: Any) -> Callable[[], Any]:
    """The warmed-up flatten call of ``system`` on ``obj``."""
    if system in ("specgraph", "generic"):
        import specgraph as sg

        f = sg.flatten if system == "specgraph" else sg.generic.flatten
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
        sg_info: dict[str, Any] = {}
        for s in systems:
            if (sweep, s) in self.stopped:
                continue
            try:
                if s == "specgraph":
                    _clear_specgraph()  # counters of this point only
                obj = build(self.models, sweep, s, n)
                fn = flatten_fn(s, obj)
                if s == "specgraph":
                    sg_info = specgraph_state()
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
                if e.system == "specgraph" and sg_info:
                    row["specgraph"] = sg_info
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
            if system == "specgraph":
                _clear_specgraph()
            fn = flatten_fn(system, build(models, sweep, system, n))
            sg_info = specgraph_state() if system == "specgraph" else {}
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
        declined = [
            p["n"]
            for p in points
            if p["sweep"] == sweep
            and p["system"] == "specgraph"
            and (
                (p.get("specgraph") or {}).get("declined")
                or (p.get("specgraph") or {}).get("declined_too_large")
            )
        ]
        if declined:
            lines.append(f"- specgraph left generic (declined) at n = {', '.join(map(str, declined))}")
        lines.append("")
    return "\n".join(lines)


def plot(
    points: list[dict[str, Any]], stopped: dict, sweeps: list[str], systems: list[str], path: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(sweeps), figsize=(6 * len(sweeps), 5), squeeze=False)
    colors = {
        s: f"C{i}" for i, s in enumerate(("specgraph", "generic", "brainstate", "nnx", "jax", "equinox"))
    }
    for ax, sweep in zip(axes[0], sweeps, strict=True):
        for s in systems:
            pts = sorted(
                (p["n"], p["us_per_call"])
                for p in points
                if p["sweep"] == sweep and p["system"] == s and "us_per_call" in p
            )
            st = stopped.get((sweep, s))
            label = s if not st else f"{s} (stops at {st['n']}: {st['reason'].split(':')[0]})"
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, "o-", color=colors.get(s), label=label, markersize=4)
                if st and st["n"] > 0:
                    ax.plot([st["n"]], [ys[-1]], "x", color=colors.get(s), markersize=10, mew=2)
        cg = sorted(
            (p["n"], p["specgraph"]["compile_seconds"] * 1e6)
            for p in points
            if p["sweep"] == sweep and p["system"] == "specgraph" and (p.get("specgraph") or {}).get(
                "compile_seconds")
        )
        if cg:
            xs, ys = zip(*cg, strict=True)
            ax.plot(xs, ys, "s--", color=colors["specgraph"], alpha=0.5, markersize=3,
                    label="specgraph codegen (once per structure)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(SWEEPS[sweep]["xlabel"])
        ax.set_ylabel("µs per flatten call")
        ax.set_title(sweep)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
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
    bench = load_bench()
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="sizes up to 1000, short repeats")
    p.add_argument("--sweeps", nargs="+", choices=list(SWEEPS), default=list(SWEEPS))
    p.add_argument("--systems", nargs="+", default=None, help="subset of the installed systems")
    p.add_argument("--max-n", type=int, default=None, help="largest size of every sweep")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--target-ms", type=float, default=None, help="duration of one repeat")
    p.add_argument("--max-call-s", type=float, default=None, help="stop a system once a call takes longer")
    p.add_argument("--worker-timeout", type=float, default=None, help="seconds per isolated child process")
    bench.add_output_options(p, "the JSON, scaling.md and scaling.png")
    p.add_argument("--no-plot", action="store_true", help="with --out/--save: no scaling.png")
    args = p.parse_args(argv)
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
