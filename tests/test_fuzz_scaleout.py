"""A short run of the scale-out fuzz (``tests/fuzz_scaleout.py``) on 8 simulated devices.

Random models with nested, tied and shared submodules under hostile keys and random
partition annotations on a 2x4 mesh: ``sg.shard``, ``sg.jit`` steps (mutated between
calls), ``vmap``, ``scan``, ``remat`` and ``eval_shape`` against an unsharded run of the
reference walker, failed calls leaving the model untouched, invalid annotations refused
with the path. JAX fixes its device count at start-up, so the fuzz runs in a process of
its own (as ``tests/test_mesh.py`` runs the mesh cases).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def test_scaleout_fuzz_agrees_with_the_unsharded_reference_and_is_served_by_generated_code() -> None:
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
    env["JAX_PLATFORMS"] = "cpu"
    root = str(HERE.parent)  # the child imports the same specgraph as this process
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    cmd = [sys.executable, str(HERE / "fuzz_scaleout.py"), "--cases", "1", "--steps", "3", "--seed", "0",
           "--json"]
    proc = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"the scale-out fuzz failed:\n{proc.stdout[-5000:]}{proc.stderr[-10000:]}"
    counts = json.loads(proc.stdout.strip().splitlines()[-1])
    assert counts["cases"] == 1 and counts["jit_steps_checked"] == 3
    for check in ("shard_checked", "vmap_init_checked", "vmap_run_checked", "scan_checked", "remat_checked",
                  "eval_shape_checked", "error_jit_raises", "error_vmap_writes_broadcast",
                  "error_scan_writes_broadcast", "shared_axes_error"):
        assert counts.get(check, 0) >= 1, (check, counts)
    assert any(k.startswith("error_annotation_") for k in counts), counts
    # The run proves something only if generated code served the subject's calls (and only
    # the reference walker served the reference's).
    assert counts["subject_generated"] * 4 >= counts["subject_generic"], counts
    assert counts["reference_generated"] == 0 and counts["reference_generic"] > 0, counts
