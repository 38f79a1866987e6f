"""Bad input: clear errors, raised before anything is changed."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_served_by
from graphs import Bag, BatchStat, Box, assert_unchanged, mlp, snapshot, tied

import specgraph as sg
from specgraph._ir import GraphDef, NodeEdge, NodeSpec, PathTable


@pytest.mark.parametrize(
    "root",
    [1, "s", 2.5, None, sg.Param(1.0), BatchStat(np.ones(1)), np.ones(2), jnp.ones(2), len],
    ids=["int", "str", "float", "None", "Param", "BatchStat", "numpy", "jax", "function"],
)
def test_non_node_root_is_a_type_error(impl, root):
    with pytest.raises(TypeError, match="graph node"):
        impl.flatten(root)
    with pytest.raises(TypeError, match="graph node"):
        sg.states(root)
    with pytest.raises(TypeError, match="graph node"):
        impl.update(root, {})


def test_missing_path_at_unflatten_names_it(impl):
    gd, sm = impl.flatten(tied())
    flat = dict(sm.items())
    del flat[("enc", "b")]
    with pytest.raises(KeyError, match=r"\('enc', 'b'\)"):
        impl.unflatten(gd, flat)
    nested = sm.to_nested()
    del nested["s1"]
    with pytest.raises(KeyError, match=r"\('s1', 'scale'\)"):
        impl.unflatten(gd, nested)


def test_missing_path_at_merge_names_it():
    gd, params, rest = sg.split(tied(), sg.Param, ...)
    with pytest.raises(KeyError, match=r"\('s1', 'scale'\)"):
        sg.merge(gd, params)
    with pytest.raises(KeyError, match=r"\('dec', 'b'\)"):
        sg.merge(gd, rest)


def test_extra_path_is_an_error(impl):
    gd, sm = impl.flatten(tied())
    flat = dict(sm.items())
    flat[("enc", "nope")] = np.ones(1)
    with pytest.raises(KeyError, match=r"\('enc', 'nope'\)"):
        impl.unflatten(gd, flat)
    nested = sm.to_nested()
    nested["zzz"] = {"x": 1}
    with pytest.raises(KeyError, match="zzz"):
        impl.unflatten(gd, nested)
    with pytest.raises(KeyError, match="extra"):
        sg.merge(gd, sm, {("extra",): 1})


@pytest.mark.repeats
def test_unflatten_with_another_structure_is_an_error(impl):
    gd, _ = impl.flatten(tied())
    _, other = impl.flatten(mlp())
    with pytest.raises(KeyError):
        impl.unflatten(gd, other)


def test_unflatten_needs_a_graphdef(impl):
    _, sm = impl.flatten(tied())
    with pytest.raises(TypeError, match="GraphDef"):
        impl.unflatten(sm, sm)
    with pytest.raises(TypeError, match="GraphDef"):
        sg.merge("gd", sm)


def test_states_of_a_wrong_kind_are_a_type_error(impl):
    gd, sm = impl.flatten(tied())
    with pytest.raises(TypeError, match="StateMap"):
        impl.unflatten(gd, list(sm.values()))
    with pytest.raises(TypeError, match="StateMap"):
        impl.update(tied(), [1, 2])


class NotANode:
    """A plain class: not a Node and never registered."""


def test_unknown_node_type_at_unflatten():
    spec = NodeSpec(NotANode, 0, (), (), None)
    gd = GraphDef(NodeEdge(0), (spec,), PathTable((), ()))
    with pytest.raises(TypeError, match=r"NotANode.*not a graph node type"):
        sg.generic.unflatten(gd, {})
    with pytest.raises(TypeError, match="NotANode"):
        sg.unflatten(gd, {})


def test_failed_update_changes_nothing(impl):
    m = tied()
    m.arr = np.zeros(2)
    m.lst = [np.zeros(1)]
    snap = snapshot(m)
    values = {p: v for p, v in sg.generic.flatten(m)[1].items()}
    bad = {("arr",): np.ones(2), ("lst", 0): np.ones(1), ("enc", "b"): np.ones(1), ("nope",): 1}
    with pytest.raises(KeyError, match=r"\('nope',\)"):
        impl.update(m, bad)
    after = sg.generic.flatten(m)[1]
    assert all(after[p] is v for p, v in values.items())
    for obj, before in snap:
        if isinstance(obj, sg.State):
            assert obj.value is before[0]
    # a StateMap of another graph: also rejected before any write
    _, other = sg.generic.flatten(mlp())
    with pytest.raises(KeyError):
        impl.update(m, other)
    after = sg.generic.flatten(m)[1]
    assert all(after[p] is v for p, v in values.items())


def test_failed_update_with_a_nested_dict_changes_nothing(impl):
    m = tied()
    w = m.enc.w.value
    with pytest.raises(KeyError, match="nope"):
        impl.update(m, {"dec": {"w": np.zeros(4)}, "nope": 1})
    assert m.enc.w.value is w


def test_unsortable_dict_keys_name_the_path(impl):
    m = Box(inner=Box(d={1: sg.Param(1.0), "a": sg.Param(2.0)}))
    with pytest.raises(TypeError, match=r"\('inner', 'd'\)"):
        impl.flatten(m)
    with pytest.raises(TypeError, match="orderable"):
        sg.generic.flatten({"x": [{None: 1, 2: 3}]})


def test_non_string_attribute_names_are_an_error(impl):
    m = Box(a=Box())
    m.a.__dict__[3] = sg.Param(1.0)
    m.a.__dict__["b"] = sg.Param(1.0)
    with pytest.raises(TypeError, match=r"Box node at path \('a',\)"):
        impl.flatten(m)


def test_list_containing_itself(impl):
    lst: list = [sg.Param(1.0)]
    lst.append(lst)
    with pytest.raises(ValueError, match=r"list at path \('l', 1\) contains itself"):
        impl.flatten(Box(l=lst))
    with pytest.raises(ValueError, match="contains itself"):
        impl.flatten(lst)
    d: dict = {}
    d["self"] = [d]
    with pytest.raises(ValueError, match=r"dict at path \('d', 'self', 0\) contains itself"):
        impl.flatten(Box(d=d))


def test_a_list_shared_twice_is_not_a_cycle(impl):
    lst = [np.ones(1)]
    _, sm = impl.flatten(Box(a=lst, b=[lst, lst]))
    assert list(sm.keys()) == [("a", 0), ("b", 0, 0), ("b", 1, 0)]


def test_unhashable_state_metadata():
    gd, _ = sg.generic.flatten(Box(p=sg.Param(1.0, tags=[1, 2])))
    with pytest.raises(TypeError, match="unhashable: the metadata of the Param at path"):
        hash(gd)


def test_errors_in_custom_flatten_propagate(impl):
    class Broken(Bag):
        pass

    def bad_flatten(x: Bag) -> None:
        raise RuntimeError("boom")

    sg.register_graph_node_type(Broken, bad_flatten, None, None, None, None)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="boom"):
        impl.flatten(Box(b=Broken()))


def test_bad_filters():
    m = tied()
    with pytest.raises(TypeError, match="State subclass"):
        sg.split(m, int)
    with pytest.raises(TypeError, match="unsupported filter"):
        sg.states(m, "Param")
    with pytest.raises(TypeError, match="unsupported filter"):
        sg.Not(1.5)
    # a subscripted class is callable, but calling it makes a State: name the fix instead
    for call in (lambda f: sg.split(m, f, ...), lambda f: sg.states(m, f), lambda f: sg.Not(f)):
        with pytest.raises(TypeError, match=r"Param\[int\].*use Param itself"):
            call(sg.Param[int])


def test_immutable_root_update_is_validated_first(impl):
    p = BatchStat(np.zeros(1))
    root = (Box(s=p), np.zeros(1))
    _, sm = impl.flatten(root)
    with pytest.raises(ValueError):
        impl.update(root, jax.tree.map(lambda v: v + 1, sm))
    assert float(p.value[0]) == 0  # the State was not written either


# -- transforms: errors name the user's mistake -----------------------------------------


def _loss(m: Box) -> jax.Array:
    return jnp.sum(m.p.value)


@pytest.mark.parametrize("api", ["grad", "value_and_grad"])
def test_grad_argnums_past_the_arity_names_both(api: str) -> None:
    transform = getattr(sg, api)
    with pytest.raises(TypeError, match=rf"sg\.{api}\(_loss, argnums=1\): _loss takes 1 positional "
                                        r"argument, so there is no positional argument 1"):
        transform(_loss, argnums=1)
    with pytest.raises(TypeError, match=r"argnums=\(0, 3\).*takes 1 positional argument.*argument 3"):
        transform(_loss, argnums=(0, 3))
    with pytest.raises(TypeError, match="non-empty sequence of ints"):
        transform(_loss, argnums=())
    # *args: only the call can tell
    m = Box(p=sg.Param(jnp.ones(2)))
    varargs = transform(lambda *ms: _loss(ms[0]), argnums=1)
    with pytest.raises(TypeError, match=r"argnums=1\) differentiates positional argument 1, but the "
                                        r"call passed 1 positional argument"):
        varargs(m)
    last = sg.grad(lambda *ms: _loss(ms[-1]), argnums=-1)(Box(p=sg.Param(jnp.ones(2))), m)
    np.testing.assert_array_equal(last[("p",)], [1.0, 1.0])  # a negative index still works


def test_grad_of_a_bound_method_counts_its_arguments_without_self() -> None:
    class Model(sg.Node):
        def __init__(self) -> None:
            self.p = sg.Param(jnp.ones(2))

        def loss(self, other: Box) -> jax.Array:
            return jnp.sum(self.p.value * other.p.value)

    m, other = Model(), Box(p=sg.Param(jnp.full((2,), 3.0)))
    np.testing.assert_array_equal(sg.grad(m.loss, argnums=0)(other)[("p",)], [1.0, 1.0])
    with pytest.raises(TypeError, match="takes 1 positional argument"):
        sg.grad(m.loss, argnums=1)


@pytest.mark.parametrize(
    ("write", "where"),
    [
        (lambda m: setattr(m.q, "value", "text"),
         r"a str into the State at path \('q',\) of argument 0 inside"),
        (lambda m: setattr(m.d["k"], "value", (jnp.ones(1), object())),
         r"a object into the Param at path \('d', 'k'\) of argument 0 \(at \[1\] in its value\)"),
    ],
    ids=["str", "in-a-tuple"],
)
def test_a_non_array_written_inside_jit_names_the_state(served_by: str, write, where: str) -> None:
    def step(m: Box) -> jax.Array:
        write(m)
        return m.p.value

    m = Box(p=sg.Param(jnp.ones(2)), q=sg.State(jnp.zeros(1)), d={"k": sg.Param(jnp.ones(1))})
    before = snapshot(m)
    jitted = sg.jit(step)
    for _ in range(2):  # the second call is the one the specializer serves
        with pytest.raises(TypeError, match="step wrote " + where) as e:
            jitted(m)
        assert "_pure" not in str(e.value) and "_call_fn" not in str(e.value)
    assert_unchanged(before)  # nothing was written back
    assert_served_by(served_by)


def test_a_non_array_written_into_a_keyword_argument_inside_jit(served_by: str) -> None:
    @sg.jit
    def step(x: jax.Array, *, model: Box) -> jax.Array:
        model.q.value = None if x is None else "oops"
        return x

    with pytest.raises(TypeError, match=r"a str into the State at path \('q',\) of keyword argument 'model'"):
        step(jnp.ones(1), model=Box(q=sg.State(jnp.zeros(1))))


def test_a_structure_change_inside_jit_names_the_users_function() -> None:
    @sg.jit
    def grow(m: Box) -> None:
        m.extra = sg.Param(jnp.ones(1))

    with pytest.raises(ValueError, match="grow changed the structure of its arguments"):
        grow(Box(p=sg.Param(jnp.ones(1))))
