"""A differential fuzz of the scale-out features (issue 13) on a 2x4 (data, model) mesh.

Random ``sg.Node`` models (nested nodes, lists and dicts of submodules under hostile
keys, States tied at two paths, a submodule shared by two parents) get random partition
annotations (tuples, shorter tuples, ``PartitionSpec`` objects, tuple-of-axes entries,
none). Each model is built twice from one blueprint: a *subject* placed on the mesh and
run by generated code, and a *reference* on one device run by the reference walker
(``sg.specialization(False)``). Every case checks:

* ``sg.shard`` places each state exactly on its spec; an invalid annotation (unknown
  axis, an axis used twice, too many entries, an indivisible dimension, not a tuple)
  raises an error naming the state's path, and leaves the model untouched;
* ``sg.jit`` steps writing some states (not others) keep every state's sharding, leave
  the unwritten states' arrays as they were, and equal the reference (allclose); with
  ``donate_argnums`` too;
* mutations between calls (a value replaced by a differently sharded array, a submodule
  added or removed, an annotation changed) are followed: the step still equals the
  reference, written states keep their (new) input sharding, ``sg.shard`` places by the
  new annotations;
* a call that fails (inside ``sg.jit``, ``sg.vmap``, ``sg.scan``) leaves the model as it
  was (the very same value objects);
* ``sg.vmap`` of an init over N seeds equals N separate inits (values, and annotations
  gaining ``partition_name``), and running the ensemble equals running each member;
* ``sg.scan`` over the stacked blocks equals the unrolled loop (the carry, the written
  states stacked back, a carried counter state);
* ``sg.remat`` gives the gradients of the plain function;
* ``sg.eval_shape`` writes nothing back, and its plan after ``sg.shard`` matches the real
  placement.

JAX fixes its device count at start-up: run as a script (it sets ``XLA_FLAGS`` for 8
host devices before importing JAX)::

    python tests/fuzz_scaleout.py --cases 20 --seed 0

``tests/test_fuzz_scaleout.py`` runs a short fuzz in a process of its own. The tally
says how many flattens/walks/updates generated code served against the reference walker.
"""

from __future__ import annotations

import os

if "jax" not in __import__("sys").modules:  # before JAX starts: 8 simulated CPU devices
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = (flags + " --xla_force_host_platform_device_count=8").strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse
import collections
import contextlib
import json
import random
import sys
from collections.abc import Callable, Iterator
from typing import Any

import _fuzzkit
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import specgraph as sg
from specgraph import sharding as sgs

AXES = {"data": 2, "model": 4}
HOSTILE_KEYS = [
    "a", "__import__('os').system('echo pwned')", "x'); raise SystemExit('#", "{{ 7*7 }}", "{% if 1 %}",
    "\n\t", "%s%r", "\\", "", "é€", "self", "__dict__", "sg", "None",
]


def mesh() -> Any:
    return jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Auto, AxisType.Auto))


class Model(sg.Node):
    pass


class Counter(sg.Node):
    def __init__(self) -> None:
        self.n = sg.State(jnp.zeros((), jnp.float32))


# -- blueprints: one random structure, built many times ---------------------------------------


def _annotation(rng: random.Random, shape: tuple[int, ...]) -> Any:
    """A valid annotation for ``shape`` (or ``None``: no ``sharding`` metadata)."""
    if rng.random() < 0.2:
        return None
    free = dict(AXES)
    names: list[Any] = []
    for d in shape:
        options: list[Any] = [None]
        options += [a for a, n in free.items() if d % n == 0]
        if all(a in free for a in AXES) and d % 8 == 0:
            options.append(("data", "model"))
        pick = rng.choice(options)
        for a in (pick if isinstance(pick, tuple) else (pick,)):
            free.pop(a, None)
        names.append(pick)
    if names and rng.random() < 0.3:  # shorter: the trailing dimensions replicated
        names = names[: rng.randrange(len(names))]
    return P(*names) if rng.random() < 0.3 else tuple(names)


def _state_bp(rng: random.Random) -> dict:
    shape = tuple(rng.choice([2, 4, 8, 8, 6]) for _ in range(rng.choice([0, 1, 1, 2, 2])))
    return {"kind": rng.choice(["Param", "Param", "State"]), "shape": shape, "ann": _annotation(rng, shape)}


