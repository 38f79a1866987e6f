"""Write ``docs/explain-mlp8.txt``: ``sg.explain`` of the README's MLP-8 after a few calls."""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp

import specgraph as sg


class Linear(sg.Node):
    def __init__(self, din: int, dout: int, key: jax.Array) -> None:
        self.w = sg.Param(jax.random.normal(key, (din, dout)) / din**0.5)
        self.b = sg.Param(jnp.zeros(dout))


class MLP(sg.Node):
    def __init__(self, depth: int, width: int, key: jax.Array) -> None:
        self.layers = [Linear(width, width, k) for k in jax.random.split(key, depth)]


def main() -> None:
    model = MLP(8, 64, jax.random.key(0))
    graphdef, state = sg.flatten(model)
    sg.flatten(model)
    sg.update(model, state)
    sg.unflatten(graphdef, state)
    sg.unflatten(graphdef, state)
    text = sg.explain(graphdef)
    out = pathlib.Path(__file__).with_name("explain-mlp8.txt")
    out.write_text(text + "\n")
    print(f"wrote {out} ({len(text.splitlines())} lines)")


if __name__ == "__main__":
    main()
