"""Side-by-side graph benchmarks: specgraph against its generic walker and its peers.

Usage::

    python benchmarks/bench_graph.py [--quick] [--shapes mlp32 tied ...]
                                     [--systems specgraph brainstate ...] [--out DIR | --save]

Method (DESIGN.md, "Performance protocol"): one process; for each shape and
operation the systems are interleaved repeat by repeat (the order rotates each
repeat), each repeat is a timeit-style loop whose ``number`` is calibrated so that
one repeat takes ~20 ms (~5 ms with ``--quick``), with the garbage collector off as
``timeit`` does; the reported time is the minimum over R repeats (7, quick 3), in
microseconds per call, plus the ratio against public specgraph (``sg.flatten`` & co.
after a warm-up call, i.e. served by the specializer once it exists).

The markdown tables go to stdout. Files are written only when asked: ``--out DIR``
writes ``DIR/<date>-<hostname>.json`` and ``DIR/latest.md``; ``--save`` writes them into
``benchmarks/results/``, the tracked results the README cites.

``main(argv)`` is importable (``python -m specgraph bench`` runs it).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import functools
import gc
import importlib.util
import itertools
import json
import os
import platform
import socket
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

OPERATIONS = (
    "flatten", "unflatten", "update", "states", "hash", "codegen",
    # the filtered operations (issue 15): on mlp32n, w and b are parameters, n is not
    "split_param", "states_param", "sm_split", "update_params", "merge", "iter_leaf", "nodes", "clone",
)

#: Issue 15's bar: operation -> (the operations it is measured against, summed; the bar),
#: for public specgraph on the same shape in the same run.
BARS: dict[str, tuple[tuple[str, ...], float]] = {
    "split_param": (("flatten",), 1.5),
    "states": (("flatten",), 1.5),
    "states_param": (("flatten",), 1.5),
    "sm_split": (("flatten",), 0.5),
    "update_params": (("update",), 1.5),
    "merge": (("unflatten",), 1.5),
    "iter_leaf": (("flatten",), 2.0),
    "nodes": (("flatten",), 2.0),
    "clone": (("flatten", "unflatten"), 1.3),
}

#: The filtered operations as each graph library spells them (P: its parameter type).
_FILTERED_SG = {
    "split_param": "sg.split(node, P, ...)",
    "states_param": "sg.states(node, P)",
    "sm_split": "sm.split(P, ...)  (sm = sg.flatten(node)[1])",
    "update_params": "sg.update(node, params)",
    "merge": "sg.merge(gd, params, rest)",
    "iter_leaf": "list(sg.iter_leaf(node))",
    "nodes": "sg.nodes(node)",
    "clone": "sg.clone(node)",
}

#: system key -> column title.  "specgraph" is the reference of every ratio.
SYSTEMS: dict[str, str] = {
    "specgraph": "specgraph",
    "generic": "sg generic",
    "brainstate": "brainstate",
    "nnx": "nnx",
    "jax": "jax.tree_util",
    "equinox": "equinox",
    "sg_nnx": "sg on nnx model",
    "sg_brainstate": "sg on brainstate model",
}

#: What each system runs for each operation (the JSON and latest.md carry this too).
CALLS: dict[str, dict[str, str]] = {
    "specgraph": {
        "flatten": "sg.flatten(node)",
        "unflatten": "sg.unflatten(gd, sm)",
        "update": "sg.update(node, sm)",
        "states": "sg.states(node)",
        "hash": "hash(gd)",
        "codegen": "clear_cache(); flatten; flatten  -  (generic + specialized flatten)",
        **_FILTERED_SG,
    },
    "generic": {
        "flatten": "sg.generic.flatten(node)",
        "unflatten": "sg.generic.unflatten(gd, sm)",
        "update": "sg.generic.update(node, sm)",
    },
    "brainstate": {
        "flatten": "brainstate.graph.flatten(node)",
        "unflatten": "brainstate.graph.unflatten(gd, st)",
        "update": "brainstate.graph.update_states(node, st)",
        "states": "brainstate.graph.states(node)",
        "hash": "hash(gd)",
        "split_param": "brainstate.graph.treefy_split(node, ParamState, ...)",
        "states_param": "brainstate.graph.states(node, ParamState)",
        "sm_split": "st.split(ParamState, ...)  (st = brainstate.graph.treefy_states(node))",
        "update_params": "brainstate.graph.update_states(node, params)",
        "merge": "brainstate.graph.treefy_merge(gd, params, rest)",
        "iter_leaf": "list(brainstate.graph.iter_leaf(node))",
        "nodes": "brainstate.graph.nodes(node)",
        "clone": "brainstate.graph.clone(node)",
    },
    "sg_nnx": {
        "flatten": "sg.flatten(nnx_node)",
        "unflatten": "sg.unflatten(gd, sm)",
        "update": "sg.update(nnx_node, sm)",
        "states": "sg.states(nnx_node)",
        **{op: call.replace("node", "nnx_node").replace("P", "nnx.Param")
           for op, call in _FILTERED_SG.items()},
    },
    "sg_brainstate": {
        "flatten": "sg.flatten(brainstate_node)",
        "unflatten": "sg.unflatten(gd, sm)",
        "update": "sg.update(brainstate_node, sm)",
        "states": "sg.states(brainstate_node)",
        **{op: call.replace("node", "brainstate_node").replace("P", "ParamState")
           for op, call in _FILTERED_SG.items()},
    },
    "nnx": {
        "flatten": "nnx.split(node)",
        "unflatten": "nnx.merge(gd, st)",
        "update": "nnx.update(node, st)",
        "states": "nnx.state(node)",
        "hash": "hash(gd)",
        "split_param": "nnx.split(node, nnx.Param, ...)",
        "states_param": "nnx.state(node, nnx.Param)",
        "sm_split": "st.split(nnx.Param, ...)  (st = nnx.split(node)[1])",
        "update_params": "nnx.update(node, params)",
        "merge": "nnx.merge(gd, params, rest)",
        "clone": "nnx.clone(node)",
    },
    "jax": {
        "flatten": "jax.tree_util.tree_flatten(tree)",
        "unflatten": "jax.tree_util.tree_unflatten(treedef, leaves)",
        "states": "jax.tree_util.tree_leaves(tree)",
        "hash": "hash(treedef)",
    },
    "equinox": {
        "flatten": "jax.tree_util.tree_flatten(module)",
        "unflatten": "jax.tree_util.tree_unflatten(treedef, leaves)",
        "states": "jax.tree_util.tree_leaves(module)",
        "hash": "hash(treedef)",
    },
}


# --------------------------------------------------------------------------------------
# loading the sibling module without depending on sys.path / package layout
# --------------------------------------------------------------------------------------


def load_sibling(stem: str) -> ModuleType:
    """Import ``benchmarks/<stem>.py`` by file path (works as a script and when imported)."""
    name = f"specgraph_bench_{stem}"
    mod = sys.modules.get(name)
    if mod is not None:
        return mod
    spec = importlib.util.spec_from_file_location(name, HERE / f"{stem}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses (equinox) look their module up here
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        del sys.modules[name]
        raise
    return mod


# --------------------------------------------------------------------------------------
# timing
# --------------------------------------------------------------------------------------


def time_loop(fn: Callable[[], Any], number: int, block: Callable[[Any], None] | None = None) -> float:
    """Seconds for ``number`` calls of ``fn``, GC disabled as in ``timeit``.

    ``block`` (e.g. ``jax.block_until_ready``) is applied to the last result, inside
    the timed region, for functions that return before their work is done.
    """
    it = itertools.repeat(None, number)
    gc_was = gc.isenabled()
    gc.disable()
    try:
        if block is None:
            t0 = time.perf_counter()
            for _ in it:
                fn()
            return time.perf_counter() - t0
        out = None
        t0 = time.perf_counter()
        for _ in it:
            out = fn()
        block(out)
        return time.perf_counter() - t0
    finally:
        if gc_was:
            gc.enable()


def calibrate(fn: Callable[[], Any], target: float, block: Callable[[Any], None] | None = None) -> int:
    """A loop count such that one repeat of ``fn`` takes about ``target`` seconds."""
    n = 1
    while True:
        t = time_loop(fn, n, block)
        if t >= 0.2 * target or n >= 10_000_000:
            return max(1, round(n * target / max(t, 1e-9)))
        n = min(n * 100, max(n * 2, int(n * 0.3 * target / max(t, 1e-9))))


class Timing:
    """One system's timing of one operation (a plain class: this file may be loaded
    by path without a ``sys.modules`` entry, which dataclasses would need)."""

    def __init__(self, system: str, fn: Callable[[], Any] | None = None, error: str | None = None) -> None:
        self.system = system
        self.fn = fn
        self.number = 0
        self.best = float("inf")  # seconds per call
        self.error = error

    @property
    def us(self) -> float | None:
        return None if self.error or self.fn is None else self.best * 1e6


def run_interleaved(
    entries: list[Timing], target: float, repeats: int, *, progress: Callable[[str], None] | None = None
) -> None:
    """Calibrate each entry, then time them interleaved; keep the min per call."""
    live = []
    for e in entries:
        if e.fn is None or e.error:
            continue
        try:
            e.fn()  # one more warm-up, and a last chance to fail outside the loop
            e.number = calibrate(e.fn, target)
            live.append(e)
        except Exception as exc:  # a peer that cannot do this: record, keep going
            e.error = _err(exc)
    for r in range(repeats):
        k = r % len(live) if live else 0
        for e in live[k:] + live[:k]:  # rotate the order every repeat
            try:
                e.best = min(e.best, time_loop(e.fn, e.number) / e.number)
            except Exception as exc:
                e.error = _err(exc)
        live = [e for e in live if not e.error]
    if progress:
        progress(", ".join(f"{e.system}={_fmt_us(e.us)}" for e in entries if e.us is not None))


def _err(exc: BaseException) -> str:
    msg = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {msg[:160]}"


# --------------------------------------------------------------------------------------
# systems: per (system, shape), the prepared zero-argument callables of each operation
# --------------------------------------------------------------------------------------


def _getattr_path(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def prepare_specgraph(models: ModuleType, shape: str, public: bool,
                      family: str = "specgraph") -> dict[str, Callable[[], Any]]:
    """specgraph's operations; ``family`` picks whose model (a peer's model: its own classes)."""
    import specgraph as sg

    node = models.build(shape, family)
    api = sg if public else sg.generic
    flatten, unflatten, update = api.flatten, api.unflatten, api.update
    flatten(node)  # warm-up: the first call of a structure is what specializes it
    gd, sm = flatten(node)
    unflatten(gd, sm)
    update(node, sm)
    ops: dict[str, Callable[[], Any]] = {
        "flatten": functools.partial(flatten, node),
        "unflatten": functools.partial(unflatten, gd, sm),
        "update": functools.partial(update, node, sm),
    }
    if public:
        ops.update(_filtered_specgraph(sg, node, _param_type(family)))
    if public and family != "specgraph":
        ops["states"] = functools.partial(sg.states, node)
    elif public:
        ops["states"] = functools.partial(sg.states, node)
        hash(gd)
        ops["hash"] = functools.partial(hash, gd)
        clear = getattr(sg, "clear_cache", None)
        if callable(clear):

            def cold() -> None:
                clear()
                flatten(node)  # generic walk (+ codegen if it happens on the first call)
                flatten(node)  # specialized call (+ codegen if it happens on the second)

            ops["codegen"] = cold
    return ops


def _param_type(family: str) -> type:
    """The parameter state type of a family's models (what ``split_param`` filters by)."""
    if family == "nnx":
        from flax import nnx

        return nnx.Param
    if family == "brainstate":
        import brainstate

        return brainstate.ParamState
    import specgraph as sg

    return sg.Param


