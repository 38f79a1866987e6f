"""The runtime around the generated code: switches, knobs, counters, failures,
threads, memory, source visibility and ``explain``."""

from __future__ import annotations

import gc
import inspect
import itertools
import json
import linecache
import os
import re
import subprocess
import sys
import threading
import traceback
import warnings
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jinja2
import numpy as np
import pytest
from conftest import assert_matches_reference, assert_same_flatten

import specgraph as sg
from specgraph.codegen import pipeline
from specgraph.runtime import dispatch
from specgraph.runtime.cache import CONFIG

REPO = Path(__file__).resolve().parents[1]


class Box(sg.Node):
    def __init__(self, **attrs: Any) -> None:
        vars(self).update(attrs)


class Linear(sg.Node):
    def __init__(self, din: int = 4, dout: int = 4) -> None:
        self.w = sg.Param(np.ones((din, dout), np.float32))
        self.b = sg.Param(np.zeros((dout,), np.float32))
        self.din = din


class MLP(sg.Node):
    def __init__(self, depth: int = 3) -> None:
        self.layers = [Linear() for _ in range(depth)]
        self.act = "relu"


def p(x: float = 1.0, **meta: Any) -> sg.Param:
    return sg.Param(np.full((2,), x, np.float32), **meta)


def info() -> dict[str, Any]:
    return sg.cache_info()


@pytest.fixture
def knobs() -> Iterator[None]:
    """Restore the specializer's configuration whatever the test set."""
    saved = (CONFIG.threshold, CONFIG.max_variants, CONFIG.max_steps, CONFIG.enabled)
    try:
        yield
    finally:
        sg.configure(threshold=saved[0], max_variants=saved[1], max_steps=saved[2], enabled=saved[3])
        sg.clear_cache()


def roundtrip_generic_equal(node: Any) -> None:
    """flatten, update and unflatten through the public API agree with the reference."""
    ref = sg.generic.flatten(node)
    assert_same_flatten(sg.flatten(node), ref)
    gd, sm = ref
    sg.update(node, sm)
    assert_same_flatten(sg.generic.flatten(node), ref)
    assert_same_flatten(sg.generic.flatten(sg.unflatten(gd, sm)), ref)


# -- switching it off ------------------------------------------------------------------


def test_specialization_false_turns_it_off() -> None:
    node = MLP()
    assert info()["enabled"] is True
    with sg.specialization(False):
        assert info()["enabled"] is False
        for _ in range(3):
            roundtrip_generic_equal(node)
        i = info()
        assert i["compiled_variants"] == 0 and i["compiled_unflattens"] == 0
        assert i["hits"] == i["update_hits"] == i["unflatten_hits"] == 0
        assert i["generic_flattens"] == 3
    assert info()["enabled"] is True
    sg.flatten(node)
    sg.flatten(node)
    assert info()["hits"] == 1


def test_specialization_false_bypasses_compiled_code_and_restores_on_error() -> None:
    node = MLP()
    sg.flatten(node)
    sg.flatten(node)
    assert info()["hits"] == 1
    with pytest.raises(RuntimeError), sg.specialization(False):
        with sg.specialization(True):
            assert info()["enabled"] is True
        assert info()["enabled"] is False
        assert_same_flatten(sg.flatten(node), sg.generic.flatten(node))
        assert info()["hits"] == 1  # compiled code exists but is not used
        raise RuntimeError
    assert info()["enabled"] is True
    sg.flatten(node)
    assert info()["hits"] == 2


_CHILD = """
import json, numpy as np, specgraph as sg
class B(sg.Node):
    pass
b = B(); b.w = sg.Param(np.ones(2)); b.n = 1
sg.flatten(b); sg.flatten(b)
gd, sm = sg.flatten(b)
sg.unflatten(gd, sm); sg.unflatten(gd, sm)
i = sg.cache_info()
print(json.dumps({k: i[k] for k in ("enabled", "compiled_variants", "compiled_unflattens", "hits")}))
"""


