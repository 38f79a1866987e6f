"""JAX transformations over graph nodes: ``jit``, ``grad``, ``value_and_grad``."""

from .autodiff import grad, value_and_grad
from .jit import JitFunction, jit

__all__ = ["jit", "JitFunction", "grad", "value_and_grad"]