def _filtered_specgraph(sg: Any, node: Any, param: type) -> dict[str, Callable[[], Any]]:
    """specgraph's filtered operations on ``node`` (issue 15), each called once (warm-up)."""
    gd, params, rest = sg.split(node, param, ...)
    sm = sg.flatten(node)[1]
    ops: dict[str, Callable[[], Any]] = {
        "split_param": functools.partial(sg.split, node, param, ...),
        "states_param": functools.partial(sg.states, node, param),
        "sm_split": functools.partial(sm.split, param, ...),
        "update_params": functools.partial(sg.update, node, params),
        "merge": functools.partial(sg.merge, gd, params, rest),
        "iter_leaf": lambda: list(sg.iter_leaf(node)),
        "nodes": functools.partial(sg.nodes, node),
        "clone": functools.partial(sg.clone, node),
    }
    for fn in ops.values():
        fn()
    return ops


def prepare_brainstate(models: ModuleType, shape: str) -> dict[str, Callable[[], Any]]:
    import brainstate

    g = brainstate.graph
    P = brainstate.ParamState
    node = models.build(shape, "brainstate")
    gd, st = g.flatten(node)
    hash(gd)
    tgd, params, rest = g.treefy_split(node, P, ...)
    tst = g.treefy_states(node)
    return {
        "flatten": functools.partial(g.flatten, node),
        "unflatten": functools.partial(g.unflatten, gd, st),
        "update": functools.partial(g.update_states, node, st),
        "states": functools.partial(g.states, node),
        "hash": functools.partial(hash, gd),
        "split_param": functools.partial(g.treefy_split, node, P, ...),
        "states_param": functools.partial(g.states, node, P),
        "sm_split": functools.partial(tst.split, P, ...),
        "update_params": functools.partial(g.update_states, node, params),
        "merge": functools.partial(g.treefy_merge, tgd, params, rest),
        "iter_leaf": lambda: list(g.iter_leaf(node)),
        "nodes": functools.partial(g.nodes, node),
        "clone": functools.partial(g.clone, node),
    }


