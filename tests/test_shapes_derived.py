"""The unflatten planner's shape scan taken from the flatten planner's (``shapes.find_shapes``
with the scan the flatten kept for the same GraphDef) finds what a scan of its own finds,
and the unflatten function generated from it is the same text.

Random graphs of ``fuzz_outline.build`` (repeated shapes, hostile statics and keys, chains
of links and of containers, callback nodes, bare arrays), mutated (ties, shared nodes,
cycles, one occurrence changed), and NNX and BrainState models."""

from __future__ import annotations

import gc
import random
import sys
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import specgraph as sg
from specgraph.codegen import analysis, pipeline, shapes
from specgraph.codegen.flatten_plan import Declined, plan_flatten
from specgraph.codegen.unflatten_plan import plan_unflatten
from specgraph.runtime.cache import CONFIG

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import fuzz_outline as fo
import models

NO_LIMIT = 10**9


def _fields(sh: shapes.Shapes) -> tuple:
    sc = sh.scan
    return (sh.shapes, sh.shape_of, sh.slot_lo, sh.key_of, list(sh.size.items()),
            (sc.user, sc.with_arrays) if sc is not None else None)


def _unflatten_source(gd: sg.GraphDef, outline_min: int) -> str:
    try:
        plan = plan_unflatten(gd, NO_LIMIT, outline_min)
    except Declined as e:
        return f"declined: {e}"
    return pipeline.render("unflatten", plan)


def check(gd: sg.GraphDef, outline_min: int) -> bool:
    """Unflatten shapes and source with and without the flatten's scan: the same. Whether
    the flatten kept one (it planned with outlining) and the derivation was taken."""
    facts = analysis.kept(gd)
    assert facts is not None
    facts.pop(shapes._FLATTEN_SCAN, None)
    own = {cb: _fields(shapes.find_shapes(gd, outline_min, set(), set(), foreign=True, by_value=False,
                                          callbacks=cb)) for cb in (False, True)}
    assert shapes._FLATTEN_SCAN not in facts  # (the unflatten's scan is not kept)
    source = _unflatten_source(gd, outline_min)
    try:
        plan_flatten(gd, NO_LIMIT, outline_min)  # keeps its scan for this GraphDef
    except Declined:
        pass
    known = facts.get(shapes._FLATTEN_SCAN)
    if known is None:
        return False
    for cb in (False, True):
        sc = shapes._Scan(gd, set(), set(), True, False, False, cb)
        derivable = shapes._derivable(sc, known)
        if derivable:  # the derivation itself, without its safety net (a scan of its own)
            assert _fields(shapes._find_shapes(gd, outline_min, sc, known)) == own[cb]
        got = shapes.find_shapes(gd, outline_min, set(), set(), foreign=True, by_value=False, callbacks=cb)
        assert _fields(got) == own[cb]
        assert facts.get(shapes._FLATTEN_SCAN) is known
    assert _unflatten_source(gd, outline_min) == source
    return derivable


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), mutations=st.integers(0, 4), outline_min=st.sampled_from([2, 3, 64]))
def test_the_derived_scan_of_random_graphs_is_the_unflattens_own(seed: int, mutations: int,
                                                                    outline_min: int) -> None:
    rng = random.Random(seed)
    saved = CONFIG.outline_min
    try:
        m = fo.build(rng, deep=False)
        for _ in range(mutations):
            fo.mutate(rng, m)  # (ties, shared nodes, cycles, class hooks, registrations, ...)
        gd, _ = sg.generic.flatten(m)
        check(gd, outline_min)
    finally:
        fo.unhook()
        CONFIG.outline_min = saved


def _family(name: str) -> models.Family:
    if name not in models.FAMILIES:
        pytest.skip(f"{name} is not installed")
    return models.FAMILIES[name]


@pytest.mark.parametrize("family", ["specgraph", "nnx", "brainstate"])
@pytest.mark.parametrize("build", [
    lambda f: models.build_mlp(f, 70, 4),
    lambda f: models.build_counted_mlp(f, 70, 4),
    lambda f: models.build_transformer(f, 6, 4, 8),
    lambda f: models.build_deepchain(f, 80),
    lambda f: models.build_tied(f, 4),
    lambda f: f.mlp([f.linear(4, 4, ("t", i), w=None) for i in range(3)] * 30),  # one layer 30 times
], ids=["mlp", "counted", "stack", "chain", "tied", "shared"])
def test_the_derived_scan_of_models_is_the_unflattens_own(family: str, build: Any) -> None:
    m = build(_family(family))
    gd, _ = sg.generic.flatten(m)
    assert check(gd, 3)  # (the flatten kept its scan and the derivation was taken)


def test_a_dispatched_unflatten_derives_its_scan_from_the_flatten(monkeypatch: pytest.MonkeyPatch) -> None:
    m = models.build_mlp(models.FAMILIES["specgraph"], 200, 4)
    gd, sm = sg.flatten(m)
    gd, sm = sg.flatten(m)
    scanned: list[int] = []
    inner = shapes._Scan.scan

    def scan(self: Any, spec: Any, rec: int = -1) -> Any:
        scanned.append(spec.index)
        return inner(self, spec, rec)

    monkeypatch.setattr(shapes._Scan, "scan", scan)
    sg.unflatten(gd, sm)
    sg.unflatten(gd, sm)
    assert sg.cache_info()["compiled_unflattens"] == 1
    # One Linear scanned for the 200 of one key, and the MLP itself: not every node.
    assert 0 < len(scanned) <= 5, scanned


class _Head(sg.Node):
    def __init__(self) -> None:
        self.w = sg.Param(np.ones(2, np.float32))

    def score(self, x: Any) -> Any:
        return x


class _Model(sg.Node):
    def __init__(self) -> None:
        self.heads = [_Head() for _ in range(4)]
        self.cb = self.heads[0].score  # a static reaching a node: the caches hold it weakly


def test_the_kept_scan_of_an_equal_graphdef_does_not_keep_the_users_objects_alive() -> None:
    m = _Model()
    sg.flatten(m)
    gd, _ = sg.flatten(m)  # compiled from a twin of gd (the bound method held weakly)
    (key,) = [k for k in analysis._memo.keys() if k == gd]
    assert key is not gd and shapes._FLATTEN_SCAN in analysis._memo[key]
    del key
    plan_flatten(gd, NO_LIMIT, 2)  # (as explain does) planned from the user's own GraphDef
    plan_unflatten(gd, NO_LIMIT, 2)
    assert analysis.kept(gd) is None  # the memo entry is the twin's: nothing of gd kept there
    alive = weakref.ref(m.heads[0])
    del m, gd, _
    gc.collect()
    assert alive() is None, "a kept scan held the user's GraphDef's statics"
