"""Render plans through the jinja2 templates and compile them.

No code text is built here: the templates hold the shape of the code, the plan
holds the names. Each source is compiled under a unique filename registered in
``linecache`` and executed in a namespace holding only the plan's constants and
a few runtime helpers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from types import FunctionType
from typing import Any

import jinja2

from ..runtime import sources
from .plan import FlattenPlan, Step, UnflattenPlan

__all__ = ["render", "compile_source", "CompiledSource", "environment"]

_env: jinja2.Environment | None = None


def environment() -> jinja2.Environment:
    global _env
    if _env is None:
        _env = jinja2.Environment(
            loader=jinja2.PackageLoader("specgraph", "templates"),
            autoescape=False,
            keep_trailing_newline=True,
            trim_blocks=False,
            lstrip_blocks=False,
            undefined=jinja2.StrictUndefined,
        )
    return _env


def _safe_name(name: str) -> str:
    """A type's name reduced to ASCII letters, digits, ``_`` and ``.`` (it is user data)."""
    return "".join(c if (c.isascii() and c.isalnum()) or c in "_." else "_" for c in name)[:60]


def _func_name(kind: str, type_name: str) -> str:
    return f"{kind}_{type_name.replace('.', '_')}"


def render(kind: str, plan: FlattenPlan | UnflattenPlan, disabled: frozenset[str] = frozenset()) -> str:
    """The source text of one generated function (``kind``: flatten/update/unflatten).

    ``disabled`` names guard kinds to leave out: a test-only switch used to prove
    that each guard kind is load-bearing.
    """
    gd = plan.graphdef
    type_name = _safe_name(gd.type.__qualname__)
    tmpl = environment().get_template(f"{'flatten' if kind == 'walk' else kind}.py.j2")
    if isinstance(plan, UnflattenPlan):
        return tmpl.render(name=_func_name(kind, type_name), type_name=type_name,
                           steps=[s for s in plan.steps if s.kind not in disabled], root=plan.root)
    steps = [
        _without_guard(s) if s.kind in disabled else s
        for s in plan.steps
        if s.kind not in disabled or s.op == "unpack_seq"
    ]
    return tmpl.render(
        walk=kind == "walk",
        objects=plan.objects,
        name=_func_name(kind, type_name),
        type_name=type_name,
        steps=steps,
        values=plan.values,
        writes=plan.writes,
        distinct=plan.distinct if "distinct" not in disabled else [],
        keyed_statics=plan.keyed_statics,
        epoch=plan.epoch,
        guard_epoch="epoch" not in disabled,
    )


def _without_guard(step: Step) -> Step:
    """A sequence unpacking with its length check generated out: indexed loads."""
    return Step("load_block", src=step.src, pairs=[(dst, repr(i)) for i, (dst, _) in enumerate(step.pairs)])


@dataclass
class CompiledSource:
    fn: Any
    source: str
    filename: str
    seconds: float


def compile_source(kind: str, source: str, type_name: str, namespace: dict[str, Any],
                   attributes: dict[str, str] | None = None) -> CompiledSource:
    """Compile ``source`` in ``namespace`` under a linecache-registered filename.

    ``attributes`` maps placeholder attribute names of the source to the real
    names (user data): they are bound into the function's ``co_names``, so a
    name reaches the bytecode as a constant and never the text.
    """
    t0 = time.perf_counter()
    filename = sources.unique_filename(kind, type_name)
    code = compile(source, filename, "exec")
    ns = dict(namespace)
    ns["__name__"] = "specgraph._generated"
    ns["__builtins__"] = __builtins__
    exec(code, ns)
    # Constants are user data too: a function static binds its type (whose ``__code__`` is a
    # descriptor), so only a real function compiled from this source is the result.
    fns = [v for v in ns.values() if type(v) is FunctionType and v.__code__.co_filename == filename]
    fn = fns[0]
    if attributes:
        co = fn.__code__
        fn.__code__ = co.replace(co_names=tuple(attributes.get(n, n) for n in co.co_names))
    sources.register(filename, source)
    return CompiledSource(fn, source, filename, time.perf_counter() - t0)
