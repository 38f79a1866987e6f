"""The op set is closed: every op has a template branch, and nothing else renders.

A plan is a list of steps, each of an op of ``specgraph.codegen.OPS``. A step of an
unknown op, or with fields its op does not have, is refused when it is made; a step
that reaches a template no branch of which spells it raises instead of rendering as
a blank line (a guard must never vanish silently).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from graphs import Box

import specgraph as sg
from specgraph import codegen
from specgraph.codegen import OPS, Step, UnknownOp, pipeline
from specgraph.codegen.naming import Item, Literal, StateValue

# A value of the right shape for each field name (what the planners put there).
DUMMY: dict[str, Any] = {
    "obj": "x1", "dst": "x2", "cls": "T0", "const": "C0", "expected": "E0", "sig": "MS0", "mro": "MRO0",
    "cls_dict": "D0", "names": [Literal("__hash__")], "pairs": [("x3", Literal("k"))], "miss": "node_keys",
    "dsts": ["x4", "x5"], "label": "a.b", "treedef": "td1", "n": 2, "hidden": [Literal("h")],
    "slot": 0, "key": Literal("k"), "factory": "F0", "meta": "M0", "value": "v0", "items": ["v0", "v1"],
    "labels": ["a"], "setter": "F1", "attr": "attr0", "mode": "value", "fn": "F2", "args": ["v0", "v1"],
    "attrs": ["attr0", "attr1"], "token": "tok", "ref": "R0", "flag": Literal("f"), "current": "x2",
    "var": "x1",
    "cur": "x1", "body": [], "before": ["x2"], "after": ["x3"], "objs_before": ["x1"], "objs_after": ["x3"],
    "rec": "x2", "dst_after": "x6", "distinct": [("x2", False)], "loads": [], "writes_before": [],
    "writes_after": [], "slot_after": 3, "nb": 1, "na": 1, "values": ["x2"], "objects": ["x1"], "pos": "a1",
    "writes": [], "keep_states": False, "states": None, "total": 2,
    "base": "a1", "offs": [0, 1], "run": False, "at": ("a1", 2), "statics": "s1", "start": ("", 0),
    "stop": ("", 4), "reverse": False, "src": "s1", "targets": ["x4", "x5"], "sources": ["q1", "q1"],
    "counters": [("a1", ("", 0), 2)], "item": "x1", "tuple": False, "links": "r1", "head": "x1",
    "tail": "x2", "nxt": "x2", "objs": "F2", "vals": None, "prev": "x3",
    "checks": [], "keys": "KS0", "types": ["T0"], "contexts": ["ctx0"], "kept": None,
    "params": ["p1"], "pvals": "PV0", "live": ["x3"], "obj_after": "r2", "kept_after": None,
    "root": "x3", "made": ["x1", "x2"], "what": "of one shape",
    "new": "new_object", "metas": None, "md": "md1", "ok": "okx1", "aux": "A0",
    "fns": ["F2"], "idx": "IX0", "ns": [1], "stride": 2, "arity": -1,
    "lo": 0, "hi": 2,
}

#: The update's checks (before any write), rendered with the update's writes; its token
#: (made first, before the guards: outlined functions are passed it) has its own place.
CHECKS = ("check_unchanged", "check_kept_same", "guard_token", "guard_raw_writes")


def _step(op: str) -> Step:
    fields = {f: DUMMY[f] for f in OPS[op].fields}
    if op in ("build_dict", "fill_dict"):
        fields["pairs"] = [(Literal("k"), "v0")]
    elif op == "fill_attrs":
        fields["pairs"] = [("attr0", "v0")]
    elif op == "load_cb_items":
        fields["pairs"] = [("x3", "x4")]  # (key local, child local)
    return Step(op, **fields)


def _render(step: Step | None, body: str = "flatten") -> str:
    """Render one step (or none) through the template that spells ``body``'s ops."""
    env = pipeline.environment()
    steps = [] if step is None else [step]
    if body == "unflatten":
        return env.get_template("unflatten.py.j2").render(name="f", type_name="T", steps=steps, root="o0",
                                                              shape_fns=[])
    if body == "write":
        tmpl = env.get_template("update.py.j2")
        checks = [s for s in steps if s.op in CHECKS]
        token = next((s for s in steps if s.op == "token_now"), None)
        writes = [s for s in steps if s.op not in CHECKS and s.op != "token_now"]
        return tmpl.render(name="f", type_name="T", steps=[_step("guard_len")], checks=checks, writes=writes,
                           distinct=[], keyed_statics=False, epoch=0, guard_epoch=True,
                           collect=False, for_update=True, shape_fns=[], outlined_distinct=False,
                           uses_d=False, token=token, tok_arg=", tok" if token is not None else "",
                           by_objects=False)
    return env.get_template("flatten.py.j2").render(
        collect=False, for_update=False, name="f", type_name="T", steps=steps, objects=[], values=[],
        distinct=[], keyed_statics=False, epoch=0, guard_epoch=True, shape_fns=[], outlined_distinct=False,
        uses_d=False, tok_arg="")


