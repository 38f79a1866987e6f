"""The README's Python examples run as written and print what the README shows."""

from __future__ import annotations

import contextlib
import io
import itertools
import re
import tomllib
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


# -- the README's figures and layout agree with themselves and with the checkout -----------

NUMBER = r"\d+(?: \d{3})*(?:\.\d+)?"  # "1 073", "7.04"


def _section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else len(text)]


def _num(s: str) -> float:
    return float(s.replace(" ", ""))


def _half_unit(s: str) -> float:
    """Half a unit in the last printed digit: how far a rounded figure may be off."""
    s = s.replace(" ", "")
    return 0.5 * 10.0 ** -(len(s.partition(".")[2]))


def _tables(text: str) -> list[list[list[str]]]:
    """Markdown tables of ``text`` as rows of cells, the separator row left out."""
    tables: list[list[list[str]]] = []
    previous = False
    for line in text.splitlines():
        row = line.strip()
        if row.startswith("|") and row.endswith("|"):
            cells = [c.strip() for c in row.strip("|").split("|")]
            if not previous:
                tables.append([])
            if not all(set(c) <= set("-: ") for c in cells):
                tables[-1].append(cells)
            previous = True
        else:
            previous = False
    return tables


def test_every_performance_ratio_is_the_other_time_over_specgraphs() -> None:
    """One direction everywhere: ``T xR`` with R = T / specgraph's time (item 17)."""
    checked = 0
    for table in _tables(_section("Performance")):
        assert table[0][1].startswith("specgraph"), table[0]
        for row in table[1:]:
            base = re.fullmatch(rf"({NUMBER})( µs)?", row[1])
            assert base, row
            for cell in row[2:]:
                assert not re.search(r"\dx\b|x\)", cell), f"a ratio not written xN: {cell}"
                m = re.fullmatch(rf"({NUMBER})(?: µs)? x({NUMBER})", cell)
                if m is None:
                    continue
                t, ref, r = m[1], base[1], m[2]
                low = (_num(t) - _half_unit(t)) / (_num(ref) + _half_unit(ref))
                high = (_num(t) + _half_unit(t)) / (_num(ref) - _half_unit(ref))
                assert low - _half_unit(r) <= _num(r) <= high + _half_unit(r), (row[0], cell, row[1])
                checked += 1
    assert checked >= 10


def test_the_intro_figures_are_the_performance_runs() -> None:
    """The intro's table quotes the Performance table's run (item 17: they came from
    different runs, 1.5 to 2.5 times apart)."""
    text = README.read_text()
    intro = _tables(text[: text.index("\n## ")])[0]
    perf = next(t for t in _tables(_section("Performance")) if t[0][1] == "specgraph")
    columns = {"BrainState": "BrainState", "Flax NNX": "Flax NNX", "jax.tree_util": "jax.tree_util",
               "specgraph": "specgraph"}
    rows = {row[0]: row for row in perf}
    checked = 0
    for label, cell in intro[1:]:
        system = next(name for name in columns if label.startswith(name) or label.startswith(f"`{name}"))
        col = next(i for i, head in enumerate(perf[0]) if head.startswith(columns[system]))
        quoted = re.findall(NUMBER, cell.replace(" µs", ""))
        for op, figure in zip(("flatten", "unflatten"), quoted, strict=True):
            measured = re.match(NUMBER, rows[op][col])
            assert measured, rows[op]
            tolerance = _half_unit(figure.strip()) + _half_unit(measured[0])
            assert abs(_num(figure) - _num(measured[0])) <= tolerance, (label, op, figure, measured[0])
            checked += 1
    assert checked == 8


def test_layout_names_every_part_of_the_checkout() -> None:
    """Every module and package of specgraph, every shipped top-level directory and every
    example is in the Layout section (item 17: transforms/, examples/ and docs/ were not)."""
    layout = _section("Layout")
    root = README.parent
    with open(root / "pyproject.toml", "rb") as f:
        shipped = tomllib.load(f)["tool"]["hatch"]["build"]["targets"]["sdist"]["include"]
    parts = [f"{name}/" for name in shipped if (root / name).is_dir() and not name.startswith(".")]
    package = root / "specgraph"
    parts += [f"specgraph/{p.name}/" for p in package.iterdir() if p.is_dir() and p.name != "__pycache__"]
    parts += [f"specgraph/{p.name}" for p in package.glob("*.py") if p.name != "__init__.py"]
    parts += [p.name for p in (root / "examples").glob("*.py")]
    missing = [p for p in parts if p not in layout]
    assert not missing, f"the README's Layout does not name {missing}"
