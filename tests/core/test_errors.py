"""The exception tree drawn in ``schemas.errors`` is the tree the code defines, and an
error's hint reaches the user on a line of its own."""

from __future__ import annotations

import importlib
import pkgutil
import re

import pytest

import schemas.errors
from schemas.errors import ConfigError, IstmoError

_BRANCH = re.compile(r"^(?P<indent>[ │]*)[├└]── (?P<name>[A-Z]\w+)\s")
_MODULE = re.compile(r"\((?P<module>[a-z_]+(?:\.[a-z_]+)+)\)$")


def _import_everything() -> None:
    """Every module of the three packages, so that every subclass is defined."""
    for package in ("schemas", "clients", "broker"):
        root = importlib.import_module(package)
        for info in pkgutil.walk_packages(root.__path__, f"{package}."):
            if ".migrations" not in info.name:  # Alembic scripts run only under Alembic
                importlib.import_module(info.name)


def _defined() -> set[tuple[str, str, str]]:
    """(module, name, parent's name) of every subclass of IstmoError in the project."""
    out: set[tuple[str, str, str]] = set()
    todo = [IstmoError]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            if sub.__module__.split(".")[0] in ("schemas", "clients", "broker"):
                out.add((sub.__module__, sub.__name__, cls.__name__))
            todo.append(sub)
    return out


def _drawn() -> set[tuple[str, str, str]]:
    """(module, name, parent's name) of every branch in the module docstring's drawing; a
    branch names its module in parentheses at the end of its line or of the next, unless
    it is ``schemas.errors``."""
    lines = (schemas.errors.__doc__ or "").splitlines()
    out: set[tuple[str, str, str]] = set()
    parents = ["IstmoError"]
    for i, line in enumerate(lines):
        m = _BRANCH.match(line.strip("\n")[4:])  # the drawing is indented by 4
        if m is None:
            continue
        depth = len(m["indent"]) // 4
        del parents[depth + 1 :]
        tail = lines[i + 1].strip() if i + 1 < len(lines) and "──" not in lines[i + 1] else ""
        found = _MODULE.search(line.rstrip()) or _MODULE.search(tail)
        module = found["module"] if found else "schemas.errors"
        out.add((module, m["name"], parents[depth]))
        parents.append(m["name"])
    return out


def test_the_docstring_draws_every_branch_of_the_tree() -> None:
    _import_everything()
    defined, drawn = _defined(), _drawn()
    assert defined - drawn == set(), "defined but not drawn (module, class, parent)"
    assert drawn - defined == set(), "drawn but not defined (module, class, parent)"


def test_a_hint_is_printed_on_a_line_of_its_own() -> None:
    err = ConfigError("no stack running for .istmo", hint="start `istmo up`")
    assert str(err) == "no stack running for .istmo"  # what the API answers and logs see
    assert err.diagnostics() == "no stack running for .istmo\n  hint: start `istmo up`"
    assert err.code == "config"
    plain = ConfigError("bad", code="bad_attribute")
    assert (plain.diagnostics(), plain.code, plain.hint) == ("bad", "bad_attribute", None)


@pytest.mark.parametrize("cls", [IstmoError, ConfigError])
def test_the_constructor_takes_code_and_hint_by_keyword_only(cls: type[IstmoError]) -> None:
    with pytest.raises(TypeError):
        cls("message", "code")  # type: ignore[misc]
