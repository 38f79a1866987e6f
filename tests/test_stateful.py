"""A stateful differential test: one live graph, mutated between every public operation.

``GraphMachine`` holds a graph of ``Node`` subclasses (hostile attribute names included),
``State`` / ``Param`` / ``BatchStat`` (some with metadata), bare numpy and jax arrays,
statics, lists / tuples / dicts / a namedtuple, shared nodes and states and a cycle. Its
rules interleave ``flatten`` / ``unflatten`` / ``update`` / ``split`` / ``merge`` /
``states`` with mutations of the graph. After every step the public path (served by
generated code once a structure has been seen) must equal the reference walker
``specgraph.generic``: equal ``GraphDef`` and hash, the same paths, the very same value
objects. ``unflatten`` results re-flatten identically and ``update`` results equal a
generic update of a twin graph (a ``deepcopy`` that keeps the value objects).
"""

from __future__ import annotations

import copy
import functools
import os
import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_same_flatten
from graphs import BatchStat, Pair
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
)

import specgraph as sg
from specgraph.runtime.cache import CONFIG


def _fill(node: Any, attrs: dict[str, Any]) -> Any:
    vars(node).update(attrs)  # attribute names need not be identifiers
    return node


class Net(sg.Node):
    def __init__(self, **attrs: Any) -> None:
        _fill(self, attrs)


class Block(sg.Node):
    def __init__(self, **attrs: Any) -> None:
        _fill(self, attrs)


class Other(sg.Node):
    def __init__(self, **attrs: Any) -> None:
        _fill(self, attrs)


def _activation(x: Any) -> Any:  # a Python function as a static (its type is FunctionType)
    return x


NODE_TYPES = [Block, Other, Net]
NAMES = ["w", "b", "a", "layers", "0", "a b", "é", "'); import os #", "__dict__", "class", "\n", "", "x.y"]
DICT_KEYS = ["k", "lr", "é", "0", "", "'); import os #", "a b"]
NAN = float("nan")
# Static values chosen so that neighbours are equal across types (1 == 1.0 == True), equal
# but distinguishable (0.0 / -0.0), never equal (NaN) or collapsed tuples of mixed types.
STATIC_POOL: list[Any] = [
    1, 1.0, True, 0, False, 0.0, -0.0, 2**70, "a", "b", "", "'); import os #", None,
    (1, "a"), (1, True), (1, 1), (1.0, 1), (), (NAN, 1), len, abs, _activation, Block,
]
STATE_KINDS: list[tuple[type, dict[str, Any]]] = [
    (sg.State, {}),
    (sg.Param, {}),
    (sg.Param, {"tag": "t"}),
    (sg.Param, {"tag": "u"}),
    (BatchStat, {}),
    (BatchStat, {"momentum": 0.9}),
]
LIMIT = 45  # mutable locations in the graph beyond which nothing more is added

# A NaN static is never equal to itself: no structure holding one is ever served by generated
# code. NaN comes and goes through its own rule (toggle_nan) so most steps can still hit.
statics = st.sampled_from(STATIC_POOL)


def _array(n: int, use_jax: bool) -> Any:
    return jnp.arange(n, dtype=jnp.float32) if use_jax else np.arange(n, dtype=np.float32)


arrays = st.builds(_array, st.integers(0, 3), st.booleans())
state_values = st.one_of(arrays, st.floats(-4, 4, allow_nan=False))


def _state(kind: int, value: Any) -> sg.State:
    cls, meta = STATE_KINDS[kind]
    return cls(value, **meta)


new_states = st.builds(_state, st.integers(0, len(STATE_KINDS) - 1), state_values)


def _is_array(x: Any) -> bool:
    return isinstance(x, np.ndarray | jax.Array)


def _is_static(x: Any) -> bool:
    return not isinstance(x, sg.Node | sg.State | list | tuple | dict) and not _is_array(x)


def _special_flatten(n: Any) -> tuple[list[tuple[str, Any]], str]:
    return sorted(vars(n).items()), "registered"  # metadata: the GraphDef changes


def _special_set_key(n: Any, k: str, v: Any) -> None:
    vars(n)[k] = v


def _special_pop_key(n: Any, k: str) -> Any:
    return vars(n).pop(k)


def _special_empty(cls: type, meta: Any) -> Any:
    return object.__new__(cls)


def _special_clear(n: Any) -> None:
    vars(n).clear()


# -- looking at the live graph ----------------------------------------------------------


