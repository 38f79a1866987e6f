"""Generated code safety: user data never becomes code.

Keys, attribute names, static values, metadata and type names are user data.
Whatever they hold, flatten / unflatten / update must give the reference walker's
answer through both paths, the specialized path must actually be used, nothing
in them may run, and the generated source (as ``sg.explain`` shows it) must
carry them only inside string literals, comments or as bound constant names.
"""

from __future__ import annotations

import ast
import builtins
import enum
import io
import re
import tokenize
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
import pytest
from conftest import assert_same_flatten

import specgraph as sg

FLAG = "SPECGRAPH_PWNED"


def _payloads() -> list[str]:
    run = f"__import__('builtins').{FLAG} = 1"
    return [
        f"'); {run} #",
        f"\"); {run} #",
        f"']; {run} #",
        f"\n{run}\n",
        f"\\\n{run}",
        f"'''\n{run}\n'''",
        f'"""\n{run}\n"""',
        f"x' if {run.replace(' = 1', '')} else '",
        f"{{{{ {run} }}}}",
        "'); __import__('os')._exit(1) #",
        "\\", "\\'", "'", '"', "'''", '"""', "a\nb", "\r\n", "\r", "\x00", "\t", "\x0c", "\x1b[31m",
        "{{ 7*7 }}", "{% raw %}", "{% endraw %}", "{#", "#}", "{%- for s in steps %}", "{{", "}}",
        "%s", "{0}",
        "ключ", "é", "🙂", "\u2028", "\u2029", "\u0085", "x\u200by", "\u210c", "\ufb01", "\ud800",
        "", " ", "1abc", "class", "None", "True", "root", "vals", "droot", "dx1", "x1", "v0", "o0", "d",
        "EPOCH", "NEW", "KIND", "__builtins__", "__class__", "__dict__", "__name__", "# not a comment",
        "attr0", "attr1", "MISS", "OBJ_SETATTR", "value", "_metadata", "__weakref__", "__setattr__",
        "graph_invisible_attrs",
        "a" * 300,
    ]


PAYLOADS = _payloads()
PAYLOAD_IDS = [f"p{i}" for i in range(len(PAYLOADS))]


@pytest.fixture(autouse=True)
def _nothing_ran() -> Iterator[None]:
    """Fail if any payload was executed; turn warnings (e.g. a compile failure) into errors."""
    assert not hasattr(builtins, FLAG)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        yield
    ran = hasattr(builtins, FLAG)
    if ran:
        delattr(builtins, FLAG)
    assert not ran, "a payload was executed"


# -- models -----------------------------------------------------------------------


class Box(sg.Node):
    def __init__(self, **attrs: Any) -> None:
        vars(self).update(attrs)


class Marker:
    pass


def p(x: float = 1.0, **meta: Any) -> sg.Param:
    return sg.Param(np.full((2,), x, np.float32), **meta)


def marked(sm: sg.StateMap) -> sg.StateMap:
    fresh = [Marker() if t is not None else np.zeros(1) for t in sm.types]
    return jax.tree.unflatten(jax.tree.structure(sm), fresh)


# -- helpers ----------------------------------------------------------------------


def generated_sources(gd: sg.GraphDef) -> dict[str, str]:
    """The generated sources as ``sg.explain`` prints them in full (line-number prefixes removed)."""
    text = sg.explain(gd, max_lines=None)
    out: dict[str, str] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        m = re.fullmatch(r"Generated (\w+):", line)
        if m:
            current = []
            out[m.group(1)] = ""  # filled below
            kind = m.group(1)
            continue
        if current is not None:
            m = re.match(r"^\s+\d+ \| ?(.*)$", line)
            if m:
                current.append(m.group(1))
                continue
            out[kind] = "\n".join(current) + "\n"
            current = None
    if current is not None:
        out[kind] = "\n".join(current) + "\n"
    return out


FORBIDDEN = ("__import__", FLAG, "_exit", "eval", "exec", "builtins", "os")


