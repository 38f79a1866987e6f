"""Outlined code for foreign classes: NNX Modules/Variables and BrainState Nodes/States.

A repeated NNX ``Linear`` (in an ``nnx.List``, a plain list, or as attributes) or a
repeated BrainState ``Linear`` is generated once: a loop over the list or one function
called per occurrence. Each occurrence keeps every guard the unrolled code has (the
bookkeeping fields, the Variables' metadata dicts, the States' raw-access checks), and
the update checks each occurrence's trace level against the call's token, which the top
function makes once and passes in. Occurrences are mutated one at a time; sharing across
occurrences stays exact; and each guard kind the foreign outlined code relies on is
load-bearing (the scenario differs from the reference with that kind generated out).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from conftest import assert_same_flatten, outlined_unflatten_hits

pytest.importorskip("flax")
pytest.importorskip("brainstate")

import brainstate
import jax
import jax.numpy as jnp
from flax import nnx
from flax.errors import TraceContextError

import specgraph as sg
from specgraph.runtime import dispatch


class ListMLP(nnx.Module):
    def __init__(self, n: int) -> None:
        rngs = nnx.Rngs(0)
        self.layers = nnx.List([nnx.Linear(2, 2, rngs=rngs) for _ in range(n)])
        self.head = nnx.Linear(2, 1, rngs=rngs)


class DataMLP(nnx.Module):
    def __init__(self, n: int) -> None:
        rngs = nnx.Rngs(0)
        self.layers = nnx.data([nnx.Linear(2, 2, rngs=rngs) for _ in range(n)])


class AttrMLP(nnx.Module):
    """Layers as attributes, each followed by a static of its own (no run of layers to loop
    over: one call per occurrence)."""

    def __init__(self, n: int) -> None:
        rngs = nnx.Rngs(0)
        for i in range(n):
            setattr(self, f"l{i:02d}", nnx.Linear(2, 2, rngs=rngs))
            setattr(self, f"l{i:02d}_id", i)


class BstMLP(brainstate.nn.Module):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.layers = [brainstate.nn.Linear(2, 2) for _ in range(n)]


LAYOUTS: dict[str, Callable[[int], Any]] = {"nnx.List": ListMLP, "data list": DataMLP, "attrs": AttrMLP}


def layer(m: Any, i: int) -> Any:
    return getattr(m, f"l{i:02d}") if type(m) is AttrMLP else m.layers[i]


def set_layer(m: Any, i: int, value: Any) -> None:
    if type(m) is AttrMLP:
        setattr(m, f"l{i:02d}", value)
    else:
        m.layers[i] = value



def _specialized(node: Any) -> tuple[sg.GraphDef, sg.StateMap]:
    """Flatten twice (the second call by generated code), checked against the reference."""
    sg.flatten(node)
    before = sg.cache_info()["hits"]
    out = sg.flatten(node)
    assert sg.cache_info()["hits"] == before + 1, sg.cache_info()
    assert_same_flatten(out, sg.generic.flatten(node))
    return out


def _source(gd: sg.GraphDef, kind: str = "flatten") -> str:
    var = dispatch.variant_for(gd)
    assert var is not None
    return var.sources[kind]


def _outlined_form(src: str, layout: str, n: int, type_name: str = "") -> None:
    """The repeated Linear is generated once: a loop over the list, or one function
    called once per occurrence (its guards not repeated per occurrence)."""
    if layout == "attrs":
        assert src.count("def outlined0_flatten") == 1 and src.count("outlined0_flatten(") == n + 1
    elif type_name == "ListMLP":
        # (the head, a Linear(2, 1): one shape with the layers, its out_features a parameter
        # of their function, called once; the loop's items agree: no parameter of its own)
        assert f"# {n} of one shape" in src and "for x" in src and "in zip(" not in src
        assert src.count("def outlined0_flatten") == 1 and "(a parameter)" in src
    else:
        assert f"# {n} of one shape" in src and "def outlined" not in src
    assert src.count("is not Linear") == 1 + (type_name == "ListMLP")  # one body for all n (+ the head)


# -- the outlined code exists and is what answers ----------------------------------------


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_nnx_layers_are_outlined(outlined: None, layout: str) -> None:
    m = LAYOUTS[layout](20)
    gd, _st = _specialized(m)
    _outlined_form(_source(gd), layout, 20, type(m).__name__)
    _outlined_form(_source(gd, "update"), layout, 20, type(m).__name__)
    # the update's token is made once, first, and every occurrence is checked against it
    upd = _source(gd, "update")
    top = upd[upd.index("def update_"):]
    first_guard = "is not List" if layout == "nnx.List" else "droot = root.__dict__"
    assert upd.count("tok = ") == 1 and top.index("tok = ") < top.index(first_guard)
    outlined_or_loop = upd[:upd.index("def update_")]  # an outlined function's, or a loop's unit
    assert "is not tok:  # " in outlined_or_loop
    text = sg.explain(gd)
    assert "x Linear" in text or "used 20 times" in text
    variables = 2 * 20 + 2 * (layout == "nnx.List")  # (+ the head's)
    assert f"update: {variables} states/nodes are written only if made at the current trace level" in text


def test_brainstate_layers_are_a_loop(outlined: None) -> None:
    m = BstMLP(12)
    gd, _ = _specialized(m)
    src = _source(gd)
    assert "# 12 of one shape" in src and src.count("is not Linear") == 1
    assert src.count("has hooks") == 1  # each State's hook guard, in the loop's body
    assert src.count("the library reads through its own API now") == 1  # once per call, in the top
    upd = _source(gd, "update")
    assert upd.count("the library writes through its own API now") == 1


def test_nnx_mlp_of_ten_thousand_layers_is_specialized() -> None:
    m = ListMLP(10_000)
    sg.flatten(m)
    hits = sg.cache_info()["hits"]
    gd, st = sg.flatten(m)
    assert sg.cache_info()["hits"] == hits + 1  # served by generated code (default outline_min)
    assert len(st) == 2 * 10_001
    assert "# 10000 of one shape" in _source(gd)


# -- update through outlined code ------------------------------------------------------


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_update_through_outlined_code(outlined: None, layout: str) -> None:
    m = LAYOUTS[layout](6)
    _gd, st = _specialized(m)
    kernels = [layer(m, i).kernel for i in range(6)]
    new = sg.StateMap._make(st._table, [jnp.asarray(v) + 1 + i for i, v in enumerate(st.values())])
    before = sg.cache_info()["update_hits"]
    sg.update(m, new)
    assert sg.cache_info()["update_hits"] == before + 1
    assert [layer(m, i).kernel for i in range(6)] == kernels  # the very same Variables
    for path, value in new.items():
        assert sg.generic.flatten(m)[1][path] is value


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_update_of_a_closure_model_inside_jit_raises_nnx_trace_error(outlined: None, layout: str) -> None:
    """The trace-level check of each outlined occurrence: the update is refused, nothing written."""
    m = LAYOUTS[layout](4)
    gd, sm = _specialized(m)
    assert "is not tok:" in _source(gd, "update")
    raws = [layer(m, i).kernel.get_raw_value() for i in range(4)]

    @jax.jit
    def f(values: sg.StateMap) -> jax.Array:
        sg.update(m, values)
        return values[next(iter(values.keys()))]

    with pytest.raises(TraceContextError):
        f(sm)
    assert [layer(m, i).kernel.get_raw_value() for i in range(4)] == raws


def test_brainstate_update_through_the_loop(outlined: None) -> None:
    m = BstMLP(5)
    _gd, st = _specialized(m)
    states = [m.layers[i].weight for i in range(5)]
    new = sg.StateMap._make(st._table, [jax.tree.map(lambda a: a + 1, v) for v in st.values()])
    before = sg.cache_info()["update_hits"]
    sg.update(m, new)
    assert sg.cache_info()["update_hits"] == before + 1
    assert [m.layers[i].weight for i in range(5)] == states
    assert all(m.layers[i].weight._been_writen for i in range(5))
    for path, value in new.items():
        assert sg.generic.flatten(m)[1][path] is value


# -- occurrences mutated one at a time ---------------------------------------------------


def _replace_variable(m: Any, i: int) -> None:
    lin = layer(m, i)
    lin.kernel = nnx.Param(lin.kernel.get_raw_value() + 1)


def _flip_setup(m: Any, i: int) -> None:
    layer(m, i)._pytree__state._is_setup = not layer(m, i)._pytree__state._is_setup


def _tie(m: Any, i: int) -> None:
    layer(m, i).kernel = layer(m, (i + 1) % 4).kernel


def _swap(m: Any, i: int) -> None:
    set_layer(m, i, layer(m, (i + 1) % 4))


#: name -> (the guard kind that misses, or None: the same structure, a hit; the mutation)
NNX_MUTATIONS: dict[str, tuple[str | None, Callable[[Any, int], None]]] = {
    "variable replaced": (None, _replace_variable),
    "state type": ("type", lambda m, i: setattr(layer(m, i), "bias", nnx.BatchStat(layer(m, i).bias[...]))),
    "set_metadata new key": ("metadata", lambda m, i: layer(m, i).kernel.set_metadata(tag="x")),
    "set_metadata value": ("metadata", lambda m, i: layer(m, i).kernel.set_metadata(eager_sharding=False)),
    "bookkeeping": ("metadata", _flip_setup),
    "extra attribute": ("node_keys", lambda m, i: setattr(layer(m, i), "extra", nnx.Param(jnp.ones(1)))),
    # past Module.__setattr__: _pytree__nodes does not learn it, only the dict's length does
    "extra dict entry": ("node_keys",
                         lambda m, i: vars(layer(m, i)).__setitem__("extra", nnx.Param(jnp.ones(1)))),
    "static": ("static", lambda m, i: setattr(layer(m, i), "in_features", 3)),
    "static type": ("static", lambda m, i: setattr(layer(m, i), "in_features", 2.0)),
    "tied across layers": ("distinct", _tie),
    "same layer twice": ("distinct", _swap),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("name", sorted(NNX_MUTATIONS))
@pytest.mark.parametrize("i", [0, 3])
def test_each_nnx_occurrence_mutated(outlined: None, name: str, i: int, layout: str) -> None:
    kind, mutate = NNX_MUTATIONS[name]
    m = LAYOUTS[layout](4)
    gd, _ = _specialized(m)
    _outlined_form(_source(gd), layout, 4, type(m).__name__)
    mutate(m, i)
    misses = dict(sg.cache_info()["guard_misses"])
    hits = sg.cache_info()["hits"]
    assert_same_flatten(sg.flatten(m), sg.generic.flatten(m))
    now = sg.cache_info()["guard_misses"]
    if kind is None:
        assert sg.cache_info()["hits"] == hits + 1 and now == misses
    else:
        assert now.get(kind, 0) == misses.get(kind, 0) + 1, now
        # and the new structure is specialized in turn, exactly
        _specialized(m)


def test_variable_replaced_in_layer_7_of_20(outlined: None) -> None:
    m = ListMLP(20)
    _specialized(m)
    old = m.layers[7].kernel
    m.layers[7].kernel = nnx.Param(old.get_raw_value() * 3)
    hits = sg.cache_info()["hits"]
    gd, st = sg.flatten(m)
    assert sg.cache_info()["hits"] == hits + 1
    assert st[("layers", 7, "kernel")] is m.layers[7].kernel.get_raw_value()
    assert_same_flatten((gd, st), sg.generic.flatten(m))
    new = jnp.zeros((2, 2))
    sg.update(m, {("layers", 7, "kernel"): new})
    assert m.layers[7].kernel.get_raw_value() is new and m.layers[7].kernel is not old


def test_metadata_changed_in_one_occurrence_makes_another_structure(outlined: None) -> None:
    m = ListMLP(20)
    gd, _ = _specialized(m)
    m.layers[7].kernel.set_metadata(scale=2)
    gd2, _ = _specialized(m)
    assert gd2 != gd
    assert any(dict(getattr(spec, "metadata", None) or ()).get("scale") == 2 for spec in gd2.table)
    src = _source(gd2)
    assert "of one shape" in src  # the other layers are still a loop (two runs around layer 7)


def test_ref_backed_variable_in_one_layer(outlined: None) -> None:
    m = ListMLP(8)
    _specialized(m)
    m.layers[5].kernel = nnx.Param(jnp.ones((2, 2)), ref=True)
    ref = m.layers[5].kernel.get_raw_value()
    assert_same_flatten(sg.flatten(m), sg.generic.flatten(m))
    _gd, sm = sg.flatten(m)
    assert sm[("layers", 5, "kernel")] is ref
    sg.update(m, {("layers", 5, "kernel"): jnp.full((2, 2), 4.0), ("layers", 1, "kernel"): jnp.zeros((2, 2))})
    assert m.layers[5].kernel.get_raw_value() is ref  # written into its Ref, as nnx.update does
    np.testing.assert_array_equal(m.layers[5].kernel[...], np.full((2, 2), 4.0))
    np.testing.assert_array_equal(m.layers[1].kernel[...], np.zeros((2, 2)))


def test_hijax_variable_in_one_layer_is_refused_with_its_path(outlined: None) -> None:
    m = ListMLP(8)
    _specialized(m)
    try:
        m.layers[6].kernel = nnx.Param(jnp.ones((2, 2)), hijax=True)
    except Exception:  # pragma: no cover - hijax not available in this JAX
        pytest.skip("hijax Variables cannot be made here")
    with pytest.raises(TypeError, match=r"path \('layers', 6, 'kernel'\).*hijax=False"):
        sg.flatten(m)


def test_tied_variables_across_layers(outlined: None) -> None:
    m = ListMLP(8)
    m.layers[3].kernel = m.layers[2].kernel  # tied: layers 2 and 3 stay unrolled
    gd, st = _specialized(m)
    assert "of one shape" in _source(gd)
    clone = sg.unflatten(gd, st)
    assert clone.layers[3].kernel is clone.layers[2].kernel
    new = sg.StateMap._make(st._table, [jnp.asarray(v) * 2 for v in st.values()])
    sg.update(m, new)
    assert m.layers[3].kernel is m.layers[2].kernel
    assert m.layers[2].kernel.get_raw_value() is new[("layers", 2, "kernel")]
    # tying two layers of the loop is a distinct miss; untying the tied pair another structure
    m.layers[6].kernel = m.layers[5].kernel
    misses = sg.cache_info()["guard_misses"].get("distinct", 0)
    assert_same_flatten(sg.flatten(m), sg.generic.flatten(m))
    assert sg.cache_info()["guard_misses"].get("distinct", 0) == misses + 1


@pytest.mark.parametrize("change", ["longer", "shorter", "another shape", "another type"])
@pytest.mark.parametrize("layout", ["nnx.List", "data list"])
def test_a_list_that_stops_being_homogeneous(outlined: None, change: str, layout: str) -> None:
    m = LAYOUTS[layout](6)
    _specialized(m)
    rngs = nnx.Rngs(1)
    if change == "longer":
        m.layers.append(nnx.Linear(2, 2, rngs=rngs))
    elif change == "shorter":
        m.layers.pop()
    elif change == "another shape":
        m.layers[2] = nnx.Linear(2, 5, rngs=rngs)
    else:
        m.layers[2] = nnx.LayerNorm(2, rngs=rngs)
    hits = sg.cache_info()["hits"]
    assert_same_flatten(sg.flatten(m), sg.generic.flatten(m))
    assert sg.cache_info()["hits"] == hits  # the reference answered
    _specialized(m)  # and the new structure is specialized, exactly


BST_MUTATIONS: dict[str, tuple[str | None, Callable[[Any, int], None]]] = {
    "state replaced": (None, lambda m, i: setattr(m.layers[i], "weight",
                                                  brainstate.ParamState(m.layers[i].weight.value))),
    "state type": ("type", lambda m, i: setattr(m.layers[i], "weight",
                                                brainstate.ShortTermState(m.layers[i].weight.value))),
    "tag": ("metadata", lambda m, i: setattr(m.layers[i].weight, "tag", "x")),
    "size": ("static", lambda m, i: setattr(m.layers[i], "_in_size", (3,))),
    "tied across layers": ("distinct",
                           lambda m, i: setattr(m.layers[i], "weight", m.layers[(i + 1) % 4].weight)),
}


@pytest.mark.parametrize("name", sorted(BST_MUTATIONS))
@pytest.mark.parametrize("i", [0, 3])
def test_each_brainstate_occurrence_mutated(outlined: None, name: str, i: int) -> None:
    kind, mutate = BST_MUTATIONS[name]
    m = BstMLP(4)
    gd, _ = _specialized(m)
    assert "# 4 of one shape" in _source(gd)
    mutate(m, i)
    misses = dict(sg.cache_info()["guard_misses"])
    hits = sg.cache_info()["hits"]
    assert_same_flatten(sg.flatten(m), sg.generic.flatten(m))
    now = sg.cache_info()["guard_misses"]
    if kind is None:
        assert sg.cache_info()["hits"] == hits + 1 and now == misses
    else:
        assert now.get(kind, 0) == misses.get(kind, 0) + 1, now


def test_a_hook_on_one_brainstate_occurrence_is_a_raw_miss(outlined: None) -> None:
    m = BstMLP(4)
    _specialized(m)
    reads: list[int] = []
    m.layers[2].weight.register_hook("read", lambda ctx: reads.append(1))
    misses = sg.cache_info()["guard_misses"].get("raw", 0)
    sg.flatten(m)
    assert reads  # the reference read it through .value: the hook ran
    assert sg.cache_info()["guard_misses"].get("raw", 0) == misses + 1


# -- guard kill: every guard kind the foreign outlined code relies on --------------------


#: kind -> (layout, mutation): with that kind generated out, the outlined code answers the
#: mutated occurrence with the stale structure.
NNX_KILLED: dict[str, tuple[str, str]] = {
    "type": ("nnx.List", "state type"),
    "node_keys": ("attrs", "extra dict entry"),
    "static": ("data list", "static"),
    "metadata": ("nnx.List", "set_metadata value"),
    "distinct": ("attrs", "tied across layers"),
}


@pytest.mark.parametrize("kind", sorted(NNX_KILLED))
def test_nnx_outlined_guard_is_load_bearing(outlined: None, kind: str,
                                            disable: Callable[[frozenset[str]], None]) -> None:
    layout, name = NNX_KILLED[kind]
    disable(frozenset({kind}))
    m = LAYOUTS[layout](4)
    sg.flatten(m)
    gd, _ = sg.flatten(m)
    assert "def outlined" in _source(gd) or "of one shape" in _source(gd)
    NNX_MUTATIONS[name][1](m, 2)
    with pytest.raises(AssertionError):
        assert_same_flatten(sg.flatten(m), sg.generic.flatten(m))


@pytest.mark.parametrize("what", ["metadata dict", "metadata item", "bookkeeping field"])
def test_each_nnx_metadata_guard_is_load_bearing(outlined: None, what: str,
                                                 disable: Callable[[frozenset[str]], None]) -> None:
    """The three metadata guards of an NNX occurrence (a Variable's metadata dict length, an
    item of it, a bookkeeping field of the Module) each catch their own change."""
    mutate = {"metadata dict": "set_metadata new key", "metadata item": "set_metadata value",
              "bookkeeping field": "bookkeeping"}[what]
    for disabled in (frozenset({"metadata"}), frozenset()):
        disable(disabled)
        sg.clear_cache()
        m = ListMLP(4)
        sg.flatten(m)
        sg.flatten(m)
        NNX_MUTATIONS[mutate][1](m, 1)
        got, ref = sg.flatten(m), sg.generic.flatten(m)
        if disabled:
            with pytest.raises(AssertionError):
                assert_same_flatten(got, ref)
        else:
            assert_same_flatten(got, ref)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_nnx_outlined_trace_guard_is_load_bearing(outlined: None, layout: str,
                                                  disable: Callable[[frozenset[str]], None]) -> None:
    """Without the trace checks the outlined update writes a tracer into Variables of
    another trace level (nnx refuses that; with the checks in place the test above raises)."""
    disable(frozenset({"trace"}))
    m = LAYOUTS[layout](4)
    _, sm = _specialized(m)
    assert "is not tok:" not in _source(sg.flatten(m)[0], "update")

    @jax.jit
    def f(values: sg.StateMap) -> jax.Array:
        sg.update(m, values)
        return values[next(iter(values.keys()))]

    f(sm)  # no TraceContextError: the stale trace's writes went through
    assert any(isinstance(layer(m, i).kernel.get_raw_value(), jax.core.Tracer) for i in range(4))


def test_brainstate_outlined_raw_guard_is_load_bearing(outlined: None,
                                                       disable: Callable[[frozenset[str]], None]) -> None:
    """Without the hook guard of each State in the loop, a read hook set on one occurrence
    does not run (the reference reads it through .value, which runs it)."""
    disable(frozenset({"raw"}))
    m = BstMLP(4)
    sg.flatten(m)
    sg.flatten(m)
    reads: list[int] = []
    m.layers[2].weight.register_hook("read", lambda ctx: reads.append(1))
    sg.flatten(m)
    assert not reads


@pytest.mark.parametrize("kind", ["type", "metadata", "static", "distinct"])
def test_brainstate_outlined_guard_is_load_bearing(outlined: None, kind: str,
                                                   disable: Callable[[frozenset[str]], None]) -> None:
    name = {"type": "state type", "metadata": "tag", "static": "size", "distinct": "tied across layers"}[kind]
    disable(frozenset({kind}))
    m = BstMLP(4)
    sg.flatten(m)
    sg.flatten(m)
    BST_MUTATIONS[name][1](m, 2)
    with pytest.raises(AssertionError):
        assert_same_flatten(sg.flatten(m), sg.generic.flatten(m))


class Holder(sg.Node):
    def __init__(self, w: Any) -> None:
        self.w = w


@pytest.mark.parametrize("state", ["brainstate", "nnx"])
def test_builtin_nodes_holding_foreign_states(outlined: None, state: str) -> None:
    """specgraph Nodes holding foreign states: flatten and unflatten outline them (a loop;
    the unflatten's with the states' per-call context), all as the reference."""
    def make(i: int) -> Any:
        value = jnp.full((2,), float(i))
        return brainstate.ParamState(value) if state == "brainstate" else nnx.Param(value)

    m = Holder([Holder(make(i)) for i in range(6)])
    gd, st = _specialized(m)
    assert "# 6 of one shape" in _source(gd)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no failure to generate
        clone = sg.unflatten(gd, st)
        hits = outlined_unflatten_hits()
        clone = sg.unflatten(gd, st)
        assert outlined_unflatten_hits() == hits + 1
    assert_same_flatten(sg.generic.flatten(clone), sg.generic.flatten(sg.generic.unflatten(gd, st)))
    new = sg.StateMap._make(st._table, [v + 1 for v in st.values()])
    before = sg.cache_info()["update_hits"]
    sg.update(m, new)
    assert sg.cache_info()["update_hits"] == before + 1
    assert all(a is b for a, b in zip(sg.generic.flatten(m)[1].values(), new.values(), strict=True))


# -- unflatten: outlined builders and loops of foreign classes ----------------------------


def _unflattened(gd: sg.GraphDef, st: sg.StateMap) -> Any:
    """``sg.unflatten`` twice, the second call served by an outlined unflatten (a builder or
    a loop: counted), checked against the reference: the same flatten (the very value,
    static and metadata objects) and the library's internals made alike."""
    sg.unflatten(gd, st)
    hits = outlined_unflatten_hits()
    out = sg.unflatten(gd, st)
    assert outlined_unflatten_hits() == hits + 1, sg.cache_info()
    ref = sg.generic.unflatten(gd, st)
    assert_same_flatten(sg.generic.flatten(out), sg.generic.flatten(ref))
    _same_internals(out, ref)
    return out


