"""What a type checker sees of specgraph: real types, not ``Any``.

mypy checks a small user file. By default it finds this checkout through
``MYPYPATH``; under ``SPECGRAPH_INSTALL_CHECK=1`` (set by ``.ci/run``, right after its
``pip install -e``) it gets no path at all and must find specgraph through the
installed package, as a user's mypy does after the README's ``pip install -e .``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

USER_FILE = '''
import specgraph as sg


class Linear(sg.Node):
    def __init__(self, scale: float) -> None:
        self.w = sg.Param(scale)


model = Linear(2.0)
graphdef, state = sg.flatten(model)
reveal_type(graphdef)  # graphdef
reveal_type(state)  # state
reveal_type(sg.unflatten(graphdef, state))  # unflatten
gd, params, rest = sg.split(model, sg.Param, ...)
reveal_type(sg.merge(gd, params, rest))  # merge
reveal_type(sg.clone(model))  # clone


@sg.jit
def step(m: Linear, k: int) -> float:
    return 0.0


@sg.jit(static_argnums=1)
def scaled(m: Linear, k: int) -> str:
    return ""


reveal_type(step(model, 3))  # jit result
reveal_type(scaled(model, 3))  # jit with options
step(model, "three")  # wrong argument
'''

# jax and the other dependencies are skipped: their types do not matter here, and
# analysing jax costs most of a cold mypy run.
MYPY_INI = """\
[mypy]
[mypy-jax.*,jaxlib.*,numpy.*,jinja2.*,markupsafe.*,ml_dtypes.*,opt_einsum.*,scipy.*]
follow_imports = skip
"""


def test_user_code_sees_real_types(tmp_path: Path) -> None:
    pytest.importorskip("mypy")
    (tmp_path / "user.py").write_text(textwrap.dedent(USER_FILE))
    (tmp_path / "mypy.ini").write_text(MYPY_INI)
    env = {k: v for k, v in os.environ.items() if k not in ("MYPYPATH", "PYTHONPATH")}
    if os.environ.get("SPECGRAPH_INSTALL_CHECK") != "1":
        env["MYPYPATH"] = str(ROOT)
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", "mypy.ini", "--cache-dir", str(tmp_path / "cache"),
         "--no-error-summary", "--hide-error-context", "user.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert "Cannot find implementation or library stub" not in out, out
    assert "specgraph" in out, out  # mypy resolved the package
    lines = textwrap.dedent(USER_FILE).splitlines()
    revealed = {}
    errors = {}
    for m in re.finditer(r"^user\.py:(\d+): (note|error): (.*)$", out, re.MULTILINE):
        label = lines[int(m[1]) - 1].partition("# ")[2]
        if m[2] == "note" and m[3].startswith("Revealed type is "):
            revealed[label] = m[3].removeprefix("Revealed type is ").strip('"')
        elif m[2] == "error":
            errors[label] = m[3]
    assert revealed == {
        "graphdef": "specgraph._ir.GraphDef[user.Linear]",
        "state": "specgraph._statemap.StateMap",
        "unflatten": "user.Linear",
        "merge": "user.Linear",
        "clone": "user.Linear",
        "jit result": "float",
        "jit with options": "str",
    }, out
    assert list(errors) == ["wrong argument"], out
    assert 'incompatible type "str"; expected "int"' in errors["wrong argument"]


def test_specgraph_itself_type_checks(tmp_path: Path) -> None:
    """``mypy specgraph`` from the checkout (the project's own settings) reports nothing:
    a new error fails here rather than piling up unseen."""
    pytest.importorskip("mypy")
    env = {k: v for k, v in os.environ.items() if k != "MYPYPATH"}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "cache"), "--hide-error-context",
         "specgraph"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "Success: no issues found" in out, out