def _node_bp(rng: random.Random, depth: int) -> dict:
    bp: dict[str, Any] = {"states": {}, "children": {}, "lists": {}, "dicts": {}}
    for i in range(rng.randint(1 if depth else 2, 3)):
        bp["states"][f"s{i}"] = _state_bp(rng)
    if depth < 2:
        for i in range(rng.randint(0, 2)):
            bp["children"][f"c{i}"] = _node_bp(rng, depth + 1)
        if rng.random() < 0.4:
            bp["lists"]["layers"] = [_node_bp(rng, depth + 1) for _ in range(rng.randint(1, 2))]
        if rng.random() < 0.4:
            keys = rng.sample(HOSTILE_KEYS, rng.randint(1, 3))
            bp["dicts"]["heads"] = {k: _node_bp(rng, depth + 1) for k in keys}
    return bp


def blueprint(rng: random.Random) -> dict:
    root = _node_bp(rng, 0)
    counts = _count(root)
    ties = []  # (holder node index, attribute, state index): one State at two paths
    for _ in range(rng.randint(0, 2)):
        ties.append((rng.randrange(counts[0]), f"tied{len(ties)}", rng.randrange(counts[1])))
    aliases = []  # (holder, attribute, node made later in preorder): a shared submodule, no cycle
    if counts[0] > 1 and rng.random() < 0.5:
        holder = rng.randrange(counts[0] - 1)
        aliases.append((holder, "alias", rng.randrange(holder + 1, counts[0])))
    return {"root": root, "ties": ties, "aliases": aliases}


def _count(bp: dict) -> tuple[int, int]:
    nodes, states = 1, len(bp["states"])
    for sub in _subs(bp):
        n, s = _count(sub)
        nodes += n
        states += s
    return nodes, states


def _subs(bp: dict) -> list[dict]:
    out = list(bp["children"].values())
    for lst in bp["lists"].values():
        out += lst
    for d in bp["dicts"].values():
        out += [d[k] for k in sorted(d)]
    return out


def _value(seed: Any, index: int, shape: tuple[int, ...], xp: Any) -> Any:
    size = int(np.prod(shape)) if shape else 1
    grid = xp.arange(size, dtype=xp.float32).reshape(shape)
    return (xp.sin(1.3 * seed + 0.7 * grid + 0.37 * index) / 2).astype(xp.float32)


def build(bp: dict, seed: Any, xp: Any = np) -> Model:
    """The model of a blueprint; values from ``seed`` (a float, or a traced array with ``xp=jnp``)."""
    nodes: list[Any] = []
    states: list[Any] = []

    def make(nbp: dict, node: Any) -> Any:
        nodes.append(node)
        for name, sbp in nbp["states"].items():
            cls = sg.Param if sbp["kind"] == "Param" else sg.State
            meta = {} if sbp["ann"] is None else {"sharding": sbp["ann"]}
            st = cls(_value(seed, len(states), sbp["shape"], xp), **meta)
            states.append(st)
            setattr(node, name, st)
        for name, cbp in nbp["children"].items():
            setattr(node, name, make(cbp, Model()))
        for name, lst in nbp["lists"].items():
            setattr(node, name, [make(c, Model()) for c in lst])
        for name, d in nbp["dicts"].items():
            setattr(node, name, {k: make(d[k], Model()) for k in sorted(d)})
        return node

    root = make(bp["root"], Model())
    for holder, attr, si in bp["ties"]:
        setattr(nodes[holder], attr, states[si])
    for holder, attr, ni in bp["aliases"]:
        setattr(nodes[holder], attr, nodes[ni])
    return root


# -- reading a model in the user's way (plain Python, not specgraph's walker) -------------------


def _children(x: Any) -> Iterator[Any]:
    if isinstance(x, sg.Node):
        d = vars(x)
        for k in sorted(d, key=repr):
            yield d[k]
    elif isinstance(x, (list, tuple)):
        yield from x
    elif isinstance(x, dict):
        for k in sorted(x, key=repr):
            yield x[k]


