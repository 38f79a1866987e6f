"""Train a Flax NNX classifier (Dropout, BatchNorm, metrics) under ``specgraph.jit``.

Usage::

    python examples/train_nnx.py [--steps 300] [--batch 64] [--lr 3e-3] [--log-every 50]
                                 [--check-nnx] [--seed 0]

The model, the optimizer and the metrics are plain Flax NNX objects, and the training
step is NNX's standard one, word for word. The only change from an NNX script is the
decorator: ``@sg.jit`` instead of ``@nnx.jit``. specgraph flattens the three objects
with NNX's own paths, rebuilds them inside the trace, and writes back what the step
changed: parameters, Adam state, BatchNorm statistics, the Dropout rng count and the
metric totals. ``--check-nnx`` runs the same steps under ``nnx.jit`` on an identical
copy and checks the losses agree step by step.

The data is synthetic: three Gaussian blobs in 8 dimensions, labelled by blob.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import specgraph as sg


class Classifier(nnx.Module):
    def __init__(self, din: int, hidden: int, classes: int, rngs: nnx.Rngs) -> None:
        self.l1 = nnx.Linear(din, hidden, rngs=rngs)
        self.bn = nnx.BatchNorm(hidden, rngs=rngs)
        self.dropout = nnx.Dropout(0.1, rngs=rngs)
        self.l2 = nnx.Linear(hidden, classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.dropout(nnx.relu(self.bn(self.l1(x))))
        return self.l2(x)


def train_step(model: Classifier, optimizer: nnx.Optimizer, metrics: nnx.MultiMetric,
               x: jax.Array, y: jax.Array) -> jax.Array:
    """NNX's standard training step, unchanged."""

    def loss_fn(model: Classifier) -> tuple[jax.Array, jax.Array]:
        logits = model(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), logits

    (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    metrics.update(loss=loss, logits=logits, labels=y)
    optimizer.update(model, grads)
    return loss


def blobs(rng: np.random.Generator, n: int, dim: int = 8, classes: int = 3) -> tuple[jax.Array, jax.Array]:
    centers = np.random.default_rng(1234).standard_normal((classes, dim))
    y = rng.integers(0, classes, n)
    x = centers[y] + rng.standard_normal((n, dim))
    return jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32)


def make(seed: int, lr: float) -> tuple[Classifier, nnx.Optimizer, nnx.MultiMetric]:
    model = Classifier(8, 32, 3, nnx.Rngs(seed))
    optimizer = nnx.Optimizer(model, optax.adam(lr), wrt=nnx.Param)
    metrics = nnx.MultiMetric(loss=nnx.metrics.Average("loss"), accuracy=nnx.metrics.Accuracy())
    return model, optimizer, metrics


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--check-nnx", action="store_true", help="also run nnx.jit and compare losses")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    model, optimizer, metrics = make(args.seed, args.lr)
    step = sg.jit(train_step)  # the one change: @nnx.jit -> @sg.jit
    twin = make(args.seed, args.lr) if args.check_nnx else None
    step_nnx = nnx.jit(train_step) if args.check_nnx else None

    rng = np.random.default_rng(args.seed)
    history = []
    t0 = time.perf_counter()
    for i in range(1, args.steps + 1):
        x, y = blobs(rng, args.batch)
        loss = step(model, optimizer, metrics, x, y)
        if twin is not None and step_nnx is not None:
            other = step_nnx(*twin, x, y)
            if float(loss) != float(other):
                raise SystemExit(f"step {i}: sg.jit loss {float(loss)} != nnx.jit loss {float(other)}")
        if i % args.log_every == 0 or i == args.steps:
            m = metrics.compute()
            history.append((i, float(m["loss"]), float(m["accuracy"])))
            print(f"step {i:5d}  loss {m['loss']:.4f}  accuracy {m['accuracy']:.3f}")
            metrics.reset()
    seconds = time.perf_counter() - t0

    model.eval()  # BatchNorm uses its running statistics, Dropout is off
    x, y = blobs(np.random.default_rng(999), 1000)
    test_accuracy = float((model(x).argmax(-1) == y).mean())
    print(f"test accuracy {test_accuracy:.3f}; {args.steps} steps in {seconds:.2f} s; "
          f"traced {step.trace_count} time(s)")
    return {"history": history, "test_accuracy": test_accuracy, "trace_count": step.trace_count}


if __name__ == "__main__":
    main()
