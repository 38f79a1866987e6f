"""StateMap keys: tuples, or the path as the repr prints it (``'layers.0.w'``).

The rule: a ``str`` key is looked up among the printed forms of the paths (entries'
``str`` joined by ``.``) and answers when exactly one path prints that way. ``0`` and
``'0'``, or ``('a.b',)`` and ``('a', 'b')``, print alike: such a string is ambiguous
and the error lists the tuples to use. A tuple that misses, but prints like exactly
one path, gets that path in its error.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from graphs import Box, Linear

import specgraph as sg


def model() -> Box:
    return Box(layers=[Linear(2, 2), Linear(2, 3)], head={"out.w": sg.Param(np.ones(1))})


def test_the_printed_path_is_a_key(impl) -> None:
    m = model()
    _, sm = impl.flatten(m)
    assert "layers.0.w: Param float32[2, 2]" in repr(sm)
    assert sm["layers.0.w"] is sm[("layers", 0, "w")] is m.layers[0].w.value
    assert sm["layers.1.b"] is m.layers[1].b.value
    assert sm["head.out.w"] is m.head["out.w"].value  # a key holding a dot, still one path
    assert "layers.0.w" in sm and "layers.0" not in sm
    assert sm.get("layers.1.w") is m.layers[1].w.value and sm.get("nope", 5) == 5
    # every printed row is a key that answers with its own value
    for row in repr(sm).splitlines()[1:-1]:
        text = row.strip().split(": ", 1)[0]
        assert sm[text] is sm[next(p for p in sm if ".".join(map(str, p)) == text)]


def test_a_string_no_path_prints_as_names_the_tuple_form(impl) -> None:
    _, sm = impl.flatten(model())
    with pytest.raises(KeyError, match=re.escape("no path prints as 'layers.2.w'")) as e:
        _ = sm["layers.2.w"]
    assert "('head', 'out.w')" in str(e.value)  # an example of the tuple form


def test_a_tuple_that_prints_like_a_path_suggests_it(impl) -> None:
    _, sm = impl.flatten(model())
    with pytest.raises(KeyError, match=re.escape("did you mean ('layers', 0, 'w')?")):
        _ = sm[("layers", "0", "w")]
    with pytest.raises(KeyError) as e:
        _ = sm[("layers", 7)]
    assert e.value.args == (("layers", 7),)  # nothing prints alike: the bare path


def test_paths_that_print_alike_are_ambiguous_as_strings(impl) -> None:
    m = Box(d=[sg.Param(np.zeros(1))], a=Box(b=sg.State(np.ones(1))))
    setattr(m, "a.b", sg.State(np.zeros(1)))  # attribute names holding a dot
    setattr(m, "d.0", sg.State(np.ones(1)))
    _, sm = impl.flatten(m)
    with pytest.raises(KeyError, match=re.escape("'d.0' is how ('d', 0) and ('d.0',) print")):
        _ = sm["d.0"]
    with pytest.raises(KeyError, match=re.escape("'a.b' is how ('a', 'b') and ('a.b',) print")):
        _ = sm["a.b"]
    assert "d.0" not in sm and "a.b" not in sm
    assert sm[("a.b",)] is getattr(m, "a.b").value and sm[("d", 0)] is m.d[0].value


def test_string_keys_on_a_split_part_and_after_tree_map(impl) -> None:
    import jax

    m = model()
    _, sm = impl.flatten(m)
    doubled = jax.tree.map(lambda v: v * 2, sm)
    np.testing.assert_array_equal(doubled["layers.0.w"], m.layers[0].w.value * 2)
    _, params, _ = sg.split(m, sg.Param, ...)
    assert params["head.out.w"] is m.head["out.w"].value
