"""Project files the user fixed: CITATION.cff valid CFF 1.2.0, README's two commands, CI script."""

from __future__ import annotations

import re
import tomllib

from ruamel.yaml import YAML

from tests.helpers import ROOT

# Required keys of the Citation File Format 1.2.0 schema, and the ones this project promises.
CFF_REQUIRED = {"cff-version", "message", "title", "authors"}


def test_citation_cff_is_valid_1_2_0():
    data = YAML(typ="safe").load((ROOT / "CITATION.cff").read_text())
    assert CFF_REQUIRED <= set(data)
    assert data["cff-version"] == "1.2.0"
    assert all("name" in a or "family-names" in a for a in data["authors"])
    assert {"version", "license", "repository-code"} <= set(data)
    assert "preferred-citation" in data or "abstract" in data
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    version = re.search(r'"(.+)"', (ROOT / "matmeta" / "_version.py").read_text()).group(1)
    assert str(data["version"]) == version
    assert pyproject["project"]["license"] == data["license"]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text().splitlines()[:40]
    ci = (ROOT / ".ci" / "run").read_text()
    test_cmd = next(line.strip() for line in ci.splitlines() if "pytest" in line)
    assert any(test_cmd == line.strip() for line in readme), test_cmd
