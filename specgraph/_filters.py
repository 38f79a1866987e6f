"""Filters select states: by State type, everything, a predicate, or a combination.

Every public filter is turned into one internal predicate
``pred(path, value, state_type) -> bool``; ``state_type`` is ``None`` for a bare
array leaf. User predicates receive ``(path, value)`` where ``value`` is the
state's value (or the array leaf).
"""

from __future__ import annotations

import typing as _typing
from collections.abc import Callable, Hashable
from types import EllipsisType
from typing import Any as _Any
from typing import TypeAlias, cast

from . import _registry
from ._model import State

__all__ = ["Any", "All", "Not", "Filter", "to_predicate", "to_predicates"]

Predicate = Callable[[tuple[Hashable, ...], _Any, "type | None"], bool]


class _Combinator:
    __slots__ = ("_preds", "filters")

    def __init__(self, *filters: Filter) -> None:
        self.filters = filters
        self._preds = tuple(to_predicate(f) for f in filters)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(map(repr, self.filters))})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.filters == self.filters

    def __hash__(self) -> int:
        return hash((type(self), self.filters))


class Any(_Combinator):
    """Matches what any of its filters matches."""

    __slots__ = ()

    def __call__(self, path: tuple, value: _Any, stype: type | None) -> bool:
        return any(p(path, value, stype) for p in self._preds)


class All(_Combinator):
    """Matches what all of its filters match."""

    __slots__ = ()

    def __call__(self, path: tuple, value: _Any, stype: type | None) -> bool:
        return all(p(path, value, stype) for p in self._preds)


class Not(_Combinator):
    """Matches what its filter does not."""

    __slots__ = ()

    def __init__(self, filter: Filter) -> None:  # noqa: A002 - mirrors the anchors' spelling
        super().__init__(filter)

    def __call__(self, path: tuple, value: _Any, stype: type | None) -> bool:
        return not self._preds[0](path, value, stype)


Filter: TypeAlias = "type[State] | EllipsisType | bool | Callable[[tuple, _Any], bool] | _Combinator"


def _everything(path: tuple, value: _Any, stype: type | None) -> bool:
    return True


def _nothing(path: tuple, value: _Any, stype: type | None) -> bool:
    return False


def to_predicate(f: Filter) -> Predicate:
    """Turn a public filter into the internal three-argument predicate."""
    if f is ... or f is True:
        return _everything
    if f is False:
        return _nothing
    if isinstance(f, _Combinator):
        return cast(Predicate, f)  # each concrete combinator defines __call__
    if isinstance(f, type):
        if issubclass(f, State) or _registry.is_state_type(f):
            cls = f

            def by_type(path: tuple, value: _Any, stype: type | None) -> bool:
                return stype is not None and issubclass(stype, cls)

            return by_type
        raise TypeError(
            f"a type filter must be a State subclass (or a registered state class such as "
            f"nnx.Param), got {f.__qualname__}"
        )
    origin = _typing.get_origin(f)
    if isinstance(origin, type):  # Param[int]: an annotation, callable, but not a predicate
        raise TypeError(
            f"the filter {f!r} is a subscripted type (a type annotation): filters match by "
            f"class, so use {origin.__qualname__} itself"
        )
    if callable(f):
        user = f

        def by_predicate(path: tuple, value: _Any, stype: type | None) -> bool:
            return bool(user(path, value))

        return by_predicate
    raise TypeError(
        f"unsupported filter {f!r}: use a State subclass, ..., True, a predicate "
        "(path, value) -> bool, or Any/All/Not"
    )


def _catches_all(f: object) -> bool:
    return f is ... or f is True


def to_predicates(filters: tuple[Filter, ...]) -> list[Predicate]:
    """The predicates of a filter list, checked the way NNX and BrainState check it.

    Filter lists partition (each value goes to the first filter matching it), so a
    filter after ``...`` or ``True`` could never match anything: that is an error.
    Several catch-alls in a row at the end are allowed, as in both anchors.
    """
    for i, f in enumerate(filters):
        if _catches_all(f):
            for later in filters[i + 1 :]:
                if not _catches_all(later):
                    raise ValueError(
                        f"{f!r} matches everything, so it can only come last: the filter "
                        f"{later!r} after it (filters {filters!r}) could never match. Move "
                        f"{f!r} to the end"
                    )
            break
    return [to_predicate(f) for f in filters]
