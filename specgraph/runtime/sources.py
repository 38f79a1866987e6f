"""Register generated sources with ``linecache`` so tracebacks and ``inspect`` see them."""

from __future__ import annotations

import itertools
import linecache
import threading

_counter = itertools.count()
_lock = threading.Lock()


def unique_filename(kind: str, type_name: str) -> str:
    """A filename no other generated function uses (``<specgraph flatten MLP #3>``)."""
    with _lock:
        n = next(_counter)
    safe = "".join(c if (c.isascii() and c.isalnum()) or c == "_" else "_" for c in type_name)[:40]
    return f"<specgraph {kind} {safe} #{n}>"


_registered: set[str] = set()


def register(filename: str, source: str) -> None:
    """Make ``source`` readable under ``filename`` (kept until :func:`forget`)."""
    lines = source.splitlines(keepends=True)
    # A None mtime marks the entry as not backed by a file: checkcache keeps it.
    linecache.cache[filename] = (len(source), None, lines, filename)
    with _lock:
        _registered.add(filename)


def forget(*functions: object) -> None:
    """Drop the sources of generated functions that are no longer cached."""
    for fn in functions:
        code = getattr(fn, "__code__", None)
        if code is not None and code.co_filename in _registered:
            linecache.cache.pop(code.co_filename, None)
            with _lock:
                _registered.discard(code.co_filename)


def forget_all() -> None:
    """Drop every generated source (``clear_cache``)."""
    with _lock:
        names = list(_registered)
        _registered.clear()
    for name in names:
        linecache.cache.pop(name, None)
