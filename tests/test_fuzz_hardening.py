"""A short run of the hardening fuzz (``tests/fuzz_hardening.py``): random models with dict
subclasses as ``__dict__``, equal-but-distinguishable keys, metadata, statics and aux data,
keys repeated by a custom flatten and statics reaching a node, mutated between calls,
every public call compared with the reference walker."""

from __future__ import annotations

from fuzz_hardening import fuzz


def test_hardening_fuzz_agrees_with_the_reference_and_is_served_by_generated_code() -> None:
    counts = fuzz(cases=24, seed=0)
    assert counts["steps_checked"] >= 100 and counts["flatten_errors_alike"] > 0
    assert counts["leaked_objects"] == 0
    # The run proves something only if generated code served a good share of the calls.
    assert counts["flatten_hits"] * 8 >= counts["flatten_calls"], counts
    assert counts["unflatten_hits"] * 3 >= counts["unflatten_calls"], counts
    assert counts["update_hits"] * 8 >= counts["update_calls"], counts