_GRAPH = (nnx.Pytree, nnx.Variable, brainstate.graph.Node, brainstate.State, list, dict, tuple)


def _objects(root: Any) -> list[Any]:
    return [x for _, x in sg.iter_node(root)] + [x for _, x in sg.iter_leaf(root) if isinstance(x, _GRAPH)]


def _same_internals(out: Any, ref: Any) -> None:
    """What the reference makes per object (and once per call), the outlined unflatten made
    alike: attribute order, statics and metadata the GraphDef's very objects, NNX's one
    TraceState per call shared by every Pytree and Variable, a PytreeState and a metadata dict
    of its own per object, BrainState's per-call tracer, level and source info, a HookManager
    of its own per State."""
    mine, theirs = _objects(out), _objects(ref)
    assert len(mine) == len(theirs)
    per_call: list[dict[str, set[Any]]] = [{}, {}]  # what is made once per call, by kind
    own: list[list[int]] = [[], []]  # what is made per object
    for a, b in zip(mine, theirs, strict=True):
        assert type(a) is type(b)
        if isinstance(a, (list, dict, tuple)):
            continue
        if isinstance(a, nnx.Variable):
            assert a._raw_value is b._raw_value
            assert a._var_metadata == b._var_metadata and a._var_metadata is not b._var_metadata
            assert all(a._var_metadata[k] is b._var_metadata[k] for k in b._var_metadata)
            for k, x in enumerate((a, b)):
                per_call[k].setdefault("TraceState", set()).add(id(x._trace_state))
                own[k].append(id(x._var_metadata))
            continue
        da, db = vars(a), vars(b)
        assert list(da) == list(db)
        for key, vb in db.items():
            va = da[key]
            if key == "_pytree__state":
                assert (va._initializing, va._is_setup) == (vb._initializing, vb._is_setup)
                for k, x in enumerate((va, vb)):
                    per_call[k].setdefault("TraceState", set()).add(id(x._trace_state))
                    own[k].append(id(x))
            elif key in ("_trace_state", "_source_info", "_level"):  # a BrainState State's
                assert type(va) is type(vb) and (key != "_level" or va == vb)
                for k, x in enumerate((va, vb)):
                    per_call[k].setdefault(key, set()).add(x if key == "_level" else id(x))
            elif key == "_hooks_manager":
                assert type(va) is type(vb) and va is not vb
                own[0].append(id(va))
                own[1].append(id(vb))
            elif key == "tag" and isinstance(a, brainstate.State):
                assert va == vb and type(va) is type(vb)
            elif not isinstance(vb, _GRAPH):
                assert va is vb, key  # a static, a bookkeeping item, a value: the very object
    assert per_call[0].keys() == per_call[1].keys()
    for kind, made in per_call[0].items():
        # one per call: NNX's TraceState; BrainState's tracer, source info and level
        assert len(made) == 1 and len(per_call[1][kind]) == 1, (kind, made)
        if kind != "_level":
            assert made != per_call[1][kind]  # this call's own
    for k in (0, 1):
        assert len(own[k]) == len(set(own[k]))