class Scan:
    """What is reachable from the root, in a deterministic order.

    ``locs``: every mutable location ``(holder, key)`` (a node's ``__dict__``, a list or a
    dict) with the value it holds; ``leaves``: every array, static and state value.
    """

    def __init__(self, root: Any) -> None:
        self.nodes: list[Any] = []
        self.states: list[sg.State] = []
        self.lists: list[list] = []
        self.dicts: list[dict] = []
        self.locs: list[tuple[Any, Any]] = []
        self.leaves: list[Any] = []
        self.refs: dict[int, int] = {id(root): 1}  # how many locations hold each node/state
        seen: set[int] = set()
        stack = [root]
        while stack:
            x = stack.pop()
            if isinstance(x, sg.Node | sg.State | list | dict | tuple):
                if id(x) in seen:
                    continue
                seen.add(id(x))
            if isinstance(x, sg.Node):
                self.nodes.append(x)
                self._holder(vars(x), list(vars(x)), stack)
            elif isinstance(x, sg.State):
                self.states.append(x)
                self.leaves.append(x.value)
            elif isinstance(x, list):
                self.lists.append(x)
                self._holder(x, range(len(x)), stack)
            elif isinstance(x, dict):
                self.dicts.append(x)
                self._holder(x, list(x), stack)
            elif isinstance(x, tuple):
                stack.extend(reversed(x))
            else:
                self.leaves.append(x)

    def _holder(self, holder: Any, keys: Any, stack: list[Any]) -> None:
        for k in keys:
            v = holder[k]
            self.locs.append((holder, k))
            if isinstance(v, sg.Node | sg.State):
                self.refs[id(v)] = self.refs.get(id(v), 0) + 1
        stack.extend(holder[k] for k in reversed(list(keys)))

    def locs_where(self, pred: Callable[[Any], bool]) -> list[tuple[Any, Any]]:
        return [(h, k) for h, k in self.locs if pred(h[k])]


def _containers_within(c: Any) -> set[int]:
    """ids of the lists/dicts/tuples reachable from ``c`` without passing through a node."""
    out: set[int] = set()
    stack = [c]
    while stack:
        x = stack.pop()
        if isinstance(x, list | tuple | dict) and id(x) not in out:
            out.add(id(x))
            stack.extend(x.values() if isinstance(x, dict) else x)
    return out


def _shares_containers(root: Any) -> bool:
    """Whether a list or dict sits at two paths of the flattened graph.

    Then the update writes one container slot once per path, and the last write wins (in
    both paths alike), so the values read back cannot all be the ones given. Containers are
    counted as the flatten expands them: per occurrence, through tuples and namedtuples
    too (a list inside a tuple that two nodes hold, or a list aliased next to the tuple
    that holds it, is shared although no node or list holds it twice); nodes once.
    """
    seen_nodes: set[int] = set()
    containers: set[int] = set()
    stack = [root]
    while stack:
        x = stack.pop()
        if isinstance(x, sg.Node):
            if id(x) not in seen_nodes:
                seen_nodes.add(id(x))
                stack.extend(vars(x).values())
        elif isinstance(x, list | dict):
            if id(x) in containers:
                return True
            containers.add(id(x))
            stack.extend(x.values() if isinstance(x, dict) else x)
        elif isinstance(x, tuple):
            stack.extend(x)
    return False


def _twin_node(n: Any, cls: type | None = None) -> Any:
    """A new node of the same (or another) type holding the very same children."""
    t = object.__new__(cls or type(n))
    vars(t).update(vars(n))
    return t


def _twin_state(s: sg.State, kind: int | None = None) -> sg.State:
    if kind is None:
        return copy.copy(s)  # same type, metadata and value object
    return _state(kind, s.value)


def _deep_twin(root: Any) -> Any:
    """A structural copy with the same sharing (containers too) and the same value objects."""
    memo = {id(v): v for v in Scan(root).leaves}
    return copy.deepcopy(root, memo)


def _in_mutable_holder(root: Any, path: tuple) -> bool:
    """Whether the array leaf at ``path`` sits in a node, a list or a dict (not a tuple)."""
    x = root
    for k in path[:-1]:
        x = vars(x)[k] if isinstance(x, sg.Node) else getattr(x, k) if isinstance(x, Pair) else x[k]
    return isinstance(x, sg.Node | list | dict)


