"""specgraph: graph-style JAX modules flattened at pytree speed.

``flatten`` turns a live graph of mutable nodes into a static ``GraphDef`` and a
``StateMap`` of values; ``unflatten`` / ``update`` go back. The reference walker
lives in :mod:`specgraph.generic`.
"""

from __future__ import annotations

from . import generic
from ._filters import All, Any, Not
from ._ir import GraphDef
from ._model import Node, Param, State
from ._operations import (
    clone,
    flatten,
    graphdef,
    iter_leaf,
    iter_node,
    merge,
    nodes,
    pop_states,
    split,
    states,
    unflatten,
    update,
)
from ._registry import register_graph_node_type
from ._statemap import StateMap
from .runtime.dispatch import cache_info, clear_cache, configure, specialization
from .runtime.explain import explain
from .sharding import named_shardings, partition_specs, shard
from .transforms import Carry, StateAxes, eval_shape, grad, jit, remat, scan, value_and_grad, vmap

__version__ = "0.1.0"

__all__ = [
    "All",
    "Any",
    "Carry",
    "GraphDef",
    "Node",
    "Not",
    "Param",
    "State",
    "StateAxes",
    "StateMap",
    "cache_info",
    "clear_cache",
    "configure",
    "explain",
    "specialization",
    "clone",
    "flatten",
    "generic",
    "grad",
    "jit",
    "value_and_grad",
    "vmap",
    "scan",
    "remat",
    "eval_shape",
    "graphdef",
    "iter_leaf",
    "iter_node",
    "merge",
    "named_shardings",
    "nodes",
    "partition_specs",
    "pop_states",
    "register_graph_node_type",
    "shard",
    "split",
    "states",
    "unflatten",
    "update",
]