def _nnx_states_equal(a: Any, b: Any) -> None:
    ga, sa = nnx.split(a)
    gb, sb = nnx.split(b)
    assert ga == gb
    fa, fb = nnx.to_flat_state(sa), nnx.to_flat_state(sb)
    assert [p for p, _ in fa] == [p for p, _ in fb]
    for (p, x), (_, y) in zip(fa, fb, strict=True):
        assert type(x) is type(y) and x.get_metadata() == y.get_metadata(), p
        assert x.get_raw_value() is y.get_raw_value(), p


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_nnx_unflatten_is_outlined_and_exact(outlined: None, layout: str) -> None:
    m = LAYOUTS[layout](12)
    gd, st = _specialized(m)
    out = _unflattened(gd, st)
    src = dispatch._unflat[gd].source
    if layout == "attrs":  # one builder, called per layer, given the call's context
        assert src.count("def outlined0_build(vals, at, S, ctx0):") == 1
        assert src.count("= outlined0_build(vals, ") == 12
    else:  # a loop (ListMLP's head, a Linear of that shape too: one builder call)
        assert "# 12 of one shape" in src
    assert src.count("ctx0 = ") == 1  # one TraceState per call, made by the top function
    assert "12 x Linear" in sg.explain(gd) or "used 12 times" in sg.explain(gd)
    _nnx_states_equal(out, m)


