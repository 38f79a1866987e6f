"""Sharded states on an 8-device CPU mesh: ``sg.jit`` and ``sg.scan`` side by side in one process.

Usage::

    python benchmarks/bench_sharded.py [--quick] [--depth 16] [--width 64] [--batch 32]
                                       [--blocks 48] [--out DIR | --save]

The script starts JAX with 8 simulated host devices (``XLA_FLAGS=
--xla_force_host_platform_device_count=8``, set before JAX is imported) and a 2x4
(``data``, ``model``) mesh with ``Auto`` axes.

(a) **Adam training step** on an MLP whose Linear layers alternate column- and
row-parallel weights (``("model", None)`` / ``(None, "model")`` on the weights),
batch sharded along ``data``, all states written back, per call:

* ``sg.jit``  -- ``sg.Node`` model with annotated ``sg.Param``s placed by ``sg.shard``;
  an optimizer node holding ``sg.State(opt_state)``; every state keeps its sharding;
* ``jax.jit`` -- the same arrays as a nested dict, ``jax.jit`` with explicit
  ``in_shardings`` / ``out_shardings`` on the params and optimizer-state pytrees;
* ``nnx.jit`` -- the same model written natively in Flax NNX (``nnx.Param`` with
  ``out_sharding``, placed with ``nnx.get_named_sharding``), ``nnx.Optimizer``.

(b) **compile time** of a training step (gradient, SGD update written back) over
``--blocks`` small transformer blocks (attention and MLP, sharded along ``model``): the
blocks stacked on a layer axis under ``sg.scan`` vs the same blocks unrolled (a list of
nodes, a Python loop), both under ``sg.jit``. Each repeat builds a fresh ``sg.jit``
(so JAX traces and compiles again) and times the first call. A context row times the
same step written with ``jax.lax.scan`` under ``jax.jit`` on the stacked arrays: the
floor of ``sg.scan``'s compile time (XLA's compile of the scanned step).

Two context rows (no bar): ``nnx.jit`` against ``jax.jit`` on the step, the ceiling of
the nnx/sg ratio (sg.jit cannot beat jax.jit's device work: when the step is bound by
device time, as on simulated CPU devices, no host-side saving shows); and a no-op step
on the same sharded objects: the host side of each system alone, without the device work.

Method: (a) as ``bench_jit.py`` (systems interleaved, loops calibrated, min over
repeats, blocking on the last result); the three steps are first checked to give the
same losses. (b) min over repeats of one first call each. Bars: issue 13.
"""

from __future__ import annotations

import os

if "jax" not in __import__("sys").modules:  # the device count is fixed when JAX starts
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()

import argparse
import datetime as _dt
import importlib.util
import platform
import socket
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).resolve().parent

#: The bars of issue 13.
BAR_STEP_VS_JAX = 1.3  # sg.jit Adam step <= 1.3 x jax.jit with explicit shardings
BAR_NNX_SLOWER = 5.0  # nnx.jit step >= 5 x sg.jit step
BAR_SCAN_COMPILE = 5.0  # unrolled compile >= 5 x sg.scan compile


def _load(stem: str) -> ModuleType:
    name = f"specgraph_bench_{stem}"
    mod = sys.modules.get(name)
    if mod is None:
        spec = importlib.util.spec_from_file_location(name, HERE / f"{stem}.py")
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return mod


_BJ = _load("bench_jit")  # Entry, run_interleaved, table helpers, versions
_BG = _BJ._BG


# --------------------------------------------------------------------------------------
# the model, once per system, from the very same arrays
# --------------------------------------------------------------------------------------


def layer_axes(i: int) -> tuple[Any, Any]:
    """Megatron-style alternation: column-parallel, then row-parallel."""
    return (None, "model") if i % 2 == 0 else ("model", None)