def prepare_nnx(models: ModuleType, shape: str) -> dict[str, Callable[[], Any]]:
    from flax import nnx

    node = models.build(shape, "nnx")
    gd, st = nnx.split(node)
    hash(gd)
    pgd, params, rest = nnx.split(node, nnx.Param, ...)
    return {
        "flatten": functools.partial(nnx.split, node),
        "unflatten": functools.partial(nnx.merge, gd, st),
        "update": functools.partial(nnx.update, node, st),
        "states": functools.partial(nnx.state, node),
        "hash": functools.partial(hash, gd),
        "split_param": functools.partial(nnx.split, node, nnx.Param, ...),
        "states_param": functools.partial(nnx.state, node, nnx.Param),
        "sm_split": functools.partial(st.split, nnx.Param, ...),
        "update_params": functools.partial(nnx.update, node, params),
        "merge": functools.partial(nnx.merge, pgd, params, rest),
        "clone": functools.partial(nnx.clone, node),
    }


def prepare_pytree(models: ModuleType, shape: str, family: str) -> dict[str, Callable[[], Any]]:
    import jax

    tu = jax.tree_util
    tree = models.build(shape, family)
    leaves, treedef = tu.tree_flatten(tree)
    hash(treedef)
    return {
        "flatten": functools.partial(tu.tree_flatten, tree),
        "unflatten": functools.partial(tu.tree_unflatten, treedef, leaves),
        "states": functools.partial(tu.tree_leaves, tree),
        "hash": functools.partial(hash, treedef),
    }