def test_nnx_round_trip_then_split(outlined: None) -> None:
    m = ListMLP(9)
    _specialized(m)
    out = sg.unflatten(*sg.flatten(m))
    out = _unflattened(*sg.flatten(m))
    _nnx_states_equal(out, m)
    assert nnx.graphdef(out) == nnx.graphdef(m)


def test_nnx_unflatten_tie_across_layers_stays_straight_line(outlined: None) -> None:
    """A Variable shared by layers 3 and 7: those two layers are built by the top function
    (a back-reference names the one object), the runs around them by loops."""
    m = ListMLP(12)
    m.layers[7].kernel = m.layers[3].kernel
    gd, st = _specialized(m)
    out = _unflattened(gd, st)
    assert out.layers[7].kernel is out.layers[3].kernel
    assert out.layers[3].kernel is not out.layers[4].kernel
    src = dispatch._unflat[gd].source
    assert "# 3 of one shape" in src and "# 4 of one shape" in src  # layers 0-2, 8-11; 4-6 and the head
    _nnx_states_equal(out, m)
    new = sg.StateMap._make(st._table, [jnp.asarray(v) + 1 for v in st.values()])
    sg.update(out, new)
    assert out.layers[3].kernel.get_raw_value() is new[("layers", 3, "kernel")]