@pytest.mark.parametrize("op", sorted(OPS))
def test_every_op_has_a_template_branch(op: str) -> None:
    body = OPS[op].body
    source = _render(_step(op), body)
    compile(source, "<test>", "exec")  # it renders to valid Python
    added = set(source.splitlines()) - set(_render(None, body).splitlines())
    # The step's own lines, naming the operand or the local it assigns.
    assert any(any(name in line for name in ("x1", "x2", "x4", "o0", "td1", "T0", "D0", "F2"))
               for line in added), source


@pytest.mark.parametrize("mode", ["is", "value", "same"])
@pytest.mark.parametrize("op", ["guard_field", "guard_meta_item", "guard_cb_key"])
def test_match_modes_render(op: str, mode: str) -> None:
    fields = {f: DUMMY[f] for f in OPS[op].fields}
    fields["mode"] = mode
    source = _render(Step(op, **fields))
    compile(source, "<test>", "exec")
    line = next(x for x in source.splitlines() if x.strip().startswith(("if ", "if not")) and "C0" in x)
    assert ("SAME(" in line) == (mode == "same")
    assert ("type(" in line) == (mode == "value")


def test_a_step_of_an_unknown_op_is_refused() -> None:
    with pytest.raises(UnknownOp, match="guard_typo"):
        Step("guard_typo", obj="x1", cls="T0", label="")


def test_a_step_with_fields_of_another_op_is_refused() -> None:
    with pytest.raises(UnknownOp, match="guard_type"):
        Step("guard_type", obj="x1", expected="T0", label="")


@pytest.mark.parametrize("body", ["flatten", "write", "check", "unflatten"])
def test_a_bogus_step_raises_when_rendered(body: str) -> None:
    """A step whose op no branch spells (made past the constructor) raises in every chain."""
    op = {"flatten": "guard_type", "write": "write_value", "check": "check_unchanged",
          "unflatten": "new_object"}[body]
    step = _step(op)
    step.op = "guard_bogus"
    env = pipeline.environment()
    with pytest.raises(UnknownOp, match="guard_bogus"):
        if body == "unflatten":
            env.get_template("unflatten.py.j2").render(name="f", type_name="T", steps=[step], root="o0",
                                                       shape_fns=[])
        elif body in ("write", "check"):
            env.get_template("update.py.j2").render(
                name="f", type_name="T", steps=[], checks=[step] if body == "check" else [],
                writes=[step] if body == "write" else [], distinct=[], keyed_statics=False, epoch=0,
                guard_epoch=True, collect=False, shape_fns=[], outlined_distinct=False, uses_d=False,
                token=None, tok_arg="", by_objects=False)
        else:
            _render(step)


def test_a_bogus_step_in_a_plan_is_a_warning_and_the_generic_walker(monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the dispatcher: a plan holding a step no template spells is never compiled."""
    real = codegen.flatten_plan.FlattenPlanner.plan

    def with_bogus_step(self: Any) -> Any:
        plan = real(self)
        plan.steps[-1].op = "guard_bogus"
        return plan

    monkeypatch.setattr(codegen.flatten_plan.FlattenPlanner, "plan", with_bogus_step)
    node = Box(p=sg.Param(np.ones(1)), n=1)
    ref = sg.generic.flatten(node)
    with pytest.warns(RuntimeWarning, match="guard_bogus"):
        sg.flatten(node)
    assert sg.flatten(node)[0] == ref[0]
    assert sg.cache_info()["compiled_variants"] == 0


def test_guards_return_their_own_kind() -> None:
    """The kind a guard returns is its op's, from the table (not written in the template)."""
    for op, spec in OPS.items():
        if spec.guard:
            assert f"return '{spec.guard}'" in _render(_step(op), spec.body), op


def test_operands_are_spelled_by_the_templates() -> None:
    step = Step("guard_static_same", obj=Item("dx1", Literal("n")), const="C0", label="n")
    assert "SAME(dx1['n'], C0)" in _render(step)
    env = pipeline.environment()
    text = env.get_template("flatten.py.j2").render(
        collect=False, name="f", type_name="T", steps=[], objects=[], values=[StateValue("x1"), "x2"],
        distinct=[("x1", True), ("x3", False)], keyed_statics=False, epoch=0, guard_epoch=True, shape_fns=[],
        outlined_distinct=False, uses_d=False)
    assert "return [x1.value, x2]" in text and "{ id(x1), x3 }" in text
