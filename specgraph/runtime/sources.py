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


def register(filename: str, source: str) -> None:
    """Make ``source`` readable under ``filename`` (kept until :func:`forget`)."""
    lines = source.splitlines(keepends=True)
    # A None mtime marks the entry as not backed by a file: checkcache keeps it.
    linecache.cache[filename] = (len(source), None, lines, filename)


def forget(filename: str) -> None:
    linecache.cache.pop(filename, None)
