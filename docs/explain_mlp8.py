"""Write ``docs/explain-mlp8.txt``: ``sg.explain`` of the README's MLP-8 after a few calls."""

from __future__ import annotations

import pathlib

import jax.numpy as jnp

import specgraph as sg


class Linear(sg.Node):
    def __init__(self, din: int, dout: int) -> None:
        self.w = sg.Param(jnp.zeros((din, dout)))
        self.b = sg.Param(jnp.zeros(dout))


class MLP(sg.Node):
    def __init__(self, depth: int, width: int) -> None:
        self.layers = [Linear(width, width) for _ in range(depth)]


def main() -> None:
    model = MLP(8, 64)
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
