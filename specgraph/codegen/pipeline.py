"""The one compile path: GraphDef -> plan -> source (jinja2 templates) -> function.

:func:`build` is all the dispatcher and ``explain`` call. It owns what generated
code expects at run time (the prelude), the spelling of type names, linecache
registration of each source under a unique file name, and picking the function
out of the executed namespace by the name the template gave it.
"""

from __future__ import annotations

import builtins
import dis
import gc
import itertools
import linecache
import re
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FunctionType, SimpleNamespace
from typing import Any

import jinja2

from .._ir import GraphDef
from . import shared
from .flatten_plan import FlattenPlan, plan_flatten
from .naming import Item, Literal, Splice, StateValue, safe_name
from .ops import OPS, Step, unknown_op
from .prelude import prelude
from .template_loader import TemplateLoader
from .unflatten_plan import UnflattenPlan, plan_unflatten

__all__ = ["KINDS", "Built", "build", "forget", "forget_all", "render"]

#: What can be built: the three functions of a flatten plan, and the unflatten.
KINDS = ("flatten", "update", "collect", "unflatten")

_env: jinja2.Environment | None = None


def environment() -> jinja2.Environment:
    """The templates' environment: their spelling filters and tests, and ``unknown_op``."""
    global _env
    if _env is None:
        _env = make_environment(TemplateLoader())  # precompiled modules while they are current
    return _env


def make_environment(loader: jinja2.BaseLoader) -> jinja2.Environment:
    """An environment of the templates' options, filters and globals, loading with ``loader``."""
    env = jinja2.Environment(
        loader=loader,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=False,
        lstrip_blocks=False,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["key"] = _spell_key
    env.tests["item"] = lambda x: type(x) is Item
    env.tests["state_value"] = lambda x: type(x) is StateValue
    env.tests["splice"] = lambda x: type(x) is Splice
    env.globals["unknown_op"] = unknown_op
    env.globals["step_text"] = _step_text  # render() passes one that shares texts per plan
    return env


def _spell_key(k: Literal | str) -> str:
    """A key in the source: the repr of a Literal (an exact str/int), else a bound name."""
    if type(k) is Literal:
        return repr(k.value)
    if type(k) is not str:
        raise TypeError(f"a key is a Literal or a bound name, not {type(k).__qualname__}")
    return k


@dataclass
class Built:
    """One generated function and what made it."""

    kind: str
    fn: Any
    source: str
    filename: str
    seconds: float  # planning (when done here), rendering and compiling
    plan: FlattenPlan | UnflattenPlan


def build(kind: str, graphdef: GraphDef, *, max_steps: int, plan: FlattenPlan | UnflattenPlan | None = None,
          disabled: frozenset[str] = frozenset(), outline_min: int = 0, explaining: bool = False) -> Built:
    """Generate the ``kind`` function (one of :data:`KINDS`) of ``graphdef``'s structure.

    ``plan``: a plan already made for this structure (flatten, update and collect share
    one). ``outline_min``: a shape of subtree met that many times gets one function of its
    own, called per occurrence (0: fully unrolled; see ``shapes.py``). Raises ``Declined``
    when the structure is not specialized; any other exception
    is a failure to generate, for the caller to report. ``disabled`` names guard kinds
    to leave out: a test-only switch that proves each guard kind load-bearing.
    ``explaining``: built to be read (``explain``): shared units bound are not counted as
    reused.
    """
    t0 = time.perf_counter()
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}: one of {KINDS}")
    with gc_paused():
        if plan is None:
            if kind == "unflatten":
                plan = plan_unflatten(graphdef, max_steps, outline_min)
            else:
                plan = plan_flatten(graphdef, max_steps, outline_min)
        name = _function_name(kind, graphdef)
        # Each outlined shape is a unit of its own, shared with every structure that has it.
        units = Units(_origin(graphdef), explaining)
        source = render(kind, plan, disabled, units)
        fn, filename = _compile(kind, name, source, plan, units.fns)
    return Built(kind, fn, units.shown + source, filename, time.perf_counter() - t0, plan)


_gc_depth = [0]  # builds under way (threads, or a build inside a build)
_gc_was_enabled = [False]


