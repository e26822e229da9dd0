"""The error tree in errors.py's docstring names every error class, with its HTTP status."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re

import swarmbinder_tui

import swarmbinder
from swarmbinder import errors
from swarmbinder.errors import BuildOnlyRefused, SwarmbinderError
from swarmbinder.hostsetup import SetupError
from swarmbinder.sshkeys import AuthorizedKeysError


def defined_errors(package: object) -> dict[str, type[BaseException]]:
    """Every exception class defined in ``package``'s modules, by class name."""
    found: dict[str, type[BaseException]] = {}
    path = package.__path__  # type: ignore[attr-defined]
    for info in pkgutil.walk_packages(path, package.__name__ + "."):  # type: ignore[attr-defined]
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == module.__name__
            ):
                found[name] = value
    return found


def documented() -> dict[str, int | None]:
    """Class name -> the status the tree gives it (None for the console's errors)."""
    doc = errors.__doc__ or ""
    tree = {match[1]: int(match[2]) for match in re.finditer(r"(?:\w+\.)*(\w+) \((\d{3})\)", doc)}
    for name in re.findall(r"``(?:\w+\.)*(\w+)``", doc):
        tree.setdefault(name, None)
    return tree


def test_every_error_class_is_in_the_tree_with_its_status() -> None:
    tree = documented()
    for name, cls in defined_errors(swarmbinder).items():
        assert name in tree, f"{cls.__module__}.{name} is missing from errors.py's tree"
        assert issubclass(cls, SwarmbinderError), f"{name} is outside the tree"
        assert tree[name] == cls.status_code, f"{name}: the tree says {tree[name]}"
    for name in defined_errors(swarmbinder_tui):
        assert name in tree, f"the console's {name} is missing from errors.py's docstring"


def test_errors_of_other_kinds_keep_their_stdlib_base() -> None:
    assert issubclass(AuthorizedKeysError, ValueError)
    assert str(SetupError("docker is not installed")) == "docker is not installed"


def test_a_refused_build_only_carries_its_status() -> None:
    refused = BuildOnlyRefused()
    assert refused.status_code == 400
    assert "enable_api_only_mode" in refused.user_message
