"""``python -m specgraph demo | bench | scaling | jit``: the demo and the benchmarks.

The benchmarks print their results; only ``--out DIR`` or ``--save`` writes files.
"""

from __future__ import annotations

import argparse
import sys
import timeit
from pathlib import Path


def _best_us(fn: object, number: int, repeat: int = 7) -> float:
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6  # type: ignore[arg-type]


def _models() -> tuple[type, type]:
    import jax
    import jax.numpy as jnp

    import specgraph as sg

    class Linear(sg.Node):
        def __init__(self, din: int, dout: int, key: jax.Array) -> None:
            self.w = sg.Param(jax.random.normal(key, (din, dout)) / din**0.5)
            self.b = sg.Param(jnp.zeros(dout))
            self.activation = "relu"

    class MLP(sg.Node):
        def __init__(self, depth: int, width: int) -> None:
            keys = jax.random.split(jax.random.key(0), depth)
            self.layers = [Linear(width, width, k) for k in keys]
            self.steps = sg.State(jnp.zeros((), jnp.int32))

    Linear.__qualname__ = "Linear"
    MLP.__qualname__ = "MLP"
    return Linear, MLP


def demo() -> int:
    import jax

    import specgraph as sg

    _, MLP = _models()
    print("specgraph demo: an MLP of 8 Linear layers (width 64) and a step counter\n")
    model = MLP(8, 64)
    graphdef, state = sg.flatten(model)
    print(f"GraphDef: {graphdef.num_nodes} nodes, {graphdef.num_states} states, hash {hash(graphdef):#x}")
    print(f"StateMap ({len(state)} values):")
    for line in repr(state).splitlines()[1:6]:
        print("  " + line)
    print("  ...\n")

    # Round trip and in-place update.
    clone = sg.unflatten(graphdef, state)
    assert sg.graphdef(clone) == graphdef
    doubled = jax.tree.map(lambda v: v * 2, state)
    sg.update(model, doubled)
    assert model.layers[0].w.value is doubled[("layers", 0, "w")]

    # Generic walker vs the specialized path, side by side in this process.
    sg.flatten(model)
    rows = [
        ("flatten", lambda: sg.generic.flatten(model), lambda: sg.flatten(model)),
        ("unflatten", lambda: sg.generic.unflatten(graphdef, state), lambda: sg.unflatten(graphdef, state)),
        ("update", lambda: sg.generic.update(model, state), lambda: sg.update(model, state)),
    ]
    print(f"{'operation':<10} {'generic µs':>11} {'specialized µs':>15} {'speedup':>8}")
    for name, generic, fast in rows:
        fast()
        g = _best_us(generic, 300)
        f = _best_us(fast, 3000)
        print(f"{name:<10} {g:>11.1f} {f:>15.2f} {g / f:>7.1f}x")
    leaves = {"layers": {i: {"b": lay.b.value, "w": lay.w.value} for i, lay in enumerate(model.layers)}}
    j = _best_us(lambda: jax.tree_util.tree_flatten(leaves), 3000)
    print(f"(jax.tree_util.tree_flatten of the same arrays as a nested dict: {j:.2f} µs)\n")

    text = sg.explain(graphdef)
    lines = text.splitlines()
    head = lines[: lines.index("Generated flatten:") + 22] if "Generated flatten:" in lines else lines[:40]
    print("sg.explain(graphdef), first lines:")
    print("\n".join(head))
    print("  ...")
    print(lines[-1])
    return 0


#: ``python -m specgraph NAME ...`` -> the script in ``benchmarks/`` that runs it.
BENCHMARKS: dict[str, tuple[str, str]] = {
    "bench": ("bench_graph.py", "specgraph vs its generic walker and its peers, per operation"),
    "scaling": ("scaling.py", "time per flatten as the graph grows, per system"),
    "jit": ("bench_jit.py", "specgraph.jit vs jax.jit and nnx.jit: no-op and training step"),
}


def _run_benchmark(command: str, argv: list[str]) -> int:
    """Run a benchmark script's ``main`` with the rest of the command line.

    The script parses its own options (so ``bench --help`` lists them). It prints its
    results and writes files only when given ``--out DIR`` or ``--save``.
    """
    script = BENCHMARKS[command][0]
    path = Path(__file__).resolve().parent.parent / "benchmarks" / script
    if not path.exists():
        print(f"{path} not found: the benchmarks live in the source checkout", file=sys.stderr)
        return 2
    import importlib.util

    # The name the scripts use when they load each other, so each is loaded once.
    name = f"specgraph_bench_{path.stem}"
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    result = module.main(argv, prog=f"python -m specgraph {command}")
    return result if isinstance(result, int) else 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in BENCHMARKS:
        return _run_benchmark(argv[0], argv[1:])
    parser = argparse.ArgumentParser(
        prog="python -m specgraph",
        epilog="`python -m specgraph COMMAND --help` lists a benchmark's options.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("demo", help="flatten an example model, compare generic vs specialized, explain")
    for command, (script, summary) in BENCHMARKS.items():
        sub.add_parser(command, help=f"{summary} (benchmarks/{script})")
    args = parser.parse_args(argv)
    assert args.command == "demo"  # the benchmarks were dispatched above
    return demo()


if __name__ == "__main__":
    raise SystemExit(main())
