"""``python -m specgraph``: the benchmark commands list their options and write no
tracked file unless told to (a run must leave the checkout clean)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from specgraph.__main__ import BENCHMARKS, main

ROOT = Path(__file__).resolve().parent.parent

# The smallest real run of each benchmark (everything it does, on tiny inputs).
TINY = {
    "bench": ["--quick", "--shapes", "tiny", "--systems", "specgraph", "--ops", "flatten", "--repeats", "1",
              "--target-ms", "0.5"],
    "scaling": ["--quick", "--sweeps", "mlp", "--systems", "specgraph", "--max-n", "3", "--repeats", "1",
                "--target-ms", "0.5"],
    "jit": ["--quick", "--depth", "1", "--batch", "2", "--repeats", "1"],
}
# issue 12's bar table, its one row of size 32 (the others say why they did not run)
BAR = ["scaling", "--bar", "--quick", "--max-n", "32", "--repeats", "1", "--target-ms", "0.5"]


@pytest.mark.parametrize("command", sorted(BENCHMARKS))
def test_benchmark_help_lists_its_options(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: python -m specgraph {command}")
    for option in ("--quick", "--repeats", "--out DIR", "--save"):
        assert option in out


def _snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def _run(copy: Path, calls: list[list[str]]) -> None:
    """Run ``main(argv)`` for each argv in one child process, inside the copy."""
    script = "from specgraph.__main__ import main\n" + "".join(
        f"assert main({argv!r}) == 0\n" for argv in calls
    )
    env = {**os.environ, "PYTHONPATH": str(copy), "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=copy, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_benchmarks_write_files_only_when_told(tmp_path: Path) -> None:
    # A copy of the package and the benchmarks: the child runs that copy (its
    # benchmarks/results/ is the one at risk), never this checkout.
    copy = tmp_path / "checkout"
    for part in ("specgraph", "benchmarks"):
        shutil.copytree(ROOT / part, copy / part, ignore=shutil.ignore_patterns("__pycache__"))
    before = _snapshot(copy)
    assert any(name.startswith("benchmarks/results/") for name in before)

    _run(copy, [[command, *TINY[command]] for command in sorted(BENCHMARKS)] + [BAR])
    assert _snapshot(copy) == before, "a benchmark run without --out/--save wrote into the checkout"

    out = tmp_path / "out"
    _run(
        copy,
        [[command, *TINY[command], "--out", str(out)] for command in sorted(BENCHMARKS)]
        + [[*BAR, "--out", str(out)], ["bench", *TINY["bench"], "--save"]],
    )
    assert _snapshot(copy) != before  # --save writes into benchmarks/results/
    assert _snapshot(copy)["benchmarks/results/latest.md"] != before["benchmarks/results/latest.md"]
    written = {p.name for p in out.iterdir()}
    assert {"latest.md", "scaling.md", "jit-latest.md", "scaling-bar.md"} <= written
    assert sum(name.endswith(".json") for name in written) == 3  # bench's, scaling's and the bar's
    bar = (out / "scaling-bar.md").read_text()
    assert "| flatten / tree_flatten, MLP-32 |" in bar and "not run (--max-n)" in bar
