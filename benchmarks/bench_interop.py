"""Issue 11's bars: specgraph on Flax NNX and BrainState models against the peers' own ops.

Usage::

    python benchmarks/bench_interop.py [--quick] [--depth 32] [--width 64] [--out DIR | --save]

Models (built once, the peer's own classes, user code unchanged):

* NNX: ``MLP`` holding ``nnx.data([nnx.Linear(64, 64) x 32])`` (33 nodes, 64 Variables);
* BrainState: ``brainstate.nn.Module`` holding ``[brainstate.nn.Linear(64, 64) x 32]``.

Rows (each a pair measured side by side; ratio = other / specgraph, so ``x50`` means
specgraph is 50 times faster, and ``x0.5`` that it takes twice as long):

=====================================  =========================================  =====
specgraph                              other                                      bar
=====================================  =========================================  =====
``sg.flatten(m)``                      ``nnx.split(m)``                           >= 50
``sg.flatten(m)``                      ``jax.tree_util.tree_flatten(dict)``       >= 1/3
``sg.unflatten(gd, sm)``               ``nnx.merge(gd, st)``                      >= 8
``sg.update(m, sm)``                   ``nnx.update(m, st)``                      >= 25
``sg.jit(lambda m: None)(m)``          ``nnx.jit(lambda m: None)(m)``             >= 40
``sg.jit(lambda m: None)(m)``          ``jax.jit(lambda t: None)(dict)``          >= 1/2.5
Adam step under ``sg.jit``             the same step under ``nnx.jit``            >= 4
``sg.flatten(bs)``                     ``brainstate.graph.flatten(bs)``           >= 15
=====================================  =========================================  =====

The dict is the same arrays as nested dicts. The training step is NNX's standard one
(``nnx.value_and_grad(loss, has_aux=True)``, ``nnx.Optimizer(model, optax.adam(1e-3),
wrt=nnx.Param).update(model, grads)``) on a tanh MLP, the same function object jitted
both ways; before timing, the two are checked to give equal losses step by step.

Method: one process; each entry is called twice before its loop is calibrated (a
one-time cost, such as the recompile after BrainState's types are registered at the end
of the setup, must not make the calibration time single calls); the two entries of a row
are interleaved repeat by repeat
(rotating order), each repeat a loop calibrated to ~20 ms (~5 ms ``--quick``) with the
GC off (jitted calls block on their result); the minimum over repeats (9, quick 3) in
µs per call. Markdown to stdout; ``--out DIR`` writes ``DIR/interop-latest.md``,
``--save`` writes ``benchmarks/results/interop-latest.md``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import platform
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).resolve().parent


def _load_bench_graph() -> ModuleType:
    """``benchmarks/bench_graph.py`` by path: its timing helpers are shared."""
    name = "specgraph_bench_bench_graph"
    mod = sys.modules.get(name)
    if mod is None:
        spec = importlib.util.spec_from_file_location(name, HERE / "bench_graph.py")
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return mod


_BG = _load_bench_graph()

#: (row label, bar on other/specgraph) -- the issue's table.
BARS: dict[str, float] = {
    "flatten vs nnx.split": 50.0,
    "flatten vs jax tree_flatten": 1 / 3,
    "unflatten vs nnx.merge": 8.0,
    "update vs nnx.update": 25.0,
    "jit no-op vs nnx.jit": 40.0,
    "jit no-op vs jax.jit": 1 / 2.5,
    "Adam step: sg.jit vs nnx.jit": 4.0,
    "flatten vs brainstate.graph.flatten": 15.0,
}


def nnx_model(depth: int, width: int) -> Any:
    from flax import nnx

    class MLP(nnx.Module):
        def __init__(self, rngs: nnx.Rngs) -> None:
            self.layers = nnx.data([nnx.Linear(width, width, rngs=rngs) for _ in range(depth)])

        def __call__(self, x: Any) -> Any:
            import jax.numpy as jnp

            for layer in self.layers[:-1]:
                x = jnp.tanh(layer(x))
            return self.layers[-1](x)

    return MLP(nnx.Rngs(0))


def brainstate_model(depth: int, width: int) -> Any:
    import brainstate

    class MLP(brainstate.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = [brainstate.nn.Linear(width, width) for _ in range(depth)]

    return MLP()


def as_dict(m: Any) -> dict:
    """The same arrays as nested dicts (the pytree baseline)."""
    return {"layers": {i: {"bias": lay.bias.get_raw_value(), "kernel": lay.kernel.get_raw_value()}
                       for i, lay in enumerate(m.layers)}}


def rows(depth: int, width: int) -> list[tuple[str, Callable[[], Any], Callable[[], Any], Any]]:
    """``(label, specgraph fn, other fn, block)`` per row."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    import specgraph as sg

    m = nnx_model(depth, width)
    sg.flatten(m)
    gd, sm = sg.flatten(m)
    sg.unflatten(gd, sm)
    sg.update(m, sm)
    ngd, nst = nnx.split(m)
    tree = as_dict(m)

    def noop(model: Any) -> None:
        return None

    sg_noop, nnx_noop, jax_noop = sg.jit(noop), nnx.jit(noop), jax.jit(noop)
    for f, a in ((sg_noop, m), (nnx_noop, m), (jax_noop, tree)):
        f(a)
        f(a)

    x = jnp.ones((32, width), jnp.float32)
    y = jnp.zeros((32, width), jnp.float32)

    def train_step(model: Any, optimizer: Any, x: Any, y: Any) -> Any:
        def loss_fn(model: Any) -> tuple[Any, Any]:
            out = model(x)
            return jnp.mean((out - y) ** 2), out

        (loss, _), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
        optimizer.update(model, grads)
        return loss

    m_sg, m_nnx = nnx_model(depth, width), nnx_model(depth, width)
    opt_sg = nnx.Optimizer(m_sg, optax.adam(1e-3), wrt=nnx.Param)
    opt_nnx = nnx.Optimizer(m_nnx, optax.adam(1e-3), wrt=nnx.Param)
    step_sg, step_nnx = sg.jit(train_step), nnx.jit(train_step)
    for _ in range(3):
        a, b = float(step_sg(m_sg, opt_sg, x, y)), float(step_nnx(m_nnx, opt_nnx, x, y))
        if a != b:
            raise AssertionError(f"sg.jit and nnx.jit disagree on the training step: {a} != {b}")
    if step_sg.trace_count != 1:
        raise AssertionError(f"sg.jit traced the training step {step_sg.trace_count} times")

    bs = brainstate_model(depth, width)
    import brainstate

    sg.flatten(bs)
    sg.flatten(bs)
    brainstate.graph.flatten(bs)

    block = jax.block_until_ready
    return [
        ("flatten vs nnx.split", lambda: sg.flatten(m), lambda: nnx.split(m), None),
        ("flatten vs jax tree_flatten", lambda: sg.flatten(m), lambda: jax.tree_util.tree_flatten(tree),
         None),
        ("unflatten vs nnx.merge", lambda: sg.unflatten(gd, sm), lambda: nnx.merge(ngd, nst), None),
        ("update vs nnx.update", lambda: sg.update(m, sm), lambda: nnx.update(m, nst), None),
        ("jit no-op vs nnx.jit", lambda: sg_noop(m), lambda: nnx_noop(m), None),
        ("jit no-op vs jax.jit", lambda: sg_noop(m), lambda: jax_noop(tree), None),
        ("Adam step: sg.jit vs nnx.jit", lambda: step_sg(m_sg, opt_sg, x, y),
         lambda: step_nnx(m_nnx, opt_nnx, x, y), block),
        ("flatten vs brainstate.graph.flatten", lambda: sg.flatten(bs),
         lambda: brainstate.graph.flatten(bs), None),
    ]