def check_source(src: str, texts: tuple[str, ...] = ()) -> None:
    """``src`` parses; user text sits only in string literals and comments.

    Every identifier is ASCII (type names are sanitized, keys are never names) and
    none of the payloads' working parts is a token of code.
    """
    ast.parse(src)
    code_tokens = []
    strings = []
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type == tokenize.ERRORTOKEN:
            raise AssertionError(f"bad token {tok!r} in\n{src}")
        if tok.type == tokenize.STRING:
            strings.append(ast.literal_eval(tok.string))
        elif tok.type == tokenize.NAME:
            assert tok.string.isascii(), f"non-ASCII identifier {tok.string!r}"
            assert tok.string not in FORBIDDEN, f"{tok.string!r} in generated code:\n{src}"
            code_tokens.append(tok.string)
    for s in strings:
        if isinstance(s, str) and "7*7" in s:
            assert "{{ 7*7 }}" in s  # rendered as it is, never evaluated by the template engine
    assert not any(isinstance(s, str) and "49" in s for s in strings)
    for t in texts:
        if t.isidentifier() and t.isascii():
            continue  # e.g. an attribute named 'root' may be quoted; its spelling as a name is fine
        assert t not in code_tokens


def hits() -> tuple[int, int, int]:
    i = sg.cache_info()
    return i["hits"], i["unflatten_hits"], i["update_hits"]


def roundtrip(make: Callable[[], Any], texts: tuple[str, ...] = ()) -> sg.GraphDef:
    """Both paths agree on flatten, unflatten and update of ``make()``; the specialized one ran."""
    node, twin = make(), make()
    ref = sg.generic.flatten(node)
    gd, sm = ref
    # flatten
    assert_same_flatten(sg.flatten(node), ref)
    h, uh, ph = hits()
    assert_same_flatten(sg.flatten(node), ref)
    assert hits()[0] == h + 1, "flatten was not specialized"
    # unflatten
    rebuilt = [sg.generic.unflatten(gd, sm), sg.unflatten(gd, sm)]
    h, uh, ph = hits()
    rebuilt.append(sg.unflatten(gd, sm))
    assert hits()[1] == uh + 1, "unflatten was not specialized"
    for u in rebuilt:
        got = sg.generic.flatten(u)
        assert_same_flatten(got, ref)
        assert repr(got[0]) == repr(gd)  # keys keep their exact type (1 vs True vs 1.0)
    # update
    new = marked(sm)
    h, uh, ph = hits()
    sg.update(node, new)
    assert hits()[2] == ph + 1, "update was not specialized"
    sg.generic.update(twin, new)
    assert_same_flatten(sg.generic.flatten(node), sg.generic.flatten(twin))
    # the generated code
    srcs = generated_sources(gd)
    assert {"flatten", "update", "unflatten"} <= set(srcs)
    for src in srcs.values():
        check_source(src, texts)
    return gd


# -- hostile strings as keys, attribute names, statics, metadata -------------------


@pytest.mark.parametrize("key", PAYLOADS, ids=PAYLOAD_IDS)
def test_hostile_dict_key(key: str) -> None:
    roundtrip(lambda: Box(d={key: p(), "~last": np.ones(1), "": 3} if key else {key: p()}, w=p()), (key,))


@pytest.mark.parametrize("key", PAYLOADS, ids=PAYLOAD_IDS)
def test_hostile_dict_key_in_root_dict(key: str) -> None:
    roundtrip(lambda: {key: p(), "~zz": [np.ones(1), key]}, (key,))


@pytest.mark.parametrize("name", PAYLOADS, ids=PAYLOAD_IDS)
def test_hostile_attribute_name(name: str) -> None:
    def make() -> Box:
        b = Box(zzz=1)
        vars(b)[name] = p()
        vars(b)[name + "_static"] = 2
        return b

    gd = roundtrip(make, (name,))
    u = sg.unflatten(gd, sg.generic.flatten(make())[1])
    assert type(vars(u)[name]) is sg.Param
    assert vars(u)[name + "_static"] == 2


@pytest.mark.parametrize("text", PAYLOADS, ids=PAYLOAD_IDS)
def test_hostile_static_string_and_metadata(text: str) -> None:
    roundtrip(lambda: Box(s=text, t=(text, 1), w=p(tag=text), lst=[text, p()]), (text,))


