"""Runs ``tests/mesh_cases.py`` on 8 simulated CPU devices, in a process of its own.

JAX fixes the number of host devices when it starts, and this pytest process has
already started it with one; so the mesh cases run in a child ``pytest`` with
``XLA_FLAGS=--xla_force_host_platform_device_count=8``. Its report is shown on failure.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def test_mesh_cases_on_8_devices() -> None:
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
    env["JAX_PLATFORMS"] = "cpu"
    # The child imports the same specgraph as this process (a worktree's, when PYTHONPATH says so).
    root = str(HERE.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    cmd = [sys.executable, "-m", "pytest", str(HERE / "mesh_cases.py"), "-p", "no:xdist",
           "-p", "no:cacheprovider", "-rA"]
    proc = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, timeout=900)
    report = proc.stdout[-20000:] + proc.stderr[-5000:]
    assert proc.returncode == 0, f"mesh cases failed (exit {proc.returncode}):\n{report}"
    # every case ran (none skipped for want of devices)
    assert proc.stdout.count("\nPASSED ") >= 18 and "SKIPPED" not in proc.stdout, report
