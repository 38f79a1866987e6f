"""Filter lists: they partition, first match wins, and ``...``/``True`` only come last.

Both anchors (``nnx.state`` / ``nnx.split`` / ``filter_state`` and BrainState's
``states`` / ``treefy_split`` / ``NestedDict.filter``) give each value to the first
filter matching it, and reject a catch-all followed by another filter. The last tests
hold specgraph to what the installed anchors do on the same model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from conftest import assert_served_by
from graphs import BatchStat, Box

import specgraph as sg


def model() -> Box:
    """Params, a BatchStat, a plain State and a bare array, tied weight included."""
    w = sg.Param(np.ones(2, np.float32))
    return Box(
        enc=Box(w=w, b=sg.Param(np.zeros(2, np.float32))),
        dec=Box(w=w),
        bn=Box(mean=BatchStat(np.zeros(2, np.float32))),
        count=sg.State(np.int32(0)),
        arr=np.arange(3.0),
        d={"s": sg.State(np.float32(1))},
    )


PARAMS = [("dec", "w"), ("enc", "b")]  # the tied weight once, at its first path
STATS = [("bn", "mean")]
PLAIN = [("count",), ("d", "s")]


# -- a catch-all followed by another filter ------------------------------------------

CATCH_ALL_FIRST: list[tuple[Any, ...]] = [
    (..., sg.Param),
    (True, sg.Param),
    (sg.Param, ..., BatchStat),
    (..., True, lambda p, v: True),
]

OPERATIONS: dict[str, Callable[..., Any]] = {
    "split": lambda m, *fs: sg.split(m, *fs),
    "states": lambda m, *fs: sg.states(m, *fs),
    "pop_states": lambda m, *fs: sg.pop_states(m, *fs),
    "StateMap.split": lambda m, *fs: sg.flatten(m)[1].split(*fs),
    "StateMap.filter": lambda m, *fs: sg.flatten(m)[1].filter(*fs),
}


@pytest.mark.parametrize("filters", CATCH_ALL_FIRST, ids=["ellipsis", "true", "middle", "two"])
@pytest.mark.parametrize("op", list(OPERATIONS))
def test_a_filter_after_a_catch_all_is_an_error(served_by: str, op: str, filters: tuple) -> None:
    m = model()
    for _ in range(2):
        sg.flatten(m)
    before = sg.generic.flatten(m)
    with pytest.raises(ValueError, match=r"can only come last.*could never match"):
        OPERATIONS[op](m, *filters)
    after = sg.generic.flatten(m)
    assert after[0] == before[0] and after[1] == before[1]  # pop_states removed nothing
    assert_served_by(served_by)


@pytest.mark.parametrize("op", list(OPERATIONS))
def test_catch_alls_may_repeat_at_the_end(served_by: str, op: str) -> None:
    """As in both anchors: (Param, ..., True) is fine; the second catch-all gets nothing."""
    out = OPERATIONS[op](model(), sg.Param, ..., True)
    parts = out[1:] if op == "split" else out
    assert len(parts) == 3
    assert len(parts[0]) == len(PARAMS) and len(parts[2]) == 0


# -- first match wins ---------------------------------------------------------------


def test_states_partition_first_match_wins(served_by: str) -> None:
    m = model()
    for _ in range(2):
        sg.flatten(m)
    everything, params = sg.states(m, sg.State, sg.Param)  # every Param is a State
    assert list(everything) == sorted(PARAMS + STATS + PLAIN)
    assert params == {}
    params, stats = sg.states(m, sg.Param, BatchStat)  # not exhaustive: the rest is left out
    assert list(params) == PARAMS and list(stats) == STATS
    assert params[("dec", "w")] is m.enc.w
    one = sg.states(m, BatchStat)
    assert type(one) is dict and list(one) == STATS  # one filter: one dict, not a tuple
    by_path = sg.states(m, lambda p, v: p[0] == "enc", sg.Param)
    assert list(by_path[0]) == [("enc", "b")]  # the tied weight is first reached at dec.w
    assert list(by_path[1]) == [("dec", "w")]
    assert_served_by(served_by)


def test_statemap_filter_partitions(served_by: str) -> None:
    m = model()
    sg.flatten(m)
    _, sm = sg.flatten(m)
    states, params = sm.filter(sg.State, sg.Param)
    assert list(states) == sorted(PARAMS + STATS + PLAIN) and len(params) == 0
    arrays, rest = sm.filter(sg.Not(sg.State), ...)
    assert list(arrays) == [("arr",)] and len(rest) == len(sm) - 1
    assert rest[("enc", "b")] is m.enc.b.value
    assert_served_by(served_by)


def test_pop_states_partitions_and_returns_only_what_it_removed(served_by: str) -> None:
    m = model()
    for _ in range(2):
        sg.flatten(m)
    mean = m.bn.mean.value
    states, params = sg.pop_states(m, sg.State, sg.Param)
    assert list(states) == sorted(PARAMS + STATS + PLAIN) and len(params) == 0
    assert states[("bn", "mean")] is mean
    assert sg.states(m) == {}
    assert list(sg.generic.flatten(m)[1]) == [("arr",)]  # the bare array stays
    m = model()
    popped = sg.pop_states(m, ...)
    assert ("arr",) not in popped  # a bare array is not a State: it is neither popped nor returned
    assert list(popped) == sorted(PARAMS + STATS + PLAIN)
    assert list(sg.generic.flatten(m)[1]) == [("arr",)]


def test_split_partitions_and_must_cover_everything(served_by: str) -> None:
    m = model()
    for _ in range(2):
        sg.flatten(m)
    gd, states, params, rest = sg.split(m, sg.State, sg.Param, ...)
    assert list(states) == sorted(PARAMS + STATS + PLAIN) and len(params) == 0
    assert list(rest) == [("arr",)]
    assert sg.generic.flatten(sg.merge(gd, states, params, rest))[0] == gd
    with pytest.raises(ValueError, match="not exhaustive"):
        sg.split(m, sg.Param, BatchStat)
    assert_served_by(served_by)


# -- the anchors do the same --------------------------------------------------------


def _as_tuple(x: Any) -> tuple:
    return x if isinstance(x, tuple) else (x,)


def test_states_partition_like_flax_nnx() -> None:
    """The same NNX module, the same filters: the same parts, paths and Variables."""
    nnx = pytest.importorskip("flax.nnx")

    class Net(nnx.Module):
        def __init__(self) -> None:
            self.w = nnx.Param(np.ones(2, np.float32))
            self.mean = nnx.BatchStat(np.zeros(2, np.float32))
            self.count = nnx.Variable(np.int32(0))

    net = Net()
    for filters in [
        (nnx.Variable, nnx.Param),
        (nnx.Param, nnx.BatchStat),
        (nnx.BatchStat,),
        (nnx.Param, ...),
        (nnx.Param, ..., True),
    ]:
        theirs = _as_tuple(nnx.state(net, *filters))
        ours = _as_tuple(sg.states(net, *filters))
        assert len(ours) == len(theirs)
        for t, o in zip(theirs, ours, strict=True):
            assert [p for p, _ in nnx.to_flat_state(t)] == list(o)
    for filters in [(..., nnx.Param), (True, nnx.Param)]:
        with pytest.raises(ValueError):
            nnx.state(net, *filters)
        with pytest.raises(ValueError, match="can only come last"):
            sg.states(net, *filters)


def test_states_partition_like_brainstate() -> None:
    """The same BrainState node, the same filters: the same parts and State objects."""
    brainstate = pytest.importorskip("brainstate")

    class Net(brainstate.graph.Node):
        def __init__(self) -> None:
            self.w = brainstate.ParamState(np.ones(2, np.float32))
            self.h = brainstate.ShortTermState(np.zeros(2, np.float32))
            self.tied = self.w

    net = Net()
    for filters in [
        (brainstate.State, brainstate.ParamState),
        (brainstate.ParamState, brainstate.ShortTermState),
        (brainstate.ShortTermState,),
        (brainstate.ParamState, ...),
    ]:
        theirs = _as_tuple(brainstate.graph.states(net, *filters))
        ours = _as_tuple(sg.states(net, *filters))
        assert len(ours) == len(theirs)
        for t, o in zip(theirs, ours, strict=True):
            assert list(t) == list(o)
            assert all(t[p] is o[p] for p in o)
    for filters in [(..., brainstate.ParamState), (True, brainstate.ParamState)]:
        with pytest.raises(ValueError):
            brainstate.graph.states(net, *filters)
        with pytest.raises(ValueError, match="can only come last"):
            sg.states(net, *filters)
