"""Train an MLP regressor with an optax optimizer held in a graph node, under ``specgraph.jit``.

Usage::

    python examples/train_mlp.py [--steps 2000] [--batch 128] [--depth 4] [--width 64]
                                 [--lr 3e-3] [--log-every 200] [--seed 0]

The model is a graph of ``sg.Node`` objects holding ``sg.Param`` states. The
optimizer is a graph node too: it holds the model, the optax transformation (a
static attribute: a namedtuple of functions) and ``opt_state``, a ``sg.State``
whose value is the whole optax state pytree (its ``mu`` / ``nu`` are ``StateMap``s
with the paths of the model's parameters).

One training step is one ``sg.jit`` call: inside it, ``sg.value_and_grad`` takes the
gradient with respect to the model's ``Param`` states, the optimizer writes the new
parameters and its new state into the (traced) graph, and ``sg.jit`` writes exactly
those states back into the caller's live objects. Nothing is returned but the loss.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import specgraph as sg


class Linear(sg.Node):
    def __init__(self, din: int, dout: int, key: jax.Array) -> None:
        self.din = din  # a static: part of the GraphDef
        self.dout = dout
        self.w = sg.Param(jax.random.normal(key, (din, dout)) * math.sqrt(1.0 / din))
        self.b = sg.Param(jnp.zeros((dout,)))

    def __call__(self, x: jax.Array) -> jax.Array:
        return x @ self.w.value + self.b.value


class MLP(sg.Node):
    def __init__(self, sizes: Sequence[int], key: jax.Array) -> None:
        keys = jax.random.split(key, len(sizes) - 1)
        self.layers = [Linear(a, b, k) for a, b, k in zip(sizes[:-1], sizes[1:], keys, strict=True)]

    def __call__(self, x: jax.Array) -> jax.Array:
        *hidden, last = self.layers
        for layer in hidden:
            x = jax.nn.gelu(layer(x))
        return last(x)


class Optimizer(sg.Node):
    """An optax optimizer as a graph node: the model, the transformation, its state."""

    def __init__(self, model: sg.Node, tx: optax.GradientTransformation, wrt: Any = sg.Param) -> None:
        self.model = model
        self.tx = tx  # static (a namedtuple of functions): part of the GraphDef
        self.wrt = wrt  # static: which states are trained
        self.opt_state = sg.State(tx.init(self.params()))

    def params(self) -> sg.StateMap:
        """The trained values, as a ``StateMap`` with the paths of ``sg.split(model, wrt)``."""
        return sg.split(self.model, self.wrt, ...)[1]

    def update(self, grads: sg.StateMap) -> None:
        """One optimizer step: writes the new parameters and optimizer state in place."""
        params = self.params()
        updates, self.opt_state.value = self.tx.update(grads, self.opt_state.value, params)
        sg.update(self.model, optax.apply_updates(params, updates))


def mse(model: MLP, x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean((model(x) - y) ** 2)


@sg.jit
def train_step(opt: Optimizer, x: jax.Array, y: jax.Array) -> jax.Array:
    loss, grads = sg.value_and_grad(mse)(opt.model, x, y)
    opt.update(grads)
    return loss


@sg.jit
def eval_loss(model: MLP, x: jax.Array, y: jax.Array) -> jax.Array:
    return mse(model, x, y)


def make_data(n: int, din: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A smooth nonlinear target of ``din`` inputs, plus a little noise."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1.0, 1.0, size=(n, din)).astype(np.float32)
    proj = rng.standard_normal((din, 4)).astype(np.float32) / math.sqrt(din)
    z = x @ proj
    y = np.sin(3.0 * z[:, :1]) + 0.5 * np.cos(2.0 * z[:, 1:2]) * z[:, 2:3] + 0.3 * z[:, 3:4] ** 2
    y += 0.01 * rng.standard_normal(y.shape).astype(np.float32)
    return x, y.astype(np.float32)


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--depth", type=int, default=4, help="number of Linear layers")
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--din", type=int, default=8)
    ap.add_argument("--n-train", type=int, default=8192)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--log-every", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    x_np, y_np = make_data(args.n_train + 2048, args.din, args.seed)
    # Minibatches are gathered on the host (NumPy fancy indexing is ~2 µs; a gather on
    # device arrays with a host index costs more than the whole step) and handed to the
    # jitted step as NumPy arrays.
    x_train, y_train = x_np[: args.n_train], y_np[: args.n_train]
    x_test, y_test = jnp.asarray(x_np[args.n_train :]), jnp.asarray(y_np[args.n_train :])

    sizes = [args.din] + [args.width] * (args.depth - 1) + [1]
    model = MLP(sizes, jax.random.key(args.seed))
    opt = Optimizer(model, optax.adam(args.lr))
    n_params = sum(int(np.prod(v.shape)) for v in opt.params().values())
    print(f"MLP {sizes}: {len(model.layers)} Linear, {n_params} parameters; adam lr={args.lr}")
    print(f"initial test loss {float(eval_loss(model, x_test, y_test)):.5f}")

    batches_per_epoch = args.n_train // args.batch
    rng = np.random.default_rng(args.seed + 1)
    order = rng.permutation(args.n_train)
    first_w = model.layers[0].w  # the very State object: it gets new values in place

    t_start = time.perf_counter()
    t_compiled = None
    for step in range(1, args.steps + 1):
        b = (step - 1) % batches_per_epoch
        if b == 0 and step > 1:
            order = rng.permutation(args.n_train)
        idx = order[b * args.batch : (b + 1) * args.batch]
        loss = train_step(opt, x_train[idx], y_train[idx])
        if step == 1:
            loss.block_until_ready()
            t_compiled = time.perf_counter()
        if step % args.log_every == 0:
            print(f"step {step:6d}  train loss {float(loss):.5f}")
    jax.block_until_ready(sg.flatten(opt)[1])
    t_end = time.perf_counter()

    assert model.layers[0].w is first_w, "the caller's State objects keep their identity"
    test = float(eval_loss(model, x_test, y_test))
    steady = (args.steps - 1) / (t_end - t_compiled) if args.steps > 1 and t_compiled else float("nan")
    print(f"final test loss {test:.5f}")
    print(
        f"{args.steps} steps in {t_end - t_start:.2f} s (first step incl. compile "
        f"{(t_compiled or t_end) - t_start:.2f} s); {steady:.0f} steps/s after compile; "
        f"traces: train_step={train_step.trace_count}"
    )
    return {"test_loss": test, "steps_per_second": steady}


if __name__ == "__main__":
    main()
