"""A differential fuzz of issue 10's hardening fixes (items 1, 2, 3, 8 and 9).

Random models mix what once fooled the fast path: instance dicts replaced by dict
subclasses (``Counter``, ``defaultdict``, ``OrderedDict``, one with a ``__missing__``,
one whose ``__getitem__``/``__len__`` lie), ``0.0`` / ``-0.0`` / NaN and ``1`` / ``1.0`` /
``True`` as statics, dict keys, state metadata, custom-node metadata and pytree aux data
(a ``register_dataclass`` meta field and custom aux data), custom nodes whose flatten
repeats a key, and statics that reach a node (bound methods, closures, partials). Between
calls one of them changes (an equal-but-different value, a renamed attribute behind a
``__missing__``, another ``__dict__`` type, ...).

Every call of the public API is compared with the reference walker: ``flatten`` (equal
GraphDef and hash, same paths, the very same values, or the same error), ``unflatten``
(the rebuilt graph flattens like the reference's rebuild, statics of the same type and
sign), ``update`` (every value written where the reference writes it), and the user's
objects are never changed by a flatten. After each model is dropped, no node it held may
stay alive. The counters say how many calls generated code served, so a clean run proves
something.

``tests/test_fuzz_hardening.py`` runs a short fuzz; ``python tests/fuzz_hardening.py
--cases N --seed S`` a longer one.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import gc
import math
import random
import sys
import weakref
from collections.abc import Callable
from typing import Any

import _fuzzkit
import jax
import numpy as np
from _fuzzkit import Tally

import specgraph as sg

NAN = float("nan")


# -- what the models are made of -----------------------------------------------------------


class Head(sg.Node):
    def __init__(self) -> None:
        self.w = sg.Param(np.ones(2, np.float32))

    def score(self, x: Any) -> Any:
        return x


class Model(sg.Node):
    pass


class Missing(dict):
    """Answers any absent key (a renamed attribute would read as present)."""

    def __missing__(self, key: Any) -> Any:
        return 0


class Lying(dict):
    """Overrides that a fast path reading through them would believe."""

    def __getitem__(self, key: Any) -> Any:
        return dict.get(self, key, 0)

    def __len__(self) -> int:
        return dict.__len__(self) + 1

    def __contains__(self, key: object) -> bool:
        return True


def _to_defaultdict(d: dict) -> dict:
    return collections.defaultdict(int, d)


DICT_TYPES: list[Callable[[dict], dict]] = [
    dict, collections.Counter, _to_defaultdict, collections.OrderedDict, Missing, Lying,
]


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Cfg:
    """A registered dataclass: ``eps`` is aux data (a meta field)."""

    x: Any
    eps: Any = dataclasses.field(metadata={"static": True})


class Scaled:
    """A custom pytree whose aux data is one user value."""

    def __init__(self, x: Any, eps: Any) -> None:
        self.x = x
        self.eps = eps


jax.tree_util.register_pytree_node(Scaled, lambda s: ((s.x,), s.eps), lambda eps, ch: Scaled(ch[0], eps))


class DupBag:
    """A custom node type whose flatten may yield a key twice (a ValueError, item 9)."""

    def __init__(self, tag: Any = "bag") -> None:
        self.tag = tag
        self.data: dict[Any, Any] = {}
        self.dup: Any = None

    def items(self) -> list[tuple[Any, Any]]:
        out = sorted(self.data.items(), key=lambda kv: repr(kv[0]))
        if self.dup is not None and self.dup in self.data:
            out.append((self.dup, self.data[self.dup]))
        return out


def _dup_empty(tag: Any) -> DupBag:
    return DupBag(tag)


sg.register_graph_node_type(DupBag, lambda b: (b.items(), b.tag), lambda b, k, v: b.data.__setitem__(k, v),
                            lambda b, k: b.data.pop(k), _dup_empty, lambda b: b.data.clear())

# Equal (or never equal) but distinguishable values: the statics rule must tell them apart.
SAME_VALUES: list[list[Any]] = [
    [1, 1.0, True], [0, 0.0, -0.0, False], [NAN], [(0.0,), (-0.0,)], [(1,), (1.0,)],
]
PLAIN = [v for group in SAME_VALUES for v in group]
PLAIN_NO_NAN = [v for v in PLAIN if v == v]


def _variant(rng: random.Random, v: Any) -> Any:
    """Another value equal to ``v`` (or a new NaN), else any plain value."""
    for group in SAME_VALUES:
        if any(v is g or (type(v) is type(g) and v == g) for g in group):
            if group[0] is NAN:
                return float("nan")  # a distinct NaN object
            return rng.choice(group)
    return _plain(rng)


def _closure_over(node: Any) -> Any:
    return lambda x: node.score(x)


def _apply(node: Any, x: Any) -> Any:
    return node.score(x)


def _reaching_static(rng: random.Random, node: Any) -> Any:
    kind = rng.choice(["bound", "closure", "partial", "plain"])
    if kind == "bound":
        return node.score
    if kind == "closure":
        return _closure_over(node)
    if kind == "partial":
        return functools.partial(_apply, node)
    return _apply  # reaches no user data: the identity guard


def _plain(rng: random.Random) -> Any:
    """A plain static; rarely a NaN (a structure holding one is never served by generated
    code, so NaN everywhere would leave little for the fast path to get wrong)."""
    return float("nan") if rng.random() < 0.05 else rng.choice(PLAIN_NO_NAN)


def build(rng: random.Random) -> Model:
    m = Model()
    m.head = Head()
    m.other = Head()
    m.arr = np.ones(1, np.float32)
    m.k = _plain(rng)
    meta = {"tag": _plain(rng)} if rng.random() < 0.7 else {}
    m.s = sg.Param(np.zeros(2, np.float32), **meta)
    family = rng.choice([[0.0, -0.0, 1, 2.5], [(0.0,), (-0.0,), (1,), (2.5,)]])  # sortable together
    keys = rng.sample(family, rng.randint(1, 3))
    m.d = {k: sg.State(np.full(1, i, np.float32)) for i, k in enumerate(keys)}
    m.cfg = Cfg(sg.Param(np.ones(1, np.float32)), _plain(rng))
    m.sc = Scaled(sg.Param(np.ones(1, np.float32)), _plain(rng))
    if rng.random() < 0.6:
        m.cb = _reaching_static(rng, rng.choice([m.head, m.other]))
    if rng.random() < 0.25:  # custom node types stay generic: a quarter of the models
        bag = DupBag(_plain(rng))
        bag.data.update(a=sg.Param(np.ones(1, np.float32)), b=np.zeros(1, np.float32), c=_plain(rng))
        bag.dup = rng.choice([None, None, "a", "b"])
        m.bag = bag
    if rng.random() < 0.25:
        _set_dict_type(rng, rng.choice([m, m.head]))
    return m


def _set_dict_type(rng: random.Random, node: Any) -> None:
    node.__dict__ = rng.choice(DICT_TYPES)(dict(vars(node)))


# -- mutations between calls ----------------------------------------------------------------


def mutate(rng: random.Random, m: Model) -> str:
    what = rng.choice(["static", "meta", "key", "aux_dc", "aux_custom", "dict_type", "rename", "callback",
                       "dup", "bag_meta", "reaching", "none"])
    if what == "static":
        name = "k" if "k" in dict.keys(vars(m)) else "z_k"
        dict.__setitem__(vars(m), name, _variant(rng, dict.__getitem__(vars(m), name)))
    elif what == "meta":
        tag = _variant(rng, m.s.metadata.get("tag", 0.0))
        m.s = sg.Param(m.s.value, tag=tag)
    elif what == "key":
        items = list(m.d.items())
        i = rng.randrange(len(items))
        new_key = _variant(rng, items[i][0])
        if not any(new_key == k and j != i for j, (k, _) in enumerate(items)):
            items[i] = (new_key, items[i][1])
        m.d = dict(items)
    elif what == "aux_dc":
        m.cfg = Cfg(m.cfg.x, _variant(rng, m.cfg.eps))
    elif what == "aux_custom":
        m.sc = Scaled(m.sc.x, _variant(rng, m.sc.eps))
    elif what == "dict_type":
        node = rng.choice([m, m.head])
        if type(vars(node)) is dict:
            _set_dict_type(rng, node)
        else:  # back to a plain dict (the fast path may serve it again)
            node.__dict__ = dict(dict.items(vars(node)))
    elif what == "rename":  # item 2's attack: a renamed attribute behind a __missing__
        node = rng.choice([m, m.head])
        name = "k" if node is m else "w"
        if node is m and dict.__contains__(vars(m), "k") and rng.random() < 0.7:
            # A static that a __missing__ answers alike (0), its structure compiled, then renamed.
            missing_type = rng.choice([Missing, collections.Counter, _to_defaultdict])
            m.__dict__ = missing_type(dict(dict.items(vars(m))))
            dict.__setitem__(vars(m), "k", 0)
            for _ in range(2):  # (check_step compares what follows with the reference)
                _outcome(lambda: sg.flatten(m))
        d = vars(node)
        if dict.__contains__(d, name):
            dict.__setitem__(d, "z_" + name, dict.pop(d, name))
        elif dict.__contains__(d, "z_" + name):
            dict.__setitem__(d, name, dict.pop(d, "z_" + name))
    elif what == "callback":
        m.cb = _reaching_static(rng, rng.choice([m.head, m.other]))
    elif what == "dup" and hasattr(m, "bag"):
        m.bag.dup = rng.choice([None, "a", "b", "b", "c"])  # b: an array, two paths
    elif what == "bag_meta" and hasattr(m, "bag"):
        m.bag.tag = _variant(rng, m.bag.tag)
    elif what == "reaching":  # a key, metadata or aux data that reaches a node
        cb = _reaching_static(rng, rng.choice([m.head, m.other]))
        site = rng.choice(["meta", "key", "aux_dc", "aux_custom", "bag"])
        if site == "meta":
            m.s = sg.Param(m.s.value, tag=cb)
        elif site == "key":
            m.d = {cb: next(iter(m.d.values()))}
        elif site == "aux_dc":
            m.cfg = Cfg(m.cfg.x, cb)
        elif site == "aux_custom":
            m.sc = Scaled(m.sc.x, cb)
        elif hasattr(m, "bag"):
            m.bag.tag = cb
    return what


# -- the differential checks ------------------------------------------------------------------


def _outcome(fn: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return "ok", fn()
    except Exception as e:
        return "error", (type(e), str(e))


def _snapshot(m: Any) -> list[tuple[Any, ...]]:
    """What a flatten must not change: each node's dict type, keys and values."""
    out = []
    for node in (m, m.head, m.other, getattr(m, "bag", None)):
        if node is not None:
            d = vars(node)
            out.append((type(d), list(dict.items(d))))
    return out


