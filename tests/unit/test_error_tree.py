"""One error tree: every ProvisiondError in the package is drawn in errors.py's docstring,
under its real parent and with its real status, and one code means one status.

The walk imports every module of the package, so an error class defined anywhere
(a driver, an adapter, the rack tooling) is found, not only those in errors.py.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from dataclasses import dataclass

import provisiond
from provisiond import errors
from provisiond.errors import ProvisiondError

# ``__main__`` runs the CLI; migrations run only inside alembic.
SKIP = re.compile(r"\.(__main__|migrations)(\.|$)")
ROOT = re.compile(r"^(?P<name>ProvisiondError)\b(?P<rest>.*)$")
BRANCH = re.compile(r"^(?P<indent>[│ ]*)[├└]── (?P<name>[A-Z]\w*)(?P<rest>.*)$")
STATUS = re.compile(r"^\s+(?P<status>[1-5]\d\d)\b")


@dataclass(frozen=True)
class Node:
    name: str
    parent: str | None
    #: The status the line states, or its nearest ancestor's.
    status: int | None


def _all_error_classes() -> list[type[ProvisiondError]]:
    for module in pkgutil.walk_packages(provisiond.__path__, "provisiond."):
        if not SKIP.search(module.name):
            importlib.import_module(module.name)
    found: list[type[ProvisiondError]] = []
    todo = [ProvisiondError]
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if cls.__module__.startswith("provisiond."):  # not a test's own subclass
            found.append(cls)
    return found


def _tree() -> dict[str, Node]:
    doc = errors.__doc__ or ""
    nodes: dict[str, Node] = {}
    path: list[Node] = []  # the current line's ancestors, by depth
    for line in doc.splitlines():
        root, branch = ROOT.match(line), BRANCH.match(line)
        if root is None and branch is None:
            continue
        if root is not None:
            depth, name, rest = 0, root["name"], root["rest"]
        else:
            assert branch is not None
            depth, name, rest = len(branch["indent"]) // 4 + 1, branch["name"], branch["rest"]
        path = path[:depth]
        assert len(path) == depth, f"{name}: its line is indented past its parent"
        parent = path[-1] if path else None
        stated = STATUS.match(rest)
        status = int(stated["status"]) if stated else (parent.status if parent else None)
        assert name not in nodes, f"{name} is drawn twice in errors.py's tree"
        nodes[name] = Node(name, parent.name if parent else None, status)
        path.append(nodes[name])
    return nodes


def test_every_error_class_is_in_the_tree_under_its_parent_with_its_status() -> None:
    classes = _all_error_classes()
    tree = _tree()
    names = [cls.__name__ for cls in classes]
    twice = sorted({n for n in names if names.count(n) > 1})
    assert twice == [], f"two error classes share a name (one tree, one class): {twice}"
    missing = sorted(n for n in names if n not in tree)
    assert missing == [], f"not drawn in errors.py's docstring tree: {missing}"
    for cls in classes:
        node = tree[cls.__name__]
        where = f"{cls.__module__}.{cls.__qualname__}"
        assert node.status == cls.status_code, (
            f"{where} answers {cls.status_code}, the tree says {node.status}"
        )
        if cls is not ProvisiondError:
            bases = [b.__name__ for b in cls.__bases__]
            assert node.parent in bases, f"{where} derives from {bases}, drawn under {node.parent}"
    stale = sorted(set(tree) - set(names))
    assert stale == [], f"drawn in the tree but not a class: {stale}"


def test_one_code_one_status() -> None:
    statuses: dict[str, set[tuple[int, str]]] = {}
    for cls in _all_error_classes():
        statuses.setdefault(cls.code, set()).add((cls.status_code, cls.__name__))
    clashes = {
        code: sorted(seen)
        for code, seen in statuses.items()
        if len({status for status, _ in seen}) > 1
    }
    assert clashes == {}, f"one code, several statuses: {clashes}"