def state_objects(m: Any) -> list[Any]:
    """Every State of ``m`` once, in a fixed order (the same for a rebuilt copy)."""
    out: list[Any] = []
    seen: set[int] = set()
    stack = [m]
    while stack:
        x = stack.pop()
        if id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, sg.State):
            out.append(x)
            continue
        stack.extend(reversed(list(_children(x))))
    return out


def node_objects(m: Any) -> list[Any]:
    out: list[Any] = []
    seen: set[int] = set()
    stack = [m]
    while stack:
        x = stack.pop()
        if id(x) in seen or isinstance(x, sg.State):
            continue
        seen.add(id(x))
        if isinstance(x, sg.Node):
            out.append(x)
        stack.extend(reversed(list(_children(x))))
    return out


def apply(m: Any, x: Any) -> Any:
    """A scalar depending on every state (sequentially: interesting gradients)."""
    acc = x
    for st in state_objects(m):
        acc = acc + jnp.mean(jnp.tanh(st.value * acc + 0.1))
    return acc


def write(m: Any, which: tuple[int, ...], r: Any, scale: float = 0.9) -> None:
    sts = state_objects(m)
    for i in which:
        sts[i].value = sts[i].value * scale + r


def values(m: Any) -> list[Any]:
    return [st.value for st in state_objects(m)]


def close(a: Any, b: Any, what: str) -> None:
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-5, err_msg=what)


def close_models(a: Any, b: Any, what: str) -> None:
    va, vb = values(a), values(b)
    assert len(va) == len(vb), what
    for i, (x, y) in enumerate(zip(va, vb, strict=True)):
        close(x, y, f"{what}: state {i}")


def same_layout(a: Any, b: Any) -> bool:
    """Equal, or NamedShardings differing in trailing ``None`` entries only (``jax.jit`` spells
    an output's sharding in the short form unless it is its first input's)."""
    return a == b or (isinstance(a, NamedSharding) and isinstance(b, NamedSharding) and a.mesh == b.mesh
                      and sgs.canonical_spec(a.spec) == sgs.canonical_spec(b.spec))


def expected_sharding(st: Any, mesh_: Any) -> Any:
    ann = st.metadata.get("sharding")
    spec = P() if ann is None else (ann if isinstance(ann, P) else P(*ann))
    return NamedSharding(mesh_, sgs.canonical_spec(spec))


# -- the tally -------------------------------------------------------------------------------


# cache_info() counters: (served by generated code, served by the reference walker)
_SERVED = {
    "flatten": ("hits", "generic_flattens"), "walk": ("walk_hits", "generic_walks"),
    "update": ("update_hits", "generic_updates"), "unflatten": ("unflatten_hits", "generic_unflattens"),
}


class Tally(_fuzzkit.Tally):
    @contextlib.contextmanager
    def served(self, enabled: bool) -> Iterator[None]:
        """Count what generated code (``enabled``) or the reference walker served in the block."""
        before = sg.cache_info()
        with sg.specialization(enabled):
            yield
        after = sg.cache_info()
        side = "subject" if enabled else "reference"
        gen = ref = 0
        for op, (hit, miss) in _SERVED.items():
            g, r = after[hit] - before[hit], after[miss] - before[miss]
            self.add(f"{side}_{op}_generated", g)
            self.add(f"{side}_{op}_generic", r)
            gen += g
            ref += r
        self.add(f"{side}_generated", gen)
        self.add(f"{side}_generic", ref)
        if not enabled:
            assert gen == 0, "the reference run was served by generated code"


def snapshot(m: Any) -> list[tuple[int, Any, Any]]:
    """What a failed call must leave: each State object, its value object and metadata."""
    return [(id(st), st.value, st.metadata) for st in state_objects(m)]


def same_snapshot(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        x[0] == y[0] and x[1] is y[1] and x[2] == y[2] for x, y in zip(a, b, strict=True))


def expect_error(tally: Tally, m: Any, call: Callable[[], Any], kind: str, match: str | None = None) -> str:
    before = snapshot(m)
    try:
        call()
    except (ValueError, TypeError) as e:
        msg = str(e)
    else:
        raise AssertionError(f"{kind}: no error raised")
    assert same_snapshot(before, snapshot(m)), f"{kind}: a failed call changed the model"
    if match is not None:
        assert match in msg, f"{kind}: the error does not name {match!r}: {msg}"
    tally.add(f"error_{kind}")
    return msg