def measure(depth: int, width: int, target: float, repeats: int) -> list[dict[str, Any]]:
    out = []
    for label, ours, theirs, block in rows(depth, width):
        entries = [_BG.Timing("specgraph", ours), _BG.Timing("other", theirs)]
        for e in entries:
            # Warm first: a one-time cost (a recompile after a registration, a first trace)
            # must not set the loop count (a calibration on it times single cold calls).
            for _ in range(2):
                warm = e.fn()
                if block is not None:
                    block(warm)
            e.number = _BG.calibrate(e.fn, target, block)
        for r in range(repeats):
            for e in (entries if r % 2 == 0 else entries[::-1]):
                e.best = min(e.best, _BG.time_loop(e.fn, e.number, block) / e.number)
        us_ours, us_theirs = entries[0].best * 1e6, entries[1].best * 1e6
        ratio = us_theirs / us_ours
        out.append({"row": label, "specgraph_us": us_ours, "other_us": us_theirs, "ratio": ratio,
                    "bar": BARS[label], "met": ratio >= BARS[label]})
        print(f"  {label}: specgraph {us_ours:.1f} us, other {us_theirs:.1f} us, x{ratio:.2f}",
              file=sys.stderr)
    return out


def _bar(b: float) -> str:
    return f">= x{b:g}" if b >= 1 else f">= x{b:.2f} (within {1 / b:g}x)"


def markdown(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    import jax

    import specgraph as sg

    versions = []
    for dist in ("flax", "brainstate", "optax"):
        try:
            from importlib.metadata import version

            versions.append(f"{dist} {version(dist)}")
        except Exception:
            pass
    lines = [
        f"# specgraph on NNX / BrainState models ({_dt.date.today().isoformat()})",
        "",
        f"- MLP of {args.depth} Linear({args.width}, {args.width}); {platform.python_implementation()} "
        f"{platform.python_version()}, jax {jax.__version__}, {', '.join(versions)}",
        f"- `{' '.join(['python', 'benchmarks/bench_interop.py', *sys.argv[1:]])}`; min of "
        f"{args.repeats} interleaved repeats; ratio = other / specgraph",
        f"- specgraph cache: {sg.cache_info()['hits']} flatten hits, "
        f"{sg.cache_info()['generic_flattens']} generic flattens",
        "",
        "| row | specgraph µs | other µs | ratio | bar | met |",
        "|---|---:|---:|---:|---|---|",
    ]
    for r in results:
        lines.append(f"| {r['row']} | {r['specgraph_us']:.1f} | {r['other_us']:.1f} | x{r['ratio']:.2f} | "
                     f"{_bar(r['bar'])} | {'yes' if r['met'] else 'no'} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="short loops, 3 repeats")
    p.add_argument("--depth", type=int, default=32)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--out", type=Path, default=None, help="also write DIR/interop-latest.md")
    p.add_argument("--save", action="store_true", help="write benchmarks/results/interop-latest.md")
    args = p.parse_args(argv)
    args.repeats = args.repeats or (3 if args.quick else 9)
    target = 0.005 if args.quick else 0.02
    results = measure(args.depth, args.width, target, args.repeats)
    md = markdown(results, args)
    print(md)
    out_dir = HERE / "results" if args.save else args.out
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "interop-latest.md").write_text(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
