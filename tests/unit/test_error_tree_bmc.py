"""The BMC errors are part of the one tree that provisiond.errors draws (issue 11, defect 9).

The tree in the module docstring is read as data: each class a driver can raise must
be drawn under its real parent, and each cause has one code, written in one place.
"""

from __future__ import annotations

import re
from pathlib import Path

import provisiond
import provisiond.drivers.power.registry  # every driver, and any error class it defines
from provisiond import errors

ROOT = Path(provisiond.__file__).parent


def _drawn_tree() -> dict[str, str]:
    """Class name -> the name drawn as its parent in errors.py's docstring."""
    parents: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    for line in (errors.__doc__ or "").splitlines():
        match = re.match(r"^[\s│├└─]*([A-Z]\w+)(?:\s|$)", line)
        if not match:
            continue
        name, column = match.group(1), match.start(1)
        while stack and stack[-1][0] >= column:
            stack.pop()
        if stack:
            parents[name] = stack[-1][1]
        stack.append((column, name))
    return parents


def _subclasses(cls: type) -> list[type]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return found


def test_the_tree_reader_sees_the_known_shape() -> None:
    tree = _drawn_tree()
    assert tree["ConfigError"] == "ProvisiondError"
    assert tree["MachineLocked"] == "Conflict"


def test_every_bmc_error_is_drawn_under_its_parent_in_errors_py() -> None:
    tree = _drawn_tree()
    family = [errors.BmcError, *_subclasses(errors.BmcError)]
    assert len(family) >= 12
    for cls in family:
        assert cls.__module__ == "provisiond.errors", f"{cls.__name__} lives outside errors.py"
        assert tree.get(cls.__name__) == cls.__bases__[0].__name__, cls.__name__
        assert cls.status_code == 502, cls.__name__  # one status for "a BMC failed us"


def test_the_privilege_code_is_written_once() -> None:
    code = errors.BmcPrivilegeError.code
    writers = [
        path.relative_to(ROOT).as_posix()
        for path in ROOT.rglob("*.py")
        if f'"{code}"' in path.read_text()
    ]
    assert writers == ["errors.py"]