def arrays(depth: int, width: int) -> list[tuple[Any, Any]]:
    import numpy as np

    rng = np.random.default_rng(0)
    out = []
    for _ in range(depth):
        w = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        out.append((w, np.zeros((width,), np.float32)))
    return out


def data(batch: int, width: int) -> tuple[Any, Any]:
    import numpy as np

    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, (batch, width)).astype(np.float32)
    return x, np.sin(2 * x).astype(np.float32)


def sg_system(params: list[tuple[Any, Any]], mesh: Any, tx: Any) -> tuple[Any, Callable[..., Any]]:
    import jax
    import jax.numpy as jnp

    import specgraph as sg

    class Linear(sg.Node):
        def __init__(self, w: Any, b: Any, axes: tuple) -> None:
            self.w = sg.Param(jnp.asarray(w), sharding=axes)
            self.b = sg.Param(jnp.asarray(b), sharding=(axes[1],))

    class MLP(sg.Node):
        def __init__(self) -> None:
            self.layers = [Linear(w, b, layer_axes(i)) for i, (w, b) in enumerate(params)]

        def __call__(self, x: Any) -> Any:
            *hidden, last = self.layers
            for lin in hidden:
                x = jnp.tanh(x @ lin.w.value + lin.b.value)
            return x @ last.w.value + last.b.value

    class Trainer(sg.Node):
        def __init__(self, model: MLP) -> None:
            self.model = model
            self.tx = tx
            self.opt_state = sg.State(_place_uncommitted(tx.init(sg.split(model, sg.Param, ...)[1]), mesh))

    def loss(m: MLP, x: Any, y: Any) -> Any:
        return jnp.mean((m(x) - y) ** 2)

    @sg.jit
    def step(t: Trainer, x: Any, y: Any) -> Any:
        value, grads = sg.value_and_grad(loss)(t.model, x, y)
        params = sg.split(t.model, sg.Param, ...)[1]
        updates, t.opt_state.value = t.tx.update(grads, t.opt_state.value, params)
        sg.update(t.model, jax.tree.map(lambda p, u: p + u, params, updates))
        return value

    return Trainer(sg.shard(MLP(), mesh)), step


def _place_uncommitted(tree: Any, mesh: Any) -> Any:
    """Optimizer counters come out of ``tx.init`` on one device: replicate them on the mesh."""
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    rep = NamedSharding(mesh, PartitionSpec())
    return jax.tree.map(lambda a: a if a.committed else jax.device_put(a, rep), tree)


def jax_system(params: list[tuple[Any, Any]], mesh: Any, tx: Any, data_sharding: Any) -> tuple[Any, Any]:
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec

    def spec(axes: tuple) -> NamedSharding:
        return NamedSharding(mesh, PartitionSpec(*axes))

    tree = {"layers": [{"b": jnp.asarray(b), "w": jnp.asarray(w)} for w, b in params]}
    shard_tree = {
        "layers": [
            {"b": spec((layer_axes(i)[1],)), "w": spec(layer_axes(i))} for i in range(len(params))
        ]
    }
    tree = jax.device_put(tree, shard_tree)
    opt_state = _place_uncommitted(tx.init(tree), mesh)
    opt_shardings = jax.tree.map(lambda a: a.sharding, opt_state)
    rep = NamedSharding(mesh, PartitionSpec())

    def forward(p: Any, x: Any) -> Any:
        *hidden, last = p["layers"]
        for lin in hidden:
            x = jnp.tanh(x @ lin["w"] + lin["b"])
        return x @ last["w"] + last["b"]

    def loss(p: Any, x: Any, y: Any) -> Any:
        return jnp.mean((forward(p, x) - y) ** 2)

    def step(p: Any, o: Any, x: Any, y: Any) -> Any:
        value, grads = jax.value_and_grad(loss)(p, x, y)
        updates, o = tx.update(grads, o, p)
        return jax.tree.map(lambda a, u: a + u, p, updates), o, value

    jitted = jax.jit(
        step,
        in_shardings=(shard_tree, opt_shardings, data_sharding, data_sharding),
        out_shardings=(shard_tree, opt_shardings, rep),
    )
    return {"params": tree, "opt": opt_state}, jitted