@pytest.mark.parametrize("change", ["longer", "shorter", "another shape", "another type"])
@pytest.mark.parametrize("layout", ["nnx.List", "data list"])
def test_nnx_unflatten_of_a_list_that_stops_being_homogeneous(outlined: None, change: str,
                                                              layout: str) -> None:
    m = LAYOUTS[layout](8)
    gd, st = _specialized(m)
    _unflattened(gd, st)
    rngs = nnx.Rngs(1)
    if change == "longer":
        m.layers.append(nnx.Linear(2, 2, rngs=rngs))
    elif change == "shorter":
        m.layers.pop()
    elif change == "another shape":
        m.layers[2] = nnx.Linear(2, 5, rngs=rngs)
    else:
        m.layers[2] = nnx.LayerNorm(2, rngs=rngs)
    gd2, st2 = _specialized(m)
    assert gd2 != gd
    out = _unflattened(gd2, st2)
    _nnx_states_equal(out, m)


class Scale:
    """A hashable metadata value, equal by value: equal GraphDefs hold distinct ones."""

    def __init__(self, x: float) -> None:
        self.x = x

    def __eq__(self, other: object) -> bool:
        return type(other) is Scale and other.x == self.x

    def __hash__(self) -> int:
        return hash(self.x)


def test_nnx_metadata_differing_per_occurrence(outlined: None) -> None:
    """One loop builds every layer; each Variable gets its own occurrence's metadata objects,
    from the GraphDef given (an equal one holds equal but distinct objects), in a dict of its own."""
    def make() -> Any:
        m = ListMLP(6)
        for i in range(6):
            m.layers[i].kernel.set_metadata(scale=Scale(float(i)))
        return m

    m1, m2 = make(), make()
    gd1, st1 = _specialized(m1)
    gd2, st2 = sg.flatten(m2)
    assert gd1 == gd2
    out1 = _unflattened(gd1, st1)
    assert "# 6 of one shape" in dispatch._unflat[gd1].source
    hits = outlined_unflatten_hits()
    out2 = sg.unflatten(gd2, st2)
    assert outlined_unflatten_hits() == hits + 1  # the same function, gd2's own objects
    for out, m in ((out1, m1), (out2, m2)):
        for i in range(6):
            got = out.layers[i].kernel.get_metadata()["scale"]
            assert got is m.layers[i].kernel.get_metadata()["scale"] and got.x == i
        metas = [id(out.layers[i].kernel._var_metadata) for i in range(6)]
        assert len(set(metas)) == 6
    assert out1.layers[0].kernel.get_metadata()["scale"] is not out2.layers[0].kernel.get_metadata()["scale"]