@contextmanager
def gc_paused() -> Iterator[None]:
    """The cyclic garbage collector off for the block (then as it was before the first).

    A build allocates millions of small objects (steps, tuples, jinja2's and the
    compiler's nodes) and frees almost none until it is done: each allocation burst
    made CPython run full collections over an ever larger heap, a cost superlinear in
    the structure's size (MLP-10 000's flatten: compile() 3.3 s with the collector on,
    2.0 s with it off; planning 1.2 s against 0.76 s). Nothing here makes cycles that
    must be collected before the build ends. Part of the saving is only deferred: what
    the build allocated is traversed by the next collections after it (MLP-10 000 end
    to end, first flatten, unflatten and explicit collections, CPU: 9.0-10.2 s
    without the pause, 8.6-9.4 s with it).
    """
    with _lock:
        if _gc_depth[0] == 0:
            _gc_was_enabled[0] = gc.isenabled()
            gc.disable()
        _gc_depth[0] += 1
    try:
        yield
    finally:
        with _lock:
            _gc_depth[0] -= 1
            if _gc_depth[0] == 0 and _gc_was_enabled[0]:
                gc.enable()


def _function_name(kind: str, gd: GraphDef) -> str:
    return f"{kind}_{safe_name(gd.type.__qualname__)}"


def _origin(gd: GraphDef) -> int:
    """What tells the units compiled for ``gd``'s structure (equal GraphDefs: one structure)."""
    try:
        return hash(gd)
    except TypeError:  # (an unhashable static: never cached, so built for this very object)
        return id(gd)


class Units:
    """What :func:`render` fills in when the outlined functions are units of their own: the
    functions by the names the source calls them, and the units' sources, to show."""

    def __init__(self, origin: int = 0, explaining: bool = False) -> None:
        self.fns: dict[str, Any] = {}
        self.shown = ""
        self.origin = origin  # hash of the structure being built (a unit compiled for it is its own)
        self.explaining = explaining  # units bound are not counted as reused (shared.lookup)

    def lookup(self, key: Any) -> shared.Unit | None:
        """The unit of ``key`` in the shared table, or ``None``."""
        return shared.lookup(key, count=not self.explaining)

    def store(self, key: Any, unit: shared.Unit) -> None:
        unit.origin = self.origin
        shared.store(key, unit)

    def shown_source(self, unit: shared.Unit, name: str) -> str:
        """``unit``'s source as ``explain`` shows it: marked when an earlier structure compiled it."""
        if unit.origin == self.origin:
            return unit.source
        return (f"# {name}: the unit compiled for an earlier structure, shared (its names are "
                "that structure's)\n" + unit.source)


def render(kind: str, plan: FlattenPlan | UnflattenPlan, disabled: frozenset[str] = frozenset(),
           units: Units | None = None) -> str:
    """The source text of the ``kind`` function of ``plan``: preceded by its outlined
    shapes' functions, or with ``units``, without them (``units`` gets them, each compiled
    on its own or shared: see :func:`_outlined_units`)."""
    gd = plan.graphdef
    name = _function_name(kind, gd)
    type_name = safe_name(gd.type.__qualname__)
    if isinstance(plan, UnflattenPlan):
        if kind != "unflatten":
            raise ValueError(f"an unflatten plan makes no {kind} function")
        tmpl = environment().get_template("unflatten.py.j2")
        steps = [s for s in plan.steps if s.kind not in disabled]
        shape_fns: list[Any] = plan.shape_fns
        if units is not None and (shape_fns or any(s.op in _ULOOPS for s in steps)):
            steps = _unflatten_units(plan, steps, units)
            shape_fns = []
        return tmpl.render(name=name, type_name=type_name, root=plan.root, steps=steps, shape_fns=shape_fns,
                           each=None)
    if kind == "unflatten":
        raise ValueError("a flatten plan makes no unflatten function")
    no_distinct = "distinct" in disabled
    steps = _kept(plan.steps, disabled, no_distinct)
    # A partial update writing into states of outlined code (runtime/derived.py) runs the
    # guards as the collect does, for the objects by table index, and writes through them.
    by_objects = kind == "update" and any(w.op == "write_picked" for w in plan.writes)
    shape_fns = [
        SimpleNamespace(name=f.name, type_name=f.type_name, uses=f.uses,
                        steps=_kept(f.steps, disabled, no_distinct),
                        values=f.values, objects=f.objects, keyed_statics=f.keyed_statics,
                        writes=[] if by_objects else [_loop_kept(w, disabled, no_distinct) if w.op in _LOOPS
                                                      else w for w in f.writes],
                        distinct=[] if no_distinct else f.distinct,
                        checks=[c for c in f.checks if c.kind not in disabled], kept=f.kept,
                        array_writes=[] if by_objects else [_loop_kept(w, disabled, no_distinct)
                                                            if w.op in _LOOPS else w for w in f.array_writes],
                        loads=[s for s in _kept(f.steps, disabled, no_distinct) if s.op in _LOADS],
                        params=f.params)
        for f in plan.shape_fns
    ]
    if kind == "update":
        steps = [s for s in steps if OPS[s.op].in_update]
    tmpl = environment().get_template("update.py.j2" if kind == "update" else "flatten.py.j2")
    context = dict(
        step_text=_step_texts(plan),
        collect=kind == "collect" or by_objects,
        for_update=kind == "update",
        by_objects=by_objects,
        name=name,
        type_name=type_name,
        steps=steps,
        objects=plan.objects,
        values=plan.values,
        checks=[c for c in plan.checks if c.kind not in disabled],
        distinct=plan.distinct if not no_distinct else [],
        outlined_distinct=plan.outlined_distinct and not no_distinct,
        shape_fns=shape_fns,
        uses_d=plan.outlined,
        writes=[_loop_kept(w, disabled, no_distinct) if w.op in _LOOPS else w for w in plan.writes],
        keyed_statics=plan.keyed_statics,
        epoch=plan.epoch,
        guard_epoch="epoch" not in disabled,
        token=plan.token if kind == "update" else None,
        # the update's token, passed to every outlined function of the update
        tok_arg=f", {plan.token.dst}" if kind == "update" and plan.token is not None else "",
    )
    if units is not None and (shape_fns or any(s.op == "each_loop" for s in steps)):
        _outlined_units(kind, plan, context, units)
    return tmpl.render(**context)