def nnx_system(params: list[tuple[Any, Any]], mesh: Any, tx: Any) -> tuple[Any, Any]:
    import jax.numpy as jnp
    from flax import nnx

    class Linear(nnx.Module):
        def __init__(self, w: Any, b: Any, axes: tuple) -> None:
            # NNX places an annotated Variable when it is made (given its mesh)
            self.w = nnx.Param(jnp.asarray(w), out_sharding=axes, mesh=mesh)
            self.b = nnx.Param(jnp.asarray(b), out_sharding=(axes[1],), mesh=mesh)

    class MLP(nnx.Module):
        def __init__(self) -> None:
            self.layers = nnx.List([Linear(w, b, layer_axes(i)) for i, (w, b) in enumerate(params)])

        def __call__(self, x: Any) -> Any:
            n = len(self.layers)
            for i, lin in enumerate(self.layers):
                x = x @ lin.w[...] + lin.b[...]
                if i < n - 1:
                    x = jnp.tanh(x)
            return x

    model = MLP()
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    opt_state = nnx.state(optimizer)
    nnx.update(optimizer, _place_uncommitted(opt_state, mesh))

    def loss(m: MLP, x: Any, y: Any) -> Any:
        return jnp.mean((m(x) - y) ** 2)

    @nnx.jit
    def step(m: MLP, opt: Any, x: Any, y: Any) -> Any:
        value, grads = nnx.value_and_grad(loss)(m, x, y)
        opt.update(m, grads)
        return value

    return (model, optimizer), step


# --------------------------------------------------------------------------------------
# (b) compile time: scan over stacked blocks vs unrolled
# --------------------------------------------------------------------------------------