class Mine(nnx.Variable):
    pass


class Cell(nnx.Module):
    def __init__(self, i: int) -> None:
        self.p = nnx.Param(jnp.full((2,), float(i)))
        self.s = nnx.BatchStat(jnp.zeros((2,)))
        self.c = Mine(jnp.ones((1,)), note="mine")


def _containers(kind: str, n: int) -> Any:
    rngs = nnx.Rngs(0)
    if kind == "nnx.Dict":
        return nnx.Dict({f"l{i:02d}": nnx.Linear(2, 2, rngs=rngs) for i in range(n)})
    if kind == "nnx.Sequential":
        return nnx.Sequential(*[nnx.Linear(2, 2, rngs=rngs) for _ in range(n)])
    if kind == "nested lists":
        return nnx.List([nnx.List([nnx.Linear(2, 2, rngs=rngs) for _ in range(3)]) for _ in range(n)])
    return nnx.List([Cell(i) for i in range(n)])  # Variable subclasses


@pytest.mark.parametrize("kind", ["nnx.Dict", "nnx.Sequential", "nested lists", "Variable subclasses"])
def test_nnx_containers_and_variable_types(outlined: None, kind: str) -> None:
    m = _containers(kind, 6)
    gd, st = _specialized(m)
    out = _unflattened(gd, st)
    _nnx_states_equal(out, m)
    if kind == "Variable subclasses":
        assert [type(out[i].s) for i in range(6)] == [nnx.BatchStat] * 6
        assert type(out[2].c) is Mine and out[2].c.get_metadata()["note"] == "mine"