def available_systems(models: ModuleType) -> list[str]:
    out = ["specgraph", "generic"]
    out += [s for s in ("brainstate", "nnx", "jax", "equinox") if s in models.FAMILIES]
    out += [f"sg_{s}" for s in ("nnx", "brainstate") if s in models.FAMILIES]
    return out


def prepare(models: ModuleType, system: str, shape: str) -> dict[str, Callable[[], Any]]:
    if system == "specgraph":
        return prepare_specgraph(models, shape, public=True)
    if system == "generic":
        return prepare_specgraph(models, shape, public=False)
    if system == "brainstate":
        return prepare_brainstate(models, shape)
    if system == "nnx":
        return prepare_nnx(models, shape)
    if system in ("sg_nnx", "sg_brainstate"):
        return prepare_specgraph(models, shape, public=True, family=system[3:])
    if system in ("jax", "equinox"):
        return prepare_pytree(models, shape, system)
    raise KeyError(system)


# --------------------------------------------------------------------------------------
# environment and cache introspection (getattr-guarded: these APIs may not exist yet)
# --------------------------------------------------------------------------------------


def _version(dist: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:
        return None


def specgraph_source() -> dict[str, Any]:
    """Where the measured specgraph came from: its path, and the git commit / dirtiness."""
    import subprocess

    import specgraph as sg

    pkg = Path(sg.__file__).resolve().parent
    out: dict[str, Any] = {"path": str(pkg)}
    try:
        git = ["git", "-C", str(pkg)]
        run = functools.partial(subprocess.run, capture_output=True, text=True, timeout=10, check=True)
        out["commit"] = run([*git, "rev-parse", "HEAD"]).stdout.strip()
        out["dirty"] = bool(run([*git, "status", "--porcelain", "--", "."]).stdout.strip())
    except Exception:
        pass
    return out


def environment() -> dict[str, Any]:
    import specgraph as sg

    return {
        "specgraph_source": specgraph_source(),
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": {
            "hostname": socket.gethostname(),
            "platform": platform.platform(),
            "machine": platform.machine(),
            "processor": platform.processor() or None,
            "cpu_count": os.cpu_count(),
            "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        },
        "versions": {
            "python": platform.python_version(),
            "implementation": platform.python_implementation(),
            "specgraph": getattr(sg, "__version__", None),
            "jax": _version("jax"),
            "jaxlib": _version("jaxlib"),
            "numpy": _version("numpy"),
            "brainstate": _version("brainstate"),
            "flax": _version("flax"),
            "equinox": _version("equinox"),
        },
        "specgraph_api": {
            "cache_info": callable(getattr(sg, "cache_info", None)),
            "clear_cache": callable(getattr(sg, "clear_cache", None)),
            "runtime": sorted(
                n for n in dir(getattr(sg, "runtime", None) or object()) if not n.startswith("_")
            )
            if getattr(sg, "runtime", None) is not None
            else [],
        },
    }


def jsonable(x: Any, depth: int = 0) -> Any:
    """Best-effort plain-JSON view of whatever ``sg.cache_info()`` returns."""
    if depth > 6:
        return repr(x)
    if x is None or isinstance(x, bool | int | float | str):
        return x
    if hasattr(x, "_asdict"):
        x = x._asdict()
    elif dataclasses.is_dataclass(x) and not isinstance(x, type):
        x = dataclasses.asdict(x)
    if isinstance(x, dict):
        return {str(k): jsonable(v, depth + 1) for k, v in x.items()}
    if isinstance(x, list | tuple | set | frozenset):
        return [jsonable(v, depth + 1) for v in x]
    if hasattr(x, "__dict__"):
        return {k: jsonable(v, depth + 1) for k, v in vars(x).items() if not k.startswith("_")}
    return repr(x)


def cache_info() -> Any:
    import specgraph as sg

    fn = getattr(sg, "cache_info", None)
    if not callable(fn):
        return None
    try:
        return jsonable(fn())
    except Exception as exc:
        return {"error": _err(exc)}


# --------------------------------------------------------------------------------------
# reporting
# --------------------------------------------------------------------------------------


def _fmt_us(us: float | None) -> str:
    if us is None:
        return "—"
    if us < 1:
        return f"{us:.3f}"
    if us < 10:
        return f"{us:.2f}"
    if us < 100:
        return f"{us:.1f}"
    return f"{us:,.0f}"


def _fmt_ratio(r: float | None) -> str:
    if r is None:
        return ""
    return f" x{r:.2f}" if r < 10 else f" x{r:.1f}" if r < 100 else f" x{r:,.0f}"


def markdown_table(shape: str, info: dict[str, Any], rows: list[dict[str, Any]], systems: list[str]) -> str:
    head = f"### {shape}"
    if info:
        head += f" — {info.get('nodes')} nodes, {info.get('states')} states"
    lines = [
        head,
        "",
        "µs per call (min of repeats); `xN` = time / public specgraph time for the same operation.",
        "",
        "| operation | " + " | ".join(SYSTEMS[s] for s in systems) + " |",
        "|---|" + "---:|" * len(systems),
    ]
    by = {(r["operation"], r["system"]): r for r in rows}
    for op in OPERATIONS:
        if not any((op, s) in by for s in systems):
            continue
        cells = []
        for s in systems:
            r = by.get((op, s))
            if r is None:
                cells.append("n/a")
            elif r.get("error"):
                cells.append("error")
            else:
                cells.append(_fmt_us(r["us_per_call"]) + _fmt_ratio(r.get("ratio")))
        lines.append(f"| {op} | " + " | ".join(cells) + " |")
    errs = [r for r in rows if r.get("error")]
    for r in errs:
        lines.append(f"\n- {SYSTEMS[r['system']]} {r['operation']}: `{r['error']}`")
    cg = by.get(("codegen", "specgraph"))
    if cg and not cg.get("error"):
        rep = cg.get("reported_compile_us")
        lines.append(
            f"\ncodegen: cold `clear_cache(); flatten; flatten` = {_fmt_us(cg.get('cold_us'))} µs, "
            "minus one generic and one specialized flatten"
            + (f"; specgraph's own compile-time counter: {_fmt_us(rep)} µs." if rep is not None else ".")
        )
    return "\n".join(lines) + "\n"


def bar_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 15's bar on one shape: each filtered operation of public specgraph against the
    operation(s) it builds on, measured in the same run."""
    us = {r["operation"]: r["us_per_call"] for r in rows
          if r["system"] == "specgraph" and "us_per_call" in r and r["operation"] != "codegen"}
    out = []
    for op, (base, bar) in BARS.items():
        if op in us and all(b in us for b in base):
            ratio = us[op] / sum(us[b] for b in base)
            out.append({"operation": op, "us": us[op], "base": " + ".join(base),
                        "base_us": sum(us[b] for b in base), "ratio": ratio, "bar": bar, "met": ratio <= bar})
    return out


def bar_table(rows: list[dict[str, Any]]) -> str:
    found = bar_rows(rows)
    if not found:
        return ""
    lines = ["issue 15 bar (public specgraph, this run):", "",
             "| operation | µs | against | µs | ratio | bar | |", "|---|---:|---|---:|---:|---:|---|"]
    for b in found:
        lines.append(f"| {b['operation']} | {_fmt_us(b['us'])} | {b['base']} | {_fmt_us(b['base_us'])} | "
                     f"{b['ratio']:.2f} | {b['bar']:g} | {'met' if b['met'] else 'NOT met'} |")
    return "\n".join(lines)


def calls_markdown(systems: list[str], ops: list[str]) -> str:
    """What each cell of the tables runs."""
    lines = ["### what is timed", "", "| system | " + " | ".join(ops) + " |", "|---|" + "---|" * len(ops)]
    for s in systems:
        cells = [f"`{CALLS[s][op]}`" if op in CALLS[s] else "n/a" for op in ops]
        lines.append(f"| {SYSTEMS[s]} | " + " | ".join(cells) + " |")
    lines.append(
        "\nEquinox and the nested dict are immutable pytrees: no in-place update. "
        "Tied weights are one shared state in specgraph/BrainState/NNX but the same array "
        "twice in the pytrees (4 leaves vs 3 states)."
    )
    return "\n".join(lines) + "\n"


def _source_note(src: dict[str, Any]) -> str:
    if "commit" not in src:
        return ""
    return f" @ {src['commit'][:10]}" + (" + uncommitted changes" if src.get("dirty") else "")


def header_markdown(env: dict[str, Any], args: argparse.Namespace) -> str:
    v = env["versions"]
    m = env["machine"]
    peers = ", ".join(f"{k} {v[k]}" for k in ("brainstate", "flax", "equinox") if v.get(k))
    return (
        f"## specgraph graph benchmarks — {env['date']}\n\n"
        f"- machine: {m['hostname']}, {m['platform']}, {m['cpu_count']} CPUs\n"
        f"- Python {v['python']}, JAX {v['jax']} (jaxlib {v['jaxlib']}), specgraph {v['specgraph']}"
        f"{_source_note(env.get('specgraph_source', {}))}\n"
        f"- peers: {peers or 'none'}\n"
        f"- method: {'quick, ' if args.quick else ''}one process, systems interleaved, "
        f"repeat ≈ {args.target_ms:g} ms, min of {args.repeats} repeats\n"
        f"- specgraph cache API: cache_info={env['specgraph_api']['cache_info']}, "
        f"clear_cache={env['specgraph_api']['clear_cache']}\n"
    )


# --------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------


def add_output_options(p: argparse.ArgumentParser, files: str) -> None:
    """``--out DIR`` / ``--save``: without one of them a benchmark writes no file.

    A run must not dirty the checkout: ``benchmarks/results/`` holds the tracked results
    that the README cites, so only ``--save`` replaces them.
    """
    g = p.add_argument_group("output (default: print only, write no file)")
    x = g.add_mutually_exclusive_group()
    x.add_argument("--out", type=Path, metavar="DIR", help=f"write {files} into DIR")
    x.add_argument(
        "--save", action="store_true", help=f"write {files} into benchmarks/results/ (tracked files)"
    )


def output_dir(args: argparse.Namespace) -> Path | None:
    """Where ``add_output_options``' options say to write, or ``None``: write nothing."""
    if args.save:
        return RESULTS
    return args.out


def parse_args(
    argv: Sequence[str] | None,
    shapes: Sequence[str],
    systems: Sequence[str],
    prog: str = "python benchmarks/bench_graph.py",
) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="~5 ms repeats, 3 repeats (default ~20 ms, 7)")
    p.add_argument(
        "--shapes",
        nargs="+",
        choices=list(shapes),
        default=list(shapes),
        metavar="SHAPE",
        help=f"subset of: {' '.join(shapes)}",
    )
    p.add_argument(
        "--systems",
        nargs="+",
        choices=list(systems),
        default=list(systems),
        metavar="SYS",
        help=f"subset of: {' '.join(systems)} (specgraph is always run: it is the reference)",
    )
    p.add_argument(
        "--ops",
        nargs="+",
        choices=OPERATIONS,
        default=list(OPERATIONS),
        metavar="OP",
        help=f"subset of: {' '.join(OPERATIONS)}",
    )
    p.add_argument(
        "--bar",
        action="store_true",
        help="time public specgraph's operations interleaved with one another (each ratio of "
        "issue 15's bar side by side, repeat by repeat) and print only the bar tables",
    )
    add_output_options(p, "<date>-<host>.json and latest.md")
    p.add_argument("--repeats", type=int, default=None, help="override R")
    p.add_argument("--target-ms", type=float, default=None, help="override the duration of one repeat")
    args = p.parse_args(argv)
    if args.repeats is None:
        args.repeats = 3 if args.quick else 7
    if args.target_ms is None:
        args.target_ms = 5.0 if args.quick else 20.0
    if "specgraph" not in args.systems:
        args.systems.insert(0, "specgraph")
    args.systems = [s for s in systems if s in args.systems]  # canonical column order
    return args


