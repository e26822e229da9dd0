"""The wheel the stack's image installs holds every package of the source tree.

pyproject.toml lists the packages by name; a new subpackage missing from that list works in an
editable install (and in every other test) but not in the image.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_subpackage_is_listed_in_pyproject() -> None:
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "swarmbinder").rglob("__init__.py")
    }
    assert found - listed == set()