def test_nnx_unflattened_model_mutated_then_flattened(outlined: None) -> None:
    m = ListMLP(8)
    gd, st = _specialized(m)
    out = _unflattened(gd, st)
    raws = [m.layers[i].kernel.get_raw_value() for i in range(8)]
    out.layers[2].kernel[...] = jnp.zeros((2, 2))  # through NNX: at the trace level it was made
    out.layers[5] = nnx.Linear(2, 3, rngs=nnx.Rngs(2))
    out.layers[6].bias = out.layers[1].bias
    assert_same_flatten(sg.flatten(out), sg.generic.flatten(out))
    _gd, sm = _specialized(out)
    assert sm[("layers", 2, "kernel")] is out.layers[2].kernel.get_raw_value()
    assert [m.layers[i].kernel.get_raw_value() for i in range(8)] == raws  # the source model untouched
    y = out(jnp.ones((1, 2))) if callable(out) else None
    assert y is None or y.shape == (1, 1)


def test_nnx_unflatten_inside_jit_makes_variables_at_the_trace_level(outlined: None) -> None:
    """The call's TraceState is made inside the trace and passed to the loop's items: the
    rebuilt model may be mutated there, as the reference's (and nnx.merge's)."""
    m = ListMLP(6)
    gd, st = _specialized(m)
    _unflattened(gd, st)

    def step(values: sg.StateMap) -> Any:
        out = sg.unflatten(gd, values)
        out.layers[3].kernel[...] = out.layers[3].kernel[...] * 2
        return sg.generic.flatten(out)[1]

    hits = outlined_unflatten_hits()
    got = jax.jit(step)(st)
    assert outlined_unflatten_hits() == hits + 1
    sg.configure(enabled=False)
    try:
        want = jax.jit(step)(st)
    finally:
        sg.configure(enabled=True)
    assert list(got.keys()) == list(want.keys())
    for k in want.keys():
        np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(want[k]))


