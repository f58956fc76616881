"""Load YAML or JSON into a tree of values that remember where they were written.

Every node is a :class:`Y`: ``.v`` holds a ``dict[str, Y]``, a ``list[Y]`` or a plain scalar,
and ``.line``/``.col`` (1-based) say where it starts, so every validation error can point at
the exact spot in the user's file.
"""
from __future__ import annotations

import json
from typing import Any

import yaml

from .errors import Problem, RulesError


class Y:
    __slots__ = ("v", "line", "col", "key_pos")

    def __init__(self, v: Any, line: int, col: int, key_pos: dict | None = None):
        self.v = v
        self.line = line
        self.col = col
        # for mappings: key -> (line, col) of the key itself
        self.key_pos = key_pos

    def plain(self) -> Any:
        """The value with all position information stripped."""
        if isinstance(self.v, dict):
            return {k: n.plain() for k, n in self.v.items()}
        if isinstance(self.v, list):
            return [n.plain() for n in self.v]
        return self.v

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"Y({self.v!r}@{self.line}:{self.col})"


_scalar_loader = yaml.SafeLoader("")
# libyaml (C) composes ~15x faster than pure-Python PyYAML and keeps the same marks
_Base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_tags: dict[str, str] = {}


class _Loader(_Base):  # type: ignore[misc, valid-type]
    """The safe loader, with the tag of each plain scalar memoised: a rules file repeats the same
    keys and values thousands of times, and PyYAML resolves each one with a chain of regexes
    (measured: a third of a 10,000-route load). For a plain scalar the tag depends on its text
    alone (no path resolvers are registered), so the memo is exact."""

    def resolve(self, kind, value, implicit):  # noqa: D102
        if kind is yaml.ScalarNode and implicit[0]:
            tag = _tags.get(value)
            if tag is None:
                tag = super().resolve(kind, value, implicit)
                if len(_tags) < 65536 and len(value) < 256:
                    _tags[value] = tag
            return tag
        return super().resolve(kind, value, implicit)

    def descend_resolver(self, current_node, current_index):  # noqa: D102
        return None

    def ascend_resolver(self):  # noqa: D102
        return None


def _convert(node: yaml.Node, file: str) -> Y:
    mark = node.start_mark
    line, col = mark.line + 1, mark.column + 1
    cls = node.__class__
    if cls is yaml.ScalarNode:
        return Y(node.value if node.tag == _STR else _scalar(node, file), line, col)
    if cls is yaml.SequenceNode:
        return Y([_convert(n, file) for n in node.value], line, col)
    out: dict[str, Y] = {}
    keys: dict[str, tuple[int, int]] = {}
    pairs = node.value
    merged: set[int] = set()      # keys that came from a merge (<<) and may be overridden
    if any(k.tag == _MERGE for k, _ in pairs):
        explicit = {id(k) for k, _ in pairs if k.tag != _MERGE}
        _scalar_loader.flatten_mapping(node)   # merged pairs first, explicit ones after
        pairs = node.value
        merged = {id(k) for k, _ in pairs if id(k) not in explicit}
    for knode, vnode in pairs:
        km = knode.start_mark
        if knode.__class__ is not yaml.ScalarNode:
            raise RulesError.at(file, km.line + 1, km.column + 1, "a mapping key must be a plain value")
        key = knode.value if knode.tag == _STR else _scalar(knode, file)
        if key.__class__ is not str:
            key = str(key).lower() if isinstance(key, bool) else str(key)
        if key in out and not (merged and merged_key(keys, key, merged, pairs)):
            raise RulesError.at(file, km.line + 1, km.column + 1, f"duplicate key {key!r}")
        out[key] = _convert(vnode, file)   # an explicit key overrides a merged one
        keys[key] = (km.line + 1, km.column + 1)
    return Y(out, line, col, keys)


def merged_key(keys: dict, key: str, merged: set[int], pairs: list) -> bool:
    """Was the earlier occurrence of ``key`` in ``pairs`` a merged one?"""
    for k, _ in pairs:
        if (k.value if k.tag == _STR else str(k.value)) == key:
            return id(k) in merged
    return False


_STR = "tag:yaml.org,2002:str"
_MERGE = "tag:yaml.org,2002:merge"



def _scalar(node: yaml.Node, file: str) -> Any:
    """Construct a scalar without PyYAML's constructed_objects cache (which would keep every
    node of every file ever loaded alive)."""
    if node.tag == _STR:
        return node.value
    fn = _scalar_loader.yaml_constructors.get(node.tag)
    try:
        if fn is None:
            raise yaml.constructor.ConstructorError(None, None, f"unsupported tag {node.tag}", node.start_mark)
        return fn(_scalar_loader, node)
    except (yaml.YAMLError, ValueError, TypeError) as e:
        line, col = node.start_mark.line + 1, node.start_mark.column + 1
        raise RulesError.at(file, line, col, f"bad value: {getattr(e, 'problem', None) or e}") from None


def _yaml_problem(file: str, e: yaml.YAMLError) -> RulesError:
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    problem = getattr(e, "problem", None) or str(e)
    context = getattr(e, "context", None)
    msg = f"YAML syntax error: {problem}" + (f" ({context})" if context else "")
    return RulesError.at(file, line, col, msg)


def parse_text(text: str, file: str) -> Y:
    """Parse YAML (or JSON, which is checked with the json module first) into a :class:`Y` tree."""
    if file.lower().endswith(".json"):
        try:
            json.loads(text)
        except json.JSONDecodeError as e:
            raise RulesError.at(file, e.lineno, e.colno, f"JSON syntax error: {e.msg}") from None
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.YAMLError as e:
        raise _yaml_problem(file, e) from None
    if node is None:
        raise RulesError.at(file, 1, 1, "the file is empty")
    return _convert(node, file)


def load_file(path: str) -> tuple[Y, str]:
    """Read and parse a rules file. Returns the tree and the text that was read."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise RulesError([Problem(path, 1, 1, f"cannot read the file: {e.strerror or e}")]) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        col = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise RulesError.at(path, line, col, "the file is not valid UTF-8") from None
    return parse_text(text, path), text
