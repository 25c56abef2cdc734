"""YAML in and out for inventory apply/export: a loader that keeps line numbers, and a dumper.

The loader is PyYAML's safe loader with three changes an inventory needs:

- every mapping and sequence comes back as :class:`LineDict` / :class:`LineList`,
  which carry the line each one (and each of its keys and items) starts on, so a
  problem found long after parsing can still name its line;
- a key given twice in one mapping is recorded (PyYAML keeps the last silently);
- YAML 1.1's base-60 numbers and timestamps are off, so an unquoted MAC such as
  ``52:54:00:12:34:56`` stays a string instead of becoming 190,311,034,056.

Anchors, aliases and ``<<`` merge keys work. A document whose aliases would expand
past :data:`MAX_EXPANDED_NODES` is refused (the "billion laughs" case).

    >>> tree, problems = load("racks:\\n  - name: r1\\n")
    >>> tree["racks"][0].line
    2
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from provisiond.errors import Problem
from provisiond.inventory.gcpause import paused

MAX_EXPANDED_NODES = 1_000_000
FILE = "(file)"

_Base: type[yaml.SafeLoader]
try:  # libyaml's parser is ~10x faster; the constructor stays Python either way
    _Base = yaml.CSafeLoader  # type: ignore[assignment]
except AttributeError:  # pragma: no cover - PyYAML built without libyaml
    _Base = yaml.SafeLoader

_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_TIMESTAMP = "tag:yaml.org,2002:timestamp"
STR_TAG = _STR = "tag:yaml.org,2002:str"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_MERGE = "tag:yaml.org,2002:merge"
#: Scalars whose constructed values may be shared between equal nodes.
_IMMUTABLE = frozenset({_INT, _FLOAT, "tag:yaml.org,2002:bool", "tag:yaml.org,2002:null"})


class LineDict(dict[Any, Any]):
    """A mapping from YAML with the line it starts on and the line of each key."""

    line: int = 0
    key_lines: dict[Any, int]
    duplicates: list[tuple[Any, int]]


class LineList(list[Any]):
    """A sequence from YAML with the line it starts on and the line of each item."""

    line: int = 0
    item_lines: list[int]


class _Loader(_Base):  # type: ignore[misc,valid-type]
    yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag not in (_INT, _FLOAT, _TIMESTAMP)]
        for first, resolvers in _Base.yaml_implicit_resolvers.items()
    }

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._plain_tags: dict[str, str] = {}

    # The parser calls these three for every node (~1.4 million calls for 10,000
    # machines). There are no path resolvers, so two have nothing to do, and a plain
    # scalar's tag depends on its text alone, so it is worked out once per text.
    def descend_resolver(self, current_node: Any, current_index: Any) -> None:
        return None

    def ascend_resolver(self) -> None:
        return None

    def resolve(self, kind: Any, value: Any, implicit: Any) -> str:
        if kind is ScalarNode and implicit[0]:
            tag = self._plain_tags.get(value)
            if tag is None:
                tag = self._plain_tags[value] = super().resolve(kind, value, implicit)
            return tag
        return str(super().resolve(kind, value, implicit))


# YAML 1.1's int and float patterns without their base-60 forms.
_Loader.add_implicit_resolver(
    _INT,
    re.compile(
        r"""^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$""",
        re.X,
    ),
    list("-+0123456789"),
)
_Loader.add_implicit_resolver(
    _FLOAT,
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?
        |\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _line(node: Node) -> int:
    return int(node.start_mark.line) + 1


def _construct_map(loader: _Loader, node: MappingNode) -> Iterator[LineDict]:
    data = LineDict()
    data.line, data.key_lines, data.duplicates = _line(node), {}, []
    yield data
    # Duplicates are looked for among the keys written here, before merge keys are
    # flattened in: overriding a merged key is the point of "<<", not a mistake.
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        if isinstance(key, (list, dict)):
            continue  # construct_mapping below reports unhashable keys with their line
        if key in seen:
            data.duplicates.append((key, _line(key_node)))
        seen.add(key)
    loader.flatten_mapping(node)
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if isinstance(key, (list, dict)):
            raise yaml.constructor.ConstructorError(
                None, None, "a mapping key must be a plain value", key_node.start_mark
            )
        data[key] = loader.construct_object(value_node, deep=True)
        data.key_lines[key] = _line(key_node)  # the last one wins, as in the dict


def _construct_seq(loader: _Loader, node: SequenceNode) -> Iterator[LineList]:
    data = LineList()
    data.line, data.item_lines = _line(node), [_line(child) for child in node.value]
    yield data
    data.extend(loader.construct_object(child, deep=True) for child in node.value)


# The constructors above serve PyYAML's own path (what a node under an explicit tag
# such as !!omap holds); _Builder below makes the same objects without PyYAML's
# generators and bookkeeping, which cost as much as parsing on a 10,000-machine file.
_Loader.add_constructor(_MAP, _construct_map)
_Loader.add_constructor(_SEQ, _construct_seq)


class _Builder:
    """Nodes to LineDict/LineList/scalars, as :func:`_construct_map`/:func:`_construct_seq`
    and PyYAML's scalar constructors would make them. Aliases share one object (as in
    PyYAML), so a recursive alias makes a recursive structure."""

    def __init__(self, loader: _Loader) -> None:
        self.loader = loader
        self.built: dict[int, Any] = {}
        self.scalars: dict[tuple[str, str], Any] = {}
        #: False when nothing needs :func:`duplicate_keys`'s walk (no key given twice,
        #: no mapping made by PyYAML's own constructors).
        self.walk = False

    def build(self, node: Node) -> Any:
        tag = node.tag
        if node.__class__ is ScalarNode:
            if tag == _STR:
                return node.value
            if tag in _IMMUTABLE:
                key = (tag, node.value)
                if key not in self.scalars:
                    self.scalars[key] = self.loader.construct_object(node)
                return self.scalars[key]
            return self.loader.construct_object(node)
        if id(node) in self.built:
            return self.built[id(node)]
        if tag == _MAP and node.__class__ is MappingNode:
            return self._map(node)
        if tag == _SEQ and node.__class__ is SequenceNode:
            data = LineList()
            data.line = node.start_mark.line + 1
            data.item_lines = [child.start_mark.line + 1 for child in node.value]
            self.built[id(node)] = data
            build = self.build
            data.extend([build(child) for child in node.value])
            return data
        self.walk = True
        return self.loader.construct_object(node, deep=True)

    def _map(self, node: MappingNode) -> LineDict:
        data = LineDict()
        data.line, data.key_lines, data.duplicates = node.start_mark.line + 1, {}, []
        self.built[id(node)] = data
        build = self.build
        # Duplicates are looked for among the keys written here, before merge keys are
        # flattened in: overriding a merged key is the point of "<<", not a mistake.
        keys: list[Any] = []
        seen: set[Any] = set()
        merge = False
        for key_node, _ in node.value:
            if key_node.tag == _MERGE:
                merge = True
                continue
            key = build(key_node)
            keys.append(key)
            if isinstance(key, (list, dict)):
                continue  # reported below, with its line
            if key in seen:
                data.duplicates.append((key, key_node.start_mark.line + 1))
                self.walk = True
            seen.add(key)
        if merge:
            self.loader.flatten_mapping(node)
            keys = [build(key_node) for key_node, _ in node.value]
        key_lines = data.key_lines
        for key, (key_node, value_node) in zip(keys, node.value, strict=True):
            if isinstance(key, (list, dict)):
                raise yaml.constructor.ConstructorError(
                    None, None, "a mapping key must be a plain value", key_node.start_mark
                )
            data[key] = build(value_node)
            key_lines[key] = key_node.start_mark.line + 1  # the last one wins, as in the dict
        return data


def _expanded_size(node: Node, memo: dict[int, int]) -> int:
    """Nodes the document holds once every alias is expanded (shared nodes counted each time)."""
    if isinstance(node, ScalarNode):
        return 1
    key = id(node)
    if key in memo:
        return memo[key]
    memo[key] = 1  # a recursive alias counts once instead of looping
    size = 1
    if isinstance(node, SequenceNode):
        size += sum(_expanded_size(child, memo) for child in node.value)
    elif isinstance(node, MappingNode):
        size += sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    memo[key] = size
    return size


def _line_column(text: str, position: int) -> tuple[int, int]:
    """1-based line and column of a character offset."""
    line_start = text.rfind("\n", 0, position) + 1
    return text.count("\n", 0, position) + 1, position - line_start + 1


def load(text: str) -> tuple[Any, list[Problem]]:
    """Parse one YAML document; returns (tree, problems). The tree is None on a syntax error."""
    with paused():
        return _load(text)


def _load(text: str) -> tuple[Any, list[Problem]]:
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, []
        # Without an anchor ("&") there is no alias, and nothing expands.
        if "&" in text and _expanded_size(node, {}) > MAX_EXPANDED_NODES:
            return None, [
                Problem(FILE, "the document's aliases expand to too many nodes", _line(node))
            ]
        builder = _Builder(loader)
        tree = builder.build(node)
    except yaml.reader.ReaderError as exc:  # a character YAML refuses; it has no mark
        at, column = _line_column(text, exc.position)
        char = exc.character if isinstance(exc.character, int) else ord(exc.character[:1] or "\0")
        return None, [
            Problem(
                FILE,
                f"YAML syntax error: character #x{char:04x} is not allowed in YAML "
                f"(line {at}, column {column})",
                at,
            )
        ]
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        what = " ".join(part for part in (exc.context, exc.problem) if part)
        line = int(mark.line) + 1 if mark is not None else None
        return None, [Problem(FILE, f"YAML syntax error: {what}", line)]
    except yaml.YAMLError as exc:
        return None, [Problem(FILE, f"YAML syntax error: {exc}")]
    except RecursionError:
        return None, [Problem(FILE, "the document is nested too deeply")]
    finally:
        loader.dispose()
    return tree, duplicate_keys(tree) if builder.walk else []


def duplicate_keys(tree: Any, path: tuple[str | int, ...] = ()) -> list[Problem]:
    problems: list[Problem] = []
    seen: set[int] = set()

    def walk(node: Any, here: tuple[str | int, ...]) -> None:
        if id(node) in seen:
            return  # aliases point at one object; look at it once
        seen.add(id(node))
        if isinstance(node, LineDict):
            for key, line in node.duplicates:
                at = format_path((*here, str(key)))
                problems.append(Problem(at, f"key {key!r} is given twice in one mapping", line))
            for key, value in node.items():
                walk(value, (*here, str(key)))
        elif isinstance(node, LineList):
            for index, value in enumerate(node):
                walk(value, (*here, index))

    walk(tree, path)
    return problems


def line_at(tree: Any, loc: tuple[str | int, ...]) -> int | None:
    """The line of the deepest part of ``loc`` that the tree holds (a key's line, an item's)."""
    node, line = tree, getattr(tree, "line", None)
    for part in loc:
        if isinstance(node, LineDict) and part in node:
            line, node = node.key_lines.get(part, line), node[part]
        elif isinstance(node, LineList) and isinstance(part, int) and 0 <= part < len(node):
            line, node = node.item_lines[part], node[part]
        else:
            break
    return line


def format_path(loc: tuple[str | int, ...]) -> str:
    """``("machines", 2, "nics", 0, "mac")`` -> ``machines[2].nics[0].mac``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or FILE


def plain(value: Any) -> Any:
    """A copy with plain dicts and lists, for storing in JSON columns and comparing."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


# --- output ----------------------------------------------------------------------


class Flow(dict[str, Any]):
    """A mapping that export writes on one line: ``{mac: ..., name: eth0}``."""


class FlowList(list[Any]):
    """A sequence that export writes on one line: ``[ci, gpu]``."""


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True  # never write anchors: an export should read without YAML tricks


def _flow_map(dumper: yaml.SafeDumper, data: Flow) -> ScalarNode:
    return dumper.represent_mapping("tag:yaml.org,2002:map", data.items(), flow_style=True)  # type: ignore[return-value]


def _flow_seq(dumper: yaml.SafeDumper, data: FlowList) -> ScalarNode:
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)  # type: ignore[return-value]


_Dumper.add_representer(Flow, _flow_map)
_Dumper.add_representer(FlowList, _flow_seq)


def dump(document: dict[str, Any], header: str = "") -> str:
    """YAML text, keys in the order given, with Flow/FlowList parts on one line each."""
    body = yaml.dump(
        document,
        Dumper=_Dumper,
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=True,
        width=4096,
    )
    return header + body
