"""What the path-key guard of a custom pytree costs (``guard_pytree_keys``).

A class registered with a keys function (``jax.tree_util.register_pytree_with_keys``) may
name its children from instance data its treedef does not hold: the generated flatten
guards those keys. JAX does not tell whether a class has a keys function, so every custom
pytree but JAX's namedtuples, ``OrderedDict`` and ``defaultdict`` (keys fixed by the
treedef) is loaded by ``PT_LEVEL`` (``_registry.pytree_level_keyed``: one jaxlib call
reading its children, their keys and its aux data, each checked) instead of
``ONE_LEVEL`` and a treedef compare.

Two tables, measured side by side in this process (min of ``--repeats`` rounds):

1. per call, one level of one object of each kind (``--kinds``): the load and treedef compare
   of the code before (``pytree_level``), that plus a separate key guard
   (``same_pytree_keys``), the load since (``pytree_level_keyed``), the reference walker's
   read (``pytree_children``), and jaxlib's ``flatten_one_level`` /
   ``flatten_one_level_with_keys``;
2. the generated flatten of a model of ``--layers`` layers, each holding one such pytree
   of two Params, without the key guard (``keys_fixed_by_treedef`` patched to say every
   treedef fixes its keys: the code before the fix) and with it (``PT_LEVEL``), both called
   directly in interleaved rounds, unrolled (``outline_min=0``) and outlined
   (``outline_min=2``), beside ``sg.flatten`` (with it) and ``specgraph.generic.flatten``.

Usage::

    python benchmarks/pytree_keys_guard.py [--kinds pair keyed dc nt] [--layers 32] [--repeats 7]
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

import specgraph as sg
import specgraph.generic as generic
from specgraph import _registry as reg
from specgraph.runtime import dispatch


class Pair:
    """Registered without a keys function (its keys: 0, 1)."""

    def __init__(self, a: Any, b: Any) -> None:
        self.a, self.b = a, b


jax.tree_util.register_pytree_node(Pair, lambda p: ((p.a, p.b), None), lambda _, ch: Pair(*ch))


class Keyed:
    """Registered with a keys function naming its children from an attribute."""

    def __init__(self, names: tuple[str, ...], vals: tuple[Any, ...]) -> None:
        self.names, self.vals = names, vals


jax.tree_util.register_pytree_with_keys(
    Keyed,
    lambda x: (tuple((jax.tree_util.DictKey(n), v) for n, v in zip(x.names, x.vals, strict=True)), None),
    lambda _, ch: Keyed(("?",) * len(ch), tuple(ch)),
    lambda x: (tuple(x.vals), None),
)


@dataclasses.dataclass
class DC:
    w: Any
    b: Any


jax.tree_util.register_dataclass(DC, data_fields=["w", "b"], meta_fields=[])

WB = collections.namedtuple("WB", "w b")

MAKERS: dict[str, Callable[[Any, Any], Any]] = {
    "pair": Pair, "keyed": lambda a, b: Keyed(("w", "b"), (a, b)), "dc": DC, "nt": WB,
}


class Layer(sg.Node):
    def __init__(self, p: Any) -> None:
        self.p = p


class Model(sg.Node):
    def __init__(self, kind: str, n: int) -> None:
        make = MAKERS[kind]
        self.layers = [Layer(make(sg.Param(np.float32(i)), sg.Param(np.float32(-i)))) for i in range(n)]


class Unguarded(Model):
    """The same model under another root class: its code compiled without the key guard, so
    both functions stay valid side by side (a cache clear between them would void the first)."""


def per_call(fn: Callable[[], Any], repeats: int, inner: int = 2000) -> float:
    """Seconds per call: min over ``repeats`` rounds of ``inner`` calls."""
    out = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(inner):
            fn()
        out = min(out, (time.perf_counter() - t) / inner)
    return out


def one_level(kinds: list[str], repeats: int) -> None:
    one, with_keys = jax.tree_util.default_registry.flatten_one_level, \
        jax.tree_util.default_registry.flatten_one_level_with_keys
    print("per call, one level (µs): the load before the fix (pytree_level, then the treedef's !=), "
          "that load plus a separate key guard, the load since (pytree_level_keyed: children, keys "
          "and aux data checked in one jaxlib call), the reference walker's read, jaxlib's own")
    print(f"{'kind':6} {'fixed':>5} {'before':>7} {'+keys':>7} {'keyed':>7} {'children':>8} {'one_level':>9} "
          f"{'with_keys':>9}")
    for kind in kinds:
        x = MAKERS[kind](np.float32(1), np.float32(2))
        td, keys, _ = reg.pytree_children(x)
        fixed = reg.keys_fixed_by_treedef(td)
        aux = td.node_data()[1]

        def before(x: Any = x, td: Any = td) -> bool:
            return reg.pytree_level(x)[1] != td

        row = [per_call(before, repeats)]
        if fixed:  # (JAX's one-level-with-keys misnames a namedtuple's children: not read)
            row += [float("nan"), float("nan")]
        else:
            row += [per_call(lambda x=x, k=keys: before(x) or reg.same_pytree_keys(x, k), repeats),
                    per_call(lambda x=x, k=keys, a=aux: reg.pytree_level_keyed(x, k, a), repeats)]
        row += [per_call(lambda x=x: reg.pytree_children(x), repeats), per_call(lambda x=x: one(x), repeats),
                per_call(lambda x=x: with_keys(x), repeats)]
        cells = " ".join(f"{v * 1e6:{w}.2f}" for v, w in zip(row, (7, 7, 7, 8, 9, 9), strict=True))
        print(f"{kind:6} {fixed!s:>5} {cells}")


def whole(kinds: list[str], layers: int, repeats: int) -> None:
    print(f"\ngenerated flatten of {layers} layers each holding one pytree of two Params (µs per call;"
          " the two generated functions called directly, interleaved rounds)")
    print(f"{'kind':6} {'outline':>7} {'no guard':>9} {'guard':>8} {'ratio':>6} {'sg.flatten':>10} "
          f"{'generic':>8}")
    real = reg.keys_fixed_by_treedef
    for kind in kinds:
        for om in (0, 2):
            sg.configure(outline_min=om)
            sg.clear_cache()
            fns: list[Callable[[Any], Any]] = []
            for patched in (True, False):  # without the key guard (the code before), then with it
                reg.keys_fixed_by_treedef = (lambda td: True) if patched else real  # type: ignore[assignment]
                m = Model(kind, layers)
                m.__class__ = Unguarded if patched else Model
                sg.flatten(m)
                h = sg.cache_info()["hits"]
                gd, _ = sg.flatten(m)
                assert sg.cache_info()["hits"] == h + 1, (kind, om, "not specialized")
                var = dispatch.variant_for(gd)
                assert var is not None and type(var.flatten(m)) is not str
                fns.append(lambda x, f=var.flatten, mm=m: f(mm))
            reg.keys_fixed_by_treedef = real  # type: ignore[assignment]
            for fn in fns:
                assert type(fn(None)) is not str
            best = [float("inf")] * 4
            for _ in range(repeats):
                for i, fn in enumerate((*fns, sg.flatten)):
                    best[i] = min(best[i], per_call(lambda fn=fn, m=m: fn(m), 1, 300))
                best[3] = min(best[3], per_call(lambda m=m: generic.flatten(m), 1, 20))
            t0, t1, t2, g = best
            print(f"{kind:6} {om:7d} {t0 * 1e6:9.1f} {t1 * 1e6:8.1f} {t1 / t0:6.2f} {t2 * 1e6:10.1f} "
                  f"{g * 1e6:8.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kinds", nargs="+", default=list(MAKERS), choices=list(MAKERS))
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    one_level(args.kinds, args.repeats)
    whole(args.kinds, args.layers, args.repeats)


if __name__ == "__main__":
    main()
