"""pyproject.toml's license is an SPDX expression (PEP 639): the table form made setuptools
print "`project.license` as a TOML table is deprecated" three times during `make setup`."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def test_the_license_is_an_spdx_string_that_the_build_backend_understands():
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))
    assert project["project"]["license"] == "Apache-2.0"
    # Setuptools reads a license string as an SPDX expression from version 77 on.
    [setuptools] = [r for r in project["build-system"]["requires"] if r.startswith("setuptools")]
    found = re.fullmatch(r"setuptools>=(\d+)", setuptools)
    assert found and int(found[1]) >= 77, setuptools
