"""Every source ``codegen.build`` generates while the test suite runs, for a before/after diff.

Usage::

    python tests/record_sources.py OUT.txt [pytest args ...]
    diff BEFORE.txt AFTER.txt

Runs pytest in this process (no xdist, a fixed hypothesis seed, so the same structures are
built in the same order) with ``codegen.build`` wrapped: each build's kind, function name
and a digest of its full source (its outlined units' shown sources first, as ``Built.source``
has them) go to ``OUT.txt``, one line per build, in build order, followed by the count of
builds that raised (``Declined`` included). A change that must leave the generated code as
it was (planning made cheaper, a result cached) gives the same file before and after. The
default pytest args are the whole suite; pass test paths to narrow it.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


class _Recorder:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.failed = 0

    def pytest_configure(self, config: Any) -> None:
        from specgraph.codegen import pipeline

        inner = pipeline.build

        def build(kind: str, graphdef: Any, **kw: Any) -> Any:
            try:
                built = inner(kind, graphdef, **kw)
            except Exception:
                self.failed += 1
                raise
            digest = hashlib.sha256(built.source.encode()).hexdigest()[:16]
            self.lines.append(f"{kind} {built.filename.split('#')[0]} {digest}")
            return built

        pipeline.build = build
        import specgraph.codegen as codegen

        codegen.build = build  # (the dispatcher and explain call it through the package)


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    out, args = Path(argv[0]), argv[1:] or [str(ROOT / "tests")]
    rec = _Recorder()
    rc = pytest.main(["-p", "no:xdist", "-p", "no:randomly", "--hypothesis-seed=0", "-q", *args],
                     plugins=[rec])
    out.write_text("\n".join(rec.lines) + f"\nbuilds raised: {rec.failed}\n")
    print(f"{len(rec.lines)} builds recorded in {out} (pytest exit {rc})")
    return int(rc)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
