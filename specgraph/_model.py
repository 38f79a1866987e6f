"""The object model: graph nodes and the state boxes they hold."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from types import MappingProxyType
from typing import Any, ClassVar, Generic, TypeVar

__all__ = ["Node", "State", "Param"]

T = TypeVar("T")


class Node:
    """Base class for mutable graph nodes.

    A node's children are its instance attributes (``vars(node)``) sorted by
    name, minus the names listed in ``graph_invisible_attrs``. Subclassing is
    all it takes to be recognised: the registry classifies every subclass of
    ``Node`` as a graph node.
    """

    graph_invisible_attrs: ClassVar[tuple[str, ...]] = ()
    #: How many lines ``repr`` prints at most (``None``: no limit); a model of
    #: thousands of layers stays readable in a notebook.
    repr_max_lines: ClassVar[int | None] = 1000

    def __repr__(self) -> str:
        """The tree of children: states by type, dtype and shape, shared objects and
        cycles as ``<Type: same as path>`` (see ``specgraph._repr``)."""
        from ._repr import tree_repr  # the registry imports this module

        return tree_repr(self, type(self).repr_max_lines)


class State(Generic[T]):
    """A mutable box holding one dynamic value (an array or a pytree of arrays).

    States are identity objects: the same ``State`` reachable by two paths is one
    state, flattened once. Keyword arguments given at construction are the
    state's metadata; they must be hashable because they go into the
    ``GraphDef``, and they are fixed for the life of the state.
    """

    # Slots, not a per-instance dict: a State is created per state on every
    # unflatten, and a slotted box is about twice as cheap to build and to read.
    # Subclasses without their own ``__slots__`` get a ``__dict__`` as usual.
    __slots__ = ("__weakref__", "_metadata", "value")

    value: T
    _metadata: tuple[tuple[str, Hashable], ...]

    def __init__(self, value: T, **metadata: Hashable) -> None:
        self.value = value
        self._metadata = tuple(sorted(metadata.items())) if metadata else ()

    @property
    def metadata(self) -> Mapping[str, Hashable]:
        """A read-only view of the metadata given at construction."""
        return MappingProxyType(dict(self._metadata))

    def __repr__(self) -> str:
        meta = "".join(f", {k}={v!r}" for k, v in self._metadata)
        return f"{type(self).__name__}({short_repr(self.value)}{meta})"


class Param(State[T]):
    """A trainable parameter."""

    __slots__ = ()


def _new_state(cls: type[State[Any]], value: Any, metadata: tuple) -> State[Any]:
    """Create a state of ``cls`` without calling a user ``__init__``."""
    st = cls.__new__(cls)
    st._metadata = metadata
    st.value = value
    return st


def short_repr(value: Any) -> str:
    """``float32[64, 64]`` for an array, else a repr cut to 60 characters."""
    shape = getattr(value, "shape", None)
    dtype = getattr(value, "dtype", None)
    if shape is not None and dtype is not None:
        return f"{dtype}{list(shape)}"
    r = repr(value)
    return r if len(r) < 60 else r[:57] + "..."
