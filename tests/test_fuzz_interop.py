"""A short run of the interop fuzz (``tests/fuzz_interop.py``): random Flax NNX models,
BrainState models and callback-registered node types, mutated between calls (Variables
replaced, metadata set, submodules added and removed, list items swapped, dict keys
retyped int / str / bool / float / str subclass / a class claiming to equal int, statics
None / True / ..., registry-epoch bumps), every call compared with the reference walker
and the peer's own functions, training steps under sg.jit against nnx.jit."""

from __future__ import annotations

import pytest

pytest.importorskip("flax.nnx")
pytest.importorskip("brainstate")
pytest.importorskip("optax")

from fuzz_interop import fuzz


def test_interop_fuzz_agrees_with_the_reference_and_the_peers_and_is_served_by_generated_code() -> None:
    counts = fuzz(cases=3, seed=0)
    for family in ("nnx", "bst", "cb"):
        assert counts[f"{family}_steps_checked"] >= 15, counts
    assert counts["nnx_flatten_agrees"] > 0 and counts["bst_flatten_agrees"] > 0
    assert counts["jit_steps_agree"] > 0 and counts["value_and_grad_agrees"] > 0
    assert counts["failed_grads_untouched"] > 0 and counts["failed_updates_untouched"] > 0
    assert counts["epoch_bumps_same_graphdef"] > 0
    # The run proves something only if generated code served a good share of the calls.
    assert counts["flatten_hits"] * 3 >= counts["flatten_calls"], counts
    assert counts["unflatten_hits"] * 2 >= counts["unflatten_calls"], counts
    assert counts["update_hits"] * 2 >= counts["update_calls"], counts
    assert counts["split_hits"] * 2 >= counts["split_calls"], counts
    assert counts["jit_hits"] > 0, counts


def test_interop_fuzz_with_every_repeated_substructure_outlined() -> None:
    """The same fuzz with ``outline_min=2``: repeated NNX / BrainState substructures are
    served by outlined code (one function per shape, loops), flatten and unflatten, and agree
    as well."""
    counts = fuzz(cases=2, seed=1, outline_min=2)
    assert counts["nnx_steps_checked"] >= 10 and counts["bst_steps_checked"] >= 10, counts
    assert counts["flatten_hits"] * 3 >= counts["flatten_calls"], counts
    assert counts["flatten_outlined_hits"] > 0, counts
    assert counts["unflatten_outlined_hits"] > 0, counts  # builders and loops, contexts passed in


def test_interop_fuzz_of_long_layer_lists_is_served_by_the_outlined_unflatten() -> None:
    """Lists of one NNX block (per-layer metadata values and statics, a second Variable of a
    per-case type, nested lists), mutated one layer at a time (metadata, types, ties, shared
    blocks, swaps): with ``outline_min=2`` the unflatten is outlined builders and loops, and
    builds what the reference builds (every object's attributes, the GraphDef's very
    metadata objects, one TraceState per call), for a twin GraphDef too."""
    counts = fuzz(cases=2, seed=3, families="layers", outline_min=2)
    assert counts["layers_steps_checked"] >= 10, counts
    assert counts["unflatten_outlined_hits"] >= counts["layers_steps_checked"] // 2, counts
    assert counts["layers_twin_graphdef_served"] > 0, counts
