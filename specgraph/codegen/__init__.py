"""Code generation: GraphDef -> plan (Python data) -> source (jinja2 templates) -> function.

``build(kind, graphdef)`` is the one entry point (see :mod:`.pipeline`). The modules, in
the order a structure goes through them: :mod:`.classfacts` (what may be assumed about
classes), :mod:`.flatten_plan` / :mod:`.unflatten_plan` (the planners), :mod:`.ops` (the
closed op set plans are made of), :mod:`.naming` (bound constants and safe spellings),
:mod:`.prelude` (the globals generated code uses), :mod:`.pipeline` (render, compile,
linecache).
"""

from .flatten_plan import Declined, FlattenPlan, plan_flatten
from .ops import GUARD_KINDS, GUARD_WORDS, OPS, Step, UnknownOp
from .pipeline import KINDS, Built, build, forget, forget_all
from .prelude import MISS
from .shared import info as shared_info
from .unflatten_plan import UnflattenPlan, plan_unflatten

__all__ = [
    "GUARD_KINDS",
    "GUARD_WORDS",
    "KINDS",
    "MISS",
    "OPS",
    "Built",
    "Declined",
    "FlattenPlan",
    "Step",
    "UnflattenPlan",
    "UnknownOp",
    "build",
    "forget",
    "forget_all",
    "plan_flatten",
    "plan_unflatten",
    "shared_info",
]