def _outcome(fn: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return "ok", fn()
    except Exception as e:  # the two paths must fail alike
        return "error", type(e)


def _fresh(v: Any) -> Any:
    """A new value object standing for ``v`` (so that writes can be told apart)."""
    if _is_array(v):
        return np.asarray(v) + np.float32(1)
    if isinstance(v, float):
        return v + 1.0
    return np.zeros(1, np.float32)


def _assert_same_dict(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for k in a:
        assert a[k] is b[k], k


def _check_matches_reference(root: Any) -> bool:
    """The public flatten equals the reference, twice; True when the first was a hit."""
    ref = sg.generic.flatten(root)
    before = sg.cache_info()["hits"]
    assert_same_flatten(sg.flatten(root), ref)
    first_hit = sg.cache_info()["hits"] > before
    assert_same_flatten(sg.flatten(root), ref)
    return first_hit


TALLY: dict[str, int] = {}


def _count(key: str, n: int = 1) -> None:
    TALLY[key] = TALLY.get(key, 0) + n


# -- the machine --------------------------------------------------------------------------


class GraphMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        # One root type sees dozens of structures here: keep it polymorphic (default bound: 8,
        # past which it would stay generic; test_runtime covers that) and restore in teardown.
        self.max_variants = CONFIG.max_variants
        sg.configure(max_variants=64)
        sg.clear_cache()
        self.steps = 0
        _count("graphs")
        # A node type of this example only, that a rule may register as a custom node type.
        self.special = type("Special", (Block,), {})
        self.registered = False
        self.node_types = [*NODE_TYPES, self.special]
        w = sg.Param(np.ones(3, np.float32))
        enc = Block(w=w, b=sg.Param(np.zeros(3, np.float32), tag="t"), **{"a b": 1, "é": "x"})
        dec = Block(w=w, b=BatchStat(np.zeros(3, np.float32)), act="relu")
        self.root = Net(
            enc=enc,
            dec=dec,
            again=enc,
            layers=[Other(p=sg.State(1.0)), jnp.arange(3.0), 2],
            cfg={"lr": 0.1, "k": np.ones(2, np.float32), "'); import os #": (1, "a")},
            tup=(np.zeros(1, np.float32), 7, "x"),
            pair=Pair(np.ones(2, np.float32), 3),
            n=3,
        )
        dec.parent = self.root  # a cycle through a node
        enc.s = self.special(x=sg.State(np.zeros(1, np.float32)), n=1)
        self.last_sm: sg.StateMap | None = None
        self.scan = Scan(self.root)

    # -- helpers ----------------------------------------------------------------------
    def _values(self) -> st.SearchStrategy[Any]:
        """New children: fresh or existing nodes and states, arrays, statics, containers."""
        sc = self.scan
        simple = [new_states, statics, arrays, st.sampled_from(sc.states)] if sc.states else \
            [new_states, statics, arrays]
        small_nodes = st.builds(
            _fill,
            st.sampled_from(self.node_types).map(lambda t: object.__new__(t)),
            st.dictionaries(st.sampled_from(NAMES), st.one_of(*simple), max_size=3),
        )
        leaf = st.one_of(*simple, small_nodes, st.sampled_from(sc.nodes))
        return st.recursive(
            leaf,
            lambda kids: st.one_of(
                st.lists(kids, max_size=3),
                st.lists(kids, max_size=3).map(tuple),
                st.dictionaries(st.sampled_from(DICT_KEYS), kids, max_size=3),
                st.builds(Pair, kids, kids),
            ),
            max_leaves=4,
        )

    def _small(self) -> bool:
        return len(self.scan.locs) < LIMIT

    def _pick(self, data: st.DataObject, items: list[Any], label: str) -> Any:
        if not items:
            event(f"{label}: nothing to pick")
            return None
        return data.draw(st.sampled_from(items), label=label)

    # -- mutations ----------------------------------------------------------------------
    @precondition(_small)
    @rule(data=st.data())
    def add_attribute(self, data: st.DataObject) -> None:
        node = self._pick(data, self.scan.nodes, "node")
        name = data.draw(st.sampled_from(NAMES), label="name")
        vars(node)[name] = data.draw(self._values(), label="value")

    @rule(data=st.data())
    def delete_item(self, data: st.DataObject) -> None:
        loc = self._pick(data, self.scan.locs, "location")
        if loc is not None:
            del loc[0][loc[1]]

    @rule(data=st.data(), how=st.sampled_from(["same", "other", "any"]))
    def replace_state(self, data: st.DataObject, how: str) -> None:
        loc = self._pick(data, self.scan.locs_where(lambda v: isinstance(v, sg.State)), "state location")
        if loc is None:
            return
        old = loc[0][loc[1]]
        if how == "same":
            new = _twin_state(old)
        else:
            kinds = [i for i, (c, m) in enumerate(STATE_KINDS)
                     if how == "any" or (c, tuple(sorted(m.items()))) != (type(old), old._metadata)]
            new = _twin_state(old, data.draw(st.sampled_from(kinds), label="state kind"))
        loc[0][loc[1]] = new

    @rule(data=st.data())
    def set_state_value(self, data: st.DataObject) -> None:
        s = self._pick(data, self.scan.states, "state")
        if s is not None:
            s.value = data.draw(st.one_of(state_values, st.just(s.value)), label="value")

    @rule(data=st.data(), kind=st.sampled_from([sg.Node, sg.State]))
    def alias(self, data: st.DataObject, kind: type) -> None:
        """Make a location hold another existing node (maybe a cycle) or state."""
        loc = self._pick(data, self.scan.locs_where(lambda v: isinstance(v, kind)), "location")
        pool = self.scan.nodes if kind is sg.Node else self.scan.states
        if loc is not None:
            loc[0][loc[1]] = self._pick(data, pool, "target")

    @rule(data=st.data())
    def unalias(self, data: st.DataObject) -> None:
        """Replace one reference to a shared node or state by a fresh twin."""
        refs = self.scan.refs
        loc = self._pick(
            data,
            self.scan.locs_where(lambda v: isinstance(v, sg.Node | sg.State) and refs[id(v)] > 1),
            "shared location",
        )
        if loc is not None:
            v = loc[0][loc[1]]
            loc[0][loc[1]] = _twin_state(v) if isinstance(v, sg.State) else _twin_node(v)

    @rule(data=st.data())
    def replace_node(self, data: st.DataObject) -> None:
        """A node replaced by a twin of the same type or of another type."""
        loc = self._pick(data, self.scan.locs_where(lambda v: isinstance(v, sg.Node)), "node location")
        if loc is not None:
            cls = data.draw(st.sampled_from([None, *self.node_types]), label="type")
            loc[0][loc[1]] = _twin_node(loc[0][loc[1]], cls)

    @precondition(_small)
    @rule(data=st.data())
    def alias_container(self, data: st.DataObject) -> None:
        """Put an existing list or dict at a second location (containers are re-expanded)."""
        c = self._pick(data, self.scan.lists + self.scan.dicts, "container")
        if c is None:
            return
        inside = _containers_within(c)
        loc = self._pick(data, [(h, k) for h, k in self.scan.locs if id(h) not in inside], "location")
        if loc is not None:
            loc[0][loc[1]] = c

    @rule(data=st.data(), grow=st.booleans())
    def change_list_length(self, data: st.DataObject, grow: bool) -> None:
        lst = self._pick(data, self.scan.lists, "list")
        if lst is None:
            return
        if grow and self._small():
            lst.append(data.draw(self._values(), label="value"))
        elif lst:
            lst.pop(data.draw(st.integers(0, len(lst) - 1), label="index"))

    @rule(data=st.data(), how=st.sampled_from(["add", "delete", "rename"]))
    def change_dict_keys(self, data: st.DataObject, how: str) -> None:
        d = self._pick(data, self.scan.dicts, "dict")
        if d is None:
            return
        key = data.draw(st.sampled_from(DICT_KEYS), label="key")
        if how == "add" and self._small():
            d[key] = data.draw(self._values(), label="value")
        elif d:
            old = data.draw(st.sampled_from(sorted(d)), label="old key")
            v = d.pop(old)
            if how == "rename":
                d[key] = v

    @rule(data=st.data())
    def change_static(self, data: st.DataObject) -> None:
        """1 -> 1.0 -> True, 'a' -> 'b', 0.0 -> -0.0, (1, 'a') -> (1, True), len -> None ..."""
        loc = self._pick(data, self.scan.locs_where(_is_static), "static location")
        if loc is not None:
            loc[0][loc[1]] = data.draw(statics, label="static")

    @rule(data=st.data())
    def swap_static_and_array(self, data: st.DataObject) -> None:
        a = self._pick(data, self.scan.locs_where(_is_static), "static location")
        b = self._pick(data, self.scan.locs_where(_is_array), "array location")
        if a is not None and b is not None:
            a[0][a[1]], b[0][b[1]] = b[0][b[1]], a[0][a[1]]

    @rule(data=st.data())
    def toggle_nan(self, data: st.DataObject) -> None:
        """Put a NaN static somewhere (a fresh one or the shared one), or take all NaNs out."""
        nans = self.scan.locs_where(lambda v: isinstance(v, float) and v != v)
        if nans:
            for h, k in nans:
                h[k] = 0.0
            return
        loc = self._pick(data, self.scan.locs_where(_is_static), "static location")
        if loc is not None:
            loc[0][loc[1]] = data.draw(st.sampled_from([NAN, float("nan")]), label="nan")

    @precondition(lambda self: not self.registered and self.steps >= STEPS // 2)
    @rule()
    def register_node_type(self) -> None:
        """Registration changes how a type already in the graph flattens (the epoch guard)."""
        self.registered = True
        sg.register_graph_node_type(self.special, _special_flatten, _special_set_key, _special_pop_key,
                                    functools.partial(_special_empty, self.special), _special_clear)

    @rule()
    def clear_cache(self) -> None:
        self._tally_counters()
        sg.clear_cache()

    # -- operations ---------------------------------------------------------------------
    @rule()
    def flatten(self) -> None:
        self.last_sm = sg.flatten(self.root)[1]

    @rule()
    def unflatten(self) -> None:
        ref = sg.generic.flatten(self.root)
        gd, sm = sg.flatten(self.root)
        old = {id(x) for x in self.scan.nodes + self.scan.states}
        for _ in range(3):  # from the second call on, a specialized unflatten serves it
            new = sg.unflatten(gd, sm)
            assert_same_flatten(sg.generic.flatten(new), ref)
            fresh = Scan(new)
            assert not old & {id(x) for x in fresh.nodes + fresh.states}
        # and merge, from the parts split returns (order of the parts does not matter)
        gd2, params, rest = sg.split(self.root, sg.Param, ...)
        assert gd2 == ref[0]
        assert_same_flatten(sg.generic.flatten(sg.merge(gd2, rest, params)), ref)

    @rule(how=st.sampled_from(["full", "states", "mutable"]))
    def update(self, how: str) -> None:
        self._update(how)

    @rule(how=st.sampled_from(["stale", "partial", "mapping"]))
    def update_other(self, how: str) -> None:
        self._update(how)

    def _update(self, how: str) -> None:
        """The public update of the graph equals a reference update of its deep twin."""
        ref = sg.generic.flatten(self.root)
        if how == "partial":
            _, src, _ = sg.split(self.root, sg.Param, ...)
        elif how == "stale" and self.last_sm is not None:
            src = self.last_sm  # flattened before the last mutations: maybe other paths
        else:
            src = sg.flatten(self.root)[1]
        leaves, treedef = jax.tree.flatten(src)
        if how == "states":  # new state values, the same array leaves (as after a jitted step)
            leaves = [v if t is None else _fresh(v) for v, t in zip(leaves, src.types, strict=True)]
        elif how == "mutable":  # new values, but the same arrays in tuples (that update cannot write)
            leaves = [_fresh(v) if t is not None or _in_mutable_holder(self.root, p) else v
                      for v, t, p in zip(leaves, src.types, src.paths, strict=True)]
        else:
            leaves = [_fresh(v) for v in leaves]
        new: Any = jax.tree.unflatten(treedef, leaves)
        if how == "mapping":
            new = dict(new.items())
        twin = _deep_twin(self.root)
        with sg.specialization(False):
            states_before = sg.states(self.root)
        before = sg.cache_info()
        got = _outcome(lambda: sg.update(self.root, new))
        want = _outcome(lambda: sg.generic.update(twin, new))
        after_info = sg.cache_info()
        served = "specialized" if after_info["update_hits"] > before["update_hits"] else "generic"
        was = before["guard_misses"]
        misses = sorted(k for k, v in after_info["guard_misses"].items() if v > was.get(k, 0))
        event(f"update {how}: {got[0]}, {served} {misses}")
        _count(f"update_{how}_{served}")
        assert got[0] == want[0] and (got[0] == "ok" or got[1] is want[1]), (got, want)
        after = sg.generic.flatten(self.root)
        assert_same_flatten(after, sg.generic.flatten(twin))
        if got[0] == "error":  # validated before any write: nothing changed
            assert_same_flatten(after, ref)
        elif how in ("full", "states", "mutable") and not self._shares_containers():
            for x, y in zip(after[1].values(), new.values(), strict=True):
                assert x is y
        with sg.specialization(False):
            _assert_same_dict(sg.states(self.root), states_before)  # states keep their identity

    @rule()
    def states(self) -> None:
        pub = (sg.states(self.root), sg.nodes(self.root), sg.states(self.root, sg.Param, BatchStat),
               list(sg.iter_leaf(self.root)))
        with sg.specialization(False):
            ref = (sg.states(self.root), sg.nodes(self.root), sg.states(self.root, sg.Param, BatchStat),
                   list(sg.iter_leaf(self.root)))
        _assert_same_dict(pub[0], ref[0])
        _assert_same_dict(pub[1], ref[1])
        for a, b in zip(pub[2], ref[2], strict=True):
            _assert_same_dict(a, b)
        assert [p for p, _ in pub[3]] == [p for p, _ in ref[3]]
        assert all(x is y for (_, x), (_, y) in zip(pub[3], ref[3], strict=True))

    @rule()
    def pop_batch_stats(self) -> None:
        twin = _deep_twin(self.root)
        got = _outcome(lambda: sg.pop_states(self.root, BatchStat))
        with sg.specialization(False):
            want = _outcome(lambda: sg.pop_states(twin, BatchStat))
        assert got[0] == want[0]
        if got[0] == "ok":
            assert list(got[1].keys()) == list(want[1].keys())
            assert all(x is y for x, y in zip(got[1].values(), want[1].values(), strict=True))
        else:
            assert got[1] is want[1]
        assert_same_flatten(sg.generic.flatten(self.root), sg.generic.flatten(twin))

    # -- after every step ---------------------------------------------------------------
    @invariant()
    def public_path_matches_reference(self) -> None:
        first_hit = _check_matches_reference(self.root)
        event("first flatten after a step: " + ("specialized" if first_hit else "generic"))
        _count("steps")
        _count("first_call_hits", first_hit)
        self.steps += 1
        self.scan = Scan(self.root)

    def _shares_containers(self) -> bool:
        return _shares_containers(self.root)

    def _tally_counters(self) -> None:
        info = sg.cache_info()
        for k in ("hits", "update_hits", "unflatten_hits", "walk_hits", "fallbacks"):
            _count(k, info[k])
        _count("guard_misses", sum(info["guard_misses"].values()))

    def teardown(self) -> None:
        self._tally_counters()
        event(f"checks per graph: {self.steps // 10 * 10}-{self.steps // 10 * 10 + 9}")
        sg.configure(max_variants=self.max_variants)
        sg.clear_cache()


STEPS = {"ci": 30, "dev": 20, "nightly": 60}.get(os.environ.get("HYPOTHESIS_PROFILE", "dev"), 30)


class TestGraphMachine(GraphMachine.TestCase):  # type: ignore[name-defined]
    """The machine; max_examples comes from the loaded hypothesis profile."""

    settings = settings(stateful_step_count=STEPS)

    @classmethod
    def setUpClass(cls) -> None:
        TALLY.clear()

    @classmethod
    def tearDownClass(cls) -> None:
        """Across the run, generated code served every operation (not only the reference)."""
        print(f"\nGraphMachine: {TALLY}")
        assert TALLY["graphs"] > 0
        for k in ("hits", "update_hits", "unflatten_hits", "walk_hits", "guard_misses", "first_call_hits"):
            assert TALLY.get(k, 0) > 0, (k, TALLY)


# -- regressions of the machine's own model -----------------------------------------------


@pytest.mark.parametrize("how", ["full", "states", "mutable"])
@pytest.mark.parametrize("where", ["aliased_next_to_its_tuple", "tuple_held_by_two_nodes"])
def test_update_of_a_list_shared_through_a_tuple(monkeypatch: pytest.MonkeyPatch, how: str,
                                                 where: str) -> None:
    """A list at two paths, one of them through a tuple: each path gets its own new value,
    one write wins, in both paths alike. The machine once saw no sharing there (it looked
    for a list held twice by nodes, lists and dicts only) and expected every value back."""
    monkeypatch.setattr(sys.modules[__name__], "event", lambda *_: None)  # outside hypothesis
    machine = GraphMachine()
    try:
        lst = [np.zeros(1, np.float32)]
        if where == "aliased_next_to_its_tuple":
            machine.root = Net(t=(lst, 7), a=Block(l=lst))
        else:
            tup = (lst, 7)
            machine.root = Net(a=Block(t=tup), b=Block(t=tup))
        machine.public_path_matches_reference()  # the structure is specialized from here on
        assert machine._shares_containers()
        before = sg.cache_info()["update_hits"]
        machine._update(how)  # the public update equals the reference's on a twin
        assert sg.cache_info()["update_hits"] == before + 1  # served by generated code
        machine.public_path_matches_reference()
    finally:
        machine.teardown()