def _outlined_units(kind: str, plan: FlattenPlan, context: dict[str, Any], units: Units) -> None:
    """The outlined functions of ``context`` (the top function's template context), and
    each loop over a list of one shape in the top function, as units: each compiled on its
    own or, when a structure built before had it, that very unit (``shared.py``), into
    ``units``; ``context`` then renders the top function alone (a loop: one ``call_loop``). A unit
    is rendered as the top template would render it: from the same views of the plan,
    with its flags (a loop's item count, in a comment only, is left out: a list of 999
    and one of 1 000 share their loop)."""
    flags = {"update": kind == "update", "collect": context["collect"], "for_update": context["for_update"],
             "tok_arg": context["tok_arg"]}  # (the update's token: an argument of its outlined functions)
    consts = plan.consts
    keys: dict[str, Any] = {}
    shown: list[str] = []
    fns = {f.name: f for f in plan.shape_fns}
    views: list[SimpleNamespace] = list(context["shape_fns"])  # callees first
    steps = list(context["steps"])
    loops: dict[str, int] = {}
    for i, s in enumerate(steps):
        if s.op == "each_loop":
            step = SimpleNamespace(**{**vars(s), "n": "all"})
            views.append(SimpleNamespace(name=f"each_loop{i}", type_name="loop", each=step,
                                         keyed_statics=context["keyed_statics"]))
            loops[f"each_loop{i}"] = i
    for view in views:
        key, keep = shared.unit_key(flags, plan.epoch, view, consts.namespace, consts.attributes, keys)
        keys[view.name] = shared.callee_token(key)  # (its callers' keys name it by a token)
        unit = units.lookup(key)
        if unit is None:
            try:
                unit = _compile_unit(view, flags, plan, units.fns, keep)
            except _Unbound:  # a loop reading a local of the top function: it stays there
                loops.pop(view.name)
                continue
            units.store(key, unit)
        else:
            f = fns.get(view.name)
            if f is not None and kind not in f.shared and unit.origin != units.origin:
                f.shared.append(kind)
        shown.append(units.shown_source(unit, f"{view.name}_*"))
        for suffix, g in unit.fns.items():
            units.fns[f"{view.name}_{suffix}"] = g
    units.shown = "".join(shown)
    for name, i in loops.items():
        s = steps[i]
        steps[i] = Step("call_loop", dst=s.dst, fn=name, obj=s.obj, n=s.n)
    context["shape_fns"] = []
    context["steps"] = steps


#: the unflatten's loops that become units of their own (at the top function only)
_ULOOPS = frozenset({"build_each", "build_cchain", "build_chain", "create_each", "fill_each"})
_CTX = re.compile(r"^ctx[0-9]+$")


