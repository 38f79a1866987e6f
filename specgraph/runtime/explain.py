"""``explain(graphdef)``: what specgraph does with one structure, for a person."""

from __future__ import annotations

from collections import Counter
from typing import Any

from .. import codegen
from .._ir import Edge, GraphDef, NodeEdge, NodeSpec, iter_edges
from . import dispatch
from .cache import CONFIG

__all__ = ["explain"]


def _depth(gd: GraphDef) -> int:
    """Longest chain of node references from the root (each node counted once)."""
    depth: dict[int, int] = {}
    frontier = [(i, 1) for i in _node_refs(gd.root)]
    best = 0
    while frontier:
        idx, d = frontier.pop()
        if idx in depth:
            continue
        depth[idx] = d
        best = max(best, d)
        spec = gd.table[idx]
        assert type(spec) is NodeSpec
        for j in _node_refs(*spec.children):
            if j not in depth:
                frontier.append((j, d + 1))
    return best


def _node_refs(*edges: Edge) -> list[int]:
    """The indices of the nodes these edges (and the containers below them) refer to."""
    return [e.index for e in iter_edges(*edges) if type(e) is NodeEdge]


_MAX_LINE_CHARS = 400


def _numbered(source: str, max_lines: int | None) -> str:
    """``source`` with line numbers; past ``max_lines``, its head and tail only (a deep
    chain generates tens of thousands of lines, nobody reads them in one text)."""
    lines = source.rstrip("\n").splitlines()
    width = len(str(len(lines)))
    if max_lines is not None:  # one line per value or distinct object can be long too
        lines = [line if len(line) <= _MAX_LINE_CHARS else
                 f"{line[:_MAX_LINE_CHARS]} ... ({len(line) - _MAX_LINE_CHARS} more characters)"
                 for line in lines]
    numbered = [f"  {i + 1:>{width}} | {line}" for i, line in enumerate(lines)]
    if max_lines is None or len(lines) <= max_lines:
        return "\n".join(numbered)
    head = max(1, max_lines * 2 // 3)
    tail = max(1, max_lines - head)
    skipped = len(lines) - head - tail
    return "\n".join([
        *numbered[:head],
        f"  {'...':>{width}} | ({skipped} lines not shown: explain(graphdef, max_lines=None) "
        "shows them all)",
        *numbered[-tail:],
    ])


def _build(kind: str, gd: GraphDef, plan: Any) -> codegen.Built:
    """The function ``kind`` would get, built to be read (its source is not kept registered)."""
    built = codegen.build(kind, gd, max_steps=CONFIG.max_steps, plan=plan, outline_min=CONFIG.outline_min,
                           explaining=True)
    codegen.forget(built.fn)
    return built


def explain(graphdef: GraphDef, *, max_lines: int | None = 300) -> str:
    """A readable account of one structure: summary, generated code, guards, counters.

    Each generated function longer than ``max_lines`` lines shows its head and tail;
    ``max_lines=None`` shows every line.
    """
    if not isinstance(graphdef, GraphDef):
        raise TypeError(f"explain expects a GraphDef, got {type(graphdef).__qualname__}")
    gd = graphdef
    node_types = Counter(s.type.__qualname__ for s in gd.table if type(s) is NodeSpec)
    state_types = Counter(s.type.__qualname__ for s in gd.table if type(s) is not NodeSpec)
    out = [
        f"Structure of {gd.type.__qualname__}",
        f"  nodes: {gd.num_nodes}   states: {gd.num_states}   array leaves: "
        f"{gd.num_leaves - gd.num_states}   depth: {_depth(gd)}",
        "  node types:  " + (", ".join(f"{n} x{c}" for n, c in node_types.most_common()) or "-"),
        "  state types: " + (", ".join(f"{n} x{c}" for n, c in state_types.most_common()) or "-"),
        "",
    ]
    var = dispatch.variant_for(gd)
    sources: dict[str, str] = {}
    plan = None
    status = "specialized"
    if var is not None:
        sources = dict(var.sources)
        plan = var.plan
    else:
        status = "not specialized yet (these are the functions it would get)"
        try:
            for kind in ("flatten", "update"):
                built = _build(kind, gd, plan)
                sources[kind] = built.source
                plan = built.plan
        except codegen.Declined as e:
            status = f"not specialized: {e.reason}; the generic walker serves it"
    up = None
    try:
        built = _build("unflatten", gd, None)
        sources["unflatten"] = built.source
        up = built.plan
    except codegen.Declined as e:
        sources.pop("unflatten", None)
        out.append(f"unflatten not specialized: {e.reason}")
    out.append(f"Status: {status}")
    if plan is not None:
        out.append("")
        out.append("Guards (checked before answering; any failure hands the call to the generic walker):")
        for kind in codegen.GUARD_KINDS:
            n = plan.counts.get(kind, 0)
            if kind == "distinct":
                n = len(plan.distinct)
            if n:
                out.append(f"  - {kind:<9} x{n:<5} {codegen.GUARD_WORDS[kind]}")
        frozen = sum(1 if c.op == "check_unchanged" else c.n or 1 for c in plan.checks
                     if c.op == "check_unchanged" or c.op == "check_kept_same")
        if frozen:
            out.append(
                f"  (update: {frozen} array leaves sit in immutable containers; an update that "
                "changes one goes to the generic walker)"
            )
        raw = sum(1 for c in plan.steps if c.op == "guard_state_hooks")
        if raw:
            out.append(
                f"  (raw: {raw} states are read and written raw only while their library allows it "
                "(no hook on them or registered globally, no trace recording their reads); else the "
                "generic walker serves the call, through the library)"
            )
        at_level = _trace_checks(plan)
        if at_level:
            out.append(
                f"  (update: {at_level} states/nodes are written only if made at the current trace "
                "level; else the generic walker decides, with the library's own error)"
            )
    if plan is not None and plan.outlined:
        out.append("")
        out.append("Outlined (each function once below; it guards and reads one occurrence, fully):")
        for fn in plan.shape_fns:
            where = "; ".join(fn.where)
            out.append(f"  - {fn.name}_* ({fn.type_name}): used {fn.uses} time{'' if fn.uses == 1 else 's'}, "
                       f"at {where}"
                       + (f"; the statics that differ between the shape's occurrences are its parameters "
                          f"{', '.join(fn.params)}, each call passing its own" if fn.params else "")
                       + (f"; its {', '.join(fn.shared)} code compiled once for an earlier structure of this "
                          "shape, shared" if fn.shared else ""))
        for loop in plan.loops:
            out.append(f"  - a loop over {loop} (its body guards and reads one item)")
        for s in plan.steps:
            if s.op == "chain_loop" and s.links:
                out.append(f"  - a loop over {s.n} nested links of one shape, from {s.obj} "
                           f"(its body guards and reads one link up to its next link), and past the "
                           f"chain a loop over them in reverse (what follows each link's next: user "
                           f"code the reference runs after the rest of the chain)")
            elif s.op == "chain_loop":
                out.append(f"  - a loop over {s.n} nested links of one shape, from {s.obj} "
                           f"(its body guards and reads one link"
                           + (f"; the statics that differ between links zipped in as {', '.join(s.params)}"
                              if s.params else "") + ")")
    if up is not None and (up.shape_fns or up.loops):
        out.append("")
        out.append("Outlined unflatten (each builder once below; it builds one occurrence, fully):")
        for fn in up.shape_fns:
            more = "; ..." if fn.uses > len(fn.where) else ""
            names = f"{fn.name}_build" if getattr(fn, "fill", None) is None else f"{fn.name}_create/_fill"
            out.append(f"  - {names} ({fn.type_name}): the shape occurs {fn.uses} times; "
                       f"called at {'; '.join(fn.where)}{more}")
        for loop in up.loops:
            out.append(f"  - a loop over {loop} (its body builds one)")
    for kind in ("flatten", "update", "unflatten"):
        if kind in sources:
            out.append("")
            out.append(f"Generated {kind}:")
            out.append(_numbered(sources[kind], max_lines))
    if up is not None and up.consts.attributes:
        # The attribute names are bound into the compiled code, never its text.
        names = ", ".join(f"{p}={n!r}" for p, n in up.consts.attributes.items())
        out.append("")
        out.append("Unflatten attribute names (bound into the compiled code's names, never its text):")
        out.append(f"  {names}")
        out.append("  The class guards first check that no class gained a __setattr__, a "
                   "__getattribute__, or a class attribute of one of those names.")
    st = dispatch.structure_stats(gd)
    out.append("")
    if st is None:
        out.append("Counters: none yet for this structure")
    else:
        misses = ", ".join(f"{k}={v}" for k, v in sorted(st.misses.items())) or "none"
        out.append(
            f"Counters: flatten hits={st.hits}  update hits={st.update_hits}  "
            f"unflatten hits={st.unflatten_hits}  guard misses: {misses}  "
            f"fallbacks={st.fallbacks}  compile={st.compile_seconds * 1e3:.2f} ms"
        )
    return "\n".join(out)


def _trace_checks(plan: Any) -> int:
    """The update's trace-level checks, as often as they run: the top function's, and each
    outlined function's and loop body's per occurrence."""

    def looped(steps: list, times: int) -> int:
        n = 0
        for s in steps:
            if s.op == "each_loop" or s.op == "chain_loop" or s.op == "chain_after":
                n += times * s.n * len(s.checks) + looped(s.body, times * s.n)
        return n

    total = sum(1 for c in plan.checks if c.op == "guard_token") + looped(plan.steps, 1)
    for fn in plan.shape_fns:
        total += fn.uses * len(fn.checks) + looped(fn.steps, fn.uses)
    return total
