"""Runs ``tests/mesh_cases.py`` on 8 simulated CPU devices, in a process of its own.

JAX fixes the number of host devices when it starts, and this pytest process has
already started it with one; so the mesh cases run in a child ``pytest`` with
``XLA_FLAGS=--xla_force_host_platform_device_count=8``. Its report is shown on failure.

Each case runs twice (generic and specialized path); both trace their own programs, which
XLA would compile twice. The child keeps JAX's compilation cache in a fresh temporary
directory, so the second identical program is loaded instead of compiled: half the
compile time, nothing shared with other runs.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def test_mesh_cases_on_8_devices(tmp_path: Path) -> None:
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path / "jax-cache")
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    # The child imports the same specgraph as this process (a worktree's, when PYTHONPATH says so).
    root = str(HERE.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    cmd = [sys.executable, "-m", "pytest", str(HERE / "mesh_cases.py"), "-p", "no:xdist",
           "-p", "no:cacheprovider", "-rA"]
    proc = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, timeout=900)
    report = proc.stdout[-20000:] + proc.stderr[-5000:]
    assert proc.returncode == 0, f"mesh cases failed (exit {proc.returncode}):\n{report}"
    # every case ran: none skipped for want of devices (the NNX cases need flax)
    skipped = [line for line in proc.stdout.splitlines() if line.startswith("SKIPPED")]
    assert all("could not import 'flax" in line for line in skipped), report
    nnx_cases = 4 if importlib.util.find_spec("flax") is not None else 0
    assert proc.stdout.count("\nPASSED ") >= 22 + nnx_cases, report
