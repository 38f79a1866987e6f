"""NNX and BrainState unflatten units shared across structures (codegen/shared.py).

An NNX or BrainState structure after another of its shape binds the builders and loops
compiled for the first; they take the call's contexts (NNX's TraceState, BrainState's
tracer) as parameters, so every object one call makes shares that call's contexts, and
each call has its own, as the reference builds them. NNX and BrainState units are never
each other's.
"""

from __future__ import annotations

from typing import Any

import pytest
from conftest import assert_same_flatten

pytest.importorskip("flax")
pytest.importorskip("brainstate")

import brainstate
import jax
import numpy as np
from test_outline_foreign import AttrMLP, BChain, BstMLP, DataMLP, ListMLP, NChain, _same_internals

import specgraph as sg
from specgraph.runtime import dispatch


class BstAttrs(brainstate.nn.Module):
    """BrainState Linears as attributes: one builder, called per occurrence."""

    def __init__(self, n: int) -> None:
        super().__init__()
        for i in range(n):
            setattr(self, f"l{i:02d}", brainstate.nn.Linear(2, 2))


MAKERS = {"nnx.List": ListMLP, "nnx data list": DataMLP, "nnx attrs": AttrMLP, "nnx chain": NChain,
          "brainstate list": BstMLP, "brainstate attrs": BstAttrs, "brainstate chain": BChain}


def _units() -> tuple[int, int]:
    info = sg.cache_info()
    return info["outlined_units_compiled"], info["outlined_units_reused"]


def _unflattened(node: Any) -> tuple[Any, tuple[int, int], str]:
    """Specialize ``node``'s structure, unflatten twice (the second call by compiled code),
    checked against the reference (the very statics and metadata, the contexts one per call
    and the call's own); the units compiled and reused by its unflatten; its source."""
    sg.flatten(node)
    gd, state = sg.flatten(node)
    before = _units()
    sg.unflatten(gd, state)
    hits = sg.cache_info()["unflatten_hits"]
    out = sg.unflatten(gd, state)
    assert sg.cache_info()["unflatten_hits"] == hits + 1
    after = _units()
    ref = sg.generic.unflatten(gd, state)
    assert_same_flatten(sg.generic.flatten(out), sg.generic.flatten(ref))
    _same_internals(out, ref)
    again = sg.unflatten(gd, state)  # another call: its own contexts
    _same_internals(again, sg.generic.unflatten(gd, state))
    return out, (after[0] - before[0], after[1] - before[1]), dispatch._unflat[gd].source


@pytest.mark.parametrize("layout", sorted(MAKERS))
def test_the_second_structure_binds_the_first_s_units_with_its_contexts(outlined: None, layout: str) -> None:
    make = MAKERS[layout]
    _, (compiled, _), _ = _unflattened(make(4))
    _, (c, r), src = _unflattened(make(6))
    assert compiled > 0 and c == 0 and r > 0, (compiled, c, r)
    assert "compiled for an earlier structure, shared" in src
    if layout.startswith("nnx"):
        assert src.count("ctx0 = ") == 1  # one TraceState per call, made by the top function


def test_nnx_and_brainstate_units_are_never_each_other_s(outlined: None) -> None:
    # Both adapters loaded first: loading one registers its classes, which empties the table.
    sg.flatten(BstMLP(1))
    sg.flatten(ListMLP(1))
    _unflattened(ListMLP(4))
    _, (c, r), _ = _unflattened(BstMLP(4))
    assert c > 0 and r == 0
    _, (c, r), _ = _unflattened(BstMLP(5))
    assert c == 0 and r > 0
    _, (c, r), _ = _unflattened(DataMLP(7))
    assert r > 0


def test_a_shared_nnx_loop_in_a_jit_trace_gets_the_trace_s_context(outlined: None) -> None:
    """The call's TraceState is made by the top function inside the trace and passed to the
    shared unit: the rebuilt model may be mutated there, as the reference's."""
    _unflattened(ListMLP(3))
    m = ListMLP(6)
    _, (c, r), _ = _unflattened(m)
    assert c == 0 and r > 0
    gd, st = sg.flatten(m)

    def step(values: sg.StateMap) -> Any:
        out = sg.unflatten(gd, values)
        out.layers[3].kernel[...] = out.layers[3].kernel[...] * 2
        return sg.generic.flatten(out)[1]

    hits = sg.cache_info()["unflatten_hits"]
    got = jax.jit(step)(st)
    assert sg.cache_info()["unflatten_hits"] == hits + 1
    sg.configure(enabled=False)
    try:
        want = jax.jit(step)(st)
    finally:
        sg.configure(enabled=True)
    assert list(got.keys()) == list(want.keys())
    for k in want.keys():
        np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(want[k]))
