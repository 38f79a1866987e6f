"""Shared fixtures: every behaviour test runs through both implementations.

``impl`` is parametrized over the reference walker (``specgraph.generic``), the
public, specialized path (``specgraph.flatten`` & co. after a warm-up call, so the
second call is served by generated code when the structure allows it), and that path
with repeated substructures outlined (one function per shape, see codegen/shapes.py).
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

import specgraph as sg

settings.register_profile(
    "ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=30, deadline=None)
settings.register_profile(
    "nightly", max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


class Impl:
    """One implementation of flatten / unflatten / update."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name

    @property
    def compiled(self) -> bool:
        """Served by generated code (specialized or outlined), not the reference walker:
        tests use it for their stronger assertions (cache hits, sources, explain text)."""
        return self.name != "generic"

    def flatten(self, node: Any) -> tuple[sg.GraphDef, sg.StateMap]:
        if self.name == "generic":
            return sg.generic.flatten(node)
        sg.flatten(node)  # first call: reference walker, then specialize
        return sg.flatten(node)

    def unflatten(self, graphdef: sg.GraphDef, state: Any) -> Any:
        if self.name == "generic":
            return sg.generic.unflatten(graphdef, state)
        sg.unflatten(graphdef, state)
        return sg.unflatten(graphdef, state)

    def update(self, node: Any, *states: Any) -> None:
        if self.name == "generic":
            sg.generic.update(node, *states)
            return
        sg.flatten(node)  # make sure a specialization exists for this structure
        sg.update(node, *states)


@pytest.fixture(params=["generic", "specialized", "outlined"])
def impl(request: pytest.FixtureRequest) -> Any:
    """``outlined``: the specialized path with every repeated substructure (met twice or
    more) generated as one function called per occurrence (``outline_min=2``): flatten,
    update and collect, and the unflatten's builders and loops."""
    from specgraph.runtime.dispatch import CONFIG

    saved = CONFIG.outline_min
    if request.param == "outlined":
        sg.configure(outline_min=2)
    try:
        yield Impl(request.param)
    finally:
        CONFIG.outline_min = saved


@pytest.fixture(autouse=True)
def _fresh_caches() -> Any:
    clear = getattr(sg, "clear_cache", None)
    if clear is not None:
        clear()
    yield
    if clear is not None:
        clear()


def assert_same_flatten(a: tuple[sg.GraphDef, sg.StateMap], b: tuple[sg.GraphDef, sg.StateMap]) -> None:
    """Equal GraphDefs and hashes, the same paths, the very same value objects."""
    gd_a, sm_a = a
    gd_b, sm_b = b
    assert gd_a == gd_b
    assert hash(gd_a) == hash(gd_b)
    assert gd_a.paths == gd_b.paths
    assert list(sm_a.keys()) == list(sm_b.keys())
    va, vb = sm_a.values(), sm_b.values()
    assert len(va) == len(vb)
    for x, y in zip(va, vb, strict=True):
        assert x is y


def assert_matches_reference(node: Any) -> tuple[sg.GraphDef, sg.StateMap]:
    """The public (possibly specialized) flatten equals the reference walker's, twice over."""
    ref = sg.generic.flatten(node)
    assert_same_flatten(sg.flatten(node), ref)
    assert_same_flatten(sg.flatten(node), ref)
    return ref


@pytest.fixture(params=["generic", "specialized"])
def served_by(request: pytest.FixtureRequest) -> Any:
    """The public operations (``sg.jit``, ``sg.states``, ``sg.split``...) served by the
    reference walker alone (specializer off), or by generated code from the first call
    on (threshold 1). Yields the name; the configuration is restored afterwards."""
    from specgraph.runtime.dispatch import CONFIG

    saved = (CONFIG.threshold, CONFIG.enabled)
    sg.configure(enabled=request.param == "specialized", threshold=1)
    sg.clear_cache()
    try:
        yield request.param
    finally:
        sg.configure(threshold=saved[0], enabled=saved[1])
        sg.clear_cache()


def assert_served_by(name: str) -> None:
    """The specialized variant of a test must really have been served by generated code."""
    info = sg.cache_info()
    served = info["hits"] + info["walk_hits"] + info["update_hits"] + info["unflatten_hits"]
    if name == "specialized":
        assert served > 0, info
    else:
        assert served == 0 and info["compiled_variants"] == 0, info