@pytest.mark.parametrize("text", PAYLOADS[:12], ids=PAYLOAD_IDS[:12])
def test_hostile_invisible_attribute_name(text: str) -> None:
    hidden_cls = type("Hidden", (sg.Node,), {"graph_invisible_attrs": (text,)})

    def make() -> Any:
        h = hidden_cls()
        vars(h)[text] = object()
        vars(h)["w"] = p()
        return Box(h=h)

    roundtrip(make, (text,))
    node = make()
    sg.flatten(node)
    del vars(node.h)[text]  # an invisible attribute coming and going is no structural change
    assert_same_flatten(sg.flatten(node), sg.generic.flatten(node))


# -- non-str keys -------------------------------------------------------------------


class EvilStr(str):
    def __repr__(self) -> str:
        return f"__import__('builtins').{FLAG}"


class EvilInt(int):
    def __repr__(self) -> str:
        return f"__import__('builtins').{FLAG}"


class Color(enum.Enum):
    RED = "'); x = 1 #"
    BLUE = 2


class IntColor(enum.IntEnum):
    ONE = 1
    TWO = 2


NON_STR_KEYS: dict[str, list[Any]] = {
    "ints": [3, -1, 0, 10**30],
    "bools": [True, False],
    "bool_and_int": [False, 2],
    "floats": [1.5, -0.0, float("inf")],
    "tuples": [(1, "a"), (0, "'); x #"), ()],
    "frozenset": [frozenset({1, 2})],
    "none": [None],
    "bytes": [b"'); x #", b"\n"],
    "evil_str": [EvilStr("a"), EvilStr("b")],
    "evil_int": [EvilInt(1), EvilInt(2)],
    "int_enum": [IntColor.ONE, IntColor.TWO],
    "enum": [Color.RED],
}


@pytest.mark.parametrize("keys", NON_STR_KEYS.values(), ids=NON_STR_KEYS.keys())
def test_non_str_dict_keys(keys: list[Any]) -> None:
    def make() -> Box:
        d: dict[Any, Any] = {}
        for i, k in enumerate(keys):
            d[k] = p() if i % 2 == 0 else np.ones(1)
        return Box(d=d, static_keys={k: i for i, k in enumerate(keys)}, w=p())

    gd = roundtrip(make)
    sm = sg.generic.flatten(make())[1]
    sg.unflatten(gd, sm)
    u = sg.unflatten(gd, sm)
    assert [type(k) for k in u.d] == [type(k) for k in sorted(keys)]
    assert all(a is b or (type(a) is type(b) and a == b) for a, b in zip(u.d, sorted(keys), strict=True))


@pytest.mark.parametrize("key", [1, True, 1.0, IntColor.ONE], ids=["int", "bool", "float", "intenum"])
def test_keys_equal_across_types_each_alone(key: Any) -> None:
    roundtrip(lambda: Box(d={key: p()}))


def test_keys_equal_across_types_are_not_confused() -> None:
    """1, True and 1.0 are equal dict keys in Python; rebuilt dicts keep the key they had."""
    for key in (1, True, 1.0, IntColor.ONE):
        roundtrip(lambda key=key: Box(d={key: p()}))


# -- hostile static objects ----------------------------------------------------------


class EvilRepr:
    """A static whose repr/str/format is code."""

    def __repr__(self) -> str:
        return f"__import__('builtins').{FLAG} = 1"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)


class EvilStrStatic(str):
    def __repr__(self) -> str:
        return f"'' + __import__('builtins').__setattr__('{FLAG}', 1) or ''"


class EvilFloat(float):
    def __repr__(self) -> str:
        return f"__import__('builtins').{FLAG}"