def _same_flatten(a: tuple[Any, Any], b: tuple[Any, Any]) -> None:
    gd_a, sm_a = a
    gd_b, sm_b = b
    assert gd_a == gd_b and hash(gd_a) == hash(gd_b), (gd_a, gd_b)
    assert gd_a.paths == gd_b.paths
    assert all(x is y for x, y in zip(sm_a.values(), sm_b.values(), strict=True))


def _static_sig(x: Any) -> Any:
    """What must survive a round trip: the types, signs and NaN-ness of the statics."""
    if isinstance(x, float):
        return ("float", math.copysign(1.0, x), x != x)
    if isinstance(x, tuple):
        return tuple(_static_sig(i) for i in x)
    return type(x).__name__


def _rebuilt_statics(m: Any) -> list[Any]:
    d = vars(m)
    k = dict.get(d, "k", dict.get(d, "z_k"))
    keys = sorted((repr(key), _static_sig(key)) for key in m.d)  # a rebuilt dict's keys are sorted
    return [_static_sig(v) for v in (k, m.cfg.eps, m.sc.eps, m.s.metadata.get("tag"))] + keys


def check_step(m: Model, rng: random.Random, tally: Tally) -> None:
    ref = _outcome(lambda: sg.generic.flatten(m))
    before = _snapshot(m)
    info = sg.cache_info()
    pub = [_outcome(lambda: sg.flatten(m)) for _ in range(2)]
    hit = sg.cache_info()["hits"] - info["hits"]
    tally.add("flatten_calls", 2)
    tally.add("flatten_hits", hit)
    assert _snapshot(m) == before, "a flatten changed the user's objects"
    for got in pub:
        assert got[0] == ref[0], (got, ref)
        if got[0] == "error":
            assert got[1] == ref[1], (got, ref)
    if ref[0] == "error":
        tally.add("flatten_errors_alike")
        return
    for got in pub:
        _same_flatten(got[1], ref[1])
    gd, sm = pub[1][1]
    assert len(set(gd.paths)) == len(gd.paths), "two values at one path (a custom flatten repeated a key)"

    # unflatten, twice (the second call is specialized), against the reference's rebuild
    want = sg.generic.unflatten(ref[1][0], ref[1][1])
    info = sg.cache_info()
    for _ in range(2):
        new = sg.unflatten(gd, sm)
        _same_flatten(sg.generic.flatten(new), sg.generic.flatten(want))
        assert _rebuilt_statics(new) == _rebuilt_statics(m), (_rebuilt_statics(new), _rebuilt_statics(m))
        assert (getattr(new, "cb", None) is getattr(m, "cb", None))
    tally.add("unflatten_calls", 2)
    tally.add("unflatten_hits", sg.cache_info()["unflatten_hits"] - info["unflatten_hits"])

    # update: new values, written where the reference writes them (every value here sits
    # in a State or a node: all are written)
    for name, update in (("public", sg.update), ("generic", sg.generic.update)):
        fresh = [np.asarray(v) + np.float32(1) for v in sm.values()]
        new_sm = jax.tree.unflatten(jax.tree.structure(sm), fresh)
        info = sg.cache_info()
        got = _outcome(lambda: update(m, new_sm))  # noqa: B023 - called at once
        assert got[0] == "ok", got
        if name == "public":
            tally.add("update_calls")
            tally.add("update_hits", sg.cache_info()["update_hits"] - info["update_hits"])
        after = sg.generic.flatten(m)
        assert after[0] == gd
        assert all(x is y for x, y in zip(after[1].values(), fresh, strict=True)), name
    tally.add("steps_checked")