def _unflatten_units(plan: UnflattenPlan, steps: list[Step], units: Units) -> list[Step]:
    """The outlined builders of an unflatten plan, and each loop of its top function over a
    list of one shape (in two phases too: made, then filled), or the links of a chain of
    nodes or of containers, as units: each compiled on
    its own or, when a structure built before had it, that very unit (``shared.py``), into
    ``units``. Returns the top function's steps, each such loop a call of its unit.

    A builder is keyed as a flatten unit is (its steps, its constants, its callees' keys):
    its statics are not in its code but in the tuple ``S`` each caller reads from its own
    GraphDef for its own plan of the builder, whose steps the key says are these (so the
    same items sit at the same positions), and its contexts are parameters. A loop's unit
    takes what it reads of the top function as parameters (``vals``, its iterators, its
    counters' starts, its item count, the contexts its body passes on): neither where its
    values sit nor how many items it has is in its code."""
    flags = {"kind": "unflatten"}
    consts = plan.consts
    keys: dict[str, Any] = {}
    shown: list[str] = []
    # A builder as the template reads it: every field but its call sites (explain's). (Callees
    # first: a builder is listed after those it calls.)
    views: list[SimpleNamespace] = [SimpleNamespace(**{k: v for k, v in vars(f).items() if k != "where"})
                                    for f in plan.shape_fns]
    calls: dict[str, tuple[int, Step]] = {}
    for i, s in enumerate(steps):
        if s.op in _ULOOPS:
            view, call = _loop_unit(f"each{i}", s)
            views.append(view)
            calls[view.name] = (i, call)
    for view in views:
        key, keep = shared.unit_key(flags, plan.epoch, view, consts.namespace, consts.attributes, keys)
        keys[view.name] = shared.callee_token(key)  # (its callers' keys name it by a token)
        unit = units.lookup(key)
        if unit is None:
            try:
                unit = _compile_unflatten_unit(view, plan, units.fns, keep)
            except _Unbound:  # a loop reading a local of the top function it is not given: inline
                calls.pop(view.name)
                continue
            units.store(key, unit)
        shown.append(units.shown_source(unit, f"{view.name}_build"))
        shown[-1] = shown[-1].rstrip("\n") + "\n\n\n"
        for suffix, g in unit.fns.items():
            units.fns[f"{view.name}_{suffix}"] = g
    units.shown = "".join(shown)
    steps = list(steps)
    for i, call in calls.values():
        steps[i] = call
    return steps


def _loop_unit(name: str, s: Step) -> tuple[SimpleNamespace, Step]:
    """The view of the unit of loop ``s`` (a top function's), and the step calling it."""
    fields = {k: v for k, v in vars(s).items() if k != "op" and k != "kind"}
    args = ["vals"]
    params = ["vals"]
    for src in dict.fromkeys(s.sources):  # (an iterator zipped k times is passed once)
        args.append(src)
        params.append(src)
    if "counters" in fields:
        counters = []
        for j, (c, (base, off), d) in enumerate(s.counters):
            args.append(f"{base} + {off}" if base else str(off))
            params.append(f"at{j}")
            counters.append((c, ("", f"at{j}"), d))
        fields["counters"] = counters
    args.append(str(s.n))
    params.append("n")
    fields["n"] = "n"
    if s.op == "build_cchain":  # the innermost link's tail, made before
        args.append(s.tail)
        params.append("tail")
        fields["tail"] = "tail"
        result, what = s.prev, "nested containers of one shape, innermost first"
    elif s.op == "build_chain":  # the head (made) and the tail (built) of the chain of nodes
        args += [s.head, s.tail]
        params += ["head", "tail"]
        fields["head"], fields["tail"] = "head", "tail"
        result, what = s.links, "nested links of one shape"
    elif s.op == "create_each":  # (two phases: the items' objects made, then filled)
        result, what = s.dst, "of one shape: their objects, each's in table order"
    elif s.op == "fill_each":  # the objects create_each made: filled in place (returned as given)
        args.append(s.src)
        params.append("src")
        fields["src"] = "src"
        result, what = "src", "of one shape: filled, each in table order"
    else:
        result, what = s.dst, "of one shape"
    ctxs = sorted(_names_in(s.body, _CTX), key=lambda c: int(c[3:]))
    args += ctxs
    params += ctxs
    view = SimpleNamespace(name=name, type_name="loop", step=Step(s.op, **fields), params=params,
                           result=result)
    dst = s.src if s.op == "fill_each" else result
    return view, Step("call_each", dst=dst, fn=f"{name}_build", args=args, n=s.n, what=what)