def test_brainstate_unflatten_is_outlined_and_exact(outlined: None) -> None:
    m = BstMLP(10)
    gd, st = _specialized(m)
    out = _unflattened(gd, st)
    src = dispatch._unflat[gd].source
    assert "# 10 of one shape" in src and src.count("ctx0 = ") == 1
    assert list(brainstate.graph.states(out).keys()) == list(brainstate.graph.states(m).keys())
    w = out.layers[4].weight
    assert w.value is m.layers[4].weight.value  # read through BrainState's own API
    w.value = jax.tree.map(jnp.zeros_like, w.value)
    assert_same_flatten(sg.flatten(out), sg.generic.flatten(out))
    assert m.layers[4].weight.value is not w.value


class BChain(brainstate.graph.Node):
    def __init__(self, depth: int) -> None:
        self.w = brainstate.ParamState(jnp.full((2,), float(depth)))
        self.next = BChain(depth - 1) if depth else None


class NChain(nnx.Module):
    def __init__(self, depth: int) -> None:
        self.w = nnx.Param(jnp.full((2,), float(depth)))
        self.next = NChain(depth - 1) if depth else None


@pytest.mark.parametrize("lib", ["brainstate", "nnx"])
def test_chains_of_foreign_nodes(outlined: None, lib: str) -> None:
    """A chain of nested nodes of one class is one loop over its links: BrainState Nodes
    (``object.__new__`` alone), NNX Pytrees too (each link's bookkeeping made in the loop's
    body from its own metadata, with the call's TraceState)."""
    m = BChain(12) if lib == "brainstate" else NChain(12)
    if lib == "nnx":
        m.next.next._pytree__state._is_setup = True  # a link's own bookkeeping, read per link
    gd, st = _specialized(m)
    out = _unflattened(gd, st)
    loops = dispatch._unflat[gd].plan.loops
    assert any("nested links" in x for x in loops), loops
    if lib == "nnx":
        assert out.next.next._pytree__state._is_setup and not out.next._pytree__state._is_setup
        _nnx_states_equal(out, m)
