"""The first build of a process: templates from their precompiled modules, or from source.

Usage::

    python benchmarks/first_build.py [--repeats 7] [--layers 32] [--bytecode]

Each run is a fresh ``python`` process that imports specgraph, builds an MLP (``--layers``
Linear layers of width 8) and times its first ``sg.flatten``: the reference walk plus the
build of its flatten and update functions, with the jinja2 templates loaded on the way
(``codegen/template_loader.py``). ``precompiled`` is the package as it is; ``source``
swaps in an environment that compiles the templates from their sources, as jinja2's
``PackageLoader`` does (what every process paid before the modules were shipped). The two
alternate; min and median of the repeats, in milliseconds, of the first flatten and of
``sg.cache_info()["compile_seconds"]``. ``--bytecode`` lets the child processes use and
write ``__pycache__`` even when ``PYTHONDONTWRITEBYTECODE`` is set (an installed package has
its bytecode compiled at install time). Prints one table; writes no file but bytecode.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent

CHILD = """
import json, sys, time
sys.path.insert(0, {here!r})
import jinja2
import models
import specgraph as sg
from specgraph.codegen import pipeline
m = models.build_mlp(models.FAMILIES["specgraph"], {layers}, 8)
if {source}:
    pipeline._env = pipeline.make_environment(jinja2.PackageLoader("specgraph", "templates"))
t0 = time.perf_counter()
sg.flatten(m)
t1 = time.perf_counter()
assert sg.cache_info()["compiled_variants"] == 1
print(json.dumps({{"first_ms": (t1 - t0) * 1e3, "compile_ms": sg.cache_info()["compile_seconds"] * 1e3,
                  "bytecode": not sys.dont_write_bytecode}}))
"""


def _child(source: bool, layers: int, bytecode: bool) -> dict[str, float]:
    env = dict(os.environ)
    if bytecode:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
    code = CHILD.format(here=str(HERE), layers=layers, source=source)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/first_build.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--bytecode", action="store_true", help="let the children use __pycache__")
    args = p.parse_args(argv)
    runs: dict[str, list[dict[str, float]]] = {"precompiled": [], "source": []}
    if args.bytecode:
        _child(False, args.layers, True)  # the modules' bytecode written once
    for _ in range(args.repeats):
        for mode in runs:
            runs[mode].append(_child(mode == "source", args.layers, args.bytecode))
    bytecode = runs["precompiled"][0]["bytecode"]
    print(f"first sg.flatten of MLP-{args.layers} in a fresh process, ms; {args.repeats} runs each, "
          f"bytecode cache {'on' if bytecode else 'off (PYTHONDONTWRITEBYTECODE)'}\n")
    print("| templates | first flatten min | median | compile_seconds min | median |")
    print("|---|---:|---:|---:|---:|")
    for mode, rs in runs.items():
        first = [r["first_ms"] for r in rs]
        comp = [r["compile_ms"] for r in rs]
        print(f"| {mode} | {min(first):.1f} | {statistics.median(first):.1f} | {min(comp):.1f} | "
              f"{statistics.median(comp):.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
