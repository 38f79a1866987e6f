"""Nesting as deep as the walker goes (10 000): nothing on the way recurses.

GraphDef ``==`` / ``hash`` / ``repr``, ``sg.jit``'s argument and output checks and
``pop_states`` all meet the same deep structures the walker flattens.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import Any

import jax.numpy as jnp
import numpy as np
import pytest
from graphs import Box, chain

import specgraph as sg
from specgraph._ir import GraphDef

DEPTH = 10_000


def nested_lists(depth: int, leaf: Any) -> list:
    x: Any = [leaf]
    for _ in range(depth):
        x = [x, 1]
    return x


def nested_dicts(depth: int, leaf: Any) -> dict:
    x: Any = {"a": leaf}
    for _ in range(depth):
        x = {"a": x, "b": 1}
    return x


def bottom_of(x: Any) -> tuple[Any, int]:
    """The innermost item of ``nested_lists`` / ``nested_dicts`` and the depth it sits at."""
    n = 0
    while True:
        if isinstance(x, list) and len(x) == 2:
            x, n = x[0], n + 1
        elif isinstance(x, dict) and len(x) == 2:
            x, n = x["a"], n + 1
        else:
            return (x[0] if isinstance(x, list) else x["a"]), n


@pytest.mark.parametrize("make", [nested_lists, nested_dicts], ids=["lists", "dicts"])
def test_graphdef_equality_hash_and_repr_of_deep_pytrees(impl, make) -> None:
    assert sys.getrecursionlimit() < DEPTH  # the test means something
    node = Box(deep=make(DEPTH, np.ones(1)), p=sg.Param(np.zeros(1)))
    gd, _ = impl.flatten(node)
    ref, _ = sg.generic.flatten(node)  # a distinct object: == compares item by item
    assert gd is not ref
    assert gd == ref
    assert hash(gd) == hash(ref)
    other, _ = sg.generic.flatten(Box(deep=make(DEPTH, np.ones(1)), p=sg.Param(np.zeros(1), tag=1)))
    assert gd != other  # the difference is at the top; the deep part still compares equal
    deeper, _ = sg.generic.flatten(Box(deep=make(DEPTH + 1, np.ones(1)), p=sg.Param(np.zeros(1))))
    assert gd != deeper
    text = repr(gd)
    assert text.count("PytreeEdge(") == DEPTH + 1
    assert text.startswith("GraphDef(type=Box")


def test_graphdef_equality_of_deep_static_tuples(impl) -> None:
    """A tuple of statics collapses into one static: a deep one still compares and prints."""
    x: Any = (1,)
    for _ in range(DEPTH):
        x = (x, 1)
    gd, _ = impl.flatten(Box(deep=x))
    y: Any = (1,)
    for _ in range(DEPTH):
        y = (y, 1)
    ref, _ = sg.generic.flatten(Box(deep=y))
    assert gd == ref and hash(gd) == hash(ref)
    assert "nested too deeply to print" in repr(gd)


def test_a_graphdef_built_without_a_nesting_bound_hashes_alike() -> None:
    """The walker hands the GraphDef a bound on the nesting; one built without it (as
    unpickling does) must hash alike, shallow or deep, else equal keys would miss."""
    for node in (
        Box(deep=nested_lists(DEPTH, np.ones(1))),
        Box(deep=nested_lists(3, np.ones(1))),
        chain(DEPTH),
        Box(layers=[Box(p=sg.Param(np.zeros(1))) for _ in range(3)]),
    ):
        gd, _ = sg.generic.flatten(node)
        bare = GraphDef(gd.root, gd.table, gd.pathtable)
        assert bare == gd and hash(bare) == hash(gd)


def test_deep_graphdef_hash_in_a_thread_with_a_small_stack() -> None:
    """CPython's tuple hash recurses on the C stack without limit: 10 000 nested lists
    crashed a thread with a 512 KiB stack (the default for threads on macOS)."""
    script = textwrap.dedent(
        f"""
        import threading
        import numpy as np
        import specgraph as sg

        class Box(sg.Node):
            pass

        x = [np.ones(1)]
        for _ in range({DEPTH}):
            x = [x, 1]
        b = Box()
        b.deep = x
        gd = sg.generic.flatten(b)[0]
        twin = sg.generic.flatten(b)[0]
        out = []
        threading.stack_size(512 * 1024)
        t = threading.Thread(target=lambda: out.append((hash(gd) == hash(twin), gd == twin)))
        t.start()
        t.join()
        print(out)
        """
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "[(True, True)]"


def test_jit_with_deep_arguments_and_output() -> None:
    node = Box(deep=nested_lists(DEPTH, np.ones(1)), p=sg.Param(np.zeros(1)))
    arg = nested_lists(DEPTH, np.full(1, 2.0))

    @sg.jit
    def step(m: Box, lst: list) -> tuple:
        m.p.value = m.p.value + bottom_of(lst)[0]
        return lst, m.deep

    for _ in range(2):
        out = step(node, arg)
    assert step.trace_count == 1
    np.testing.assert_array_equal(node.p.value, [4.0])
    leaf, n = bottom_of(out[1])
    assert n == DEPTH
    np.testing.assert_array_equal(leaf, [1.0])


def test_grad_through_deep_arguments() -> None:
    node = Box(deep=nested_lists(DEPTH, np.full(1, 3.0)), p=sg.Param(np.ones(1)))
    g = sg.grad(lambda m: jnp.sum(m.p.value * bottom_of(m.deep)[0]))(node)
    np.testing.assert_array_equal(g[("p",)], [3.0])


@pytest.mark.repeats
def test_pop_states_from_deep_dicts_and_a_deep_chain(impl) -> None:
    deep = Box(deep=nested_dicts(DEPTH, sg.Param(np.ones(1))), q=sg.Param(np.zeros(1)))
    impl.flatten(deep)
    popped = sg.pop_states(deep, sg.Param)
    assert len(popped) == 2
    inner, n = deep.deep, 0
    while "b" in inner:
        inner, n = inner["a"], n + 1
    assert n == DEPTH and inner == {}  # the innermost dict lost its Param
    assert "q" not in vars(deep)
    assert sg.generic.flatten(deep)[1] == sg.StateMap.from_items({})

    # A chain deeper than the recursion limit, not 10 000: the popped map's paths are
    # tuples as long as the chain is deep (50 million keys in all at 10 000).
    depth = 2000
    root = chain(depth)
    impl.flatten(root)
    popped = sg.pop_states(root, sg.Param)
    assert len(popped) == depth and popped[("p",)] == 0
    assert sg.states(root) == {}


def test_pop_states_names_the_deep_path_it_cannot_pop() -> None:
    node = Box(deep=nested_lists(DEPTH, sg.Param(np.ones(1))))
    with pytest.raises(ValueError, match=r"cannot pop the state at path \('deep', 0, 0, 0"):
        sg.pop_states(node, sg.Param)
    assert isinstance(bottom_of(node.deep)[0], sg.Param)  # nothing was removed