# -- the checks --------------------------------------------------------------------------------


def check_placed(m: Any, mesh_: Any, what: str) -> None:
    for st in state_objects(m):
        v = st.value
        want = expected_sharding(st, mesh_)
        assert v.sharding == want, f"{what}: {v.sharding} != {want}"


class Case:
    def __init__(self, seed: int, tally: Tally) -> None:
        self.rng = random.Random(seed)
        self.tally = tally
        self.mesh = mesh()
        self.bp = blueprint(self.rng)
        self.n_states = len(state_objects(build(self.bp, 0.0)))

    def subset(self, n: int) -> tuple[int, ...]:
        return tuple(sorted(self.rng.sample(range(n), self.rng.randint(0, n))))

    # sg.shard, sg.jit and mutations ------------------------------------------------------------

    def run_jit(self, steps: int) -> None:
        rng, t = self.rng, self.tally
        with t.served(True):
            subject = build(self.bp, 0.5)
            for _ in range(2):
                sg.shard(subject, self.mesh)
            check_placed(subject, self.mesh, "sg.shard")
            t.add("shard_checked")
        reference = build(self.bp, 0.5)
        which = self.subset(self.n_states)
        donate = rng.random() < 0.3

        def step(m: Any, x: Any) -> Any:
            r = apply(m, x)
            write(m, which, r)
            return r

        sub_step = sg.jit(step, donate_argnums=0 if donate else ())
        ref_step = sg.jit(step)
        x = jnp.float32(0.25)
        for k in range(steps):
            self.compare_step(subject, reference, sub_step, ref_step, x, which, donate, f"step {k}")
            if rng.random() < 0.6:
                what = self.mutate(subject, reference)
                t.add("mutation_" + what)
                n = len(state_objects(subject))
                if n != self.n_states or what == "annotation":
                    self.n_states = n
                    which = tuple(i for i in which if i < n)
        self.failing_calls(subject)
        self.invalid_annotations(subject)

    def compare_step(self, subject: Any, reference: Any, sub_step: Any, ref_step: Any, x: Any,
                     which: tuple[int, ...], donate: bool, what: str) -> None:
        before = [(st.value, st.value.sharding if getattr(st.value, "committed", False) else None)
                  for st in state_objects(subject)]
        with self.tally.served(True):
            r = sub_step(subject, x)
        with self.tally.served(False):
            r_ref = ref_step(reference, x)
        close(r, r_ref, what)
        close_models(subject, reference, what)
        for i, (st, (old, sh)) in enumerate(zip(state_objects(subject), before, strict=True)):
            if sh is not None:
                got = st.value.sharding
                assert same_layout(got, sh), f"{what}: state {i} moved: {sh} -> {got}"
            if i not in which and not donate:
                assert st.value is old, f"{what}: state {i} was not written but its array changed"
        self.tally.add("jit_steps_checked")

    def mutate(self, subject: Any, reference: Any) -> str:
        rng = self.rng
        what = rng.choice(["reshard", "add", "remove", "annotation", "reshard_all", "none"])
        pick = rng.random()
        if what in ("reshard", "annotation"):
            sts_s, sts_r = state_objects(subject), state_objects(reference)
            i = int(pick * len(sts_s))
            st, st_r = sts_s[i], sts_r[i]
            shape = np.shape(st.value)
            if what == "reshard":  # another (valid) sharding for the same array
                ann = _annotation(rng, shape)
                spec = P() if ann is None else (ann if isinstance(ann, P) else P(*ann))
                st.value = jax.device_put(st.value, NamedSharding(self.mesh, spec))
                return what
            ann = _annotation(rng, shape)  # the annotation changes: a new State where the old one was
            meta = {} if ann is None else {"sharding": ann}
            for m, old in ((subject, st), (reference, st_r)):
                new = type(old)(old.value, **meta)
                for node in node_objects(m):
                    for k, v in list(vars(node).items()):
                        if v is old:
                            setattr(node, k, new)
            with self.tally.served(True):
                sg.shard(subject, self.mesh)
            check_placed(subject, self.mesh, "sg.shard after an annotation change")
            return what
        nodes_s, nodes_r = node_objects(subject), node_objects(reference)
        j = int(pick * len(nodes_s))
        if what == "add":
            extra = _node_bp(random.Random(rng.random()), 2)
            for nodes in (nodes_s, nodes_r):
                nodes[j].added = build({"root": extra, "ties": [], "aliases": []}, 1.5)
            if rng.random() < 0.5:
                with self.tally.served(True):
                    sg.shard(subject, self.mesh)
                check_placed(subject, self.mesh, "sg.shard after a submodule was added")
            return what
        if what == "remove":
            node_s, node_r = nodes_s[j], nodes_r[j]
            subs = sorted(k for k, v in vars(node_s).items() if isinstance(v, sg.Node | list | dict))
            if not subs:
                return "none"
            k = rng.choice(subs)
            delattr(node_s, k)
            delattr(node_r, k)
            return what
        if what == "reshard_all":
            with self.tally.served(True):
                sg.shard(subject, self.mesh)
            check_placed(subject, self.mesh, "sg.shard again")
        return what

    def failing_calls(self, m: Any) -> None:
        t = self.tally

        def boom(m: Any) -> None:
            write(m, tuple(range(len(state_objects(m)))), jnp.float32(1.0))
            raise ValueError("boom after writing")

        with t.served(True):
            expect_error(t, m, lambda: sg.jit(boom)(m), "jit_raises", "boom")
            i = self.rng.randrange(len(state_objects(m)))  # a value no state can hold, written inside sg.jit
            expect_error(t, m, lambda: sg.jit(lambda m: setattr(state_objects(m)[i], "value", "text"))(m),
                         "jit_writes_text", "text" if False else None)

    def invalid_annotations(self, m: Any) -> None:
        """One state at a time gets a bad annotation: ``sg.shard`` names its path; nothing moves."""
        rng = self.rng
        for node in node_objects(m):
            for k in sorted(vars(node)):
                st = vars(node)[k]
                if not isinstance(st, sg.State) or rng.random() < 0.5:
                    continue
                shape = np.shape(st.value)
                bad: list[tuple[str, Any]] = [("unknown_axis", ("expert",) + (None,) * (len(shape) - 1)),
                                              ("not_a_tuple", "model"), ("bad_entry", (3,)),
                                              ("too_long", (None,) * (len(shape) + 1)),
                                              ("too_long_axis", (None,) * len(shape) + ("data",))]
                if len(shape) >= 2:
                    bad.append(("axis_twice", ("model", "model")))
                if shape and shape[0] % 4:
                    bad.append(("indivisible", ("model",)))
                for kind, ann in bad:  # every kind, one at a time
                    if rng.random() < 0.3 and isinstance(ann, tuple) and all(
                            a is None or isinstance(a, str) for a in ann):
                        ann = P(*ann)
                    self._refused(m, node, k, st, kind, ann)
                return

    def _refused(self, m: Any, node: Any, k: str, st: Any, kind: str, ann: Any) -> None:
        t = self.tally
        setattr(node, k, type(st)(st.value, sharding=ann))
        try:
            for enabled in (False, True, True):
                with t.served(enabled):
                    path_words = repr(k)
                    expect_error(t, m, lambda: sg.shard(m, self.mesh), f"annotation_{kind}", path_words)
                    if kind != "indivisible":
                        expect_error(t, m, lambda: sg.named_shardings(m, self.mesh), f"named_{kind}",
                                     path_words)
                    plan = sg.eval_shape(lambda: m)
                    expect_error(t, plan, lambda plan=plan: sg.shard(plan, self.mesh), f"plan_{kind}",
                                 path_words)
        finally:
            setattr(node, k, st)

    # vmap, scan, remat, eval_shape -------------------------------------------------------------

    def run_transforms(self) -> None:
        rng, t, bp = self.rng, self.tally, self.bp
        n_layers = rng.choice([2, 3, 4])
        pname = rng.choice([None, None, "data"]) if all(
            "data" not in _axes_used(st) for st in state_objects(build(bp, 0.0))) else None
        seeds = jnp.arange(n_layers, dtype=jnp.float32) * 0.5

        def init(s: Any) -> Model:
            return build(bp, s, jnp)

        members = [build(bp, float(s)) for s in np.asarray(seeds)]
        with t.served(True):
            make = sg.jit(sg.vmap(init, partition_name=pname))
            ens = make(seeds)
            ens = make(seeds)
            sg.shard(ens, self.mesh)
        # values: slice i is member i; annotations gained the stacked axis
        sts = state_objects(ens)
        for i, m in enumerate(members):
            for j, (a, b) in enumerate(zip(sts, state_objects(m), strict=True)):
                close(a.value[i], b.value, f"vmap init: member {i} state {j}")
        for a, b in zip(sts, state_objects(members[0]), strict=True):
            ann = b.metadata.get("sharding")
            names = () if ann is None else tuple(ann)
            want = NamedSharding(self.mesh, sgs.canonical_spec(P(pname, *names)))
            assert a.value.sharding == want, f"vmap ensemble placement: {a.value.sharding} != {want}"
        t.add("vmap_init_checked")

        x = jnp.float32(0.3)
        with t.served(True):
            run = sg.vmap(apply, in_axes=(0, None))
            ys = (sg.jit(run) if rng.random() < 0.5 else run)(ens, x)
        close(ys, [apply(m, x) for m in members], "vmap run")
        t.add("vmap_run_checked")

        # a vmap writing a broadcast state with a per-member value: an error, nothing written
        sts_m = state_objects(members[0])
        if sts_m:
            bcast = build(bp, 0.0)

            def bad(e: Any, b: Any) -> None:
                state_objects(b)[0].value = state_objects(b)[0].value + apply(e, x)

            with t.served(True):
                expect_error(t, bcast, lambda: sg.vmap(bad, in_axes=(0, None))(ens, bcast),
                             "vmap_writes_broadcast", "argument 1")

        # scan over the stacked blocks == the unrolled loop
        which = self.subset(len(sts))
        carried = rng.random() < 0.5

        def body(b: Any, c: Any, h: Any) -> Any:
            h2 = apply(b, h)
            write(b, which, h2, 0.5)
            c.n.value = c.n.value + h2
            return h2

        def unrolled(ms: list[Any], c: Any, h: Any) -> Any:
            for m in ms:
                h = body(m, c, h)
            return h

        sub_ens, sub_c = ens, Counter()
        placed = [st.value.sharding for st in state_objects(sub_ens)]
        jitted = rng.random() < 0.5
        with t.served(True):
            scan = sg.scan(body, in_axes=(0, sg.StateAxes({...: sg.Carry}), sg.Carry), out_axes=sg.Carry,
                           reverse=carried)
            if jitted:
                h = sg.jit(lambda e, c, h: scan(e, c, h))(sub_ens, sub_c, x)
            else:  # eagerly, with a Python scalar as the initial carry (lax.scan's habit)
                h = scan(sub_ens, sub_c, float(x))
        t.add("scan_jitted" if jitted else "scan_eager")
        for j, (st, sh) in enumerate(zip(state_objects(sub_ens), placed, strict=True)):
            assert same_layout(st.value.sharding, sh), f"scan moved state {j}: {sh} -> {st.value.sharding}"
        ref_members = [build(bp, float(s)) for s in np.asarray(seeds)]
        ref_c = Counter()
        with t.served(False):
            order = reversed(ref_members) if carried else ref_members
            h_ref = sg.jit(unrolled)(list(order), ref_c, x)
        close(h, h_ref, "scan carry")
        close(sub_c.n.value, ref_c.n.value, "scan carried state")
        for j, a in enumerate(state_objects(sub_ens)):
            for i, m in enumerate(ref_members):
                close(a.value[i], state_objects(m)[j].value, f"scan written state {j} layer {i}")
        t.add("scan_checked")

        # a scan writing a broadcast state: an error, nothing written
        def bad_scan(b: Any, c: Any, h: Any) -> Any:
            state_objects(c)[0].value = state_objects(c)[0].value + h
            return h + apply(b, h)

        if state_objects(members[0]):
            with t.served(True):
                expect_error(t, sub_ens, lambda: sg.scan(bad_scan, in_axes=(0, None, sg.Carry),
                                                         out_axes=sg.Carry)(sub_ens, members[0], x),
                             "scan_writes_broadcast", "argument 1")

        # remat: the gradients of the plain function
        def loss(m: Any, x: Any) -> Any:
            return apply(m, x) ** 2

        def loss_remat(m: Any, x: Any) -> Any:
            return sg.remat(apply)(m, x) ** 2

        with t.served(True):
            g = sg.jit(sg.grad(loss_remat))(ens, x)
        with t.served(False):
            g_ref = sg.jit(sg.grad(loss))(ens, x)
        assert list(g.keys()) == list(g_ref.keys())
        for k in g.keys():
            close(g[k], g_ref[k], f"remat grad {k}")
        t.add("remat_checked")

        # eval_shape: nothing written back; the plan's placement is the real one's
        with t.served(True):
            before = snapshot(ens)
            out = sg.eval_shape(lambda e: write(e, tuple(range(len(sts))), jnp.float32(1.0)), ens)
            assert out is None and same_snapshot(before, snapshot(ens)), "eval_shape wrote back"
            plan = sg.shard(sg.eval_shape(init, jnp.float32(0.0)), self.mesh)
            real = sg.shard(build(bp, 0.0), self.mesh)
        for a, b in zip(state_objects(plan), state_objects(real), strict=True):
            assert isinstance(a.value, jax.ShapeDtypeStruct)
            assert a.value.shape == b.value.shape and a.value.sharding == b.value.sharding, (a.value, b.value)
        t.add("eval_shape_checked")

    def shared_between_mapped_and_broadcast(self) -> None:
        """A State reached both at a mapped and at a broadcast position of one vmap call."""
        t = self.tally
        shared = sg.Param(jnp.arange(4.0, dtype=jnp.float32))
        a, b = Model(), Model()
        a.s = shared
        b.s = shared
        with t.served(True):
            for in_axes in ((0, None), (None, 0)):
                before = snapshot(a)
                try:
                    out = sg.vmap(lambda a, b: a.s.value + b.s.value, in_axes=in_axes)(a, b)
                except (ValueError, TypeError) as e:
                    assert "('s',)" in str(e), e
                    assert same_snapshot(before, snapshot(a))
                    t.add("shared_axes_error")
                else:
                    t.add(f"shared_axes_answered_{np.shape(out)}")


