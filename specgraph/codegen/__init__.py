"""Code generation: GraphDef -> plan (Python) -> source (jinja2 templates) -> function."""

from .emit import CompiledSource, compile_source, render
from .plan import Declined, FlattenPlan, UnflattenPlan, plan_flatten, plan_unflatten

__all__ = [
    "Declined",
    "FlattenPlan",
    "UnflattenPlan",
    "plan_flatten",
    "plan_unflatten",
    "CompiledSource",
    "compile_source",
    "render",
]