def run_case(seed: int, steps: int, tally: Tally) -> None:
    rng = random.Random(seed)
    m = build(rng)
    check_step(m, rng, tally)
    for _ in range(steps):
        tally.add("mutation_" + mutate(rng, m))
        check_step(m, rng, tally)
    # Nothing the model held stays alive once it is dropped (item 8), whatever the caches saw.
    held = [m, m.head, m.other, *(v for h in (m.head, m.other) for v in dict.values(vars(h)))]
    alive = [weakref.ref(x) for x in held if isinstance(x, sg.Node | sg.State)]
    del held
    del m
    gc.collect()
    leaked = sum(r() is not None for r in alive)
    tally.add("leaked_objects", leaked)
    assert leaked == 0, f"seed {seed}: a cache kept {leaked} of the model's objects alive"


def fuzz(cases: int, seed: int, steps: int = 8) -> collections.Counter[str]:
    """Run ``cases`` random models of ``steps`` mutations each; the tally of what ran."""
    tally = Tally()
    sg.clear_cache()
    max_variants = sg.runtime.cache.CONFIG.max_variants
    sg.configure(max_variants=64)  # one root type sees many structures here
    try:
        for case in range(cases):
            run_case(seed * 1_000_003 + case, steps, tally)
            if case % 16 == 15:
                info = sg.cache_info()
                tally.add("guard_misses", sum(info["guard_misses"].values()))
                sg.clear_cache()  # bound the variants per type
        info = sg.cache_info()
        tally.add("guard_misses", sum(info["guard_misses"].values()))
    finally:
        sg.configure(max_variants=max_variants)
        sg.clear_cache()
    return tally.counts


def main(argv: list[str] | None = None) -> int:
    return _fuzzkit.main(__doc__ or "", fuzz, argv, cases=200, steps=8)


if __name__ == "__main__":
    sys.exit(main())
