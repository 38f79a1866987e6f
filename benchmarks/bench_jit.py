"""Side-by-side ``specgraph.jit`` benchmark: no-op step and full training step on MLP-32.

Usage::

    python benchmarks/bench_jit.py [--quick] [--depth 32] [--width 64] [--batch 32]
                                   [--out DIR | --save]

Model: MLP-32 of ``benchmarks/models.py`` (32 ``Linear`` of width 64: 33 nodes, 64
states), built once per library from the very same arrays.

(a) **no-op step**: a jitted function that takes the model and returns ``None``:

* ``sg.jit``   -- ``sg.jit(lambda m: None)(model)`` (flatten, cached jit, nothing written);
* ``jax.jit``  -- ``jax.jit(lambda t: None)(tree)`` on the equivalent nested dict;
* ``nnx.jit``  -- ``nnx.jit(lambda m: None)(model)`` (Flax NNX, when installed);
* ``sg.jit`` on the NNX model -- the same no-op, specgraph jitting NNX's own objects;
* ``brainstate.transform.jit`` -- BrainState's jit cannot take a node as an argument;
  its function reads the 64 states' ``.value`` (what makes them inputs of the call).

(b) **training step** (tanh MLP, MSE regression, ``optax.adam``, all parameters and the
optimizer state written back), one call per step:

* ``sg.jit``  -- an ``Optimizer(sg.Node)`` holding the model and ``sg.State(opt_state)``;
  ``sg.value_and_grad`` inside, ``sg.update`` of the new parameters; returns the loss;
* ``jax.jit`` -- the pure function ``(params, opt_state, x, y) -> (params, opt_state,
  loss)`` on nested dicts, the caller keeping the new pytrees;
* ``nnx.jit`` -- ``nnx.value_and_grad`` + ``nnx.Optimizer.update`` (when installed);
* ``sg.jit`` of that very NNX step function, on NNX's own model and optimizer (losses
  checked identical to ``nnx.jit``'s).

Method: one process, systems interleaved repeat by repeat (rotating order), each repeat
a loop calibrated to ~30 ms (~15 ms ``--quick``) with the GC off; the loop blocks on the
last result, so the training numbers are throughput (steps/second = 1 / time per call).
Reported: the minimum over repeats (15, quick 3), in µs per call, and the ratio to
``sg.jit``. Before timing, the specgraph and pure-JAX training steps are checked to give
the same losses on the same data. The markdown goes to stdout; ``--out DIR`` also
writes it to ``DIR/jit-latest.md``, ``--save`` to ``benchmarks/results/jit-latest.md``
(tracked: the README cites it).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import os
import platform
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).resolve().parent

#: The bars of issue 6 (ratios of per-call times).
BAR_NOOP_VS_JAX = 1.5  # sg.jit no-op <= 1.5 x jax.jit no-op
BAR_NOOP_NNX_SPEEDUP = 30.0  # nnx.jit no-op >= 30 x sg.jit no-op
BAR_TRAIN_VS_JAX = 1.2  # sg.jit training step <= 1.2 x pure jax.jit training step


def _load_bench_graph() -> ModuleType:
    """``benchmarks/bench_graph.py`` by path: its loader and timing helpers are shared."""
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


def load_models() -> ModuleType:
    return _BG.load_sibling("models")


# --------------------------------------------------------------------------------------
# timing: bench_graph's loop, blocking on the last result (jax dispatches asynchronously)
# --------------------------------------------------------------------------------------


def _block(x: Any) -> None:
    import jax

    if x is not None:
        jax.block_until_ready(x)


def time_loop(fn: Callable[[], Any], number: int) -> float:
    return _BG.time_loop(fn, number, block=_block)


def calibrate(fn: Callable[[], Any], target: float) -> int:
    return _BG.calibrate(fn, target, block=_block)


class Entry:
    def __init__(self, key: str, label: str, fn: Callable[[], Any] | None, error: str | None = None) -> None:
        self.key = key
        self.label = label
        self.fn = fn
        self.error = error
        self.number = 0
        self.best = float("inf")

    @property
    def us(self) -> float | None:
        return None if self.error or self.fn is None else self.best * 1e6


def run_interleaved(entries: list[Entry], target: float, repeats: int) -> None:
    live = []
    for e in entries:
        if e.fn is None or e.error:
            continue
        try:
            _block(e.fn())
            e.number = calibrate(e.fn, target)
            live.append(e)
        except Exception as exc:  # a peer that cannot do this: record it, keep going
            e.error = _err(exc)
    for r in range(repeats):
        k = r % len(live) if live else 0
        for e in live[k:] + live[:k]:
            e.best = min(e.best, time_loop(e.fn, e.number) / e.number)


def _err(exc: BaseException) -> str:
    msg = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {msg[:160]}"


# --------------------------------------------------------------------------------------
# the systems
# --------------------------------------------------------------------------------------


def _try_import(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except Exception:
        return None


def noop_entries(models: ModuleType, shape: str) -> list[Entry]:
    import jax

    import specgraph as sg

    out = []
    sg_model = models.build(shape, "specgraph")
    sg_noop = sg.jit(lambda m: None)
    out.append(Entry("specgraph", "sg.jit", lambda: sg_noop(sg_model)))

    tree = models.build(shape, "jax")
    jax_noop = jax.jit(lambda t: None)
    out.append(Entry("jax", "jax.jit (nested dict)", lambda: jax_noop(tree)))

    if "nnx" in models.FAMILIES:
        from flax import nnx

        nnx_model = models.build(shape, "nnx")
        nnx_noop = nnx.jit(lambda m: None)
        out.append(Entry("nnx", "nnx.jit", lambda: nnx_noop(nnx_model)))
        sg_on_nnx = sg.jit(lambda m: None)
        out.append(Entry("sg_nnx", "sg.jit on the NNX model", lambda: sg_on_nnx(nnx_model)))
    else:
        out.append(Entry("nnx", "nnx.jit", None, "flax not installed"))

    bst = _try_import("brainstate")
    bjit = getattr(getattr(bst, "transform", None), "jit", None)
    if bst is not None and bjit is not None and "brainstate" in models.FAMILIES:
        bs_model = models.build(shape, "brainstate")
        bs_states = list(bst.graph.states(bs_model).values())

        def read_all() -> None:
            for s in bs_states:
                s.value  # noqa: B018  (reading is what makes a state an input)

        bs_noop = bjit(read_all)
        out.append(Entry("brainstate", "brainstate.transform.jit (reads the states)", bs_noop))
    else:
        out.append(
            Entry("brainstate", "brainstate.transform.jit", None, "brainstate.transform.jit unavailable")
        )
    return out


def _data(batch: int, width: int) -> tuple[Any, Any]:
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (batch, width)).astype(np.float32)
    y = np.sin(2 * x).astype(np.float32)
    return jnp.asarray(x), jnp.asarray(y)


def train_entries(
    models: ModuleType, shape: str, batch: int, width: int, lr: float = 1e-3
) -> tuple[list[Entry], dict[str, list[float]]]:
    """The training steps, plus the first losses of each (checked equal before timing)."""
    import jax
    import jax.numpy as jnp
    import optax

    import specgraph as sg

    x, y = _data(batch, width)
    tx = optax.adam(lr)
    out: list[Entry] = []
    losses: dict[str, list[float]] = {}

    # ---- specgraph: the optimizer is a graph node, the step writes everything back
    class Optimizer(sg.Node):
        def __init__(self, model: Any) -> None:
            self.model = model
            self.tx = tx
            self.opt_state = sg.State(tx.init(self.params()))

        def params(self) -> sg.StateMap:
            return sg.split(self.model, sg.Param, ...)[1]

        def update(self, grads: sg.StateMap) -> None:
            params = self.params()
            updates, self.opt_state.value = self.tx.update(grads, self.opt_state.value, params)
            sg.update(self.model, optax.apply_updates(params, updates))

    def sg_loss(model: Any, x: Any, y: Any) -> Any:
        for lin in model.layers:
            x = jnp.tanh(x @ lin.w.value + lin.b.value)
        return jnp.mean((x - y) ** 2)

    @sg.jit
    def sg_step(opt: Optimizer, x: Any, y: Any) -> Any:
        loss, grads = sg.value_and_grad(sg_loss)(opt.model, x, y)
        opt.update(grads)
        return loss

    opt = Optimizer(models.build(shape, "specgraph"))
    losses["specgraph"] = [float(sg_step(opt, x, y)) for _ in range(3)]
    out.append(Entry("specgraph", "sg.jit (Optimizer node, all written back)", lambda: sg_step(opt, x, y)))

    # ---- pure jax.jit on pytrees
    def jax_loss(params: Any, x: Any, y: Any) -> Any:
        for lin in params["layers"]:
            x = jnp.tanh(x @ lin["w"] + lin["b"])
        return jnp.mean((x - y) ** 2)

    @jax.jit
    def jax_step(params: Any, opt_state: Any, x: Any, y: Any) -> Any:
        loss, grads = jax.value_and_grad(jax_loss)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    params = models.build(shape, "jax")
    carry = [params, tx.init(params)]

    def jax_run() -> Any:
        carry[0], carry[1], loss = jax_step(carry[0], carry[1], x, y)
        return loss

    losses["jax"] = [float(jax_run()) for _ in range(3)]
    out.append(Entry("jax", "jax.jit (pure, params + opt state pytrees)", jax_run))

    # ---- Flax NNX
    if "nnx" in models.FAMILIES:
        from flax import nnx

        def nnx_loss(model: Any, x: Any, y: Any) -> Any:
            for lin in model.layers:
                x = jnp.tanh(x @ lin.w[...] + lin.b[...])
            return jnp.mean((x - y) ** 2)

        def nnx_train(model: Any, optimizer: Any, x: Any, y: Any) -> Any:
            loss, grads = nnx.value_and_grad(nnx_loss)(model, x, y)
            optimizer.update(model, grads)
            return loss

        nnx_step = nnx.jit(nnx_train)
        nnx_model = models.build(shape, "nnx")
        nnx_opt = nnx.Optimizer(nnx_model, tx, wrt=nnx.Param)
        losses["nnx"] = [float(nnx_step(nnx_model, nnx_opt, x, y)) for _ in range(3)]
        out.append(Entry("nnx", "nnx.jit (nnx.Optimizer)", lambda: nnx_step(nnx_model, nnx_opt, x, y)))
        # The very same NNX step and objects, under sg.jit (the one-line change).
        sg_nnx_step = sg.jit(nnx_train)
        sg_nnx_model = models.build(shape, "nnx")
        sg_nnx_opt = nnx.Optimizer(sg_nnx_model, tx, wrt=nnx.Param)
        losses["sg_nnx"] = [float(sg_nnx_step(sg_nnx_model, sg_nnx_opt, x, y)) for _ in range(3)]
        out.append(Entry("sg_nnx", "sg.jit of the same NNX step (nnx.Optimizer)",
                         lambda: sg_nnx_step(sg_nnx_model, sg_nnx_opt, x, y)))
    else:
        out.append(Entry("nnx", "nnx.jit", None, "flax not installed"))
    if sg_step.trace_count != 1:
        raise AssertionError(f"sg.jit training step traced {sg_step.trace_count} times")
    return out, losses


# --------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------


def _fmt_us(us: float | None) -> str:
    if us is None:
        return "-"
    return f"{us:,.1f}" if us < 100 else f"{us:,.0f}"


def table(title: str, entries: list[Entry], steps: bool) -> list[str]:
    ref = next((e.us for e in entries if e.key == "specgraph"), None)
    head = f"| {title} | µs/call | vs sg.jit |" + (" steps/s |" if steps else "")
    sep = "|---|---:|---:|" + ("---:|" if steps else "")
    rows = [head, sep]
    for e in entries:
        us = e.us
        ratio = f"{us / ref:.2f}x" if us is not None and ref else "-"
        row = f"| {e.label} | {_fmt_us(us) if e.error is None else e.error} | {ratio} |"
        if steps:
            row += f" {1e6 / us:,.0f} |" if us else " - |"
        rows.append(row)
    return rows


def bars(noop: list[Entry], train: list[Entry]) -> list[str]:
    by_n = {e.key: e.us for e in noop}
    by_t = {e.key: e.us for e in train}
    out = ["| bar | measured | target | |", "|---|---:|---:|---|"]

    def line(name: str, value: float | None, target: str, ok: bool | None) -> None:
        shown = f"{value:.2f}x" if value is not None else "-"
        verdict = "n/a" if ok is None else ("pass" if ok else "**FAIL**")
        out.append(f"| {name} | {shown} | {target} | {verdict} |")

    sg_n, jax_n, nnx_n = by_n.get("specgraph"), by_n.get("jax"), by_n.get("nnx")
    r = sg_n / jax_n if sg_n and jax_n else None
    line(
        "no-op: sg.jit / jax.jit (nested dict)",
        r,
        f"≤ {BAR_NOOP_VS_JAX}x",
        None if r is None else r <= BAR_NOOP_VS_JAX,
    )
    r = nnx_n / sg_n if sg_n and nnx_n else None
    line(
        "no-op: nnx.jit / sg.jit",
        r,
        f"≥ {BAR_NOOP_NNX_SPEEDUP:.0f}x",
        None if r is None else r >= BAR_NOOP_NNX_SPEEDUP,
    )
    sg_t, jax_t = by_t.get("specgraph"), by_t.get("jax")
    r = sg_t / jax_t if sg_t and jax_t else None
    line(
        "training step: sg.jit / jax.jit (pytrees)",
        r,
        f"≤ {BAR_TRAIN_VS_JAX}x",
        None if r is None else r <= BAR_TRAIN_VS_JAX,
    )
    return out


def _version(dist: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:
        return None


def _git_head() -> str:
    import subprocess

    try:
        run = subprocess.run
        head = run(
            ["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = run(
            ["git", "-C", str(HERE.parent), "status", "--porcelain", "--", "specgraph"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        return head + (" (specgraph/ dirty)" if dirty else "")
    except Exception:
        return "?"


def main(argv: Sequence[str] | None = None, prog: str = "python benchmarks/bench_jit.py") -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="shorter loops, 3 repeats")
    ap.add_argument("--depth", type=int, default=32)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32, help="training batch size")
    ap.add_argument("--repeats", type=int, default=None)
    _BG.add_output_options(ap, "jit-latest.md")
    args = ap.parse_args(argv)

    import jax
    import numpy as np

    models = load_models()
    shape = f"mlp{args.depth}"
    if shape not in models.SHAPES or args.width != 64:
        import functools

        models.SHAPES[shape] = functools.partial(models.build_mlp, depth=args.depth, width=args.width)
    target = 0.015 if args.quick else 0.03
    repeats = args.repeats or (3 if args.quick else 15)

    noop = noop_entries(models, shape)
    train, losses = train_entries(models, shape, args.batch, args.width)
    np.testing.assert_allclose(losses["specgraph"], losses["jax"], rtol=1e-5)
    if "nnx" in losses:
        np.testing.assert_allclose(losses["nnx"], losses["jax"], rtol=1e-5)
        assert losses["sg_nnx"] == losses["nnx"], (losses["sg_nnx"], losses["nnx"])

    run_interleaved(noop, target, repeats)
    run_interleaved(train, target, repeats)

    cpu = f"{platform.machine()}, {len(os.sched_getaffinity(0))} CPUs"
    lines = [
        f"# specgraph.jit: MLP-{args.depth} (width {args.width}), side by side in one process",
        "",
        f"{_dt.datetime.now().astimezone().isoformat(timespec='seconds')} on {socket.gethostname()} ({cpu}); "
        f"specgraph {_git_head()}; jax {_version('jax')}, flax {_version('flax')}, "
        f"brainstate {_version('brainstate')}, optax {_version('optax')}; backend {jax.default_backend()}; "
        f"min over {repeats} repeats{' (--quick)' if args.quick else ''}.",
        "",
        *table("no-op step", noop, steps=False),
        "",
        *table(f"training step (adam, batch {args.batch})", train, steps=True),
        "",
        *bars(noop, train),
        "",
        f"Command: `{prog}" + "".join(f" {a}" for a in (argv or sys.argv[1:])) + "`. "
        "Losses of the first 3 training steps: sg.jit "
        + ", ".join(f"{v:.6f}" for v in losses["specgraph"])
        + "; jax.jit "
        + ", ".join(f"{v:.6f}" for v in losses["jax"])
        + " (checked equal).",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    where = _BG.output_dir(args)
    if where is not None:
        where.mkdir(parents=True, exist_ok=True)
        (where / "jit-latest.md").write_text(text)
    return {
        "noop_us": {e.key: e.us for e in noop},
        "train_us": {e.key: e.us for e in train},
        "losses": losses,
    }


if __name__ == "__main__":
    main()