def _names_in(x: Any, pattern: re.Pattern[str]) -> set[str]:
    """The strings matching ``pattern`` anywhere in steps ``x`` (their fields, nested)."""
    found: set[str] = set()
    stack = [x]
    while stack:
        y = stack.pop()
        t = type(y)
        if t is str:
            if pattern.match(y):
                found.add(y)
        elif t is Step:
            stack.extend(v for k, v in vars(y).items() if k != "op" and k != "kind")
        elif t is list or t is tuple:
            stack.extend(y)
    return found


def _compile_unflatten_unit(view: SimpleNamespace, plan: UnflattenPlan, bound: dict[str, Any],
                            keep: list[Any]) -> shared.Unit:
    """Render and compile one builder, or one loop of a top function, in a namespace of its
    own: the prelude, the constants it names, and the builders it calls (``bound``)."""
    each = view if hasattr(view, "step") else None
    source = environment().get_template("unflatten.py.j2").render(
        name=None, shape_fns=[] if each is not None else [view], each=each)
    return _exec_unit(source, "unflatten", view, plan, bound, keep, closed_check=each is not None)


class _Unbound(Exception):
    """A unit's code reads a global its namespace does not have (a local of the top function)."""


def _compile_unit(view: SimpleNamespace, flags: dict[str, Any], plan: FlattenPlan, bound: dict[str, Any],
                  keep: list[Any]) -> shared.Unit:
    """Render and compile one outlined shape's functions in a namespace of their own: the
    prelude, the constants they name, and the outlined functions they call (``bound``)."""
    each = getattr(view, "each", None)
    source = environment().get_template("outlined.py.j2").render(
        shape_fns=[] if each is not None else [view], each=view if each is not None else None, **flags)
    kind = "update" if flags["update"] else "collect" if flags["collect"] else "flatten"
    return _exec_unit(source, kind, view, plan, bound, keep, closed_check=each is not None)


def _exec_unit(source: str, kind: str, view: SimpleNamespace, plan: FlattenPlan | UnflattenPlan,
               bound: dict[str, Any], keep: list[Any], closed_check: bool) -> shared.Unit:
    """Compile a unit's ``source`` under a file name of its own, in the prelude plus the
    constants and the units (``bound``) it names; ``closed_check``: a loop's body, made from
    the top function's, refused (:class:`_Unbound`) if it reads anything else."""
    with _lock:
        n = next(_counter)
    filename = f"<specgraph {kind} outlined {safe_name(view.type_name, 40)} #{n}>"
    code = compile(source, filename, "exec")
    names = _global_names(code)
    ns = prelude()
    pns = plan.consts.namespace
    ns.update((k, pns[k]) for k in names if k in pns)
    ns.update((k, bound[k]) for k in names if k in bound)
    if closed_check:  # a loop's body is made from the top function's: closed, but checked
        unbound = _loaded_globals(code) - ns.keys() - bound.keys() - _BUILTINS
        if unbound:
            raise _Unbound(sorted(unbound))
    exec(code, ns)
    prefix = view.name + "_"
    fns = {k[len(prefix):]: g for k, g in ns.items()
           if type(g) is FunctionType and g.__code__.co_filename == filename and k.startswith(prefix)}
    if not fns:
        raise RuntimeError(f"the generated source does not define {prefix}*")
    _bind_attributes(ns, filename, plan.consts.attributes)
    _register(filename, source)
    # Registered while any of its functions lives (they share one namespace, so they die together).
    weakref.finalize(next(iter(fns.values())), _unregister, filename).atexit = False
    return shared.Unit(fns, source, filename, keep)


_BUILTINS = frozenset(dir(builtins))


_LOAD_GLOBAL = dis.opmap["LOAD_GLOBAL"]
_EXTENDED_ARG = dis.EXTENDED_ARG
_GLOBAL_SHIFT = 1 if sys.version_info >= (3, 11) else 0  # (3.11: the low bit of the arg pushes a NULL)


