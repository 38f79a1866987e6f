"""The templates load from modules precompiled into the package, only while they are current
(codegen/template_loader.py): the shipped modules match the templates, a template whose
module does not match is compiled from its source (never the stale module), and both
ways render the same text."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import jinja2
import numpy as np
import pytest
from graphs import Box, Linear

import specgraph as sg
from specgraph.codegen import flatten_plan, pipeline, template_loader, unflatten_plan

REGENERATE = "python -m specgraph.codegen.compiled_templates"


def test_the_shipped_modules_match_the_templates() -> None:
    assert template_loader.stale() == [], f"a template changed: regenerate its module ({REGENERATE})"


def test_every_template_has_a_module_and_nothing_else_has_one() -> None:
    names = template_loader.TemplateLoader().list_templates()
    assert {"flatten.py.j2", "update.py.j2", "unflatten.py.j2", "_steps.j2", "_callback.j2"} <= set(names)
    shipped = {p.stem for p in template_loader._DIR.glob("*_j2.py")}
    assert shipped == {template_loader.module_name(n) for n in names}


def test_the_environment_loads_the_precompiled_modules() -> None:
    env = pipeline.make_environment(template_loader.TemplateLoader())
    for name in ("flatten.py.j2", "_steps.j2", "unflatten.py.j2"):
        env.get_template(name)
    loader = env.loader
    assert isinstance(loader, template_loader.TemplateLoader)
    assert loader.loaded == {"flatten.py.j2": "compiled", "_steps.j2": "compiled",
                             "unflatten.py.j2": "compiled"}


class _Edited(template_loader.TemplateLoader):
    """The package's templates with ``flatten.py.j2`` edited after its module was written."""

    def get_source(self, environment: jinja2.Environment, template: str) -> Any:
        source, filename, uptodate = super().get_source(environment, template)
        if template == "flatten.py.j2":
            source = "# EDITED\n" + source
        return source, filename, uptodate


def test_a_template_edited_after_its_module_is_compiled_from_its_source() -> None:
    env = pipeline.make_environment(_Edited())
    text = env.get_template("flatten.py.j2").render(
        shape_fns=[], name="f", type_name="T", collect=False, guard_epoch=False, epoch=0, uses_d=False,
        steps=[], outlined_distinct=False, distinct=[], keyed_statics=False, objects=[], values=[])
    assert text.startswith("# EDITED")
    assert isinstance(env.loader, _Edited)
    assert env.loader.loaded["flatten.py.j2"] == "source"
    assert template_loader.stale(env) == ["flatten.py.j2"]


def test_the_fingerprint_covers_the_source_and_the_options() -> None:
    env = pipeline.make_environment(template_loader.TemplateLoader())
    base = template_loader.fingerprint(env, "{{ x }}")
    assert template_loader.fingerprint(env, "{{ x }} ") != base
    env.trim_blocks = True
    assert template_loader.fingerprint(env, "{{ x }}") != base


@pytest.fixture
def source_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[bool], None]]:
    """Switch ``pipeline.render`` between the precompiled templates and their sources."""
    envs = {True: pipeline.make_environment(template_loader.TemplateLoader()),
            False: pipeline.make_environment(jinja2.PackageLoader("specgraph", "templates"))}

    def use(compiled: bool) -> None:
        monkeypatch.setattr(pipeline, "_env", envs[compiled])
        monkeypatch.setattr(pipeline, "_macros", [])
        monkeypatch.setattr(pipeline, "_texts_of", [None, None])

    yield use


@pytest.mark.parametrize("outline_min", [0, 2])
def test_precompiled_and_source_templates_render_the_same(
        source_environment: Callable[[bool], None], outline_min: int) -> None:
    shared = Linear(1, 1)
    obj = Box(layers=[Linear(2, 3), Linear(3, 3), Linear(3, 1)], head=[shared, shared], x=np.ones(2), n=3,
              d={"a": Linear(2, 2), "b": (1, 2.5)})
    gd, _ = sg.generic.flatten(obj)
    texts: dict[bool, list[str]] = {}
    for compiled in (True, False):
        source_environment(compiled)
        plan = flatten_plan.plan_flatten(gd, 10_000, outline_min)
        uplan = unflatten_plan.plan_unflatten(gd, 10_000)
        texts[compiled] = [pipeline.render(k, plan) for k in ("flatten", "update", "collect")]
        texts[compiled].append(pipeline.render("unflatten", uplan))
    assert texts[True] == texts[False]
