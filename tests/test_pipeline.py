"""The one compile path's housekeeping: the cyclic GC is paused while a structure is
built, and left exactly as it was found (on success, on a decline, when nested)."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from graphs import Box, Linear

import specgraph as sg
from specgraph import codegen
from specgraph.codegen import pipeline


@pytest.fixture
def gc_restored() -> Iterator[None]:
    was = gc.isenabled()
    yield
    if was:
        gc.enable()
    else:
        gc.disable()


def _graphdef() -> sg.GraphDef:
    gd, _ = sg.generic.flatten(Box(layers=[Linear(2, 3), Linear(3, 1)], x=np.ones(2), n=3))
    return gd


def _spy_render(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    seen: list[bool] = []
    render = pipeline.render

    def spy(*args: Any, **kwargs: Any) -> str:
        seen.append(gc.isenabled())
        return render(*args, **kwargs)

    monkeypatch.setattr(pipeline, "render", spy)
    return seen


@pytest.mark.parametrize("kind", codegen.KINDS)
def test_the_collector_is_off_during_a_build_and_back_on_after(
        kind: str, monkeypatch: pytest.MonkeyPatch, gc_restored: None) -> None:
    seen = _spy_render(monkeypatch)
    gc.enable()
    built = codegen.build(kind, _graphdef(), max_steps=10_000)
    assert callable(built.fn)
    assert seen == [False]
    assert gc.isenabled()


def test_a_collector_the_user_turned_off_stays_off(
        monkeypatch: pytest.MonkeyPatch, gc_restored: None) -> None:
    seen = _spy_render(monkeypatch)
    gc.disable()
    codegen.build("flatten", _graphdef(), max_steps=10_000)
    assert seen == [False]
    assert not gc.isenabled()


def test_a_declined_build_turns_the_collector_back_on(gc_restored: None) -> None:
    gc.enable()
    with pytest.raises(codegen.Declined):
        codegen.build("flatten", _graphdef(), max_steps=0)
    assert gc.isenabled()


def test_only_the_outermost_pause_turns_it_back_on(gc_restored: None) -> None:
    gc.enable()
    with pipeline.gc_paused():
        with pipeline.gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()


class _ClaimsEqualityMeta(type):
    """A metaclass whose classes claim to equal every class and hash like ``sg.Param``."""

    def __eq__(cls, other: object) -> bool:
        return True

    def __hash__(cls) -> int:
        return hash(sg.Param)


class _GetattrParam(sg.State, metaclass=_ClaimsEqualityMeta):
    """Equal to Param by its metaclass's word, but it has a __getattr__ (user code)."""

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(name)


class _SetattrParam(sg.State, metaclass=_ClaimsEqualityMeta):
    """Equal to Param by its metaclass's word, but it has a __setattr__ of its own."""

    __slots__ = ()

    def __setattr__(self, name: str, v: Any) -> None:
        object.__setattr__(self, name, v)


@pytest.mark.parametrize("first", [True, False])
def test_class_reads_are_once_per_class_not_per_equal_class(first: bool) -> None:
    """The analyses read each class once: a class claiming to equal Param (and hashing
    alike) is still read for itself, before or after a Param."""
    from specgraph import _registry as reg
    from specgraph._ir import NodeSpec
    from specgraph.codegen import classfacts

    def structure(odd: Any) -> sg.GraphDef:
        parts = {"p": sg.Param(np.ones(2)), "q": odd}
        if not first:
            parts = {"a": odd, "z": sg.Param(np.ones(2))}
        return sg.generic.flatten(Box(**parts))[0]

    plain = structure(sg.Param(np.zeros(2)))
    assert classfacts.flatten_runs_no_user_code(plain)
    gd = structure(_GetattrParam(np.zeros(2)))
    assert not classfacts.flatten_runs_no_user_code(gd)
    gd = structure(_SetattrParam(np.zeros(2)))
    impls = {s.index: reg.node_impl(s.type) for s in gd.table if type(s) is NodeSpec}
    assert not classfacts.unflatten_runs_no_user_code(gd, impls)


@pytest.mark.parametrize("disabled", [frozenset(), frozenset({"container"}), frozenset({"type", "distinct"})])
def test_shared_step_texts_are_the_texts_rendered_alone(disabled: frozenset[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """flatten, update and collect of one plan share each step's text: each source is
    the one rendered with nothing shared (also with guard kinds left out, whose steps
    are made anew per render)."""
    gd = _graphdef()
    plan = codegen.plan_flatten(gd, 10_000)
    with monkeypatch.context() as m:
        m.setattr(pipeline, "_step_texts", lambda plan: pipeline._step_text)  # nothing shared
        alone = {kind: pipeline.render(kind, plan, disabled) for kind in ("flatten", "update", "collect")}
    for order in (("flatten", "update", "collect"), ("collect", "update", "flatten")):
        codegen.forget_all()
        for kind in order:
            assert pipeline.render(kind, plan, disabled) == alone[kind]
    other = codegen.plan_flatten(_graphdef(), 10_000)  # another plan of the same structure
    assert pipeline.render("update", other, disabled) == alone["update"]


_DIES_UNDER_THE_LOCK = """
import weakref
from specgraph.codegen import pipeline

class Obj:
    pass

fn, plan = Obj(), Obj()
weakref.finalize(fn, pipeline._unregister, "<specgraph flatten X #0>")
pipeline._step_texts(plan)  # (its texts' cache holds a weakref to plan, calling _drop_texts)
with pipeline._lock:  # as while a source is registered or a GC pause ends
    del fn, plan  # both die here, in this thread: their callbacks take the lock too
print("done")
"""


def test_a_generated_function_dying_under_the_lock_does_not_deadlock() -> None:
    """The cleanup callbacks (a unit's source unregistered, a plan's texts dropped) run
    wherever the last reference goes or the collector runs: possibly in this very thread
    while it holds the pipeline's lock. In a subprocess: a deadlock there is a timeout."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _DIES_UNDER_THE_LOCK], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "done", out.stderr