def _loaded_globals(code: Any) -> set[str]:
    """The names the code's functions read as globals (module level: the names it defines).

    Read straight from each function's bytecode (``co_code``: two bytes an instruction,
    inline caches zeroed), which is what ``dis.get_instructions`` decodes, at a tenth of its
    cost (MLP-1 000's loop unit: 0.5 ms with dis)."""
    names: set[str] = set()
    stack = [c for c in code.co_consts if type(c) is type(code)]
    while stack:
        co = stack.pop()
        raw, co_names = co.co_code, co.co_names
        ext = 0
        for i in range(0, len(raw), 2):
            op = raw[i]
            arg = raw[i + 1] | ext
            if op == _EXTENDED_ARG:
                ext = arg << 8
                continue
            ext = 0
            if op == _LOAD_GLOBAL:
                names.add(co_names[arg >> _GLOBAL_SHIFT])
        stack.extend(c for c in co.co_consts if type(c) is type(code))
    return names


def _global_names(code: Any) -> set[str]:
    """Every name the code (and the code nested in it) reads: its globals among them."""
    names: set[str] = set()
    stack = [code]
    while stack:
        co = stack.pop()
        names.update(co.co_names)
        stack.extend(c for c in co.co_consts if type(c) is type(code))
    return names


# The flatten, update and collect functions of one plan spell the same steps: each step's
# text is rendered once (MLP-1 000: the update's render 50 -> 8 ms). Kept for the plan
# built last only (the texts are as large as a source), dropped with it.
_texts_of: list[Any] = [None, None]  # [weakref to the plan, {(id(step), indent): (step, text)}]


_macros: list[Any] = []  # the step macro of _steps.j2, once loaded


def _step_text(s: Step, indent: int) -> str:
    """The ``step`` macro of ``_steps.j2`` on ``s``, its lines after the first indented by
    ``indent`` (jinja2's ``indent`` filter): one step's text in a flatten/update body."""
    if not _macros:
        _macros.append(environment().get_template("_steps.j2").module.step)  # type: ignore[attr-defined]
    return str(jinja2.filters.do_indent(str(_macros[0](s)), indent))


def _step_texts(plan: FlattenPlan) -> Callable[[Step, int], str]:
    """``step_text(s, indent)``: :func:`_step_text`, once per step of ``plan`` and indent."""
    with _lock:
        ref, texts = _texts_of
        if ref is None or ref() is not plan:
            texts = {}
            _texts_of[:] = [weakref.ref(plan, _drop_texts), texts]
    def step_text(s: Step, indent: int) -> str:
        hit = texts.get((id(s), indent))
        if hit is not None and hit[0] is s:  # the step itself is held: its id is not reused
            return hit[1]
        text = _step_text(s, indent)
        texts[id(s), indent] = (s, text)
        return text

    return step_text


def _drop_texts(ref: Any) -> None:
    with _lock:
        if _texts_of[0] is ref:
            _texts_of[:] = [None, None]


#: the steps an outlined write function repeats: what loads the objects it writes into
_LOADS = frozenset({"load_dict", "load_block", "unpack_seq", "load_run", "load_items"})


#: the ops that hold a loop's body (a list of steps)
_LOOPS = frozenset({"chain_loop", "chain_after", "each_loop", "write_chain", "write_each"})


def _kept(steps: list[Step], disabled: frozenset[str], no_distinct: bool = False) -> list[Step]:
    """``steps`` without the guards of the ``disabled`` kinds (a test-only switch), in
    loops' bodies too."""
    return [
        _indexed_loads(s) if s.op == "unpack_seq" and s.kind in disabled
        else _loop_kept(s, disabled, no_distinct) if s.op in _LOOPS else s
        for s in steps
        if s.kind not in disabled or s.op == "unpack_seq"
    ]


def _loop_kept(step: Step, disabled: frozenset[str], no_distinct: bool) -> Step:
    """A loop (or its writes) whose body has the ``disabled`` guards left out."""
    fields = {f: getattr(step, f) for f in step.__dict__ if f not in ("op", "kind")}
    if "body" in fields:
        fields["body"] = _kept(fields["body"], disabled, no_distinct)
        fields["checks"] = [c for c in fields["checks"] if c.kind not in disabled]
        if no_distinct:
            fields["distinct"] = []
    else:  # the writes repeat the loads of the body (loops in it come with the writes)
        fields["loads"] = _loads(fields["loads"], disabled)
        if no_distinct and fields.get("states"):  # the loop keeps values, not states, then
            fields["states"] = None
        for f in ("writes", "writes_before", "writes_after"):
            if f in fields:
                fields[f] = [_loop_kept(w, disabled, no_distinct) if w.op in _LOOPS else w for w in fields[f]]
    return Step(step.op, **fields)


