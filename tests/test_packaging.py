"""Packaging metadata (issue 10 item 18): the license a user's tools read is the one shipped.

``project.license`` is an SPDX expression (the table form is deprecated by PEP 639 and
setuptools/hatchling stop building it in 2027), the LICENSE file it names exists and is
the Apache-2.0 text, and no ``License ::`` classifier contradicts the expression (PEP 639
forbids both together). Under ``SPECGRAPH_INSTALL_CHECK=1`` (``.ci/run``, right after its
``pip install -e``) the installed distribution's own metadata is checked too.
"""

from __future__ import annotations

import importlib.metadata
import os
import tomllib
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _project() -> dict[str, Any]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]


def test_license_is_an_spdx_string_naming_a_shipped_apache_file() -> None:
    project = _project()
    assert project["license"] == "Apache-2.0", "project.license must be an SPDX string, not a table"
    files = project.get("license-files", [])
    assert files, "license-files must name the LICENSE file"
    for name in files:
        text = (ROOT / name).read_text()
        assert "Apache License" in text and "Version 2.0, January 2004" in text, name
    classifiers = project.get("classifiers", [])
    assert classifiers and any(c.startswith("Programming Language :: Python :: 3") for c in classifiers)
    assert not [c for c in classifiers if c.startswith("License ::")], "PEP 639: no License classifier"
    assert "Typing :: Typed" in classifiers and (ROOT / "specgraph" / "py.typed").exists()


@pytest.mark.skipif(os.environ.get("SPECGRAPH_INSTALL_CHECK") != "1",
                    reason="the installed metadata is this checkout's only after .ci/run's pip install -e")
def test_installed_metadata_carries_the_license_expression() -> None:
    meta = importlib.metadata.metadata("specgraph")
    assert meta["License-Expression"] == "Apache-2.0"
    assert "LICENSE" in (meta.get_all("License-File") or [])
    assert set(meta.get_all("Classifier") or []) == set(_project()["classifiers"])
