"""JAX transformations over graph nodes: ``jit``, ``grad``, ``value_and_grad``,
``vmap``, ``scan``, ``remat`` and ``eval_shape``."""

from .autodiff import grad, value_and_grad
from .axes import Carry, StateAxes
from .jit import JitFunction, jit
from .remat import RematFunction, eval_shape, remat
from .scan import ScanFunction, scan
from .vmap import VmapFunction, vmap

__all__ = [
    "jit",
    "JitFunction",
    "grad",
    "value_and_grad",
    "vmap",
    "VmapFunction",
    "scan",
    "ScanFunction",
    "remat",
    "RematFunction",
    "eval_shape",
    "Carry",
    "StateAxes",
]
