"""The README's Python examples run as written and print what the README shows."""

from __future__ import annotations

import contextlib
import io
import itertools
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.MULTILINE | re.DOTALL)
FLOAT = re.compile(r"\d+\.\d+")


def _blocks() -> list[tuple[str, str, int, str]]:
    """``(language, text, first line, prose up to the next block)`` of each fenced block."""
    text = README.read_text()
    found = list(FENCE.finditer(text))
    out = []
    for i, m in enumerate(found):
        prose_end = found[i + 1].start() if i + 1 < len(found) else len(text)
        out.append((m[1], m[2], text.count("\n", 0, m.start()) + 2, text[m.end() : prose_end].strip()))
    return out


BLOCKS = _blocks()
PYTHON = [i for i, block in enumerate(BLOCKS) if block[0] == "python"]


def test_the_first_example_shows_its_output_and_trains() -> None:
    # Its output is shown right below it (checked by the test below), with losses.
    first = PYTHON[0]
    assert BLOCKS[first][3] == "prints"
    assert " loss " in BLOCKS[first + 1][1]


@pytest.mark.parametrize("index", PYTHON, ids=lambda i: f"README.md:{BLOCKS[i][2]}")
def test_readme_python_block(index: int) -> None:
    _, code, line, prose = BLOCKS[index]
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        exec(compile("\n" * (line - 1) + code, str(README), "exec"), {"__name__": "__readme__"})
    printed = stdout.getvalue().splitlines()
    if prose != "prints":
        return
    lang, shown, _, _ = BLOCKS[index + 1]
    assert lang == "text"
    shown_lines = shown.splitlines()
    # Same lines, numbers aside (float digits differ across JAX versions and machines).
    assert [FLOAT.sub("#", ln) for ln in printed] == [FLOAT.sub("#", ln) for ln in shown_lines]
    losses = [float(ln.rsplit(" ", 1)[1]) for ln in printed if " loss " in ln]
    if losses:  # the training example: the loss visibly goes down
        assert len(losses) >= 3
        assert all(b < a for a, b in itertools.pairwise(losses)), losses