def _loads(steps: list[Step], disabled: frozenset[str]) -> list[Step]:
    """What a loop's writes repeat of its body (a loop over a list's items, a chain's links):
    its loads, and a chain in it walked to its tail again (what follows the chain is loaded
    from the node past it; the chain's own writes walk it once more)."""
    out = []
    for s in _kept(steps, disabled):
        if s.op in _LOADS:
            out.append(s)
        elif s.op == "chain_loop":
            out.append(Step("walk_chain", cur=s.cur, obj=s.obj, n=s.n, loads=_loads(s.body, disabled),
                            rec=s.rec, var=s.var))
    return out


def _indexed_loads(step: Any) -> Step:
    """A sequence unpacking with its length check generated out: indexed loads."""
    return Step("load_block", obj=step.obj, pairs=[(dst, Literal(i)) for i, dst in enumerate(step.dsts)],
                miss="")


def _compile(kind: str, name: str, source: str, plan: FlattenPlan | UnflattenPlan,
             units: dict[str, Any] | None = None) -> tuple[Any, str]:
    """Compile ``source`` under a unique, linecache-registered file name; its function.

    The namespace is the prelude plus the plan's constants. The function is the one
    the template named ``name`` (a constant is never a function of this file).
    Attribute placeholders are replaced by the real names (user data) in the code
    object's ``co_names``, so a name reaches the bytecode as a constant, never the text.
    """
    filename = _unique_filename(kind, plan.graphdef)
    code = compile(source, filename, "exec")
    ns = prelude()
    ns.update(plan.consts.namespace)
    if units:
        ns.update(units)
    exec(code, ns)
    fn = ns[name]
    if type(fn) is not FunctionType or fn.__code__.co_filename != filename:
        raise RuntimeError(f"the generated source does not define {name}")
    _bind_attributes(ns, filename, plan.consts.attributes)
    _register(filename, source)
    return fn, filename


def _bind_attributes(ns: dict[str, Any], filename: str, attributes: dict[str, str]) -> None:
    """The real attribute names in place of their placeholders, in every function of the file."""
    if attributes:
        for f in list(ns.values()):
            if type(f) is FunctionType and f.__code__.co_filename == filename:
                co = f.__code__
                f.__code__ = co.replace(co_names=tuple(attributes.get(n, n) for n in co.co_names))


# -- linecache: tracebacks and inspect.getsource show generated lines ------------------

_counter = itertools.count()
#: Re-entrant: a generated function or plan dying while this thread holds it (its last
#: reference dropped, or the cyclic collector run by an allocation made under it) calls
#: :func:`_unregister` or :func:`_drop_texts` right there, in this thread, and they take it
#: too (with a plain Lock, a deadlock: seen as a hung test run).
_lock = threading.RLock()
_registered: set[str] = set()


def _unique_filename(kind: str, gd: GraphDef) -> str:
    """A file name no other generated function uses (``<specgraph flatten MLP #3>``)."""
    with _lock:
        n = next(_counter)
    return f"<specgraph {kind} {safe_name(gd.type.__qualname__, 40)} #{n}>"


def _register(filename: str, source: str) -> None:
    lines = source.splitlines(keepends=True)
    # A None mtime marks the entry as not backed by a file: checkcache keeps it.
    linecache.cache[filename] = (len(source), None, lines, filename)
    with _lock:
        _registered.add(filename)


def forget(*functions: object) -> None:
    """Drop the sources of generated functions that are no longer cached."""
    for fn in functions:
        code = getattr(fn, "__code__", None)
        if code is not None and code.co_filename in _registered:
            linecache.cache.pop(code.co_filename, None)
            with _lock:
                _registered.discard(code.co_filename)


def _unregister(filename: str) -> None:
    with _lock:
        _registered.discard(filename)
    linecache.cache.pop(filename, None)


def forget_all() -> None:
    """Drop every generated source and shared unit (``clear_cache``)."""
    shared.clear()
    with _lock:
        names = list(_registered)
        _registered.clear()
        _texts_of[:] = [None, None]
    for name in names:
        linecache.cache.pop(name, None)