def test_statics_with_hostile_reprs_are_bound_as_constants() -> None:
    evil, evil_s, evil_f = EvilRepr(), EvilStrStatic("x"), EvilFloat(1.5)
    gd = roundtrip(lambda: Box(e=evil, s=evil_s, f=evil_f, t=(evil_s, 2), w=p(), fn=EvilRepr))
    for src in generated_sources(gd).values():
        assert repr(evil) not in src and repr(evil_s) not in src and repr(evil_f) not in src
    node = Box(e=evil, s=evil_s, f=evil_f, t=(evil_s, 2), w=p(), fn=EvilRepr)
    gd2, sm = sg.flatten(node)
    sg.unflatten(gd2, sm)
    u = sg.unflatten(gd2, sm)
    assert u.e is evil and u.s is evil_s and u.f is evil_f and u.fn is EvilRepr


def test_explain_does_not_run_hostile_reprs() -> None:
    node = Box(e=EvilRepr(), d={EvilStr("k"): p()})
    gd, _ = sg.flatten(node)
    sg.flatten(node)
    text = sg.explain(gd)
    assert "Generated flatten" in text


# -- hostile type names ---------------------------------------------------------------

TYPE_NAMES = [
    "x'); __import__('builtins').SPECGRAPH_PWNED = 1 #",
    'E """\n    __import__("builtins").SPECGRAPH_PWNED = 1\n    """',
    "M0", "C0", "K0", "S0", "F0", "TD0", "T0", "P0",
    "__builtins__", "__name__", "root", "vals", "NEW", "EPOCH", "KIND", "ARRAY", "STATIC_SIG", "ONE_LEVEL",
    "int", "len", "type", "id", "class", "None", "d", "x1", "dx1", "v0", "o1", "ch1", "td1",
    "attr0", "attr1", "MISS", "OBJ_SETATTR",
    "²", "ﬁ", "Ünïcödé", "", "1abc", "a b", "A" * 200, "{{ 7*7 }}", "{% raw %}",
]


@pytest.mark.parametrize("name", TYPE_NAMES, ids=[f"t{i}" for i in range(len(TYPE_NAMES))])
def test_hostile_type_names(name: str) -> None:
    node_t = type(name, (sg.Node,), {})
    node_t.__qualname__ = name
    state_t = type(name, (sg.State,), {})
    state_t.__qualname__ = name

    def make() -> Any:
        inner = node_t()
        vars(inner).update(s=state_t(np.ones(1)), n=1, cls=node_t)
        return Box(inner=inner, w=p(), other=Box(z=state_t(2.0, tag=name)))

    roundtrip(make)


@pytest.mark.parametrize("name", TYPE_NAMES[:3], ids=["t0", "t1", "t2"])
def test_hostile_root_type_name(name: str) -> None:
    root_t = type(name, (sg.Node,), {})
    root_t.__qualname__ = name

    def make() -> Any:
        r = root_t()
        vars(r).update(w=p(), child=Box(v=p()))
        return r

    roundtrip(make)


def test_types_with_the_same_name_are_told_apart() -> None:
    a_t = type("Layer", (sg.Node,), {})
    b_t = type("Layer", (sg.Node,), {})
    s_a = type("Stat", (sg.State,), {})
    s_b = type("Stat", (sg.State,), {})
    make = lambda: Box(a=a_t(), b=b_t(), x=s_a(1.0), y=s_b(2.0))  # noqa: E731
    roundtrip(make)
    for attr, swapped in (("a", b_t()), ("x", s_b(1.0))):
        sg.clear_cache()
        sg.flatten(make())
        node = make()
        setattr(node, attr, swapped)
        before = sg.cache_info()["guard_misses"].get("type", 0)
        assert_same_flatten(sg.flatten(node), sg.generic.flatten(node))
        assert sg.cache_info()["guard_misses"].get("type", 0) == before + 1


def test_generated_sources_are_clean_for_a_plain_model() -> None:
    """The checker itself accepts ordinary generated code (and would reject a payload)."""
    gd = roundtrip(lambda: Box(l1=Box(w=p(), b=p(tag="t")), d={"k": [np.ones(1), 2]}, s="x"))
    for src in generated_sources(gd).values():
        check_source(src)
    with pytest.raises(AssertionError):
        check_source("def f():\n    __import__('os')\n")
    with pytest.raises(AssertionError):
        check_source("x = '{{ 7*7 }}'\ny = '49'\n")