def test_environment_variable_turns_it_off() -> None:
    values = ["0", "off", "1"]  # the last is the control: the same script does specialize
    procs = []
    for v in values:
        env = {**os.environ, "SPECGRAPH_SPECIALIZE": v, "JAX_PLATFORMS": "cpu"}
        procs.append(subprocess.Popen([sys.executable, "-c", _CHILD], env=env, cwd=REPO,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    for off in results[:-1]:
        assert off == {"enabled": False, "compiled_variants": 0, "compiled_unflattens": 0, "hits": 0}
    assert results[-1] == {"enabled": True, "compiled_variants": 1, "compiled_unflattens": 1, "hits": 2}


# -- counters --------------------------------------------------------------------------


def test_clear_cache_resets_counters_and_specializations() -> None:
    node = MLP()
    gd, sm = sg.flatten(node)
    sg.flatten(node)
    sg.update(node, sm)
    sg.unflatten(gd, sm)
    sg.unflatten(gd, sm)
    node.act = "gelu"
    sg.flatten(node)
    i = info()
    assert i["hits"] == 1 and i["update_hits"] == 1 and i["unflatten_hits"] == 1
    assert i["guard_misses"] == {"static": 1}
    assert i["compiled_variants"] == 2 and i["compiled_unflattens"] == 1
    assert i["generic_flattens"] == 2 and i["generic_unflattens"] == 1
    assert i["compile_seconds"] > 0
    sg.clear_cache()
    i = info()
    assert i["hits"] == i["update_hits"] == i["unflatten_hits"] == i["fallbacks"] == 0
    assert i["guard_misses"] == {}
    assert i["compiled_variants"] == i["compiled_unflattens"] == 0
    assert i["generic_flattens"] == i["generic_unflattens"] == i["generic_updates"] == 0
    assert i["compile_failures"] == i["declined"] == 0
    assert i["compile_seconds"] == 0
    assert i["megamorphic_types"] == []
    # Everything is learned again from scratch.
    assert_same_flatten(sg.flatten(node), sg.generic.flatten(node))
    assert info()["generic_flattens"] == 1 and info()["hits"] == 0
    sg.flatten(node)
    assert info()["hits"] == 1


def test_threshold_three_compiles_after_the_third_call(knobs: None) -> None:
    sg.configure(threshold=3)
    node = MLP()
    ref = sg.generic.flatten(node)
    for n in (1, 2, 3):
        assert_same_flatten(sg.flatten(node), ref)
        assert info()["compiled_variants"] == (1 if n == 3 else 0)
        assert info()["hits"] == 0
    assert_same_flatten(sg.flatten(node), ref)
    assert info()["hits"] == 1
    gd, sm = ref
    for _ in range(3):
        sg.unflatten(gd, sm)
    assert info()["unflatten_hits"] == 0
    sg.unflatten(gd, sm)
    assert info()["unflatten_hits"] == 1


def test_threshold_counts_per_structure(knobs: None) -> None:
    sg.configure(threshold=2)
    a, b = Box(w=p(), n=1), Box(w=p(), n=2)
    for node in (a, b, a):
        sg.flatten(node)
    assert info()["compiled_variants"] == 1  # a twice, b once
    sg.flatten(b)
    assert info()["compiled_variants"] == 2


def test_max_variants_makes_a_type_megamorphic(knobs: None) -> None:
    sg.configure(max_variants=3)
    nodes = [Box(w=p(), n=i) for i in range(6)]
    for node in nodes[:3]:
        sg.flatten(node)
        sg.flatten(node)
    assert info()["compiled_variants"] == 3
    assert info()["megamorphic_types"] == []
    for node in nodes[3:]:
        for _ in range(2):
            assert_same_flatten(sg.flatten(node), sg.generic.flatten(node))
    assert "Box" in info()["megamorphic_types"]
    hits = info()["hits"]
    for node in nodes:  # the type is left to the generic walker, and answers right
        roundtrip_generic_equal(node)
    assert info()["hits"] == hits
    # Other types are unaffected.
    lin = Linear()
    sg.flatten(lin)
    sg.flatten(lin)
    assert info()["hits"] == hits + 1
    assert "Linear" not in info()["megamorphic_types"]


def test_default_bound_on_variants(knobs: None) -> None:
    bound = CONFIG.max_variants
    nodes = [Box(w=p(), n=i) for i in range(bound + 1)]
    for node in nodes:
        sg.flatten(node)
        assert_same_flatten(sg.flatten(node), sg.generic.flatten(node))
    assert "Box" in info()["megamorphic_types"]


def test_max_steps_declines_big_structures(knobs: None) -> None:
    sg.configure(max_steps=10)
    node = MLP(depth=4)
    ref = sg.generic.flatten(node)
    for _ in range(3):
        roundtrip_generic_equal(node)
    i = info()
    assert i["compiled_variants"] == 0 and i["compiled_unflattens"] == 0
    assert i["hits"] == i["update_hits"] == i["unflatten_hits"] == 0
    assert i["declined"] + i.get("declined_too_large", 0) >= 1
    assert i["unflatten_declined"] == 1  # (once: the GraphDef remembers it)
    assert i["compile_failures"] == 0
    # With the default bound again, the same structure is specialized.
    sg.configure(max_steps=20_000)
    sg.clear_cache()
    sg.flatten(node)
    assert_same_flatten(sg.flatten(node), ref)
    assert info()["hits"] == 1


# -- failures to generate or compile -----------------------------------------------------


@pytest.mark.parametrize("exc", [SyntaxError, RecursionError, MemoryError, ValueError, TypeError,
                                 RuntimeError, KeyError, AttributeError, jinja2.TemplateError])
@pytest.mark.parametrize("target", ["_compile", "render"])
def test_compile_failure_warns_and_falls_back(monkeypatch: pytest.MonkeyPatch, exc: type,
                                              target: str) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise exc("injected failure")

    monkeypatch.setattr(pipeline, target, broken)
    node = MLP()
    ref = sg.generic.flatten(node)
    gd, sm = ref
    with pytest.warns(RuntimeWarning, match="could not specialize"):
        assert_same_flatten(sg.flatten(node), ref)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per structure, not per call
        for _ in range(3):
            assert_same_flatten(sg.flatten(node), ref)
        sg.update(node, sm)
        assert_same_flatten(sg.generic.flatten(node), ref)
    with pytest.warns(RuntimeWarning, match="could not specialize"):
        for _ in range(3):
            assert_same_flatten(sg.generic.flatten(sg.unflatten(gd, sm)), ref)
    i = info()
    assert i["compile_failures"] == 2
    assert i["compiled_variants"] == i["compiled_unflattens"] == 0
    assert i["hits"] == i["unflatten_hits"] == i["update_hits"] == 0
    monkeypatch.undo()
    sg.clear_cache()
    sg.flatten(node)
    sg.flatten(node)
    assert info()["hits"] == 1


# -- threads -------------------------------------------------------------------------------


def test_threads_agree_with_the_reference() -> None:
    shared = MLP()
    shared_ref = sg.generic.flatten(shared)
    n_threads, rounds = 8, 25
    barrier = threading.Barrier(n_threads)
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        try:
            own = MLP(depth=1 + seed % 3)
            barrier.wait()
            for r in range(rounds):
                assert_same_flatten(sg.flatten(shared), shared_ref)
                gd, sm = sg.flatten(shared)
                sg.update(shared, sm)  # the same value objects: a no-op, racing is harmless
                assert_same_flatten(sg.generic.flatten(sg.unflatten(gd, sm)), shared_ref)
                # A private model whose structure changes between calls.
                own.act = ("relu", "tanh")[r % 2]
                if r % 5 == 0:
                    own.layers.append(Linear())
                ref = sg.generic.flatten(own)
                assert_same_flatten(sg.flatten(own), ref)
                new = jax.tree.map(lambda v: v + 1, ref[1])
                sg.update(own, new)
                assert_same_flatten(sg.flatten(own), sg.generic.flatten(own))
                assert sg.flatten(own)[1].values() == new.values()
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, "".join(traceback.format_exception(errors[0]))
    i = info()
    assert i["hits"] > 0 and i["update_hits"] > 0 and i["unflatten_hits"] > 0


def test_threads_compile_one_structure_once() -> None:
    n_threads = 8
    barrier = threading.Barrier(n_threads)
    models = [MLP(depth=6) for _ in range(n_threads)]
    results: list[Any] = [None] * n_threads

    def work(i: int) -> None:
        barrier.wait()
        results[i] = sg.flatten(models[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for m, r in zip(models, results, strict=True):
        assert_same_flatten(r, sg.generic.flatten(m))
    assert info()["compiled_variants"] == 1, "duplicate variants eat the per-type bound"


# -- memory ---------------------------------------------------------------------------------


def test_flattened_model_is_garbage_collected() -> None:
    def use() -> tuple[weakref.ref, ...]:
        node = MLP()
        node.layers[0].parent = node  # a cycle too
        gd, sm = sg.flatten(node)
        sg.flatten(node)
        sg.update(node, sm)
        sg.unflatten(gd, sm)
        sg.unflatten(gd, sm)
        sg.explain(gd)
        assert info()["hits"] == 1 and info()["update_hits"] == 1 and info()["unflatten_hits"] == 1
        return weakref.ref(node), weakref.ref(node.layers[1]), weakref.ref(node.layers[2].w)

    refs = use()
    gc.collect()
    assert info()["compiled_variants"] == 1  # the specialization outlives the model ...
    assert [r() for r in refs] == [None, None, None]  # ... but does not keep it alive


# -- source visibility -------------------------------------------------------------------------

_BOOM = object()


class Touchy(sg.State):
    """A State whose value setter refuses one sentinel (to raise inside generated code)."""

    @property
    def value(self) -> Any:
        return self._v

    @value.setter
    def value(self, v: Any) -> None:
        if v is _BOOM:
            raise RuntimeError("touchy")
        self._v = v


def _generated_frames(exc: BaseException) -> list[traceback.FrameSummary]:
    return [f for f in traceback.extract_tb(exc.__traceback__) if f.filename.startswith("<specgraph")]


@pytest.mark.parametrize("kind", ["update", "unflatten"])
def test_tracebacks_show_generated_lines(kind: str) -> None:
    node = Box(t=Touchy(1.0), w=p())
    gd, sm = sg.flatten(node)
    sg.flatten(node)
    sg.unflatten(gd, sm)
    sg.unflatten(gd, sm)
    bad = jax.tree.map(lambda v: _BOOM if isinstance(v, float) else v, sm)
    with pytest.raises(RuntimeError, match="touchy") as err:
        if kind == "update":
            sg.update(node, bad)
        else:
            sg.unflatten(gd, bad)
    frames = _generated_frames(err.value)
    assert len(frames) == 1, "the error must come from the generated function"
    frame = frames[0]
    assert kind in frame.filename
    assert frame.line and ".value = " in frame.line  # the real line, from linecache
    assert linecache.getline(frame.filename, frame.lineno).strip() == frame.line
    text = "".join(traceback.format_exception(err.value))
    assert frame.line in text
    # inspect sees the whole generated function through the code object of the frame.
    code = err.value.__traceback__
    while code.tb_next is not None and not code.tb_frame.f_code.co_filename.startswith("<specgraph"):
        code = code.tb_next
    src = inspect.getsource(code.tb_frame.f_code)
    assert src.startswith(f"def {kind}_")
    assert frame.line in src


def test_inspect_getsource_of_generated_flatten() -> None:
    node = MLP()
    gd, _ = sg.flatten(node)
    sg.flatten(node)
    var = dispatch.variant_for(gd)
    assert var is not None
    for fn in (var.flatten, var.update):
        src = inspect.getsource(fn)
        assert src.startswith("def ")
        text = sg.explain(gd)
        assert all(f"| {line}" in text for line in src.splitlines())
        filename = fn.__code__.co_filename
        assert filename.startswith("<specgraph")
        assert linecache.getline(filename, 1) == src.splitlines(keepends=True)[0]
    assert var.flatten.__code__.co_filename != var.update.__code__.co_filename


# -- explain -----------------------------------------------------------------------------------


def _check_explain(text: str, gd: sg.GraphDef) -> None:
    assert f"nodes: {gd.num_nodes}" in text
    assert f"states: {gd.num_states}" in text
    assert gd.type.__qualname__ in text
    assert "Generated flatten" in text
    assert re.search(r"^\s+1 \| def flatten_", text, re.M), "numbered source lines"
    assert re.search(r"^\s+2 \| ", text, re.M)
    assert "Guards" in text
    for kind in ("type", "node_keys", "container", "static", "metadata", "distinct"):
        assert re.search(rf"^\s+- {kind}\b", text, re.M), kind
    assert re.search(r"^Counters", text, re.M)


def test_explain_before_any_flatten_through_the_dispatcher() -> None:
    node = MLP()
    gd, _ = sg.generic.flatten(node)
    assert gd.num_nodes == 4 and gd.num_states == 6
    text = sg.explain(gd)
    _check_explain(text, gd)
    assert "Generated update" in text and "Generated unflatten" in text
    # Explaining compiles nothing and counts nothing.
    assert info()["compiled_variants"] == 0 and info()["generic_flattens"] == 0
    sg.flatten(node)
    assert info()["hits"] == 0


def test_explain_after_specialization_shows_counters() -> None:
    node = MLP()
    gd, sm = sg.flatten(node)
    for _ in range(3):
        sg.flatten(node)
    sg.update(node, sm)
    sg.unflatten(gd, sm)
    sg.unflatten(gd, sm)
    node.act = "gelu"
    sg.flatten(node)  # a static miss, counted for gd's variant
    text = sg.explain(gd)
    _check_explain(text, gd)
    counters = [line for line in text.splitlines() if line.startswith("Counters")]
    assert len(counters) == 1
    line = counters[0]
    assert re.search(r"flatten hits=3\b", line)
    assert re.search(r"update hits=1\b", line)
    assert re.search(r"unflatten hits=1\b", line)
    assert "static=1" in line
    assert "ms" in line
    # The same numbers as cache_info (only one structure was specialized and hit).
    assert info()["hits"] == 3


def test_explain_on_declined_and_odd_structures(knobs: None) -> None:
    gd_empty, _ = sg.generic.flatten(Box())
    assert "nodes: 1" in sg.explain(gd_empty)
    gd_list, _ = sg.generic.flatten([p(), {"a": np.ones(1)}])
    assert "Generated flatten" in sg.explain(gd_list)
    sg.configure(max_steps=10)
    node = MLP(depth=4)
    sg.flatten(node)
    text = sg.explain(sg.generic.flatten(node)[0])
    assert "nodes: 5" in text and "Counters" in text
    with pytest.raises(TypeError):
        sg.explain(node)  # type: ignore[arg-type]


#: cache_info() entries that count events (never go down); the rest are gauges (entries
#: held now: compiled variants, units, megamorphic types) or switches
_COUNTERS = ("hits", "update_hits", "unflatten_hits", "walk_hits", "fallbacks", "compile_seconds",
             "generic_flattens", "generic_unflattens", "generic_updates", "generic_walks", "compile_failures",
             "declined", "declined_too_large", "unflatten_declined", "outlined_units_compiled",
             "outlined_units_reused")


def _churn(n: int, served_by: str) -> list[dict[str, Any]]:
    """``n`` structures, each of a root class of its own (no type goes megamorphic), used
    by every operation and then mutated into one structure more: cache_info() after each."""
    seen = []
    for i in range(n):
        cls = type(f"Churn{i}", (sg.Node,), {})
        m = cls()
        vars(m).update(layers=[Linear(2, 2) for _ in range(1 + i % 3)], tag=f"t{i}")
        for _ in range(3):
            gd, sm = sg.flatten(m)
            seen.append(info())
        sg.update(m, sm)
        sg.states(m)
        seen.append(info())
        for _ in range(3):
            sg.unflatten(gd, sm)
            seen.append(info())
        m.tag = i  # a str static became an int: a guard misses, a new structure
        assert_matches_reference(m)
        seen.append(info())
    if served_by != "generic":
        assert seen[-1]["hits"] > 0 and seen[-1]["unflatten_hits"] > 0
    return seen


@pytest.mark.repeats
def test_counters_never_go_down_past_the_bound_of_the_counter_table(
        served_by: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past 4 * _BOUND structures the per-structure counters are pushed out of their table,
    and more structures later out of the evicted ones: every count stays in cache_info's
    totals, which never go down and end where a run with no bound ends."""
    n = 40
    unbounded = _churn(n, served_by)[-1]
    sg.clear_cache()
    monkeypatch.setattr(dispatch, "_BOUND", 2)  # 8 structures' counters, 8 evicted ones: 40 overflow both
    seen = _churn(n, served_by)
    assert len(dispatch._stats) <= 8 and len(dispatch._evicted) <= 8
    for before, after in itertools.pairwise(seen):
        for k in _COUNTERS:
            assert after[k] >= before[k], k
        for k, v in before["guard_misses"].items():
            assert after["guard_misses"].get(k, 0) >= v, k
    last = seen[-1]
    for k in _COUNTERS:
        if k != "compile_seconds":  # (timed)
            assert last[k] == unbounded[k], k
    assert last["guard_misses"] == unbounded["guard_misses"]
    if served_by != "generic":
        assert last["compile_seconds"] > 0


def test_a_thousand_structures_of_one_type_keep_the_caches_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Megamorphic: past max_variants the type stays generic; no cache grows with structures."""
    monkeypatch.setattr(dispatch, "_BOUND", 32)  # bounds of 128 entries: 1000 structures overflow them
    def generated() -> int:
        return sum(1 for name in linecache.cache if name.startswith("<specgraph "))

    before = generated()
    for i in range(1000):
        m = Box(p=sg.Param(np.zeros(1)))
        setattr(m, f"a{i}", i)  # a new attribute name: a new structure of the same root type
        gd, sm = sg.flatten(m)
        sg.flatten(m)
        sg.unflatten(gd, sm)
        sg.unflatten(gd, sm)  # unflatten specializations are keyed by GraphDef: bounded too
        if i % 97 == 0:
            assert_matches_reference(m)
    assert "Box" in info()["megamorphic_types"]
    assert dispatch._types[Box].variants == ()
    bound = 4 * dispatch._BOUND
    assert len(dispatch._stats) <= bound
    assert len(dispatch._unflat) <= bound
    assert len(dispatch._types[Box].seen) <= dispatch._BOUND
    assert generated() - before <= bound
