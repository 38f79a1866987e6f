"""Shared fixtures: every behaviour test runs through both implementations.

``impl`` is parametrized over the reference walker (``specgraph.generic``), the
public, specialized path (``specgraph.flatten`` & co. after a warm-up call, so the
second call is served by generated code when the structure allows it), and that path
with repeated substructures outlined (one function per shape, see codegen/shapes.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

import specgraph as sg
from specgraph.runtime.cache import CONFIG

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


@pytest.fixture
def outlined() -> Iterator[None]:
    """Every repeated substructure outlined (``outline_min=2``), on a fresh cache, for the
    tests of outlined code itself."""
    saved = CONFIG.outline_min
    sg.configure(outline_min=2)
    sg.clear_cache()
    try:
        yield
    finally:
        CONFIG.outline_min = saved
        sg.clear_cache()


def outlined_hits() -> int:
    """Calls (flatten, update, collect, unflatten) answered so far by compiled code that is
    outlined (an outlined function or builder, a loop over a list of one shape, a chain loop)."""
    return outlined_flatten_hits() + outlined_unflatten_hits()


def outlined_flatten_hits() -> int:
    """:func:`outlined_hits` of flatten, update and collect."""
    from specgraph.runtime import dispatch

    n = 0
    for entry in list(dispatch._types.values()):
        for var in entry.variants:
            if var.plan.outlined:
                n += var.stats.hits + var.stats.update_hits + var.stats.walk_hits
    return n


def outlined_unflatten_hits() -> int:
    """:func:`outlined_hits` of the unflatten: calls answered by compiled unflattens with
    an outlined builder or a loop."""
    from specgraph.runtime import dispatch

    n = 0
    for key, built in list(dispatch._unflat.items()):
        plan = built.plan if built is not None else None
        if plan is not None and (plan.shape_fns or plan.loops):
            stats = dispatch._stats.get(key)
            n += stats.unflatten_hits if stats is not None else 0
    return n


_OUTLINE_REPORT = os.environ.get("SPECGRAPH_OUTLINE_REPORT")  # a file: which outlined tests outlined


@pytest.fixture(params=["generic", "specialized", "outlined"])
def impl(request: pytest.FixtureRequest) -> Any:
    """``outlined``: the specialized path with every repeated substructure (met twice or
    more) generated as one function called per occurrence (``outline_min=2``): flatten,
    update and collect, and the unflatten's builders and loops. A test marked ``repeats``
    must have been served by outlined code there (``outlined_hits``: flatten, update,
    collect and unflatten); ``SPECGRAPH_OUTLINE_REPORT=file`` lists, per outlined test, how
    many calls were."""
    from specgraph.runtime.dispatch import CONFIG

    saved = CONFIG.outline_min
    if request.param == "outlined":
        sg.configure(outline_min=2)
    try:
        yield Impl(request.param)
        if request.param == "outlined" and request.node.get_closest_marker("repeats") is not None:
            assert outlined_hits() > 0, "no call was served by outlined code"
        if _OUTLINE_REPORT and request.param == "outlined":
            with open(_OUTLINE_REPORT, "a") as f:
                f.write(f"{outlined_hits()}\t{request.node.nodeid}\n")
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


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "repeats: the test's structures repeat a substructure: its served_by fixture gets "
        "an 'outlined' variant too, which must be served by outlined code")


def path_variants(metafunc: pytest.Metafunc) -> list[str]:
    """The paths a ``served_by``/``mode`` test runs on: generic and specialized, and
    outlined too for a test marked ``repeats``."""
    names = ["generic", "specialized"]
    if metafunc.definition.get_closest_marker("repeats") is not None:
        names.append("outlined")
    return names


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "served_by" in metafunc.fixturenames:
        metafunc.parametrize("served_by", path_variants(metafunc), indirect=True)


@pytest.fixture
def served_by(request: pytest.FixtureRequest) -> Any:
    """The public operations (``sg.jit``, ``sg.states``, ``sg.split``...) served by the
    reference walker alone (specializer off), or by generated code from the first call
    on (threshold 1), and for a test marked ``repeats`` with every repeated substructure
    outlined too (``outline_min=2``; afterwards, outlined code must have served some call).
    Yields the name; the configuration is restored afterwards."""
    from specgraph.runtime.dispatch import CONFIG

    saved = (CONFIG.threshold, CONFIG.enabled, CONFIG.outline_min)
    sg.configure(enabled=request.param != "generic", threshold=1)
    if request.param == "outlined":
        sg.configure(outline_min=2)
    sg.clear_cache()
    try:
        yield request.param
        if request.param == "outlined":
            assert outlined_hits() > 0, "no call was served by outlined code"
    finally:
        sg.configure(threshold=saved[0], enabled=saved[1], outline_min=saved[2])
        sg.clear_cache()


def assert_served_by(name: str) -> None:
    """The specialized variants of a test must really have been served by generated code,
    the outlined one by outlined code."""
    info = sg.cache_info()
    served = info["hits"] + info["walk_hits"] + info["update_hits"] + info["unflatten_hits"]
    if name == "generic":
        assert served == 0 and info["compiled_variants"] == 0, info
    else:
        assert served > 0, info
    if name == "outlined":
        assert outlined_hits() > 0, "no call was served by outlined code"


def assert_stale_without(kind: str, disable: Callable[[frozenset[str]], None], build: Callable[[], Any],
                         mutate: Callable[[Any], None],
                         check: Callable[[sg.GraphDef], None] | None = None) -> None:
    """A guard kind is load-bearing: ``build()`` compiled (``check`` sees its GraphDef: the
    code under test was made), then ``mutate``-d. Without the guards of ``kind`` the stale
    variant answers (wrongly, or with an error where the reference answers); with every
    guard it is a miss, answered as the reference answers."""
    for disabled in (frozenset({kind}), frozenset()):
        disable(disabled)
        node = build()
        sg.flatten(node)
        gd, _ = sg.flatten(node)
        if check is not None:
            check(gd)
        mutate(node)
        ref = sg.generic.flatten(node)
        hits = sg.cache_info()["hits"]
        if disabled:
            try:
                got = sg.flatten(node)
            except Exception:
                continue  # (answered wrongly: an error where the reference answers)
            assert sg.cache_info()["hits"] == hits + 1, "the stale variant must have answered"
            with pytest.raises(AssertionError):
                assert_same_flatten(got, ref)
        else:
            assert_same_flatten(sg.flatten(node), ref)
            assert sg.cache_info()["hits"] == hits


@pytest.fixture
def disable() -> Iterator[Callable[[frozenset[str]], None]]:
    """Generate code without some guard kinds (``disable(frozenset({"static"}))``) for the
    test that shows those guards are load-bearing; always restored."""
    from specgraph.runtime import dispatch

    try:
        yield dispatch._set_disabled_guards
    finally:
        dispatch._set_disabled_guards(frozenset())