def bench_shape(
    models: ModuleType, shape: str, systems: list[str], ops: list[str], target: float, repeats: int
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    import specgraph as sg

    prepared: dict[str, dict[str, Callable[[], Any]]] = {}
    errors: dict[str, str] = {}
    for s in systems:
        try:
            prepared[s] = prepare(models, s, shape)
        except Exception as exc:
            errors[s] = _err(exc)
    info: dict[str, Any] = {}
    try:
        gd, _ = sg.generic.flatten(models.build(shape, "specgraph"))
        info = {"nodes": gd.num_nodes, "states": gd.num_states}
    except Exception as exc:
        info = {"error": _err(exc)}

    rows: list[dict[str, Any]] = []
    measured: dict[tuple[str, str], float] = {}
    for op in ops:
        if op == "codegen" and "cache_info" not in info:
            ci = cache_info()  # before the cold loop drops this shape's counters
            if ci is not None:
                info["cache_info"] = ci
        entries = []
        for s in systems:
            if s in errors:
                entries.append(Timing(s, error=errors[s]))
            elif op in prepared[s]:
                entries.append(Timing(s, prepared[s][op]))
        if op != "codegen":
            # re-warm the reference: an earlier clear_cache() may have dropped it
            for e in entries:
                if e.fn is not None and e.system == "specgraph":
                    try:
                        e.fn()
                    except Exception as exc:
                        e.error = _err(exc)
        if not entries:
            continue
        run_interleaved(
            entries, target, repeats, progress=lambda msg, op=op: _progress(f"  {shape:>14} {op:<9} {msg}")
        )
        for e in entries:
            row: dict[str, Any] = {
                "shape": shape,
                "operation": op,
                "system": e.system,
                "call": CALLS.get(e.system, {}).get(op),
            }
            if e.error:
                row["error"] = e.error
            else:
                row.update(us_per_call=e.best * 1e6, number=e.number, repeats=repeats)
                measured[(op, e.system)] = e.best * 1e6
            rows.append(row)
    # codegen: the cold loop minus one generic and one specialized flatten of the same shape
    for row in rows:
        if row["operation"] == "codegen" and "us_per_call" in row:
            cold = row["us_per_call"]
            gen, spec = measured.get(("flatten", "generic")), measured.get(("flatten", "specgraph"))
            row["cold_us"] = cold
            row["us_per_call"] = cold - gen - spec if gen is not None and spec is not None else cold
    ref = {op: us for (op, s), us in measured.items() if s == "specgraph"}
    for row in rows:
        us = row.get("us_per_call")
        if us is not None and row["operation"] != "codegen" and ref.get(row["operation"]):
            row["ratio"] = us / ref[row["operation"]]
    for row in rows:
        if row["operation"] == "codegen" and "us_per_call" in row:
            reported = reported_compile_us(prepared["specgraph"]["codegen"], repeats)
            if reported is not None:
                row["reported_compile_us"] = reported
            prepared["specgraph"]["flatten"]()  # leave the shape specialized again
    if "cache_info" not in info:
        ci = cache_info()
        if ci is not None:
            info["cache_info"] = ci
    return info, rows


def bench_bar(models: ModuleType, shape: str, target: float, repeats: int) -> list[dict[str, Any]]:
    """Public specgraph's operations on ``shape``, interleaved with one another: the ratios
    of issue 15's bar come from one loop, so machine noise hits both sides alike."""
    ops = prepare(models, "specgraph", shape)
    needed = [op for op in OPERATIONS if op in ops and op != "codegen" and op != "hash"
              and (op in BARS or any(op in base for base, _ in BARS.values()))]
    entries = [Timing(op, ops[op]) for op in needed]
    run_interleaved(entries, target, repeats, progress=lambda msg: _progress(f"  {shape:>14} {msg}"))
    return [{"shape": shape, "operation": e.system, "system": "specgraph",
             "call": CALLS["specgraph"][e.system],
             **({"error": e.error} if e.error else {"us_per_call": e.best * 1e6, "number": e.number})}
            for e in entries]


def _compile_seconds(ci: Any) -> float | None:
    """The compile-time counter of ``sg.cache_info()``, whatever its exact name."""
    if not isinstance(ci, dict):
        return None
    for k, v in ci.items():
        name = str(k).lower()
        if "compile" in name and ("second" in name or "time" in name) and isinstance(v, int | float):
            return float(v) * (1.0 if "second" in name or name.endswith("_s") else 1e-6)
    return None


def reported_compile_us(cold: Callable[[], Any], repeats: int) -> float | None:
    """Min over cold cycles of the compile time specgraph itself reports (None: not reported)."""
    best = None
    for _ in range(repeats):
        cold()
        sec = _compile_seconds(cache_info())
        if sec is None:
            return None
        best = sec if best is None else min(best, sec)
    return None if best is None else best * 1e6


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None, prog: str = "python benchmarks/bench_graph.py") -> int:
    models = load_sibling("models")
    systems = available_systems(models)
    args = parse_args(argv, list(models.SHAPES), list(SYSTEMS), prog)
    skipped = [s for s in args.systems if s not in systems]
    args.systems = [s for s in args.systems if s in systems]
    env = environment()
    target = args.target_ms / 1e3
    t_start = time.perf_counter()
    _progress(
        f"systems: {' '.join(args.systems)}" + (f" (not installed: {' '.join(skipped)})" if skipped else "")
    )

    out: dict[str, Any] = {
        **env,
        "config": {
            "quick": args.quick,
            "repeats": args.repeats,
            "target_ms": args.target_ms,
            "shapes": args.shapes,
            "systems": args.systems,
            "skipped": skipped,
            "operations": args.ops,
        },
        "calls": {s: CALLS[s] for s in args.systems},
        "shapes": {},
        "results": [],
    }
    md = [header_markdown(env, args)]
    print(md[0])
    for shape in args.shapes:
        _progress(f"[{time.perf_counter() - t_start:6.1f}s] {shape}")
        if args.bar:
            rows = bench_bar(models, shape, target, args.repeats)
            out["results"].extend(rows)
            md.append(f"### {shape}\n\n{bar_table(rows)}\n")
            print(md[-1], flush=True)
            continue
        info, rows = bench_shape(models, shape, args.systems, args.ops, target, args.repeats)
        out["shapes"][shape] = info
        out["results"].extend(rows)
        table = markdown_table(shape, info, rows, args.systems)
        md.append(table)
        print(table, flush=True)
    md.append(calls_markdown(args.systems, args.ops))
    out["elapsed_s"] = round(time.perf_counter() - t_start, 2)
    _progress(f"done in {out['elapsed_s']} s")

    where = output_dir(args)
    if where is not None:
        where.mkdir(parents=True, exist_ok=True)
        path = where / f"{_dt.date.today().isoformat()}-{socket.gethostname()}.json"
        path.write_text(json.dumps(out, indent=1, default=repr) + "\n")
        (where / "latest.md").write_text("\n".join(md))
        _progress(f"wrote {path} and {where / 'latest.md'}")
    else:
        _progress("no file written (--out DIR or --save writes the JSON and markdown)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
