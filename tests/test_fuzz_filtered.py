"""A short run of the filtered-operations fuzz (``tests/fuzz_filtered.py``): random twins
of one graph (shared states, cycles, hostile keys, abc and moving state classes), one
served by generated code and the caches, one by the reference with the specializer off;
split / states / StateMap.split / update / merge / clone / pop_states / walks compared on
each step, the twins and the classes mutated alike between steps."""

from __future__ import annotations

from fuzz_filtered import fuzz


def test_filtered_fuzz_agrees_with_the_reference_and_is_served_by_the_caches() -> None:
    counts = fuzz(cases=24, seed=0, steps=10)
    assert counts["steps_checked"] == 240
    # The run proves something only if generated code and the caches served most calls.
    for op in ("split", "states", "update", "merge", "clone", "pop_states", "nodes", "iter_leaf"):
        assert counts[op + "_served"] * 2 >= counts[op + "_calls"] > 0, (op, counts)
    assert counts["split_partition_reused"] > 0 and counts["slot_maps_made"] > 0, counts
    assert counts["update_calls"] > counts["update_errors_alike"] > 0 or counts["merge_errors_alike"] > 0
