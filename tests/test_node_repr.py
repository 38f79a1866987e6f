"""``repr(node)``: the tree of its children, as specgraph sees them."""

from __future__ import annotations

import sys
import textwrap
from typing import Any

import numpy as np
from graphs import Bag, BatchStat, Box, chain, rich, tied

import specgraph as sg


def model() -> Box:
    w = sg.Param(np.ones((2, 3), np.float32))
    enc = Box(w=w, b=sg.Param(np.zeros(3, np.float32), tag="bias"))
    root = Box(
        enc=enc,
        dec=Box(w=w, scale=BatchStat(np.ones((), np.float32))),
        again=enc,
        blocks=[Box(), {"k": sg.State(np.int32(0)), "act": "relu"}],
        shape=(2, 3),
        table=np.arange(4.0),
        cfg={"act": "relu", "depth": 2},
        bag=Bag("b", u=sg.Param(np.float32(1))),
    )
    enc.parent = root
    return root


EXPECTED = """\
Box(
  again=Box(
    b=Param(float32[3], tag='bias'),
    parent=<Box: same as the root>,
    w=Param(float32[2, 3]),
  ),
  bag=Bag(
    u=Param(float32[]),
  ),
  blocks=[
    Box(),
    {
      'act': 'relu',
      'k': State(int32[]),
    },
  ],
  cfg={'act': 'relu', 'depth': 2},
  dec=Box(
    scale=BatchStat(float32[]),
    w=<Param: same as again.w>,
  ),
  enc=<Box: same as again>,
  shape=(2, 3),
  table=float64[4],
)"""


def test_a_node_prints_its_tree() -> None:
    assert repr(model()) == EXPECTED


def test_the_rebuilt_graph_prints_the_same(impl) -> None:
    """Sharing, cycles and types survive a round trip, so the text does too."""
    for build in (model, rich, tied):
        m = build()
        gd, sm = impl.flatten(m)
        assert repr(impl.unflatten(gd, sm)) == repr(m)
        assert str(m) == repr(m)


def test_a_deep_chain_prints_cut_at_the_class_limit() -> None:
    assert sys.getrecursionlimit() < 10_000
    lines = repr(chain(10_000)).splitlines()
    assert len(lines) == Box.repr_max_lines + 1
    assert lines[0] == "Box(" and lines[1] == "  child=Box("
    assert lines[-1].startswith("... (cut at 1000 lines: set repr_max_lines")


class Unbounded(sg.Node):
    repr_max_lines = None


def test_no_limit_prints_everything_of_a_chain_deeper_than_the_recursion_limit() -> None:
    depth = 1500
    root = cur = Unbounded()
    for i in range(depth):
        cur.p = sg.Param(np.float32(i))
        nxt = Unbounded()
        cur.child = nxt
        cur = nxt
    lines = repr(root).splitlines()
    assert len(lines) == 3 * depth + 1  # per level: "child=...(", "p=...", and a closing ")"
    assert lines[-1] == ")"
    assert lines[depth] == "  " * depth + "child=Unbounded(),"
    assert lines[depth + 1] == "  " * depth + "p=Param(float32[]),"


def test_containers_that_contain_themselves_or_share_do_not_blow_up() -> None:
    loop: list[Any] = [np.ones(1)]
    loop.append(loop)
    assert repr(Box(loop=loop)) == textwrap.dedent(
        """\
        Box(
          loop=[
            float64[1],
            <list: contains itself>,
          ],
        )"""
    )
    shared: Any = [np.ones(1)]
    for _ in range(64):  # 2**64 paths through shared lists: only the line limit stops it
        shared = [shared, shared]
    lines = repr(Box(x=shared)).splitlines()
    assert len(lines) == Box.repr_max_lines + 1


def test_a_class_with_its_own_repr_keeps_it() -> None:
    class Named(sg.Node):
        def __repr__(self) -> str:
            return "Named!"

    assert repr(Named()) == "Named!"
    assert repr(Box(n=Named())) == "Box(\n  n=Named(),\n)"  # inside a tree: the tree view
