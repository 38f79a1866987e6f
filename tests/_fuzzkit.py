"""What the differential fuzzers (``tests/fuzz_*.py``) share: the tally and the command line."""

from __future__ import annotations

import argparse
import collections
from collections.abc import Callable, Sequence
from typing import Any


class Tally:
    """Named counts of one run (checks made, calls served by generated code, ...)."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()

    def add(self, key: str, n: int = 1) -> None:
        self.counts[key] += n


def main(doc: str, fuzz: Callable[..., collections.Counter[str]], argv: Sequence[str] | None, *,
         cases: int, steps: int, extra: Callable[[argparse.ArgumentParser], None] | None = None,
         extra_args: Callable[[argparse.Namespace], tuple[Any, ...]] = lambda a: (),
         show: Callable[[argparse.Namespace, collections.Counter[str]], bool] | None = None) -> int:
    """``fuzz(cases, seed, steps, *extra_args(args))``, its counts printed one per line.

    ``extra`` adds options; ``show`` prints the counts its own way (returns True) instead.
    """
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--cases", type=int, default=cases)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=steps)
    if extra is not None:
        extra(parser)
    args = parser.parse_args(argv)
    counts = fuzz(args.cases, args.seed, args.steps, *extra_args(args))
    if show is None or not show(args, counts):
        width = max(map(len, counts), default=0) + 2
        for k in sorted(counts):
            print(f"{k:{width}} {counts[k]}")
    return 0