def _axes_used(st: Any) -> set[str]:
    ann = st.metadata.get("sharding")
    out: set[str] = set()
    for e in () if ann is None else tuple(ann):
        out.update(e if isinstance(e, tuple) else (() if e is None else (e,)))
    return out


def run_case(seed: int, tally: Tally, steps: int) -> None:
    case = Case(seed, tally)
    case.run_jit(steps)
    case.run_transforms()
    if seed % 4 == 0:
        case.shared_between_mapped_and_broadcast()
    tally.add("cases")


def fuzz(cases: int, seed: int = 0, steps: int = 4) -> collections.Counter[str]:
    if jax.device_count() < 8:
        raise RuntimeError("the scale-out fuzz needs 8 devices: run it as a script, or set "
                           "XLA_FLAGS=--xla_force_host_platform_device_count=8 before JAX starts")
    tally = Tally()
    saved = sg.runtime.dispatch.CONFIG.threshold
    sg.configure(threshold=1)
    sg.clear_cache()
    try:
        for case in range(cases):
            run_case(seed * 1_000_003 + case, tally, steps)
            if case % 8 == 7:
                sg.clear_cache()
    finally:
        sg.configure(threshold=saved)
        sg.clear_cache()
    return tally.counts


def _as_json(args: argparse.Namespace, counts: collections.Counter[str]) -> bool:
    if args.json:
        print(json.dumps(dict(counts)))
    return bool(args.json)


def main(argv: list[str] | None = None) -> int:
    return _fuzzkit.main(__doc__ or "", fuzz, argv, cases=20, steps=4, show=_as_json,
                         extra=lambda p: p.add_argument("--json", action="store_true",
                                                        help="print the tally as one JSON object"))


if __name__ == "__main__":
    sys.exit(main())
