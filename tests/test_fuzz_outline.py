"""A short run of the outlined-code fuzz (``tests/fuzz_outline.py``): random graphs of
repeated shapes (attributes, lists, tuples, dicts, lists of lists, chains of nested
links, chains of nested callback layers) with small ``outline_min``, mutated one
occurrence at a time, and pairs of structures sharing shapes; every call compared with
the reference walker."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from fuzz_outline import fuzz

HERE = Path(__file__).resolve().parent


def test_outline_fuzz_agrees_with_the_reference_and_is_served_by_outlined_code() -> None:
    counts = fuzz(cases=2, seed=0, steps=3)
    assert counts["steps_checked"] >= 8 and counts["pairs_checked"] >= 15, counts
    assert counts["leaked_objects"] == 0
    assert counts["error_misses"] == 0  # no exception inside generated code (no raising static here)
    assert counts["failed_updates_untouched"] >= 20
    assert counts["units_reused"] > 0  # the shared-unit table was exercised
    # The run proves something only if outlined generated code (an outlined function, a
    # loop over one shape, a chain loop) served a good share of the calls.
    assert counts["foreign_parts_refused"] + counts["foreign_parts_written"] >= 10, counts
    for op in ("flatten", "unflatten", "update", "collect", "unflatten_twin", "merge"):
        assert counts[op + "_outlined"] * 4 >= counts[op + "_calls"], (op, counts)
    assert counts["update_part_outlined"] > 0 and counts["flatten_twin_outlined"] > 0, counts
    # chains of nested callback layers: served by a loop calling their flatten (its calls
    # checked against the reference's, in order)
    assert counts["flatten_cbchain_outlined"] > 0 and counts["update_cbchain_outlined"] > 0, counts


def test_a_seed_replays_the_same_callback_chain_in_every_process() -> None:
    """The callback chain of a case is drawn from a generator seeded from the case's (its
    hash): the same in every process, or the tallies above and a failing seed's replay
    would depend on the run (the hash of a state holding ``None`` was its address)."""
    code = ("import random, fuzz_outline as f; s = f._side(random.Random(5)); "
            "print([s.random() for _ in range(3)])")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), str(HERE)])}
    runs = {subprocess.run([sys.executable, "-c", code], cwd=HERE, env=env, capture_output=True,
                           text=True, check=True).stdout for _ in range(2)}
    assert len(runs) == 1, runs