def compile_times(blocks: int, width: int, batch: int, repeats: int, mesh: Any) -> dict[str, float]:
    import jax
    import jax.numpy as jnp
    import numpy as np

    import specgraph as sg

    class Dense(sg.Node):
        def __init__(self, w: Any, b: Any, axes: tuple) -> None:
            self.w = sg.Param(w, sharding=axes)
            self.b = sg.Param(b, sharding=(axes[1],))

    class Block(sg.Node):
        """A small pre-norm transformer block: attention (q, k, v, o) and an MLP, residuals."""

        def __init__(self, seed: Any) -> None:
            grid = jnp.arange(width * width, dtype=jnp.float32).reshape(width, width)

            def dense(k: float, axes: tuple) -> Dense:
                return Dense(jnp.sin(seed + k + grid) / np.sqrt(width), jnp.zeros(width), axes)

            self.q, self.k, self.v = (dense(i, (None, "model")) for i in (0.1, 0.2, 0.3))
            self.o = dense(0.4, ("model", None))
            self.up, self.down = dense(0.5, (None, "model")), dense(0.6, ("model", None))
            self.scale = sg.Param(jnp.ones(width))

        def __call__(self, x: Any) -> Any:
            def lin(d: Dense, h: Any) -> Any:
                return h @ d.w.value + d.b.value

            h = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + 1e-6) * self.scale.value
            att = jax.nn.softmax(jnp.einsum("bsd,btd->bst", lin(self.q, h), lin(self.k, h)) / np.sqrt(width))
            x = x + lin(self.o, jnp.einsum("bst,btd->bsd", att, lin(self.v, h)))
            return x + lin(self.down, jax.nn.gelu(lin(self.up, x)))

    seeds = jnp.arange(blocks, dtype=jnp.float32)
    stacked = sg.shard(sg.jit(sg.vmap(Block))(seeds), mesh)
    make_block = sg.jit(Block)
    layers = [sg.shard(make_block(s), mesh) for s in seeds]
    x, y = (jnp.asarray(a[:, :width]).reshape(batch // 4, 4, width) for a in data(batch, width))

    def train_step(forward: Callable[[Any, Any], Any]) -> Callable[..., Any]:
        def step(model: Any, x: Any, y: Any) -> Any:
            value, grads = sg.value_and_grad(lambda m: jnp.mean((forward(m, x) - y) ** 2))(model)
            params = sg.split(model, sg.Param, ...)[1]
            sg.update(model, jax.tree.map(lambda p, g: p - 0.01 * g, params, grads))
            return value

        return step

    scan_layers = sg.scan(lambda b, h: b(h), in_axes=(0, sg.Carry), out_axes=sg.Carry)

    def scanned(m: Any, x: Any) -> Any:
        return scan_layers(m, x)

    def unrolled(ls: list[Any], x: Any) -> Any:
        for b in ls:
            x = b(x)
        return x

    # The floor: jax.lax.scan under jax.jit over the same stacked arrays (a StateMap), the
    # block rebuilt from them inside the body (sg.merge runs at trace time only).
    one_block = sg.graphdef(sg.eval_shape(Block, seeds[0]))
    arrays = sg.flatten(stacked)[1]

    def jax_forward(sm: Any, x: Any) -> Any:
        return jax.lax.scan(lambda h, layer: (sg.merge(one_block, layer)(h), None), x, sm)[0]

    def jax_step(sm: Any, x: Any, y: Any) -> Any:
        value, grads = jax.value_and_grad(lambda s: jnp.mean((jax_forward(s, x) - y) ** 2))(sm)
        return jax.tree.map(lambda p, g: p - 0.01 * g, sm, grads), value

    # The three compute the same thing: check once (the timed runs start from equal states).
    a = sg.jit(lambda m, x: scanned(m, x))(stacked, x)
    b = sg.jit(lambda ls, x: unrolled(ls, x))(layers, x)
    c = jax.jit(jax_forward)(arrays, x)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(np.asarray(a), np.asarray(c), rtol=2e-5, atol=2e-5)

    def first_call(key: str) -> Callable[[], Any]:
        if key == "jax_scan":
            fresh_jax = jax.jit(lambda sm, x, y: jax_step(sm, x, y))  # a new function each time
            return lambda: fresh_jax(arrays, x, y)
        fwd, model = (scanned, stacked) if key == "scan" else (unrolled, layers)
        fresh = sg.jit(train_step(fwd))  # a new function: traced and compiled again
        return lambda: fresh(model, x, y)

    keys = ["scan", "unrolled", "jax_scan"]
    best = dict.fromkeys(keys, float("inf"))
    for r in range(repeats):
        for key in keys if r % 2 == 0 else keys[::-1]:
            call = first_call(key)
            t0 = time.perf_counter()
            jax.block_until_ready(call())
            best[key] = min(best[key], time.perf_counter() - t0)
    return best


# --------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------


def main(
    argv: Sequence[str] | None = None, prog: str = "python benchmarks/bench_sharded.py"
) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="shorter loops, fewer repeats")
    ap.add_argument("--depth", type=int, default=16, help="Linear layers of the trained MLP")
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--blocks", type=int, default=48, help="blocks for the compile-time row")
    ap.add_argument("--repeats", type=int, default=None)
    _BG.add_output_options(ap, "sharded-latest.md")
    args = ap.parse_args(argv)

    import jax
    import numpy as np
    import optax
    from jax.sharding import AxisType, NamedSharding, PartitionSpec

    if jax.device_count() < 8:
        raise SystemExit(
            "bench_sharded needs 8 devices: run it as a script (it sets XLA_FLAGS before JAX starts) "
            "or with XLA_FLAGS=--xla_force_host_platform_device_count=8"
        )
    mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Auto, AxisType.Auto))
    data_sharding = NamedSharding(mesh, PartitionSpec("data"))
    tx = optax.adam(1e-3)
    params = arrays(args.depth, args.width)
    x_np, y_np = data(args.batch, args.width)
    x, y = jax.device_put(x_np, data_sharding), jax.device_put(y_np, data_sharding)
    target = 0.015 if args.quick else 0.03
    repeats = args.repeats or (3 if args.quick else 15)

    # -- (a) the training step ------------------------------------------------------
    trainer, sg_step = sg_system(params, mesh, tx)
    jax_state, jax_step = jax_system(params, mesh, tx, data_sharding)
    losses: dict[str, list[float]] = {"specgraph": [], "jax": []}
    for _ in range(3):
        losses["specgraph"].append(float(sg_step(trainer, x, y)))
        p, o, v = jax_step(jax_state["params"], jax_state["opt"], x, y)
        jax_state["params"], jax_state["opt"] = p, o
        losses["jax"].append(float(v))
    np.testing.assert_allclose(losses["specgraph"], losses["jax"], rtol=1e-5)
    entries = [_BJ.Entry("specgraph", "sg.jit", lambda: sg_step(trainer, x, y))]

    def jax_call() -> Any:
        p, o, v = jax_step(jax_state["params"], jax_state["opt"], x, y)
        jax_state["params"], jax_state["opt"] = p, o
        return v

    entries.append(_BJ.Entry("jax", "jax.jit, explicit in/out shardings (nested dict)", jax_call))
    try:
        (nnx_model, nnx_opt), nnx_step = nnx_system(params, mesh, tx)
        losses["nnx"] = [float(nnx_step(nnx_model, nnx_opt, x, y)) for _ in range(3)]
        np.testing.assert_allclose(losses["nnx"], losses["jax"], rtol=1e-5)
        entries.append(
            _BJ.Entry("nnx", "nnx.jit (native NNX model)", lambda: nnx_step(nnx_model, nnx_opt, x, y))
        )
    except ImportError as e:
        entries.append(_BJ.Entry("nnx", "nnx.jit", None, f"flax not installed ({e})"))
    # The host side alone: a no-op step on the same sharded objects (what each system adds
    # per call, apart from the device work, which dominates a step on simulated devices).
    sg_noop = sg_jit_noop()
    jax_noop = jax.jit(lambda p, o: None)
    noop = [
        _BJ.Entry("specgraph", "sg.jit", lambda: sg_noop(trainer)),
        _BJ.Entry("jax", "jax.jit", lambda: jax_noop(jax_state["params"], jax_state["opt"])),
    ]
    if "nnx" in losses:
        from flax import nnx

        nnx_noop = nnx.jit(lambda m, o: None)
        noop.append(_BJ.Entry("nnx", "nnx.jit", lambda: nnx_noop(nnx_model, nnx_opt)))
    before = [a.sharding for a in jax.tree.leaves(_values(trainer))]
    _BJ.run_interleaved(entries, target, repeats)
    _BJ.run_interleaved(noop, target, repeats)
    after = [a.sharding for a in jax.tree.leaves(_values(trainer))]
    assert before == after, "a state's sharding changed during the timed steps"

    # -- (b) compile time -----------------------------------------------------------
    compile_repeats = 1 if args.quick else 3
    ct = compile_times(args.blocks, args.width, args.batch, compile_repeats, mesh)

    us = {e.key: e.us for e in entries}
    rows = [
        "| measure | specgraph | other | ratio | bar | met |",
        "|---|---:|---:|---:|---|---|",
    ]

    def f(v: float | None) -> str:
        return "n/a" if v is None else f"{v:,.0f}"

    def row(measure: str, sg_v: float | None, other: float | None, ratio: float | None, bar: str,
            ok: bool) -> None:
        rows.append(f"| {measure} | {f(sg_v)} | {f(other)} | {'n/a' if ratio is None else f'{ratio:.2f}x'} "
                    f"| {bar} | {'yes' if ok else 'NO'} |")

    r1 = us["specgraph"] / us["jax"] if us.get("jax") else None
    row("Adam step µs: sg.jit vs jax.jit with explicit shardings", us["specgraph"], us.get("jax"), r1,
        f"sg/jax <= {BAR_STEP_VS_JAX}", r1 is not None and r1 <= BAR_STEP_VS_JAX)
    r2 = us["nnx"] / us["specgraph"] if us.get("nnx") else None
    row("Adam step µs: nnx.jit vs sg.jit", us["specgraph"], us.get("nnx"), r2,
        f"nnx/sg >= {BAR_NNX_SLOWER}", r2 is not None and r2 >= BAR_NNX_SLOWER)
    r_ceiling = us["nnx"] / us["jax"] if us.get("nnx") and us.get("jax") else None
    ceiling = "n/a" if r_ceiling is None else f"{r_ceiling:.2f}x"
    rows.append(f"| (ceiling of nnx/sg) Adam step µs: nnx.jit vs jax.jit | {f(us.get('jax'))} "
                f"| {f(us.get('nnx'))} | nnx/jax {ceiling} | (context: sg.jit's step is no faster "
                "than jax.jit's) | |")
    noop_us = {e.key: e.us for e in noop}
    r_n = noop_us["nnx"] / noop_us["specgraph"] if noop_us.get("nnx") else None
    ratio_n = "n/a" if r_n is None else f"{r_n:.1f}x"
    rows.append(f"| (host side) no-op step µs: sg.jit vs jax.jit / nnx.jit | {f(noop_us['specgraph'])} "
                f"| {f(noop_us['jax'])} / {f(noop_us.get('nnx'))} | nnx/sg {ratio_n} | (context) | |")
    r3 = ct["unrolled"] / ct["scan"]
    row(f"compile ms, {args.blocks} blocks: sg.scan vs unrolled (sg.jit)", ct["scan"] * 1e3,
        ct["unrolled"] * 1e3, r3, f"unrolled/scan >= {BAR_SCAN_COMPILE}", r3 >= BAR_SCAN_COMPILE)
    rows.append(f"| (floor) compile ms: sg.scan vs jax.lax.scan on the same arrays (jax.jit) "
                f"| {f(ct['scan'] * 1e3)} | {f(ct['jax_scan'] * 1e3)} | {ct['scan'] / ct['jax_scan']:.2f}x "
                "| (context) | |")

    cpu = f"{platform.machine()}, {len(os.sched_getaffinity(0))} CPUs"
    lines = [
        f"# Sharded states: MLP-{args.depth} (width {args.width}) on a 2x4 (data, model) mesh "
        "of 8 CPU devices",
        "",
        f"{_dt.datetime.now().astimezone().isoformat(timespec='seconds')} on {socket.gethostname()} ({cpu}); "
        f"specgraph {_BJ._git_head()}; jax {_BJ._version('jax')}, flax {_BJ._version('flax')}, "
        f"optax {_BJ._version('optax')}; min over {repeats} repeats (compile: {compile_repeats})"
        f"{' (--quick)' if args.quick else ''}.",
        "",
        *rows,
        "",
        f"Command: `{prog}" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:])) + "`. "
        "Losses of the first 3 steps: "
        + "; ".join(f"{k} " + ", ".join(f"{v:.6f}" for v in vs) for k, vs in losses.items())
        + " (checked equal). Every state's sharding was checked unchanged after the timed steps.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    where = _BG.output_dir(args)
    if where is not None:
        where.mkdir(parents=True, exist_ok=True)
        (where / "sharded-latest.md").write_text(text)
    return {"step_us": us, "noop_us": noop_us, "compile_s": ct, "losses": losses}


def sg_jit_noop() -> Any:
    import specgraph as sg

    return sg.jit(lambda t: None)


def _values(node: Any) -> list[Any]:
    import specgraph as sg

    return sg.flatten(node)[1].values()


if __name__ == "__main__":
    main()
